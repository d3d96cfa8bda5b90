//! Per-CPU packet and byte counters by direction and reason.
use overlay_common::{Direction, Reason, counter_index};

use crate::maps::COUNTERS;

#[inline(always)]
pub fn count(direction: Direction, reason: Reason, bytes: u64) {
    if let Some(counter) = COUNTERS.get_ptr_mut(counter_index(direction, reason)) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes;
        }
    }
}
