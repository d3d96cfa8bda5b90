//! The managed neighbour entries of the peers' underlay next hops, kept
//! as a diff like the maps.
use std::{collections::BTreeSet, net::Ipv4Addr};

use crate::neighbour::RouteSocket;

/// The peers whose next hops this agent keeps resolved.
#[derive(Default)]
pub struct NeighbourSync {
    kept: BTreeSet<Ipv4Addr>,
}

impl NeighbourSync {
    /// Keeps the next hop of every VTEP in `wanted` resolved; returns how
    /// many were added and removed. A failure is a warning: unicast IP
    /// still resolves on demand.
    pub fn sync(&mut self, wanted: &BTreeSet<Ipv4Addr>) -> (usize, usize) {
        let mut added = 0;
        let mut socket = match RouteSocket::open() {
            Ok(socket) => socket,
            Err(error) => {
                log::warn!("opening a route socket to keep peers' next hops resolved: {error}");
                return (0, 0);
            }
        };
        for &vtep in wanted.difference(&self.kept.clone()) {
            match socket.next_hop(vtep).and_then(|hop| socket.keep_resolved(hop)) {
                Ok(()) => {
                    self.kept.insert(vtep);
                    added += 1;
                }
                Err(error) => log::warn!("peer {vtep}: cannot keep its underlay next hop resolved ({error}); flooded and non-IP frames to it may be lost until it is"),
            }
        }
        let removed = self.kept.difference(wanted).count();
        self.kept.retain(|vtep| wanted.contains(vtep));
        (added, removed)
    }
}
