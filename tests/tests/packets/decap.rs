//! Decapsulation (XDP and TC) and the underlay's flood program: verdicts, other hosts' frames, truncation.
use super::*;

/// RFC 7348 sections 4.3 and 5 on receipt: VXLAN from a configured peer to
/// our port is delivered as exactly the inner frame; what breaks a rule is
/// dropped with its reason (among them inner VLAN tags, RFC 7348 section
/// 6.1); inner broadcast and multicast is handed up unchanged to the TC
/// program that replicates it (XDP cannot clone), except an ARP request the
/// node can steer; what is not VXLAN for us passes untouched.
#[test]
fn decapsulation_verdicts() -> anyhow::Result<()> {
    decapsulation_verdicts_of(Hook::Decap)
}

/// The same table through the TC decapsulation program (`--decap tc`):
/// the same judgement and outcomes, with TC's actions, except that
/// broadcast and multicast frames are replicated to the VNI's local ports
/// by the program itself (there is no XDP program to hand them up).
#[test]
fn tc_decapsulation_verdicts() -> anyhow::Result<()> {
    decapsulation_verdicts_of(Hook::DecapTc)
}

fn decapsulation_verdicts_of(hook: Hook) -> anyhow::Result<()> {
    let near = Node::start(&NEAR)?;
    let inner = ping(FAR_1, NEAR_1);
    let delivered = |name: &str, frame: Vec<u8>, inner: &[u8]| {
        Case::given(name, hook, frame).expect(hook.delivered(), Reason::FORWARDED, Output::Frame(inner.to_vec()))
    };
    let dropped =
        |name: &str, frame: Vec<u8>, reason: Reason| Case::given(name, hook, frame).expect(hook.dropped(), reason, Output::Ignored);
    let passed =
        |name: &str, frame: Vec<u8>| Case::given(name, hook, frame).expect(hook.passed(), Reason::PASSED, Output::Unchanged);
    let handed_off = |name: &str, inner: &[u8]| match hook {
        Hook::DecapTc => Case::given(name, hook, vxlan_from_far(inner))
            .expect(TC_ACT_SHOT, Reason::FLOODED, Output::Ignored)
            .arriving([NEAR_1.port, NEAR_2.port].iter().map(|port| unchanged_at(port, inner)).collect()),
        _ => Case::given(name, hook, vxlan_from_far(inner)).expect(XDP_PASS, Reason::FLOOD_HANDOFF, Output::Unchanged),
    };

    let all_reserved_bits = Vxlan { flags: 0xff, reserved1: [0xff; 3], vni: VNI, reserved2: 0xff };
    let no_i_flag = Vxlan { flags: 0, ..Vxlan::new(VNI) };
    let every_flag_but_i = Vxlan { flags: !Vxlan::FLAG_VNI_VALID, ..Vxlan::new(VNI) };
    const NOP: u8 = 1;
    const END_OF_OPTIONS: u8 = 0;
    let with_options = Ipv4 { options: vec![NOP, NOP, NOP, END_OF_OPTIONS], ..from_far_vtep() };
    let first_fragment = Ipv4 { flags_fragment: IPV4_MORE_FRAGMENTS, ..from_far_vtep() };
    // Offset 1480 bytes (in 8-byte units): the data of a later fragment.
    let later_fragment = Ipv4 { flags_fragment: 1480 / 8, ..from_far_vtep() };
    let mut too_long = vxlan_from_far(&inner);
    let beyond_the_frame = (too_long.len() - ETHERNET_LEN + 10) as u16;
    frames::set_ipv4_total_length(&mut too_long, beyond_the_frame);

    let subnet_broadcast = udp_from(FAR_1, BROADCAST, Ipv4Addr::new(10, 10, 0, 255), Udp { src_port: 5000, dst_port: 5000 }, 16);
    let far_unlisted = Endpoint { mac: UNLISTED_MAC, ip: UNLISTED_IP, ..FAR_1 };
    let arp_for = |target: Ipv4Addr| arp_request(far_unlisted, target);
    let mut arp_bad_hardware_type = arp_for(NEAR_1.ip);
    arp_bad_hardware_type[ETHERNET_LEN + 1] = 6; // IEEE 802 instead of Ethernet
    let vxlan_over_ipv6 = Ipv6 {
        next_header: IPPROTO_UDP,
        hop_limit: 64,
        src: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2),
        dst: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
    }
    .packet(&to_vxlan_port().datagram(&Vxlan::new(VNI).packet(&inner)));
    let tcp_to_vxlan_port = Tcp { src_port: 51234, dst_port: VXLAN_PORT, sequence: 1, flags: Tcp::SYN };
    let udp_to_other_port = Udp { dst_port: VXLAN_PORT + 1, ..to_vxlan_port() };

    // A sender that fills in the outer UDP checksum: accepted unverified
    // (RFC 7348 section 5 allows either; Linux's vxlan sends one with udpcsum).
    let mut with_udp_checksum = vxlan_from_far(&inner);
    with_udp_checksum[ETHERNET_LEN + IPV4_LEN + 6..ETHERNET_LEN + IPV4_LEN + 8].copy_from_slice(&0xbeef_u16.to_be_bytes());

    // Outer destination MACs: another host's (the skb is PACKET_OTHERHOST
    // in TC; XDP compares with the underlay's MAC the agent wrote), and
    // broadcast and an IPv4 multicast MAC (delivered by the kernel to every
    // host, so by us too).
    let for_other_host = to_underlay_mac(vxlan_from_far(&inner), OTHER_HOST_UNDERLAY_MAC);
    // Inner frames shorter than an Ethernet and an IPv4 header (found by
    // fuzzing): bpf_skb_adjust_room leaves at least an IPv4 header's worth
    // behind the MAC header of an IPv4 skb, so TC cannot strip the outer
    // headers of a VXLAN frame under 84 bytes and counts decap-failed; XDP
    // delivers it. No IP, ARP or ND frame is that short.
    const LOCAL_EXPERIMENTAL_ETHERTYPE: u16 = 0x88b5;
    let tiny = |len: usize| Ethernet { dst: NEAR_1.mac, src: FAR_1.mac, ethertype: LOCAL_EXPERIMENTAL_ETHERTYPE }.frame(&payload(len - ETHERNET_LEN));
    let tiny_row = match hook {
        Hook::DecapTc => dropped("inner frame of 20 bytes (non-IP): TC cannot strip the outer headers", vxlan_from_far(&tiny(20)), Reason::DECAP_FAILED),
        _ => delivered("inner frame of 20 bytes (non-IP): delivered", vxlan_from_far(&tiny(20)), &tiny(20)),
    };

    run_table(
        &near,
        &[
            delivered("VXLAN from the peer to a local endpoint: exactly the inner frame", vxlan_from_far(&inner), &inner),
            dropped(
                "outer IPv4 checksum off by one (RFC 1122 section 3.2.1.2: MUST verify, discard)",
                with_outer_checksum_off_by(vxlan_from_far(&inner), 1),
                Reason::OUTER_CHECKSUM_INVALID,
            ),
            dropped(
                "outer IPv4 checksum zero (not computed)",
                with_outer_checksum(vxlan_from_far(&inner), 0),
                Reason::OUTER_CHECKSUM_INVALID,
            ),
            dropped(
                "outer IPv4 checksum 0xffff (all ones)",
                with_outer_checksum(vxlan_from_far(&inner), 0xffff),
                Reason::OUTER_CHECKSUM_INVALID,
            ),
            dropped(
                "outer destination MAC another host's (PACKET_OTHERHOST): not ours to deliver",
                for_other_host,
                Reason::OUTER_OTHER_HOST,
            ),
            tiny_row,
            delivered("inner frame of 34 bytes (non-IP): delivered", vxlan_from_far(&tiny(34)), &tiny(34)),
            delivered(
                "outer destination MAC broadcast: delivered, as the kernel delivers it",
                to_underlay_mac(vxlan_from_far(&inner), BROADCAST),
                &inner,
            ),
            delivered(
                "outer destination MAC IPv4 multicast (01:00:5e:...): delivered",
                to_underlay_mac(vxlan_from_far(&inner), Mac([0x01, 0x00, 0x5e, 0x00, 0x00, 0x01])),
                &inner,
            ),
            delivered("a non-zero outer UDP checksum is accepted (not verified)", with_udp_checksum, &inner),
            delivered(
                "VXLAN from a peer that lists no endpoint (192.0.2.3), to a local endpoint",
                vxlan_from(THIRD_VTEP, VNI, &inner),
                &inner,
            ),
            delivered(
                "every reserved bit set, I flag set (RFC 7348 section 5: reserved bits are ignored on receipt)",
                vxlan_frame(&from_far_vtep(), all_reserved_bits, &inner),
                &inner,
            ),
            dropped(
                "I flag clear (RFC 7348 section 5: it MUST be set)",
                vxlan_frame(&from_far_vtep(), no_i_flag, &inner),
                Reason::VXLAN_FLAGS_INVALID,
            ),
            dropped(
                "I flag clear, every other flag bit set",
                vxlan_frame(&from_far_vtep(), every_flag_but_i, &inner),
                Reason::VXLAN_FLAGS_INVALID,
            ),
            dropped(
                "VNI this node does not carry",
                vxlan_frame(&from_far_vtep(), Vxlan::new(UNKNOWN_VNI), &inner),
                Reason::UNKNOWN_VNI,
            ),
            dropped(
                "outer source 192.0.2.99 is not a peer VTEP",
                vxlan_frame(&Ipv4 { src: STRANGER_VTEP, ..from_far_vtep() }, Vxlan::new(VNI), &inner),
                Reason::UNKNOWN_PEER,
            ),
            dropped(
                "from a peer of tenant B (192.0.2.4, VNI 200 only) into VNI 100",
                vxlan_frame(&Ipv4 { src: TENANT_B_VTEP, ..from_far_vtep() }, Vxlan::new(VNI), &inner),
                Reason::PEER_NOT_IN_VNI,
            ),
            dropped("outer IPv4 with options (IHL 6)", vxlan_frame(&with_options, Vxlan::new(VNI), &inner), Reason::OUTER_IP_OPTIONS),
            dropped(
                "first fragment, MF set (RFC 7348 section 4.3: VTEPs MUST NOT fragment)",
                vxlan_frame(&first_fragment, Vxlan::new(VNI), &inner),
                Reason::OUTER_FRAGMENT,
            ),
            passed("later fragment (offset 1480): no UDP header to judge by", on_underlay(ETHERTYPE_IPV4, &later_fragment.packet(&payload(64)))),
            dropped("outer IPv4 total length 10 bytes beyond the frame", too_long, Reason::OUTER_LENGTH_MISMATCH),
            passed("ARP on the underlay", Arp::request(FAR_UNDERLAY_MAC, FAR_VTEP, NEAR_VTEP).frame(BROADCAST)),
            passed("VXLAN over IPv6", on_underlay(ETHERTYPE_IPV6, &vxlan_over_ipv6)),
            passed(
                "TCP to our VTEP's port 4789",
                on_underlay(ETHERTYPE_IPV4, &Ipv4::new(IPPROTO_TCP, FAR_VTEP, NEAR_VTEP).packet(&tcp_to_vxlan_port.segment(&[]))),
            ),
            passed(
                "UDP to our VTEP on another port",
                on_underlay(ETHERTYPE_IPV4, &from_far_vtep().packet(&udp_to_other_port.datagram(&Vxlan::new(VNI).packet(&inner)))),
            ),
            passed(
                "UDP to port 4789 of another underlay address",
                vxlan_frame(&Ipv4 { dst: OTHER_UNDERLAY_HOST, ..from_far_vtep() }, Vxlan::new(VNI), &inner),
            ),
            dropped(
                "inner unicast to an unknown MAC",
                vxlan_from_far(&ping_to(FAR_1, UNKNOWN_MAC, NEAR_1.ip)),
                Reason::UNKNOWN_DESTINATION,
            ),
            dropped(
                "inner 802.1Q-tagged unicast to a local endpoint (RFC 7348 section 6.1: SHOULD be discarded)",
                vxlan_from_far(&vlan_tagged_ping(ETHERTYPE_8021Q, FAR_1, NEAR_1.mac, NEAR_1)),
                Reason::INNER_VLAN,
            ),
            dropped(
                "inner 802.1ad-tagged unicast to a local endpoint",
                vxlan_from_far(&vlan_tagged_ping(ETHERTYPE_8021AD, FAR_1, NEAR_1.mac, NEAR_1)),
                Reason::INNER_VLAN,
            ),
            dropped(
                "inner 802.1Q-tagged broadcast (not handed off)",
                vxlan_from_far(&vlan_tagged_ping(ETHERTYPE_8021Q, FAR_1, BROADCAST, NEAR_1)),
                Reason::INNER_VLAN,
            ),
            delivered(
                "inner broadcast ARP request for a local endpoint's address: delivered to it",
                vxlan_from_far(&arp_for(NEAR_1.ip)),
                &arp_for(NEAR_1.ip),
            ),
            dropped(
                "inner broadcast ARP request for an address on another node",
                vxlan_from_far(&arp_for(FAR_1.ip)),
                Reason::ARP_UNKNOWN_TARGET,
            ),
            dropped("inner broadcast ARP with hardware type 6", vxlan_from_far(&arp_bad_hardware_type), Reason::ARP_MALFORMED),
            handed_off("inner ARP request for an address nobody knows", &arp_for(UNKNOWN_IP)),
            handed_off("inner gratuitous ARP request (sender IP = target IP)", &arp_request(FAR_1, FAR_1.ip)),
            handed_off("inner ARP probe (sender IP 0.0.0.0)", &Arp::request(FAR_1.mac, Ipv4Addr::UNSPECIFIED, FAR_1.ip).frame(BROADCAST)),
            handed_off("inner gratuitous ARP reply to ff:ff:ff:ff:ff:ff", &Arp::reply(FAR_1.mac, FAR_1.ip, BROADCAST, FAR_1.ip).frame(BROADCAST)),
            handed_off("inner IPv4 broadcast", &subnet_broadcast),
            handed_off("inner IPv4 multicast (mDNS)", &mdns4(FAR_1)),
            handed_off("inner IPv6 multicast (mDNS)", &mdns6(FAR_1)),
            handed_off("inner neighbour solicitation for a local endpoint's address", &solicitation(FAR_1, NEAR_1.ipv6)),
        ],
    );
    Ok(())
}

