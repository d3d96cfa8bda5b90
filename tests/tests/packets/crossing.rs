//! Across tenants and nodes: isolation, round trips, a flooded frame crossing the underlay.
use super::*;

/// Several tenants, one node (RFC 7348 section 4: the VNI scopes the inner
/// MAC frame, so overlapping MAC and IP addresses are allowed across VNIs):
/// tenant B (VNI 200, port p3) reuses tenant A's NEAR_1 MAC and addresses.
/// No frame crosses from one VNI into the other: a MAC or address known
/// only in the other VNI is unknown here (flooded within the sender's VNI,
/// or dropped on receipt), and each VNI's own tables still answer.
#[test]
fn tenants_are_isolated() -> anyhow::Result<()> {
    let near = Node::start(&NEAR)?;
    let flooded = |name: &str, from: Endpoint, frame: Vec<u8>| flooded_on(&near, name, from, frame);
    let p3 = Hook::Port(TENANT_B_1.port);
    let answered_arp = |name: &str, asker: Endpoint, owner: Endpoint| {
        Case::given(name, Hook::Port(asker.port), arp_request(asker, owner.ip)).expect(
            TC_ACT_REDIRECT,
            Reason::ARP_REPLIED,
            Output::Frame(arp_answer(owner, asker)),
        )
    };
    let decap = |name: &str, frame: Vec<u8>, action: u32, reason: Reason, output: Output| {
        Case::given(name, Hook::Decap, frame).expect(action, reason, output)
    };
    let from_tenant_b_host = |inner: &[u8]| vxlan_from(TENANT_B_VTEP, TENANT_B_VNI, inner);
    let tenant_b_broadcast = dhcp_discover(TENANT_B_REMOTE);
    let b_to_b2 = ping(TENANT_B_REMOTE, TENANT_B_2);
    let b_asks_for_b2 = arp_request(TENANT_B_REMOTE, TENANT_B_2.ip);
    run_table(
        &near,
        &[
            // From a port: each VNI's tables, and only those.
            flooded("p1 (VNI 100) to tenant B's local-only MAC: flooded in VNI 100, not switched to p3", NEAR_1, ping(NEAR_1, TENANT_B_2)),
            flooded("p1 (VNI 100) to tenant B's remote MAC: flooded in VNI 100, not sent to its VTEP", NEAR_1, ping(NEAR_1, TENANT_B_REMOTE)),
            flooded("p3 (VNI 200) to tenant A's NEAR_2 MAC: flooded in VNI 200, not switched to p2", TENANT_B_1, ping(TENANT_B_1, NEAR_2)),
            flooded("p3 (VNI 200) to tenant A's FAR_1 MAC: flooded in VNI 200, not sent to the far VTEP", TENANT_B_1, ping(TENANT_B_1, FAR_1)),
            flooded("p3 broadcast: to tenant B's peer only", TENANT_B_1, dhcp_discover(TENANT_B_1)),
            flooded("p3 ARP request for an address only VNI 100 has: not answered", TENANT_B_1, arp_request(TENANT_B_1, NEAR_2.ip)),
            flooded("p1 ARP request for an address only VNI 200 has: not answered", NEAR_1, arp_request(NEAR_1, TENANT_B_2.ip)),
            flooded("p3 solicitation for an IPv6 address only VNI 100 has: not answered", TENANT_B_1, solicitation(TENANT_B_1, NEAR_2.ipv6)),
            answered_arp("p3 ARP request for tenant B's local address: answered", TENANT_B_1, TENANT_B_2),
            answered_arp("p3 ARP request for tenant B's remote address: answered", TENANT_B_1, TENANT_B_REMOTE),
            answered_arp("p2 ARP request for NEAR_1 (whose addresses tenant B reuses): answered", NEAR_2, NEAR_1),
            Case::given("p3 solicitation for tenant B's remote IPv6 address: answered", p3, solicitation(TENANT_B_1, TENANT_B_REMOTE.ipv6))
                .expect(TC_ACT_REDIRECT, Reason::ND_REPLIED, Output::Frame(advertisement(TENANT_B_REMOTE, TENANT_B_1))),
            Case::given("p3 to tenant B's remote endpoint: VXLAN in VNI 200 to its VTEP", p3, ping(TENANT_B_1, TENANT_B_REMOTE)).expect(
                TC_ACT_REDIRECT,
                Reason::FORWARDED,
                encapsulated(near.tunnel_to(TENANT_B_VTEP, TENANT_B_VNI)),
            ),
            Case::given("p3 to tenant B's other local endpoint: switched locally", p3, ping(TENANT_B_1, TENANT_B_2))
                .expect(TC_ACT_REDIRECT, Reason::LOCAL_SWITCHED, Output::Unchanged),
            // From the underlay: the VNI in the header decides.
            decap(
                "VNI 100 to tenant B's local-only MAC",
                vxlan_from_far(&ping_to(FAR_1, TENANT_B_2.mac, TENANT_B_2.ip)),
                XDP_DROP,
                Reason::UNKNOWN_DESTINATION,
                Output::Ignored,
            ),
            decap(
                "VNI 200 to tenant B's local MAC: delivered",
                from_tenant_b_host(&b_to_b2),
                XDP_REDIRECT,
                Reason::FORWARDED,
                Output::Frame(b_to_b2.clone()),
            ),
            decap(
                "VNI 200 to tenant A's NEAR_2 MAC",
                from_tenant_b_host(&ping(TENANT_B_REMOTE, NEAR_2)),
                XDP_DROP,
                Reason::UNKNOWN_DESTINATION,
                Output::Ignored,
            ),
            decap(
                "VNI 200 ARP request for tenant B's local address: delivered",
                from_tenant_b_host(&b_asks_for_b2),
                XDP_REDIRECT,
                Reason::FORWARDED,
                Output::Frame(b_asks_for_b2.clone()),
            ),
            decap(
                "VNI 200 ARP request for an address only VNI 100 has: handed off to flooding",
                from_tenant_b_host(&arp_request(TENANT_B_REMOTE, NEAR_2.ip)),
                XDP_PASS,
                Reason::FLOOD_HANDOFF,
                Output::Unchanged,
            ),
            decap(
                "VNI 100 ARP request for an address only VNI 200 has: handed off to flooding",
                vxlan_from_far(&arp_request(FAR_1, TENANT_B_2.ip)),
                XDP_PASS,
                Reason::FLOOD_HANDOFF,
                Output::Unchanged,
            ),
            Case::given("VNI 200 broadcast from the underlay: to p3 only", Hook::UnderlayFlood, from_tenant_b_host(&tenant_b_broadcast))
                .expect(TC_ACT_SHOT, Reason::FLOODED, Output::Ignored)
                .arriving(vec![unchanged_at(TENANT_B_1.port, &tenant_b_broadcast)]),
        ],
    );
    Ok(())
}

