//! Full L2 semantics per VNI, through real namespaces with the agent on every
//! host: tenants with overlapping addresses, many VNIs, flooding, IPv6,
//! and path MTU discovery.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use overlay_lab::{
    lab::{ContainerSpec, HostKind, HostSpec, Lab, LabSpec, overlay_binary, reported_counter}, traffic::{ping, tcp_transfer},
    netns::Netns,
    probe::{NameServer, ask_name},
};

fn container(name: &str, mac_tag: u8, last_octet: u8, vni: u32) -> ContainerSpec {
    ContainerSpec {
        name: name.into(),
        mac: [0x02, (vni >> 8) as u8, vni as u8, 0, mac_tag, last_octet],
        ip: Ipv4Addr::new(10, 10, 0, last_octet),
        vni,
    }
}

fn host(name: &str, containers: Vec<ContainerSpec>) -> HostSpec {
    HostSpec { name: name.into(), kind: HostKind::Overlay, containers }
}

fn build(scope: &str, hosts: Vec<HostSpec>) -> Lab {
    Lab::build(LabSpec { scope: scope.into(), vxlan_port: 4789, hosts }).expect("building the lab")
}

/// Starts the agents with their defaults: `--decap auto`, TC on veth.
fn start(lab: &mut Lab) {
    start_with(lab, &[]);
}

fn start_with(lab: &mut Lab, args: &[&str]) {
    lab.start_agents_with_args(&overlay_binary().expect("overlay binary"), args).expect("starting agents");
}

fn assert_ping(lab: &Lab, from: &Netns, to: Ipv4Addr, what: &str) {
    let (sent, received) = ping(from, to, 3).expect("running ping");
    assert_eq!((sent, received), (3, 3), "{what}: expected 3/3 replies from {to}, got {received}/{sent}\n{}", lab.agent_logs());
}

/// Packets an agent's exit report counts for a direction and reason.
fn counted(output: &str, direction: &str, reason: &str) -> u64 {
    reported_counter(output, direction, reason).0
}

/// Two tenants with the same subnet and the same container addresses on
/// the same two hosts: each tenant reaches exactly its own containers
/// (the name server at an address says whose it is), and a container's
/// neighbour entry holds its own tenant's MAC.
#[test]
fn tenants_with_overlapping_addresses_stay_isolated() {
    let mut lab = build(
        "tenants",
        vec![
            host("h1", vec![container("blue", 1, 1, 100), container("green", 2, 1, 200)]),
            host("h2", vec![container("blue", 1, 2, 100), container("green", 2, 2, 200)]),
        ],
    );
    start(&mut lab);
    let _servers: Vec<NameServer> = ["h1", "h2"]
        .iter()
        .flat_map(|h| ["blue", "green"].map(|t| (*h, t)))
        .map(|(h, t)| NameServer::start(&lab.container(h, t).netns, &format!("{t}@{h}")).unwrap())
        .collect();

    for tenant in ["blue", "green"] {
        for (from, to) in [("h1", "h2"), ("h2", "h1")] {
            let source = &lab.container(from, tenant).netns;
            let target = lab.container(to, tenant);
            assert_ping(&lab, source, target.spec.ip, &format!("{tenant}@{from} -> {tenant}@{to}"));
            let name = ask_name(source, IpAddr::V4(target.spec.ip)).unwrap_or_else(|e| panic!("{tenant}@{from}: {e:#}"));
            assert_eq!(name, format!("{tenant}@{to}"), "{tenant}@{from} asked {} and reached the wrong container", target.spec.ip);
        }
        let neighbours = lab.container("h1", tenant).netns.ip(&["neigh", "show", "10.10.0.2"]).unwrap();
        let expected = overlay_lab::lab::format_mac(&lab.container("h2", tenant).spec.mac);
        let neighbours = String::from_utf8_lossy(&neighbours.stdout);
        assert!(neighbours.contains(&expected), "{tenant}@h1 should know 10.10.0.2 as {expected}, its table says: {neighbours}");
    }
}

