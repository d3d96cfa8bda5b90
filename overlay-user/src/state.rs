//! What the datapath's maps should hold for a configuration, and the
//! difference between two such states. The agent only ever changes maps by
//! applying a difference, so entries that stay the same are never touched
//! (and traffic that uses them never sees a gap).
use std::collections::{BTreeMap, BTreeSet};

use overlay_common::{
    FLOOD_MAX_LOCAL_PORTS, FLOOD_MAX_REMOTE_VTEPS, FdbEntry, FloodTargets, LearningPolicy, LocalEndpoint,
    NO_COUNTER_SLOT, NeighbourEntry, NodeConfig, PEER_COUNTER_SLOTS, PeerInfo, PeerVni, PeerVniInfo,
    PortInfo, VNI_COUNTER_SLOTS, VniInfo, VniIpv4, VniIpv6, VniMac,
};

use crate::{
    model::MacAddr,
    netdev::ResolvedConfig,
    reconciler::Resolved,
    slots::{self, SlotsFull},
};

/// The full contents of every configuration map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapState {
    pub node: Option<NodeConfig>,
    pub vnis: BTreeMap<u32, VniInfo>,
    pub ports: BTreeMap<u32, PortInfo>,
    pub local_endpoints: BTreeMap<VniMac, LocalEndpoint>,
    pub fdb: BTreeMap<VniMac, FdbEntry>,
    pub peers: BTreeMap<u32, PeerInfo>,
    pub peer_vnis: BTreeMap<PeerVni, PeerVniInfo>,
    pub neighbours: BTreeMap<VniIpv4, NeighbourEntry>,
    pub neighbours6: BTreeMap<VniIpv6, NeighbourEntry>,
    pub flood: BTreeMap<u32, FloodTargets>,
    /// VNIs that learn (RFC 7348 section 4.1), with their ageing.
    pub learning: BTreeMap<u32, LearningPolicy>,
}

