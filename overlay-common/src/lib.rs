//! Every fact the eBPF datapath and the userspace agent share, defined once.
//!
//! Map key and value types are `#[repr(C)]` with explicit padding (no hidden
//! bytes, so the kernel hashes exactly what both sides wrote), no `bool`,
//! `Option` or enums, and a compile-time size assertion each. Fields in
//! network byte order end in `_be`.
#![no_std]

pub mod reason;

pub use reason::{Direction, Reason};

/// IANA-assigned VXLAN UDP port (RFC 7348 section 5).
pub const DEFAULT_VXLAN_PORT: u16 = 4789;
/// Largest 24-bit VXLAN Network Identifier (RFC 7348 section 5).
pub const VNI_MAX: u32 = 0x00FF_FFFF;
/// Default outer UDP source port range: the IANA dynamic range, as RFC 7348
/// section 5 recommends ("49152-65535").
pub const DEFAULT_SOURCE_PORT_MIN: u16 = 49152;
pub const DEFAULT_SOURCE_PORT_MAX: u16 = 65535;
/// Default outer IPv4 TTL.
pub const DEFAULT_OUTER_TTL: u8 = 64;

pub const ETH_HDR_LEN: usize = 14;
pub const IPV4_HDR_LEN: usize = 20;
pub const UDP_HDR_LEN: usize = 8;
pub const VXLAN_HDR_LEN: usize = 8;
/// Bytes added in front of an inner Ethernet frame: outer Ethernet, IPv4
/// (no options), UDP and VXLAN headers.
pub const VXLAN_ENCAP_LEN: usize = ETH_HDR_LEN + IPV4_HDR_LEN + UDP_HDR_LEN + VXLAN_HDR_LEN;
const _: () = assert!(VXLAN_ENCAP_LEN == 50);
/// The I flag of the VXLAN header: "MUST be set to 1 for a valid VNI" (RFC 7348 section 5).
pub const VXLAN_FLAG_VNI_VALID: u8 = 0x08;

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86DD;
/// 802.1Q and 802.1ad tags: inner frames carrying them are dropped
/// (RFC 7348 section 6.1).
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPV6_HDR_LEN: usize = 40;

/// Most local ports and peer VTEPs one VNI's flood list holds.
pub const FLOOD_MAX_LOCAL_PORTS: usize = 32;
pub const FLOOD_MAX_REMOTE_VTEPS: usize = 64;
/// Default per-VNI limit on the copies one flooded frame makes.
pub const DEFAULT_FLOOD_LIMIT: u32 = 64;

