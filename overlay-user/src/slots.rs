//! Counter slots: which entry of `VNI_COUNTERS` and `PEER_COUNTERS` counts
//! a VNI's or a peer VTEP's packets (see `overlay_common::NO_COUNTER_SLOT`).
//!
//! - A VNI or peer keeps its slot for as long as it stays configured:
//!   across reloads, and across agent restarts, because the slots are read
//!   back from the pinned `VNIS` and `PEERS` tables with the rest of the
//!   applied state.
//! - A new one takes the lowest slot no one held before the change; only
//!   when there is none, a slot released by the same change (at the limit:
//!   one VNI replaced by another in one reload). `Datapath::apply` zeroes a
//!   slot before it counts for someone else, so nobody inherits counts.
//! - Configuration validation refuses more VNIs or peers than there are
//!   slots, so assignment fails only for a configuration built by hand.
use std::collections::{BTreeMap, BTreeSet};

use overlay_common::NO_COUNTER_SLOT;

/// Every slot is taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{wanted} {kind}s need counter slots, there are {capacity}")]
pub struct SlotsFull {
    /// What the slots are for: "VNI" or "peer".
    pub kind: &'static str,
    pub capacity: u32,
    pub wanted: usize,
}

/// Gives every key of `wanted` a slot in `1..=capacity`: the one it holds
/// in `held` if it has a valid one, else the lowest slot free in `held`,
/// else the lowest one released by this change.
pub fn assign<K: Ord + Copy>(
    kind: &'static str,
    held: &BTreeMap<K, u32>,
    wanted: &BTreeSet<K>,
    capacity: u32,
) -> Result<BTreeMap<K, u32>, SlotsFull> {
    if wanted.len() > capacity as usize {
        return Err(SlotsFull { kind, capacity, wanted: wanted.len() });
    }
    let valid = |slot: u32| (1..=capacity).contains(&slot);
    let mut assigned: BTreeMap<K, u32> = BTreeMap::new();
    let mut taken: BTreeSet<u32> = BTreeSet::new();
    // Keepers first. A slot out of range or held twice (tables written by
    // something else) is not kept: its holder gets a fresh one below.
    for key in wanted {
        if let Some(&slot) = held.get(key)
            && valid(slot)
            && taken.insert(slot)
        {
            assigned.insert(*key, slot);
        }
    }
    let held_before: BTreeSet<u32> = held.values().copied().filter(|&slot| valid(slot)).collect();
    let mut never_held = (1..=capacity).filter(|slot| !held_before.contains(slot));
    let mut released = held_before.iter().copied();
    for key in wanted {
        if assigned.contains_key(key) {
            continue;
        }
        let slot = never_held
            .by_ref()
            .find(|slot| !taken.contains(slot))
            .or_else(|| released.by_ref().find(|slot| !taken.contains(slot)))
            .ok_or(SlotsFull { kind, capacity, wanted: wanted.len() })?;
        taken.insert(slot);
        assigned.insert(*key, slot);
    }
    Ok(assigned)
}

/// The slots held in a table of values that record them: key -> slot,
/// without the entries that have none.
pub fn held<K: Ord + Copy, V>(table: &BTreeMap<K, V>, slot_of: impl Fn(&V) -> u32) -> BTreeMap<K, u32> {
    table
        .iter()
        .map(|(key, value)| (*key, slot_of(value)))
        .filter(|&(_, slot)| slot != NO_COUNTER_SLOT)
        .collect()
}

/// Who each slot last counted for: key by slot.
pub type Owners<K> = BTreeMap<u32, K>;