/// 64 VNIs on one pair of hosts, every tenant reusing the same two
/// addresses: each VNI carries its own traffic.
#[test]
fn sixty_four_vnis_on_one_node() {
    const TENANTS: u32 = 64;
    let tenants = |last_octet: u8| (0..TENANTS).map(|t| container(&format!("t{t}"), 3, last_octet, 1000 + t)).collect::<Vec<_>>();
    let mut lab = build("vnis64", vec![host("h1", tenants(1)), host("h2", tenants(2))]);
    start(&mut lab);
    for t in 0..TENANTS {
        let name = format!("t{t}");
        assert_ping(&lab, &lab.container("h1", &name).netns, Ipv4Addr::new(10, 10, 0, 2), &format!("tenant {name}"));
    }
    // Overlapping addresses really are per tenant: the first and last answer as themselves.
    for t in [0, TENANTS - 1] {
        let name = format!("t{t}");
        let _server = NameServer::start(&lab.container("h2", &name).netns, &name).unwrap();
        let answer = ask_name(&lab.container("h1", &name).netns, IpAddr::V4(Ipv4Addr::new(10, 10, 0, 2))).unwrap();
        assert_eq!(answer, name, "tenant {name} reached another tenant's container");
    }
}

/// An address nobody configured is found by flooding: h1's ARP request is
/// replicated to h2 (which has the VNI) and delivered to its container,
/// which answers; h3, which lacks the VNI, never receives a copy, and the
/// sender never gets its own frame back.
#[test]
fn flooding_reaches_unconfigured_addresses_and_only_peers_with_the_vni() {
    flooding_through("flood", Decap::Default);
}

/// The same with XDP decapsulation, which hands flooded frames up to the
/// underlay's TC flood program.
#[test]
fn flooding_with_xdp_decapsulation() {
    flooding_through("floodxdp", Decap::Xdp);
}

/// Which decapsulation hook a test runs the agents with.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Decap {
    /// `--decap auto`: TC on these veth underlays.
    Default,
    Xdp,
}

impl Decap {
    fn args(self) -> &'static [&'static str] {
        match self {
            Decap::Default => &[],
            Decap::Xdp => &["--decap", "xdp"],
        }
    }
}

fn flooding_through(scope: &str, decap: Decap) {
    let mut lab = build(
        scope,
        vec![
            host("h1", vec![container("a", 4, 1, 100), container("b", 4, 3, 100)]),
            host("h2", vec![container("c", 4, 2, 100)]),
            host("h3", vec![container("x", 4, 9, 300)]),
        ],
    );
    // An address the configuration does not know: only flooding can find it.
    let unknown = Ipv4Addr::new(10, 10, 0, 99);
    lab.container("h2", "c").netns.ip(&["addr", "add", "10.10.0.99/24", "dev", &inside_interface(&lab, "h2", "c")]).unwrap();
    start_with(&mut lab, decap.args());

    assert_ping(&lab, &lab.container("h1", "a").netns, unknown, "a@h1 -> unconfigured 10.10.0.99@h2");
    // A broadcast reaches the other local port too.
    lab.container("h1", "a").netns.exec("ping", &["-b", "-c", "1", "-W", "1", "10.10.0.255"]).ok();

    let outputs = lab.stop_agents();
    let output = |host: &str| outputs.iter().find(|(h, _)| h == host).map(|(_, o)| o.clone()).unwrap();
    let (h1, h2, h3) = (output("h1"), output("h2"), output("h3"));
    assert!(counted(&h1, "from-endpoint", "flooded") >= 1, "h1 should have flooded the ARP request:\n{h1}");
    if decap == Decap::Xdp {
        assert!(counted(&h2, "from-underlay", "flood-handoff") >= 1, "h2's XDP should have handed the flood up:\n{h2}");
    }
    assert!(counted(&h2, "from-underlay", "flooded") >= 1, "h2 should have delivered the flood locally:\n{h2}");
    for reason in ["forwarded", "flood-handoff", "flooded", "unknown-vni", "unknown-destination"] {
        assert_eq!(counted(&h3, "from-underlay", reason), 0, "h3 lacks VNI 100 and must get no copy ({reason}):\n{h3}");
    }
}