/// Network byte order as the datapath compares it: the address's octets in memory order.
pub fn ipv4_be(addr: std::net::Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

impl MapState {
    /// The state for a configuration file whose interfaces all exist.
    pub fn from_config(resolved: &ResolvedConfig, previous: &MapState) -> Result<MapState, SlotsFull> {
        MapState::from_resolved(&Resolved::from_config(resolved), previous)
    }

    /// The state for a resolved model (pending endpoints are left out).
    /// Counter slots (see [`crate::slots`]) are kept from `previous`, the
    /// state the maps hold now, for every VNI and peer that stays; new ones
    /// get free slots. Fails only when there are more VNIs or peers than
    /// slots, which validation refuses first. Flood lists hold at most the
    /// datapath's capacity, which validation also refuses to exceed.
    pub fn from_resolved(resolved: &Resolved, previous: &MapState) -> Result<MapState, SlotsFull> {
        let vni_slots = slots::assign("VNI", &previous.vni_slots(), &resolved.local_vnis(), VNI_COUNTER_SLOTS)?;
        let peer_slots = slots::assign(
            "peer",
            &previous.peer_slots(),
            &resolved.peers.iter().map(|p| ipv4_be(p.vtep_address)).collect(),
            PEER_COUNTER_SLOTS,
        )?;
        let vni_slot = |vni: u32| vni_slots.get(&vni).copied().unwrap_or(NO_COUNTER_SLOT);
        let mut state = MapState {
            node: Some(NodeConfig {
                vtep_addr_be: ipv4_be(resolved.vtep_address),
                underlay_ifindex: resolved.underlay_ifindex,
                vxlan_port_be: resolved.vxlan_port.to_be(),
                source_port_min: resolved.source_port_min,
                source_port_max: resolved.source_port_max,
                ttl: resolved.ttl,
                learning: 0, // set below, once the learning VNIs are known
                configured: 1,
            }),
            ..MapState::default()
        };
        let neighbour = |mac: MacAddr| NeighbourEntry { mac: mac.0, _pad: [0; 2] };
        let mut flood_ports: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
        let mut flood_vteps: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
        for endpoint in &resolved.endpoints {
            let (vni, ifindex) = (endpoint.vni, endpoint.ifindex);
            state.vnis.insert(vni, VniInfo { counter_slot: vni_slot(vni), flood_limit: resolved.flood_limit(vni) });
            flood_ports.entry(vni).or_default().insert(ifindex);
            if let Some(ipv6) = endpoint.ipv6 {
                state.neighbours6.insert(VniIpv6 { vni, addr: ipv6.octets() }, neighbour(endpoint.mac));
            }
            state.ports.insert(ifindex, PortInfo { vni, vni_slot: vni_slot(vni) });
            state.local_endpoints.insert(VniMac::new(vni, endpoint.mac.0), LocalEndpoint { ifindex, _reserved: 0 });
            if let Some(ip) = endpoint.ipv4 {
                state.neighbours.insert(VniIpv4 { vni, addr_be: ipv4_be(ip) }, neighbour(endpoint.mac));
            }
        }
        for peer in &resolved.peers {
            let vtep_addr_be = ipv4_be(peer.vtep_address);
            let peer_slot = peer_slots.get(&vtep_addr_be).copied().unwrap_or(NO_COUNTER_SLOT);
            state.peers.insert(vtep_addr_be, PeerInfo { flags: 0, counter_slot: peer_slot });
            for &vni in &peer.vnis {
                flood_vteps.entry(vni).or_default().insert(vtep_addr_be);
                // Only VNIs this node carries: VXLAN for others is dropped anyway.
                if state.vnis.contains_key(&vni) {
                    state.peer_vnis.insert(PeerVni { vtep_addr_be, vni }, PeerVniInfo { peer_slot, vni_slot: vni_slot(vni) });
                }
            }
            for endpoint in &peer.endpoints {
                let vni = endpoint.vni;
                if let Some(ipv6) = endpoint.ipv6 {
                    state.neighbours6.insert(VniIpv6 { vni, addr: ipv6.octets() }, neighbour(endpoint.mac));
                }
                state.fdb.insert(VniMac::new(vni, endpoint.mac.0), FdbEntry { vtep_addr_be, peer_slot });
                if let Some(ip) = endpoint.ipv4 {
                    state.neighbours.insert(VniIpv4 { vni, addr_be: ipv4_be(ip) }, neighbour(endpoint.mac));
                }
            }
        }
        // Learning only where the node carries the VNI (has a local port).
        for (&vni, &ageing_seconds) in &resolved.learning {
            if state.vnis.contains_key(&vni) {
                state.learning.insert(vni, LearningPolicy { ageing_ns: u64::from(ageing_seconds) * 1_000_000_000 });
            }
        }
        if let Some(node) = state.node.as_mut() {
            node.learning = u8::from(!state.learning.is_empty());
        }
        // A flood list for every VNI with a local port.
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
        Ok(state)
    }

    /// The counter slot of every VNI that has one.
    pub fn vni_slots(&self) -> BTreeMap<u32, u32> {
        slots::held(&self.vnis, |info| info.counter_slot)
    }

    /// The counter slot of every peer VTEP (network byte order) that has one.
    pub fn peer_slots(&self) -> BTreeMap<u32, u32> {
        slots::held(&self.peers, |info| info.counter_slot)
    }

    /// This state with the given VNI and peer slots written nowhere (zero
    /// in every value that would carry them): their holders count only in
    /// the node's counters.
    pub fn withholding(&self, vni_slots: &BTreeSet<u32>, peer_slots: &BTreeSet<u32>) -> MapState {
        let vni = |slot: &mut u32| {
            if vni_slots.contains(slot) {
                *slot = NO_COUNTER_SLOT;
            }
        };
        let peer = |slot: &mut u32| {
            if peer_slots.contains(slot) {
                *slot = NO_COUNTER_SLOT;
            }
        };
        let mut state = self.clone();
        state.vnis.values_mut().for_each(|info| vni(&mut info.counter_slot));
        state.ports.values_mut().for_each(|port| vni(&mut port.vni_slot));
        state.peers.values_mut().for_each(|info| peer(&mut info.counter_slot));
        state.fdb.values_mut().for_each(|entry| peer(&mut entry.peer_slot));
        for info in state.peer_vnis.values_mut() {
            vni(&mut info.vni_slot);
            peer(&mut info.peer_slot);
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
    use crate::Config;

    /// A node with a port in each of `vnis` (ifindex 10, 11, ...) and a
    /// peer per address of `peers`, each with an endpoint in the first VNI.
    fn resolved(vnis: &[u32], peers: &[&str]) -> ResolvedConfig {
        let mut text = "[node]\nname = \"n\"\nunderlay_interface = \"ul\"\nvtep_address = \"192.0.2.1\"\n".to_owned();
        for (i, vni) in vnis.iter().enumerate() {
            text += &format!("[[endpoints]]\ninterface = \"p{i}\"\nmac = \"02:00:00:00:01:{i:02x}\"\nip = \"10.0.0.{i}\"\nvni = {vni}\n");
        }
        for (i, peer) in peers.iter().enumerate() {
            text += &format!(
                "[[peers]]\nname = \"peer{i}\"\nvtep_address = \"{peer}\"\n[[peers.endpoints]]\nmac = \"02:00:00:00:02:{i:02x}\"\nip = \"10.0.1.{i}\"\nvni = {}\n",
                vnis[0]
            );
        }
        let config = Config::parse(&text, std::path::Path::new("n.toml")).unwrap();
        ResolvedConfig { config, underlay_ifindex: 1, endpoint_ifindex: (10..10 + vnis.len() as u32).collect() }
    }

    fn be(addr: &str) -> u32 {
        ipv4_be(addr.parse().unwrap())
    }

    #[test]
    fn every_value_carries_the_slots_of_its_vni_and_peer() {
        let state = MapState::from_config(&resolved(&[100, 200], &["192.0.2.2", "192.0.2.3"]), &MapState::default()).unwrap();
        let vni_slots = state.vni_slots();
        let peer_slots = state.peer_slots();
        assert_eq!(vni_slots, BTreeMap::from([(100, 1), (200, 2)]));
        assert_eq!(peer_slots, BTreeMap::from([(be("192.0.2.2"), 1), (be("192.0.2.3"), 2)]));
        for port in state.ports.values() {
            assert_eq!(port.vni_slot, vni_slots[&port.vni], "{port:?}");
        }
        for (key, entry) in &state.fdb {
            assert_eq!(entry.peer_slot, peer_slots[&entry.vtep_addr_be], "{key:?}: {entry:?}");
        }
        assert!(!state.peer_vnis.is_empty());
        for (key, info) in &state.peer_vnis {
            assert_eq!((info.peer_slot, info.vni_slot), (peer_slots[&key.vtep_addr_be], vni_slots[&key.vni]), "{key:?}");
        }
    }

    #[test]
    fn slots_stay_with_their_vni_and_peer_across_a_reload() {
        let first = MapState::from_config(&resolved(&[100, 200], &["192.0.2.2", "192.0.2.3"]), &MapState::default()).unwrap();
        // VNI 200 and peer .2 go, VNI 300 and peer .4 come.
        let second = MapState::from_config(&resolved(&[100, 300], &["192.0.2.3", "192.0.2.4"]), &first).unwrap();
        assert_eq!(second.vni_slots(), BTreeMap::from([(100, 1), (300, 3)]));
        assert_eq!(second.peer_slots(), BTreeMap::from([(be("192.0.2.3"), 2), (be("192.0.2.4"), 3)]));
        // A state read back from the maps (adoption) gives the same slots.
        assert_eq!(MapState::from_config(&resolved(&[100, 300], &["192.0.2.3", "192.0.2.4"]), &second).unwrap(), second);
    }

    #[test]
    fn withholding_removes_a_slot_from_every_value() {
        let state = MapState::from_config(&resolved(&[100, 200], &["192.0.2.2"]), &MapState::default()).unwrap();
        let withheld = state.withholding(&BTreeSet::from([2]), &BTreeSet::from([1]));
        assert_eq!(withheld.vni_slots(), BTreeMap::from([(100, 1)]));
        assert!(withheld.peer_slots().is_empty());
        assert!(withheld.ports.values().all(|port| port.vni_slot == if port.vni == 100 { 1 } else { 0 }));
        assert!(withheld.fdb.values().all(|entry| entry.peer_slot == 0));
        assert!(withheld.peer_vnis.values().all(|info| info.peer_slot == 0 && info.vni_slot == 1));
    }

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
