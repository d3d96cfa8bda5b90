//! Cluster-mode scale benchmark (issue 10), run by `cargo xtask bench
//! --cluster-scale` and `#[ignore]`d so the suite does not spend its time
//! here: a real etcd, `OVERLAY_SCALE_NODES` simulated nodes (default 1,000)
//! with `OVERLAY_SCALE_ENDPOINTS` endpoints each (default 20), and one real
//! agent in a lab namespace that learns them all.
//!
//! The simulated nodes go through the registry library, as agents do: each
//! has its own lease kept alive (`NodeSession`), claims an IPAM block and
//! allocates its addresses (`Ipam`), and registers its endpoints with their
//! address claims. Measured, `OVERLAY_SCALE_REPETITIONS` times each (medians
//! reported):
//! - convergence: agent start (its registry snapshot kept on disk removed,
//!   so it reads etcd) until its pinned `FDB` holds every remote endpoint and
//!   `PEERS` every simulated node;
//! - propagation: one endpoint registered on a simulated node until its
//!   `FDB` entry is in the agent's map, and its removal until it is gone,
//!   with the agent's CPU time per change;
//! - the agent's RSS (and its peak) once converged.
//!
//! Prints `CLUSTER_SCALE {json}` at the end for xtask to read.
use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
    sync::mpsc,
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use overlay::{
    model::MacAddr,
    registry::{EndpointRecord, Ipam, NetworkRecord, NodeRecord, NodeSession, Registry, RegistrySettings},
};
use overlay_common::{FdbEntry, PeerInfo, VniMac, maps};
use overlay_lab::{
    etcd::{self, EtcdCluster},
    lab::{ContainerSpec, HostKind, HostSpec, Lab, LabSpec, overlay_binary},
};
use serde_json::json;
use tokio::{sync::mpsc as async_mpsc, task::JoinSet};

const ETCD_ADDRESS: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
const VNI: u32 = 100;
/// Simulated nodes registering at once (as many agents starting together).
const CONCURRENCY: usize = 64;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

fn mac_of(node: usize, index: usize) -> MacAddr {
    MacAddr([0x02, 0x5c, (node >> 8) as u8, node as u8, (index >> 8) as u8, index as u8])
}

/// What the thread holding the simulated nodes is asked to do.
enum Order {
    /// Register one more endpoint on simulated node 0 (`true`) or remove it.
    Extra(bool, mpsc::Sender<Duration>),
    Stop,
}

/// Registers `nodes` simulated nodes with `endpoints` endpoints each, then
/// keeps their leases alive and serves orders until `Stop`.
async fn simulate(url: String, nodes: usize, endpoints: usize, ready: mpsc::Sender<Duration>, mut orders: async_mpsc::Receiver<Order>) {
    let mut settings = RegistrySettings::new([url]);
    settings.request_timeout = Duration::from_secs(30);
    let registry = Registry::connect(settings).await.expect("connecting to etcd");
    let network = NetworkRecord {
        name: "blue".into(),
        vni: VNI,
        subnet: "10.64.0.0/16".parse().unwrap(),
        subnet6: None,
        mtu: 1450,
        block_prefix_len: 26,
        options: Default::default(),
    };
    registry.create_network(&network).await.expect("creating network blue");
    let started = Instant::now();
    let mut sessions = Vec::with_capacity(nodes);
    let mut running = JoinSet::new();
    for node in 0..nodes {
        if running.len() >= CONCURRENCY {
            sessions.push(running.join_next().await.unwrap().expect("a simulated node panicked"));
        }
        let registry = registry.clone();
        running.spawn(async move { simulated_node(registry, node, endpoints).await });
    }
    while let Some(done) = running.join_next().await {
        sessions.push(done.expect("a simulated node panicked"));
    }
    sessions.sort_by_key(|(index, _, _)| *index);
    ready.send(started.elapsed()).unwrap();
    let (_, first, ipam) = &sessions[0];
    let extra = mac_of(0, 0xffff);
    while let Some(order) = orders.recv().await {
        match order {
            Order::Extra(add, done) => {
                let begun = Instant::now();
                if add {
                    let address = ipam.allocate("blue", "bench extra").await.expect("allocating the extra address");
                    let record = EndpointRecord {
                        network: "blue".into(),
                        mac: extra,
                        addresses: vec![IpAddr::V4(address)],
                        node: first.node().name.clone(),
                        owner: "bench extra".into(),
                    };
                    first.register_endpoint(record).await.expect("registering the extra endpoint");
                } else {
                    let record = first.endpoints().into_iter().find(|e| e.mac == extra).expect("the extra endpoint");
                    first.remove_endpoint("blue", extra).await.expect("removing the extra endpoint");
                    if let IpAddr::V4(address) = record.addresses[0] {
                        ipam.release("blue", address).await.expect("releasing the extra address");
                    }
                }
                done.send(begun.elapsed()).unwrap();
            }
            Order::Stop => break,
        }
    }
    for (_, session, _) in sessions {
        let _ = session.close().await;
    }
}

