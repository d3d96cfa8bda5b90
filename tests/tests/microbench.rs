//! BPF_PROG_TEST_RUN micro-benchmark of the datapath programs: per-packet
//! time of decapsulation (XDP and TC) and encapsulation (TC) on a 64-byte
//! and a 1450-byte inner frame, against a floor (empty programs through the
//! same harness, `floor.rs`), optionally beside other builds of the
//! datapath (`variants.rs`), and cost curves as the work grows
//! (`curves.rs`). `cargo xtask bench` runs it and parses the
//! `MICROBENCH {json}` lines it prints; it is `#[ignore]`d so the test suite
//! does not spend its time here.
//!
//! How a run is made honest: the kernel runs all repetitions of one
//! BPF_PROG_TEST_RUN call on one buffer, so every repetition after the
//! first sees what the previous one left behind. Decapsulation strips 50
//! bytes, so the second repetition would see the inner frame (not VXLAN:
//! passed at once); encapsulation adds 50, so the second would see an outer
//! frame to an unknown MAC (dropped at once). Averages over those measure
//! the cheap paths, not the real one. So:
//!
//! - XDP decap runs in live-frames mode (BPF_F_TEST_XDP_LIVE_FRAMES) with
//!   repeat = N: every repetition gets a fresh copy of the frame (the
//!   kernel recycles pages and resets the frame pointers), the redirect
//!   the program asks for is carried out (into a veth port whose peer runs
//!   no NAPI, where the frame is freed: the inner packet's delivery is not
//!   decapsulation's cost), and the reported time per frame covers program,
//!   redirect and flush;
//! - encap and TC decap (TC has no live mode) and, for comparison, XDP
//!   decap run as N calls with repeat = 1, each on a fresh copy; the figure
//!   is the median of the N reported durations (each includes one clock
//!   read, about 10-20 ns);
//! - for every method the kernel's BPF statistics (run_time_ns / run_cnt,
//!   enabled for the run) give the program's own time per packet, without
//!   any harness around it;
//! - every run checks that the datapath counted exactly N forwarded packets,
//!   i.e. that each repetition took the real path.
//!
//! Needs root. Parameters: `OVERLAY_MICROBENCH_RUNS` (default 1,000,000),
//! `OVERLAY_MICROBENCH_REPETITIONS` (default 3), `OVERLAY_MICROBENCH_CURVES`
//! (0 skips the curves), `OVERLAY_MICROBENCH_OBJECTS` (see `variants.rs`).
#[path = "microbench/curves.rs"]
mod curves;
#[path = "microbench/floor.rs"]
mod floor;
#[path = "microbench/variants.rs"]
mod variants;

use std::{
    borrow::Cow,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::Instant,
};

use anyhow::{Context as _, bail, ensure};
use aya::programs::{
    ProgramInfo, SchedClassifier, TestRun, TestRunAttrs, TestRunOptions, Xdp, loaded_programs,
};
use aya_obj::programs::XdpAttachType;
use overlay::{Config, Datapath, MapState, ResolvedConfig, netdev, pinning::PinDir};
use overlay_common::{Direction, Reason, programs};
use overlay_lab::{
    frames::{ETHERTYPE_IPV4, Ethernet, IPPROTO_UDP, IPV4_LEN, Ipv4, Mac, UDP_LEN, Udp, Vxlan},
    netns::{self, InsideNetns, Netns},
};

const XDP_REDIRECT: u32 = 4;
const TC_ACT_REDIRECT: u32 = 7;
/// XDP live-frames batch: the kernel's default (NAPI_POLL_WEIGHT).
const LIVE_BATCH: u32 = 64;
/// Inner Ethernet frame sizes measured (a container's frame, headers
/// included): a minimum-size frame and a near-MTU one.
const FRAME_SIZES: [usize; 2] = [64, 1450];
/// Runs per curve point at most: nine points of three programs.
const CURVE_RUNS_MAX: u32 = 200_000;