/// XDP has no pkt_type: it tells a frame for another host by comparing
/// the outer destination with the underlay MAC the agent writes. Until it
/// is written (all-zero), nothing is refused for it; once it is, only
/// unicast to another MAC is.
#[test]
fn xdp_refuses_frames_for_another_host_once_it_knows_the_underlay_mac() -> anyhow::Result<()> {
    let mut near = Node::start(&NEAR)?;
    let inner = ping(FAR_1, NEAR_1);
    let for_other_host = || to_underlay_mac(vxlan_from_far(&inner), OTHER_HOST_UNDERLAY_MAC);
    let delivered = |name: &str, frame: Vec<u8>| {
        Case::given(name, Hook::Decap, frame).expect(XDP_REDIRECT, Reason::FORWARDED, Output::Frame(inner.clone()))
    };
    near.datapath.set_underlay_mac(None)?;
    run_table(&near, &[delivered("underlay MAC not known: another host's MAC is not refused", for_other_host())]);
    near.datapath.set_underlay_mac(Some(near.underlay_mac.0))?;
    run_table(
        &near,
        &[
            Case::given("underlay MAC known: another host's MAC is refused", Hook::Decap, for_other_host())
                .expect(XDP_DROP, Reason::OUTER_OTHER_HOST, Output::Ignored),
            delivered("underlay MAC known: our MAC is delivered", vxlan_from_far(&inner)),
            delivered("underlay MAC known: broadcast is delivered", to_underlay_mac(vxlan_from_far(&inner), BROADCAST)),
        ],
    );
    Ok(())
}

