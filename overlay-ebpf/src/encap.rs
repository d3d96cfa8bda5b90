//! VXLAN encapsulation (RFC 7348 section 5): the route to a peer VTEP, room
//! for the outer headers, and the headers themselves.
use aya_ebpf::{
    bindings::{
        BPF_ADJ_ROOM_ENCAP_L2_SHIFT, BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4,
        BPF_F_ADJ_ROOM_ENCAP_L4_UDP, BPF_F_ADJ_ROOM_FIXED_GSO, BPF_FIB_LKUP_RET_FRAG_NEEDED,
        BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_FIB_LOOKUP_OUTPUT, TC_ACT_REDIRECT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
        bpf_fib_lookup, bpf_redir_neigh,
    },
    helpers::{
        bpf_fib_lookup as fib_lookup, bpf_get_prandom_u32,
        bpf_ktime_get_coarse_ns, bpf_redirect, bpf_redirect_neigh, bpf_skb_change_head,
    },
    programs::TcContext,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, udp::UdpHdr, vxlan::VxlanHdr};
use overlay_common::{
    ETH_HDR_LEN, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_TCP, IPPROTO_UDP, IPV4_HDR_LEN, IPV6_HDR_LEN,
    NodeConfig, ROUTE_CACHE_TTL_NS, Reason, RouteCacheEntry, UDP_HDR_LEN, VXLAN_ENCAP_LEN,
    VXLAN_FLAG_VNI_VALID,
};

use crate::{
    maps::{IP_IDS, ROUTE_CACHE, scratch, scratch_fib},
    packet::{EncapHeaders, EndpointFrame, PackedVerdict, Verdict, fold_checksum, ipv4_header_checksum},
};

/// Room for the outer headers goes between the MAC and network headers, and
/// the kernel is told it is UDP-in-IPv4 carrying Ethernet with a 14-byte
/// inner MAC header, so inner_* offsets and gso_type (SKB_GSO_UDP_TUNNEL)
/// are set as the kernel's own vxlan device sets them. FIXED_GSO keeps
/// gso_size: without it the kernel shrinks it by 50 bytes and every
/// segment leaves 50 bytes short of the MTU.
const ENCAP_FLAGS: u64 = (BPF_F_ADJ_ROOM_FIXED_GSO
    | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4
    | BPF_F_ADJ_ROOM_ENCAP_L4_UDP
    | BPF_F_ADJ_ROOM_ENCAP_L2_ETH) as u64
    | (ETH_HDR_LEN as u64) << BPF_ADJ_ROOM_ENCAP_L2_SHIFT;

const AF_INET: u8 = 2;

/// IPv4 Don't Fragment: VTEPs must not fragment (RFC 7348 section 4.3).
const IPV4_DONT_FRAGMENT: u16 = 0x4000;

/// How to reach a peer VTEP on the underlay.
pub struct Route {
    pub ifindex: u32,
    pub source_mac: [u8; 6],
    pub next_hop_mac: [u8; 6],
    /// The next hop's IPv4 address (the peer, or a gateway).
    pub next_hop_be: u32,
    /// False when the next hop's MAC is not resolved yet.
    pub resolved: bool,
    /// The route's MTU (0 when not known: an unresolved next hop).
    pub mtu: u32,
}

/// What a route lookup says about a frame.
pub enum RouteLookup {
    Found(Route),
    /// The encapsulated frame would exceed the route's MTU, which is given.
    TooBig(u32),
}

