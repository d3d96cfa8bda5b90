//! `overlay`: the node agent and CLI. Parsing and rendering only: the
//! agent, the API and everything they do live in the library.
mod cli_api;
mod cli_cluster;
mod cli_docker;
mod cli_fdb;

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use overlay::{
    AttachMode, Config, Counters, Datapath, DecapMode, VniPeerCounters, XdpAttachMode,
    pinning::{DEFAULT_BPFFS_DIR, PinDir},
    status::{self, DEFAULT_RUN_DIR, NodeStatus},
};
use overlay_common::reason::REASONS;

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
        #[arg(long, default_value = "auto", value_parser = mode_parser(DecapMode::NAMES))]
        decap: DecapMode,
        /// How to attach the XDP decapsulation program (auto: native, else
        /// generic). Given explicitly, it implies --decap xdp under --decap auto.
        #[arg(long, default_value = "auto", value_parser = mode_parser(XdpAttachMode::NAMES))]
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
        /// Serve the local API on this unix socket (default: <run-dir>/<node>.sock).
        #[arg(long, value_name = "PATH")]
        api_socket: Option<PathBuf>,
        #[command(flatten)]
        etcd: cli_cluster::EtcdArgs,
        #[command(flatten)]
        docker: cli_docker::DockerArgs,
        #[command(flatten)]
        places: Places,
    },
    /// Networks: create, list and remove them through the running agent's API.
    Network {
        #[command(subcommand)]
        command: cli_api::NetworkCommand,
        #[command(flatten)]
        api: cli_api::ApiPlace,
    },
    /// Local endpoints: add, list and remove them through the running agent's API.
    Endpoint {
        #[command(subcommand)]
        command: cli_api::EndpointCommand,
        #[command(flatten)]
        api: cli_api::ApiPlace,
    },
    /// The cluster registry in etcd (`overlay cluster status --etcd URL`).
    Cluster {
        #[command(subcommand)]
        command: cli_cluster::ClusterCommand,
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
    /// Print a node's forwarding database: configured entries and, in
    /// learning networks, learned ones (marked learned, with their age).
    Fdb {
        /// The node's name.
        #[arg(long)]
        node: String,
        /// As JSON.
        #[arg(long)]
        json: bool,
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

/// Parses one of a mode enum's names (the library has no clap types).
fn mode_parser<M>(names: &'static [(M, &'static str)]) -> impl clap::builder::TypedValueParser<Value = M>
where
    M: std::str::FromStr<Err = overlay::datapath::attach::UnknownMode> + Clone + Send + Sync + 'static,
{
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(names.iter().map(|(_, name)| *name)).try_map(|name| name.parse::<M>())
}

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config, decap, xdp_mode, counters_interval, keep_datapath, metrics_addr, api_socket, etcd, docker, places } => {
            let mode = AttachMode { decap, xdp: xdp_mode };
            etcd.settings().and_then(|registry| Ok((registry, docker.options()?))).and_then(|(registry, docker_plugin)| overlay::agent::run(overlay::agent::RunOptions {
                registry,
                docker_plugin,
                config,
                mode,
                counters_interval,
                keep_datapath,
                metrics_addr,
                bpffs_dir: places.bpffs_dir,
                run_dir: places.run_dir,
                api_socket,
            }))
        }
        Command::Network { command, api } => cli_api::network(command, &api),
        Command::Endpoint { command, api } => cli_api::endpoint(command, &api),
        Command::Cluster { command } => cli_cluster::cluster(command),
        Command::Validate { config } => validate(config),
        Command::Down { node, places } => down(&node, &places),
        Command::Stats { node, json, watch, places } => stats(&node, json, watch, &places),
        Command::Status { node, places } => show_status(&node, &places),
        Command::Fdb { node, json, places } => cli_fdb::show(&node, &PinDir::new(&places.bpffs_dir, &node), json),
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
            for (endpoint, why) in &status.pending {
                println!("  pending: {endpoint}: {why}");
            }
            if let Some(socket) = &status.api_socket {
                println!("  local API: {}", socket.display());
            }
            if let Some(cluster) = &status.cluster {
                println!("  cluster: {}", cluster.summary);
                for item in &cluster.left_out {
                    println!("  registry item left out (conflicts with this node's own): {item}");
                }
                for conflict in &cluster.conflicts {
                    println!("  cluster conflict: {conflict}");
                }
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
    if let Ok(learned) = Datapath::pinned_learned(&pins) {
        for (vni, ageing) in &learned.learning_vnis {
            let entries = learned.rows.iter().filter(|row| row.vni == *vni);
            let in_use = entries.clone().filter(|row| row.in_use).count();
            println!("  VNI {vni} learns (ageing {ageing} s): {in_use} learned entries in use, {} held (`overlay fdb --node {node}` lists them)", entries.count());
        }
    }
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
