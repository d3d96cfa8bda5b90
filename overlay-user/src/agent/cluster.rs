//! Cluster mode: the registry in etcd as the model's third source. A task
//! turns each new [`ClusterSnapshot`] into the registry's [`Fragment`],
//! leaves out the registry items that conflict with this node's own (file,
//! API) items, and reconciles. This node's registration ([`NodeSession`])
//! is started in the background, so an unreachable etcd never stops the
//! node from forwarding what its file and API state say; while etcd is
//! unreachable the last snapshot stays applied.
//!
//! The last snapshot applied is kept on disk (`<run dir>/<node>.registry.json`)
//! and the node's lease id beside it (`<node>.lease`): an agent restarted
//! (after a crash, say) starts from that snapshot, so its API endpoints in
//! registry networks are valid before etcd answers, and takes its lease
//! over while it lives, so no other node sees it go.
//!
//! A refused registration (another live node holds the name or VTEP) is
//! logged and shown in `overlay status`, and the agent keeps running with
//! the registry's view only (it learns the others but publishes nothing),
//! so a misconfigured node never takes down the containers it already
//! serves; it tries again at half the lease TTL (keeping the refusal
//! recorded for the holder's side) and registers once the holder is gone.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::sync::watch;

use super::{AgentState, ChangeError};
use crate::{
    model::{Fragment, MacAddr, NodeSettings, Origin, Problem, ProblemKind, SourceKind},
    reconciler::Outcome,
    registry::{
        self, ClusterProblem, ClusterSnapshot, ClusterWatch, EndpointRecord, NetworkRecord, NodeSession, Registry, RegistryError, SessionState,
    },
    sources::{
        Parts,
        api_store::{ApiNetwork, ApiState},
    },
};

/// The agent's link to the registry.
pub struct Cluster {
    pub registry: Registry,
    /// This node's registration, once etcd accepted it.
    pub session: Option<Arc<NodeSession>>,
    /// Why this node is not registered (a refusal), if it is not.
    pub refusal: Option<String>,
    /// Registry items left out of the model: they conflict with local ones.
    pub dropped: Vec<Problem>,
    /// Refused claims this node made or holds (either side reports them).
    pub conflicts: Vec<String>,
    /// The revision of the snapshot applied last.
    pub revision: i64,
    pub snapshots: watch::Receiver<Arc<ClusterSnapshot>>,
    /// Where the last applied snapshot is kept (`<run dir>/<node>.registry.json`).
    pub cache_path: PathBuf,
    /// Where this node's lease id is kept (`<run dir>/<node>.lease`), so
    /// that an agent restarted within the TTL takes its registration over.
    pub lease_path: PathBuf,
    /// This node's share of the cluster-wide address allocator.
    pub ipam: Arc<registry::Ipam>,
    /// Taken by every change that goes through etcd (API calls, publishing
    /// rounds) for its whole length, so that they never interleave, while
    /// the agent's lock is held only for the local steps.
    pub changes: Arc<tokio::sync::Mutex<()>>,
    /// Stops the watch when the agent goes.
    _watch: ClusterWatch,
}

impl Cluster {
    /// Connects (lazily: etcd may be down) and starts the watch.
    pub async fn connect(settings: registry::RegistrySettings, run_dir: &Path, node: &str) -> Result<Cluster, RegistryError> {
        let registry = Registry::connect(settings).await?;
        let watch = ClusterWatch::start(registry.clone());
        Ok(Cluster {
            snapshots: watch.snapshots(),
            registry: registry.clone(),
            session: None,
            refusal: None,
            dropped: Vec::new(),
            conflicts: Vec::new(),
            revision: 0,
            ipam: Arc::new(registry::Ipam::new(registry.clone(), node)),
            changes: Arc::default(),
            cache_path: run_dir.join(format!("{node}.registry.json")),
            lease_path: run_dir.join(format!("{node}.lease")),
            _watch: watch,
        })
    }

    /// The snapshot to start from: the one the previous run applied last
    /// (kept on disk), else the first etcd answers within the request
    /// timeout, else none (an empty registry part).
    pub async fn initial_snapshot(&self) -> Arc<ClusterSnapshot> {
        match registry::cache::load(&self.cache_path, self.registry.layout()) {
            Ok(Some(snapshot)) => {
                log::info!("starting from the registry snapshot of revision {} kept in {}", snapshot.revision, self.cache_path.display());
                return Arc::new(snapshot);
            }
            Ok(None) => {}
            Err(error) => log::warn!("reading the registry snapshot kept in {}: {error}; waiting for etcd instead", self.cache_path.display()),
        }
        let mut snapshots = self.snapshots.clone();
        let first = snapshots.wait_for(|snapshot| snapshot.revision > 0);
        match tokio::time::timeout(self.registry.settings().request_timeout, first).await {
            Ok(Ok(snapshot)) => Arc::clone(&snapshot),
            _ => {
                log::warn!("etcd gave no snapshot within {:?}: starting without the registry's part", self.registry.settings().request_timeout);
                Arc::default()
            }
        }
    }

