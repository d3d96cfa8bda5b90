//! `overlay`: the node agent and CLI.
use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use overlay::{Config, Datapath, MapState, ResolvedConfig, XdpAttachMode};
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

#[derive(Subcommand)]
enum Command {
    /// Load and attach the datapath for this node and keep it running until SIGINT or SIGTERM.
    Run {
        /// The node's configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// How to attach the XDP decapsulation program to the underlay device.
        #[arg(long, value_enum, default_value_t = XdpAttachMode::Auto)]
        xdp_mode: XdpAttachMode,
        /// Also print the datapath counters every this many seconds (0: only at exit).
        #[arg(long, default_value_t = 0)]
        counters_interval: u64,
    },
    /// Check a configuration file without touching the kernel.
    Validate {
        /// The configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// List the datapath's numbered outcomes and drop reasons.
    Reasons,
}

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config, xdp_mode, counters_interval } => run(config, xdp_mode, counters_interval),
        Command::Validate { config } => validate(config),
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

fn print_reasons() {
    println!("{:>4}  {:<30} MEANING", "CODE", "NAME");
    for info in REASONS {
        let kind = if info.reason.is_drop() { "drop: " } else { "" };
        println!("{:>4}  {:<30} {kind}{}", info.reason.0, info.name, info.description.trim());
    }
}

fn run(path: PathBuf, xdp_mode: XdpAttachMode, counters_interval: u64) -> anyhow::Result<()> {
    // Everything that can be checked is checked before the kernel is touched.
    let config = Config::load(&path)?;
    let resolved = ResolvedConfig::resolve(config, &path)?;
    let desired = MapState::from_config(&resolved);

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")?;
    runtime.block_on(async move {
        let mut datapath = Datapath::load(log::max_level()).context("loading the eBPF datapath")?;
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
        let _forwarding = overlay::netdev::enable_ipv4_forwarding(&resolved.config.node.underlay_interface)
            .context("enabling IPv4 forwarding on the underlay device")?;
        let report = datapath.apply(&desired).context("filling the datapath maps")?;
        let mode = datapath.attach(&resolved, xdp_mode).context("attaching the datapath")?;
        for (peer, error) in overlay::neighbour::keep_peers_resolved(&resolved.config) {
            log::warn!("peer {peer}: cannot keep its underlay next hop resolved ({error}); flooded and non-IP frames to it may be lost until it is");
        }
        let node = &resolved.config.node;
        match overlay::netdev::mtu(&node.underlay_interface) {
            Ok(mtu) => log::info!(
                "overlay MTU {} (underlay {} MTU {mtu} less 50 bytes of VXLAN over IPv4): the container side of each port should use it; larger frames get ICMP too-big",
                mtu.saturating_sub(overlay_common::VXLAN_ENCAP_LEN as u32),
                node.underlay_interface
            ),
            Err(error) => log::warn!("reading the MTU of {}: {error}", node.underlay_interface),
        }
        log::info!(
            "node {} forwarding: VTEP {} port {}, underlay {} (XDP {mode}), {} port(s), {} peer(s), VNIs {:?}; maps: {report}",
            node.name,
            node.vtep_address,
            node.vxlan_port,
            node.underlay_interface,
            resolved.config.endpoints.len(),
            resolved.config.peers.len(),
            resolved.config.local_vnis(),
        );

        let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let period = Duration::from_secs(counters_interval.max(1));
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let signal_name = loop {
            tokio::select! {
                _ = interrupt.recv() => break "SIGINT",
                _ = terminate.recv() => break "SIGTERM",
                _ = ticker.tick(), if counters_interval > 0 => {
                    match datapath.counters() {
                        Ok(counters) => println!("{counters}"),
                        Err(error) => log::warn!("reading counters: {error}"),
                    }
                }
            }
        };
        log::info!("{signal_name}: detaching");
        let counters = datapath.counters();
        datapath.detach();
        drop(datapath);
        match counters {
            Ok(counters) => println!("datapath counters of node {} at exit:\n{counters}", node.name),
            Err(error) => log::warn!("reading counters: {error}"),
        }
        log::info!("node {}: datapath detached", node.name);
        Ok(())
    })
}
