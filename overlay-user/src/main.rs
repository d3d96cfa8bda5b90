//! `overlay`: the node agent and CLI.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use overlay::{
    AttachMode, Config, Counters, Datapath, DecapMode, MapState, ResolvedConfig, VniPeerCounters, XdpAttachMode,
    datapath::ApplyReport,
    pinning::{DEFAULT_BPFFS_DIR, PinDir},
    status::{self, DEFAULT_RUN_DIR, NodeStatus, Reload},
};
use overlay_common::reason::REASONS;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

#[derive(Parser)]
#[command(name = "overlay", version, about = "A VXLAN container overlay whose datapath runs in eBPF")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where a node's state lives.
#[derive(Args, Clone)]
struct Places {
    /// Parent directory of the nodes' pinned datapaths (on bpffs, mounted if needed).
    #[arg(long, default_value = DEFAULT_BPFFS_DIR)]
    bpffs_dir: PathBuf,
    /// Directory of the agents' status files.
    #[arg(long, default_value = DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node's datapath: adopt a pinned one or load it, fill its maps,
    /// attach, reload on SIGHUP or when the file changes, detach on SIGINT/SIGTERM.
    Run {
        /// The node's configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Which hook decapsulates VXLAN on the underlay device: auto picks
        /// TC on a veth and where native XDP is missing, XDP elsewhere.
        #[arg(long, value_enum, default_value_t = DecapMode::Auto)]
        decap: DecapMode,
        /// How to attach the XDP decapsulation program (auto: native, else
        /// generic). Given explicitly, it implies --decap xdp under --decap auto.
        #[arg(long, value_enum, default_value_t = XdpAttachMode::Auto)]
        xdp_mode: XdpAttachMode,
        /// Also print the datapath counters every this many seconds (0: only at exit).
        #[arg(long, default_value_t = 0)]
        counters_interval: u64,
        /// On SIGINT/SIGTERM leave the datapath pinned and forwarding (for an
        /// upgrade or restart: the next `overlay run` adopts it); `overlay down` removes it.
        #[arg(long)]
        keep_datapath: bool,
        /// Serve Prometheus metrics at http://ADDR/metrics (an IP:port, e.g. 127.0.0.1:9465; off by default).
        #[arg(long, value_name = "ADDR")]
        metrics_addr: Option<std::net::SocketAddr>,
        #[command(flatten)]
        places: Places,
    },
    /// Check a configuration file without touching the kernel.
    Validate {
        /// The configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Detach and remove a node's pinned datapath (its agent must not be running).
    Down {
        /// The node's name (`node.name` in its configuration).
        #[arg(long)]
        node: String,
        #[command(flatten)]
        places: Places,
    },
    /// Print a node's datapath counters: the node's, each VNI's and each peer VTEP's.
    Stats {
        /// The node's name.
        #[arg(long)]
        node: String,
        /// As JSON.
        #[arg(long)]
        json: bool,
        /// Refresh every this many seconds, with rates per second.
        #[arg(long)]
        watch: Option<u64>,
        #[command(flatten)]
        places: Places,
    },
    /// Print what a node's agent has attached where, and its last reload.
    Status {
        /// The node's name.
        #[arg(long)]
        node: String,
        #[command(flatten)]
        places: Places,
    },
    /// Stream a node's datapath events: drops with reason, VNI, addresses and
    /// interface (rate limited in the kernel), optionally sampled forwarded packets.
    Monitor {
        /// The node's name.
        #[arg(long)]
        node: String,
        /// Only these reasons (names as `overlay reasons` lists them; repeatable).
        #[arg(long = "reason")]
        reasons: Vec<String>,
        /// Only this VNI.
        #[arg(long)]
        vni: Option<u32>,
        /// Only VXLAN from or to this peer VTEP address.
        #[arg(long)]
        peer: Option<std::net::Ipv4Addr>,
        /// Also trace one forwarded packet in this many.
        #[arg(long, default_value_t = 0)]
        trace_every: u32,
        /// Events per second each CPU may emit (the kernel-side rate limit).
        #[arg(long, default_value_t = overlay_common::DEFAULT_MONITOR_RATE)]
        rate: u32,
        /// Events each CPU may emit at once above the rate.
        #[arg(long, default_value_t = overlay_common::DEFAULT_MONITOR_BURST)]
        burst: u32,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long)]
        seconds: Option<u64>,
        #[command(flatten)]
        places: Places,
    },
    /// List the datapath's numbered outcomes and drop reasons.
    Reasons,
    /// Check this node and its peers; print each finding with its fix.
    /// Exits 1 when a check fails (warnings exit 0).
    Doctor {
        /// The node's configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// One JSON object per finding, one per line.
        #[arg(long)]
        json: bool,
        /// Seconds to wait for each peer's answer to the reachability probe.
        #[arg(long, default_value_t = 2.0)]
        probe_timeout: f64,
        #[command(flatten)]
        places: Places,
    },
}

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config, decap, xdp_mode, counters_interval, keep_datapath, metrics_addr, places } => {
            let mode = AttachMode { decap, xdp: xdp_mode };
            run(RunOptions { path: config, mode, counters_interval, keep_datapath, metrics_addr, places })
        }
        Command::Validate { config } => validate(config),
        Command::Down { node, places } => down(&node, &places),
        Command::Stats { node, json, watch, places } => stats(&node, json, watch, &places),
        Command::Status { node, places } => show_status(&node, &places),
        Command::Monitor { node, reasons, vni, peer, trace_every, rate, burst, json, count, seconds, places } => monitor(
            &node,
            MonitorFilter { reasons, vni, peer },
            overlay_common::MonitorConfig { enabled: 1, events_per_second: rate, burst, sample_forwarded_every: trace_every },
            MonitorOutput { json, count, seconds },
            &places,
        ),
        Command::Doctor { config, json, probe_timeout, places } => return doctor(config, json, probe_timeout, &places),
        Command::Reasons => {
            print_reasons();
            Ok(())
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("overlay: error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn validate(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    println!(
        "{}: valid: node {} (VTEP {}, VXLAN port {}), {} local endpoint(s) in VNI(s) {:?}, {} peer(s)",
        path.display(),
        config.node.name,
        config.node.vtep_address,
        config.node.vxlan_port,
        config.endpoints.len(),
        config.local_vnis(),
        config.peers.len()
    );
    Ok(())
}

