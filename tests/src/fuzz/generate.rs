//! The frame generators: a valid frame of a family the program meets, then
//! (most of the time) one to four mutations of its fields.
use std::net::{Ipv4Addr, Ipv6Addr};

use super::{Endpoint, Rng, World};
use crate::frames::{
    self, Arp, BROADCAST, ETHERNET_LEN, ETHERTYPE_8021AD, ETHERTYPE_8021Q, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6,
    Ethernet, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, IPV4_DONT_FRAGMENT, IPV4_LEN, IPV4_MORE_FRAGMENTS, Ipv4,
    Ipv6, Mac, Tcp, Udp, Vxlan,
};

const IP_AT: usize = ETHERNET_LEN;

fn random_mac(rng: &mut Rng) -> Mac {
    let mut mac = [0u8; 6];
    mac.iter_mut().for_each(|b| *b = rng.byte());
    mac[0] &= 0xfe; // unicast
    Mac(mac)
}

/// A destination MAC: mostly someone's, sometimes broadcast or multicast.
fn destination_mac(rng: &mut Rng, world: &World, vni: u32) -> Mac {
    let endpoints = world.all_endpoints();
    let same_vni: Vec<Endpoint> = endpoints.iter().copied().filter(|e| e.vni == vni).collect();
    match rng.below(20) {
        0..=9 if !same_vni.is_empty() => rng.pick(&same_vni).mac,
        10..=11 => rng.pick(&endpoints).mac, // another tenant's MAC
        12..=13 => random_mac(rng),
        14..=15 => BROADCAST,
        16 => Mac([0x01, 0x00, 0x5e, 0, rng.byte() & 0x7f, rng.byte()]),
        17 => Mac([0x33, 0x33, 0, 0, 0, rng.byte()]),
        18 => Mac([0x33, 0x33, 0xff, 0, 0, rng.byte()]),
        _ => Mac([rng.byte() | 1, rng.byte(), rng.byte(), rng.byte(), rng.byte(), rng.byte()]),
    }
}

/// A target address for ARP or ND: someone's, or nobody's.
fn target(rng: &mut Rng, world: &World) -> Endpoint {
    let endpoints = world.all_endpoints();
    if rng.chance(75) {
        *rng.pick(&endpoints)
    } else {
        let last = rng.byte();
        Endpoint { mac: random_mac(rng), ip: Ipv4Addr::new(10, 10, 0, last), ipv6: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, last as u16), vni: 0 }
    }
}

fn random_payload(rng: &mut Rng) -> Vec<u8> {
    let len = match rng.below(10) {
        0..=6 => rng.within(0, 200),
        7..=8 => rng.within(200, 1400),
        _ => rng.within(1400, 1520),
    };
    rng.bytes(len)
}

fn random_bytes(rng: &mut Rng, min: usize, max: usize) -> Vec<u8> {
    let len = rng.within(min, max);
    rng.bytes(len)
}

/// One of `items` (which may hold values drawn before).
fn one_of<T: Copy>(rng: &mut Rng, items: &[T]) -> T {
    *rng.pick(items)
}

