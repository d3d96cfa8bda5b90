//! ARP: which requests the datapath may answer, and the answer itself.
use aya_ebpf::helpers::bpf_redirect;
use network_types::{arp::ArpHdr, eth::EthHdr};
use overlay_common::{ETH_HDR_LEN, ETH_P_ARP, ETH_P_IPV4, Reason, VniIpv4};

use crate::{
    maps::NEIGHBOURS,
    packet::{EndpointFrame, PackedVerdict, Verdict},
};

const ARP_HTYPE_ETHERNET: u16 = 1;
const ARP_OP_REQUEST: u16 = 1;
const ARP_OP_REPLY: u16 = 2;

/// What a broadcast ARP frame is.
pub enum ArpBroadcast {
    /// A request for another host's address: a proxy may answer or steer it.
    Request,
    /// A probe (sender 0.0.0.0, RFC 5227), an announcement (sender ==
    /// target) or a gratuitous reply: about the sender itself, for everyone
    /// to hear, so flooded and never answered (an answer would fake a conflict).
    Announcement,
}

/// Classifies a broadcast Ethernet/IPv4 ARP frame (RFC 826).
#[inline(always)]
pub fn classify(arp: &ArpHdr) -> Result<ArpBroadcast, Reason> {
    if u16::from_be_bytes(arp.htype) != ARP_HTYPE_ETHERNET
        || u16::from_be_bytes(arp.ptype) != ETH_P_IPV4
        || arp.hlen != 6
        || arp.plen != 4
    {
        return Err(Reason::ARP_MALFORMED);
    }
    match u16::from_be_bytes(arp.oper) {
        ARP_OP_REQUEST if arp.spa == [0; 4] || arp.spa == arp.tpa => Ok(ArpBroadcast::Announcement),
        ARP_OP_REQUEST => Ok(ArpBroadcast::Request),
        ARP_OP_REPLY => Ok(ArpBroadcast::Announcement),
        _ => Err(Reason::ARP_MALFORMED),
    }
}

/// Answers an ARP request from a local endpoint out of the neighbour table
/// (ARP suppression): the reply goes straight back out of the port it came
/// in on, and nothing crosses the underlay. `Ok(None)` when the node cannot
/// answer (unknown target, announcements): the frame is flooded instead.
// Verifier/stack: a BPF-to-BPF call of its own, so the frames this path
// builds do not share the caller's 512-byte stack with the other paths'.
#[inline(never)]
pub fn answer_request(frame: &EndpointFrame) -> PackedVerdict {
    PackedVerdict::pack(try_answer_request(frame))
}

#[inline(always)]
fn try_answer_request(frame: &EndpointFrame) -> Result<Option<Verdict<i32>>, Reason> {
    let EndpointFrame {
        ctx,
        vni,
        ifindex,
        eth,
        ..
    } = frame;
    let (vni, ifindex) = (*vni, *ifindex);
    let arp: ArpHdr = ctx.load(ETH_HDR_LEN).map_err(|_| Reason::ARP_MALFORMED)?;
    if let ArpBroadcast::Announcement = classify(&arp)? {
        return Ok(None);
    }
    let key = VniIpv4 {
        vni,
        addr_be: u32::from_ne_bytes(arp.tpa),
    };
    // SAFETY: the value is only read, and copied before any helper call.
    let Some(owner) = (unsafe { NEIGHBOURS.get(&key) }).map(|n| n.mac) else {
        return Ok(None);
    };
    if owner == eth.src_addr {
        // It asks for its own address: a duplicate-address check.
        return Ok(None);
    }
    let reply = ArpReply {
        eth: EthHdr {
            dst_addr: eth.src_addr,
            src_addr: owner,
            ether_type: ETH_P_ARP.to_be(),
        },
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
    Ok(Some(Verdict {
        action,
        reason: Reason::ARP_REPLIED,
    }))
}

#[repr(C)]
struct ArpReply {
    eth: EthHdr,
    arp: ArpHdr,
}
const _: () = assert!(core::mem::size_of::<ArpReply>() == 42);
