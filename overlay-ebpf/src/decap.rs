//! VXLAN decapsulation (RFC 7348) on the underlay device: the judgement
//! shared by both decapsulation hooks, and the XDP program's actions (the
//! TC program's are in `decap_tc`).
//!
//! Anything that is not UDP to this node's VTEP address and VXLAN port goes
//! to the kernel stack untouched (XDP_PASS). What is addressed to our VXLAN
//! port is ours to judge: it is either delivered to the local endpoint that
//! owns the inner destination, or dropped with a counted reason.
use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_redirect, bpf_xdp_adjust_head},
    programs::XdpContext,
};
use network_types::{arp::ArpHdr, eth::EthHdr, ip::Ipv4Hdr, udp::UdpHdr, vxlan::VxlanHdr};
use overlay_common::{
    ETH_HDR_LEN, ETH_P_ARP, ETH_P_IPV4, IPPROTO_UDP, IPV4_HDR_LEN, Reason, UDP_HDR_LEN,
    VXLAN_ENCAP_LEN, VXLAN_FLAG_VNI_VALID, VXLAN_HDR_LEN, VniIpv4, VniMac,
};

use crate::{
    arp::{self, ArpBroadcast},
    counters::Slots,
    learning,
    maps::{LOCAL_ENDPOINTS, NEIGHBOURS, UNDERLAY_MAC, admit, node_config},
    packet::{BROADCAST_MAC, Verdict, as_bytes, fold_checksum, is_inner_vlan, is_multicast, ptr_at, sum_words},
};

const VXLAN_OFFSET: usize = ETH_HDR_LEN + IPV4_HDR_LEN + UDP_HDR_LEN;
pub const INNER_ETH_OFFSET: usize = VXLAN_ENCAP_LEN;
/// IPv4 flags/fragment-offset field: More Fragments flag and offset bits.
const IPV4_MF_AND_OFFSET: u16 = 0x3fff;
const IPV4_OFFSET_MASK: u16 = 0x1fff;

const PASS: Verdict<u32> = Verdict {
    action: xdp_action::XDP_PASS,
    reason: Reason::PASSED,
};

/// Judges and acts on a frame; `slots` gets the peer's and VNI's counter
/// slots once the peer is known.
pub fn try_decap(ctx: &XdpContext, slots: &mut Slots) -> Result<Verdict<u32>, Reason> {
    let (start, end) = (ctx.data(), ctx.data_end());
    let ifindex = match judge(start, end, end - start, false, for_another_host(start, end), slots)? {
        Judgement::NotOurs => return Ok(PASS),
        Judgement::Deliver(Delivery::Port(ifindex)) => ifindex,
        // XDP cannot clone: the TC program on this device replicates it.
        Judgement::Deliver(Delivery::Flood) => {
            return Ok(Verdict {
                action: xdp_action::XDP_PASS,
                reason: Reason::FLOOD_HANDOFF,
            });
        }
    };

    // SAFETY: plain helper call; no packet pointer is used after it.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, VXLAN_ENCAP_LEN as i32) } != 0 {
        // Should never happen: worth a log line (cold path, outside any loop,
        // so it costs the verifier little at any log level).
        aya_log_ebpf::warn!(ctx, "bpf_xdp_adjust_head failed on a VXLAN frame of {} bytes", end - start);
        return Err(Reason::DECAP_FAILED);
    }
    // SAFETY: plain helper call.
    let action = unsafe { bpf_redirect(ifindex, 0) } as u32;
    Ok(Verdict {
        action,
        reason: Reason::FORWARDED,
    })
}

/// Whether the frame's outer destination is another host's unicast MAC,
/// as the kernel's `eth_type_trans` would mark it (PACKET_OTHERHOST). XDP
/// runs before there is an skb to ask, so it compares with the underlay
/// device's MAC, which the agent writes at every attach; while it is
/// all-zero nothing is refused. An array lookup (which the verifier
/// inlines) and a 6-byte compare.
#[inline(always)]
fn for_another_host(start: usize, end: usize) -> bool {
    let Some(eth) = ptr_at::<EthHdr>(start, end, 0) else {
        return false;
    };
    // SAFETY: bounds checked by ptr_at; copied at once.
    let destination = unsafe { (*eth).dst_addr };
    if is_multicast(&destination) {
        return false;
    }
    match UNDERLAY_MAC.get(0) {
        Some(own) if own.mac != [0; 6] => destination != own.mac,
        _ => false,
    }
}

/// What a frame on the underlay is to us.
pub enum Judgement {
    /// Not VXLAN to this VTEP: the kernel stack's.
    NotOurs,
    /// VXLAN from an admitted peer, to be delivered so.
    Deliver(Delivery),
}

