//! Cluster mode: the registry in etcd as the model's third source. A task
//! turns each new [`ClusterSnapshot`] into the registry's [`Fragment`],
//! leaves out the registry items that conflict with this node's own (file,
//! API) items, and reconciles. This node's registration ([`NodeSession`])
//! is started in the background, so an unreachable etcd never stops the
//! node from forwarding what its file and API state say; while etcd is
//! unreachable the last snapshot stays applied.
//!
//! A refused registration (another live node holds the name or VTEP) is
//! final for this run: it is logged and shown in `overlay status`, and the
//! agent keeps running with the registry's view only (it learns the others
//! but publishes nothing), so a misconfigured node never takes down the
//! containers it already serves.
use std::{collections::BTreeSet, sync::Arc, time::Duration};

use tokio::sync::watch;

use super::{AgentState, ChangeError, Shared};
use crate::{
    model::{Fragment, MacAddr, Model, NetworkRef, NodeSettings, Origin, Problem, ProblemKind, SourceKind},
    reconciler::Outcome,
    registry::{
        self, ClusterSnapshot, ClusterWatch, EndpointRecord, NetworkRecord, NodeRecord, NodeSession, Registry, RegistryError, SessionState,
    },
    sources::{
        self,
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
    /// The revision of the snapshot applied last.
    pub revision: i64,
    pub snapshots: watch::Receiver<Arc<ClusterSnapshot>>,
    /// This node's share of the cluster-wide address allocator.
    pub ipam: Arc<registry::Ipam>,
    /// Stops the watch when the agent goes.
    _watch: ClusterWatch,
}

impl Cluster {
    /// Connects (lazily: etcd may be down) and starts the watch.
    pub async fn connect(settings: registry::RegistrySettings, node: &str) -> Result<Cluster, RegistryError> {
        let registry = Registry::connect(settings).await?;
        let watch = ClusterWatch::start(registry.clone());
        let ipam = Arc::new(registry::Ipam::new(registry.clone(), node));
        Ok(Cluster { snapshots: watch.snapshots(), ipam, registry, session: None, refusal: None, dropped: Vec::new(), revision: 0, _watch: watch })
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

/// The registry's fragment less its items that conflict with the local
/// sources' (which came first: the later claim gives way), and the
/// problems that made each go.
pub fn admit(node: &NodeSettings, local: [&Fragment; 2], mut registry: Fragment) -> (Fragment, Vec<Problem>) {
    let mut dropped = Vec::new();
    // Dropping a network can orphan its endpoints: a few rounds settle it.
    for _ in 0..8 {
        let (_, problems) = sources::candidate(node.clone(), [local[0], local[1], &registry]);
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
        let (fragment, dropped) = admit(&node, [&self.config.fragment(), &self.api.fragment()], fragment);
        let Some(cluster) = self.cluster.as_mut() else { return };
        for problem in dropped.iter().filter(|p| !cluster.dropped.contains(p)) {
            log::warn!("registry item left out, it conflicts with this node's own: {problem}");
        }
        cluster.dropped = dropped;
        cluster.revision = snapshot.revision;
        let before = std::mem::replace(&mut self.registry, fragment);
        match self.reconcile().await {
            Ok(outcome) => log::info!("registry revision {}: {}", snapshot.revision, outcome.maps),
            Err(error) => {
                log::error!("applying registry revision {} refused, the previous one stays: {error}", snapshot.revision);
                self.registry = before;
            }
        }
    }

    /// The endpoint records this node should have in the registry: its
    /// local endpoints in networks the registry knows.
    fn local_endpoint_records(&self) -> Vec<EndpointRecord> {
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

/// The network name an endpoint refers to, when it refers by name.
pub fn network_name(reference: &NetworkRef) -> Option<&str> {
    match reference {
        NetworkRef::Name(name) => Some(name),
        _ => None,
    }
}

/// Runs the registry side of the agent: registers this node (retrying
/// while etcd is unreachable), applies each new snapshot, and keeps this
/// node's endpoints published.
pub async fn follow(shared: Shared, record: NodeRecord, changed: tokio::sync::mpsc::Sender<()>) {
    let (registry, mut snapshots) = {
        let agent = shared.lock().await;
        let Some(cluster) = agent.cluster.as_ref() else { return };
        (cluster.registry.clone(), cluster.snapshots.clone())
    };
    tokio::spawn(register(shared.clone(), registry, record, changed.clone()));
    let mut publish_ticker = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            result = snapshots.changed() => {
                if result.is_err() {
                    return;
                }
                let snapshot = snapshots.borrow_and_update().clone();
                let mut agent = shared.lock().await;
                agent.apply_snapshot(&snapshot).await;
                publish(&agent).await;
            }
            _ = publish_ticker.tick() => {
                publish(&*shared.lock().await).await;
            }
        }
        let _ = changed.try_send(());
    }
}

/// Starts the node's session, retrying while etcd does not answer.
async fn register(shared: Shared, registry: Registry, record: NodeRecord, changed: tokio::sync::mpsc::Sender<()>) {
    let mut wait = Duration::from_millis(200);
    loop {
        match NodeSession::start(registry.clone(), record.clone()).await {
            Ok(session) => {
                log::info!("node {} registered in etcd (VTEP {}, lease {:x})", record.name, record.vtep, session.lease());
                let mut agent = shared.lock().await;
                if let Some(cluster) = agent.cluster.as_mut() {
                    cluster.session = Some(Arc::new(session));
                }
                publish(&agent).await;
                break;
            }
            Err(RegistryError::Etcd(error)) => {
                log::warn!("registering node {} in etcd: {error}; retrying in {wait:?} (forwarding goes on)", record.name);
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(error) => {
                log::error!(
                    "etcd refused to register node {}: {error}; this agent keeps running with the registry's view only and publishes nothing",
                    record.name
                );
                if let Some(cluster) = shared.lock().await.cluster.as_mut() {
                    cluster.refusal = Some(error.to_string());
                }
                break;
            }
        }
    }
    let _ = changed.try_send(());
}

/// Brings this node's endpoint records in the registry in line with its
/// local endpoints: registers the missing ones, removes the gone ones.
/// Failures are logged and retried at the next round.
async fn publish(agent: &AgentState) {
    let Some(session) = agent.cluster.as_ref().and_then(|c| c.session.clone()) else { return };
    let wanted = agent.local_endpoint_records();
    let held = session.endpoints();
    for record in held.iter().filter(|r| !wanted.contains(r)) {
        if let Err(error) = session.remove_endpoint(&record.network, record.mac).await {
            log::warn!("removing endpoint {} of network {} from etcd: {error}", record.mac, record.network);
        }
    }
    for record in wanted.into_iter().filter(|r| !held.contains(r)) {
        match session.register_endpoint(record.clone()).await {
            Ok(()) => log::info!("published endpoint {} ({}) of network {} in etcd", record.mac, record.owner, record.network),
            Err(error) => log::warn!("publishing endpoint {} of network {} in etcd: {error}", record.mac, record.network),
        }
    }
}

impl AgentState {
    /// Cluster mode: creates an API network in the registry (so every node
    /// sees it) and applies the snapshot that has it.
    pub(super) async fn create_registry_network(&mut self, network: ApiNetwork) -> Result<Outcome, ChangeError> {
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
        let underlay_mtu = crate::netdev::mtu(&self.config.node.underlay_interface).unwrap_or(1500);
        let record = NetworkRecord {
            name: network.name.clone(),
            vni: network.vni,
            subnet,
            subnet6: network.subnet6,
            mtu: network.mtu.unwrap_or(underlay_mtu.saturating_sub(overlay_common::VXLAN_ENCAP_LEN as u32)),
            block_prefix_len: registry::records::DEFAULT_BLOCK_PREFIX_LEN,
            options: network.options.clone(),
        };
        let (registry, mut snapshots) = (cluster.registry.clone(), cluster.snapshots.clone());
        registry.create_network(&record).await?;
        // The watch brings it within a round trip; apply it here so that the
        // caller can use the network as soon as this returns.
        let wait = snapshots.wait_for(|snapshot| snapshot.networks.get(&record.name) == Some(&record));
        // (The watch's guard is not Send: only the snapshot leaves this statement.)
        let snapshot = match tokio::time::timeout(Duration::from_secs(10), wait).await {
            Ok(Ok(snapshot)) => Some(Arc::clone(&snapshot)),
            _ => None,
        };
        match snapshot {
            Some(snapshot) => self.apply_snapshot(&snapshot).await,
            None => log::warn!("network {} was created in etcd but the watch has not brought it yet", record.name),
        }
        Ok(self.reconcile().await?)
    }

    /// Cluster mode: registers the endpoint `origin` of the candidate API
    /// state `api` before it is applied, so that a claim another node holds
    /// refuses the change with nothing applied. Returns what to unregister
    /// if the local change fails. While etcd is unreachable the endpoint is
    /// applied locally and published later.
    pub(super) async fn register_first(&self, api: &ApiState, origin: &Origin) -> Result<Option<(String, MacAddr)>, ChangeError> {
        let Some(session) = self.cluster.as_ref().and_then(|c| c.session.clone()) else { return Ok(None) };
        let model = Model::merge(self.config.node_settings(), [&self.config.fragment(), &self.registry, &api.fragment()]);
        let Some(endpoint) = model.endpoints.iter().find(|e| &e.origin == origin) else { return Ok(None) };
        let Some(network) = model.network(&endpoint.network).filter(|n| n.origin.source == SourceKind::Registry) else { return Ok(None) };
        let record = endpoint_record(&model.node.name, &network.name, endpoint);
        match session.register_endpoint(record.clone()).await {
            Ok(()) => Ok(Some((record.network, record.mac))),
            Err(RegistryError::Etcd(error)) => {
                log::warn!("etcd unreachable ({error}): endpoint {} is applied here and published when etcd answers", origin.key);
                Ok(None)
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Cluster mode: takes an endpoint out of the registry (errors are
    /// retried by the publishing round).
    pub(super) async fn unregister(&self, network: &str, mac: MacAddr) {
        let Some(session) = self.cluster.as_ref().and_then(|c| c.session.clone()) else { return };
        if let Err(error) = session.remove_endpoint(network, mac).await {
            log::warn!("removing endpoint {mac} of network {network} from etcd: {error}; retried later");
        }
    }
}