/// A frame `from` sends in `vni`: IPv4, ARP, IPv6 and neighbour discovery,
/// VLAN-tagged, or of an unknown EtherType.
pub fn inner_frame(rng: &mut Rng, world: &World, vni: u32, from: Endpoint) -> Vec<u8> {
    let dst = destination_mac(rng, world, vni);
    let to = target(rng, world);
    let flags = if rng.chance(80) { IPV4_DONT_FRAGMENT } else { 0 };
    let ipv4 = |protocol: u8| Ipv4 { flags_fragment: flags, identification: 7, ..Ipv4::new(protocol, from.ip, to.ip) };
    let frame = match rng.below(16) {
        0..=2 => {
            let (id, sequence) = (rng.u16(), rng.u16());
            let icmp = frames::icmp_echo_request(id, sequence, &random_payload(rng));
            Ethernet { dst, src: from.mac, ethertype: ETHERTYPE_IPV4 }.frame(&ipv4(IPPROTO_ICMP).packet(&icmp))
        }
        3..=4 => {
            let udp = Udp { src_port: rng.u16(), dst_port: rng.u16() };
            let udp = udp.datagram(&random_payload(rng));
            Ethernet { dst, src: from.mac, ethertype: ETHERTYPE_IPV4 }.frame(&ipv4(IPPROTO_UDP).packet(&udp))
        }
        5 => {
            let tcp = Tcp { src_port: rng.u16(), dst_port: 80, sequence: rng.next_u64() as u32, flags: Tcp::SYN };
            let tcp = tcp.segment(&random_payload(rng));
            Ethernet { dst, src: from.mac, ethertype: ETHERTYPE_IPV4 }.frame(&ipv4(IPPROTO_TCP).packet(&tcp))
        }
        6..=7 => Arp::request(from.mac, from.ip, to.ip).frame(if rng.chance(80) { BROADCAST } else { dst }),
        8 => match rng.below(3) {
            0 => Arp::request(from.mac, Ipv4Addr::UNSPECIFIED, to.ip).frame(BROADCAST), // probe
            1 => Arp::request(from.mac, from.ip, from.ip).frame(BROADCAST),              // gratuitous
            _ => Arp::reply(from.mac, from.ip, to.mac, to.ip).frame(dst),
        },
        9..=10 => {
            let message = frames::neighbour_solicitation(to.ipv6, if rng.chance(80) { Some(from.mac) } else { None });
            let group = frames::solicited_node(to.ipv6);
            let source = if rng.chance(85) { from.ipv6 } else { Ipv6Addr::UNSPECIFIED }; // DAD
            let hop_limit = if rng.chance(85) { 255 } else { rng.byte() };
            let ip = Ipv6 { next_header: IPPROTO_ICMPV6, hop_limit, src: source, dst: group };
            Ethernet { dst: frames::ipv6_multicast_mac(group), src: from.mac, ethertype: ETHERTYPE_IPV6 }.frame(&ip.icmpv6_packet(&message))
        }
        11..=12 => {
            let ip = Ipv6 { next_header: IPPROTO_UDP, hop_limit: 64, src: from.ipv6, dst: to.ipv6 };
            let udp = Udp { src_port: rng.u16(), dst_port: rng.u16() };
            let udp = udp.datagram(&random_payload(rng));
            Ethernet { dst, src: from.mac, ethertype: ETHERTYPE_IPV6 }.frame(&ip.packet(&udp))
        }
        13 => {
            let untagged = inner_frame(rng, world, vni, from);
            let tpid = if rng.chance(50) { ETHERTYPE_8021Q } else { ETHERTYPE_8021AD };
            with_vlan_tag(&untagged, 0, tpid, rng.u16() & 0x0fff)
        }
        _ => {
            let any = rng.u16();
            let ethertype = *rng.pick(&[0x88cc, 0x8863, 0x0842, 0x9000, any]);
            let len = rng.within(0, 100);
            Ethernet { dst, src: from.mac, ethertype }.frame(&rng.bytes(len))
        }
    };
    frame
}

/// `frame` with a VLAN tag inserted after the Ethernet addresses of the
/// Ethernet frame at `at`.
pub fn with_vlan_tag(frame: &[u8], at: usize, tpid: u16, vlan_id: u16) -> Vec<u8> {
    let mut tagged = frame.to_vec();
    if frame.len() >= at + 12 {
        let mut tag = tpid.to_be_bytes().to_vec();
        tag.extend_from_slice(&vlan_id.to_be_bytes());
        tagged.splice(at + 12..at + 12, tag);
    }
    tagged
}

/// A frame a container sends on `port` (its own addresses mostly, spoofed
/// sometimes), mutated most of the time.
pub fn endpoint_frame(rng: &mut Rng, world: &World, port: &str) -> Vec<u8> {
    let vni = world.port_vni(port);
    let own: Vec<Endpoint> = world.locals.iter().filter(|l| l.port == port).map(|l| l.endpoint).collect();
    let from = if rng.chance(85) { *rng.pick(&own) } else { Endpoint { mac: random_mac(rng), ..*rng.pick(&own) } };
    let mut frame = inner_frame(rng, world, vni, from);
    if rng.chance(60) {
        for _ in 0..rng.within(1, 3) {
            mutate_endpoint_frame(rng, world, &mut frame);
        }
    }
    frame
}

