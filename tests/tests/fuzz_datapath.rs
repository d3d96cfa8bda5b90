//! Every datapath program fuzzed through BPF_PROG_TEST_RUN: the endpoint
//! program (encapsulation) on each port, XDP and TC decapsulation and the
//! underlay flood program on the underlay. Frames come from the
//! structure-aware generators of `overlay_lab::fuzz` (valid frames of every
//! family, then mutated), 50,000 per program with a fixed seed; more with
//! `OVERLAY_FUZZ_FRAMES` (`cargo xtask fuzz --frames N --seed S`).
//!
//! Invariants, on every frame, from the verdict, the output frame, the
//! node's counters and what really arrived on the capture sockets:
//! - counted exactly once, under one known reason, with the frame's length
//!   (the underlay flood program alone may leave a frame uncounted, and
//!   then untouched: XDP counted it);
//! - a frame the RFC-written oracle refuses (not from a peer admitted for
//!   its VNI, unknown VNI, malformed, truncated, fragments, options, bad
//!   checksum, another host's MAC) is never
//!   redirected, delivered or cloned anywhere; one that is not ours passes
//!   untouched;
//! - every decapsulated output and clone is exactly the inner frame of an
//!   admitted input, and goes only to ports of its VNI;
//! - every encapsulated output and clone has well-formed outer headers
//!   (lengths, IPv4 checksum, DF, TTL, UDP source port in the configured
//!   range, zero UDP checksum or a right one, VXLAN flags) and the input
//!   port's VNI, and carries the input unchanged; answers (ARP, ND, ICMP)
//!   go back to the sender and name only addresses of its VNI.
//!
//! A failure prints the seed, the program and the frame's index: each frame
//! has its own PRNG stream, so `OVERLAY_FUZZ_SEED=S OVERLAY_FUZZ_ONLY=program:index`
//! replays exactly that frame. Found failures become rows of the packets/ tables.
//! Needs root.
use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    os::fd::OwnedFd,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use overlay::{Config, Counters, Datapath, MapState, ResolvedConfig, datapath::TestRunOutcome, netdev};
use overlay_common::{Direction, Reason};
use overlay_lab::{
    bpf_run::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_DROP, XDP_PASS, XDP_REDIRECT, packet_socket, receive_queued},
    frames::{self, Mac},
    fuzz::{
        Rng, World, generate,
        oracle::{self, Underlay},
    },
    netns::{InsideNetns, Netns},
};

/// The fixed seed of `cargo xtask test`.
const DEFAULT_SEED: u64 = 0x6f76_6572_6c61_7931;
const DEFAULT_FRAMES: u64 = 50_000;
/// Failures kept in full for the report (all are counted).
const FAILURES_SHOWN: usize = 12;

const UNDERLAY: &str = "ul0";
const UNDERLAY_PEER: &str = "ul0peer";
const CONTAINER_SIDES: [(&str, &str); 3] = [("p1", "q1"), ("p2", "q2"), ("p3", "q3")];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Program {
    Endpoint,
    DecapXdp,
    DecapTc,
    UnderlayFlood,
}

impl Program {
    const ALL: [Program; 4] = [Program::Endpoint, Program::DecapXdp, Program::DecapTc, Program::UnderlayFlood];

    fn name(self) -> &'static str {
        match self {
            Program::Endpoint => "overlay_endpoint",
            Program::DecapXdp => "overlay_decap",
            Program::DecapTc => "overlay_decap_tc",
            Program::UnderlayFlood => "overlay_underlay_flood",
        }
    }

    /// The program's PRNG stream number.
    fn stream(self) -> u64 {
        self as u64 + 1
    }

    fn direction(self) -> Direction {
        if self == Program::Endpoint { Direction::FROM_ENDPOINT } else { Direction::FROM_UNDERLAY }
    }

    fn redirect(self) -> u32 {
        if self == Program::DecapXdp { XDP_REDIRECT } else { TC_ACT_REDIRECT }
    }

    fn drop(self) -> u32 {
        if self == Program::DecapXdp { XDP_DROP } else { TC_ACT_SHOT }
    }

    fn pass(self) -> u32 {
        if self == Program::DecapXdp { XDP_PASS } else { TC_ACT_OK }
    }
}