const VNI: u32 = 100;
const VXLAN_PORT: u16 = 4789;
const NEAR_VTEP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const FAR_VTEP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const FAR_UNDERLAY_MAC: Mac = Mac([0x02, 0xaa, 0xaa, 0xaa, 0xaa, 0x02]);
const NEAR_MAC: Mac = Mac([2, 0, 0, 0, 1, 1]);
const NEAR_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 1);
const FAR_MAC: Mac = Mac([2, 0, 0, 0, 2, 1]);
const FAR_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 2);

static NEXT_NODE: AtomicU32 = AtomicU32::new(0);

/// Removes the micro-benchmark's bpffs directory (the datapath removes the
/// pins inside it when it goes).
struct PinParent(PathBuf);

impl Drop for PinParent {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(self.0.join("near"));
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// One node: an underlay veth `ul0` with our VTEP address and the peer VTEP
/// as a permanent neighbour (so the FIB lookup in encapsulation succeeds
/// without queueing), forwarding on, and the endpoint port `p1` (peer `q1`,
/// no NAPI: redirected frames are freed there). The datapath is loaded with
/// its maps pinned (so that variants can share them) and filled from a
/// two-node configuration; nothing is attached.
struct Node {
    datapath: Datapath,
    pins: PinDir,
    decap: Xdp,
    decap_tc: SchedClassifier,
    encap: SchedClassifier,
    underlay_mac: Mac,
    underlay_ifindex: u32,
    port_ifindex: u32,
    // Last: the namespace goes after everything that lives in it.
    _pin_parent: PinParent,
    netns: Netns,
}

impl Node {
    fn start() -> anyhow::Result<Node> {
        let netns = Netns::new("mb", &format!("near{}", NEXT_NODE.fetch_add(1, Ordering::Relaxed)))?;
        netns.ip(&["link", "add", "ul0", "type", "veth", "peer", "name", "ul0peer"])?;
        netns.ip(&["addr", "add", &format!("{NEAR_VTEP}/24"), "dev", "ul0"])?;
        netns.ip(&["neigh", "add", &FAR_VTEP.to_string(), "lladdr", &FAR_UNDERLAY_MAC.to_string(), "dev", "ul0", "nud", "permanent"])?;
        netns.ip(&["link", "add", "p1", "type", "veth", "peer", "name", "q1"])?;
        for device in ["ul0", "ul0peer", "p1", "q1"] {
            netns.ip(&["link", "set", device, "up"])?;
        }
        netns.sysctl("net.ipv4.conf.ul0.forwarding", "1")?;
        let address = netns.exec("cat", &["/sys/class/net/ul0/address"])?;
        let underlay_mac = String::from_utf8_lossy(&address.stdout).parse::<Mac>().map_err(anyhow::Error::msg)?;

        let config_text = format!(
            "[node]\nname = \"near\"\nunderlay_interface = \"ul0\"\nvtep_address = \"{NEAR_VTEP}\"\nvxlan_port = {VXLAN_PORT}\n\n\
             [[endpoints]]\ninterface = \"p1\"\nmac = \"{NEAR_MAC}\"\nip = \"{NEAR_IP}\"\nvni = {VNI}\n\n\
             [[peers]]\nname = \"far\"\nvtep_address = \"{FAR_VTEP}\"\n\n\
             [[peers.endpoints]]\nmac = \"{FAR_MAC}\"\nip = \"{FAR_IP}\"\nvni = {VNI}\n"
        );
        let pin_parent = PinParent(PathBuf::from(format!("/sys/fs/bpf/overlay-microbench-{}", std::process::id())));
        let pins = PinDir::new(&pin_parent.0, "near");
        let inside = InsideNetns::enter(&netns)?;
        let path = Path::new("microbench.toml");
        let resolved = ResolvedConfig::resolve(Config::parse(&config_text, path)?, path)?;
        let known_before = program_ids()?;
        let mut datapath = Datapath::load_pinned(log::LevelFilter::Info, &pins, "near")?;
        datapath.apply(&MapState::from_config(&resolved, &MapState::default())?)?;
        let underlay_ifindex = netdev::ifindex("ul0").context("no ul0")?;
        let port_ifindex = netdev::ifindex("p1").context("no p1")?;
        let decap = our_program(&datapath, &known_before, programs::DECAP_XDP, |info| {
            Xdp::from_program_info(info, Cow::Borrowed(programs::DECAP_XDP), XdpAttachType::Interface)
        })?;
        let decap_tc = our_program(&datapath, &known_before, programs::DECAP_TC, |info| {
            SchedClassifier::from_program_info(info, Cow::Borrowed(programs::DECAP_TC))
        })?;
        let encap = our_program(&datapath, &known_before, programs::ENDPOINT_TC, |info| {
            SchedClassifier::from_program_info(info, Cow::Borrowed(programs::ENDPOINT_TC))
        })?;
        drop(inside);
        Ok(Node {
            datapath,
            pins,
            decap,
            decap_tc,
            encap,
            underlay_mac,
            underlay_ifindex,
            port_ifindex,
            _pin_parent: pin_parent,
            netns,
        })
    }

