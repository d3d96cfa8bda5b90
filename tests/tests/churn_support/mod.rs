//! The churn driver of churn.rs: the lab, the fixed flow, the random
//! changes and what the maps must hold after them.
mod expect;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant},
};

use overlay_lab::fuzz::Rng;

use overlay::{
    api::{
        ApiError,
        client::{self, ClientError, Method},
    },
    datapath::Datapath,
    pinning::PinDir,
};
use overlay_lab::lab::{ContainerSpec, HostKind, HostSpec, Lab, LabSpec, overlay_binary, progress};
use serde_json::{Value, json};

use overlay_lab::churn::{FixedFlow, Usage, UsageSample};

pub const C1_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 1);
pub const C2_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 2);
/// The fixed flow's VNI (both containers, from the files).
pub const FIXED_VNI: u32 = 100;
/// The most API networks alive at once.
const MAX_NETWORKS: usize = 12;
/// Local ports a VNI's flood list holds (overlay-common's FLOOD_MAX_LOCAL_PORTS).
const FLOOD_MAX_LOCAL_PORTS: usize = 32;
/// VNIs the churned peers' containers are in (FIXED_VNI and the next
/// ones): a VNI floods to at most 64 peers, so 200 peers need four.
pub const PEER_VNIS: u32 = 4;

#[derive(Clone, Copy, Debug)]
pub struct ChurnSize {
    pub rounds: usize,
    pub ops_per_round: usize,
    /// veth pairs on h1 that churned endpoints use as ports.
    pub pool: usize,
    /// Peers that come and go through h1's file (up to this many at once).
    pub peers: usize,
    pub endpoints_per_peer: usize,
    /// Percent of changes that add an endpoint; 80 less this remove one;
    /// 6 create a network, 6 remove one, 8 change peers.
    pub add_percent: usize,
    /// Run the fixed flow this long before the churn, for a reference
    /// (retransmissions without churn); figures only, nothing is timed.
    pub quiet_reference: Option<Duration>,
    /// Stop after the round in which this instant has passed and this many endpoints were added.
    pub deadline: Option<(Instant, u64)>,
    /// Kill -9 and restart h1's agent every this many rounds (0: never).
    pub restart_every: usize,
}

/// What a run did and measured.
#[derive(Debug, Default)]
pub struct Figures {
    pub rounds: usize,
    pub operations: u64,
    pub endpoints_added: u64,
    pub endpoints_pending: u64,
    pub endpoints_removed: u64,
    pub networks_created: u64,
    pub networks_removed: u64,
    pub refusals_checked: u64,
    pub peer_changes: u64,
    pub most_peers: usize,
    pub most_endpoints: usize,
    pub restarts: u64,
    pub checkpoints: u64,
    pub pings_sent: u64,
    pub pings_received: u64,
    pub tcp_transfers: u64,
    pub tcp_bytes: u64,
    pub tcp_retransmitted_segments: u64,
    /// The fixed flow alone before the churn: how long, and (pings sent,
    /// answered, TCP bytes, segments retransmitted) in that time.
    pub quiet_reference: Option<(Duration, (u64, u64, u64, u64))>,
    /// h1's agent at the end of each round (after its drain).
    pub usage: Vec<UsageSample>,
    pub elapsed: Duration,
}

impl fmt::Display for Figures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "churn figures: {} rounds, {} operations in {:.0} s", self.rounds, self.operations, self.elapsed.as_secs_f64())?;
        writeln!(
            f,
            "  endpoints: {} added ({} pending: no interface), {} removed, at most {} at once",
            self.endpoints_added, self.endpoints_pending, self.endpoints_removed, self.most_endpoints
        )?;
        writeln!(f, "  networks: {} created, {} removed; refusals checked: {}", self.networks_created, self.networks_removed, self.refusals_checked)?;
        writeln!(f, "  peers: {} changes through the file, at most {} at once; agent restarts (kill -9): {}", self.peer_changes, self.most_peers, self.restarts)?;
        writeln!(f, "  checkpoints (maps, TC attachments and pinned links exact): {}", self.checkpoints)?;
        writeln!(
            f,
            "  fixed flow: {} pings, {} answered; {} TCP transfers, {} bytes intact, {} segments retransmitted",
            self.pings_sent, self.pings_received, self.tcp_transfers, self.tcp_bytes, self.tcp_retransmitted_segments
        )?;
        if let Some((quiet, (sent, received, bytes, retransmitted))) = self.quiet_reference {
            writeln!(
                f,
                "  (of which before the churn, {} s of the flow alone: {sent} pings, {received} answered, {bytes} TCP bytes, {retransmitted} segments retransmitted)",
                quiet.as_secs()
            )?;
        }
        let usage: Vec<String> = self.usage.iter().map(ToString::to_string).collect();
        write!(f, "  agent after each round's drain: {}", usage.join(", "))
    }
}

