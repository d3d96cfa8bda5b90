//! Rows and the table runner: hook, input, expected verdict, reason, output and arrivals.
use std::{
    fmt,
    net::Ipv4Addr,
};

use overlay::{
    Counters,
    datapath::CounterRow,
};
use overlay_common::{Direction, Reason};
use overlay_lab::frames::{
        self, ETHERNET_LEN, ETHERTYPE_IPV4, Ethernet, IPPROTO_ICMP, IPPROTO_UDP, IPV4_LEN, Ipv4, Mac,
        UDP_LEN, Udp, Vxlan, VxlanOverIpv4,
    };

use super::*;

/// Where a frame is run: the XDP program of the underlay, the TC program
/// as if the frame arrived on the named port, or the underlay's TC flood
/// program (as if the frame arrived on `ul0` after XDP passed it up), or
/// the TC decapsulation program that replaces both (`--decap tc`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hook {
    Decap,
    Port(&'static str),
    UnderlayFlood,
    DecapTc,
}

impl Hook {
    pub(crate) fn direction(self) -> Direction {
        match self {
            Hook::Decap | Hook::UnderlayFlood | Hook::DecapTc => Direction::FROM_UNDERLAY,
            Hook::Port(_) => Direction::FROM_ENDPOINT,
        }
    }

    /// The decapsulation hooks' actions: XDP's for the XDP program, the
    /// TC equivalents for the TC one.
    pub(crate) fn delivered(self) -> u32 {
        if self == Hook::DecapTc { TC_ACT_REDIRECT } else { XDP_REDIRECT }
    }
    pub(crate) fn dropped(self) -> u32 {
        if self == Hook::DecapTc { TC_ACT_SHOT } else { XDP_DROP }
    }
    pub(crate) fn passed(self) -> u32 {
        if self == Hook::DecapTc { TC_ACT_OK } else { XDP_PASS }
    }

    pub(crate) fn action_name(self, action: u32) -> String {
        let name = match (self, action) {
            (Hook::Decap, XDP_DROP) => "XDP_DROP",
            (Hook::Decap, XDP_PASS) => "XDP_PASS",
            (Hook::Decap, XDP_REDIRECT) => "XDP_REDIRECT",
            (Hook::Decap, 0) => "XDP_ABORTED",
            (Hook::Port(_) | Hook::UnderlayFlood | Hook::DecapTc, TC_ACT_SHOT) => "TC_ACT_SHOT",
            (Hook::Port(_) | Hook::UnderlayFlood | Hook::DecapTc, TC_ACT_REDIRECT) => "TC_ACT_REDIRECT",
            (Hook::Port(_) | Hook::UnderlayFlood | Hook::DecapTc, TC_ACT_OK) => "TC_ACT_OK",
            _ => "unexpected",
        };
        format!("{name} ({action})")
    }
}

/// Looks at (input, output) and lists what is wrong.
pub(crate) type OutputCheck = dyn Fn(&[u8], &[u8]) -> Vec<String>;

/// What the output frame must be.
pub(crate) enum Output {
    /// The input, untouched.
    Unchanged,
    /// Exactly this frame.
    Frame(Vec<u8>),
    /// A check of (input, output) that lists what is wrong.
    Check(Box<OutputCheck>),
    /// Dropped: the bytes left behind do not matter.
    Ignored,
}

/// A frame the datapath must really have sent during a run, as a capture
/// device saw it.
pub(crate) enum Arrival {
    /// Exactly this frame, on this container side of a port (`q1`...).
    Frame(&'static str, Vec<u8>),
    /// This inner frame in VXLAN along this tunnel, on the underlay's far end.
    Vxlan(Tunnel, Vec<u8>),
}

impl Arrival {
    pub(crate) fn device(&self) -> &'static str {
        match self {
            Arrival::Frame(device, _) => device,
            Arrival::Vxlan(..) => UNDERLAY_PEER,
        }
    }
}

/// `frame`, unchanged, in the container behind host-side `port`.
pub(crate) fn unchanged_at(port: &str, frame: &[u8]) -> Arrival {
    Arrival::Frame(container_side(port), frame.to_vec())
}

/// One row of a table.
pub(crate) struct Case {
    pub(crate) name: String,
    pub(crate) hook: Hook,
    pub(crate) input: Vec<u8>,
    pub(crate) action: u32,
    /// `None`: the program counts nothing (the frame is left to others).
    pub(crate) reason: Option<Reason>,
    pub(crate) output: Output,
    /// Exactly what must arrive on the capture devices.
    pub(crate) arrivals: Vec<Arrival>,
}

