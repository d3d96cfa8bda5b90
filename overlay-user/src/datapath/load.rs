//! Loading the object, adopting a pinned datapath, and checking that the
//! pinned maps have the layouts this agent expects.
use aya::{
    EbpfLoader,
    maps::{Array, MapData},
};
use overlay_common::{NodeConfig, maps, programs};

use super::{
    Datapath, DatapathError, EBPF_OBJECT, map_error, open_map,
    tables::{self, CONFIG_TABLES},
};
use crate::{pinning::PinDir, slots::Owners, state::MapState};

impl Datapath {
    /// Loads the object and both programs into the kernel (the verifier runs
    /// here) without attaching anything. `log_level` is the most verbose
    /// aya-log level the programs keep; the verifier removes the rest.
    pub fn load(log_level: log::LevelFilter) -> Result<Datapath, DatapathError> {
        Datapath::load_with(log_level, None)
    }

    /// Loads the datapath with its maps pinned in `pins` (created if
    /// needed). Maps already pinned there, by an earlier agent, are reused
    /// with their contents, which become the applied state.
    pub fn load_pinned(log_level: log::LevelFilter, pins: &PinDir, node: &str) -> Result<Datapath, DatapathError> {
        let adopted = pins.exists();
        pins.create().map_err(|error| DatapathError::Pins { path: pins.root().to_owned(), error })?;
        let mut datapath = match Datapath::load_with(log_level, Some(pins)) {
            Ok(datapath) => datapath,
            Err(error) => {
                // A refused start leaves the host as it was: no maps pinned for the next start to adopt.
                if !adopted {
                    let _ = pins.remove();
                }
                return Err(error);
            }
        };
        datapath.fresh_pins = !adopted;
        datapath.check_pinned_layouts(node)?;
        if adopted {
            // The counter slots come back with the tables: every VNI and
            // peer keeps its slot, and its counts, across the restart.
            datapath.applied = datapath.read_state()?;
            datapath.record_slot_owners(&datapath.applied.clone());
            datapath.adopted = true;
        }
        Ok(datapath)
    }

    fn load_with(log_level: log::LevelFilter, pins: Option<&PinDir>) -> Result<Datapath, DatapathError> {
        // Before anything reaches the kernel: a kernel that lacks a helper
        // or map type is refused naming it, not with a verifier log.
        if let Some(refusal) = super::kernel_needs::probed().map_err(DatapathError::KernelLacks)?.refusal() {
            return Err(DatapathError::KernelLacks(refusal));
        }
        let level = log_level as u8;
        let mut loader = EbpfLoader::new();
        loader.override_global(aya_log::LEVEL, &level, false);
        if let Some(pins) = pins {
            for layout in tables::pinned_maps() {
                loader.map_pin_path(layout.name, pins.map(layout.name));
            }
        }
        let mut ebpf = loader.load(EBPF_OBJECT)?;
        for name in programs::ALL {
            let program = ebpf.program_mut(name).ok_or(DatapathError::Missing { kind: "program", name })?;
            let result = match program {
                aya::programs::Program::Xdp(xdp) => xdp.load(),
                aya::programs::Program::SchedClassifier(tc) => tc.load(),
                _ => return Err(DatapathError::Missing { kind: "program of the expected type", name }),
            };
            result.map_err(|error| DatapathError::Program { program: name, error })?;
        }
        for layout in tables::all_maps() {
            if ebpf.map(layout.name).is_none() {
                return Err(DatapathError::Missing { kind: "map", name: layout.name });
            }
        }
        Ok(Datapath {
            ebpf,
            applied: MapState::default(),
            pins: pins.cloned(),
            links: Default::default(),
            adopted: false,
            vni_slot_owners: Owners::new(),
            peer_slot_owners: Owners::new(),
            tc_attach: None,
            fresh_pins: false,
        })
    }

    fn check_pinned_layouts(&self, node: &str) -> Result<(), DatapathError> {
        for layout in tables::pinned_maps() {
            let name = layout.name;
            let data: &MapData = match self.map(name)? {
                aya::maps::Map::HashMap(data)
                | aya::maps::Map::Array(data)
                | aya::maps::Map::PerCpuArray(data)
                | aya::maps::Map::PerCpuHashMap(data)
                | aya::maps::Map::LruHashMap(data)
                | aya::maps::Map::RingBuf(data) => data,
                _ => return Err(DatapathError::Missing { kind: "map of the expected type", name }),
            };
            let info = data.info().map_err(|source| map_error(name, "inspect", source))?;
            let found = (info.key_size() as usize, info.value_size() as usize);
            if found != (layout.key_size, layout.value_size) {
                return Err(DatapathError::IncompatiblePin {
                    map: name,
                    found: format!("{}-byte keys and {}-byte values", found.0, found.1),
                    expected: format!("{}-byte keys and {}-byte values", layout.key_size, layout.value_size),
                    node: node.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// What the maps hold now (for adopting an earlier agent's datapath).
    pub fn read_state(&self) -> Result<MapState, DatapathError> {
        let node = {
            let array: Array<&MapData, NodeConfig> = open_map(&self.ebpf, maps::NODE)?;
            Some(array.get(&0, 0).map_err(|source| map_error(maps::NODE, "read", source))?).filter(|n| n.configured != 0)
        };
        let mut state = MapState { node, ..MapState::default() };
        for table in CONFIG_TABLES {
            table.read(&self.ebpf, &mut state)?;
        }
        Ok(state)
    }
}
