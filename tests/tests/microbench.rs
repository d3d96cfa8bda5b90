//! BPF_PROG_TEST_RUN micro-benchmark of the datapath programs: per-packet
//! time of decapsulation (XDP) and encapsulation (TC) on a 64-byte and a
//! 1450-byte inner frame. `cargo xtask bench` runs it and parses the
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
//! - decap runs in XDP live-frames mode (BPF_F_TEST_XDP_LIVE_FRAMES) with
//!   repeat = N: every repetition gets a fresh copy of the frame (the
//!   kernel recycles pages and resets the frame pointers), the redirect
//!   the program asks for is carried out (into a veth port whose peer runs
//!   no NAPI, where the frame is freed: the inner packet's delivery is not
//!   decapsulation's cost), and the reported time per frame covers program,
//!   redirect and flush;
//! - encap (TC has no live mode) and, for comparison, decap run as N calls
//!   with repeat = 1, each on a fresh copy; the figure is the median of the
//!   N reported durations (each includes one clock read, about 10-20 ns);
//! - for every method the kernel's BPF statistics (run_time_ns / run_cnt,
//!   enabled for the run) give the program's own time per packet, without
//!   any harness around it;
//! - every run checks that the datapath counted exactly N forwarded packets,
//!   i.e. that each repetition took the real path.
//!
//! Needs root. Parameters: `OVERLAY_MICROBENCH_RUNS` (default 1,000,000)
//! and `OVERLAY_MICROBENCH_REPETITIONS` (default 3).
use std::{
    borrow::Cow,
    net::Ipv4Addr,
    path::Path,
    sync::atomic::{AtomicU32, Ordering},
    time::Instant,
};

use anyhow::{Context as _, bail, ensure};
use aya::programs::{
    ProgramInfo, SchedClassifier, TestRun, TestRunAttrs, TestRunOptions, Xdp, loaded_programs,
};
use aya_obj::programs::XdpAttachType;
use overlay::{Config, Datapath, MapState, ResolvedConfig, netdev};
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