/// Both halves of RFC 7348 section 5 agree: what the far node's
/// encapsulation sends, the near node's decapsulation turns back into the
/// very frame the far container sent.
#[test]
fn encapsulation_then_decapsulation_returns_the_frame() -> anyhow::Result<()> {
    let near = Node::start(&NEAR)?;
    let far = Node::start(&FAR)?;
    let frames = [
        ("IPv4 ICMP echo request", ping(FAR_1, NEAR_1)),
        ("ARP reply (not IP)", Arp::reply(FAR_1.mac, FAR_1.ip, NEAR_1.mac, NEAR_1.ip).frame(NEAR_1.mac)),
        ("IPv4 of 1450 bytes to the other endpoint", udp_of_ip_length(FAR_1, NEAR_2, 1450)),
    ];
    let results: Vec<(&str, Result<Ran, String>)> = frames
        .into_iter()
        .map(|(name, sent)| {
            let encapsulation = Case::given(format!("{name}: encapsulated by the far node"), Hook::Port(FAR_1.port), sent.clone())
                .expect(TC_ACT_REDIRECT, Reason::FORWARDED, encapsulated(far.tunnel()));
            let result = run_case(&far, &encapsulation).and_then(|on_the_wire| {
                let decapsulation = Case::given(format!("{name}: decapsulated by the near node"), Hook::Decap, on_the_wire.frame)
                    .expect(XDP_REDIRECT, Reason::FORWARDED, Output::Frame(sent));
                run_case(&near, &decapsulation)
            });
            (name, result)
        })
        .collect();
    report(results.iter().map(|(name, result)| (*name, result)));
    Ok(())
}

/// Flooding end to end (RFC 7348 section 4.2): the copy the far node's
/// endpoint program really sends to the near VTEP is handed up unchanged by
/// the near node's XDP and replicated by its underlay TC program to every
/// local port of the VNI, where the far container's frame arrives unchanged.
#[test]
fn flooded_frame_crosses_the_underlay() -> anyhow::Result<()> {
    let near = Node::start(&NEAR)?;
    let far = Node::start(&FAR)?;
    let frames = [
        ("DHCP discover (IPv4 broadcast)", dhcp_discover(FAR_1)),
        ("ARP request for an address nobody knows (not IP)", arp_request(FAR_1, UNKNOWN_IP)),
        ("IPv6 mDNS (multicast)", mdns6(FAR_1)),
        ("unicast to an unknown MAC (flooded, then dropped on receipt)", ping_to(FAR_1, UNKNOWN_MAC, UNKNOWN_IP)),
    ];
    let results: Vec<(&str, Result<Ran, String>)> = frames
        .into_iter()
        .map(|(name, sent)| {
            let flood = Case::given(format!("{name}: flooded by the far node"), Hook::Port(FAR_1.port), sent.clone())
                .expect(TC_ACT_SHOT, Reason::FLOODED, Output::Ignored)
                .arriving(vec![Arrival::Vxlan(far.tunnel(), sent.clone())]);
            let result = run_case(&far, &flood).and_then(|flooded| {
                let on_the_wire = flooded.arrived[UNDERLAY_PEER][0].clone();
                let unicast = sent[0] & 1 == 0;
                let receipt = if unicast {
                    Case::given(format!("{name}: dropped by the near node's XDP"), Hook::Decap, on_the_wire)
                        .expect(XDP_DROP, Reason::UNKNOWN_DESTINATION, Output::Ignored)
                } else {
                    Case::given(format!("{name}: handed up by the near node's XDP"), Hook::Decap, on_the_wire.clone())
                        .expect(XDP_PASS, Reason::FLOOD_HANDOFF, Output::Unchanged)
                };
                let handed_up = run_case(&near, &receipt)?;
                if unicast {
                    return Ok(handed_up);
                }
                let replication = Case::given(format!("{name}: replicated by the near node's TC"), Hook::UnderlayFlood, handed_up.frame)
                    .expect(TC_ACT_SHOT, Reason::FLOODED, Output::Ignored)
                    .arriving(vec![unchanged_at(NEAR_1.port, &sent), unchanged_at(NEAR_2.port, &sent)]);
                run_case(&near, &replication)
            });
            (name, result)
        })
        .collect();
    report(results.iter().map(|(name, result)| (*name, result)));
    Ok(())
}
