//! The driver of cluster_churn.rs: the cluster lab, the fixed flow, the
//! changes through the CNI plugin and the registry, and the checks.
mod expect;
mod registry;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use overlay::{
    api::client::{self, Method},
    cni::conf::host_interface,
    datapath::Datapath,
    model::MacAddr,
    pinning::PinDir,
};
use overlay_lab::{
    churn::{FixedFlow, FlowCounts, Usage, UsageSample},
    cni::{self, CniEnv, CniLab, invoke},
    fuzz::Rng,
    lab::{cni_binary, overlay_binary, progress, scaled}, traffic::ping,
    netns::Netns,
};
use serde_json::{Value, json};

pub use registry::VirtualNode;
use registry::RegistryClient;

/// Networks the churned containers join, created through h1's API (so in
/// the registry): (name, VNI, subnet).
pub const CHURN_NETWORKS: [(&str, u32, &str); 2] = [("green", 101, "10.11.0.0/16"), ("red", 102, "10.12.0.0/16")];
/// Networks where only virtual nodes have endpoints: the lab's hosts hold
/// their FDB and neighbour entries but admit no peer for them.
pub const REMOTE_NETWORKS: [(&str, u32, &str); 2] = [("grey", 103, "10.13.0.0/16"), ("black", 104, "10.14.0.0/16")];
/// The lab's hosts: h1 and h2 hold the fixed flow's containers; h3's agent comes and goes.
pub const HOSTS: [&str; 3] = ["h1", "h2", "h3"];
const H3: usize = 2;
/// h3's lease TTL (seconds): how long the others wait to see it go.
const H3_LEASE_TTL: &str = "3";
/// The virtual nodes' lease TTL: how long a crashed one stays.
const VIRTUAL_LEASE_TTL: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug)]
pub struct ClusterChurnSize {
    pub rounds: usize,
    pub ops_per_round: usize,
    /// Container namespaces on h1 and on h2 (the most containers each holds at once).
    pub pool: usize,
    /// Container namespaces on h3.
    pub pool_h3: usize,
    /// Virtual nodes that join and leave through the registry.
    pub virtual_nodes: usize,
    /// A checkpoint every this many changes (and at each round's end).
    pub checkpoint_every: usize,
    /// Stop after the round in which this instant has passed and this many containers were added.
    pub deadline: Option<(Instant, u64)>,
}

/// What a run did and measured.
#[derive(Debug, Default)]
pub struct Figures {
    pub rounds: usize,
    pub operations: u64,
    /// CNI ADDs on h1, h2, h3.
    pub adds: [u64; 3],
    pub dels: u64,
    pub most_containers: usize,
    pub cni_invocations: u64,
    pub cni_time: Duration,
    pub virtual_joins: u64,
    pub virtual_leaves: u64,
    /// Of the leaves, those with the lease left to expire.
    pub virtual_crashes: u64,
    pub most_virtual: usize,
    /// h3's agent stopped (SIGTERM or kill -9), and started again.
    pub h3_departures: u64,
    pub h3_returns: u64,
    pub checkpoints: u64,
    pub flow: FlowCounts,
    pub usage: Vec<UsageSample>,
    pub elapsed: Duration,
}

impl fmt::Display for Figures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "cluster churn figures: {} rounds, {} operations in {:.0} s", self.rounds, self.operations, self.elapsed.as_secs_f64())?;
        let mean = self.cni_time.as_secs_f64() * 1000.0 / self.cni_invocations.max(1) as f64;
        writeln!(
            f,
            "  CNI: {} ADD (h1 {}, h2 {}, h3 {}), {} DEL, at most {} containers at once; {} invocations, {mean:.0} ms each on average",
            self.adds.iter().sum::<u64>(),
            self.adds[0],
            self.adds[1],
            self.adds[2],
            self.dels,
            self.most_containers,
            self.cni_invocations
        )?;
        writeln!(
            f,
            "  registry: {} virtual node joins, {} leaves ({} by lease expiry), at most {} at once; h3's agent left {} times and came back {}",
            self.virtual_joins, self.virtual_leaves, self.virtual_crashes, self.most_virtual, self.h3_departures, self.h3_returns
        )?;
        writeln!(f, "  checkpoints (etcd records, blocks and claims exact; every running agent's maps and links exact): {}", self.checkpoints)?;
        writeln!(
            f,
            "  fixed flow: {} pings, {} answered; {} TCP transfers, {} bytes intact, {} segments retransmitted",
            self.flow.pings_sent, self.flow.pings_received, self.flow.transfers, self.flow.bytes, self.flow.retransmitted
        )?;
        let usage: Vec<String> = self.usage.iter().map(ToString::to_string).collect();
        write!(f, "  agents after each round's drain: {}", usage.join(", "))
    }
}