/// An endpoint the churn added and has not removed.
#[derive(Clone, Debug)]
pub struct LiveEndpoint {
    pub network: String,
    pub vni: u32,
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    /// Index into the pool, or None for an interface that does not exist (pending).
    pub port: Option<usize>,
}

pub struct Churn {
    pub lab: Lab,
    pub socket: PathBuf,
    pub pins: PinDir,
    /// h1's file as the lab wrote it.
    pub base_file: String,
    pub pool: Vec<String>,
    /// ifindex of every pool port and of c1's port, in h1's namespace.
    pub ifindexes: BTreeMap<String, u32>,
    /// Links pinned before the churn (the underlay's and c1's port's).
    pub baseline_links: BTreeSet<String>,
    /// Which agent process (0, then one more per restart).
    pub life: usize,
    pub free_ports: Vec<usize>,
    pub endpoints: BTreeMap<String, LiveEndpoint>,
    /// API networks alive: name -> VNI.
    pub networks: BTreeMap<String, u32>,
    /// Peers in h1's file beyond h2: index -> present.
    pub peers: BTreeSet<usize>,
    pub size: ChurnSize,
    pub rng: Rng,
    counter: u64,
    pub figures: Figures,
}

impl Churn {
    /// Builds the lab, starts the fixed flow, churns, checks, and returns the figures.
    pub fn run(scope: &str, size: ChurnSize) -> Figures {
        let started = Instant::now();
        let mut churn = Churn::new(scope, size);
        progress(format_args!("churn: the lab is up ({:.0?})", started.elapsed()));
        let baseline = churn.settled_state();
        let flow = FixedFlow::start(&churn.lab.container("h1", "c").netns, &churn.lab.container("h2", "c").netns, C2_IP);
        progress(format_args!("churn: the fixed flow runs ({:.0?})", started.elapsed()));
        if let Some(quiet) = size.quiet_reference {
            std::thread::sleep(quiet);
            let counts = flow.counts_so_far();
            churn.figures.quiet_reference = Some((quiet, (counts.pings_sent, counts.pings_received, counts.bytes, counts.retransmitted)));
        }
        for round in 1..=size.rounds {
            // Every peer at once, in one reload; the round's changes then take them out and back.
            churn.figures.peer_changes += (size.peers - churn.peers.len()) as u64;
            churn.peers = (0..size.peers).collect();
            churn.figures.most_peers = size.peers;
            churn.write_file();
            churn.wait_for_maps("every peer in one reload");
            for _ in 0..size.ops_per_round {
                churn.step();
                if churn.figures.operations % 50 == 0 {
                    churn.checkpoint(&flow);
                }
            }
            churn.checkpoint(&flow);
            if size.restart_every > 0 && round % size.restart_every == 0 {
                churn.restart_agent(&flow);
            }
            churn.drain();
            let state = churn.settled_state();
            if state != baseline {
                panic!("after round {round}'s drain the maps should equal the state before the churn\n{}", crate::map_keys::state_diff(&baseline, &state));
            }
            churn.checkpoint(&flow);
            let usage = Usage::of(churn.lab.agents[0].pid().expect("h1's agent runs"));
            churn.figures.usage.push(UsageSample { agent: "h1".into(), round, life: churn.life, usage });
            churn.figures.rounds = round;
            flow.check("during the churn", || churn.lab.agent_logs());
            if let Some((deadline, endpoints)) = size.deadline
                && Instant::now() >= deadline
                && churn.figures.endpoints_added >= endpoints
            {
                break;
            }
        }
        let counts = flow.stop(|| churn.lab.agent_logs());
        churn.figures.pings_sent = counts.pings_sent;
        churn.figures.pings_received = counts.pings_received;
        churn.figures.tcp_transfers = counts.transfers;
        churn.figures.tcp_bytes = counts.bytes;
        churn.figures.tcp_retransmitted_segments = counts.retransmitted;
        churn.figures.elapsed = started.elapsed();
        overlay_lab::churn::check_usage(&churn.figures.usage, &churn.figures);
        churn.figures
    }

