//! Per-VNI and per-peer counters: attribution, slots across reloads and at the limit.
use super::*;

/// One packet's expected attribution: counted once, with its reason, for
/// exactly this VNI and this peer (or none), and for no other.
struct Attribution {
    name: &'static str,
    hook: Hook,
    frame: Vec<u8>,
    reason: Reason,
    vni: Option<u32>,
    peer: Option<Ipv4Addr>,
}

/// What is wrong with what a run counted per VNI and per peer.
fn check_attribution(case: &Attribution, counted: &Counters, moved: &VniPeerCounters) -> Vec<String> {
    let row = CounterRow { direction: case.hook.direction(), reason: case.reason, packets: 1, bytes: case.frame.len() as u64 };
    let mut wrong = Vec::new();
    if counted.rows != [row] {
        wrong.push(format!("node counters: expected only {}, counted {}", describe_row(&row), describe_counts(counted)));
    }
    let expect = |scope: String, seen: Vec<(String, &Counters)>, wrong: &mut Vec<String>| {
        let seen_text = seen.iter().map(|(key, counts)| format!("{key}: {}", describe_counts(counts))).collect::<Vec<_>>().join("; ");
        let matches = match scope.as_str() {
            "" => seen.is_empty(),
            key => seen.len() == 1 && seen[0].0 == key && seen[0].1.rows == [row],
        };
        if !matches {
            let expected = if scope.is_empty() { "nothing".to_owned() } else { format!("{scope}: only {}", describe_row(&row)) };
            wrong.push(format!("expected {expected}, counted {}", if seen.is_empty() { "nothing" } else { &seen_text }));
        }
    };
    let vnis = moved.vnis.iter().map(|(vni, counts)| (format!("VNI {vni}"), counts)).collect();
    expect(case.vni.map_or(String::new(), |vni| format!("VNI {vni}")), vnis, &mut wrong);
    let peers = moved.peers.iter().map(|(peer, counts)| (format!("peer {peer}"), counts)).collect();
    expect(case.peer.map_or(String::new(), |peer| format!("peer {peer}")), peers, &mut wrong);
    wrong
}