/// The underlay route and next hop to `remote_vtep_be` for an outer packet
/// whose IPv4 total length is `outer_ip_len` (0: no MTU check): from the
/// route cache while its entry is fresh, else from the kernel's FIB, whose
/// answer is cached for ROUTE_CACHE_TTL_NS when the next hop is resolved.
/// The FIB lookup was a quarter of encapsulation's time (docs/performance.md).
#[inline(always)]
pub fn route_to_peer(
    ctx: &TcContext,
    node: &NodeConfig,
    remote_vtep_be: u32,
    source_port: u16,
    outer_ip_len: u32,
) -> Result<RouteLookup, Reason> {
    // The coarse clock (a jiffy's resolution) is enough for a 100 ms TTL
    // and costs a fraction of the fine one on this paravirtual clock.
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // Read in place, field by field. Verifier/stack: a copy of the entry
    // took 40 bytes of a frame on the 6.1 verifier's 512-byte call chain.
    if let Some(entry) = ROUTE_CACHE.get_ptr(&remote_vtep_be) {
        // SAFETY: a map value stays valid for the program's run (a refresh
        // racing with this read is the race the copy it replaces had).
        let entry = unsafe { &*entry };
        if entry.expires_ns > now {
            if outer_ip_len > entry.mtu {
                return Ok(RouteLookup::TooBig(entry.mtu));
            }
            return Ok(RouteLookup::Found(Route {
                ifindex: entry.ifindex,
                source_mac: entry.source_mac,
                next_hop_mac: entry.next_hop_mac,
                next_hop_be: entry.next_hop_be,
                resolved: true,
                mtu: entry.mtu,
            }));
        }
    }
    // A non-zero total length makes the kernel report the route's MTU on
    // success (mtu_result), which the cache needs; 1 always fits.
    // Verifier: the result is taken apart and built again rather than moved
    // whole. Moving the enum copies the bytes TooBig leaves undefined, and
    // the verifier refuses the read of a register never written (!read_ok).
    match fib_route_to_peer(ctx, node, remote_vtep_be, source_port, outer_ip_len.max(1))? {
        RouteLookup::TooBig(mtu) => Ok(RouteLookup::TooBig(mtu)),
        RouteLookup::Found(route) => {
            if route.resolved && route.mtu != 0 {
                let entry = RouteCacheEntry {
                    expires_ns: now + ROUTE_CACHE_TTL_NS,
                    ifindex: route.ifindex,
                    mtu: route.mtu,
                    source_mac: route.source_mac,
                    next_hop_mac: route.next_hop_mac,
                    next_hop_be: route.next_hop_be,
                };
                // A failed insert only means the next packet asks the FIB again.
                let _ = ROUTE_CACHE.insert(&remote_vtep_be, &entry, 0);
            }
            Ok(RouteLookup::Found(route))
        }
    }
}

/// Looks up the underlay route and next hop to `remote_vtep_be` in the
/// kernel's FIB for an outer packet whose IPv4 total length is
/// `outer_ip_len` (0: no MTU check).
#[inline(always)]
fn fib_route_to_peer(
    ctx: &TcContext,
    node: &NodeConfig,
    remote_vtep_be: u32,
    source_port: u16,
    outer_ip_len: u32,
) -> Result<RouteLookup, Reason> {
    let fib = scratch_fib().ok_or(Reason::NO_UNDERLAY_ROUTE)?;
    zero_words(fib);
    fib.family = AF_INET;
    fib.l4_protocol = IPPROTO_UDP;
    fib.sport = source_port.to_be();
    fib.dport = node.vxlan_port_be;
    // With tot_len set the kernel checks it against the route's MTU.
    fib.__bindgen_anon_1.tot_len = outer_ip_len as u16;
    fib.ifindex = node.underlay_ifindex;
    fib.__bindgen_anon_3.ipv4_src = node.vtep_addr_be;
    fib.__bindgen_anon_4.ipv4_dst = remote_vtep_be;
    // SAFETY: fib is a valid, fully sized parameter block on our stack.
    let rc = unsafe {
        fib_lookup(
            ctx.skb.skb as *mut _,
            fib as *mut bpf_fib_lookup,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            BPF_FIB_LOOKUP_OUTPUT,
        )
    };
    let resolved = match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => true,
        BPF_FIB_LKUP_RET_NO_NEIGH => false,
        // SAFETY: on FRAG_NEEDED the kernel wrote mtu_result.
        BPF_FIB_LKUP_RET_FRAG_NEEDED => {
            return Ok(RouteLookup::TooBig(
                unsafe { fib.__bindgen_anon_1.mtu_result } as u32,
            ));
        }
        // The helper is a forwarding lookup: it refuses to route when IPv4
        // forwarding is off on the device it looks up from.
        BPF_FIB_LKUP_RET_FWD_DISABLED => return Err(Reason::UNDERLAY_FORWARDING_DISABLED),
        // Unreachable, blackhole, prohibited, no source address, ...
        _ => return Err(Reason::NO_UNDERLAY_ROUTE),
    };
    Ok(RouteLookup::Found(Route {
        ifindex: fib.ifindex,
        source_mac: fib.smac,
        next_hop_mac: fib.dmac,
        // SAFETY: for AF_INET the kernel leaves the next hop in ipv4_dst.
        next_hop_be: unsafe { fib.__bindgen_anon_4.ipv4_dst },
        resolved,
        // SAFETY: on success with a total length given, the kernel writes
        // the route's MTU here (Linux 5.12+); not on NO_NEIGH.
        mtu: if resolved { (unsafe { fib.__bindgen_anon_1.mtu_result }) as u32 } else { 0 },
    }))
}

