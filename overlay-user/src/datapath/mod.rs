//! The eBPF datapath as one object: load it, change its maps as diffs, attach
//! it to interfaces, read its counters, and run its programs on test frames.
//!
//! Dropping a [`Datapath`] detaches everything it attached and frees its
//! maps, so an error at any step leaves the host as it was.
//!
//! - [`load`]: loading the object, adopting a pinned datapath, checking pinned layouts;
//! - [`tables`]: the one list of the maps and their layouts;
//! - [`apply`]: changing the maps as a diff, with an undo journal;
//! - [`attach`]: attaching to the underlay and the ports from an [`AttachPlan`];
//! - [`counters`]: reading and rendering counters;
//! - [`kernel_needs`]: the helpers and map types the programs need, probed before loading;
//! - [`learned`]: what learning networks learned, and its sweep;
//! - [`view`]: what other processes read from a pinned datapath;
//! - [`testrun`]: running the programs on test frames (BPF_PROG_TEST_RUN).
use aya::{
    Ebpf,
    maps::MapError,
    programs::{ProgramError, SchedClassifier, Xdp, links::FdLink},
};

use crate::{pinning::PinDir, slots::Owners, state::MapState};

pub mod apply;
pub mod attach;
pub mod counters;
pub mod kernel_needs;
pub mod learned;
pub mod load;
pub mod tables;
pub mod testrun;
pub mod view;

pub use apply::ApplyReport;
pub use attach::{AttachMode, AttachPlan, DecapHook, DecapMode, Interface, XdpAttachMode, XdpAttachedMode};
pub use counters::{CounterRow, Counters, VniPeerCounters};
pub use testrun::TestRunOutcome;
pub use view::DatapathSummary;

/// The compiled eBPF object (built by `cargo xtask build`).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("OVERLAY_EBPF_OBJECT"));

/// Why a datapath operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The object could not be loaded into the kernel (maps, BTF, relocations).
    #[error("loading the eBPF object failed: {}", with_causes(.0))]
    Load(aya::EbpfError),
    /// The verifier or the kernel refused one of the programs.
    #[error("loading program {program} failed: {}", with_causes(error))]
    Program { program: &'static str, error: ProgramError },
    /// The kernel lacks a helper or map type the programs need (probed before loading).
    #[error("{0}")]
    KernelLacks(String),
    /// The object lacks a map or program the agent expects: object and agent were built apart.
    #[error("the eBPF object has no {kind} named {name}: rebuild with `cargo xtask build`")]
    Missing { kind: &'static str, name: &'static str },
    /// A map update, delete or read failed.
    #[error("{operation} on map {map} failed: {}", with_causes(error))]
    Map { map: &'static str, operation: &'static str, error: MapError },
    /// Attaching a program to an interface failed.
    #[error("attaching {program} to interface {interface} failed: {}{hint}", with_causes(error))]
    Attach { program: &'static str, interface: String, error: ProgramError, hint: &'static str },
    /// A test run (BPF_PROG_TEST_RUN) failed.
    #[error("test run of {program} failed: {}", with_causes(error))]
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

/// An attachment the datapath holds, pinned or not.
struct HeldLink {
    link: Attachment,
    /// Where it is pinned, when the datapath is pinned.
    pin: Option<std::path::PathBuf>,
}

/// A BPF link, or a TC filter where the kernel has no TCX links.
enum Attachment {
    Link(FdLink),
    Filter(crate::tc_legacy::Filter),
    /// XDP offloaded to the NIC (`--xdp-mode offload`), attached outside aya.
    Offloaded(crate::offload::OffloadedXdp),
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
    /// Attachments by link name (see [`crate::pinning`]).
    links: std::collections::BTreeMap<String, HeldLink>,
    /// Whether maps and links were adopted from an earlier agent.
    adopted: bool,
    /// Who each counter slot last counted for (see [`Datapath::apply`]).
    vni_slot_owners: Owners<u32>,
    peer_slot_owners: Owners<u32>,
    /// How TC programs attach on this kernel, probed at the first attachment.
    tc_attach: Option<crate::tc_legacy::TcAttachKind>,
    /// Pins this start created and nothing forwards through yet: a start
    /// refused before its first attach succeeds removes them on drop.
    fresh_pins: bool,
}

impl Datapath {
    /// Keeps the pins this datapath created even though nothing was
    /// attached (a library caller that fills maps for a later agent to
    /// adopt); without it, dropping such a datapath removes them.
    pub fn keep_pins(&mut self) {
        self.fresh_pins = false;
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

impl Datapath {
    /// Whether this datapath adopted the maps and links of an earlier agent.
    pub fn adopted(&self) -> bool {
        self.adopted
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

    fn map(&self, name: &'static str) -> Result<&aya::maps::Map, DatapathError> {
        self.ebpf.map(name).ok_or(DatapathError::Missing { kind: "map", name })
    }

    fn program<'a, T>(&'a self, name: &'static str) -> Result<&'a T, DatapathError>
    where
        &'a T: TryFrom<&'a aya::programs::Program>,
    {
        let program = self.ebpf.program(name).ok_or(DatapathError::Missing { kind: "program", name })?;
        program.try_into().map_err(|_| DatapathError::Missing { kind: "program of the expected type", name })
    }

    fn xdp_mut(&mut self) -> Result<&mut Xdp, DatapathError> {
        let name = overlay_common::programs::DECAP_XDP;
        let program = self.ebpf.program_mut(name).ok_or(DatapathError::Missing { kind: "program", name })?;
        program.try_into().map_err(|_| DatapathError::Missing { kind: "XDP program", name })
    }

    fn tc_mut(&mut self, name: &'static str) -> Result<&mut SchedClassifier, DatapathError> {
        let program = self.ebpf.program_mut(name).ok_or(DatapathError::Missing { kind: "program", name })?;
        program.try_into().map_err(|_| DatapathError::Missing { kind: "TC program", name })
    }
}

/// An aya error with the errors under it: aya's syscall errors say which
/// call failed (`BPF_OBJ_GET` failed) and keep the errno (permission
/// denied, no such file) as their source, which `Display` alone drops.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn map_error(map: &'static str, operation: &'static str, error: MapError) -> DatapathError {
    DatapathError::Map { map, operation, error }
}

/// The map `name` of `ebpf` as a `T` (a typed aya map), to change.
fn open_map_mut<'a, T: TryFrom<&'a mut aya::maps::Map, Error = MapError>>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<T, DatapathError> {
    let map = ebpf.map_mut(name).ok_or(DatapathError::Missing { kind: "map", name })?;
    T::try_from(map).map_err(|source| map_error(name, "open", source))
}

/// The map `name` of `ebpf` as a `T` (a typed aya map), to read.
fn open_map<'a, T: TryFrom<&'a aya::maps::Map, Error = MapError>>(ebpf: &'a Ebpf, name: &'static str) -> Result<T, DatapathError> {
    let map = ebpf.map(name).ok_or(DatapathError::Missing { kind: "map", name })?;
    T::try_from(map).map_err(|source| map_error(name, "open", source))
}