/// Per-VNI and per-peer counters: each packet counts, with its reason,
/// for the VNI and the peer VTEP it belongs to once the datapath knows
/// them, and for no other; before that (unknown peer, malformed outer
/// headers) only for the node. Flooded copies count for the VNI only.
#[test]
fn vni_and_peer_counters_follow_the_packet() -> anyhow::Result<()> {
    let near = Node::start(&NEAR)?;
    let case = |name, hook, frame, reason, vni, peer| Attribution { name, hook, frame, reason, vni, peer };
    let (p1, p3) = (Hook::Port(NEAR_1.port), Hook::Port(TENANT_B_1.port));
    let first_fragment = Ipv4 { flags_fragment: IPV4_MORE_FRAGMENTS, ..from_far_vtep() };
    let cases = [
        case("decap: from the far VTEP to NEAR_1", Hook::Decap, vxlan_from_far(&ping(FAR_1, NEAR_1)), Reason::FORWARDED, Some(VNI), Some(FAR_VTEP)),
        case(
            "decap: from the far VTEP to a MAC nobody has",
            Hook::Decap,
            vxlan_from_far(&ping_to(FAR_1, UNKNOWN_MAC, UNKNOWN_IP)),
            Reason::UNKNOWN_DESTINATION,
            Some(VNI),
            Some(FAR_VTEP),
        ),
        case("decap: broadcast handed to flooding", Hook::Decap, vxlan_from_far(&dhcp_discover(FAR_1)), Reason::FLOOD_HANDOFF, Some(VNI), Some(FAR_VTEP)),
        case(
            "decap: tenant B's VTEP in VNI 100, which it does not carry",
            Hook::Decap,
            vxlan_from(TENANT_B_VTEP, VNI, &ping(TENANT_B_REMOTE, NEAR_1)),
            Reason::PEER_NOT_IN_VNI,
            Some(VNI),
            Some(TENANT_B_VTEP),
        ),
        case(
            "decap: the far VTEP in a VNI this node does not carry (the peer only)",
            Hook::Decap,
            vxlan_from(FAR_VTEP, UNKNOWN_VNI, &ping(FAR_1, NEAR_1)),
            Reason::UNKNOWN_VNI,
            None,
            Some(FAR_VTEP),
        ),
        case("decap: an unknown VTEP (nobody)", Hook::Decap, vxlan_from(STRANGER_VTEP, VNI, &ping(FAR_1, NEAR_1)), Reason::UNKNOWN_PEER, None, None),
        case(
            "decap: an outer fragment (before the peer is looked at)",
            Hook::Decap,
            vxlan_frame(&first_fragment, Vxlan::new(VNI), &ping(FAR_1, NEAR_1)),
            Reason::OUTER_FRAGMENT,
            None,
            None,
        ),
        case(
            "underlay flood: tenant B's broadcast",
            Hook::UnderlayFlood,
            vxlan_from(TENANT_B_VTEP, TENANT_B_VNI, &dhcp_discover(TENANT_B_REMOTE)),
            Reason::FLOODED,
            Some(TENANT_B_VNI),
            Some(TENANT_B_VTEP),
        ),
        case("TC decap: from the far VTEP to NEAR_1", Hook::DecapTc, vxlan_from_far(&ping(FAR_1, NEAR_1)), Reason::FORWARDED, Some(VNI), Some(FAR_VTEP)),
        case("TC decap: broadcast flooded to local ports", Hook::DecapTc, vxlan_from_far(&dhcp_discover(FAR_1)), Reason::FLOODED, Some(VNI), Some(FAR_VTEP)),
        case(
            "TC decap: tenant B's VTEP in VNI 100, which it does not carry",
            Hook::DecapTc,
            vxlan_from(TENANT_B_VTEP, VNI, &ping(TENANT_B_REMOTE, NEAR_1)),
            Reason::PEER_NOT_IN_VNI,
            Some(VNI),
            Some(TENANT_B_VTEP),
        ),
        case("p1: to FAR_1, encapsulated to the far VTEP", p1, ping(NEAR_1, FAR_1), Reason::FORWARDED, Some(VNI), Some(FAR_VTEP)),
        case(
            "p3: to tenant B's remote endpoint",
            p3,
            ping(TENANT_B_1, TENANT_B_REMOTE),
            Reason::FORWARDED,
            Some(TENANT_B_VNI),
            Some(TENANT_B_VTEP),
        ),
        case(
            "p1: too big for the underlay toward the far VTEP",
            p1,
            udp_of_ip_length(NEAR_1, FAR_1, UNDERLAY_MTU),
            Reason::ICMP_TOO_BIG_SENT,
            Some(VNI),
            Some(FAR_VTEP),
        ),
        case("p1: to NEAR_2, switched locally (no peer)", p1, ping(NEAR_1, NEAR_2), Reason::LOCAL_SWITCHED, Some(VNI), None),
        case("p1: ARP request answered (no peer)", p1, arp_request(NEAR_1, FAR_1.ip), Reason::ARP_REPLIED, Some(VNI), None),
        case("p1: broadcast flooded (copies count for the VNI only)", p1, dhcp_discover(NEAR_1), Reason::FLOODED, Some(VNI), None),
        case(
            "p1: inner VLAN tag dropped (after the port's VNI is known)",
            p1,
            vlan_tagged_ping(ETHERTYPE_8021Q, NEAR_1, FAR_1.mac, FAR_1),
            Reason::INNER_VLAN,
            Some(VNI),
            None,
        ),
    ];
    let results: Vec<Result<(), String>> = cases
        .iter()
        .map(|case| {
            let (counted, moved) =
                near.run_counting_vnis_peers(case.hook, &case.frame).map_err(|error| format!("{}: the test run failed: {error:#}", case.name))?;
            let wrong = check_attribution(case, &counted, &moved);
            if wrong.is_empty() { Ok(()) } else { Err(format!("{}:\n  - {}", case.name, wrong.join("\n  - "))) }
        })
        .collect();
    report(cases.iter().map(|case| case.name).zip(&results));
    Ok(())
}

/// The counters of `vni` (empty when it has no slot or is not carried).
fn of_vni(counters: &VniPeerCounters, vni: u32) -> Counters {
    counters.vnis.get(&vni).cloned().unwrap_or_default()
}

fn of_peer(counters: &VniPeerCounters, peer: Ipv4Addr) -> Counters {
    counters.peers.get(&peer).cloned().unwrap_or_default()
}

/// The slot the applied state gives `vni` and the peer at `vtep`.
fn vni_slot(node: &Node, vni: u32) -> Option<u32> {
    node.datapath.applied().vni_slots().get(&vni).copied()
}

