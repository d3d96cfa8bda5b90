//! Frames the tables send, built from the fixture's endpoints.
use std::net::{Ipv4Addr, Ipv6Addr};

use overlay_common::Reason;
use overlay_lab::frames::{
        self, Arp, BROADCAST, ETHERNET_LEN, ETHERTYPE_IPV4,
        ETHERTYPE_IPV6, Ethernet, ICMPV6_PACKET_TOO_BIG, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_UDP, IPV4_LEN, IPV6_LEN, Ipv4, Ipv6, Mac, NA_FLAG_OVERRIDE, NA_FLAG_SOLICITED, ND_ROUTER_SOLICITATION,
        UDP_LEN, Udp, Vxlan,
    };

use super::*;

/// `ip` (with its own addresses) carrying `payload`, from `from`'s MAC to `to`'s.
pub(crate) fn ipv4_frame(from: Endpoint, to: Endpoint, ip: &Ipv4, payload: &[u8]) -> Vec<u8> {
    Ethernet { dst: to.mac, src: from.mac, ethertype: ETHERTYPE_IPV4 }.frame(&ip.packet(payload))
}

/// IPv6 between two containers' configured addresses, carrying `payload`
/// (an ICMPv6 message gets its checksum).
pub(crate) fn ipv6_frame(from: Endpoint, to: Endpoint, next_header: u8, payload: &[u8]) -> Vec<u8> {
    let ip = Ipv6 { next_header, hop_limit: 64, src: from.ipv6, dst: to.ipv6 };
    let packet = if next_header == IPPROTO_ICMPV6 { ip.icmpv6_packet(payload) } else { ip.packet(payload) };
    Ethernet { dst: to.mac, src: from.mac, ethertype: ETHERTYPE_IPV6 }.frame(&packet)
}

/// UDP over IPv6 between containers whose IPv6 packet is `ip_length` bytes.
pub(crate) fn udp6_of_ip_length(from: Endpoint, to: Endpoint, ip_length: usize) -> Vec<u8> {
    ipv6_frame(from, to, IPPROTO_UDP, &FLOW.datagram(&payload(ip_length - IPV6_LEN - UDP_LEN)))
}

/// UDP over IPv6 between containers (link-local addresses).
pub(crate) fn udp6_from(from: Endpoint, dst_mac: Mac, dst_ip: Ipv6Addr, udp: Udp) -> Vec<u8> {
    let src_ip = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, u16::from(from.mac.0[5]));
    let ip = Ipv6 { next_header: IPPROTO_UDP, hop_limit: 255, src: src_ip, dst: dst_ip };
    Ethernet { dst: dst_mac, src: from.mac, ethertype: ETHERTYPE_IPV6 }.frame(&ip.packet(&udp.datagram(&payload(32))))
}

/// A DHCP discover: IPv4 to 255.255.255.255, Ethernet broadcast.
pub(crate) fn dhcp_discover(from: Endpoint) -> Vec<u8> {
    udp_from(from, BROADCAST, Ipv4Addr::BROADCAST, Udp { src_port: 68, dst_port: 67 }, 240)
}

/// An mDNS query over IPv4: to 224.0.0.251 on 01:00:5e:00:00:fb (RFC 1112 section 6.4).
pub(crate) fn mdns4(from: Endpoint) -> Vec<u8> {
    let mdns = Udp { src_port: 5353, dst_port: 5353 };
    udp_from(from, Mac([0x01, 0x00, 0x5e, 0, 0, 0xfb]), Ipv4Addr::new(224, 0, 0, 251), mdns, 32)
}

/// An mDNS query over IPv6: to ff02::fb on 33:33:00:00:00:fb.
pub(crate) fn mdns6(from: Endpoint) -> Vec<u8> {
    let group = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0xfb);
    udp6_from(from, frames::ipv6_multicast_mac(group), group, Udp { src_port: 5353, dst_port: 5353 })
}

/// A router solicitation (RFC 4861 section 4.1) to all routers, ff02::2.
pub(crate) fn router_solicitation(from: Endpoint) -> Vec<u8> {
    let all_routers = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
    let ip = Ipv6 { next_header: IPPROTO_ICMPV6, hop_limit: 255, src: from.ipv6, dst: all_routers };
    let message = frames::icmpv6_message(ND_ROUTER_SOLICITATION, 0, &[0; 4]);
    Ethernet { dst: frames::ipv6_multicast_mac(all_routers), src: from.mac, ethertype: ETHERTYPE_IPV6 }.frame(&ip.icmpv6_packet(&message))
}

