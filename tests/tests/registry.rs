//! The etcd registry against real etcd servers (Debian's etcd-server 3.4),
//! each test with its own members on free loopback ports: snapshot and
//! watch, lease expiry, conflicts, compaction, etcd restarts, a
//! three-member cluster losing its leader, and cluster-wide IPAM.
//!
//! The deadlines below only stop a test that would otherwise hang; the
//! times the tests measure are printed, not asserted.
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
    time::{Duration, Instant},
};

use etcd_client::CompactionOptions;
use overlay::registry::{
    ClusterProblem, ClusterSnapshot, ClusterWatch, EndpointRecord, Holder, NetworkRecord, NodeRecord, NodeSession, Registry,
    RegistryError, RegistrySettings, SessionState,
};
use overlay_lab::etcd::{self, EtcdCluster};
use tokio::sync::watch;

/// Starts `size` members, or prints why the test cannot run.
fn start_etcd(scope: &str, size: usize) -> Option<EtcdCluster> {
    // The registry logs what it recovers from (RUST_LOG=info to see it).
    let _ = env_logger::builder().is_test(true).try_init();
    if let Some(reason) = etcd::missing() {
        println!("skipped: {reason}");
        return None;
    }
    Some(EtcdCluster::start(scope, size).expect("starting etcd"))
}

async fn connect(urls: Vec<String>, ttl_seconds: u64) -> Registry {
    let mut settings = RegistrySettings::new(urls);
    settings.lease_ttl = Duration::from_secs(ttl_seconds);
    settings.request_timeout = Duration::from_secs(2);
    Registry::connect(settings).await.expect("connecting to etcd")
}

fn network(name: &str, vni: u32, subnet: &str) -> NetworkRecord {
    NetworkRecord {
        name: name.into(),
        vni,
        subnet: subnet.parse().unwrap(),
        subnet6: None,
        mtu: 1450,
        block_prefix_len: 26,
        options: Default::default(),
    }
}

fn node(name: &str, vtep_last: u8) -> NodeRecord {
    NodeRecord { name: name.into(), vtep: IpAddr::V4(Ipv4Addr::new(192, 0, 2, vtep_last)), vxlan_port: 4789, agent_version: "test".into() }
}

fn endpoint(network: &str, mac_last: u8, address: &str, node: &str, owner: &str) -> EndpointRecord {
    EndpointRecord {
        network: network.into(),
        mac: format!("02:00:00:00:00:{mac_last:02x}").parse().unwrap(),
        addresses: vec![address.parse().unwrap()],
        node: node.into(),
        owner: owner.into(),
    }
}

/// Waits until the latest snapshot satisfies `ready`; panics with `what`
/// and the last snapshot after `limit` (a hang guard, not a timing check).
async fn wait_snapshot(
    snapshots: &mut watch::Receiver<Arc<ClusterSnapshot>>,
    limit: Duration,
    what: &str,
    ready: impl Fn(&ClusterSnapshot) -> bool,
) -> Arc<ClusterSnapshot> {
    let result = tokio::time::timeout(limit, snapshots.wait_for(|snapshot| ready(snapshot))).await.map(|found| found.map(|s| s.clone()));
    match result {
        Ok(Ok(snapshot)) => snapshot,
        _ => panic!("expected {what} within {limit:?}; the last snapshot was {:#?}", snapshots.borrow()),
    }
}

async fn wait_until<T: Clone + std::fmt::Debug>(receiver: &mut watch::Receiver<T>, limit: Duration, what: &str, ready: impl Fn(&T) -> bool) {
    if tokio::time::timeout(limit, receiver.wait_for(|value| ready(value))).await.is_err() {
        panic!("expected {what} within {limit:?}; saw {:?}", receiver.borrow());
    }
}

/// The parts of a snapshot two readers must agree on (not the revision).
fn content(snapshot: &ClusterSnapshot) -> String {
    format!("{:?}\n{:?}\n{:?}\n{:?}\n{:?}", snapshot.nodes, snapshot.networks, snapshot.endpoints, snapshot.blocks, snapshot.problems)
}

