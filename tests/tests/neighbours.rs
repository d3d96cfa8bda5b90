//! The agent's managed neighbour entries (rtnetlink): next hops of IPv4 and
//! IPv6 destinations, entries marked as the agent's and found again by a
//! dump, entries of removed peers removed, and everybody else's left alone.
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use overlay::neighbour::{NEIGHBOUR_PROTOCOL, Neighbours, NextHop};
use overlay_lab::{
    lab::{ContainerSpec, HostKind, HostSpec, Lab, LabSpec, overlay_binary}, traffic::ping,
    netns::Netns,
};

fn ip(address: &str) -> IpAddr {
    address.parse().unwrap()
}

/// The `ip neigh` lines of `namespace` that mention `address` as a whole word.
fn neighbour_lines(namespace: &Netns, address: &str) -> Vec<String> {
    let output = namespace.ip(&["-d", "neigh", "show"]).expect("ip neigh show");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.split_whitespace().next() == Some(address))
        .map(str::to_owned)
        .collect()
}

/// Runs `body` with a [`Neighbours`] connection inside `namespace`.
fn inside<T: Send + 'static>(
    namespace: &Netns,
    body: impl AsyncFnOnce(Neighbours) -> T + Send + 'static,
) -> T {
    namespace
        .run_inside(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            Ok(runtime.block_on(async move { body(Neighbours::connect().expect("netlink connection")).await }))
        })
        .expect("running inside the namespace")
}

/// A host namespace with one underlay link (IPv4 and IPv6, a gateway route
/// for each family) towards a second namespace that owns the addresses.
struct Underlay {
    host: Netns,
    _other: Netns,
    device: String,
    ifindex: u32,
}

fn underlay(scope: &str) -> Underlay {
    let host = Netns::new(scope, "host").expect("host namespace");
    let other = Netns::new(scope, "other").expect("other namespace");
    let tag = format!("{:x}", std::process::id());
    let (near, far) = (format!("pn{tag}"), format!("pf{tag}"));
    host.ip(&["link", "add", &near, "type", "veth", "peer", "name", &far, "netns", other.name()]).unwrap();
    host.ip(&["addr", "add", "192.0.2.1/24", "dev", &near]).unwrap();
    host.ip(&["addr", "add", "fd00:5::1/64", "dev", &near, "nodad"]).unwrap();
    host.ip(&["link", "set", &near, "up"]).unwrap();
    other.ip(&["addr", "add", "192.0.2.2/24", "dev", &far]).unwrap();
    other.ip(&["addr", "add", "192.0.2.254/24", "dev", &far]).unwrap();
    other.ip(&["addr", "add", "fd00:5::2/64", "dev", &far, "nodad"]).unwrap();
    other.ip(&["addr", "add", "fd00:5::fe/64", "dev", &far, "nodad"]).unwrap();
    other.ip(&["link", "set", &far, "up"]).unwrap();
    host.ip(&["route", "add", "198.51.100.0/24", "via", "192.0.2.254"]).unwrap();
    host.ip(&["-6", "route", "add", "2001:db8:7::/64", "via", "fd00:5::fe"]).unwrap();
    let name = near.clone();
    let ifindex = host.run_inside(move || overlay::netdev::ifindex(&name).ok_or_else(|| anyhow::anyhow!("no interface {name}"))).unwrap();
    Underlay { host, _other: other, device: near, ifindex }
}

#[test]
fn next_hops_of_both_families_and_gateways() {
    let lab = underlay("plumb-nh");
    let hops = inside(&lab.host, async |neighbours| {
        let mut hops = Vec::new();
        for destination in ["192.0.2.2", "198.51.100.7", "fd00:5::2", "2001:db8:7::5"] {
            hops.push(neighbours.next_hop(ip(destination)).await.map_err(|e| e.to_string()));
        }
        hops
    });
    let expected: Vec<Result<NextHop, String>> = [
        ("192.0.2.2", "on-link"),
        ("192.0.2.254", "gateway of 198.51.100.0/24"),
        ("fd00:5::2", "on-link IPv6"),
        ("fd00:5::fe", "IPv6 gateway of 2001:db8:7::/64"),
    ]
    .iter()
    .map(|(address, _)| Ok(NextHop { ifindex: lab.ifindex, address: ip(address) }))
    .collect();
    assert_eq!(hops, expected, "expected each destination's next hop on ifindex {} (left: seen, right: expected)", lab.ifindex);
    let unreachable = inside(&lab.host, async |neighbours| neighbours.next_hop(ip("203.0.113.1")).await.map_err(|e| e.to_string()));
    assert!(unreachable.is_err(), "expected no route to 203.0.113.1 (no default route), got {unreachable:?}");
}