fn mutate_endpoint_frame(rng: &mut Rng, world: &World, frame: &mut Vec<u8>) {
    let vni = *rng.pick(&world.vnis());
    match rng.below(12) {
        0 => truncate(rng, frame, &[14, 15, 20, 28, 34, 38, 41, 42, 54, 62, 78]),
        1 => *frame = with_vlan_tag(frame, 0, if rng.chance(50) { ETHERTYPE_8021Q } else { ETHERTYPE_8021AD }, rng.u16() & 0xfff),
        2 => flip_bytes(rng, frame, 64),
        3 => { let len = length_value(rng, frame.len().saturating_sub(IP_AT)); set_u16(frame, IP_AT + 2, len) },
        4 => set_byte(frame, IP_AT, { let r0 = rng.byte(); one_of(rng, &[0x45, 0x46, 0x44, 0x4f, 0x65, r0]) }),
        5 => set_u16(frame, IP_AT + 6, { let r0 = rng.u16(); one_of(rng, &[0, IPV4_MORE_FRAGMENTS, 0x1234, r0]) }),
        6 => set_byte(frame, IP_AT + rng.within(0, 7), rng.byte()), // ARP hardware/protocol types, lengths, operation
        7 => frame.extend(random_bytes(rng, 1, 64)),
        8 => set_mac(frame, 0, destination_mac(rng, world, vni)),
        9 => set_mac(frame, 6, if rng.chance(50) { random_mac(rng) } else { rng.pick(&world.all_endpoints()).mac }),
        10 => set_u16(frame, 12, { let r0 = rng.u16(); one_of(rng, &[ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_ARP, ETHERTYPE_8021Q, r0]) }),
        _ => fix_ipv4_checksum(frame, IP_AT),
    }
}

/// A frame on the underlay: mostly VXLAN to this node, some other
/// traffic, mutated most of the time.
pub fn underlay_frame(rng: &mut Rng, world: &World) -> Vec<u8> {
    let peer_mac = world.peers[0].underlay_mac.unwrap();
    let on_underlay = |ethertype: u16, packet: &[u8]| Ethernet { dst: world.underlay_mac, src: peer_mac, ethertype }.frame(packet);
    let peer = world.peers[0].vtep;
    let mut frame = match rng.below(100) {
        0..=79 => vxlan_frame(rng, world),
        80..=82 => Arp::request(peer_mac, peer, world.vtep).frame(BROADCAST),
        83..=85 => {
            let inner = inner_frame(rng, world, 100, world.peers[0].endpoints[0]);
            let ip = Ipv6 { next_header: IPPROTO_UDP, hop_limit: 64, src: "2001:db8::2".parse().unwrap(), dst: "2001:db8::1".parse().unwrap() };
            on_underlay(ETHERTYPE_IPV6, &ip.packet(&Udp { src_port: 50000, dst_port: world.vxlan_port }.datagram(&Vxlan::new(100).packet(&inner))))
        }
        86..=88 => {
            let tcp = Tcp { src_port: 50000, dst_port: world.vxlan_port, sequence: 1, flags: Tcp::SYN }.segment(&[]);
            on_underlay(ETHERTYPE_IPV4, &Ipv4::new(IPPROTO_TCP, peer, world.vtep).packet(&tcp))
        }
        89..=92 => {
            let port = { let r0 = rng.u16(); one_of(rng, &[8472, world.vxlan_port + 1, r0]) };
            let inner = inner_frame(rng, world, 100, world.peers[0].endpoints[0]);
            let udp = Udp { src_port: 50000, dst_port: port }.datagram(&Vxlan::new(100).packet(&inner));
            on_underlay(ETHERTYPE_IPV4, &Ipv4::new(IPPROTO_UDP, peer, world.vtep).packet(&udp))
        }
        93..=95 => {
            let inner = inner_frame(rng, world, 100, world.peers[0].endpoints[0]);
            let udp = Udp { src_port: 50000, dst_port: world.vxlan_port }.datagram(&Vxlan::new(100).packet(&inner));
            on_underlay(ETHERTYPE_IPV4, &Ipv4::new(IPPROTO_UDP, peer, Ipv4Addr::new(192, 0, 2, 77)).packet(&udp))
        }
        _ => {
            let ethertype = if rng.chance(50) { ETHERTYPE_IPV4 } else { rng.u16() };
            on_underlay(ethertype, &random_bytes(rng, 0, 120))
        }
    };
    if rng.chance(65) {
        for _ in 0..rng.within(1, 4) {
            mutate_underlay_frame(rng, world, &mut frame);
        }
    }
    frame
}

