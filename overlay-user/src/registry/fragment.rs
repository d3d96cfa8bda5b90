//! The registry as one source of the agent's model: a [`ClusterSnapshot`]
//! seen from one node becomes a [`Fragment`] (networks, and every other
//! node as a peer with its endpoints). This node's own endpoints are not in
//! it: the local sources (file, API) hold them with their interfaces.
use std::{collections::BTreeMap, net::IpAddr};

use super::{records::EndpointRecord, snapshot::ClusterSnapshot};
use crate::model::{Fragment, Network, NetworkRef, Origin, Peer, RemoteEndpoint, SourceKind};

/// Network option read into the model's field.
pub const OPTION_FLOOD_LIMIT: &str = "flood_limit";

/// What the registry says, for node `this_node`. Items are named by their
/// key under the prefix (`nodes/b`, `endpoints/blue/02:00:00:00:00:01`), so
/// the model's problems point at the record.
pub fn fragment(snapshot: &ClusterSnapshot, this_node: &str) -> Fragment {
    let origin = |key: String| Origin::new(SourceKind::Registry, key);
    let networks = snapshot
        .networks
        .values()
        .map(|network| Network {
            name: network.name.clone(),
            vni: network.vni,
            subnet: Some(network.subnet),
            subnet6: network.subnet6,
            mtu: Some(network.mtu),
            flood_limit: network.options.get(OPTION_FLOOD_LIMIT).and_then(|limit| limit.parse().ok()),
            options: network.options.clone(),
            origin: origin(format!("networks/{}", network.name)),
        })
        .collect();
    // Grouped once: a filter over every endpoint for each node was
    // quadratic (20 million comparisons per snapshot at 1,000 nodes).
    let mut by_node: BTreeMap<&str, Vec<&EndpointRecord>> = BTreeMap::new();
    for endpoint in snapshot.endpoints.values() {
        by_node.entry(endpoint.node.as_str()).or_default().push(endpoint);
    }
    let peers = snapshot
        .nodes
        .values()
        .filter(|entry| entry.record.name != this_node)
        .map(|entry| {
            let name = &entry.record.name;
            let endpoints = by_node
                .get(name.as_str())
                .into_iter()
                .flatten()
                .map(|endpoint| RemoteEndpoint {
                    network: NetworkRef::Name(endpoint.network.clone()),
                    mac: endpoint.mac,
                    // The model carries one address of each family; the
                    // registry's first of each is the endpoint's primary.
                    ipv4: endpoint.addresses.iter().find_map(|address| match address {
                        IpAddr::V4(v4) => Some(*v4),
                        IpAddr::V6(_) => None,
                    }),
                    ipv6: endpoint.addresses.iter().find_map(|address| match address {
                        IpAddr::V6(v6) => Some(*v6),
                        IpAddr::V4(_) => None,
                    }),
                    origin: origin(format!("endpoints/{}/{}", endpoint.network, endpoint.mac)),
                })
                .collect();
            Peer {
                name: name.clone(),
                vtep_address: entry.record.vtep,
                endpoints,
                networks: Vec::new(),
                origin: origin(format!("nodes/{name}")),
            }
        })
        .collect();
    Fragment { networks, endpoints: Vec::new(), peers }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{keys::KeyLayout, snapshot::KeyValue, snapshot::RegistryStore};

    #[test]
    fn other_nodes_become_peers_with_their_endpoints() {
        let mut store = RegistryStore::new(KeyLayout::default());
        let mut put = |key: &str, value: &str, revision| {
            store.put(KeyValue { key, value: value.as_bytes(), create_revision: revision, lease: 7 })
        };
        put("/overlay/v1/networks/blue", r#"{"name":"blue","vni":100,"subnet":"10.1.0.0/16","mtu":1450,"options":{"flood_limit":"8"}}"#, 1);
        put("/overlay/v1/nodes/a", r#"{"name":"a","vtep":"192.0.2.1","vxlan_port":4789,"agent_version":"1"}"#, 2);
        put("/overlay/v1/nodes/b", r#"{"name":"b","vtep":"192.0.2.2","vxlan_port":4789,"agent_version":"1"}"#, 3);
        put(
            "/overlay/v1/endpoints/blue/02:00:00:00:00:01",
            r#"{"network":"blue","mac":"02:00:00:00:00:01","addresses":["fd00::1","10.1.0.1"],"node":"a","owner":"c1"}"#,
            4,
        );
        put(
            "/overlay/v1/endpoints/blue/02:00:00:00:00:02",
            r#"{"network":"blue","mac":"02:00:00:00:00:02","addresses":["10.1.0.2"],"node":"b","owner":"c2"}"#,
            5,
        );
        let fragment = fragment(&store.snapshot(), "a");
        assert_eq!(fragment.networks.len(), 1);
        assert_eq!(fragment.networks[0].flood_limit, Some(8));
        assert_eq!(fragment.peers.len(), 1, "only b is a peer of a: {:#?}", fragment.peers);
        let peer = &fragment.peers[0];
        assert_eq!((peer.name.as_str(), peer.vtep_address.to_string().as_str()), ("b", "192.0.2.2"));
        assert_eq!(peer.endpoints.len(), 1);
        assert_eq!(peer.endpoints[0].ipv4, Some("10.1.0.2".parse().unwrap()));
        assert!(fragment.endpoints.is_empty(), "this node's endpoints come from its local sources");
    }
}