    /// A VXLAN frame of `vni` from the far VTEP (outer UDP source port
    /// `source_port`) to us carrying `inner`.
    fn vxlan_frame(&self, vni: u32, source_port: u16, inner: &[u8]) -> Vec<u8> {
        let udp = Udp { src_port: source_port, dst_port: VXLAN_PORT }.datagram(&Vxlan::new(vni).packet(inner));
        Ethernet { dst: self.underlay_mac, src: FAR_UNDERLAY_MAC, ethertype: ETHERTYPE_IPV4 }
            .frame(&Ipv4::new(IPPROTO_UDP, FAR_VTEP, NEAR_VTEP).packet(&udp))
    }

    fn forwarded(&self, direction: Direction) -> anyhow::Result<u64> {
        Ok(self.datapath.counters()?.packets(direction, Reason::FORWARDED))
    }
}

/// Program ids loaded in the kernel now.
fn program_ids() -> anyhow::Result<Vec<u32>> {
    let mut ids = Vec::new();
    for info in loaded_programs() {
        ids.push(info.context("listing loaded BPF programs")?.id());
    }
    Ok(ids)
}

/// The datapath does not hand out its programs, so find them among the
/// loaded programs: new since `known_before`, named `name`, and (another
/// process may be loading the same object meanwhile) the one whose test
/// run moves this datapath's counters (every program counts every packet).
fn our_program<P>(
    datapath: &Datapath,
    known_before: &[u32],
    name: &str,
    open: impl Fn(ProgramInfo) -> Result<P, aya::programs::ProgramError>,
) -> anyhow::Result<P>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = aya::programs::TestRunResult>,
{
    let total = |counters: overlay::Counters| counters.rows.iter().map(|row| row.packets).sum::<u64>();
    // The kernel keeps 15 bytes of a program's name (BPF_OBJ_NAME_LEN less the NUL).
    let kernel_name = &name[..name.len().min(15)];
    for info in loaded_programs() {
        let info = info.context("listing loaded BPF programs")?;
        if known_before.contains(&info.id()) || info.name_as_str() != Some(kernel_name) {
            continue;
        }
        let id = info.id();
        let program = open(info).with_context(|| format!("opening program {id} ({name})"))?;
        let before = total(datapath.counters()?);
        program
            .test_run(TestRunOptions { data_in: Some(&[0u8; 64]), ..Default::default() })
            .with_context(|| format!("test run of program {id} ({name})"))?;
        if total(datapath.counters()?) > before {
            return Ok(program);
        }
    }
    bail!("program {name} of the datapath just loaded is not among the kernel's loaded programs")
}

/// What one measurement gives, printed as a `MICROBENCH` JSON line.
struct Measurement<'a> {
    /// `current` (this build) or a variant's label.
    object: &'a str,
    program: &'static str,
    method: &'static str,
    /// Empty, or the cost curve (`fdb`, `vnis`, `flows`) and its point.
    curve: &'a str,
    size: u32,
    frame_bytes: usize,
    wire_bytes: usize,
    runs: u64,
    /// Per packet as BPF_PROG_TEST_RUN reports it (see the module docs).
    test_run_ns: f64,
    /// Per packet from the kernel's BPF statistics: the program alone.
    program_ns: f64,
    repetition: u32,
    elapsed_s: f64,
}

