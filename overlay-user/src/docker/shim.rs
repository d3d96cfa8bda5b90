//! TEMPORARY: stands in for main's address allocation until it lands.
use std::net::Ipv4Addr;
use crate::{agent::AgentState, model::Ipv4Net};

#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error("no network named {0}")]
    UnknownNetwork(String),
    #[error("network {0} has no IPv4 subnet to allocate from")]
    NoSubnet(String),
    #[error("taken")]
    Allocation(String),
    #[error("{address} is not allocated in network {network}")]
    NotAllocated { network: String, address: Ipv4Addr },
    #[error("change")]
    Change(String),
}
pub struct Allocation { pub address: Ipv4Addr }
pub struct Allocated { pub allocation: Allocation, pub subnet: Ipv4Net }
pub trait Alloc {
    async fn allocate_address(&mut self, network: &str, requested: Option<Ipv4Addr>, owner: &str) -> Result<Allocated, AddressError>;
    async fn release_address(&mut self, network: &str, address: Ipv4Addr) -> Result<(), AddressError>;
}
impl Alloc for AgentState {
    async fn allocate_address(&mut self, network: &str, requested: Option<Ipv4Addr>, _owner: &str) -> Result<Allocated, AddressError> {
        let subnet: Ipv4Net = "10.0.0.0/8".parse().unwrap();
        let _ = network;
        Ok(Allocated { allocation: Allocation { address: requested.unwrap_or(Ipv4Addr::new(10, 77, 0, 66)) }, subnet })
    }
    async fn release_address(&mut self, _network: &str, _address: Ipv4Addr) -> Result<(), AddressError> { Ok(()) }
}