/// The container-side interface name of a container (the lab names it).
fn inside_interface(lab: &Lab, host: &str, name: &str) -> String {
    let netns = &lab.container(host, name).netns;
    let links = String::from_utf8_lossy(&netns.ip(&["-o", "link", "show"]).unwrap().stdout).into_owned();
    links
        .lines()
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .find(|name| name != "lo")
        .expect("container has an interface")
}

/// IPv6 inside the overlay: neighbour discovery (flooded or answered), ping6
/// and TCP over IPv6 between containers on different hosts.
#[test]
fn ipv6_ping_and_tcp_between_hosts() {
    let mut lab = build("ipv6", vec![host("h1", vec![container("a", 5, 1, 100)]), host("h2", vec![container("b", 5, 2, 100)])]);
    let addresses = [("h1", "a", "fd00::1"), ("h2", "b", "fd00::2")];
    for (host, name, address) in addresses {
        let interface = inside_interface(&lab, host, name);
        lab.container(host, name).netns.ip(&["addr", "add", &format!("{address}/64"), "dev", &interface, "nodad"]).unwrap();
    }
    start(&mut lab);
    for (from, _to, target) in [("a", "b", "fd00::2"), ("b", "a", "fd00::1")] {
        let from_host = if from == "a" { "h1" } else { "h2" };
        let output = lab.container(from_host, from).netns.command("ping").args(["-6", "-c", "3", "-i", "0.2", "-W", "2", target]).output().unwrap();
        let neighbours = lab.container(from_host, from).netns.command("ip").args(["-6", "neigh"]).output().unwrap();
        assert!(
            output.status.success(),
            "ping6 {from} -> {target} failed:\n{}\nneighbours of {from}:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&neighbours.stdout),
            lab.diagnostics()
        );
    }
    let _server = NameServer::start(&lab.container("h2", "b").netns, "b@h2").unwrap();
    let answer = ask_name(&lab.container("h1", "a").netns, IpAddr::V6("fd00::2".parse::<Ipv6Addr>().unwrap())).unwrap();
    assert_eq!(answer, "b@h2", "TCP over IPv6 reached the wrong container");
}

/// Containers whose MTU is set too high (1500 on a 1500 underlay): the
/// datapath answers oversized frames with ICMP "fragmentation needed" (MTU
/// 1450), path MTU discovery converges, and a TCP transfer completes intact.
#[test]
fn path_mtu_discovery_converges_when_container_mtu_is_too_high() {
    let mut lab = build("pmtu", vec![host("h1", vec![container("a", 6, 1, 100)]), host("h2", vec![container("b", 6, 2, 100)])]);
    for (host, name) in [("h1", "a"), ("h2", "b")] {
        let interface = inside_interface(&lab, host, name);
        lab.container(host, name).netns.ip(&["link", "set", &interface, "mtu", "1500"]).unwrap();
    }
    start(&mut lab);
    let a = &lab.container("h1", "a").netns;
    // A full-size DF ping is refused with the overlay MTU.
    let output = a.command("ping").args(["-c", "2", "-M", "do", "-s", "1472", "-W", "1", "10.10.0.2"]).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("mtu = 1450") || text.contains("mtu=1450"), "expected ICMP frag-needed announcing mtu 1450, ping said:\n{text}");

    let bytes = 8 * 1024 * 1024;
    let report = tcp_transfer(&lab.container("h2", "b").netns, a, Ipv4Addr::new(10, 10, 0, 1), bytes).expect("TCP transfer");
    assert_eq!((report.bytes_received, report.first_mismatch), (bytes, None), "transfer with a too-high MTU did not complete intact");
    let outputs = lab.stop_agents();
    let sent: u64 = outputs.iter().map(|(_, o)| counted(o, "from-endpoint", "icmp-too-big-sent")).sum();
    assert!(sent >= 1, "expected ICMP too-big answers in the counters:\n{outputs:?}");
}

