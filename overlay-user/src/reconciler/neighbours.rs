//! The managed neighbour entries of the peers' underlay next hops, kept
//! as a diff like the maps: entries of next hops no peer uses any more are
//! removed (the agent marks its entries, see [`crate::neighbour`]).
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
};

use crate::neighbour::Neighbours;

/// The route netlink connection, opened on first use (inside the runtime).
#[derive(Default)]
pub struct NeighbourSync {
    neighbours: Option<Neighbours>,
}

impl NeighbourSync {
    /// Keeps the next hop of every VTEP in `wanted` resolved and removes
    /// this agent's entries on the underlay (and the devices those next
    /// hops use) that no peer needs; returns how many were added and
    /// removed. A failure is a warning: unicast IP still resolves on demand.
    pub async fn sync(&mut self, wanted: &BTreeSet<Ipv4Addr>, underlay_ifindex: u32) -> (usize, usize) {
        if self.neighbours.is_none() {
            match Neighbours::connect() {
                Ok(neighbours) => self.neighbours = Some(neighbours),
                Err(error) => {
                    log::warn!("opening a route netlink socket to keep peers' next hops resolved: {error}");
                    return (0, 0);
                }
            }
        }
        let neighbours = self.neighbours.as_ref().expect("connected above");
        let mut hops = BTreeSet::new();
        for &vtep in wanted {
            match neighbours.next_hop(IpAddr::V4(vtep)).await {
                Ok(hop) => {
                    hops.insert(hop);
                }
                Err(error) => log::warn!("peer {vtep}: cannot keep its underlay next hop resolved ({error}); flooded and non-IP frames to it may be lost until it is"),
            }
        }
        let devices: BTreeSet<u32> = hops.iter().map(|hop| hop.ifindex).chain([underlay_ifindex]).collect();
        let report = neighbours.sync_managed(&hops, &devices).await;
        for hop in &report.removed {
            log::info!("removed the managed neighbour entry of {hop}: no peer uses it any more");
        }
        for (hop, error) in &report.failed {
            log::warn!("next hop {hop}: {error}; flooded and non-IP frames through it may be lost until it resolves");
        }
        (report.added.len(), report.removed.len())
    }
}
