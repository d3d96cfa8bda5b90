//! Test frames built from named header fields, and the outer headers of a
//! VXLAN frame read back field by field.
//!
//! This is an independent encoding of the wire formats (IEEE 802.3, 802.1Q,
//! RFC 791, 768, 826, 792, 8200, 4443, 4861, 9293, 7348): it deliberately
//! shares no constant or
//! layout with the datapath, so a wrong number there cannot hide behind the
//! same wrong number here. Fields are in host byte order; the builders write
//! network byte order. Lengths, the IPv4 header checksum and the ICMP and
//! ICMPv6 checksums are computed; checksums the datapath never reads (UDP,
//! TCP) are left zero.
use std::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
};

mod sender;
pub use sender::send_vxlan;

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_IPV6: u16 = 0x86DD;
/// TPID of an 802.1Q (customer) VLAN tag.
pub const ETHERTYPE_8021Q: u16 = 0x8100;
/// TPID of an 802.1ad (service, "QinQ") VLAN tag.
pub const ETHERTYPE_8021AD: u16 = 0x88A8;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// IPv4 flags/fragment-offset field: Don't Fragment.
pub const IPV4_DONT_FRAGMENT: u16 = 0x4000;
/// IPv4 flags/fragment-offset field: More Fragments.
pub const IPV4_MORE_FRAGMENTS: u16 = 0x2000;

pub const ETHERNET_LEN: usize = 14;
/// An IPv4 header without options.
pub const IPV4_LEN: usize = 20;
pub const UDP_LEN: usize = 8;
pub const VXLAN_LEN: usize = 8;
/// An IPv6 header (no extension headers).
pub const IPV6_LEN: usize = 40;
/// Offset of the IPv4 header in an Ethernet frame.
const IPV4_AT: usize = ETHERNET_LEN;
/// Offset of the UDP header behind an option-less IPv4 header.
const UDP_AT: usize = IPV4_AT + IPV4_LEN;

/// A MAC address, printed as `02:00:00:00:01:01`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