    /// One line for `overlay status`.
    pub fn summary(&self) -> String {
        let registration = match (&self.session, &self.refusal) {
            (_, Some(refusal)) => format!("registration refused: {refusal}"),
            (Some(session), None) => match &*session.state().borrow() {
                SessionState::Registered { lease } => format!("registered on lease {lease:x}"),
                SessionState::Unreachable { error } => format!("etcd unreachable ({error}); last state kept"),
                SessionState::Refused { error } => format!("re-registration refused: {error}"),
            },
            (None, None) => "registering (etcd not answering yet)".to_owned(),
        };
        format!("etcd {}; {registration}; snapshot revision {}", self.registry.settings().endpoints.join(","), self.revision)
    }
}

/// The conflicts of `snapshot` that concern node `me`: claims it made that
/// were refused, and claims refused because it holds the thing claimed
/// (as each claimant recorded them), and hand-written records in conflict.
pub fn conflicts_of(snapshot: &ClusterSnapshot, me: &str) -> Vec<String> {
    let mine = |name: &str| name == me;
    snapshot
        .problems
        .iter()
        .filter(|problem| match problem {
            ClusterProblem::RefusedClaim(report) => mine(&report.claimant) || report.holder_node.as_deref().is_some_and(mine),
            ClusterProblem::VtepConflict { holder, claimant, .. } => mine(holder) || mine(claimant),
            ClusterProblem::AddressConflict { network, holder, claimant, .. } => [holder, claimant]
                .iter()
                .any(|mac| snapshot.endpoints.get(&(network.clone(), **mac)).is_some_and(|endpoint| mine(&endpoint.node))),
            _ => false,
        })
        .map(ToString::to_string)
        .collect()
}

/// The registry's fragment less its items that conflict with the local
/// sources' (which came first: the later claim gives way), and the
/// problems that made each go.
pub fn admit(node: &NodeSettings, file: &Fragment, api: &Fragment, mut registry: Fragment) -> (Fragment, Vec<Problem>) {
    let mut dropped = Vec::new();
    // Dropping a network can orphan its endpoints: a few rounds settle it.
    for _ in 0..8 {
        let (_, problems) = Parts { file, api, registry: &registry }.candidate(node.clone(), SourceKind::Registry);
        let theirs: Vec<Problem> = problems.into_iter().filter(|p| p.subject.source == SourceKind::Registry).collect();
        if theirs.is_empty() {
            break;
        }
        let origins: BTreeSet<&Origin> = theirs.iter().map(|p| &p.subject).collect();
        registry.networks.retain(|n| !origins.contains(&n.origin));
        registry.peers.retain(|p| !origins.contains(&p.origin));
        for peer in &mut registry.peers {
            peer.endpoints.retain(|e| !origins.contains(&e.origin));
        }
        registry.endpoints.retain(|e| !origins.contains(&e.origin));
        dropped.extend(theirs);
    }
    (registry, dropped)
}

impl AgentState {
    /// Takes `snapshot` as the registry's part and applies the whole model.
    /// Conflicting registry items are left out and reported; a refusal by
    /// the kernel keeps the part applied before.
    pub async fn apply_snapshot(&mut self, snapshot: &ClusterSnapshot) {
        let node = self.config.node_settings();
        let fragment = registry::fragment(snapshot, &node.name);
        let (fragment, dropped) = admit(&node, &self.config.fragment(), &self.api.fragment(), fragment);
        let Some(cluster) = self.cluster.as_mut() else { return };
        for problem in dropped.iter().filter(|p| !cluster.dropped.contains(p)) {
            log::warn!("registry item left out, it conflicts with this node's own: {problem}");
        }
        cluster.dropped = dropped;
        cluster.revision = snapshot.revision;
        let conflicts = conflicts_of(snapshot, &node.name);
        for conflict in conflicts.iter().filter(|c| !cluster.conflicts.contains(c)) {
            log::warn!("cluster conflict: {conflict}");
        }
        cluster.conflicts = conflicts;
        let (cache_path, layout) = (cluster.cache_path.clone(), cluster.registry.layout().clone());
        let before = std::mem::replace(&mut self.registry, fragment);
        match self.reconcile().await {
            Ok(outcome) => {
                log::info!("registry revision {}: {}", snapshot.revision, outcome.maps);
                if let Err(error) = registry::cache::save(&cache_path, &layout, snapshot) {
                    log::warn!("keeping the registry snapshot on disk: {error}");
                }
            }
            Err(error) => {
                log::error!("applying registry revision {} refused, the previous one stays: {error}", snapshot.revision);
                self.registry = before;
            }
        }
    }

