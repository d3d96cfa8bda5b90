//! TC ingress of an endpoint's host-side port, i.e. every frame a container
//! sends: ARP and ND answers, local switching, VXLAN encapsulation to a
//! peer, or flooding.
use aya_ebpf::{helpers::bpf_redirect_peer, programs::TcContext};
use network_types::eth::EthHdr;
use overlay_common::{ETH_P_ARP, ETH_P_IPV6, Reason, VniMac};

use crate::{
    arp,
    counters::Slots,
    encap,
    flood,
    maps::{FDB, LOCAL_ENDPOINTS, PORTS, node_config},
    nd,
    packet::{
        BROADCAST_MAC, EndpointFrame, Verdict, is_inner_vlan, is_ipv6_multicast, is_multicast, ptr_at,
    },
};

/// The frame's Ethernet header: read in place from the linear part (a
/// container's skbs always start with it), with bpf_skb_load_bytes only
/// for an skb whose linear part is shorter; the helper call cost a few
/// per cent of encapsulation (docs/performance.md).
#[inline(always)]
fn ethernet_header(ctx: &TcContext) -> Option<EthHdr> {
    match ptr_at::<EthHdr>(ctx.data(), ctx.data_end(), 0) {
        // SAFETY: bounds checked by ptr_at; copied at once.
        Some(eth) => Some(unsafe { *eth }),
        None => ctx.load(0).ok(),
    }
}

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
    let eth = ethernet_header(ctx).ok_or(Reason::TRUNCATED_ETHERNET)?;
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
    match unsafe { FDB.get(&key) }.map(|entry| (entry.vtep_addr_be, entry.peer_slot)) {
        Some((remote_vtep_be, peer_slot)) => {
            slots.peer = peer_slot;
            encap::encap_to_peer(&frame, remote_vtep_be).verdict(Reason::ENCAP_FAILED)
        }
        // Unknown unicast is flooded, as a learning bridge would.
        None => flood::flood_from_endpoint(&frame).verdict(Reason::NO_FLOOD_TARGETS),
    }
}