    fn new(scope: &str, size: ChurnSize) -> Churn {
        let container = |mac: [u8; 6], ip| ContainerSpec { name: "c".into(), mac, ip, vni: FIXED_VNI };
        let host = |n: &str, c| HostSpec { name: n.into(), kind: HostKind::Overlay, containers: vec![c] };
        let mut lab = Lab::build(LabSpec {
            scope: scope.into(),
            vxlan_port: 4789,
            hosts: vec![host("h1", container([2, 0, 0, 0, 0x71, 1], C1_IP)), host("h2", container([2, 0, 0, 0, 0x71, 2], C2_IP))],
        })
        .expect("building the lab");
        // The pool of ports: veth pairs left in h1's namespace (their far
        // ends carry nothing; the point is the attachments and the maps).
        let pool: Vec<String> = (0..size.pool).map(|i| format!("hdp{i}")).collect();
        let batch: String = pool.iter().map(|name| format!("link add {name} type veth peer name {name}x\nlink set {name} up\n")).collect();
        let batch_path = lab.dir.join("pool.ip");
        std::fs::write(&batch_path, batch).unwrap();
        let output = std::process::Command::new("ip").args(["-n", lab.host("h1").netns.name(), "-batch"]).arg(&batch_path).output().unwrap();
        assert!(output.status.success(), "creating the port pool: {}", String::from_utf8_lossy(&output.stderr));
        lab.start_agents(&overlay_binary().unwrap()).expect("starting the agents");
        let base_file = std::fs::read_to_string(lab.hosts[0].config_path.as_ref().unwrap()).unwrap();
        let mut names = pool.clone();
        names.push(lab.container("h1", "c").port.clone());
        let ifindexes = lab
            .host("h1")
            .netns
            .run_inside(move || {
                Ok(names
                    .into_iter()
                    .map(|name| {
                        let c_name = std::ffi::CString::new(name.clone()).unwrap();
                        // SAFETY: a NUL-terminated name.
                        let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
                        (name, index)
                    })
                    .collect::<BTreeMap<String, u32>>())
            })
            .unwrap();
        assert!(ifindexes.values().all(|i| *i != 0), "every port should have an ifindex: {ifindexes:?}");
        let pins = PinDir::new(&lab.bpffs_dir(), "h1");
        let baseline_links = crate::attachments::attachments(&pins);
        Churn {
            ifindexes,
            baseline_links,
            life: 0,
            socket: lab.dir.join("run").join("h1.sock"),
            pins,
            base_file,
            free_ports: (0..size.pool).rev().collect(),
            pool,
            endpoints: BTreeMap::new(),
            networks: BTreeMap::new(),
            peers: BTreeSet::new(),
            size,
            rng: Rng::new(0x6368_7572_6e00_0001),
            counter: 0,
            figures: Figures::default(),
            lab,
        }
    }

    /// One API call to h1's agent; a call it does not answer within 30 s
    /// (scaled) fails the test with the agents' logs, rather than hanging it.
    fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Vec<u8>, ApiError> {
        let patience = overlay_lab::lab::scaled(Duration::from_secs(30));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
        let answer = runtime.block_on(async { tokio::time::timeout(patience, client::call(&self.socket, method.clone(), path, body)).await });
        match answer {
            Ok(Ok(answer)) => Ok(answer.body),
            Ok(Err(ClientError::Refused(refusal))) => Err(refusal),
            Ok(Err(error)) => panic!("calling {method} {path}: {error}\n{}", self.lab.agent_logs()),
            Err(_) => panic!("calling {method} {path}: no answer in {patience:?}\n{}", self.lab.agent_logs()),
        }
    }

    /// One random change.
    fn step(&mut self) {
        self.figures.operations += 1;
        let roll = self.rng.index(100);
        let add = self.size.add_percent;
        match roll {
            _ if roll < add => self.add_endpoint(),
            _ if roll < 80 => self.remove_endpoint(),
            _ if roll < 86 => self.create_network(),
            _ if roll < 92 => self.remove_network(),
            _ => self.change_peers(),
        }
        self.figures.most_endpoints = self.figures.most_endpoints.max(self.endpoints.len());
    }

