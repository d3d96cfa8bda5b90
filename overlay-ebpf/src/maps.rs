//! The datapath's maps. Each static's name is the one `overlay_common::maps`
//! names (the `#[map]` macro names a map after its static), and the
//! userspace test `object_has_every_map` checks they agree.
use aya_ebpf::{
    bindings::bpf_fib_lookup,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use overlay_common::{
    Counter, FdbEntry, FloodTargets, LocalEndpoint, MonitorBucket, MonitorConfig, NeighbourEntry,
    NodeConfig, PeerInfo, PeerVni, PeerVniInfo,
    PortInfo, Reason, RouteCacheEntry, SlotCounterKey, SlotOutcomes, UnderlayMac, VniInfo, VniIpv4, VniIpv6, VniMac, maps,
};

use crate::counters::Slots;

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
pub static PEER_VNIS: HashMap<PeerVni, PeerVniInfo> = HashMap::with_max_entries(maps::PEER_VNIS_CAPACITY, 0);

#[map]
pub static NEIGHBOURS: HashMap<VniIpv4, NeighbourEntry> =
    HashMap::with_max_entries(maps::NEIGHBOURS_CAPACITY, 0);

#[map]
pub static NEIGHBOURS6: HashMap<VniIpv6, NeighbourEntry> =
    HashMap::with_max_entries(maps::NEIGHBOURS6_CAPACITY, 0);

#[map]
pub static FLOOD: HashMap<u32, FloodTargets> = HashMap::with_max_entries(maps::FLOOD_CAPACITY, 0);

#[map]
pub static ROUTE_CACHE: LruHashMap<u32, RouteCacheEntry> =
    LruHashMap::with_max_entries(maps::ROUTE_CACHE_CAPACITY, 0);

#[map]
pub static IP_IDS: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static NODE: Array<NodeConfig> = Array::with_max_entries(1, 0);

#[map]
pub static UNDERLAY_MAC: Array<UnderlayMac> = Array::with_max_entries(1, 0);

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(maps::EVENTS_BYTES, 0);

#[map]
pub static MONITOR: Array<MonitorConfig> = Array::with_max_entries(1, 0);

#[map]
pub static MONITOR_BUCKETS: PerCpuArray<MonitorBucket> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static MONITOR_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static COUNTERS: PerCpuArray<Counter> =
    PerCpuArray::with_max_entries(maps::COUNTERS_CAPACITY, 0);

#[map]
pub static VNI_COUNTERS: PerCpuHashMap<SlotCounterKey, Counter> =
    PerCpuHashMap::with_max_entries(maps::VNI_COUNTERS_CAPACITY, 0);

#[map]
pub static PEER_COUNTERS: PerCpuHashMap<SlotCounterKey, Counter> =
    PerCpuHashMap::with_max_entries(maps::PEER_COUNTERS_CAPACITY, 0);

#[map]
pub static VNI_OUTCOMES: PerCpuArray<SlotOutcomes> =
    PerCpuArray::with_max_entries(maps::VNI_OUTCOMES_CAPACITY, 0);

#[map]
pub static PEER_OUTCOMES: PerCpuArray<SlotOutcomes> =
    PerCpuArray::with_max_entries(maps::PEER_OUTCOMES_CAPACITY, 0);

/// Per-CPU scratch space for frames the datapath builds (ICMP and ND
/// answers). Verifier: BPF stacks are 512 bytes for a whole call chain, too
/// little to build a 110-byte frame beside everything else. A program's run
/// never nests with another on the same CPU (softirq), and clones are
/// delivered asynchronously, so one buffer per CPU is enough.
#[map]
pub static SCRATCH: PerCpuArray<ScratchBuffer> = PerCpuArray::with_max_entries(1, 0);

#[repr(C, align(8))]
pub struct ScratchBuffer {
    /// A frame being built.
    pub frame: [u8; SCRATCH_FRAME_LEN],
    /// Parameters of a FIB lookup (used while a frame is being built).
    pub fib: bpf_fib_lookup,
}
pub const SCRATCH_FRAME_LEN: usize = 128;

/// The scratch frame viewed as a `T` (any plain-data frame layout).
#[inline(always)]
pub fn scratch<T>() -> Option<&'static mut T> {
    const { assert!(core::mem::size_of::<T>() <= SCRATCH_FRAME_LEN && core::mem::align_of::<T>() <= 8) };
    // SAFETY: per-CPU buffer, large and aligned enough (asserted), used by
    // one program run at a time; T is plain data, valid for any bytes.
    SCRATCH
        .get_ptr_mut(0)
        .map(|buffer| unsafe { &mut *((*buffer).frame.as_mut_ptr() as *mut T) })
}

/// The scratch FIB lookup parameters.
#[inline(always)]
pub fn scratch_fib() -> Option<&'static mut bpf_fib_lookup> {
    // SAFETY: as for `scratch`; bpf_fib_lookup is plain data.
    SCRATCH
        .get_ptr_mut(0)
        .map(|buffer| unsafe { &mut (*buffer).fib })
}

/// Whether VXLAN from `source_be` for `vni` is accepted: one lookup on the
/// fast path, which also gives the peer's and the VNI's counter slots; on
/// a miss, which check failed, with the slots of whichever of the two is
/// known (so a peer sending a VNI it does not carry shows in its counters).
#[inline(always)]
pub fn admit(source_be: u32, vni: u32, slots: &mut Slots) -> Result<(), Reason> {
    // SAFETY (all three): read and copied at once.
    if let Some(admitted) = unsafe { PEER_VNIS.get(&PeerVni { vtep_addr_be: source_be, vni }) } {
        *slots = Slots {
            vni: admitted.vni_slot,
            peer: admitted.peer_slot,
        };
        return Ok(());
    }
    let Some(peer) = (unsafe { PEERS.get(&source_be) }) else {
        return Err(Reason::UNKNOWN_PEER);
    };
    slots.peer = peer.counter_slot;
    let Some(carried) = (unsafe { VNIS.get(&vni) }) else {
        return Err(Reason::UNKNOWN_VNI);
    };
    slots.vni = carried.counter_slot;
    Err(Reason::PEER_NOT_IN_VNI)
}

/// This node's settings, once the agent has written them.
#[inline(always)]
pub fn node_config() -> Option<&'static NodeConfig> {
    NODE.get(0).filter(|node| node.configured != 0)
}