fn peer_slot(node: &Node, vtep: Ipv4Addr) -> Option<u32> {
    node.datapath.applied().peer_slots().get(&ipv4_be(vtep)).copied()
}

/// Counter slots across reloads: a VNI and a peer that stay keep their
/// slots and their counts while others go; a VNI and a peer added later
/// take the freed slots and start from zero, not from what the slots
/// counted before.
#[test]
fn counter_slots_survive_reloads_and_start_at_zero_for_newcomers() -> anyhow::Result<()> {
    let mut near = Node::start(&NEAR)?;
    let near_toml = NEAR.config_toml();
    for _ in 0..3 {
        near.run(Hook::Decap, &vxlan_from_far(&ping(FAR_1, NEAR_1)), 1)?;
    }
    for _ in 0..2 {
        near.run(Hook::Decap, &vxlan_from(TENANT_B_VTEP, TENANT_B_VNI, &ping(TENANT_B_REMOTE, TENANT_B_2)), 1)?;
    }
    let before = near.datapath.vni_peer_counters()?;
    let forwarded = |counters: &Counters| counters.packets(Direction::FROM_UNDERLAY, Reason::FORWARDED);
    assert_eq!(
        (forwarded(&of_vni(&before, VNI)), forwarded(&of_vni(&before, TENANT_B_VNI))),
        (3, 2),
        "VNI 100 and 200 should have counted 3 and 2 forwarded packets: {before:?}"
    );
    let (vni_100_slot, far_slot) = (vni_slot(&near, VNI), peer_slot(&near, FAR_VTEP));
    let (vni_200_slot, tenant_b_slot) = (vni_slot(&near, TENANT_B_VNI), peer_slot(&near, TENANT_B_VTEP));

    // Tenant B leaves: its VNI, its ports and its peer.
    let without_tenant_b: String = {
        let mut text = near_toml.clone();
        for Endpoint { port, mac, ip, ipv6, vni } in [TENANT_B_1, TENANT_B_2] {
            let block = format!("\n[[endpoints]]\ninterface = \"{port}\"\nmac = \"{mac}\"\nip = \"{ip}\"\nipv6 = \"{ipv6}\"\nvni = {vni}\n");
            assert!(text.contains(&block), "the fixture's configuration changed: no {block:?} in\n{text}");
            text = text.replace(&block, "");
        }
        let peer = format!("\n[[peers]]\nname = \"tenant-b-host\"\nvtep_address = \"{TENANT_B_VTEP}\"\nvnis = []\n");
        let end = text.find(&peer).map(|at| at + peer.len()).expect("the tenant-b-host peer in the fixture's configuration");
        let next = text[end..].find("\n[[peers]]").map_or(text.len(), |at| end + at);
        text.replace_range(text.find(&peer).unwrap()..next, "");
        text
    };
    near.reconfigure(&without_tenant_b)?;
    let after_leave = near.datapath.vni_peer_counters()?;
    assert_eq!(
        (vni_slot(&near, VNI), peer_slot(&near, FAR_VTEP)),
        (vni_100_slot, far_slot),
        "VNI 100 and the far peer should keep their slots"
    );
    assert_eq!(of_vni(&after_leave, VNI), of_vni(&before, VNI), "VNI 100 should keep its counts when VNI 200 goes");
    assert_eq!(of_peer(&after_leave, FAR_VTEP), of_peer(&before, FAR_VTEP), "the far peer should keep its counts");
    assert!(
        !after_leave.vnis.contains_key(&TENANT_B_VNI) && !after_leave.peers.contains_key(&TENANT_B_VTEP),
        "VNI 200 and tenant B's peer should be gone: {after_leave:?}"
    );

    // A new tenant comes: VNI 400 on p3, behind a new peer.
    const NEW_VNI: u32 = 400;
    const NEW_VTEP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 6);
    let newcomer = Endpoint { vni: NEW_VNI, ..TENANT_B_2 };
    let remote = Endpoint { vni: NEW_VNI, ..TENANT_B_REMOTE };
    let with_newcomers = format!(
        "{without_tenant_b}\n[[endpoints]]\ninterface = \"{}\"\nmac = \"{}\"\nip = \"{}\"\nvni = {NEW_VNI}\n\n[[peers]]\nname = \"newcomer\"\nvtep_address = \"{NEW_VTEP}\"\n  [[peers.endpoints]]\n  mac = \"{}\"\n  ip = \"{}\"\n  vni = {NEW_VNI}\n",
        newcomer.port, newcomer.mac, newcomer.ip, remote.mac, remote.ip
    );
    near.reconfigure(&with_newcomers)?;
    assert_eq!(vni_slot(&near, NEW_VNI), vni_200_slot, "VNI 400 should take the slot VNI 200 freed");
    assert_eq!(peer_slot(&near, NEW_VTEP), tenant_b_slot, "the new peer should take the slot tenant B's peer freed");
    let arrived = near.datapath.vni_peer_counters()?;
    assert_eq!(of_vni(&arrived, NEW_VNI), Counters::default(), "VNI 400 must not inherit VNI 200's counts");
    assert_eq!(of_peer(&arrived, NEW_VTEP), Counters::default(), "the new peer must not inherit tenant B's peer's counts");
    assert_eq!(of_vni(&arrived, VNI), of_vni(&before, VNI), "VNI 100 still has its counts");

    let frame = vxlan_from(NEW_VTEP, NEW_VNI, &ping(remote, newcomer));
    let (_, moved) = near.run_counting_vnis_peers(Hook::Decap, &frame)?;
    let expected = Counters { rows: vec![CounterRow { direction: Direction::FROM_UNDERLAY, reason: Reason::FORWARDED, packets: 1, bytes: frame.len() as u64 }] };
    assert_eq!(
        (of_vni(&moved, NEW_VNI), of_peer(&moved, NEW_VTEP)),
        (expected.clone(), expected),
        "a packet of the new tenant should count in its VNI and peer: moved {moved:?}"
    );
    Ok(())
}

