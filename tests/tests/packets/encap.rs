//! Encapsulation on an endpoint port: outer fields, source ports, IDs, verdicts, flooding, neighbour answers, ICMP too big, the route cache.
use super::*;

/// Loading runs the verifier over all three programs; a repeated test run
/// reports an average duration per run (printed, not judged).
#[test]
fn datapath_loads_and_times_test_runs() -> anyhow::Result<()> {
    let near = Node::start(&NEAR)?;
    // Dropped with its outer headers intact, so every repetition sees the
    // same frame and walks every outer header (a delivered frame would not:
    // repetitions share one buffer, and decapsulation moves its start).
    let frame = vxlan_frame(&from_far_vtep(), Vxlan::new(UNKNOWN_VNI), &ping(FAR_1, NEAR_1));
    let repeat = 1000;
    let (outcome, counted) = near.run(Hook::Decap, &frame, repeat)?;
    println!("decap of a {}-byte VXLAN frame, {repeat} runs: {} ns per run", frame.len(), outcome.duration_ns);
    assert!(outcome.duration_ns > 0, "expected a duration per run above 0 ns, seen {} ns", outcome.duration_ns);
    let expected = CounterRow {
        direction: Direction::FROM_UNDERLAY,
        reason: Reason::UNKNOWN_VNI,
        packets: repeat.into(),
        bytes: u64::from(repeat) * frame.len() as u64,
    };
    assert_eq!(counted.rows, [expected], "expected only {}, counted {}", describe_row(&expected), describe_counts(&counted));
    Ok(())
}

/// RFC 7348 section 5 (frame format) and 4.3 (DF set): a frame to a remote
/// endpoint leaves with every outer field right and the inner frame byte for
/// byte, whichever way the program grows the packet (bpf_skb_adjust_room for
/// IP, bpf_skb_change_head for anything else).
#[test]
fn encapsulation_writes_every_outer_field() -> anyhow::Result<()> {
    let near = Node::start(&NEAR)?;
    let forwarded = |name: &str, frame: Vec<u8>| {
        Case::given(name, Hook::Port(NEAR_1.port), frame).expect(TC_ACT_REDIRECT, Reason::FORWARDED, encapsulated(near.tunnel()))
    };
    let far_ipv6 = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, u16::from(FAR_1.mac.0[5]));
    run_table(
        &near,
        &[
            forwarded("IPv4 ICMP echo request", ping(NEAR_1, FAR_1)),
            forwarded(
                "ARP reply (not IP: grown with bpf_skb_change_head)",
                Arp::reply(NEAR_1.mac, NEAR_1.ip, FAR_1.mac, FAR_1.ip).frame(FAR_1.mac),
            ),
            forwarded("IPv6 UDP", udp6_from(NEAR_1, FAR_1.mac, far_ipv6, Udp { src_port: 40000, dst_port: 5201 })),
            forwarded("IPv4 of 1450 bytes: exactly the 1500 underlay MTU once encapsulated", udp_of_ip_length(NEAR_1, FAR_1, 1450)),
            forwarded("IPv6 of 1450 bytes: exactly the 1500 underlay MTU once encapsulated", udp6_of_ip_length(NEAR_1, FAR_1, 1450)),
        ],
    );
    Ok(())
}

/// RFC 7348 section 5, "Source Port": a hash of the inner frame's headers
/// in the dynamic range, so one flow keeps one port (no reordering across
/// underlay paths) while different flows spread over the underlay's ECMP.
#[test]
fn outer_source_port_follows_the_inner_flow() -> anyhow::Result<()> {
    let near = Node::start(&NEAR)?;
    let source_port = |name: String, frame: Vec<u8>| -> u16 {
        let case = Case::given(name, Hook::Port(NEAR_1.port), frame).expect(
            TC_ACT_REDIRECT,
            Reason::FORWARDED,
            encapsulated(near.tunnel()),
        );
        let ran = run_case(&near, &case).unwrap_or_else(|failure| panic!("{failure}"));
        VxlanOverIpv4::parse(&ran.frame).expect("run_case checked the outer headers").udp_src_port
    };

    let first = source_port("ping, first time".into(), ping(NEAR_1, FAR_1));
    let second = source_port("ping, second time".into(), ping(NEAR_1, FAR_1));
    assert_eq!(first, second, "the same flow twice: expected the same UDP source port, seen {first} then {second}");

    let flows = 64;
    let ports: BTreeSet<u16> = (0..flows)
        .map(|i| {
            let udp = Udp { src_port: 40000 + i, dst_port: 5201 };
            source_port(format!("UDP flow from port {}", udp.src_port), udp_from(NEAR_1, FAR_1.mac, FAR_1.ip, udp, 32))
        })
        .collect();
    println!("{flows} inner flows got {} distinct outer source ports", ports.len());
    assert!(
        ports.len() > 1,
        "{flows} inner flows (UDP source ports 40000..{}): expected more than one distinct outer source port, seen {}: {ports:?}",
        40000 + flows,
        ports.len()
    );
    Ok(())
}

