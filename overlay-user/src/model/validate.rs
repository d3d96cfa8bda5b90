//! Validation of the merged model: every problem at once, each naming its
//! item by origin. A model built in code gets the same checks as a file.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use overlay_common::{
    FLOOD_MAX_LOCAL_PORTS, FLOOD_MAX_REMOTE_VTEPS, PEER_COUNTER_SLOTS, VNI_COUNTER_SLOTS, VNI_MAX,
};

use super::{MacAddr, Model, NetworkRef, Origin, Problem, ProblemKind::*};

/// The most copies a flood limit may allow: every local port and peer of a VNI.
pub const FLOOD_LIMIT_MAX: u32 = (FLOOD_MAX_LOCAL_PORTS + FLOOD_MAX_REMOTE_VTEPS) as u32;
/// Smallest MTU a network may have: IPv6's minimum (RFC 8200 section 5).
pub const NETWORK_MTU_MIN: u32 = 1280;
/// Largest MTU a network may have: an IPv4 datagram less the encapsulation.
pub const NETWORK_MTU_MAX: u32 = 65535 - overlay_common::VXLAN_ENCAP_LEN as u32;

/// Everything wrong with `model`; empty when it can be applied.
pub fn validate(model: &Model) -> Vec<Problem> {
    let mut problems = Vec::new();
    values(model, &mut problems);
    relations(model, &mut problems);
    problems
}

/// Why `name` cannot name a node, a network or a Docker plugin, if it
/// cannot: such names become files, pin directories, etcd key segments
/// and `docker -d` names, so 1 to 64 letters, digits, '-', '_' and '.',
/// not starting with '.' (no "." or ".." path, no hidden file). The one
/// rule for every source: file, local API, registry records, Docker.
pub fn name_problem(name: &str) -> Option<&'static str> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    (!valid).then_some(NAME_RULE)
}

/// What `name_problem` says of a name it refuses.
pub const NAME_RULE: &str = "may hold only letters, digits, '-', '_' and '.' (1 to 64), and not start with '.'";

/// Whether `name` can name a node or network (`name_problem` finds nothing).
pub fn safe_name(name: &str) -> bool {
    name_problem(name).is_none()
}

/// Why the kernel would never give an interface `name`, if it would not
/// (net/core/dev.c `dev_valid_name`: at most IFNAMSIZ - 1 = 15 bytes, not
/// "." or "..", no '/', ':' or white space, where the kernel's isspace()
/// also counts byte 0xa0). A NUL would end the name early. An endpoint
/// with such a name would stay pending for ever, and the name is part of
/// the port's pin path.
pub fn interface_name_problem(name: &str) -> Option<&'static str> {
    if name.trim().is_empty() {
        return Some("must not be empty");
    }
    let bad_byte = |b: u8| matches!(b, b'/' | b':' | 0 | 0xa0) || b.is_ascii_whitespace() || b == 0x0b;
    (name.len() > 15 || name == "." || name == ".." || name.bytes().any(bad_byte))
        .then_some("not an interface name (1 to 15 bytes, not '.' or '..', no '/', ':', white space or NUL)")
}

/// Why `vni` cannot be a network's, if it cannot.
pub fn vni_problem(vni: u32) -> Option<String> {
    (!(1..=VNI_MAX).contains(&vni)).then(|| format!("VNI must be in 1..={VNI_MAX} (24 bits, 0 is reserved here)"))
}

/// Why `addr` cannot be an endpoint's or a VTEP's IPv4 address, if it cannot.
pub fn ipv4_problem(addr: Ipv4Addr) -> Option<&'static str> {
    (addr.is_unspecified() || addr.is_broadcast() || addr.is_multicast()).then_some("must be a unicast IPv4 address")
}

/// Why `addr` cannot be an endpoint's IPv6 address, if it cannot.
pub fn ipv6_problem(addr: Ipv6Addr) -> Option<&'static str> {
    (addr.is_unspecified() || addr.is_multicast() || addr.is_loopback()).then_some("must be a unicast IPv6 address")
}