/// VXLAN to this node: from a peer of the VNI mostly, else from a peer of
/// another VNI, a stranger, or anyone; to our MAC mostly.
fn vxlan_frame(rng: &mut Rng, world: &World) -> Vec<u8> {
    let vni = match rng.below(20) {
        0..=16 => *rng.pick(&world.vnis()),
        17 => world.unknown_vni,
        _ => (rng.next_u64() & 0x00ff_ffff) as u32,
    };
    let carriers: Vec<_> = world.peers.iter().filter(|p| p.carries(vni)).collect();
    let source = match rng.below(10) {
        0..=6 if !carriers.is_empty() => rng.pick(&carriers).vtep,
        7 => rng.pick(&world.peers).vtep,
        8 => *rng.pick(&world.strangers),
        _ => Ipv4Addr::from(rng.next_u64() as u32),
    };
    let senders: Vec<Endpoint> = world.peers.iter().flat_map(|p| p.endpoints.iter().copied()).filter(|e| e.vni == vni).collect();
    let from = if !senders.is_empty() && rng.chance(80) {
        *rng.pick(&senders)
    } else {
        Endpoint { mac: random_mac(rng), ip: Ipv4Addr::new(10, 10, 0, rng.byte()), ipv6: Ipv6Addr::LOCALHOST, vni }
    };
    let inner = inner_frame(rng, world, vni, from);
    let outer_dst = match rng.below(20) {
        0..=16 => world.underlay_mac,
        17 => BROADCAST,
        18 => Mac([0x01, 0x00, 0x5e, 0, 0, rng.byte()]),
        _ => world.other_host_mac,
    };
    let mut vxlan = Vxlan::new(vni);
    if rng.chance(10) {
        vxlan = Vxlan { flags: rng.byte(), reserved1: [rng.byte(), rng.byte(), rng.byte()], vni, reserved2: rng.byte() };
    }
    let ip = Ipv4 {
        identification: rng.u16(),
        flags_fragment: if rng.chance(90) { IPV4_DONT_FRAGMENT } else { 0 },
        ttl: rng.byte().max(1),
        tos: if rng.chance(90) { 0 } else { rng.byte() },
        ..Ipv4::new(IPPROTO_UDP, source, world.vtep)
    };
    let mut datagram = Udp { src_port: rng.u16(), dst_port: world.vxlan_port }.datagram(&vxlan.packet(&inner));
    if rng.chance(20) {
        datagram[6..8].copy_from_slice(&rng.u16().to_be_bytes()); // any UDP checksum is accepted unverified
    }
    let sender_mac = world.peers.iter().find_map(|p| p.underlay_mac).unwrap();
    Ethernet { dst: outer_dst, src: sender_mac, ethertype: ETHERTYPE_IPV4 }.frame(&ip.packet(&datagram))
}

