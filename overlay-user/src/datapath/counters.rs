//! Reading the counters (the node's, and each VNI's and peer's from their
//! slots) and rendering them as tables.
use std::{collections::BTreeMap, fmt};

use aya::maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap};
use overlay_common::{
    Counter, Direction, PeerInfo, Reason, SlotCounterKey, SlotOutcomes, VniInfo, counter_index, maps, outcome_index, reason,
};

use super::{Datapath, DatapathError, map_error, open_map};

/// One counter row: packets and bytes for a direction and reason, summed over CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterRow {
    pub direction: Direction,
    pub reason: Reason,
    pub packets: u64,
    pub bytes: u64,
}

/// The row's columns in the counter tables: direction, reason (name and
/// code), packets, bytes.
impl fmt::Display for CounterRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.reason.info().map_or("unknown", |info| info.name);
        write!(f, "{:<14} {:<30} {:>12} {:>14}", self.direction.name(), format!("{name} ({})", self.reason.0), self.packets, self.bytes)
    }
}

/// A snapshot of the datapath counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub rows: Vec<CounterRow>,
}

impl Counters {
    /// The row of `direction` and `reason`, if anything was counted there.
    pub fn row(&self, direction: Direction, reason: Reason) -> Option<&CounterRow> {
        self.rows.iter().find(|row| row.direction == direction && row.reason == reason)
    }

    /// Packets counted for `direction` and `reason`.
    pub fn packets(&self, direction: Direction, reason: Reason) -> u64 {
        self.row(direction, reason).map_or(0, |row| row.packets)
    }

    /// Counts since `earlier` (rows present in both). A counter that went
    /// back (a VNI's slot zeroed as it was removed and added again) counts
    /// as nothing.
    pub fn since(&self, earlier: &Counters) -> Counters {
        let rows = self
            .rows
            .iter()
            .map(|row| CounterRow {
                packets: row.packets.saturating_sub(earlier.packets(row.direction, row.reason)),
                bytes: row.bytes.saturating_sub(earlier.row(row.direction, row.reason).map_or(0, |r| r.bytes)),
                ..*row
            })
            .filter(|row| row.packets > 0)
            .collect();
        Counters { rows }
    }
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<14} {:<30} {:>12} {:>14}  {}", "DIRECTION", "REASON", "PACKETS", "BYTES", "MEANING")?;
        for row in &self.rows {
            let description = row.reason.info().map_or("", |info| info.description.trim());
            let kind = if row.reason.is_drop() { "drop: " } else { "" };
            writeln!(f, "{row}  {kind}{description}")?;
        }
        Ok(())
    }
}

/// The counters of each VNI this node carries and of each peer VTEP (from
/// their counter slots), summed over CPUs. Every VNI and peer is listed,
/// with no rows when nothing was counted for it. Packets dropped before
/// the datapath knew their VNI or peer (unknown peer, malformed outer
/// headers, a port with no VNI) are only in the node's [`Counters`];
/// flooded copies count for their VNI, not for each peer they went to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VniPeerCounters {
    pub vnis: BTreeMap<u32, Counters>,
    pub peers: BTreeMap<std::net::Ipv4Addr, Counters>,
}

impl VniPeerCounters {
    /// Counts since `earlier`, for the VNIs and peers present now.
    pub fn since(&self, earlier: &VniPeerCounters) -> VniPeerCounters {
        fn each<K: Ord + Copy>(now: &BTreeMap<K, Counters>, before: &BTreeMap<K, Counters>) -> BTreeMap<K, Counters> {
            now.iter().map(|(key, counters)| (*key, counters.since(before.get(key).unwrap_or(&Counters::default())))).collect()
        }
        VniPeerCounters { vnis: each(&self.vnis, &earlier.vnis), peers: each(&self.peers, &earlier.peers) }
    }
}

