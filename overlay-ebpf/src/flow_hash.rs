//! The inner flow's hash, for the outer UDP source port (RFC 7348 section
//! 5, "Source Port": a hash of the inner packet's headers, so one flow keeps
//! one port and the underlay's ECMP spreads flows).
//!
//! Why not `bpf_get_hash_recalc` on every packet: an skb without a hash
//! (a container's UDP socket that never connected, a forwarded packet, every
//! BPF_PROG_TEST_RUN skb) makes it run the kernel's flow dissector, which
//! was 24 % of encapsulation's time in the micro-benchmark (about a quarter
//! of a hundred-odd nanoseconds; docs/performance.md). So: the skb's hash
//! when it has one (a connected socket's skbs carry its sk_txhash, free to
//! read), else a hash of the addresses, protocol and ports read here
//! straight from the packet.
use aya_ebpf::{helpers::bpf_get_hash_recalc, programs::TcContext};
use network_types::eth::EthHdr;
use overlay_common::{ETH_HDR_LEN, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_TCP, IPPROTO_UDP, IPV6_HDR_LEN};

use crate::packet::ptr_at;

/// SCTP: its ports sit where TCP's and UDP's do (RFC 9260 section 3.1).
const IPPROTO_SCTP: u8 = 132;
/// IPv4 More Fragments flag and fragment offset: only a first, unfragmented
/// packet carries the ports.
const IPV4_MF_AND_OFFSET: u16 = 0x3fff;

/// The inner flow's 32-bit hash.
#[inline(always)]
pub fn inner_flow_hash(ctx: &TcContext, inner_eth: &EthHdr) -> u32 {
    // SAFETY: reading a field of the context the kernel handed us.
    let hash = unsafe { (*ctx.skb.skb).hash };
    if hash != 0 {
        return hash;
    }
    match hash_headers(ctx.data(), ctx.data_end(), inner_eth) {
        Some(hash) => hash,
        // Headers beyond the linear part: let the kernel dissect it.
        // SAFETY: plain helper call.
        None => unsafe { bpf_get_hash_recalc(ctx.skb.skb) },
    }
}

/// The hash of the headers in `[start, end)`, or `None` when an IP header
/// is not all in the linear part.
#[inline(always)]
fn hash_headers(start: usize, end: usize, eth: &EthHdr) -> Option<u32> {
    let (mut hash, protocol, l4_offset) = if eth.ether_type == ETH_P_IPV4.to_be() {
        let ip = ptr_at::<[u8; 20]>(start, end, ETH_HDR_LEN)?;
        // SAFETY: bounds checked by ptr_at.
        let ip = unsafe { &*ip };
        let hash = mix(mix(SEED, word(ip, 12)), word(ip, 16));
        let fragmented = u16::from_be_bytes([ip[6], ip[7]]) & IPV4_MF_AND_OFFSET != 0;
        // Masked: the verifier tracks an offset of 14 + 0..=60.
        let l4_offset = ETH_HDR_LEN + ((ip[0] & 0x0f) as usize) * 4;
        (hash, if fragmented { 0 } else { ip[9] }, l4_offset)
    } else if eth.ether_type == ETH_P_IPV6.to_be() {
        let ip = ptr_at::<[u8; IPV6_HDR_LEN]>(start, end, ETH_HDR_LEN)?;
        // SAFETY: bounds checked by ptr_at.
        let ip = unsafe { &*ip };
        let mut hash = SEED;
        let mut offset = 8;
        // Source and destination addresses: a constant-bound loop.
        while offset < IPV6_HDR_LEN {
            hash = mix(hash, word(ip, offset));
            offset += 4;
        }
        // Extension headers are not followed: the flow label stands in for
        // the ports then (RFC 6437 section 2), as the kernel's dissector does.
        let flow_label = u32::from_be_bytes([0, ip[1] & 0x0f, ip[2], ip[3]]);
        (mix(hash, flow_label), ip[6], ETH_HDR_LEN + IPV6_HDR_LEN)
    } else {
        // Not IP: the MACs and EtherType tell the flow.
        let mut bytes = [0u8; 4];
        bytes.copy_from_slice(&eth.dst_addr[2..6]);
        let hash = mix(mix(SEED, u32::from_ne_bytes(bytes)), u32::from_ne_bytes([eth.src_addr[2], eth.src_addr[3], eth.src_addr[4], eth.src_addr[5]]));
        return Some(finish(mix(hash, eth.ether_type as u32)));
    };
    hash = mix(hash, protocol as u32);
    if matches!(protocol, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP) {
        if let Some(ports) = ptr_at::<[u8; 4]>(start, end, l4_offset) {
            // SAFETY: bounds checked by ptr_at.
            hash = mix(hash, u32::from_ne_bytes(unsafe { *ports }));
        }
    }
    Some(finish(hash))
}

const SEED: u32 = 0x9e37_79b9;

#[inline(always)]
fn word<const N: usize>(bytes: &[u8; N], offset: usize) -> u32 {
    u32::from_ne_bytes([bytes[offset], bytes[offset + 1], bytes[offset + 2], bytes[offset + 3]])
}

/// One round of a multiplicative hash (as in MurmurHash3's body).
#[inline(always)]
fn mix(hash: u32, word: u32) -> u32 {
    let word = word.wrapping_mul(0xcc9e_2d51).rotate_left(15).wrapping_mul(0x1b87_3593);
    (hash ^ word).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}

/// MurmurHash3's finaliser: every input bit reaches every output bit, so
/// the port range's top bits (which scale the port) vary with all fields.
#[inline(always)]
fn finish(mut hash: u32) -> u32 {
    hash ^= hash >> 16;
    hash = hash.wrapping_mul(0x85eb_ca6b);
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(0xc2b2_ae35);
    hash ^ (hash >> 16)
}
