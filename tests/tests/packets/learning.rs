//! Learning (RFC 7348 section 4.1) in a network that turns it on: what
//! decapsulation learns, from whom, and how encapsulation uses it.
use overlay::datapath::learned::LearnedView;

use super::*;

/// A frame in VNI 100 from `source_mac` (behind some peer) to NEAR_1.
fn to_near_1_from(source_mac: Mac) -> Vec<u8> {
    ping(Endpoint { mac: source_mac, ip: UNLISTED_IP, ..FAR_1 }, NEAR_1)
}

/// A ping from NEAR_1 to the MAC nobody configured.
fn to_unlisted() -> Vec<u8> {
    ping_to(NEAR_1, UNLISTED_MAC, UNLISTED_IP)
}

fn learned(node: &Node) -> Result<LearnedView, String> {
    node.datapath.learned().map_err(|error| format!("reading the learned FDB: {error}"))
}

/// Where the learned FDB puts `mac` in VNI 100, if anywhere.
fn learned_at(view: &LearnedView, mac: Mac) -> Option<Ipv4Addr> {
    view.rows.iter().find(|row| row.vni == VNI && row.mac.0 == mac.0).map(|row| row.vtep)
}

/// A check of the learned FDB as one more row of the table.
fn expect_learned(node: &Node, name: &str, mac: Mac, at: Option<Ipv4Addr>, learned_events: u64, refused_events: u64) -> (String, Result<(), String>) {
    let result = learned(node).and_then(|view| {
        let seen = (learned_at(&view, mac), view.events(Reason::LEARNED), view.events(Reason::LEARNING_REFUSED));
        let expected = (at, learned_events, refused_events);
        (seen == expected).then_some(()).ok_or_else(|| {
            format!("{name}: expected {mac} learned at {at:?} after {learned_events} learned and {refused_events} refused event(s), saw {seen:?}; learned FDB: {:?}", view.rows)
        })
    });
    (name.to_owned(), result)
}

/// Runs `case` on `node` as one row of the table.
fn record(node: &Node, results: &mut Vec<(String, Result<(), String>)>, case: Case) {
    let result = run_case(node, &case).map(|_| ());
    results.push((case.name, result));
}

/// Both decapsulation hooks learn alike (they share the judgement).
#[test]
fn learning_from_admitted_peers_only_and_never_over_configured_entries() -> anyhow::Result<()> {
    learning_through(Hook::Decap)?;
    learning_through(Hook::DecapTc)
}

fn learning_through(hook: Hook) -> anyhow::Result<()> {
    let mut near = Node::start(&NEAR)?;
    let learning = |ageing: u32| format!("{}\n[[vnis]]\nvni = {VNI}\nlearning = true\nageing = {ageing}\n", NEAR.config_toml());
    near.reconfigure(&learning(300))?;
    let delivered = |name: &str, inner: Vec<u8>, from: Ipv4Addr| {
        Case::given(format!("{name} ({hook:?})"), hook, vxlan_from(from, VNI, &inner)).expect(hook.delivered(), Reason::FORWARDED, Output::Frame(inner))
    };
    let dropped = |name: &str, inner: Vec<u8>, from: Ipv4Addr, reason: Reason| {
        Case::given(format!("{name} ({hook:?})"), hook, vxlan_from(from, VNI, &inner)).expect(hook.dropped(), reason, Output::Ignored)
    };
    let encapsulated_to = |name: &str, frame: Vec<u8>, vtep: Ipv4Addr| {
        Case::given(name, Hook::Port(NEAR_1.port), frame).expect(TC_ACT_REDIRECT, Reason::FORWARDED, encapsulated(near.tunnel_to(vtep, VNI)))
    };
    let mut results: Vec<(String, Result<(), String>)> = Vec::new();
    let run = |results: &mut Vec<(String, Result<(), String>)>, case: Case| record(&near, results, case);

    // Nothing learned yet: unknown unicast is flooded to the VNI's peers.
    run(&mut results, flooded_on(&near, "before learning, a frame to an unknown MAC is flooded", NEAR_1, to_unlisted()));
    // A peer admitted for VNI 100 (the third node) teaches where its container is.
    run(&mut results, delivered("a frame from the third node's unlisted container", to_near_1_from(UNLISTED_MAC), THIRD_VTEP));
    results.push(expect_learned(&near, "learned from an admitted peer", UNLISTED_MAC, Some(THIRD_VTEP), 1, 0));
    run(&mut results, encapsulated_to("once learned, a frame to it goes to the third node alone", to_unlisted(), THIRD_VTEP));

    // Peers not admitted for VNI 100 teach nothing, even a MAC already learned.
    run(&mut results, dropped("a tenant-B peer claims the learned MAC in VNI 100", to_near_1_from(UNLISTED_MAC), TENANT_B_VTEP, Reason::PEER_NOT_IN_VNI));
    run(&mut results, dropped("a stranger claims the learned MAC in VNI 100", to_near_1_from(UNLISTED_MAC), STRANGER_VTEP, Reason::UNKNOWN_PEER));
    run(&mut results, dropped("a tenant-B peer sends a new MAC in VNI 100", to_near_1_from(UNKNOWN_MAC), TENANT_B_VTEP, Reason::PEER_NOT_IN_VNI));
    results.push(expect_learned(&near, "refused frames change nothing", UNLISTED_MAC, Some(THIRD_VTEP), 1, 0));
    results.push(expect_learned(&near, "a refused frame's new MAC is not learned", UNKNOWN_MAC, None, 1, 0));
    run(&mut results, encapsulated_to("after the poisoning attempts, still to the third node", to_unlisted(), THIRD_VTEP));

    // A configured entry wins: FAR_1 is configured behind the far node.
    run(&mut results, delivered("the third node claims the far node's configured container", to_near_1_from(FAR_1.mac), THIRD_VTEP));
    results.push(expect_learned(&near, "a configured MAC is not learned elsewhere", FAR_1.mac, None, 1, 1));
    run(&mut results, encapsulated_to("a frame to the configured container still goes to the far node", ping(NEAR_1, FAR_1), FAR_VTEP));
    // So does a local endpoint.
    run(&mut results, delivered("the third node claims a local container's MAC", to_near_1_from(NEAR_2.mac), THIRD_VTEP));
    results.push(expect_learned(&near, "a local MAC is never learned", NEAR_2.mac, None, 1, 2));

    // An admitted peer may take a MAC over (a container moved), as a bridge learns.
    run(&mut results, delivered("the far node now sends from the unlisted MAC", to_near_1_from(UNLISTED_MAC), FAR_VTEP));
    results.push(expect_learned(&near, "the MAC moved to the far node", UNLISTED_MAC, Some(FAR_VTEP), 2, 2));
    run(&mut results, encapsulated_to("a frame to the moved MAC goes to the far node", to_unlisted(), FAR_VTEP));

    // Learning turned off: what was learned is no longer used.
    near.reconfigure(&NEAR.config_toml())?;
    record(&near, &mut results, flooded_on(&near, "with learning off, the learned entry is ignored (flooded)", NEAR_1, to_unlisted()));
    // Back on with a one-second ageing: the entry is not refreshed, so once
    // older than that it is ignored too.
    near.reconfigure(&learning(1))?;
    std::thread::sleep(Duration::from_millis(2500));
    record(&near, &mut results, flooded_on(&near, "an entry older than the ageing is ignored (flooded)", NEAR_1, to_unlisted()));
    report(results.iter().map(|(name, result)| (name.as_str(), result)));
    Ok(())
}