/// Names and capacities of the datapath's maps. The eBPF side declares each
/// map with the static of this name; `overlay-user` finds them by these names.
pub mod maps {
    /// (VNI, MAC) of a remote endpoint -> [`crate::FdbEntry`] (its VTEP).
    pub const FDB: &str = "FDB";
    /// Above the 100,000 remote endpoints a node is built for (issue 9).
    pub const FDB_CAPACITY: u32 = 131072;
    /// VNI -> [`crate::VniInfo`]: the VNIs this node carries.
    pub const VNIS: &str = "VNIS";
    /// Twice the most VNIs a node carries (`VNI_COUNTER_SLOTS`): a change
    /// adds the new entries before it removes the old ones, so replacing
    /// every VNI in one reload briefly holds both.
    pub const VNIS_CAPACITY: u32 = 2 * crate::VNI_COUNTER_SLOTS;
    /// (VNI, MAC) of a local endpoint -> [`crate::LocalEndpoint`] (its port).
    pub const LOCAL_ENDPOINTS: &str = "LOCAL_ENDPOINTS";
    pub const LOCAL_ENDPOINTS_CAPACITY: u32 = 8192;
    /// Host-side ifindex of an endpoint port -> [`crate::PortInfo`] (its VNI).
    pub const PORTS: &str = "PORTS";
    pub const PORTS_CAPACITY: u32 = 8192;
    /// Peer VTEP IPv4 address -> [`crate::PeerInfo`]: who may send us VXLAN.
    pub const PEERS: &str = "PEERS";
    /// Twice the most peers (`PEER_COUNTER_SLOTS`), as for `VNIS`.
    pub const PEERS_CAPACITY: u32 = 2 * crate::PEER_COUNTER_SLOTS;
    /// (peer VTEP, VNI) -> [`crate::PeerInfo`]: which peer may send which
    /// VNI, so a peer of one tenant cannot inject frames into another.
    pub const PEER_VNIS: &str = "PEER_VNIS";
    pub const PEER_VNIS_CAPACITY: u32 = 131072;
    /// (VNI, IPv4 address) -> [`crate::NeighbourEntry`] (its MAC), for ARP answers.
    pub const NEIGHBOURS: &str = "NEIGHBOURS";
    /// Every local and remote endpoint has an IPv4 address: as large as `FDB`.
    pub const NEIGHBOURS_CAPACITY: u32 = FDB_CAPACITY;
    /// (VNI, IPv6 address) -> [`crate::NeighbourEntry`], for neighbour advertisements.
    pub const NEIGHBOURS6: &str = "NEIGHBOURS6";
    pub const NEIGHBOURS6_CAPACITY: u32 = 65536;
    /// VNI -> [`crate::FloodTargets`]: where a broadcast, multicast or
    /// unknown-unicast frame of the VNI is replicated to.
    pub const FLOOD: &str = "FLOOD";
    pub const FLOOD_CAPACITY: u32 = VNIS_CAPACITY;
    /// Per-CPU array of one u32: the next outer IPv4 ID.
    pub const IP_IDS: &str = "IP_IDS";
    /// Array of one [`crate::NodeConfig`].
    pub const NODE: &str = "NODE";
    /// Array of one [`crate::UnderlayMac`]: the underlay device's own MAC,
    /// for XDP, which has no skb `pkt_type` to tell frames for another host.
    /// A map of its own rather than a `NodeConfig` field: growing a pinned
    /// map's values makes the pins of the previous version incompatible,
    /// while a new map is simply created beside them on adoption.
    pub const UNDERLAY_MAC: &str = "UNDERLAY_MAC";
    /// Ring buffer of [`crate::MonitorEvent`]s for `overlay monitor`.
    pub const EVENTS: &str = "EVENTS";
    pub const EVENTS_BYTES: u32 = 256 * 1024;
    /// Array of one [`crate::MonitorConfig`], set by `overlay monitor`.
    pub const MONITOR: &str = "MONITOR";
    /// Per-CPU array of one [`crate::MonitorBucket`]: the event rate limiter.
    pub const MONITOR_BUCKETS: &str = "MONITOR_BUCKETS";
    /// Per-CPU array of one u64: events not emitted (rate limit, full buffer).
    pub const MONITOR_LOST: &str = "MONITOR_LOST";
    /// Peer VTEP IPv4 address -> [`crate::RouteCacheEntry`]: the underlay
    /// route to it, cached by the datapath for [`crate::ROUTE_CACHE_TTL_NS`]
    /// so that encapsulation needs no FIB lookup per packet. LRU: entries
    /// of peers that no longer send are evicted first.
    pub const ROUTE_CACHE: &str = "ROUTE_CACHE";
    pub const ROUTE_CACHE_CAPACITY: u32 = PEERS_CAPACITY;
    /// Per-CPU array of [`crate::Counter`], indexed by [`crate::counter_index`].
    pub const COUNTERS: &str = "COUNTERS";
    pub const COUNTERS_CAPACITY: u32 = crate::reason::DIRECTION_COUNT * crate::reason::REASON_SLOTS;
    /// Per-CPU hash of [`crate::SlotCounterKey`] (a VNI's counter slot, a
    /// direction and reason) -> [`crate::Counter`]: only the combinations
    /// that happened take room (a VNI sees a few reasons, not all 128).
    /// Memory: 65,536 entries x 16 bytes = 1 MiB per CPU, preallocated.
    /// The datapath counts only drops here now (outcomes go to
    /// `VNI_OUTCOMES`); readers add both, so outcomes that an earlier
    /// datapath counted here before an upgrade stay counted.
    pub const VNI_COUNTERS: &str = "VNI_COUNTERS";
    pub const VNI_COUNTERS_CAPACITY: u32 = crate::SLOT_COUNTER_ENTRIES;
    /// Per-CPU hash like `VNI_COUNTERS`, for peer VTEPs' counter slots.
    pub const PEER_COUNTERS: &str = "PEER_COUNTERS";
    pub const PEER_COUNTERS_CAPACITY: u32 = crate::SLOT_COUNTER_ENTRIES;
    /// Per-CPU array of [`crate::SlotOutcomes`] indexed by a VNI's counter
    /// slot: the outcomes (reasons below `FIRST_DROP`) of every packet with
    /// a VNI slot count here, its drops in `VNI_COUNTERS`. An array lookup
    /// touches one cache line where the hash touched a bucket, an element
    /// and its per-CPU value: with packets going round 4,096 VNIs, TC
    /// decapsulation took 2.3 times as long as with one (docs/performance.md).
    /// Memory: 4,097 x 512 bytes = 2 MiB per CPU, preallocated.
    pub const VNI_OUTCOMES: &str = "VNI_OUTCOMES";
    /// Slots are `1..=VNI_COUNTER_SLOTS`; entry 0 (`NO_COUNTER_SLOT`) is unused.
    pub const VNI_OUTCOMES_CAPACITY: u32 = crate::VNI_COUNTER_SLOTS + 1;
    /// Per-CPU array like `VNI_OUTCOMES`, for peer VTEPs' counter slots.
    pub const PEER_OUTCOMES: &str = "PEER_OUTCOMES";
    pub const PEER_OUTCOMES_CAPACITY: u32 = crate::PEER_COUNTER_SLOTS + 1;
    /// Array of one [`crate::NodeConfig`], created on the underlay NIC for
    /// the offloaded admission program (`--xdp-mode offload`), not pinned.
    pub const OFFLOAD_NODE: &str = "OFFLOAD_NODE";
}