/// The underlay's TC flood program, the second half of receiving a flooded
/// frame (RFC 7348 section 4.2): a VXLAN frame from a peer to our VTEP
/// whose inner destination is broadcast or multicast is decapsulated and
/// cloned to every local port of its VNI (the sender already reached the
/// other peers), then dropped. Anything else goes on untouched and
/// uncounted: XDP has judged and counted it already.
#[test]
fn underlay_flood_replicates_to_local_ports() -> anyhow::Result<()> {
    let near = Node::start(&NEAR)?;
    let replicated = |name: &str, frame: Vec<u8>, inner: &[u8], ports: &[&str]| {
        Case::given(name, Hook::UnderlayFlood, frame)
            .expect(TC_ACT_SHOT, Reason::FLOODED, Output::Ignored)
            .arriving(ports.iter().map(|port| unchanged_at(port, inner)).collect())
    };
    let to_tenant_a = [NEAR_1.port, NEAR_2.port];
    let shot = |name: &str, frame: Vec<u8>, reason: Reason| {
        Case::given(name, Hook::UnderlayFlood, frame).expect(TC_ACT_SHOT, reason, Output::Ignored)
    };
    let left_alone = |name: &str, frame: Vec<u8>| Case::given(name, Hook::UnderlayFlood, frame).expect_uncounted(TC_ACT_OK, Output::Unchanged);

    let broadcast = udp_from(FAR_1, BROADCAST, Ipv4Addr::new(10, 10, 0, 255), Udp { src_port: 5000, dst_port: 5000 }, 16);
    let unknown_arp = arp_request(FAR_1, UNKNOWN_IP);
    let announcement = arp_request(FAR_1, FAR_1.ip);
    let unicast = ping(FAR_1, NEAR_1);
    let mut cut_in_inner_header = vxlan_from_far(&broadcast);
    cut_in_inner_header.truncate(ENCAP_LEN + 10);
    frames::set_ipv4_total_length(&mut cut_in_inner_header, (ENCAP_LEN + 10 - ETHERNET_LEN) as u16);
    frames::set_udp_length(&mut cut_in_inner_header, (ENCAP_LEN + 10 - ETHERNET_LEN - IPV4_LEN) as u16);
    let with_options = Ipv4 { options: vec![1, 1, 1, 0], ..from_far_vtep() };
    let udp_to_other_port = Udp { dst_port: VXLAN_PORT + 1, ..to_vxlan_port() };
    // XDP passes later fragments up for reassembly (they have no UDP header
    // to judge by); their bytes are the datagram's, which whoever fills the
    // datagram can shape like VXLAN: here for tenant B's VNI, from a peer of VNI 100.
    let later_fragment = Ipv4 { flags_fragment: 1480 / 8, ..from_far_vtep() };
    let mut too_long = vxlan_from_far(&broadcast);
    let beyond_the_frame = (too_long.len() - ETHERNET_LEN + 10) as u16;
    frames::set_ipv4_total_length(&mut too_long, beyond_the_frame);
    let mut udp_short = vxlan_from_far(&broadcast);
    let udp_length = (udp_short.len() - ETHERNET_LEN - IPV4_LEN - 1) as u16;
    frames::set_udp_length(&mut udp_short, udp_length);
    let disguised_fragment = on_underlay(
        ETHERTYPE_IPV4,
        &later_fragment.packet(&to_vxlan_port().datagram(&Vxlan::new(TENANT_B_VNI).packet(&broadcast))),
    );
    run_table(
        &near,
        &[
            replicated("inner IPv4 broadcast: to p1 and p2", vxlan_from_far(&broadcast), &broadcast, &to_tenant_a),
            replicated("inner IPv4 multicast (mDNS)", vxlan_from_far(&mdns4(FAR_1)), &mdns4(FAR_1), &to_tenant_a),
            replicated("inner IPv6 multicast (mDNS)", vxlan_from_far(&mdns6(FAR_1)), &mdns6(FAR_1), &to_tenant_a),
            replicated("inner ARP request for an address nobody knows", vxlan_from_far(&unknown_arp), &unknown_arp, &to_tenant_a),
            replicated("inner gratuitous ARP (not IP)", vxlan_from_far(&announcement), &announcement, &to_tenant_a),
            replicated(
                "inner neighbour solicitation",
                vxlan_from_far(&solicitation(FAR_1, NEAR_1.ipv6)),
                &solicitation(FAR_1, NEAR_1.ipv6),
                &to_tenant_a,
            ),
            replicated("from the peer that lists no endpoint (192.0.2.3)", vxlan_from(THIRD_VTEP, VNI, &broadcast), &broadcast, &to_tenant_a),
            shot(
                "outer source 192.0.2.99 is not a peer VTEP",
                vxlan_frame(&Ipv4 { src: STRANGER_VTEP, ..from_far_vtep() }, Vxlan::new(VNI), &broadcast),
                Reason::UNKNOWN_PEER,
            ),
            shot(
                "broadcast from a peer of tenant B (192.0.2.4, VNI 200 only) into VNI 100",
                vxlan_frame(&Ipv4 { src: TENANT_B_VTEP, ..from_far_vtep() }, Vxlan::new(VNI), &broadcast),
                Reason::PEER_NOT_IN_VNI,
            ),
            shot(
                "I flag clear",
                vxlan_frame(&from_far_vtep(), Vxlan { flags: 0, ..Vxlan::new(VNI) }, &broadcast),
                Reason::VXLAN_FLAGS_INVALID,
            ),
            shot(
                "inner 802.1Q-tagged broadcast",
                vxlan_from_far(&vlan_tagged_ping(ETHERTYPE_8021Q, FAR_1, BROADCAST, NEAR_1)),
                Reason::INNER_VLAN,
            ),
            shot(
                "inner 802.1ad-tagged broadcast",
                vxlan_from_far(&vlan_tagged_ping(ETHERTYPE_8021AD, FAR_1, BROADCAST, NEAR_1)),
                Reason::INNER_VLAN,
            ),
            shot("VNI this node does not carry", vxlan_from(FAR_VTEP, UNKNOWN_VNI, &broadcast), Reason::UNKNOWN_VNI),
            // The judgement's outer checks, made again here so that this
            // program is safe on its own (found by fuzzing it alone).
            shot(
                "outer IPv4 checksum off by one",
                with_outer_checksum_off_by(vxlan_from_far(&broadcast), 1),
                Reason::OUTER_CHECKSUM_INVALID,
            ),
            shot(
                "outer destination MAC another host's (PACKET_OTHERHOST)",
                to_underlay_mac(vxlan_from_far(&broadcast), OTHER_HOST_UNDERLAY_MAC),
                Reason::OUTER_OTHER_HOST,
            ),
            replicated(
                "outer destination MAC broadcast",
                to_underlay_mac(vxlan_from_far(&broadcast), BROADCAST),
                &broadcast,
                &to_tenant_a,
            ),
            shot("outer IPv4 total length 10 bytes beyond the frame", too_long, Reason::OUTER_LENGTH_MISMATCH),
            shot("outer UDP length 1 byte short of the IPv4 payload", udp_short, Reason::OUTER_LENGTH_MISMATCH),
            left_alone("inner unicast to a local endpoint (XDP delivered it)", vxlan_from_far(&unicast)),
            left_alone("inner unicast to an unknown MAC (XDP dropped it)", vxlan_from_far(&ping_to(FAR_1, UNKNOWN_MAC, NEAR_1.ip))),
            left_alone("ARP on the underlay", Arp::request(FAR_UNDERLAY_MAC, FAR_VTEP, NEAR_VTEP).frame(BROADCAST)),
            left_alone(
                "UDP to our VTEP on another port",
                on_underlay(ETHERTYPE_IPV4, &from_far_vtep().packet(&udp_to_other_port.datagram(&Vxlan::new(VNI).packet(&broadcast)))),
            ),
            left_alone(
                "UDP to port 4789 of another underlay address",
                vxlan_frame(&Ipv4 { dst: OTHER_UNDERLAY_HOST, ..from_far_vtep() }, Vxlan::new(VNI), &broadcast),
            ),
            left_alone(
                "TCP to our VTEP's port 4789",
                on_underlay(
                    ETHERTYPE_IPV4,
                    &Ipv4::new(IPPROTO_TCP, FAR_VTEP, NEAR_VTEP)
                        .packet(&Tcp { src_port: 51234, dst_port: VXLAN_PORT, sequence: 1, flags: Tcp::SYN }.segment(&[])),
                ),
            ),
            left_alone("outer IPv4 with options (XDP dropped it)", vxlan_frame(&with_options, Vxlan::new(VNI), &broadcast)),
            left_alone("cut 10 bytes into the inner Ethernet header", cut_in_inner_header),
            left_alone("later fragment (offset 1480) whose data looks like VXLAN in VNI 200: no UDP header", disguised_fragment),
        ],
    );
    Ok(())
}

