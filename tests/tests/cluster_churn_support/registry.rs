//! The test's own client of the lab's etcd: virtual nodes that join and
//! leave the cluster through the registry library, as an agent's session
//! does (a lease kept alive, the node record and VTEP claim, endpoint
//! records with their address claims), and a reader of everything under
//! the registry's prefix.
//!
//! etcd listens on the lab's underlay, inside the wire namespace: the
//! runtime's worker threads are started there (threads inherit the
//! namespace of the thread that creates them), and every request runs on
//! them, never on the test's thread.
use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use etcd_client::GetOptions;
use overlay::{
    model::MacAddr,
    registry::{ClusterSnapshot, EndpointRecord, NodeRecord, NodeSession, Registry, RegistrySettings, keys::KeyKind},
};
use overlay_lab::netns::Netns;

/// What etcd holds under the registry's prefix, as the checks need it.
#[derive(Debug)]
pub struct Stored {
    pub snapshot: ClusterSnapshot,
    /// Address claim keys: (network, address).
    pub address_claims: BTreeSet<(String, IpAddr)>,
    /// Refused claims recorded (`conflicts/...` keys).
    pub conflicts: Vec<String>,
}

/// A virtual node: its name, VTEP and endpoints (network, MAC, address).
#[derive(Clone, Debug)]
pub struct VirtualNode {
    pub name: String,
    pub vtep: Ipv4Addr,
    pub endpoints: Vec<(String, MacAddr, Ipv4Addr)>,
}

pub struct RegistryClient {
    runtime: tokio::runtime::Runtime,
    registry: Registry,
    /// Virtual nodes in the cluster, by index.
    sessions: BTreeMap<usize, NodeSession>,
}

impl RegistryClient {
    /// Connects to `url` from inside `wire`; virtual nodes' leases last `lease_ttl`.
    pub fn connect(wire: &Netns, url: &str, lease_ttl: Duration) -> RegistryClient {
        let runtime = wire
            .run_inside(|| Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?))
            .expect("starting a runtime inside the underlay namespace");
        let mut settings = RegistrySettings::new([url.to_owned()]);
        settings.lease_ttl = lease_ttl;
        let registry = runtime.block_on(runtime.spawn(Registry::connect(settings))).unwrap().expect("connecting to etcd");
        RegistryClient { runtime, registry, sessions: BTreeMap::new() }
    }

    /// Runs `future` on the runtime's workers (inside the wire namespace).
    fn run<F>(&self, future: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime.block_on(self.runtime.spawn(future)).expect("a registry task panicked")
    }

    pub fn is_joined(&self, index: usize) -> bool {
        self.sessions.contains_key(&index)
    }

    pub fn joined(&self) -> impl Iterator<Item = usize> + '_ {
        self.sessions.keys().copied()
    }

    /// Registers virtual node `index` and its endpoints.
    pub fn join(&mut self, index: usize, node: &VirtualNode) {
        let (registry, node) = (self.registry.clone(), node.clone());
        let session = self.run(async move {
            let record = NodeRecord { name: node.name.clone(), vtep: node.vtep.into(), vxlan_port: 4789, agent_version: "chr2-virtual".into() };
            let session = NodeSession::start(registry, record).await.unwrap_or_else(|error| panic!("virtual node {} joining: {error}", node.name));
            for (network, mac, address) in &node.endpoints {
                let endpoint = EndpointRecord {
                    network: network.clone(),
                    mac: *mac,
                    addresses: vec![(*address).into()],
                    node: node.name.clone(),
                    owner: format!("chr2:{}", node.name),
                };
                session.register_endpoint(endpoint).await.unwrap_or_else(|error| panic!("virtual node {} registering {mac} in {network}: {error}", node.name));
            }
            session
        });
        self.sessions.insert(index, session);
    }

    /// Virtual node `index` leaves: with its lease revoked (a clean
    /// leave: its records go at once), or with its keep-alives stopped (a
    /// crash: they go when the lease's TTL runs out).
    pub fn leave(&mut self, index: usize, crash: bool) {
        let session = self.sessions.remove(&index).expect("leaving a virtual node that is not in the cluster");
        if crash {
            // Dropped inside the runtime: its keep-alive task is aborted there.
            self.run(async move { drop(session) });
        } else {
            self.run(async move { session.close().await }).expect("revoking a virtual node's lease");
        }
    }

    /// Everything under the registry's prefix.
    pub fn stored(&self) -> Stored {
        let registry = self.registry.clone();
        self.run(async move {
            let snapshot = registry.read_store().await.expect("reading the registry").snapshot();
            let layout = registry.layout().clone();
            let keys = registry.etcd().get(layout.root(), Some(GetOptions::new().with_prefix().with_keys_only())).await.expect("listing the registry's keys");
            let (mut address_claims, mut conflicts) = (BTreeSet::new(), Vec::new());
            for kv in keys.kvs() {
                let key = kv.key_str().expect("a UTF-8 key");
                match layout.classify(key) {
                    Some(KeyKind::AddressClaim) => {
                        let mut parts = key.rsplit('/');
                        let address = parts.next().and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("an address claim key {key}"));
                        address_claims.insert((parts.next().unwrap().to_owned(), address));
                    }
                    Some(KeyKind::Conflict) => conflicts.push(key.to_owned()),
                    _ => {}
                }
            }
            Stored { snapshot, address_claims, conflicts }
        })
    }
}

impl Drop for RegistryClient {
    fn drop(&mut self) {
        // Clean leaves, so a lab torn down after a failure leaves no lease
        // behind (etcd goes with it anyway).
        let sessions = std::mem::take(&mut self.sessions);
        let _ = self.runtime.block_on(self.runtime.spawn(async move {
            for (_, session) in sessions {
                let _ = tokio::time::timeout(Duration::from_secs(2), session.close()).await;
            }
        }));
    }
}
