//! A node's presence in the registry: its lease, kept alive, and the records
//! on it (the node, its VTEP claim, its endpoints and their address claims).
//!
//! Every claim is a compare-and-swap transaction: it succeeds only if no
//! live record holds the name, VTEP, MAC or address; otherwise nothing is
//! written, the holder is named in the error, and the refusal is recorded
//! under `conflicts/<claimant>/` (on the claimant's lease) so the holder's
//! side sees it in its snapshot too.
//!
//! When the lease is lost (etcd was unreachable longer than the TTL, or
//! its data was lost) the session grants a new one and re-creates every
//! record it holds, with the same transactions.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use tokio::{sync::watch, task::JoinHandle};

use super::{
    client::{Backoff, Registry, get_values},
    problem::{ConflictReport, Holder, RegistryError},
    records::{EndpointRecord, NodeRecord, claim_value, parse_claim},
};
use crate::model::MacAddr;

/// Where a session stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionState {
    /// Registered on this lease; keep-alives answered.
    Registered { lease: i64 },
    /// etcd does not answer; retrying. The records stay until the lease's TTL.
    Unreachable { error: String },
    /// The lease was lost and re-creating the node's records was refused.
    Refused { error: String },
}

/// A registered node. Dropping it stops the keep-alives without removing
/// anything (as a crash would: others see the node go after its TTL);
/// [`NodeSession::close`] removes its records at once.
pub struct NodeSession {
    shared: Arc<Shared>,
    keeper: JoinHandle<()>,
}

struct Shared {
    registry: Registry,
    node: NodeRecord,
    lease: Mutex<i64>,
    /// The endpoints to re-create if the lease is lost, by (network, MAC).
    endpoints: Mutex<BTreeMap<(String, MacAddr), EndpointRecord>>,
    /// Endpoints a re-creation could not register (their network was
    /// gone, say, after etcd lost its data); retried at every keep-alive.
    unregistered: Mutex<BTreeSet<(String, MacAddr)>>,
    state: watch::Sender<SessionState>,
}

impl NodeSession {
    /// Grants a lease, registers the node on it, and keeps it alive.
    pub async fn start(registry: Registry, node: NodeRecord) -> Result<NodeSession, RegistryError> {
        let key = registry.layout().node(&node.name);
        node.validate(&key).map_err(RegistryError::InvalidRecord)?;
        let lease = grant(&registry).await?;
        let shared = Shared::new(registry, node, lease);
        shared.register_node(lease).await?;
        let keeper = tokio::spawn(keep_alive(shared.clone()));
        Ok(NodeSession { shared, keeper })
    }

    /// Takes over `lease`, which an earlier run of this node was granted
    /// (an agent restarted before its TTL ran out): while etcd still holds
    /// it with this very node record on it, nothing is written again and
    /// no other node sees this one go. Otherwise (the lease expired, the
    /// record differs: another VTEP, another agent version) the old lease
    /// is revoked and the node starts anew, as [`NodeSession::start`].
    pub async fn resume(registry: Registry, node: NodeRecord, lease: i64) -> Result<NodeSession, RegistryError> {
        let key = registry.layout().node(&node.name);
        node.validate(&key).map_err(RegistryError::InvalidRecord)?;
        let shared = Shared::new(registry.clone(), node.clone(), lease);
        if refresh(&shared).await? {
            let response = registry.get(&key).await?;
            let ours = match response.kvs().first() {
                Some(kv) => kv.lease() == lease && NodeRecord::parse(&key, kv.value()).is_ok_and(|record| record == node),
                // Gone from a lease that lives (deleted by hand): write it again.
                None => shared.register_node(lease).await.is_ok(),
            };
            if ours {
                let keeper = tokio::spawn(keep_alive(shared.clone()));
                return Ok(NodeSession { shared, keeper });
            }
            registry.request(|mut client| async move { client.lease_revoke(lease).await }).await?;
        }
        Self::start(registry, node).await
    }