/// A container the plugin attached.
#[derive(Clone, Debug)]
pub struct Container {
    pub host: usize,
    pub id: String,
    /// Index into its host's pool of namespaces (None: the fixed ones').
    pub slot: Option<usize>,
    pub network: String,
    pub vni: u32,
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    /// Its veth's host end (in its host's namespace).
    pub interface: String,
}

pub struct ClusterChurn {
    // Field order is drop order: the virtual nodes leave while etcd runs;
    // the containers' namespaces go before the lab.
    pub registry: RegistryClient,
    pub pools: Vec<Vec<Netns>>,
    pub fixed_netns: Vec<Netns>,
    pub cni: CniLab,
    pub fixed: Vec<Container>,
    pub live: BTreeMap<String, Container>,
    free: Vec<Vec<usize>>,
    pub h3_up: bool,
    pub h3_life: usize,
    pub virtual_nodes: Vec<VirtualNode>,
    /// Virtual nodes whose lease was left to expire and may not have yet.
    pub crashed: BTreeSet<usize>,
    /// Each host's pinned links before the churn.
    pub baseline_links: Vec<BTreeSet<String>>,
    rng: Rng,
    counter: u64,
    pub figures: Figures,
}

impl ClusterChurn {
    /// Builds the lab, starts the fixed flow, churns, checks, and returns the figures.
    pub fn run(scope: &str, size: ClusterChurnSize) -> Figures {
        let started = Instant::now();
        let mut churn = ClusterChurn::new(scope, size);
        progress(format_args!("cluster churn: the lab is up ({:.0?})", started.elapsed()));
        let baseline = churn.settled_states();
        let (c1, c2) = (&churn.fixed_netns[0], &churn.fixed_netns[1]);
        let flow = FixedFlow::start(c1, c2, churn.fixed[1].ip);
        for round in 1..=size.rounds {
            for op in 1..=size.ops_per_round {
                if op == size.ops_per_round / 3 {
                    churn.h3_leaves(round % 2 == 1);
                    churn.checkpoint(&flow);
                } else if op == 2 * size.ops_per_round / 3 {
                    churn.h3_returns();
                    churn.checkpoint(&flow);
                } else {
                    churn.step();
                }
                if churn.figures.operations % size.checkpoint_every as u64 == 0 {
                    churn.checkpoint(&flow);
                }
            }
            churn.checkpoint(&flow);
            churn.drain();
            churn.checkpoint(&flow);
            let states = churn.settled_states();
            for (host, (before, after)) in baseline.iter().zip(&states).enumerate() {
                if before != after {
                    panic!(
                        "after round {round}'s drain {}'s maps should equal the state before the churn (counter slots aside)\n{}",
                        HOSTS[host],
                        crate::map_keys::state_diff(before, after)
                    );
                }
            }
            for host in 0..2 {
                let usage = Usage::of(churn.agent_pid(host));
                churn.figures.usage.push(UsageSample { agent: HOSTS[host].into(), round, life: 0, usage });
            }
            churn.figures.rounds = round;
            flow.check("during the churn", || churn.cni.lab.agent_logs());
            if let Some((deadline, containers)) = size.deadline
                && Instant::now() >= deadline
                && churn.figures.adds.iter().sum::<u64>() >= containers
            {
                break;
            }
        }
        churn.figures.flow = flow.stop(|| churn.cni.lab.agent_logs());
        churn.figures.elapsed = started.elapsed();
        overlay_lab::churn::check_usage(&churn.figures.usage, &churn.figures);
        churn.figures
    }