impl Measurement<'_> {
    fn json(&self) -> String {
        format!(
            "{{\"object\":\"{}\",\"program\":\"{}\",\"method\":\"{}\",\"curve\":\"{}\",\"size\":{},\"frame_bytes\":{},\"wire_bytes\":{},\"runs\":{},\
             \"test_run_ns\":{:.2},\"program_ns\":{:.2},\"repetition\":{},\"elapsed_s\":{:.3}}}",
            self.object,
            self.program,
            self.method,
            self.curve,
            self.size,
            self.frame_bytes,
            self.wire_bytes,
            self.runs,
            self.test_run_ns,
            self.program_ns,
            self.repetition,
            self.elapsed_s
        )
    }
}

/// Run time and count of a program from the kernel's BPF statistics.
fn stats(info: anyhow::Result<ProgramInfo>) -> anyhow::Result<(u128, u64)> {
    let info = info?;
    Ok((info.run_time().as_nanos(), info.run_count()))
}

fn program_ns(before: (u128, u64), after: (u128, u64)) -> f64 {
    let runs = after.1.saturating_sub(before.1);
    if runs == 0 { 0.0 } else { (after.0 - before.0) as f64 / runs as f64 }
}

/// XDP in live-frames mode, `runs` repetitions in one call.
fn xdp_live(program: &Xdp, underlay_ifindex: u32, frame: &[u8], runs: u32) -> anyhow::Result<(f64, f64)> {
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
    // rx_queue_index, egress_ifindex. The kernel wants data = 0 and
    // data_end = the frame length; the ingress device is the underlay.
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&underlay_ifindex.to_ne_bytes());
    let before = stats(program.info().map_err(Into::into))?;
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat: runs,
            attrs: TestRunAttrs::new().xdp_live_frames(LIVE_BATCH),
            ..Default::default()
        })
        .context("XDP live-frames test run")?;
    let after = stats(program.info().map_err(Into::into))?;
    Ok((result.duration.as_nanos() as f64, program_ns(before, after)))
}

/// `runs` calls of one repetition each, going round `frames`; returns the
/// median reported duration and the program time from BPF statistics.
fn single_runs<P>(program: &P, frames: &[Vec<u8>], ctx: &[u8], expected_action: u32, runs: u32) -> anyhow::Result<(f64, f64)>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = aya::programs::TestRunResult> + HasInfo,
{
    let mut durations: Vec<u32> = Vec::with_capacity(runs as usize);
    let before = stats(program.program_info())?;
    for run in 0..runs as usize {
        let frame = &frames[run % frames.len()];
        let result = program
            .test_run(TestRunOptions { data_in: Some(frame), ctx_in: Some(ctx), ..Default::default() })
            .context("test run")?;
        if result.return_value != expected_action {
            bail!("the program returned {} instead of {expected_action}", result.return_value);
        }
        durations.push(result.duration.as_nanos() as u32);
    }
    let after = stats(program.program_info())?;
    durations.sort_unstable();
    Ok((f64::from(durations[durations.len() / 2]), program_ns(before, after)))
}

/// Both program types give their kernel info the same way.
trait HasInfo {
    fn program_info(&self) -> anyhow::Result<ProgramInfo>;
}

