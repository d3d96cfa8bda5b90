//! ARP: which requests the datapath may answer, and the answer itself.
use aya_ebpf::{helpers::bpf_redirect, programs::TcContext};
use network_types::{arp::ArpHdr, eth::EthHdr};
use overlay_common::{ETH_HDR_LEN, ETH_P_ARP, ETH_P_IPV4, Reason, VniIpv4};

use crate::{maps::NEIGHBOURS, packet::Verdict};

const ARP_HTYPE_ETHERNET: u16 = 1;
const ARP_OP_REQUEST: u16 = 1;
const ARP_OP_REPLY: u16 = 2;

/// Checks that `arp` is an Ethernet/IPv4 request for some other host's
/// address (RFC 826), the only kind a proxy may answer or steer.
#[inline(always)]
pub fn check_request(arp: &ArpHdr) -> Result<(), Reason> {
    if u16::from_be_bytes(arp.htype) != ARP_HTYPE_ETHERNET
        || u16::from_be_bytes(arp.ptype) != ETH_P_IPV4
        || arp.hlen != 6
        || arp.plen != 4
    {
        return Err(Reason::ARP_MALFORMED);
    }
    match u16::from_be_bytes(arp.oper) {
        ARP_OP_REQUEST => {}
        // A broadcast reply is a gratuitous announcement.
        ARP_OP_REPLY => return Err(Reason::ARP_ANNOUNCEMENT),
        _ => return Err(Reason::ARP_MALFORMED),
    }
    // Probes (sender 0.0.0.0, RFC 5227) and announcements (sender == target)
    // are about the sender itself: answering them would fake a conflict.
    if arp.spa == [0; 4] || arp.spa == arp.tpa {
        return Err(Reason::ARP_ANNOUNCEMENT);
    }
    Ok(())
}

/// Answers an ARP request from a local endpoint out of the neighbour table
/// (ARP suppression): the reply goes straight back out of the port it came
/// in on, and nothing crosses the underlay.
#[inline(always)]
pub fn answer_request(
    ctx: &TcContext,
    vni: u32,
    ifindex: u32,
    eth: &EthHdr,
) -> Result<Verdict<i32>, Reason> {
    let arp: ArpHdr = ctx.load(ETH_HDR_LEN).map_err(|_| Reason::ARP_MALFORMED)?;
    check_request(&arp)?;
    let key = VniIpv4 { vni, addr_be: u32::from_ne_bytes(arp.tpa) };
    // SAFETY: the value is only read, and copied before any helper call.
    let owner = unsafe { NEIGHBOURS.get(&key) }.ok_or(Reason::ARP_UNKNOWN_TARGET)?.mac;
    if owner == eth.src_addr {
        // It asks for its own address: a duplicate-address check.
        return Err(Reason::ARP_ANNOUNCEMENT);
    }
    let reply = ArpReply {
        eth: EthHdr { dst_addr: eth.src_addr, src_addr: owner, ether_type: ETH_P_ARP.to_be() },
        arp: ArpHdr {
            htype: arp.htype,
            ptype: arp.ptype,
            hlen: 6,
            plen: 4,
            oper: ARP_OP_REPLY.to_be_bytes(),
            sha: owner,
            spa: arp.tpa,
            tha: arp.sha,
            tpa: arp.spa,
        },
    };
    ctx.store(0, &reply, 0).map_err(|_| Reason::ARP_MALFORMED)?;
    // SAFETY: plain helper call; egress of the port is the endpoint's ingress.
    let action = unsafe { bpf_redirect(ifindex, 0) } as i32;
    Ok(Verdict { action, reason: Reason::ARP_REPLIED })
}

#[repr(C)]
struct ArpReply {
    eth: EthHdr,
    arp: ArpHdr,
}
const _: () = assert!(core::mem::size_of::<ArpReply>() == 42);