impl Case {
    /// A case for `input` run through `hook`; its expectations follow.
    pub(crate) fn given(name: impl Into<String>, hook: Hook, input: Vec<u8>) -> Given {
        Given { name: name.into(), hook, input }
    }

    /// These frames, and no others, must arrive on the capture devices.
    pub(crate) fn arriving(self, arrivals: Vec<Arrival>) -> Case {
        Case { arrivals, ..self }
    }
}

/// A case before its expectations.
pub(crate) struct Given {
    pub(crate) name: String,
    pub(crate) hook: Hook,
    pub(crate) input: Vec<u8>,
}

impl Given {
    /// `action`, `reason` counted once, `output`; nothing sent anywhere.
    pub(crate) fn expect(self, action: u32, reason: Reason, output: Output) -> Case {
        Case { name: self.name, hook: self.hook, input: self.input, action, reason: Some(reason), output, arrivals: Vec::new() }
    }

    /// `action` and `output`, with no counter moving and nothing sent.
    pub(crate) fn expect_uncounted(self, action: u32, output: Output) -> Case {
        Case { reason: None, ..self.expect(action, Reason::PASSED, output) }
    }
}

/// What a run left: the output frame and what the capture devices saw.
pub(crate) struct Ran {
    pub(crate) frame: Vec<u8>,
    pub(crate) arrived: Arrived,
}

/// Runs one case. `Ok` with the output when everything matched, otherwise
/// `Err` with what was expected and seen, and both frames in hex.
pub(crate) fn run_case(node: &Node, case: &Case) -> Result<Ran, String> {
    let failed = |error: anyhow::Error| format!("{}: the test run failed: {error:#}", case.name);
    node.captures.drain().map_err(failed)?;
    let (outcome, counted) = node.run(case.hook, &case.input, 1).map_err(failed)?;
    let arrived = node.captures.collect(case.arrivals.len()).map_err(failed)?;
    let mut wrong = Vec::new();
    if outcome.action != case.action {
        wrong.push(format!(
            "action: expected {}, seen {}",
            case.hook.action_name(case.action),
            case.hook.action_name(outcome.action)
        ));
    }
    let expected_counts: Vec<CounterRow> = case
        .reason
        .map(|reason| CounterRow { direction: case.hook.direction(), reason, packets: 1, bytes: case.input.len() as u64 })
        .into_iter()
        .collect();
    if counted.rows != expected_counts {
        let expected = match expected_counts.first() {
            Some(row) => format!("only {}", describe_row(row)),
            None => "nothing".to_owned(),
        };
        wrong.push(format!("counters: expected {expected}, counted {}", describe_counts(&counted)));
    }
    match &case.output {
        Output::Unchanged => wrong.extend(frames::difference(&case.input, &outcome.frame).map(|d| format!("output should be the input unchanged: {d}"))),
        Output::Frame(expected) => wrong.extend(frames::difference(expected, &outcome.frame).map(|d| format!("output: {d}"))),
        Output::Check(check) => wrong.extend(check(&case.input, &outcome.frame)),
        Output::Ignored => {}
    }
    wrong.extend(check_arrivals(&case.arrivals, &arrived));
    if wrong.is_empty() {
        return Ok(Ran { frame: outcome.frame, arrived });
    }
    // Headers are what matter here; a frame difference above shows whole frames.
    const DUMP_LIMIT: usize = 128;
    Err(format!(
        "{}:\n  - {}\n  input ({} bytes):\n{}\n  output ({} bytes):\n{}",
        case.name,
        wrong.join("\n  - "),
        case.input.len(),
        frames::hex_head(&case.input, DUMP_LIMIT),
        outcome.frame.len(),
        frames::hex_head(&outcome.frame, DUMP_LIMIT)
    ))
}

/// Runs every case, then fails listing all that did not match.
pub(crate) fn run_table(node: &Node, cases: &[Case]) {
    let results: Vec<Result<Ran, String>> = cases.iter().map(|case| run_case(node, case)).collect();
    report(cases.iter().map(|case| case.name.as_str()).zip(&results));
}

/// Prints `ok`/`FAIL` per case and panics with every failure.
pub(crate) fn report<'a, T: 'a>(results: impl IntoIterator<Item = (&'a str, &'a Result<T, String>)>) {
    let mut failures = Vec::new();
    let mut total = 0;
    for (name, result) in results {
        total += 1;
        println!("{} {name}", if result.is_ok() { "ok  " } else { "FAIL" });
        if let Err(failure) = result {
            failures.push(failure.as_str());
        }
    }
    assert!(failures.is_empty(), "{} of {total} cases failed:\n\n{}\n", failures.len(), failures.join("\n\n"));
}

pub(crate) fn reason_name(reason: Reason) -> String {
    format!("{} ({})", reason.info().map_or("unknown", |info| info.name), reason.0)
}