fn doctor(config: PathBuf, json: bool, probe_timeout: f64, places: &Places) -> std::process::ExitCode {
    use overlay::doctor::Status;
    let options = overlay::doctor::Options {
        config,
        bpffs_dir: places.bpffs_dir.clone(),
        run_dir: places.run_dir.clone(),
        probe_timeout: Duration::from_secs_f64(probe_timeout.clamp(0.1, 60.0)),
    };
    let findings = overlay::doctor::diagnose(&options);
    for finding in &findings {
        if json { println!("{}", finding.to_json()) } else { println!("{finding}") }
    }
    let count = |status| findings.iter().filter(|f| f.status == status).count();
    if !json {
        println!("{} ok, {} warning(s), {} failure(s), {} skipped", count(Status::Ok), count(Status::Warn), count(Status::Fail), count(Status::Skip));
    }
    if overlay::doctor::failed(&findings) { std::process::ExitCode::FAILURE } else { std::process::ExitCode::SUCCESS }
}

fn print_reasons() {
    println!("{:>4}  {:<30} MEANING", "CODE", "NAME");
    for info in REASONS {
        let kind = if info.reason.is_drop() { "drop: " } else { "" };
        println!("{:>4}  {:<30} {kind}{}", info.reason.0, info.name, info.description.trim());
    }
}

