//! `overlay cluster status`: what the registry holds, in one report (nodes
//! and their leases, networks with endpoint and address counts, problems).
use std::{fmt, net::IpAddr};

use etcd_client::LeaseTimeToLiveOptions;

use super::{client::Registry, problem::ClusterProblem, problem::RegistryError};

/// One node's line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    pub name: String,
    pub vtep: IpAddr,
    pub vxlan_port: u16,
    pub agent_version: String,
    pub lease: i64,
    /// The lease's TTL as granted, seconds.
    pub lease_ttl: i64,
    /// Seconds since the lease was last renewed (granted TTL - remaining);
    /// None when etcd no longer knows the lease.
    pub lease_age: Option<i64>,
    pub endpoints: usize,
}

/// One network's line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkStatus {
    pub name: String,
    pub vni: u32,
    pub subnet: String,
    pub endpoints: usize,
    /// Addresses allocated by IPAM.
    pub allocated: usize,
    pub blocks: usize,
    /// Blocks claimed by nodes that are not registered now.
    pub blocks_of_absent_nodes: usize,
}

/// The cluster as the registry holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterStatus {
    pub revision: i64,
    pub nodes: Vec<NodeStatus>,
    pub networks: Vec<NetworkStatus>,
    pub problems: Vec<ClusterProblem>,
}

impl ClusterStatus {
    /// Reads the prefix and asks etcd about each node's lease.
    pub async fn read(registry: &Registry) -> Result<ClusterStatus, RegistryError> {
        let snapshot = registry.read_store().await?.snapshot();
        let mut nodes = Vec::new();
        for entry in snapshot.nodes.values() {
            let id = entry.lease;
            let lease = registry
                .request(|mut client| async move { client.lease_time_to_live(id, None::<LeaseTimeToLiveOptions>).await })
                .await?;
            let known = lease.ttl() > 0;
            nodes.push(NodeStatus {
                name: entry.record.name.clone(),
                vtep: entry.record.vtep,
                vxlan_port: entry.record.vxlan_port,
                agent_version: entry.record.agent_version.clone(),
                lease: entry.lease,
                lease_ttl: lease.granted_ttl(),
                lease_age: known.then(|| lease.granted_ttl() - lease.ttl()),
                endpoints: snapshot.endpoints.values().filter(|endpoint| endpoint.node == entry.record.name).count(),
            });
        }
        let networks = snapshot
            .networks
            .values()
            .map(|network| {
                let blocks: Vec<_> = snapshot.blocks.iter().filter(|((name, _), _)| *name == network.name).map(|(_, block)| block).collect();
                NetworkStatus {
                    name: network.name.clone(),
                    vni: network.vni,
                    subnet: network.subnet6.map_or(network.subnet.to_string(), |v6| format!("{} {v6}", network.subnet)),
                    endpoints: snapshot.endpoints_of(&network.name).count(),
                    allocated: snapshot.allocated_in(&network.name),
                    blocks: blocks.len(),
                    blocks_of_absent_nodes: blocks.iter().filter(|block| !snapshot.nodes.contains_key(&block.node)).count(),
                }
            })
            .collect();
        Ok(ClusterStatus { revision: snapshot.revision, nodes, networks, problems: snapshot.problems.clone() })
    }
}

impl fmt::Display for ClusterStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "registry revision {}", self.revision)?;
        writeln!(f, "nodes: {}", self.nodes.len())?;
        writeln!(f, "  {:<20} {:<40} {:>5} {:>9} {:>10} {:<12}", "NAME", "VTEP", "PORT", "ENDPOINTS", "LEASE AGE", "VERSION")?;
        for node in &self.nodes {
            let age = node.lease_age.map_or("expired".to_owned(), |age| format!("{age}/{} s", node.lease_ttl));
            writeln!(
                f,
                "  {:<20} {:<40} {:>5} {:>9} {:>10} {:<12}",
                node.name, node.vtep, node.vxlan_port, node.endpoints, age, node.agent_version
            )?;
        }
        writeln!(f, "networks: {}", self.networks.len())?;
        writeln!(f, "  {:<20} {:>8} {:<36} {:>9} {:>9} {:>6}", "NAME", "VNI", "SUBNETS", "ENDPOINTS", "ALLOCATED", "BLOCKS")?;
        for network in &self.networks {
            let blocks = if network.blocks_of_absent_nodes > 0 {
                format!("{} ({} of absent nodes)", network.blocks, network.blocks_of_absent_nodes)
            } else {
                network.blocks.to_string()
            };
            writeln!(
                f,
                "  {:<20} {:>8} {:<36} {:>9} {:>9} {:>6}",
                network.name, network.vni, network.subnet, network.endpoints, network.allocated, blocks
            )?;
        }
        writeln!(f, "problems: {}", self.problems.len())?;
        for problem in &self.problems {
            writeln!(f, "  {problem}")?;
        }
        Ok(())
    }
}
