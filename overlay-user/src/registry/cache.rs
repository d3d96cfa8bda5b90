//! The last snapshot an agent applied, kept on disk (its run directory)
//! so that an agent restarted while etcd is unreachable, or before its
//! first read answers, starts from the last known state of the cluster:
//! the networks its API endpoints use and the peers its containers talk
//! to. Kept as the records' JSON by key and read back through
//! [`RegistryStore`], like an answer of etcd, so a bad file is reported as
//! bad records, never half-trusted.
use std::{io, net::IpAddr, path::Path};

use serde::{Deserialize, Serialize};

use super::{
    keys::KeyLayout,
    snapshot::{ClusterSnapshot, KeyValue, RegistryStore},
};

#[derive(Debug, Serialize, Deserialize)]
struct Cached {
    revision: i64,
    records: Vec<CachedRecord>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CachedRecord {
    key: String,
    value: String,
    create_revision: i64,
    lease: i64,
}

/// Writes `snapshot` to `path` atomically, mode 0600: it names every node
/// and endpoint of the cluster.
pub fn save(path: &Path, layout: &KeyLayout, snapshot: &ClusterSnapshot) -> io::Result<()> {
    let record = |key: String, value: String, create_revision: i64, lease: i64| CachedRecord { key, value, create_revision, lease };
    let mut records = Vec::new();
    records.extend(snapshot.nodes.values().map(|n| record(layout.node(&n.record.name), n.record.to_json(), n.create_revision, n.lease)));
    records.extend(snapshot.networks.values().map(|n| record(layout.network(&n.name), n.to_json(), 0, 0)));
    records.extend(snapshot.endpoints.values().map(|e| record(layout.endpoint(&e.network, e.mac), e.to_json(), 0, 0)));
    records.extend(snapshot.blocks.values().map(|b| record(layout.block(&b.network, IpAddr::V4(b.cidr.network())), b.to_json(), 0, 0)));
    crate::private_file::write_json(path, &Cached { revision: snapshot.revision, records })
}

/// The snapshot saved at `path`; `None` when there is none.
pub fn load(path: &Path, layout: &KeyLayout) -> io::Result<Option<ClusterSnapshot>> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let cached: Cached = serde_json::from_slice(&text).map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
    let mut store = RegistryStore::new(layout.clone());
    for record in &cached.records {
        store.put(KeyValue { key: &record.key, value: record.value.as_bytes(), create_revision: record.create_revision, lease: record.lease });
    }
    store.set_revision(cached.revision);
    Ok(Some(store.snapshot()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_snapshot_reads_back_the_same() {
        let layout = KeyLayout::default();
        let mut store = RegistryStore::new(layout.clone());
        let mut put = |key: &str, value: &str, revision| store.put(KeyValue { key, value: value.as_bytes(), create_revision: revision, lease: 7 });
        put("/overlay/v1/networks/blue", r#"{"name":"blue","vni":100,"subnet":"10.1.0.0/16","mtu":1450,"options":{}}"#, 1);
        put("/overlay/v1/nodes/a", r#"{"name":"a","vtep":"192.0.2.1","vxlan_port":4789,"agent_version":"1"}"#, 2);
        put(
            "/overlay/v1/endpoints/blue/02:00:00:00:00:01",
            r#"{"network":"blue","mac":"02:00:00:00:00:01","addresses":["10.1.0.1"],"node":"a","owner":"c1"}"#,
            3,
        );
        put("/overlay/v1/blocks/blue/10.1.0.0", r#"{"network":"blue","cidr":"10.1.0.0/26","node":"a","allocations":{"10.1.0.1":"c1"}}"#, 4);
        store.set_revision(4);
        let snapshot = store.snapshot();
        assert!(snapshot.problems.is_empty(), "fixture problems: {:?}", snapshot.problems);
        let dir = std::env::temp_dir().join(format!("overlay-cache-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.registry.json");
        save(&path, &layout, &snapshot).unwrap();
        let read = load(&path, &layout).unwrap();
        let missing = load(&dir.join("none.json"), &layout).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(read.as_ref(), Some(&snapshot), "expected the snapshot back");
        assert!(missing.is_none(), "a missing file is no snapshot, got {missing:?}");
    }
}