impl HasInfo for Xdp {
    fn program_info(&self) -> anyhow::Result<ProgramInfo> {
        Ok(self.info()?)
    }
}

impl HasInfo for SchedClassifier {
    fn program_info(&self) -> anyhow::Result<ProgramInfo> {
        Ok(self.info()?)
    }
}

fn env_number(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(text) => text.parse().with_context(|| format!("{name}={text} is not a number")),
        Err(_) => Ok(default),
    }
}

/// The programs of one build of the datapath.
struct Programs<'a> {
    object: &'a str,
    decap: &'a Xdp,
    decap_tc: &'a SchedClassifier,
    encap: &'a SchedClassifier,
}

/// One measured case: which program, how, on which frames.
#[derive(Clone, Copy)]
enum Case {
    DecapLive,
    DecapSingle,
    DecapTcSingle,
    EncapSingle,
    FloorXdpLive,
    FloorXdpSingle,
    FloorTcSingle,
}

impl Case {
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Case::DecapLive => ("decap", "live-frames"),
            Case::DecapSingle => ("decap", "single-runs"),
            Case::DecapTcSingle => ("decap-tc", "single-runs"),
            Case::EncapSingle => ("encap", "single-runs"),
            Case::FloorXdpLive => ("floor-xdp", "live-frames"),
            Case::FloorXdpSingle => ("floor-xdp", "single-runs"),
            Case::FloorTcSingle => ("floor-tc", "single-runs"),
        }
    }

    /// The datapath direction whose forwarded count each run moves (none for the floor).
    fn direction(self) -> Option<Direction> {
        match self {
            Case::DecapLive | Case::DecapSingle | Case::DecapTcSingle => Some(Direction::FROM_UNDERLAY),
            Case::EncapSingle => Some(Direction::FROM_ENDPOINT),
            Case::FloorXdpLive | Case::FloorXdpSingle | Case::FloorTcSingle => None,
        }
    }
}

/// The frames of one measurement: what the port sends, what the far VTEP sends.
struct Frames {
    to_far: Vec<Vec<u8>>,
    vxlan: Vec<Vec<u8>>,
}

struct Bench<'a> {
    node: &'a Node,
    floor: &'a floor::Floor,
    repetitions: u32,
    /// struct __sk_buff up to ifindex (offset 40): the device the frame arrives on.
    port_ctx: [u8; 44],
    underlay_ctx: [u8; 44],
}

