//! The datapath's maps. Each static's name is the one `overlay_common::maps`
//! names (the `#[map]` macro names a map after its static), and the
//! userspace test `object_has_every_map` checks they agree.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use overlay_common::{
    Counter, FdbEntry, LocalEndpoint, NeighbourEntry, NodeConfig, PeerInfo, PortInfo, VniInfo,
    VniIpv4, VniMac, maps,
};

#[map]
pub static FDB: HashMap<VniMac, FdbEntry> = HashMap::with_max_entries(maps::FDB_CAPACITY, 0);

#[map]
pub static VNIS: HashMap<u32, VniInfo> = HashMap::with_max_entries(maps::VNIS_CAPACITY, 0);

#[map]
pub static LOCAL_ENDPOINTS: HashMap<VniMac, LocalEndpoint> =
    HashMap::with_max_entries(maps::LOCAL_ENDPOINTS_CAPACITY, 0);

#[map]
pub static PORTS: HashMap<u32, PortInfo> = HashMap::with_max_entries(maps::PORTS_CAPACITY, 0);

#[map]
pub static PEERS: HashMap<u32, PeerInfo> = HashMap::with_max_entries(maps::PEERS_CAPACITY, 0);

#[map]
pub static NEIGHBOURS: HashMap<VniIpv4, NeighbourEntry> =
    HashMap::with_max_entries(maps::NEIGHBOURS_CAPACITY, 0);

#[map]
pub static NODE: Array<NodeConfig> = Array::with_max_entries(1, 0);

#[map]
pub static COUNTERS: PerCpuArray<Counter> =
    PerCpuArray::with_max_entries(maps::COUNTERS_CAPACITY, 0);

/// This node's settings, once the agent has written them.
#[inline(always)]
pub fn node_config() -> Option<&'static NodeConfig> {
    NODE.get(0).filter(|node| node.configured != 0)
}