/// Judges the frame whose headers are in `[start, end)`: `frame_len` is
/// the whole frame's length (for an skb, more than its linear part may
/// hold), `gso` whether it is a GSO aggregate, whose outer lengths are
/// those of its first segment (a veth carries such skbs unsegmented),
/// `other_host` whether the frame's outer destination MAC is another
/// host's (the skb's PACKET_OTHERHOST in TC; [`for_another_host`] in XDP). Shared by the XDP and TC
/// decapsulation programs. `slots` gets the peer's and VNI's counter slots
/// once the peer is known.
#[inline(always)]
pub fn judge(
    start: usize,
    end: usize,
    frame_len: usize,
    gso: bool,
    other_host: bool,
    slots: &mut Slots,
) -> Result<Judgement, Reason> {
    let Some(node) = node_config() else {
        return Ok(Judgement::NotOurs);
    };

    let Some(eth) = ptr_at::<EthHdr>(start, end, 0) else {
        return Ok(Judgement::NotOurs);
    };
    // SAFETY (all packet reads below): ptr_at checked the bounds.
    if unsafe { (*eth).ether_type } != ETH_P_IPV4.to_be() {
        return Ok(Judgement::NotOurs);
    }
    let Some(ip) = ptr_at::<Ipv4Hdr>(start, end, ETH_HDR_LEN) else {
        return Ok(Judgement::NotOurs);
    };
    let ip = unsafe { &*ip };
    if ip.proto != IPPROTO_UDP
        || u32::from_ne_bytes(ip.dst_addr) != node.vtep_addr_be
        || ip.vihl >> 4 != 4
    {
        return Ok(Judgement::NotOurs);
    }
    let ihl = (ip.vihl & 0x0f) as usize;
    if ihl < 5 {
        return Ok(Judgement::NotOurs); // not a valid IPv4 header; the stack drops it
    }
    let fragment = u16::from_be_bytes(ip.frags);
    if fragment & IPV4_OFFSET_MASK != 0 {
        return Ok(Judgement::NotOurs); // a later fragment has no UDP header to judge by
    }
    // The masked ihl bounds the offset to 34..=74, which the verifier tracks.
    let udp_offset = ETH_HDR_LEN + ihl * 4;
    let Some(udp) = ptr_at::<UdpHdr>(start, end, udp_offset) else {
        return Ok(Judgement::NotOurs);
    };
    let udp = unsafe { &*udp };
    if u16::from_ne_bytes(udp.dst) != node.vxlan_port_be {
        return Ok(Judgement::NotOurs);
    }

    // UDP to our VTEP's VXLAN port: from here on, ours to deliver or drop.
    check_outer(ip, udp, frame_len, gso, other_host)?;
    let vxlan = ptr_at::<VxlanHdr>(start, end, VXLAN_OFFSET).ok_or(Reason::VXLAN_TRUNCATED)?;
    let vxlan = unsafe { &*vxlan };
    // RFC 7348 section 5: the I flag MUST be 1; the other flag bits and the
    // reserved fields are ignored on receipt.
    if vxlan.flags & VXLAN_FLAG_VNI_VALID == 0 {
        return Err(Reason::VXLAN_FLAGS_INVALID);
    }
    let vni = u32::from_be_bytes([0, vxlan.vni[0], vxlan.vni[1], vxlan.vni[2]]);
    // Only a configured peer, and only for a VNI it carries (spoofing and
    // tenant isolation).
    let source_be = u32::from_ne_bytes(ip.src_addr);
    admit(source_be, vni, slots)?;
    // Only now, from a peer admitted for the VNI: a frame refused above
    // teaches nothing (RFC 7348 section 4.1 learning, restricted). A node
    // where no VNI learns skips it on a byte it has read already.
    if node.learning != 0 {
        learning::learn_from_frame(start, end, vni, source_be, slots.peer, frame_len);
    }
    delivery_for(start, end, vni).map(Judgement::Deliver)
}

