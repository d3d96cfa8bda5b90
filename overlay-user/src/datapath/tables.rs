//! The one list of the datapath's maps. Every configuration table (a hash
//! map the agent fills from a [`MapState`] field) is described once in
//! [`CONFIG_TABLES`]: loading checks it is there and, when pinned, that it
//! has the layout described; `read_state`, `apply` and the pinned summary
//! iterate the list. Adding a table is one entry here (and its field in
//! `MapState`).
use std::collections::BTreeMap;

use aya::{
    Ebpf, Pod,
    maps::{HashMap, MapData},
};
use overlay_common::{
    Counter, MonitorBucket, MonitorConfig, NodeConfig, RouteCacheEntry, SlotCounterKey, SlotOutcomes, UnderlayMac, maps,
};

use super::{DatapathError, apply::Undo, map_error, open_map, open_map_mut};
use crate::state::{MapDiff, MapState, diff};

/// A map's name and the key and value sizes this agent expects of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapLayout {
    pub name: &'static str,
    pub key_size: usize,
    pub value_size: usize,
    /// Kept on bpffs across agent restarts (in a pinned datapath).
    pub pinned: bool,
}

impl MapLayout {
    const fn of<K, V>(name: &'static str, pinned: bool) -> MapLayout {
        MapLayout { name, key_size: size_of::<K>(), value_size: size_of::<V>(), pinned }
    }
}

/// One configuration table: a hash map whose whole contents are a field of [`MapState`].
pub(super) struct Table<K, V> {
    name: &'static str,
    field: fn(&MapState) -> &BTreeMap<K, V>,
    field_mut: fn(&mut MapState) -> &mut BTreeMap<K, V>,
}

/// What the datapath does with any configuration table, whatever its types.
pub(super) trait ConfigTable: Sync {
    fn name(&self) -> &'static str;
    fn layout(&self) -> MapLayout;
    /// Reads the map into its field of `state`.
    fn read(&self, ebpf: &Ebpf, state: &mut MapState) -> Result<(), DatapathError>;
    /// How many entries differ between `old` and `new`.
    fn changes(&self, old: &MapState, new: &MapState) -> usize;
    /// Inserts or overwrites the entries `new` has and `old` lacks or holds differently.
    fn upsert(&self, ebpf: &mut Ebpf, old: &MapState, new: &MapState, undo: &mut Vec<Undo>) -> Result<(), DatapathError>;
    /// Deletes the entries `old` has and `new` lacks.
    fn delete(&self, ebpf: &mut Ebpf, old: &MapState, new: &MapState, undo: &mut Vec<Undo>) -> Result<(), DatapathError>;
    /// How many entries a map opened from its pin holds.
    fn count(&self, data: MapData) -> Result<usize, DatapathError>;
    /// Reads a map opened from its pin into its field of `state`.
    fn read_pinned(&self, data: MapData, state: &mut MapState) -> Result<(), DatapathError>;
}

impl<K, V> ConfigTable for Table<K, V>
where
    K: Pod + Ord + Copy + Sync + 'static,
    V: Pod + Copy + PartialEq + Sync + 'static,
{
    fn name(&self) -> &'static str {
        self.name
    }

    fn layout(&self) -> MapLayout {
        MapLayout::of::<K, V>(self.name, true)
    }

    fn read(&self, ebpf: &Ebpf, state: &mut MapState) -> Result<(), DatapathError> {
        *(self.field_mut)(state) = read_hash(ebpf, self.name)?;
        Ok(())
    }

    fn changes(&self, old: &MapState, new: &MapState) -> usize {
        diff((self.field)(old), (self.field)(new)).len()
    }

    fn upsert(&self, ebpf: &mut Ebpf, old: &MapState, new: &MapState, undo: &mut Vec<Undo>) -> Result<(), DatapathError> {
        let old = (self.field)(old);
        upsert(ebpf, self.name, &diff(old, (self.field)(new)), old, undo)
    }

    fn delete(&self, ebpf: &mut Ebpf, old: &MapState, new: &MapState, undo: &mut Vec<Undo>) -> Result<(), DatapathError> {
        let old = (self.field)(old);
        delete(ebpf, self.name, &diff(old, (self.field)(new)), old, undo)
    }

    fn count(&self, data: MapData) -> Result<usize, DatapathError> {
        let name = self.name;
        let map = aya::maps::Map::HashMap(data);
        let hash: HashMap<&MapData, K, V> = HashMap::try_from(&map).map_err(|source| map_error(name, "open", source))?;
        hash.keys().try_fold(0, |count, key| key.map(|_| count + 1)).map_err(|source| map_error(name, "read", source))
    }

    fn read_pinned(&self, data: MapData, state: &mut MapState) -> Result<(), DatapathError> {
        let name = self.name;
        let map = aya::maps::Map::HashMap(data);
        let hash: HashMap<&MapData, K, V> = HashMap::try_from(&map).map_err(|source| map_error(name, "open", source))?;
        *(self.field_mut)(state) = hash.iter().collect::<Result<_, _>>().map_err(|source| map_error(name, "read", source))?;
        Ok(())
    }
}

