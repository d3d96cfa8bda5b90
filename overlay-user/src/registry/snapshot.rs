//! The cluster as the registry holds it: a store of every record under the
//! prefix, changed one etcd event at a time, and the consistent view
//! ([`ClusterSnapshot`]) derived from it for consumers.
//!
//! The store keeps what etcd holds (records that parsed, and the problem of
//! each that did not); the snapshot leaves out what cannot be used: the later
//! of two claims on one VTEP, VNI or address (by create revision, so every
//! agent picks the same winner), endpoints of unknown networks or nodes.
//! Each of those is a [`ClusterProblem`] in the snapshot.
use std::{
    collections::{BTreeMap, btree_map::Entry},
    net::{IpAddr, Ipv4Addr},
};

use super::{
    keys::{KeyKind, KeyLayout},
    problem::{ClusterProblem, ConflictReport, RecordProblem},
    records::{BlockRecord, EndpointRecord, NetworkRecord, NodeRecord},
};
use crate::model::MacAddr;

/// A node as the snapshot sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeEntry {
    pub record: NodeRecord,
    /// The etcd lease the record is attached to (0: none).
    pub lease: i64,
    /// Revision at which the record was created (its registration).
    pub create_revision: i64,
}

/// Everything a consumer needs of the cluster, at one etcd revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterSnapshot {
    /// The etcd revision this view is complete up to. It can go back: an
    /// etcd restored or rebuilt from nothing starts counting again.
    pub revision: i64,
    pub nodes: BTreeMap<String, NodeEntry>,
    pub networks: BTreeMap<String, NetworkRecord>,
    /// Keyed by (network, MAC).
    pub endpoints: BTreeMap<(String, MacAddr), EndpointRecord>,
    /// IPAM blocks keyed by (network, block base address).
    pub blocks: BTreeMap<(String, Ipv4Addr), BlockRecord>,
    /// What was left out, and why; sorted.
    pub problems: Vec<ClusterProblem>,
}

impl ClusterSnapshot {
    /// The endpoints of one network.
    pub fn endpoints_of<'a>(&'a self, network: &'a str) -> impl Iterator<Item = &'a EndpointRecord> + 'a {
        self.endpoints.values().filter(move |endpoint| endpoint.network == network)
    }

    /// Addresses allocated by IPAM in one network.
    pub fn allocated_in(&self, network: &str) -> usize {
        self.blocks.iter().filter(|((name, _), _)| name == network).map(|(_, block)| block.allocations.len()).sum()
    }
}

#[derive(Clone, Debug)]
struct Stored<T> {
    record: T,
    create_revision: i64,
    lease: i64,
}

/// Every record under the prefix, as etcd holds it.
#[derive(Clone, Debug)]
pub struct RegistryStore {
    layout: KeyLayout,
    revision: i64,
    nodes: BTreeMap<String, Stored<NodeRecord>>,
    networks: BTreeMap<String, Stored<NetworkRecord>>,
    endpoints: BTreeMap<String, Stored<EndpointRecord>>,
    blocks: BTreeMap<String, BlockRecord>,
    conflicts: BTreeMap<String, ConflictReport>,
    /// Keys whose value could not be used, and why.
    bad: BTreeMap<String, RecordProblem>,
}

/// One key-value as etcd reports it (decoupled from the client's types so
/// the store can be tested without a server).
#[derive(Clone, Copy, Debug)]
pub struct KeyValue<'a> {
    pub key: &'a str,
    pub value: &'a [u8],
    pub create_revision: i64,
    pub lease: i64,
}

impl RegistryStore {
    pub fn new(layout: KeyLayout) -> Self {
        RegistryStore {
            layout,
            revision: 0,
            nodes: BTreeMap::new(),
            networks: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            blocks: BTreeMap::new(),
            conflicts: BTreeMap::new(),
            bad: BTreeMap::new(),
        }
    }

    pub fn revision(&self) -> i64 {
        self.revision
    }