/// One node: an underlay veth `ul0` with our VTEP address and the peer VTEP
/// as a permanent neighbour (so the FIB lookup in encapsulation succeeds
/// without queueing), forwarding on, and the endpoint port `p1` (peer `q1`,
/// no NAPI: redirected frames are freed there). The datapath is loaded and
/// its maps filled from a two-node configuration; nothing is attached.
struct Node {
    datapath: Datapath,
    decap: Xdp,
    encap: SchedClassifier,
    underlay_mac: Mac,
    underlay_ifindex: u32,
    port_ifindex: u32,
    // Last: the namespace goes after everything that lives in it.
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
        let inside = InsideNetns::enter(&netns)?;
        let path = Path::new("microbench.toml");
        let resolved = ResolvedConfig::resolve(Config::parse(&config_text, path)?, path)?;
        let known_before = program_ids()?;
        let mut datapath = Datapath::load(log::LevelFilter::Info)?;
        datapath.apply(&MapState::from_config(&resolved, &MapState::default())?)?;
        let underlay_ifindex = netdev::ifindex("ul0").context("no ul0")?;
        let port_ifindex = netdev::ifindex("p1").context("no p1")?;
        let decap = our_program(
            &datapath,
            &known_before,
            programs::DECAP_XDP,
            |info| Xdp::from_program_info(info, Cow::Borrowed(programs::DECAP_XDP), XdpAttachType::Interface),
        )?;
        let encap = our_program(&datapath, &known_before, programs::ENDPOINT_TC, |info| {
            SchedClassifier::from_program_info(info, Cow::Borrowed(programs::ENDPOINT_TC))
        })?;
        drop(inside);
        Ok(Node { datapath, decap, encap, underlay_mac, underlay_ifindex, port_ifindex, netns })
    }

    /// A VXLAN frame from the far VTEP to us carrying `inner`.
    fn vxlan_frame(&self, inner: &[u8]) -> Vec<u8> {
        let udp = Udp { src_port: 51234, dst_port: VXLAN_PORT }.datagram(&Vxlan::new(VNI).packet(inner));
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
/// run moves this datapath's counters (both programs count every packet).
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
struct Measurement {
    program: &'static str,
    method: &'static str,
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

impl Measurement {
    fn json(&self) -> String {
        format!(
            "{{\"program\":\"{}\",\"method\":\"{}\",\"frame_bytes\":{},\"wire_bytes\":{},\"runs\":{},\"test_run_ns\":{:.2},\"program_ns\":{:.2},\"repetition\":{},\"elapsed_s\":{:.3}}}",
            self.program,
            self.method,
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

/// Decapsulation in live-frames mode, `runs` repetitions in one call.
fn decap_live(node: &Node, frame: &[u8], runs: u32) -> anyhow::Result<(f64, f64)> {
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
    // rx_queue_index, egress_ifindex. The kernel wants data = 0 and
    // data_end = the frame length; the ingress device is the underlay.
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&node.underlay_ifindex.to_ne_bytes());
    let before = stats(node.decap.info().map_err(Into::into))?;
    let result = node
        .decap
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat: runs,
            attrs: TestRunAttrs::new().xdp_live_frames(LIVE_BATCH),
            ..Default::default()
        })
        .context("XDP live-frames test run")?;
    let after = stats(node.decap.info().map_err(Into::into))?;
    Ok((result.duration.as_nanos() as f64, program_ns(before, after)))
}

/// `runs` calls of one repetition each; returns the median reported
/// duration and the program time from BPF statistics.
fn single_runs<P>(program: &P, info: impl Fn() -> anyhow::Result<ProgramInfo>, frame: &[u8], ctx: &[u8], expected_action: u32, runs: u32) -> anyhow::Result<(f64, f64)>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = aya::programs::TestRunResult>,
{
    let mut durations: Vec<u32> = Vec::with_capacity(runs as usize);
    let before = stats(info())?;
    for _ in 0..runs {
        let result = program
            .test_run(TestRunOptions { data_in: Some(frame), ctx_in: Some(ctx), ..Default::default() })
            .context("test run")?;
        if result.return_value != expected_action {
            bail!("the program returned {} instead of {expected_action}", result.return_value);
        }
        durations.push(result.duration.as_nanos() as u32);
    }
    let after = stats(info())?;
    durations.sort_unstable();
    Ok((f64::from(durations[durations.len() / 2]), program_ns(before, after)))
}

fn env_number(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(text) => text.parse().with_context(|| format!("{name}={text} is not a number")),
        Err(_) => Ok(default),
    }
}

#[test]
#[ignore = "a benchmark, run by `cargo xtask bench`"]
fn prog_test_run_microbench() -> anyhow::Result<()> {
    let runs = u32::try_from(env_number("OVERLAY_MICROBENCH_RUNS", 1_000_000)?).context("too many runs")?;
    let repetitions = env_number("OVERLAY_MICROBENCH_REPETITIONS", 3)? as u32;
    ensure!(runs > 0 && repetitions > 0, "runs and repetitions must be above zero");
    for name in netns::sweep_stale() {
        eprintln!("removed namespace {name} left by a killed run");
    }
    let node = Node::start()?;
    if std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|v| v.trim() != "0") {
        eprintln!("warning: kernel.bpf_stats_enabled is on: test-run times include the statistics' own clock reads");
    }
    let decap_info = || node.decap.info().map_err(anyhow::Error::from);
    let encap_info = || node.encap.info().map_err(anyhow::Error::from);
    // struct __sk_buff up to ifindex (offset 40): the port the frame arrives on.
    let mut skb_ctx = [0u8; 44];
    skb_ctx[40..44].copy_from_slice(&node.port_ifindex.to_ne_bytes());
    let mut xdp_ctx = [0u8; 24];
    xdp_ctx[12..16].copy_from_slice(&node.underlay_ifindex.to_ne_bytes());

    for repetition in 0..repetitions {
        for frame_bytes in FRAME_SIZES {
            let payload = frame_bytes - 14 - IPV4_LEN - UDP_LEN;
            let datagram = Udp { src_port: 40000, dst_port: 5201 }.datagram(&vec![0x5a; payload]);
            let to_far = Ethernet { dst: FAR_MAC, src: NEAR_MAC, ethertype: ETHERTYPE_IPV4 }
                .frame(&Ipv4::new(IPPROTO_UDP, NEAR_IP, FAR_IP).packet(&datagram));
            let to_near = Ethernet { dst: NEAR_MAC, src: FAR_MAC, ethertype: ETHERTYPE_IPV4 }
                .frame(&Ipv4::new(IPPROTO_UDP, FAR_IP, NEAR_IP).packet(&datagram));
            let vxlan = node.vxlan_frame(&to_near);
            xdp_ctx[4..8].copy_from_slice(&(vxlan.len() as u32).to_ne_bytes());

            // Redirect targets and the port's ifindex resolve in the
            // namespace of the calling thread.
            let _inside = InsideNetns::enter(&node.netns)?;
            let cases: [(&str, &str, Direction, usize, usize); 3] = [
                ("decap", "live-frames", Direction::FROM_UNDERLAY, frame_bytes, vxlan.len()),
                ("decap", "single-runs", Direction::FROM_UNDERLAY, frame_bytes, vxlan.len()),
                ("encap", "single-runs", Direction::FROM_ENDPOINT, frame_bytes, to_far.len() + 50),
            ];
            for (program, method, direction, frame_bytes, wire_bytes) in cases {
                let measure = |with_stats: bool| -> anyhow::Result<(f64, f64)> {
                    // Held for this pass only: the kernel turns statistics off
                    // again when the last holder closes it (also if this
                    // process is killed).
                    let _stats = if with_stats {
                        Some(aya::sys::enable_stats(aya::sys::Stats::RunTime).context("enabling BPF run-time statistics")?)
                    } else {
                        None
                    };
                    let forwarded_before = node.forwarded(direction)?;
                    let result = match (program, method) {
                        ("decap", "live-frames") => decap_live(&node, &vxlan, runs)?,
                        ("decap", _) => single_runs(&node.decap, decap_info, &vxlan, &xdp_ctx, XDP_REDIRECT, runs)?,
                        _ => single_runs(&node.encap, encap_info, &to_far, &skb_ctx, TC_ACT_REDIRECT, runs)?,
                    };
                    let forwarded = node.forwarded(direction)? - forwarded_before;
                    ensure!(
                        forwarded == u64::from(runs),
                        "{program} ({method}, {frame_bytes}-byte frame): expected {runs} packets counted as forwarded, counted {forwarded}: \
                         the runs did not all take the real path"
                    );
                    Ok(result)
                };
                let started = Instant::now();
                // Two passes: statistics cost two clock reads per run, which
                // the test-run time should not include.
                let (test_run_ns, _) = measure(false)?;
                let (_, program_ns) = measure(true)?;
                let elapsed_s = started.elapsed().as_secs_f64();
                let measurement = Measurement {
                    program,
                    method,
                    frame_bytes,
                    wire_bytes,
                    runs: u64::from(runs),
                    test_run_ns,
                    program_ns,
                    repetition,
                    elapsed_s,
                };
                eprintln!(
                    "microbench {}/{repetitions}: {program} {method} {frame_bytes} B: {test_run_ns:.1} ns per test run, {program_ns:.1} ns in the program",
                    repetition + 1
                );
                println!("MICROBENCH {}", measurement.json());
            }
        }
    }
    Ok(())
}