/// A broadcast ARP request from a container: "who has `target`?".
pub(crate) fn arp_request(from: Endpoint, target: Ipv4Addr) -> Vec<u8> {
    Arp::request(from.mac, from.ip, target).frame(BROADCAST)
}

/// The ARP reply the datapath answers `asker`'s request for `owner`'s address with.
pub(crate) fn arp_answer(owner: Endpoint, asker: Endpoint) -> Vec<u8> {
    Arp::reply(owner.mac, owner.ip, asker.mac, asker.ip).frame(asker.mac)
}

/// A ping from `from` to `to` with an 802.1Q or 802.1ad tag (`tpid`) for VLAN 10.
pub(crate) fn vlan_tagged_ping(tpid: u16, from: Endpoint, dst_mac: Mac, to: Endpoint) -> Vec<u8> {
    let untagged = ping_to(from, dst_mac, to.ip);
    let tagged = frames::vlan_tagged(10, ETHERTYPE_IPV4, &untagged[ETHERNET_LEN..]);
    Ethernet { dst: dst_mac, src: from.mac, ethertype: tpid }.frame(&tagged)
}

/// A neighbour solicitation from container `from` for `target`, to the
/// target's solicited-node group (RFC 4861 section 7.2.2).
pub(crate) fn solicitation(from: Endpoint, target: Ipv6Addr) -> Vec<u8> {
    let message = frames::neighbour_solicitation(target, Some(from.mac));
    solicitation_with(from, from.ipv6, 255, target, &message)
}

/// A neighbour solicitation from `from`'s MAC with the given IPv6 source,
/// hop limit and ICMPv6 message.
pub(crate) fn solicitation_with(from: Endpoint, source: Ipv6Addr, hop_limit: u8, target: Ipv6Addr, message: &[u8]) -> Vec<u8> {
    let group = frames::solicited_node(target);
    let ip = Ipv6 { next_header: IPPROTO_ICMPV6, hop_limit, src: source, dst: group };
    Ethernet { dst: frames::ipv6_multicast_mac(group), src: from.mac, ethertype: ETHERTYPE_IPV6 }.frame(&ip.icmpv6_packet(message))
}

/// The neighbour advertisement the datapath answers `asker`'s solicitation
/// for `owner`'s address with (RFC 4861 section 7.2.4): solicited and
/// override, not a router, with the owner's MAC as target link-layer address.
pub(crate) fn advertisement(owner: Endpoint, asker: Endpoint) -> Vec<u8> {
    let message = frames::neighbour_advertisement(NA_FLAG_SOLICITED | NA_FLAG_OVERRIDE, owner.ipv6, Some(owner.mac));
    let ip = Ipv6 { next_header: IPPROTO_ICMPV6, hop_limit: 255, src: owner.ipv6, dst: asker.ipv6 };
    Ethernet { dst: asker.mac, src: owner.mac, ethertype: ETHERTYPE_IPV6 }.frame(&ip.icmpv6_packet(&message))
}

/// The ICMP "fragmentation needed" (RFC 792, RFC 1191 section 4) the
/// datapath sends `from` for its oversized IPv4 `original` to `to`: as if
/// from `to` (as the kernel's vxlan does, iptunnel_pmtud_build_icmp), TTL
/// 64, quoting the IPv4 header and the first 8 bytes of its payload.
pub(crate) fn fragmentation_needed(from: Endpoint, to: Endpoint, original: &[u8]) -> Vec<u8> {
    let quote = &original[ETHERNET_LEN..ETHERNET_LEN + IPV4_LEN + 8];
    let icmp = frames::icmp_fragmentation_needed(OVERLAY_MTU as u16, quote);
    let ip = Ipv4 { flags_fragment: 0, ..Ipv4::new(IPPROTO_ICMP, to.ip, from.ip) };
    Ethernet { dst: from.mac, src: to.mac, ethertype: ETHERTYPE_IPV4 }.frame(&ip.packet(&icmp))
}

/// The ICMPv6 "packet too big" (RFC 4443 section 3.2) the datapath sends
/// `from` for its oversized IPv6 `original` to `to`: as if from `to`, hop
/// limit 64, quoting the first 48 bytes (IPv6 header and 8 more).
pub(crate) fn packet_too_big(from: Endpoint, to: Endpoint, original: &[u8]) -> Vec<u8> {
    let mut body = (OVERLAY_MTU as u32).to_be_bytes().to_vec();
    body.extend_from_slice(&original[ETHERNET_LEN..ETHERNET_LEN + IPV6_LEN + 8]);
    ipv6_frame(to, from, IPPROTO_ICMPV6, &frames::icmpv6_message(ICMPV6_PACKET_TOO_BIG, 0, &body))
}

