//! Bounds-checked access to packet data and the header layouts we write.
use network_types::{eth::EthHdr, ip::Ipv4Hdr, udp::UdpHdr, vxlan::VxlanHdr};
use overlay_common::{Reason, VXLAN_ENCAP_LEN, ETH_HDR_LEN};

/// What a program decided: the hook's action and the outcome to count.
pub struct Verdict<A> {
    pub action: A,
    pub reason: Reason,
}

/// Pointer to a `T` at `offset` bytes into packet data `[start, end)`, or
/// `None` when the packet is too short. The comparison against `end` is the
/// one the verifier needs to see before any access through the pointer, so
/// callers must re-derive pointers after anything that moves packet data
/// (adjust_head, adjust_room, change_head).
#[inline(always)]
pub fn ptr_at<T>(start: usize, end: usize, offset: usize) -> Option<*const T> {
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

pub const BROADCAST_MAC: [u8; 6] = [0xff; 6];

#[inline(always)]
pub fn is_multicast(mac: &[u8; 6]) -> bool {
    mac[0] & 1 != 0
}

/// Everything encapsulation writes in front of the inner frame's payload:
/// outer Ethernet, IPv4, UDP and VXLAN headers followed by the inner
/// Ethernet header. One `bpf_skb_store_bytes` writes all of it.
#[repr(C)]
pub struct EncapHeaders {
    pub outer_eth: EthHdr,
    pub ip: Ipv4Hdr,
    pub udp: UdpHdr,
    pub vxlan: VxlanHdr,
    pub inner_eth: EthHdr,
}
const _: () = assert!(core::mem::size_of::<EncapHeaders>() == VXLAN_ENCAP_LEN + ETH_HDR_LEN);

/// RFC 791 header checksum of an option-less IPv4 header whose `check` is zero.
#[inline(always)]
pub fn ipv4_header_checksum(ip: &Ipv4Hdr) -> u16 {
    // SAFETY: Ipv4Hdr is 20 bytes of plain data; read it as ten 16-bit words.
    let words = unsafe { &*(ip as *const Ipv4Hdr as *const [[u8; 2]; 10]) };
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < 10 {
        sum += u16::from_be_bytes(words[i]) as u32;
        i += 1;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