    /// Counts an endpoint record this node holds already (found on a
    /// resumed lease) as registered, so that it is re-created with the
    /// others and removed when the node no longer has it. Writes nothing.
    pub fn adopt_endpoint(&self, endpoint: EndpointRecord) {
        if endpoint.node == self.shared.node.name {
            self.shared.endpoints.lock().unwrap().insert((endpoint.network.clone(), endpoint.mac), endpoint);
        }
    }

    pub fn node(&self) -> &NodeRecord {
        &self.shared.node
    }

    /// The current lease id.
    pub fn lease(&self) -> i64 {
        *self.shared.lease.lock().unwrap()
    }

    /// Follows the session's state (registered, unreachable, refused).
    pub fn state(&self) -> watch::Receiver<SessionState> {
        self.shared.state.subscribe()
    }

    /// Registers an endpoint of this node on the node's lease. Refused when
    /// the network is unknown, an address is outside it, or the MAC or an
    /// address is held by another endpoint of the network (the holder is
    /// named). Registering the same record again succeeds; changing one
    /// (other addresses) is a removal and a registration.
    pub async fn register_endpoint(&self, endpoint: EndpointRecord) -> Result<(), RegistryError> {
        if endpoint.node != self.shared.node.name {
            return Err(RegistryError::InvalidSetting {
                field: "endpoint.node",
                value: endpoint.node.clone(),
                reason: format!("this session registers node {}", self.shared.node.name),
            });
        }
        let lease = self.lease();
        self.shared.register_endpoint(&endpoint, lease).await?;
        self.shared.endpoints.lock().unwrap().insert((endpoint.network.clone(), endpoint.mac), endpoint);
        Ok(())
    }

    /// Removes one of this node's endpoints and its address claims.
    pub async fn remove_endpoint(&self, network: &str, mac: MacAddr) -> Result<bool, RegistryError> {
        let id = (network.to_owned(), mac);
        let Some(endpoint) = self.shared.endpoints.lock().unwrap().remove(&id) else {
            return Ok(false);
        };
        self.shared.unregistered.lock().unwrap().remove(&id);
        let layout = self.shared.registry.layout();
        let lease = self.lease();
        let key = layout.endpoint(network, mac);
        let mut operations = vec![TxnOp::delete(key.as_str(), None)];
        operations.extend(endpoint.addresses.iter().map(|address| TxnOp::delete(layout.address_claim(network, *address), None)));
        // Only if the record is still ours: never delete another node's.
        let txn = Txn::new().when([Compare::lease(key.as_str(), CompareOp::Equal, lease)]).and_then(operations);
        Ok(self.shared.registry.txn(txn).await?.succeeded())
    }

    /// This node's endpoints as the session holds them.
    pub fn endpoints(&self) -> Vec<EndpointRecord> {
        self.shared.endpoints.lock().unwrap().values().cloned().collect()
    }

    /// Leaves the cluster: revokes the lease, which deletes the node's
    /// records and claims at once.
    pub async fn close(self) -> Result<(), RegistryError> {
        self.keeper.abort();
        let lease = self.lease();
        self.shared.registry.request(|mut client| async move { client.lease_revoke(lease).await }).await?;
        Ok(())
    }
}

impl Drop for NodeSession {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

impl Shared {
    fn new(registry: Registry, node: NodeRecord, lease: i64) -> Arc<Shared> {
        let (state, _) = watch::channel(SessionState::Registered { lease });
        Arc::new(Shared { registry, node, lease: Mutex::new(lease), endpoints: Mutex::default(), unregistered: Mutex::default(), state })
    }