impl fmt::Display for VniPeerCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn table<K: fmt::Display>(f: &mut fmt::Formatter<'_>, title: &str, counters: &BTreeMap<K, Counters>) -> fmt::Result {
            writeln!(f, "{title:<16} {:<14} {:<30} {:>12} {:>14}", "DIRECTION", "REASON", "PACKETS", "BYTES")?;
            for (key, counters) in counters {
                if counters.rows.is_empty() {
                    writeln!(f, "{:<16} {:<14} nothing counted", key.to_string(), "-")?;
                }
                for row in &counters.rows {
                    writeln!(f, "{:<16} {row}", key.to_string())?;
                }
            }
            Ok(())
        }
        table(f, "VNI", &self.vnis)?;
        writeln!(f)?;
        table(f, "PEER VTEP", &self.peers)
    }
}

impl Datapath {
    /// Reads all counters, summed over CPUs; rows with no packets are left out.
    pub fn counters(&self) -> Result<Counters, DatapathError> {
        let array: PerCpuArray<&MapData, Counter> = open_map(&self.ebpf, maps::COUNTERS)?;
        read_counters(&array)
    }

    /// Reads the counters of every VNI and peer VTEP that has a counter slot.
    pub fn vni_peer_counters(&self) -> Result<VniPeerCounters, DatapathError> {
        read_vni_peer_counters(
            self.map(maps::VNIS)?,
            self.map(maps::PEERS)?,
            SlotCounterMaps { outcomes: Some(self.map(maps::VNI_OUTCOMES)?), drops: self.map(maps::VNI_COUNTERS)? },
            SlotCounterMaps { outcomes: Some(self.map(maps::PEER_OUTCOMES)?), drops: self.map(maps::PEER_COUNTERS)? },
        )
    }
}

pub(super) fn read_counters(array: &PerCpuArray<&MapData, Counter>) -> Result<Counters, DatapathError> {
    let mut per_index = Vec::new();
    for index in 0..maps::COUNTERS_CAPACITY {
        per_index.push(array.get(&index, 0).map_err(|source| map_error(maps::COUNTERS, "read", source))?);
    }
    Ok(counters_from(|index| per_index[index].iter().copied()))
}

/// Rows of every direction and reason with packets, from the per-CPU
/// counters at each [`counter_index`].
fn counters_from<I: Iterator<Item = Counter>>(per_cpu_at: impl Fn(usize) -> I) -> Counters {
    let mut rows = Vec::new();
    for direction in Direction::ALL {
        for code in 0..reason::REASON_SLOTS {
            let reason = Reason(code);
            let (packets, bytes) =
                per_cpu_at(counter_index(direction, reason) as usize).fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes));
            if packets > 0 {
                rows.push(CounterRow { direction, reason, packets, bytes });
            }
        }
    }
    Counters { rows }
}

/// Where one kind of slot (VNI or peer) counts: outcomes in a per-CPU
/// array indexed by slot (`VNI_OUTCOMES`), drops in a slot-keyed per-CPU
/// hash (`VNI_COUNTERS`). `outcomes` is `None` for a pinned datapath of a
/// version before the arrays, which counted everything in the hash.
pub(super) struct SlotCounterMaps<'a> {
    pub outcomes: Option<&'a aya::maps::Map>,
    pub drops: &'a aya::maps::Map,
}