/// Outer UDP source port: the inner flow's hash (see `flow_hash`) scaled
/// into the configured range, as the kernel's udp_flow_src_port() does, so
/// one flow keeps one port and the underlay's ECMP can spread flows (RFC
/// 7348 section 5, "Source Port").
#[inline(always)]
pub fn source_port_for(ctx: &TcContext, node: &NodeConfig, inner_eth: &EthHdr) -> u16 {
    let hash = crate::flow_hash::inner_flow_hash(ctx, inner_eth) as u64;
    let min = node.source_port_min as u64;
    let span = (node.source_port_max as u64).saturating_sub(min) + 1;
    (min + ((hash * span) >> 32)) as u16
}

#[inline(always)]
pub fn is_ip(ether_type_be: u16) -> bool {
    ether_type_be == ETH_P_IPV4.to_be() || ether_type_be == ETH_P_IPV6.to_be()
}

/// Makes room for the outer headers in front of the inner frame.
///
/// bpf_skb_adjust_room refuses skbs that are not IPv4/IPv6 (ARP gets
/// -ENOTSUPP); those cannot be GSO, so pushing plain headroom in front with
/// bpf_skb_change_head is enough for them.
#[inline(always)]
pub fn grow_for_outer_headers(ctx: &TcContext, inner_is_ip: bool) -> Result<(), Reason> {
    let grown = if inner_is_ip {
        ctx.skb
            .adjust_room(VXLAN_ENCAP_LEN as i32, BPF_ADJ_ROOM_MAC, ENCAP_FLAGS)
            .is_ok()
    } else {
        // SAFETY: plain helper call.
        unsafe { bpf_skb_change_head(ctx.skb.skb, VXLAN_ENCAP_LEN as u32, 0) == 0 }
    };
    if grown {
        Ok(())
    } else {
        Err(Reason::ENCAP_FAILED)
    }
}

/// The next outer IPv4 ID, reserving one per GSO segment (the stack numbers
/// the segments consecutively), as the kernel's tunnels give every outer
/// packet an ID even with DF set.
///
/// Each CPU counts on its own (no shared cache line per packet). All
/// starting at zero, two CPUs sending alike would hand out the same IDs; so
/// each CPU's counter starts at a random value on its first use, which
/// keeps the CPUs' sequences apart (as the kernel's own IDs are hashed,
/// not one shared count).
#[inline(always)]
pub fn next_ip_id(ctx: &TcContext) -> u16 {
    // SAFETY: reading a context field.
    let segments = unsafe { (*ctx.skb.skb).gso_segs }.max(1);
    match IP_IDS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        Some(counter) => unsafe {
            let mut id = *counter;
            if id == 0 {
                // SAFETY: plain helper call.
                id = bpf_get_prandom_u32();
            }
            *counter = id.wrapping_add(segments);
            id as u16
        },
        None => 0,
    }
}

