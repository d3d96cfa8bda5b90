//! ICMP "too big" answers for frames that would exceed the underlay MTU
//! once encapsulated: IPv4 "fragmentation needed" (RFC 792, RFC 1191) and
//! ICMPv6 "packet too big" (RFC 4443 section 3.2, RFC 8201).
//!
//! As the kernel's vxlan device does for bridged traffic
//! (iptunnel_pmtud_build_icmp), the answer comes from the original packet's
//! destination address and MAC, so the sender's path MTU to that
//! destination drops to the overlay MTU; nothing is fragmented.
use aya_ebpf::{
    helpers::{bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};
use overlay_common::{ETH_HDR_LEN, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_ICMPV6, Reason};

use crate::{
    maps::scratch,
    packet::{
        EndpointFrame, PackedVerdict, Verdict, as_bytes, fold_checksum, ipv4_header_checksum,
        ipv6_pseudo_header_sum, load_exact, sum_words,
    },
};

const IPPROTO_ICMP: u8 = 1;
const ICMP_DEST_UNREACHABLE: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
const IPV4_DONT_FRAGMENT: u16 = 0x4000;
/// The original IPv4 header and the first 8 bytes of its payload (RFC 792).
const IPV4_QUOTE_LEN: usize = 28;
/// The original IPv6 header and the first 8 bytes of its payload: enough for
/// the sender's stack to find the flow (its ports and TCP sequence).
const IPV6_QUOTE_LEN: usize = 48;
/// ICMPv4 types that are errors themselves: never answered with an error (RFC 1122 3.2.2).
const ICMP_ERROR_TYPES: [u8; 5] = [3, 4, 5, 11, 12];

#[repr(C)]
struct Icmpv4TooBig {
    eth: EthHdr,
    ip: Ipv4Hdr,
    icmp_type: u8,
    code: u8,
    check: [u8; 2],
    unused: [u8; 2],
    next_hop_mtu: [u8; 2],
    quote: [u8; IPV4_QUOTE_LEN],
}
const ICMPV4_LEN: usize = 8 + IPV4_QUOTE_LEN;
const _: () = assert!(core::mem::size_of::<Icmpv4TooBig>() == ETH_HDR_LEN + 20 + ICMPV4_LEN);

#[repr(C)]
struct Icmpv6TooBig {
    eth: EthHdr,
    ip: Ipv6Hdr,
    icmp_type: u8,
    code: u8,
    check: [u8; 2],
    mtu: [u8; 4],
    quote: [u8; IPV6_QUOTE_LEN],
}
const ICMPV6_LEN: usize = 8 + IPV6_QUOTE_LEN;
const _: () = assert!(core::mem::size_of::<Icmpv6TooBig>() == ETH_HDR_LEN + 40 + ICMPV6_LEN);

/// Turns the frame into an ICMP "too big" for its sender, announcing
/// `inner_mtu`, and sends it back out of `ifindex` (into the sender).
/// IPv4 without DF is dropped instead (VTEPs must not fragment).
// Verifier/stack: a BPF-to-BPF call of its own, so the frames this path
// builds do not share the caller's 512-byte stack with the other paths'.
#[inline(never)]
pub fn reply_too_big(frame: &EndpointFrame, inner_mtu: u32) -> PackedVerdict {
    PackedVerdict::pack(try_reply_too_big(frame, inner_mtu).map(Some))
}

#[inline(always)]
fn try_reply_too_big(frame: &EndpointFrame, inner_mtu: u32) -> Result<Verdict<i32>, Reason> {
    let EndpointFrame {
        ctx, ifindex, eth, ..
    } = frame;
    let ifindex = *ifindex;
    if eth.ether_type == ETH_P_IPV4.to_be() {
        reply_ipv4(ctx, ifindex, eth, inner_mtu)
    } else if eth.ether_type == ETH_P_IPV6.to_be() {
        reply_ipv6(ctx, ifindex, eth, inner_mtu)
    } else {
        Err(Reason::TOO_BIG_FOR_UNDERLAY)
    }
}

#[inline(always)]
fn reply_ipv4(
    ctx: &TcContext,
    ifindex: u32,
    eth: &EthHdr,
    inner_mtu: u32,
) -> Result<Verdict<i32>, Reason> {
    let reply: &mut Icmpv4TooBig = scratch().ok_or(Reason::TOO_BIG_FOR_UNDERLAY)?;
    load_exact(ctx, ETH_HDR_LEN, &mut reply.quote).map_err(|_| Reason::TOO_BIG_FOR_UNDERLAY)?;
    let quote = &reply.quote;
    if quote[0] != 0x45 || (quote[9] == IPPROTO_ICMP && ICMP_ERROR_TYPES.contains(&quote[20])) {
        return Err(Reason::TOO_BIG_FOR_UNDERLAY); // options, or an ICMP error itself
    }
    if u16::from_be_bytes([quote[6], quote[7]]) & IPV4_DONT_FRAGMENT == 0 {
        return Err(Reason::TOO_BIG_NO_DF);
    }
    let (source, destination) = (
        [quote[16], quote[17], quote[18], quote[19]],
        [quote[12], quote[13], quote[14], quote[15]],
    );
    reply.eth = EthHdr {
        dst_addr: eth.src_addr,
        src_addr: eth.dst_addr,
        ether_type: ETH_P_IPV4.to_be(),
    };
    reply.ip = Ipv4Hdr {
        vihl: 0x45,
        tos: 0,
        tot_len: ((20 + ICMPV4_LEN) as u16).to_be_bytes(),
        id: [0; 2],
        frags: [0; 2],
        ttl: 64,
        proto: IPPROTO_ICMP,
        check: [0; 2],
        src_addr: source,
        dst_addr: destination,
    };
    reply.ip.check = ipv4_header_checksum(&reply.ip).to_be_bytes();
    reply.icmp_type = ICMP_DEST_UNREACHABLE;
    reply.code = ICMP_FRAG_NEEDED;
    reply.check = [0; 2];
    reply.unused = [0; 2];
    reply.next_hop_mtu = (inner_mtu as u16).to_be_bytes();
    let icmp =
        &as_bytes::<Icmpv4TooBig, { ETH_HDR_LEN + 20 + ICMPV4_LEN }>(reply)[ETH_HDR_LEN + 20..];
    let icmp: &[u8; ICMPV4_LEN] = icmp.try_into().map_err(|_| Reason::TOO_BIG_FOR_UNDERLAY)?;
    reply.check = fold_checksum(sum_words(icmp)).to_be_bytes();
    send_back(ctx, ifindex, reply)
}

#[inline(always)]
fn reply_ipv6(
    ctx: &TcContext,
    ifindex: u32,
    eth: &EthHdr,
    inner_mtu: u32,
) -> Result<Verdict<i32>, Reason> {
    let reply: &mut Icmpv6TooBig = scratch().ok_or(Reason::TOO_BIG_FOR_UNDERLAY)?;
    load_exact(ctx, ETH_HDR_LEN, &mut reply.quote).map_err(|_| Reason::TOO_BIG_FOR_UNDERLAY)?;
    if reply.quote[6] == IPPROTO_ICMPV6 && reply.quote[40] < 128 {
        return Err(Reason::TOO_BIG_FOR_UNDERLAY); // an ICMPv6 error itself (RFC 4443 2.4 e)
    }
    // From the original destination, to the original source.
    reply.ip.src_addr.copy_from_slice(&reply.quote[24..40]);
    reply.ip.dst_addr.copy_from_slice(&reply.quote[8..24]);
    reply.ip.vcf = [0x60, 0, 0, 0];
    reply.ip.payload_len = (ICMPV6_LEN as u16).to_be_bytes();
    reply.ip.next_hdr = IPPROTO_ICMPV6;
    reply.ip.hop_limit = 64;
    reply.eth = EthHdr {
        dst_addr: eth.src_addr,
        src_addr: eth.dst_addr,
        ether_type: ETH_P_IPV6.to_be(),
    };
    reply.icmp_type = ICMPV6_PACKET_TOO_BIG;
    reply.code = 0;
    reply.check = [0; 2];
    reply.mtu = inner_mtu.to_be_bytes();
    let pseudo = ipv6_pseudo_header_sum(
        &reply.ip.src_addr,
        &reply.ip.dst_addr,
        ICMPV6_LEN as u32,
        IPPROTO_ICMPV6,
    );
    let icmp =
        &as_bytes::<Icmpv6TooBig, { ETH_HDR_LEN + 40 + ICMPV6_LEN }>(reply)[ETH_HDR_LEN + 40..];
    let icmp: &[u8; ICMPV6_LEN] = icmp.try_into().map_err(|_| Reason::TOO_BIG_FOR_UNDERLAY)?;
    reply.check = fold_checksum(pseudo + sum_words(icmp)).to_be_bytes();
    send_back(ctx, ifindex, reply)
}

/// Replaces the frame with `reply` and sends it out of `ifindex`.
#[inline(always)]
fn send_back<T>(ctx: &TcContext, ifindex: u32, reply: &T) -> Result<Verdict<i32>, Reason> {
    let len = core::mem::size_of::<T>() as u32;
    // SAFETY: plain helper call (also clears GSO state for the new length).
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, len, 0) } != 0 {
        return Err(Reason::TOO_BIG_FOR_UNDERLAY);
    }
    ctx.store(0, reply, 0)
        .map_err(|_| Reason::TOO_BIG_FOR_UNDERLAY)?;
    // SAFETY: plain helper call.
    let action = unsafe { bpf_redirect(ifindex, 0) } as i32;
    Ok(Verdict {
        action,
        reason: Reason::ICMP_TOO_BIG_SENT,
    })
}