fn mutate_underlay_frame(rng: &mut Rng, world: &World, frame: &mut Vec<u8>) {
    // Most mutations keep the header checksum right, so that they reach
    // the checks behind it; a wrong checksum is its own mutation.
    let fix = rng.chance(75);
    let udp_at = IP_AT + ipv4_header_len(frame);
    match rng.below(19) {
        0 => { let len = length_value(rng, frame.len().saturating_sub(IP_AT)); set_u16(frame, IP_AT + 2, len) },
        1 => { let len = length_value(rng, frame.len().saturating_sub(udp_at)); set_u16(frame, udp_at + 4, len) },
        2 => set_byte(frame, IP_AT, 0x40 | rng.byte() & 0x0f),
        3 => insert_ipv4_options(rng, frame),
        4 => set_u16(frame, IP_AT + 6, { let r0 = rng.u16(); one_of(rng, &[IPV4_MORE_FRAGMENTS, IPV4_MORE_FRAGMENTS | IPV4_DONT_FRAGMENT, 1480 / 8, 0x8000, 0, r0]) }),
        5 => {
            let at = IP_AT + 10;
            if frame.len() >= at + 2 {
                let wrong = u16::from_be_bytes([frame[at], frame[at + 1]]) ^ (rng.u16() | 1);
                set_u16(frame, at, wrong);
            }
            return;
        }
        6 => {
            truncate(rng, frame, &[14, 20, 33, 34, 35, 41, 42, 43, 49, 50, 51, 63, 64, 65, 77, 78, 91, 92]);
            if rng.chance(50) {
                fit_lengths(frame);
            }
        }
        7 => {
            frame.extend(random_bytes(rng, 1, 64));
            if rng.chance(50) {
                fit_lengths(frame);
            }
        }
        8 => set_byte(frame, udp_at + 8, { let r0 = rng.byte(); one_of(rng, &[0, 0x08, 0x0c, 0xff, r0]) }),
        9 => {
            let vni = { let r0 = rng.next_u64() as u32 & 0x00ff_ffff; one_of(rng, &[100, 200, world.unknown_vni, 0, 0x00ff_ffff, r0]) };
            if frame.len() >= udp_at + 15 {
                frame[udp_at + 12..udp_at + 15].copy_from_slice(&vni.to_be_bytes()[1..]);
            }
        }
        10 => {
            let source = match rng.below(3) {
                0 => rng.pick(&world.peers).vtep,
                1 => *rng.pick(&world.strangers),
                _ => Ipv4Addr::from(rng.next_u64() as u32),
            };
            set_bytes(frame, IP_AT + 12, &source.octets());
        }
        11 => set_bytes(frame, IP_AT + 16, &[192, 0, 2, *rng.pick(&[1, 2, 77, 255])]),
        12 => {
            let tpid = if rng.chance(50) { ETHERTYPE_8021Q } else { ETHERTYPE_8021AD };
            let at = udp_at + 16;
            *frame = with_vlan_tag(frame, at, tpid, rng.u16() & 0xfff);
            if rng.chance(30) {
                *frame = with_vlan_tag(frame, at, ETHERTYPE_8021Q, rng.u16() & 0xfff); // stacked (QinQ)
            }
            fit_lengths(frame);
        }
        13 => set_mac(frame, 0, *rng.pick(&[world.underlay_mac, BROADCAST, world.other_host_mac, Mac([0x01, 0, 0x5e, 0, 0, 1]), Mac([0x33, 0x33, 0, 0, 0, 1])])),
        14 => set_mac(frame, udp_at + 16, { let any = random_mac(rng); one_of(rng, &[BROADCAST, Mac([0x01, 0, 0x5e, 0, 0, 0xfb]), world.locals[0].endpoint.mac, any]) }),
        15 => set_u16(frame, 12, { let r0 = rng.u16(); one_of(rng, &[ETHERTYPE_IPV6, ETHERTYPE_ARP, ETHERTYPE_8021Q, r0]) }),
        16 => set_byte(frame, IP_AT + 9, { let r0 = rng.byte(); one_of(rng, &[IPPROTO_TCP, IPPROTO_ICMP, 0, r0]) }),
        17 => set_u16(frame, udp_at + 2, { let r0 = rng.u16(); one_of(rng, &[8472, world.vxlan_port + 1, 0, r0]) }),
        _ => flip_bytes(rng, frame, 110),
    }
    if fix {
        fix_ipv4_checksum(frame, IP_AT);
    }
}