struct Settings {
    seed: u64,
    frames: u64,
    /// `program:index`: replay one frame.
    only: Option<(String, u64)>,
    /// A reason code whose first frames are printed (investigation).
    dump: Option<u32>,
    /// Only these programs (`OVERLAY_FUZZ_PROGRAMS=a,b`), e.g. to run them in parallel processes.
    programs: Option<Vec<String>>,
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        let number = |name: &str, default: u64| -> anyhow::Result<u64> {
            match std::env::var(name) {
                Ok(text) => {
                    let text = text.trim();
                    let parsed = match text.strip_prefix("0x") {
                        Some(hex) => u64::from_str_radix(hex, 16),
                        None => text.parse(),
                    };
                    parsed.with_context(|| format!("{name} = {text:?}: not a number"))
                }
                Err(_) => Ok(default),
            }
        };
        let only = match std::env::var("OVERLAY_FUZZ_ONLY") {
            Ok(text) => {
                let (program, index) = text.split_once(':').context("OVERLAY_FUZZ_ONLY must be program:index")?;
                Some((program.to_owned(), index.parse().context("OVERLAY_FUZZ_ONLY index")?))
            }
            Err(_) => None,
        };
        let dump = std::env::var("OVERLAY_FUZZ_DUMP").ok().map(|code| code.parse()).transpose().context("OVERLAY_FUZZ_DUMP")?;
        let programs = std::env::var("OVERLAY_FUZZ_PROGRAMS").ok().map(|list| list.split(',').map(|name| name.trim().to_owned()).collect());
        Ok(Settings {
            seed: number("OVERLAY_FUZZ_SEED", DEFAULT_SEED)?,
            frames: number("OVERLAY_FUZZ_FRAMES", DEFAULT_FRAMES)?,
            only,
            dump,
            programs,
        })
    }
}

/// The fuzzed node: a namespace with the underlay veth and three ports, the
/// datapath loaded (not attached) with the world's configuration applied,
/// and packet sockets on the container sides and the underlay's far end.
struct Node {
    datapath: Datapath,
    ifindex: HashMap<&'static str, u32>,
    captures: Vec<(&'static str, OwnedFd)>,
    netns: Netns,
}

impl Node {
    fn start(world: &World) -> anyhow::Result<Node> {
        let netns = Netns::new("hardfuzz", "node")?;
        // No IPv6 on any device: no autoconfiguration traffic on the captures.
        netns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        netns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        netns.ip(&["link", "add", UNDERLAY, "address", &world.underlay_mac.to_string(), "type", "veth", "peer", "name", UNDERLAY_PEER])?;
        netns.ip(&["addr", "add", &format!("{}/24", world.vtep), "dev", UNDERLAY])?;
        for peer in &world.peers {
            if let Some(mac) = peer.underlay_mac {
                netns.ip(&["neigh", "add", &peer.vtep.to_string(), "lladdr", &mac.to_string(), "dev", UNDERLAY, "nud", "permanent"])?;
            }
        }
        for (port, container) in CONTAINER_SIDES {
            netns.ip(&["link", "add", port, "type", "veth", "peer", "name", container])?;
        }
        let devices: Vec<&'static str> =
            [UNDERLAY, UNDERLAY_PEER].into_iter().chain(CONTAINER_SIDES.iter().flat_map(|&(p, c)| [p, c])).collect();
        for device in &devices {
            netns.ip(&["link", "set", device, "up"])?;
        }
        // Ports take any frame the generators make: a clone longer than a
        // veth's MTU would be dropped by the kernel, not by the datapath.
        // (The underlay keeps 1500: encapsulation judges sizes by its route.)
        for (port, container) in CONTAINER_SIDES {
            for device in [port, container] {
                netns.ip(&["link", "set", device, "mtu", "9000"])?;
            }
        }
        netns.sysctl(&format!("net.ipv4.conf.{UNDERLAY}.forwarding"), "1")?;

        let _inside = InsideNetns::enter(&netns)?;
        let path = Path::new("fuzz.toml");
        let config = Config::parse(&world.config_toml("fuzz", UNDERLAY), path)?;
        let resolved = ResolvedConfig::resolve(config, path)?;
        let mut datapath = Datapath::load(log::LevelFilter::Info)?;
        datapath.apply(&MapState::from_config(&resolved, &MapState::default())?)?;
        // What the agent's attach writes for XDP (nothing is attached here).
        datapath.set_underlay_mac(Some(world.underlay_mac.0))?;
        let mut ifindex = HashMap::new();
        for device in devices {
            ifindex.insert(device, netdev::ifindex(device).with_context(|| format!("no {device} in {}", netns.name()))?);
        }
        let mut captures = Vec::new();
        for device in ["q1", "q2", "q3", UNDERLAY_PEER] {
            captures.push((device, packet_socket(ifindex[device])?));
        }
        drop(_inside);
        Ok(Node { datapath, ifindex, captures, netns })
    }

