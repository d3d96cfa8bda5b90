//! Packets through the real datapath programs, loaded into the kernel and run
//! on crafted frames with BPF_PROG_TEST_RUN (nothing is attached).
//!
//! Tests are tables, as Katran's and Cilium's BPF tests are: each row is a
//! name, the hook, an input frame, the expected action, the expected counted
//! reason, and the expected output (a frame, or a check of every field).
//! Every run also checks that exactly one counter moved: the expected
//! (direction, reason), by one packet of the input's length. A table runs
//! all its rows, prints `ok`/`FAIL` for each, and then fails listing every
//! row that did not match, with input and output in hex.
//!
//! Fixture: one network namespace per node (removed on drop, also when a
//! test panics) holding a veth underlay `ul0` with the node's VTEP address,
//! the peer VTEP as a permanent neighbour and IPv4 forwarding on (the
//! endpoint program's `bpf_fib_lookup` is a forwarding lookup), and two veth
//! endpoint ports `p1`/`p2` (peers `q1`/`q2`). The endpoint program runs in
//! the namespace of the ctx's ifindex, which the kernel looks up in the
//! calling thread's namespace, so endpoint runs enter the node's namespace
//! for their duration. Needs root.
use std::{
    collections::{BTreeSet, HashMap},
    fmt::{self, Write as _},
    fs::File,
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
    sync::{
        Once,
        atomic::{AtomicU32, Ordering},
    },
};

use anyhow::Context as _;
use overlay::{
    Config, Counters, Datapath, MapState, ResolvedConfig,
    datapath::{CounterRow, TestRunOutcome},
    netdev,
};
use overlay_common::{Direction, Reason};
use overlay_lab::{
    frames::{
        self, Arp, BROADCAST, ETHERNET_LEN, ETHERTYPE_IPV4, ETHERTYPE_IPV6, Ethernet, IPPROTO_ICMP,
        IPPROTO_TCP, IPPROTO_UDP, IPV4_LEN, IPV4_MORE_FRAGMENTS, Ipv4, Ipv6, Mac, Tcp, UDP_LEN, Udp,
        VXLAN_LEN, Vxlan, VxlanOverIpv4,
    },
    netns::{self, Netns},
};

// Hook return values (include/uapi/linux/bpf.h, pkt_cls.h).
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

/// IANA-assigned VXLAN port (RFC 7348 section 5).
const VXLAN_PORT: u16 = 4789;
/// The outer source port range RFC 7348 section 5 recommends (the IANA
/// dynamic range), which the configuration's default must be.
const SOURCE_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;
/// What encapsulation adds: outer Ethernet, IPv4, UDP and VXLAN headers.
const ENCAP_LEN: usize = ETHERNET_LEN + IPV4_LEN + UDP_LEN + VXLAN_LEN;
/// End of the outer UDP header in a VXLAN frame.
const UDP_END: usize = ETHERNET_LEN + IPV4_LEN + UDP_LEN;

const VNI: u32 = 100;
const UNKNOWN_VNI: u32 = 200;
const UNDERLAY: &str = "ul0";
/// Every device the fixture creates in a node's namespace.
const DEVICES: [&str; 6] = [UNDERLAY, "ul0peer", "p1", "q1", "p2", "q2"];

const NEAR_VTEP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const FAR_VTEP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const STRANGER_VTEP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 99);
const OTHER_UNDERLAY_HOST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 77);
const NEAR_UNDERLAY_MAC: Mac = Mac([0x02, 0xaa, 0xaa, 0xaa, 0xaa, 0x01]);
const FAR_UNDERLAY_MAC: Mac = Mac([0x02, 0xaa, 0xaa, 0xaa, 0xaa, 0x02]);

/// A container: the host-side port it hangs off, its MAC and IPv4 address.
#[derive(Clone, Copy, Debug)]
struct Endpoint {
    port: &'static str,
    mac: Mac,
    ip: Ipv4Addr,
}