/// A length field's new value: off by a little, far off, or the extremes.
fn length_value(rng: &mut Rng, real: usize) -> u16 {
    let real = real as i64;
    let value = match rng.below(6) {
        0 => real + rng.within(1, 8) as i64,
        1 => real - rng.within(1, 8) as i64,
        2 => 0,
        3 => rng.within(0, 40) as i64,
        4 => 0xffff,
        _ => rng.u16() as i64,
    };
    value.clamp(0, 0xffff) as u16
}

fn ipv4_header_len(frame: &[u8]) -> usize {
    frame.get(IP_AT).map_or(IPV4_LEN, |vihl| ((vihl & 0x0f) as usize * 4).max(IPV4_LEN))
}

/// Options of 4 to 40 bytes inserted after an option-less IPv4 header
/// (IHL, total length and checksum follow).
fn insert_ipv4_options(rng: &mut Rng, frame: &mut Vec<u8>) {
    if frame.len() < IP_AT + IPV4_LEN || frame[IP_AT] != 0x45 {
        return;
    }
    let words = rng.within(1, 10);
    let options: Vec<u8> = match rng.below(3) {
        0 => vec![1; words * 4],                                                  // NOPs
        1 => std::iter::once(0).chain(std::iter::repeat_n(0, words * 4 - 1)).collect(), // end of options
        _ => rng.bytes(words * 4),
    };
    frame.splice(IP_AT + IPV4_LEN..IP_AT + IPV4_LEN, options);
    frame[IP_AT] = 0x40 | (5 + words) as u8;
    let total = u16::from_be_bytes([frame[IP_AT + 2], frame[IP_AT + 3]]).saturating_add((words * 4) as u16);
    set_u16(frame, IP_AT + 2, total);
    fix_ipv4_checksum(frame, IP_AT);
}

fn truncate(rng: &mut Rng, frame: &mut Vec<u8>, boundaries: &[usize]) {
    let cut = if rng.chance(60) { *rng.pick(boundaries) } else { rng.within(ETHERNET_LEN, frame.len().max(ETHERNET_LEN)) };
    frame.truncate(cut.max(ETHERNET_LEN));
}

/// The IPv4 total length and UDP length rewritten to what the frame holds.
fn fit_lengths(frame: &mut [u8]) {
    if frame.len() < IP_AT + IPV4_LEN {
        return;
    }
    let udp_at = IP_AT + ipv4_header_len(frame);
    set_u16(frame, IP_AT + 2, (frame.len() - IP_AT) as u16);
    if frame.len() >= udp_at + 8 {
        set_u16(frame, udp_at + 4, (frame.len() - udp_at) as u16);
    }
    fix_ipv4_checksum(frame, IP_AT);
}

/// Recomputes the IPv4 header checksum of the header at `at`, if whole.
pub fn fix_ipv4_checksum(frame: &mut [u8], at: usize) {
    let Some(&vihl) = frame.get(at) else { return };
    let len = (vihl & 0x0f) as usize * 4;
    if len < IPV4_LEN || frame.len() < at + len {
        return;
    }
    frame[at + 10..at + 12].fill(0);
    let checksum = frames::internet_checksum(&frame[at..at + len]);
    frame[at + 10..at + 12].copy_from_slice(&checksum.to_be_bytes());
}

fn flip_bytes(rng: &mut Rng, frame: &mut [u8], within: usize) {
    for _ in 0..rng.within(1, 4) {
        let at = rng.below(frame.len().min(within).max(1) as u64) as usize;
        if let Some(byte) = frame.get_mut(at) {
            *byte ^= rng.byte() | 1;
        }
    }
}

fn set_byte(frame: &mut [u8], at: usize, value: u8) {
    if let Some(byte) = frame.get_mut(at) {
        *byte = value;
    }
}

fn set_bytes(frame: &mut [u8], at: usize, value: &[u8]) {
    if frame.len() >= at + value.len() {
        frame[at..at + value.len()].copy_from_slice(value);
    }
}

fn set_u16(frame: &mut [u8], at: usize, value: u16) {
    set_bytes(frame, at, &value.to_be_bytes());
}

fn set_mac(frame: &mut [u8], at: usize, mac: Mac) {
    set_bytes(frame, at, &mac.0);
}