    async fn register_node(&self, lease: i64) -> Result<(), RegistryError> {
        let layout = self.registry.layout();
        let node = &self.node;
        let key = layout.node(&node.name);
        let vtep_key = layout.vtep_claim(node.vtep);
        let put = || Some(PutOptions::new().with_lease(lease));
        let txn = Txn::new()
            .when([
                Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
                Compare::create_revision(vtep_key.as_str(), CompareOp::Equal, 0),
            ])
            .and_then([TxnOp::put(key.as_str(), node.to_json(), put()), TxnOp::put(vtep_key.as_str(), claim_value(&node.name), put())])
            .or_else([TxnOp::get(key.as_str(), None), TxnOp::get(vtep_key.as_str(), None)]);
        let response = self.registry.txn(txn).await?;
        if response.succeeded() || held_on_lease(&response.op_responses(), lease) {
            // (The second: a retried request whose first attempt landed.)
            return Ok(());
        }
        let [holder_node, vtep_holder] = get_values(&response.op_responses());
        let error = if let Some(value) = holder_node {
            let holder_vtep = NodeRecord::parse(&key, &value).map_or_else(|_| "unreadable".to_owned(), |record| record.vtep.to_string());
            RegistryError::NodeNameTaken { name: node.name.clone(), holder_vtep }
        } else {
            let holder = vtep_holder.and_then(|value| parse_claim(&value)).map_or(Holder::Unreadable(vtep_key), Holder::Node);
            RegistryError::VtepTaken { vtep: node.vtep, holder }
        };
        let (kind, subject) = match &error {
            RegistryError::NodeNameTaken { name, .. } => ("node-name", name.clone()),
            _ => ("vtep", node.vtep.to_string()),
        };
        self.report_refusal(lease, kind, &subject, &error).await;
        Err(error)
    }

    async fn register_endpoint(&self, endpoint: &EndpointRecord, lease: i64) -> Result<(), RegistryError> {
        let layout = self.registry.layout();
        let key = layout.endpoint(&endpoint.network, endpoint.mac);
        endpoint.validate(&key).map_err(RegistryError::InvalidRecord)?;
        let Some((network, network_revision)) = self.registry.network(&endpoint.network).await? else {
            return Err(RegistryError::UnknownNetwork(endpoint.network.clone()));
        };
        if let Some(address) = endpoint.addresses.iter().find(|address| !network.admits(**address)) {
            return Err(RegistryError::AddressNotInNetwork {
                network: network.name.clone(),
                address: *address,
                subnet: network.subnet6.map_or(network.subnet.to_string(), |v6| format!("{} and {v6}", network.subnet)),
            });
        }
        let claims: Vec<(IpAddr, String)> =
            endpoint.addresses.iter().map(|address| (*address, layout.address_claim(&endpoint.network, *address))).collect();
        let put = || Some(PutOptions::new().with_lease(lease));
        // The network must still be the one the addresses were checked against.
        let mut compares = vec![
            Compare::mod_revision(layout.network(&endpoint.network), CompareOp::Equal, network_revision),
            Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
        ];
        compares.extend(claims.iter().map(|(_, claim)| Compare::create_revision(claim.as_str(), CompareOp::Equal, 0)));
        let mut writes = vec![TxnOp::put(key.as_str(), endpoint.to_json(), put())];
        writes.extend(claims.iter().map(|(_, claim)| TxnOp::put(claim.as_str(), claim_value(&endpoint.mac.to_string()), put())));
        let mut reads = vec![TxnOp::get(key.as_str(), None)];
        reads.extend(claims.iter().map(|(_, claim)| TxnOp::get(claim.as_str(), None)));
        let txn = Txn::new().when(compares).and_then(writes).or_else(reads);
        let response = self.registry.txn(txn).await?;
        if response.succeeded() {
            return Ok(());
        }
        let responses = response.op_responses();
        let values: Vec<Option<Vec<u8>>> = responses.iter().map(|response| get_values::<1>(std::slice::from_ref(response))[0].clone()).collect();
        let error = if let Some(existing) = &values[0] {
            match EndpointRecord::parse(&key, existing) {
                // Our own record, unchanged: registering again is a no-op.
                Ok(record) if record == *endpoint => return Ok(()),
                Ok(record) => RegistryError::MacTaken {
                    network: endpoint.network.clone(),
                    mac: endpoint.mac,
                    holder: Holder::Endpoint { node: record.node, owner: record.owner, mac: record.mac },
                },
                Err(_) => RegistryError::MacTaken { network: endpoint.network.clone(), mac: endpoint.mac, holder: Holder::Unreadable(key) },
            }
        } else if let Some(((address, claim), _)) = claims.iter().zip(&values[1..]).find(|(_, value)| value.is_some()) {
            let holder = self.endpoint_holder(&endpoint.network, claim, &values).await;
            RegistryError::AddressTaken { network: endpoint.network.clone(), address: *address, holder }
        } else {
            // Only the network changed between the read and the transaction.
            return Err(RegistryError::Contended { what: format!("registering endpoint {}", endpoint.mac), attempts: 1 });
        };
        let (kind, subject) = match &error {
            RegistryError::MacTaken { mac, .. } => ("mac", format!("{}:{mac}", endpoint.network)),
            RegistryError::AddressTaken { address, .. } => ("address", format!("{}:{address}", endpoint.network)),
            _ => unreachable!("only MAC and address refusals are reported"),
        };
        self.report_refusal(lease, kind, &subject, &error).await;
        Err(error)
    }