/// The checks of the outer headers of a frame that is UDP to our VTEP's
/// VXLAN port, shared by the judgement and the underlay flood program (so
/// that it is safe on its own). `frame_len`, `gso` and `other_host` as
/// for [`judge`].
#[inline(always)]
pub fn check_outer(ip: &Ipv4Hdr, udp: &UdpHdr, frame_len: usize, gso: bool, other_host: bool) -> Result<(), Reason> {
    // A frame a switch or hub sent to another host's MAC is not ours to
    // deliver: the kernel's IP layer drops PACKET_OTHERHOST (ip_rcv), and
    // only a multicast or broadcast outer destination reaches every host.
    if other_host {
        return Err(Reason::OUTER_OTHER_HOST);
    }
    if u16::from_be_bytes(ip.frags) & IPV4_MF_AND_OFFSET != 0 {
        return Err(Reason::OUTER_FRAGMENT);
    }
    if ip.vihl != 0x45 {
        return Err(Reason::OUTER_IP_OPTIONS);
    }
    // RFC 1122 section 3.2.1.2: a host MUST verify the IPv4 header checksum
    // and silently discard a datagram whose checksum is bad. XDP and TC
    // ingress run before ip_rcv verifies it, and no NIC offload verifies it
    // for us, so it is checked here. With options refused above the header
    // is exactly 20 bytes: a constant-length sum the verifier walks as is.
    if !ipv4_checksum_valid(ip) {
        return Err(Reason::OUTER_CHECKSUM_INVALID);
    }
    let ip_total = u16::from_be_bytes(ip.tot_len) as usize;
    let udp_total = u16::from_be_bytes(udp.len) as usize;
    // A GSO aggregate is longer than its headers say (the stack rewrites
    // them per segment when it segments); its headers must still agree.
    if (!gso && ETH_HDR_LEN + ip_total != frame_len) || IPV4_HDR_LEN + udp_total != ip_total {
        return Err(Reason::OUTER_LENGTH_MISMATCH);
    }
    Ok(())
}

/// Whether an option-less IPv4 header's checksum is right: the
/// one's-complement sum of the whole header, its checksum field included,
/// is 0xffff (RFC 1071), which folds and complements to zero.
#[inline(always)]
pub fn ipv4_checksum_valid(ip: &Ipv4Hdr) -> bool {
    fold_checksum(sum_words(as_bytes::<Ipv4Hdr, IPV4_HDR_LEN>(ip))) == 0
}

/// Where a decapsulated frame goes.
pub enum Delivery {
    /// To the local endpoint behind this host-side port.
    Port(u32),
    /// To every local port of the VNI.
    Flood,
}

/// Where the inner frame goes: to the owner of a unicast destination MAC;
/// for a broadcast ARP request, to the owner of the requested address when
/// it is here; other broadcast and multicast to all local ports.
#[inline(always)]
fn delivery_for(start: usize, end: usize, vni: u32) -> Result<Delivery, Reason> {
    const _: () = assert!(VXLAN_OFFSET + VXLAN_HDR_LEN == INNER_ETH_OFFSET);
    let inner = ptr_at::<EthHdr>(start, end, INNER_ETH_OFFSET).ok_or(Reason::VXLAN_TRUNCATED)?;
    // SAFETY: bounds checked by ptr_at.
    let inner = unsafe { &*inner };
    if is_inner_vlan(inner.ether_type) {
        return Err(Reason::INNER_VLAN);
    }
    let destination = inner.dst_addr;
    if !is_multicast(&destination) {
        // SAFETY: read and copied at once.
        return match unsafe { LOCAL_ENDPOINTS.get(&VniMac::new(vni, destination)) } {
            Some(endpoint) => Ok(Delivery::Port(endpoint.ifindex)),
            // The sender flooded a MAC it does not know; the owner is elsewhere.
            None => Err(Reason::UNKNOWN_DESTINATION),
        };
    }
    if destination != BROADCAST_MAC || inner.ether_type != ETH_P_ARP.to_be() {
        return Ok(Delivery::Flood);
    }
    // A peer (a kernel vxlan VTEP, say) flooded an ARP request: only the
    // owner of the address needs it.
    let request = ptr_at::<ArpHdr>(start, end, INNER_ETH_OFFSET + ETH_HDR_LEN)
        .ok_or(Reason::ARP_MALFORMED)?;
    // SAFETY: bounds checked by ptr_at.
    let request = unsafe { &*request };
    if let ArpBroadcast::Announcement = arp::classify(request)? {
        return Ok(Delivery::Flood);
    }
    let key = VniIpv4 {
        vni,
        addr_be: u32::from_ne_bytes(request.tpa),
    };
    // SAFETY: read and copied at once.
    let Some(owner) = (unsafe { NEIGHBOURS.get(&key) }).map(|n| n.mac) else {
        return Ok(Delivery::Flood);
    };
    // SAFETY: read and copied at once.
    match unsafe { LOCAL_ENDPOINTS.get(&VniMac::new(vni, owner)) } {
        Some(endpoint) => Ok(Delivery::Port(endpoint.ifindex)),
        None => Err(Reason::ARP_UNKNOWN_TARGET),
    }
}