fn down(node: &str, places: &Places) -> anyhow::Result<()> {
    if let Ok(status) = NodeStatus::read(&places.run_dir, node) {
        if status.agent_running() {
            bail!("the agent of node {node} is running (pid {}): stop it first (SIGTERM detaches everything)", status.pid);
        }
    }
    let pins = PinDir::new(&places.bpffs_dir, node);
    if !pins.root().exists() {
        bail!("no datapath of node {node} is pinned in {}", pins.root().display());
    }
    let links = pins.pinned_links();
    pins.remove().with_context(|| format!("removing {}", pins.root().display()))?;
    let _ = std::fs::remove_file(status::path(&places.run_dir, node));
    println!("node {node}: detached {} attachment(s) ({}) and removed {}", links.len(), links.join(", "), pins.root().display());
    Ok(())
}

/// What `overlay stats` shows: the node's counters, and each VNI's and peer's.
struct Stats {
    node: Counters,
    vnis_peers: VniPeerCounters,
}

impl Stats {
    fn since(&self, earlier: &Stats) -> Stats {
        Stats { node: self.node.since(&earlier.node), vnis_peers: self.vnis_peers.since(&earlier.vnis_peers) }
    }
}

fn stats(node: &str, json: bool, watch: Option<u64>, places: &Places) -> anyhow::Result<()> {
    let pins = PinDir::new(&places.bpffs_dir, node);
    let mut warned = false;
    let mut read = || -> anyhow::Result<Stats> {
        let counters = Datapath::pinned_counters(&pins).with_context(|| format!("reading the counters of node {node} (is its datapath running?)"))?;
        // A datapath pinned by a version without them has only the node's counters.
        let vnis_peers = Datapath::pinned_vni_peer_counters(&pins).unwrap_or_else(|error| {
            if !warned {
                eprintln!("overlay: no per-VNI or per-peer counters ({error}); the agent that pinned this datapath predates them");
                warned = true;
            }
            VniPeerCounters::default()
        });
        Ok(Stats { node: counters, vnis_peers })
    };
    let Some(period) = watch else {
        let stats = read()?;
        if json {
            println!("{}", stats_json(&stats, None));
        } else if stats.vnis_peers == VniPeerCounters::default() {
            print!("{}", stats.node);
        } else {
            print!("{}\n{}", stats.node, stats.vnis_peers);
        }
        return Ok(());
    };
    let period = Duration::from_secs(period.max(1));
    let mut previous = read()?;
    loop {
        std::thread::sleep(period);
        let current = read()?;
        let rates = current.since(&previous);
        if json {
            println!("{}", stats_json(&current, Some((&rates, period))));
        } else {
            print!("\x1b[2J\x1b[H{}\n{}\nper second over the last {period:?}:\n", current.node, current.vnis_peers);
            let print_rates = |scope: &str, counters: &Counters| {
                for row in &counters.rows {
                    println!(
                        "  {scope:<20} {:<14} {:<30} {:>12.1} pkt/s {:>14.1} B/s",
                        row.direction.name(),
                        row.reason.info().map_or("unknown", |i| i.name),
                        row.packets as f64 / period.as_secs_f64(),
                        row.bytes as f64 / period.as_secs_f64()
                    );
                }
            };
            print_rates("node", &rates.node);
            for (vni, counters) in &rates.vnis_peers.vnis {
                print_rates(&format!("vni {vni}"), counters);
            }
            for (peer, counters) in &rates.vnis_peers.peers {
                print_rates(&format!("peer {peer}"), counters);
            }
        }
        previous = current;
    }
}