/// Outer IPv4 identification (RFC 791 section 3.1; RFC 6864 section 4.1
/// lets atomic datagrams carry any ID, and the kernel's own tunnels number
/// their outer packets anyway): a per-CPU counter, one per packet sent, so
/// consecutive encapsulations on one CPU carry consecutive IDs. The test
/// thread is pinned to one CPU so that every run uses the same counter.
#[test]
fn outer_ipv4_ids_count_packets() -> anyhow::Result<()> {
    let near = Node::start(&NEAR)?;
    let _pinned = PinnedToOneCpu::here()?;
    let frames = [
        ("IPv4 ICMP echo request", ping(NEAR_1, FAR_1)),
        ("the same echo request again", ping(NEAR_1, FAR_1)),
        ("ARP reply (grown with bpf_skb_change_head)", arp_answer(NEAR_1, FAR_1)),
        ("IPv6 UDP", udp6_of_ip_length(NEAR_1, FAR_1, 200)),
    ];
    let mut ids = Vec::new();
    for (name, frame) in frames {
        let case = Case::given(name, Hook::Port(NEAR_1.port), frame).expect(TC_ACT_REDIRECT, Reason::FORWARDED, encapsulated(near.tunnel()));
        let ran = run_case(&near, &case).unwrap_or_else(|failure| panic!("{failure}"));
        ids.push(VxlanOverIpv4::parse(&ran.frame).expect("run_case checked the outer headers").ip_identification);
    }
    let expected: Vec<u16> = (0..ids.len() as u16).map(|i| ids[0].wrapping_add(i)).collect();
    println!("outer IPv4 IDs of {} consecutive encapsulations: {ids:?}", ids.len());
    assert_eq!(ids, expected, "outer IPv4 IDs of consecutive encapsulations on one CPU: expected {expected:?}, seen {ids:?}");
    Ok(())
}

/// What a container sends that is neither encapsulated nor flooded: ARP
/// requests answered from the neighbour table (ARP suppression), frames to a
/// container on the same node switched locally, and every drop with its
/// counted reason, among them frames with a VLAN tag (RFC 7348 section 6.1:
/// an encapsulating VTEP SHOULD NOT carry one). Nothing is sent anywhere.
#[test]
fn endpoint_port_verdicts() -> anyhow::Result<()> {
    let near = Node::start(&NEAR)?;
    let p1 = Hook::Port(NEAR_1.port);
    let shot = |name: &str, hook: Hook, frame: Vec<u8>, reason: Reason| {
        Case::given(name, hook, frame).expect(TC_ACT_SHOT, reason, Output::Ignored)
    };
    let answered = |name: &str, asker: Endpoint, owner: Endpoint| {
        Case::given(name, Hook::Port(asker.port), arp_request(asker, owner.ip)).expect(
            TC_ACT_REDIRECT,
            Reason::ARP_REPLIED,
            Output::Frame(arp_answer(owner, asker)),
        )
    };
    let mut bad_hardware_length = arp_request(NEAR_1, FAR_1.ip);
    bad_hardware_length[ETHERNET_LEN + 4] = 8;
    let rarp_operation = Arp { operation: 3, ..Arp::request(NEAR_1.mac, NEAR_1.ip, FAR_1.ip) }.frame(BROADCAST);
    let mut cut_arp = arp_request(NEAR_1, FAR_1.ip);
    cut_arp.truncate(ETHERNET_LEN + 20);
    run_table(
        &near,
        &[
            answered("ARP request for a remote endpoint is answered with its MAC", NEAR_1, FAR_1),
            answered("ARP request for the other local endpoint is answered with its MAC", NEAR_1, NEAR_2),
            answered("ARP request from p2 for the p1 endpoint is answered", NEAR_2, NEAR_1),
            Case::given("unicast to the other local endpoint is switched locally, unchanged", p1, ping(NEAR_1, NEAR_2))
                .expect(TC_ACT_REDIRECT, Reason::LOCAL_SWITCHED, Output::Unchanged),
            shot("frame on a port with no endpoint (q1)", Hook::Port("q1"), ping(NEAR_1, FAR_1), Reason::PORT_NOT_CONFIGURED),
            shot("broadcast ARP with hardware length 8", p1, bad_hardware_length, Reason::ARP_MALFORMED),
            shot("broadcast ARP with operation 3", p1, rarp_operation, Reason::ARP_MALFORMED),
            shot("broadcast ARP cut after 20 of its 28 bytes", p1, cut_arp, Reason::ARP_MALFORMED),
            shot(
                "802.1Q-tagged unicast to a remote endpoint",
                p1,
                vlan_tagged_ping(ETHERTYPE_8021Q, NEAR_1, FAR_1.mac, FAR_1),
                Reason::INNER_VLAN,
            ),
            shot(
                "802.1ad-tagged unicast to a remote endpoint",
                p1,
                vlan_tagged_ping(ETHERTYPE_8021AD, NEAR_1, FAR_1.mac, FAR_1),
                Reason::INNER_VLAN,
            ),
            shot(
                "802.1Q-tagged unicast to the other local endpoint (not switched)",
                p1,
                vlan_tagged_ping(ETHERTYPE_8021Q, NEAR_1, NEAR_2.mac, NEAR_2),
                Reason::INNER_VLAN,
            ),
            shot(
                "802.1Q-tagged broadcast (not flooded)",
                p1,
                vlan_tagged_ping(ETHERTYPE_8021Q, NEAR_1, BROADCAST, FAR_1),
                Reason::INNER_VLAN,
            ),
        ],
    );
    Ok(())
}

