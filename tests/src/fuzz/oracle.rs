//! What must hold of a frame whatever the datapath decided, written from
//! the RFCs and the configuration, not from the datapath's code.
use std::net::Ipv4Addr;

use super::World;
use crate::frames::{self, ETHERNET_LEN, ETHERTYPE_8021AD, ETHERTYPE_8021Q, ETHERTYPE_IPV4, IPV4_LEN, Mac, VxlanOverIpv4};

/// The VXLAN encapsulation length: outer Ethernet, IPv4, UDP, VXLAN.
pub const ENCAP_LEN: usize = 50;

/// A frame on the underlay as this node must see it.
#[derive(Debug, PartialEq, Eq)]
pub enum Underlay<'a> {
    /// Not UDP to our VTEP's VXLAN port (or a later fragment, which has no
    /// UDP header): the kernel stack's.
    NotOurs,
    /// Ours, and refused: must be dropped, never delivered.
    Refused(&'static str),
    /// Ours and admitted: the inner frame may be delivered in this VNI.
    Admitted { vni: u32, inner: &'a [u8] },
}

fn u16_at(frame: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([frame[at], frame[at + 1]])
}

/// Judges a frame from the underlay as the kernel's IP layer and RFC 7348
/// would (every hook knows the underlay's MAC: TC from the skb's pkt_type,
/// XDP from the MAC the agent writes).
pub fn judge_underlay<'a>(frame: &'a [u8], world: &World) -> Underlay<'a> {
    let ip = ETHERNET_LEN;
    if frame.len() < ip + IPV4_LEN || u16_at(frame, 12) != ETHERTYPE_IPV4 {
        return Underlay::NotOurs;
    }
    let (version, ihl) = (frame[ip] >> 4, (frame[ip] & 0x0f) as usize);
    let fragment = u16_at(frame, ip + 6);
    let destination = Ipv4Addr::new(frame[ip + 16], frame[ip + 17], frame[ip + 18], frame[ip + 19]);
    if version != 4 || ihl < 5 || frame[ip + 9] != 17 || destination != world.vtep || fragment & 0x1fff != 0 {
        return Underlay::NotOurs;
    }
    let udp = ip + ihl * 4;
    if frame.len() < udp + 8 || u16_at(frame, udp + 2) != world.vxlan_port {
        return Underlay::NotOurs;
    }
    // Ours from here on.
    let outer_dst = Mac(frame[..6].try_into().unwrap());
    if outer_dst.0[0] & 1 == 0 && outer_dst != world.underlay_mac {
        return Underlay::Refused("addressed to another host's MAC");
    }
    if fragment & 0x2000 != 0 {
        return Underlay::Refused("a first fragment");
    }
    if ihl != 5 {
        return Underlay::Refused("IPv4 options");
    }
    if frames::internet_checksum(&frame[ip..ip + IPV4_LEN]) != 0 {
        return Underlay::Refused("a wrong IPv4 header checksum");
    }
    let (total, udp_len) = (u16_at(frame, ip + 2) as usize, u16_at(frame, udp + 4) as usize);
    if ETHERNET_LEN + total != frame.len() || IPV4_LEN + udp_len != total {
        return Underlay::Refused("IPv4 or UDP length not the frame's");
    }
    if frame.len() < ENCAP_LEN + ETHERNET_LEN {
        return Underlay::Refused("too short for VXLAN and an inner Ethernet header");
    }
    let vxlan = udp + 8;
    if frame[vxlan] & 0x08 == 0 {
        return Underlay::Refused("no I flag");
    }
    let vni = u32::from_be_bytes([0, frame[vxlan + 4], frame[vxlan + 5], frame[vxlan + 6]]);
    let source = Ipv4Addr::new(frame[ip + 12], frame[ip + 13], frame[ip + 14], frame[ip + 15]);
    if !world.admits(source, vni) {
        return Underlay::Refused("not from a peer admitted for its VNI");
    }
    let inner = &frame[ENCAP_LEN..];
    let inner_type = u16_at(inner, 12);
    if inner_type == ETHERTYPE_8021Q || inner_type == ETHERTYPE_8021AD {
        return Underlay::Refused("an inner VLAN tag (RFC 7348 section 6.1)");
    }
    Underlay::Admitted { vni, inner }
}

