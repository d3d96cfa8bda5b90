//! Flooding: head-end replication of broadcast, multicast and
//! unknown-unicast frames (RFC 7348 section 4.2, with the static peer list
//! in place of an IP multicast group).
//!
//! From a local port, a frame is cloned to every other local port of its
//! VNI, then encapsulated once and cloned to every peer VTEP that carries
//! the VNI, rewriting only the outer addresses between copies. From the
//! underlay, XDP hands such frames up untouched (it cannot clone) and the
//! TC program here strips the outer headers and clones the frame to every
//! local port of the VNI; it never re-floods to peers (the sender already did).
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC},
    helpers::bpf_clone_redirect,
    programs::TcContext,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, udp::UdpHdr, vxlan::VxlanHdr};
use overlay_common::{
    ETH_HDR_LEN, ETH_P_IPV4, FLOOD_MAX_LOCAL_PORTS, FLOOD_MAX_REMOTE_VTEPS, FloodTargets,
    IPPROTO_UDP, IPV4_HDR_LEN, Reason, UDP_HDR_LEN, VXLAN_ENCAP_LEN, VXLAN_FLAG_VNI_VALID,
};

use crate::{
    counters::Slots,
    decap::check_outer,
    decap_tc::PACKET_OTHERHOST,
    encap::{self, RouteLookup},
    maps::{FLOOD, VNIS, admit, node_config},
    packet::{EndpointFrame, PackedVerdict, Verdict, is_inner_vlan, is_multicast},
};

/// Replicates a frame from local port `ingress_ifindex`.
// Verifier/stack: a BPF-to-BPF call of its own, so the frames this path
// builds do not share the caller's 512-byte stack with the other paths'.
#[inline(never)]
pub fn flood_from_endpoint(frame: &EndpointFrame) -> PackedVerdict {
    PackedVerdict::pack(try_flood_from_endpoint(frame).map(Some))
}

#[inline(always)]
fn try_flood_from_endpoint(frame: &EndpointFrame) -> Result<Verdict<i32>, Reason> {
    let EndpointFrame {
        ctx,
        node,
        vni,
        ifindex: ingress_ifindex,
        eth: inner_eth,
    } = frame;
    let (vni, ingress_ifindex) = (*vni, *ingress_ifindex);
    // The flood list is read through the map pointer: at 392 bytes it would
    // take most of the 512-byte BPF stack.
    let targets: *const FloodTargets = FLOOD.get_ptr(&vni).ok_or(Reason::NO_FLOOD_TARGETS)?;
    // SAFETY: presence test and copy of one field.
    let limit = unsafe { VNIS.get(&vni) }.map_or(0, |info| info.flood_limit);
    // SAFETY: the map value stays valid for the program's run.
    let (local_count, remote_count) = unsafe { ((*targets).local_count, (*targets).remote_count) };

    // How many copies go where is settled before the loops. Verifier: a
    // running count that stays live after the first loop would make the
    // verifier walk the second loop once per way the first can end, which
    // exhausts its budget; budgets computed up front leave no such state.
    // The sender's own port is in the list and gets no copy.
    let local_targets = local_count.saturating_sub(1);
    let local_budget = local_targets.min(limit);
    let remote_budget = remote_count.min(limit - local_budget);
    let reason = if local_budget + remote_budget < local_targets + remote_count {
        Reason::FLOODED_LIMITED
    } else {
        Reason::FLOODED
    };

    let mut sent = 0u32;
    for i in 0..FLOOD_MAX_LOCAL_PORTS {
        if i >= local_count as usize || sent >= local_budget {
            break;
        }
        // SAFETY: as above; i is below the array's length.
        let port = unsafe { (*targets).local_ifindex[i] };
        if port == ingress_ifindex {
            continue; // never back to the sender
        }
        // Egress of the host-side port is the endpoint's ingress.
        // SAFETY: plain helper call; it clones, the original stays ours.
        unsafe { bpf_clone_redirect(ctx.skb.skb, port, 0) };
        sent += 1;
    }

    // The size check is made once, against the first peer's route (peers
    // share the underlay device and its MTU). Verifier: a flag set per copy
    // inside the loop doubles the states the verifier walks per iteration
    // and exhausted its budget. A flooded frame gets no ICMP answer: one too
    // big for the underlay reaches local ports only, and is counted so.
    let outer_len = encap::outer_ip_len(ctx, inner_eth);
    let source_port = encap::source_port_for(ctx, node, inner_eth);
    // SAFETY: the map value stays valid for the program's run.
    let first_vtep = unsafe { (*targets).remote_vtep_be[0] };
    let too_big = remote_budget > 0
        && matches!(encap::route_to_peer(ctx, node, first_vtep, source_port, outer_len), Ok(RouteLookup::TooBig(_)));
    if remote_budget > 0 && !too_big {
        let inner_is_ip = encap::is_ip(inner_eth.ether_type);
        let ip_id = encap::next_ip_id(ctx);
        encap::grow_for_outer_headers(ctx, inner_is_ip)?;
        for i in 0..FLOOD_MAX_REMOTE_VTEPS {
            if i >= remote_budget as usize {
                break;
            }
            // SAFETY: as above; i is below the array's length.
            let vtep = unsafe { (*targets).remote_vtep_be[i] };
            // Copies are cloned, and a clone cannot wait for neighbour
            // resolution: a peer whose next hop is unresolved misses this
            // flood (the agent keeps peers' next hops resolved).
            let route = match encap::route_to_peer(ctx, node, vtep, source_port, 0) {
                Ok(RouteLookup::Found(route)) if route.resolved => route,
                _ => continue,
            };
            encap::write_flooded_outer_headers(
                ctx,
                node,
                vni,
                vtep,
                &route,
                source_port,
                ip_id,
                inner_eth,
            )?;
            // SAFETY: plain helper call.
            unsafe { bpf_clone_redirect(ctx.skb.skb, route.ifindex, 0) };
        }
    }
    // Frames too big for the underlay reached local ports only: say so.
    let reason = if too_big { Reason::TOO_BIG_FOR_UNDERLAY } else { reason };
    // Every copy has gone; the original is done with.
    Ok(Verdict {
        action: TC_ACT_SHOT,
        reason,
    })
}

