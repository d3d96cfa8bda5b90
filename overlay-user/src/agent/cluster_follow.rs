//! The registry side of the agent in the background: registers this node
//! (taking over its previous run's lease when it still lives), applies each
//! new snapshot, and keeps this node's endpoint records in line with its
//! local endpoints.
//!
//! The agent's lock is held only to read or change the agent's state,
//! never across a request to etcd: an etcd that is slow or unreachable
//! must not stall the local API. While etcd is unreachable the failure is
//! logged once, then again only when it changes or ends; refused records
//! are retried with a growing pause (the holder may go), logged once per
//! distinct refusal.
use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::Notify;

use super::Shared;
use crate::{
    model::MacAddr,
    registry::{EndpointRecord, NodeRecord, NodeSession, Registry, RegistryError, SessionState},
};

/// How often this node's records are compared with its endpoints.
const PUBLISH_PERIOD: Duration = Duration::from_secs(2);
/// Longest pause before a refused record is tried again.
const REFUSED_RETRY_CEILING: Duration = Duration::from_secs(60);

/// Runs the registry side of the agent until it is aborted.
pub async fn follow(shared: Shared, record: NodeRecord, changed: tokio::sync::mpsc::Sender<()>) {
    let (registry, mut snapshots, gate) = {
        let agent = shared.lock().await;
        let Some(cluster) = agent.cluster.as_ref() else { return };
        (cluster.registry.clone(), cluster.snapshots.clone(), cluster.changes.clone())
    };
    let registered = Arc::new(Notify::new());
    tokio::spawn(register(shared.clone(), registry, record, changed.clone(), registered.clone()));
    let mut publisher = Publisher::default();
    let mut ticker = tokio::time::interval(PUBLISH_PERIOD);
    loop {
        tokio::select! {
            result = snapshots.changed() => {
                if result.is_err() {
                    return;
                }
                let snapshot = snapshots.borrow_and_update().clone();
                shared.lock().await.apply_snapshot(&snapshot).await;
            }
            _ = ticker.tick() => {}
            _ = registered.notified() => {}
        }
        // An API change under way finishes first (it may have registered
        // an endpoint it has not applied yet).
        let turn = gate.clone().lock_owned().await;
        let plan = Plan::of(&*shared.lock().await);
        if let Some(plan) = plan {
            publisher.publish(plan).await;
        }
        drop(turn);
        let _ = changed.try_send(());
    }
}

/// What one publishing round works from, taken under the lock.
struct Plan {
    session: Arc<NodeSession>,
    wanted: Vec<EndpointRecord>,
    lease_path: std::path::PathBuf,
}

impl Plan {
    fn of(agent: &super::AgentState) -> Option<Plan> {
        let cluster = agent.cluster.as_ref()?;
        let session = cluster.session.clone()?;
        Some(Plan { session, wanted: agent.local_endpoint_records(), lease_path: cluster.lease_path.clone() })
    }
}

/// A record the registry refused: why, and when to try it again.
struct Refused {
    error: String,
    retry_at: Instant,
    pause: Duration,
}

/// What the publishing rounds remember between rounds, so that they log
/// changes rather than every round.
#[derive(Default)]
struct Publisher {
    /// The session's state seen last.
    state: Option<SessionState>,
    /// The lease id written to the lease file last.
    saved_lease: i64,
    /// The last etcd failure logged, until a round succeeds.
    failing: Option<String>,
    refused: BTreeMap<(String, MacAddr), Refused>,
}

impl Publisher {
    /// Brings this node's endpoint records in line with `plan.wanted`:
    /// removes the gone ones, registers the missing ones.
    async fn publish(&mut self, plan: Plan) {
        let session = &plan.session;
        let state = session.state().borrow().clone();
        if self.state.as_ref() != Some(&state) {
            match &state {
                SessionState::Registered { lease } if self.state.is_some() => log::info!("etcd answers again: registered on lease {lease:x}"),
                SessionState::Registered { .. } => {}
                SessionState::Unreachable { error } => {
                    log::warn!("etcd unreachable ({error}): forwarding goes on with the last state; retrying with backoff")
                }
                SessionState::Refused { error } => log::error!("this node's registration was lost and re-creating it is refused: {error}"),
            }
            self.state = Some(state.clone());
        }
        let SessionState::Registered { lease } = state else { return };
        if lease != self.saved_lease {
            match std::fs::write(&plan.lease_path, lease.to_string()) {
                Ok(()) => self.saved_lease = lease,
                Err(error) => log::warn!("keeping the lease id in {}: {error}", plan.lease_path.display()),
            }
        }
        let held = session.endpoints();
        let result = async {
            for record in held.iter().filter(|r| !plan.wanted.contains(r)) {
                session.remove_endpoint(&record.network, record.mac).await?;
                log::info!("removed endpoint {} of network {} from etcd", record.mac, record.network);
            }
            for record in plan.wanted.iter().filter(|r| !held.contains(r)) {
                self.register(session, record).await?;
            }
            Ok::<(), RegistryError>(())
        }
        .await;
        match result {
            Ok(()) => {
                if self.failing.take().is_some() {
                    log::info!("this node's endpoint records are in etcd again");
                }
            }
            Err(error) => {
                let error = error.to_string();
                if self.failing.as_ref() != Some(&error) {
                    log::warn!("publishing this node's endpoints in etcd: {error}; retried every {PUBLISH_PERIOD:?}");
                    self.failing = Some(error);
                }
            }
        }
        self.refused.retain(|id, _| plan.wanted.iter().any(|r| (&r.network, &r.mac) == (&id.0, &id.1)));
    }

