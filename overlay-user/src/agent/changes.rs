//! The local API's changes as the server makes them: in cluster mode, a
//! change that goes through etcd (a network created in the registry, an
//! endpoint registered or removed, an address allocated cluster-wide) takes
//! its turn (`Cluster::changes`) and holds the agent's lock only for its
//! local steps, never across a request to etcd; reads, status and the
//! registry's snapshots go on while etcd is slow or unreachable.
//! Outside cluster mode each is the [`AgentState`] method under the lock.
use std::net::Ipv4Addr;

use tokio::sync::OwnedMutexGuard;

use super::{AddressError, Allocated, AgentState, ChangeError, Shared};
use crate::{
    reconciler::Outcome,
    sources::api_store::{ApiEndpoint, ApiNetwork},
};

/// Waits for this change's turn (cluster mode), without the agent's lock.
async fn turn(shared: &Shared) -> Option<OwnedMutexGuard<()>> {
    let gate = shared.lock().await.cluster.as_ref().map(|cluster| cluster.changes.clone())?;
    Some(gate.lock_owned().await)
}

/// [`AgentState::add_network`].
pub async fn add_network(shared: &Shared, network: ApiNetwork) -> Result<Outcome, ChangeError> {
    let Some(_turn) = turn(shared).await else { return shared.lock().await.add_network(network).await };
    let creation = shared.lock().await.network_creation(network)?;
    let snapshot = creation.create().await?;
    shared.lock().await.finish_network_creation(snapshot).await
}

/// [`AgentState::add_endpoint`].
pub async fn add_endpoint(shared: &Shared, endpoint: ApiEndpoint) -> Result<Outcome, ChangeError> {
    let Some(_turn) = turn(shared).await else { return shared.lock().await.add_endpoint(endpoint).await };
    let origin = endpoint.origin();
    let claim = {
        let agent = shared.lock().await;
        let api = agent.with_endpoint(endpoint.clone())?;
        agent.endpoint_claim(&api, &origin)
    };
    let registered = match claim {
        Some(claim) => claim.register().await?,
        None => None,
    };
    let outcome = {
        let mut agent: tokio::sync::MutexGuard<'_, AgentState> = shared.lock().await;
        match agent.with_endpoint(endpoint) {
            Ok(api) => agent.change_api(api).await,
            Err(error) => Err(error),
        }
    };
    if let (Err(_), Some(registered)) = (&outcome, registered) {
        registered.undo().await;
    }
    outcome
}

/// [`AgentState::remove_endpoint`].
pub async fn remove_endpoint(shared: &Shared, id: &str) -> Result<Outcome, ChangeError> {
    let Some(_turn) = turn(shared).await else { return shared.lock().await.remove_endpoint(id).await };
    let (outcome, registered) = shared.lock().await.remove_endpoint_here(id).await?;
    if let Some(registered) = registered {
        registered.undo().await;
    }
    Ok(outcome)
}

/// [`AgentState::allocate_address`].
pub async fn allocate_address(shared: &Shared, network: &str, requested: Option<Ipv4Addr>, owner: &str) -> Result<Allocated, AddressError> {
    let Some(_turn) = turn(shared).await else { return shared.lock().await.allocate_address(network, requested, owner).await };
    let allocator = shared.lock().await.cluster_allocator(network)?;
    match allocator {
        Some(allocator) => allocator.allocate(requested, owner).await,
        None => shared.lock().await.allocate_here(network, requested, owner),
    }
}

/// [`AgentState::release_address`].
pub async fn release_address(shared: &Shared, network: &str, address: Ipv4Addr) -> Result<(), AddressError> {
    let Some(_turn) = turn(shared).await else { return shared.lock().await.release_address(network, address).await };
    let allocator = shared.lock().await.cluster_allocator(network)?;
    match allocator {
        Some(allocator) => allocator.release(address).await,
        None => shared.lock().await.release_here(network, address),
    }
}

/// The addresses handed out in `network` (by this node, in cluster mode),
/// without the agent's lock across the read of a registry network's blocks.
pub async fn addresses(shared: &Shared, network: &str) -> Result<(crate::model::Ipv4Net, Vec<crate::addresses::Allocation>), AddressError> {
    let allocator = shared.lock().await.cluster_allocator(network)?;
    match allocator {
        Some(allocator) => allocator.allocations().await,
        None => shared.lock().await.addresses_here(network),
    }
}