/// A VXLAN frame cut at each header boundary is never delivered. Until the
/// outer UDP header is complete it cannot be shown to be ours and passes;
/// from then on it is dropped: OUTER_LENGTH_MISMATCH while the IPv4 and UDP
/// lengths still describe the whole frame, VXLAN_TRUNCATED once they are
/// rewritten to match the cut (no room for the VXLAN and inner Ethernet
/// headers). BPF_PROG_TEST_RUN takes no XDP frame under 14 bytes.
#[test]
fn decapsulation_of_truncated_frames() -> anyhow::Result<()> {
    truncated_frames_through(Hook::Decap)
}

/// The same cuts through the TC decapsulation program.
#[test]
fn tc_decapsulation_of_truncated_frames() -> anyhow::Result<()> {
    truncated_frames_through(Hook::DecapTc)
}

fn truncated_frames_through(hook: Hook) -> anyhow::Result<()> {
    let near = Node::start(&NEAR)?;
    let whole = vxlan_from_far(&ping(FAR_1, NEAR_1));
    let cuts = [14, 20, 34, 38, 42, 46, 50, 57];
    let mut cases = Vec::new();
    for cut in cuts {
        // BPF_PROG_TEST_RUN builds no skb for an IPv4 frame shorter than an
        // IPv4 header (EINVAL), so a TC program never sees one here; the
        // stack drops such frames in any case.
        if hook == Hook::DecapTc && cut < ETHERNET_LEN + IPV4_LEN {
            continue;
        }
        let frame = whole[..cut].to_vec();
        let name = format!("cut at {cut} bytes, lengths of the whole frame");
        cases.push(if cut < UDP_END {
            Case::given(name, hook, frame).expect(hook.passed(), Reason::PASSED, Output::Unchanged)
        } else {
            Case::given(name, hook, frame).expect(hook.dropped(), Reason::OUTER_LENGTH_MISMATCH, Output::Ignored)
        });

        if cut < ETHERNET_LEN + IPV4_LEN {
            continue; // no whole IPv4 header to rewrite
        }
        let mut frame = whole[..cut].to_vec();
        frames::set_ipv4_total_length(&mut frame, (cut - ETHERNET_LEN) as u16);
        if cut >= UDP_END {
            frames::set_udp_length(&mut frame, (cut - ETHERNET_LEN - IPV4_LEN) as u16);
        }
        let name = format!("cut at {cut} bytes, lengths rewritten to match");
        cases.push(if cut < UDP_END {
            Case::given(name, hook, frame).expect(hook.passed(), Reason::PASSED, Output::Unchanged)
        } else {
            Case::given(name, hook, frame).expect(hook.dropped(), Reason::VXLAN_TRUNCATED, Output::Ignored)
        });
    }
    run_table(&near, &cases);
    Ok(())
}