    /// The endpoint records this node should have in the registry: its
    /// local endpoints in networks the registry knows.
    pub(super) fn local_endpoint_records(&self) -> Vec<EndpointRecord> {
        let model = self.model();
        let node = model.node.name.clone();
        model
            .endpoints
            .iter()
            .filter_map(|endpoint| {
                let network = model.network(&endpoint.network)?;
                (network.origin.source == SourceKind::Registry).then(|| endpoint_record(&node, &network.name, endpoint))
            })
            .collect()
    }
}

/// The registry's record of a local endpoint.
pub fn endpoint_record(node: &str, network: &str, endpoint: &crate::model::Endpoint) -> EndpointRecord {
    EndpointRecord {
        network: network.to_owned(),
        mac: endpoint.mac,
        addresses: endpoint.ipv4.map(Into::into).into_iter().chain(endpoint.ipv6.map(Into::into)).collect(),
        node: node.to_owned(),
        owner: match &endpoint.owner.container_id {
            Some(id) => format!("{} {id}", endpoint.owner.kind),
            None => format!("{} {}", endpoint.owner.kind, endpoint.origin.key),
        },
    }
}

impl AgentState {
    /// Cluster mode: creates an API network in the registry (so every node
    /// sees it) and applies the snapshot that has it.
    pub(super) async fn create_registry_network(&mut self, network: ApiNetwork) -> Result<Outcome, ChangeError> {
        let creation = self.network_creation(network)?;
        let snapshot = creation.create().await?;
        self.finish_network_creation(snapshot).await
    }

    /// Cluster mode: what creating `network` in the registry takes.
    pub(super) fn network_creation(&self, network: ApiNetwork) -> Result<NetworkCreation, ChangeError> {
        let Some(cluster) = self.cluster.as_ref() else { return Err(ChangeError::Conflict("not in cluster mode".into())) };
        let Some(subnet) = network.subnet else {
            return Err(ChangeError::Refused(vec![Problem::new(
                ProblemKind::Invalid,
                &network.to_model().origin,
                "subnet",
                "",
                "a network of the cluster registry needs an IPv4 subnet (its addresses are allocated cluster-wide)",
            )]));
        };
        // The same checks as a local network's, before anything is written to etcd.
        let mut api = self.api.clone();
        api.networks.push(network.clone());
        let (_, problems) = self.parts(&self.config.fragment(), &api.fragment()).candidate(self.config.node_settings(), SourceKind::Api);
        if !problems.is_empty() {
            return Err(ChangeError::Refused(problems));
        }
        let mtu = match network.mtu {
            Some(mtu) => mtu,
            // A guess would be written for every node: refuse instead.
            None => crate::netdev::overlay_mtu(&self.config.node.underlay_interface).map_err(|error| {
                    ChangeError::Conflict(format!(
                        "reading the MTU of underlay {}: {error}; give the network an mtu",
                        self.config.node.underlay_interface
                    ))
                })?,
        };
        let mut options = network.options.clone();
        if let Some(limit) = network.flood_limit {
            options.insert(registry::fragment::OPTION_FLOOD_LIMIT.to_owned(), limit.to_string());
        }
        let record = NetworkRecord {
            name: network.name.clone(),
            vni: network.vni,
            subnet,
            subnet6: network.subnet6,
            mtu,
            block_prefix_len: registry::records::default_block_prefix_len(subnet),
            options,
        };
        Ok(NetworkCreation { registry: cluster.registry.clone(), snapshots: cluster.snapshots.clone(), record })
    }

    /// Applies the snapshot that brought a network this node created.
    pub(super) async fn finish_network_creation(&mut self, snapshot: Option<Arc<ClusterSnapshot>>) -> Result<Outcome, ChangeError> {
        if let Some(snapshot) = snapshot {
            self.apply_snapshot(&snapshot).await;
        }
        Ok(self.reconcile().await?)
    }