#[test]
fn sync_adds_marks_and_removes_only_its_own_entries() {
    let lab = underlay("plumb-sync");
    // Somebody else's entry, and an entry of ours on a device this sync does not own.
    lab.host.ip(&["neigh", "add", "192.0.2.9", "lladdr", "02:00:00:00:00:09", "nud", "permanent", "dev", &lab.device]).unwrap();

    let v4 = NextHop { ifindex: lab.ifindex, address: ip("192.0.2.2") };
    let v6 = NextHop { ifindex: lab.ifindex, address: ip("fd00:5::fe") };
    let devices = BTreeSet::from([lab.ifindex]);
    let (added, listed) = inside(&lab.host, {
        let devices = devices.clone();
        async move |neighbours| {
            let report = neighbours.sync_managed(&BTreeSet::from([v4, v6]), &devices).await;
            assert!(report.failed.is_empty(), "expected no failures, got {:?}", report.failed);
            (report.added, neighbours.list_managed().await.expect("listing"))
        }
    });
    assert_eq!(added, vec![v4, v6], "expected both entries added");
    assert_eq!(listed, BTreeSet::from([v4, v6]), "expected the dump to find exactly our two entries");
    for address in ["192.0.2.2", "fd00:5::fe"] {
        let lines = neighbour_lines(&lab.host, address);
        assert!(
            lines.len() == 1 && lines[0].contains("managed") && lines[0].contains(&format!("proto {NEIGHBOUR_PROTOCOL}")),
            "expected one managed entry with proto {NEIGHBOUR_PROTOCOL} for {address}, ip neigh shows {lines:?}"
        );
    }

    // The IPv4 peer goes: its entry goes, the IPv6 one and somebody else's stay.
    let (removed, listed) = inside(&lab.host, {
        let devices = devices.clone();
        async move |neighbours| {
            let report = neighbours.sync_managed(&BTreeSet::from([v6]), &devices).await;
            assert!(report.failed.is_empty() && report.added.is_empty(), "expected only a removal, got {report:?}");
            (report.removed, neighbours.list_managed().await.expect("listing"))
        }
    });
    assert_eq!(removed, vec![v4], "expected the entry of the removed next hop removed");
    assert_eq!(listed, BTreeSet::from([v6]));
    assert_eq!(neighbour_lines(&lab.host, "192.0.2.2"), Vec::<String>::new(), "expected no entry left for 192.0.2.2");
    assert_eq!(neighbour_lines(&lab.host, "192.0.2.9").len(), 1, "somebody else's entry must stay");

    // Devices outside the sync's scope keep our entries: another node's agent may own them.
    let report = inside(&lab.host, async move |neighbours| neighbours.sync_managed(&BTreeSet::new(), &BTreeSet::from([u32::MAX])).await);
    assert!(report.removed.is_empty(), "expected nothing removed outside the devices given, got {report:?}");
    assert_eq!(neighbour_lines(&lab.host, "fd00:5::fe").len(), 1, "expected the IPv6 entry kept");
}

/// The agent keeps a managed entry per peer next hop; a reload that drops
/// a peer removes that peer's entry and leaves the others forwarding.
#[test]
fn removing_a_peer_removes_its_managed_neighbour_entry() {
    let container = |o: u8| ContainerSpec { name: "c".into(), mac: [2, 0, 0, 0, 0x51, o], ip: Ipv4Addr::new(10, 11, 0, o), vni: 100 };
    let host = |n: &str, o: u8| HostSpec { name: n.into(), kind: HostKind::Overlay, containers: vec![container(o)] };
    let mut lab = Lab::build(LabSpec { scope: "plumb-peer".into(), vxlan_port: 4789, hosts: vec![host("h1", 1), host("h2", 2), host("h3", 3)] })
        .expect("building the lab");
    lab.start_agents(&overlay_binary().expect("overlay binary")).expect("starting agents");
    let h1 = &lab.host("h1").netns;
    let managed = |address: &str| {
        neighbour_lines(h1, address).iter().any(|line| line.contains("managed") && line.contains(&format!("proto {NEIGHBOUR_PROTOCOL}")))
    };
    assert!(managed("192.0.2.2") && managed("192.0.2.3"), "expected managed entries for both peers, ip neigh shows:\n{:?}", neighbour_lines(h1, "192.0.2.3"));

    let path = lab.host("h1").config_path.clone().unwrap();
    let config = std::fs::read_to_string(&path).unwrap();
    let without_h3 = config.split("[[peers]]").filter(|section| !section.contains("name = \"h3\"")).collect::<Vec<_>>().join("[[peers]]");
    assert!(!without_h3.contains("192.0.2.3"), "the edited configuration still names h3:\n{without_h3}");
    std::fs::write(&path, without_h3).unwrap();
    lab.agents[0].signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while managed("192.0.2.3") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!managed("192.0.2.3"), "expected h3's managed entry removed after the reload; log:\n{}", lab.agents[0].log());
    assert!(managed("192.0.2.2"), "expected h2's managed entry kept");
    let (a, b) = (&lab.container("h1", "c").netns, lab.container("h2", "c").spec.ip);
    assert_eq!(ping(a, b, 2).unwrap().1, 2, "traffic to the peer that stays");
}