/// Interop with the Linux kernel's vxlan device and bridge on `port`: two
/// VNIs, in both directions ARP (the kernel floods it, we answer or steer
/// it), ping, IPv6 (ping6 and TCP) and flooding to an address only the
/// other side's container holds.
fn interop_with_kernel_vxlan(scope: &str, port: u16, decap: Decap) {
    let spec = LabSpec {
        scope: scope.into(),
        vxlan_port: port,
        hosts: vec![
            HostSpec { name: "h1".into(), kind: HostKind::Overlay, containers: vec![container("blue", 7, 1, 100), container("green", 8, 1, 200)] },
            HostSpec { name: "h2".into(), kind: HostKind::KernelVxlan, containers: vec![container("blue", 7, 2, 100), container("green", 8, 2, 200)] },
        ],
    };
    let mut lab = Lab::build(spec).expect("building the lab");
    for host in ["h1", "h2"] {
        for tenant in ["blue", "green"] {
            let last = if host == "h1" { 1 } else { 2 };
            let interface = inside_interface(&lab, host, tenant);
            lab.container(host, tenant).netns.ip(&["addr", "add", &format!("fd00::{last}/64"), "dev", &interface, "nodad"]).unwrap();
        }
    }
    // Addresses no configuration knows, one on each side: found only by flooding.
    let blue_on = |host: &str| inside_interface(&lab, host, "blue");
    lab.container("h1", "blue").netns.ip(&["addr", "add", "10.10.0.101/24", "dev", &blue_on("h1")]).unwrap();
    lab.container("h2", "blue").netns.ip(&["addr", "add", "10.10.0.102/24", "dev", &blue_on("h2")]).unwrap();
    start_with(&mut lab, decap.args());

    for tenant in ["blue", "green"] {
        // The kernel side first: its ARP request reaches us flooded as VXLAN.
        let (kernel, ours) = (&lab.container("h2", tenant).netns, &lab.container("h1", tenant).netns);
        assert_ping(&lab, kernel, Ipv4Addr::new(10, 10, 0, 1), &format!("{tenant}: kernel vxlan -> overlay"));
        assert_ping(&lab, ours, Ipv4Addr::new(10, 10, 0, 2), &format!("{tenant}: overlay -> kernel vxlan"));
        for (from, target) in [(kernel, "fd00::1"), (ours, "fd00::2")] {
            let output = from.command("ping").args(["-6", "-c", "2", "-i", "0.2", "-W", "2", target]).output().unwrap();
            assert!(output.status.success(), "{tenant}: ping6 {target} failed:\n{}\n{}", String::from_utf8_lossy(&output.stdout), lab.agent_logs());
        }
    }
    // Flooding both ways: ARP for an unconfigured address crosses as BUM.
    assert_ping(&lab, &lab.container("h1", "blue").netns, Ipv4Addr::new(10, 10, 0, 102), "overlay floods to the kernel VTEP");
    assert_ping(&lab, &lab.container("h2", "blue").netns, Ipv4Addr::new(10, 10, 0, 101), "kernel VTEP floods to the overlay");
    // TCP over IPv6, and tenants stay apart across the two implementations.
    let _servers = [
        NameServer::start(&lab.container("h2", "blue").netns, "blue@kernel").unwrap(),
        NameServer::start(&lab.container("h2", "green").netns, "green@kernel").unwrap(),
    ];
    for tenant in ["blue", "green"] {
        let answer = ask_name(&lab.container("h1", tenant).netns, IpAddr::V6("fd00::2".parse().unwrap())).unwrap();
        assert_eq!(answer, format!("{tenant}@kernel"), "{tenant}: TCP over IPv6 reached the wrong container");
    }
}

#[test]
fn interoperates_with_kernel_vxlan_on_4789() {
    interop_with_kernel_vxlan("kvx4789", 4789, Decap::Default);
}

/// On 8472 with XDP decapsulation (4789 runs the default, TC on veth).
#[test]
fn interoperates_with_kernel_vxlan_on_8472() {
    interop_with_kernel_vxlan("kvx8472", 8472, Decap::Xdp);
}