pub const BROADCAST: Mac = Mac([0xff; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Mac {
    type Err = String;
    /// Parses `02:00:00:00:01:01` (as `/sys/class/net/*/address` shows it).
    fn from_str(text: &str) -> Result<Mac, String> {
        let bytes: Vec<u8> = text
            .trim()
            .split(':')
            .map(|part| u8::from_str_radix(part, 16))
            .collect::<Result<_, _>>()
            .map_err(|_| format!("not a MAC address: {text:?}"))?;
        Ok(Mac(bytes.try_into().map_err(|_| format!("not a MAC address: {text:?}"))?))
    }
}

/// An Ethernet II header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ethernet {
    pub dst: Mac,
    pub src: Mac,
    pub ethertype: u16,
}

impl Ethernet {
    /// This header followed by `payload`.
    pub fn frame(&self, payload: &[u8]) -> Vec<u8> {
        let mut frame = Vec::with_capacity(ETHERNET_LEN + payload.len());
        frame.extend_from_slice(&self.dst.0);
        frame.extend_from_slice(&self.src.0);
        frame.extend_from_slice(&self.ethertype.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }
}

/// An 802.1Q tag and what it carries: the bytes after an Ethernet header
/// whose EtherType is the tag's TPID ([`ETHERTYPE_8021Q`] or
/// [`ETHERTYPE_8021AD`]). Priority and DEI are zero.
pub fn vlan_tagged(vlan_id: u16, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    assert!(vlan_id < 0x1000, "VLAN ID {vlan_id} does not fit 12 bits");
    let mut tagged = Vec::with_capacity(4 + payload.len());
    tagged.extend_from_slice(&vlan_id.to_be_bytes());
    tagged.extend_from_slice(&ethertype.to_be_bytes());
    tagged.extend_from_slice(payload);
    tagged
}

/// An IPv4 header; total length and header checksum are computed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv4 {
    pub tos: u8,
    pub identification: u16,
    /// Flags (top 3 bits) and fragment offset in 8-byte units.
    pub flags_fragment: u16,
    pub ttl: u8,
    pub protocol: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// Options, a multiple of 4 bytes; IHL follows from their length.
    pub options: Vec<u8>,
}

impl Ipv4 {
    /// A typical header: DF set, TTL 64, no options.
    pub fn new(protocol: u8, src: Ipv4Addr, dst: Ipv4Addr) -> Ipv4 {
        Ipv4 {
            tos: 0,
            identification: 0,
            flags_fragment: IPV4_DONT_FRAGMENT,
            ttl: 64,
            protocol,
            src,
            dst,
            options: Vec::new(),
        }
    }

    /// This header followed by `payload`.
    pub fn packet(&self, payload: &[u8]) -> Vec<u8> {
        assert!(self.options.len().is_multiple_of(4) && self.options.len() <= 40, "IPv4 options must be 0..=40 bytes in 4-byte words");
        let header_len = IPV4_LEN + self.options.len();
        let total = u16::try_from(header_len + payload.len()).expect("IPv4 packet over 65535 bytes");
        let mut packet = Vec::with_capacity(total as usize);
        packet.push(0x40 | (header_len / 4) as u8);
        packet.push(self.tos);
        packet.extend_from_slice(&total.to_be_bytes());
        packet.extend_from_slice(&self.identification.to_be_bytes());
        packet.extend_from_slice(&self.flags_fragment.to_be_bytes());
        packet.push(self.ttl);
        packet.push(self.protocol);
        packet.extend_from_slice(&[0, 0]); // checksum, filled in below
        packet.extend_from_slice(&self.src.octets());
        packet.extend_from_slice(&self.dst.octets());
        packet.extend_from_slice(&self.options);
        let checksum = internet_checksum(&packet);
        packet[10..12].copy_from_slice(&checksum.to_be_bytes());
        packet.extend_from_slice(payload);
        packet
    }
}

/// An IPv6 header (no extension headers); payload length is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6 {
    pub next_header: u8,
    pub hop_limit: u8,
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
}

impl Ipv6 {
    pub fn packet(&self, payload: &[u8]) -> Vec<u8> {
        let length = u16::try_from(payload.len()).expect("IPv6 payload over 65535 bytes");
        let mut packet = Vec::with_capacity(40 + payload.len());
        packet.extend_from_slice(&0x6000_0000u32.to_be_bytes()); // version 6, class 0, flow 0
        packet.extend_from_slice(&length.to_be_bytes());
        packet.push(self.next_header);
        packet.push(self.hop_limit);
        packet.extend_from_slice(&self.src.octets());
        packet.extend_from_slice(&self.dst.octets());
        packet.extend_from_slice(payload);
        packet
    }

    /// This header followed by the ICMPv6 `message` (whose checksum field
    /// is zero), with the checksum filled in.
    pub fn icmpv6_packet(&self, message: &[u8]) -> Vec<u8> {
        assert_eq!(self.next_header, IPPROTO_ICMPV6, "an ICMPv6 message needs next header 58");
        let mut message = message.to_vec();
        let checksum = icmpv6_checksum(self.src, self.dst, &message);
        message[2..4].copy_from_slice(&checksum.to_be_bytes());
        self.packet(&message)
    }
}

/// The ICMPv6 checksum (RFC 4443 section 2.3) of `message` from `src` to
/// `dst`: the Internet checksum over the IPv6 pseudo-header (RFC 8200
/// section 8.1) and the message, whose own checksum field is zero.
pub fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, message: &[u8]) -> u16 {
    let length = u32::try_from(message.len()).expect("ICMPv6 message over 4 GiB");
    let mut summed = Vec::with_capacity(IPV6_LEN + message.len());
    summed.extend_from_slice(&src.octets());
    summed.extend_from_slice(&dst.octets());
    summed.extend_from_slice(&length.to_be_bytes());
    summed.extend_from_slice(&[0, 0, 0, IPPROTO_ICMPV6]);
    summed.extend_from_slice(message);
    internet_checksum(&summed)
}