    /// Registers one record unless it was refused and its pause runs; an
    /// etcd failure is returned (the round stops), a refusal is kept.
    async fn register(&mut self, session: &NodeSession, record: &EndpointRecord) -> Result<(), RegistryError> {
        let id = (record.network.clone(), record.mac);
        if self.refused.get(&id).is_some_and(|refused| refused.retry_at > Instant::now()) {
            return Ok(());
        }
        match session.register_endpoint(record.clone()).await {
            Ok(()) => {
                self.refused.remove(&id);
                log::info!("published endpoint {} ({}) of network {} in etcd", record.mac, record.owner, record.network);
                Ok(())
            }
            Err(error @ RegistryError::Etcd(_)) => Err(error),
            Err(error) => {
                let error = error.to_string();
                let pause = self.refused.get(&id).map_or(PUBLISH_PERIOD, |refused| (refused.pause * 2).min(REFUSED_RETRY_CEILING));
                if self.refused.get(&id).is_none_or(|refused| refused.error != error) {
                    log::warn!("etcd refused endpoint {} ({}) of network {}: {error}; it stays local, retried with backoff", record.mac, record.owner, record.network);
                }
                self.refused.insert(id, Refused { error, retry_at: Instant::now() + pause, pause });
                Ok(())
            }
        }
    }
}

/// Starts the node's session (resuming the lease of a previous run if
/// it still lives), retrying while etcd does not answer.
async fn register(shared: Shared, registry: Registry, record: NodeRecord, changed: tokio::sync::mpsc::Sender<()>, registered: Arc<Notify>) {
    let lease_path = match shared.lock().await.cluster.as_ref() {
        Some(cluster) => cluster.lease_path.clone(),
        None => return,
    };
    let previous: Option<i64> = std::fs::read_to_string(&lease_path).ok().and_then(|text| text.trim().parse().ok());
    let mut wait = Duration::from_millis(200);
    let mut failing: Option<String> = None;
    loop {
        let attempt = match previous {
            Some(lease) => NodeSession::resume(registry.clone(), record.clone(), lease).await,
            None => NodeSession::start(registry.clone(), record.clone()).await,
        };
        match attempt {
            Ok(session) => {
                let resumed = previous == Some(session.lease());
                let how = if resumed { "took over its registration" } else { "registered" };
                log::info!("node {} {how} in etcd (VTEP {}, lease {:x})", record.name, record.vtep, session.lease());
                let mut agent = shared.lock().await;
                if let Some(cluster) = agent.cluster.as_mut() {
                    if cluster.refusal.take().is_some() {
                        log::info!("node {}: the earlier holder is gone, registered", record.name);
                    }
                    if resumed {
                        // Its records on that lease are this node's already.
                        let snapshot = cluster.snapshots.borrow().clone();
                        snapshot.endpoints.values().filter(|e| e.node == record.name).for_each(|e| session.adopt_endpoint(e.clone()));
                    }
                    cluster.session = Some(Arc::new(session));
                }
                registered.notify_one();
                break;
            }
            Err(RegistryError::Etcd(error)) => {
                let error = error.to_string();
                if failing.as_ref() != Some(&error) {
                    log::warn!("registering node {} in etcd: {error}; retrying with backoff (forwarding goes on)", record.name);
                    failing = Some(error);
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(error) => {
                // Refused: another live node holds the name or VTEP. Tried
                // again at half the TTL, which keeps the refusal recorded
                // for the holder's side and registers once the holder goes.
                let error = error.to_string();
                let mut agent = shared.lock().await;
                let Some(cluster) = agent.cluster.as_mut() else { break };
                if cluster.refusal.as_ref() != Some(&error) {
                    log::error!(
                        "etcd refused to register node {}: {error}; this agent keeps running with the registry's view only and publishes nothing (tried again every {:?})",
                        record.name,
                        registry.settings().lease_ttl / 2,
                    );
                    cluster.refusal = Some(error);
                }
                drop(agent);
                let _ = changed.try_send(());
                tokio::time::sleep(registry.settings().lease_ttl / 2).await;
            }
        }
    }
    let _ = changed.try_send(());
}