    /// Who holds an address claim: the endpoint whose MAC the claim names.
    async fn endpoint_holder(&self, network: &str, claim: &str, values: &[Option<Vec<u8>>]) -> Holder {
        let index = values.iter().skip(1).position(Option::is_some).unwrap_or(0) + 1;
        let Some(mac) = values[index].as_deref().and_then(parse_claim).and_then(|text| text.parse::<MacAddr>().ok()) else {
            return Holder::Unreadable(claim.to_owned());
        };
        let key = self.registry.layout().endpoint(network, mac);
        match self.registry.get(&key).await {
            Ok(response) => match response.kvs().first().map(|kv| EndpointRecord::parse(&key, kv.value())) {
                Some(Ok(record)) => Holder::Endpoint { node: record.node, owner: record.owner, mac },
                _ => Holder::Unreadable(key),
            },
            Err(_) => Holder::Unreadable(key),
        }
    }

    /// Records a refused claim for the holder's side to see (best effort:
    /// the refusal itself is the caller's error either way).
    async fn report_refusal(&self, lease: i64, kind: &str, subject: &str, error: &RegistryError) {
        let report = ConflictReport {
            claimant: self.node.name.clone(),
            kind: kind.to_owned(),
            subject: subject.to_owned(),
            holder: error.to_string(),
            holder_node: error.holder_node().map(str::to_owned),
        };
        log::warn!("registry: {report}");
        let key = self.registry.layout().conflict(&self.node.name, kind, subject);
        let (key, value) = (&key, &report.to_json());
        let put = self.registry.request(|mut client| async move {
            client.put(key.as_str(), value.as_str(), Some(PutOptions::new().with_lease(lease))).await
        });
        if let Err(error) = put.await {
            log::warn!("registry: could not record the refusal: {error}");
        }
    }

    /// A new lease with every record re-created on it. If etcd fails
    /// half-way the new lease is revoked, so a retry starts clean.
    async fn recreate(&self) -> Result<i64, RegistryError> {
        let lease = grant(&self.registry).await?;
        *self.lease.lock().unwrap() = lease;
        let result = async {
            self.register_node(lease).await?;
            self.unregistered.lock().unwrap().extend(self.endpoints.lock().unwrap().keys().cloned());
            self.register_pending(lease).await
        }
        .await;
        if let Err(error) = result {
            let _ = self.registry.request(|mut client| async move { client.lease_revoke(lease).await }).await;
            return Err(error);
        }
        log::info!("registry: node {} re-registered on lease {lease:x}", self.node.name);
        Ok(lease)
    }

