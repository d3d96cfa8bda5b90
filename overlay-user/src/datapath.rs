//! The eBPF datapath as one object: load it, change its maps as diffs, attach
//! it to interfaces, read its counters, and run its programs on test frames.
//!
//! Dropping a [`Datapath`] detaches everything it attached and frees its
//! maps, so an error at any step leaves the host as it was.
use std::{collections::BTreeMap, fmt};

use aya::{
    Ebpf, EbpfLoader, Pod,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray},
    programs::{ProgramError, SchedClassifier, TcAttachType, TestRun, TestRunOptions, Xdp, XdpMode},
};
use overlay_common::{Counter, Direction, NodeConfig, Reason, counter_index, maps, programs, reason};

use crate::{
    netdev::ResolvedConfig,
    state::{MapDiff, MapState, diff},
};

/// The compiled eBPF object (built by `cargo xtask build`).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("OVERLAY_EBPF_OBJECT"));

/// Why a datapath operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The object could not be loaded into the kernel (maps, BTF, relocations).
    #[error("loading the eBPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    /// The verifier or the kernel refused one of the programs.
    #[error("loading program {program} failed: {source}")]
    Program { program: &'static str, source: ProgramError },
    /// The object lacks a map or program the agent expects: object and agent were built apart.
    #[error("the eBPF object has no {kind} named {name}: rebuild with `cargo xtask build`")]
    Missing { kind: &'static str, name: &'static str },
    /// A map update, delete or read failed.
    #[error("{operation} on map {map} failed: {source}")]
    Map { map: &'static str, operation: &'static str, source: MapError },
    /// Attaching a program to an interface failed.
    #[error("attaching {program} to interface {interface} failed: {source}{hint}")]
    Attach { program: &'static str, interface: String, source: ProgramError, hint: &'static str },
    /// A test run (BPF_PROG_TEST_RUN) failed.
    #[error("test run of {program} failed: {source}")]
    TestRun { program: &'static str, source: ProgramError },
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
}

/// The mode the XDP program ended up in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAttachedMode {
    Native,
    Generic,
}

