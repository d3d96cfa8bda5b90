//! TC attachment where the kernel has no TCX links (before Linux 6.6):
//! `cls_bpf` filters on the device's `clsact` qdisc, attached over netlink.
//!
//! Such a filter is not a BPF link: it cannot be pinned and it outlives
//! the agent by itself. So each of ours sits at a fixed priority per link
//! kind with handle 1 (what identifies it to the kernel), and a record of
//! it is kept as an empty directory `<node>/filters/<link name>` on bpffs
//! (the interface is in the name). A new agent finding the record replaces
//! the program inside the filter in place (a netlink change of the same
//! priority and handle: the kernel swaps the program under RCU, so no
//! packet goes unprocessed), and removing the record detaches the filter
//! (`overlay down`, a stale port, a refused start).
//!
//! Which kind is used is found by probing the kernel once per agent
//! ([`probe`]); `OVERLAY_TC_ATTACH=netlink` forces the fallback, to test it
//! on a kernel that has TCX.
use std::{fmt, path::Path};

use aya::programs::{
    ProgramError, SchedClassifier, TcAttachType,
    tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle},
};

use crate::pinning::{self, PinDir};

/// How TC programs are attached on this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcAttachKind {
    /// TCX BPF links (Linux 6.6+): pinned, replaced with `bpf_link_update`.
    Tcx,
    /// `cls_bpf` filters on `clsact`, attached over netlink.
    Netlink,
}

impl TcAttachKind {
    /// The label in `overlay status`, the status file and `overlay_info`.
    pub fn label(self) -> &'static str {
        match self {
            TcAttachKind::Tcx => "tcx",
            TcAttachKind::Netlink => "netlink",
        }
    }
}

impl fmt::Display for TcAttachKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TcAttachKind::Tcx => "TCX links",
            TcAttachKind::Netlink => "netlink clsact filters (the kernel has no TCX links)",
        })
    }
}

/// Whether the kernel has TCX: a query of `interface`'s TCX ingress hook,
/// which kernels without TCX refuse (EINVAL: an attach type they do not
/// know). Other errors (no such interface) say nothing and mean TCX.
pub fn probe(interface: &str) -> TcAttachKind {
    if std::env::var("OVERLAY_TC_ATTACH").is_ok_and(|kind| kind == "netlink") {
        return TcAttachKind::Netlink;
    }
    match SchedClassifier::query_tcx(interface, TcAttachType::Ingress) {
        Err(error) if os_error(&error) == Some(libc::EINVAL) => TcAttachKind::Netlink,
        _ => TcAttachKind::Tcx,
    }
}

/// The fixed priority of each link kind's filter (lower runs first). Port
/// and underlay programs never share a device's hook, except decapsulation
/// and flooding on the underlay while switching hooks (make-before-break).
fn priority(name: &str) -> u16 {
    if name.starts_with("tc-decap-") {
        0x4f01
    } else if name.starts_with("tc-underlay-") {
        0x4f02
    } else {
        0x4f03
    }
}

/// The handle of every filter of ours (unique per priority is enough).
const HANDLE: TcHandle = TcHandle::new(0, 1);

/// One of our filters, attached.
#[derive(Debug)]
pub struct Filter {
    interface: String,
    priority: u16,
    /// Its record on bpffs, when the datapath is pinned.
    record: Option<std::path::PathBuf>,
}

impl Filter {
    /// Detaches the filter and removes its record.
    pub fn detach(self) {
        detach_filter(&self.interface, self.priority);
        if let Some(record) = &self.record {
            let _ = std::fs::remove_dir(record);
        }
    }
}

/// Attaches `tc` as the filter of link `name` on `interface`'s ingress:
/// the program inside our filter is replaced in place when one is there
/// (recorded in `pins` by an earlier agent), else a new filter is created
/// (and `clsact` first, where the device has none). A filter of ours that
/// is there without a record belongs to another node's agent: refused.
pub fn attach(tc: &mut SchedClassifier, name: &str, interface: &str, pins: Option<&PinDir>) -> Result<Filter, ProgramError> {
    let priority = priority(name);
    let record = pins.map(|pins| pins.filter(name));
    if let Err(error) = aya::programs::tc::qdisc_add_clsact(interface) {
        if tc_os_error(&error) != Some(libc::EEXIST) {
            return Err(error.into());
        }
    }
    let options = || TcAttachOptions::Netlink(NlOptions { priority, handle: HANDLE, ..Default::default() });
    let recorded = record.as_deref().is_some_and(Path::is_dir);
    let id = match recorded {
        true => {
            let link = SchedClassifierLink::attached(interface, TcAttachType::Ingress, priority, HANDLE, None).map_err(TcError::IoError)?;
            match tc.attach_to_link(link) {
                Ok(id) => id,
                // The filter went with its device (deleted and created again).
                Err(error) if os_error(&error) == Some(libc::ENOENT) => tc.attach_with_options(interface, TcAttachType::Ingress, options())?,
                Err(error) => return Err(error),
            }
        }
        false => tc.attach_with_options(interface, TcAttachType::Ingress, options())?,
    };
    // The filter must outlive this agent when the datapath is kept: the
    // link object would detach it when dropped, and it holds nothing else.
    std::mem::forget(tc.take_link(id)?);
    if let Some(record) = &record {
        if let Err(error) = std::fs::create_dir_all(record) {
            detach_filter(interface, priority);
            return Err(TcError::IoError(error).into());
        }
    }
    Ok(Filter { interface: interface.to_owned(), priority, record })
}

/// Names of the filters recorded in `pins`.
pub fn recorded(pins: &PinDir) -> Vec<String> {
    std::fs::read_dir(pins.filters_dir())
        .map(|entries| entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// Detaches the filter recorded as `name` and removes the record, if there
/// is one; reports whether there was.
pub fn detach_recorded(pins: &PinDir, name: &str) -> bool {
    let record = pins.filter(name);
    if !record.is_dir() {
        return false;
    }
    if let Some(interface) = pinning::tc_link_interface(name) {
        detach_filter(interface, priority(name));
    }
    let _ = std::fs::remove_dir(record);
    true
}

/// Every recorded filter detached, the records and their directory gone.
pub fn detach_all_recorded(pins: &PinDir) {
    for name in recorded(pins) {
        detach_recorded(pins, &name);
    }
    let _ = std::fs::remove_dir(pins.filters_dir());
}

fn detach_filter(interface: &str, priority: u16) {
    let result = SchedClassifierLink::attached(interface, TcAttachType::Ingress, priority, HANDLE, None)
        .map_err(|error| error.to_string())
        .and_then(|link| aya::programs::Link::detach(link).map_err(|error| error.to_string()));
    if let Err(error) = result {
        log::warn!("detaching the TC filter (priority {priority:#x}) from {interface}: {error}");
    }
}

fn os_error(error: &ProgramError) -> Option<i32> {
    match error {
        ProgramError::SyscallError(error) => error.io_error.raw_os_error(),
        ProgramError::TcError(error) => tc_os_error(error),
        ProgramError::NetlinkError(error) => error.raw_os_error(),
        _ => None,
    }
}

fn tc_os_error(error: &TcError) -> Option<i32> {
    match error {
        TcError::NetlinkError(error) => error.raw_os_error(),
        TcError::IoError(error) => error.raw_os_error(),
        _ => None,
    }
}