    pub fn set_revision(&mut self, revision: i64) {
        self.revision = self.revision.max(revision);
    }

    /// Number of records held (parsed or not).
    pub fn len(&self) -> usize {
        self.nodes.len() + self.networks.len() + self.endpoints.len() + self.blocks.len() + self.conflicts.len() + self.bad.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies a put: the record replaces what the key held. A value that
    /// does not parse removes the key's previous record and is kept as a
    /// problem until the key is fixed or deleted.
    pub fn put(&mut self, kv: KeyValue<'_>) {
        self.remove(kv.key);
        let Some(kind) = self.layout.classify(kv.key) else { return };
        let result = match kind {
            KeyKind::Node { name } => NodeRecord::parse(kv.key, kv.value).and_then(|record| {
                key_matches(kv.key, "name", &name, &record.name)?;
                self.nodes.insert(kv.key.to_owned(), stored(record, kv));
                Ok(())
            }),
            KeyKind::Network { name } => NetworkRecord::parse(kv.key, kv.value).and_then(|record| {
                key_matches(kv.key, "name", &name, &record.name)?;
                self.networks.insert(kv.key.to_owned(), stored(record, kv));
                Ok(())
            }),
            KeyKind::Endpoint { network, mac } => EndpointRecord::parse(kv.key, kv.value).and_then(|record| {
                key_matches(kv.key, "network", &network, &record.network)?;
                key_matches(kv.key, "mac", &mac, &record.mac.to_string())?;
                self.endpoints.insert(kv.key.to_owned(), stored(record, kv));
                Ok(())
            }),
            KeyKind::Block { network, base } => BlockRecord::parse(kv.key, kv.value).and_then(|record| {
                key_matches(kv.key, "network", &network, &record.network)?;
                key_matches(kv.key, "cidr", &base, &record.cidr.network().to_string())?;
                self.blocks.insert(kv.key.to_owned(), record);
                Ok(())
            }),
            KeyKind::Conflict => ConflictReport::parse(kv.key, kv.value).map(|report| {
                self.conflicts.insert(kv.key.to_owned(), report);
            }),
            // Claim keys mirror records and are read by the writers' transactions only;
            // network users are read by whoever removes a network.
            KeyKind::VtepClaim | KeyKind::VniClaim | KeyKind::AddressClaim | KeyKind::NetworkUser => Ok(()),
            KeyKind::Unknown => Err(RecordProblem::new(kv.key, "-", "", "not a key of this registry layout")),
        };
        if let Err(problem) = result {
            self.bad.insert(kv.key.to_owned(), problem);
        }
    }

    pub fn delete(&mut self, key: &str) {
        self.remove(key);
    }

    fn remove(&mut self, key: &str) {
        self.nodes.remove(key);
        self.networks.remove(key);
        self.endpoints.remove(key);
        self.blocks.remove(key);
        self.conflicts.remove(key);
        self.bad.remove(key);
    }

    /// The consistent view: conflicts resolved for the earlier claim,
    /// dangling endpoints left out, every such decision reported.
    pub fn snapshot(&self) -> ClusterSnapshot {
        let mut problems: Vec<ClusterProblem> = self.bad.values().cloned().map(ClusterProblem::BadRecord).collect();
        problems.extend(self.conflicts.values().cloned().map(ClusterProblem::RefusedClaim));

        let mut nodes: BTreeMap<String, NodeEntry> = BTreeMap::new();
        let mut vteps: BTreeMap<IpAddr, String> = BTreeMap::new();
        for stored in by_creation(self.nodes.values()) {
            let record = &stored.record;
            match vteps.entry(record.vtep) {
                Entry::Occupied(holder) => problems.push(ClusterProblem::VtepConflict {
                    vtep: record.vtep,
                    holder: holder.get().clone(),
                    claimant: record.name.clone(),
                }),
                Entry::Vacant(slot) => {
                    slot.insert(record.name.clone());
                    let entry = NodeEntry { record: record.clone(), lease: stored.lease, create_revision: stored.create_revision };
                    nodes.insert(record.name.clone(), entry);
                }
            }
        }

        let mut networks = BTreeMap::new();
        let mut vnis: BTreeMap<u32, String> = BTreeMap::new();
        for stored in by_creation(self.networks.values()) {
            let record = &stored.record;
            match vnis.entry(record.vni) {
                Entry::Occupied(holder) => problems.push(ClusterProblem::VniConflict {
                    vni: record.vni,
                    holder: holder.get().clone(),
                    claimant: record.name.clone(),
                }),
                Entry::Vacant(slot) => {
                    slot.insert(record.name.clone());
                    networks.insert(record.name.clone(), record.clone());
                }
            }
        }

        let mut endpoints = BTreeMap::new();
        let mut addresses: BTreeMap<(&str, IpAddr), MacAddr> = BTreeMap::new();
        for stored in by_creation(self.endpoints.values()) {
            let record = &stored.record;
            let (network, mac) = (record.network.clone(), record.mac);
            let Some(network_record) = networks.get(&record.network) else {
                problems.push(ClusterProblem::EndpointOfUnknownNetwork { network, mac });
                continue;
            };
            if !nodes.contains_key(&record.node) {
                problems.push(ClusterProblem::EndpointOfUnknownNode { network, mac, node: record.node.clone() });
                continue;
            }
            if let Some(&address) = record.addresses.iter().find(|address| !network_record.admits(**address)) {
                problems.push(ClusterProblem::AddressOutsideNetwork { network, mac, address });
                continue;
            }
            let taken = record.addresses.iter().find_map(|address| {
                addresses.get(&(record.network.as_str(), *address)).map(|holder| (*address, *holder))
            });
            if let Some((address, holder)) = taken {
                problems.push(ClusterProblem::AddressConflict { network, address, holder, claimant: mac });
                continue;
            }
            for address in &record.addresses {
                addresses.insert((record.network.as_str(), *address), mac);
            }
            endpoints.insert((network, mac), record.clone());
        }

        let blocks = self.blocks.values().map(|block| ((block.network.clone(), block.cidr.network()), block.clone())).collect();
        problems.sort_by_key(|problem| problem.to_string());
        ClusterSnapshot { revision: self.revision, nodes, networks, endpoints, blocks, problems }
    }
}

fn stored<T>(record: T, kv: KeyValue<'_>) -> Stored<T> {
    Stored { record, create_revision: kv.create_revision, lease: kv.lease }
}

/// Records in the order they were created: the first claim wins.
fn by_creation<'a, T>(records: impl Iterator<Item = &'a Stored<T>>) -> Vec<&'a Stored<T>> {
    let mut sorted: Vec<_> = records.collect();
    sorted.sort_by_key(|stored| stored.create_revision);
    sorted
}