/// What is wrong with `output`, an encapsulation of `input` sent from a
/// port of `vni`: every outer field (RFC 7348 section 5, RFC 791, RFC 768)
/// and the carried frame. `peer` is the VTEP it must go to, when known.
pub fn check_encapsulated(output: &[u8], input: &[u8], world: &World, vni: u32, peer: Option<Ipv4Addr>) -> Vec<String> {
    let Some(outer) = VxlanOverIpv4::parse(output) else {
        return vec![format!("{} bytes: too short for VXLAN over IPv4", output.len())];
    };
    let mut wrong = Vec::new();
    let mut expect = |what: &str, ok: bool, seen: String| {
        if !ok {
            wrong.push(format!("{what}: seen {seen}"));
        }
    };
    expect("EtherType IPv4", outer.ethertype == ETHERTYPE_IPV4, format!("{:#06x}", outer.ethertype));
    expect("IPv4 version 4, IHL 5", outer.ip_version_ihl == 0x45, format!("{:#04x}", outer.ip_version_ihl));
    expect(
        "IPv4 total length = frame - 14",
        outer.ip_total_length as usize + ETHERNET_LEN == output.len(),
        format!("{} in a {}-byte frame", outer.ip_total_length, output.len()),
    );
    expect("IPv4 header checksum right", outer.ip_checksum == outer.ip_checksum_computed, format!("{:#06x}, computed {:#06x}", outer.ip_checksum, outer.ip_checksum_computed));
    expect("DF set, not a fragment", outer.ip_flags_fragment == 0x4000, format!("{:#06x}", outer.ip_flags_fragment));
    expect("TTL as configured", outer.ip_ttl == world.ttl, outer.ip_ttl.to_string());
    expect("protocol UDP", outer.ip_protocol == 17, outer.ip_protocol.to_string());
    expect("source our VTEP", outer.ip_src == world.vtep, outer.ip_src.to_string());
    let carrier = world.peers.iter().find(|p| p.vtep == outer.ip_dst && p.carries(vni));
    expect("destination a peer VTEP that carries the VNI", carrier.is_some(), outer.ip_dst.to_string());
    if let Some(peer) = peer {
        expect("destination the VTEP behind the inner destination", outer.ip_dst == peer, format!("{}, not {peer}", outer.ip_dst));
    }
    expect("outer source MAC the underlay's", outer.eth_src == world.underlay_mac, outer.eth_src.to_string());
    if let Some(carrier) = carrier {
        expect(
            "outer destination MAC the peer's next hop",
            Some(outer.eth_dst) == carrier.underlay_mac,
            outer.eth_dst.to_string(),
        );
    }
    let (low, high) = world.source_ports;
    expect("UDP source port in the configured range", (low..=high).contains(&outer.udp_src_port), outer.udp_src_port.to_string());
    expect("UDP destination port the VXLAN port", outer.udp_dst_port == world.vxlan_port, outer.udp_dst_port.to_string());
    expect(
        "UDP length = IPv4 total length - 20",
        outer.udp_length as usize + IPV4_LEN == outer.ip_total_length as usize,
        outer.udp_length.to_string(),
    );
    let udp_ok = outer.udp_checksum == 0 || udp_checksum_verifies(output);
    expect("UDP checksum zero or right", udp_ok, format!("{:#06x}", outer.udp_checksum));
    expect("VXLAN flags: only I", outer.vxlan_flags == 0x08, format!("{:#04x}", outer.vxlan_flags));
    expect(
        "VXLAN reserved fields zero",
        outer.vxlan_reserved1 == [0; 3] && outer.vxlan_reserved2 == 0,
        format!("{:?} {}", outer.vxlan_reserved1, outer.vxlan_reserved2),
    );
    expect("VNI the port's", outer.vxlan_vni == vni, outer.vxlan_vni.to_string());
    if outer.inner != input {
        wrong.push(format!("carried frame is not the input: {}", frames::difference(input, outer.inner).unwrap_or_default()));
    }
    wrong
}