/// An ICMPv6 message (RFC 4443 section 2.1): type, code, a zero checksum
/// (see [`Ipv6::icmpv6_packet`]) and `body`.
pub fn icmpv6_message(message_type: u8, code: u8, body: &[u8]) -> Vec<u8> {
    let mut message = vec![message_type, code, 0, 0];
    message.extend_from_slice(body);
    message
}

pub const ICMPV6_DESTINATION_UNREACHABLE: u8 = 1;
pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ND_ROUTER_SOLICITATION: u8 = 133;
pub const ND_NEIGHBOUR_SOLICITATION: u8 = 135;
pub const ND_NEIGHBOUR_ADVERTISEMENT: u8 = 136;
/// Neighbour advertisement flags (RFC 4861 section 4.4), in the first
/// 32-bit word after the checksum.
pub const NA_FLAG_ROUTER: u32 = 0x8000_0000;
pub const NA_FLAG_SOLICITED: u32 = 0x4000_0000;
pub const NA_FLAG_OVERRIDE: u32 = 0x2000_0000;
/// ND option types (RFC 4861 section 4.6.1).
const ND_OPTION_SOURCE_LINK_LAYER: u8 = 1;
const ND_OPTION_TARGET_LINK_LAYER: u8 = 2;

/// A neighbour solicitation for `target` (RFC 4861 section 4.3), with a
/// source link-layer address option when `source_mac` is given (it must
/// not be when the source is the unspecified address).
pub fn neighbour_solicitation(target: Ipv6Addr, source_mac: Option<Mac>) -> Vec<u8> {
    let mut body = vec![0; 4]; // reserved
    body.extend_from_slice(&target.octets());
    if let Some(mac) = source_mac {
        body.extend_from_slice(&[ND_OPTION_SOURCE_LINK_LAYER, 1]); // length in 8-byte units
        body.extend_from_slice(&mac.0);
    }
    icmpv6_message(ND_NEIGHBOUR_SOLICITATION, 0, &body)
}

/// A neighbour advertisement for `target` (RFC 4861 section 4.4) with the
/// given `NA_FLAG_*` bits and a target link-layer address option when
/// `target_mac` is given.
pub fn neighbour_advertisement(flags: u32, target: Ipv6Addr, target_mac: Option<Mac>) -> Vec<u8> {
    let mut body = flags.to_be_bytes().to_vec();
    body.extend_from_slice(&target.octets());
    if let Some(mac) = target_mac {
        body.extend_from_slice(&[ND_OPTION_TARGET_LINK_LAYER, 1]);
        body.extend_from_slice(&mac.0);
    }
    icmpv6_message(ND_NEIGHBOUR_ADVERTISEMENT, 0, &body)
}

/// The solicited-node multicast address of `address` (RFC 4291 section
/// 2.7.1): ff02::1:ff00:0/104 and its low 24 bits.
pub fn solicited_node(address: Ipv6Addr) -> Ipv6Addr {
    let octets = address.octets();
    let mut group = [0u8; 16];
    group[..2].copy_from_slice(&[0xff, 0x02]);
    group[11..13].copy_from_slice(&[0x01, 0xff]);
    group[13..].copy_from_slice(&octets[13..]);
    Ipv6Addr::from(group)
}

/// The Ethernet address of an IPv6 multicast group (RFC 2464 section 7):
/// 33:33 and the group's low 32 bits.
pub fn ipv6_multicast_mac(group: Ipv6Addr) -> Mac {
    let octets = group.octets();
    Mac([0x33, 0x33, octets[12], octets[13], octets[14], octets[15]])
}

/// A UDP header; the length is computed, the checksum left zero ("no
/// checksum", which RFC 768 allows over IPv4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Udp {
    pub src_port: u16,
    pub dst_port: u16,
}