    fn new(scope: &str, size: ClusterChurnSize) -> ClusterChurn {
        let cni = CniLab::start_with(scope, 3, 2).expect("starting the cluster lab");
        for (name, vni, subnet) in CHURN_NETWORKS.iter().chain(&REMOTE_NETWORKS) {
            let output = cni.overlay("h1", &["network", "create", name, "--vni", &vni.to_string(), "--subnet", subnet]).unwrap();
            assert!(output.status.success(), "creating network {name}: {}", String::from_utf8_lossy(&output.stderr));
        }
        let registry = RegistryClient::connect(&cni.lab.wire, &cni.etcd.client_url(0), VIRTUAL_LEASE_TTL);
        let pool = |host: usize, count: usize| (0..count).map(|i| Netns::new(scope, &format!("{}c{i}", HOSTS[host])).unwrap()).collect::<Vec<_>>();
        let pools = vec![pool(0, size.pool), pool(1, size.pool), pool(H3, size.pool_h3)];
        let fixed_netns = vec![Netns::new(scope, "c1").unwrap(), Netns::new(scope, "c2").unwrap()];
        let virtual_nodes = (0..size.virtual_nodes).map(virtual_node).collect();
        let mut churn = ClusterChurn {
            registry,
            free: pools.iter().map(|pool| (0..pool.len()).rev().collect()).collect(),
            pools,
            fixed_netns,
            cni,
            fixed: Vec::new(),
            live: BTreeMap::new(),
            h3_up: false,
            h3_life: 0,
            virtual_nodes,
            crashed: BTreeSet::new(),
            baseline_links: Vec::new(),
            rng: Rng::new(0x6368_7232_0000_0001),
            counter: 0,
            figures: Figures::default(),
        };
        churn.start_h3();
        // The fixed flow's containers, attached as a runtime does, in network blue.
        for host in 0..2 {
            let path = netns_path(&churn.fixed_netns[host]);
            let container = churn.add(host, &format!("c{}", host + 1), &path, cni::NETWORK, cni::VNI, None);
            churn.fixed.push(container);
        }
        churn.figures.adds = [0; 3];
        let (c1, c2) = (&churn.fixed_netns[0], churn.fixed[1].ip);
        let deadline = Instant::now() + scaled(Duration::from_secs(30));
        while !ping(c1, c2, 1).is_ok_and(|(_, received)| received == 1) {
            assert!(Instant::now() < deadline, "c1 did not reach c2 ({c2}) across hosts in 30 s\n{}", churn.cni.lab.agent_logs());
        }
        churn.wait_for_exact("the lab to settle");
        churn.baseline_links = (0..3).map(|host| crate::attachments::attachments(&churn.pins(host))).collect();
        churn
    }

    pub fn pins(&self, host: usize) -> PinDir {
        PinDir::new(&self.cni.lab.bpffs_dir(), HOSTS[host])
    }

    fn agent_pid(&self, host: usize) -> u32 {
        let agent = self.cni.lab.agents.iter().find(|agent| agent.host == HOSTS[host]).unwrap_or_else(|| panic!("{}'s agent runs", HOSTS[host]));
        agent.pid().unwrap()
    }

    /// The hosts whose agents run.
    pub fn up_hosts(&self) -> Vec<usize> {
        if self.h3_up { vec![0, 1, H3] } else { vec![0, 1] }
    }

    /// One invocation of the plugin; panics unless it succeeds.
    fn invoke(&mut self, host: usize, command: &str, id: &str, netns: &str, network: &str) -> Value {
        let conf = json!({"cniVersion": "1.0.0", "name": network, "type": "overlay-cni", "agent_socket": self.cni.socket(HOSTS[host])});
        let env = CniEnv::attachment(command, id, netns, "eth0");
        let started = Instant::now();
        let invocation = invoke(&cni_binary().unwrap(), &env, &conf.to_string()).expect("running overlay-cni");
        self.figures.cni_time += started.elapsed();
        self.figures.cni_invocations += 1;
        if invocation.code != 0 {
            panic!(
                "CNI {command} of {id} in {network} on {}: exit {} with {} (stderr: {})\n{}",
                HOSTS[host],
                invocation.code,
                invocation.stdout,
                invocation.stderr,
                self.cni.lab.agent_logs()
            );
        }
        invocation.stdout
    }

    /// CNI ADD of container `id` into `netns` on `host`.
    fn add(&mut self, host: usize, id: &str, netns: &str, network: &str, vni: u32, slot: Option<usize>) -> Container {
        let result = self.invoke(host, "ADD", id, netns, network);
        let address = result["ips"][0]["address"].as_str().unwrap_or_else(|| panic!("no ips[0].address in {result}"));
        let ip = address.split('/').next().unwrap().parse().unwrap_or_else(|_| panic!("not an address: {address}"));
        let mac = result["interfaces"][1]["mac"].as_str().and_then(|mac| mac.parse().ok()).unwrap_or_else(|| panic!("no interfaces[1].mac in {result}"));
        self.figures.adds[host] += 1;
        Container { host, id: id.to_owned(), slot, network: network.to_owned(), vni, mac, ip, interface: host_interface(id, "eth0") }
    }