/// RFC 768 over IPv4: pseudo-header, header and data sum to zero.
fn udp_checksum_verifies(frame: &[u8]) -> bool {
    let ip = ETHERNET_LEN;
    let udp = &frame[ip + IPV4_LEN..];
    let mut pseudo = Vec::with_capacity(12 + udp.len());
    pseudo.extend_from_slice(&frame[ip + 12..ip + 20]);
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(udp);
    frames::internet_checksum(&pseudo) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        frames::{BROADCAST, Ethernet, IPPROTO_UDP, Ipv4, Udp, Vxlan},
        fuzz::{Rng, generate},
    };

    fn vxlan(world: &World, source: Ipv4Addr, vni: u32, outer_dst: Mac) -> Vec<u8> {
        let inner = Ethernet { dst: world.locals[0].endpoint.mac, src: Mac([2, 0, 0, 0, 1, 2]), ethertype: 0x0800 }.frame(&[0x45; 40]);
        let datagram = Udp { src_port: 50000, dst_port: world.vxlan_port }.datagram(&Vxlan::new(vni).packet(&inner));
        Ethernet { dst: outer_dst, src: Mac([2, 0xaa, 0xaa, 0xaa, 0xaa, 2]), ethertype: ETHERTYPE_IPV4 }
            .frame(&Ipv4::new(IPPROTO_UDP, source, world.vtep).packet(&datagram))
    }

    /// The oracle is not vacuous: it admits a good frame and refuses each
    /// kind of bad one.
    #[test]
    fn oracle_admits_good_vxlan_and_refuses_each_fault() {
        let world = World::standard();
        let far = world.peers[0].vtep;
        let good = vxlan(&world, far, 100, world.underlay_mac);
        assert!(matches!(judge_underlay(&good, &world), Underlay::Admitted { vni: 100, .. }));
        assert!(matches!(judge_underlay(&vxlan(&world, far, 100, BROADCAST), &world), Underlay::Admitted { .. }));
        let mut bad_checksum = good.clone();
        bad_checksum[ETHERNET_LEN + 10] ^= 1;
        for (what, frame) in [
            ("bad checksum", bad_checksum),
            ("other host", vxlan(&world, far, 100, world.other_host_mac)),
            ("stranger", vxlan(&world, world.strangers[0], 100, world.underlay_mac)),
            ("peer not in VNI", vxlan(&world, world.peers[2].vtep, 100, world.underlay_mac)),
            ("unknown VNI", vxlan(&world, far, world.unknown_vni, world.underlay_mac)),
            ("truncated", good[..good.len() - 1].to_vec()),
        ] {
            assert!(matches!(judge_underlay(&frame, &world), Underlay::Refused(_)), "{what}: {:?}", judge_underlay(&frame, &world));
        }
        let mut other_port = good.clone();
        other_port[ETHERNET_LEN + IPV4_LEN + 2] ^= 0x40;
        assert_eq!(judge_underlay(&other_port, &world), Underlay::NotOurs);
    }

    /// The same seed, program and index give the same frame; the underlay
    /// generator reaches all three judgements in fair shares.
    #[test]
    fn generators_replay_and_cover_every_judgement() {
        let world = World::standard();
        let frame = |index| generate::underlay_frame(&mut Rng::for_frame(7, 2, index), &world);
        assert_eq!(frame(12345), frame(12345));
        assert_ne!(frame(12345), frame(12346));
        let (mut admitted, mut refused, mut not_ours) = (0, 0, 0);
        for index in 0..5000 {
            match judge_underlay(&frame(index), &world) {
                Underlay::Admitted { .. } => admitted += 1,
                Underlay::Refused(_) => refused += 1,
                Underlay::NotOurs => not_ours += 1,
            }
        }
        for (what, count) in [("admitted", admitted), ("refused", refused), ("not ours", not_ours)] {
            assert!(count > 500, "{what}: {count} of 5000 (admitted {admitted}, refused {refused}, not ours {not_ours})");
        }
    }
}