pub(crate) fn describe_row(row: &CounterRow) -> String {
    format!("{} {} +{} ({} bytes)", row.direction.name(), reason_name(row.reason), row.packets, row.bytes)
}

pub(crate) fn describe_counts(counts: &Counters) -> String {
    if counts.rows.is_empty() {
        return "nothing".to_owned();
    }
    counts.rows.iter().map(describe_row).collect::<Vec<_>>().join(", ")
}

/// A captured frame in a few words: its VXLAN destination and VNI, if it is VXLAN.
pub(crate) fn describe_frame(frame: &[u8]) -> String {
    match VxlanOverIpv4::parse(frame) {
        Some(outer) if outer.ethertype == ETHERTYPE_IPV4 && outer.ip_protocol == IPPROTO_UDP && outer.udp_dst_port == VXLAN_PORT => {
            format!("{} bytes, VXLAN to {} in VNI {}", frame.len(), outer.ip_dst, outer.vxlan_vni)
        }
        _ => format!("{} bytes", frame.len()),
    }
}

/// Lists how what arrived differs from `expected`: every expected frame
/// must have arrived once, on its device, and nothing else anywhere.
pub(crate) fn check_arrivals(expected: &[Arrival], arrived: &Arrived) -> Vec<String> {
    const DUMP_LIMIT: usize = 96;
    let mut wrong = Vec::new();
    for device in CAPTURED {
        let mut unmatched: Vec<&[u8]> = arrived.get(device).into_iter().flatten().map(Vec::as_slice).collect();
        for arrival in expected.iter().filter(|arrival| arrival.device() == device) {
            match arrival {
                Arrival::Frame(_, frame) => match unmatched.iter().position(|seen| seen == frame) {
                    Some(at) => {
                        unmatched.remove(at);
                    }
                    None => wrong.push(format!(
                        "{device}: expected the frame below, which did not arrive:\n{}",
                        frames::hex_head(frame, DUMP_LIMIT)
                    )),
                },
                Arrival::Vxlan(tunnel, inner) => {
                    let to_this_vtep = |seen: &&[u8]| VxlanOverIpv4::parse(seen).is_some_and(|outer| outer.ip_dst == tunnel.dst_vtep);
                    match unmatched.iter().position(to_this_vtep) {
                        Some(at) => {
                            let seen = unmatched.remove(at);
                            wrong.extend(
                                check_encapsulation(tunnel, inner, seen)
                                    .into_iter()
                                    .map(|problem| format!("{device}, copy to {}: {problem}", tunnel.dst_vtep)),
                            );
                        }
                        None => wrong.push(format!(
                            "{device}: expected a VXLAN copy to {} in VNI {}, none arrived",
                            tunnel.dst_vtep, tunnel.vni
                        )),
                    }
                }
            }
        }
        for extra in unmatched {
            wrong.push(format!(
                "{device}: unexpected frame ({}):\n{}",
                describe_frame(extra),
                frames::hex_head(extra, DUMP_LIMIT)
            ));
        }
    }
    wrong
}

/// The outer headers one node's encapsulation toward a peer must write.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tunnel {
    pub(crate) src_mac: Mac,
    pub(crate) dst_mac: Mac,
    pub(crate) src_vtep: Ipv4Addr,
    pub(crate) dst_vtep: Ipv4Addr,
    pub(crate) vni: u32,
}

/// Output check: `input` encapsulated by `tunnel`, every outer field right.
pub(crate) fn encapsulated(tunnel: Tunnel) -> Output {
    Output::Check(Box::new(move |input, output| check_encapsulation(&tunnel, input, output)))
}

/// Field-by-field comparison that collects every mismatch.
#[derive(Default)]
pub(crate) struct Mismatches(Vec<String>);

impl Mismatches {
    pub(crate) fn check<T: PartialEq + fmt::Debug>(&mut self, field: &str, expected: T, seen: T) {
        if expected != seen {
            self.0.push(format!("{field}: expected {expected:?}, seen {seen:?}"));
        }
    }

    pub(crate) fn check_hex<T: PartialEq + fmt::LowerHex>(&mut self, field: &str, expected: T, seen: T) {
        if expected != seen {
            self.0.push(format!("{field}: expected {expected:#x}, seen {seen:#x}"));
        }
    }
}