const NEAR_1: Endpoint = Endpoint { port: "p1", mac: Mac([2, 0, 0, 0, 1, 1]), ip: Ipv4Addr::new(10, 10, 0, 1) };
const NEAR_2: Endpoint = Endpoint { port: "p2", mac: Mac([2, 0, 0, 0, 1, 2]), ip: Ipv4Addr::new(10, 10, 0, 3) };
const FAR_1: Endpoint = Endpoint { port: "p1", mac: Mac([2, 0, 0, 0, 2, 1]), ip: Ipv4Addr::new(10, 10, 0, 2) };
/// A container on the far node that neither configuration lists.
const UNLISTED_MAC: Mac = Mac([2, 0, 0, 0, 2, 9]);
const UNLISTED_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 9);
const UNKNOWN_MAC: Mac = Mac([2, 0, 0, 0, 9, 9]);
const UNKNOWN_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 77);

/// One node of the two-node overlay: its VTEP, its containers, and its peer's.
struct NodeSpec {
    role: &'static str,
    vtep: Ipv4Addr,
    underlay_mac: Mac,
    local: &'static [Endpoint],
    peer_role: &'static str,
    peer_vtep: Ipv4Addr,
    peer_underlay_mac: Mac,
    remote: &'static [Endpoint],
}

const NEAR: NodeSpec = NodeSpec {
    role: "near",
    vtep: NEAR_VTEP,
    underlay_mac: NEAR_UNDERLAY_MAC,
    local: &[NEAR_1, NEAR_2],
    peer_role: "far",
    peer_vtep: FAR_VTEP,
    peer_underlay_mac: FAR_UNDERLAY_MAC,
    remote: &[FAR_1],
};

const FAR: NodeSpec = NodeSpec {
    role: "far",
    vtep: FAR_VTEP,
    underlay_mac: FAR_UNDERLAY_MAC,
    local: &[FAR_1],
    peer_role: "near",
    peer_vtep: NEAR_VTEP,
    peer_underlay_mac: NEAR_UNDERLAY_MAC,
    remote: &[NEAR_1, NEAR_2],
};

impl NodeSpec {
    /// The node's configuration file (source port range and TTL left at
    /// their defaults, which the encapsulation checks hold to the RFC).
    fn config_toml(&self) -> String {
        let mut text = format!(
            "[node]\nname = \"{}\"\nunderlay_interface = \"{UNDERLAY}\"\nvtep_address = \"{}\"\nvxlan_port = {VXLAN_PORT}\n",
            self.role, self.vtep
        );
        for endpoint in self.local {
            let Endpoint { port, mac, ip } = endpoint;
            write!(text, "\n[[endpoints]]\ninterface = \"{port}\"\nmac = \"{mac}\"\nip = \"{ip}\"\nvni = {VNI}\n").unwrap();
        }
        write!(text, "\n[[peers]]\nname = \"{}\"\nvtep_address = \"{}\"\n", self.peer_role, self.peer_vtep).unwrap();
        for Endpoint { mac, ip, .. } in self.remote {
            write!(text, "\n  [[peers.endpoints]]\n  mac = \"{mac}\"\n  ip = \"{ip}\"\n  vni = {VNI}\n").unwrap();
        }
        text
    }
}

/// Namespace scope of this file: namespaces are `ovl-pkt-<pid>-<role><n>`.
const SCOPE: &str = "pkt";
/// Makes namespace names unique within the process, so tests may also run in parallel.
static NEXT_NODE: AtomicU32 = AtomicU32::new(0);

/// A node: its namespace and topology, and a datapath loaded (not attached)
/// with the node's configuration applied.
struct Node {
    spec: &'static NodeSpec,
    datapath: Datapath,
    /// The underlay device's MAC as the kernel reports it.
    underlay_mac: Mac,
    ifindex: HashMap<&'static str, u32>,
    // Last, so the namespace goes after everything that lives in it.
    netns: Netns,
}

