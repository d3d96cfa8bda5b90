//! TC ingress of an endpoint's host-side port, i.e. every frame a container
//! sends: ARP and ND answers, local switching, VXLAN encapsulation to a
//! peer, or flooding.
use aya_ebpf::{helpers::bpf_redirect_peer, programs::TcContext};
use network_types::eth::EthHdr;
use overlay_common::{ETH_P_ARP, ETH_P_IPV6, Reason, VXLAN_ENCAP_LEN, VniMac};

use crate::{
    arp,
    counters::Slots,
    encap::{self, RouteLookup},
    flood, icmp, learning,
    maps::{FDB, LOCAL_ENDPOINTS, PORTS, node_config},
    nd,
    packet::{
        BROADCAST_MAC, EndpointFrame, Verdict, is_inner_vlan, is_ipv6_multicast, is_multicast,
    },
};

/// Judges and acts on a frame from a port; `slots` gets the port's VNI's
/// counter slot, and the peer's for a frame to a remote endpoint.
/// (Flooded copies to peers count in the VNI's counters only.)
pub fn try_endpoint(ctx: &TcContext, slots: &mut Slots) -> Result<Verdict<i32>, Reason> {
    // SAFETY: reading a field of the context the kernel handed us.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: read and copied at once.
    let port = unsafe { PORTS.get(&ifindex) }.ok_or(Reason::PORT_NOT_CONFIGURED)?;
    let vni = port.vni;
    slots.vni = port.vni_slot;
    let node = node_config().ok_or(Reason::PORT_NOT_CONFIGURED)?;
    let eth: EthHdr = ctx.load(0).map_err(|_| Reason::TRUNCATED_ETHERNET)?;
    if is_inner_vlan(eth.ether_type) {
        return Err(Reason::INNER_VLAN);
    }
    let destination = eth.dst_addr;
    let frame = EndpointFrame {
        ctx,
        node,
        vni,
        ifindex,
        eth,
    };
    if is_multicast(&destination) {
        let answered = if destination == BROADCAST_MAC && eth.ether_type == ETH_P_ARP.to_be() {
            arp::answer_request(&frame).unpack()?
        } else if is_ipv6_multicast(&destination) && eth.ether_type == ETH_P_IPV6.to_be() {
            nd::answer_solicitation(&frame).unpack()?
        } else {
            None
        };
        return match answered {
            Some(verdict) => Ok(verdict),
            None => flood::flood_from_endpoint(&frame).verdict(Reason::NO_FLOOD_TARGETS),
        };
    }
    let key = VniMac::new(vni, destination);
    // SAFETY: read and copied at once.
    if let Some(local) = unsafe { LOCAL_ENDPOINTS.get(&key) } {
        // Straight into the other endpoint's namespace, skipping the backlog.
        // SAFETY: plain helper call.
        let action = unsafe { bpf_redirect_peer(local.ifindex, 0) } as i32;
        return Ok(Verdict {
            action,
            reason: Reason::LOCAL_SWITCHED,
        });
    }
    // SAFETY: read and copied at once.
    // Configured entries first; then, in a learning VNI, what was learned.
    let remote = match unsafe { FDB.get(&key) }.map(|entry| (entry.vtep_addr_be, entry.peer_slot)) {
        Some(configured) => Some(configured),
        None => match learning::learned_peer(&key) {
            0 => None,
            packed => Some((packed as u32, (packed >> 32) as u32)),
        },
    };
    match remote {
        Some((remote_vtep_be, peer_slot)) => {
            slots.peer = peer_slot;
            let source_port = encap::source_port_for(ctx, node);
            // Route (and size check) before touching the packet, so a drop
            // leaves it as it was.
            let outer_len = encap::outer_ip_len(ctx, &eth);
            match encap::route_to_peer(ctx, node, remote_vtep_be, source_port, outer_len)? {
                RouteLookup::Found(route) => {
                    encap::encap_along(&frame, remote_vtep_be, &route, source_port)
                        .verdict(Reason::ENCAP_FAILED)
                }
                // Too big once encapsulated: ICMP back to the sender, as the
                // kernel's vxlan does for bridged traffic; never fragmented.
                RouteLookup::TooBig(mtu) => {
                    icmp::reply_too_big(&frame, mtu.saturating_sub(VXLAN_ENCAP_LEN as u32))
                        .verdict(Reason::TOO_BIG_FOR_UNDERLAY)
                }
            }
        }
        // Unknown unicast is flooded, as a learning bridge would.
        None => flood::flood_from_endpoint(&frame).verdict(Reason::NO_FLOOD_TARGETS),
    }
}