impl Bench<'_> {
    /// Measures `case` of `programs` (the floor ignores them) on `frames`:
    /// a pass with statistics off for the test-run time, one with them on
    /// for the program time. Prints the result line.
    #[allow(clippy::too_many_arguments)]
    fn measure(&self, programs: &Programs, case: Case, frames: &Frames, curve: &str, size: u32, runs: u32, repetition: u32) -> anyhow::Result<()> {
        let node = self.node;
        let (program, method) = case.names();
        let frame_bytes = frames.to_far[0].len();
        let wire_bytes = frames.vxlan[0].len();
        let mut xdp_ctx = [0u8; 24];
        xdp_ctx[4..8].copy_from_slice(&(wire_bytes as u32).to_ne_bytes());
        xdp_ctx[12..16].copy_from_slice(&node.underlay_ifindex.to_ne_bytes());
        let measure = |with_stats: bool| -> anyhow::Result<(f64, f64)> {
            // Held for this pass only: the kernel turns statistics off
            // again when the last holder closes it (also if this process
            // is killed).
            let _stats = if with_stats {
                Some(aya::sys::enable_stats(aya::sys::Stats::RunTime).context("enabling BPF run-time statistics")?)
            } else {
                None
            };
            let forwarded_before = match case.direction() {
                Some(direction) => node.forwarded(direction)?,
                None => 0,
            };
            let result = match case {
                Case::DecapLive => xdp_live(programs.decap, node.underlay_ifindex, &frames.vxlan[0], runs)?,
                Case::DecapSingle => single_runs(programs.decap, &frames.vxlan, &xdp_ctx, XDP_REDIRECT, runs)?,
                Case::DecapTcSingle => single_runs(programs.decap_tc, &frames.vxlan, &self.underlay_ctx, TC_ACT_REDIRECT, runs)?,
                Case::EncapSingle => single_runs(programs.encap, &frames.to_far, &self.port_ctx, TC_ACT_REDIRECT, runs)?,
                Case::FloorXdpLive => xdp_live(&self.floor.xdp, node.underlay_ifindex, &frames.vxlan[0], runs)?,
                Case::FloorXdpSingle => single_runs(&self.floor.xdp, &frames.vxlan, &xdp_ctx, floor::FLOOR_XDP_ACTION, runs)?,
                Case::FloorTcSingle => single_runs(&self.floor.tc, &frames.to_far, &self.port_ctx, floor::FLOOR_TC_ACTION, runs)?,
            };
            if let Some(direction) = case.direction() {
                let forwarded = node.forwarded(direction)? - forwarded_before;
                ensure!(
                    forwarded == u64::from(runs),
                    "{} {program} ({method}, {frame_bytes}-byte frame{}): expected {runs} packets counted as forwarded, counted {forwarded}: \
                     the runs did not all take the real path",
                    programs.object,
                    if curve.is_empty() { String::new() } else { format!(", {curve} = {size}") }
                );
            }
            Ok(result)
        };
        let started = Instant::now();
        // Two passes: statistics cost two clock reads per run, which the
        // test-run time should not include.
        let (test_run_ns, _) = measure(false)?;
        let (_, program_ns) = measure(true)?;
        let object = if case.direction().is_none() { "floor" } else { programs.object };
        let measurement = Measurement {
            object,
            program,
            method,
            curve,
            size,
            frame_bytes,
            wire_bytes,
            runs: u64::from(runs),
            test_run_ns,
            program_ns,
            repetition,
            elapsed_s: started.elapsed().as_secs_f64(),
        };
        let point = if curve.is_empty() { String::new() } else { format!(" [{curve} = {size}]") };
        eprintln!(
            "microbench {}/{}: {object} {program} {method} {frame_bytes} B{point}: {test_run_ns:.1} ns per test run, {program_ns:.1} ns in the program",
            repetition + 1,
            self.repetitions,
        );
        println!("MICROBENCH {}", measurement.json());
        Ok(())
    }
}

