//! Keeping the underlay next hops of peer VTEPs resolved, over rtnetlink.
//!
//! The datapath takes next-hop MACs from the kernel's neighbour table. A
//! unicast IP frame can wait for resolution (`bpf_redirect_neigh`), but a
//! flooded copy (a clone) or a non-IP frame cannot, and the first frame to
//! a peer is usually a flooded ARP request. So the agent creates a
//! *managed* neighbour entry (NTF_EXT_MANAGED, Linux 5.16+) for each peer's
//! next hop: the kernel resolves it at once and keeps it resolved.
//!
//! Every entry the agent creates carries [`NEIGHBOUR_PROTOCOL`] in its
//! NDA_PROTOCOL attribute (Linux 5.9+), so the entries are found again by a
//! dump, by this agent or a restarted one, and the ones no peer needs any
//! more are removed ([`Neighbours::sync_managed`]).
use std::{
    collections::BTreeSet,
    fmt,
    net::IpAddr,
};

use futures_util::TryStreamExt as _;
use netlink_packet_route::{
    AddressFamily,
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourMessage, NeighbourState},
    route::{RouteAddress, RouteAttribute, RouteProtocol, RouteVia},
};
use rtnetlink::RouteMessageBuilder;

/// The NDA_PROTOCOL value that marks the neighbour entries this project's
/// agent created (a free value of the rtnetlink protocol space, see
/// include/uapi/linux/rtnetlink.h RTPROT_*; `ip neigh` shows it as `proto 111`).
pub const NEIGHBOUR_PROTOCOL: u8 = 111;

/// Where packets to a peer VTEP leave: the device and the next hop (the
/// peer itself when it is on-link, else the gateway).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NextHop {
    pub ifindex: u32,
    pub address: IpAddr,
}

impl fmt::Display for NextHop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on ifindex {}", self.address, self.ifindex)
    }
}