/// Why `limit` cannot be a flood limit, if it cannot.
pub fn flood_limit_problem(limit: u32) -> Option<String> {
    (limit > FLOOD_LIMIT_MAX)
        .then(|| format!("flood limit must be in 0..={FLOOD_LIMIT_MAX} (copies per flooded frame; 0 turns flooding off)"))
}

/// Why `seconds` cannot be a learning network's ageing, if it cannot.
pub fn ageing_problem(seconds: u32) -> Option<String> {
    let max = overlay_common::MAX_LEARNING_AGEING_SECONDS;
    (!(1..=max).contains(&seconds)).then(|| format!("ageing must be in 1..={max} seconds"))
}

/// What is wrong with a network's learning options, if anything: the
/// option's name, its value and why.
pub fn learning_options_problem(options: &BTreeMap<String, String>) -> Option<(&'static str, String, String)> {
    use super::{OPTION_AGEING, OPTION_LEARNING};
    let learning = options.get(OPTION_LEARNING);
    // Options are text (Docker's `-o learning=on`): on and off read as true and false.
    if let Some(value) = learning.filter(|value| !matches!(value.as_str(), "true" | "false" | "on" | "off")) {
        return Some((OPTION_LEARNING, value.clone(), "must be true or false (or on or off)".to_owned()));
    }
    let ageing = options.get(OPTION_AGEING)?;
    let Ok(seconds) = ageing.parse::<u32>() else {
        return Some((OPTION_AGEING, ageing.clone(), "not a whole number of seconds".to_owned()));
    };
    if let Some(message) = ageing_problem(seconds) {
        return Some((OPTION_AGEING, ageing.clone(), message));
    }
    (!matches!(learning.map(String::as_str), Some("true" | "on")))
        .then(|| (OPTION_AGEING, ageing.clone(), "only applies with learning = true".to_owned()))
}

fn vtep_problem(addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(v4) => ipv4_problem(v4),
        IpAddr::V6(_) => Some("IPv6 is not supported here yet; use an IPv4 address"),
    }
}

