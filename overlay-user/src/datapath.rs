//! The eBPF datapath as one object: load it, change its maps as diffs, attach
//! it to interfaces, read its counters, and run its programs on test frames.
//!
//! Dropping a [`Datapath`] detaches everything it attached and frees its
//! maps, so an error at any step leaves the host as it was.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use aya::{
    Ebpf, EbpfLoader, Pod,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuValues},
    programs::{
        ProgramError, SchedClassifier, TcAttachType, TestRun, TestRunOptions, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
    },
};
use overlay_common::{
    Counter, Direction, FdbEntry, FloodTargets, LocalEndpoint, MonitorBucket, MonitorConfig,
    NeighbourEntry, NodeConfig, PeerInfo, PeerVni, PeerVniInfo, PortInfo, Reason, SlotCounters,
    VniInfo, VniIpv4, VniIpv6, VniMac, counter_index, maps, programs, reason,
};

use crate::{
    netdev::ResolvedConfig,
    pinning::{self, PinDir},
    slots::{self, Owners},
    state::{MapDiff, MapState, diff},
    tc_legacy::TcAttachKind,
};

/// Maps that are pinned (kept across agent restarts), with the key and
/// value sizes this agent expects of them: a pin left by an incompatible
/// version is refused rather than misread.
const PINNED_MAPS: [(&str, usize, usize); 17] = [
    (maps::FDB, size_of::<VniMac>(), size_of::<FdbEntry>()),
    (maps::VNIS, size_of::<u32>(), size_of::<VniInfo>()),
    (maps::LOCAL_ENDPOINTS, size_of::<VniMac>(), size_of::<LocalEndpoint>()),
    (maps::PORTS, size_of::<u32>(), size_of::<PortInfo>()),
    (maps::PEERS, size_of::<u32>(), size_of::<PeerInfo>()),
    (maps::PEER_VNIS, size_of::<PeerVni>(), size_of::<PeerVniInfo>()),
    (maps::NEIGHBOURS, size_of::<VniIpv4>(), size_of::<NeighbourEntry>()),
    (maps::NEIGHBOURS6, size_of::<VniIpv6>(), size_of::<NeighbourEntry>()),
    (maps::FLOOD, size_of::<u32>(), size_of::<FloodTargets>()),
    (maps::NODE, size_of::<u32>(), size_of::<NodeConfig>()),
    (maps::COUNTERS, size_of::<u32>(), size_of::<Counter>()),
    (maps::VNI_COUNTERS, size_of::<u32>(), size_of::<SlotCounters>()),
    (maps::PEER_COUNTERS, size_of::<u32>(), size_of::<SlotCounters>()),
    // A ring buffer has no keys or values; its size is its identity.
    (maps::EVENTS, 0, 0),
    (maps::MONITOR, size_of::<u32>(), size_of::<MonitorConfig>()),
    (maps::MONITOR_BUCKETS, size_of::<u32>(), size_of::<MonitorBucket>()),
    (maps::MONITOR_LOST, size_of::<u32>(), size_of::<u64>()),
];

/// The compiled eBPF object (built by `cargo xtask build`).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("OVERLAY_EBPF_OBJECT"));

/// Why a datapath operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The object could not be loaded into the kernel (maps, BTF, relocations).
    #[error("loading the eBPF object failed: {0}")]
    Load(aya::EbpfError),
    /// The verifier or the kernel refused one of the programs.
    #[error("loading program {program} failed: {error}")]
    Program { program: &'static str, error: ProgramError },
    /// The object lacks a map or program the agent expects: object and agent were built apart.
    #[error("the eBPF object has no {kind} named {name}: rebuild with `cargo xtask build`")]
    Missing { kind: &'static str, name: &'static str },
    /// A map update, delete or read failed.
    #[error("{operation} on map {map} failed: {error}")]
    Map { map: &'static str, operation: &'static str, error: MapError },
    /// Attaching a program to an interface failed.
    #[error("attaching {program} to interface {interface} failed: {error}{hint}")]
    Attach { program: &'static str, interface: String, error: ProgramError, hint: &'static str },
    /// A test run (BPF_PROG_TEST_RUN) failed.
    #[error("test run of {program} failed: {error}")]
    TestRun { program: &'static str, error: ProgramError },
    /// The pin directory could not be created or used.
    #[error("pin directory {path}: {error}")]
    Pins { path: std::path::PathBuf, error: std::io::Error },
    /// A pinned map does not have the layout this agent expects.
    #[error("pinned map {map} has {found}, this agent expects {expected}: it was left by an incompatible version; run `overlay down --node {node}` first (this interrupts traffic)")]
    IncompatiblePin { map: &'static str, found: String, expected: String, node: String },
    /// A pinned link could not be adopted or a new one pinned.
    #[error("link {name}: {message}")]
    Link { name: String, message: String },
    /// Attach options that contradict each other.
    #[error("{0}")]
    Options(String),
    /// Another overlay datapath's program is attached where ours would go.
    #[error("interface {interface} already carries another overlay datapath ({programs} attached by another agent or node, not pinned in this node's directory): one node per device; stop that agent or run `overlay down` for its node")]
    Occupied { interface: String, programs: String },
}

// Not `#[from]`: that would make the error its own source as well as its
// message, and `{:#}` would print it twice.
impl From<aya::EbpfError> for DatapathError {
    fn from(error: aya::EbpfError) -> Self {
        DatapathError::Load(error)
    }
}

/// How to attach the XDP program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpAttachMode {
    /// Native (driver) mode, falling back to generic mode where the driver has no XDP support.
    #[default]
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode, which works on every device but is slower.
    Generic,
    /// Hardware offload, on NICs that run XDP themselves.
    Offload,
}

/// The mode the XDP program ended up in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAttachedMode {
    Native,
    Generic,
    Offload,
}

impl fmt::Display for XdpAttachedMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdpAttachedMode::Native => "native",
            XdpAttachedMode::Generic => "generic",
            XdpAttachedMode::Offload => "offload",
        })
    }
}

