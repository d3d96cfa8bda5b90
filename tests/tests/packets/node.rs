//! A node of the fixture: its namespace, devices, loaded datapath and capture sockets.
use std::{
    collections::{BTreeMap, HashMap},
    io,
    mem,
    net::Ipv4Addr,
    os::fd::{AsRawFd, OwnedFd},
    path::Path,
    sync::{
        Once,
        atomic::Ordering,
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use overlay::{
    Config, Counters, Datapath, MapState, ResolvedConfig, VniPeerCounters,
    datapath::TestRunOutcome,
    netdev,
};
use overlay_lab::{
    bpf_run::{packet_socket, receive_queued},
    frames::Mac,
    netns::{self, InsideNetns, Netns},
};

use super::*;

/// A node: its namespace and topology, a datapath loaded (not attached)
/// with the node's configuration applied, and capture sockets.
pub(crate) struct Node {
    pub(crate) spec: &'static NodeSpec,
    pub(crate) datapath: Datapath,
    /// The underlay device's MAC as the kernel reports it.
    pub(crate) underlay_mac: Mac,
    pub(crate) ifindex: HashMap<&'static str, u32>,
    pub(crate) captures: Captures,
    // Last, so the namespace goes after everything that lives in it.
    pub(crate) netns: Netns,
}

/// Every device the fixture creates in a node's namespace.
pub(crate) fn devices() -> impl Iterator<Item = &'static str> {
    [UNDERLAY, UNDERLAY_PEER].into_iter().chain(PORTS.iter().flat_map(|&(port, container)| [port, container]))
}

/// The container side of the veth whose host side is `port`.
pub(crate) fn container_side(port: &str) -> &'static str {
    PORTS.iter().find(|(host, _)| *host == port).map(|&(_, container)| container).unwrap_or_else(|| panic!("no port {port}"))
}

impl Node {
    pub(crate) fn start(spec: &'static NodeSpec) -> anyhow::Result<Node> {
        // Guards cannot clean up after a SIGKILLed run; remove what such runs left.
        static SWEEP: Once = Once::new();
        SWEEP.call_once(|| {
            for name in netns::sweep_stale() {
                eprintln!("removed namespace {name} left by a killed run");
            }
        });
        let role = format!("{}{}", spec.role, NEXT_NODE.fetch_add(1, Ordering::Relaxed));
        let netns = Netns::new(SCOPE, &role)?;
        // Before any device exists, so that every one is created without
        // IPv6 and sends no router solicitations, MLD reports or DAD probes.
        netns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        netns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        let underlay_mac = spec.underlay_mac.to_string();
        netns.ip(&["link", "add", UNDERLAY, "address", &underlay_mac, "type", "veth", "peer", "name", UNDERLAY_PEER])?;
        netns.ip(&["addr", "add", &format!("{}/24", spec.vtep), "dev", UNDERLAY])?;
        for peer in spec.peers {
            if let Some(mac) = peer.underlay_mac {
                let (vtep, mac) = (peer.vtep.to_string(), mac.to_string());
                netns.ip(&["neigh", "add", &vtep, "lladdr", &mac, "dev", UNDERLAY, "nud", "permanent"])?;
            }
        }
        for (port, container) in PORTS {
            netns.ip(&["link", "add", port, "type", "veth", "peer", "name", container])?;
        }
        for device in devices() {
            netns.ip(&["link", "set", device, "up"])?;
        }
        netns.sysctl(&format!("net.ipv4.conf.{UNDERLAY}.forwarding"), "1")?;
        // `ip netns exec` mounts a sysfs of the namespace; ours shows the host's.
        let address = netns.exec("cat", &[&format!("/sys/class/net/{UNDERLAY}/address")])?;
        let underlay_mac = String::from_utf8_lossy(&address.stdout).parse::<Mac>().map_err(anyhow::Error::msg)?;

        let (datapath, ifindex, captures) = {
            let _inside = InsideNetns::enter(&netns)?;
            let path = Path::new("packets.toml");
            let config = Config::parse(&spec.config_toml(), path)?;
            let resolved = ResolvedConfig::resolve(config, path)?;
            let mut datapath = Datapath::load(log::LevelFilter::Info)?;
            datapath.apply(&MapState::from_config(&resolved, &MapState::default())?)?;
            // What the agent's attach writes for XDP (nothing is attached here).
            datapath.set_underlay_mac(Some(underlay_mac.0))?;
            let mut ifindex = HashMap::new();
            for device in devices() {
                let index = netdev::ifindex(device).with_context(|| format!("no {device} in {}", netns.name()))?;
                ifindex.insert(device, index);
            }
            // A packet socket belongs to the namespace it is made in.
            let captures = Captures::open(&ifindex)?;
            (datapath, ifindex, captures)
        };
        Ok(Node { spec, datapath, underlay_mac, ifindex, captures, netns })
    }