/// Writes outer Ethernet/IPv4/UDP/VXLAN headers for `route` to
/// `remote_vtep_be` (and the inner Ethernet header after them) into a frame
/// already grown by [`grow_for_outer_headers`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn write_outer_headers(
    ctx: &TcContext,
    node: &NodeConfig,
    vni: u32,
    remote_vtep_be: u32,
    route: &Route,
    source_port: u16,
    ip_id: u16,
    inner_eth: &EthHdr,
) -> Result<(), Reason> {
    // Built as 16-bit words in memory order: every field of these headers
    // starts on an even offset. The header structs (byte arrays, alignment
    // 1) made LLVM write them byte by byte and the checksum read them back
    // the same way; this is a third of the instructions (docs/performance.md).
    let ip_len = (ctx.len() - ETH_HDR_LEN as u32) as u16;
    let udp_len = ip_len - IPV4_HDR_LEN as u16;
    let words: &mut HeaderWords = scratch().ok_or(Reason::ENCAP_FAILED)?;
    let w = &mut words.0;
    put_mac(w, 0, &route.next_hop_mac);
    put_mac(w, 3, &route.source_mac);
    w[6] = ETH_P_IPV4.to_be();
    // Version 4, IHL 5 (no options), TOS 0.
    w[7] = 0x4500u16.to_be();
    // For a GSO skb the total and UDP lengths are rewritten per segment by the stack.
    w[8] = ip_len.to_be();
    w[9] = ip_id.to_be();
    w[10] = IPV4_DONT_FRAGMENT.to_be();
    let ttl_protocol = (node.ttl as u16) << 8 | IPPROTO_UDP as u16;
    w[11] = ttl_protocol.to_be();
    let [s0, s1, s2, s3] = node.vtep_addr_be.to_ne_bytes();
    let [d0, d1, d2, d3] = remote_vtep_be.to_ne_bytes();
    w[13] = u16::from_ne_bytes([s0, s1]);
    w[14] = u16::from_ne_bytes([s2, s3]);
    w[15] = u16::from_ne_bytes([d0, d1]);
    w[16] = u16::from_ne_bytes([d2, d3]);
    // RFC 791 header checksum over the ten words above, in host order
    // (RFC 1071), the checksum word itself counted as zero.
    let sum = 0x4500u32
        + ip_len as u32
        + ip_id as u32
        + IPV4_DONT_FRAGMENT as u32
        + ttl_protocol as u32
        + u16::from_be_bytes([s0, s1]) as u32
        + u16::from_be_bytes([s2, s3]) as u32
        + u16::from_be_bytes([d0, d1]) as u32
        + u16::from_be_bytes([d2, d3]) as u32;
    w[12] = fold_checksum(sum).to_be();
    w[17] = source_port.to_be();
    w[18] = node.vxlan_port_be;
    w[19] = udp_len.to_be();
    // Zero: no UDP checksum over IPv4 (RFC 7348 section 5).
    w[20] = 0;
    // VXLAN: the I flag, 24 reserved bits, the VNI, 8 reserved bits.
    w[21] = ((VXLAN_FLAG_VNI_VALID as u16) << 8).to_be();
    w[22] = 0;
    w[23] = ((vni >> 8) as u16).to_be();
    w[24] = (((vni & 0xff) as u16) << 8).to_be();
    put_mac(w, 25, &inner_eth.dst_addr);
    put_mac(w, 28, &inner_eth.src_addr);
    // Already in network order.
    w[31] = inner_eth.ether_type;
    ctx.store(0, words, 0).map_err(|_| Reason::ENCAP_FAILED)
}

/// [`write_outer_headers`] for flooded copies, from header structs.
/// Verifier: the flood loop walks this once per peer; the word-by-word
/// version computes its checksum from values the verifier tracks precisely,
/// which kept it from pruning states and took the endpoint program past the
/// verifier's million-instruction budget, while these struct writes go
/// through map memory it does not track.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn write_flooded_outer_headers(
    ctx: &TcContext,
    node: &NodeConfig,
    vni: u32,
    remote_vtep_be: u32,
    route: &Route,
    source_port: u16,
    ip_id: u16,
    inner_eth: &EthHdr,
) -> Result<(), Reason> {
    let outer_len = ctx.len() as usize;
    let headers: &mut EncapHeaders = scratch().ok_or(Reason::ENCAP_FAILED)?;
    headers.outer_eth = EthHdr {
        dst_addr: route.next_hop_mac,
        src_addr: route.source_mac,
        ether_type: ETH_P_IPV4.to_be(),
    };
    headers.ip = Ipv4Hdr {
        vihl: 0x45,
        tos: 0,
        // For a GSO skb this is rewritten per segment by the stack.
        tot_len: ((outer_len - ETH_HDR_LEN) as u16).to_be_bytes(),
        id: ip_id.to_be_bytes(),
        frags: IPV4_DONT_FRAGMENT.to_be_bytes(),
        ttl: node.ttl,
        proto: IPPROTO_UDP,
        check: [0; 2],
        src_addr: node.vtep_addr_be.to_ne_bytes(),
        dst_addr: remote_vtep_be.to_ne_bytes(),
    };
    headers.udp = UdpHdr {
        src: source_port.to_be_bytes(),
        dst: node.vxlan_port_be.to_ne_bytes(),
        len: ((outer_len - ETH_HDR_LEN - IPV4_HDR_LEN) as u16).to_be_bytes(),
        // Zero: no UDP checksum over IPv4 (RFC 7348 section 5).
        check: [0; 2],
    };
    // The VXLAN header as four 16-bit words (it starts at an even offset).
    // Verifier/stack: the struct literal's three zero bytes compiled to a
    // call of the `memset` subprogram, a frame of its own on the flood
    // path's call chain (see `zero_words`).
    let vxlan_words = [
        ((VXLAN_FLAG_VNI_VALID as u16) << 8).to_be(),
        0,
        ((vni >> 8) as u16).to_be(),
        (((vni & 0xff) as u16) << 8).to_be(),
    ];
    // SAFETY: the header is 8 bytes of plain data at an even offset of an
    // 8-aligned buffer.
    unsafe { core::ptr::write_volatile(&mut headers.vxlan as *mut VxlanHdr as *mut [u16; 4], vxlan_words) };
    headers.inner_eth = *inner_eth;
    headers.ip.check = ipv4_header_checksum(&headers.ip).to_be_bytes();
    ctx.store(0, headers, 0).map_err(|_| Reason::ENCAP_FAILED)
}