    /// One random change.
    fn step(&mut self) {
        self.figures.operations += 1;
        match self.rng.index(100) {
            0..45 => self.add_container(),
            45..80 => self.remove_container(),
            // Joins as likely as leaves with half of the virtual nodes in: the population hovers there.
            _ if self.rng.index(self.virtual_nodes.len()) >= self.registry.joined().count() => self.join_virtual(),
            _ => self.leave_virtual(),
        }
        self.figures.most_containers = self.figures.most_containers.max(self.live.len());
        self.figures.most_virtual = self.figures.most_virtual.max(self.registry.joined().count());
    }

    fn add_container(&mut self) {
        let hosts = self.up_hosts();
        let host = hosts[self.rng.index(hosts.len())];
        let Some(slot) = self.free[host].pop() else { return self.remove_container() };
        let (network, vni, _) = CHURN_NETWORKS[self.rng.index(CHURN_NETWORKS.len())];
        self.counter += 1;
        // 64 characters, as runtimes make them.
        let id = format!("c4c2{:060x}", self.counter);
        let netns = netns_path(&self.pools[host][slot]);
        let container = self.add(host, &id, &netns, network, vni, Some(slot));
        self.live.insert(id, container);
    }

    fn remove_container(&mut self) {
        let up = self.up_hosts();
        let ids: Vec<String> = self.live.values().filter(|c| up.contains(&c.host)).map(|c| c.id.clone()).collect();
        if ids.is_empty() {
            return self.add_container();
        }
        let id = ids[self.rng.index(ids.len())].clone();
        self.remove_container_id(&id);
    }

    fn remove_container_id(&mut self, id: &str) {
        let container = self.live.remove(id).unwrap();
        let netns = netns_path(&self.pools[container.host][container.slot.unwrap()]);
        self.invoke(container.host, "DEL", id, &netns, &container.network);
        self.free[container.host].push(container.slot.unwrap());
        self.figures.dels += 1;
    }

    fn join_virtual(&mut self) {
        let absent: Vec<usize> = (0..self.virtual_nodes.len()).filter(|i| !self.registry.is_joined(*i) && !self.crashed.contains(i)).collect();
        if absent.is_empty() {
            return self.leave_virtual();
        }
        let index = absent[self.rng.index(absent.len())];
        self.registry.join(index, &self.virtual_nodes[index]);
        self.figures.virtual_joins += 1;
    }

    fn leave_virtual(&mut self) {
        let joined: Vec<usize> = self.registry.joined().collect();
        if joined.is_empty() {
            return self.join_virtual();
        }
        let index = joined[self.rng.index(joined.len())];
        // One leave in four is a crash: the records stay until the lease's TTL.
        let crash = self.rng.index(4) == 0;
        self.registry.leave(index, crash);
        if crash {
            self.crashed.insert(index);
            self.figures.virtual_crashes += 1;
        }
        self.figures.virtual_leaves += 1;
    }

    fn start_h3(&mut self) {
        let url = self.cni.etcd.client_url(0);
        let agent = self
            .cni
            .lab
            .start_agent_with_args(H3, &overlay_binary().unwrap(), &["--etcd", &url, "--etcd-lease-ttl", H3_LEASE_TTL])
            .unwrap_or_else(|error| panic!("starting h3's agent: {error:#}\n{}", self.cni.lab.agent_logs()));
        self.cni.lab.agents.push(agent);
        self.h3_up = true;
        // The plugin needs the networks at h3's agent: learned from etcd.
        let wanted: Vec<&str> = CHURN_NETWORKS.iter().map(|n| n.0).chain([cni::NETWORK]).collect();
        let socket = self.cni.socket("h3");
        self.wait_for("h3 to learn the networks from etcd", || {
            let answer = client::call_blocking(&socket, Method::GET, "/v1/networks", None).ok()?;
            let known: Vec<Value> = serde_json::from_slice(&answer.body).ok()?;
            let missing: Vec<&&str> = wanted.iter().filter(|name| !known.iter().any(|n| n["name"] == ***name)).collect();
            (!missing.is_empty()).then(|| format!("h3 lacks {missing:?}"))
        });
    }

    /// h3's agent stops (SIGTERM) or dies (kill -9): its records go when
    /// its lease runs out, and the others forget it and its containers.
    fn h3_leaves(&mut self, kill: bool) {
        self.figures.operations += 1;
        let position = self.cni.lab.agents.iter().position(|agent| agent.host == "h3").expect("h3's agent runs");
        let mut agent = self.cni.lab.agents.remove(position);
        if kill {
            agent.kill();
        } else {
            agent.stop();
        }
        self.h3_up = false;
        self.figures.h3_departures += 1;
    }

