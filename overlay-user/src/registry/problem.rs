//! What can go wrong with the registry: problems found in what etcd holds
//! (values, reported and skipped) and errors of an operation (returned).
use std::{fmt, net::IpAddr};

use crate::model::MacAddr;

/// A record in etcd that could not be used. The record is skipped; every
/// other record is still read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordProblem {
    /// The etcd key that holds the record.
    pub key: String,
    /// The JSON field at fault (`-` for the key itself or the whole value).
    pub field: String,
    /// The value as it was found.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

impl RecordProblem {
    pub fn new(key: &str, field: &str, value: impl fmt::Display, reason: impl Into<String>) -> Self {
        RecordProblem { key: key.to_owned(), field: field.to_owned(), value: value.to_string(), reason: reason.into() }
    }
}

impl fmt::Display for RecordProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: field {} = {:?}: {}", self.key, self.field, self.value, self.reason)
    }
}

/// Who holds something another claim wanted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holder {
    /// A live node (its name).
    Node(String),
    /// An endpoint: its node and owner (container id).
    Endpoint { node: String, owner: String, mac: MacAddr },
    /// A network (its name).
    Network(String),
    /// An IPAM allocation: the node whose block holds it and the owner.
    Allocation { node: String, owner: String },
    /// Something etcd holds whose value did not parse (the key).
    Unreadable(String),
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Holder::Node(name) => write!(f, "node {name}"),
            Holder::Endpoint { node, owner, mac } => write!(f, "endpoint {mac} of {owner} on node {node}"),
            Holder::Network(name) => write!(f, "network {name}"),
            Holder::Allocation { node, owner } => write!(f, "{owner} (allocated on node {node})"),
            Holder::Unreadable(key) => write!(f, "the unreadable record at {key}"),
        }
    }
}

/// Something in the cluster's state that needs an operator: a bad record,
/// two records claiming one thing, a record that refers to nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterProblem {
    /// A record that does not parse or validate; it is skipped.
    BadRecord(RecordProblem),
    /// Two nodes with one VTEP address; the later one (higher create
    /// revision) is left out of the snapshot.
    VtepConflict { vtep: IpAddr, holder: String, claimant: String },
    /// Two networks with one VNI; the later one is left out.
    VniConflict { vni: u32, holder: String, claimant: String },
    /// Two endpoints of one network with one address; the later is left out.
    AddressConflict { network: String, address: IpAddr, holder: MacAddr, claimant: MacAddr },
    /// An endpoint whose network is not in the registry; left out.
    EndpointOfUnknownNetwork { network: String, mac: MacAddr },
    /// An endpoint whose node is not (or no longer) registered; left out.
    EndpointOfUnknownNode { network: String, mac: MacAddr, node: String },
    /// An endpoint address outside its network's subnets; left out.
    AddressOutsideNetwork { network: String, mac: MacAddr, address: IpAddr },
    /// A claim some agent made and that was refused, as that agent recorded
    /// it under `conflicts/` so the holder's side sees it too.
    RefusedClaim(ConflictReport),
}

impl fmt::Display for ClusterProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterProblem::BadRecord(problem) => write!(f, "bad record {problem}"),
            ClusterProblem::VtepConflict { vtep, holder, claimant } => {
                write!(f, "VTEP {vtep} claimed by node {claimant}, held by node {holder}")
            }
            ClusterProblem::VniConflict { vni, holder, claimant } => {
                write!(f, "VNI {vni} claimed by network {claimant}, held by network {holder}")
            }
            ClusterProblem::AddressConflict { network, address, holder, claimant } => {
                write!(f, "address {address} in network {network} claimed by {claimant}, held by {holder}")
            }
            ClusterProblem::EndpointOfUnknownNetwork { network, mac } => {
                write!(f, "endpoint {mac} names network {network}, which does not exist")
            }
            ClusterProblem::EndpointOfUnknownNode { network, mac, node } => {
                write!(f, "endpoint {mac} in network {network} names node {node}, which is not registered")
            }
            ClusterProblem::AddressOutsideNetwork { network, mac, address } => {
                write!(f, "endpoint {mac} has address {address}, outside network {network}'s subnets")
            }
            ClusterProblem::RefusedClaim(report) => write!(f, "{report}"),
        }
    }
}