    fn add_endpoint(&mut self) {
        if self.networks.is_empty() {
            return self.create_network();
        }
        let names: Vec<String> = self.networks.keys().cloned().collect();
        let network = names[self.rng.index(names.len())].clone();
        let vni = self.networks[&network];
        // A VNI's flood list holds 32 local ports (pending ones count: they
        // are the VNI's once their interface appears): the 33rd is refused.
        let full = self.endpoints.values().filter(|e| e.network == network).count() >= FLOOD_MAX_LOCAL_PORTS;
        self.counter += 1;
        let k = self.counter;
        // One in eight names an interface that does not exist: pending, never in the maps.
        let port = if self.rng.index(8) == 0 { None } else { self.free_ports.pop() };
        let interface = port.map_or_else(|| format!("hdnone{}", k % 1000), |p| self.pool[p].clone());
        let mac = [0x02, 0xcc, (k >> 24) as u8, (k >> 16) as u8, (k >> 8) as u8, k as u8];
        let ip = Ipv4Addr::new(10, 128, (k / 254 % 256) as u8, (k % 254 + 1) as u8);
        let id = format!("hd-ep-{k}");
        let body = json!({"network": network, "interface": interface, "id": id, "mac": overlay_lab::lab::format_mac(&mac), "ipv4": ip.to_string()});
        if full {
            let refusal = self.call(Method::POST, "/v1/endpoints", Some(body.clone())).expect_err(&format!("{body}: a 33rd port in {network}"));
            assert_eq!((refusal.status, refusal.kind.as_str(), refusal.field.as_str()), (409, "limit", "interface"), "{body}: {refusal:?}");
            self.free_ports.extend(port);
            self.figures.refusals_checked += 1;
            return;
        }
        let answer = self.call(Method::POST, "/v1/endpoints", Some(body.clone())).unwrap_or_else(|refusal| panic!("{body} refused: {refusal:?}"));
        let view: Value = serde_json::from_slice(&answer).unwrap();
        let expected = if port.is_some() { "applied" } else { "pending" };
        assert_eq!(view["state"], expected, "{body}: {view}");
        self.figures.endpoints_added += 1;
        self.figures.endpoints_pending += u64::from(port.is_none());
        self.endpoints.insert(id, LiveEndpoint { network, vni, mac, ip, port });
    }

    fn remove_endpoint(&mut self) {
        if self.endpoints.is_empty() {
            return self.add_endpoint();
        }
        let ids: Vec<String> = self.endpoints.keys().cloned().collect();
        let id = ids[self.rng.index(ids.len())].clone();
        self.remove_endpoint_id(&id);
    }

    fn remove_endpoint_id(&mut self, id: &str) {
        self.call(Method::DELETE, &format!("/v1/endpoints/{id}"), None).unwrap_or_else(|refusal| panic!("removing {id}: {refusal:?}"));
        let gone = self.endpoints.remove(id).unwrap();
        if let Some(port) = gone.port {
            self.free_ports.push(port);
        }
        self.figures.endpoints_removed += 1;
    }

    fn create_network(&mut self) {
        if self.networks.len() >= MAX_NETWORKS {
            return self.add_endpoint();
        }
        self.counter += 1;
        let name = format!("hdnet{}", self.counter);
        // Half the time a VNI of the churned peers' containers, when free:
        // the node's carrying it then admits those peers for it.
        let peer_vni = FIXED_VNI + 1 + self.rng.index(PEER_VNIS as usize - 1) as u32;
        let vni = if self.rng.index(2) == 0 && !self.networks.values().any(|v| *v == peer_vni) {
            peer_vni
        } else {
            3000 + (self.counter % 100_000) as u32
        };
        self.call(Method::POST, "/v1/networks", Some(json!({"name": name, "vni": vni})))
            .unwrap_or_else(|refusal| panic!("creating {name}: {refusal:?}"));
        self.networks.insert(name, vni);
        self.figures.networks_created += 1;
    }

    fn remove_network(&mut self) {
        let names: Vec<String> = self.networks.keys().cloned().collect();
        if names.is_empty() {
            return self.create_network();
        }
        let name = names[self.rng.index(names.len())].clone();
        let used = self.endpoints.values().any(|e| e.network == name);
        match self.call(Method::DELETE, &format!("/v1/networks/{name}"), None) {
            Ok(_) if !used => {
                self.networks.remove(&name);
                self.figures.networks_removed += 1;
            }
            Err(refusal) if used && refusal.status == 409 => self.figures.refusals_checked += 1,
            other => panic!("removing network {name} (in use: {used}): {other:?}"),
        }
    }