/// Every outer field of RFC 7348 section 5's frame format, as this node
/// must write them, and the inner frame byte for byte. (The IPv4
/// identification counts packets; `outer_ipv4_ids_count_packets` checks it.)
pub(crate) fn check_encapsulation(tunnel: &Tunnel, input: &[u8], output: &[u8]) -> Vec<String> {
    let mut wrong = Mismatches::default();
    wrong.check("frame length (input + 50)", input.len() + ENCAP_LEN, output.len());
    let Some(outer) = VxlanOverIpv4::parse(output) else {
        wrong.0.push(format!("output of {} bytes is shorter than the {ENCAP_LEN} bytes of outer headers", output.len()));
        return wrong.0;
    };
    wrong.check("outer Ethernet destination (the peer VTEP's neighbour entry)", tunnel.dst_mac, outer.eth_dst);
    wrong.check("outer Ethernet source (the underlay device)", tunnel.src_mac, outer.eth_src);
    wrong.check_hex("outer EtherType", ETHERTYPE_IPV4, outer.ethertype);
    wrong.check_hex("IPv4 version/IHL", 0x45, outer.ip_version_ihl);
    wrong.check_hex("IPv4 TOS", 0, outer.ip_tos);
    wrong.check("IPv4 total length (frame length - 14)", output.len() - ETHERNET_LEN, usize::from(outer.ip_total_length));
    wrong.check_hex("IPv4 flags/fragment offset (DF only: RFC 7348 section 4.3)", 0x4000, outer.ip_flags_fragment);
    wrong.check("IPv4 TTL", 64, outer.ip_ttl);
    wrong.check("IPv4 protocol", IPPROTO_UDP, outer.ip_protocol);
    wrong.check_hex("IPv4 header checksum (recomputed)", outer.ip_checksum_computed, outer.ip_checksum);
    wrong.check("IPv4 source (this VTEP)", tunnel.src_vtep, outer.ip_src);
    wrong.check("IPv4 destination (the peer VTEP)", tunnel.dst_vtep, outer.ip_dst);
    if !SOURCE_PORTS.contains(&outer.udp_src_port) {
        wrong.0.push(format!(
            "UDP source port: expected in {SOURCE_PORTS:?} (RFC 7348 section 5), seen {}",
            outer.udp_src_port
        ));
    }
    wrong.check("UDP destination port", VXLAN_PORT, outer.udp_dst_port);
    wrong.check("UDP length (IPv4 total length - 20)", output.len() - ETHERNET_LEN - IPV4_LEN, usize::from(outer.udp_length));
    wrong.check_hex("UDP checksum (zero: RFC 7348 section 5)", 0, outer.udp_checksum);
    wrong.check_hex("VXLAN flags (the I flag only)", Vxlan::FLAG_VNI_VALID, outer.vxlan_flags);
    wrong.check("VXLAN reserved bits after the flags", [0u8; 3], outer.vxlan_reserved1);
    wrong.check("VXLAN VNI", tunnel.vni, outer.vxlan_vni);
    wrong.check("VXLAN reserved byte after the VNI", 0, outer.vxlan_reserved2);
    if let Some(difference) = frames::difference(input, outer.inner) {
        wrong.0.push(format!("inner frame should be the input byte for byte: {difference}"));
    }
    wrong.0
}

// Frames.

/// Payload bytes that differ from their neighbours, so shifts show.
pub(crate) fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| i as u8).collect()
}

/// An ICMP echo request between two containers, as `ping` sends it.
pub(crate) fn ping(from: Endpoint, to: Endpoint) -> Vec<u8> {
    ping_to(from, to.mac, to.ip)
}

pub(crate) fn ping_to(from: Endpoint, dst_mac: Mac, dst_ip: Ipv4Addr) -> Vec<u8> {
    let icmp = frames::icmp_echo_request(0x4242, 1, &payload(56));
    Ethernet { dst: dst_mac, src: from.mac, ethertype: ETHERTYPE_IPV4 }
        .frame(&Ipv4::new(IPPROTO_ICMP, from.ip, dst_ip).packet(&icmp))
}

/// A UDP datagram from a container, `payload_len` bytes of payload.
pub(crate) fn udp_from(from: Endpoint, dst_mac: Mac, dst_ip: Ipv4Addr, udp: Udp, payload_len: usize) -> Vec<u8> {
    Ethernet { dst: dst_mac, src: from.mac, ethertype: ETHERTYPE_IPV4 }
        .frame(&Ipv4::new(IPPROTO_UDP, from.ip, dst_ip).packet(&udp.datagram(&payload(payload_len))))
}

/// Some UDP flow between containers.
pub(crate) const FLOW: Udp = Udp { src_port: 40000, dst_port: 5201 };

/// A UDP datagram between containers whose IPv4 packet is `ip_length` bytes.
pub(crate) fn udp_of_ip_length(from: Endpoint, to: Endpoint, ip_length: usize) -> Vec<u8> {
    udp_from(from, to.mac, to.ip, FLOW, ip_length - IPV4_LEN - UDP_LEN)
}