#[test]
#[ignore = "a benchmark, run by `cargo xtask bench`"]
fn prog_test_run_microbench() -> anyhow::Result<()> {
    let runs = u32::try_from(env_number("OVERLAY_MICROBENCH_RUNS", 1_000_000)?).context("too many runs")?;
    let repetitions = env_number("OVERLAY_MICROBENCH_REPETITIONS", 3)? as u32;
    let with_curves = env_number("OVERLAY_MICROBENCH_CURVES", 1)? != 0;
    ensure!(runs > 0 && repetitions > 0, "runs and repetitions must be above zero");
    for name in netns::sweep_stale() {
        eprintln!("removed namespace {name} left by a killed run");
    }
    let node = Node::start()?;
    if std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|v| v.trim() != "0") {
        eprintln!("warning: kernel.bpf_stats_enabled is on: test-run times include the statistics' own clock reads");
    }
    let floor = floor::Floor::load()?;
    let pinned: Vec<&'static str> = overlay::datapath::tables::pinned_maps().map(|layout| layout.name).collect();
    let variants = variants::requested()?
        .iter()
        .map(|(label, path)| variants::Variant::load(label, path, &node.pins, &pinned))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut builds = vec![Programs { object: "current", decap: &node.decap, decap_tc: &node.decap_tc, encap: &node.encap }];
    for variant in &variants {
        builds.push(Programs { object: &variant.label, decap: variant.decap()?, decap_tc: variant.decap_tc()?, encap: variant.encap()? });
    }
    let mut port_ctx = [0u8; 44];
    port_ctx[40..44].copy_from_slice(&node.port_ifindex.to_ne_bytes());
    let mut underlay_ctx = [0u8; 44];
    underlay_ctx[40..44].copy_from_slice(&node.underlay_ifindex.to_ne_bytes());
    let bench = Bench { node: &node, floor: &floor, repetitions, port_ctx, underlay_ctx };

    // Redirect targets and the ports' ifindexes resolve in the namespace of
    // the calling thread.
    let _inside = InsideNetns::enter(&node.netns)?;
    let program_cases = [Case::DecapLive, Case::DecapSingle, Case::DecapTcSingle, Case::EncapSingle];
    let floor_cases = [Case::FloorXdpLive, Case::FloorXdpSingle, Case::FloorTcSingle];
    for repetition in 0..repetitions {
        for frame_bytes in FRAME_SIZES {
            let payload = frame_bytes - 14 - IPV4_LEN - UDP_LEN;
            let datagram = Udp { src_port: 40000, dst_port: 5201 }.datagram(&vec![0x5a; payload]);
            let to_far = Ethernet { dst: FAR_MAC, src: NEAR_MAC, ethertype: ETHERTYPE_IPV4 }
                .frame(&Ipv4::new(IPPROTO_UDP, NEAR_IP, FAR_IP).packet(&datagram));
            let to_near = Ethernet { dst: NEAR_MAC, src: FAR_MAC, ethertype: ETHERTYPE_IPV4 }
                .frame(&Ipv4::new(IPPROTO_UDP, FAR_IP, NEAR_IP).packet(&datagram));
            let frames = Frames { vxlan: vec![node.vxlan_frame(VNI, 51234, &to_near)], to_far: vec![to_far] };
            // The floor before and after the builds' programs: drift shows
            // as a difference between the two (both are reported).
            for case in floor_cases {
                bench.measure(&builds[0], case, &frames, "", 0, runs, repetition)?;
            }
            // Builds in a rotated order, so no build always runs first.
            for index in 0..builds.len() {
                let programs = &builds[(index + repetition as usize) % builds.len()];
                for case in program_cases {
                    bench.measure(programs, case, &frames, "", 0, runs, repetition)?;
                }
            }
        }
    }
    if with_curves {
        measure_curves(&bench, &builds[0], runs.min(CURVE_RUNS_MAX))?;
    }
    Ok(())
}

/// Every point of every curve, for the current build, with the TC floor
/// measured beside each point.
fn measure_curves(bench: &Bench, programs: &Programs, runs: u32) -> anyhow::Result<()> {
    let node = bench.node;
    let base = node.datapath.applied().clone();
    // The datapath is borrowed by the programs' handles only through the
    // kernel; applying states goes through a second handle on the same maps.
    let mut datapath = Datapath::load_pinned(log::LevelFilter::Info, &node.pins, "near")?;
    for (curve, sizes) in curves::CURVES {
        for size in sizes {
            let point = curves::point(&base, curve, size, node.port_ifindex);
            datapath.apply(&point.state).with_context(|| format!("filling the maps for {curve} = {size}"))?;
            let frames = Frames {
                to_far: point.to_far,
                vxlan: point
                    .to_near
                    .iter()
                    .enumerate()
                    .map(|(i, (vni, inner))| node.vxlan_frame(*vni, 49152 + (i % 16384) as u16, inner))
                    .collect(),
            };
            for repetition in 0..bench.repetitions {
                for case in [Case::FloorTcSingle, Case::EncapSingle, Case::DecapTcSingle, Case::DecapSingle] {
                    bench.measure(programs, case, &frames, curve, size, runs, repetition)?;
                }
            }
        }
        datapath.apply(&base).context("restoring the base maps")?;
    }
    // The second handle adopted the pins: it must not remove them, the node's does.
    datapath.keep_pins();
    Ok(())
}