    /// Cluster mode: the registry claim the endpoint `origin` of the
    /// candidate API state `api` needs before it is applied (its network
    /// is the registry's and this node is registered), so that a claim
    /// another node holds refuses the change with nothing applied.
    pub(super) fn endpoint_claim(&self, api: &ApiState, origin: &Origin) -> Option<EndpointClaim> {
        let session = self.cluster.as_ref().and_then(|c| c.session.clone())?;
        let model = self.parts(&self.config.fragment(), &api.fragment()).model(self.config.node_settings());
        let endpoint = model.endpoints.iter().find(|e| &e.origin == origin)?;
        let network = model.network(&endpoint.network).filter(|n| n.origin.source == SourceKind::Registry)?;
        Some(EndpointClaim { session, record: endpoint_record(&model.node.name, &network.name, endpoint), key: origin.key.clone() })
    }

    /// Cluster mode: the registry record of API endpoint `id`, to take out
    /// when it goes.
    pub(super) fn endpoint_registration(&self, id: &str) -> Option<Registered> {
        let session = self.cluster.as_ref().and_then(|c| c.session.clone())?;
        let endpoint = self.api.endpoint(id)?.to_model();
        let network = self.model().network(&endpoint.network).filter(|n| n.origin.source == SourceKind::Registry)?.name.clone();
        Some(Registered { session, network, mac: endpoint.mac })
    }
}

/// A network to create in the registry (taken under the agent's lock,
/// created without it).
pub(super) struct NetworkCreation {
    registry: Registry,
    snapshots: watch::Receiver<Arc<ClusterSnapshot>>,
    record: NetworkRecord,
}

impl NetworkCreation {
    /// Creates the network in etcd and waits (up to 10 s) for the snapshot
    /// that has it, so that the caller can use the network as soon as the
    /// change returns.
    pub(super) async fn create(mut self) -> Result<Option<Arc<ClusterSnapshot>>, ChangeError> {
        self.registry.create_network(&self.record).await?;
        let record = &self.record;
        let wait = self.snapshots.wait_for(|snapshot| snapshot.networks.get(&record.name) == Some(record));
        // (The watch's guard is not Send: only the snapshot leaves this statement.)
        let snapshot = match tokio::time::timeout(Duration::from_secs(10), wait).await {
            Ok(Ok(snapshot)) => Some(Arc::clone(&snapshot)),
            _ => None,
        };
        if snapshot.is_none() {
            log::warn!("network {} was created in etcd but the watch has not brought it yet", record.name);
        }
        Ok(snapshot)
    }
}

/// An endpoint record to register before the endpoint is applied.
pub(super) struct EndpointClaim {
    session: Arc<NodeSession>,
    record: EndpointRecord,
    /// The endpoint's key in its source (for the log).
    key: String,
}

impl EndpointClaim {
    /// Registers the record. A refusal (MAC or address held by another
    /// endpoint) is the change's refusal; while etcd is unreachable the
    /// endpoint goes ahead locally and is published when etcd answers.
    pub(super) async fn register(self) -> Result<Option<Registered>, ChangeError> {
        if let SessionState::Unreachable { error } = &*self.session.state().borrow() {
            // Known down: no request to wait out (the keep-alive probes it).
            log::info!("etcd unreachable ({error}): endpoint {} is applied here and published when etcd answers", self.key);
            return Ok(None);
        }
        match self.session.register_endpoint(self.record.clone()).await {
            Ok(()) => Ok(Some(Registered { session: self.session, network: self.record.network, mac: self.record.mac })),
            Err(RegistryError::Etcd(error)) => {
                log::warn!("etcd unreachable ({error}): endpoint {} is applied here and published when etcd answers", self.key);
                Ok(None)
            }
            Err(error) => {
                log::warn!("endpoint {} refused by the cluster registry, nothing applied: {error}", self.key);
                Err(error.into())
            }
        }
    }
}

/// An endpoint record this node holds in the registry.
pub(super) struct Registered {
    session: Arc<NodeSession>,
    network: String,
    mac: MacAddr,
}

impl Registered {
    /// Takes the record out of the registry (a failure is retried by the
    /// publishing rounds).
    pub(super) async fn undo(self) {
        if let Err(error) = self.session.remove_endpoint(&self.network, self.mac).await {
            log::warn!("removing endpoint {} of network {} from etcd: {error}; retried later", self.mac, self.network);
        }
    }
}