const LONG: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reg_snapshot_and_watch_see_every_change() {
    let Some(etcd) = start_etcd("regwatch", 1) else { return };
    let registry = connect(etcd.client_urls(), 5).await;
    let watcher = ClusterWatch::start(registry.clone());
    let mut snapshots = watcher.snapshots();

    registry.create_network(&network("blue", 100, "10.1.0.0/16")).await.unwrap();
    let session = NodeSession::start(registry.clone(), node("a", 1)).await.unwrap();
    for index in 1..=3 {
        session.register_endpoint(endpoint("blue", index, &format!("10.1.0.{index}"), "a", &format!("c{index}"))).await.unwrap();
    }
    wait_snapshot(&mut snapshots, LONG, "node a with three endpoints", |s| s.nodes.contains_key("a") && s.endpoints.len() == 3).await;

    session.remove_endpoint("blue", "02:00:00:00:00:02".parse().unwrap()).await.unwrap();
    registry.create_network(&network("green", 200, "10.2.0.0/16")).await.unwrap();
    // Records written by hand: one bad field, one not JSON. Each is skipped
    // and reported; the rest is read.
    let mut client = registry.etcd();
    client.put("/overlay/v1/nodes/x", r#"{"name":"x","vtep":"192.0.2.300","vxlan_port":4789,"agent_version":"1"}"#, None).await.unwrap();
    client.put("/overlay/v1/networks/bad", "not json", None).await.unwrap();
    let snapshot = wait_snapshot(&mut snapshots, LONG, "the removal, the second network and two bad records", |s| {
        s.endpoints.len() == 2 && s.networks.len() == 2 && s.problems.len() == 2
    })
    .await;
    let bad_vtep = snapshot.problems.iter().find_map(|problem| match problem {
        ClusterProblem::BadRecord(record) if record.key == "/overlay/v1/nodes/x" => Some(record.clone()),
        _ => None,
    });
    let bad_vtep = bad_vtep.unwrap_or_else(|| panic!("expected a bad-record problem for nodes/x, got {:#?}", snapshot.problems));
    assert_eq!((bad_vtep.field.as_str(), bad_vtep.value.as_str()), ("vtep", "192.0.2.300"), "the problem names the field and the value");
    assert_eq!(snapshot.nodes.keys().collect::<Vec<_>>(), ["a"], "the bad node is left out");

    // The watcher's diffs add up to what a fresh read sees, and to what a
    // second watcher started now sees.
    let fresh = registry.read_store().await.unwrap().snapshot();
    let snapshot = wait_snapshot(&mut snapshots, LONG, "the watcher at the fresh read's revision", |s| s.revision >= fresh.revision).await;
    assert_eq!(content(&snapshot), content(&fresh), "watcher and fresh read differ");
    let late = ClusterWatch::start(registry.clone());
    let mut late_snapshots = late.snapshots();
    let late_snapshot = wait_snapshot(&mut late_snapshots, LONG, "the late watcher's first read", |s| s.revision >= fresh.revision).await;
    assert_eq!(content(&late_snapshot), content(&fresh), "a late watcher differs");

    // The cluster report: the node with its lease, counts per network, the problems.
    let status = overlay::registry::ClusterStatus::read(&registry).await.unwrap();
    println!("{status}");
    let a = &status.nodes[0];
    assert_eq!((status.nodes.len(), a.name.as_str(), a.endpoints, a.lease_ttl), (1, "a", 2, 5), "{status}");
    assert!(a.lease_age.is_some_and(|age| (0..=5).contains(&age)), "lease age {:?}", a.lease_age);
    let counts: Vec<_> = status.networks.iter().map(|n| (n.name.as_str(), n.endpoints)).collect();
    assert_eq!(counts, [("blue", 2), ("green", 0)], "{status}");
    assert_eq!(status.problems.len(), 2, "{status}");

    // A graceful close removes the node and its endpoints at once.
    session.close().await.unwrap();
    let snapshot = wait_snapshot(&mut snapshots, LONG, "node a gone", |s| s.nodes.is_empty()).await;
    assert!(snapshot.endpoints.is_empty(), "endpoints outlived their node: {:?}", snapshot.endpoints);
    assert_eq!(watcher.status().borrow().full_reads, 1, "the watcher re-read without cause");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reg_lease_expiry_removes_node_and_its_endpoints() {
    let Some(etcd) = start_etcd("reglease", 1) else { return };
    let ttl = 2;
    let registry = connect(etcd.client_urls(), ttl).await;
    registry.create_network(&network("blue", 100, "10.1.0.0/16")).await.unwrap();
    let watcher = ClusterWatch::start(registry.clone());
    let mut snapshots = watcher.snapshots();
    let survivor = NodeSession::start(registry.clone(), node("a", 1)).await.unwrap();
    survivor.register_endpoint(endpoint("blue", 1, "10.1.0.1", "a", "ca")).await.unwrap();
    let doomed = NodeSession::start(registry.clone(), node("b", 2)).await.unwrap();
    doomed.register_endpoint(endpoint("blue", 2, "10.1.0.2", "b", "cb1")).await.unwrap();
    doomed.register_endpoint(endpoint("blue", 3, "10.1.0.3", "b", "cb2")).await.unwrap();
    wait_snapshot(&mut snapshots, LONG, "nodes a and b with three endpoints", |s| s.nodes.len() == 2 && s.endpoints.len() == 3).await;

    // Held past several TTLs, the lease is kept alive.
    tokio::time::sleep(Duration::from_secs(ttl * 2)).await;
    assert_eq!(watcher.latest().nodes.len(), 2, "a live node's lease expired: {:?}", watcher.latest().nodes);

    // As kill -9: keep-alives stop, nothing is removed by the node.
    let stopped = Instant::now();
    drop(doomed);
    let snapshot = wait_snapshot(&mut snapshots, Duration::from_secs(ttl * 5), "node b gone after its TTL", |s| !s.nodes.contains_key("b")).await;
    let elapsed = stopped.elapsed();
    println!("node b left the watcher's snapshot {elapsed:?} after its keep-alives stopped (TTL {ttl} s)");
    assert_eq!(
        snapshot.endpoints.values().map(|e| e.owner.as_str()).collect::<Vec<_>>(),
        ["ca"],
        "b's endpoints must go with b, a's must stay"
    );
    let raw = registry.read_store().await.unwrap().snapshot();
    assert!(raw.problems.is_empty(), "etcd still holds records of b: {:?}", raw.problems);
    assert!(matches!(*survivor.state().borrow(), SessionState::Registered { .. }), "the survivor's session: {:?}", survivor.state().borrow());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reg_conflicts_are_refused_named_and_reported_to_both_sides() {
    let Some(etcd) = start_etcd("regconflict", 1) else { return };
    let registry = connect(etcd.client_urls(), 5).await;
    let other = connect(etcd.client_urls(), 5).await;
    let watcher = ClusterWatch::start(registry.clone());
    let mut snapshots = watcher.snapshots();

    // Networks: the same declaration twice is fine; another VNI holder or
    // other settings are refused.
    registry.create_network(&network("blue", 100, "10.1.0.0/16")).await.unwrap();
    other.create_network(&network("blue", 100, "10.1.0.0/16")).await.expect("declaring an identical network again");
    match other.create_network(&network("red", 100, "10.9.0.0/16")).await {
        Err(RegistryError::VniTaken { vni: 100, holder: Holder::Network(name) }) => assert_eq!(name, "blue"),
        other => panic!("expected VNI 100 refused naming network blue, got {other:?}"),
    }
    assert!(matches!(other.create_network(&network("blue", 100, "10.7.0.0/16")).await, Err(RegistryError::NetworkExists { .. })));

    let a = NodeSession::start(registry.clone(), node("a", 1)).await.unwrap();
    match NodeSession::start(other.clone(), node("a", 9)).await {
        Err(RegistryError::NodeNameTaken { name, holder_vtep }) => assert_eq!((name.as_str(), holder_vtep.as_str()), ("a", "192.0.2.1")),
        Err(error) => panic!("expected the name refused, got {error}"),
        Ok(_) => panic!("a second node named a was accepted"),
    }
    match NodeSession::start(other.clone(), node("c", 1)).await {
        Err(RegistryError::VtepTaken { holder: Holder::Node(holder), .. }) => assert_eq!(holder, "a"),
        Err(error) => panic!("expected VTEP 192.0.2.1 refused naming node a, got {error}"),
        Ok(_) => panic!("a second node with VTEP 192.0.2.1 was accepted"),
    }
    let c = NodeSession::start(other.clone(), node("c", 3)).await.unwrap();

    let held = endpoint("blue", 1, "10.1.0.10", "a", "container-a");
    a.register_endpoint(held.clone()).await.unwrap();
    a.register_endpoint(held.clone()).await.expect("registering the same endpoint again");
    match c.register_endpoint(endpoint("blue", 1, "10.1.0.11", "c", "container-c1")).await {
        Err(RegistryError::MacTaken { holder: Holder::Endpoint { node, owner, .. }, .. }) => {
            assert_eq!((node.as_str(), owner.as_str()), ("a", "container-a"))
        }
        other => panic!("expected the MAC refused naming container-a on node a, got {other:?}"),
    }
    match c.register_endpoint(endpoint("blue", 2, "10.1.0.10", "c", "container-c2")).await {
        Err(RegistryError::AddressTaken { holder: Holder::Endpoint { node, owner, .. }, .. }) => {
            assert_eq!((node.as_str(), owner.as_str()), ("a", "container-a"))
        }
        other => panic!("expected 10.1.0.10 refused naming container-a on node a, got {other:?}"),
    }
    assert!(matches!(
        c.register_endpoint(endpoint("blue", 3, "10.2.0.1", "c", "container-c3")).await,
        Err(RegistryError::AddressNotInNetwork { .. })
    ));

    // Nothing was overwritten, and the holder's side sees every refusal
    // (each recorded on its claimant's lease; the refused node registrations'
    // leases are not kept alive, so those two go after one TTL).
    let refusals = |s: &ClusterSnapshot| -> BTreeSet<(String, String)> {
        s.problems
            .iter()
            .filter_map(|p| match p {
                ClusterProblem::RefusedClaim(r) => Some((r.claimant.clone(), r.kind.clone())),
                _ => None,
            })
            .collect()
    };
    let expected: BTreeSet<(String, String)> =
        [("a", "node-name"), ("c", "vtep"), ("c", "mac"), ("c", "address")].iter().map(|(c, k)| (c.to_string(), k.to_string())).collect();
    let snapshot = wait_snapshot(&mut snapshots, LONG, "the four refusals reported", |s| refusals(s) == expected).await;
    assert_eq!(snapshot.endpoints.values().cloned().collect::<Vec<_>>(), [held], "the held endpoint changed");
    assert_eq!(snapshot.nodes.keys().collect::<Vec<_>>(), ["a", "c"]);

    // A record written around the transactions (by hand) is caught by the
    // readers: the later VTEP claim is left out and reported.
    let mut client = registry.etcd();
    client.put("/overlay/v1/nodes/z", node("z", 1).to_json(), None).await.unwrap();
    let snapshot = wait_snapshot(&mut snapshots, LONG, "a VTEP conflict for node z", |s| {
        s.problems.iter().any(|p| matches!(p, ClusterProblem::VtepConflict { claimant, holder, .. } if claimant == "z" && holder == "a"))
    })
    .await;
    assert!(!snapshot.nodes.contains_key("z"), "the later VTEP claim must be left out");
    drop(c);
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reg_compacted_watch_revision_recovers_by_rereading() {
    let Some(etcd) = start_etcd("regcompact", 1) else { return };
    let registry = connect(etcd.client_urls(), 5).await;
    registry.create_network(&network("blue", 100, "10.1.0.0/16")).await.unwrap();
    let session = NodeSession::start(registry.clone(), node("a", 1)).await.unwrap();
    session.register_endpoint(endpoint("blue", 1, "10.1.0.1", "a", "c1")).await.unwrap();

    // An agent's saved state, then changes it did not see, then compaction
    // past the saved revision (as while it was down or lagging).
    let saved = registry.read_store().await.unwrap();
    session.register_endpoint(endpoint("blue", 2, "10.1.0.2", "a", "c2")).await.unwrap();
    session.remove_endpoint("blue", "02:00:00:00:00:01".parse().unwrap()).await.unwrap();
    registry.create_network(&network("green", 200, "10.2.0.0/16")).await.unwrap();
    let mut client = registry.etcd();
    let head = client.get("/overlay/v1/", None).await.unwrap().header().unwrap().revision();
    client.compact(head, Some(CompactionOptions::new().with_physical())).await.unwrap();

    let watcher = ClusterWatch::resume(registry.clone(), saved);
    let mut status = watcher.status();
    wait_until(&mut status, LONG, "one compaction recovered", |s| s.compactions_recovered == 1 && s.full_reads == 1).await;
    let mut snapshots = watcher.snapshots();
    let snapshot = wait_snapshot(&mut snapshots, LONG, "the re-read", |s| s.revision >= head).await;
    assert_eq!(content(&snapshot), content(&registry.read_store().await.unwrap().snapshot()), "re-read state differs from etcd's");
    assert_eq!(snapshot.endpoints.values().map(|e| e.owner.as_str()).collect::<Vec<_>>(), ["c2"]);

    // And it goes on watching from there.
    session.register_endpoint(endpoint("blue", 3, "10.1.0.3", "a", "c3")).await.unwrap();
    wait_snapshot(&mut snapshots, LONG, "c3 after the recovery", |s| s.endpoints.len() == 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reg_etcd_restart_reconnects_rereads_and_recreates_records() {
    let Some(mut etcd) = start_etcd("regrestart", 1) else { return };
    let registry = connect(etcd.client_urls(), 3).await;
    registry.create_network(&network("blue", 100, "10.1.0.0/16")).await.unwrap();
    let session = NodeSession::start(registry.clone(), node("a", 1)).await.unwrap();
    session.register_endpoint(endpoint("blue", 1, "10.1.0.1", "a", "c1")).await.unwrap();
    let watcher = ClusterWatch::start(registry.clone());
    let mut snapshots = watcher.snapshots();
    let mut status = watcher.status();
    let mut state = session.state();
    wait_snapshot(&mut snapshots, LONG, "node a and its endpoint", |s| s.endpoints.len() == 1).await;

    // Down: both notice, and the last snapshot stays.
    etcd.kill(0);
    wait_until(&mut status, LONG, "the watcher disconnected", |s| !s.connected).await;
    wait_until(&mut state, LONG, "the session unreachable", |s| matches!(s, SessionState::Unreachable { .. })).await;
    assert_eq!(watcher.latest().endpoints.len(), 1, "the last snapshot must be kept while etcd is down");

    // Back on the same data: the session's lease survived (etcd renews
    // leases when a leader takes over), the watcher re-reads and sees a
    // change made after the restart.
    etcd.restart(0).unwrap();
    etcd.wait_healthy(0).unwrap();
    wait_until(&mut state, LONG, "the session registered again", |s| matches!(s, SessionState::Registered { .. })).await;
    let other = connect(etcd.client_urls(), 3).await;
    other.create_network(&network("green", 200, "10.2.0.0/16")).await.unwrap();
    wait_snapshot(&mut snapshots, LONG, "network green after the restart", |s| s.networks.contains_key("green") && s.endpoints.len() == 1).await;
    let reads = status.borrow().full_reads;
    assert!(reads >= 2, "expected a full re-read after reconnecting, saw {reads}");

    // Back with its data lost (a new empty etcd): the lease is gone, so the
    // session re-creates its node and, once the network is declared again,
    // its endpoint; the watcher re-reads the new (lower) revisions.
    let old_lease = session.lease();
    etcd.kill(0);
    etcd.wipe(0).unwrap();
    etcd.restart(0).unwrap();
    etcd.wait_healthy(0).unwrap();
    other.create_network(&network("blue", 100, "10.1.0.0/16")).await.unwrap();
    let snapshot = wait_snapshot(&mut snapshots, LONG, "node a and its endpoint re-created in the empty etcd", |s| {
        s.nodes.contains_key("a") && s.endpoints.len() == 1 && !s.networks.contains_key("green")
    })
    .await;
    assert_ne!(snapshot.nodes["a"].lease, old_lease, "the node must be on a new lease");
    assert_eq!(snapshot.nodes["a"].lease, session.lease());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reg_three_member_cluster_keeps_working_without_its_leader() {
    let Some(mut etcd) = start_etcd("regcluster", 3) else { return };
    let registry = connect(etcd.client_urls(), 3).await;
    registry.create_network(&network("blue", 100, "10.1.0.0/16")).await.unwrap();
    let session = NodeSession::start(registry.clone(), node("a", 1)).await.unwrap();
    session.register_endpoint(endpoint("blue", 1, "10.1.0.1", "a", "c1")).await.unwrap();
    let watcher = ClusterWatch::start(registry.clone());
    let mut snapshots = watcher.snapshots();
    wait_snapshot(&mut snapshots, LONG, "the first endpoint", |s| s.endpoints.len() == 1).await;

    // Ask each member who leads; kill that one.
    let mut leader = None;
    for index in 0..etcd.size() {
        let single = connect(vec![etcd.client_url(index)], 3).await;
        let status = single.etcd().status().await.expect("member status");
        if status.leader() == status.header().unwrap().member_id() {
            leader = Some(index);
        }
    }
    let leader = leader.expect("no member says it leads");
    etcd.kill(leader);
    println!("killed the leader, member {leader}");

    // Writes go on through the survivors once they elect a leader (an
    // attempt during the election may fail; retried like an agent would).
    let deadline = Instant::now() + LONG;
    loop {
        match session.register_endpoint(endpoint("blue", 2, "10.1.0.2", "a", "c2")).await {
            Ok(()) => break,
            Err(error) if Instant::now() < deadline => {
                println!("retrying during the election: {error}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => panic!("no write succeeded without the leader: {error}"),
        }
    }
    wait_snapshot(&mut snapshots, LONG, "the endpoint written after the leader died", |s| s.endpoints.len() == 2).await;
    // Past the TTL the node is still there: its keep-alives reach the survivors.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let snapshot = registry.read_store().await.unwrap().snapshot();
    assert!(snapshot.nodes.contains_key("a") && snapshot.endpoints.len() == 2, "after the TTL: {snapshot:#?}");
    assert!(matches!(*session.state().borrow(), SessionState::Registered { .. }), "session: {:?}", session.state().borrow());
}

/// `count` allocations one after another, as a node's API would make them.
async fn allocate_many(ipam: &overlay::registry::Ipam, node: &str, count: usize) -> Vec<Ipv4Addr> {
    let mut got = Vec::new();
    for index in 0..count {
        got.push(ipam.allocate("blue", &format!("{node}-{index}")).await.expect("allocating"));
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reg_ipam_concurrent_nodes_never_share_an_address() {
    use overlay::registry::Ipam;
    let Some(mut etcd) = start_etcd("regipam", 1) else { return };
    let registry_a = connect(etcd.client_urls(), 5).await;
    let registry_b = connect(etcd.client_urls(), 5).await;
    registry_a.create_network(&network("blue", 100, "10.1.0.0/22")).await.unwrap();
    let ipam_a = Ipam::new(registry_a.clone(), "a");
    let ipam_b = Ipam::new(registry_b.clone(), "b");
    let count = 300;
    let started = Instant::now();
    let (from_a, from_b) = tokio::join!(allocate_many(&ipam_a, "a", count), allocate_many(&ipam_b, "b", count));
    let elapsed = started.elapsed();
    ipam_a.flush().await.unwrap();
    ipam_b.flush().await.unwrap();
    println!("{} allocations on two nodes in {elapsed:?}, then flushed in {:?}", 2 * count, started.elapsed());
    let union: BTreeSet<Ipv4Addr> = from_a.iter().chain(&from_b).copied().collect();
    assert_eq!(union.len(), 2 * count, "duplicate addresses handed out");

    // etcd holds exactly these, each with its owner, in blocks of the node.
    let snapshot = registry_a.read_store().await.unwrap().snapshot();
    let mut recorded = BTreeSet::new();
    for block in snapshot.blocks.values() {
        for (address, owner) in &block.allocations {
            assert!(owner.starts_with(&format!("{}-", block.node)), "{address} owned by {owner} in a block of node {}", block.node);
            recorded.insert(*address);
        }
    }
    assert_eq!(recorded, union, "etcd's allocations differ from those handed out");

    // Released addresses return to the block and are handed out again.
    let released: BTreeSet<Ipv4Addr> = from_a.iter().step_by(6).copied().collect();
    for address in &released {
        assert!(ipam_a.release("blue", *address).await.unwrap());
    }
    ipam_a.flush().await.unwrap();
    assert_eq!(registry_a.read_store().await.unwrap().snapshot().allocated_in("blue"), 2 * count - released.len());
    let mut again = BTreeSet::new();
    for index in 0..released.len() {
        again.insert(ipam_a.allocate("blue", &format!("a-again-{index}")).await.unwrap());
    }
    assert_eq!(again, released, "released addresses were not reused first");
    ipam_a.flush().await.unwrap();

    // Static requests: taken ones are refused naming the holder.
    let a_first = from_a[1];
    match ipam_b.allocate_static("blue", a_first, "b-static").await {
        Err(RegistryError::AddressTaken { holder: Holder::Allocation { node, owner }, .. }) => {
            assert_eq!((node.as_str(), owner.as_str()), ("a", "a-1"))
        }
        other => panic!("expected {a_first} refused naming a-1 on node a, got {other:?}"),
    }
    match ipam_a.allocate_static("blue", a_first, "a-static").await {
        Err(RegistryError::AddressTaken { holder: Holder::Allocation { owner, .. }, .. }) => assert_eq!(owner, "a-1"),
        other => panic!("expected {a_first} refused on its own node naming a-1, got {other:?}"),
    }
    let last_block_address: Ipv4Addr = "10.1.3.200".parse().unwrap();
    ipam_b.allocate_static("blue", last_block_address, "b-static").await.expect("a static address in an unclaimed block");
    assert!(matches!(
        ipam_a.allocate_static("blue", "10.1.3.201".parse().unwrap(), "a-static").await,
        Err(RegistryError::AddressInForeignBlock { .. })
    ));
    ipam_b.flush().await.unwrap();

    // A restarted node reads its blocks back and goes on without duplicates.
    drop(ipam_a);
    let ipam_a = Ipam::new(registry_a.clone(), "a");
    let next = ipam_a.allocate("blue", "a-after-restart").await.unwrap();
    assert!(!union.contains(&next) && next != last_block_address, "{next} handed out twice after a restart");
    ipam_a.flush().await.unwrap();

    // With etcd down, allocation goes on from the block held (no round
    // trip); the record reaches etcd when it is back.
    etcd.kill(0);
    let offline = ipam_a.allocate("blue", "a-offline").await.expect("allocating while etcd is down");
    etcd.restart(0).unwrap();
    etcd.wait_healthy(0).unwrap();
    tokio::time::timeout(LONG, ipam_a.flush()).await.expect("flushing after etcd returned").unwrap();
    let snapshot = registry_a.read_store().await.unwrap().snapshot();
    let owner = snapshot.blocks.values().find_map(|block| block.allocations.get(&offline).cloned());
    assert_eq!(owner.as_deref(), Some("a-offline"), "the allocation made while etcd was down is not in etcd");

    // A network whose one block is claimed has nothing for another node.
    registry_a.create_network(&network("tiny", 101, "10.9.0.0/26")).await.unwrap();
    ipam_a.allocate("tiny", "a-tiny").await.unwrap();
    assert!(matches!(ipam_b.allocate("tiny", "b-tiny").await, Err(RegistryError::PoolExhausted { .. })));
}