/// The counters of every slot holder of the `VNIS` and `PEERS` tables
/// (`vnis`, `peers`), read from their slots' counter maps.
pub(super) fn read_vni_peer_counters(
    vnis: &aya::maps::Map,
    peers: &aya::maps::Map,
    vni_counters: SlotCounterMaps<'_>,
    peer_counters: SlotCounterMaps<'_>,
) -> Result<VniPeerCounters, DatapathError> {
    let vnis: HashMap<&MapData, u32, VniInfo> = HashMap::try_from(vnis).map_err(|source| map_error(maps::VNIS, "open", source))?;
    let peers: HashMap<&MapData, u32, PeerInfo> = HashMap::try_from(peers).map_err(|source| map_error(maps::PEERS, "open", source))?;
    let vni_slots: BTreeMap<u32, u32> = vnis
        .iter()
        .map(|entry| entry.map(|(vni, info)| (vni, info.counter_slot)))
        .collect::<Result<_, _>>()
        .map_err(|source| map_error(maps::VNIS, "read", source))?;
    let peer_slots: BTreeMap<std::net::Ipv4Addr, u32> = peers
        .iter()
        .map(|entry| entry.map(|(addr_be, info)| (std::net::Ipv4Addr::from(addr_be.to_ne_bytes()), info.counter_slot)))
        .collect::<Result<_, _>>()
        .map_err(|source| map_error(maps::PEERS, "read", source))?;
    Ok(VniPeerCounters {
        vnis: read_slots((maps::VNI_OUTCOMES, maps::VNI_COUNTERS), vni_counters, &vni_slots)?,
        peers: read_slots((maps::PEER_OUTCOMES, maps::PEER_COUNTERS), peer_counters, &peer_slots)?,
    })
}

/// The counters of each key's slot in `maps` (whose names are `names`:
/// outcomes, drops), summed over CPUs; a key without a slot (tables
/// written before slots existed) has none. The hash and the array are
/// added together: a datapath before the arrays counted outcomes in the
/// hash, and an adopted datapath keeps them there.
fn read_slots<K: Ord + Copy>(
    names: (&'static str, &'static str),
    maps: SlotCounterMaps<'_>,
    slots: &BTreeMap<K, u32>,
) -> Result<BTreeMap<K, Counters>, DatapathError> {
    let (outcomes_name, drops_name) = names;
    let hash: PerCpuHashMap<&MapData, SlotCounterKey, Counter> =
        PerCpuHashMap::try_from(maps.drops).map_err(|source| map_error(drops_name, "open", source))?;
    // One pass over the hash: every slot's counters, summed over CPUs.
    let mut by_slot: BTreeMap<u32, BTreeMap<u32, Counter>> = BTreeMap::new();
    for entry in hash.iter() {
        let (key, per_cpu) = entry.map_err(|source| map_error(drops_name, "read", source))?;
        let table = by_slot.entry(key.slot).or_default();
        per_cpu.iter().for_each(|counter| add_counter(table.entry(key.index).or_default(), counter));
    }
    // Then the outcomes of each slot held, by index.
    if let Some(outcomes) = maps.outcomes {
        let array: PerCpuArray<&MapData, SlotOutcomes> =
            PerCpuArray::try_from(outcomes).map_err(|source| map_error(outcomes_name, "open", source))?;
        for &slot in slots.values().filter(|&&slot| slot != overlay_common::NO_COUNTER_SLOT && slot < array.len()) {
            let per_cpu = array.get(&slot, 0).map_err(|source| map_error(outcomes_name, "read", source))?;
            let table = by_slot.entry(slot).or_default();
            for direction in Direction::ALL {
                for code in 0..reason::FIRST_DROP {
                    let (reason, at) = (Reason(code), outcome_index(direction, Reason(code)) as usize);
                    for cpu in per_cpu.iter() {
                        add_counter(table.entry(counter_index(direction, reason)).or_default(), &cpu.counters[at]);
                    }
                }
            }
        }
    }
    let none = BTreeMap::new();
    Ok(slots
        .iter()
        .map(|(key, &slot)| {
            let table = if slot == overlay_common::NO_COUNTER_SLOT { &none } else { by_slot.get(&slot).unwrap_or(&none) };
            (*key, counters_from(|index| table.get(&(index as u32)).copied().into_iter()))
        })
        .collect())
}

fn add_counter(sum: &mut Counter, counter: &Counter) {
    sum.packets += counter.packets;
    sum.bytes += counter.bytes;
}