/// Everything encapsulation writes in front of the inner frame's payload
/// (outer Ethernet, IPv4, UDP and VXLAN headers, then the inner Ethernet
/// header) as 16-bit words in memory order.
#[repr(C, align(8))]
struct HeaderWords([u16; (VXLAN_ENCAP_LEN + ETH_HDR_LEN) / 2]);
const _: () = assert!(core::mem::size_of::<HeaderWords>() == VXLAN_ENCAP_LEN + ETH_HDR_LEN);

#[inline(always)]
fn put_mac(words: &mut [u16; 32], at: usize, mac: &[u8; 6]) {
    words[at] = u16::from_ne_bytes([mac[0], mac[1]]);
    words[at + 1] = u16::from_ne_bytes([mac[2], mac[3]]);
    words[at + 2] = u16::from_ne_bytes([mac[4], mac[5]]);
}


/// Zeroes a plain-data parameter block one 32-bit word at a time.
/// Verifier/stack: `mem::zeroed()` of a block this size compiles to a call
/// of the `memset` subprogram, and on Linux 6.1 every BPF-to-BPF call adds
/// at least 32 bytes to its call chain's combined stack
/// (check_max_stack_depth rounds each frame up to 32, an empty one too):
/// overlay_endpoint -> flood_from_endpoint -> memset was 544 of the 512
/// bytes. Volatile stores keep LLVM from merging them back into a memset.
#[inline(always)]
fn zero_words<T>(block: *mut T) {
    const { assert!(core::mem::size_of::<T>() % 4 == 0 && core::mem::align_of::<T>() >= 4) };
    let words = block as *mut u32;
    for i in 0..core::mem::size_of::<T>() / 4 {
        // SAFETY: within the block (asserted a whole number of aligned
        // words); T is plain data, valid as all zeroes.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
}

/// Sends an encapsulated frame out along `route`: straight to the next hop
/// when its MAC is known, else through the kernel's neighbour resolution
/// (which queues the packet meanwhile and writes the MACs itself).
#[inline(always)]
pub fn send_along(route: &Route) -> Result<i32, Reason> {
    let action = if route.resolved {
        // SAFETY: plain helper call.
        unsafe { bpf_redirect(route.ifindex, 0) }
    } else {
        let mut next_hop = core::mem::MaybeUninit::<bpf_redir_neigh>::uninit();
        zero_words(next_hop.as_mut_ptr());
        // SAFETY: zeroed just above, and all-zero is a valid bpf_redir_neigh;
        // the union member we set is the one nh_family selects.
        let mut next_hop = unsafe { next_hop.assume_init() };
        next_hop.nh_family = AF_INET as u32;
        next_hop.__bindgen_anon_1.ipv4_nh = route.next_hop_be;
        // SAFETY: next_hop is a valid, fully sized parameter block.
        unsafe {
            bpf_redirect_neigh(
                route.ifindex,
                &mut next_hop,
                core::mem::size_of::<bpf_redir_neigh>() as i32,
                0,
            )
        }
    } as i32;
    if action == TC_ACT_REDIRECT as i32 {
        Ok(action)
    } else {
        Err(Reason::NO_UNDERLAY_ROUTE)
    }
}

/// IPv4 total length of the largest outer packet this frame becomes: for a
/// GSO skb one segment (gso_size plus the inner IP and transport headers),
/// otherwise the whole frame.
#[inline(always)]
pub fn outer_ip_len(ctx: &TcContext, inner_eth: &EthHdr) -> u32 {
    // SAFETY: reading context fields.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    let inner_l3_len = if gso_size == 0 {
        ctx.len() - ETH_HDR_LEN as u32
    } else {
        gso_size + inner_headers_len(ctx, inner_eth)
    };
    inner_l3_len + VXLAN_ENCAP_LEN as u32
}