/// IPv4 flags/fragment-offset field: More Fragments flag and offset bits.
const IPV4_MF_AND_OFFSET: u16 = 0x3fff;
const VXLAN_OFFSET: usize = ETH_HDR_LEN + IPV4_HDR_LEN + UDP_HDR_LEN;

/// TC ingress of the underlay: replicates a broadcast or multicast VXLAN
/// frame that XDP passed up to every local port of its VNI. `Ok(None)` for
/// everything else, which goes on untouched and uncounted (XDP counted it).
/// `slots` gets the sending peer's and the VNI's counter slots.
pub fn try_underlay_flood(ctx: &TcContext, slots: &mut Slots) -> Result<Option<Verdict<i32>>, Reason> {
    let Some(node) = node_config() else {
        return Ok(None);
    };
    let Ok(eth) = ctx.load::<EthHdr>(0) else {
        return Ok(None);
    };
    if eth.ether_type != ETH_P_IPV4.to_be() {
        return Ok(None);
    }
    let Ok(ip) = ctx.load::<Ipv4Hdr>(ETH_HDR_LEN) else {
        return Ok(None);
    };
    // XDP has dropped VXLAN with options and first fragments; a later
    // fragment has no UDP header at all (its data could look like one) and
    // is the stack's to reassemble: not ours.
    if ip.vihl != 0x45
        || u16::from_be_bytes(ip.frags) & IPV4_MF_AND_OFFSET != 0
        || ip.proto != IPPROTO_UDP
        || u32::from_ne_bytes(ip.dst_addr) != node.vtep_addr_be
    {
        return Ok(None);
    }
    let Ok(udp) = ctx.load::<UdpHdr>(ETH_HDR_LEN + IPV4_HDR_LEN) else {
        return Ok(None);
    };
    if u16::from_ne_bytes(udp.dst) != node.vxlan_port_be {
        return Ok(None);
    }
    let Ok(inner) = ctx.load::<EthHdr>(VXLAN_ENCAP_LEN) else {
        return Ok(None);
    };
    if !is_multicast(&inner.dst_addr) {
        return Ok(None); // unicast was delivered or dropped by XDP
    }
    // The judgement's checks again (XDP made them already), so that this
    // path is safe on its own.
    // SAFETY: reading fields of the context the kernel handed us.
    let (gso, other_host) = unsafe { ((*ctx.skb.skb).gso_size != 0, (*ctx.skb.skb).pkt_type == PACKET_OTHERHOST) };
    check_outer(&ip, &udp, ctx.len() as usize, gso, other_host)?;
    let vxlan: VxlanHdr = ctx
        .load(VXLAN_OFFSET)
        .map_err(|_| Reason::VXLAN_TRUNCATED)?;
    if vxlan.flags & VXLAN_FLAG_VNI_VALID == 0 {
        return Err(Reason::VXLAN_FLAGS_INVALID);
    }
    if is_inner_vlan(inner.ether_type) {
        return Err(Reason::INNER_VLAN);
    }
    let vni = u32::from_be_bytes([0, vxlan.vni[0], vxlan.vni[1], vxlan.vni[2]]);
    // Checked again, so that this path is safe on its own.
    admit(u32::from_ne_bytes(ip.src_addr), vni, slots)?;
    let targets: *const FloodTargets = FLOOD.get_ptr(&vni).ok_or(Reason::NO_FLOOD_TARGETS)?;

    // Decapsulate: the inner Ethernet header goes over the outer one, then
    // the 50 bytes after it (outer IPv4, UDP, VXLAN and the inner header's
    // old copy) are removed.
    ctx.store(0, &inner, 0).map_err(|_| Reason::DECAP_FAILED)?;
    ctx.skb
        .adjust_room(-(VXLAN_ENCAP_LEN as i32), BPF_ADJ_ROOM_MAC, 0)
        .map_err(|_| Reason::DECAP_FAILED)?;

    // SAFETY: the map value stays valid for the program's run.
    let local_count = unsafe { (*targets).local_count } as usize;
    for i in 0..FLOOD_MAX_LOCAL_PORTS {
        if i >= local_count {
            break;
        }
        // SAFETY: as above; i is below the array's length.
        let port = unsafe { (*targets).local_ifindex[i] };
        // SAFETY: plain helper call.
        unsafe { bpf_clone_redirect(ctx.skb.skb, port, 0) };
    }
    Ok(Some(Verdict {
        action: TC_ACT_SHOT,
        reason: Reason::FLOODED,
    }))
}

/// Action for frames the underlay flood program leaves alone.
pub const PASS_UNTOUCHED: i32 = TC_ACT_OK;