impl Udp {
    pub fn datagram(&self, payload: &[u8]) -> Vec<u8> {
        let length = u16::try_from(UDP_LEN + payload.len()).expect("UDP datagram over 65535 bytes");
        let mut datagram = Vec::with_capacity(length as usize);
        datagram.extend_from_slice(&self.src_port.to_be_bytes());
        datagram.extend_from_slice(&self.dst_port.to_be_bytes());
        datagram.extend_from_slice(&length.to_be_bytes());
        datagram.extend_from_slice(&[0, 0]);
        datagram.extend_from_slice(payload);
        datagram
    }
}

/// A TCP header without options (checksum left zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tcp {
    pub src_port: u16,
    pub dst_port: u16,
    pub sequence: u32,
    /// The flag bits (SYN is 0x02).
    pub flags: u8,
}

impl Tcp {
    pub const SYN: u8 = 0x02;

    pub fn segment(&self, payload: &[u8]) -> Vec<u8> {
        let mut segment = Vec::with_capacity(20 + payload.len());
        segment.extend_from_slice(&self.src_port.to_be_bytes());
        segment.extend_from_slice(&self.dst_port.to_be_bytes());
        segment.extend_from_slice(&self.sequence.to_be_bytes());
        segment.extend_from_slice(&0u32.to_be_bytes()); // acknowledgment number
        segment.push(5 << 4); // data offset: 5 words
        segment.push(self.flags);
        segment.extend_from_slice(&u16::MAX.to_be_bytes()); // window
        segment.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
        segment.extend_from_slice(payload);
        segment
    }
}

pub const ICMP_DESTINATION_UNREACHABLE: u8 = 3;
/// Destination unreachable code: fragmentation needed and DF set (RFC 792, RFC 1191).
pub const ICMP_FRAGMENTATION_NEEDED: u8 = 4;
pub const ICMP_HOST_UNREACHABLE: u8 = 1;
pub const ICMP_ECHO_REQUEST: u8 = 8;

/// An ICMP message (RFC 792) with its checksum: type, code, the four
/// bytes after the checksum (`rest_of_header`) and `data`.
pub fn icmp_message(message_type: u8, code: u8, rest_of_header: [u8; 4], data: &[u8]) -> Vec<u8> {
    let mut message = vec![message_type, code, 0, 0];
    message.extend_from_slice(&rest_of_header);
    message.extend_from_slice(data);
    let checksum = internet_checksum(&message);
    message[2..4].copy_from_slice(&checksum.to_be_bytes());
    message
}

/// An ICMP echo request (RFC 792) with its checksum.
pub fn icmp_echo_request(identifier: u16, sequence: u16, payload: &[u8]) -> Vec<u8> {
    let [id_high, id_low] = identifier.to_be_bytes();
    let [sequence_high, sequence_low] = sequence.to_be_bytes();
    icmp_message(ICMP_ECHO_REQUEST, 0, [id_high, id_low, sequence_high, sequence_low], payload)
}

/// An ICMP "fragmentation needed and DF set" (RFC 792, with the next-hop
/// MTU of RFC 1191 section 4) quoting `quote` (the offending IPv4 header
/// and the first 8 bytes of its payload).
pub fn icmp_fragmentation_needed(next_hop_mtu: u16, quote: &[u8]) -> Vec<u8> {
    let [mtu_high, mtu_low] = next_hop_mtu.to_be_bytes();
    icmp_message(ICMP_DESTINATION_UNREACHABLE, ICMP_FRAGMENTATION_NEEDED, [0, 0, mtu_high, mtu_low], quote)
}

/// A VXLAN header (RFC 7348 section 5) with every bit settable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vxlan {
    pub flags: u8,
    pub reserved1: [u8; 3],
    /// 24 bits.
    pub vni: u32,
    pub reserved2: u8,
}