/// Length of the inner IP and TCP/UDP headers of a GSO frame.
#[inline(always)]
fn inner_headers_len(ctx: &TcContext, inner_eth: &EthHdr) -> u32 {
    let (l3_len, protocol) = if inner_eth.ether_type == ETH_P_IPV4.to_be() {
        let vihl: u8 = ctx.load(ETH_HDR_LEN).unwrap_or(0x45);
        let protocol: u8 = ctx.load(ETH_HDR_LEN + 9).unwrap_or(IPPROTO_TCP);
        (((vihl & 0x0f) as u32) * 4, protocol)
    } else {
        // Extension headers are not followed: GSO packets do not carry them.
        let next_header: u8 = ctx.load(ETH_HDR_LEN + 6).unwrap_or(IPPROTO_TCP);
        (IPV6_HDR_LEN as u32, next_header)
    };
    let l4_len = if protocol == IPPROTO_TCP {
        let data_offset: u8 = ctx
            .load(ETH_HDR_LEN + l3_len as usize + 12)
            .unwrap_or(5 << 4);
        ((data_offset >> 4) as u32) * 4
    } else {
        UDP_HDR_LEN as u32
    };
    l3_len + l4_len
}

/// Encapsulates the frame to the peer VTEP `remote_vtep_be` and sends it
/// out, or answers it with ICMP "too big" when it would not fit the route.
// Verifier/stack: a BPF-to-BPF call of its own, so that the unicast path's
// locals (the flow hash, the route, the route cache entry) sit in a frame
// beside, not under, the flood, ARP and ND paths' frames. Linux 6.1 caps a
// call chain's combined stack at 512 bytes (check_max_stack_depth); with
// these locals in overlay_endpoint's own frame, endpoint -> ND reached 512
// and endpoint -> flood 544.
#[inline(never)]
pub fn encap_to_peer(frame: &EndpointFrame, remote_vtep_be: u32) -> PackedVerdict {
    PackedVerdict::pack(try_encap_to_peer(frame, remote_vtep_be).map(Some))
}

#[inline(always)]
fn try_encap_to_peer(frame: &EndpointFrame, remote_vtep_be: u32) -> Result<Verdict<i32>, Reason> {
    let EndpointFrame {
        ctx,
        node,
        vni,
        eth: inner_eth,
        ..
    } = frame;
    let source_port = source_port_for(ctx, node, inner_eth);
    // Route (and size check) before touching the packet, so a drop leaves
    // it as it was.
    let outer_len = outer_ip_len(ctx, inner_eth);
    let route = match route_to_peer(ctx, node, remote_vtep_be, source_port, outer_len)? {
        RouteLookup::Found(route) => route,
        // Too big once encapsulated: ICMP back to the sender, as the
        // kernel's vxlan does for bridged traffic; never fragmented.
        RouteLookup::TooBig(mtu) => {
            return crate::icmp::reply_too_big(frame, mtu.saturating_sub(VXLAN_ENCAP_LEN as u32))
                .verdict(Reason::TOO_BIG_FOR_UNDERLAY);
        }
    };
    let inner_is_ip = is_ip(inner_eth.ether_type);
    // bpf_redirect_neigh() resolves the next hop, but only for IP skbs.
    if !route.resolved && !inner_is_ip {
        return Err(Reason::UNDERLAY_NEIGHBOUR_UNRESOLVED);
    }
    let ip_id = next_ip_id(ctx);
    grow_for_outer_headers(ctx, inner_is_ip)?;
    write_outer_headers(
        ctx,
        node,
        *vni,
        remote_vtep_be,
        &route,
        source_port,
        ip_id,
        inner_eth,
    )?;
    let action = send_along(&route)?;
    Ok(Verdict {
        action,
        reason: Reason::FORWARDED,
    })
}