/// Which hook decapsulates VXLAN on the underlay device (`--decap`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DecapMode {
    /// TC on a veth underlay, XDP in native mode on a device whose driver
    /// has it, TC where it has not (see docs/performance.md for the
    /// measurements behind this choice). An explicit `--xdp-mode` means XDP.
    #[default]
    Auto,
    /// XDP (mode from `--xdp-mode`), with a TC program that floods the
    /// broadcast and multicast frames XDP passes up.
    Xdp,
    /// TC ingress only: keeps the skb's checksum and GSO state, and
    /// delivers into the endpoint's namespace with bpf_redirect_peer.
    Tc,
}

/// How to attach the datapath (`--decap`, `--xdp-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttachMode {
    pub decap: DecapMode,
    pub xdp: XdpAttachMode,
}

impl AttachMode {
    /// Refuses combinations that cannot mean anything: an XDP mode for TC decapsulation.
    pub fn check(self) -> Result<AttachMode, DatapathError> {
        if self.decap == DecapMode::Tc && self.xdp != XdpAttachMode::Auto {
            return Err(DatapathError::Options(format!(
                "--xdp-mode {} with --decap tc: TC decapsulation attaches no XDP program (drop --xdp-mode, or use --decap xdp)",
                clap::ValueEnum::to_possible_value(&self.xdp).map_or_else(String::new, |v| v.get_name().to_owned()),
            )));
        }
        Ok(self)
    }
}

/// What decapsulates, once attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecapHook {
    Xdp(XdpAttachedMode),
    Tc,
}

impl DecapHook {
    /// "xdp" or "tc".
    pub fn hook(&self) -> &'static str {
        match self {
            DecapHook::Xdp(_) => "xdp",
            DecapHook::Tc => "tc",
        }
    }

    /// The XDP mode, or "none" for TC.
    pub fn xdp_mode(&self) -> String {
        match self {
            DecapHook::Xdp(mode) => mode.to_string(),
            DecapHook::Tc => "none".into(),
        }
    }
}

impl fmt::Display for DecapHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecapHook::Xdp(mode) => write!(f, "XDP {mode}"),
            DecapHook::Tc => f.write_str("TC"),
        }
    }
}

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
    /// Packets counted for `direction` and `reason`.
    pub fn packets(&self, direction: Direction, reason: Reason) -> u64 {
        self.rows
            .iter()
            .find(|row| row.direction == direction && row.reason == reason)
            .map_or(0, |row| row.packets)
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
                bytes: row.bytes.saturating_sub(
                    earlier
                        .rows
                        .iter()
                        .find(|r| r.direction == row.direction && r.reason == row.reason)
                        .map_or(0, |r| r.bytes),
                ),
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

/// Result of running a program once on a frame (BPF_PROG_TEST_RUN).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestRunOutcome {
    /// The program's return value (XDP or TC action).
    pub action: u32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
    /// Average run time per repetition, in nanoseconds.
    pub duration_ns: u64,
}

/// What `apply` changed, map by map (for logs and status).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub changes: Vec<(&'static str, usize)>,
}

impl ApplyReport {
    pub fn total(&self) -> usize {
        self.changes.iter().map(|(_, n)| n).sum()
    }
}

impl fmt::Display for ApplyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<_> = self.changes.iter().filter(|(_, n)| *n > 0).map(|(m, n)| format!("{m}: {n}")).collect();
        if parts.is_empty() { f.write_str("no changes") } else { f.write_str(&parts.join(", ")) }
    }
}

/// A BPF link, or a TC filter where the kernel has no TCX links.
enum Attachment {
    Link(FdLink),
    Filter(crate::tc_legacy::Filter),
}

type Undo = Box<dyn FnOnce(&mut Ebpf) -> Result<(), DatapathError>>;

/// An attachment the datapath holds, pinned or not.
struct HeldLink {
    link: Attachment,
    /// Where it is pinned, when the datapath is pinned.
    pin: Option<std::path::PathBuf>,
}

