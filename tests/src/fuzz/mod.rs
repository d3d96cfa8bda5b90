//! Structure-aware frame generation for fuzzing the datapath through
//! BPF_PROG_TEST_RUN (`tests/tests/fuzz_datapath.rs`), and the oracles its
//! invariants are checked against.
//!
//! Every frame comes from its own PRNG stream, derived from the run's seed,
//! the program and the frame's index: a failure is replayed from those three
//! numbers alone ([`Rng::for_frame`]), whatever ran before it.
//!
//! The generators build valid frames of each family the programs meet
//! (Ethernet, IPv4, IPv6, UDP, VXLAN, ARP, neighbour discovery) with the
//! [`crate::frames`] builders, then mutate most of them: every length
//! field, flags, options, truncation, VNI, source VTEP, inner VLAN tags,
//! fragments, multicast and broadcast addresses, stray bytes. The oracles
//! ([`oracle`]) are written from the RFCs, not from the datapath: what must
//! hold of a verdict whatever the program decided.
pub mod generate;
pub mod oracle;

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::frames::Mac;

/// SplitMix64 (Steele, Lea, Flood 2014): small, fast, and good enough to
/// pick fields; the same seed gives the same frames on every machine.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The stream of frame `index` of program `program` in a run seeded `seed`.
    pub fn for_frame(seed: u64, program: u64, index: u64) -> Rng {
        let mut mixer = Rng(seed ^ program.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let base = mixer.next_u64();
        Rng(base ^ index.wrapping_mul(0xd1b5_4a32_d192_ed03))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the bias is negligible for small n).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `0..n` as an index (0 when `n` is 0).
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n.max(1) as u64) as usize
    }

    /// Uniform in `low..=high`.
    pub fn within(&mut self, low: usize, high: usize) -> usize {
        low + self.below((high - low + 1) as u64) as usize
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    pub fn u16(&mut self) -> u16 {
        self.next_u64() as u16
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.byte()).collect()
    }
}

/// A container, local or behind a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub mac: Mac,
    pub ip: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    pub vni: u32,
}

/// A container on the fuzzed node, on the host-side port `port`.
#[derive(Clone, Copy, Debug)]
pub struct LocalEndpoint {
    pub port: &'static str,
    pub endpoint: Endpoint,
}

/// A peer node as the fuzzed node's configuration lists it.
#[derive(Clone, Debug)]
pub struct Peer {
    pub name: &'static str,
    pub vtep: Ipv4Addr,
    /// Its underlay MAC (a permanent neighbour entry); `None`: unresolved.
    pub underlay_mac: Option<Mac>,
    pub endpoints: Vec<Endpoint>,
    /// VNIs it carries without an endpoint in them.
    pub extra_vnis: Vec<u32>,
}

impl Peer {
    pub fn carries(&self, vni: u32) -> bool {
        self.extra_vnis.contains(&vni) || self.endpoints.iter().any(|e| e.vni == vni)
    }
}

/// The fuzzed node and the overlay around it: what its configuration says,
/// and what the generators draw addresses from.
#[derive(Clone, Debug)]
pub struct World {
    pub vtep: Ipv4Addr,
    pub underlay_mac: Mac,
    pub vxlan_port: u16,
    /// Configured outer UDP source ports (narrower than the default, so
    /// that the range check means something).
    pub source_ports: (u16, u16),
    pub ttl: u8,
    pub locals: Vec<LocalEndpoint>,
    pub peers: Vec<Peer>,
    /// Sources that are no peer.
    pub strangers: Vec<Ipv4Addr>,
    /// Another host's unicast MAC on the underlay segment.
    pub other_host_mac: Mac,
    /// A VNI nobody carries.
    pub unknown_vni: u32,
}

const fn mac(last: u8, vni_byte: u8) -> Mac {
    Mac([0x02, 0, 0, 0, vni_byte, last])
}

const fn v6(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, last)
}