/// The outer IPv4 header of VXLAN from the far VTEP to the near one.
pub(crate) fn from_far_vtep() -> Ipv4 {
    Ipv4::new(IPPROTO_UDP, FAR_VTEP, NEAR_VTEP)
}

/// The outer UDP header of VXLAN (some flow's source port).
pub(crate) fn to_vxlan_port() -> Udp {
    Udp { src_port: 51234, dst_port: VXLAN_PORT }
}

/// A frame on the near node's underlay, from the far VTEP's device.
pub(crate) fn on_underlay(ethertype: u16, packet: &[u8]) -> Vec<u8> {
    Ethernet { dst: NEAR_UNDERLAY_MAC, src: FAR_UNDERLAY_MAC, ethertype }.frame(packet)
}

/// `inner` in `vxlan` in UDP to the VXLAN port in `ip`, on the near underlay.
pub(crate) fn vxlan_frame(ip: &Ipv4, vxlan: Vxlan, inner: &[u8]) -> Vec<u8> {
    on_underlay(ETHERTYPE_IPV4, &ip.packet(&to_vxlan_port().datagram(&vxlan.packet(inner))))
}

/// A well-formed VXLAN frame from the VTEP `source` to the near one, carrying `inner` in `vni`.
pub(crate) fn vxlan_from(source: Ipv4Addr, vni: u32, inner: &[u8]) -> Vec<u8> {
    vxlan_frame(&Ipv4::new(IPPROTO_UDP, source, NEAR_VTEP), Vxlan::new(vni), inner)
}

/// A well-formed VXLAN frame from the far VTEP carrying `inner` in our VNI.
pub(crate) fn vxlan_from_far(inner: &[u8]) -> Vec<u8> {
    vxlan_from(FAR_VTEP, VNI, inner)
}

/// `frame` with its outer IPv4 header checksum off by `delta` (wrapping).
pub(crate) fn with_outer_checksum_off_by(mut frame: Vec<u8>, delta: u16) -> Vec<u8> {
    let at = ETHERNET_LEN + 10;
    let checksum = u16::from_be_bytes([frame[at], frame[at + 1]]).wrapping_add(delta);
    frame[at..at + 2].copy_from_slice(&checksum.to_be_bytes());
    frame
}

/// `frame` with its outer IPv4 header checksum set to `checksum`.
pub(crate) fn with_outer_checksum(mut frame: Vec<u8>, checksum: u16) -> Vec<u8> {
    frame[ETHERNET_LEN + 10..ETHERNET_LEN + 12].copy_from_slice(&checksum.to_be_bytes());
    frame
}

/// `frame` sent on the underlay to the outer destination MAC `mac`.
pub(crate) fn to_underlay_mac(mut frame: Vec<u8>, mac: Mac) -> Vec<u8> {
    frame[..6].copy_from_slice(&mac.0);
    frame
}

/// A unicast MAC of another host on the underlay segment (the frame is
/// PACKET_OTHERHOST on the near node's underlay device).
pub(crate) const OTHER_HOST_UNDERLAY_MAC: Mac = Mac([0x02, 0xaa, 0xaa, 0xaa, 0xaa, 0x77]);

/// A frame from container `from` that the near node must flood in its VNI
/// (head-end replication to a static peer list, RFC 7348 section 4.2) and
/// then drop. The copies: the frame unchanged on the container side of
/// every other local port of the VNI, and the frame in VXLAN to every peer
/// VTEP that carries the VNI and whose underlay neighbour is resolved. None
/// to the sender's own port, to peers of other VNIs, or to the unresolved peer.
pub(crate) fn flooded_on(near: &Node, name: &str, from: Endpoint, frame: Vec<u8>) -> Case {
    let arrivals = match from.vni {
        VNI => {
            let other = if from.port == NEAR_1.port { NEAR_2 } else { NEAR_1 };
            vec![
                unchanged_at(other.port, &frame),
                Arrival::Vxlan(near.tunnel_to(FAR_VTEP, VNI), frame.clone()),
                Arrival::Vxlan(near.tunnel_to(THIRD_VTEP, VNI), frame.clone()),
            ]
        }
        // Tenant B has one port on the near node, the sender's.
        TENANT_B_VNI => vec![Arrival::Vxlan(near.tunnel_to(TENANT_B_VTEP, TENANT_B_VNI), frame.clone())],
        vni => panic!("the near node has no flood list for VNI {vni}"),
    };
    Case::given(name, Hook::Port(from.port), frame).expect(TC_ACT_SHOT, Reason::FLOODED, Output::Ignored).arriving(arrivals)
}