    /// Registers the endpoints a re-creation left out. A refusal leaves
    /// the endpoint pending (its network may come back, its holder may go);
    /// an etcd failure is returned.
    async fn register_pending(&self, lease: i64) -> Result<(), RegistryError> {
        let pending: Vec<EndpointRecord> = {
            let unregistered = self.unregistered.lock().unwrap();
            let endpoints = self.endpoints.lock().unwrap();
            unregistered.iter().filter_map(|id| endpoints.get(id).cloned()).collect()
        };
        for endpoint in pending {
            match self.register_endpoint(&endpoint, lease).await {
                Ok(()) => {
                    self.unregistered.lock().unwrap().remove(&(endpoint.network.clone(), endpoint.mac));
                }
                Err(error @ RegistryError::Etcd(_)) => return Err(error),
                Err(error) => log::debug!("registry: endpoint {} of network {} still not registered: {error}", endpoint.mac, endpoint.network),
            }
        }
        Ok(())
    }
}

async fn grant(registry: &Registry) -> Result<i64, RegistryError> {
    let ttl = registry.settings().lease_ttl.as_secs() as i64;
    Ok(registry.request(|mut client| async move { client.lease_grant(ttl, None).await }).await?.id())
}

/// Keeps the lease alive at a third of its TTL; on failure retries with
/// backoff; when etcd says the lease is gone, re-creates the records.
async fn keep_alive(shared: Arc<Shared>) {
    let ttl = shared.registry.settings().lease_ttl;
    let period = (ttl / 3).max(Duration::from_millis(300));
    let mut backoff = Backoff::new(period);
    let mut lease_lost = false;
    loop {
        let result = if lease_lost {
            shared.recreate().await.map(|lease| lease > 0)
        } else {
            refresh(&shared).await
        };
        log::debug!("registry: keep-alive of node {}: {result:?}", shared.node.name);
        match result {
            Ok(true) => {
                lease_lost = false;
                backoff.reset();
                let lease = *shared.lease.lock().unwrap();
                if !shared.unregistered.lock().unwrap().is_empty()
                    && let Err(error) = shared.register_pending(lease).await
                {
                    log::warn!("registry: {error}");
                }
                shared.state.send_if_modified(|state| replace(state, SessionState::Registered { lease }));
                tokio::time::sleep(period).await;
            }
            Ok(false) => {
                log::warn!("registry: lease of node {} expired; re-creating its records", shared.node.name);
                lease_lost = true;
            }
            Err(error @ (RegistryError::Etcd(_) | RegistryError::Contended { .. })) => {
                let error = error.to_string();
                shared.state.send_if_modified(|state| replace(state, SessionState::Unreachable { error }));
                backoff.wait().await;
            }
            Err(error) => {
                // Refused: someone took the name or VTEP while our lease was
                // gone. Keep trying: the holder may go away.
                let error = error.to_string();
                shared.state.send_if_modified(|state| replace(state, SessionState::Refused { error }));
                tokio::time::sleep(ttl).await;
            }
        }
    }
}

/// One keep-alive; `Ok(false)` when etcd answers that the lease is gone.
/// (etcd-client's `keep_alive` sends one request and reads its answer
/// itself, turning a TTL of 0, etcd's "no such lease", into this error.)
async fn refresh(shared: &Shared) -> Result<bool, RegistryError> {
    let lease = *shared.lease.lock().unwrap();
    match shared.registry.request(|mut client| async move { client.lease_keep_alive(lease).await }).await {
        Ok(_) => Ok(true),
        Err(RegistryError::Etcd(etcd_client::Error::LeaseKeepAliveError(message))) if message == "lease not found" => Ok(false),
        Err(error) => Err(error),
    }
}

/// Do all the keys a transaction's `get`s read exist on `lease`?
fn held_on_lease(responses: &[etcd_client::TxnOpResponse], lease: i64) -> bool {
    responses.iter().all(|response| match response {
        etcd_client::TxnOpResponse::Get(get) => get.kvs().first().is_some_and(|kv| kv.lease() == lease),
        _ => false,
    })
}

fn replace(state: &mut SessionState, new: SessionState) -> bool {
    if *state == new {
        false
    } else {
        *state = new;
        true
    }
}