/// Each item on its own.
fn values(model: &Model, problems: &mut Vec<Problem>) {
    let node = &model.node;
    let at = Origin::new(super::SourceKind::File, "node");
    if !safe_name(&node.name) {
        problems.push(Problem::new(Invalid, &at, "name", &node.name, NAME_RULE));
    }
    if let Some(message) = vtep_problem(node.vtep_address) {
        problems.push(Problem::new(Invalid, &at, "vtep_address", node.vtep_address, message));
    }
    let mut names: BTreeMap<&str, &Origin> = BTreeMap::new();
    let mut vnis: BTreeMap<u32, &Origin> = BTreeMap::new();
    for network in &model.networks {
        let at = &network.origin;
        if !safe_name(&network.name) {
            problems.push(Problem::new(Invalid, at, "name", &network.name, NAME_RULE));
        } else if let Some(first) = names.insert(&network.name, at) {
            problems.push(Problem::new(Duplicate, at, "name", &network.name, format!("network name already used by {}", first.named_from(at))).held_by(first));
        }
        if let Some(message) = vni_problem(network.vni) {
            problems.push(Problem::new(Invalid, at, "vni", network.vni, message));
        } else if let Some(first) = vnis.insert(network.vni, at) {
            problems.push(Problem::new(Duplicate, at, "vni", network.vni, format!("VNI already used by network of {}", first.named_from(at))).held_by(first));
        }
        if let Some(mtu) = network.mtu {
            if !(NETWORK_MTU_MIN..=NETWORK_MTU_MAX).contains(&mtu) {
                problems.push(Problem::new(Invalid, at, "mtu", mtu, format!("MTU must be in {NETWORK_MTU_MIN}..={NETWORK_MTU_MAX}")));
            }
        }
        if let Some(message) = network.flood_limit.and_then(flood_limit_problem) {
            problems.push(Problem::new(Invalid, at, "flood_limit", network.flood_limit.unwrap_or(0), message));
        }
        if let Some((option, value, message)) = learning_options_problem(&network.options) {
            problems.push(Problem::new(Invalid, at, &format!("options.{option}"), value, message));
        }
        if let Some(subnet) = network.subnet {
            if subnet.prefix_len() > 30 || subnet.network() != subnet.addr() {
                problems.push(Problem::new(Invalid, at, "subnet", subnet, "must be a network address with a prefix of at most /30 (e.g. 10.0.9.0/24)"));
            }
        }
        if let Some(subnet6) = network.subnet6 {
            if subnet6.prefix_len() > 126 || subnet6.network() != subnet6.addr() {
                problems.push(Problem::new(Invalid, at, "subnet6", subnet6, "must be a network address with a prefix of at most /126 (e.g. fd00:9::/64)"));
            }
        }
    }
    let endpoints = model
        .endpoints
        .iter()
        .map(|e| (&e.origin, &e.network, e.mac, e.ipv4, e.ipv6))
        .chain(model.peers.iter().flat_map(|p| p.endpoints.iter().map(|e| (&e.origin, &e.network, e.mac, e.ipv4, e.ipv6))));
    for (at, network, mac, ipv4, ipv6) in endpoints {
        let known = match network {
            NetworkRef::Vni(vni) => match vni_problem(*vni) {
                Some(message) => {
                    problems.push(Problem::new(Invalid, at, "vni", vni, message));
                    None
                }
                None => model.network(network),
            },
            NetworkRef::Name(name) => {
                let found = model.network(network);
                if found.is_none() {
                    problems.push(Problem::new(UnknownNetwork, at, "network", name, "no such network (create it first)"));
                }
                found
            }
        };
        if let Some(message) = mac.endpoint_problem() {
            problems.push(Problem::new(Invalid, at, "mac", mac, message));
        }
        if ipv4.is_none() && ipv6.is_none() {
            problems.push(Problem::new(Invalid, at, "ip", "", "an endpoint needs an IPv4 or an IPv6 address"));
        }
        if let Some(ip) = ipv4 {
            if let Some(message) = ipv4_problem(ip) {
                problems.push(Problem::new(Invalid, at, "ip", ip, message));
            } else if let Some(subnet) = known.and_then(|n| n.subnet.map(|s| (n, s))).filter(|(_, s)| !s.contains(&ip)) {
                problems.push(Problem::new(Invalid, at, "ip", ip, format!("not in network {}'s subnet {}", subnet.0.name, subnet.1)));
            }
        }
        if let Some(ip) = ipv6 {
            if let Some(message) = ipv6_problem(ip) {
                problems.push(Problem::new(Invalid, at, "ipv6", ip, message));
            } else if let Some(subnet) = known.and_then(|n| n.subnet6.map(|s| (n, s))).filter(|(_, s)| !s.contains(&ip)) {
                problems.push(Problem::new(Invalid, at, "ipv6", ip, format!("not in network {}'s subnet {}", subnet.0.name, subnet.1)));
            }
        }
    }
    for endpoint in &model.endpoints {
        if let Some(message) = interface_name_problem(&endpoint.interface) {
            problems.push(Problem::new(Invalid, &endpoint.origin, "interface", &endpoint.interface, message));
        }
    }
    for peer in &model.peers {
        if peer.name.trim().is_empty() {
            problems.push(Problem::new(Invalid, &peer.origin, "name", &peer.name, "must not be empty"));
        }
        if let Some(message) = vtep_problem(peer.vtep_address) {
            problems.push(Problem::new(Invalid, &peer.origin, "vtep_address", peer.vtep_address, message));
        }
    }
}