/// `overlay stats --json`: the node's rows under `counters`, each VNI's
/// under `vnis`, each peer's under `peers`; with `rates`, per-second rates
/// in every row.
fn stats_json(stats: &Stats, rates: Option<(&Stats, Duration)>) -> serde_json::Value {
    let vnis: Vec<serde_json::Value> = stats
        .vnis_peers
        .vnis
        .iter()
        .map(|(vni, counters)| {
            let rates = rates.map(|(rates, period)| (rates.vnis_peers.vnis.get(vni), period));
            serde_json::json!({ "vni": vni, "counters": rows_json(counters, rates) })
        })
        .collect();
    let peers: Vec<serde_json::Value> = stats
        .vnis_peers
        .peers
        .iter()
        .map(|(peer, counters)| {
            let rates = rates.map(|(rates, period)| (rates.vnis_peers.peers.get(peer), period));
            serde_json::json!({ "peer": peer.to_string(), "counters": rows_json(counters, rates) })
        })
        .collect();
    serde_json::json!({
        "counters": rows_json(&stats.node, rates.map(|(rates, period)| (Some(&rates.node), period))),
        "vnis": vnis,
        "peers": peers,
    })
}

fn rows_json(counters: &Counters, rates: Option<(Option<&Counters>, Duration)>) -> Vec<serde_json::Value> {
    counters
        .rows
        .iter()
        .map(|row| {
            let mut value = serde_json::json!({
                "direction": row.direction.name(),
                "reason": row.reason.info().map_or("unknown", |i| i.name),
                "code": row.reason.0,
                "drop": row.reason.is_drop(),
                "packets": row.packets,
                "bytes": row.bytes,
            });
            if let Some((rates, period)) = rates {
                let per_second = |n: u64| n as f64 / period.as_secs_f64();
                let delta = rates.and_then(|rates| rates.rows.iter().find(|r| r.direction == row.direction && r.reason == row.reason));
                value["packets_per_second"] = per_second(delta.map_or(0, |r| r.packets)).into();
                value["bytes_per_second"] = per_second(delta.map_or(0, |r| r.bytes)).into();
            }
            value
        })
        .collect()
}

fn show_status(node: &str, places: &Places) -> anyhow::Result<()> {
    let pins = PinDir::new(&places.bpffs_dir, node);
    let status = NodeStatus::read(&places.run_dir, node);
    let pinned = pins.pinned_links();
    match &status {
        Ok(status) => {
            let state = if status.agent_running() { "running" } else { "not running (datapath left pinned)" };
            println!("node {}: agent pid {} {state}, config {}", status.node, status.pid, status.config.display());
            println!("  underlay {} ({}), pinned in {}{}", status.underlay, status.decap_description(), status.pin_dir.display(), if status.adopted { ", adopted from an earlier agent" } else { "" });
            println!("  attachments: {}", status.attachments.join(", "));
            for (vni, peers) in &status.peers_per_vni {
                println!("  VNI {vni}: {peers} peer(s)");
            }
            match &status.last_reload {
                Some(reload) => println!("  last reload at {} (unix time): {} {}", reload.at, if reload.ok { "applied:" } else { "REFUSED:" }, reload.message),
                None => println!("  no reload since start"),
            }
        }
        Err(_) if !pinned.is_empty() => println!("node {node}: no agent status, but a datapath is pinned in {}", pins.root().display()),
        Err(error) => bail!("node {node} has no agent status in {} and no pinned datapath: {error}", places.run_dir.display()),
    }
    println!("  pinned attachments: {}", if pinned.is_empty() { "none".to_owned() } else { pinned.join(", ") });
    Ok(())
}

/// Which events `overlay monitor` shows.
struct MonitorFilter {
    reasons: Vec<String>,
    vni: Option<u32>,
    peer: Option<std::net::Ipv4Addr>,
}

impl MonitorFilter {
    fn matches(&self, event: &overlay::monitor::Event) -> bool {
        (self.reasons.is_empty() || self.reasons.iter().any(|r| r == event.reason_name()))
            && self.vni.is_none_or(|vni| event.vni == Some(vni))
            && self.peer.is_none_or(|peer| event.outer.is_some_and(|(source, destination)| source == peer || destination == peer))
    }
}