async fn simulated_node(registry: Registry, node: usize, endpoints: usize) -> (usize, NodeSession, Ipam) {
    let name = format!("sim{node:04}");
    let vtep = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + node as u32 + 1);
    let record = NodeRecord { name: name.clone(), vtep: IpAddr::V4(vtep), vxlan_port: 4789, agent_version: "bench".into() };
    let session = NodeSession::start(registry.clone(), record).await.unwrap_or_else(|error| panic!("registering {name}: {error}"));
    let ipam = Ipam::new(registry, &name);
    let mut addresses = Vec::new();
    for index in 0..endpoints {
        addresses.push(ipam.allocate("blue", &format!("bench {index}")).await.unwrap_or_else(|error| panic!("{name}: allocating: {error}")));
    }
    ipam.flush().await.unwrap_or_else(|error| panic!("{name}: writing its block: {error}"));
    for (index, address) in addresses.into_iter().enumerate() {
        let endpoint = EndpointRecord {
            network: "blue".into(),
            mac: mac_of(node, index),
            addresses: vec![IpAddr::V4(address)],
            node: name.clone(),
            owner: format!("bench {index}"),
        };
        session.register_endpoint(endpoint).await.unwrap_or_else(|error| panic!("{name}: registering endpoint {index}: {error}"));
    }
    (node, session, ipam)
}

fn fdb(pin: &Path) -> Option<BpfHashMap<MapData, VniMac, FdbEntry>> {
    BpfHashMap::try_from(aya::maps::Map::HashMap(MapData::from_pin(pin).ok()?)).ok()
}

fn peer_count(pin: &Path) -> usize {
    let Ok(data) = MapData::from_pin(pin) else { return 0 };
    let Ok(map) = BpfHashMap::<MapData, u32, PeerInfo>::try_from(aya::maps::Map::HashMap(data)) else { return 0 };
    map.keys().filter(Result::is_ok).count()
}

fn has_fdb_entry(pin: &Path, mac: MacAddr) -> bool {
    fdb(pin).is_some_and(|map| map.get(&VniMac::new(VNI, mac.0), 0).is_ok())
}

fn fdb_count(pin: &Path) -> usize {
    fdb(pin).map_or(0, |map| map.keys().filter(Result::is_ok).count())
}