/// Why a netlink request about routes or neighbours failed.
#[derive(Debug, thiserror::Error)]
pub enum NeighbourError {
    /// The netlink socket could not be opened.
    #[error("opening a netlink socket: {0}")]
    Socket(std::io::Error),
    /// The kernel refused or failed a request.
    #[error("{operation} {subject}: {error}")]
    Request { operation: &'static str, subject: String, error: rtnetlink::Error },
    /// The kernel's route has no output device (a blackhole or unreachable route).
    #[error("the route to {0} has no output device")]
    NoDevice(IpAddr),
    /// No route answered.
    #[error("no route to {0}")]
    NoRoute(IpAddr),
}

/// What [`Neighbours::sync_managed`] did.
#[derive(Debug, Default)]
pub struct SyncReport {
    pub added: Vec<NextHop>,
    pub removed: Vec<NextHop>,
    /// Changes that failed (the rest went ahead).
    pub failed: Vec<(NextHop, NeighbourError)>,
}

/// A route netlink connection, served by a task on the current tokio runtime.
#[derive(Clone)]
pub struct Neighbours {
    handle: rtnetlink::Handle,
}

impl Neighbours {
    /// Opens the connection; must be called inside a tokio runtime, which
    /// runs the connection until every clone of the handle is dropped.
    pub fn connect() -> Result<Neighbours, NeighbourError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NeighbourError::Socket)?;
        tokio::spawn(connection);
        Ok(Neighbours { handle })
    }

    /// The kernel's route to `destination` (RTM_GETROUTE), IPv4 or IPv6.
    pub async fn next_hop(&self, destination: IpAddr) -> Result<NextHop, NeighbourError> {
        let length = if destination.is_ipv4() { 32 } else { 128 };
        let request = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(destination, length)
            .expect("a host prefix of the address's own family")
            .build();
        let failed = |error| NeighbourError::Request { operation: "looking up the route to", subject: destination.to_string(), error };
        let route = self.handle.route().get(request).execute().try_next().await.map_err(failed)?;
        let route = route.ok_or(NeighbourError::NoRoute(destination))?;
        let mut ifindex = None;
        let mut gateway = None;
        for attribute in &route.attributes {
            match attribute {
                RouteAttribute::Oif(index) => ifindex = Some(*index),
                RouteAttribute::Gateway(RouteAddress::Inet(v4)) => gateway = Some(IpAddr::V4(*v4)),
                RouteAttribute::Gateway(RouteAddress::Inet6(v6)) => gateway = Some(IpAddr::V6(*v6)),
                // An IPv4 route through an IPv6 gateway (RFC 5549).
                RouteAttribute::Via(RouteVia::Inet6(v6)) => gateway = Some(IpAddr::V6(*v6)),
                RouteAttribute::Via(RouteVia::Inet(v4)) => gateway = Some(IpAddr::V4(*v4)),
                _ => {}
            }
        }
        let ifindex = ifindex.ok_or(NeighbourError::NoDevice(destination))?;
        Ok(NextHop { ifindex, address: gateway.unwrap_or(destination) })
    }

    /// Creates (or turns an existing entry into) a managed neighbour entry
    /// for `hop`, marked as this agent's.
    pub async fn add_managed(&self, hop: &NextHop) -> Result<(), NeighbourError> {
        let mut request = self.handle.neighbours().add(hop.ifindex, hop.address).state(NeighbourState::None).replace();
        let attributes = &mut request.message_mut().attributes;
        attributes.push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
        attributes.push(NeighbourAttribute::Protocol(RouteProtocol::Other(NEIGHBOUR_PROTOCOL)));
        request
            .execute()
            .await
            .map_err(|error| NeighbourError::Request { operation: "adding a managed neighbour entry for", subject: hop.to_string(), error })
    }

    /// Removes the neighbour entry of `hop` (gone already counts as removed).
    pub async fn remove_managed(&self, hop: &NextHop) -> Result<(), NeighbourError> {
        let mut message = NeighbourMessage::default();
        message.header.family = family(hop.address);
        message.header.ifindex = hop.ifindex;
        message.attributes.push(NeighbourAttribute::Destination(neighbour_address(hop.address)));
        match self.handle.neighbours().del(message).execute().await {
            Err(rtnetlink::Error::NetlinkError(error)) if error.raw_code() == -libc::ENOENT => Ok(()),
            result => result.map_err(|error| NeighbourError::Request {
                operation: "removing the managed neighbour entry for",
                subject: hop.to_string(),
                error,
            }),
        }
    }

    /// The neighbour entries this project's agent created (marked with
    /// [`NEIGHBOUR_PROTOCOL`]), IPv4 and IPv6, on every device.
    pub async fn list_managed(&self) -> Result<BTreeSet<NextHop>, NeighbourError> {
        let failed = |error| NeighbourError::Request { operation: "listing", subject: "the neighbour table".into(), error };
        let mut dump = self.handle.neighbours().get().execute();
        let mut ours = BTreeSet::new();
        while let Some(entry) = dump.try_next().await.map_err(failed)? {
            let marked = entry.attributes.iter().any(|a| matches!(a, NeighbourAttribute::Protocol(p) if u8::from(*p) == NEIGHBOUR_PROTOCOL));
            let address = entry.attributes.iter().find_map(|attribute| match attribute {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
                _ => None,
            });
            if let (true, Some(address)) = (marked, address) {
                ours.insert(NextHop { ifindex: entry.header.ifindex, address });
            }
        }
        Ok(ours)
    }

    /// Makes the managed entries on `devices` exactly `wanted`: adds the
    /// missing ones (and re-asserts the present ones, which costs nothing)
    /// and removes the entries of ours no longer wanted. Entries on other
    /// devices are left alone: they may be another node's, whose agent
    /// shares this network namespace with its own underlay.
    pub async fn sync_managed(&self, wanted: &BTreeSet<NextHop>, devices: &BTreeSet<u32>) -> SyncReport {
        let mut report = SyncReport::default();
        let present = match self.list_managed().await {
            Ok(present) => present,
            Err(error) => {
                // Without the list nothing can be removed; adding still helps.
                log::warn!("{error}: stale managed neighbour entries are not removed this time");
                BTreeSet::new()
            }
        };
        for hop in wanted {
            match self.add_managed(hop).await {
                Ok(()) if !present.contains(hop) => report.added.push(*hop),
                Ok(()) => {}
                Err(error) => report.failed.push((*hop, error)),
            }
        }
        for hop in present.iter().filter(|hop| devices.contains(&hop.ifindex) && !wanted.contains(hop)) {
            match self.remove_managed(hop).await {
                Ok(()) => report.removed.push(*hop),
                Err(error) => report.failed.push((*hop, error)),
            }
        }
        report
    }
}

fn family(address: IpAddr) -> AddressFamily {
    match address {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn neighbour_address(address: IpAddr) -> NeighbourAddress {
    match address {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    }
}

/// The next hop to each of `destinations`, for callers without a tokio
/// runtime (`overlay doctor`). Runs on a thread of its own, so it may also
/// be called from inside a runtime.
pub fn next_hops_blocking(destinations: &[IpAddr]) -> Result<Vec<Result<NextHop, NeighbourError>>, NeighbourError> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime =
                    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(NeighbourError::Socket)?;
                runtime.block_on(async {
                    let neighbours = Neighbours::connect()?;
                    let mut hops = Vec::new();
                    for destination in destinations {
                        hops.push(neighbours.next_hop(*destination).await);
                    }
                    Ok(hops)
                })
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
