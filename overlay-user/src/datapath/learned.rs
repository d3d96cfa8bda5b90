//! What learning networks learned (RFC 7348 section 4.1): reading the
//! `LEARNED_FDB` map for `overlay fdb`, `overlay status` and the metrics,
//! and sweeping it.
//!
//! Ageing is decided by the datapath: encapsulation ignores an entry not
//! refreshed within its VNI's ageing time, and the map is an LRU capped at
//! `LEARNED_FDB_CAPACITY`, so nothing depends on the agent for
//! correctness. The agent's sweep ([`Datapath::sweep_learned`]) only keeps
//! the table honest to read and leaves room: it removes aged entries, the
//! entries of VNIs that stopped learning, and entries a configured one
//! shadows (the configured one wins in the datapath anyway).
use std::{collections::BTreeMap, net::Ipv4Addr};

use aya::maps::{HashMap, MapData, PerCpuArray};
use overlay_common::{Counter, FdbEntry, LearnedEntry, LearningPolicy, Reason, VniMac, maps, reason::LEARNING_EVENT_REASONS};

use super::{Datapath, DatapathError, map_error, open_map_mut};
use crate::{model::MacAddr, pinning::PinDir};

/// One learned entry, as `overlay fdb` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LearnedRow {
    pub vni: u32,
    pub mac: MacAddr,
    /// The peer VTEP the MAC was seen behind.
    pub vtep: Ipv4Addr,
    /// Seconds since a frame last taught or refreshed it.
    pub age_seconds: u64,
    /// Whether encapsulation still uses it (younger than its VNI's ageing,
    /// its VNI still learning, and no configured entry shadows it).
    pub in_use: bool,
}

/// Now on the clock the datapath stamps learned entries with
/// (`bpf_ktime_get_coarse_ns`: CLOCK_MONOTONIC, coarse).
pub fn monotonic_now_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// The learned entries of `learned`, judged against the learning VNIs'
/// policies and the configured FDB at `now_ns`, sorted by VNI and MAC.
fn rows(
    learned: &BTreeMap<VniMac, LearnedEntry>,
    learning: &BTreeMap<u32, LearningPolicy>,
    configured: &BTreeMap<VniMac, FdbEntry>,
    now_ns: u64,
) -> Vec<LearnedRow> {
    learned
        .iter()
        .map(|(key, entry)| {
            let age_ns = now_ns.saturating_sub(entry.updated_ns);
            let fresh = learning.get(&key.vni).is_some_and(|policy| age_ns <= policy.ageing_ns);
            LearnedRow {
                vni: key.vni,
                mac: MacAddr(key.mac),
                vtep: Ipv4Addr::from(entry.vtep_addr_be.to_ne_bytes()),
                age_seconds: age_ns / 1_000_000_000,
                in_use: fresh && !configured.contains_key(key),
            }
        })
        .collect()
}

fn read_learned(map: &aya::maps::Map) -> Result<BTreeMap<VniMac, LearnedEntry>, DatapathError> {
    let name = maps::LEARNED_FDB;
    let lru: HashMap<&MapData, VniMac, LearnedEntry> = HashMap::try_from(map).map_err(|source| map_error(name, "open", source))?;
    lru.iter().collect::<Result<_, _>>().map_err(|source| map_error(name, "read", source))
}

fn read_hash_map<K: aya::Pod + Ord, V: aya::Pod>(name: &'static str, map: &aya::maps::Map) -> Result<BTreeMap<K, V>, DatapathError> {
    let hash: HashMap<&MapData, K, V> = HashMap::try_from(map).map_err(|source| map_error(name, "open", source))?;
    hash.iter().collect::<Result<_, _>>().map_err(|source| map_error(name, "read", source))
}

/// Learning events (`learned`, `learning-refused`) summed over CPUs: the
/// packets and bytes of the frames that caused them.
fn read_events(map: &aya::maps::Map) -> Result<Vec<(Reason, Counter)>, DatapathError> {
    let name = maps::LEARNING_EVENTS;
    let array: PerCpuArray<&MapData, Counter> = PerCpuArray::try_from(map).map_err(|source| map_error(name, "open", source))?;
    LEARNING_EVENT_REASONS
        .iter()
        .map(|&reason| {
            let per_cpu = array.get(&reason.0, 0).map_err(|source| map_error(name, "read", source))?;
            let sum = per_cpu.iter().fold(Counter::default(), |sum, c| Counter { packets: sum.packets + c.packets, bytes: sum.bytes + c.bytes });
            Ok((reason, sum))
        })
        .collect()
}

/// A node's learned entries and learning events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LearnedView {
    pub rows: Vec<LearnedRow>,
    pub events: Vec<(Reason, Counter)>,
    /// The VNIs that learn, with their ageing in seconds.
    pub learning_vnis: BTreeMap<u32, u64>,
}