/// Checks between items: uniqueness, consistency and the datapath's capacities.
fn relations(model: &Model, problems: &mut Vec<Problem>) {
    // Every endpoint, local or remote, by VNI: a MAC or an IP may appear
    // once per VNI (the same ones may appear in different VNIs).
    let mut macs: BTreeMap<(u32, MacAddr), &Origin> = BTreeMap::new();
    let mut ips: BTreeMap<(u32, Ipv4Addr), &Origin> = BTreeMap::new();
    let mut ipv6s: BTreeMap<(u32, Ipv6Addr), &Origin> = BTreeMap::new();
    let mut all: Vec<_> = model
        .endpoints
        .iter()
        .map(|e| (&e.origin, &e.network, e.mac, e.ipv4, e.ipv6))
        .chain(model.peers.iter().flat_map(|p| p.endpoints.iter().map(|e| (&e.origin, &e.network, e.mac, e.ipv4, e.ipv6))))
        .collect();
    // Source by source in merge order (stable: local before remote within
    // one), so the later source's item is the one refused.
    all.sort_by_key(|(at, ..)| model.source_rank(at.source));
    for (at, network, mac, ip, ipv6) in all {
        let Some(vni) = model.vni(network) else { continue };
        if let Some(ipv6) = ipv6 {
            if let Some(first) = ipv6s.insert((vni, ipv6), at) {
                problems.push(Problem::new(Duplicate, at, "ipv6", ipv6, format!("IPv6 address already used in VNI {vni} by {}", first.named_from(at))).held_by(first));
            }
        }
        if let Some(first) = macs.insert((vni, mac), at) {
            problems.push(Problem::new(Duplicate, at, "mac", mac, format!("MAC already used in VNI {vni} by {}", first.named_from(at))).held_by(first));
        }
        if let Some(ip) = ip {
            if let Some(first) = ips.insert((vni, ip), at) {
                problems.push(Problem::new(Duplicate, at, "ip", ip, format!("IP already used in VNI {vni} by {}", first.named_from(at))).held_by(first));
            }
        }
    }

    // A port carries one VNI.
    let mut port_vni: BTreeMap<&str, (u32, &Origin)> = BTreeMap::new();
    for endpoint in &model.endpoints {
        let at = &endpoint.origin;
        if let Some(vni) = model.vni(&endpoint.network) {
            match port_vni.get(endpoint.interface.as_str()) {
                Some(&(other, first)) if other != vni => problems.push(
                    Problem::new(
                        Duplicate,
                        at,
                        network_field(&endpoint.network),
                        network_value(&endpoint.network),
                        format!("interface {} already carries VNI {other} ({}); a port carries one VNI", endpoint.interface, first.named_from(at)),
                    )
                    .held_by(first),
                ),
                Some(_) => {}
                None => {
                    port_vni.insert(&endpoint.interface, (vni, at));
                }
            }
        }
        if endpoint.interface == model.node.underlay_interface {
            problems.push(Problem::new(Invalid, at, "interface", &endpoint.interface, "is the underlay interface"));
        }
    }

    // Flood lists have a fixed size in the datapath.
    let mut ports_in_vni: BTreeMap<u32, BTreeSet<&str>> = BTreeMap::new();
    for endpoint in &model.endpoints {
        let Some(vni) = model.vni(&endpoint.network) else { continue };
        let ports = ports_in_vni.entry(vni).or_default();
        if ports.insert(&endpoint.interface) && ports.len() > FLOOD_MAX_LOCAL_PORTS {
            problems.push(Problem::new(
                Limit,
                &endpoint.origin,
                "interface",
                &endpoint.interface,
                format!("VNI {vni} already has {FLOOD_MAX_LOCAL_PORTS} local ports, the most one VNI can have on a node"),
            ));
        }
    }
    // A VNI may have more peers than its flood list holds
    // (`FLOOD_MAX_REMOTE_VTEPS`): every peer gets its FDB entries and its
    // admission (unicast works), and flooded frames go to the first
    // `FLOOD_MAX_REMOTE_VTEPS` of them by VTEP address (a frame floods at
    // most `flood_limit` copies anyway). Refusing the rest, as was done,
    // left a 1,000-node cluster network with 64 reachable peers. With the
    // registry every endpoint's MAC and address are known, so ARP and
    // unicast never need the flood list; only other broadcasts do.

    // Every VNI and every peer has its own counters, in a fixed number of slots.
    let mut vnis: BTreeSet<u32> = BTreeSet::new();
    for endpoint in &model.endpoints {
        let Some(vni) = model.vni(&endpoint.network) else { continue };
        if vnis.insert(vni) && vnis.len() == VNI_COUNTER_SLOTS as usize + 1 {
            problems.push(Problem::new(
                Limit,
                &endpoint.origin,
                network_field(&endpoint.network),
                network_value(&endpoint.network),
                format!("this node already carries {VNI_COUNTER_SLOTS} VNIs, the most it can count per VNI"),
            ));
        }
    }
    if let Some(peer) = model.peers.get(PEER_COUNTER_SLOTS as usize) {
        problems.push(Problem::new(
            Limit,
            &peer.origin,
            "",
            &peer.name,
            format!("this node already has {PEER_COUNTER_SLOTS} peers, the most it can count per peer"),
        ));
    }

    let mut names: BTreeMap<&str, &Origin> = BTreeMap::new();
    let mut vteps: BTreeMap<IpAddr, &Origin> = BTreeMap::new();
    for peer in &model.peers {
        let at = &peer.origin;
        if peer.vtep_address == model.node.vtep_address {
            problems.push(Problem::new(Invalid, at, "vtep_address", peer.vtep_address, "is this node's own vtep_address"));
        }
        if let Some(first) = vteps.insert(peer.vtep_address, at) {
            problems.push(Problem::new(Duplicate, at, "vtep_address", peer.vtep_address, format!("already used by {}", first.named_from(at))).held_by(first));
        }
        if let Some(first) = names.insert(&peer.name, at) {
            problems.push(Problem::new(Duplicate, at, "name", &peer.name, format!("already used by {}", first.named_from(at))).held_by(first));
        }
        if peer.name == model.node.name {
            problems.push(Problem::new(Invalid, at, "name", &peer.name, "is this node's own name"));
        }
    }
}