/// Names of the eBPF programs in the object.
pub mod programs {
    /// XDP, on the underlay device: VXLAN decapsulation.
    pub const DECAP_XDP: &str = "overlay_decap";
    /// TC ingress of the underlay device, in place of XDP and the flood
    /// program (`--decap tc`): VXLAN decapsulation and flooding to local ports.
    pub const DECAP_TC: &str = "overlay_decap_tc";
    /// TC ingress of each endpoint's host-side port (the container's egress):
    /// encapsulation, local switching, ARP and ND answers, flooding.
    pub const ENDPOINT_TC: &str = "overlay_endpoint";
    /// TC ingress of the underlay device: delivers the broadcast and
    /// multicast VXLAN frames that XDP passes up to every local port of
    /// their VNI (XDP cannot clone a frame).
    pub const UNDERLAY_FLOOD_TC: &str = "overlay_underlay_flood";
    /// Every program of the object, as the agent loads (and unloads) them.
    pub const ALL: [&str; 4] = [DECAP_XDP, DECAP_TC, ENDPOINT_TC, UNDERLAY_FLOOD_TC];
    /// XDP offloaded to the underlay NIC (`--xdp-mode offload`): drops
    /// VXLAN with bad outer headers there. Not in `ALL`: it is loaded bound
    /// to the device, apart from the object (see overlay-user's `offload`).
    pub const OFFLOAD_XDP: &str = "overlay_offload_admit";
}

/// Key of the FDB and of the local endpoint table: a MAC address within a VNI.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VniMac {
    pub vni: u32,
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<VniMac>() == 12);

impl VniMac {
    pub const fn new(vni: u32, mac: [u8; 6]) -> Self {
        Self { vni, mac, _pad: [0; 2] }
    }
}

/// Key of the IPv6 neighbour table: an IPv6 address within a VNI.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VniIpv6 {
    pub vni: u32,
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<VniIpv6>() == 20);

/// Key of the neighbour table: an IPv4 address within a VNI.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VniIpv4 {
    pub vni: u32,
    pub addr_be: u32,
}
const _: () = assert!(core::mem::size_of::<VniIpv4>() == 8);