fn key_matches(key: &str, field: &str, in_key: &str, in_record: &str) -> Result<(), RecordProblem> {
    if in_key == in_record {
        Ok(())
    } else {
        Err(RecordProblem::new(key, field, in_record, format!("differs from the key's {in_key:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv<'a>(key: &'a str, value: &'a str, create_revision: i64) -> KeyValue<'a> {
        KeyValue { key, value: value.as_bytes(), create_revision, lease: 0 }
    }

    #[test]
    fn later_vtep_claim_and_bad_records_are_left_out_and_reported() {
        let mut store = RegistryStore::new(KeyLayout::default());
        store.put(kv("/overlay/v1/nodes/a", r#"{"name":"a","vtep":"192.0.2.1","vxlan_port":4789,"agent_version":"1"}"#, 5));
        store.put(kv("/overlay/v1/nodes/b", r#"{"name":"b","vtep":"192.0.2.1","vxlan_port":4789,"agent_version":"1"}"#, 7));
        store.put(kv("/overlay/v1/nodes/c", r#"{"name":"c","vtep":"nope","vxlan_port":4789,"agent_version":"1"}"#, 8));
        store.put(kv("/overlay/v1/nodes/d", r#"{"name":"x","vtep":"192.0.2.4","vxlan_port":4789,"agent_version":"1"}"#, 9));
        let snapshot = store.snapshot();
        assert_eq!(snapshot.nodes.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(snapshot.problems.len(), 3, "{:#?}", snapshot.problems);
        store.delete("/overlay/v1/nodes/c");
        store.delete("/overlay/v1/nodes/a");
        let snapshot = store.snapshot();
        assert_eq!(snapshot.nodes.keys().collect::<Vec<_>>(), ["b"], "the later claim takes over once the holder is gone");
        assert_eq!(snapshot.problems.len(), 1, "{:#?}", snapshot.problems);
    }

    #[test]
    fn endpoints_need_their_network_and_node_and_the_first_address_claim_wins() {
        let mut store = RegistryStore::new(KeyLayout::default());
        store.put(kv("/overlay/v1/networks/blue", r#"{"name":"blue","vni":100,"subnet":"10.1.0.0/16","mtu":1450}"#, 1));
        store.put(kv("/overlay/v1/nodes/a", r#"{"name":"a","vtep":"192.0.2.1","vxlan_port":4789,"agent_version":"1"}"#, 2));
        let endpoint = |mac: &str, address: &str, network: &str, node: &str| {
            format!(r#"{{"network":"{network}","mac":"{mac}","addresses":["{address}"],"node":"{node}","owner":"o"}}"#)
        };
        let puts = [
            ("/overlay/v1/endpoints/blue/02:00:00:00:00:01", endpoint("02:00:00:00:00:01", "10.1.0.5", "blue", "a"), 10),
            // Same address, created later: left out.
            ("/overlay/v1/endpoints/blue/02:00:00:00:00:02", endpoint("02:00:00:00:00:02", "10.1.0.5", "blue", "a"), 11),
            ("/overlay/v1/endpoints/red/02:00:00:00:00:03", endpoint("02:00:00:00:00:03", "10.1.0.6", "red", "a"), 12),
            ("/overlay/v1/endpoints/blue/02:00:00:00:00:04", endpoint("02:00:00:00:00:04", "10.1.0.7", "blue", "gone"), 13),
            ("/overlay/v1/endpoints/blue/02:00:00:00:00:05", endpoint("02:00:00:00:00:05", "10.9.0.1", "blue", "a"), 14),
            // The key's MAC and the record's differ.
            ("/overlay/v1/endpoints/blue/02:00:00:00:00:06", endpoint("02:00:00:00:00:07", "10.1.0.8", "blue", "a"), 15),
        ];
        for (key, value, revision) in &puts {
            store.put(kv(key, value, *revision));
        }
        let snapshot = store.snapshot();
        let kept: Vec<String> = snapshot.endpoints.keys().map(|(_, mac)| mac.to_string()).collect();
        assert_eq!(kept, ["02:00:00:00:00:01"], "{:#?}", snapshot.problems);
        let kinds: Vec<&str> = snapshot
            .problems
            .iter()
            .map(|problem| match problem {
                ClusterProblem::AddressConflict { .. } => "address",
                ClusterProblem::EndpointOfUnknownNetwork { .. } => "network",
                ClusterProblem::EndpointOfUnknownNode { .. } => "node",
                ClusterProblem::AddressOutsideNetwork { .. } => "outside",
                ClusterProblem::BadRecord(problem) if problem.field == "mac" => "mac",
                _ => "other",
            })
            .collect();
        let mut kinds = kinds;
        kinds.sort();
        assert_eq!(kinds, ["address", "mac", "network", "node", "outside"], "{:#?}", snapshot.problems);

        // The holder goes: the later claim is now the only one.
        store.delete(puts[0].0);
        let kept: Vec<String> = store.snapshot().endpoints.keys().map(|(_, mac)| mac.to_string()).collect();
        assert_eq!(kept, ["02:00:00:00:00:02"]);
    }
}