/// (RSS, peak RSS) in KiB, and CPU time (user + system) so far.
fn usage(pid: u32) -> (u64, u64, Duration) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |field: &str| status.lines().find_map(|l| l.strip_prefix(field)).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks: u64 = [11, 12].iter().filter_map(|i| fields.get(*i)?.parse::<u64>().ok()).sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    (kib("VmRSS:"), kib("VmHWM:"), Duration::from_millis(ticks * 1000 / hz))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn wait_until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool, lab: &Lab) -> Duration {
    let started = Instant::now();
    while !condition() {
        if started.elapsed() > limit {
            panic!("{what}: not within {limit:?}\n{}", lab.agent_logs());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    started.elapsed()
}

#[test]
#[ignore = "a benchmark: cargo xtask bench --cluster-scale"]
fn cluster_scale() {
    if let Some(why) = etcd::missing() {
        println!("skipped: {why}");
        return;
    }
    let nodes = setting("OVERLAY_SCALE_NODES", 1000);
    let endpoints = setting("OVERLAY_SCALE_ENDPOINTS", 20);
    let repetitions = setting("OVERLAY_SCALE_REPETITIONS", 3).max(1);
    let container = ContainerSpec { name: "c".into(), mac: [2, 0, 0, 0, 0x5c, 1], ip: Ipv4Addr::new(10, 64, 255, 1), vni: VNI };
    let host = HostSpec { name: "h1".into(), kind: HostKind::Overlay, containers: vec![container] };
    let mut lab = Lab::build(LabSpec { scope: "bscale".into(), vxlan_port: 4789, hosts: vec![host] }).expect("building the lab");
    let path = lab.hosts[0].config_path.clone().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, &text[..text.find("[[").unwrap_or(text.len())]).unwrap();
    let bridge = format!("br{:x}", std::process::id());
    lab.wire.ip(&["addr", "add", &format!("{ETCD_ADDRESS}/24"), "dev", &bridge]).expect("addressing the underlay bridge");
    let etcd = EtcdCluster::start_in_netns("bscale", lab.wire.name(), ETCD_ADDRESS).expect("starting etcd");
    let url = etcd.client_url(0);

    // The simulated nodes live on a thread inside the underlay namespace (where etcd listens).
    let (ready_sender, ready) = mpsc::channel();
    let (orders, order_receiver) = async_mpsc::channel(4);
    let simulation_url = url.clone();
    let simulation = lab
        .wire
        .spawn_inside(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(simulate(simulation_url, nodes, endpoints, ready_sender, order_receiver));
            Ok(())
        })
        .expect("starting the simulated nodes");
    let populated = ready.recv_timeout(Duration::from_secs(1800)).expect("the simulated nodes registering");
    println!("{nodes} simulated nodes with {endpoints} endpoints each registered in {populated:?}");

    let bin = overlay_binary().unwrap();
    let pins = lab.bpffs_dir().join("h1").join("maps");
    let run = lab.dir.join("run");
    let total = nodes * endpoints;
    let (mut converge, mut rss, mut peak) = (Vec::new(), Vec::new(), Vec::new());
    let (mut add, mut remove, mut write, mut cpu) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for repetition in 0..repetitions {
        // A cold start: the snapshot kept on disk would spare the read.
        let _ = std::fs::remove_file(run.join("h1.registry.json"));
        let started = Instant::now();
        let agent = lab
            .start_agent_within(0, &bin, &["--etcd", &url], Duration::from_secs(600))
            .unwrap_or_else(|error| panic!("starting the agent: {error:#}\n{}", lab.agent_logs()));
        lab.agents.push(agent);
        let limit = Duration::from_secs(600);
        wait_until("the agent's FDB holding every endpoint", limit, || fdb_count(&pins.join(maps::FDB)) >= total, &lab);
        wait_until("the agent's PEERS holding every node", limit, || peer_count(&pins.join(maps::PEERS)) >= nodes, &lab);
        let converged = started.elapsed();
        let pid = lab.agents[0].pid().expect("the agent's pid");
        std::thread::sleep(Duration::from_secs(2));
        let (now, high, _) = usage(pid);
        println!("repetition {repetition}: converged in {converged:?}; RSS {now} KiB (peak {high} KiB)");
        converge.push(converged.as_secs_f64());
        rss.push(now as f64);
        peak.push(high as f64);
        for change in 0..5 {
            for adding in [true, false] {
                let (_, _, cpu_before) = usage(pid);
                let (done, written) = mpsc::channel();
                let begun = Instant::now();
                orders.blocking_send(Order::Extra(adding, done)).unwrap();
                let fdb = pins.join(maps::FDB);
                wait_until("the extra endpoint in the agent's FDB", limit, || has_fdb_entry(&fdb, mac_of(0, 0xffff)) == adding, &lab);
                let spent = begun.elapsed();
                let wrote = written.recv().unwrap();
                // Let the agent finish the round (publishing, the snapshot on disk) before the CPU reading.
                std::thread::sleep(Duration::from_millis(1500));
                let (_, _, cpu_after) = usage(pid);
                println!("change {change} ({}): visible after {spent:?} (etcd write {wrote:?}), agent CPU {:?}", if adding { "add" } else { "remove" }, cpu_after - cpu_before);
                (if adding { &mut add } else { &mut remove }).push(spent.as_secs_f64() * 1000.0);
                write.push(wrote.as_secs_f64() * 1000.0);
                cpu.push((cpu_after - cpu_before).as_secs_f64() * 1000.0);
            }
        }
        let log = lab.agents[0].stop();
        if repetition == 0 {
            let lines: Vec<&str> = log.lines().filter(|line| line.contains("registry revision")).take(3).collect();
            println!("agent log (registry lines): {lines:#?}");
        }
        lab.agents.clear();
    }
    orders.blocking_send(Order::Stop).unwrap();
    simulation.join().expect("the simulation thread").expect("the simulation");
    let result = json!({
        "nodes": nodes,
        "endpoints_per_node": endpoints,
        "repetitions": repetitions,
        "populate_s": populated.as_secs_f64(),
        "converge_s": median(&mut converge),
        "add_ms": median(&mut add),
        "remove_ms": median(&mut remove),
        "etcd_write_ms": median(&mut write),
        "agent_cpu_per_change_ms": median(&mut cpu),
        "rss_kib": median(&mut rss),
        "peak_rss_kib": median(&mut peak),
        "converge_samples_s": converge,
    });
    println!("CLUSTER_SCALE {result}");
}