/// Key of the peer-VNI table: a peer VTEP and a VNI it carries.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerVni {
    pub vtep_addr_be: u32,
    pub vni: u32,
}
const _: () = assert!(core::mem::size_of::<PeerVni>() == 8);

/// FDB value: where a remote MAC lives.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FdbEntry {
    /// The remote VTEP's IPv4 address.
    pub vtep_addr_be: u32,
    /// That peer's counter slot (its `PeerInfo::counter_slot`), so that
    /// encapsulation counts per peer without another lookup.
    pub peer_slot: u32,
}
const _: () = assert!(core::mem::size_of::<FdbEntry>() == 8);

/// Local endpoint value: the host-side port (ifindex) that reaches it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LocalEndpoint {
    pub ifindex: u32,
    pub _reserved: u32,
}
const _: () = assert!(core::mem::size_of::<LocalEndpoint>() == 8);

/// Port value: the VNI of every frame a port sends.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortInfo {
    pub vni: u32,
    /// That VNI's counter slot (its `VniInfo::counter_slot`).
    pub vni_slot: u32,
}
const _: () = assert!(core::mem::size_of::<PortInfo>() == 8);

/// VNI table value. Presence means the node carries the VNI.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VniInfo {
    /// The VNI's counter slot: its entry in `VNI_COUNTERS`. This table is
    /// where the slot is recorded; the other values that carry it copy it.
    pub counter_slot: u32,
    /// Most copies one flooded frame of this VNI makes (ports and peers).
    pub flood_limit: u32,
}
const _: () = assert!(core::mem::size_of::<VniInfo>() == 8);

/// Peer table value. Presence means VXLAN from that source address is accepted.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerInfo {
    pub flags: u32,
    /// The peer's counter slot: its entry in `PEER_COUNTERS`. This table is
    /// where the slot is recorded; the other values that carry it copy it.
    pub counter_slot: u32,
}
const _: () = assert!(core::mem::size_of::<PeerInfo>() == 8);

/// Peer-VNI table value. Presence means the peer may send the VNI; the
/// slots let decapsulation count per peer and per VNI with the lookup it
/// makes anyway. (8 bytes, as the `PeerInfo` that earlier versions stored
/// here, so their pinned tables stay adoptable: all-zero means no slots.)
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerVniInfo {
    pub peer_slot: u32,
    pub vni_slot: u32,
}
const _: () = assert!(core::mem::size_of::<PeerVniInfo>() == 8);

/// Neighbour table value: the MAC that owns an overlay IPv4 address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NeighbourEntry {
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<NeighbourEntry>() == 8);

/// Where one VNI's flooded frames go: its local ports and the VTEPs of the
/// peers that carry it. Only the first `*_count` entries are used.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FloodTargets {
    pub local_count: u32,
    pub remote_count: u32,
    pub local_ifindex: [u32; FLOOD_MAX_LOCAL_PORTS],
    pub remote_vtep_be: [u32; FLOOD_MAX_REMOTE_VTEPS],
}
const _: () = assert!(core::mem::size_of::<FloodTargets>() == 8 + 4 * (FLOOD_MAX_LOCAL_PORTS + FLOOD_MAX_REMOTE_VTEPS));

/// This node's VTEP settings (the single entry of the `NODE` array).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeConfig {
    /// Our VTEP IPv4 address: the outer source on encap, the accepted outer
    /// destination on decap.
    pub vtep_addr_be: u32,
    /// Underlay device; the FIB lookup for a peer VTEP is made from it.
    pub underlay_ifindex: u32,
    /// VXLAN UDP destination port (sent and accepted).
    pub vxlan_port_be: u16,
    /// Outer UDP source port range, host byte order, inclusive.
    pub source_port_min: u16,
    pub source_port_max: u16,
    /// Outer IPv4 TTL.
    pub ttl: u8,
    pub _pad0: u8,
    /// Non-zero once the agent has written this entry; the datapath passes
    /// everything untouched until then.
    pub configured: u32,
}
const _: () = assert!(core::mem::size_of::<NodeConfig>() == 20);