    /// What this node's encapsulation toward its (first) peer in VNI 100 must write.
    pub(crate) fn tunnel(&self) -> Tunnel {
        self.tunnel_to(self.spec.peers[0].vtep, VNI)
    }

    /// What this node's encapsulation toward the peer at `vtep` in `vni` must write.
    pub(crate) fn tunnel_to(&self, vtep: Ipv4Addr, vni: u32) -> Tunnel {
        let peer = self.spec.peers.iter().find(|peer| peer.vtep == vtep);
        let dst_mac = peer
            .and_then(|peer| peer.underlay_mac)
            .unwrap_or_else(|| panic!("the {} node has no resolved peer {vtep}", self.spec.role));
        Tunnel { src_mac: self.underlay_mac, dst_mac, src_vtep: self.spec.vtep, dst_vtep: vtep, vni }
    }

    pub(crate) fn ifindex_of(&self, device: &str) -> anyhow::Result<u32> {
        self.ifindex.get(device).copied().with_context(|| format!("the fixture has no device {device}"))
    }

    /// Applies the configuration `toml` over what the datapath holds, as
    /// the agent's reload does (counter slots kept from the applied state).
    pub(crate) fn reconfigure(&mut self, toml: &str) -> anyhow::Result<()> {
        let _inside = InsideNetns::enter(&self.netns)?;
        let path = Path::new("packets.toml");
        let resolved = ResolvedConfig::resolve(Config::parse(toml, path)?, path)?;
        let desired = MapState::from_config(&resolved, self.datapath.applied())?;
        self.datapath.apply(&desired)?;
        Ok(())
    }

    /// Runs `frame` through `hook` once; returns the node's counters and
    /// each VNI's and peer's that moved meanwhile.
    pub(crate) fn run_counting_vnis_peers(&self, hook: Hook, frame: &[u8]) -> anyhow::Result<(Counters, VniPeerCounters)> {
        self.captures.drain()?;
        let before = self.datapath.vni_peer_counters()?;
        let (_, counted) = self.run(hook, frame, 1)?;
        let mut moved = self.datapath.vni_peer_counters()?.since(&before);
        moved.vnis.retain(|_, counters| !counters.rows.is_empty());
        moved.peers.retain(|_, counters| !counters.rows.is_empty());
        Ok((counted, moved))
    }

    /// Runs `frame` through `hook` `repeat` times; returns the outcome and
    /// the counters that moved meanwhile.
    pub(crate) fn run(&self, hook: Hook, frame: &[u8], repeat: u32) -> anyhow::Result<(TestRunOutcome, Counters)> {
        let before = self.datapath.counters()?;
        let outcome = match hook {
            Hook::Decap => self.datapath.test_decap(frame, repeat)?,
            Hook::Port(device) => {
                let ifindex = self.ifindex_of(device)?;
                let _inside = InsideNetns::enter(&self.netns)?;
                self.datapath.test_endpoint(frame, ifindex, repeat)?
            }
            Hook::UnderlayFlood => {
                anyhow::ensure!(repeat == 1, "the underlay flood program runs once per frame");
                let ifindex = self.ifindex_of(UNDERLAY)?;
                let _inside = InsideNetns::enter(&self.netns)?;
                self.datapath.test_underlay_flood(frame, ifindex)?
            }
            Hook::DecapTc => {
                anyhow::ensure!(repeat == 1, "the TC decapsulation program runs once per frame here");
                let ifindex = self.ifindex_of(UNDERLAY)?;
                let _inside = InsideNetns::enter(&self.netns)?;
                self.datapath.test_decap_tc(frame, ifindex)?
            }
        };
        let counted = self.datapath.counters()?.since(&before);
        Ok((outcome, counted))
    }
}


/// The calling thread pinned to the CPU it is on until dropped, so that
/// every test run sees the same slot of a per-CPU map.
pub(crate) struct PinnedToOneCpu {
    pub(crate) previous: libc::cpu_set_t,
}

