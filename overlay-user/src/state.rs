//! What the datapath's maps should hold for a configuration, and the
//! difference between two such states. The agent only ever changes maps by
//! applying a difference, so entries that stay the same are never touched
//! (and traffic that uses them never sees a gap).
use std::collections::BTreeMap;

use overlay_common::{
    FLOOD_MAX_LOCAL_PORTS, FLOOD_MAX_REMOTE_VTEPS, FdbEntry, FloodTargets, LocalEndpoint,
    NeighbourEntry, NodeConfig, PeerInfo, PeerVni, PortInfo, VniInfo, VniIpv4, VniIpv6, VniMac,
};

use crate::netdev::ResolvedConfig;

/// The full contents of every configuration map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapState {
    pub node: Option<NodeConfig>,
    pub vnis: BTreeMap<u32, VniInfo>,
    pub ports: BTreeMap<u32, PortInfo>,
    pub local_endpoints: BTreeMap<VniMac, LocalEndpoint>,
    pub fdb: BTreeMap<VniMac, FdbEntry>,
    pub peers: BTreeMap<u32, PeerInfo>,
    pub peer_vnis: BTreeMap<PeerVni, PeerInfo>,
    pub neighbours: BTreeMap<VniIpv4, NeighbourEntry>,
    pub neighbours6: BTreeMap<VniIpv6, NeighbourEntry>,
    pub flood: BTreeMap<u32, FloodTargets>,
}

/// Network byte order as the datapath compares it: the address's octets in memory order.
pub fn ipv4_be(addr: std::net::Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

impl MapState {
    pub fn from_config(resolved: &ResolvedConfig) -> MapState {
        let config = &resolved.config;
        let node = &config.node;
        let mut state = MapState {
            node: Some(NodeConfig {
                vtep_addr_be: ipv4_be(node.vtep_address),
                underlay_ifindex: resolved.underlay_ifindex,
                vxlan_port_be: node.vxlan_port.to_be(),
                source_port_min: node.source_port_min,
                source_port_max: node.source_port_max,
                ttl: node.ttl,
                _pad0: 0,
                configured: 1,
            }),
            ..MapState::default()
        };
        let mut flood_ports: BTreeMap<u32, std::collections::BTreeSet<u32>> = BTreeMap::new();
        let mut flood_vteps: BTreeMap<u32, std::collections::BTreeSet<u32>> = BTreeMap::new();
        for (endpoint, &ifindex) in config.endpoints.iter().zip(&resolved.endpoint_ifindex) {
            state.vnis.insert(endpoint.vni, VniInfo { flags: 0, flood_limit: config.flood_limit(endpoint.vni) });
            flood_ports.entry(endpoint.vni).or_default().insert(ifindex);
            if let Some(ipv6) = endpoint.ipv6 {
                state.neighbours6.insert(
                    VniIpv6 { vni: endpoint.vni, addr: ipv6.octets() },
                    NeighbourEntry { mac: endpoint.mac.0, _pad: [0; 2] },
                );
            }
            state.ports.insert(ifindex, PortInfo { vni: endpoint.vni, _reserved: 0 });
            state
                .local_endpoints
                .insert(VniMac::new(endpoint.vni, endpoint.mac.0), LocalEndpoint { ifindex, _reserved: 0 });
            state.neighbours.insert(
                VniIpv4 { vni: endpoint.vni, addr_be: ipv4_be(endpoint.ip) },
                NeighbourEntry { mac: endpoint.mac.0, _pad: [0; 2] },
            );
        }
        for peer in &config.peers {
            let vtep_addr_be = ipv4_be(peer.vtep_address);
            state.peers.insert(vtep_addr_be, PeerInfo { flags: 0, _reserved: 0 });
            for vni in peer.vnis() {
                flood_vteps.entry(vni).or_default().insert(vtep_addr_be);
                // Only VNIs this node carries: VXLAN for others is dropped anyway.
                if state.vnis.contains_key(&vni) {
                    state.peer_vnis.insert(PeerVni { vtep_addr_be, vni }, PeerInfo { flags: 0, _reserved: 0 });
                }
            }
            for endpoint in &peer.endpoints {
                if let Some(ipv6) = endpoint.ipv6 {
                    state.neighbours6.insert(
                        VniIpv6 { vni: endpoint.vni, addr: ipv6.octets() },
                        NeighbourEntry { mac: endpoint.mac.0, _pad: [0; 2] },
                    );
                }
                state
                    .fdb
                    .insert(VniMac::new(endpoint.vni, endpoint.mac.0), FdbEntry { vtep_addr_be, _reserved: 0 });
                state.neighbours.insert(
                    VniIpv4 { vni: endpoint.vni, addr_be: ipv4_be(endpoint.ip) },
                    NeighbourEntry { mac: endpoint.mac.0, _pad: [0; 2] },
                );
            }
        }
        // A flood list for every VNI with a local port (validation bounds the counts).
        for (vni, ports) in flood_ports {
            let mut targets = FloodTargets {
                local_count: 0,
                remote_count: 0,
                local_ifindex: [0; FLOOD_MAX_LOCAL_PORTS],
                remote_vtep_be: [0; FLOOD_MAX_REMOTE_VTEPS],
            };
            for (slot, port) in targets.local_ifindex.iter_mut().zip(&ports) {
                *slot = *port;
                targets.local_count += 1;
            }
            for (slot, vtep) in targets.remote_vtep_be.iter_mut().zip(flood_vteps.get(&vni).into_iter().flatten()) {
                *slot = *vtep;
                targets.remote_count += 1;
            }
            state.flood.insert(vni, targets);
        }
        state
    }
}

/// Changes to one map: entries to write (new or changed) and keys to delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapDiff<K, V> {
    pub upserts: Vec<(K, V)>,
    pub deletes: Vec<K>,
}

impl<K, V> MapDiff<K, V> {
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.deletes.is_empty()
    }
    pub fn len(&self) -> usize {
        self.upserts.len() + self.deletes.len()
    }
}

/// What must change to go from `old` to `new`.
pub fn diff<K: Ord + Copy, V: PartialEq + Copy>(old: &BTreeMap<K, V>, new: &BTreeMap<K, V>) -> MapDiff<K, V> {
    let upserts = new
        .iter()
        .filter(|(key, value)| old.get(key) != Some(value))
        .map(|(key, value)| (*key, *value))
        .collect();
    let deletes = old.keys().filter(|key| !new.contains_key(key)).copied().collect();
    MapDiff { upserts, deletes }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_touches_only_what_changed() {
        let old = BTreeMap::from([(1, 'a'), (2, 'b'), (3, 'c')]);
        let new = BTreeMap::from([(1, 'a'), (2, 'B'), (4, 'd')]);
        let d = diff(&old, &new);
        assert_eq!(d.upserts, vec![(2, 'B'), (4, 'd')]);
        assert_eq!(d.deletes, vec![3]);
        assert!(diff(&new, &new).is_empty());
    }
}