impl Node {
    fn start(spec: &'static NodeSpec) -> anyhow::Result<Node> {
        // Guards cannot clean up after a SIGKILLed run; remove what such runs left.
        static SWEEP: Once = Once::new();
        SWEEP.call_once(|| {
            for name in netns::sweep_stale() {
                eprintln!("removed namespace {name} left by a killed run");
            }
        });
        let role = format!("{}{}", spec.role, NEXT_NODE.fetch_add(1, Ordering::Relaxed));
        let netns = Netns::new(SCOPE, &role)?;
        let (underlay_mac, peer_vtep, peer_mac) =
            (spec.underlay_mac.to_string(), spec.peer_vtep.to_string(), spec.peer_underlay_mac.to_string());
        netns.ip(&["link", "add", UNDERLAY, "address", &underlay_mac, "type", "veth", "peer", "name", "ul0peer"])?;
        netns.ip(&["addr", "add", &format!("{}/24", spec.vtep), "dev", UNDERLAY])?;
        netns.ip(&["neigh", "add", &peer_vtep, "lladdr", &peer_mac, "dev", UNDERLAY, "nud", "permanent"])?;
        netns.ip(&["link", "add", "p1", "type", "veth", "peer", "name", "q1"])?;
        netns.ip(&["link", "add", "p2", "type", "veth", "peer", "name", "q2"])?;
        for device in DEVICES {
            netns.ip(&["link", "set", device, "up"])?;
        }
        netns.sysctl(&format!("net.ipv4.conf.{UNDERLAY}.forwarding"), "1")?;
        // `ip netns exec` mounts a sysfs of the namespace; ours shows the host's.
        let address = netns.exec("cat", &[&format!("/sys/class/net/{UNDERLAY}/address")])?;
        let underlay_mac = String::from_utf8_lossy(&address.stdout).parse::<Mac>().map_err(anyhow::Error::msg)?;

        let (datapath, ifindex) = {
            let _inside = InsideNetns::enter(&netns)?;
            let path = Path::new("packets.toml");
            let config = Config::parse(&spec.config_toml(), path)?;
            let resolved = ResolvedConfig::resolve(config, path)?;
            let mut datapath = Datapath::load(log::LevelFilter::Info)?;
            datapath.apply(&MapState::from_config(&resolved))?;
            let mut ifindex = HashMap::new();
            for device in DEVICES {
                let index = netdev::ifindex(device).with_context(|| format!("no {device} in {}", netns.name()))?;
                ifindex.insert(device, index);
            }
            (datapath, ifindex)
        };
        Ok(Node { spec, datapath, underlay_mac, ifindex, netns })
    }

    /// What this node's encapsulation toward its peer must write.
    fn tunnel(&self) -> Tunnel {
        Tunnel {
            src_mac: self.underlay_mac,
            dst_mac: self.spec.peer_underlay_mac,
            src_vtep: self.spec.vtep,
            dst_vtep: self.spec.peer_vtep,
            vni: VNI,
        }
    }

    /// Runs `frame` through `hook` `repeat` times; returns the outcome and
    /// the counters that moved meanwhile.
    fn run(&self, hook: Hook, frame: &[u8], repeat: u32) -> anyhow::Result<(TestRunOutcome, Counters)> {
        let before = self.datapath.counters()?;
        let outcome = match hook {
            Hook::Decap => self.datapath.test_decap(frame, repeat)?,
            Hook::Port(device) => {
                let ifindex = *self.ifindex.get(device).with_context(|| format!("the fixture has no device {device}"))?;
                let _inside = InsideNetns::enter(&self.netns)?;
                self.datapath.test_endpoint(frame, ifindex, repeat)?
            }
        };
        let counted = self.datapath.counters()?.since(&before);
        Ok((outcome, counted))
    }
}

/// The calling thread inside a network namespace until dropped, then back
/// in the namespace it came from (setns only moves the calling thread).
struct InsideNetns {
    home: File,
}

impl InsideNetns {
    fn enter(target: &Netns) -> anyhow::Result<InsideNetns> {
        let home = File::open("/proc/thread-self/ns/net").context("opening this thread's network namespace")?;
        let path = format!("/var/run/netns/{}", target.name());
        let target = File::open(&path).with_context(|| format!("opening {path}"))?;
        netns::enter(&target)?;
        Ok(InsideNetns { home })
    }
}

impl Drop for InsideNetns {
    fn drop(&mut self) {
        if let Err(error) = netns::enter(&self.home) {
            // A thread left behind would run whatever comes next in a test namespace.
            if std::thread::panicking() {
                eprintln!("returning to the original network namespace: {error:#}");
            } else {
                panic!("returning to the original network namespace: {error:#}");
            }
        }
    }
}

/// Where a frame is run: the XDP program of the underlay, or the TC
/// program as if the frame arrived on the named port.
#[derive(Clone, Copy, Debug)]
enum Hook {
    Decap,
    Port(&'static str),
}

impl Hook {
    fn direction(self) -> Direction {
        match self {
            Hook::Decap => Direction::FROM_UNDERLAY,
            Hook::Port(_) => Direction::FROM_ENDPOINT,
        }
    }

