//! The agent: loads (or adopts) the datapath, feeds the reconciler from the
//! sources, serves the local API and metrics, and wakes the reconciler on
//! SIGHUP, on a change of the file, on an API call, and while an endpoint
//! waits for its interface. SIGINT/SIGTERM detach (or leave the datapath
//! pinned with `keep_datapath`).
mod addresses;
pub mod changes;
pub mod cluster;
mod cluster_follow;
mod state;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, bail};
pub use addresses::{AddressError, Allocated};
pub use state::{AgentState, ChangeError, ReloadError, api_state_path};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::Mutex,
};

use crate::{
    config::{Config, ConfigError},
    datapath::{AttachMode, Counters, Datapath, DatapathError, VniPeerCounters},
    model::SourceKind,
    pinning::PinDir,
    reconciler::{EndpointState, Reconciler},
    sources::{self, Parts, api_store},
    status::{self, NodeStatus, Reload},
};

/// What `overlay run` was asked to do.
pub struct RunOptions {
    pub config: PathBuf,
    pub mode: AttachMode,
    /// Print counters every this many seconds (0: only at exit).
    pub counters_interval: u64,
    pub keep_datapath: bool,
    pub metrics_addr: Option<SocketAddr>,
    pub bpffs_dir: PathBuf,
    pub run_dir: PathBuf,
    /// The local API's unix socket (default `<run dir>/<node>.sock`).
    pub api_socket: Option<PathBuf>,
    /// Cluster mode: the registry in etcd.
    pub registry: Option<crate::registry::RegistrySettings>,
    /// Serve Docker's network and IPAM plugin (`--docker-plugin NAME`).
    pub docker_plugin: Option<crate::docker::PluginOptions>,
}

/// How often the agent removes aged learned FDB entries.
const LEARNED_SWEEP_PERIOD: Duration = Duration::from_secs(10);

/// The shared agent state, as API handlers and the loop hold it.
pub type Shared = Arc<Mutex<AgentState>>;

/// The local API's socket of `node` by default.
pub fn default_api_socket(run_dir: &Path, node: &str) -> PathBuf {
    run_dir.join(format!("{node}.sock"))
}