/// Flooding from an endpoint port (RFC 7348 section 4.2, head-end
/// replication to a static peer list): broadcast, multicast, unknown
/// unicast, ARP requests the node cannot answer and ARP announcements
/// (RFC 5227 probes and announcements, gratuitous replies) are cloned
/// unchanged to every other local port of the VNI and, in VXLAN, to every
/// peer carrying the VNI whose underlay neighbour is resolved; then dropped.
#[test]
fn flooding_from_an_endpoint() -> anyhow::Result<()> {
    let near = Node::start(&NEAR)?;
    let flooded = |name: &str, from: Endpoint, frame: Vec<u8>| flooded_on(&near, name, from, frame);
    run_table(
        &near,
        &[
            flooded("IPv4 broadcast (DHCP discover to ff:ff:ff:ff:ff:ff)", NEAR_1, dhcp_discover(NEAR_1)),
            flooded("IPv4 broadcast from p2: a copy to p1, none back to p2", NEAR_2, dhcp_discover(NEAR_2)),
            flooded("IPv4 multicast (mDNS to 01:00:5e:00:00:fb)", NEAR_1, mdns4(NEAR_1)),
            flooded("IPv6 multicast (mDNS to 33:33:00:00:00:fb)", NEAR_1, mdns6(NEAR_1)),
            flooded("IPv6 router solicitation (ICMPv6 to 33:33:00:00:00:02, not a solicitation)", NEAR_1, router_solicitation(NEAR_1)),
            flooded("unicast to an unknown MAC", NEAR_1, ping_to(NEAR_1, UNKNOWN_MAC, FAR_1.ip)),
            flooded("unicast to an unknown MAC from p2", NEAR_2, ping_to(NEAR_2, UNKNOWN_MAC, UNKNOWN_IP)),
            flooded("ARP request for an address nobody in the VNI owns", NEAR_1, arp_request(NEAR_1, UNKNOWN_IP)),
            flooded("ARP request for an address the far node has but did not list", NEAR_1, arp_request(NEAR_1, UNLISTED_IP)),
            flooded("gratuitous ARP request (sender IP = target IP)", NEAR_1, arp_request(NEAR_1, NEAR_1.ip)),
            flooded(
                "ARP probe (RFC 5227: sender IP 0.0.0.0)",
                NEAR_1,
                Arp::request(NEAR_1.mac, Ipv4Addr::UNSPECIFIED, NEAR_1.ip).frame(BROADCAST),
            ),
            flooded(
                "gratuitous ARP reply to ff:ff:ff:ff:ff:ff",
                NEAR_1,
                Arp::reply(NEAR_1.mac, NEAR_1.ip, BROADCAST, NEAR_1.ip).frame(BROADCAST),
            ),
            flooded(
                "ARP request for a known address asked by its owner (duplicate-address check)",
                NEAR_1,
                Arp::request(NEAR_1.mac, UNKNOWN_IP, NEAR_1.ip).frame(BROADCAST),
            ),
        ],
    );
    Ok(())
}

