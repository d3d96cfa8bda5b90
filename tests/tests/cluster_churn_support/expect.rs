//! What etcd and each running agent's pinned maps and links must hold for
//! the live containers, hosts and virtual nodes.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
};

use overlay::{cni::conf::address_owner, datapath::Datapath, state::MapState};
use crate::attachments::attachments;

use super::{CHURN_NETWORKS, ClusterChurn, Container, HOSTS, REMOTE_NETWORKS};
use crate::map_keys::MapKeys;

fn be(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

fn vni_of(network: &str) -> u32 {
    if network == overlay_lab::cni::NETWORK {
        return overlay_lab::cni::VNI;
    }
    CHURN_NETWORKS.iter().chain(&REMOTE_NETWORKS).find(|n| n.0 == network).unwrap_or_else(|| panic!("no network {network}")).1
}

/// The containers on `host` (fixed and churned).
fn containers_on(churn: &ClusterChurn, host: usize) -> Vec<&Container> {
    churn.fixed.iter().chain(churn.live.values()).filter(|c| c.host == host).collect()
}

/// What etcd must hold.
#[derive(Debug, PartialEq, Eq)]
struct Records {
    nodes: BTreeSet<String>,
    /// (network, MAC) -> (node, addresses).
    endpoints: BTreeMap<(String, String), (String, Vec<IpAddr>)>,
    address_claims: BTreeSet<(String, IpAddr)>,
    /// Every allocation in every block: (network, address) -> owner.
    allocations: BTreeMap<(String, Ipv4Addr), String>,
    conflicts: Vec<String>,
    /// Blocks held by anything but the lab's hosts.
    foreign_blocks: Vec<String>,
}

impl Records {
    fn expected(churn: &ClusterChurn) -> Records {
        let mut nodes: BTreeSet<String> = churn.up_hosts().iter().map(|h| HOSTS[*h].to_owned()).collect();
        let mut endpoints = BTreeMap::new();
        for host in churn.up_hosts() {
            for c in containers_on(churn, host) {
                endpoints.insert((c.network.clone(), c.mac.to_string()), (HOSTS[host].to_owned(), vec![IpAddr::V4(c.ip)]));
            }
        }
        for index in churn.registry.joined() {
            let node = &churn.virtual_nodes[index];
            nodes.insert(node.name.clone());
            for (network, mac, ip) in &node.endpoints {
                endpoints.insert((network.clone(), mac.to_string()), (node.name.clone(), vec![IpAddr::V4(*ip)]));
            }
        }
        let address_claims = endpoints.iter().flat_map(|((network, _), (_, addresses))| addresses.iter().map(|a| (network.clone(), *a))).collect();
        // Addresses stay allocated while their container lives, whether its node is up or not.
        let allocations = churn.fixed.iter().chain(churn.live.values()).map(|c| ((c.network.clone(), c.ip), address_owner(&c.id, "eth0"))).collect();
        Records { nodes, endpoints, address_claims, allocations, conflicts: Vec::new(), foreign_blocks: Vec::new() }
    }

    fn found(churn: &ClusterChurn) -> Records {
        let stored = churn.registry.stored();
        let snapshot = &stored.snapshot;
        let endpoints = snapshot.endpoints.values().map(|e| ((e.network.clone(), e.mac.to_string()), (e.node.clone(), e.addresses.clone()))).collect();
        let mut allocations = BTreeMap::new();
        let mut foreign_blocks = Vec::new();
        for block in snapshot.blocks.values() {
            if !HOSTS.contains(&block.node.as_str()) {
                foreign_blocks.push(format!("{} of {}", block.cidr, block.node));
            }
            for (address, owner) in &block.allocations {
                allocations.insert((block.network.clone(), *address), owner.clone());
            }
        }
        Records {
            nodes: snapshot.nodes.keys().cloned().collect(),
            endpoints,
            address_claims: stored.address_claims,
            allocations,
            conflicts: stored.conflicts,
            foreign_blocks,
        }
    }
}

/// What differs between what etcd must hold and what it holds, or None.
pub fn registry_mismatch(churn: &ClusterChurn) -> Option<String> {
    let (want, got) = (Records::expected(churn), Records::found(churn));
    if want == got {
        return None;
    }
    let mut text = String::new();
    let mut table = |name: &str, want: String, got: String| {
        if want != got {
            let _ = writeln!(text, "{name}:\n  expected {want}\n  found    {got}");
        }
    };
    table("nodes", format!("{:?}", want.nodes), format!("{:?}", got.nodes));
    table("endpoints", format!("{} {:?}", want.endpoints.len(), only_keys(&want.endpoints, &got.endpoints)), format!("{} {:?}", got.endpoints.len(), only_keys(&got.endpoints, &want.endpoints)));
    let differing: Vec<_> = want.endpoints.iter().filter(|(k, v)| got.endpoints.get(*k).is_some_and(|g| g != *v)).collect();
    table("endpoint values", String::new(), if differing.is_empty() { String::new() } else { format!("differ for {differing:?}") });
    table(
        "address claims",
        format!("{} {:?}", want.address_claims.len(), want.address_claims.difference(&got.address_claims).collect::<Vec<_>>()),
        format!("{} {:?}", got.address_claims.len(), got.address_claims.difference(&want.address_claims).collect::<Vec<_>>()),
    );
    table(
        "block allocations (leaked or missing)",
        format!("{} {:?}", want.allocations.len(), only_entries(&want.allocations, &got.allocations)),
        format!("{} {:?}", got.allocations.len(), only_entries(&got.allocations, &want.allocations)),
    );
    table("conflicts recorded", format!("{:?}", want.conflicts), format!("{:?}", got.conflicts));
    table("blocks of other nodes", format!("{:?}", want.foreign_blocks), format!("{:?}", got.foreign_blocks));
    Some(text)
}

fn only_keys<K: Ord + Clone, V>(a: &BTreeMap<K, V>, b: &BTreeMap<K, V>) -> Vec<K> {
    a.keys().filter(|k| !b.contains_key(*k)).cloned().collect()
}

fn only_entries<K: Ord + Clone, V: PartialEq + Clone>(a: &BTreeMap<K, V>, b: &BTreeMap<K, V>) -> Vec<(K, V)> {
    a.iter().filter(|(k, v)| b.get(*k) != Some(*v)).map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// What `host`'s tables must hold for the live churn.
fn expected(churn: &ClusterChurn, host: usize) -> MapKeys {
    let local = containers_on(churn, host);
    let vnis: BTreeSet<u32> = local.iter().map(|c| c.vni).collect();
    let names: Vec<String> = local.iter().map(|c| c.interface.clone()).collect();
    let ports = churn.cni.lab.host(HOSTS[host]).netns.run_inside(move || Ok(names.iter().map(|name| ifindex(name)).collect())).unwrap();
    let local_endpoints = local.iter().map(|c| (c.vni, c.mac.0)).collect();
    let mut neighbours: BTreeSet<(u32, u32)> = local.iter().map(|c| (c.vni, be(c.ip))).collect();
    let (mut fdb, mut peers, mut peer_vnis) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    // Every other node in the registry is a peer, with its endpoints; it
    // is admitted for the VNIs of its endpoints this host carries.
    let mut remote = |vtep: Ipv4Addr, endpoints: Vec<(u32, [u8; 6], Ipv4Addr)>| {
        peers.insert(be(vtep));
        for (vni, mac, ip) in endpoints {
            fdb.insert((vni, mac));
            neighbours.insert((vni, be(ip)));
            if vnis.contains(&vni) {
                peer_vnis.insert((be(vtep), vni));
            }
        }
    };
    for other in churn.up_hosts().into_iter().filter(|other| *other != host) {
        let endpoints = containers_on(churn, other).iter().map(|c| (c.vni, c.mac.0, c.ip)).collect();
        remote(churn.cni.lab.host(HOSTS[other]).vtep, endpoints);
    }
    for index in churn.registry.joined() {
        let node = &churn.virtual_nodes[index];
        remote(node.vtep, node.endpoints.iter().map(|(network, mac, ip)| (vni_of(network), mac.0, *ip)).collect());
    }
    MapKeys { flood: vnis.clone(), vnis, ports, local_endpoints, fdb, peers, peer_vnis, neighbours }
}

fn ifindex(name: &str) -> u32 {
    let c_name = std::ffi::CString::new(name).unwrap();
    // SAFETY: a NUL-terminated name.
    unsafe { libc::if_nametoindex(c_name.as_ptr()) }
}

/// What differs between what `host`'s maps must hold and what they hold, or None.
pub fn maps_mismatch(churn: &ClusterChurn, host: usize) -> Option<String> {
    let state = Datapath::pinned_state(&churn.pins(host)).expect("reading pinned maps");
    let text = expected(churn, host).mismatch(&MapKeys::found(&state))?;
    Some(format!("{}'s maps:\n{text}", HOSTS[host]))
}

/// `host`'s pinned links: those before the churn plus one TC link per
/// churned container's port.
pub fn check_links(churn: &ClusterChurn, host: usize) {
    let mut expected = churn.baseline_links[host].clone();
    expected.extend(churn.live.values().filter(|c| c.host == host).map(|c| format!("tc-port-{}", c.interface)));
    assert_eq!(
        attachments(&churn.pins(host)),
        expected,
        "{}'s pinned links and recorded filters should be those before the churn plus one per container's port",
        HOSTS[host]
    );
}

/// The state with every counter slot written as none: a peer's slot is
/// given when it comes, so one that left and came back may hold another.
pub fn without_slots(state: &MapState) -> MapState {
    let vni_slots = state.vni_slots().into_values().collect();
    let peer_slots = state.peer_slots().into_values().collect();
    state.withholding(&vni_slots, &peer_slots)
}

