//! TC ingress of an endpoint's host-side port, i.e. every frame a container
//! sends: ARP answers, local switching, or VXLAN encapsulation to a peer.
use aya_ebpf::{
    bindings::{
        BPF_ADJ_ROOM_ENCAP_L2_SHIFT, BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4,
        BPF_F_ADJ_ROOM_ENCAP_L4_UDP, BPF_F_ADJ_ROOM_FIXED_GSO, BPF_FIB_LKUP_RET_FRAG_NEEDED,
        BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_FIB_LOOKUP_OUTPUT, TC_ACT_REDIRECT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_fib_lookup,
        bpf_redir_neigh,
    },
    helpers::{
        bpf_fib_lookup as fib_lookup, bpf_get_hash_recalc, bpf_redirect, bpf_redirect_neigh,
        bpf_redirect_peer, bpf_skb_change_head,
    },
    programs::TcContext,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, udp::UdpHdr, vxlan::VxlanHdr};
use overlay_common::{
    ETH_HDR_LEN, ETH_P_ARP, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_UDP, NodeConfig, Reason,
    VXLAN_ENCAP_LEN, VXLAN_FLAG_VNI_VALID, VniMac,
};

use crate::{
    arp,
    maps::{FDB, LOCAL_ENDPOINTS, PORTS, node_config},
    packet::{BROADCAST_MAC, EncapHeaders, Verdict, ipv4_header_checksum, is_multicast},
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

pub fn try_endpoint(ctx: &TcContext) -> Result<Verdict<i32>, Reason> {
    // SAFETY: reading a field of the context the kernel handed us.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: read and copied at once.
    let vni = unsafe { PORTS.get(&ifindex) }.ok_or(Reason::PORT_NOT_CONFIGURED)?.vni;
    let eth: EthHdr = ctx.load(0).map_err(|_| Reason::TRUNCATED_ETHERNET)?;
    let destination = eth.dst_addr;
    if is_multicast(&destination) {
        if destination == BROADCAST_MAC && eth.ether_type == ETH_P_ARP.to_be() {
            return arp::answer_request(ctx, vni, ifindex, &eth);
        }
        return Err(Reason::FLOOD_UNSUPPORTED);
    }
    let key = VniMac::new(vni, destination);
    // SAFETY: read and copied at once.
    if let Some(local) = unsafe { LOCAL_ENDPOINTS.get(&key) } {
        // Straight into the other endpoint's namespace, skipping the backlog.
        // SAFETY: plain helper call.
        let action = unsafe { bpf_redirect_peer(local.ifindex, 0) } as i32;
        return Ok(Verdict { action, reason: Reason::LOCAL_SWITCHED });
    }
    // SAFETY: read and copied at once.
    let remote_vtep_be = unsafe { FDB.get(&key) }.ok_or(Reason::UNKNOWN_DESTINATION)?.vtep_addr_be;
    let node = node_config().ok_or(Reason::PORT_NOT_CONFIGURED)?;
    encap_to_peer(ctx, node, vni, remote_vtep_be, &eth)
}

/// Wraps the frame in outer Ethernet/IPv4/UDP/VXLAN headers addressed to
/// `remote_vtep_be` and sends it out of the underlay device towards the
/// next hop the kernel's FIB and neighbour tables give.
#[inline(always)]
fn encap_to_peer(
    ctx: &TcContext,
    node: &NodeConfig,
    vni: u32,
    remote_vtep_be: u32,
    inner_eth: &EthHdr,
) -> Result<Verdict<i32>, Reason> {
    let skb = ctx.skb.skb;
    let inner_len = ctx.len() as usize;
    let is_ip = inner_eth.ether_type == ETH_P_IPV4.to_be() || inner_eth.ether_type == ETH_P_IPV6.to_be();
    let source_port = source_port_for(ctx, node);

    // Route and next hop before touching the packet, so a drop leaves it as it was.
    // SAFETY: all-zero is a valid bpf_fib_lookup.
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = IPPROTO_UDP;
    fib.sport = source_port.to_be();
    fib.dport = node.vxlan_port_be;
    // SAFETY: reading context fields.
    let is_gso = unsafe { (*skb).gso_segs } > 1 || unsafe { (*skb).gso_size } != 0;
    // With tot_len set the kernel checks it against the route MTU; a GSO skb is
    // checked per segment by the stack instead (tot_len 0: skb-based check).
    fib.__bindgen_anon_1.tot_len =
        if is_gso { 0 } else { (inner_len + VXLAN_ENCAP_LEN - ETH_HDR_LEN) as u16 };
    fib.ifindex = node.underlay_ifindex;
    fib.__bindgen_anon_3.ipv4_src = node.vtep_addr_be;
    fib.__bindgen_anon_4.ipv4_dst = remote_vtep_be;
    // SAFETY: fib is a valid, fully sized parameter block on our stack.
    let rc = unsafe {
        fib_lookup(
            skb as *mut _,
            &mut fib,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            BPF_FIB_LOOKUP_OUTPUT,
        )
    };
    let neighbour_known = match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => true,
        // bpf_redirect_neigh() resolves the next hop, but only for IP skbs.
        BPF_FIB_LKUP_RET_NO_NEIGH if is_ip => false,
        BPF_FIB_LKUP_RET_NO_NEIGH => return Err(Reason::UNDERLAY_NEIGHBOUR_UNRESOLVED),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => return Err(Reason::TOO_BIG_FOR_UNDERLAY),
        // The helper is a forwarding lookup: it refuses to route when IPv4
        // forwarding is off on the device it looks up from.
        BPF_FIB_LKUP_RET_FWD_DISABLED => return Err(Reason::UNDERLAY_FORWARDING_DISABLED),
        _ => {
            aya_log_ebpf::debug!(ctx, "underlay FIB lookup for {:i} failed: rc {}", u32::from_be(remote_vtep_be), rc);
            return Err(Reason::NO_UNDERLAY_ROUTE);
        }
    };

    // bpf_skb_adjust_room refuses skbs that are not IPv4/IPv6 (ARP gets
    // -ENOTSUPP); those cannot be GSO, so pushing plain headroom in front
    // with bpf_skb_change_head is enough for them.
    let grown = if is_ip {
        ctx.skb.adjust_room(VXLAN_ENCAP_LEN as i32, BPF_ADJ_ROOM_MAC, ENCAP_FLAGS).is_ok()
    } else {
        // SAFETY: plain helper call.
        unsafe { bpf_skb_change_head(skb, VXLAN_ENCAP_LEN as u32, 0) == 0 }
    };
    if !grown {
        return Err(Reason::ENCAP_FAILED);
    }

    let outer_len = inner_len + VXLAN_ENCAP_LEN;
    let mut headers = EncapHeaders {
        outer_eth: EthHdr {
            dst_addr: fib.dmac,
            src_addr: fib.smac,
            ether_type: ETH_P_IPV4.to_be(),
        },
        ip: Ipv4Hdr {
            vihl: 0x45,
            tos: 0,
            // For a GSO skb this is rewritten per segment by the stack.
            tot_len: ((outer_len - ETH_HDR_LEN) as u16).to_be_bytes(),
            // With DF set the ID carries no meaning (RFC 6864 section 4.1).
            id: [0; 2],
            frags: IPV4_DONT_FRAGMENT.to_be_bytes(),
            ttl: node.ttl,
            proto: IPPROTO_UDP,
            check: [0; 2],
            src_addr: node.vtep_addr_be.to_ne_bytes(),
            dst_addr: remote_vtep_be.to_ne_bytes(),
        },
        udp: UdpHdr {
            src: source_port.to_be_bytes(),
            dst: node.vxlan_port_be.to_ne_bytes(),
            len: ((outer_len - ETH_HDR_LEN - core::mem::size_of::<Ipv4Hdr>()) as u16).to_be_bytes(),
            // Zero: no UDP checksum over IPv4 (RFC 7348 section 5).
            check: [0; 2],
        },
        vxlan: VxlanHdr {
            flags: VXLAN_FLAG_VNI_VALID,
            _reserved1: [0; 3],
            vni: [(vni >> 16) as u8, (vni >> 8) as u8, vni as u8],
            _reserved2: 0,
        },
        inner_eth: *inner_eth,
    };
    headers.ip.check = ipv4_header_checksum(&headers.ip).to_be_bytes();
    ctx.store(0, &headers, 0).map_err(|_| Reason::ENCAP_FAILED)?;

    let action = if neighbour_known {
        // SAFETY: plain helper call.
        unsafe { bpf_redirect(fib.ifindex, 0) }
    } else {
        // The kernel resolves the next hop (queueing the packet meanwhile)
        // and writes the outer MACs itself.
        // SAFETY: all-zero is a valid bpf_redir_neigh; the union member we
        // set is the one nh_family selects.
        let mut next_hop: bpf_redir_neigh = unsafe { core::mem::zeroed() };
        next_hop.nh_family = AF_INET as u32;
        next_hop.__bindgen_anon_1.ipv4_nh = unsafe { fib.__bindgen_anon_4.ipv4_dst };
        // SAFETY: next_hop is a valid, fully sized parameter block.
        unsafe {
            bpf_redirect_neigh(
                fib.ifindex,
                &mut next_hop,
                core::mem::size_of::<bpf_redir_neigh>() as i32,
                0,
            )
        }
    } as i32;
    if action != TC_ACT_REDIRECT as i32 {
        return Err(Reason::NO_UNDERLAY_ROUTE);
    }
    Ok(Verdict { action, reason: Reason::FORWARDED })
}

/// Outer UDP source port: the skb's flow hash (of the inner frame, computed
/// before encapsulation) scaled into the configured range, as the kernel's
/// udp_flow_src_port() does, so one flow keeps one port and the underlay's
/// ECMP can spread flows (RFC 7348 section 5, "Source Port").
#[inline(always)]
fn source_port_for(ctx: &TcContext, node: &NodeConfig) -> u16 {
    // SAFETY: plain helper call.
    let hash = unsafe { bpf_get_hash_recalc(ctx.skb.skb) } as u64;
    let min = node.source_port_min as u64;
    let span = (node.source_port_max as u64).saturating_sub(min) + 1;
    (min + ((hash * span) >> 32)) as u16
}