/// At the slot limit (PEER_COUNTER_SLOTS peers), a peer replaced by another in one reload
/// hands its slot straight over: the newcomer's counts start at zero, and
/// then count its packets.
#[test]
fn at_the_slot_limit_a_replacing_peer_starts_at_zero() -> anyhow::Result<()> {
    let mut near = Node::start(&NEAR)?;
    let fillers = overlay_common::PEER_COUNTER_SLOTS as usize - NEAR.peers.len();
    let full: String = NEAR.config_toml()
        + &(0..fillers)
            .map(|i| format!("\n[[peers]]\nname = \"filler{i}\"\nvtep_address = \"198.18.{}.{}\"\n", i >> 8, i & 0xff))
            .collect::<String>();
    near.reconfigure(&full)?;
    assert_eq!(near.datapath.applied().peer_slots().len(), overlay_common::PEER_COUNTER_SLOTS as usize, "every peer slot is in use");
    let from_third = vxlan_from(THIRD_VTEP, VNI, &ping(FAR_1, NEAR_1));
    near.run(Hook::Decap, &from_third, 1)?;
    let third_slot = peer_slot(&near, THIRD_VTEP);
    assert_eq!(
        of_peer(&near.datapath.vni_peer_counters()?, THIRD_VTEP).packets(Direction::FROM_UNDERLAY, Reason::FORWARDED),
        1,
        "the third peer counted its packet"
    );

    const FOURTH_VTEP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 6);
    let third = format!("name = \"third\"\nvtep_address = \"{THIRD_VTEP}\"");
    assert!(full.contains(&third), "the fixture's configuration changed: no {third:?}");
    near.reconfigure(&full.replace(&third, &format!("name = \"fourth\"\nvtep_address = \"{FOURTH_VTEP}\"")))?;
    assert_eq!(peer_slot(&near, FOURTH_VTEP), third_slot, "at the limit the fourth peer takes the slot the third released");
    let counters = near.datapath.vni_peer_counters()?;
    assert_eq!(of_peer(&counters, FOURTH_VTEP), Counters::default(), "the fourth peer must not inherit the third's counts");
    assert!(!counters.peers.contains_key(&THIRD_VTEP), "the third peer is gone");

    let from_fourth = vxlan_from(FOURTH_VTEP, VNI, &ping(FAR_1, NEAR_1));
    let (_, moved) = near.run_counting_vnis_peers(Hook::Decap, &from_fourth)?;
    assert_eq!(
        of_peer(&moved, FOURTH_VTEP).packets(Direction::FROM_UNDERLAY, Reason::FORWARDED),
        1,
        "the fourth peer's packet counts in its slot: moved {moved:?}"
    );
    Ok(())
}