/// Slots of `new` that must be zeroed before they count for their holder
/// in `new`: those whose last owner (`owners`) is someone else or no one
/// known. Giving a slot back to its last owner (a rollback) keeps its counts.
pub fn grants<K: Ord + Copy>(owners: &Owners<K>, new: &BTreeMap<K, u32>) -> BTreeSet<u32> {
    new.iter().filter(|&(key, slot)| owners.get(slot) != Some(key)).map(|(_, slot)| *slot).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(keys: &[u32]) -> BTreeSet<u32> {
        keys.iter().copied().collect()
    }

    fn slots(pairs: &[(u32, u32)]) -> BTreeMap<u32, u32> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn fresh_keys_get_the_lowest_slots() {
        let assigned = assign("VNI", &BTreeMap::new(), &set(&[300, 100, 200]), 8).unwrap();
        assert_eq!(assigned, slots(&[(100, 1), (200, 2), (300, 3)]));
    }

    #[test]
    fn a_kept_key_keeps_its_slot_when_others_come_and_go() {
        let before = slots(&[(100, 1), (200, 2), (300, 3)]);
        // 100 goes, 400 comes: 200 and 300 stay where they were.
        let after = assign("VNI", &before, &set(&[200, 300, 400]), 8).unwrap();
        assert_eq!(after[&200], 2, "{after:?}");
        assert_eq!(after[&300], 3, "{after:?}");
        // 400 does not take the slot 100 released in the same change.
        assert_eq!(after[&400], 4, "{after:?}");
    }

    #[test]
    fn freed_slots_are_reused_at_the_next_change() {
        let first = assign("peer", &BTreeMap::new(), &set(&[1, 2, 3]), 8).unwrap();
        let second = assign("peer", &first, &set(&[1, 3]), 8).unwrap();
        assert_eq!(second, slots(&[(1, 1), (3, 3)]));
        let third = assign("peer", &second, &set(&[1, 3, 9]), 8).unwrap();
        assert_eq!(third[&9], 2, "slot 2, freed one change earlier, is the lowest free one: {third:?}");
    }

    #[test]
    fn at_the_limit_a_slot_released_by_the_same_change_is_reused() {
        let full = assign("VNI", &BTreeMap::new(), &set(&[10, 20, 30]), 3).unwrap();
        let replaced = assign("VNI", &full, &set(&[10, 30, 40]), 3).unwrap();
        assert_eq!(replaced, slots(&[(10, 1), (30, 3), (40, 2)]));
    }

    #[test]
    fn more_keys_than_slots_is_an_error_naming_the_kind() {
        let error = assign("peer", &BTreeMap::new(), &set(&[1, 2, 3, 4]), 3).unwrap_err();
        assert_eq!(error, SlotsFull { kind: "peer", capacity: 3, wanted: 4 });
        assert_eq!(error.to_string(), "4 peers need counter slots, there are 3");
        assert!(assign("peer", &BTreeMap::new(), &set(&[1, 2, 3]), 3).is_ok(), "exactly as many keys as slots fit");
    }

    #[test]
    fn invalid_or_duplicate_held_slots_are_replaced() {
        // Slot 0 means none; 9 is beyond the capacity; 2 is held twice.
        let held = slots(&[(1, 0), (2, 9), (3, 2), (4, 2)]);
        let assigned = assign("VNI", &held, &set(&[1, 2, 3, 4]), 4).unwrap();
        let mut seen: Vec<u32> = assigned.values().copied().collect();
        seen.sort();
        assert_eq!(seen, [1, 2, 3, 4], "every key a distinct slot in 1..=4: {assigned:?}");
        assert_eq!(assigned[&3], 2, "the first holder of slot 2 keeps it: {assigned:?}");
    }

    #[test]
    fn grants_are_slots_whose_last_owner_differs() {
        let owners: Owners<u32> = BTreeMap::from([(1, 100), (2, 200)]);
        // 100 keeps slot 1; 300 takes slot 2 (last owned by 200); 400 takes
        // slot 3, which no one is known to have owned.
        let new = slots(&[(100, 1), (300, 2), (400, 3)]);
        assert_eq!(grants(&owners, &new), set(&[2, 3]));
        // 200 getting slot 2 back (a rollback) keeps its counts.
        assert!(grants(&owners, &slots(&[(200, 2)])).is_empty());
    }
}