    fn run(&self, program: Program, port: &str, frame: &[u8]) -> Result<TestRunOutcome, overlay::datapath::DatapathError> {
        match program {
            Program::Endpoint => self.datapath.test_endpoint(frame, self.ifindex[port], 1),
            Program::DecapXdp => self.datapath.test_decap(frame, 1),
            Program::DecapTc => self.datapath.test_decap_tc(frame, self.ifindex[UNDERLAY]),
            Program::UnderlayFlood => self.datapath.test_underlay_flood(frame, self.ifindex[UNDERLAY]),
        }
    }

    /// What arrived on the capture sockets: at least `expected` frames
    /// (waiting up to a second for clones still on their way), then
    /// whatever else is queued.
    fn arrivals(&self, expected: usize) -> anyhow::Result<Vec<(&'static str, Vec<u8>)>> {
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut arrived = Vec::new();
        loop {
            for (device, socket) in &self.captures {
                for frame in receive_queued(socket)? {
                    arrived.push((*device, frame));
                }
            }
            if arrived.len() >= expected || Instant::now() >= deadline {
                return Ok(arrived);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// One frame's run, as the invariants see it.
struct Observed<'a> {
    program: Program,
    port: &'static str,
    input: &'a [u8],
    action: u32,
    output: &'a [u8],
    /// The one reason counted, if exactly one packet was.
    reason: Option<Reason>,
    arrived: &'a [(&'static str, Vec<u8>)],
}

fn container_side(port: &str) -> &'static str {
    CONTAINER_SIDES.iter().find(|(p, _)| *p == port).map(|&(_, c)| c).unwrap()
}

fn name_of(reason: Reason) -> String {
    format!("{} ({})", reason.info().map_or("unknown", |i| i.name), reason.0)
}

fn mac_at(frame: &[u8], at: usize) -> Mac {
    Mac(frame[at..at + 6].try_into().unwrap())
}

/// Clones that arrived must be exactly `inner` on the container sides of
/// `ports`, one each, and nothing else anywhere.
fn check_clones(arrived: &[(&'static str, Vec<u8>)], inner: &[u8], ports: &[&'static str], wrong: &mut Vec<String>) {
    let mut expected: Vec<&'static str> = ports.iter().map(|p| container_side(p)).collect();
    for (device, frame) in arrived {
        match expected.iter().position(|d| d == device) {
            Some(i) if frame == inner => {
                expected.remove(i);
            }
            _ => wrong.push(format!("unexpected frame on {device}: {}", frames::hex_head(frame, 64))),
        }
    }
    if !expected.is_empty() {
        wrong.push(format!("no copy arrived on {expected:?}"));
    }
}

/// What is wrong with a run of a program on the underlay.
fn check_underlay(world: &World, seen: &Observed) -> Vec<String> {
    let mut wrong = Vec::new();
    let program = seen.program;
    let judged = oracle::judge_underlay(seen.input, world);
    let Some(reason) = seen.reason else {
        // Only the flood program leaves frames to others, untouched.
        if program != Program::UnderlayFlood || seen.action != TC_ACT_OK || seen.output != seen.input || !seen.arrived.is_empty() {
            wrong.push("not counted, yet acted on".to_owned());
        }
        return wrong;
    };
    let admitted = match judged {
        Underlay::Admitted { vni, inner } => Some((vni, inner)),
        _ => None,
    };
    let refusal = match judged {
        Underlay::NotOurs => "not ours".to_owned(),
        Underlay::Refused(why) => format!("refused: {why}"),
        Underlay::Admitted { .. } => String::new(),
    };
    let expect_action = |action: u32, wrong: &mut Vec<String>| {
        if seen.action != action {
            wrong.push(format!("action {} with {}, expected {action}", seen.action, name_of(reason)));
        }
    };
    match reason {
        Reason::FORWARDED if program != Program::UnderlayFlood => {
            expect_action(program.redirect(), &mut wrong);
            match admitted {
                None => wrong.push(format!("delivered a frame the oracle {refusal}")),
                Some((vni, inner)) => {
                    if seen.output != inner {
                        wrong.push(format!("output is not the inner frame: {}", frames::difference(inner, seen.output).unwrap_or_default()));
                    }
                    let dst = mac_at(inner, 0);
                    if world.local(vni, dst).is_none() && dst != frames::BROADCAST {
                        wrong.push(format!("delivered to {dst}, no local endpoint of VNI {vni}"));
                    }
                }
            }
            if !seen.arrived.is_empty() {
                wrong.push(format!("{} clone(s) besides the redirect", seen.arrived.len()));
            }
        }
        Reason::FLOOD_HANDOFF if program == Program::DecapXdp => {
            expect_action(XDP_PASS, &mut wrong);
            if seen.output != seen.input {
                wrong.push("handed off changed".to_owned());
            }
            match admitted {
                Some((_, inner)) if inner[0] & 1 == 1 => {}
                Some(_) => wrong.push("handed off a unicast inner frame".to_owned()),
                None => wrong.push(format!("handed off a frame the oracle {refusal}")),
            }
        }
        Reason::FLOODED if program != Program::DecapXdp => {
            expect_action(TC_ACT_SHOT, &mut wrong);
            match admitted {
                Some((vni, inner)) if inner[0] & 1 == 1 => check_clones(seen.arrived, inner, &world.ports_of_vni(vni), &mut wrong),
                Some(_) => wrong.push("flooded a unicast inner frame".to_owned()),
                None => wrong.push(format!("flooded a frame the oracle {refusal}")),
            }
        }
        Reason::PASSED if program != Program::UnderlayFlood => {
            expect_action(program.pass(), &mut wrong);
            if judged != Underlay::NotOurs {
                wrong.push(format!("passed to the stack a frame that is ours ({judged:?})"));
            }
            if seen.output != seen.input {
                wrong.push("passed changed".to_owned());
            }
        }
        reason if reason.is_drop() && reason.info().is_some() => {
            expect_action(program.drop(), &mut wrong);
            if judged == Underlay::NotOurs {
                wrong.push("dropped a frame that is not ours (the stack's)".to_owned());
            }
        }
        reason => wrong.push(format!("reason {} is not one this program gives", name_of(reason))),
    }
    if reason.is_drop() && !seen.arrived.is_empty() {
        wrong.push(format!("dropped, yet {} frame(s) arrived", seen.arrived.len()));
    }
    wrong
}

/// What is wrong with a run of the endpoint program on `seen.port`.
fn check_endpoint(world: &World, seen: &Observed) -> Vec<String> {
    let mut wrong = Vec::new();
    let Some(reason) = seen.reason else {
        return vec!["not counted".to_owned()];
    };
    let vni = world.port_vni(seen.port);
    let input = seen.input;
    let dst = mac_at(input, 0);
    let src = mac_at(input, 6);
    let expect_action = |action: u32, wrong: &mut Vec<String>| {
        if seen.action != action {
            wrong.push(format!("action {} with {}, expected {action}", seen.action, name_of(reason)));
        }
    };
    let answered_to_sender = |wrong: &mut Vec<String>| {
        if seen.output.len() < 14 || mac_at(seen.output, 0) != src {
            wrong.push("answer not addressed to the sender".to_owned());
        }
    };
    let flooded = |wrong: &mut Vec<String>, with_peers: bool| {
        let others: Vec<&'static str> = world.ports_of_vni(vni).into_iter().filter(|p| *p != seen.port).collect();
        let peers = if with_peers { world.peers.iter().filter(|p| p.carries(vni) && p.underlay_mac.is_some()).count() } else { 0 };
        let (mut local, mut remote) = (0, 0);
        for (device, frame) in seen.arrived {
            if *device == UNDERLAY_PEER {
                remote += 1;
                for problem in oracle::check_encapsulated(frame, input, world, vni, None) {
                    wrong.push(format!("flooded copy to a peer: {problem}"));
                }
            } else if others.iter().any(|p| container_side(p) == *device) && frame == input {
                local += 1;
            } else {
                wrong.push(format!("unexpected frame on {device}: {}", frames::hex_head(frame, 64)));
            }
        }
        if (local, remote) != (others.len(), peers) {
            wrong.push(format!("copies: {local} local and {remote} to peers, expected {} and {peers}", others.len()));
        }
    };
    match reason {
        Reason::FORWARDED => {
            expect_action(TC_ACT_REDIRECT, &mut wrong);
            match world.remote_owner(vni, dst) {
                Some(owner) => wrong.extend(oracle::check_encapsulated(seen.output, input, world, vni, Some(owner.vtep))),
                None => wrong.push(format!("encapsulated to {dst}, which no peer has in VNI {vni}")),
            }
        }
        Reason::LOCAL_SWITCHED => {
            expect_action(TC_ACT_REDIRECT, &mut wrong);
            if world.local(vni, dst).is_none() {
                wrong.push(format!("switched to {dst}, no local endpoint of VNI {vni}"));
            }
            if seen.output != input {
                wrong.push("switched frame changed".to_owned());
            }
        }
        Reason::ARP_REPLIED => {
            expect_action(TC_ACT_REDIRECT, &mut wrong);
            answered_to_sender(&mut wrong);
            let reply = seen.output;
            let ok = reply.len() >= 42 && reply[12..14] == [0x08, 0x06] && reply[20..22] == [0, 2];
            let owner = ok.then(|| (mac_at(reply, 22), Ipv4Addr::new(reply[28], reply[29], reply[30], reply[31])));
            if !owner.is_some_and(|(mac, ip)| world.all_endpoints().iter().any(|e| e.vni == vni && e.mac == mac && e.ip == ip)) {
                wrong.push(format!("ARP answer {owner:?} is not an endpoint of VNI {vni}"));
            }
        }
        Reason::ND_REPLIED => {
            expect_action(TC_ACT_REDIRECT, &mut wrong);
            answered_to_sender(&mut wrong);
            let answer = seen.output;
            let ok = answer.len() >= 86 && answer[12..14] == [0x86, 0xdd] && answer[54] == 136 && answer[78] == 2;
            let owner = ok.then(|| (mac_at(answer, 80), std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&answer[62..78]).unwrap())));
            if !owner.is_some_and(|(mac, ip)| world.all_endpoints().iter().any(|e| e.vni == vni && e.mac == mac && e.ipv6 == ip)) {
                wrong.push(format!("neighbour advertisement {owner:?} is not an endpoint of VNI {vni}"));
            }
        }
        Reason::ICMP_TOO_BIG_SENT => {
            expect_action(TC_ACT_REDIRECT, &mut wrong);
            answered_to_sender(&mut wrong);
            if input.len() <= 1500 - 50 + 14 {
                wrong.push(format!("too big? {} bytes fit the underlay once encapsulated", input.len()));
            }
        }
        Reason::FLOODED => {
            expect_action(TC_ACT_SHOT, &mut wrong);
            flooded(&mut wrong, true);
        }
        // A flood too big for the underlay reaches the local ports only;
        // a unicast one nothing.
        Reason::TOO_BIG_FOR_UNDERLAY if world.local(vni, dst).is_none() && world.remote_owner(vni, dst).is_none() => {
            expect_action(TC_ACT_SHOT, &mut wrong);
            flooded(&mut wrong, false);
        }
        reason if reason.is_drop() && reason.info().is_some() => {
            expect_action(TC_ACT_SHOT, &mut wrong);
            if !seen.arrived.is_empty() {
                wrong.push(format!("dropped, yet {} frame(s) arrived", seen.arrived.len()));
            }
        }
        reason => wrong.push(format!("reason {} is not one this program gives", name_of(reason))),
    }
    wrong
}