struct MonitorOutput {
    json: bool,
    count: Option<u64>,
    seconds: Option<u64>,
}

fn monitor(node: &str, filter: MonitorFilter, settings: overlay_common::MonitorConfig, output: MonitorOutput, places: &Places) -> anyhow::Result<()> {
    for reason in &filter.reasons {
        if !REASONS.iter().any(|info| info.name == reason) {
            bail!("--reason {reason:?} is not a reason name; `overlay reasons` lists them");
        }
    }
    let pins = PinDir::new(&places.bpffs_dir, node);
    let mut monitor = overlay::monitor::Monitor::open(&pins, settings)
        .with_context(|| format!("opening the events of node {node} (is its datapath running?)"))?;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(signal, stop_monitor as *const () as libc::sighandler_t) };
    }
    let started = std::time::Instant::now();
    let lost_at_start = monitor.lost();
    let (mut shown, mut lost_reported) = (0u64, lost_at_start);
    let mut last_lost_check = started;
    while !MONITOR_STOP.load(std::sync::atomic::Ordering::Relaxed)
        && output.count.is_none_or(|count| shown < count)
        && output.seconds.is_none_or(|seconds| started.elapsed() < Duration::from_secs(seconds))
    {
        if let Some(event) = monitor.next(Duration::from_millis(200)) {
            if filter.matches(&event) {
                shown += 1;
                if output.json { println!("{}", event.to_json()) } else { println!("{event}") }
            }
        }
        if last_lost_check.elapsed() >= Duration::from_secs(1) {
            last_lost_check = std::time::Instant::now();
            let lost = monitor.lost();
            if lost > lost_reported {
                report_lost(lost - lost_reported, output.json);
                lost_reported = lost;
            }
        }
    }
    let lost = monitor.lost();
    if lost > lost_reported {
        report_lost(lost - lost_reported, output.json);
    }
    drop(monitor);
    if !output.json {
        eprintln!("{shown} event(s) shown, {} lost to the rate limit or a full buffer", lost - lost_at_start);
    }
    Ok(())
}

fn report_lost(lost: u64, json: bool) {
    if json {
        println!("{}", serde_json::json!({ "kind": "lost", "events": lost }));
    } else {
        println!("lost {lost} event(s): rate limit or full buffer (see --rate/--burst)");
    }
}

/// Set by SIGINT/SIGTERM while `overlay monitor` runs: the loop polls it and
/// exits cleanly, which switches the datapath's events off again.
static MONITOR_STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn stop_monitor(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    MONITOR_STOP.store(true, std::sync::atomic::Ordering::Relaxed);
}

struct RunOptions {
    path: PathBuf,
    mode: AttachMode,
    counters_interval: u64,
    keep_datapath: bool,
    metrics_addr: Option<std::net::SocketAddr>,
    places: Places,
}

/// What identifies a version of the configuration file on disk.
fn file_stamp(path: &Path) -> Option<(std::time::SystemTime, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.modified().unwrap_or(std::time::UNIX_EPOCH), m.len()))
}