    fn action_name(self, action: u32) -> String {
        let name = match (self, action) {
            (Hook::Decap, XDP_DROP) => "XDP_DROP",
            (Hook::Decap, XDP_PASS) => "XDP_PASS",
            (Hook::Decap, XDP_REDIRECT) => "XDP_REDIRECT",
            (Hook::Decap, 0) => "XDP_ABORTED",
            (Hook::Port(_), TC_ACT_SHOT) => "TC_ACT_SHOT",
            (Hook::Port(_), TC_ACT_REDIRECT) => "TC_ACT_REDIRECT",
            (Hook::Port(_), 0) => "TC_ACT_OK",
            _ => "unexpected",
        };
        format!("{name} ({action})")
    }
}

/// Looks at (input, output) and lists what is wrong.
type OutputCheck = dyn Fn(&[u8], &[u8]) -> Vec<String>;

/// What the output frame must be.
enum Output {
    /// The input, untouched.
    Unchanged,
    /// Exactly this frame.
    Frame(Vec<u8>),
    /// A check of (input, output) that lists what is wrong.
    Check(Box<OutputCheck>),
    /// Dropped: the bytes left behind do not matter.
    Ignored,
}

/// One row of a table.
struct Case {
    name: String,
    hook: Hook,
    input: Vec<u8>,
    action: u32,
    reason: Reason,
    output: Output,
}

impl Case {
    /// A case for `input` run through `hook`; its expectations follow.
    fn given(name: impl Into<String>, hook: Hook, input: Vec<u8>) -> Given {
        Given { name: name.into(), hook, input }
    }
}

/// A case before its expectations.
struct Given {
    name: String,
    hook: Hook,
    input: Vec<u8>,
}

impl Given {
    fn expect(self, action: u32, reason: Reason, output: Output) -> Case {
        Case { name: self.name, hook: self.hook, input: self.input, action, reason, output }
    }
}

/// Runs one case. `Ok` with the output frame when everything matched,
/// otherwise `Err` with what was expected and seen, and both frames in hex.
fn run_case(node: &Node, case: &Case) -> Result<Vec<u8>, String> {
    let (outcome, counted) =
        node.run(case.hook, &case.input, 1).map_err(|error| format!("{}: the test run failed: {error:#}", case.name))?;
    let mut wrong = Vec::new();
    if outcome.action != case.action {
        wrong.push(format!(
            "action: expected {}, seen {}",
            case.hook.action_name(case.action),
            case.hook.action_name(outcome.action)
        ));
    }
    let expected_count =
        CounterRow { direction: case.hook.direction(), reason: case.reason, packets: 1, bytes: case.input.len() as u64 };
    if counted.rows != [expected_count] {
        wrong.push(format!(
            "counters: expected only {}, counted {}",
            describe_row(&expected_count),
            describe_counts(&counted)
        ));
    }
    match &case.output {
        Output::Unchanged => wrong.extend(frames::difference(&case.input, &outcome.frame).map(|d| format!("output should be the input unchanged: {d}"))),
        Output::Frame(expected) => wrong.extend(frames::difference(expected, &outcome.frame).map(|d| format!("output: {d}"))),
        Output::Check(check) => wrong.extend(check(&case.input, &outcome.frame)),
        Output::Ignored => {}
    }
    if wrong.is_empty() {
        return Ok(outcome.frame);
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
fn run_table(node: &Node, cases: &[Case]) {
    let results: Vec<Result<Vec<u8>, String>> = cases.iter().map(|case| run_case(node, case)).collect();
    report(cases.iter().map(|case| case.name.as_str()).zip(&results));
}

/// Prints `ok`/`FAIL` per case and panics with every failure.
fn report<'a, T: 'a>(results: impl IntoIterator<Item = (&'a str, &'a Result<T, String>)>) {
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

fn reason_name(reason: Reason) -> String {
    format!("{} ({})", reason.info().map_or("unknown", |info| info.name), reason.0)
}

fn describe_row(row: &CounterRow) -> String {
    format!("{} {} +{} ({} bytes)", row.direction.name(), reason_name(row.reason), row.packets, row.bytes)
}

fn describe_counts(counts: &Counters) -> String {
    if counts.rows.is_empty() {
        return "nothing".to_owned();
    }
    counts.rows.iter().map(describe_row).collect::<Vec<_>>().join(", ")
}

/// The outer headers one node's encapsulation toward its peer must write.
#[derive(Clone, Copy, Debug)]
struct Tunnel {
    src_mac: Mac,
    dst_mac: Mac,
    src_vtep: Ipv4Addr,
    dst_vtep: Ipv4Addr,
    vni: u32,
}

/// Output check: `input` encapsulated by `tunnel`, every outer field right.
fn encapsulated(tunnel: Tunnel) -> Output {
    Output::Check(Box::new(move |input, output| check_encapsulation(&tunnel, input, output)))
}

/// Field-by-field comparison that collects every mismatch.
#[derive(Default)]
struct Mismatches(Vec<String>);

impl Mismatches {
    fn check<T: PartialEq + fmt::Debug>(&mut self, field: &str, expected: T, seen: T) {
        if expected != seen {
            self.0.push(format!("{field}: expected {expected:?}, seen {seen:?}"));
        }
    }

    fn check_hex<T: PartialEq + fmt::LowerHex>(&mut self, field: &str, expected: T, seen: T) {
        if expected != seen {
            self.0.push(format!("{field}: expected {expected:#x}, seen {seen:#x}"));
        }
    }
}

/// Every outer field of RFC 7348 section 5's frame format, as this node
/// must write them, and the inner frame byte for byte.
fn check_encapsulation(tunnel: &Tunnel, input: &[u8], output: &[u8]) -> Vec<String> {
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
    wrong.check_hex("IPv4 identification", 0, outer.ip_identification);
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
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| i as u8).collect()
}

/// An ICMP echo request between two containers, as `ping` sends it.
fn ping(from: Endpoint, to: Endpoint) -> Vec<u8> {
    ping_to(from, to.mac, to.ip)
}

fn ping_to(from: Endpoint, dst_mac: Mac, dst_ip: Ipv4Addr) -> Vec<u8> {
    let icmp = frames::icmp_echo_request(0x4242, 1, &payload(56));
    Ethernet { dst: dst_mac, src: from.mac, ethertype: ETHERTYPE_IPV4 }
        .frame(&Ipv4::new(IPPROTO_ICMP, from.ip, dst_ip).packet(&icmp))
}

/// A UDP datagram from a container, `payload_len` bytes of payload.
fn udp_from(from: Endpoint, dst_mac: Mac, dst_ip: Ipv4Addr, udp: Udp, payload_len: usize) -> Vec<u8> {
    Ethernet { dst: dst_mac, src: from.mac, ethertype: ETHERTYPE_IPV4 }
        .frame(&Ipv4::new(IPPROTO_UDP, from.ip, dst_ip).packet(&udp.datagram(&payload(payload_len))))
}

/// A UDP datagram between containers whose IPv4 packet is `ip_length` bytes.
fn udp_of_ip_length(from: Endpoint, to: Endpoint, ip_length: usize) -> Vec<u8> {
    udp_from(from, to.mac, to.ip, Udp { src_port: 40000, dst_port: 5201 }, ip_length - IPV4_LEN - UDP_LEN)
}

/// UDP over IPv6 between containers (link-local addresses).
fn udp6_from(from: Endpoint, dst_mac: Mac, dst_ip: Ipv6Addr, udp: Udp) -> Vec<u8> {
    let src_ip = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, u16::from(from.mac.0[5]));
    let ip = Ipv6 { next_header: IPPROTO_UDP, hop_limit: 255, src: src_ip, dst: dst_ip };
    Ethernet { dst: dst_mac, src: from.mac, ethertype: ETHERTYPE_IPV6 }.frame(&ip.packet(&udp.datagram(&payload(32))))
}

/// The outer IPv4 header of VXLAN from the far VTEP to the near one.
fn from_far_vtep() -> Ipv4 {
    Ipv4::new(IPPROTO_UDP, FAR_VTEP, NEAR_VTEP)
}

/// The outer UDP header of VXLAN (some flow's source port).
fn to_vxlan_port() -> Udp {
    Udp { src_port: 51234, dst_port: VXLAN_PORT }
}

/// A frame on the near node's underlay, from the far VTEP's device.
fn on_underlay(ethertype: u16, packet: &[u8]) -> Vec<u8> {
    Ethernet { dst: NEAR_UNDERLAY_MAC, src: FAR_UNDERLAY_MAC, ethertype }.frame(packet)
}

/// `inner` in `vxlan` in UDP to the VXLAN port in `ip`, on the near underlay.
fn vxlan_frame(ip: &Ipv4, vxlan: Vxlan, inner: &[u8]) -> Vec<u8> {
    on_underlay(ETHERTYPE_IPV4, &ip.packet(&to_vxlan_port().datagram(&vxlan.packet(inner))))
}

/// A well-formed VXLAN frame from the far VTEP carrying `inner` in our VNI.
fn vxlan_from_far(inner: &[u8]) -> Vec<u8> {
    vxlan_frame(&from_far_vtep(), Vxlan::new(VNI), inner)
}

// Tests.

/// Loading runs the verifier over both programs; a repeated test run
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
        let output = run_case(&near, &case).unwrap_or_else(|failure| panic!("{failure}"));
        VxlanOverIpv4::parse(&output).expect("run_case checked the outer headers").udp_src_port
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

/// What a container sends that is not encapsulated: ARP requests answered
/// from the neighbour table (ARP suppression), frames to a container on the
/// same node switched locally, and every drop with its counted reason.
#[test]
fn endpoint_port_verdicts() -> anyhow::Result<()> {
    let near = Node::start(&NEAR)?;
    let p1 = Hook::Port(NEAR_1.port);
    let shot = |name: &str, hook: Hook, frame: Vec<u8>, reason: Reason| {
        Case::given(name, hook, frame).expect(TC_ACT_SHOT, reason, Output::Ignored)
    };
    let answered = |name: &str, asked: Endpoint| {
        Case::given(name, p1, Arp::request(NEAR_1.mac, NEAR_1.ip, asked.ip).frame(BROADCAST)).expect(
            TC_ACT_REDIRECT,
            Reason::ARP_REPLIED,
            Output::Frame(Arp::reply(asked.mac, asked.ip, NEAR_1.mac, NEAR_1.ip).frame(NEAR_1.mac)),
        )
    };
    let mdns = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0xfb);
    let dhcp = Udp { src_port: 68, dst_port: 67 };
    run_table(
        &near,
        &[
            answered("ARP request for a remote endpoint is answered with its MAC", FAR_1),
            answered("ARP request for the other local endpoint is answered with its MAC", NEAR_2),
            shot(
                "ARP request for an address nobody in the VNI owns",
                p1,
                Arp::request(NEAR_1.mac, NEAR_1.ip, UNKNOWN_IP).frame(BROADCAST),
                Reason::ARP_UNKNOWN_TARGET,
            ),
            shot(
                "gratuitous ARP (sender IP = target IP)",
                p1,
                Arp::request(NEAR_1.mac, NEAR_1.ip, NEAR_1.ip).frame(BROADCAST),
                Reason::ARP_ANNOUNCEMENT,
            ),
            shot(
                "ARP probe (RFC 5227: sender IP 0.0.0.0)",
                p1,
                Arp::request(NEAR_1.mac, Ipv4Addr::UNSPECIFIED, NEAR_1.ip).frame(BROADCAST),
                Reason::ARP_ANNOUNCEMENT,
            ),
            Case::given("unicast to the other local endpoint is switched locally, unchanged", p1, ping(NEAR_1, NEAR_2))
                .expect(TC_ACT_REDIRECT, Reason::LOCAL_SWITCHED, Output::Unchanged),
            shot("unicast to an unknown MAC", p1, ping_to(NEAR_1, UNKNOWN_MAC, FAR_1.ip), Reason::UNKNOWN_DESTINATION),
            shot(
                "IPv4 broadcast (DHCP discover to ff:ff:ff:ff:ff:ff)",
                p1,
                udp_from(NEAR_1, BROADCAST, Ipv4Addr::BROADCAST, dhcp, 240),
                Reason::FLOOD_UNSUPPORTED,
            ),
            shot(
                "IPv6 multicast (mDNS to 33:33:00:00:00:fb)",
                p1,
                udp6_from(NEAR_1, Mac([0x33, 0x33, 0, 0, 0, 0xfb]), mdns, Udp { src_port: 5353, dst_port: 5353 }),
                Reason::FLOOD_UNSUPPORTED,
            ),
            shot("frame on a port with no endpoint (q1)", Hook::Port("q1"), ping(NEAR_1, FAR_1), Reason::PORT_NOT_CONFIGURED),
            shot(
                "IPv4 of 1500 bytes, not GSO: 1550 once encapsulated, over the 1500 underlay MTU",
                p1,
                udp_of_ip_length(NEAR_1, FAR_1, 1500),
                Reason::TOO_BIG_FOR_UNDERLAY,
            ),
        ],
    );
    Ok(())
}

/// RFC 7348 sections 4.3 and 5 on receipt: VXLAN from a configured peer to
/// our port is delivered as exactly the inner frame; what breaks a rule is
/// dropped with its reason; what is not VXLAN for us passes untouched.
#[test]
fn decapsulation_verdicts() -> anyhow::Result<()> {
    let near = Node::start(&NEAR)?;
    let inner = ping(FAR_1, NEAR_1);
    let delivered = |name: &str, frame: Vec<u8>, inner: &[u8]| {
        Case::given(name, Hook::Decap, frame).expect(XDP_REDIRECT, Reason::FORWARDED, Output::Frame(inner.to_vec()))
    };
    let dropped =
        |name: &str, frame: Vec<u8>, reason: Reason| Case::given(name, Hook::Decap, frame).expect(XDP_DROP, reason, Output::Ignored);
    let passed =
        |name: &str, frame: Vec<u8>| Case::given(name, Hook::Decap, frame).expect(XDP_PASS, Reason::PASSED, Output::Unchanged);

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

    let arp_for = |target: Ipv4Addr| Arp::request(UNLISTED_MAC, UNLISTED_IP, target).frame(BROADCAST);
    let vxlan_over_ipv6 = Ipv6 {
        next_header: IPPROTO_UDP,
        hop_limit: 64,
        src: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2),
        dst: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
    }
    .packet(&to_vxlan_port().datagram(&Vxlan::new(VNI).packet(&inner)));
    let tcp_to_vxlan_port = Tcp { src_port: 51234, dst_port: VXLAN_PORT, sequence: 1, flags: Tcp::SYN };
    let udp_to_other_port = Udp { dst_port: VXLAN_PORT + 1, ..to_vxlan_port() };