/// How many clones a verdict sends: the run waits for them.
fn expected_clones(world: &World, program: Program, port: &str, input: &[u8], reason: Option<Reason>) -> usize {
    match (program, reason) {
        (Program::DecapTc | Program::UnderlayFlood, Some(Reason::FLOODED)) => match oracle::judge_underlay(input, world) {
            Underlay::Admitted { vni, .. } => world.ports_of_vni(vni).len(),
            _ => 0,
        },
        (Program::Endpoint, Some(Reason::FLOODED)) => {
            let vni = world.port_vni(port);
            world.ports_of_vni(vni).len() - 1 + world.peers.iter().filter(|p| p.carries(vni) && p.underlay_mac.is_some()).count()
        }
        (Program::Endpoint, Some(Reason::TOO_BIG_FOR_UNDERLAY)) => world.ports_of_vni(world.port_vni(port)).len() - 1,
        _ => 0,
    }
}

struct Failure {
    index: u64,
    problems: Vec<String>,
    input: Vec<u8>,
    output: Vec<u8>,
}

/// One program's run: frames tried, verdicts by reason, failures.
#[derive(Default)]
struct Tally {
    frames: u64,
    /// Frames BPF_PROG_TEST_RUN itself refused (shorter than the headers
    /// the kernel needs to build an skb): not run, not failures.
    refused_by_test_run: u64,
    reasons: BTreeMap<String, u64>,
    failures: u64,
    shown: Vec<Failure>,
    dumped: u32,
    elapsed: Duration,
}

