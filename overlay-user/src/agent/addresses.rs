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
        let model = self.model();
        let (subnet, source) = subnet_of(&model, network)?;
        if source == SourceKind::Registry
            && let Some(cluster) = &self.cluster
        {
            let ipam = cluster.ipam.clone();
            let address = match requested {
                Some(address) => {
                    addresses::check_static(subnet, address, &endpoint_holders(&model, network))?;
                    ipam.allocate_static(network, address, owner).await?;
                    address
                }
                None => allocate_unused(&ipam, &model, network, owner).await?,
            };
            ipam.flush().await?;
            return Ok(Allocated { allocation: Allocation { network: network.into(), address, owner: owner.into() }, subnet });
        }
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
        let model = self.model();
        let (_, source) = subnet_of(&model, network)?;
        if source == SourceKind::Registry
            && let Some(cluster) = &self.cluster
        {
            let ipam = cluster.ipam.clone();
            if !ipam.release(network, address).await? {
                return Err(AddressError::NotAllocated { network: network.into(), address });
            }
            ipam.flush().await?;
            return Ok(());
        }
        if !self.api.allocations.iter().any(|a| a.network == network && a.address == address) {
            return Err(AddressError::NotAllocated { network: network.into(), address });
        }
        let mut api = self.api.clone();
        api.allocations.retain(|a| !(a.network == network && a.address == address));
        self.save_api(api)?;
        Ok(())
    }

    /// The addresses handed out in `network` (by this node, in cluster mode).
    pub fn addresses(&self, network: &str) -> Result<(Ipv4Net, Vec<Allocation>), AddressError> {
        let model = self.model();
        let (subnet, source) = subnet_of(&model, network)?;
        let allocations = match (&self.cluster, source) {
            (Some(cluster), SourceKind::Registry) => cluster
                .ipam
                .allocations(network)
                .into_iter()
                .map(|(address, owner)| Allocation { network: network.into(), address, owner })
                .collect(),
            _ => self.api.allocations.iter().filter(|a| a.network == network).cloned().collect(),
        };
        Ok((subnet, allocations))
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

/// Cluster mode: an address of this node's blocks no endpoint uses; one an
/// endpoint uses (a static address given by hand) stays allocated to it.
async fn allocate_unused(ipam: &crate::registry::Ipam, model: &Model, network: &str, owner: &str) -> Result<Ipv4Addr, AddressError> {
    let used = endpoint_holders(model, network);
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
