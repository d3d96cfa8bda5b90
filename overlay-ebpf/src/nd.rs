//! IPv6 neighbour discovery: neighbour solicitations from local endpoints
//! for addresses the node knows are answered with a neighbour
//! advertisement (RFC 4861 sections 4.3, 4.4, 7.2.4), as ARP is.
use aya_ebpf::helpers::{bpf_redirect, bpf_skb_change_tail};
use network_types::{eth::EthHdr, ip::Ipv6Hdr};
use overlay_common::{ETH_HDR_LEN, ETH_P_IPV6, IPPROTO_ICMPV6, IPV6_HDR_LEN, Reason, VniIpv6};

use crate::{
    maps::{NEIGHBOURS6, scratch},
    packet::{
        EndpointFrame, PackedVerdict, Verdict, as_bytes, fold_checksum, ipv6_pseudo_header_sum,
        sum_words,
    },
};

const ND_NEIGHBOUR_SOLICITATION: u8 = 135;
const ND_NEIGHBOUR_ADVERTISEMENT: u8 = 136;
/// Solicited and Override flags: an answer for a unicast address the
/// owner is authoritative for; not a router.
const NA_FLAGS: [u8; 4] = [0x60, 0, 0, 0];
const ND_OPTION_TARGET_LINK_LAYER: u8 = 2;
/// ND messages must arrive with hop limit 255 (RFC 4861 section 7.1.1).
const ND_HOP_LIMIT: u8 = 255;
/// Type, code, checksum, reserved and target of a solicitation.
const NS_LEN: usize = 24;
/// The advertisement: 24 bytes and an 8-byte target link-layer option.
const NA_LEN: usize = 32;

#[repr(C)]
struct NeighbourAdvertisement {
    eth: EthHdr,
    ip: Ipv6Hdr,
    icmp_type: u8,
    code: u8,
    check: [u8; 2],
    flags: [u8; 4],
    target: [u8; 16],
    option_type: u8,
    option_len: u8,
    option_mac: [u8; 6],
}
const FRAME_LEN: usize = ETH_HDR_LEN + IPV6_HDR_LEN + NA_LEN;
const _: () = assert!(core::mem::size_of::<NeighbourAdvertisement>() == FRAME_LEN);

/// Answers a neighbour solicitation for a known address. `Ok(None)` when
/// the frame is not one the node can answer (other IPv6 multicast, an
/// unknown target, duplicate address detection): it is flooded instead.
// Verifier/stack: a BPF-to-BPF call of its own, so the frames this path
// builds do not share the caller's 512-byte stack with the other paths'.
#[inline(never)]
pub fn answer_solicitation(frame: &EndpointFrame) -> PackedVerdict {
    PackedVerdict::pack(try_answer_solicitation(frame))
}

#[inline(always)]
fn try_answer_solicitation(frame: &EndpointFrame) -> Result<Option<Verdict<i32>>, Reason> {
    let EndpointFrame {
        ctx,
        vni,
        ifindex,
        eth,
        ..
    } = frame;
    let (vni, ifindex) = (*vni, *ifindex);
    let ip: Ipv6Hdr = ctx.load(ETH_HDR_LEN).map_err(|_| Reason::ND_MALFORMED)?;
    if ip.next_hdr != IPPROTO_ICMPV6 {
        return Ok(None);
    }
    let Ok(solicitation) = ctx.load::<[u8; NS_LEN]>(ETH_HDR_LEN + IPV6_HDR_LEN) else {
        return Ok(None);
    };
    if solicitation[0] != ND_NEIGHBOUR_SOLICITATION {
        return Ok(None);
    }
    if solicitation[1] != 0
        || ip.hop_limit != ND_HOP_LIMIT
        || (u16::from_be_bytes(ip.payload_len) as usize) < NS_LEN
    {
        return Err(Reason::ND_MALFORMED);
    }
    // From the unspecified address it is duplicate address detection: the
    // owner, wherever it is, must answer, so flood it.
    if ip.src_addr == [0; 16] {
        return Ok(None);
    }
    let mut target = [0u8; 16];
    target.copy_from_slice(&solicitation[8..24]);
    // SAFETY: read and copied at once.
    let Some(owner) = (unsafe { NEIGHBOURS6.get(&VniIpv6 { vni, addr: target }) }).map(|n| n.mac)
    else {
        return Ok(None);
    };
    if owner == eth.src_addr {
        return Ok(None);
    }
    let answer: &mut NeighbourAdvertisement = scratch().ok_or(Reason::ND_MALFORMED)?;
    answer.eth = EthHdr {
        dst_addr: eth.src_addr,
        src_addr: owner,
        ether_type: ETH_P_IPV6.to_be(),
    };
    answer.ip = Ipv6Hdr {
        vcf: [0x60, 0, 0, 0],
        payload_len: (NA_LEN as u16).to_be_bytes(),
        next_hdr: IPPROTO_ICMPV6,
        hop_limit: ND_HOP_LIMIT,
        src_addr: target,
        dst_addr: ip.src_addr,
    };
    answer.icmp_type = ND_NEIGHBOUR_ADVERTISEMENT;
    answer.code = 0;
    answer.check = [0; 2];
    answer.flags = NA_FLAGS;
    answer.target = target;
    answer.option_type = ND_OPTION_TARGET_LINK_LAYER;
    answer.option_len = 1;
    answer.option_mac = owner;
    let icmp = &as_bytes::<NeighbourAdvertisement, FRAME_LEN>(answer)[ETH_HDR_LEN + IPV6_HDR_LEN..];
    let icmp: &[u8; NA_LEN] = icmp.try_into().map_err(|_| Reason::ND_MALFORMED)?;
    let sum = ipv6_pseudo_header_sum(&target, &ip.src_addr, NA_LEN as u32, IPPROTO_ICMPV6)
        + sum_words(icmp);
    answer.check = fold_checksum(sum).to_be_bytes();
    // SAFETY: plain helper call.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, FRAME_LEN as u32, 0) } != 0 {
        return Err(Reason::ND_MALFORMED);
    }
    ctx.store(0, answer, 0).map_err(|_| Reason::ND_MALFORMED)?;
    // SAFETY: plain helper call; egress of the port is the endpoint's ingress.
    let action = unsafe { bpf_redirect(ifindex, 0) } as i32;
    Ok(Some(Verdict {
        action,
        reason: Reason::ND_REPLIED,
    }))
}