/// The per-VNI flood limit (`[[vnis]] flood_limit`): a flooded frame makes
/// at most that many copies, local ports first, and is counted as
/// flood-limited when copies were cut; a limit of 0 turns flooding off.
#[test]
fn flood_limit_cuts_copies() -> anyhow::Result<()> {
    let limited = Node::start(&LIMITED)?;
    let limited_flood = |name: &str, from: Endpoint, frame: Vec<u8>, arrivals: Vec<Arrival>| {
        Case::given(name, Hook::Port(from.port), frame).expect(TC_ACT_SHOT, Reason::FLOODED_LIMITED, Output::Ignored).arriving(arrivals)
    };
    let broadcast_1 = dhcp_discover(NEAR_1);
    let broadcast_2 = dhcp_discover(NEAR_2);
    let broadcast_b = dhcp_discover(TENANT_B_1);
    run_table(
        &limited,
        &[
            limited_flood(
                "VNI 100, limit 1: broadcast from p1 reaches p2 only, no peer",
                NEAR_1,
                broadcast_1.clone(),
                vec![unchanged_at(NEAR_2.port, &broadcast_1)],
            ),
            limited_flood(
                "VNI 100, limit 1: broadcast from p2 reaches p1 only, no peer",
                NEAR_2,
                broadcast_2.clone(),
                vec![unchanged_at(NEAR_1.port, &broadcast_2)],
            ),
            limited_flood("VNI 200, limit 0: broadcast goes nowhere", TENANT_B_1, broadcast_b, Vec::new()),
            Case::given("VNI 100, limit 1: ARP for a known address is still answered", Hook::Port(NEAR_1.port), arp_request(NEAR_1, FAR_1.ip))
                .expect(TC_ACT_REDIRECT, Reason::ARP_REPLIED, Output::Frame(arp_answer(FAR_1, NEAR_1))),
        ],
    );
    Ok(())
}

/// ND suppression (RFC 4861 sections 7.2.3 and 7.2.4): a neighbour
/// solicitation from a container for an IPv6 address the node knows in its
/// VNI is answered with the advertisement the owner would send (solicited,
/// override, target link-layer address), back out of the port. What the
/// node cannot answer (unknown target, duplicate address detection from ::,
/// a container asking for its own address) is flooded; a solicitation that
/// breaks RFC 4861 section 7.1.1 (hop limit not 255, code not 0, shorter
/// than 24 bytes) is dropped.
#[test]
fn neighbour_solicitations() -> anyhow::Result<()> {
    let near = Node::start(&NEAR)?;
    let answered = |name: &str, asker: Endpoint, owner: Endpoint| {
        Case::given(name, Hook::Port(asker.port), solicitation(asker, owner.ipv6)).expect(
            TC_ACT_REDIRECT,
            Reason::ND_REPLIED,
            Output::Frame(advertisement(owner, asker)),
        )
    };
    let malformed = |name: &str, frame: Vec<u8>| {
        Case::given(name, Hook::Port(NEAR_1.port), frame).expect(TC_ACT_SHOT, Reason::ND_MALFORMED, Output::Ignored)
    };
    let flooded = |name: &str, from: Endpoint, frame: Vec<u8>| flooded_on(&near, name, from, frame);

    let to_far = frames::neighbour_solicitation(FAR_1.ipv6, Some(NEAR_1.mac));
    let mut code_1 = to_far.clone();
    code_1[1] = 1;
    let mut short_payload = solicitation(NEAR_1, FAR_1.ipv6);
    short_payload[ETHERNET_LEN + 4..ETHERNET_LEN + 6].copy_from_slice(&16u16.to_be_bytes());
    let dad = solicitation_with(NEAR_1, Ipv6Addr::UNSPECIFIED, 255, NEAR_1.ipv6, &frames::neighbour_solicitation(NEAR_1.ipv6, None));
    run_table(
        &near,
        &[
            answered("solicitation for a remote endpoint's address is answered", NEAR_1, FAR_1),
            answered("solicitation for the other local endpoint's address is answered", NEAR_1, NEAR_2),
            answered("solicitation from p2 for the p1 endpoint's address is answered", NEAR_2, NEAR_1),
            Case::given(
                "solicitation without a source link-layer option (78 bytes): answered, grown to 86",
                Hook::Port(NEAR_1.port),
                solicitation_with(NEAR_1, NEAR_1.ipv6, 255, FAR_1.ipv6, &frames::neighbour_solicitation(FAR_1.ipv6, None)),
            )
            .expect(TC_ACT_REDIRECT, Reason::ND_REPLIED, Output::Frame(advertisement(FAR_1, NEAR_1))),
            flooded("solicitation for an address nobody in the VNI owns", NEAR_1, solicitation(NEAR_1, UNKNOWN_IPV6)),
            flooded("duplicate address detection (source ::)", NEAR_1, dad),
            flooded("solicitation for the asker's own address", NEAR_1, solicitation(NEAR_1, NEAR_1.ipv6)),
            malformed("hop limit 64 (RFC 4861 section 7.1.1: must be 255)", solicitation_with(NEAR_1, NEAR_1.ipv6, 64, FAR_1.ipv6, &to_far)),
            malformed("ICMPv6 code 1 (must be 0)", solicitation_with(NEAR_1, NEAR_1.ipv6, 255, FAR_1.ipv6, &code_1)),
            malformed("IPv6 payload length 16, under the 24 bytes of a solicitation", short_payload),
        ],
    );
    Ok(())
}