/// Runs the agent until SIGINT or SIGTERM.
pub fn run(options: RunOptions) -> anyhow::Result<()> {
    // Everything that can be checked is checked before the kernel is touched.
    options.mode.check()?;
    let config = Config::load(&options.config)?;
    let node = config.node.name.clone();
    if crate::netdev::ifindex(&config.node.underlay_interface).is_none() {
        return Err(ConfigError::Invalid {
            path: options.config.clone(),
            problems: vec![crate::config::Problem::in_file(
                "node.underlay_interface",
                &config.node.underlay_interface,
                "no such network interface in this network namespace",
            )],
        }
        .into());
    }
    let pins = PinDir::new(&options.bpffs_dir, &node);
    if let Ok(other) = NodeStatus::read(&options.run_dir, &node) {
        if other.agent_running() {
            bail!("an agent already runs node {node} (pid {}, config {}): one agent per node", other.pid, other.config.display());
        }
    }
    let api_path = api_state_path(&options.run_dir, &node);
    let api = api_store::load(&api_path).with_context(|| format!("reading the API state of node {node}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")?;
    // Cluster mode: the registry's part is known before the check, so that
    // API endpoints in registry networks are valid at a restart (from the
    // snapshot kept on disk, else etcd's first answer).
    let (mut cluster, registry_part, snapshot) = match options.registry.clone() {
        Some(settings) => {
            let cluster = runtime.block_on(cluster::Cluster::connect(settings, &options.run_dir, &node)).context("connecting to etcd")?;
            let snapshot = runtime.block_on(cluster.initial_snapshot());
            let fragment = crate::registry::fragment(&snapshot, &node);
            let (fragment, dropped) = cluster::admit(&config.node_settings(), &config.fragment(), &api.fragment(), fragment);
            (Some(cluster), fragment, Some((snapshot, dropped)))
        }
        None => (None, Default::default(), None),
    };
    let parts = Parts { file: &config.fragment(), api: &api.fragment(), registry: &registry_part };
    let (model, problems) = parts.candidate(config.node_settings(), SourceKind::File);
    if !problems.is_empty() {
        return Err(ConfigError::Invalid { path: options.config.clone(), problems })
            .context(format!("the file conflicts with endpoints or networks created through the API (kept in {})", api_path.display()));
    }
    if let (Some(cluster), Some((snapshot, dropped))) = (cluster.as_mut(), snapshot) {
        cluster.revision = snapshot.revision;
        cluster.conflicts = cluster::conflicts_of(&snapshot, &node);
        cluster.dropped = dropped;
    }
    // Bound before the kernel is touched: an address it cannot serve refuses the start.
    let metrics = options.metrics_addr.map(crate::metrics::bind).transpose()?;
    let metrics_addr = metrics.as_ref().and_then(|listener| listener.local_addr().ok());
    if let Some(address) = metrics_addr.filter(|a| !a.ip().is_loopback()) {
        log::warn!("{}", crate::metrics::exposure_warning(address));
    }
    let socket_path = options.api_socket.clone().unwrap_or_else(|| default_api_socket(&options.run_dir, &node));

    runtime.block_on(async move {
        // Root only: the API changes what the node forwards.
        let api_socket = crate::http::bind_unix(&socket_path, 0o600)
            .with_context(|| format!("binding the local API socket {}", socket_path.display()))?;
        let docker_socket = match &options.docker_plugin {
            Some(plugin) => Some(
                crate::http::bind_unix(&plugin.socket(), 0o600)
                    .with_context(|| format!("binding the Docker plugin socket {}", plugin.socket().display()))?,
            ),
            None => None,
        };
        let mut datapath = Datapath::load_pinned(log::max_level(), &pins, &node).context("loading the eBPF datapath")?;
        if datapath.adopted() {
            log::info!("adopting the datapath pinned in {} by an earlier agent; its maps are changed as a diff", pins.root().display());
        }
        forward_ebpf_logs(&mut datapath)?;
        let underlay = config.node.underlay_interface.clone();
        let forwarding = crate::netdev::enable_ipv4_forwarding(&underlay).context("enabling IPv4 forwarding on the underlay device")?;
        let mut reconciler = Reconciler::new(datapath, options.mode);
        let outcome = reconciler.reconcile(&model).await.context("applying the desired state")?;
        match crate::netdev::overlay_mtu(&underlay) {
            Ok(mtu) => log::info!(
                "overlay MTU {mtu} (underlay {underlay}'s less 50 bytes of VXLAN over IPv4): the container side of each port should use it; larger frames get ICMP too-big",
            ),
            Err(error) => log::warn!("reading the MTU of {underlay}: {error}"),
        }
        let mut status = NodeStatus {
            node: node.clone(),
            pid: std::process::id(),
            config: std::fs::canonicalize(&options.config).unwrap_or(options.config.clone()),
            pin_dir: pins.root().to_owned(),
            started: status::now(),
            adopted: reconciler.datapath().adopted(),
            underlay: underlay.clone(),
            decap: outcome.hook.hook().to_owned(),
            xdp_mode: outcome.hook.xdp_mode(),
            tc_attach: reconciler.datapath().tc_attachment().map_or("", |kind| kind.label()).to_owned(),
            api_socket: Some(socket_path.clone()),
            metrics_addr,
            ..NodeStatus::default()
        };
        log::info!(
            "node {node} forwarding: VTEP {} port {}, underlay {underlay} (decapsulation: {}), {} endpoint(s) applied, {} pending, {} peer(s); maps: {}; API on {}",
            config.node.vtep_address,
            config.node.vxlan_port,
            outcome.hook,
            reconciler.applied().map_or(0, |r| r.endpoints.len()),
            reconciler.applied().map_or(0, |r| r.pending.len()),
            model.peers.len(),
            outcome.maps,
            socket_path.display(),
        );
        let node_record = crate::registry::NodeRecord {
            name: node.clone(),
            vtep: config.node.vtep_address.into(),
            vxlan_port: config.node.vxlan_port,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        let in_cluster = cluster.is_some();
        let shared: Shared = Arc::new(Mutex::new(AgentState {
            config_path: options.config.clone(),
            config,
            api,
            api_path,
            reconciler,
            registry: registry_part,
            cluster,
        }));
        refresh_status(&mut status, &*shared.lock().await, &options.run_dir);
        if let Some(listener) = metrics {
            let source = crate::metrics::Source { node: node.clone(), pins: pins.clone(), run_dir: options.run_dir.clone() };
            crate::metrics::spawn(listener, source);
        }
        let (api_changed, mut api_changes) = tokio::sync::mpsc::channel::<()>(1);
        let registry_task = in_cluster.then(|| tokio::spawn(cluster_follow::follow(shared.clone(), node_record, api_changed.clone())));
        let api_server = crate::http::serve_bound_unix(api_socket, crate::api::server::router(shared.clone(), api_changed.clone()));
        let docker_server = match (&options.docker_plugin, docker_socket) {
            (Some(plugin), Some(bound)) => {
                let state = crate::docker::store::state_path(&options.run_dir, &node);
                Some(crate::docker::serve(plugin, bound, shared.clone(), api_changed, state).context("starting the Docker plugin")?)
            }
            _ => None,
        };

        let (file_changed, mut file_changes) = tokio::sync::mpsc::channel::<()>(1);
        let _watcher = sources::file::watch(&options.config, file_changed)
            .map_err(|error| log::warn!("watching {} for changes ({error}); reload it with SIGHUP", options.config.display()))
            .ok();
        let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let period = Duration::from_secs(options.counters_interval.max(1));
        let mut counters_ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let mut pending_ticker = tokio::time::interval(Duration::from_secs(1));
        // A look that took longer than the period is not made up for in a burst.
        pending_ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Learned entries age in the datapath itself (timestamps, LRU); the
        // sweep only removes what it no longer uses, so a slow one is harmless.
        let mut learned_sweep_ticker = tokio::time::interval(LEARNED_SWEEP_PERIOD);
        let signal_name = loop {
            let trigger = tokio::select! {
                _ = interrupt.recv() => break "SIGINT",
                _ = terminate.recv() => break "SIGTERM",
                _ = hangup.recv() => "SIGHUP",
                Some(()) = file_changes.recv() => {
                    // Editors write in steps: let them finish.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    while file_changes.try_recv().is_ok() {}
                    "a change of the file"
                }
                Some(()) = api_changes.recv() => {
                    refresh_status(&mut status, &*shared.lock().await, &options.run_dir);
                    continue;
                }
                _ = pending_ticker.tick() => {
                    let mut agent = shared.lock().await;
                    if !agent.reconciler.has_pending() || !pending_interface_appeared(&agent) {
                        continue;
                    }
                    match agent.reconcile().await {
                        Ok(outcome) => log::info!("an endpoint's interface appeared: {}", outcome.maps),
                        Err(error) => log::error!("applying endpoints whose interfaces appeared, refused, nothing changed: {error}"),
                    }
                    refresh_status(&mut status, &agent, &options.run_dir);
                    continue;
                }
                _ = learned_sweep_ticker.tick() => {
                    let mut agent = shared.lock().await;
                    match agent.reconciler.sweep_learned() {
                        Ok(0) => {}
                        Ok(removed) => log::debug!("removed {removed} learned FDB entries no longer in use"),
                        Err(error) => log::warn!("sweeping the learned FDB: {error}"),
                    }
                    continue;
                }
                _ = counters_ticker.tick(), if options.counters_interval > 0 => {
                    match read_all_counters(shared.lock().await.reconciler.datapath()) {
                        Ok((counters, vnis_peers)) => println!("{counters}\n{vnis_peers}"),
                        Err(error) => log::warn!("reading counters: {error}"),
                    }
                    continue;
                }
            };
            let mut agent = shared.lock().await;
            let path = agent.config_path.display().to_string();
            let outcome = agent.reload_file().await;
            let message = match &outcome {
                Ok(outcome) => format!("{}", outcome.maps),
                Err(error) => format!("{error:#}"),
            };
            match &outcome {
                Ok(_) => log::info!("reloaded {path} after {trigger}: {message}"),
                Err(_) => log::error!("reload of {path} after {trigger} refused, nothing changed: {message}"),
            }
            status.last_reload = Some(Reload { at: status::now(), ok: outcome.is_ok(), message });
            refresh_status(&mut status, &agent, &options.run_dir);
        };
        drop(docker_server);
        drop(api_server);
        if let Some(task) = registry_task {
            task.abort();
        }
        // API connections may still hold the state: work through the lock.
        let mut agent = shared.lock().await;
        let counters = read_all_counters(agent.reconciler.datapath());
        if options.keep_datapath {
            log::info!("{signal_name}: leaving the datapath pinned and forwarding in {} (`overlay down --node {node}` removes it)", pins.root().display());
            forwarding.keep();
        } else {
            log::info!("{signal_name}: detaching");
            agent.reconciler.detach().await;
            drop(forwarding);
        }
        let _ = std::fs::remove_file(status::path(&options.run_dir, &node));
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

fn forward_ebpf_logs(datapath: &mut Datapath) -> anyhow::Result<()> {
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
    Ok(())
}

/// Whether an interface some pending endpoint waits for exists now.
fn pending_interface_appeared(agent: &AgentState) -> bool {
    let model = agent.model();
    model.endpoints.iter().any(|endpoint| {
        matches!(agent.endpoint_state(&endpoint.origin), Some(EndpointState::Pending(_)))
            && crate::netdev::ifindex(&endpoint.interface).is_some()
    })
}

/// The node's counters and each VNI's and peer's.
fn read_all_counters(datapath: &Datapath) -> Result<(Counters, VniPeerCounters), DatapathError> {
    Ok((datapath.counters()?, datapath.vni_peer_counters()?))
}

fn refresh_status(status: &mut NodeStatus, agent: &AgentState, run_dir: &Path) {
    let reconciler = &agent.reconciler;
    status.attachments = reconciler.datapath().attachments();
    if let Some(resolved) = reconciler.applied() {
        status.peers_per_vni = resolved
            .local_vnis()
            .into_iter()
            .map(|vni| (vni, resolved.peers.iter().filter(|p| p.vnis.contains(&vni)).count()))
            .collect();
        status.pending = resolved.pending.iter().map(|(origin, why)| (format!("{} {}", origin.source, origin.key), why.clone())).collect();
    }
    if let Some(hook) = reconciler.hook() {
        status.decap = hook.hook().to_owned();
        status.xdp_mode = hook.xdp_mode();
    }
    status.cluster = agent.cluster.as_ref().map(|cluster| status::Cluster {
        summary: cluster.summary(),
        left_out: cluster.dropped.iter().map(ToString::to_string).collect(),
        conflicts: cluster.conflicts.iter().cloned().chain(cluster.refusal.iter().map(|r| format!("registration refused: {r}"))).collect(),
    });
    if let Err(error) = status.write(run_dir) {
        log::warn!("writing the status file in {}: {error}", run_dir.display());
    }
}