/// The configuration tables, in the order additions are applied: from the
/// leaves inwards, so a port is classified into a VNI only once everything
/// that VNI needs is in place. Removals go in the reverse order.
pub(super) static CONFIG_TABLES: [&dyn ConfigTable; 9] = [
    &Table { name: maps::VNIS, field: |s| &s.vnis, field_mut: |s| &mut s.vnis },
    &Table { name: maps::PEERS, field: |s| &s.peers, field_mut: |s| &mut s.peers },
    &Table { name: maps::PEER_VNIS, field: |s| &s.peer_vnis, field_mut: |s| &mut s.peer_vnis },
    &Table { name: maps::LOCAL_ENDPOINTS, field: |s| &s.local_endpoints, field_mut: |s| &mut s.local_endpoints },
    &Table { name: maps::NEIGHBOURS, field: |s| &s.neighbours, field_mut: |s| &mut s.neighbours },
    &Table { name: maps::NEIGHBOURS6, field: |s| &s.neighbours6, field_mut: |s| &mut s.neighbours6 },
    &Table { name: maps::FLOOD, field: |s| &s.flood, field_mut: |s| &mut s.flood },
    &Table { name: maps::FDB, field: |s| &s.fdb, field_mut: |s| &mut s.fdb },
    &Table { name: maps::PORTS, field: |s| &s.ports, field_mut: |s| &mut s.ports },
];

/// The configuration table called `name`.
pub(super) fn config_table(name: &'static str) -> &'static dyn ConfigTable {
    CONFIG_TABLES.iter().copied().find(|table| table.name() == name).unwrap_or_else(|| panic!("{name} is not a configuration table"))
}

/// The maps that are not configuration tables: the node entry, counters,
/// the monitor's and the datapath's own state.
const OTHER_MAPS: [MapLayout; 13] = [
    MapLayout::of::<u32, NodeConfig>(maps::NODE, true),
    // Absent from the previous version's pins: created beside them on adoption.
    MapLayout::of::<u32, UnderlayMac>(maps::UNDERLAY_MAC, true),
    MapLayout::of::<u32, Counter>(maps::COUNTERS, true),
    MapLayout::of::<SlotCounterKey, Counter>(maps::VNI_COUNTERS, true),
    MapLayout::of::<SlotCounterKey, Counter>(maps::PEER_COUNTERS, true),
    // Absent from the pins of versions before them: created beside them on adoption.
    MapLayout::of::<u32, SlotOutcomes>(maps::VNI_OUTCOMES, true),
    MapLayout::of::<u32, SlotOutcomes>(maps::PEER_OUTCOMES, true),
    // A ring buffer has no keys or values; its size is its identity.
    MapLayout::of::<(), ()>(maps::EVENTS, true),
    MapLayout::of::<u32, MonitorConfig>(maps::MONITOR, true),
    MapLayout::of::<u32, MonitorBucket>(maps::MONITOR_BUCKETS, true),
    MapLayout::of::<u32, u64>(maps::MONITOR_LOST, true),
    // Rebuilt by the programs as they run: a new agent starts them afresh.
    MapLayout::of::<u32, u32>(maps::IP_IDS, false),
    MapLayout::of::<u32, RouteCacheEntry>(maps::ROUTE_CACHE, false),
];

/// Every map the object must have, configuration tables first.
pub fn all_maps() -> impl Iterator<Item = MapLayout> {
    CONFIG_TABLES.iter().map(|table| table.layout()).chain(OTHER_MAPS)
}

/// The maps a pinned datapath keeps on bpffs.
pub fn pinned_maps() -> impl Iterator<Item = MapLayout> {
    all_maps().filter(|layout| layout.pinned)
}

pub(super) fn read_hash<K: Pod + Ord, V: Pod>(ebpf: &Ebpf, name: &'static str) -> Result<BTreeMap<K, V>, DatapathError> {
    let hash: HashMap<&MapData, K, V> = open_map(ebpf, name)?;
    hash.iter().collect::<Result<_, _>>().map_err(|source| map_error(name, "read", source))
}

fn upsert<K, V>(ebpf: &mut Ebpf, name: &'static str, changes: &MapDiff<K, V>, old: &BTreeMap<K, V>, undo: &mut Vec<Undo>) -> Result<(), DatapathError>
where
    K: Pod + Ord + Copy + 'static,
    V: Pod + Copy + 'static,
{
    let mut map = open_map_mut::<HashMap<_, K, V>>(ebpf, name)?;
    for (key, value) in &changes.upserts {
        map.insert(key, value, 0).map_err(|source| map_error(name, "insert", source))?;
        let previous = old.get(key).copied();
        let key = *key;
        undo.push(Box::new(move |ebpf| {
            let mut map = open_map_mut::<HashMap<_, K, V>>(ebpf, name)?;
            match previous {
                Some(value) => map.insert(key, value, 0).map_err(|source| map_error(name, "restore", source)),
                None => map.remove(&key).map_err(|source| map_error(name, "remove", source)),
            }
        }));
    }
    Ok(())
}

fn delete<K, V>(ebpf: &mut Ebpf, name: &'static str, changes: &MapDiff<K, V>, old: &BTreeMap<K, V>, undo: &mut Vec<Undo>) -> Result<(), DatapathError>
where
    K: Pod + Ord + Copy + 'static,
    V: Pod + Copy + 'static,
{
    let mut map = open_map_mut::<HashMap<_, K, V>>(ebpf, name)?;
    for key in &changes.deletes {
        map.remove(key).map_err(|source| map_error(name, "delete", source))?;
        if let Some(value) = old.get(key).copied() {
            let key = *key;
            undo.push(Box::new(move |ebpf| {
                let mut map = open_map_mut::<HashMap<_, K, V>>(ebpf, name)?;
                map.insert(key, value, 0).map_err(|source| map_error(name, "restore", source))
            }));
        }
    }
    Ok(())
}
