//! The key sets of a node's configuration maps, as both churn tests
//! compare them (tests/tests/churn.rs and cluster_churn.rs include this
//! file): what the live churn calls for against what the pinned maps hold,
//! and a "what differs" message naming each table that does.
use std::{collections::BTreeSet, fmt::Write as _, net::Ipv4Addr};

use overlay::{datapath::ApplyReport, state::MapState};

/// The key sets of each table.
#[derive(Debug, PartialEq, Eq)]
pub struct MapKeys {
    pub vnis: BTreeSet<u32>,
    pub ports: BTreeSet<u32>,
    pub local_endpoints: BTreeSet<(u32, [u8; 6])>,
    pub fdb: BTreeSet<(u32, [u8; 6])>,
    /// VTEP addresses, network byte order.
    pub peers: BTreeSet<u32>,
    /// (VTEP address in network byte order, VNI).
    pub peer_vnis: BTreeSet<(u32, u32)>,
    pub neighbours: BTreeSet<(u32, u32)>,
    pub flood: BTreeSet<u32>,
}

impl MapKeys {
    /// What `state`'s tables hold.
    pub fn found(state: &MapState) -> MapKeys {
        MapKeys {
            vnis: state.vnis.keys().copied().collect(),
            ports: state.ports.keys().copied().collect(),
            local_endpoints: state.local_endpoints.keys().map(|k| (k.vni, k.mac)).collect(),
            fdb: state.fdb.keys().map(|k| (k.vni, k.mac)).collect(),
            peers: state.peers.keys().copied().collect(),
            peer_vnis: state.peer_vnis.keys().map(|k| (k.vtep_addr_be, k.vni)).collect(),
            neighbours: state.neighbours.keys().map(|k| (k.vni, k.addr_be)).collect(),
            flood: state.flood.keys().copied().collect(),
        }
    }

    /// Each table where `found` differs from these expectations, with what
    /// was expected and found (for large tables: the count and the keys
    /// only one side has), or None when they are equal.
    pub fn mismatch(&self, found: &MapKeys) -> Option<String> {
        if self == found {
            return None;
        }
        let mut text = String::new();
        let mut table = |name: &str, want: String, got: String| {
            if want != got {
                let _ = writeln!(text, "{name}:\n  expected {want}\n  found    {got}");
            }
        };
        let macs = |a: &BTreeSet<(u32, [u8; 6])>, b: &BTreeSet<(u32, [u8; 6])>| format!("{} {:x?}", a.len(), only(a, b));
        let addresses = |set: &BTreeSet<u32>| set.iter().map(|a| Ipv4Addr::from(a.to_ne_bytes()).to_string()).collect::<Vec<_>>();
        table("VNIS", format!("{:?}", self.vnis), format!("{:?}", found.vnis));
        table("PORTS", format!("{:?}", self.ports), format!("{:?}", found.ports));
        table("LOCAL_ENDPOINTS", macs(&self.local_endpoints, &found.local_endpoints), macs(&found.local_endpoints, &self.local_endpoints));
        table("FDB", macs(&self.fdb, &found.fdb), macs(&found.fdb, &self.fdb));
        table("PEERS", format!("{:?}", addresses(&self.peers)), format!("{:?}", addresses(&found.peers)));
        table("PEER_VNIS", format!("{} {:?}", self.peer_vnis.len(), only(&self.peer_vnis, &found.peer_vnis)), format!("{} {:?}", found.peer_vnis.len(), only(&found.peer_vnis, &self.peer_vnis)));
        table("NEIGHBOURS", format!("{} {:?}", self.neighbours.len(), only(&self.neighbours, &found.neighbours)), format!("{} {:?}", found.neighbours.len(), only(&found.neighbours, &self.neighbours)));
        table("FLOOD", format!("{:?}", self.flood), format!("{:?}", found.flood));
        Some(text)
    }
}

/// What `a` has that `b` lacks.
fn only<T: Ord + Clone>(a: &BTreeSet<T>, b: &BTreeSet<T>) -> Vec<T> {
    a.difference(b).cloned().collect()
}

/// Where two map states differ: each one's key sets, and the agent's own
/// per-map count of differing entries (every table of the one list).
pub fn state_diff(before: &MapState, after: &MapState) -> String {
    let mut text = String::new();
    let _ = writeln!(text, "before: {:?}", MapKeys::found(before));
    let _ = writeln!(text, "after:  {:?}", MapKeys::found(after));
    if before.node != after.node {
        let _ = writeln!(text, "node: {:?} -> {:?}", before.node, after.node);
    }
    let _ = writeln!(text, "entries that differ, by map: {}", ApplyReport::between(before, after));
    text
}
