//! Per-CPU packet and byte counters by direction and reason: for the whole
//! node, and for the VNI and the peer VTEP a packet belongs to once the
//! datapath knows them.
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    maps::{PerCpuArray, PerCpuHashMap},
};
use overlay_common::{
    Counter, Direction, NO_COUNTER_SLOT, Reason, SLOT_OUTCOMES, SlotCounterKey, SlotOutcomes,
    counter_index, outcome_index,
};

use crate::maps::{COUNTERS, PEER_COUNTERS, PEER_OUTCOMES, VNI_COUNTERS, VNI_OUTCOMES};

/// The counter slots of the VNI and the peer VTEP a packet belongs to, as
/// far as the program got before its verdict: a `try_*` function fills
/// them in from the map values it reads anyway (`PORTS` and `FDB` on a
/// port; `PEER_VNIS`, or `PEERS` and `VNIS` on a refusal, on the underlay).
/// A packet dropped before they are known (unknown peer, malformed outer
/// headers, a port with no VNI) counts only in the node's counters.
#[derive(Clone, Copy)]
pub struct Slots {
    pub vni: u32,
    pub peer: u32,
}

impl Slots {
    pub const NONE: Slots = Slots {
        vni: NO_COUNTER_SLOT,
        peer: NO_COUNTER_SLOT,
    };
}

/// Counts a packet of `bytes` with its verdict: in the node's counters,
/// and in its VNI's and peer's when `slots` has them.
#[inline(always)]
pub fn count(direction: Direction, reason: Reason, bytes: u64, slots: &Slots) {
    let index = counter_index(direction, reason);
    add(COUNTERS.get_ptr_mut(index), bytes);
    if slots.vni != NO_COUNTER_SLOT {
        count_in_slot(&VNI_OUTCOMES, &VNI_COUNTERS, slots.vni, direction, reason, bytes);
    }
    if slots.peer != NO_COUNTER_SLOT {
        count_in_slot(&PEER_OUTCOMES, &PEER_COUNTERS, slots.peer, direction, reason, bytes);
    }
}

/// Counts in a slot's counters: an outcome in the slot's entry of the
/// `outcomes` array (one lookup, no insert: the packets the datapath
/// forwards), a drop in the slot-keyed `drops` hash.
#[inline(always)]
fn count_in_slot(
    outcomes: &PerCpuArray<SlotOutcomes>,
    drops: &PerCpuHashMap<SlotCounterKey, Counter>,
    slot: u32,
    direction: Direction,
    reason: Reason,
    bytes: u64,
) {
    if reason.is_drop() {
        add_to_slot(drops, slot, counter_index(direction, reason), bytes);
        return;
    }
    // Verifier: the mask bounds the index within the value (SLOT_OUTCOMES
    // is a power of two); outcome_index is below it for every outcome.
    let at = outcome_index(direction, reason) as usize & (SLOT_OUTCOMES - 1);
    if let Some(counters) = outcomes.get_ptr_mut(slot) {
        // SAFETY: a map value of this CPU, valid for the program's run; `at`
        // is within it.
        add(Some(unsafe { (*counters).counters.as_mut_ptr().add(at) }), bytes);
    }
}

/// Counts in a slot's counter for `index`, creating it on its first
/// packet. The element is per-CPU: created by one CPU, it exists (zeroed,
/// kernel/bpf/hashtab.c pcpu_init_value) for all. Two CPUs creating it at
/// once: one insert fails with EEXIST and that CPU adds to the element the
/// other made. A full map fails both ways: the packet then counts only in
/// the node's counters.
#[inline(always)]
fn add_to_slot(map: &PerCpuHashMap<SlotCounterKey, Counter>, slot: u32, index: u32, bytes: u64) {
    let key = SlotCounterKey { slot, index };
    if let Some(counter) = map.get_ptr_mut(&key) {
        add(Some(counter), bytes);
        return;
    }
    let first = Counter { packets: 1, bytes };
    if map.insert(&key, &first, BPF_NOEXIST as u64).is_err() {
        add(map.get_ptr_mut(&key), bytes);
    }
}

#[inline(always)]
fn add(counter: Option<*mut Counter>, bytes: u64) {
    if let Some(counter) = counter {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes;
        }
    }
}
