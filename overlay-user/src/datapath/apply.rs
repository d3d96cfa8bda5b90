//! Changing the maps as a diff: only entries that differ are written, every
//! write is journalled so a failure puts back the previous state, and
//! counter slots are zeroed before they count for someone new.
use std::{collections::BTreeSet, fmt};

use aya::{
    Ebpf,
    maps::{Array, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues},
};
use overlay_common::{Counter, NodeConfig, SlotCounterKey, SlotOutcomes, maps};

use super::{Datapath, DatapathError, map_error, open_map_mut, tables::CONFIG_TABLES};
use crate::{slots, state::MapState};

/// What `apply` changed, map by map (for logs and status).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub changes: Vec<(&'static str, usize)>,
}

impl ApplyReport {
    pub fn total(&self) -> usize {
        self.changes.iter().map(|(_, n)| n).sum()
    }

    /// The entries that differ between two states, map by map (the node
    /// array and every configuration table of the one list).
    pub fn between(old: &MapState, new: &MapState) -> ApplyReport {
        let mut changes = vec![(maps::NODE, (old.node != new.node) as usize)];
        changes.extend(CONFIG_TABLES.iter().map(|table| (table.name(), table.changes(old, new))));
        ApplyReport { changes }
    }
}

impl fmt::Display for ApplyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<_> = self.changes.iter().filter(|(_, n)| *n > 0).map(|(m, n)| format!("{m}: {n}")).collect();
        if parts.is_empty() { f.write_str("no changes") } else { f.write_str(&parts.join(", ")) }
    }
}

/// One step of the undo journal: puts back one entry as it was.
pub(super) type Undo = Box<dyn FnOnce(&mut Ebpf) -> Result<(), DatapathError>>;

impl Datapath {
    /// Changes the maps from the applied state to `desired`, touching only
    /// entries that differ. On any failure every change already made is
    /// undone, so the maps hold exactly the previous state.
    ///
    /// A counter slot that `desired` gives to a VNI or peer it did not last
    /// count for is zeroed first, so nobody inherits another's counts (a
    /// slot given back to its last holder, as a rollback does, keeps them).
    /// A slot free until now is zeroed before any entry names it. A slot
    /// whose holder this same change removes (only at the slot limit) is
    /// zeroed once no program can still be counting for the old holder: the
    /// change is applied with that slot written nowhere, then
    /// [`wait_for_running_programs`], then zeroed, then written.
    pub fn apply(&mut self, desired: &MapState) -> Result<ApplyReport, DatapathError> {
        let old = self.applied.clone();
        let mut undo: Vec<Undo> = Vec::new();
        let result = self.apply_zeroing_slots(&old, desired, &mut undo);
        match result {
            Ok(()) => {
                self.applied = desired.clone();
                self.record_slot_owners(desired);
                Ok(ApplyReport::between(&old, desired))
            }
            Err(error) => {
                for step in undo.into_iter().rev() {
                    if let Err(undo_error) = step(&mut self.ebpf) {
                        log::error!("rolling back a map change failed: {undo_error}");
                    }
                }
                self.record_slot_owners(&old);
                Err(error)
            }
        }
    }

    fn apply_zeroing_slots(&mut self, old: &MapState, new: &MapState, undo: &mut Vec<Undo>) -> Result<(), DatapathError> {
        let vni_grants = slots::grants(&self.vni_slot_owners, &new.vni_slots());
        let peer_grants = slots::grants(&self.peer_slot_owners, &new.peer_slots());
        // Granted slots someone holds in `old`: still counting for them.
        let held_vni: BTreeSet<u32> = old.vni_slots().into_values().collect();
        let held_peer: BTreeSet<u32> = old.peer_slots().into_values().collect();
        let (busy_vni, free_vni): (BTreeSet<u32>, _) = vni_grants.into_iter().partition(|slot| held_vni.contains(slot));
        let (busy_peer, free_peer): (BTreeSet<u32>, _) = peer_grants.into_iter().partition(|slot| held_peer.contains(slot));
        zero_slots(&mut self.ebpf, (maps::VNI_OUTCOMES, maps::VNI_COUNTERS), &free_vni)?;
        zero_slots(&mut self.ebpf, (maps::PEER_OUTCOMES, maps::PEER_COUNTERS), &free_peer)?;
        if busy_vni.is_empty() && busy_peer.is_empty() {
            return apply_steps(&mut self.ebpf, old, new, undo);
        }
        let interim = new.withholding(&busy_vni, &busy_peer);
        apply_steps(&mut self.ebpf, old, &interim, undo)?;
        wait_for_running_programs();
        zero_slots(&mut self.ebpf, (maps::VNI_OUTCOMES, maps::VNI_COUNTERS), &busy_vni)?;
        zero_slots(&mut self.ebpf, (maps::PEER_OUTCOMES, maps::PEER_COUNTERS), &busy_peer)?;
        apply_steps(&mut self.ebpf, &interim, new, undo)
    }