    run_table(
        &near,
        &[
            delivered("VXLAN from the peer to a local endpoint: exactly the inner frame", vxlan_from_far(&inner), &inner),
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
            dropped(
                "inner broadcast IPv4",
                vxlan_from_far(&udp_from(FAR_1, BROADCAST, Ipv4Addr::new(10, 10, 0, 255), Udp { src_port: 5000, dst_port: 5000 }, 16)),
                Reason::FLOOD_UNSUPPORTED,
            ),
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
    let near = Node::start(&NEAR)?;
    let whole = vxlan_from_far(&ping(FAR_1, NEAR_1));
    let cuts = [14, 20, 34, 38, 42, 46, 50, 57];
    let mut cases = Vec::new();
    for cut in cuts {
        let frame = whole[..cut].to_vec();
        let name = format!("cut at {cut} bytes, lengths of the whole frame");
        cases.push(if cut < UDP_END {
            Case::given(name, Hook::Decap, frame).expect(XDP_PASS, Reason::PASSED, Output::Unchanged)
        } else {
            Case::given(name, Hook::Decap, frame).expect(XDP_DROP, Reason::OUTER_LENGTH_MISMATCH, Output::Ignored)
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
            Case::given(name, Hook::Decap, frame).expect(XDP_PASS, Reason::PASSED, Output::Unchanged)
        } else {
            Case::given(name, Hook::Decap, frame).expect(XDP_DROP, Reason::VXLAN_TRUNCATED, Output::Ignored)
        });
    }
    run_table(&near, &cases);
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
    let results: Vec<(&str, Result<Vec<u8>, String>)> = frames
        .into_iter()
        .map(|(name, sent)| {
            let encapsulation = Case::given(format!("{name}: encapsulated by the far node"), Hook::Port(FAR_1.port), sent.clone())
                .expect(TC_ACT_REDIRECT, Reason::FORWARDED, encapsulated(far.tunnel()));
            let result = run_case(&far, &encapsulation).and_then(|on_the_wire| {
                let decapsulation = Case::given(format!("{name}: decapsulated by the near node"), Hook::Decap, on_the_wire)
                    .expect(XDP_REDIRECT, Reason::FORWARDED, Output::Frame(sent));
                run_case(&near, &decapsulation)
            });
            (name, result)
        })
        .collect();
    report(results.iter().map(|(name, result)| (*name, result)));
    Ok(())
}