fn fuzz_program(node: &Node, world: &World, settings: &Settings, program: Program) -> anyhow::Result<Tally> {
    let mut tally = Tally::default();
    let indices: Box<dyn Iterator<Item = u64>> = match &settings.only {
        Some((name, index)) if name == program.name() => Box::new(std::iter::once(*index)),
        Some(_) => Box::new(std::iter::empty()),
        None => Box::new(0..settings.frames),
    };
    let ports = world.ports();
    let _inside = InsideNetns::enter(&node.netns)?;
    node.arrivals(0)?;
    let started = Instant::now();
    let mut before = node.datapath.counters()?;
    for index in indices {
        let mut rng = Rng::for_frame(settings.seed, program.stream(), index);
        let port = *rng.pick(&ports);
        let input = match program {
            Program::Endpoint => generate::endpoint_frame(&mut rng, world, port),
            _ => generate::underlay_frame(&mut rng, world),
        };
        tally.frames += 1;
        if tally.frames % 100_000 == 0 {
            println!("{}: {} frames, {} failure(s), {:.0} s", program.name(), tally.frames, tally.failures, started.elapsed().as_secs_f64());
        }
        let outcome = match node.run(program, port, &input) {
            Ok(outcome) => outcome,
            Err(error) if input.len() < 14 + 40 => {
                let _ = error;
                tally.refused_by_test_run += 1;
                continue;
            }
            Err(error) => {
                tally.failures += 1;
                if tally.shown.len() < FAILURES_SHOWN {
                    tally.shown.push(Failure { index, problems: vec![format!("test run failed: {error}")], input, output: Vec::new() });
                }
                continue;
            }
        };
        let after = node.datapath.counters()?;
        let counted: Counters = after.since(&before);
        before = after;
        let mut problems = Vec::new();
        let reason = match counted.rows.as_slice() {
            [] => None,
            [row] if row.packets == 1 && row.bytes == input.len() as u64 && row.direction == program.direction() => Some(row.reason),
            rows => {
                problems.push(format!("counted {rows:?}, expected one packet of {} bytes under one reason", input.len()));
                None
            }
        };
        let arrived = node.arrivals(expected_clones(world, program, port, &input, reason))?;
        *tally.reasons.entry(reason.map_or("(uncounted)".to_owned(), name_of)).or_default() += 1;
        if settings.dump.is_some() && reason.map(|r| r.0) == settings.dump && tally.dumped < 3 {
            tally.dumped += 1;
            println!("{} frame {index}: {}\n{}", program.name(), name_of(reason.unwrap()), frames::hex(&input));
        }
        let seen = Observed { program, port, input: &input, action: outcome.action, output: &outcome.frame, reason, arrived: &arrived };
        if problems.is_empty() {
            problems = match program {
                Program::Endpoint => check_endpoint(world, &seen),
                _ => check_underlay(world, &seen),
            };
        }
        if !problems.is_empty() {
            tally.failures += 1;
            if tally.shown.len() < FAILURES_SHOWN {
                tally.shown.push(Failure { index, problems, input: input.clone(), output: outcome.frame.clone() });
            }
        }
    }
    tally.elapsed = started.elapsed();
    Ok(tally)
}

