//! Packets through the real datapath programs, loaded into the kernel and run
//! on crafted frames with BPF_PROG_TEST_RUN (nothing is attached).
//!
//! Tests are tables, as Katran's and Cilium's BPF tests are: each row is a
//! name, the hook, an input frame, the expected action, the expected counted
//! reason, the expected output (a frame, or a check of every field), and the
//! frames the run must really have sent elsewhere. Every run also checks
//! that exactly one counter moved: the expected (direction, reason), by one
//! packet of the input's length (or none, for the few frames a program
//! leaves to others). A table runs all its rows, prints `ok`/`FAIL` for each,
//! and then fails listing every row that did not match, with input and
//! output in hex.
//!
//! Fixture: one network namespace per node (removed on drop, also when a
//! test panics) holding a veth underlay `ul0` (far end `ul0peer`) with the
//! node's VTEP address, every resolved peer VTEP as a permanent neighbour
//! and IPv4 forwarding on (the endpoint program's `bpf_fib_lookup` is a
//! forwarding lookup), and three veth endpoint ports `p1`/`p2`/`p3`
//! (container sides `q1`/`q2`/`q3`). The TC programs run in the namespace of
//! the ctx's ifindex, which the kernel looks up in the calling thread's
//! namespace, so those runs enter the node's namespace for their duration.
//!
//! Flooding clones frames with `bpf_clone_redirect`, and those clones really
//! leave during a test run: raw AF_PACKET sockets on `q1`/`q2`/`q3` and
//! `ul0peer` see them. Every row states what must arrive there (nothing, by
//! default) and the run fails on anything missing or extra. IPv6 is off in
//! the node's namespace so that no autoconfiguration traffic reaches those
//! sockets. Needs root.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt::{self, Write as _},
    io,
    mem,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
    sync::{
        Once,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use overlay::{
    Config, Counters, Datapath, MapState, ResolvedConfig, VniPeerCounters,
    datapath::{CounterRow, TestRunOutcome},
    netdev,
    state::ipv4_be,
};
use overlay_common::{Direction, Reason};
use overlay_lab::{
    frames::{
        self, Arp, BROADCAST, ETHERNET_LEN, ETHERTYPE_8021AD, ETHERTYPE_8021Q, ETHERTYPE_IPV4,
        ETHERTYPE_IPV6, Ethernet, ICMP_HOST_UNREACHABLE, ICMP_DESTINATION_UNREACHABLE, ICMPV6_DESTINATION_UNREACHABLE,
        ICMPV6_ECHO_REQUEST, ICMPV6_PACKET_TOO_BIG, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, IPV4_LEN,
        IPV4_MORE_FRAGMENTS, IPV6_LEN, Ipv4, Ipv6, Mac, NA_FLAG_OVERRIDE, NA_FLAG_SOLICITED, ND_ROUTER_SOLICITATION, Tcp,
        UDP_LEN, Udp, VXLAN_LEN, Vxlan, VxlanOverIpv4,
    },
    netns::{self, InsideNetns, Netns},
};

// Hook return values (include/uapi/linux/bpf.h, pkt_cls.h).
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

/// IANA-assigned VXLAN port (RFC 7348 section 5).
const VXLAN_PORT: u16 = 4789;
/// The outer source port range RFC 7348 section 5 recommends (the IANA
/// dynamic range), which the configuration's default must be.
const SOURCE_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;
/// What encapsulation adds: outer Ethernet, IPv4, UDP and VXLAN headers.
const ENCAP_LEN: usize = ETHERNET_LEN + IPV4_LEN + UDP_LEN + VXLAN_LEN;
/// End of the outer UDP header in a VXLAN frame.
const UDP_END: usize = ETHERNET_LEN + IPV4_LEN + UDP_LEN;
/// The fixture's underlay MTU (the veth default) and the overlay MTU the
/// datapath must announce in ICMP "too big" answers: 50 bytes less.
const UNDERLAY_MTU: usize = 1500;
const OVERLAY_MTU: usize = UNDERLAY_MTU - ENCAP_LEN;

/// Tenant A's VNI: most of the fixture.
const VNI: u32 = 100;
/// Tenant B's VNI, which reuses some of tenant A's addresses.
const TENANT_B_VNI: u32 = 200;
const UNKNOWN_VNI: u32 = 300;

const UNDERLAY: &str = "ul0";
/// The far end of the underlay veth: what leaves `ul0` arrives here.
const UNDERLAY_PEER: &str = "ul0peer";
/// Endpoint ports: (host side, where the endpoint program runs; container side).
const PORTS: [(&str, &str); 3] = [("p1", "q1"), ("p2", "q2"), ("p3", "q3")];
/// Where the fixture listens for the frames the datapath really sends.
const CAPTURED: [&str; 4] = ["q1", "q2", "q3", UNDERLAY_PEER];

const NEAR_VTEP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const FAR_VTEP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// A peer that carries VNI 100 without listing an endpoint in it.
const THIRD_VTEP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 3);
/// A peer that carries only tenant B's VNI.
const TENANT_B_VTEP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 4);
/// A peer of VNI 100 whose underlay neighbour is not resolved.
const UNRESOLVED_VTEP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 5);
const STRANGER_VTEP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 99);
const OTHER_UNDERLAY_HOST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 77);
const NEAR_UNDERLAY_MAC: Mac = Mac([0x02, 0xaa, 0xaa, 0xaa, 0xaa, 0x01]);
const FAR_UNDERLAY_MAC: Mac = Mac([0x02, 0xaa, 0xaa, 0xaa, 0xaa, 0x02]);
const THIRD_UNDERLAY_MAC: Mac = Mac([0x02, 0xaa, 0xaa, 0xaa, 0xaa, 0x03]);
const TENANT_B_UNDERLAY_MAC: Mac = Mac([0x02, 0xaa, 0xaa, 0xaa, 0xaa, 0x04]);

/// A container: the host-side port it hangs off (on its own node), its
/// addresses and its VNI.
#[derive(Clone, Copy, Debug)]
struct Endpoint {
    port: &'static str,
    mac: Mac,
    ip: Ipv4Addr,
    ipv6: Ipv6Addr,
    vni: u32,
}

const NEAR_1: Endpoint = Endpoint {
    port: "p1",
    mac: Mac([2, 0, 0, 0, 1, 1]),
    ip: Ipv4Addr::new(10, 10, 0, 1),
    ipv6: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1),
    vni: VNI,
};
const NEAR_2: Endpoint = Endpoint {
    port: "p2",
    mac: Mac([2, 0, 0, 0, 1, 2]),
    ip: Ipv4Addr::new(10, 10, 0, 3),
    ipv6: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 3),
    vni: VNI,
};
const FAR_1: Endpoint = Endpoint {
    port: "p1",
    mac: Mac([2, 0, 0, 0, 2, 1]),
    ip: Ipv4Addr::new(10, 10, 0, 2),
    ipv6: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2),
    vni: VNI,
};
/// Tenant B's container on the near node: the very MAC and addresses of
/// tenant A's NEAR_1, in another VNI (allowed: they are unique per VNI).
const TENANT_B_1: Endpoint = Endpoint { port: "p3", vni: TENANT_B_VNI, ..NEAR_1 };
/// Tenant B's second container on the near node (same port), with a MAC
/// and addresses that only VNI 200 has.
const TENANT_B_2: Endpoint = Endpoint {
    port: "p3",
    mac: Mac([2, 0, 0, 0, 0x0b, 2]),
    ip: Ipv4Addr::new(10, 10, 0, 20),
    ipv6: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x20),
    vni: TENANT_B_VNI,
};
/// Tenant B's container behind the tenant-B peer.
const TENANT_B_REMOTE: Endpoint = Endpoint {
    port: "p1",
    mac: Mac([2, 0, 0, 0, 0x0b, 9]),
    ip: Ipv4Addr::new(10, 10, 0, 21),
    ipv6: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x21),
    vni: TENANT_B_VNI,
};
/// A container on the far node that neither configuration lists.
const UNLISTED_MAC: Mac = Mac([2, 0, 0, 0, 2, 9]);
const UNLISTED_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 9);
const UNKNOWN_MAC: Mac = Mac([2, 0, 0, 0, 9, 9]);
const UNKNOWN_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 77);
const UNKNOWN_IPV6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x77);

/// Another node as a node's configuration lists it.
struct PeerSpec {
    name: &'static str,
    vtep: Ipv4Addr,
    /// Its underlay MAC, installed as a permanent neighbour entry; `None`
    /// leaves the neighbour unresolved.
    underlay_mac: Option<Mac>,
    endpoints: &'static [Endpoint],
    /// VNIs it carries without listing an endpoint in them (`vnis = [...]`).
    extra_vnis: &'static [u32],
}

/// One node of the overlay: its VTEP, its containers, its peers, and the
/// flood limits of its VNIs.
struct NodeSpec {
    role: &'static str,
    vtep: Ipv4Addr,
    underlay_mac: Mac,
    local: &'static [Endpoint],
    /// The first is "the" peer that [`Node::tunnel`] leads to.
    peers: &'static [PeerSpec],
    /// `[[vnis]]` entries: (VNI, flood limit).
    flood_limits: &'static [(u32, u32)],
}

/// The node most tests run on: two tenant-A containers (p1, p2), two
/// tenant-B ones (p3), and four peers: the far node and a third node that
/// carry VNI 100, a node that carries only VNI 200, and a VNI-100 node whose
/// underlay neighbour is unresolved.
const NEAR: NodeSpec = NodeSpec {
    role: "near",
    vtep: NEAR_VTEP,
    underlay_mac: NEAR_UNDERLAY_MAC,
    local: &[NEAR_1, NEAR_2, TENANT_B_1, TENANT_B_2],
    peers: &[
        PeerSpec { name: "far", vtep: FAR_VTEP, underlay_mac: Some(FAR_UNDERLAY_MAC), endpoints: &[FAR_1], extra_vnis: &[] },
        PeerSpec { name: "third", vtep: THIRD_VTEP, underlay_mac: Some(THIRD_UNDERLAY_MAC), endpoints: &[], extra_vnis: &[VNI] },
        PeerSpec {
            name: "tenant-b-host",
            vtep: TENANT_B_VTEP,
            underlay_mac: Some(TENANT_B_UNDERLAY_MAC),
            endpoints: &[TENANT_B_REMOTE],
            extra_vnis: &[],
        },
        PeerSpec { name: "unresolved", vtep: UNRESOLVED_VTEP, underlay_mac: None, endpoints: &[], extra_vnis: &[VNI] },
    ],
    flood_limits: &[],
};

/// The near node with a flood limit of one copy in VNI 100 and none in VNI 200.
const LIMITED: NodeSpec = NodeSpec { role: "limited", flood_limits: &[(VNI, 1), (TENANT_B_VNI, 0)], ..NEAR };

const FAR: NodeSpec = NodeSpec {
    role: "far",
    vtep: FAR_VTEP,
    underlay_mac: FAR_UNDERLAY_MAC,
    local: &[FAR_1],
    peers: &[PeerSpec {
        name: "near",
        vtep: NEAR_VTEP,
        underlay_mac: Some(NEAR_UNDERLAY_MAC),
        endpoints: &[NEAR_1, NEAR_2],
        extra_vnis: &[],
    }],
    flood_limits: &[],
};

impl NodeSpec {
    /// The node's configuration file (source port range and TTL left at
    /// their defaults, which the encapsulation checks hold to the RFC).
    fn config_toml(&self) -> String {
        let mut text = format!(
            "[node]\nname = \"{}\"\nunderlay_interface = \"{UNDERLAY}\"\nvtep_address = \"{}\"\nvxlan_port = {VXLAN_PORT}\n",
            self.role, self.vtep
        );
        for Endpoint { port, mac, ip, ipv6, vni } in self.local {
            write!(text, "\n[[endpoints]]\ninterface = \"{port}\"\nmac = \"{mac}\"\nip = \"{ip}\"\nipv6 = \"{ipv6}\"\nvni = {vni}\n")
                .unwrap();
        }
        for peer in self.peers {
            write!(text, "\n[[peers]]\nname = \"{}\"\nvtep_address = \"{}\"\nvnis = {:?}\n", peer.name, peer.vtep, peer.extra_vnis)
                .unwrap();
            for Endpoint { mac, ip, ipv6, vni, .. } in peer.endpoints {
                write!(text, "\n  [[peers.endpoints]]\n  mac = \"{mac}\"\n  ip = \"{ip}\"\n  ipv6 = \"{ipv6}\"\n  vni = {vni}\n").unwrap();
            }
        }
        for (vni, limit) in self.flood_limits {
            write!(text, "\n[[vnis]]\nvni = {vni}\nflood_limit = {limit}\n").unwrap();
        }
        text
    }
}

/// Namespace scope of this file: namespaces are `ovl-pkt-<pid>-<role><n>`.
const SCOPE: &str = "pkt";
/// Makes namespace names unique within the process, so tests may also run in parallel.
static NEXT_NODE: AtomicU32 = AtomicU32::new(0);

/// A node: its namespace and topology, a datapath loaded (not attached)
/// with the node's configuration applied, and capture sockets.
struct Node {
    spec: &'static NodeSpec,
    datapath: Datapath,
    /// The underlay device's MAC as the kernel reports it.
    underlay_mac: Mac,
    ifindex: HashMap<&'static str, u32>,
    captures: Captures,
    // Last, so the namespace goes after everything that lives in it.
    netns: Netns,
}

/// Every device the fixture creates in a node's namespace.
fn devices() -> impl Iterator<Item = &'static str> {
    [UNDERLAY, UNDERLAY_PEER].into_iter().chain(PORTS.iter().flat_map(|&(port, container)| [port, container]))
}

/// The container side of the veth whose host side is `port`.
fn container_side(port: &str) -> &'static str {
    PORTS.iter().find(|(host, _)| *host == port).map(|&(_, container)| container).unwrap_or_else(|| panic!("no port {port}"))
}