/// The loaded datapath.
///
/// Unpinned (from [`Datapath::load`]), dropping it detaches everything.
/// Pinned (from [`Datapath::load_pinned`]), its maps and links live on
/// bpffs: dropping it leaves the datapath forwarding, [`Datapath::detach`]
/// removes it.
pub struct Datapath {
    ebpf: Ebpf,
    applied: MapState,
    pins: Option<PinDir>,
    /// Attachments by link name (see [`pinning`]).
    links: std::collections::BTreeMap<String, HeldLink>,
    /// Whether maps and links were adopted from an earlier agent.
    adopted: bool,
    /// Who each counter slot last counted for (see [`Datapath::apply`]).
    vni_slot_owners: Owners<u32>,
    peer_slot_owners: Owners<u32>,
    /// How TC programs attach on this kernel, probed at the first attachment.
    tc_attach: Option<TcAttachKind>,
    /// Pins this start created and nothing forwards through yet: a start
    /// refused before its first attach succeeds removes them on drop.
    fresh_pins: bool,
}

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

    /// Whether this datapath adopted the maps and links of an earlier agent.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    fn load_with(log_level: log::LevelFilter, pins: Option<&PinDir>) -> Result<Datapath, DatapathError> {
        let level = log_level as u8;
        let mut loader = EbpfLoader::new();
        loader.override_global(aya_log::LEVEL, &level, false);
        if let Some(pins) = pins {
            for (name, _, _) in PINNED_MAPS {
                loader.map_pin_path(name, pins.map(name));
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
        for name in [
            maps::FDB,
            maps::VNIS,
            maps::LOCAL_ENDPOINTS,
            maps::PORTS,
            maps::PEERS,
            maps::PEER_VNIS,
            maps::NEIGHBOURS,
            maps::NEIGHBOURS6,
            maps::FLOOD,
            maps::IP_IDS,
            maps::ROUTE_CACHE,
            maps::NODE,
            maps::COUNTERS,
            maps::VNI_COUNTERS,
            maps::PEER_COUNTERS,
            maps::EVENTS,
            maps::MONITOR,
            maps::MONITOR_BUCKETS,
            maps::MONITOR_LOST,
        ] {
            if ebpf.map(name).is_none() {
                return Err(DatapathError::Missing { kind: "map", name });
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
        for (name, key_size, value_size) in PINNED_MAPS {
            let map = self.ebpf.map(name).ok_or(DatapathError::Missing { kind: "map", name })?;
            let data: &MapData = match map {
                aya::maps::Map::HashMap(data)
                | aya::maps::Map::Array(data)
                | aya::maps::Map::PerCpuArray(data)
                | aya::maps::Map::RingBuf(data) => data,
                _ => return Err(DatapathError::Missing { kind: "map of the expected type", name }),
            };
            let info = data.info().map_err(|source| map_error(name, "inspect", source))?;
            let found = (info.key_size() as usize, info.value_size() as usize);
            if found != (key_size, value_size) {
                return Err(DatapathError::IncompatiblePin {
                    map: name,
                    found: format!("{}-byte keys and {}-byte values", found.0, found.1),
                    expected: format!("{key_size}-byte keys and {value_size}-byte values"),
                    node: node.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// What the maps hold now (for adopting an earlier agent's datapath).
    pub fn read_state(&self) -> Result<MapState, DatapathError> {
        let node = {
            let map = self.ebpf.map(maps::NODE).ok_or(DatapathError::Missing { kind: "map", name: maps::NODE })?;
            let array: Array<&MapData, NodeConfig> = Array::try_from(map).map_err(|source| map_error(maps::NODE, "open", source))?;
            Some(array.get(&0, 0).map_err(|source| map_error(maps::NODE, "read", source))?).filter(|n| n.configured != 0)
        };
        Ok(MapState {
            node,
            vnis: read_hash(&self.ebpf, maps::VNIS)?,
            ports: read_hash(&self.ebpf, maps::PORTS)?,
            local_endpoints: read_hash(&self.ebpf, maps::LOCAL_ENDPOINTS)?,
            fdb: read_hash(&self.ebpf, maps::FDB)?,
            peers: read_hash(&self.ebpf, maps::PEERS)?,
            peer_vnis: read_hash(&self.ebpf, maps::PEER_VNIS)?,
            neighbours: read_hash(&self.ebpf, maps::NEIGHBOURS)?,
            neighbours6: read_hash(&self.ebpf, maps::NEIGHBOURS6)?,
            flood: read_hash(&self.ebpf, maps::FLOOD)?,
        })
    }

    /// Starts forwarding the programs' aya-log records to the `log` crate.
    /// `None` when the object has no log map (no log statement survived).
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        aya_log::EbpfLogger::init(&mut self.ebpf).ok()
    }

    /// The map state last applied.
    pub fn applied(&self) -> &MapState {
        &self.applied
    }

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
                Ok(Diffs::between(&old, desired).report())
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
        zero_slots(&mut self.ebpf, maps::VNI_COUNTERS, &free_vni)?;
        zero_slots(&mut self.ebpf, maps::PEER_COUNTERS, &free_peer)?;
        if busy_vni.is_empty() && busy_peer.is_empty() {
            return apply_steps(&mut self.ebpf, old, new, undo);
        }
        let interim = new.withholding(&busy_vni, &busy_peer);
        apply_steps(&mut self.ebpf, old, &interim, undo)?;
        wait_for_running_programs();
        zero_slots(&mut self.ebpf, maps::VNI_COUNTERS, &busy_vni)?;
        zero_slots(&mut self.ebpf, maps::PEER_COUNTERS, &busy_peer)?;
        apply_steps(&mut self.ebpf, &interim, new, undo)
    }

    /// The holders of `state`'s slots are now their owners; released slots
    /// keep their last owner.
    fn record_slot_owners(&mut self, state: &MapState) {
        self.vni_slot_owners.extend(state.vni_slots().into_iter().map(|(vni, slot)| (slot, vni)));
        self.peer_slot_owners.extend(state.peer_slots().into_iter().map(|(peer, slot)| (slot, peer)));
    }

    /// Attaches decapsulation and flooding to the underlay and the endpoint
    /// program to every port, adopting attachments pinned by an earlier
    /// agent (their programs are replaced atomically, so traffic never
    /// stops) and detaching pinned ones the configuration no longer has.
    /// On failure, what this call attached is detached again.
    pub fn attach(&mut self, resolved: &ResolvedConfig, mode: AttachMode) -> Result<DecapHook, DatapathError> {
        let before: std::collections::BTreeSet<String> = self.links.keys().cloned().collect();
        let result = self.attach_all(resolved, mode);
        if result.is_ok() {
            self.fresh_pins = false;
        } else {
            let added: Vec<String> = self.links.keys().filter(|name| !before.contains(*name)).cloned().collect();
            for name in added {
                self.drop_link(&name);
            }
        }
        result
    }

    fn attach_all(&mut self, resolved: &ResolvedConfig, mode: AttachMode) -> Result<DecapHook, DatapathError> {
        let underlay = resolved.config.node.underlay_interface.clone();
        let mut wanted = Vec::new();
        let hook = match self.decap_hook_for(&underlay, resolved.underlay_ifindex, mode)? {
            Some(hook) => hook,
            None => {
                let name = pinning::decap_tc_link_name(&underlay);
                self.attach_tc(programs::DECAP_TC, &name, &underlay)?;
                wanted.push(name);
                DecapHook::Tc
            }
        };
        if let DecapHook::Xdp(attached) = hook {
            wanted.push(pinning::xdp_link_name(attached != XdpAttachedMode::Generic, &underlay));
            let name = pinning::underlay_tc_link_name(&underlay);
            self.attach_tc(programs::UNDERLAY_FLOOD_TC, &name, &underlay)?;
            wanted.push(name);
        }
        for endpoint in &resolved.config.endpoints {
            let name = pinning::port_link_name(&endpoint.interface);
            if !wanted.contains(&name) {
                self.attach_tc(programs::ENDPOINT_TC, &name, &endpoint.interface)?;
                wanted.push(name);
            }
        }
        // Attachments of an earlier configuration (a removed port, another underlay).
        let stale: Vec<String> = self.links.keys().filter(|name| !wanted.contains(name)).cloned().collect();
        for name in &stale {
            self.drop_link(name);
        }
        if let Some(pins) = &self.pins {
            for name in pins.pinned_links().into_iter().filter(|name| !wanted.contains(name)) {
                log::info!("detaching {name}, which the configuration no longer has");
                if !crate::tc_legacy::detach_recorded(pins, &name) {
                    let _ = std::fs::remove_file(pins.link(&name));
                }
            }
        }
        Ok(hook)
    }

    /// Attaches XDP decapsulation where `mode` asks for it (`Some`), or
    /// says TC decapsulation is wanted (`None`, attached by the caller).
    /// Switching hooks is make-before-break: the caller attaches the new
    /// hook before the old one's links are dropped as stale, and while
    /// both are attached the XDP program sees each frame first.
    fn decap_hook_for(&mut self, underlay: &str, ifindex: u32, mode: AttachMode) -> Result<Option<DecapHook>, DatapathError> {
        let mode = mode.check()?;
        match mode.decap {
            DecapMode::Tc => Ok(None),
            DecapMode::Xdp => self.attach_xdp(underlay, ifindex, mode.xdp).map(|m| Some(DecapHook::Xdp(m))),
            DecapMode::Auto if mode.xdp != XdpAttachMode::Auto => {
                self.attach_xdp(underlay, ifindex, mode.xdp).map(|m| Some(DecapHook::Xdp(m)))
            }
            DecapMode::Auto => {
                // On a veth, TC: XDP there loses the skb's checksum and GSO
                // state and measured slower (docs/performance.md).
                if crate::netdev::driver(underlay).is_ok_and(|driver| driver == "veth") {
                    log::info!("decapsulating in TC on {underlay}: it is a veth, where TC keeps checksum offload and GSO state and measured faster than XDP");
                    return Ok(None);
                }
                match self.attach_xdp(underlay, ifindex, XdpAttachMode::Native) {
                    Ok(attached) => Ok(Some(DecapHook::Xdp(attached))),
                    // Generic XDP runs on an skb already built: TC does the same work for less.
                    Err(error) => {
                        log::info!("decapsulating in TC on {underlay}: native XDP is not available there ({error})");
                        Ok(None)
                    }
                }
            }
        }
    }

    /// An attachment pinned under `name` by an earlier agent, if any.
    fn pinned_link(&self, name: &str) -> Result<Option<FdLink>, DatapathError> {
        let Some(pins) = &self.pins else { return Ok(None) };
        let path = pins.link(name);
        if !path.exists() {
            return Ok(None);
        }
        let pinned = PinnedLink::from_pin(&path)
            .map_err(|e| DatapathError::Link { name: name.to_owned(), message: format!("opening the pinned link: {e}") })?;
        Ok(Some(pinned.into()))
    }

    fn attach_xdp(&mut self, underlay: &str, ifindex: u32, mode: XdpAttachMode) -> Result<XdpAttachedMode, DatapathError> {
        // An earlier agent's attachment in either mode is adopted as it is.
        for native in [true, false] {
            let name = pinning::xdp_link_name(native, underlay);
            if self.links.contains_key(&name) {
                return Ok(if native { XdpAttachedMode::Native } else { XdpAttachedMode::Generic });
            }
            if let Some(fd_link) = self.pinned_link(&name)? {
                let link = XdpLink::try_from(fd_link).map_err(|e| DatapathError::Link { name: name.clone(), message: e.to_string() })?;
                let xdp = self.xdp_mut()?;
                let id = xdp.attach_to_link(link).map_err(|error| DatapathError::Attach {
                    program: programs::DECAP_XDP,
                    interface: underlay.to_owned(),
                    error,
                    hint: " (replacing the program in the pinned link)",
                })?;
                let link = xdp.take_link(id).map_err(|e| DatapathError::Link { name: name.clone(), message: e.to_string() })?;
                self.hold(name, FdLink::try_from(link).ok(), true)?;
                return Ok(if native { XdpAttachedMode::Native } else { XdpAttachedMode::Generic });
            }
        }
        let xdp = self.xdp_mut()?;
        let attach_error = |error, hint| DatapathError::Attach { program: programs::DECAP_XDP, interface: underlay.to_owned(), error, hint };
        let (id, attached) = match mode {
            XdpAttachMode::Native => xdp
                .attach_to_if_index(ifindex, XdpMode::Driver)
                .map(|id| (id, XdpAttachedMode::Native))
                .map_err(|e| attach_error(e, " (the driver may lack native XDP: try --xdp-mode generic)"))?,
            XdpAttachMode::Generic => {
                xdp.attach_to_if_index(ifindex, XdpMode::Skb).map(|id| (id, XdpAttachedMode::Generic)).map_err(|e| attach_error(e, ""))?
            }
            // The kernel decides; where it refuses, say why this datapath
            // cannot run there.
            XdpAttachMode::Offload => xdp.attach_to_if_index(ifindex, XdpMode::Hardware).map(|id| (id, XdpAttachedMode::Offload)).map_err(|e| {
                attach_error(
                    e,
                    " (this NIC cannot run XDP in hardware; where one can, offloaded XDP may only drop, pass or bounce frames, \
                     while this datapath redirects decapsulated frames into container ports: use --xdp-mode native)",
                )
            })?,
            XdpAttachMode::Auto => match xdp.attach_to_if_index(ifindex, XdpMode::Driver) {
                Ok(id) => (id, XdpAttachedMode::Native),
                Err(native_error) => {
                    log::warn!("native XDP on {underlay} failed ({native_error}); falling back to generic XDP, which is slower");
                    xdp.attach_to_if_index(ifindex, XdpMode::Skb).map(|id| (id, XdpAttachedMode::Generic)).map_err(|e| attach_error(e, ""))?
                }
            },
        };
        let link = xdp.take_link(id).map_err(|e| DatapathError::Link { name: underlay.to_owned(), message: e.to_string() })?;
        let name = pinning::xdp_link_name(attached != XdpAttachedMode::Generic, underlay);
        self.hold(name, FdLink::try_from(link).ok(), false)?;
        Ok(attached)
    }

    fn attach_tc(&mut self, program: &'static str, name: &str, interface: &str) -> Result<(), DatapathError> {
        if self.links.contains_key(name) {
            return Ok(());
        }
        let attach_error = |error| DatapathError::Attach { program, interface: interface.to_owned(), error, hint: "" };
        if self.tc_attach_kind(interface) == TcAttachKind::Netlink {
            let pins = self.pins.clone();
            let filter = crate::tc_legacy::attach(self.tc_mut(program)?, name, interface, pins.as_ref()).map_err(attach_error)?;
            self.links.insert(name.to_owned(), HeldLink { link: Attachment::Filter(filter), pin: None });
            return Ok(());
        }
        let adopted = self.pinned_link(name)?;
        let was_pinned = adopted.is_some();
        if !was_pinned {
            self.check_no_other_datapath(interface)?;
        }
        let tc = self.tc_mut(program)?;
        let id = match adopted {
            Some(fd_link) => {
                let link = SchedClassifierLink::try_from(fd_link).map_err(|e| DatapathError::Link { name: name.to_owned(), message: e.to_string() })?;
                tc.attach_to_link(link).map_err(attach_error)?
            }
            None => tc.attach(interface, TcAttachType::Ingress).map_err(attach_error)?,
        };
        let link = tc.take_link(id).map_err(|e| DatapathError::Link { name: name.to_owned(), message: e.to_string() })?;
        self.hold(name.to_owned(), FdLink::try_from(link).ok(), was_pinned)
    }

    /// How TC programs attach here: probed on the first TC attachment (see
    /// [`crate::tc_legacy::probe`]), the same for the agent's life.
    fn tc_attach_kind(&mut self, interface: &str) -> TcAttachKind {
        *self.tc_attach.get_or_insert_with(|| crate::tc_legacy::probe(interface))
    }

    /// How TC programs were attached, once something was.
    pub fn tc_attachment(&self) -> Option<TcAttachKind> {
        self.tc_attach
    }

    /// Refuses a fresh TC attachment where another overlay datapath's
    /// program already is: TC (tcx) takes several programs per hook, so a
    /// second node's agent on the same device would otherwise attach beside
    /// the first and both would act on every frame (XDP, one program per
    /// device, refuses that itself). Programs of this node's own links,
    /// held or pinned here by an earlier agent, are not another datapath.
    /// Kernels without tcx (before 6.6) cannot be asked: nothing is checked.
    fn check_no_other_datapath(&self, interface: &str) -> Result<(), DatapathError> {
        let Ok((_, programs)) = SchedClassifier::query_tcx(interface, TcAttachType::Ingress) else {
            return Ok(());
        };
        let overlay: Vec<String> = programs
            .iter()
            .filter_map(|program| program.name_as_str().filter(|name| name.starts_with("overlay_")).map(|name| format!("{name} (id {})", program.id())))
            .collect();
        let mut mine: std::collections::BTreeSet<String> = self.links.keys().cloned().collect();
        if let Some(pins) = &self.pins {
            mine.extend(pins.pinned_links());
        }
        let own_here = mine.iter().filter(|name| pinning::tc_link_names(interface).contains(name)).count();
        if overlay.len() > own_here {
            return Err(DatapathError::Occupied { interface: interface.to_owned(), programs: overlay.join(", ") });
        }
        Ok(())
    }

    /// Keeps an attachment, pinning it when the datapath is pinned (an
    /// adopted one is pinned already).
    fn hold(&mut self, name: String, link: Option<FdLink>, already_pinned: bool) -> Result<(), DatapathError> {
        let Some(link) = link else {
            // Only netlink-attached (pre-6.6 TC, pre-5.9 XDP) links are not fd links.
            return Err(DatapathError::Link { name, message: "the kernel attached it without a BPF link, which cannot be held or pinned".into() });
        };
        let (link, pin) = match &self.pins {
            Some(pins) if !already_pinned => {
                let path = pins.link(&name);
                let pinned = link.pin(&path).map_err(|e| DatapathError::Link { name: name.clone(), message: format!("pinning: {e}") })?;
                (FdLink::from(pinned), Some(path))
            }
            Some(pins) => (link, Some(pins.link(&name))),
            None => (link, None),
        };
        self.links.insert(name, HeldLink { link: Attachment::Link(link), pin });
        Ok(())
    }

    /// Detaches one attachment: its pin goes, then the last reference.
    fn drop_link(&mut self, name: &str) {
        if let Some(held) = self.links.remove(name) {
            if let Some(pin) = &held.pin {
                if let Err(error) = std::fs::remove_file(pin) {
                    log::warn!("unpinning {}: {error}", pin.display());
                }
            }
            match held.link {
                Attachment::Link(link) => drop(link),
                Attachment::Filter(filter) => filter.detach(),
            }
        }
    }

    /// Detaches every program from every interface and, for a pinned
    /// datapath, removes its pins: the datapath stops forwarding.
    pub fn detach(&mut self) {
        let names: Vec<String> = self.links.keys().cloned().collect();
        for name in names {
            self.drop_link(&name);
        }
        // Links still owned by the programs (none in normal operation).
        for name in programs::ALL {
            if let Some(program) = self.ebpf.program_mut(name) {
                let result = match program {
                    aya::programs::Program::Xdp(xdp) => xdp.unload(),
                    aya::programs::Program::SchedClassifier(tc) => tc.unload(),
                    _ => Ok(()),
                };
                if let Err(error) = result {
                    log::warn!("detaching {name}: {error}");
                }
            }
        }
        if let Some(pins) = self.pins.take() {
            if let Err(error) = pins.remove() {
                log::warn!("removing pins in {}: {error}", pins.root().display());
            }
        }
    }

    /// Names of the attachments held (see [`pinning`]).
    pub fn attachments(&self) -> Vec<String> {
        self.links.keys().cloned().collect()
    }

    /// Reads all counters, summed over CPUs; rows with no packets are left out.
    pub fn counters(&self) -> Result<Counters, DatapathError> {
        let map = self.ebpf.map(maps::COUNTERS).ok_or(DatapathError::Missing { kind: "map", name: maps::COUNTERS })?;
        let array: PerCpuArray<&MapData, Counter> =
            PerCpuArray::try_from(map).map_err(|source| map_error(maps::COUNTERS, "open", source))?;
        read_counters(&array)
    }

    /// Reads the counters of a pinned datapath (another process's).
    pub fn pinned_counters(pins: &PinDir) -> Result<Counters, DatapathError> {
        let data = MapData::from_pin(pins.map(maps::COUNTERS)).map_err(|source| map_error(maps::COUNTERS, "open pinned", source))?;
        let map = aya::maps::Map::PerCpuArray(data);
        let array: PerCpuArray<&MapData, Counter> =
            PerCpuArray::try_from(&map).map_err(|source| map_error(maps::COUNTERS, "open", source))?;
        read_counters(&array)
    }

    /// Reads the counters of every VNI and peer VTEP that has a counter slot.
    pub fn vni_peer_counters(&self) -> Result<VniPeerCounters, DatapathError> {
        let map = |name: &'static str| self.ebpf.map(name).ok_or(DatapathError::Missing { kind: "map", name });
        read_vni_peer_counters(
            map(maps::VNIS)?,
            map(maps::PEERS)?,
            map(maps::VNI_COUNTERS)?,
            map(maps::PEER_COUNTERS)?,
        )
    }

    /// Reads the counters of every VNI and peer of a pinned datapath
    /// (another process's; its agent need not run): the slots come from its
    /// pinned `VNIS` and `PEERS` tables.
    pub fn pinned_vni_peer_counters(pins: &PinDir) -> Result<VniPeerCounters, DatapathError> {
        let open = |name: &'static str| {
            MapData::from_pin(pins.map(name)).map_err(|source| map_error(name, "open pinned", source))
        };
        read_vni_peer_counters(
            &aya::maps::Map::HashMap(open(maps::VNIS)?),
            &aya::maps::Map::HashMap(open(maps::PEERS)?),
            &aya::maps::Map::PerCpuArray(open(maps::VNI_COUNTERS)?),
            &aya::maps::Map::PerCpuArray(open(maps::PEER_COUNTERS)?),
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
            vnis: count_entries::<u32, VniInfo>(maps::VNIS, open(maps::VNIS)?)?,
            local_endpoints: count_entries::<VniMac, LocalEndpoint>(maps::LOCAL_ENDPOINTS, open(maps::LOCAL_ENDPOINTS)?)?,
            remote_endpoints: count_entries::<VniMac, FdbEntry>(maps::FDB, open(maps::FDB)?)?,
            peers: count_entries::<u32, PeerInfo>(maps::PEERS, open(maps::PEERS)?)?,
        })
    }

    /// Runs the XDP decapsulation program on `frame`, `repeat` times.
    ///
    /// With `repeat > 1` the kernel runs each repetition on the frame the
    /// previous one left behind (a decapsulated frame is then decapsulated
    /// again), so only a frame the program leaves unchanged gives a
    /// meaningful per-packet time.
    pub fn test_decap(&self, frame: &[u8], repeat: u32) -> Result<TestRunOutcome, DatapathError> {
        let program: &Xdp = self.program(programs::DECAP_XDP)?;
        run_program(program, programs::DECAP_XDP, frame, None, repeat)
    }

    /// Runs the endpoint TC program on `frame` as if it arrived on the port
    /// with index `ifindex` (which must exist in the calling thread's network
    /// namespace), `repeat` times; see [`Datapath::test_decap`] on repeats.
    pub fn test_endpoint(&self, frame: &[u8], ifindex: u32, repeat: u32) -> Result<TestRunOutcome, DatapathError> {
        let program: &SchedClassifier = self.program(programs::ENDPOINT_TC)?;
        run_program(program, programs::ENDPOINT_TC, frame, Some(&skb_context(ifindex)), repeat)
    }

    /// Runs the underlay flood TC program on `frame` as if it arrived on
    /// the device with index `ifindex` (see [`Datapath::test_endpoint`]).
    /// Its clones really are sent to the local ports it names.
    pub fn test_underlay_flood(&self, frame: &[u8], ifindex: u32) -> Result<TestRunOutcome, DatapathError> {
        let program: &SchedClassifier = self.program(programs::UNDERLAY_FLOOD_TC)?;
        run_program(program, programs::UNDERLAY_FLOOD_TC, frame, Some(&skb_context(ifindex)), 1)
    }

    /// The datapath's route cache: peer VTEP (network byte order) -> the
    /// underlay route encapsulation last looked up for it.
    pub fn route_cache(&self) -> Result<BTreeMap<u32, overlay_common::RouteCacheEntry>, DatapathError> {
        read_hash(&self.ebpf, maps::ROUTE_CACHE)
    }

    /// Runs the TC decapsulation program (`--decap tc`) on `frame` as if it
    /// arrived on the device with index `ifindex`. Its redirect is only
    /// returned (a test run carries none out); flooded clones are sent.
    pub fn test_decap_tc(&self, frame: &[u8], ifindex: u32) -> Result<TestRunOutcome, DatapathError> {
        let program: &SchedClassifier = self.program(programs::DECAP_TC)?;
        run_program(program, programs::DECAP_TC, frame, Some(&skb_context(ifindex)), 1)
    }

    fn program<'a, T>(&'a self, name: &'static str) -> Result<&'a T, DatapathError>
    where
        &'a T: TryFrom<&'a aya::programs::Program>,
    {
        let program = self.ebpf.program(name).ok_or(DatapathError::Missing { kind: "program", name })?;
        program.try_into().map_err(|_| DatapathError::Missing { kind: "program of the expected type", name })
    }

    fn xdp_mut(&mut self) -> Result<&mut Xdp, DatapathError> {
        let name = programs::DECAP_XDP;
        let program = self.ebpf.program_mut(name).ok_or(DatapathError::Missing { kind: "program", name })?;
        program.try_into().map_err(|_| DatapathError::Missing { kind: "XDP program", name })
    }

    fn tc_mut(&mut self, name: &'static str) -> Result<&mut SchedClassifier, DatapathError> {
        let program = self.ebpf.program_mut(name).ok_or(DatapathError::Missing { kind: "program", name })?;
        program.try_into().map_err(|_| DatapathError::Missing { kind: "TC program", name })
    }
}

impl Drop for Datapath {
    /// A start refused before anything forwarded (the first attach failed,
    /// or never came) removes the pins it created: the next start must not
    /// adopt maps nobody finished filling.
    fn drop(&mut self) {
        if self.fresh_pins {
            self.detach();
        }
    }
}

fn run_program<P: TestRun<Result = aya::programs::TestRunResult>>(
    program: &P,
    name: &'static str,
    frame: &[u8],
    ctx: Option<&[u8]>,
    repeat: u32,
) -> Result<TestRunOutcome, DatapathError>
where
    for<'a> P: TestRun<Opts<'a> = TestRunOptions<'a>>,
{
    let mut out = vec![0u8; frame.len() + 512];
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: ctx,
        repeat: repeat.max(1),
        ..Default::default()
    };
    let result = program.test_run(opts).map_err(|error| DatapathError::TestRun { program: name, error })?;
    out.truncate(result.data_size_out as usize);
    Ok(TestRunOutcome {
        action: result.return_value,
        frame: out,
        duration_ns: result.duration.as_nanos() as u64,
    })
}

/// A `struct __sk_buff` up to and including `ifindex` (offset 40), for a
/// TC test run; the kernel only accepts a few fields and requires the rest zero.
fn skb_context(ifindex: u32) -> [u8; 44] {
    let mut ctx = [0u8; 44];
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

fn read_counters(array: &PerCpuArray<&MapData, Counter>) -> Result<Counters, DatapathError> {
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

/// The counters of every slot holder of the `VNIS` and `PEERS` tables
/// (`vnis`, `peers`), read from `VNI_COUNTERS` and `PEER_COUNTERS`.
fn read_vni_peer_counters(
    vnis: &aya::maps::Map,
    peers: &aya::maps::Map,
    vni_counters: &aya::maps::Map,
    peer_counters: &aya::maps::Map,
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
        vnis: read_slots(maps::VNI_COUNTERS, vni_counters, &vni_slots)?,
        peers: read_slots(maps::PEER_COUNTERS, peer_counters, &peer_slots)?,
    })
}

/// The counters of each key's slot in the slot array `map`; a key without
/// a slot (tables written before slots existed) has none.
fn read_slots<K: Ord + Copy>(name: &'static str, map: &aya::maps::Map, slots: &BTreeMap<K, u32>) -> Result<BTreeMap<K, Counters>, DatapathError> {
    let array: PerCpuArray<&MapData, SlotCounters> = PerCpuArray::try_from(map).map_err(|source| map_error(name, "open", source))?;
    let mut counters = BTreeMap::new();
    for (key, &slot) in slots {
        let read = if slot == overlay_common::NO_COUNTER_SLOT {
            Counters::default()
        } else {
            let per_cpu = array.get(&slot, 0).map_err(|source| map_error(name, "read", source))?;
            counters_from(|index| per_cpu.iter().map(move |block| block.counters[index]))
        };
        counters.insert(*key, read);
    }
    Ok(counters)
}

fn count_entries<K: Pod, V: Pod>(name: &'static str, data: MapData) -> Result<usize, DatapathError> {
    let map = aya::maps::Map::HashMap(data);
    let hash: HashMap<&MapData, K, V> = HashMap::try_from(&map).map_err(|source| map_error(name, "open", source))?;
    hash.keys().try_fold(0, |count, key| key.map(|_| count + 1)).map_err(|source| map_error(name, "read", source))
}

fn read_hash<K: Pod + Ord, V: Pod>(ebpf: &Ebpf, name: &'static str) -> Result<BTreeMap<K, V>, DatapathError> {
    let map = ebpf.map(name).ok_or(DatapathError::Missing { kind: "map", name })?;
    let hash: HashMap<&MapData, K, V> = HashMap::try_from(map).map_err(|source| map_error(name, "open", source))?;
    hash.iter().collect::<Result<_, _>>().map_err(|source| map_error(name, "read", source))
}

fn map_error(map: &'static str, operation: &'static str, error: MapError) -> DatapathError {
    DatapathError::Map { map, operation, error }
}

fn open_hash<'a, K: Pod, V: Pod>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<HashMap<&'a mut MapData, K, V>, DatapathError> {
    let map = ebpf.map_mut(name).ok_or(DatapathError::Missing { kind: "map", name })?;
    HashMap::try_from(map).map_err(|source| map_error(name, "open", source))
}

fn upsert<K, V>(
    ebpf: &mut Ebpf,
    name: &'static str,
    changes: &MapDiff<K, V>,
    old: &BTreeMap<K, V>,
    undo: &mut Vec<Undo>,
) -> Result<(), DatapathError>
where
    K: Pod + Ord + Copy + 'static,
    V: Pod + Copy + 'static,
{
    let mut map = open_hash::<K, V>(ebpf, name)?;
    for (key, value) in &changes.upserts {
        map.insert(key, value, 0).map_err(|source| map_error(name, "insert", source))?;
        let previous = old.get(key).copied();
        let key = *key;
        undo.push(Box::new(move |ebpf| {
            let mut map = open_hash::<K, V>(ebpf, name)?;
            match previous {
                Some(value) => map.insert(key, value, 0).map_err(|source| map_error(name, "restore", source)),
                None => map.remove(&key).map_err(|source| map_error(name, "remove", source)),
            }
        }));
    }
    Ok(())
}

fn delete<K, V>(
    ebpf: &mut Ebpf,
    name: &'static str,
    changes: &MapDiff<K, V>,
    old: &BTreeMap<K, V>,
    undo: &mut Vec<Undo>,
) -> Result<(), DatapathError>
where
    K: Pod + Ord + Copy + 'static,
    V: Pod + Copy + 'static,
{
    let mut map = open_hash::<K, V>(ebpf, name)?;
    for key in &changes.deletes {
        map.remove(key).map_err(|source| map_error(name, "delete", source))?;
        if let Some(value) = old.get(key).copied() {
            let key = *key;
            undo.push(Box::new(move |ebpf| {
                let mut map = open_hash::<K, V>(ebpf, name)?;
                map.insert(key, value, 0).map_err(|source| map_error(name, "restore", source))
            }));
        }
    }
    Ok(())
}

fn set_node(ebpf: &mut Ebpf, value: Option<NodeConfig>, undo: &mut Vec<Undo>, previous: Option<NodeConfig>) -> Result<(), DatapathError> {
    fn write(ebpf: &mut Ebpf, value: Option<NodeConfig>) -> Result<(), DatapathError> {
        let name = maps::NODE;
        let map = ebpf.map_mut(name).ok_or(DatapathError::Missing { kind: "map", name })?;
        let mut array: Array<&mut MapData, NodeConfig> = Array::try_from(map).map_err(|source| map_error(name, "open", source))?;
        // An all-zero entry has `configured == 0`: the programs pass everything.
        // SAFETY: NodeConfig is plain data; all-zero is valid.
        let value = value.unwrap_or(unsafe { std::mem::zeroed() });
        array.set(0, value, 0).map_err(|source| map_error(name, "set", source))
    }
    write(ebpf, value)?;
    undo.push(Box::new(move |ebpf| write(ebpf, previous)));
    Ok(())
}

/// What must change in every table to go from one state to another.
struct Diffs {
    node_changed: bool,
    vnis: MapDiff<u32, VniInfo>,
    peers: MapDiff<u32, PeerInfo>,
    peer_vnis: MapDiff<PeerVni, PeerVniInfo>,
    local: MapDiff<VniMac, LocalEndpoint>,
    neighbours: MapDiff<VniIpv4, NeighbourEntry>,
    neighbours6: MapDiff<VniIpv6, NeighbourEntry>,
    flood: MapDiff<u32, FloodTargets>,
    fdb: MapDiff<VniMac, FdbEntry>,
    ports: MapDiff<u32, PortInfo>,
}

impl Diffs {
    fn between(old: &MapState, new: &MapState) -> Diffs {
        Diffs {
            node_changed: old.node != new.node,
            vnis: diff(&old.vnis, &new.vnis),
            peers: diff(&old.peers, &new.peers),
            peer_vnis: diff(&old.peer_vnis, &new.peer_vnis),
            local: diff(&old.local_endpoints, &new.local_endpoints),
            neighbours: diff(&old.neighbours, &new.neighbours),
            neighbours6: diff(&old.neighbours6, &new.neighbours6),
            flood: diff(&old.flood, &new.flood),
            fdb: diff(&old.fdb, &new.fdb),
            ports: diff(&old.ports, &new.ports),
        }
    }

    fn report(&self) -> ApplyReport {
        ApplyReport {
            changes: vec![
                (maps::NODE, self.node_changed as usize),
                (maps::VNIS, self.vnis.len()),
                (maps::PEERS, self.peers.len()),
                (maps::PEER_VNIS, self.peer_vnis.len()),
                (maps::LOCAL_ENDPOINTS, self.local.len()),
                (maps::NEIGHBOURS, self.neighbours.len()),
                (maps::NEIGHBOURS6, self.neighbours6.len()),
                (maps::FLOOD, self.flood.len()),
                (maps::FDB, self.fdb.len()),
                (maps::PORTS, self.ports.len()),
            ],
        }
    }
}

/// Writes the difference between `old` and `new` into the maps, recording
/// in `undo` how to put back every entry it changes.
fn apply_steps(ebpf: &mut Ebpf, old: &MapState, new: &MapState, undo: &mut Vec<Undo>) -> Result<(), DatapathError> {
    let Diffs { node_changed, vnis, peers, peer_vnis, local, neighbours, neighbours6, flood, fdb, ports } = Diffs::between(old, new);
    // Additions from the leaves inwards (a port is classified into a VNI
    // only once everything that VNI needs is in place); removals the
    // other way round. The node entry goes first: until it is written the
    // programs pass everything untouched.
    if node_changed {
        set_node(ebpf, new.node, undo, old.node)?;
    }
    upsert(ebpf, maps::VNIS, &vnis, &old.vnis, undo)?;
    upsert(ebpf, maps::PEERS, &peers, &old.peers, undo)?;
    upsert(ebpf, maps::PEER_VNIS, &peer_vnis, &old.peer_vnis, undo)?;
    upsert(ebpf, maps::LOCAL_ENDPOINTS, &local, &old.local_endpoints, undo)?;
    upsert(ebpf, maps::NEIGHBOURS, &neighbours, &old.neighbours, undo)?;
    upsert(ebpf, maps::NEIGHBOURS6, &neighbours6, &old.neighbours6, undo)?;
    upsert(ebpf, maps::FDB, &fdb, &old.fdb, undo)?;
    upsert(ebpf, maps::FLOOD, &flood, &old.flood, undo)?;
    upsert(ebpf, maps::PORTS, &ports, &old.ports, undo)?;
    delete(ebpf, maps::PORTS, &ports, &old.ports, undo)?;
    delete(ebpf, maps::FLOOD, &flood, &old.flood, undo)?;
    delete(ebpf, maps::FDB, &fdb, &old.fdb, undo)?;
    delete(ebpf, maps::NEIGHBOURS6, &neighbours6, &old.neighbours6, undo)?;
    delete(ebpf, maps::NEIGHBOURS, &neighbours, &old.neighbours, undo)?;
    delete(ebpf, maps::LOCAL_ENDPOINTS, &local, &old.local_endpoints, undo)?;
    delete(ebpf, maps::PEER_VNIS, &peer_vnis, &old.peer_vnis, undo)?;
    delete(ebpf, maps::PEERS, &peers, &old.peers, undo)?;
    delete(ebpf, maps::VNIS, &vnis, &old.vnis, undo)
}

/// Sets the counters of `slots` in the per-CPU slot array `name` to zero on every CPU.
fn zero_slots(ebpf: &mut Ebpf, name: &'static str, slots: &BTreeSet<u32>) -> Result<(), DatapathError> {
    if slots.is_empty() {
        return Ok(());
    }
    let map = ebpf.map_mut(name).ok_or(DatapathError::Missing { kind: "map", name })?;
    let mut array: PerCpuArray<&mut MapData, SlotCounters> = PerCpuArray::try_from(map).map_err(|source| map_error(name, "open", source))?;
    let cpus = aya::util::nr_cpus().map_err(|(_, error)| map_error(name, "count CPUs for", MapError::from(error)))?;
    for &slot in slots {
        let zeros = PerCpuValues::try_from(vec![SlotCounters::ZERO; cpus]).map_err(|error| map_error(name, "zero", MapError::from(error)))?;
        array.set(slot, zeros, 0).map_err(|source| map_error(name, "zero", source))?;
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
