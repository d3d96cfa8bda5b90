//! Bounds-checked access to packet data and the header layouts we write.
use aya_ebpf::{helpers::bpf_skb_load_bytes, programs::TcContext};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, udp::UdpHdr, vxlan::VxlanHdr};
use overlay_common::{ETH_HDR_LEN, ETH_P_8021AD, ETH_P_8021Q, NodeConfig, Reason, VXLAN_ENCAP_LEN};

/// A frame a local endpoint sent, with what every handler of it needs.
/// Passed by reference so that handlers can be BPF-to-BPF calls, which take
/// at most five register arguments.
pub struct EndpointFrame<'a> {
    pub ctx: &'a TcContext,
    pub node: &'a NodeConfig,
    pub vni: u32,
    /// The host-side port it came in on.
    pub ifindex: u32,
    pub eth: EthHdr,
}

/// What a program decided: the hook's action and the outcome to count.
pub struct Verdict<A> {
    pub action: A,
    pub reason: Reason,
}

/// A handler's result packed into one 64-bit register, for handlers that
/// are BPF-to-BPF calls. Verifier: a call returns in r0 only; a larger
/// return value would come back as a pointer into the caller's stack, which
/// the verifier refuses ("cannot return stack pointer to the caller").
/// Layout: bit 63 error, bit 62 none, bits 32..62 reason, bits 0..32 action.
#[repr(transparent)]
#[derive(Clone, Copy)]
pub struct PackedVerdict(u64);

const PACKED_ERROR: u64 = 1 << 63;
const PACKED_NONE: u64 = 1 << 62;

impl PackedVerdict {
    #[inline(always)]
    pub fn pack(result: Result<Option<Verdict<i32>>, Reason>) -> PackedVerdict {
        PackedVerdict(match result {
            Ok(Some(verdict)) => ((verdict.reason.0 as u64) << 32) | verdict.action as u32 as u64,
            Ok(None) => PACKED_NONE,
            Err(reason) => PACKED_ERROR | ((reason.0 as u64) << 32),
        })
    }

    #[inline(always)]
    pub fn unpack(self) -> Result<Option<Verdict<i32>>, Reason> {
        let reason = Reason(((self.0 >> 32) & 0x3fff_ffff) as u32);
        if self.0 & PACKED_ERROR != 0 {
            Err(reason)
        } else if self.0 & PACKED_NONE != 0 {
            Ok(None)
        } else {
            Ok(Some(Verdict {
                action: self.0 as u32 as i32,
                reason,
            }))
        }
    }

    /// For handlers that always decide: an (impossible) "none" becomes `if_none`.
    #[inline(always)]
    pub fn verdict(self, if_none: Reason) -> Result<Verdict<i32>, Reason> {
        self.unpack()?.ok_or(if_none)
    }
}

/// Copies exactly `N` bytes of the packet at `offset` into `dst`.
/// Verifier: aya's `load_bytes` clamps the length to what the packet holds,
/// which the verifier sees may be zero and refuses; a constant length is fine.
#[inline(always)]
pub fn load_exact<const N: usize>(
    ctx: &TcContext,
    offset: usize,
    dst: &mut [u8; N],
) -> Result<(), ()> {
    // SAFETY: dst is N writable bytes.
    let rc = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            offset as u32,
            dst.as_mut_ptr() as *mut _,
            N as u32,
        )
    };
    if rc == 0 { Ok(()) } else { Err(()) }
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

/// IPv6 multicast MACs start 33:33 (RFC 2464 section 7).
#[inline(always)]
pub fn is_ipv6_multicast(mac: &[u8; 6]) -> bool {
    mac[0] == 0x33 && mac[1] == 0x33
}

/// A frame carrying an 802.1Q or 802.1ad tag: dropped inside the overlay
/// (RFC 7348 section 6.1: decapsulated frames with an inner VLAN tag SHOULD
/// be discarded; an encapsulating VTEP SHOULD NOT include one).
#[inline(always)]
pub fn is_inner_vlan(ether_type_be: u16) -> bool {
    ether_type_be == ETH_P_8021Q.to_be() || ether_type_be == ETH_P_8021AD.to_be()
}

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
    fold_checksum(sum_words(as_bytes::<Ipv4Hdr, 20>(ip)))
}

/// The bytes of a plain-data header struct of `N` bytes.
#[inline(always)]
pub fn as_bytes<T, const N: usize>(value: &T) -> &[u8; N] {
    const { assert!(core::mem::size_of::<T>() == N) };
    // SAFETY: T is N bytes of plain data (asserted above).
    unsafe { &*(value as *const T as *const [u8; N]) }
}

/// One's-complement sum (RFC 1071) of `bytes` as big-endian 16-bit words,
/// not yet folded; add several sums before folding.
#[inline(always)]
pub fn sum_words<const N: usize>(bytes: &[u8; N]) -> u32 {
    let mut sum: u32 = 0;
    let mut i = 0;
    // A constant-bound loop over stack memory: the verifier walks it as is.
    while i + 1 < N {
        sum += u16::from_be_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    if N % 2 == 1 {
        sum += (bytes[N - 1] as u32) << 8;
    }
    sum
}

/// Folds a [`sum_words`] total into the final 16-bit checksum.
#[inline(always)]
pub fn fold_checksum(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Sum of the IPv6 pseudo-header (RFC 8200 section 8.1) for an upper-layer
/// packet of `length` bytes with protocol `next_header`.
#[inline(always)]
pub fn ipv6_pseudo_header_sum(
    source: &[u8; 16],
    destination: &[u8; 16],
    length: u32,
    next_header: u8,
) -> u32 {
    sum_words(source)
        + sum_words(destination)
        + (length >> 16)
        + (length & 0xffff)
        + next_header as u32
}