impl World {
    /// The packets/ near node, with a narrower source port range: two
    /// tenants (VNI 100 on p1 and p2, VNI 200 on p3, with overlapping
    /// addresses) and four peers (the far node and a third node in VNI 100,
    /// a tenant-B node, and a VNI-100 node whose next hop is unresolved).
    pub fn standard() -> World {
        let a = |last: u8| Endpoint { mac: mac(last, 1), ip: Ipv4Addr::new(10, 10, 0, last), ipv6: v6(last as u16), vni: 100 };
        let b = |last: u8| Endpoint { mac: mac(last, 0x0b), ip: Ipv4Addr::new(10, 10, 0, last), ipv6: v6(last as u16), vni: 200 };
        World {
            vtep: Ipv4Addr::new(192, 0, 2, 1),
            underlay_mac: Mac([0x02, 0xaa, 0xaa, 0xaa, 0xaa, 0x01]),
            vxlan_port: 4789,
            source_ports: (50000, 50999),
            ttl: 64,
            locals: vec![
                LocalEndpoint { port: "p1", endpoint: a(1) },
                LocalEndpoint { port: "p2", endpoint: a(3) },
                // Tenant B reuses tenant A's first IPv4 address.
                LocalEndpoint { port: "p3", endpoint: b(1) },
                LocalEndpoint { port: "p3", endpoint: b(20) },
            ],
            peers: vec![
                Peer {
                    name: "far",
                    vtep: Ipv4Addr::new(192, 0, 2, 2),
                    underlay_mac: Some(Mac([0x02, 0xaa, 0xaa, 0xaa, 0xaa, 0x02])),
                    endpoints: vec![a(2), a(4)],
                    extra_vnis: vec![],
                },
                Peer {
                    name: "third",
                    vtep: Ipv4Addr::new(192, 0, 2, 3),
                    underlay_mac: Some(Mac([0x02, 0xaa, 0xaa, 0xaa, 0xaa, 0x03])),
                    endpoints: vec![],
                    extra_vnis: vec![100],
                },
                Peer {
                    name: "tenant-b-host",
                    vtep: Ipv4Addr::new(192, 0, 2, 4),
                    underlay_mac: Some(Mac([0x02, 0xaa, 0xaa, 0xaa, 0xaa, 0x04])),
                    endpoints: vec![b(21)],
                    extra_vnis: vec![],
                },
                Peer {
                    name: "unresolved",
                    vtep: Ipv4Addr::new(192, 0, 2, 5),
                    underlay_mac: None,
                    endpoints: vec![],
                    extra_vnis: vec![100],
                },
            ],
            strangers: vec![Ipv4Addr::new(192, 0, 2, 99), Ipv4Addr::new(198, 51, 100, 7)],
            other_host_mac: Mac([0x02, 0xaa, 0xaa, 0xaa, 0xaa, 0x77]),
            unknown_vni: 300,
        }
    }

    /// The node's configuration file.
    pub fn config_toml(&self, name: &str, underlay: &str) -> String {
        use std::fmt::Write as _;
        let mut text = format!(
            "[node]\nname = \"{name}\"\nunderlay_interface = \"{underlay}\"\nvtep_address = \"{}\"\nvxlan_port = {}\nttl = {}\nsource_port_range = [{}, {}]\n",
            self.vtep, self.vxlan_port, self.ttl, self.source_ports.0, self.source_ports.1
        );
        for LocalEndpoint { port, endpoint: e } in &self.locals {
            write!(text, "\n[[endpoints]]\ninterface = \"{port}\"\nmac = \"{}\"\nip = \"{}\"\nipv6 = \"{}\"\nvni = {}\n", e.mac, e.ip, e.ipv6, e.vni)
                .unwrap();
        }
        for peer in &self.peers {
            write!(text, "\n[[peers]]\nname = \"{}\"\nvtep_address = \"{}\"\nvnis = {:?}\n", peer.name, peer.vtep, peer.extra_vnis).unwrap();
            for e in &peer.endpoints {
                write!(text, "\n  [[peers.endpoints]]\n  mac = \"{}\"\n  ip = \"{}\"\n  ipv6 = \"{}\"\n  vni = {}\n", e.mac, e.ip, e.ipv6, e.vni)
                    .unwrap();
            }
        }
        text
    }

    /// The host-side ports, each once.
    pub fn ports(&self) -> Vec<&'static str> {
        let mut ports: Vec<&'static str> = self.locals.iter().map(|l| l.port).collect();
        ports.dedup();
        ports
    }

    /// The VNI of a port.
    pub fn port_vni(&self, port: &str) -> u32 {
        self.locals.iter().find(|l| l.port == port).map(|l| l.endpoint.vni).unwrap_or_else(|| panic!("no port {port}"))
    }

    /// The ports of a VNI, each once.
    pub fn ports_of_vni(&self, vni: u32) -> Vec<&'static str> {
        let mut ports: Vec<&'static str> = self.locals.iter().filter(|l| l.endpoint.vni == vni).map(|l| l.port).collect();
        ports.dedup();
        ports
    }

    /// The VNIs this node carries.
    pub fn vnis(&self) -> Vec<u32> {
        let mut vnis: Vec<u32> = self.locals.iter().map(|l| l.endpoint.vni).collect();
        vnis.sort();
        vnis.dedup();
        vnis
    }

    /// Whether VXLAN from `source` in `vni` is admitted: a configured peer
    /// that carries a VNI this node carries.
    pub fn admits(&self, source: Ipv4Addr, vni: u32) -> bool {
        self.vnis().contains(&vni) && self.peers.iter().any(|p| p.vtep == source && p.carries(vni))
    }

    /// The local endpoint with this MAC in this VNI.
    pub fn local(&self, vni: u32, mac: Mac) -> Option<&LocalEndpoint> {
        self.locals.iter().find(|l| l.endpoint.vni == vni && l.endpoint.mac == mac)
    }

    /// The peer behind which this MAC lives in this VNI (the FDB).
    pub fn remote_owner(&self, vni: u32, mac: Mac) -> Option<&Peer> {
        self.peers.iter().find(|p| p.endpoints.iter().any(|e| e.vni == vni && e.mac == mac))
    }

    /// Every endpoint, local and remote.
    pub fn all_endpoints(&self) -> Vec<Endpoint> {
        self.locals.iter().map(|l| l.endpoint).chain(self.peers.iter().flat_map(|p| p.endpoints.iter().copied())).collect()
    }
}