fn network_field(network: &NetworkRef) -> &'static str {
    match network {
        NetworkRef::Name(_) => "network",
        NetworkRef::Vni(_) => "vni",
    }
}

fn network_value(network: &NetworkRef) -> String {
    match network {
        NetworkRef::Name(name) => name.clone(),
        NetworkRef::Vni(vni) => vni.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{Endpoint, Fragment, Network, NodeSettings, Owner, OwnerKind, Peer, ProblemKind, RemoteEndpoint, SourceKind};

    fn node() -> NodeSettings {
        NodeSettings {
            name: "n1".into(),
            underlay_interface: "ul".into(),
            vtep_address: "192.0.2.1".parse().unwrap(),
            vxlan_port: 4789,
            ttl: 64,
            source_port_min: 49152,
            source_port_max: 65535,
            flood_limit: 64,
        }
    }

    fn api(key: &str) -> Origin {
        Origin::new(SourceKind::Api, key)
    }

    fn network(name: &str, vni: u32, subnet: Option<&str>) -> Network {
        Network {
            name: name.into(),
            vni,
            subnet: subnet.map(|s| s.parse().unwrap()),
            subnet6: None,
            mtu: None,
            flood_limit: None,
            options: BTreeMap::new(),
            origin: api(&format!("network {name}")),
        }
    }

    fn endpoint(id: &str, network: &str, interface: &str, mac: u8, ip: &str) -> Endpoint {
        Endpoint {
            network: NetworkRef::Name(network.into()),
            interface: interface.into(),
            mac: MacAddr([2, 0, 0, 0, 0, mac]),
            ipv4: Some(ip.parse().unwrap()),
            ipv6: None,
            owner: Owner { kind: OwnerKind::Api, container_id: None },
            origin: api(&format!("endpoint {id}")),
        }
    }

    fn peer(name: &str, vtep: &str, endpoints: Vec<RemoteEndpoint>) -> Peer {
        Peer { name: name.into(), vtep_address: vtep.parse().unwrap(), endpoints, networks: vec![], origin: Origin::new(SourceKind::Registry, format!("node {name}")) }
    }

    fn remote(network: NetworkRef, mac: u8, ip: &str) -> RemoteEndpoint {
        RemoteEndpoint { network, mac: MacAddr([2, 0, 0, 0, 1, mac]), ipv4: Some(ip.parse().unwrap()), ipv6: None, origin: Origin::new(SourceKind::Registry, format!("endpoint {mac}")) }
    }

    /// One row: a description, the fragment, and the problems expected as
    /// (kind, subject key, field, value).
    struct Row {
        what: &'static str,
        fragment: Fragment,
        expected: Vec<(ProblemKind, &'static str, &'static str, &'static str)>,
    }

    #[test]
    fn models_built_in_code_get_every_check() {
        let blue = || network("blue", 100, Some("10.0.9.0/24"));
        let rows = vec![
            Row { what: "a good model", fragment: Fragment { networks: vec![blue()], endpoints: vec![endpoint("a", "blue", "p1", 1, "10.0.9.2")], peers: vec![] }, expected: vec![] },
            Row {
                what: "unknown network",
                fragment: Fragment { networks: vec![blue()], endpoints: vec![endpoint("a", "green", "p1", 1, "10.0.9.2")], peers: vec![] },
                expected: vec![(UnknownNetwork, "endpoint a", "network", "green")],
            },
            Row {
                what: "address outside the subnet",
                fragment: Fragment { networks: vec![blue()], endpoints: vec![endpoint("a", "blue", "p1", 1, "10.0.8.2")], peers: vec![] },
                expected: vec![(Invalid, "endpoint a", "ip", "10.0.8.2")],
            },
            Row {
                what: "same MAC twice in a network",
                fragment: Fragment { networks: vec![blue()], endpoints: vec![endpoint("a", "blue", "p1", 1, "10.0.9.2"), endpoint("b", "blue", "p2", 1, "10.0.9.3")], peers: vec![] },
                expected: vec![(Duplicate, "endpoint b", "mac", "02:00:00:00:00:01")],
            },
            Row {
                what: "same IP as a peer's endpoint, named by VNI",
                fragment: Fragment {
                    networks: vec![blue()],
                    endpoints: vec![endpoint("a", "blue", "p1", 1, "10.0.9.2")],
                    peers: vec![peer("n2", "192.0.2.2", vec![remote(NetworkRef::Vni(100), 9, "10.0.9.2")])],
                },
                expected: vec![(Duplicate, "endpoint 9", "ip", "10.0.9.2")],
            },
            Row {
                what: "two networks with one VNI or one name",
                fragment: Fragment { networks: vec![blue(), network("red", 100, None), network("blue", 200, None)], endpoints: vec![], peers: vec![] },
                expected: vec![(Duplicate, "network red", "vni", "100"), (Duplicate, "network blue", "name", "blue")],
            },
            Row {
                what: "a multicast MAC, VNI 0 and a bad subnet",
                fragment: Fragment {
                    networks: vec![network("zero", 0, Some("10.0.9.1/24"))],
                    endpoints: vec![Endpoint { mac: MacAddr([1, 0, 0x5e, 0, 0, 1]), ..endpoint("a", "zero", "p1", 1, "10.0.9.2") }],
                    peers: vec![],
                },
                expected: vec![(Invalid, "network zero", "vni", "0"), (Invalid, "network zero", "subnet", "10.0.9.1/24"), (Invalid, "endpoint a", "mac", "01:00:5e:00:00:01")],
            },
            Row {
                what: "a peer with our VTEP, an IPv6 VTEP",
                fragment: Fragment { networks: vec![], endpoints: vec![], peers: vec![peer("n2", "192.0.2.1", vec![]), peer("n3", "2001:db8::3", vec![])] },
                expected: vec![(Invalid, "node n3", "vtep_address", "2001:db8::3"), (Invalid, "node n2", "vtep_address", "192.0.2.1")],
            },
            Row {
                what: "one port in two networks",
                fragment: Fragment {
                    networks: vec![blue(), network("red", 200, None)],
                    endpoints: vec![endpoint("a", "blue", "p1", 1, "10.0.9.2"), endpoint("b", "red", "p1", 2, "10.0.10.2")],
                    peers: vec![],
                },
                expected: vec![(Duplicate, "endpoint b", "network", "red")],
            },
            Row {
                what: "more peers in a VNI than its flood list holds (a 1,000-node cluster network): all accepted",
                fragment: Fragment {
                    networks: vec![blue()],
                    endpoints: vec![endpoint("a", "blue", "p1", 1, "10.0.9.2")],
                    peers: (0..FLOOD_MAX_REMOTE_VTEPS as u8 + 8)
                        .map(|i| peer(&format!("p{i}"), &format!("192.0.2.{}", i + 10), vec![remote(NetworkRef::Name("blue".into()), i, &format!("10.0.9.{}", i + 10))]))
                        .collect(),
                },
                expected: vec![],
            },
        ];
        for row in rows {
            let model = Model::merge(node(), [&row.fragment]);
            let found: Vec<(ProblemKind, String, String, String)> =
                validate(&model).into_iter().map(|p| (p.kind, p.subject.key, p.field, p.value)).collect();
            let expected: Vec<(ProblemKind, String, String, String)> =
                row.expected.iter().map(|(k, s, f, v)| (*k, s.to_string(), f.to_string(), v.to_string())).collect();
            assert_eq!(found, expected, "{}: expected these problems, found others", row.what);
        }
    }

    /// A file endpoint (by bare VNI 100) and an API endpoint (in the API's
    /// network of VNI 100) with one MAC.
    fn file_and_api_claiming_one_mac() -> (Fragment, Fragment) {
        let file = Fragment {
            networks: vec![],
            endpoints: vec![Endpoint { network: NetworkRef::Vni(100), origin: Origin::new(SourceKind::File, "endpoints[0]"), ..endpoint("x", "", "p1", 1, "10.0.9.2") }],
            peers: vec![],
        };
        let from_api = Fragment { networks: vec![network("blue", 100, None)], endpoints: vec![endpoint("a", "blue", "p2", 1, "10.0.9.3")], peers: vec![] };
        (file, from_api)
    }

    #[test]
    fn a_later_source_is_the_one_refused_and_the_holder_is_named() {
        let (file, from_api) = file_and_api_claiming_one_mac();
        let problems = validate(&Model::merge(node(), [&file, &from_api]));
        assert_eq!(problems.len(), 1, "{problems:?}");
        let problem = &problems[0];
        assert_eq!((problem.subject.source, problem.field.as_str()), (SourceKind::Api, "mac"));
        assert_eq!(problem.holder, Some(Origin::new(SourceKind::File, "endpoints[0]")));
        assert!(problem.message.ends_with("by file endpoints[0]"), "{problem}");
        // The API's network of VNI 100 is the file's endpoint's network too: no implicit one.
        let model = Model::merge(node(), [&file, &from_api]);
        assert_eq!(model.networks.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["blue"]);
    }

    #[test]
    fn the_changing_source_is_the_one_refused_whichever_it_is() {
        let (file, from_api) = file_and_api_claiming_one_mac();
        let parts = crate::sources::Parts { file: &file, api: &from_api, registry: &Fragment::default() };
        for (changing, holder) in [(SourceKind::Api, "endpoints[0]"), (SourceKind::File, "endpoint a")] {
            let (_, problems) = parts.candidate(node(), changing);
            let seen: Vec<_> = problems.iter().map(|p| (p.subject.source, p.field.as_str(), p.holder.as_ref().map(|h| h.key.as_str()))).collect();
            assert_eq!(seen, [(changing, "mac", Some(holder))], "a change of the {changing}'s part: {problems:?}");
        }
        // As they stand, the file's part comes first and the API's item is the one in conflict.
        let problems = validate(&parts.model(node()));
        assert_eq!(problems.iter().map(|p| p.subject.source).collect::<Vec<_>>(), [SourceKind::Api], "{problems:?}");
    }
}
