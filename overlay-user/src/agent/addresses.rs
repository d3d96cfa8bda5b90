//! Address allocation as a change of the agent's state: node-local from
//! the API's state, or cluster-wide from the registry's allocator when the
//! network comes from the registry (see [`crate::addresses`]).
use std::net::Ipv4Addr;

use super::{AgentState, ChangeError};
use crate::{
    addresses::{self, Allocation, AllocationError, Holders},
    model::{Ipv4Net, Model, NetworkRef, SourceKind},
    registry::RegistryError,
};

/// What a caller gets back: the allocation and the network's prefix length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocated {
    pub allocation: Allocation,
    pub subnet: Ipv4Net,
}

/// Why an address was not handed out or released. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error("no network named {0}")]
    UnknownNetwork(String),
    #[error("network {0} has no IPv4 subnet to allocate from")]
    NoSubnet(String),
    #[error(transparent)]
    Allocation(#[from] AllocationError),
    #[error("{address} is not allocated in network {network}")]
    NotAllocated { network: String, address: Ipv4Addr },
    #[error(transparent)]
    Change(#[from] ChangeError),
}

impl From<RegistryError> for AddressError {
    fn from(error: RegistryError) -> AddressError {
        AddressError::Change(ChangeError::Registry(error))
    }
}

impl AgentState {
    /// Hands out `requested`, or the lowest free address, in `network` to `owner`.
    pub async fn allocate_address(&mut self, network: &str, requested: Option<Ipv4Addr>, owner: &str) -> Result<Allocated, AddressError> {
        if let Some(allocator) = self.cluster_allocator(network)? {
            return allocator.allocate(requested, owner).await;
        }
        self.allocate_here(network, requested, owner)
    }

    /// Cluster mode, a registry network: its allocator (used without the
    /// agent's lock: it may claim a block or flush, round trips to etcd).
    pub(super) fn cluster_allocator(&self, network: &str) -> Result<Option<ClusterAllocator>, AddressError> {
        let model = self.model();
        let (subnet, source) = subnet_of(&model, network)?;
        Ok(match &self.cluster {
            Some(cluster) if source == SourceKind::Registry => Some(ClusterAllocator {
                ipam: cluster.ipam.clone(),
                timeout: cluster.registry.settings().request_timeout,
                network: network.into(),
                subnet,
                used: endpoint_holders(&model, network),
            }),
            _ => None,
        })
    }

    /// Node-local allocation (the API's state).
    pub(super) fn allocate_here(&mut self, network: &str, requested: Option<Ipv4Addr>, owner: &str) -> Result<Allocated, AddressError> {
        let model = self.model();
        let (subnet, _) = subnet_of(&model, network)?;
        let holders = self.local_holders(&model, network);
        let address = match requested {
            Some(address) => addresses::check_static(subnet, address, &holders).map(|()| address)?,
            None => {
                let range = self.api.network(network).and_then(|n| n.ip_range).unwrap_or(subnet);
                addresses::pick(subnet, range, &holders)?
            }
        };
        let allocation = Allocation { network: network.into(), address, owner: owner.into() };
        let mut api = self.api.clone();
        api.allocations.push(allocation.clone());
        self.save_api(api)?;
        Ok(Allocated { allocation, subnet })
    }

    /// Gives `address` of `network` back.
    pub async fn release_address(&mut self, network: &str, address: Ipv4Addr) -> Result<(), AddressError> {
        if let Some(allocator) = self.cluster_allocator(network)? {
            return allocator.release(address).await;
        }
        self.release_here(network, address)
    }

    /// Node-local release (the API's state).
    pub(super) fn release_here(&mut self, network: &str, address: Ipv4Addr) -> Result<(), AddressError> {
        if !self.api.allocations.iter().any(|a| a.network == network && a.address == address) {
            return Err(AddressError::NotAllocated { network: network.into(), address });
        }
        let mut api = self.api.clone();
        api.allocations.retain(|a| !(a.network == network && a.address == address));
        self.save_api(api)?;
        Ok(())
    }

    /// The addresses handed out in `network` by the API's state (a
    /// node-local network; a registry network's are its allocator's, see
    /// [`ClusterAllocator::allocations`]).
    pub(super) fn addresses_here(&self, network: &str) -> Result<(Ipv4Net, Vec<Allocation>), AddressError> {
        let (subnet, _) = subnet_of(&self.model(), network)?;
        Ok((subnet, self.api.allocations.iter().filter(|a| a.network == network).cloned().collect()))
    }

    /// Node-local: the allocations of the API's state, then every address an endpoint uses.
    fn local_holders(&self, model: &Model, network: &str) -> Holders {
        let mut holders = endpoint_holders(model, network);
        for allocation in self.api.allocations.iter().filter(|a| a.network == network) {
            let owner = if allocation.owner.is_empty() { "an earlier allocation".to_owned() } else { allocation.owner.clone() };
            holders.insert(allocation.address, owner);
        }
        holders
    }
}

/// The subnet of `network` and the source it comes from.
fn subnet_of(model: &Model, network: &str) -> Result<(Ipv4Net, SourceKind), AddressError> {
    let found = model.network(&NetworkRef::Name(network.into())).ok_or_else(|| AddressError::UnknownNetwork(network.into()))?;
    let subnet = found.subnet.ok_or_else(|| AddressError::NoSubnet(network.into()))?;
    Ok((subnet, found.origin.source))
}

/// Every IPv4 address an endpoint of `network` uses (local ones and peers').
fn endpoint_holders(model: &Model, network: &str) -> Holders {
    let wanted = NetworkRef::Name(network.into());
    let in_network = |reference: &NetworkRef| model.network(reference).is_some_and(|n| model.network(&wanted) == Some(n));
    let mut holders = Holders::new();
    for endpoint in model.endpoints.iter().filter(|e| in_network(&e.network)) {
        if let Some(ip) = endpoint.ipv4 {
            holders.insert(ip, format!("{} {}", endpoint.origin.source, endpoint.origin.key));
        }
    }
    for peer in &model.peers {
        for endpoint in peer.endpoints.iter().filter(|e| in_network(&e.network)) {
            if let Some(ip) = endpoint.ipv4 {
                holders.insert(ip, format!("{} {} of peer {}", endpoint.origin.source, endpoint.origin.key, peer.name));
            }
        }
    }
    holders
}

/// The cluster-wide allocator of one registry network, with what the
/// model says its endpoints use.
pub(super) struct ClusterAllocator {
    ipam: std::sync::Arc<crate::registry::Ipam>,
    /// Longest wait for etcd to have a change (its request timeout).
    timeout: std::time::Duration,
    network: String,
    subnet: Ipv4Net,
    used: Holders,
}

impl ClusterAllocator {
    /// Hands out `requested`, or a free address of this node's blocks, and
    /// waits until etcd has it.
    pub(super) async fn allocate(self, requested: Option<Ipv4Addr>, owner: &str) -> Result<Allocated, AddressError> {
        let network = self.network.as_str();
        let address = match requested {
            Some(address) => {
                addresses::check_static(self.subnet, address, &self.used)?;
                self.ipam.allocate_static(network, address, owner).await?;
                address
            }
            None => allocate_unused(&self.ipam, &self.used, network, owner).await?,
        };
        if let Err(error) = self.flush().await {
            // Not durable: handed back, so that a retry does not leak it.
            self.ipam.release(network, address).await?;
            return Err(error);
        }
        Ok(Allocated { allocation: Allocation { network: network.into(), address, owner: owner.into() }, subnet: self.subnet })
    }

    /// The addresses this node handed out in the network (its blocks read
    /// from etcd on first use).
    pub(super) async fn allocations(self) -> Result<(Ipv4Net, Vec<Allocation>), AddressError> {
        let held = self.ipam.allocations(&self.network).await?;
        Ok((self.subnet, held.into_iter().map(|(address, owner)| Allocation { network: self.network.clone(), address, owner }).collect()))
    }

    /// Gives `address` back and waits until etcd has it.
    pub(super) async fn release(self, address: Ipv4Addr) -> Result<(), AddressError> {
        if !self.ipam.release(&self.network, address).await? {
            return Err(AddressError::NotAllocated { network: self.network, address });
        }
        // (Not durable yet on a timeout: the flusher writes it when etcd answers.)
        self.flush().await
    }

    /// Waits until etcd has every change, within the request timeout: the
    /// flusher waits for an unreachable etcd for as long as it takes, a
    /// caller (and the API changes queued behind it) must not.
    async fn flush(&self) -> Result<(), AddressError> {
        match tokio::time::timeout(self.timeout, self.ipam.flush()).await {
            Ok(result) => Ok(result?),
            Err(_) => {
                let message = format!("writing the allocation: no answer within {:?}", self.timeout);
                Err(RegistryError::Etcd(etcd_client::Error::IoError(std::io::Error::new(std::io::ErrorKind::TimedOut, message))).into())
            }
        }
    }
}

/// Cluster mode: an address of this node's blocks no endpoint uses; one an
/// endpoint uses (a static address given by hand) stays allocated to it.
async fn allocate_unused(ipam: &crate::registry::Ipam, used: &Holders, network: &str, owner: &str) -> Result<Ipv4Addr, AddressError> {
    loop {
        let address = ipam.allocate(network, owner).await?;
        match used.get(&address) {
            None => return Ok(address),
            Some(holder) => {
                log::info!("cluster allocator handed out {address} of {network}, which {holder} uses: kept as that endpoint's, allocating again");
                ipam.release(network, address).await?;
                ipam.allocate_static(network, address, holder).await?;
            }
        }
    }
}