    /// h3's agent starts again: it registers anew, with the endpoints of its
    /// containers (from its API state), and the others learn them again.
    fn h3_returns(&mut self) {
        self.figures.operations += 1;
        self.start_h3();
        self.h3_life += 1;
        self.figures.h3_returns += 1;
    }

    /// Removes every container and virtual node the churn added (h3 back first).
    fn drain(&mut self) {
        if !self.h3_up {
            self.h3_returns();
        }
        let ids: Vec<String> = self.live.keys().cloned().collect();
        for id in ids {
            self.remove_container_id(&id);
        }
        let joined: Vec<usize> = self.registry.joined().collect();
        for index in joined {
            self.registry.leave(index, false);
            self.figures.virtual_leaves += 1;
        }
    }

    /// Polls `mismatch` until it returns None; panics with its last answer after a minute.
    fn wait_for(&self, what: &str, mut mismatch: impl FnMut() -> Option<String>) {
        let deadline = Instant::now() + scaled(Duration::from_secs(60));
        loop {
            let Some(found) = mismatch() else { return };
            if Instant::now() > deadline {
                panic!("waiting for {what}: not after 60 s\n{found}\n{}", self.cni.lab.agent_logs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// etcd's records and every running agent's maps exactly as the live
    /// containers and nodes call for (propagation is asynchronous: waits).
    fn wait_for_exact(&mut self, what: &str) {
        self.wait_for(&format!("{what}: etcd's records"), || expect::registry_mismatch(self));
        self.crashed.clear();
        for host in self.up_hosts() {
            self.wait_for(&format!("{what}: {}'s maps", HOSTS[host]), || expect::maps_mismatch(self, host));
        }
    }

    /// Records, maps and pinned links exact; the fixed flow whole so far.
    fn checkpoint(&mut self, flow: &FixedFlow) {
        self.wait_for_exact("a checkpoint");
        for host in self.up_hosts() {
            expect::check_links(self, host);
        }
        flow.check("at a checkpoint", || self.cni.lab.agent_logs());
        self.figures.checkpoints += 1;
        progress(format_args!(
            "cluster churn: checkpoint {} exact after {} changes ({} containers, {} virtual nodes live; h3 {})",
            self.figures.checkpoints,
            self.figures.operations,
            self.live.len(),
            self.registry.joined().count(),
            if self.h3_up { "up" } else { "away" }
        ));
    }

    /// h1's and h2's maps once exact, counter slots aside (a peer that
    /// left and came back may hold another slot).
    fn settled_states(&mut self) -> Vec<overlay::state::MapState> {
        self.wait_for_exact("the maps to settle");
        (0..2).map(|host| expect::without_slots(&Datapath::pinned_state(&self.pins(host)).expect("reading pinned maps"))).collect()
    }
}

/// Virtual node `index`: a VTEP on the underlay that nobody answers at
/// (nothing is sent to it), and none to three endpoints in one network,
/// the churned containers' or the remote ones' (at most 50 nodes per
/// network with 200: a VNI floods to at most 64 peers).
fn virtual_node(index: usize) -> VirtualNode {
    let networks: Vec<(&str, u32, &str)> = CHURN_NETWORKS.iter().chain(&REMOTE_NETWORKS).copied().collect();
    let (network, _, subnet) = networks[index % networks.len()];
    let base: Ipv4Addr = subnet.split('/').next().unwrap().parse().unwrap();
    let [a, b, _, _] = base.octets();
    // Static addresses from x.y.200.0 up: far above the blocks the hosts' IPAM hands out.
    let endpoints = (0..(index / networks.len()) % 4)
        .map(|j| {
            let mac = MacAddr([0x02, 0xee, 0, (index >> 8) as u8, index as u8, j as u8]);
            let ip = Ipv4Addr::new(a, b, 200 + (index / 80) as u8, ((index % 80) * 3 + j + 1) as u8);
            (network.to_owned(), mac, ip)
        })
        .collect();
    VirtualNode { name: format!("chr2v{index}"), vtep: Ipv4Addr::new(192, 0, 2, 10 + index as u8), endpoints }
}

fn netns_path(netns: &Netns) -> String {
    format!("/var/run/netns/{}", netns.name())
}
