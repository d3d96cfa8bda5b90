//! The admission judgement for a NIC that runs XDP itself (`--xdp-mode
//! offload`): VXLAN to this node's VTEP that the decapsulation would drop
//! for its outer headers is dropped in the NIC, before the host spends
//! anything on it; everything else is passed to the host, where the TC
//! program (`decap_tc`) judges it again in full and decapsulates.
//!
//! Offloaded XDP is bound to one device and limited by what that device
//! can run: it cannot redirect (so it cannot deliver into a container),
//! and it may only use maps offloaded to the same device, of the types
//! and sizes the device supports (array and hash; netdevsim takes at most
//! two entries per map). So this program reads one map of its own,
//! [`OFFLOAD_NODE`] (the node's VTEP address and VXLAN port, which the
//! agent creates on the device and fills), and none of the datapath's
//! tables: the checks that need no table are made here (outer IPv4 and
//! UDP well formed, no fragment, no options, right header checksum and
//! lengths, VXLAN header present with its I flag set); unknown VNIs and
//! peers not admitted for a VNI are left to the host's judgement. Drops
//! in the NIC are not counted in the host's counters (the NIC's maps
//! cannot be per-CPU counters the host reads as the others).
use aya_ebpf::{bindings::xdp_action, macros::map, maps::Array, programs::XdpContext};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, udp::UdpHdr, vxlan::VxlanHdr};
use overlay_common::{
    ETH_HDR_LEN, ETH_P_IPV4, IPPROTO_UDP, IPV4_HDR_LEN, NodeConfig, Reason, UDP_HDR_LEN,
    VXLAN_FLAG_VNI_VALID,
};

use crate::{decap::check_outer, packet::ptr_at};

/// The node's VTEP settings, on the NIC (entry 0, as `NODE` on the host).
#[map]
pub static OFFLOAD_NODE: Array<NodeConfig> = Array::with_max_entries(1, 0);

const VXLAN_OFFSET: usize = ETH_HDR_LEN + IPV4_HDR_LEN + UDP_HDR_LEN;
/// Fragment offset bits: a later fragment has no UDP header to judge by.
const IPV4_OFFSET_MASK: u16 = 0x1fff;

/// Whether the host may see the frame: `Err` with the reason the
/// decapsulation would drop it for.
#[inline(always)]
pub fn try_admit(ctx: &XdpContext) -> Result<(), Reason> {
    let Some(node) = OFFLOAD_NODE.get(0).filter(|node| node.configured != 0) else {
        return Ok(());
    };
    let (start, end) = (ctx.data(), ctx.data_end());
    // The same steps as `decap::judge` up to "UDP to our VTEP's VXLAN
    // port"; what is not ours goes to the host untouched.
    let Some(eth) = ptr_at::<EthHdr>(start, end, 0) else {
        return Ok(());
    };
    // SAFETY (all packet reads below): ptr_at checked the bounds.
    if unsafe { (*eth).ether_type } != ETH_P_IPV4.to_be() {
        return Ok(());
    }
    let Some(ip) = ptr_at::<Ipv4Hdr>(start, end, ETH_HDR_LEN) else {
        return Ok(());
    };
    let ip = unsafe { &*ip };
    if ip.proto != IPPROTO_UDP || u32::from_ne_bytes(ip.dst_addr) != node.vtep_addr_be || ip.vihl >> 4 != 4 {
        return Ok(());
    }
    let ihl = (ip.vihl & 0x0f) as usize;
    if ihl < 5 || u16::from_be_bytes(ip.frags) & IPV4_OFFSET_MASK != 0 {
        return Ok(());
    }
    let Some(udp) = ptr_at::<UdpHdr>(start, end, ETH_HDR_LEN + ihl * 4) else {
        return Ok(());
    };
    let udp = unsafe { &*udp };
    if u16::from_ne_bytes(udp.dst) != node.vxlan_port_be {
        return Ok(());
    }
    // A frame on the wire is never a GSO aggregate; the MAC check
    // (outer-other-host) needs the host's skb or map: left to the host.
    check_outer(ip, udp, end - start, false, false)?;
    let vxlan = ptr_at::<VxlanHdr>(start, end, VXLAN_OFFSET).ok_or(Reason::VXLAN_TRUNCATED)?;
    // RFC 7348 section 5: the I flag MUST be 1.
    if unsafe { (*vxlan).flags } & VXLAN_FLAG_VNI_VALID == 0 {
        return Err(Reason::VXLAN_FLAGS_INVALID);
    }
    Ok(())
}

/// The action for the NIC: drop what the host would drop anyway.
#[inline(always)]
pub fn admit(ctx: &XdpContext) -> u32 {
    match try_admit(ctx) {
        Ok(()) => xdp_action::XDP_PASS,
        Err(_) => xdp_action::XDP_DROP,
    }
}
