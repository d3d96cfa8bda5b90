//! Churn under traffic in cluster mode (issue 12, "through the registry
//! and the runtimes"): three hosts with agents in cluster mode against one
//! real etcd on the underlay. Containers c1 (h1) and c2 (h2) are attached
//! by the real `overlay-cni` plugin, as a runtime does, and between them,
//! all along, run pings at 5 ms (every reply counted) and TCP transfers
//! (every byte checked). Meanwhile, with a fixed seed:
//! - CNI ADD and DEL of containers on h1, h2 and h3 in two other
//!   networks, so that every host learns and forgets the others' endpoints
//!   through etcd;
//! - virtual nodes joining and leaving the registry through the registry
//!   library as an agent's session writes them (a lease, the node record,
//!   endpoint records with address claims), some leaving cleanly (lease
//!   revoked) and some by lease expiry (a crash), so peers come and go;
//! - h3's agent stopped (SIGTERM, or kill -9) and started again in each
//!   round: the others forget it after its lease's TTL and learn it and its
//!   containers again when it re-registers.
//!
//! Asserted, by count: the fixed flow loses no ping and delivers every
//! byte intact; at every checkpoint etcd holds exactly the node records,
//! endpoint records and address claims of what is live, every block's
//! allocations are exactly the live containers' addresses (nothing leaked
//! by DEL, nothing lost while h3 is away) and no refused claim is recorded,
//! and every running agent's pinned maps hold exactly the entries the live
//! containers and nodes call for, its pinned links one per port in use;
//! after each round's drain h1's and h2's maps equal those before the churn
//! entry for entry (counter slots aside), and their open files and memory
//! do not grow.
//!
//! `cluster_churn_under_traffic_keeps_the_flow_whole_and_maps_and_etcd_exact`
//! is the small size run by `cargo xtask test`; `cluster_soak` (ignored) is
//! the big one, run by `cargo xtask soak --cluster`.
mod cluster_churn_support;
#[path = "shared/attachments.rs"]
mod attachments;
#[path = "shared/map_keys.rs"]
mod map_keys;

use std::time::{Duration, Instant};

use cluster_churn_support::{ClusterChurn, ClusterChurnSize};
use overlay_lab::etcd;

#[test]
fn cluster_churn_under_traffic_keeps_the_flow_whole_and_maps_and_etcd_exact() {
    if let Some(why) = etcd::missing() {
        println!("skipped: {why}");
        return;
    }
    let size = ClusterChurnSize { rounds: 2, ops_per_round: 90, pool: 12, pool_h3: 4, virtual_nodes: 16, checkpoint_every: 30, deadline: None };
    let figures = ClusterChurn::run("chr2", size);
    println!("{figures}");
    assert!(figures.adds.iter().all(|adds| *adds >= 5), "every host should have had containers added: {figures}");
    assert!(figures.virtual_joins >= 8 && figures.virtual_crashes >= 1, "virtual nodes should have joined and crashed: {figures}");
    assert_eq!((figures.h3_departures, figures.h3_returns), (2, 2), "h3 should have left and come back in each round: {figures}");
}

/// The big run: rounds of 600 changes over 30 container namespaces on h1
/// and h2, 10 on h3 and 200 virtual nodes, until `OVERLAY_SOAK_MINUTES`
/// (default 10) have passed and at least 2,000 containers have come and gone.
#[test]
#[ignore = "benchmark-sized: run it with `cargo xtask soak --cluster`"]
fn cluster_soak() {
    let minutes: u64 = std::env::var("OVERLAY_SOAK_MINUTES").ok().and_then(|m| m.parse().ok()).unwrap_or(10);
    let size = ClusterChurnSize {
        rounds: usize::MAX,
        ops_per_round: 600,
        pool: 30,
        pool_h3: 10,
        virtual_nodes: 200,
        checkpoint_every: 100,
        deadline: Some((Instant::now() + Duration::from_secs(minutes * 60), 2_000)),
    };
    let figures = ClusterChurn::run("chr2soak", size);
    println!("{figures}");
}
