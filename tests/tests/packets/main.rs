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
    collections::BTreeSet,
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
    sync::atomic::AtomicU32,
    time::Duration,
};

use anyhow::Context as _;
use overlay::{
    Counters, VniPeerCounters,
    datapath::CounterRow,
    state::ipv4_be,
};
use overlay_common::{Direction, Reason};
use overlay_lab::bpf_run::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_DROP, XDP_PASS, XDP_REDIRECT};
use overlay_lab::frames::{
        self, Arp, BROADCAST, ETHERNET_LEN, ETHERTYPE_8021AD, ETHERTYPE_8021Q, ETHERTYPE_IPV4,
        ETHERTYPE_IPV6, Ethernet, ICMP_HOST_UNREACHABLE, ICMP_DESTINATION_UNREACHABLE, ICMPV6_DESTINATION_UNREACHABLE,
        ICMPV6_ECHO_REQUEST, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, IPV4_LEN,
        IPV4_MORE_FRAGMENTS, IPV6_LEN, Ipv4, Ipv6, Mac, Tcp,
        UDP_LEN, Udp, VXLAN_LEN, Vxlan, VxlanOverIpv4,
    };

mod counters;
mod crafted;
mod crossing;
mod decap;
mod encap;
mod learning;
mod node;
mod table;

use crafted::*;
use node::*;
use table::*;

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