#[test]
fn every_program_keeps_its_invariants_under_fuzzing() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let world = World::standard();
    let node = Node::start(&world)?;
    println!("fuzzing with seed {:#x}, {} frames per program", settings.seed, settings.frames);
    let mut report = Vec::new();
    let mut failed = Vec::new();
    for program in Program::ALL {
        if settings.programs.as_ref().is_some_and(|names| !names.iter().any(|name| name == program.name())) {
            continue;
        }
        let tally = fuzz_program(&node, &world, &settings, program)?;
        let rate = tally.frames as f64 / tally.elapsed.as_secs_f64().max(1e-9);
        println!(
            "{}: {} frames in {:.1} s ({rate:.0} frames/s), {} refused by BPF_PROG_TEST_RUN, {} failure(s)",
            program.name(),
            tally.frames,
            tally.elapsed.as_secs_f64(),
            tally.refused_by_test_run,
            tally.failures
        );
        for (reason, count) in &tally.reasons {
            println!("    {count:>9}  {reason}");
        }
        for failure in &tally.shown {
            failed.push(format!(
                "{} frame {} (replay: OVERLAY_FUZZ_SEED={:#x} OVERLAY_FUZZ_ONLY={}:{}):\n  - {}\n  input ({} bytes):\n{}\n  output ({} bytes):\n{}",
                program.name(),
                failure.index,
                settings.seed,
                program.name(),
                failure.index,
                failure.problems.join("\n  - "),
                failure.input.len(),
                frames::hex_head(&failure.input, 128),
                failure.output.len(),
                frames::hex_head(&failure.output, 128),
            ));
        }
        report.push((program, tally.frames, tally.failures));
    }
    let total_failures: u64 = report.iter().map(|r| r.2).sum();
    assert!(
        total_failures == 0,
        "{total_failures} frame(s) broke an invariant (seed {:#x}; first ones shown):\n\n{}\n",
        settings.seed,
        failed.join("\n\n")
    );
    Ok(())
}