impl Vxlan {
    /// The I flag: "MUST be set to 1 for a valid VXLAN Network ID".
    pub const FLAG_VNI_VALID: u8 = 0x08;

    /// A well-formed header: I flag set, reserved fields zero.
    pub fn new(vni: u32) -> Vxlan {
        Vxlan { flags: Vxlan::FLAG_VNI_VALID, reserved1: [0; 3], vni, reserved2: 0 }
    }

    /// This header followed by the inner Ethernet frame.
    pub fn packet(&self, inner: &[u8]) -> Vec<u8> {
        assert!(self.vni <= 0x00ff_ffff, "VNI {} does not fit 24 bits", self.vni);
        let mut packet = Vec::with_capacity(VXLAN_LEN + inner.len());
        packet.push(self.flags);
        packet.extend_from_slice(&self.reserved1);
        packet.extend_from_slice(&self.vni.to_be_bytes()[1..]);
        packet.push(self.reserved2);
        packet.extend_from_slice(inner);
        packet
    }
}

/// An Ethernet/IPv4 ARP packet (RFC 826).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arp {
    pub operation: u16,
    pub sender_mac: Mac,
    pub sender_ip: Ipv4Addr,
    pub target_mac: Mac,
    pub target_ip: Ipv4Addr,
}

impl Arp {
    pub const REQUEST: u16 = 1;
    pub const REPLY: u16 = 2;

    /// "Who has `target_ip`? Tell `sender_ip`."
    pub fn request(sender_mac: Mac, sender_ip: Ipv4Addr, target_ip: Ipv4Addr) -> Arp {
        Arp { operation: Arp::REQUEST, sender_mac, sender_ip, target_mac: Mac([0; 6]), target_ip }
    }

    /// "`sender_ip` is at `sender_mac`", addressed to the asker.
    pub fn reply(sender_mac: Mac, sender_ip: Ipv4Addr, target_mac: Mac, target_ip: Ipv4Addr) -> Arp {
        Arp { operation: Arp::REPLY, sender_mac, sender_ip, target_mac, target_ip }
    }

    /// The ARP packet in an Ethernet frame from the sender to `dst`.
    pub fn frame(&self, dst: Mac) -> Vec<u8> {
        Ethernet { dst, src: self.sender_mac, ethertype: ETHERTYPE_ARP }.frame(&self.bytes())
    }

    pub fn bytes(&self) -> Vec<u8> {
        const HARDWARE_ETHERNET: u16 = 1;
        let mut packet = Vec::with_capacity(28);
        packet.extend_from_slice(&HARDWARE_ETHERNET.to_be_bytes());
        packet.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        packet.extend_from_slice(&[6, 4]); // hardware and protocol address lengths
        packet.extend_from_slice(&self.operation.to_be_bytes());
        packet.extend_from_slice(&self.sender_mac.0);
        packet.extend_from_slice(&self.sender_ip.octets());
        packet.extend_from_slice(&self.target_mac.0);
        packet.extend_from_slice(&self.target_ip.octets());
        packet
    }
}

/// The RFC 1071 Internet checksum of `bytes` (the value to store in a
/// header whose checksum field is zero in `bytes`).
pub fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Rewrites the total length of the option-less IPv4 header of an Ethernet
/// frame, and its header checksum to match.
pub fn set_ipv4_total_length(frame: &mut [u8], total_length: u16) {
    let header = &mut frame[IPV4_AT..IPV4_AT + IPV4_LEN];
    header[2..4].copy_from_slice(&total_length.to_be_bytes());
    header[10..12].fill(0);
    let checksum = internet_checksum(header);
    header[10..12].copy_from_slice(&checksum.to_be_bytes());
}

/// Rewrites the length of the UDP header behind an option-less IPv4 header.
pub fn set_udp_length(frame: &mut [u8], length: u16) {
    frame[UDP_AT + 4..UDP_AT + 6].copy_from_slice(&length.to_be_bytes());
}