/// A refused claim as recorded in etcd (`conflicts/` keys, on the
/// claimant's lease).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConflictReport {
    /// The node that made the claim.
    pub claimant: String,
    /// What was claimed: `node-name`, `vtep`, `mac`, `address`, `vni`.
    pub kind: String,
    /// The claimed value (a name, an address).
    pub subject: String,
    /// Who holds it, as text.
    pub holder: String,
    /// The node that holds it, when a node does (so that node reports it too).
    pub holder_node: Option<String>,
}

impl fmt::Display for ConflictReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {} was refused {} {}: held by {}", self.claimant, self.kind, self.subject, self.holder)
    }
}

impl RegistryError {
    /// The node holding what a refused claim wanted, if a node holds it.
    pub fn holder_node(&self) -> Option<&str> {
        let holder = match self {
            RegistryError::NodeNameTaken { name, .. } => return Some(name),
            RegistryError::VtepTaken { holder, .. }
            | RegistryError::MacTaken { holder, .. }
            | RegistryError::AddressTaken { holder, .. } => holder,
            RegistryError::AddressInForeignBlock { node, .. } => return Some(node),
            _ => return None,
        };
        match holder {
            Holder::Node(node) | Holder::Endpoint { node, .. } | Holder::Allocation { node, .. } => Some(node),
            Holder::Network(_) | Holder::Unreadable(_) => None,
        }
    }
}

/// Errors of registry operations.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// etcd did not answer or answered with an error.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// A setting of the registry client is invalid.
    #[error("registry setting {field} = {value:?}: {reason}")]
    InvalidSetting { field: &'static str, value: String, reason: String },
    /// A record given to write is invalid.
    #[error("invalid record {0}")]
    InvalidRecord(RecordProblem),
    /// Another live node already has this name.
    #[error("node name {name} is held by another live node (VTEP {holder_vtep})")]
    NodeNameTaken { name: String, holder_vtep: String },
    /// Another live node already has this VTEP address.
    #[error("VTEP {vtep} is held by {holder}")]
    VtepTaken { vtep: IpAddr, holder: Holder },
    /// Another network already has this name with different settings.
    #[error("network {name} exists with other settings")]
    NetworkExists { name: String },
    /// Another network already has this VNI.
    #[error("VNI {vni} is held by {holder}")]
    VniTaken { vni: u32, holder: Holder },
    /// The network is not in the registry.
    #[error("network {0} is not in the registry")]
    UnknownNetwork(String),
    /// Another endpoint of the network has this MAC.
    #[error("MAC {mac} in network {network} is held by {holder}")]
    MacTaken { network: String, mac: MacAddr, holder: Holder },
    /// Another endpoint or allocation of the network has this address.
    #[error("address {address} in network {network} is held by {holder}")]
    AddressTaken { network: String, address: IpAddr, holder: Holder },
    /// An address is outside the network's subnet, or is its network or
    /// broadcast address.
    #[error("address {address} is not usable in network {network} (subnet {subnet})")]
    AddressNotInNetwork { network: String, address: IpAddr, subnet: String },
    /// Every block of the network's subnet is claimed and this node's are full.
    #[error("network {network}: no free address (every block is claimed and this node's blocks are full)")]
    PoolExhausted { network: String },
    /// The address lies in a block another node allocates from; a static
    /// request must be made on that node (see the IPAM module's doc).
    #[error("address {address} lies in block {block} of node {node}: request it on that node")]
    AddressInForeignBlock { address: IpAddr, block: String, node: String },
    /// The operation needs this node's registration, which its lease lost
    /// and could not re-create.
    #[error("node {0} is not registered (its lease expired and its records could not be re-created)")]
    NotRegistered(String),
    /// A compare-and-swap kept failing because others kept writing.
    #[error("{what}: gave up after {attempts} compare-and-swap attempts")]
    Contended { what: String, attempts: u32 },
}