/// The underlay device's MAC, as the kernel's `eth_type_trans` compares
/// frames with it. All-zero (not written yet, or a device without one):
/// XDP decapsulation checks nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnderlayMac {
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<UnderlayMac>() == 8);

/// How long the datapath trusts a cached route to a peer VTEP before it asks
/// the kernel's FIB again: a route or next-hop change takes effect within
/// this time. 100 ms is well within the kernel's own neighbour staleness
/// (an entry stays usable for seconds after its last confirmation) and
/// makes a miss, two FIB lookups, rare enough to cost nothing measurable.
pub const ROUTE_CACHE_TTL_NS: u64 = 100_000_000;

/// A cached underlay route to a peer VTEP (only resolved next hops are cached).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteCacheEntry {
    /// CLOCK_MONOTONIC (coarse) time after which the entry is looked up anew.
    pub expires_ns: u64,
    /// Egress device.
    pub ifindex: u32,
    /// The route's MTU: larger outer packets get ICMP too-big.
    pub mtu: u32,
    pub source_mac: [u8; 6],
    pub next_hop_mac: [u8; 6],
    /// The next hop's IPv4 address (the peer, or a gateway).
    pub next_hop_be: u32,
}
const _: () = assert!(core::mem::size_of::<RouteCacheEntry>() == 32);

/// How many bytes of each packet a monitor event carries.
pub const MONITOR_CAPTURE_LEN: usize = 128;
// The datapath bounds its copy length with a mask (see monitor.rs).
const _: () = assert!(MONITOR_CAPTURE_LEN.is_power_of_two());
/// Defaults of `overlay monitor`: events per second per CPU, and burst.
pub const DEFAULT_MONITOR_RATE: u32 = 1000;
pub const DEFAULT_MONITOR_BURST: u32 = 100;

/// What `overlay monitor` asks of the datapath. All zero: no events.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MonitorConfig {
    /// Non-zero while a monitor listens.
    pub enabled: u32,
    /// Token-bucket refill, events per second on each CPU.
    pub events_per_second: u32,
    /// Token-bucket size.
    pub burst: u32,
    /// Also trace one forwarded packet in this many (0: drops only).
    pub sample_forwarded_every: u32,
}
const _: () = assert!(core::mem::size_of::<MonitorConfig>() == 16);

/// One CPU's event rate limiter.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MonitorBucket {
    pub tokens: u64,
    pub last_refill_ns: u64,
    /// Forwarded packets seen, for sampling.
    pub forwarded_seen: u64,
}
const _: () = assert!(core::mem::size_of::<MonitorBucket>() == 24);

/// A datapath event: why, where, and the packet's first bytes (outer
/// headers for packets from the underlay, the frame for packets from an
/// endpoint).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MonitorEvent {
    pub timestamp_ns: u64,
    pub reason: u32,
    pub direction: u32,
    /// The device the packet arrived on.
    pub ifindex: u32,
    pub packet_len: u32,
    /// How many bytes of `data` are the packet's.
    pub captured_len: u32,
    pub _pad: u32,
    pub data: [u8; MONITOR_CAPTURE_LEN],
}
const _: () = assert!(core::mem::size_of::<MonitorEvent>() == 32 + MONITOR_CAPTURE_LEN);

/// A packet and byte counter (one per CPU, direction and reason).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<Counter>() == 16);

/// Index into the `COUNTERS` array (and of a [`SlotCounterKey`]) for a
/// direction and reason.
#[inline(always)]
pub const fn counter_index(direction: Direction, reason: Reason) -> u32 {
    direction.0 * reason::REASON_SLOTS + (reason.0 % reason::REASON_SLOTS)
}