/// Every field of the outer headers of a VXLAN-over-IPv4 frame, read at the
/// offsets an option-less IPv4 header gives, and the frame they carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanOverIpv4<'a> {
    pub eth_dst: Mac,
    pub eth_src: Mac,
    pub ethertype: u16,
    pub ip_version_ihl: u8,
    pub ip_tos: u8,
    pub ip_total_length: u16,
    pub ip_identification: u16,
    pub ip_flags_fragment: u16,
    pub ip_ttl: u8,
    pub ip_protocol: u8,
    pub ip_checksum: u16,
    pub ip_src: Ipv4Addr,
    pub ip_dst: Ipv4Addr,
    /// The header checksum the IPv4 header should carry, recomputed here.
    pub ip_checksum_computed: u16,
    pub udp_src_port: u16,
    pub udp_dst_port: u16,
    pub udp_length: u16,
    pub udp_checksum: u16,
    pub vxlan_flags: u8,
    pub vxlan_reserved1: [u8; 3],
    pub vxlan_vni: u32,
    pub vxlan_reserved2: u8,
    pub inner: &'a [u8],
}

impl<'a> VxlanOverIpv4<'a> {
    /// `None` when the frame is shorter than the outer headers.
    pub fn parse(frame: &'a [u8]) -> Option<VxlanOverIpv4<'a>> {
        let vxlan_at = UDP_AT + UDP_LEN;
        let inner_at = vxlan_at + VXLAN_LEN;
        if frame.len() < inner_at {
            return None;
        }
        let u16_at = |at: usize| u16::from_be_bytes([frame[at], frame[at + 1]]);
        let mac_at = |at: usize| Mac(frame[at..at + 6].try_into().unwrap());
        let ipv4_at = |at: usize| Ipv4Addr::new(frame[at], frame[at + 1], frame[at + 2], frame[at + 3]);
        let mut ip_header: [u8; IPV4_LEN] = frame[IPV4_AT..UDP_AT].try_into().unwrap();
        ip_header[10..12].fill(0);
        Some(VxlanOverIpv4 {
            eth_dst: mac_at(0),
            eth_src: mac_at(6),
            ethertype: u16_at(12),
            ip_version_ihl: frame[IPV4_AT],
            ip_tos: frame[IPV4_AT + 1],
            ip_total_length: u16_at(IPV4_AT + 2),
            ip_identification: u16_at(IPV4_AT + 4),
            ip_flags_fragment: u16_at(IPV4_AT + 6),
            ip_ttl: frame[IPV4_AT + 8],
            ip_protocol: frame[IPV4_AT + 9],
            ip_checksum: u16_at(IPV4_AT + 10),
            ip_src: ipv4_at(IPV4_AT + 12),
            ip_dst: ipv4_at(IPV4_AT + 16),
            ip_checksum_computed: internet_checksum(&ip_header),
            udp_src_port: u16_at(UDP_AT),
            udp_dst_port: u16_at(UDP_AT + 2),
            udp_length: u16_at(UDP_AT + 4),
            udp_checksum: u16_at(UDP_AT + 6),
            vxlan_flags: frame[vxlan_at],
            vxlan_reserved1: frame[vxlan_at + 1..vxlan_at + 4].try_into().unwrap(),
            vxlan_vni: u32::from_be_bytes([0, frame[vxlan_at + 4], frame[vxlan_at + 5], frame[vxlan_at + 6]]),
            vxlan_reserved2: frame[vxlan_at + 7],
            inner: &frame[inner_at..],
        })
    }
}

/// A hex dump, 16 bytes a line, each line indented and prefixed by its offset.
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .enumerate()
        .map(|(line, chunk)| {
            let octets: Vec<String> = chunk.iter().map(|byte| format!("{byte:02x}")).collect();
            format!("    {:04x}  {}", line * 16, octets.join(" "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Like [`hex`], but of the first `limit` bytes only, saying how many are left out.
pub fn hex_head(bytes: &[u8], limit: usize) -> String {
    if bytes.len() <= limit {
        return hex(bytes);
    }
    format!("{}\n    ... {} more bytes", hex(&bytes[..limit]), bytes.len() - limit)
}

/// How `seen` differs from `expected`: lengths, the first differing
/// offset, and both frames in hex; `None` when they are equal.
pub fn difference(expected: &[u8], seen: &[u8]) -> Option<String> {
    if expected == seen {
        return None;
    }
    let first = expected.iter().zip(seen).position(|(a, b)| a != b).unwrap_or(expected.len().min(seen.len()));
    Some(format!(
        "expected {} bytes, seen {} bytes, first difference at offset {first} ({first:#x})\n  expected:\n{}\n  seen:\n{}",
        expected.len(),
        seen.len(),
        hex(expected),
        hex(seen)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header with its checksum in place sums to zero (RFC 1071 section 1).
    #[test]
    fn ipv4_header_checksum_verifies() {
        let packet = Ipv4::new(IPPROTO_UDP, Ipv4Addr::new(192, 0, 2, 2), Ipv4Addr::new(192, 0, 2, 1)).packet(&[]);
        assert_eq!(internet_checksum(&packet[..IPV4_LEN]), 0, "header:\n{}", hex(&packet));
    }

    /// RFC 4443 section 2.3 over a neighbour solicitation: with the
    /// checksum in place, pseudo-header and message sum to zero; and the
    /// solicited-node group of fd00::2 is ff02::1:ff00:2 on 33:33:ff:00:00:02.
    #[test]
    fn icmpv6_checksum_verifies() {
        let (src, target): (Ipv6Addr, Ipv6Addr) = ("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap());
        let group = solicited_node(target);
        assert_eq!(group, "ff02::1:ff00:2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(ipv6_multicast_mac(group), Mac([0x33, 0x33, 0xff, 0, 0, 2]));
        let packet = Ipv6 { next_header: IPPROTO_ICMPV6, hop_limit: 255, src, dst: group }
            .icmpv6_packet(&neighbour_solicitation(target, Some(Mac([2, 0, 0, 0, 1, 1]))));
        assert_eq!(packet.len(), IPV6_LEN + 32);
        assert_eq!(icmpv6_checksum(src, group, &packet[IPV6_LEN..]), 0, "packet:\n{}", hex(&packet));
    }

    #[test]
    fn vxlan_frame_reads_back() {
        let inner = Ethernet { dst: BROADCAST, src: Mac([2, 0, 0, 0, 0, 1]), ethertype: ETHERTYPE_ARP }.frame(&[]);
        let ip = Ipv4::new(IPPROTO_UDP, Ipv4Addr::new(192, 0, 2, 2), Ipv4Addr::new(192, 0, 2, 1));
        let udp = Udp { src_port: 50000, dst_port: 4789 };
        let vxlan = Vxlan { flags: 0x08, reserved1: [1, 2, 3], vni: 0x00ab_cdef, reserved2: 4 };
        let frame = Ethernet { dst: Mac([2; 6]), src: Mac([4; 6]), ethertype: ETHERTYPE_IPV4 }
            .frame(&ip.packet(&udp.datagram(&vxlan.packet(&inner))));
        let outer = VxlanOverIpv4::parse(&frame).unwrap();
        assert_eq!((outer.ip_total_length, outer.udp_length), (20 + 8 + 8 + 14, 8 + 8 + 14));
        assert_eq!(outer.ip_checksum, outer.ip_checksum_computed);
        assert_eq!((outer.vxlan_reserved1, outer.vxlan_vni, outer.vxlan_reserved2), ([1, 2, 3], 0x00ab_cdef, 4));
        assert_eq!(outer.inner, &inner[..]);
        assert_eq!("02:00:00:00:01:01".parse::<Mac>().unwrap(), Mac([2, 0, 0, 0, 1, 1]));
    }
}