/// Frames too big for the underlay once encapsulated are never fragmented
/// (RFC 7348 section 4.3): IPv4 with DF gets an ICMP "fragmentation needed"
/// (RFC 792, RFC 1191 section 4) and IPv6 an ICMPv6 "packet too big" (RFC
/// 4443 section 3.2), both announcing the overlay MTU (underlay MTU - 50),
/// sent back to the container as if from the destination. IPv4 without DF
/// is dropped; ICMP errors are never answered with errors (RFC 1122 section
/// 3.2.2, RFC 4443 section 2.4 e); neither is what cannot be quoted.
#[test]
fn oversized_frames_get_icmp_too_big() -> anyhow::Result<()> {
    let near = Node::start(&NEAR)?;
    let p1 = Hook::Port(NEAR_1.port);
    let answered = |name: &str, frame: Vec<u8>, answer: fn(Endpoint, Endpoint, &[u8]) -> Vec<u8>| {
        let expected = answer(NEAR_1, FAR_1, &frame);
        Case::given(name, p1, frame).expect(TC_ACT_REDIRECT, Reason::ICMP_TOO_BIG_SENT, Output::Frame(expected))
    };
    let shot = |name: &str, frame: Vec<u8>, reason: Reason| Case::given(name, p1, frame).expect(TC_ACT_SHOT, reason, Output::Ignored);

    let over = UNDERLAY_MTU; // an inner IP packet this long is 50 bytes too long
    let ipv4 = |protocol: u8| Ipv4::new(protocol, NEAR_1.ip, FAR_1.ip);
    let without_df = Ipv4 { flags_fragment: 0, ..ipv4(IPPROTO_UDP) };
    let with_options = Ipv4 { options: vec![1, 1, 1, 0], ..ipv4(IPPROTO_UDP) };
    let echo = frames::icmp_echo_request(0x4242, 1, &payload(over - IPV4_LEN - 8));
    let icmp_error = frames::icmp_message(ICMP_DESTINATION_UNREACHABLE, ICMP_HOST_UNREACHABLE, [0; 4], &payload(over - IPV4_LEN - 8));
    let echo6 = frames::icmpv6_message(ICMPV6_ECHO_REQUEST, 0, &payload(over - IPV6_LEN - 4));
    let error6 = frames::icmpv6_message(ICMPV6_DESTINATION_UNREACHABLE, 0, &payload(over - IPV6_LEN - 4));
    let mut padded_arp = arp_answer(NEAR_1, FAR_1);
    padded_arp.resize(ETHERNET_LEN + over, 0);
    run_table(
        &near,
        &[
            answered("IPv4 UDP of 1500 bytes with DF", udp_of_ip_length(NEAR_1, FAR_1, over), fragmentation_needed),
            answered("IPv4 UDP of 1451 bytes with DF: one byte too many", udp_of_ip_length(NEAR_1, FAR_1, OVERLAY_MTU + 1), fragmentation_needed),
            answered(
                "IPv4 ICMP echo request of 1500 bytes (not an error)",
                ipv4_frame(NEAR_1, FAR_1, &ipv4(IPPROTO_ICMP), &echo),
                fragmentation_needed,
            ),
            shot(
                "IPv4 UDP of 1500 bytes without DF",
                ipv4_frame(NEAR_1, FAR_1, &without_df, &FLOW.datagram(&payload(over - IPV4_LEN - UDP_LEN))),
                Reason::TOO_BIG_NO_DF,
            ),
            shot(
                "IPv4 ICMP destination unreachable of 1500 bytes (an error itself)",
                ipv4_frame(NEAR_1, FAR_1, &ipv4(IPPROTO_ICMP), &icmp_error),
                Reason::TOO_BIG_FOR_UNDERLAY,
            ),
            shot(
                "IPv4 with options, 1500 bytes with DF",
                ipv4_frame(NEAR_1, FAR_1, &with_options, &FLOW.datagram(&payload(over - IPV4_LEN - 4 - UDP_LEN))),
                Reason::TOO_BIG_FOR_UNDERLAY,
            ),
            answered("IPv6 UDP of 1500 bytes", udp6_of_ip_length(NEAR_1, FAR_1, over), packet_too_big),
            answered("IPv6 UDP of 1451 bytes: one byte too many", udp6_of_ip_length(NEAR_1, FAR_1, OVERLAY_MTU + 1), packet_too_big),
            answered("ICMPv6 echo request of 1500 bytes (not an error)", ipv6_frame(NEAR_1, FAR_1, IPPROTO_ICMPV6, &echo6), packet_too_big),
            shot(
                "ICMPv6 destination unreachable of 1500 bytes (an error itself)",
                ipv6_frame(NEAR_1, FAR_1, IPPROTO_ICMPV6, &error6),
                Reason::TOO_BIG_FOR_UNDERLAY,
            ),
            shot("ARP reply padded to 1514 bytes (not IP: nothing to answer)", padded_arp, Reason::TOO_BIG_FOR_UNDERLAY),
        ],
    );
    Ok(())
}