/// Counter slots: the agent gives each VNI this node carries and each peer
/// VTEP a small number, its entry in `VNI_COUNTERS` or `PEER_COUNTERS`,
/// and writes it into the map values the datapath reads anyway (`VniInfo`,
/// `PortInfo`, `PeerInfo`, `PeerVniInfo`, `FdbEntry`). Slots are
/// `1..=VNI_COUNTER_SLOTS` and `1..=PEER_COUNTER_SLOTS`; zero means no slot
/// (so entries written before slots existed count only globally).
pub const NO_COUNTER_SLOT: u32 = 0;
/// Most VNIs one node carries: each needs a slot. A configuration with
/// more is refused.
pub const VNI_COUNTER_SLOTS: u32 = 4096;
/// Most peers one node has: each needs a slot. A configuration with more
/// is refused. (A VNI floods to at most `FLOOD_MAX_REMOTE_VTEPS` of them.)
pub const PEER_COUNTER_SLOTS: u32 = 4096;
/// Entries of `VNI_COUNTERS` and of `PEER_COUNTERS`: (slot, direction,
/// reason) combinations that counted something. 16 per slot at the slot
/// limit, where a VNI or peer in steady use has 2 to 6 (forwarded both
/// ways, flooded, an occasional drop). When a map is full, a combination
/// not seen before counts only in the node's `COUNTERS`.
pub const SLOT_COUNTER_ENTRIES: u32 = 65536;

/// Key of `VNI_COUNTERS` and `PEER_COUNTERS`: a counter slot and a
/// [`counter_index`] (direction and reason), as in `COUNTERS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SlotCounterKey {
    pub slot: u32,
    pub index: u32,
}
const _: () = assert!(core::mem::size_of::<SlotCounterKey>() == 8);

/// Outcome counters of one counter slot (a VNI's or a peer's), one per
/// direction and outcome: the value of `VNI_OUTCOMES` and `PEER_OUTCOMES`,
/// indexed by [`outcome_index`]. Drops, rarer and of many more reasons,
/// count in the slot-keyed hashes (`VNI_COUNTERS`, `PEER_COUNTERS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotOutcomes {
    pub counters: [Counter; SLOT_OUTCOMES],
}
/// Counters in a [`SlotOutcomes`]: every direction's outcome codes.
pub const SLOT_OUTCOMES: usize = (reason::DIRECTION_COUNT * reason::FIRST_DROP) as usize;
const _: () = assert!(core::mem::size_of::<SlotOutcomes>() == SLOT_OUTCOMES * 16);
// A power of two, so that the datapath can bound an index with a mask.
const _: () = assert!(SLOT_OUTCOMES.is_power_of_two());

/// Index into [`SlotOutcomes::counters`] for a direction and an outcome
/// (a reason below `FIRST_DROP`; the caller checks `!reason.is_drop()`).
#[inline(always)]
pub const fn outcome_index(direction: Direction, reason: Reason) -> u32 {
    direction.0 * reason::FIRST_DROP + (reason.0 % reason::FIRST_DROP)
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), made only of integers and byte arrays,
    // with explicit padding, so every bit pattern is valid and none is hidden.
    unsafe impl aya::Pod for super::VniMac {}
    unsafe impl aya::Pod for super::SlotCounterKey {}
    unsafe impl aya::Pod for super::VniIpv4 {}
    unsafe impl aya::Pod for super::VniIpv6 {}
    unsafe impl aya::Pod for super::PeerVni {}
    unsafe impl aya::Pod for super::FloodTargets {}
    unsafe impl aya::Pod for super::FdbEntry {}
    unsafe impl aya::Pod for super::LocalEndpoint {}
    unsafe impl aya::Pod for super::PortInfo {}
    unsafe impl aya::Pod for super::VniInfo {}
    unsafe impl aya::Pod for super::PeerInfo {}
    unsafe impl aya::Pod for super::PeerVniInfo {}
    unsafe impl aya::Pod for super::NeighbourEntry {}
    unsafe impl aya::Pod for super::NodeConfig {}
    unsafe impl aya::Pod for super::UnderlayMac {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::SlotOutcomes {}
    unsafe impl aya::Pod for super::RouteCacheEntry {}
    unsafe impl aya::Pod for super::MonitorConfig {}
    unsafe impl aya::Pod for super::MonitorBucket {}
    unsafe impl aya::Pod for super::MonitorEvent {}
}