    /// Toggles up to eight peers in h1's file and waits for the maps to follow.
    fn change_peers(&mut self) {
        for _ in 0..1 + self.rng.index(8) {
            let peer = self.rng.index(self.size.peers);
            if !self.peers.remove(&peer) {
                self.peers.insert(peer);
            }
            self.figures.peer_changes += 1;
        }
        self.figures.most_peers = self.figures.most_peers.max(self.peers.len());
        self.write_file();
        self.wait_for_maps("a reload of h1's file");
    }

    /// h1's file: the lab's, plus the churn's peers, each with its containers in the fixed VNI.
    fn write_file(&self) {
        let mut text = self.base_file.clone();
        for &peer in &self.peers {
            text += &format!("[[peers]]\nname = \"hdpeer{peer}\"\nvtep_address = \"{}\"\n", expect::peer_vtep(peer));
            for j in 0..self.size.endpoints_per_peer {
                let (mac, ip) = expect::peer_endpoint(peer, j);
                let vni = expect::peer_vni(peer);
                text += &format!("  [[peers.endpoints]]\n  mac = \"{}\"\n  ip = \"{ip}\"\n  vni = {vni}\n", overlay_lab::lab::format_mac(&mac));
            }
        }
        let path = self.lab.hosts[0].config_path.clone().unwrap();
        let staged = path.with_extension("staged");
        std::fs::write(&staged, text).unwrap();
        std::fs::rename(&staged, &path).unwrap();
        // The agent watches the file; SIGHUP too, in case the watch missed the rename.
        self.lab.agents[0].signal(libc::SIGHUP);
    }

    /// Removes every endpoint, network and peer the churn added.
    fn drain(&mut self) {
        let ids: Vec<String> = self.endpoints.keys().cloned().collect();
        for id in ids {
            self.remove_endpoint_id(&id);
        }
        let names: Vec<String> = self.networks.keys().cloned().collect();
        for name in names {
            self.call(Method::DELETE, &format!("/v1/networks/{name}"), None).unwrap_or_else(|refusal| panic!("removing {name}: {refusal:?}"));
            self.networks.remove(&name);
            self.figures.networks_removed += 1;
        }
        if !self.peers.is_empty() {
            self.figures.peer_changes += self.peers.len() as u64;
            self.peers.clear();
            self.write_file();
        }
    }

    /// The maps once they match what the churn asked for (a file reload is asynchronous).
    fn settled_state(&mut self) -> overlay::state::MapState {
        self.wait_for_maps("the maps to settle");
        Datapath::pinned_state(&self.pins).expect("reading h1's pinned maps")
    }

    fn wait_for_maps(&self, what: &str) {
        let deadline = Instant::now() + overlay_lab::lab::scaled(Duration::from_secs(30));
        loop {
            let mismatch = expect::mismatch(self);
            let Some(mismatch) = mismatch else { return };
            if Instant::now() > deadline {
                panic!("waiting for {what}: the maps do not hold what was asked\n{mismatch}\n{}", self.lab.agent_logs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Maps, TC attachments and pinned links exactly as asked; the fixed flow whole so far.
    fn checkpoint(&mut self, flow: &FixedFlow) {
        self.wait_for_maps("a checkpoint");
        expect::check_attachments(self);
        flow.check("at a checkpoint", || self.lab.agent_logs());
        self.figures.checkpoints += 1;
        progress(format_args!(
            "churn: checkpoint {} exact after {} changes ({} endpoints, {} networks, {} peers live; {} restarts)",
            self.figures.checkpoints,
            self.figures.operations,
            self.endpoints.len(),
            self.networks.len(),
            self.peers.len(),
            self.figures.restarts
        ));
    }

    /// kill -9 and restart h1's agent: the API's endpoints come back from its state file.
    fn restart_agent(&mut self, flow: &FixedFlow) {
        self.lab.agents[0].kill();
        self.lab.agents[0] = self.lab.start_agent(0, &overlay_binary().unwrap()).expect("restarting h1's agent");
        self.figures.restarts += 1;
        self.life += 1;
        self.checkpoint(flow);
    }
}