fn run(options: RunOptions) -> anyhow::Result<()> {
    let path = options.path.clone();
    // Everything that can be checked is checked before the kernel is touched.
    options.mode.check()?;
    let config = Config::load(&path)?;
    let mut resolved = ResolvedConfig::resolve(config, &path)?;
    let node = resolved.config.node.name.clone();
    let pins = PinDir::new(&options.places.bpffs_dir, &node);
    if let Ok(other) = NodeStatus::read(&options.places.run_dir, &node) {
        if other.agent_running() {
            bail!("an agent already runs node {node} (pid {}, config {}): one agent per node", other.pid, other.config.display());
        }
    }
    // Bound before the kernel is touched: an address it cannot serve refuses the start.
    let metrics = options.metrics_addr.map(overlay::metrics::bind).transpose()?;

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")?;
    runtime.block_on(async move {
        let mut datapath = Datapath::load_pinned(log::max_level(), &pins, &node).context("loading the eBPF datapath")?;
        if datapath.adopted() {
            log::info!("adopting the datapath pinned in {} by an earlier agent; its maps are changed as a diff", pins.root().display());
        }
        if let Some(logger) = datapath.take_logger() {
            // SAFETY: the logger owns its ring buffer fd, which stays open
            // and unchanged for as long as the AsyncFd owns the logger.
            let mut logger = unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
                .map_err(|error| anyhow::anyhow!("watching the eBPF log ring buffer: {error}"))?;
            tokio::spawn(async move {
                loop {
                    let Ok(mut guard) = logger.readable_mut().await else { break };
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            });
        }
        let forwarding = overlay::netdev::enable_ipv4_forwarding(&resolved.config.node.underlay_interface)
            .context("enabling IPv4 forwarding on the underlay device")?;
        // After loading: an adopted datapath's VNIs and peers keep their counter slots.
        let desired = MapState::from_config(&resolved, datapath.applied()).context("assigning counter slots")?;
        let report = datapath.apply(&desired).context("filling the datapath maps")?;
        let hook = datapath.attach(&resolved, options.mode).context("attaching the datapath")?;
        keep_peers_resolved(&resolved);
        let underlay = resolved.config.node.underlay_interface.clone();
        match overlay::netdev::mtu(&underlay) {
            Ok(mtu) => log::info!(
                "overlay MTU {} (underlay {underlay} MTU {mtu} less 50 bytes of VXLAN over IPv4): the container side of each port should use it; larger frames get ICMP too-big",
                mtu.saturating_sub(overlay_common::VXLAN_ENCAP_LEN as u32),
            ),
            Err(error) => log::warn!("reading the MTU of {underlay}: {error}"),
        }
        let mut status = NodeStatus {
            node: node.clone(),
            pid: std::process::id(),
            config: std::fs::canonicalize(&path).unwrap_or(path.clone()),
            pin_dir: pins.root().to_owned(),
            started: status::now(),
            adopted: datapath.adopted(),
            underlay: underlay.clone(),
            decap: hook.hook().to_owned(),
            xdp_mode: hook.xdp_mode(),
            tc_attach: datapath.tc_attachment().map_or("", |kind| kind.label()).to_owned(),
            ..NodeStatus::default()
        };
        refresh_status(&mut status, &datapath, &resolved, &options.places.run_dir);
        if let Some(listener) = metrics {
            let run_dir = options.places.run_dir.clone();
            overlay::metrics::spawn(listener, overlay::metrics::Source { node: node.clone(), pins: pins.clone(), run_dir });
        }
        log::info!(
            "node {node} forwarding: VTEP {} port {}, underlay {underlay} (decapsulation: {hook}), {} port(s), {} peer(s), VNIs {:?}; maps: {report}",
            resolved.config.node.vtep_address,
            resolved.config.node.vxlan_port,
            resolved.config.endpoints.len(),
            resolved.config.peers.len(),
            resolved.config.local_vnis(),
        );

        let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let period = Duration::from_secs(options.counters_interval.max(1));
        let mut counters_ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let mut file_ticker = tokio::time::interval(Duration::from_secs(1));
        let mut stamp = file_stamp(&path);
        let signal_name = loop {
            let trigger = tokio::select! {
                _ = interrupt.recv() => break "SIGINT",
                _ = terminate.recv() => break "SIGTERM",
                _ = hangup.recv() => "SIGHUP",
                _ = file_ticker.tick() => {
                    let now = file_stamp(&path);
                    if now == stamp { continue }
                    stamp = now;
                    "a change of the file"
                }
                _ = counters_ticker.tick(), if options.counters_interval > 0 => {
                    match read_all_counters(&datapath) {
                        Ok((counters, vnis_peers)) => println!("{counters}\n{vnis_peers}"),
                        Err(error) => log::warn!("reading counters: {error}"),
                    }
                    continue;
                }
            };
            let outcome = reload(&path, &mut datapath, &mut resolved, options.mode);
            let message = match &outcome {
                Ok(report) => format!("{report}"),
                Err(error) => format!("{error:#}"),
            };
            match &outcome {
                Ok(_) => log::info!("reloaded {} after {trigger}: {message}", path.display()),
                Err(_) => log::error!("reload of {} after {trigger} refused, nothing changed: {message}", path.display()),
            }
            status.last_reload = Some(Reload { at: status::now(), ok: outcome.is_ok(), message });
            refresh_status(&mut status, &datapath, &resolved, &options.places.run_dir);
        };
        let counters = read_all_counters(&datapath);
        if options.keep_datapath {
            log::info!("{signal_name}: leaving the datapath pinned and forwarding in {} (`overlay down --node {node}` removes it)", pins.root().display());
            forwarding.keep();
            drop(datapath);
        } else {
            log::info!("{signal_name}: detaching");
            datapath.detach();
            drop(datapath);
            drop(forwarding);
        }
        let _ = std::fs::remove_file(status::path(&options.places.run_dir, &node));
        match counters {
            Ok((counters, vnis_peers)) => println!("datapath counters of node {node} at exit:\n{counters}\n{vnis_peers}"),
            Err(error) => log::warn!("reading counters: {error}"),
        }
        if !options.keep_datapath {
            log::info!("node {node}: datapath detached");
        }
        Ok(())
    })
}

/// The node's counters and each VNI's and peer's.
fn read_all_counters(datapath: &Datapath) -> Result<(Counters, VniPeerCounters), overlay::DatapathError> {
    Ok((datapath.counters()?, datapath.vni_peer_counters()?))
}

/// Validates the file anew and applies it as a diff. A bad file, or one
/// whose ports cannot be attached, changes nothing.
fn reload(path: &Path, datapath: &mut Datapath, current: &mut ResolvedConfig, mode: AttachMode) -> anyhow::Result<ApplyReport> {
    let config = Config::load(path)?;
    if config.node.name != current.config.node.name {
        bail!("node.name changed from {:?} to {:?}: a running agent cannot rename its node", current.config.node.name, config.node.name);
    }
    let resolved = ResolvedConfig::resolve(config, path)?;
    let previous = datapath.applied().clone();
    let desired = MapState::from_config(&resolved, &previous).context("assigning counter slots")?;
    let report = datapath.apply(&desired).context("changing the maps")?;
    if let Err(error) = datapath.attach(&resolved, mode) {
        // Back to the previous maps, and to the previous attachments.
        if let Err(undo) = datapath.apply(&previous) {
            log::error!("restoring the previous maps after a failed attach: {undo}");
        }
        let _ = datapath.attach(current, mode);
        return Err(error).context("attaching to the new configuration's ports");
    }
    keep_peers_resolved(&resolved);
    *current = resolved;
    Ok(report)
}

fn keep_peers_resolved(resolved: &ResolvedConfig) {
    for (peer, error) in overlay::neighbour::keep_peers_resolved(&resolved.config) {
        log::warn!("peer {peer}: cannot keep its underlay next hop resolved ({error}); flooded and non-IP frames to it may be lost until it is");
    }
}

fn refresh_status(status: &mut NodeStatus, datapath: &Datapath, resolved: &ResolvedConfig, run_dir: &Path) {
    status.attachments = datapath.attachments();
    status.peers_per_vni = resolved
        .config
        .local_vnis()
        .into_iter()
        .map(|vni| (vni, resolved.config.peers.iter().filter(|p| p.vnis().contains(&vni)).count()))
        .collect();
    if let Err(error) = status.write(run_dir) {
        log::warn!("writing the status file in {}: {error}", run_dir.display());
    }
}
