//! VXLAN decapsulation in TC, on the underlay device's ingress (`--decap
//! tc`): the same judgement as the XDP program (`decap::judge`), acted on
//! an skb.
//!
//! Why a TC mode: an skb keeps its checksum and GSO state through it. XDP
//! on a veth turns the skb into an XDP frame and loses CHECKSUM_PARTIAL, so
//! over a veth underlay with transmit offloads on, the inner checksums
//! arrive unfinished and the receiver drops the packets; in TC a 64 KB GSO
//! aggregate crosses as one skb and is decapsulated once. Unicast goes
//! straight into the endpoint's namespace with `bpf_redirect_peer` (no
//! second pass through a veth transmit and backlog); flooded frames are
//! replicated here too (`flood::try_underlay_flood`), so no XDP program is
//! attached in this mode.
use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_DECAP_L3_IPV6, BPF_F_ADJ_ROOM_FIXED_GSO, TC_ACT_OK, TC_ACT_REDIRECT,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    helpers::{bpf_redirect, bpf_redirect_peer, bpf_skb_change_type},
    programs::TcContext,
};
use network_types::{arp::ArpHdr, eth::EthHdr};
use overlay_common::{ETH_HDR_LEN, ETH_P_IPV4, ETH_P_IPV6, Reason, VXLAN_ENCAP_LEN};

use crate::{
    counters::Slots,
    decap::{Delivery, INNER_ETH_OFFSET, Judgement, judge},
    flood,
    packet::{Verdict, ptr_at},
};

/// Bytes the judgement reads: outer headers (with the longest IPv4 header
/// it inspects before refusing options), the inner Ethernet header and an
/// ARP request.
const HEADERS_READ: u32 = (INNER_ETH_OFFSET + ETH_HDR_LEN + core::mem::size_of::<ArpHdr>()) as u32;

/// `skb->pkt_type` of a frame addressed to this host.
const PACKET_HOST: u32 = 0;
/// `skb->pkt_type` of a frame addressed to another host's unicast MAC
/// (include/uapi/linux/if_packet.h): seen in promiscuous mode, or on a
/// hub-like segment such as a veth or a bridge flooding unknown unicast.
pub const PACKET_OTHERHOST: u32 = 3;

const PASS: Verdict<i32> = Verdict {
    action: TC_ACT_OK,
    reason: Reason::PASSED,
};

/// Judges and acts on a frame; `slots` gets the peer's and VNI's counter
/// slots once the peer is known.
pub fn try_decap_tc(ctx: &TcContext, slots: &mut Slots) -> Result<Verdict<i32>, Reason> {
    let len = ctx.len();
    let wanted = len.min(HEADERS_READ);
    // Direct packet access sees only the skb's linear part. A driver that
    // splits headers (or GRO) can leave them in fragments: pull them in.
    // A failed pull leaves the frame to the stack, as too short to judge.
    if ((ctx.data_end() - ctx.data()) as u32) < wanted && ctx.pull_data(wanted).is_err() {
        return Ok(PASS);
    }
    // SAFETY: reading fields of the context the kernel handed us.
    let (gso, other_host) = unsafe { ((*ctx.skb.skb).gso_size != 0, (*ctx.skb.skb).pkt_type == PACKET_OTHERHOST) };
    let (start, end) = (ctx.data(), ctx.data_end());
    let ifindex = match judge(start, end, len as usize, gso, other_host, slots)? {
        Judgement::NotOurs => return Ok(PASS),
        Judgement::Deliver(Delivery::Port(ifindex)) => ifindex,
        Judgement::Deliver(Delivery::Flood) => {
            return flood::try_underlay_flood(ctx, slots)?.ok_or(Reason::DECAP_FAILED);
        }
    };
    // Re-derived for the verifier: judge's pointers are its own.
    let inner = ptr_at::<EthHdr>(start, end, INNER_ETH_OFFSET).ok_or(Reason::VXLAN_TRUNCATED)?;
    // SAFETY: bounds checked by ptr_at; copied before the packet changes.
    let inner = unsafe { *inner };

    // The inner Ethernet header goes over the outer one, then the 50 bytes
    // after it (outer IPv4, UDP, VXLAN, and the inner header's old copy)
    // are removed. FIXED_GSO: a GSO aggregate's gso_size is already the
    // inner segment size the sender chose (the kernel would add 50).
    ctx.store(0, &inner, 0).map_err(|_| Reason::DECAP_FAILED)?;
    let inner_ipv4 = inner.ether_type == ETH_P_IPV4.to_be();
    let inner_ipv6 = inner.ether_type == ETH_P_IPV6.to_be();
    // skb->protocol stays the outer one (IPv4) unless DECAP_L3_IPV6 makes
    // it follow an inner IPv6 packet. Kernel behaviour: that flag exists
    // from Linux 6.3; older kernels (Debian 12's 6.1) answer -EINVAL from
    // the flag check before touching the skb, so the frame is decapsulated
    // again without it. Then, as for ARP, it goes through the port's
    // transmit below, where veth's receive (eth_type_trans) sets the
    // protocol from the inner header.
    let protocol_follows_inner = inner_ipv4
        || (inner_ipv6
            && ctx
                .skb
                .adjust_room(
                    -(VXLAN_ENCAP_LEN as i32),
                    BPF_ADJ_ROOM_MAC,
                    (BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_DECAP_L3_IPV6) as u64,
                )
                .is_ok());
    if !(inner_ipv6 && protocol_follows_inner) {
        ctx.skb
            .adjust_room(-(VXLAN_ENCAP_LEN as i32), BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_FIXED_GSO as u64)
            .map_err(|_| Reason::DECAP_FAILED)?;
    }

    let action = if protocol_follows_inner {
        // The outer frame may have had a multicast or broadcast destination
        // (another host's unicast MAC was refused by the judgement); the
        // inner one is for the endpoint, whose IP layer would drop anything
        // not marked as addressed to it.
        // SAFETY: reading a context field; plain helper call.
        if unsafe { (*ctx.skb.skb).pkt_type } != PACKET_HOST {
            unsafe { bpf_skb_change_type(ctx.skb.skb, PACKET_HOST) };
        }
        // Straight into the endpoint's namespace: its ingress, this softirq.
        // SAFETY: plain helper call.
        unsafe { bpf_redirect_peer(ifindex, 0) }
    } else {
        // SAFETY: plain helper call.
        unsafe { bpf_redirect(ifindex, 0) }
    } as i32;
    if action != TC_ACT_REDIRECT as i32 {
        return Err(Reason::DECAP_FAILED);
    }
    Ok(Verdict {
        action,
        reason: Reason::FORWARDED,
    })
}
