//! What other processes (`overlay stats`, the metrics server, `overlay
//! doctor`) read from a pinned datapath, without loading one, and the
//! datapath's own caches.
use std::collections::BTreeMap;

use aya::maps::{Array, MapData, PerCpuArray};
use overlay_common::{Counter, NodeConfig, maps};

use super::{
    Counters, Datapath, DatapathError, VniPeerCounters,
    counters::{SlotCounterMaps, read_counters, read_vni_peer_counters},
    map_error,
    tables::{CONFIG_TABLES, config_table, read_hash},
};
use crate::pinning::PinDir;

/// What a pinned datapath holds, for `overlay run --metrics-addr`'s gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathSummary {
    /// This node's VTEP address, once the agent has configured the datapath.
    pub vtep: Option<std::net::Ipv4Addr>,
    /// VNIs this node carries.
    pub vnis: usize,
    /// Containers on this node: (VNI, MAC) pairs of local endpoints.
    pub local_endpoints: usize,
    /// Containers behind peers: (VNI, MAC) pairs in the forwarding database.
    pub remote_endpoints: usize,
    /// Peer VTEPs VXLAN is accepted from.
    pub peers: usize,
}

impl Datapath {
    /// Reads the counters of a pinned datapath (another process's).
    pub fn pinned_counters(pins: &PinDir) -> Result<Counters, DatapathError> {
        let data = MapData::from_pin(pins.map(maps::COUNTERS)).map_err(|source| map_error(maps::COUNTERS, "open pinned", source))?;
        let map = aya::maps::Map::PerCpuArray(data);
        let array: PerCpuArray<&MapData, Counter> =
            PerCpuArray::try_from(&map).map_err(|source| map_error(maps::COUNTERS, "open", source))?;
        read_counters(&array)
    }

    /// Reads the counters of every VNI and peer of a pinned datapath
    /// (another process's; its agent need not run): the slots come from its
    /// pinned `VNIS` and `PEERS` tables.
    pub fn pinned_vni_peer_counters(pins: &PinDir) -> Result<VniPeerCounters, DatapathError> {
        let open = |name: &'static str| {
            MapData::from_pin(pins.map(name)).map_err(|source| map_error(name, "open pinned", source))
        };
        // The outcome arrays are absent from the pins of a version before them.
        let open_if_pinned = |name: &'static str| {
            if pins.map(name).exists() { open(name).map(|data| Some(aya::maps::Map::PerCpuArray(data))) } else { Ok(None) }
        };
        let (vni_outcomes, peer_outcomes) = (open_if_pinned(maps::VNI_OUTCOMES)?, open_if_pinned(maps::PEER_OUTCOMES)?);
        read_vni_peer_counters(
            &aya::maps::Map::HashMap(open(maps::VNIS)?),
            &aya::maps::Map::HashMap(open(maps::PEERS)?),
            SlotCounterMaps { outcomes: vni_outcomes.as_ref(), drops: &aya::maps::Map::PerCpuHashMap(open(maps::VNI_COUNTERS)?) },
            SlotCounterMaps { outcomes: peer_outcomes.as_ref(), drops: &aya::maps::Map::PerCpuHashMap(open(maps::PEER_COUNTERS)?) },
        )
    }

    /// What a pinned datapath (another process's) holds: its VTEP and how
    /// many entries its main tables have.
    pub fn pinned_summary(pins: &PinDir) -> Result<DatapathSummary, DatapathError> {
        let open = |name: &'static str| {
            MapData::from_pin(pins.map(name)).map_err(|source| map_error(name, "open pinned", source))
        };
        let node = aya::maps::Map::Array(open(maps::NODE)?);
        let node: Array<&MapData, NodeConfig> = Array::try_from(&node).map_err(|source| map_error(maps::NODE, "open", source))?;
        let node = node.get(&0, 0).map_err(|source| map_error(maps::NODE, "read", source))?;
        Ok(DatapathSummary {
            vtep: (node.configured != 0).then(|| std::net::Ipv4Addr::from(node.vtep_addr_be.to_ne_bytes())),
            vnis: config_table(maps::VNIS).count(open(maps::VNIS)?)?,
            local_endpoints: config_table(maps::LOCAL_ENDPOINTS).count(open(maps::LOCAL_ENDPOINTS)?)?,
            remote_endpoints: config_table(maps::FDB).count(open(maps::FDB)?)?,
            peers: config_table(maps::PEERS).count(open(maps::PEERS)?)?,
        })
    }

    /// Everything a pinned datapath (another process's) holds in its node
    /// entry and configuration tables, as [`Datapath::read_state`] reads
    /// its own: for checking that the maps are exactly what was asked.
    pub fn pinned_state(pins: &PinDir) -> Result<crate::state::MapState, DatapathError> {
        let node = aya::maps::Map::Array(
            MapData::from_pin(pins.map(maps::NODE)).map_err(|source| map_error(maps::NODE, "open pinned", source))?,
        );
        let node: Array<&MapData, NodeConfig> = Array::try_from(&node).map_err(|source| map_error(maps::NODE, "open", source))?;
        let node = node.get(&0, 0).map_err(|source| map_error(maps::NODE, "read", source))?;
        let mut state = crate::state::MapState { node: (node.configured != 0).then_some(node), ..Default::default() };
        for table in CONFIG_TABLES {
            let data = MapData::from_pin(pins.map(table.name())).map_err(|source| map_error(table.name(), "open pinned", source))?;
            table.read_pinned(data, &mut state)?;
        }
        Ok(state)
    }

    /// The datapath's route cache: peer VTEP (network byte order) -> the
    /// underlay route encapsulation last looked up for it.
    pub fn route_cache(&self) -> Result<BTreeMap<u32, overlay_common::RouteCacheEntry>, DatapathError> {
        read_hash(&self.ebpf, maps::ROUTE_CACHE)
    }
}