impl fmt::Display for XdpAttachedMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdpAttachedMode::Native => "native",
            XdpAttachedMode::Generic => "generic",
        })
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

    /// Counts since `earlier` (rows present in both).
    pub fn since(&self, earlier: &Counters) -> Counters {
        let rows = self
            .rows
            .iter()
            .map(|row| CounterRow {
                packets: row.packets - earlier.packets(row.direction, row.reason),
                bytes: row.bytes
                    - earlier
                        .rows
                        .iter()
                        .find(|r| r.direction == row.direction && r.reason == row.reason)
                        .map_or(0, |r| r.bytes),
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
            let (name, description) = row
                .reason
                .info()
                .map_or(("unknown", ""), |info| (info.name, info.description.trim()));
            let kind = if row.reason.is_drop() { "drop: " } else { "" };
            writeln!(
                f,
                "{:<14} {:<30} {:>12} {:>14}  {kind}{description}",
                row.direction.name(),
                format!("{name} ({})", row.reason.0),
                row.packets,
                row.bytes
            )?;
        }
        Ok(())
    }
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

type Undo = Box<dyn FnOnce(&mut Ebpf) -> Result<(), DatapathError>>;

/// The loaded datapath.
pub struct Datapath {
    ebpf: Ebpf,
    applied: MapState,
    xdp_mode: Option<XdpAttachedMode>,
}

impl Datapath {
    /// Loads the object and both programs into the kernel (the verifier runs
    /// here) without attaching anything. `log_level` is the most verbose
    /// aya-log level the programs keep; the verifier removes the rest.
    pub fn load(log_level: log::LevelFilter) -> Result<Datapath, DatapathError> {
        let level = log_level as u8;
        let mut ebpf = EbpfLoader::new().override_global(aya_log::LEVEL, &level, false).load(EBPF_OBJECT)?;
        for name in [programs::DECAP_XDP, programs::ENDPOINT_TC, programs::UNDERLAY_FLOOD_TC] {
            let program = ebpf.program_mut(name).ok_or(DatapathError::Missing { kind: "program", name })?;
            let result = match program {
                aya::programs::Program::Xdp(xdp) => xdp.load(),
                aya::programs::Program::SchedClassifier(tc) => tc.load(),
                _ => return Err(DatapathError::Missing { kind: "program of the expected type", name }),
            };
            result.map_err(|source| DatapathError::Program { program: name, source })?;
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
            maps::NODE,
            maps::COUNTERS,
        ] {
            if ebpf.map(name).is_none() {
                return Err(DatapathError::Missing { kind: "map", name });
            }
        }
        Ok(Datapath { ebpf, applied: MapState::default(), xdp_mode: None })
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
    pub fn apply(&mut self, desired: &MapState) -> Result<ApplyReport, DatapathError> {
        let old = self.applied.clone();
        let mut undo: Vec<Undo> = Vec::new();
        let result = self.apply_steps(&old, desired, &mut undo);
        match result {
            Ok(report) => {
                self.applied = desired.clone();
                Ok(report)
            }
            Err(error) => {
                for step in undo.into_iter().rev() {
                    if let Err(undo_error) = step(&mut self.ebpf) {
                        log::error!("rolling back a map change failed: {undo_error}");
                    }
                }
                Err(error)
            }
        }
    }

    fn apply_steps(&mut self, old: &MapState, new: &MapState, undo: &mut Vec<Undo>) -> Result<ApplyReport, DatapathError> {
        let ebpf = &mut self.ebpf;
        let vnis = diff(&old.vnis, &new.vnis);
        let peers = diff(&old.peers, &new.peers);
        let peer_vnis = diff(&old.peer_vnis, &new.peer_vnis);
        let local = diff(&old.local_endpoints, &new.local_endpoints);
        let neighbours = diff(&old.neighbours, &new.neighbours);
        let neighbours6 = diff(&old.neighbours6, &new.neighbours6);
        let flood = diff(&old.flood, &new.flood);
        let fdb = diff(&old.fdb, &new.fdb);
        let ports = diff(&old.ports, &new.ports);
        // Additions from the leaves inwards (a port is classified into a VNI
        // only once everything that VNI needs is in place); removals the
        // other way round. The node entry goes first: until it is written the
        // programs pass everything untouched.
        let node_changed = old.node != new.node;
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
        delete(ebpf, maps::VNIS, &vnis, &old.vnis, undo)?;
        Ok(ApplyReport {
            changes: vec![
                (maps::NODE, node_changed as usize),
                (maps::VNIS, vnis.len()),
                (maps::PEERS, peers.len()),
                (maps::PEER_VNIS, peer_vnis.len()),
                (maps::LOCAL_ENDPOINTS, local.len()),
                (maps::NEIGHBOURS, neighbours.len()),
                (maps::NEIGHBOURS6, neighbours6.len()),
                (maps::FLOOD, flood.len()),
                (maps::FDB, fdb.len()),
                (maps::PORTS, ports.len()),
            ],
        })
    }

    /// Attaches decapsulation to the underlay and the endpoint program to
    /// every port. On failure, whatever was attached is detached again.
    pub fn attach(&mut self, resolved: &ResolvedConfig, mode: XdpAttachMode) -> Result<XdpAttachedMode, DatapathError> {
        let result = self.attach_all(resolved, mode);
        if result.is_err() {
            self.detach();
        }
        result
    }

    fn attach_all(&mut self, resolved: &ResolvedConfig, mode: XdpAttachMode) -> Result<XdpAttachedMode, DatapathError> {
        let underlay = &resolved.config.node.underlay_interface;
        let xdp = self.xdp_mut()?;
        let attach_error = |source, hint| DatapathError::Attach {
            program: programs::DECAP_XDP,
            interface: underlay.clone(),
            source,
            hint,
        };
        let attached = match mode {
            XdpAttachMode::Native => xdp
                .attach_to_if_index(resolved.underlay_ifindex, XdpMode::Driver)
                .map(|_| XdpAttachedMode::Native)
                .map_err(|e| attach_error(e, " (the driver may lack native XDP: try --xdp-mode generic)"))?,
            XdpAttachMode::Generic => xdp
                .attach_to_if_index(resolved.underlay_ifindex, XdpMode::Skb)
                .map(|_| XdpAttachedMode::Generic)
                .map_err(|e| attach_error(e, ""))?,
            XdpAttachMode::Auto => match xdp.attach_to_if_index(resolved.underlay_ifindex, XdpMode::Driver) {
                Ok(_) => XdpAttachedMode::Native,
                Err(native_error) => {
                    log::warn!("native XDP on {underlay} failed ({native_error}); falling back to generic XDP, which is slower");
                    xdp.attach_to_if_index(resolved.underlay_ifindex, XdpMode::Skb)
                        .map(|_| XdpAttachedMode::Generic)
                        .map_err(|e| attach_error(e, ""))?
                }
            },
        };
        self.xdp_mode = Some(attached);
        self.tc_mut(programs::UNDERLAY_FLOOD_TC)?.attach(underlay, TcAttachType::Ingress).map_err(|source| {
            DatapathError::Attach { program: programs::UNDERLAY_FLOOD_TC, interface: underlay.clone(), source, hint: "" }
        })?;
        let mut attached_ports = std::collections::BTreeSet::new();
        for endpoint in &resolved.config.endpoints {
            if !attached_ports.insert(endpoint.interface.as_str()) {
                continue; // one program per port, however many endpoints it has
            }
            self.tc_mut(programs::ENDPOINT_TC)?.attach(&endpoint.interface, TcAttachType::Ingress).map_err(|source| {
                DatapathError::Attach { program: programs::ENDPOINT_TC, interface: endpoint.interface.clone(), source, hint: "" }
            })?;
        }
        Ok(attached)
    }

    /// Detaches every program from every interface (maps stay loaded).
    pub fn detach(&mut self) {
        // Unloading drops each program's links; the programs are reloaded
        // lazily only by a new Datapath, so this is final for this object.
        for name in [programs::DECAP_XDP, programs::ENDPOINT_TC, programs::UNDERLAY_FLOOD_TC] {
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
        self.xdp_mode = None;
    }

    /// The XDP mode in use, once attached.
    pub fn xdp_mode(&self) -> Option<XdpAttachedMode> {
        self.xdp_mode
    }

    /// Reads all counters, summed over CPUs; rows with no packets are left out.
    pub fn counters(&self) -> Result<Counters, DatapathError> {
        let map = self.ebpf.map(maps::COUNTERS).ok_or(DatapathError::Missing { kind: "map", name: maps::COUNTERS })?;
        let array: PerCpuArray<&MapData, Counter> = PerCpuArray::try_from(map).map_err(|source| map_error(maps::COUNTERS, "open", source))?;
        let mut rows = Vec::new();
        for direction in Direction::ALL {
            for code in 0..reason::REASON_SLOTS {
                let reason = Reason(code);
                let per_cpu = array
                    .get(&counter_index(direction, reason), 0)
                    .map_err(|source| map_error(maps::COUNTERS, "read", source))?;
                let (packets, bytes) = per_cpu.iter().fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes));
                if packets > 0 {
                    rows.push(CounterRow { direction, reason, packets, bytes });
                }
            }
        }
        Ok(Counters { rows })
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
    let result = program.test_run(opts).map_err(|source| DatapathError::TestRun { program: name, source })?;
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

fn map_error(map: &'static str, operation: &'static str, source: MapError) -> DatapathError {
    DatapathError::Map { map, operation, source }
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