impl PinnedToOneCpu {
    pub(crate) fn here() -> anyhow::Result<PinnedToOneCpu> {
        // SAFETY: all-zero is an empty CPU set; the calls get valid pointers and sizes.
        unsafe {
            let mut previous: libc::cpu_set_t = mem::zeroed();
            if libc::sched_getaffinity(0, mem::size_of::<libc::cpu_set_t>(), &mut previous) != 0 {
                return Err(io::Error::last_os_error()).context("sched_getaffinity");
            }
            let cpu = libc::sched_getcpu();
            if cpu < 0 {
                return Err(io::Error::last_os_error()).context("sched_getcpu");
            }
            let mut only: libc::cpu_set_t = mem::zeroed();
            libc::CPU_SET(cpu as usize, &mut only);
            if libc::sched_setaffinity(0, mem::size_of::<libc::cpu_set_t>(), &only) != 0 {
                return Err(io::Error::last_os_error()).with_context(|| format!("pinning this thread to CPU {cpu}"));
            }
            Ok(PinnedToOneCpu { previous })
        }
    }
}

impl Drop for PinnedToOneCpu {
    fn drop(&mut self) {
        // SAFETY: restores the set read in `here`.
        if unsafe { libc::sched_setaffinity(0, mem::size_of::<libc::cpu_set_t>(), &self.previous) } != 0 {
            eprintln!("restoring this thread's CPU affinity: {}", io::Error::last_os_error());
        }
    }
}

/// Frames that arrived on each capture device during a run, in arrival order.
pub(crate) type Arrived = BTreeMap<&'static str, Vec<Vec<u8>>>;

/// Raw packet sockets (AF_PACKET, every protocol, non-blocking) bound to
/// each of [`CAPTURED`]: what the datapath's clones really sent.
pub(crate) struct Captures {
    pub(crate) sockets: Vec<(&'static str, OwnedFd)>,
}

impl Captures {
    /// How long a capture waits for the frames a row expects.
    const DEADLINE: Duration = Duration::from_secs(1);
    /// How long no further frame may come before a capture ends. Clones are
    /// delivered before the test run returns (the softirq runs as the
    /// transmit path re-enables bottom halves); this is slack for a busy host.
    const QUIET_MS: i32 = 30;

    /// Opens the sockets; the calling thread must be in the node's namespace.
    pub(crate) fn open(ifindex: &HashMap<&'static str, u32>) -> anyhow::Result<Captures> {
        let mut sockets = Vec::new();
        for device in CAPTURED {
            let socket = packet_socket(ifindex[device]).with_context(|| format!("capturing on {device}"))?;
            sockets.push((device, socket));
        }
        Ok(Captures { sockets })
    }

    /// Discards whatever is queued (frames from before this run).
    pub(crate) fn drain(&self) -> anyhow::Result<()> {
        for (device, socket) in &self.sockets {
            receive_queued(socket).with_context(|| format!("draining the capture on {device}"))?;
        }
        Ok(())
    }

    /// Collects what arrives until `expected` frames have come (or the
    /// deadline passed) and then nothing more for [`Captures::QUIET_MS`].
    pub(crate) fn collect(&self, expected: usize) -> anyhow::Result<Arrived> {
        let deadline = Instant::now() + Captures::DEADLINE;
        let mut arrived = Arrived::new();
        let mut count = 0;
        loop {
            let wait = if count >= expected {
                Captures::QUIET_MS
            } else {
                deadline.saturating_duration_since(Instant::now()).as_millis().max(1) as i32
            };
            let mut polled: Vec<libc::pollfd> = self
                .sockets
                .iter()
                .map(|(_, socket)| libc::pollfd { fd: socket.as_raw_fd(), events: libc::POLLIN, revents: 0 })
                .collect();
            // SAFETY: polled is a valid array of pollfd of the given length.
            let ready = unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, wait) };
            if ready < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error).context("polling the capture sockets");
            }
            if ready == 0 && (count >= expected || Instant::now() >= deadline) {
                return Ok(arrived);
            }
            for ((device, socket), poll) in self.sockets.iter().zip(&polled) {
                if poll.revents & libc::POLLIN != 0 {
                    let frames = receive_queued(socket).with_context(|| format!("reading the capture on {device}"))?;
                    count += frames.len();
                    arrived.entry(device).or_default().extend(frames);
                }
            }
        }
    }
}
