//! Per-CPU packet and byte counters by direction and reason: for the whole
//! node, and for the VNI and the peer VTEP a packet belongs to once the
//! datapath knows them.
use overlay_common::{COUNTERS_PER_SLOT, Counter, Direction, NO_COUNTER_SLOT, Reason, counter_index};

use crate::maps::{COUNTERS, PEER_COUNTERS, VNI_COUNTERS};

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
    // Array lookups: no hashing. A slot beyond the array finds nothing.
    if slots.vni != NO_COUNTER_SLOT {
        if let Some(block) = VNI_COUNTERS.get_ptr_mut(slots.vni) {
            // SAFETY: a per-CPU map value, valid for the program's run.
            add(slot_counter(unsafe { &mut (*block).counters }, index), bytes);
        }
    }
    if slots.peer != NO_COUNTER_SLOT {
        if let Some(block) = PEER_COUNTERS.get_ptr_mut(slots.peer) {
            // SAFETY: as above.
            add(slot_counter(unsafe { &mut (*block).counters }, index), bytes);
        }
    }
}

/// The counter at `index` of a slot's table. The mask makes the index
/// provably in range: the compiler emits no bounds branch, and the
/// verifier sees the offset into the map value bounded whatever the
/// caller's direction and reason are.
#[inline(always)]
fn slot_counter(counters: &mut [Counter; COUNTERS_PER_SLOT], index: u32) -> Option<*mut Counter> {
    counters.get_mut(index as usize & (COUNTERS_PER_SLOT - 1)).map(|counter| counter as *mut Counter)
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