/// Encapsulation caches each peer's underlay route (egress device, MACs,
/// MTU) instead of asking the FIB per packet, and asks again once the entry
/// is older than ROUTE_CACHE_TTL_NS: a changed next hop is used within it.
#[test]
fn encapsulation_caches_the_route_and_follows_a_changed_next_hop() -> anyhow::Result<()> {
    let near = Node::start(&NEAR)?;
    let frame = ping(NEAR_1, FAR_1);
    let outer_destination = |near: &Node| -> anyhow::Result<Mac> {
        let (outcome, _) = near.run(Hook::Port(NEAR_1.port), &frame, 1)?;
        let outer = VxlanOverIpv4::parse(&outcome.frame).context("the output is not VXLAN")?;
        Ok(outer.eth_dst)
    };
    assert_eq!(outer_destination(&near)?, FAR_UNDERLAY_MAC, "first packet: the outer destination is the peer VTEP's neighbour");
    let cache = near.datapath.route_cache()?;
    let entry = cache
        .get(&u32::from_ne_bytes(FAR_VTEP.octets()))
        .unwrap_or_else(|| panic!("expected a route cache entry for {FAR_VTEP}, the cache holds {cache:?}"));
    let expected = (near.ifindex_of(UNDERLAY)?, 1500, near.underlay_mac.0, FAR_UNDERLAY_MAC.0, u32::from_ne_bytes(FAR_VTEP.octets()));
    assert_eq!(
        (entry.ifindex, entry.mtu, entry.source_mac, entry.next_hop_mac, entry.next_hop_be),
        expected,
        "cached route to {FAR_VTEP}: expected (ifindex, mtu, source MAC, next-hop MAC, next hop) {expected:?}, cached {entry:?}"
    );

    let moved = Mac([0x02, 0xaa, 0xaa, 0xaa, 0xaa, 0x77]);
    near.netns.ip(&["neigh", "replace", &FAR_VTEP.to_string(), "lladdr", &moved.to_string(), "dev", UNDERLAY, "nud", "permanent"])?;
    std::thread::sleep(Duration::from_nanos(2 * overlay_common::ROUTE_CACHE_TTL_NS));
    let seen = outer_destination(&near)?;
    assert_eq!(seen, moved, "after twice the cache TTL the new next-hop MAC {moved} must be used, saw {seen}");
    Ok(())
}