    /// The holders of `state`'s slots are now their owners; released slots
    /// keep their last owner.
    pub(super) fn record_slot_owners(&mut self, state: &MapState) {
        self.vni_slot_owners.extend(state.vni_slots().into_iter().map(|(vni, slot)| (slot, vni)));
        self.peer_slot_owners.extend(state.peer_slots().into_iter().map(|(peer, slot)| (slot, peer)));
    }
}

fn set_node(ebpf: &mut Ebpf, value: Option<NodeConfig>, undo: &mut Vec<Undo>, previous: Option<NodeConfig>) -> Result<(), DatapathError> {
    fn write(ebpf: &mut Ebpf, value: Option<NodeConfig>) -> Result<(), DatapathError> {
        let name = maps::NODE;
        let mut array: Array<&mut MapData, NodeConfig> = open_map_mut(ebpf, name)?;
        // An all-zero entry has `configured == 0`: the programs pass everything.
        // SAFETY: NodeConfig is plain data; all-zero is valid.
        let value = value.unwrap_or(unsafe { std::mem::zeroed() });
        array.set(0, value, 0).map_err(|source| map_error(name, "set", source))
    }
    write(ebpf, value)?;
    undo.push(Box::new(move |ebpf| write(ebpf, previous)));
    Ok(())
}

/// Writes the difference between `old` and `new` into the maps, recording
/// in `undo` how to put back every entry it changes.
fn apply_steps(ebpf: &mut Ebpf, old: &MapState, new: &MapState, undo: &mut Vec<Undo>) -> Result<(), DatapathError> {
    // The node entry goes first: until it is written the programs pass
    // everything untouched. Then additions in the tables' order (from the
    // leaves inwards), and removals the other way round.
    if old.node != new.node {
        set_node(ebpf, new.node, undo, old.node)?;
    }
    for table in CONFIG_TABLES {
        table.upsert(ebpf, old, new, undo)?;
    }
    for table in CONFIG_TABLES.iter().rev() {
        table.delete(ebpf, old, new, undo)?;
    }
    Ok(())
}

/// Sets the counters of `slots` to zero on every CPU, in the slot
/// counters named `names` (outcomes, drops): the slots' entries of the
/// outcome array are overwritten with zeroes, their entries of the drop
/// hash deleted (the datapath creates an entry at its first packet).
fn zero_slots(ebpf: &mut Ebpf, names: (&'static str, &'static str), slots: &BTreeSet<u32>) -> Result<(), DatapathError> {
    if slots.is_empty() {
        return Ok(());
    }
    let (outcomes_name, name) = names;
    let mut array: PerCpuArray<&mut MapData, SlotOutcomes> = open_map_mut(ebpf, outcomes_name)?;
    let cpus = aya::util::nr_cpus().map_err(|(_, error)| map_error(outcomes_name, "zero", MapError::IoError(error)))?;
    // SAFETY: SlotOutcomes is plain data; all-zero is valid.
    let zeroes = vec![unsafe { std::mem::zeroed::<SlotOutcomes>() }; cpus];
    let len = array.len();
    for &slot in slots.iter().filter(|&&slot| slot < len) {
        let values = PerCpuValues::try_from(zeroes.clone()).map_err(|error| map_error(outcomes_name, "zero", MapError::IoError(error)))?;
        array.set(slot, values, 0).map_err(|source| map_error(outcomes_name, "zero", source))?;
    }
    let mut hash: PerCpuHashMap<&mut MapData, SlotCounterKey, Counter> = open_map_mut(ebpf, name)?;
    let doomed: Vec<SlotCounterKey> = hash
        .keys()
        .filter(|key| key.as_ref().map_or(true, |key| slots.contains(&key.slot)))
        .collect::<Result<_, _>>()
        .map_err(|source| map_error(name, "read", source))?;
    for key in doomed {
        match hash.remove(&key) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(source) => return Err(map_error(name, "zero", source)),
        }
    }
    Ok(())
}

/// Returns once every datapath program run that started before the call
/// has ended. XDP and TC programs run inside RCU read-side sections, and
/// membarrier(MEMBARRIER_CMD_GLOBAL) waits for an RCU grace period
/// (kernel/sched/membarrier.c: synchronize_rcu()), so after it no program
/// can still hold a map value it read before. Kernels with nohz_full
/// refuse that command; a program runs for microseconds, so a pause of
/// 50 ms stands in for it there.
fn wait_for_running_programs() {
    /// include/uapi/linux/membarrier.h
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: plain syscall with integer arguments.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0 as libc::c_long) };
    if rc != 0 {
        log::debug!("membarrier: {}; pausing instead", std::io::Error::last_os_error());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