impl LearnedView {
    fn new(
        learned: &BTreeMap<VniMac, LearnedEntry>,
        learning: &BTreeMap<u32, LearningPolicy>,
        configured: &BTreeMap<VniMac, FdbEntry>,
        events: Vec<(Reason, Counter)>,
    ) -> LearnedView {
        LearnedView {
            rows: rows(learned, learning, configured, monotonic_now_ns()),
            events,
            learning_vnis: learning.iter().map(|(vni, policy)| (*vni, policy.ageing_ns / 1_000_000_000)).collect(),
        }
    }

    /// Packets that caused `reason` (a learning event).
    pub fn events(&self, reason: Reason) -> u64 {
        self.events.iter().find(|(r, _)| *r == reason).map_or(0, |(_, counter)| counter.packets)
    }
}

impl Datapath {
    /// What this datapath learned, and its learning events.
    pub fn learned(&self) -> Result<LearnedView, DatapathError> {
        let learned = read_learned(self.map(maps::LEARNED_FDB)?)?;
        let events = read_events(self.map(maps::LEARNING_EVENTS)?)?;
        Ok(LearnedView::new(&learned, &self.applied.learning, &self.applied.fdb, events))
    }

    /// What a pinned datapath (another process's) learned. A datapath
    /// pinned by a version without learning has none of these maps: `Ok`
    /// with nothing in it.
    pub fn pinned_learned(pins: &PinDir) -> Result<LearnedView, DatapathError> {
        let open = |name: &'static str| MapData::from_pin(pins.map(name)).map_err(|source| map_error(name, "open pinned", source));
        if !pins.map(maps::LEARNED_FDB).exists() {
            return Ok(LearnedView::default());
        }
        let learned = read_learned(&aya::maps::Map::LruHashMap(open(maps::LEARNED_FDB)?))?;
        let learning = read_hash_map(maps::LEARNING, &aya::maps::Map::HashMap(open(maps::LEARNING)?))?;
        let configured = read_hash_map(maps::FDB, &aya::maps::Map::HashMap(open(maps::FDB)?))?;
        let events = read_events(&aya::maps::Map::PerCpuArray(open(maps::LEARNING_EVENTS)?))?;
        Ok(LearnedView::new(&learned, &learning, &configured, events))
    }

    /// Removes the learned entries encapsulation no longer uses: aged out,
    /// of a VNI that no longer learns, or shadowed by a configured entry.
    /// Returns how many it removed. A frame may refresh an entry between
    /// the read and the delete: it is then learned again by the next one.
    pub fn sweep_learned(&mut self) -> Result<usize, DatapathError> {
        let learned = read_learned(self.map(maps::LEARNED_FDB)?)?;
        let stale: Vec<VniMac> = rows(&learned, &self.applied.learning, &self.applied.fdb, monotonic_now_ns())
            .into_iter()
            .filter(|row| !row.in_use)
            .map(|row| VniMac::new(row.vni, row.mac.0))
            .collect();
        let name = maps::LEARNED_FDB;
        let mut map: HashMap<&mut MapData, VniMac, LearnedEntry> = open_map_mut(&mut self.ebpf, name)?;
        let mut removed = 0;
        for key in &stale {
            // Already gone (evicted by the LRU meanwhile) is as good.
            if map.remove(key).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn an_entry_is_in_use_while_fresh_learning_and_not_configured() {
        let key = |last: u8| VniMac::new(100, [2, 0, 0, 0, 0, last]);
        let entry = |updated_ns| LearnedEntry { vtep_addr_be: u32::from_ne_bytes([192, 0, 2, 2]), peer_slot: 1, updated_ns };
        let learned: BTreeMap<_, _> = [(key(1), entry(990 * SECOND)), (key(2), entry(500 * SECOND)), (key(3), entry(999 * SECOND)), (VniMac::new(200, [2, 0, 0, 0, 0, 4]), entry(999 * SECOND))].into();
        let learning: BTreeMap<_, _> = [(100, LearningPolicy { ageing_ns: 300 * SECOND })].into();
        let configured: BTreeMap<_, _> = [(key(3), FdbEntry { vtep_addr_be: 7, peer_slot: 2 })].into();
        let rows = rows(&learned, &learning, &configured, 1000 * SECOND);
        let in_use: Vec<(u32, u8, bool, u64)> = rows.iter().map(|r| (r.vni, r.mac.0[5], r.in_use, r.age_seconds)).collect();
        assert_eq!(
            in_use,
            vec![(100, 1, true, 10), (100, 2, false, 500), (100, 3, false, 1), (200, 4, false, 1)],
            "fresh: in use; older than 300 s, shadowed by a configured entry, or in a VNI that does not learn: not"
        );
        assert_eq!(rows[0].vtep, Ipv4Addr::new(192, 0, 2, 2));
    }
}