impl Node {
    fn start(spec: &'static NodeSpec) -> anyhow::Result<Node> {
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
    fn tunnel(&self) -> Tunnel {
        self.tunnel_to(self.spec.peers[0].vtep, VNI)
    }

    /// What this node's encapsulation toward the peer at `vtep` in `vni` must write.
    fn tunnel_to(&self, vtep: Ipv4Addr, vni: u32) -> Tunnel {
        let peer = self.spec.peers.iter().find(|peer| peer.vtep == vtep);
        let dst_mac = peer
            .and_then(|peer| peer.underlay_mac)
            .unwrap_or_else(|| panic!("the {} node has no resolved peer {vtep}", self.spec.role));
        Tunnel { src_mac: self.underlay_mac, dst_mac, src_vtep: self.spec.vtep, dst_vtep: vtep, vni }
    }

    fn ifindex_of(&self, device: &str) -> anyhow::Result<u32> {
        self.ifindex.get(device).copied().with_context(|| format!("the fixture has no device {device}"))
    }

    /// Applies the configuration `toml` over what the datapath holds, as
    /// the agent's reload does (counter slots kept from the applied state).
    fn reconfigure(&mut self, toml: &str) -> anyhow::Result<()> {
        let _inside = InsideNetns::enter(&self.netns)?;
        let path = Path::new("packets.toml");
        let resolved = ResolvedConfig::resolve(Config::parse(toml, path)?, path)?;
        let desired = MapState::from_config(&resolved, self.datapath.applied())?;
        self.datapath.apply(&desired)?;
        Ok(())
    }

    /// Runs `frame` through `hook` once; returns the node's counters and
    /// each VNI's and peer's that moved meanwhile.
    fn run_counting_vnis_peers(&self, hook: Hook, frame: &[u8]) -> anyhow::Result<(Counters, VniPeerCounters)> {
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
    fn run(&self, hook: Hook, frame: &[u8], repeat: u32) -> anyhow::Result<(TestRunOutcome, Counters)> {
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
struct PinnedToOneCpu {
    previous: libc::cpu_set_t,
}

impl PinnedToOneCpu {
    fn here() -> anyhow::Result<PinnedToOneCpu> {
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
type Arrived = BTreeMap<&'static str, Vec<Vec<u8>>>;

/// Raw packet sockets (AF_PACKET, every protocol, non-blocking) bound to
/// each of [`CAPTURED`]: what the datapath's clones really sent.
struct Captures {
    sockets: Vec<(&'static str, OwnedFd)>,
}

impl Captures {
    /// How long a capture waits for the frames a row expects.
    const DEADLINE: Duration = Duration::from_secs(1);
    /// How long no further frame may come before a capture ends. Clones are
    /// delivered before the test run returns (the softirq runs as the
    /// transmit path re-enables bottom halves); this is slack for a busy host.
    const QUIET_MS: i32 = 30;

    /// Opens the sockets; the calling thread must be in the node's namespace.
    fn open(ifindex: &HashMap<&'static str, u32>) -> anyhow::Result<Captures> {
        let all_protocols = (libc::ETH_P_ALL as u16).to_be();
        let mut sockets = Vec::new();
        for device in CAPTURED {
            // SAFETY: plain syscall; the descriptor is owned at once.
            let fd = unsafe {
                libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, all_protocols.into())
            };
            if fd < 0 {
                return Err(io::Error::last_os_error()).with_context(|| format!("opening a packet socket for {device}"));
            }
            // SAFETY: fd is a fresh descriptor nobody else owns.
            let socket = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: all-zero is a valid sockaddr_ll.
            let mut address: libc::sockaddr_ll = unsafe { mem::zeroed() };
            address.sll_family = libc::AF_PACKET as u16;
            address.sll_protocol = all_protocols;
            address.sll_ifindex = ifindex[device] as i32;
            // SAFETY: address is a valid sockaddr_ll of the given size.
            let bound = unsafe {
                libc::bind(
                    socket.as_raw_fd(),
                    (&raw const address).cast(),
                    mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if bound != 0 {
                return Err(io::Error::last_os_error()).with_context(|| format!("binding a packet socket to {device}"));
            }
            sockets.push((device, socket));
        }
        Ok(Captures { sockets })
    }

    /// Discards whatever is queued (frames from before this run).
    fn drain(&self) -> anyhow::Result<()> {
        for (device, socket) in &self.sockets {
            receive_queued(socket).with_context(|| format!("draining the capture on {device}"))?;
        }
        Ok(())
    }

    /// Collects what arrives until `expected` frames have come (or the
    /// deadline passed) and then nothing more for [`Captures::QUIET_MS`].
    fn collect(&self, expected: usize) -> anyhow::Result<Arrived> {
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

/// Every frame queued on a packet socket that the device received (frames
/// it sent itself are skipped).
fn receive_queued(socket: &OwnedFd) -> io::Result<Vec<Vec<u8>>> {
    let mut frames = Vec::new();
    let mut buffer = vec![0u8; 65536];
    loop {
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut from: libc::sockaddr_ll = unsafe { mem::zeroed() };
        let mut from_len = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: buffer and from are valid for the sizes given.
        let received = unsafe {
            libc::recvfrom(
                socket.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                libc::MSG_DONTWAIT,
                (&raw mut from).cast(),
                &mut from_len,
            )
        };
        if received < 0 {
            let error = io::Error::last_os_error();
            return if error.kind() == io::ErrorKind::WouldBlock { Ok(frames) } else { Err(error) };
        }
        if from.sll_pkttype != libc::PACKET_OUTGOING {
            frames.push(buffer[..received as usize].to_vec());
        }
    }
}

/// Where a frame is run: the XDP program of the underlay, the TC program
/// as if the frame arrived on the named port, or the underlay's TC flood
/// program (as if the frame arrived on `ul0` after XDP passed it up), or
/// the TC decapsulation program that replaces both (`--decap tc`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hook {
    Decap,
    Port(&'static str),
    UnderlayFlood,
    DecapTc,
}

impl Hook {
    fn direction(self) -> Direction {
        match self {
            Hook::Decap | Hook::UnderlayFlood | Hook::DecapTc => Direction::FROM_UNDERLAY,
            Hook::Port(_) => Direction::FROM_ENDPOINT,
        }
    }

    /// The decapsulation hooks' actions: XDP's for the XDP program, the
    /// TC equivalents for the TC one.
    fn delivered(self) -> u32 {
        if self == Hook::DecapTc { TC_ACT_REDIRECT } else { XDP_REDIRECT }
    }
    fn dropped(self) -> u32 {
        if self == Hook::DecapTc { TC_ACT_SHOT } else { XDP_DROP }
    }
    fn passed(self) -> u32 {
        if self == Hook::DecapTc { TC_ACT_OK } else { XDP_PASS }
    }

    fn action_name(self, action: u32) -> String {
        let name = match (self, action) {
            (Hook::Decap, XDP_DROP) => "XDP_DROP",
            (Hook::Decap, XDP_PASS) => "XDP_PASS",
            (Hook::Decap, XDP_REDIRECT) => "XDP_REDIRECT",
            (Hook::Decap, 0) => "XDP_ABORTED",
            (Hook::Port(_) | Hook::UnderlayFlood | Hook::DecapTc, TC_ACT_SHOT) => "TC_ACT_SHOT",
            (Hook::Port(_) | Hook::UnderlayFlood | Hook::DecapTc, TC_ACT_REDIRECT) => "TC_ACT_REDIRECT",
            (Hook::Port(_) | Hook::UnderlayFlood | Hook::DecapTc, TC_ACT_OK) => "TC_ACT_OK",
            _ => "unexpected",
        };
        format!("{name} ({action})")
    }
}

/// Looks at (input, output) and lists what is wrong.
type OutputCheck = dyn Fn(&[u8], &[u8]) -> Vec<String>;

/// What the output frame must be.
enum Output {
    /// The input, untouched.
    Unchanged,
    /// Exactly this frame.
    Frame(Vec<u8>),
    /// A check of (input, output) that lists what is wrong.
    Check(Box<OutputCheck>),
    /// Dropped: the bytes left behind do not matter.
    Ignored,
}

/// A frame the datapath must really have sent during a run, as a capture
/// device saw it.
enum Arrival {
    /// Exactly this frame, on this container side of a port (`q1`...).
    Frame(&'static str, Vec<u8>),
    /// This inner frame in VXLAN along this tunnel, on the underlay's far end.
    Vxlan(Tunnel, Vec<u8>),
}

impl Arrival {
    fn device(&self) -> &'static str {
        match self {
            Arrival::Frame(device, _) => device,
            Arrival::Vxlan(..) => UNDERLAY_PEER,
        }
    }
}

/// `frame`, unchanged, in the container behind host-side `port`.
fn unchanged_at(port: &str, frame: &[u8]) -> Arrival {
    Arrival::Frame(container_side(port), frame.to_vec())
}

/// One row of a table.
struct Case {
    name: String,
    hook: Hook,
    input: Vec<u8>,
    action: u32,
    /// `None`: the program counts nothing (the frame is left to others).
    reason: Option<Reason>,
    output: Output,
    /// Exactly what must arrive on the capture devices.
    arrivals: Vec<Arrival>,
}

impl Case {
    /// A case for `input` run through `hook`; its expectations follow.
    fn given(name: impl Into<String>, hook: Hook, input: Vec<u8>) -> Given {
        Given { name: name.into(), hook, input }
    }

    /// These frames, and no others, must arrive on the capture devices.
    fn arriving(self, arrivals: Vec<Arrival>) -> Case {
        Case { arrivals, ..self }
    }
}

/// A case before its expectations.
struct Given {
    name: String,
    hook: Hook,
    input: Vec<u8>,
}

impl Given {
    /// `action`, `reason` counted once, `output`; nothing sent anywhere.
    fn expect(self, action: u32, reason: Reason, output: Output) -> Case {
        Case { name: self.name, hook: self.hook, input: self.input, action, reason: Some(reason), output, arrivals: Vec::new() }
    }

    /// `action` and `output`, with no counter moving and nothing sent.
    fn expect_uncounted(self, action: u32, output: Output) -> Case {
        Case { reason: None, ..self.expect(action, Reason::PASSED, output) }
    }
}

/// What a run left: the output frame and what the capture devices saw.
struct Ran {
    frame: Vec<u8>,
    arrived: Arrived,
}

/// Runs one case. `Ok` with the output when everything matched, otherwise
/// `Err` with what was expected and seen, and both frames in hex.
fn run_case(node: &Node, case: &Case) -> Result<Ran, String> {
    let failed = |error: anyhow::Error| format!("{}: the test run failed: {error:#}", case.name);
    node.captures.drain().map_err(failed)?;
    let (outcome, counted) = node.run(case.hook, &case.input, 1).map_err(failed)?;
    let arrived = node.captures.collect(case.arrivals.len()).map_err(failed)?;
    let mut wrong = Vec::new();
    if outcome.action != case.action {
        wrong.push(format!(
            "action: expected {}, seen {}",
            case.hook.action_name(case.action),
            case.hook.action_name(outcome.action)
        ));
    }
    let expected_counts: Vec<CounterRow> = case
        .reason
        .map(|reason| CounterRow { direction: case.hook.direction(), reason, packets: 1, bytes: case.input.len() as u64 })
        .into_iter()
        .collect();
    if counted.rows != expected_counts {
        let expected = match expected_counts.first() {
            Some(row) => format!("only {}", describe_row(row)),
            None => "nothing".to_owned(),
        };
        wrong.push(format!("counters: expected {expected}, counted {}", describe_counts(&counted)));
    }
    match &case.output {
        Output::Unchanged => wrong.extend(frames::difference(&case.input, &outcome.frame).map(|d| format!("output should be the input unchanged: {d}"))),
        Output::Frame(expected) => wrong.extend(frames::difference(expected, &outcome.frame).map(|d| format!("output: {d}"))),
        Output::Check(check) => wrong.extend(check(&case.input, &outcome.frame)),
        Output::Ignored => {}
    }
    wrong.extend(check_arrivals(&case.arrivals, &arrived));
    if wrong.is_empty() {
        return Ok(Ran { frame: outcome.frame, arrived });
    }
    // Headers are what matter here; a frame difference above shows whole frames.
    const DUMP_LIMIT: usize = 128;
    Err(format!(
        "{}:\n  - {}\n  input ({} bytes):\n{}\n  output ({} bytes):\n{}",
        case.name,
        wrong.join("\n  - "),
        case.input.len(),
        frames::hex_head(&case.input, DUMP_LIMIT),
        outcome.frame.len(),
        frames::hex_head(&outcome.frame, DUMP_LIMIT)
    ))
}

/// Runs every case, then fails listing all that did not match.
fn run_table(node: &Node, cases: &[Case]) {
    let results: Vec<Result<Ran, String>> = cases.iter().map(|case| run_case(node, case)).collect();
    report(cases.iter().map(|case| case.name.as_str()).zip(&results));
}

/// Prints `ok`/`FAIL` per case and panics with every failure.
fn report<'a, T: 'a>(results: impl IntoIterator<Item = (&'a str, &'a Result<T, String>)>) {
    let mut failures = Vec::new();
    let mut total = 0;
    for (name, result) in results {
        total += 1;
        println!("{} {name}", if result.is_ok() { "ok  " } else { "FAIL" });
        if let Err(failure) = result {
            failures.push(failure.as_str());
        }
    }
    assert!(failures.is_empty(), "{} of {total} cases failed:\n\n{}\n", failures.len(), failures.join("\n\n"));
}

fn reason_name(reason: Reason) -> String {
    format!("{} ({})", reason.info().map_or("unknown", |info| info.name), reason.0)
}

fn describe_row(row: &CounterRow) -> String {
    format!("{} {} +{} ({} bytes)", row.direction.name(), reason_name(row.reason), row.packets, row.bytes)
}

fn describe_counts(counts: &Counters) -> String {
    if counts.rows.is_empty() {
        return "nothing".to_owned();
    }
    counts.rows.iter().map(describe_row).collect::<Vec<_>>().join(", ")
}

/// A captured frame in a few words: its VXLAN destination and VNI, if it is VXLAN.
fn describe_frame(frame: &[u8]) -> String {
    match VxlanOverIpv4::parse(frame) {
        Some(outer) if outer.ethertype == ETHERTYPE_IPV4 && outer.ip_protocol == IPPROTO_UDP && outer.udp_dst_port == VXLAN_PORT => {
            format!("{} bytes, VXLAN to {} in VNI {}", frame.len(), outer.ip_dst, outer.vxlan_vni)
        }
        _ => format!("{} bytes", frame.len()),
    }
}

/// Lists how what arrived differs from `expected`: every expected frame
/// must have arrived once, on its device, and nothing else anywhere.
fn check_arrivals(expected: &[Arrival], arrived: &Arrived) -> Vec<String> {
    const DUMP_LIMIT: usize = 96;
    let mut wrong = Vec::new();
    for device in CAPTURED {
        let mut unmatched: Vec<&[u8]> = arrived.get(device).into_iter().flatten().map(Vec::as_slice).collect();
        for arrival in expected.iter().filter(|arrival| arrival.device() == device) {
            match arrival {
                Arrival::Frame(_, frame) => match unmatched.iter().position(|seen| seen == frame) {
                    Some(at) => {
                        unmatched.remove(at);
                    }
                    None => wrong.push(format!(
                        "{device}: expected the frame below, which did not arrive:\n{}",
                        frames::hex_head(frame, DUMP_LIMIT)
                    )),
                },
                Arrival::Vxlan(tunnel, inner) => {
                    let to_this_vtep = |seen: &&[u8]| VxlanOverIpv4::parse(seen).is_some_and(|outer| outer.ip_dst == tunnel.dst_vtep);
                    match unmatched.iter().position(to_this_vtep) {
                        Some(at) => {
                            let seen = unmatched.remove(at);
                            wrong.extend(
                                check_encapsulation(tunnel, inner, seen)
                                    .into_iter()
                                    .map(|problem| format!("{device}, copy to {}: {problem}", tunnel.dst_vtep)),
                            );
                        }
                        None => wrong.push(format!(
                            "{device}: expected a VXLAN copy to {} in VNI {}, none arrived",
                            tunnel.dst_vtep, tunnel.vni
                        )),
                    }
                }
            }
        }
        for extra in unmatched {
            wrong.push(format!(
                "{device}: unexpected frame ({}):\n{}",
                describe_frame(extra),
                frames::hex_head(extra, DUMP_LIMIT)
            ));
        }
    }
    wrong
}

/// The outer headers one node's encapsulation toward a peer must write.
#[derive(Clone, Copy, Debug)]
struct Tunnel {
    src_mac: Mac,
    dst_mac: Mac,
    src_vtep: Ipv4Addr,
    dst_vtep: Ipv4Addr,
    vni: u32,
}

/// Output check: `input` encapsulated by `tunnel`, every outer field right.
fn encapsulated(tunnel: Tunnel) -> Output {
    Output::Check(Box::new(move |input, output| check_encapsulation(&tunnel, input, output)))
}

/// Field-by-field comparison that collects every mismatch.
#[derive(Default)]
struct Mismatches(Vec<String>);

impl Mismatches {
    fn check<T: PartialEq + fmt::Debug>(&mut self, field: &str, expected: T, seen: T) {
        if expected != seen {
            self.0.push(format!("{field}: expected {expected:?}, seen {seen:?}"));
        }
    }

    fn check_hex<T: PartialEq + fmt::LowerHex>(&mut self, field: &str, expected: T, seen: T) {
        if expected != seen {
            self.0.push(format!("{field}: expected {expected:#x}, seen {seen:#x}"));
        }
    }
}

/// Every outer field of RFC 7348 section 5's frame format, as this node
/// must write them, and the inner frame byte for byte. (The IPv4
/// identification counts packets; `outer_ipv4_ids_count_packets` checks it.)
fn check_encapsulation(tunnel: &Tunnel, input: &[u8], output: &[u8]) -> Vec<String> {
    let mut wrong = Mismatches::default();
    wrong.check("frame length (input + 50)", input.len() + ENCAP_LEN, output.len());
    let Some(outer) = VxlanOverIpv4::parse(output) else {
        wrong.0.push(format!("output of {} bytes is shorter than the {ENCAP_LEN} bytes of outer headers", output.len()));
        return wrong.0;
    };
    wrong.check("outer Ethernet destination (the peer VTEP's neighbour entry)", tunnel.dst_mac, outer.eth_dst);
    wrong.check("outer Ethernet source (the underlay device)", tunnel.src_mac, outer.eth_src);
    wrong.check_hex("outer EtherType", ETHERTYPE_IPV4, outer.ethertype);
    wrong.check_hex("IPv4 version/IHL", 0x45, outer.ip_version_ihl);
    wrong.check_hex("IPv4 TOS", 0, outer.ip_tos);
    wrong.check("IPv4 total length (frame length - 14)", output.len() - ETHERNET_LEN, usize::from(outer.ip_total_length));
    wrong.check_hex("IPv4 flags/fragment offset (DF only: RFC 7348 section 4.3)", 0x4000, outer.ip_flags_fragment);
    wrong.check("IPv4 TTL", 64, outer.ip_ttl);
    wrong.check("IPv4 protocol", IPPROTO_UDP, outer.ip_protocol);
    wrong.check_hex("IPv4 header checksum (recomputed)", outer.ip_checksum_computed, outer.ip_checksum);
    wrong.check("IPv4 source (this VTEP)", tunnel.src_vtep, outer.ip_src);
    wrong.check("IPv4 destination (the peer VTEP)", tunnel.dst_vtep, outer.ip_dst);
    if !SOURCE_PORTS.contains(&outer.udp_src_port) {
        wrong.0.push(format!(
            "UDP source port: expected in {SOURCE_PORTS:?} (RFC 7348 section 5), seen {}",
            outer.udp_src_port
        ));
    }
    wrong.check("UDP destination port", VXLAN_PORT, outer.udp_dst_port);
    wrong.check("UDP length (IPv4 total length - 20)", output.len() - ETHERNET_LEN - IPV4_LEN, usize::from(outer.udp_length));
    wrong.check_hex("UDP checksum (zero: RFC 7348 section 5)", 0, outer.udp_checksum);
    wrong.check_hex("VXLAN flags (the I flag only)", Vxlan::FLAG_VNI_VALID, outer.vxlan_flags);
    wrong.check("VXLAN reserved bits after the flags", [0u8; 3], outer.vxlan_reserved1);
    wrong.check("VXLAN VNI", tunnel.vni, outer.vxlan_vni);
    wrong.check("VXLAN reserved byte after the VNI", 0, outer.vxlan_reserved2);
    if let Some(difference) = frames::difference(input, outer.inner) {
        wrong.0.push(format!("inner frame should be the input byte for byte: {difference}"));
    }
    wrong.0
}

// Frames.

/// Payload bytes that differ from their neighbours, so shifts show.
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| i as u8).collect()
}

/// An ICMP echo request between two containers, as `ping` sends it.
fn ping(from: Endpoint, to: Endpoint) -> Vec<u8> {
    ping_to(from, to.mac, to.ip)
}

fn ping_to(from: Endpoint, dst_mac: Mac, dst_ip: Ipv4Addr) -> Vec<u8> {
    let icmp = frames::icmp_echo_request(0x4242, 1, &payload(56));
    Ethernet { dst: dst_mac, src: from.mac, ethertype: ETHERTYPE_IPV4 }
        .frame(&Ipv4::new(IPPROTO_ICMP, from.ip, dst_ip).packet(&icmp))
}

/// A UDP datagram from a container, `payload_len` bytes of payload.
fn udp_from(from: Endpoint, dst_mac: Mac, dst_ip: Ipv4Addr, udp: Udp, payload_len: usize) -> Vec<u8> {
    Ethernet { dst: dst_mac, src: from.mac, ethertype: ETHERTYPE_IPV4 }
        .frame(&Ipv4::new(IPPROTO_UDP, from.ip, dst_ip).packet(&udp.datagram(&payload(payload_len))))
}

/// Some UDP flow between containers.
const FLOW: Udp = Udp { src_port: 40000, dst_port: 5201 };

/// A UDP datagram between containers whose IPv4 packet is `ip_length` bytes.
fn udp_of_ip_length(from: Endpoint, to: Endpoint, ip_length: usize) -> Vec<u8> {
    udp_from(from, to.mac, to.ip, FLOW, ip_length - IPV4_LEN - UDP_LEN)
}

/// `ip` (with its own addresses) carrying `payload`, from `from`'s MAC to `to`'s.
fn ipv4_frame(from: Endpoint, to: Endpoint, ip: &Ipv4, payload: &[u8]) -> Vec<u8> {
    Ethernet { dst: to.mac, src: from.mac, ethertype: ETHERTYPE_IPV4 }.frame(&ip.packet(payload))
}

/// IPv6 between two containers' configured addresses, carrying `payload`
/// (an ICMPv6 message gets its checksum).
fn ipv6_frame(from: Endpoint, to: Endpoint, next_header: u8, payload: &[u8]) -> Vec<u8> {
    let ip = Ipv6 { next_header, hop_limit: 64, src: from.ipv6, dst: to.ipv6 };
    let packet = if next_header == IPPROTO_ICMPV6 { ip.icmpv6_packet(payload) } else { ip.packet(payload) };
    Ethernet { dst: to.mac, src: from.mac, ethertype: ETHERTYPE_IPV6 }.frame(&packet)
}

/// UDP over IPv6 between containers whose IPv6 packet is `ip_length` bytes.
fn udp6_of_ip_length(from: Endpoint, to: Endpoint, ip_length: usize) -> Vec<u8> {
    ipv6_frame(from, to, IPPROTO_UDP, &FLOW.datagram(&payload(ip_length - IPV6_LEN - UDP_LEN)))
}

/// UDP over IPv6 between containers (link-local addresses).
fn udp6_from(from: Endpoint, dst_mac: Mac, dst_ip: Ipv6Addr, udp: Udp) -> Vec<u8> {
    let src_ip = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, u16::from(from.mac.0[5]));
    let ip = Ipv6 { next_header: IPPROTO_UDP, hop_limit: 255, src: src_ip, dst: dst_ip };
    Ethernet { dst: dst_mac, src: from.mac, ethertype: ETHERTYPE_IPV6 }.frame(&ip.packet(&udp.datagram(&payload(32))))
}

/// A DHCP discover: IPv4 to 255.255.255.255, Ethernet broadcast.
fn dhcp_discover(from: Endpoint) -> Vec<u8> {
    udp_from(from, BROADCAST, Ipv4Addr::BROADCAST, Udp { src_port: 68, dst_port: 67 }, 240)
}

/// An mDNS query over IPv4: to 224.0.0.251 on 01:00:5e:00:00:fb (RFC 1112 section 6.4).
fn mdns4(from: Endpoint) -> Vec<u8> {
    let mdns = Udp { src_port: 5353, dst_port: 5353 };
    udp_from(from, Mac([0x01, 0x00, 0x5e, 0, 0, 0xfb]), Ipv4Addr::new(224, 0, 0, 251), mdns, 32)
}

/// An mDNS query over IPv6: to ff02::fb on 33:33:00:00:00:fb.
fn mdns6(from: Endpoint) -> Vec<u8> {
    let group = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0xfb);
    udp6_from(from, frames::ipv6_multicast_mac(group), group, Udp { src_port: 5353, dst_port: 5353 })
}

/// A router solicitation (RFC 4861 section 4.1) to all routers, ff02::2.
fn router_solicitation(from: Endpoint) -> Vec<u8> {
    let all_routers = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
    let ip = Ipv6 { next_header: IPPROTO_ICMPV6, hop_limit: 255, src: from.ipv6, dst: all_routers };
    let message = frames::icmpv6_message(ND_ROUTER_SOLICITATION, 0, &[0; 4]);
    Ethernet { dst: frames::ipv6_multicast_mac(all_routers), src: from.mac, ethertype: ETHERTYPE_IPV6 }.frame(&ip.icmpv6_packet(&message))
}

/// A broadcast ARP request from a container: "who has `target`?".
fn arp_request(from: Endpoint, target: Ipv4Addr) -> Vec<u8> {
    Arp::request(from.mac, from.ip, target).frame(BROADCAST)
}

/// The ARP reply the datapath answers `asker`'s request for `owner`'s address with.
fn arp_answer(owner: Endpoint, asker: Endpoint) -> Vec<u8> {
    Arp::reply(owner.mac, owner.ip, asker.mac, asker.ip).frame(asker.mac)
}

/// A ping from `from` to `to` with an 802.1Q or 802.1ad tag (`tpid`) for VLAN 10.
fn vlan_tagged_ping(tpid: u16, from: Endpoint, dst_mac: Mac, to: Endpoint) -> Vec<u8> {
    let untagged = ping_to(from, dst_mac, to.ip);
    let tagged = frames::vlan_tagged(10, ETHERTYPE_IPV4, &untagged[ETHERNET_LEN..]);
    Ethernet { dst: dst_mac, src: from.mac, ethertype: tpid }.frame(&tagged)
}

/// A neighbour solicitation from container `from` for `target`, to the
/// target's solicited-node group (RFC 4861 section 7.2.2).
fn solicitation(from: Endpoint, target: Ipv6Addr) -> Vec<u8> {
    let message = frames::neighbour_solicitation(target, Some(from.mac));
    solicitation_with(from, from.ipv6, 255, target, &message)
}

/// A neighbour solicitation from `from`'s MAC with the given IPv6 source,
/// hop limit and ICMPv6 message.
fn solicitation_with(from: Endpoint, source: Ipv6Addr, hop_limit: u8, target: Ipv6Addr, message: &[u8]) -> Vec<u8> {
    let group = frames::solicited_node(target);
    let ip = Ipv6 { next_header: IPPROTO_ICMPV6, hop_limit, src: source, dst: group };
    Ethernet { dst: frames::ipv6_multicast_mac(group), src: from.mac, ethertype: ETHERTYPE_IPV6 }.frame(&ip.icmpv6_packet(message))
}

/// The neighbour advertisement the datapath answers `asker`'s solicitation
/// for `owner`'s address with (RFC 4861 section 7.2.4): solicited and
/// override, not a router, with the owner's MAC as target link-layer address.
fn advertisement(owner: Endpoint, asker: Endpoint) -> Vec<u8> {
    let message = frames::neighbour_advertisement(NA_FLAG_SOLICITED | NA_FLAG_OVERRIDE, owner.ipv6, Some(owner.mac));
    let ip = Ipv6 { next_header: IPPROTO_ICMPV6, hop_limit: 255, src: owner.ipv6, dst: asker.ipv6 };
    Ethernet { dst: asker.mac, src: owner.mac, ethertype: ETHERTYPE_IPV6 }.frame(&ip.icmpv6_packet(&message))
}

/// The ICMP "fragmentation needed" (RFC 792, RFC 1191 section 4) the
/// datapath sends `from` for its oversized IPv4 `original` to `to`: as if
/// from `to` (as the kernel's vxlan does, iptunnel_pmtud_build_icmp), TTL
/// 64, quoting the IPv4 header and the first 8 bytes of its payload.
fn fragmentation_needed(from: Endpoint, to: Endpoint, original: &[u8]) -> Vec<u8> {
    let quote = &original[ETHERNET_LEN..ETHERNET_LEN + IPV4_LEN + 8];
    let icmp = frames::icmp_fragmentation_needed(OVERLAY_MTU as u16, quote);
    let ip = Ipv4 { flags_fragment: 0, ..Ipv4::new(IPPROTO_ICMP, to.ip, from.ip) };
    Ethernet { dst: from.mac, src: to.mac, ethertype: ETHERTYPE_IPV4 }.frame(&ip.packet(&icmp))
}

/// The ICMPv6 "packet too big" (RFC 4443 section 3.2) the datapath sends
/// `from` for its oversized IPv6 `original` to `to`: as if from `to`, hop
/// limit 64, quoting the first 48 bytes (IPv6 header and 8 more).
fn packet_too_big(from: Endpoint, to: Endpoint, original: &[u8]) -> Vec<u8> {
    let mut body = (OVERLAY_MTU as u32).to_be_bytes().to_vec();
    body.extend_from_slice(&original[ETHERNET_LEN..ETHERNET_LEN + IPV6_LEN + 8]);
    ipv6_frame(to, from, IPPROTO_ICMPV6, &frames::icmpv6_message(ICMPV6_PACKET_TOO_BIG, 0, &body))
}

/// The outer IPv4 header of VXLAN from the far VTEP to the near one.
fn from_far_vtep() -> Ipv4 {
    Ipv4::new(IPPROTO_UDP, FAR_VTEP, NEAR_VTEP)
}

/// The outer UDP header of VXLAN (some flow's source port).
fn to_vxlan_port() -> Udp {
    Udp { src_port: 51234, dst_port: VXLAN_PORT }
}

/// A frame on the near node's underlay, from the far VTEP's device.
fn on_underlay(ethertype: u16, packet: &[u8]) -> Vec<u8> {
    Ethernet { dst: NEAR_UNDERLAY_MAC, src: FAR_UNDERLAY_MAC, ethertype }.frame(packet)
}

/// `inner` in `vxlan` in UDP to the VXLAN port in `ip`, on the near underlay.
fn vxlan_frame(ip: &Ipv4, vxlan: Vxlan, inner: &[u8]) -> Vec<u8> {
    on_underlay(ETHERTYPE_IPV4, &ip.packet(&to_vxlan_port().datagram(&vxlan.packet(inner))))
}

/// A well-formed VXLAN frame from the VTEP `source` to the near one, carrying `inner` in `vni`.
fn vxlan_from(source: Ipv4Addr, vni: u32, inner: &[u8]) -> Vec<u8> {
    vxlan_frame(&Ipv4::new(IPPROTO_UDP, source, NEAR_VTEP), Vxlan::new(vni), inner)
}

/// A well-formed VXLAN frame from the far VTEP carrying `inner` in our VNI.
fn vxlan_from_far(inner: &[u8]) -> Vec<u8> {
    vxlan_from(FAR_VTEP, VNI, inner)
}

/// `frame` with its outer IPv4 header checksum off by `delta` (wrapping).
fn with_outer_checksum_off_by(mut frame: Vec<u8>, delta: u16) -> Vec<u8> {
    let at = ETHERNET_LEN + 10;
    let checksum = u16::from_be_bytes([frame[at], frame[at + 1]]).wrapping_add(delta);
    frame[at..at + 2].copy_from_slice(&checksum.to_be_bytes());
    frame
}

/// `frame` with its outer IPv4 header checksum set to `checksum`.
fn with_outer_checksum(mut frame: Vec<u8>, checksum: u16) -> Vec<u8> {
    frame[ETHERNET_LEN + 10..ETHERNET_LEN + 12].copy_from_slice(&checksum.to_be_bytes());
    frame
}

/// `frame` sent on the underlay to the outer destination MAC `mac`.
fn to_underlay_mac(mut frame: Vec<u8>, mac: Mac) -> Vec<u8> {
    frame[..6].copy_from_slice(&mac.0);
    frame
}

/// A unicast MAC of another host on the underlay segment (the frame is
/// PACKET_OTHERHOST on the near node's underlay device).
const OTHER_HOST_UNDERLAY_MAC: Mac = Mac([0x02, 0xaa, 0xaa, 0xaa, 0xaa, 0x77]);

/// A frame from container `from` that the near node must flood in its VNI
/// (head-end replication to a static peer list, RFC 7348 section 4.2) and
/// then drop. The copies: the frame unchanged on the container side of
/// every other local port of the VNI, and the frame in VXLAN to every peer
/// VTEP that carries the VNI and whose underlay neighbour is resolved. None
/// to the sender's own port, to peers of other VNIs, or to the unresolved peer.
fn flooded_on(near: &Node, name: &str, from: Endpoint, frame: Vec<u8>) -> Case {
    let arrivals = match from.vni {
        VNI => {
            let other = if from.port == NEAR_1.port { NEAR_2 } else { NEAR_1 };
            vec![
                unchanged_at(other.port, &frame),
                Arrival::Vxlan(near.tunnel_to(FAR_VTEP, VNI), frame.clone()),
                Arrival::Vxlan(near.tunnel_to(THIRD_VTEP, VNI), frame.clone()),
            ]
        }
        // Tenant B has one port on the near node, the sender's.
        TENANT_B_VNI => vec![Arrival::Vxlan(near.tunnel_to(TENANT_B_VTEP, TENANT_B_VNI), frame.clone())],
        vni => panic!("the near node has no flood list for VNI {vni}"),
    };
    Case::given(name, Hook::Port(from.port), frame).expect(TC_ACT_SHOT, Reason::FLOODED, Output::Ignored).arriving(arrivals)
}

// Tests.

/// Loading runs the verifier over all three programs; a repeated test run
/// reports an average duration per run (printed, not judged).
#[test]
fn datapath_loads_and_times_test_runs() -> anyhow::Result<()> {
    let near = Node::start(&NEAR)?;
    // Dropped with its outer headers intact, so every repetition sees the
    // same frame and walks every outer header (a delivered frame would not:
    // repetitions share one buffer, and decapsulation moves its start).
    let frame = vxlan_frame(&from_far_vtep(), Vxlan::new(UNKNOWN_VNI), &ping(FAR_1, NEAR_1));
    let repeat = 1000;
    let (outcome, counted) = near.run(Hook::Decap, &frame, repeat)?;
    println!("decap of a {}-byte VXLAN frame, {repeat} runs: {} ns per run", frame.len(), outcome.duration_ns);
    assert!(outcome.duration_ns > 0, "expected a duration per run above 0 ns, seen {} ns", outcome.duration_ns);
    let expected = CounterRow {
        direction: Direction::FROM_UNDERLAY,
        reason: Reason::UNKNOWN_VNI,
        packets: repeat.into(),
        bytes: u64::from(repeat) * frame.len() as u64,
    };
    assert_eq!(counted.rows, [expected], "expected only {}, counted {}", describe_row(&expected), describe_counts(&counted));
    Ok(())
}

/// RFC 7348 section 5 (frame format) and 4.3 (DF set): a frame to a remote
/// endpoint leaves with every outer field right and the inner frame byte for
/// byte, whichever way the program grows the packet (bpf_skb_adjust_room for
/// IP, bpf_skb_change_head for anything else).
#[test]
fn encapsulation_writes_every_outer_field() -> anyhow::Result<()> {
    let near = Node::start(&NEAR)?;
    let forwarded = |name: &str, frame: Vec<u8>| {
        Case::given(name, Hook::Port(NEAR_1.port), frame).expect(TC_ACT_REDIRECT, Reason::FORWARDED, encapsulated(near.tunnel()))
    };
    let far_ipv6 = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, u16::from(FAR_1.mac.0[5]));
    run_table(
        &near,
        &[
            forwarded("IPv4 ICMP echo request", ping(NEAR_1, FAR_1)),
            forwarded(
                "ARP reply (not IP: grown with bpf_skb_change_head)",
                Arp::reply(NEAR_1.mac, NEAR_1.ip, FAR_1.mac, FAR_1.ip).frame(FAR_1.mac),
            ),
            forwarded("IPv6 UDP", udp6_from(NEAR_1, FAR_1.mac, far_ipv6, Udp { src_port: 40000, dst_port: 5201 })),
            forwarded("IPv4 of 1450 bytes: exactly the 1500 underlay MTU once encapsulated", udp_of_ip_length(NEAR_1, FAR_1, 1450)),
            forwarded("IPv6 of 1450 bytes: exactly the 1500 underlay MTU once encapsulated", udp6_of_ip_length(NEAR_1, FAR_1, 1450)),
        ],
    );
    Ok(())
}

/// RFC 7348 section 5, "Source Port": a hash of the inner frame's headers
/// in the dynamic range, so one flow keeps one port (no reordering across
/// underlay paths) while different flows spread over the underlay's ECMP.
#[test]
fn outer_source_port_follows_the_inner_flow() -> anyhow::Result<()> {
    let near = Node::start(&NEAR)?;
    let source_port = |name: String, frame: Vec<u8>| -> u16 {
        let case = Case::given(name, Hook::Port(NEAR_1.port), frame).expect(
            TC_ACT_REDIRECT,
            Reason::FORWARDED,
            encapsulated(near.tunnel()),
        );
        let ran = run_case(&near, &case).unwrap_or_else(|failure| panic!("{failure}"));
        VxlanOverIpv4::parse(&ran.frame).expect("run_case checked the outer headers").udp_src_port
    };

    let first = source_port("ping, first time".into(), ping(NEAR_1, FAR_1));
    let second = source_port("ping, second time".into(), ping(NEAR_1, FAR_1));
    assert_eq!(first, second, "the same flow twice: expected the same UDP source port, seen {first} then {second}");

    let flows = 64;
    let ports: BTreeSet<u16> = (0..flows)
        .map(|i| {
            let udp = Udp { src_port: 40000 + i, dst_port: 5201 };
            source_port(format!("UDP flow from port {}", udp.src_port), udp_from(NEAR_1, FAR_1.mac, FAR_1.ip, udp, 32))
        })
        .collect();
    println!("{flows} inner flows got {} distinct outer source ports", ports.len());
    assert!(
        ports.len() > 1,
        "{flows} inner flows (UDP source ports 40000..{}): expected more than one distinct outer source port, seen {}: {ports:?}",
        40000 + flows,
        ports.len()
    );
    Ok(())
}

/// Outer IPv4 identification (RFC 791 section 3.1; RFC 6864 section 4.1
/// lets atomic datagrams carry any ID, and the kernel's own tunnels number
/// their outer packets anyway): a per-CPU counter, one per packet sent, so
/// consecutive encapsulations on one CPU carry consecutive IDs. The test
/// thread is pinned to one CPU so that every run uses the same counter.
#[test]
fn outer_ipv4_ids_count_packets() -> anyhow::Result<()> {
    let near = Node::start(&NEAR)?;
    let _pinned = PinnedToOneCpu::here()?;
    let frames = [
        ("IPv4 ICMP echo request", ping(NEAR_1, FAR_1)),
        ("the same echo request again", ping(NEAR_1, FAR_1)),
        ("ARP reply (grown with bpf_skb_change_head)", arp_answer(NEAR_1, FAR_1)),
        ("IPv6 UDP", udp6_of_ip_length(NEAR_1, FAR_1, 200)),
    ];
    let mut ids = Vec::new();
    for (name, frame) in frames {
        let case = Case::given(name, Hook::Port(NEAR_1.port), frame).expect(TC_ACT_REDIRECT, Reason::FORWARDED, encapsulated(near.tunnel()));
        let ran = run_case(&near, &case).unwrap_or_else(|failure| panic!("{failure}"));
        ids.push(VxlanOverIpv4::parse(&ran.frame).expect("run_case checked the outer headers").ip_identification);
    }
    let expected: Vec<u16> = (0..ids.len() as u16).map(|i| ids[0].wrapping_add(i)).collect();
    println!("outer IPv4 IDs of {} consecutive encapsulations: {ids:?}", ids.len());
    assert_eq!(ids, expected, "outer IPv4 IDs of consecutive encapsulations on one CPU: expected {expected:?}, seen {ids:?}");
    Ok(())
}

/// What a container sends that is neither encapsulated nor flooded: ARP
/// requests answered from the neighbour table (ARP suppression), frames to a
/// container on the same node switched locally, and every drop with its
/// counted reason, among them frames with a VLAN tag (RFC 7348 section 6.1:
/// an encapsulating VTEP SHOULD NOT carry one). Nothing is sent anywhere.
#[test]
fn endpoint_port_verdicts() -> anyhow::Result<()> {
    let near = Node::start(&NEAR)?;
    let p1 = Hook::Port(NEAR_1.port);
    let shot = |name: &str, hook: Hook, frame: Vec<u8>, reason: Reason| {
        Case::given(name, hook, frame).expect(TC_ACT_SHOT, reason, Output::Ignored)
    };
    let answered = |name: &str, asker: Endpoint, owner: Endpoint| {
        Case::given(name, Hook::Port(asker.port), arp_request(asker, owner.ip)).expect(
            TC_ACT_REDIRECT,
            Reason::ARP_REPLIED,
            Output::Frame(arp_answer(owner, asker)),
        )
    };
    let mut bad_hardware_length = arp_request(NEAR_1, FAR_1.ip);
    bad_hardware_length[ETHERNET_LEN + 4] = 8;
    let rarp_operation = Arp { operation: 3, ..Arp::request(NEAR_1.mac, NEAR_1.ip, FAR_1.ip) }.frame(BROADCAST);
    let mut cut_arp = arp_request(NEAR_1, FAR_1.ip);
    cut_arp.truncate(ETHERNET_LEN + 20);
    run_table(
        &near,
        &[
            answered("ARP request for a remote endpoint is answered with its MAC", NEAR_1, FAR_1),
            answered("ARP request for the other local endpoint is answered with its MAC", NEAR_1, NEAR_2),
            answered("ARP request from p2 for the p1 endpoint is answered", NEAR_2, NEAR_1),
            Case::given("unicast to the other local endpoint is switched locally, unchanged", p1, ping(NEAR_1, NEAR_2))
                .expect(TC_ACT_REDIRECT, Reason::LOCAL_SWITCHED, Output::Unchanged),
            shot("frame on a port with no endpoint (q1)", Hook::Port("q1"), ping(NEAR_1, FAR_1), Reason::PORT_NOT_CONFIGURED),
            shot("broadcast ARP with hardware length 8", p1, bad_hardware_length, Reason::ARP_MALFORMED),
            shot("broadcast ARP with operation 3", p1, rarp_operation, Reason::ARP_MALFORMED),
            shot("broadcast ARP cut after 20 of its 28 bytes", p1, cut_arp, Reason::ARP_MALFORMED),
            shot(
                "802.1Q-tagged unicast to a remote endpoint",
                p1,
                vlan_tagged_ping(ETHERTYPE_8021Q, NEAR_1, FAR_1.mac, FAR_1),
                Reason::INNER_VLAN,
            ),
            shot(
                "802.1ad-tagged unicast to a remote endpoint",
                p1,
                vlan_tagged_ping(ETHERTYPE_8021AD, NEAR_1, FAR_1.mac, FAR_1),
                Reason::INNER_VLAN,
            ),
            shot(
                "802.1Q-tagged unicast to the other local endpoint (not switched)",
                p1,
                vlan_tagged_ping(ETHERTYPE_8021Q, NEAR_1, NEAR_2.mac, NEAR_2),
                Reason::INNER_VLAN,
            ),
            shot(
                "802.1Q-tagged broadcast (not flooded)",
                p1,
                vlan_tagged_ping(ETHERTYPE_8021Q, NEAR_1, BROADCAST, FAR_1),
                Reason::INNER_VLAN,
            ),
        ],
    );
    Ok(())
}

/// Flooding from an endpoint port (RFC 7348 section 4.2, head-end
/// replication to a static peer list): broadcast, multicast, unknown
/// unicast, ARP requests the node cannot answer and ARP announcements
/// (RFC 5227 probes and announcements, gratuitous replies) are cloned
/// unchanged to every other local port of the VNI and, in VXLAN, to every
/// peer carrying the VNI whose underlay neighbour is resolved; then dropped.
#[test]
fn flooding_from_an_endpoint() -> anyhow::Result<()> {
    let near = Node::start(&NEAR)?;
    let flooded = |name: &str, from: Endpoint, frame: Vec<u8>| flooded_on(&near, name, from, frame);
    run_table(
        &near,
        &[
            flooded("IPv4 broadcast (DHCP discover to ff:ff:ff:ff:ff:ff)", NEAR_1, dhcp_discover(NEAR_1)),
            flooded("IPv4 broadcast from p2: a copy to p1, none back to p2", NEAR_2, dhcp_discover(NEAR_2)),
            flooded("IPv4 multicast (mDNS to 01:00:5e:00:00:fb)", NEAR_1, mdns4(NEAR_1)),
            flooded("IPv6 multicast (mDNS to 33:33:00:00:00:fb)", NEAR_1, mdns6(NEAR_1)),
            flooded("IPv6 router solicitation (ICMPv6 to 33:33:00:00:00:02, not a solicitation)", NEAR_1, router_solicitation(NEAR_1)),
            flooded("unicast to an unknown MAC", NEAR_1, ping_to(NEAR_1, UNKNOWN_MAC, FAR_1.ip)),
            flooded("unicast to an unknown MAC from p2", NEAR_2, ping_to(NEAR_2, UNKNOWN_MAC, UNKNOWN_IP)),
            flooded("ARP request for an address nobody in the VNI owns", NEAR_1, arp_request(NEAR_1, UNKNOWN_IP)),
            flooded("ARP request for an address the far node has but did not list", NEAR_1, arp_request(NEAR_1, UNLISTED_IP)),
            flooded("gratuitous ARP request (sender IP = target IP)", NEAR_1, arp_request(NEAR_1, NEAR_1.ip)),
            flooded(
                "ARP probe (RFC 5227: sender IP 0.0.0.0)",
                NEAR_1,
                Arp::request(NEAR_1.mac, Ipv4Addr::UNSPECIFIED, NEAR_1.ip).frame(BROADCAST),
            ),
            flooded(
                "gratuitous ARP reply to ff:ff:ff:ff:ff:ff",
                NEAR_1,
                Arp::reply(NEAR_1.mac, NEAR_1.ip, BROADCAST, NEAR_1.ip).frame(BROADCAST),
            ),
            flooded(
                "ARP request for a known address asked by its owner (duplicate-address check)",
                NEAR_1,
                Arp::request(NEAR_1.mac, UNKNOWN_IP, NEAR_1.ip).frame(BROADCAST),
            ),
        ],
    );
    Ok(())
}

/// The per-VNI flood limit (`[[vnis]] flood_limit`): a flooded frame makes
/// at most that many copies, local ports first, and is counted as
/// flood-limited when copies were cut; a limit of 0 turns flooding off.
#[test]
fn flood_limit_cuts_copies() -> anyhow::Result<()> {
    let limited = Node::start(&LIMITED)?;
    let limited_flood = |name: &str, from: Endpoint, frame: Vec<u8>, arrivals: Vec<Arrival>| {
        Case::given(name, Hook::Port(from.port), frame).expect(TC_ACT_SHOT, Reason::FLOODED_LIMITED, Output::Ignored).arriving(arrivals)
    };
    let broadcast_1 = dhcp_discover(NEAR_1);
    let broadcast_2 = dhcp_discover(NEAR_2);
    let broadcast_b = dhcp_discover(TENANT_B_1);
    run_table(
        &limited,
        &[
            limited_flood(
                "VNI 100, limit 1: broadcast from p1 reaches p2 only, no peer",
                NEAR_1,
                broadcast_1.clone(),
                vec![unchanged_at(NEAR_2.port, &broadcast_1)],
            ),
            limited_flood(
                "VNI 100, limit 1: broadcast from p2 reaches p1 only, no peer",
                NEAR_2,
                broadcast_2.clone(),
                vec![unchanged_at(NEAR_1.port, &broadcast_2)],
            ),
            limited_flood("VNI 200, limit 0: broadcast goes nowhere", TENANT_B_1, broadcast_b, Vec::new()),
            Case::given("VNI 100, limit 1: ARP for a known address is still answered", Hook::Port(NEAR_1.port), arp_request(NEAR_1, FAR_1.ip))
                .expect(TC_ACT_REDIRECT, Reason::ARP_REPLIED, Output::Frame(arp_answer(FAR_1, NEAR_1))),
        ],
    );
    Ok(())
}

/// ND suppression (RFC 4861 sections 7.2.3 and 7.2.4): a neighbour
/// solicitation from a container for an IPv6 address the node knows in its
/// VNI is answered with the advertisement the owner would send (solicited,
/// override, target link-layer address), back out of the port. What the
/// node cannot answer (unknown target, duplicate address detection from ::,
/// a container asking for its own address) is flooded; a solicitation that
/// breaks RFC 4861 section 7.1.1 (hop limit not 255, code not 0, shorter
/// than 24 bytes) is dropped.
#[test]
fn neighbour_solicitations() -> anyhow::Result<()> {
    let near = Node::start(&NEAR)?;
    let answered = |name: &str, asker: Endpoint, owner: Endpoint| {
        Case::given(name, Hook::Port(asker.port), solicitation(asker, owner.ipv6)).expect(
            TC_ACT_REDIRECT,
            Reason::ND_REPLIED,
            Output::Frame(advertisement(owner, asker)),
        )
    };
    let malformed = |name: &str, frame: Vec<u8>| {
        Case::given(name, Hook::Port(NEAR_1.port), frame).expect(TC_ACT_SHOT, Reason::ND_MALFORMED, Output::Ignored)
    };
    let flooded = |name: &str, from: Endpoint, frame: Vec<u8>| flooded_on(&near, name, from, frame);

    let to_far = frames::neighbour_solicitation(FAR_1.ipv6, Some(NEAR_1.mac));
    let mut code_1 = to_far.clone();
    code_1[1] = 1;
    let mut short_payload = solicitation(NEAR_1, FAR_1.ipv6);
    short_payload[ETHERNET_LEN + 4..ETHERNET_LEN + 6].copy_from_slice(&16u16.to_be_bytes());
    let dad = solicitation_with(NEAR_1, Ipv6Addr::UNSPECIFIED, 255, NEAR_1.ipv6, &frames::neighbour_solicitation(NEAR_1.ipv6, None));
    run_table(
        &near,
        &[
            answered("solicitation for a remote endpoint's address is answered", NEAR_1, FAR_1),
            answered("solicitation for the other local endpoint's address is answered", NEAR_1, NEAR_2),
            answered("solicitation from p2 for the p1 endpoint's address is answered", NEAR_2, NEAR_1),
            Case::given(
                "solicitation without a source link-layer option (78 bytes): answered, grown to 86",
                Hook::Port(NEAR_1.port),
                solicitation_with(NEAR_1, NEAR_1.ipv6, 255, FAR_1.ipv6, &frames::neighbour_solicitation(FAR_1.ipv6, None)),
            )
            .expect(TC_ACT_REDIRECT, Reason::ND_REPLIED, Output::Frame(advertisement(FAR_1, NEAR_1))),
            flooded("solicitation for an address nobody in the VNI owns", NEAR_1, solicitation(NEAR_1, UNKNOWN_IPV6)),
            flooded("duplicate address detection (source ::)", NEAR_1, dad),
            flooded("solicitation for the asker's own address", NEAR_1, solicitation(NEAR_1, NEAR_1.ipv6)),
            malformed("hop limit 64 (RFC 4861 section 7.1.1: must be 255)", solicitation_with(NEAR_1, NEAR_1.ipv6, 64, FAR_1.ipv6, &to_far)),
            malformed("ICMPv6 code 1 (must be 0)", solicitation_with(NEAR_1, NEAR_1.ipv6, 255, FAR_1.ipv6, &code_1)),
            malformed("IPv6 payload length 16, under the 24 bytes of a solicitation", short_payload),
        ],
    );
    Ok(())
}

/// Frames too big for the underlay once encapsulated are never fragmented
/// (RFC 7348 section 4.3): IPv4 with DF gets an ICMP "fragmentation needed"
/// (RFC 792, RFC 1191 section 4) and IPv6 an ICMPv6 "packet too big" (RFC
/// 4443 section 3.2), both announcing the overlay MTU (underlay MTU - 50),
/// sent back to the container as if from the destination. IPv4 without DF
/// is dropped; ICMP errors are never answered with errors (RFC 1122 section
/// 3.2.2, RFC 4443 section 2.4 e); neither is what cannot be quoted.
#[test]
fn oversized_frames_get_icmp_too_big() -> anyhow::Result<()> {
    let near = Node::start(&NEAR)?;
    let p1 = Hook::Port(NEAR_1.port);
    let answered = |name: &str, frame: Vec<u8>, answer: fn(Endpoint, Endpoint, &[u8]) -> Vec<u8>| {
        let expected = answer(NEAR_1, FAR_1, &frame);
        Case::given(name, p1, frame).expect(TC_ACT_REDIRECT, Reason::ICMP_TOO_BIG_SENT, Output::Frame(expected))
    };
    let shot = |name: &str, frame: Vec<u8>, reason: Reason| Case::given(name, p1, frame).expect(TC_ACT_SHOT, reason, Output::Ignored);

    let over = UNDERLAY_MTU; // an inner IP packet this long is 50 bytes too long
    let ipv4 = |protocol: u8| Ipv4::new(protocol, NEAR_1.ip, FAR_1.ip);
    let without_df = Ipv4 { flags_fragment: 0, ..ipv4(IPPROTO_UDP) };
    let with_options = Ipv4 { options: vec![1, 1, 1, 0], ..ipv4(IPPROTO_UDP) };
    let echo = frames::icmp_echo_request(0x4242, 1, &payload(over - IPV4_LEN - 8));
    let icmp_error = frames::icmp_message(ICMP_DESTINATION_UNREACHABLE, ICMP_HOST_UNREACHABLE, [0; 4], &payload(over - IPV4_LEN - 8));
    let echo6 = frames::icmpv6_message(ICMPV6_ECHO_REQUEST, 0, &payload(over - IPV6_LEN - 4));
    let error6 = frames::icmpv6_message(ICMPV6_DESTINATION_UNREACHABLE, 0, &payload(over - IPV6_LEN - 4));
    let mut padded_arp = arp_answer(NEAR_1, FAR_1);
    padded_arp.resize(ETHERNET_LEN + over, 0);
    run_table(
        &near,
        &[
            answered("IPv4 UDP of 1500 bytes with DF", udp_of_ip_length(NEAR_1, FAR_1, over), fragmentation_needed),
            answered("IPv4 UDP of 1451 bytes with DF: one byte too many", udp_of_ip_length(NEAR_1, FAR_1, OVERLAY_MTU + 1), fragmentation_needed),
            answered(
                "IPv4 ICMP echo request of 1500 bytes (not an error)",
                ipv4_frame(NEAR_1, FAR_1, &ipv4(IPPROTO_ICMP), &echo),
                fragmentation_needed,
            ),
            shot(
                "IPv4 UDP of 1500 bytes without DF",
                ipv4_frame(NEAR_1, FAR_1, &without_df, &FLOW.datagram(&payload(over - IPV4_LEN - UDP_LEN))),
                Reason::TOO_BIG_NO_DF,
            ),
            shot(
                "IPv4 ICMP destination unreachable of 1500 bytes (an error itself)",
                ipv4_frame(NEAR_1, FAR_1, &ipv4(IPPROTO_ICMP), &icmp_error),
                Reason::TOO_BIG_FOR_UNDERLAY,
            ),
            shot(
                "IPv4 with options, 1500 bytes with DF",
                ipv4_frame(NEAR_1, FAR_1, &with_options, &FLOW.datagram(&payload(over - IPV4_LEN - 4 - UDP_LEN))),
                Reason::TOO_BIG_FOR_UNDERLAY,
            ),
            answered("IPv6 UDP of 1500 bytes", udp6_of_ip_length(NEAR_1, FAR_1, over), packet_too_big),
            answered("IPv6 UDP of 1451 bytes: one byte too many", udp6_of_ip_length(NEAR_1, FAR_1, OVERLAY_MTU + 1), packet_too_big),
            answered("ICMPv6 echo request of 1500 bytes (not an error)", ipv6_frame(NEAR_1, FAR_1, IPPROTO_ICMPV6, &echo6), packet_too_big),
            shot(
                "ICMPv6 destination unreachable of 1500 bytes (an error itself)",
                ipv6_frame(NEAR_1, FAR_1, IPPROTO_ICMPV6, &error6),
                Reason::TOO_BIG_FOR_UNDERLAY,
            ),
            shot("ARP reply padded to 1514 bytes (not IP: nothing to answer)", padded_arp, Reason::TOO_BIG_FOR_UNDERLAY),
        ],
    );
    Ok(())
}

/// RFC 7348 sections 4.3 and 5 on receipt: VXLAN from a configured peer to
/// our port is delivered as exactly the inner frame; what breaks a rule is
/// dropped with its reason (among them inner VLAN tags, RFC 7348 section
/// 6.1); inner broadcast and multicast is handed up unchanged to the TC
/// program that replicates it (XDP cannot clone), except an ARP request the
/// node can steer; what is not VXLAN for us passes untouched.
#[test]
fn decapsulation_verdicts() -> anyhow::Result<()> {
    decapsulation_verdicts_of(Hook::Decap)
}

/// The same table through the TC decapsulation program (`--decap tc`):
/// the same judgement and outcomes, with TC's actions, except that
/// broadcast and multicast frames are replicated to the VNI's local ports
/// by the program itself (there is no XDP program to hand them up).
#[test]
fn tc_decapsulation_verdicts() -> anyhow::Result<()> {
    decapsulation_verdicts_of(Hook::DecapTc)
}

fn decapsulation_verdicts_of(hook: Hook) -> anyhow::Result<()> {
    let near = Node::start(&NEAR)?;
    let inner = ping(FAR_1, NEAR_1);
    let delivered = |name: &str, frame: Vec<u8>, inner: &[u8]| {
        Case::given(name, hook, frame).expect(hook.delivered(), Reason::FORWARDED, Output::Frame(inner.to_vec()))
    };
    let dropped =
        |name: &str, frame: Vec<u8>, reason: Reason| Case::given(name, hook, frame).expect(hook.dropped(), reason, Output::Ignored);
    let passed =
        |name: &str, frame: Vec<u8>| Case::given(name, hook, frame).expect(hook.passed(), Reason::PASSED, Output::Unchanged);
    let handed_off = |name: &str, inner: &[u8]| match hook {
        Hook::DecapTc => Case::given(name, hook, vxlan_from_far(inner))
            .expect(TC_ACT_SHOT, Reason::FLOODED, Output::Ignored)
            .arriving([NEAR_1.port, NEAR_2.port].iter().map(|port| unchanged_at(port, inner)).collect()),
        _ => Case::given(name, hook, vxlan_from_far(inner)).expect(XDP_PASS, Reason::FLOOD_HANDOFF, Output::Unchanged),
    };

    let all_reserved_bits = Vxlan { flags: 0xff, reserved1: [0xff; 3], vni: VNI, reserved2: 0xff };
    let no_i_flag = Vxlan { flags: 0, ..Vxlan::new(VNI) };
    let every_flag_but_i = Vxlan { flags: !Vxlan::FLAG_VNI_VALID, ..Vxlan::new(VNI) };
    const NOP: u8 = 1;
    const END_OF_OPTIONS: u8 = 0;
    let with_options = Ipv4 { options: vec![NOP, NOP, NOP, END_OF_OPTIONS], ..from_far_vtep() };
    let first_fragment = Ipv4 { flags_fragment: IPV4_MORE_FRAGMENTS, ..from_far_vtep() };
    // Offset 1480 bytes (in 8-byte units): the data of a later fragment.
    let later_fragment = Ipv4 { flags_fragment: 1480 / 8, ..from_far_vtep() };
    let mut too_long = vxlan_from_far(&inner);
    let beyond_the_frame = (too_long.len() - ETHERNET_LEN + 10) as u16;
    frames::set_ipv4_total_length(&mut too_long, beyond_the_frame);

    let subnet_broadcast = udp_from(FAR_1, BROADCAST, Ipv4Addr::new(10, 10, 0, 255), Udp { src_port: 5000, dst_port: 5000 }, 16);
    let far_unlisted = Endpoint { mac: UNLISTED_MAC, ip: UNLISTED_IP, ..FAR_1 };
    let arp_for = |target: Ipv4Addr| arp_request(far_unlisted, target);
    let mut arp_bad_hardware_type = arp_for(NEAR_1.ip);
    arp_bad_hardware_type[ETHERNET_LEN + 1] = 6; // IEEE 802 instead of Ethernet
    let vxlan_over_ipv6 = Ipv6 {
        next_header: IPPROTO_UDP,
        hop_limit: 64,
        src: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2),
        dst: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
    }
    .packet(&to_vxlan_port().datagram(&Vxlan::new(VNI).packet(&inner)));
    let tcp_to_vxlan_port = Tcp { src_port: 51234, dst_port: VXLAN_PORT, sequence: 1, flags: Tcp::SYN };
    let udp_to_other_port = Udp { dst_port: VXLAN_PORT + 1, ..to_vxlan_port() };

    // A sender that fills in the outer UDP checksum: accepted unverified
    // (RFC 7348 section 5 allows either; Linux's vxlan sends one with udpcsum).
    let mut with_udp_checksum = vxlan_from_far(&inner);
    with_udp_checksum[ETHERNET_LEN + IPV4_LEN + 6..ETHERNET_LEN + IPV4_LEN + 8].copy_from_slice(&0xbeef_u16.to_be_bytes());

    // Outer destination MACs: another host's (the skb is PACKET_OTHERHOST
    // in TC; XDP compares with the underlay's MAC the agent wrote), and
    // broadcast and an IPv4 multicast MAC (delivered by the kernel to every
    // host, so by us too).
    let for_other_host = to_underlay_mac(vxlan_from_far(&inner), OTHER_HOST_UNDERLAY_MAC);
    // Inner frames shorter than an Ethernet and an IPv4 header (found by
    // fuzzing): bpf_skb_adjust_room leaves at least an IPv4 header's worth
    // behind the MAC header of an IPv4 skb, so TC cannot strip the outer
    // headers of a VXLAN frame under 84 bytes and counts decap-failed; XDP
    // delivers it. No IP, ARP or ND frame is that short.
    const LOCAL_EXPERIMENTAL_ETHERTYPE: u16 = 0x88b5;
    let tiny = |len: usize| Ethernet { dst: NEAR_1.mac, src: FAR_1.mac, ethertype: LOCAL_EXPERIMENTAL_ETHERTYPE }.frame(&payload(len - ETHERNET_LEN));
    let tiny_row = match hook {
        Hook::DecapTc => dropped("inner frame of 20 bytes (non-IP): TC cannot strip the outer headers", vxlan_from_far(&tiny(20)), Reason::DECAP_FAILED),
        _ => delivered("inner frame of 20 bytes (non-IP): delivered", vxlan_from_far(&tiny(20)), &tiny(20)),
    };

    run_table(
        &near,
        &[
            delivered("VXLAN from the peer to a local endpoint: exactly the inner frame", vxlan_from_far(&inner), &inner),
            dropped(
                "outer IPv4 checksum off by one (RFC 1122 section 3.2.1.2: MUST verify, discard)",
                with_outer_checksum_off_by(vxlan_from_far(&inner), 1),
                Reason::OUTER_CHECKSUM_INVALID,
            ),
            dropped(
                "outer IPv4 checksum zero (not computed)",
                with_outer_checksum(vxlan_from_far(&inner), 0),
                Reason::OUTER_CHECKSUM_INVALID,
            ),
            dropped(
                "outer IPv4 checksum 0xffff (all ones)",
                with_outer_checksum(vxlan_from_far(&inner), 0xffff),
                Reason::OUTER_CHECKSUM_INVALID,
            ),
            dropped(
                "outer destination MAC another host's (PACKET_OTHERHOST): not ours to deliver",
                for_other_host,
                Reason::OUTER_OTHER_HOST,
            ),
            tiny_row,
            delivered("inner frame of 34 bytes (non-IP): delivered", vxlan_from_far(&tiny(34)), &tiny(34)),
            delivered(
                "outer destination MAC broadcast: delivered, as the kernel delivers it",
                to_underlay_mac(vxlan_from_far(&inner), BROADCAST),
                &inner,
            ),
            delivered(
                "outer destination MAC IPv4 multicast (01:00:5e:...): delivered",
                to_underlay_mac(vxlan_from_far(&inner), Mac([0x01, 0x00, 0x5e, 0x00, 0x00, 0x01])),
                &inner,
            ),
            delivered("a non-zero outer UDP checksum is accepted (not verified)", with_udp_checksum, &inner),
            delivered(
                "VXLAN from a peer that lists no endpoint (192.0.2.3), to a local endpoint",
                vxlan_from(THIRD_VTEP, VNI, &inner),
                &inner,
            ),
            delivered(
                "every reserved bit set, I flag set (RFC 7348 section 5: reserved bits are ignored on receipt)",
                vxlan_frame(&from_far_vtep(), all_reserved_bits, &inner),
                &inner,
            ),
            dropped(
                "I flag clear (RFC 7348 section 5: it MUST be set)",
                vxlan_frame(&from_far_vtep(), no_i_flag, &inner),
                Reason::VXLAN_FLAGS_INVALID,
            ),
            dropped(
                "I flag clear, every other flag bit set",
                vxlan_frame(&from_far_vtep(), every_flag_but_i, &inner),
                Reason::VXLAN_FLAGS_INVALID,
            ),
            dropped(
                "VNI this node does not carry",
                vxlan_frame(&from_far_vtep(), Vxlan::new(UNKNOWN_VNI), &inner),
                Reason::UNKNOWN_VNI,
            ),
            dropped(
                "outer source 192.0.2.99 is not a peer VTEP",
                vxlan_frame(&Ipv4 { src: STRANGER_VTEP, ..from_far_vtep() }, Vxlan::new(VNI), &inner),
                Reason::UNKNOWN_PEER,
            ),
            dropped(
                "from a peer of tenant B (192.0.2.4, VNI 200 only) into VNI 100",
                vxlan_frame(&Ipv4 { src: TENANT_B_VTEP, ..from_far_vtep() }, Vxlan::new(VNI), &inner),
                Reason::PEER_NOT_IN_VNI,
            ),
            dropped("outer IPv4 with options (IHL 6)", vxlan_frame(&with_options, Vxlan::new(VNI), &inner), Reason::OUTER_IP_OPTIONS),
            dropped(
                "first fragment, MF set (RFC 7348 section 4.3: VTEPs MUST NOT fragment)",
                vxlan_frame(&first_fragment, Vxlan::new(VNI), &inner),
                Reason::OUTER_FRAGMENT,
            ),
            passed("later fragment (offset 1480): no UDP header to judge by", on_underlay(ETHERTYPE_IPV4, &later_fragment.packet(&payload(64)))),
            dropped("outer IPv4 total length 10 bytes beyond the frame", too_long, Reason::OUTER_LENGTH_MISMATCH),
            passed("ARP on the underlay", Arp::request(FAR_UNDERLAY_MAC, FAR_VTEP, NEAR_VTEP).frame(BROADCAST)),
            passed("VXLAN over IPv6", on_underlay(ETHERTYPE_IPV6, &vxlan_over_ipv6)),
            passed(
                "TCP to our VTEP's port 4789",
                on_underlay(ETHERTYPE_IPV4, &Ipv4::new(IPPROTO_TCP, FAR_VTEP, NEAR_VTEP).packet(&tcp_to_vxlan_port.segment(&[]))),
            ),
            passed(
                "UDP to our VTEP on another port",
                on_underlay(ETHERTYPE_IPV4, &from_far_vtep().packet(&udp_to_other_port.datagram(&Vxlan::new(VNI).packet(&inner)))),
            ),
            passed(
                "UDP to port 4789 of another underlay address",
                vxlan_frame(&Ipv4 { dst: OTHER_UNDERLAY_HOST, ..from_far_vtep() }, Vxlan::new(VNI), &inner),
            ),
            dropped(
                "inner unicast to an unknown MAC",
                vxlan_from_far(&ping_to(FAR_1, UNKNOWN_MAC, NEAR_1.ip)),
                Reason::UNKNOWN_DESTINATION,
            ),
            dropped(
                "inner 802.1Q-tagged unicast to a local endpoint (RFC 7348 section 6.1: SHOULD be discarded)",
                vxlan_from_far(&vlan_tagged_ping(ETHERTYPE_8021Q, FAR_1, NEAR_1.mac, NEAR_1)),
                Reason::INNER_VLAN,
            ),
            dropped(
                "inner 802.1ad-tagged unicast to a local endpoint",
                vxlan_from_far(&vlan_tagged_ping(ETHERTYPE_8021AD, FAR_1, NEAR_1.mac, NEAR_1)),
                Reason::INNER_VLAN,
            ),
            dropped(
                "inner 802.1Q-tagged broadcast (not handed off)",
                vxlan_from_far(&vlan_tagged_ping(ETHERTYPE_8021Q, FAR_1, BROADCAST, NEAR_1)),
                Reason::INNER_VLAN,
            ),
            delivered(
                "inner broadcast ARP request for a local endpoint's address: delivered to it",
                vxlan_from_far(&arp_for(NEAR_1.ip)),
                &arp_for(NEAR_1.ip),
            ),
            dropped(
                "inner broadcast ARP request for an address on another node",
                vxlan_from_far(&arp_for(FAR_1.ip)),
                Reason::ARP_UNKNOWN_TARGET,
            ),
            dropped("inner broadcast ARP with hardware type 6", vxlan_from_far(&arp_bad_hardware_type), Reason::ARP_MALFORMED),
            handed_off("inner ARP request for an address nobody knows", &arp_for(UNKNOWN_IP)),
            handed_off("inner gratuitous ARP request (sender IP = target IP)", &arp_request(FAR_1, FAR_1.ip)),
            handed_off("inner ARP probe (sender IP 0.0.0.0)", &Arp::request(FAR_1.mac, Ipv4Addr::UNSPECIFIED, FAR_1.ip).frame(BROADCAST)),
            handed_off("inner gratuitous ARP reply to ff:ff:ff:ff:ff:ff", &Arp::reply(FAR_1.mac, FAR_1.ip, BROADCAST, FAR_1.ip).frame(BROADCAST)),
            handed_off("inner IPv4 broadcast", &subnet_broadcast),
            handed_off("inner IPv4 multicast (mDNS)", &mdns4(FAR_1)),
            handed_off("inner IPv6 multicast (mDNS)", &mdns6(FAR_1)),
            handed_off("inner neighbour solicitation for a local endpoint's address", &solicitation(FAR_1, NEAR_1.ipv6)),
        ],
    );
    Ok(())
}

/// XDP has no pkt_type: it tells a frame for another host by comparing
/// the outer destination with the underlay MAC the agent writes. Until it
/// is written (all-zero), nothing is refused for it; once it is, only
/// unicast to another MAC is.
#[test]
fn xdp_refuses_frames_for_another_host_once_it_knows_the_underlay_mac() -> anyhow::Result<()> {
    let mut near = Node::start(&NEAR)?;
    let inner = ping(FAR_1, NEAR_1);
    let for_other_host = || to_underlay_mac(vxlan_from_far(&inner), OTHER_HOST_UNDERLAY_MAC);
    let delivered = |name: &str, frame: Vec<u8>| {
        Case::given(name, Hook::Decap, frame).expect(XDP_REDIRECT, Reason::FORWARDED, Output::Frame(inner.clone()))
    };
    near.datapath.set_underlay_mac(None)?;
    run_table(&near, &[delivered("underlay MAC not known: another host's MAC is not refused", for_other_host())]);
    near.datapath.set_underlay_mac(Some(near.underlay_mac.0))?;
    run_table(
        &near,
        &[
            Case::given("underlay MAC known: another host's MAC is refused", Hook::Decap, for_other_host())
                .expect(XDP_DROP, Reason::OUTER_OTHER_HOST, Output::Ignored),
            delivered("underlay MAC known: our MAC is delivered", vxlan_from_far(&inner)),
            delivered("underlay MAC known: broadcast is delivered", to_underlay_mac(vxlan_from_far(&inner), BROADCAST)),
        ],
    );
    Ok(())
}

/// The underlay's TC flood program, the second half of receiving a flooded
/// frame (RFC 7348 section 4.2): a VXLAN frame from a peer to our VTEP
/// whose inner destination is broadcast or multicast is decapsulated and
/// cloned to every local port of its VNI (the sender already reached the
/// other peers), then dropped. Anything else goes on untouched and
/// uncounted: XDP has judged and counted it already.
#[test]
fn underlay_flood_replicates_to_local_ports() -> anyhow::Result<()> {
    let near = Node::start(&NEAR)?;
    let replicated = |name: &str, frame: Vec<u8>, inner: &[u8], ports: &[&str]| {
        Case::given(name, Hook::UnderlayFlood, frame)
            .expect(TC_ACT_SHOT, Reason::FLOODED, Output::Ignored)
            .arriving(ports.iter().map(|port| unchanged_at(port, inner)).collect())
    };
    let to_tenant_a = [NEAR_1.port, NEAR_2.port];
    let shot = |name: &str, frame: Vec<u8>, reason: Reason| {
        Case::given(name, Hook::UnderlayFlood, frame).expect(TC_ACT_SHOT, reason, Output::Ignored)
    };
    let left_alone = |name: &str, frame: Vec<u8>| Case::given(name, Hook::UnderlayFlood, frame).expect_uncounted(TC_ACT_OK, Output::Unchanged);

    let broadcast = udp_from(FAR_1, BROADCAST, Ipv4Addr::new(10, 10, 0, 255), Udp { src_port: 5000, dst_port: 5000 }, 16);
    let unknown_arp = arp_request(FAR_1, UNKNOWN_IP);
    let announcement = arp_request(FAR_1, FAR_1.ip);
    let unicast = ping(FAR_1, NEAR_1);
    let mut cut_in_inner_header = vxlan_from_far(&broadcast);
    cut_in_inner_header.truncate(ENCAP_LEN + 10);
    frames::set_ipv4_total_length(&mut cut_in_inner_header, (ENCAP_LEN + 10 - ETHERNET_LEN) as u16);
    frames::set_udp_length(&mut cut_in_inner_header, (ENCAP_LEN + 10 - ETHERNET_LEN - IPV4_LEN) as u16);
    let with_options = Ipv4 { options: vec![1, 1, 1, 0], ..from_far_vtep() };
    let udp_to_other_port = Udp { dst_port: VXLAN_PORT + 1, ..to_vxlan_port() };
    // XDP passes later fragments up for reassembly (they have no UDP header
    // to judge by); their bytes are the datagram's, which whoever fills the
    // datagram can shape like VXLAN: here for tenant B's VNI, from a peer of VNI 100.
    let later_fragment = Ipv4 { flags_fragment: 1480 / 8, ..from_far_vtep() };
    let mut too_long = vxlan_from_far(&broadcast);
    let beyond_the_frame = (too_long.len() - ETHERNET_LEN + 10) as u16;
    frames::set_ipv4_total_length(&mut too_long, beyond_the_frame);
    let mut udp_short = vxlan_from_far(&broadcast);
    let udp_length = (udp_short.len() - ETHERNET_LEN - IPV4_LEN - 1) as u16;
    frames::set_udp_length(&mut udp_short, udp_length);
    let disguised_fragment = on_underlay(
        ETHERTYPE_IPV4,
        &later_fragment.packet(&to_vxlan_port().datagram(&Vxlan::new(TENANT_B_VNI).packet(&broadcast))),
    );
    run_table(
        &near,
        &[
            replicated("inner IPv4 broadcast: to p1 and p2", vxlan_from_far(&broadcast), &broadcast, &to_tenant_a),
            replicated("inner IPv4 multicast (mDNS)", vxlan_from_far(&mdns4(FAR_1)), &mdns4(FAR_1), &to_tenant_a),
            replicated("inner IPv6 multicast (mDNS)", vxlan_from_far(&mdns6(FAR_1)), &mdns6(FAR_1), &to_tenant_a),
            replicated("inner ARP request for an address nobody knows", vxlan_from_far(&unknown_arp), &unknown_arp, &to_tenant_a),
            replicated("inner gratuitous ARP (not IP)", vxlan_from_far(&announcement), &announcement, &to_tenant_a),
            replicated(
                "inner neighbour solicitation",
                vxlan_from_far(&solicitation(FAR_1, NEAR_1.ipv6)),
                &solicitation(FAR_1, NEAR_1.ipv6),
                &to_tenant_a,
            ),
            replicated("from the peer that lists no endpoint (192.0.2.3)", vxlan_from(THIRD_VTEP, VNI, &broadcast), &broadcast, &to_tenant_a),
            shot(
                "outer source 192.0.2.99 is not a peer VTEP",
                vxlan_frame(&Ipv4 { src: STRANGER_VTEP, ..from_far_vtep() }, Vxlan::new(VNI), &broadcast),
                Reason::UNKNOWN_PEER,
            ),
            shot(
                "broadcast from a peer of tenant B (192.0.2.4, VNI 200 only) into VNI 100",
                vxlan_frame(&Ipv4 { src: TENANT_B_VTEP, ..from_far_vtep() }, Vxlan::new(VNI), &broadcast),
                Reason::PEER_NOT_IN_VNI,
            ),
            shot(
                "I flag clear",
                vxlan_frame(&from_far_vtep(), Vxlan { flags: 0, ..Vxlan::new(VNI) }, &broadcast),
                Reason::VXLAN_FLAGS_INVALID,
            ),
            shot(
                "inner 802.1Q-tagged broadcast",
                vxlan_from_far(&vlan_tagged_ping(ETHERTYPE_8021Q, FAR_1, BROADCAST, NEAR_1)),
                Reason::INNER_VLAN,
            ),
            shot(
                "inner 802.1ad-tagged broadcast",
                vxlan_from_far(&vlan_tagged_ping(ETHERTYPE_8021AD, FAR_1, BROADCAST, NEAR_1)),
                Reason::INNER_VLAN,
            ),
            shot("VNI this node does not carry", vxlan_from(FAR_VTEP, UNKNOWN_VNI, &broadcast), Reason::UNKNOWN_VNI),
            // The judgement's outer checks, made again here so that this
            // program is safe on its own (found by fuzzing it alone).
            shot(
                "outer IPv4 checksum off by one",
                with_outer_checksum_off_by(vxlan_from_far(&broadcast), 1),
                Reason::OUTER_CHECKSUM_INVALID,
            ),
            shot(
                "outer destination MAC another host's (PACKET_OTHERHOST)",
                to_underlay_mac(vxlan_from_far(&broadcast), OTHER_HOST_UNDERLAY_MAC),
                Reason::OUTER_OTHER_HOST,
            ),
            replicated(
                "outer destination MAC broadcast",
                to_underlay_mac(vxlan_from_far(&broadcast), BROADCAST),
                &broadcast,
                &to_tenant_a,
            ),
            shot("outer IPv4 total length 10 bytes beyond the frame", too_long, Reason::OUTER_LENGTH_MISMATCH),
            shot("outer UDP length 1 byte short of the IPv4 payload", udp_short, Reason::OUTER_LENGTH_MISMATCH),
            left_alone("inner unicast to a local endpoint (XDP delivered it)", vxlan_from_far(&unicast)),
            left_alone("inner unicast to an unknown MAC (XDP dropped it)", vxlan_from_far(&ping_to(FAR_1, UNKNOWN_MAC, NEAR_1.ip))),
            left_alone("ARP on the underlay", Arp::request(FAR_UNDERLAY_MAC, FAR_VTEP, NEAR_VTEP).frame(BROADCAST)),
            left_alone(
                "UDP to our VTEP on another port",
                on_underlay(ETHERTYPE_IPV4, &from_far_vtep().packet(&udp_to_other_port.datagram(&Vxlan::new(VNI).packet(&broadcast)))),
            ),
            left_alone(
                "UDP to port 4789 of another underlay address",
                vxlan_frame(&Ipv4 { dst: OTHER_UNDERLAY_HOST, ..from_far_vtep() }, Vxlan::new(VNI), &broadcast),
            ),
            left_alone(
                "TCP to our VTEP's port 4789",
                on_underlay(
                    ETHERTYPE_IPV4,
                    &Ipv4::new(IPPROTO_TCP, FAR_VTEP, NEAR_VTEP)
                        .packet(&Tcp { src_port: 51234, dst_port: VXLAN_PORT, sequence: 1, flags: Tcp::SYN }.segment(&[])),
                ),
            ),
            left_alone("outer IPv4 with options (XDP dropped it)", vxlan_frame(&with_options, Vxlan::new(VNI), &broadcast)),
            left_alone("cut 10 bytes into the inner Ethernet header", cut_in_inner_header),
            left_alone("later fragment (offset 1480) whose data looks like VXLAN in VNI 200: no UDP header", disguised_fragment),
        ],
    );
    Ok(())
}

/// A VXLAN frame cut at each header boundary is never delivered. Until the
/// outer UDP header is complete it cannot be shown to be ours and passes;
/// from then on it is dropped: OUTER_LENGTH_MISMATCH while the IPv4 and UDP
/// lengths still describe the whole frame, VXLAN_TRUNCATED once they are
/// rewritten to match the cut (no room for the VXLAN and inner Ethernet
/// headers). BPF_PROG_TEST_RUN takes no XDP frame under 14 bytes.
#[test]
fn decapsulation_of_truncated_frames() -> anyhow::Result<()> {
    truncated_frames_through(Hook::Decap)
}

/// The same cuts through the TC decapsulation program.
#[test]
fn tc_decapsulation_of_truncated_frames() -> anyhow::Result<()> {
    truncated_frames_through(Hook::DecapTc)
}

fn truncated_frames_through(hook: Hook) -> anyhow::Result<()> {
    let near = Node::start(&NEAR)?;
    let whole = vxlan_from_far(&ping(FAR_1, NEAR_1));
    let cuts = [14, 20, 34, 38, 42, 46, 50, 57];
    let mut cases = Vec::new();
    for cut in cuts {
        // BPF_PROG_TEST_RUN builds no skb for an IPv4 frame shorter than an
        // IPv4 header (EINVAL), so a TC program never sees one here; the
        // stack drops such frames in any case.
        if hook == Hook::DecapTc && cut < ETHERNET_LEN + IPV4_LEN {
            continue;
        }
        let frame = whole[..cut].to_vec();
        let name = format!("cut at {cut} bytes, lengths of the whole frame");
        cases.push(if cut < UDP_END {
            Case::given(name, hook, frame).expect(hook.passed(), Reason::PASSED, Output::Unchanged)
        } else {
            Case::given(name, hook, frame).expect(hook.dropped(), Reason::OUTER_LENGTH_MISMATCH, Output::Ignored)
        });

        if cut < ETHERNET_LEN + IPV4_LEN {
            continue; // no whole IPv4 header to rewrite
        }
        let mut frame = whole[..cut].to_vec();
        frames::set_ipv4_total_length(&mut frame, (cut - ETHERNET_LEN) as u16);
        if cut >= UDP_END {
            frames::set_udp_length(&mut frame, (cut - ETHERNET_LEN - IPV4_LEN) as u16);
        }
        let name = format!("cut at {cut} bytes, lengths rewritten to match");
        cases.push(if cut < UDP_END {
            Case::given(name, hook, frame).expect(hook.passed(), Reason::PASSED, Output::Unchanged)
        } else {
            Case::given(name, hook, frame).expect(hook.dropped(), Reason::VXLAN_TRUNCATED, Output::Ignored)
        });
    }
    run_table(&near, &cases);
    Ok(())
}

/// Encapsulation caches each peer's underlay route (egress device, MACs,
/// MTU) instead of asking the FIB per packet, and asks again once the entry
/// is older than ROUTE_CACHE_TTL_NS: a changed next hop is used within it.
#[test]
fn encapsulation_caches_the_route_and_follows_a_changed_next_hop() -> anyhow::Result<()> {
    let near = Node::start(&NEAR)?;
    let frame = ping(NEAR_1, FAR_1);
    let outer_destination = |near: &Node| -> anyhow::Result<Mac> {
        let (outcome, _) = near.run(Hook::Port(NEAR_1.port), &frame, 1)?;
        let outer = VxlanOverIpv4::parse(&outcome.frame).context("the output is not VXLAN")?;
        Ok(outer.eth_dst)
    };
    assert_eq!(outer_destination(&near)?, FAR_UNDERLAY_MAC, "first packet: the outer destination is the peer VTEP's neighbour");
    let cache = near.datapath.route_cache()?;
    let entry = cache
        .get(&u32::from_ne_bytes(FAR_VTEP.octets()))
        .unwrap_or_else(|| panic!("expected a route cache entry for {FAR_VTEP}, the cache holds {cache:?}"));
    let expected = (near.ifindex_of(UNDERLAY)?, 1500, near.underlay_mac.0, FAR_UNDERLAY_MAC.0, u32::from_ne_bytes(FAR_VTEP.octets()));
    assert_eq!(
        (entry.ifindex, entry.mtu, entry.source_mac, entry.next_hop_mac, entry.next_hop_be),
        expected,
        "cached route to {FAR_VTEP}: expected (ifindex, mtu, source MAC, next-hop MAC, next hop) {expected:?}, cached {entry:?}"
    );

    let moved = Mac([0x02, 0xaa, 0xaa, 0xaa, 0xaa, 0x77]);
    near.netns.ip(&["neigh", "replace", &FAR_VTEP.to_string(), "lladdr", &moved.to_string(), "dev", UNDERLAY, "nud", "permanent"])?;
    std::thread::sleep(Duration::from_nanos(2 * overlay_common::ROUTE_CACHE_TTL_NS));
    let seen = outer_destination(&near)?;
    assert_eq!(seen, moved, "after twice the cache TTL the new next-hop MAC {moved} must be used, saw {seen}");
    Ok(())
}

/// Several tenants, one node (RFC 7348 section 4: the VNI scopes the inner
/// MAC frame, so overlapping MAC and IP addresses are allowed across VNIs):
/// tenant B (VNI 200, port p3) reuses tenant A's NEAR_1 MAC and addresses.
/// No frame crosses from one VNI into the other: a MAC or address known
/// only in the other VNI is unknown here (flooded within the sender's VNI,
/// or dropped on receipt), and each VNI's own tables still answer.
#[test]
fn tenants_are_isolated() -> anyhow::Result<()> {
    let near = Node::start(&NEAR)?;
    let flooded = |name: &str, from: Endpoint, frame: Vec<u8>| flooded_on(&near, name, from, frame);
    let p3 = Hook::Port(TENANT_B_1.port);
    let answered_arp = |name: &str, asker: Endpoint, owner: Endpoint| {
        Case::given(name, Hook::Port(asker.port), arp_request(asker, owner.ip)).expect(
            TC_ACT_REDIRECT,
            Reason::ARP_REPLIED,
            Output::Frame(arp_answer(owner, asker)),
        )
    };
    let decap = |name: &str, frame: Vec<u8>, action: u32, reason: Reason, output: Output| {
        Case::given(name, Hook::Decap, frame).expect(action, reason, output)
    };
    let from_tenant_b_host = |inner: &[u8]| vxlan_from(TENANT_B_VTEP, TENANT_B_VNI, inner);
    let tenant_b_broadcast = dhcp_discover(TENANT_B_REMOTE);
    let b_to_b2 = ping(TENANT_B_REMOTE, TENANT_B_2);
    let b_asks_for_b2 = arp_request(TENANT_B_REMOTE, TENANT_B_2.ip);
    run_table(
        &near,
        &[
            // From a port: each VNI's tables, and only those.
            flooded("p1 (VNI 100) to tenant B's local-only MAC: flooded in VNI 100, not switched to p3", NEAR_1, ping(NEAR_1, TENANT_B_2)),
            flooded("p1 (VNI 100) to tenant B's remote MAC: flooded in VNI 100, not sent to its VTEP", NEAR_1, ping(NEAR_1, TENANT_B_REMOTE)),
            flooded("p3 (VNI 200) to tenant A's NEAR_2 MAC: flooded in VNI 200, not switched to p2", TENANT_B_1, ping(TENANT_B_1, NEAR_2)),
            flooded("p3 (VNI 200) to tenant A's FAR_1 MAC: flooded in VNI 200, not sent to the far VTEP", TENANT_B_1, ping(TENANT_B_1, FAR_1)),
            flooded("p3 broadcast: to tenant B's peer only", TENANT_B_1, dhcp_discover(TENANT_B_1)),
            flooded("p3 ARP request for an address only VNI 100 has: not answered", TENANT_B_1, arp_request(TENANT_B_1, NEAR_2.ip)),
            flooded("p1 ARP request for an address only VNI 200 has: not answered", NEAR_1, arp_request(NEAR_1, TENANT_B_2.ip)),
            flooded("p3 solicitation for an IPv6 address only VNI 100 has: not answered", TENANT_B_1, solicitation(TENANT_B_1, NEAR_2.ipv6)),
            answered_arp("p3 ARP request for tenant B's local address: answered", TENANT_B_1, TENANT_B_2),
            answered_arp("p3 ARP request for tenant B's remote address: answered", TENANT_B_1, TENANT_B_REMOTE),
            answered_arp("p2 ARP request for NEAR_1 (whose addresses tenant B reuses): answered", NEAR_2, NEAR_1),
            Case::given("p3 solicitation for tenant B's remote IPv6 address: answered", p3, solicitation(TENANT_B_1, TENANT_B_REMOTE.ipv6))
                .expect(TC_ACT_REDIRECT, Reason::ND_REPLIED, Output::Frame(advertisement(TENANT_B_REMOTE, TENANT_B_1))),
            Case::given("p3 to tenant B's remote endpoint: VXLAN in VNI 200 to its VTEP", p3, ping(TENANT_B_1, TENANT_B_REMOTE)).expect(
                TC_ACT_REDIRECT,
                Reason::FORWARDED,
                encapsulated(near.tunnel_to(TENANT_B_VTEP, TENANT_B_VNI)),
            ),
            Case::given("p3 to tenant B's other local endpoint: switched locally", p3, ping(TENANT_B_1, TENANT_B_2))
                .expect(TC_ACT_REDIRECT, Reason::LOCAL_SWITCHED, Output::Unchanged),
            // From the underlay: the VNI in the header decides.
            decap(
                "VNI 100 to tenant B's local-only MAC",
                vxlan_from_far(&ping_to(FAR_1, TENANT_B_2.mac, TENANT_B_2.ip)),
                XDP_DROP,
                Reason::UNKNOWN_DESTINATION,
                Output::Ignored,
            ),
            decap(
                "VNI 200 to tenant B's local MAC: delivered",
                from_tenant_b_host(&b_to_b2),
                XDP_REDIRECT,
                Reason::FORWARDED,
                Output::Frame(b_to_b2.clone()),
            ),
            decap(
                "VNI 200 to tenant A's NEAR_2 MAC",
                from_tenant_b_host(&ping(TENANT_B_REMOTE, NEAR_2)),
                XDP_DROP,
                Reason::UNKNOWN_DESTINATION,
                Output::Ignored,
            ),
            decap(
                "VNI 200 ARP request for tenant B's local address: delivered",
                from_tenant_b_host(&b_asks_for_b2),
                XDP_REDIRECT,
                Reason::FORWARDED,
                Output::Frame(b_asks_for_b2.clone()),
            ),
            decap(
                "VNI 200 ARP request for an address only VNI 100 has: handed off to flooding",
                from_tenant_b_host(&arp_request(TENANT_B_REMOTE, NEAR_2.ip)),
                XDP_PASS,
                Reason::FLOOD_HANDOFF,
                Output::Unchanged,
            ),
            decap(
                "VNI 100 ARP request for an address only VNI 200 has: handed off to flooding",
                vxlan_from_far(&arp_request(FAR_1, TENANT_B_2.ip)),
                XDP_PASS,
                Reason::FLOOD_HANDOFF,
                Output::Unchanged,
            ),
            Case::given("VNI 200 broadcast from the underlay: to p3 only", Hook::UnderlayFlood, from_tenant_b_host(&tenant_b_broadcast))
                .expect(TC_ACT_SHOT, Reason::FLOODED, Output::Ignored)
                .arriving(vec![unchanged_at(TENANT_B_1.port, &tenant_b_broadcast)]),
        ],
    );
    Ok(())
}

/// Both halves of RFC 7348 section 5 agree: what the far node's
/// encapsulation sends, the near node's decapsulation turns back into the
/// very frame the far container sent.
#[test]
fn encapsulation_then_decapsulation_returns_the_frame() -> anyhow::Result<()> {
    let near = Node::start(&NEAR)?;
    let far = Node::start(&FAR)?;
    let frames = [
        ("IPv4 ICMP echo request", ping(FAR_1, NEAR_1)),
        ("ARP reply (not IP)", Arp::reply(FAR_1.mac, FAR_1.ip, NEAR_1.mac, NEAR_1.ip).frame(NEAR_1.mac)),
        ("IPv4 of 1450 bytes to the other endpoint", udp_of_ip_length(FAR_1, NEAR_2, 1450)),
    ];
    let results: Vec<(&str, Result<Ran, String>)> = frames
        .into_iter()
        .map(|(name, sent)| {
            let encapsulation = Case::given(format!("{name}: encapsulated by the far node"), Hook::Port(FAR_1.port), sent.clone())
                .expect(TC_ACT_REDIRECT, Reason::FORWARDED, encapsulated(far.tunnel()));
            let result = run_case(&far, &encapsulation).and_then(|on_the_wire| {
                let decapsulation = Case::given(format!("{name}: decapsulated by the near node"), Hook::Decap, on_the_wire.frame)
                    .expect(XDP_REDIRECT, Reason::FORWARDED, Output::Frame(sent));
                run_case(&near, &decapsulation)
            });
            (name, result)
        })
        .collect();
    report(results.iter().map(|(name, result)| (*name, result)));
    Ok(())
}

/// Flooding end to end (RFC 7348 section 4.2): the copy the far node's
/// endpoint program really sends to the near VTEP is handed up unchanged by
/// the near node's XDP and replicated by its underlay TC program to every
/// local port of the VNI, where the far container's frame arrives unchanged.
#[test]
fn flooded_frame_crosses_the_underlay() -> anyhow::Result<()> {
    let near = Node::start(&NEAR)?;
    let far = Node::start(&FAR)?;
    let frames = [
        ("DHCP discover (IPv4 broadcast)", dhcp_discover(FAR_1)),
        ("ARP request for an address nobody knows (not IP)", arp_request(FAR_1, UNKNOWN_IP)),
        ("IPv6 mDNS (multicast)", mdns6(FAR_1)),
        ("unicast to an unknown MAC (flooded, then dropped on receipt)", ping_to(FAR_1, UNKNOWN_MAC, UNKNOWN_IP)),
    ];
    let results: Vec<(&str, Result<Ran, String>)> = frames
        .into_iter()
        .map(|(name, sent)| {
            let flood = Case::given(format!("{name}: flooded by the far node"), Hook::Port(FAR_1.port), sent.clone())
                .expect(TC_ACT_SHOT, Reason::FLOODED, Output::Ignored)
                .arriving(vec![Arrival::Vxlan(far.tunnel(), sent.clone())]);
            let result = run_case(&far, &flood).and_then(|flooded| {
                let on_the_wire = flooded.arrived[UNDERLAY_PEER][0].clone();
                let unicast = sent[0] & 1 == 0;
                let receipt = if unicast {
                    Case::given(format!("{name}: dropped by the near node's XDP"), Hook::Decap, on_the_wire)
                        .expect(XDP_DROP, Reason::UNKNOWN_DESTINATION, Output::Ignored)
                } else {
                    Case::given(format!("{name}: handed up by the near node's XDP"), Hook::Decap, on_the_wire.clone())
                        .expect(XDP_PASS, Reason::FLOOD_HANDOFF, Output::Unchanged)
                };
                let handed_up = run_case(&near, &receipt)?;
                if unicast {
                    return Ok(handed_up);
                }
                let replication = Case::given(format!("{name}: replicated by the near node's TC"), Hook::UnderlayFlood, handed_up.frame)
                    .expect(TC_ACT_SHOT, Reason::FLOODED, Output::Ignored)
                    .arriving(vec![unchanged_at(NEAR_1.port, &sent), unchanged_at(NEAR_2.port, &sent)]);
                run_case(&near, &replication)
            });
            (name, result)
        })
        .collect();
    report(results.iter().map(|(name, result)| (*name, result)));
    Ok(())
}

/// One packet's expected attribution: counted once, with its reason, for
/// exactly this VNI and this peer (or none), and for no other.
struct Attribution {
    name: &'static str,
    hook: Hook,
    frame: Vec<u8>,
    reason: Reason,
    vni: Option<u32>,
    peer: Option<Ipv4Addr>,
}

/// What is wrong with what a run counted per VNI and per peer.
fn check_attribution(case: &Attribution, counted: &Counters, moved: &VniPeerCounters) -> Vec<String> {
    let row = CounterRow { direction: case.hook.direction(), reason: case.reason, packets: 1, bytes: case.frame.len() as u64 };
    let mut wrong = Vec::new();
    if counted.rows != [row] {
        wrong.push(format!("node counters: expected only {}, counted {}", describe_row(&row), describe_counts(counted)));
    }
    let expect = |scope: String, seen: Vec<(String, &Counters)>, wrong: &mut Vec<String>| {
        let seen_text = seen.iter().map(|(key, counts)| format!("{key}: {}", describe_counts(counts))).collect::<Vec<_>>().join("; ");
        let matches = match scope.as_str() {
            "" => seen.is_empty(),
            key => seen.len() == 1 && seen[0].0 == key && seen[0].1.rows == [row],
        };
        if !matches {
            let expected = if scope.is_empty() { "nothing".to_owned() } else { format!("{scope}: only {}", describe_row(&row)) };
            wrong.push(format!("expected {expected}, counted {}", if seen.is_empty() { "nothing" } else { &seen_text }));
        }
    };
    let vnis = moved.vnis.iter().map(|(vni, counts)| (format!("VNI {vni}"), counts)).collect();
    expect(case.vni.map_or(String::new(), |vni| format!("VNI {vni}")), vnis, &mut wrong);
    let peers = moved.peers.iter().map(|(peer, counts)| (format!("peer {peer}"), counts)).collect();
    expect(case.peer.map_or(String::new(), |peer| format!("peer {peer}")), peers, &mut wrong);
    wrong
}

/// Per-VNI and per-peer counters: each packet counts, with its reason,
/// for the VNI and the peer VTEP it belongs to once the datapath knows
/// them, and for no other; before that (unknown peer, malformed outer
/// headers) only for the node. Flooded copies count for the VNI only.
#[test]
fn vni_and_peer_counters_follow_the_packet() -> anyhow::Result<()> {
    let near = Node::start(&NEAR)?;
    let case = |name, hook, frame, reason, vni, peer| Attribution { name, hook, frame, reason, vni, peer };
    let (p1, p3) = (Hook::Port(NEAR_1.port), Hook::Port(TENANT_B_1.port));
    let first_fragment = Ipv4 { flags_fragment: IPV4_MORE_FRAGMENTS, ..from_far_vtep() };
    let cases = [
        case("decap: from the far VTEP to NEAR_1", Hook::Decap, vxlan_from_far(&ping(FAR_1, NEAR_1)), Reason::FORWARDED, Some(VNI), Some(FAR_VTEP)),
        case(
            "decap: from the far VTEP to a MAC nobody has",
            Hook::Decap,
            vxlan_from_far(&ping_to(FAR_1, UNKNOWN_MAC, UNKNOWN_IP)),
            Reason::UNKNOWN_DESTINATION,
            Some(VNI),
            Some(FAR_VTEP),
        ),
        case("decap: broadcast handed to flooding", Hook::Decap, vxlan_from_far(&dhcp_discover(FAR_1)), Reason::FLOOD_HANDOFF, Some(VNI), Some(FAR_VTEP)),
        case(
            "decap: tenant B's VTEP in VNI 100, which it does not carry",
            Hook::Decap,
            vxlan_from(TENANT_B_VTEP, VNI, &ping(TENANT_B_REMOTE, NEAR_1)),
            Reason::PEER_NOT_IN_VNI,
            Some(VNI),
            Some(TENANT_B_VTEP),
        ),
        case(
            "decap: the far VTEP in a VNI this node does not carry (the peer only)",
            Hook::Decap,
            vxlan_from(FAR_VTEP, UNKNOWN_VNI, &ping(FAR_1, NEAR_1)),
            Reason::UNKNOWN_VNI,
            None,
            Some(FAR_VTEP),
        ),
        case("decap: an unknown VTEP (nobody)", Hook::Decap, vxlan_from(STRANGER_VTEP, VNI, &ping(FAR_1, NEAR_1)), Reason::UNKNOWN_PEER, None, None),
        case(
            "decap: an outer fragment (before the peer is looked at)",
            Hook::Decap,
            vxlan_frame(&first_fragment, Vxlan::new(VNI), &ping(FAR_1, NEAR_1)),
            Reason::OUTER_FRAGMENT,
            None,
            None,
        ),
        case(
            "underlay flood: tenant B's broadcast",
            Hook::UnderlayFlood,
            vxlan_from(TENANT_B_VTEP, TENANT_B_VNI, &dhcp_discover(TENANT_B_REMOTE)),
            Reason::FLOODED,
            Some(TENANT_B_VNI),
            Some(TENANT_B_VTEP),
        ),
        case("TC decap: from the far VTEP to NEAR_1", Hook::DecapTc, vxlan_from_far(&ping(FAR_1, NEAR_1)), Reason::FORWARDED, Some(VNI), Some(FAR_VTEP)),
        case("TC decap: broadcast flooded to local ports", Hook::DecapTc, vxlan_from_far(&dhcp_discover(FAR_1)), Reason::FLOODED, Some(VNI), Some(FAR_VTEP)),
        case(
            "TC decap: tenant B's VTEP in VNI 100, which it does not carry",
            Hook::DecapTc,
            vxlan_from(TENANT_B_VTEP, VNI, &ping(TENANT_B_REMOTE, NEAR_1)),
            Reason::PEER_NOT_IN_VNI,
            Some(VNI),
            Some(TENANT_B_VTEP),
        ),
        case("p1: to FAR_1, encapsulated to the far VTEP", p1, ping(NEAR_1, FAR_1), Reason::FORWARDED, Some(VNI), Some(FAR_VTEP)),
        case(
            "p3: to tenant B's remote endpoint",
            p3,
            ping(TENANT_B_1, TENANT_B_REMOTE),
            Reason::FORWARDED,
            Some(TENANT_B_VNI),
            Some(TENANT_B_VTEP),
        ),
        case(
            "p1: too big for the underlay toward the far VTEP",
            p1,
            udp_of_ip_length(NEAR_1, FAR_1, UNDERLAY_MTU),
            Reason::ICMP_TOO_BIG_SENT,
            Some(VNI),
            Some(FAR_VTEP),
        ),
        case("p1: to NEAR_2, switched locally (no peer)", p1, ping(NEAR_1, NEAR_2), Reason::LOCAL_SWITCHED, Some(VNI), None),
        case("p1: ARP request answered (no peer)", p1, arp_request(NEAR_1, FAR_1.ip), Reason::ARP_REPLIED, Some(VNI), None),
        case("p1: broadcast flooded (copies count for the VNI only)", p1, dhcp_discover(NEAR_1), Reason::FLOODED, Some(VNI), None),
        case(
            "p1: inner VLAN tag dropped (after the port's VNI is known)",
            p1,
            vlan_tagged_ping(ETHERTYPE_8021Q, NEAR_1, FAR_1.mac, FAR_1),
            Reason::INNER_VLAN,
            Some(VNI),
            None,
        ),
    ];
    let results: Vec<Result<(), String>> = cases
        .iter()
        .map(|case| {
            let (counted, moved) =
                near.run_counting_vnis_peers(case.hook, &case.frame).map_err(|error| format!("{}: the test run failed: {error:#}", case.name))?;
            let wrong = check_attribution(case, &counted, &moved);
            if wrong.is_empty() { Ok(()) } else { Err(format!("{}:\n  - {}", case.name, wrong.join("\n  - "))) }
        })
        .collect();
    report(cases.iter().map(|case| case.name).zip(&results));
    Ok(())
}

/// The counters of `vni` (empty when it has no slot or is not carried).
fn of_vni(counters: &VniPeerCounters, vni: u32) -> Counters {
    counters.vnis.get(&vni).cloned().unwrap_or_default()
}

fn of_peer(counters: &VniPeerCounters, peer: Ipv4Addr) -> Counters {
    counters.peers.get(&peer).cloned().unwrap_or_default()
}

/// The slot the applied state gives `vni` and the peer at `vtep`.
fn vni_slot(node: &Node, vni: u32) -> Option<u32> {
    node.datapath.applied().vni_slots().get(&vni).copied()
}

fn peer_slot(node: &Node, vtep: Ipv4Addr) -> Option<u32> {
    node.datapath.applied().peer_slots().get(&ipv4_be(vtep)).copied()
}

/// Counter slots across reloads: a VNI and a peer that stay keep their
/// slots and their counts while others go; a VNI and a peer added later
/// take the freed slots and start from zero, not from what the slots
/// counted before.
#[test]
fn counter_slots_survive_reloads_and_start_at_zero_for_newcomers() -> anyhow::Result<()> {
    let mut near = Node::start(&NEAR)?;
    let near_toml = NEAR.config_toml();
    for _ in 0..3 {
        near.run(Hook::Decap, &vxlan_from_far(&ping(FAR_1, NEAR_1)), 1)?;
    }
    for _ in 0..2 {
        near.run(Hook::Decap, &vxlan_from(TENANT_B_VTEP, TENANT_B_VNI, &ping(TENANT_B_REMOTE, TENANT_B_2)), 1)?;
    }
    let before = near.datapath.vni_peer_counters()?;
    let forwarded = |counters: &Counters| counters.packets(Direction::FROM_UNDERLAY, Reason::FORWARDED);
    assert_eq!(
        (forwarded(&of_vni(&before, VNI)), forwarded(&of_vni(&before, TENANT_B_VNI))),
        (3, 2),
        "VNI 100 and 200 should have counted 3 and 2 forwarded packets: {before:?}"
    );
    let (vni_100_slot, far_slot) = (vni_slot(&near, VNI), peer_slot(&near, FAR_VTEP));
    let (vni_200_slot, tenant_b_slot) = (vni_slot(&near, TENANT_B_VNI), peer_slot(&near, TENANT_B_VTEP));

    // Tenant B leaves: its VNI, its ports and its peer.
    let without_tenant_b: String = {
        let mut text = near_toml.clone();
        for Endpoint { port, mac, ip, ipv6, vni } in [TENANT_B_1, TENANT_B_2] {
            let block = format!("\n[[endpoints]]\ninterface = \"{port}\"\nmac = \"{mac}\"\nip = \"{ip}\"\nipv6 = \"{ipv6}\"\nvni = {vni}\n");
            assert!(text.contains(&block), "the fixture's configuration changed: no {block:?} in\n{text}");
            text = text.replace(&block, "");
        }
        let peer = format!("\n[[peers]]\nname = \"tenant-b-host\"\nvtep_address = \"{TENANT_B_VTEP}\"\nvnis = []\n");
        let end = text.find(&peer).map(|at| at + peer.len()).expect("the tenant-b-host peer in the fixture's configuration");
        let next = text[end..].find("\n[[peers]]").map_or(text.len(), |at| end + at);
        text.replace_range(text.find(&peer).unwrap()..next, "");
        text
    };
    near.reconfigure(&without_tenant_b)?;
    let after_leave = near.datapath.vni_peer_counters()?;
    assert_eq!(
        (vni_slot(&near, VNI), peer_slot(&near, FAR_VTEP)),
        (vni_100_slot, far_slot),
        "VNI 100 and the far peer should keep their slots"
    );
    assert_eq!(of_vni(&after_leave, VNI), of_vni(&before, VNI), "VNI 100 should keep its counts when VNI 200 goes");
    assert_eq!(of_peer(&after_leave, FAR_VTEP), of_peer(&before, FAR_VTEP), "the far peer should keep its counts");
    assert!(
        !after_leave.vnis.contains_key(&TENANT_B_VNI) && !after_leave.peers.contains_key(&TENANT_B_VTEP),
        "VNI 200 and tenant B's peer should be gone: {after_leave:?}"
    );

    // A new tenant comes: VNI 400 on p3, behind a new peer.
    const NEW_VNI: u32 = 400;
    const NEW_VTEP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 6);
    let newcomer = Endpoint { vni: NEW_VNI, ..TENANT_B_2 };
    let remote = Endpoint { vni: NEW_VNI, ..TENANT_B_REMOTE };
    let with_newcomers = format!(
        "{without_tenant_b}\n[[endpoints]]\ninterface = \"{}\"\nmac = \"{}\"\nip = \"{}\"\nvni = {NEW_VNI}\n\n[[peers]]\nname = \"newcomer\"\nvtep_address = \"{NEW_VTEP}\"\n  [[peers.endpoints]]\n  mac = \"{}\"\n  ip = \"{}\"\n  vni = {NEW_VNI}\n",
        newcomer.port, newcomer.mac, newcomer.ip, remote.mac, remote.ip
    );
    near.reconfigure(&with_newcomers)?;
    assert_eq!(vni_slot(&near, NEW_VNI), vni_200_slot, "VNI 400 should take the slot VNI 200 freed");
    assert_eq!(peer_slot(&near, NEW_VTEP), tenant_b_slot, "the new peer should take the slot tenant B's peer freed");
    let arrived = near.datapath.vni_peer_counters()?;
    assert_eq!(of_vni(&arrived, NEW_VNI), Counters::default(), "VNI 400 must not inherit VNI 200's counts");
    assert_eq!(of_peer(&arrived, NEW_VTEP), Counters::default(), "the new peer must not inherit tenant B's peer's counts");
    assert_eq!(of_vni(&arrived, VNI), of_vni(&before, VNI), "VNI 100 still has its counts");

    let frame = vxlan_from(NEW_VTEP, NEW_VNI, &ping(remote, newcomer));
    let (_, moved) = near.run_counting_vnis_peers(Hook::Decap, &frame)?;
    let expected = Counters { rows: vec![CounterRow { direction: Direction::FROM_UNDERLAY, reason: Reason::FORWARDED, packets: 1, bytes: frame.len() as u64 }] };
    assert_eq!(
        (of_vni(&moved, NEW_VNI), of_peer(&moved, NEW_VTEP)),
        (expected.clone(), expected),
        "a packet of the new tenant should count in its VNI and peer: moved {moved:?}"
    );
    Ok(())
}

/// At the slot limit (PEER_COUNTER_SLOTS peers), a peer replaced by another in one reload
/// hands its slot straight over: the newcomer's counts start at zero, and
/// then count its packets.
#[test]
fn at_the_slot_limit_a_replacing_peer_starts_at_zero() -> anyhow::Result<()> {
    let mut near = Node::start(&NEAR)?;
    let fillers = overlay_common::PEER_COUNTER_SLOTS as usize - NEAR.peers.len();
    let full: String = NEAR.config_toml()
        + &(0..fillers)
            .map(|i| format!("\n[[peers]]\nname = \"filler{i}\"\nvtep_address = \"198.18.{}.{}\"\n", i >> 8, i & 0xff))
            .collect::<String>();
    near.reconfigure(&full)?;
    assert_eq!(near.datapath.applied().peer_slots().len(), overlay_common::PEER_COUNTER_SLOTS as usize, "every peer slot is in use");
    let from_third = vxlan_from(THIRD_VTEP, VNI, &ping(FAR_1, NEAR_1));
    near.run(Hook::Decap, &from_third, 1)?;
    let third_slot = peer_slot(&near, THIRD_VTEP);
    assert_eq!(
        of_peer(&near.datapath.vni_peer_counters()?, THIRD_VTEP).packets(Direction::FROM_UNDERLAY, Reason::FORWARDED),
        1,
        "the third peer counted its packet"
    );

    const FOURTH_VTEP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 6);
    let third = format!("name = \"third\"\nvtep_address = \"{THIRD_VTEP}\"");
    assert!(full.contains(&third), "the fixture's configuration changed: no {third:?}");
    near.reconfigure(&full.replace(&third, &format!("name = \"fourth\"\nvtep_address = \"{FOURTH_VTEP}\"")))?;
    assert_eq!(peer_slot(&near, FOURTH_VTEP), third_slot, "at the limit the fourth peer takes the slot the third released");
    let counters = near.datapath.vni_peer_counters()?;
    assert_eq!(of_peer(&counters, FOURTH_VTEP), Counters::default(), "the fourth peer must not inherit the third's counts");
    assert!(!counters.peers.contains_key(&THIRD_VTEP), "the third peer is gone");

    let from_fourth = vxlan_from(FOURTH_VTEP, VNI, &ping(FAR_1, NEAR_1));
    let (_, moved) = near.run_counting_vnis_peers(Hook::Decap, &from_fourth)?;
    assert_eq!(
        of_peer(&moved, FOURTH_VTEP).packets(Direction::FROM_UNDERLAY, Reason::FORWARDED),
        1,
        "the fourth peer's packet counts in its slot: moved {moved:?}"
    );
    Ok(())
}
