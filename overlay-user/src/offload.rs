//! XDP offloaded to the underlay NIC (`--xdp-mode offload`): the eBPF
//! program `overlay_offload_admit` (overlay-ebpf's `offload.rs`) bound to
//! the device, with its one map created on the device, attached in
//! hardware mode through a BPF link. The TC decapsulation runs on the same
//! device for what the NIC passes.
//!
//! aya 0.14 can neither create a map on a device (`map_ifindex`) nor load
//! a program for one (`prog_ifindex`), so this file does those two steps
//! and the link with the bpf(2) syscall itself; aya-obj parses the object
//! and relocates the program's one map reference, as aya would.
use std::{
    collections::HashSet,
    ffi::CString,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

use aya_obj::{Object, generated::bpf_insn};
use overlay_common::{NodeConfig, maps, programs};

const BPF_MAP_CREATE: u32 = 0;
const BPF_MAP_UPDATE_ELEM: u32 = 2;
const BPF_PROG_LOAD: u32 = 5;
const BPF_OBJ_PIN: u32 = 6;
const BPF_OBJ_GET: u32 = 7;
const BPF_LINK_CREATE: u32 = 28;
const BPF_LINK_UPDATE: u32 = 29;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_PROG_TYPE_XDP: u32 = 6;
/// `enum bpf_attach_type`'s BPF_XDP.
const BPF_XDP: u32 = 37;
/// include/uapi/linux/if_link.h.
const XDP_FLAGS_HW_MODE: u32 = 1 << 3;

/// The pinned link's name (see [`crate::pinning`]).
pub fn link_name(interface: &str) -> String {
    format!("xdp-offload-{interface}")
}

/// Why offloading failed, with the kernel's words.
#[derive(Debug, thiserror::Error)]
pub enum OffloadError {
    #[error(
        "underlay {interface} does not offer XDP offload: the kernel refused to create a map on it ({error}); \
         only a driver that registers a BPF offload device (Netronome nfp, netdevsim) takes offloaded XDP: use --xdp-mode native or generic, or --decap tc"
    )]
    NoOffload { interface: String, error: std::io::Error },
    #[error("the NIC {interface} refused the offloaded program {program}: {error}{log}")]
    Verifier { interface: String, program: &'static str, error: std::io::Error, log: String },
    #[error("the eBPF object: {0}")]
    Object(String),
    #[error("{operation} for {interface}: {error}")]
    Syscall { interface: String, operation: &'static str, error: std::io::Error },
}

/// The admission program on the NIC, attached: dropping it detaches
/// (unless its link is pinned).
pub struct OffloadedXdp {
    link: OwnedFd,
    map: OwnedFd,
    _program: OwnedFd,
}

impl OffloadedXdp {
    /// Writes the node's VTEP address and VXLAN port into the NIC's map.
    pub fn set_node(&self, node: &NodeConfig, interface: &str) -> Result<(), OffloadError> {
        update_entry(&self.map, node).map_err(|error| OffloadError::Syscall { interface: interface.into(), operation: "writing the NIC's node map", error })
    }

    /// Pins the link at `path`, so that it outlives the agent.
    pub fn pin(&self, path: &Path, interface: &str) -> Result<(), OffloadError> {
        let syscall_error = |error| OffloadError::Syscall { interface: interface.into(), operation: "pinning the link", error };
        let path = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| syscall_error(std::io::Error::other(e)))?;
        let attr = ObjAttr { pathname: path.as_ptr() as u64, bpf_fd: self.link.as_raw_fd() as u32, file_flags: 0 };
        bpf(BPF_OBJ_PIN, &attr).map(drop).map_err(syscall_error)
    }
}

/// Loads the admission program for `ifindex` (named `interface`), with its
/// map on the device holding `node`, and attaches it in hardware mode. A
/// link pinned at `pinned` by an earlier agent gets the new program
/// (atomically); otherwise a new link is made.
pub fn attach(interface: &str, ifindex: u32, node: &NodeConfig, object: &[u8], pinned: Option<&Path>) -> Result<OffloadedXdp, OffloadError> {
    let syscall_error = |operation, error| OffloadError::Syscall { interface: interface.into(), operation, error };
    let map = create_map(ifindex).map_err(|error| OffloadError::NoOffload { interface: interface.into(), error })?;
    update_entry(&map, node).map_err(|error| syscall_error("writing the NIC's node map", error))?;
    let instructions = relocated_program(object, map.as_raw_fd())?;
    let program = load_program(&instructions, ifindex).map_err(|(error, log)| OffloadError::Verifier {
        interface: interface.into(),
        program: programs::OFFLOAD_XDP,
        error,
        log: if log.is_empty() { String::new() } else { format!("; verifier log: {log}") },
    })?;
    let link = match pinned.filter(|path| path.exists()) {
        Some(path) => {
            let link = open_pinned(path).map_err(|error| syscall_error("opening the pinned link", error))?;
            let attr = LinkUpdateAttr { link_fd: link.as_raw_fd() as u32, new_prog_fd: program.as_raw_fd() as u32, flags: 0, old_prog_fd: 0 };
            bpf(BPF_LINK_UPDATE, &attr).map_err(|error| syscall_error("replacing the program in the pinned link", error))?;
            link
        }
        None => {
            let attr = LinkCreateAttr { prog_fd: program.as_raw_fd() as u32, target_ifindex: ifindex, attach_type: BPF_XDP, flags: XDP_FLAGS_HW_MODE };
            // SAFETY: BPF_LINK_CREATE returns a new file descriptor.
            bpf(BPF_LINK_CREATE, &attr).map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }).map_err(|error| syscall_error("attaching in hardware mode", error))?
        }
    };
    Ok(OffloadedXdp { link, map, _program: program })
}

/// The admission program's instructions, its map reference pointing at
/// `map_fd`. Only that program's function is kept: the others reference
/// the host's maps, which an offloaded program may not use.
fn relocated_program(object: &[u8], map_fd: i32) -> Result<Vec<bpf_insn>, OffloadError> {
    let object_error = |message: String| OffloadError::Object(message);
    let mut obj = Object::parse(object).map_err(|e| object_error(format!("parsing: {e}")))?;
    let key = obj
        .programs
        .get(programs::OFFLOAD_XDP)
        .map(|program| program.function_key())
        .ok_or_else(|| object_error(format!("no program {}: rebuild with `cargo xtask build`", programs::OFFLOAD_XDP)))?;
    obj.programs.retain(|name, _| name == programs::OFFLOAD_XDP);
    obj.functions.retain(|function_key, _| *function_key == key);
    let map = obj.maps.get(maps::OFFLOAD_NODE).cloned().ok_or_else(|| object_error(format!("no map {}", maps::OFFLOAD_NODE)))?;
    let no_text = HashSet::new();
    obj.relocate_maps(std::iter::once((maps::OFFLOAD_NODE, map_fd, &map)), &no_text).map_err(|e| object_error(format!("relocating: {e}")))?;
    obj.relocate_calls(&no_text).map_err(|e| object_error(format!("linking: {e}")))?;
    Ok(obj.functions.remove(&key).map(|function| function.instructions).unwrap_or_default())
}

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
    map_ifindex: u32,
}

#[repr(C)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

#[repr(C)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

#[repr(C)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// bpf(2) with `attr` (a prefix of `union bpf_attr`; the kernel zeroes the rest).
fn bpf<T>(command: u32, attr: &T) -> std::io::Result<i32> {
    // SAFETY: attr is a readable T of the size passed.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, command, attr as *const T, size_of::<T>()) };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(rc as i32) }
}

fn name16(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (slot, byte) in out.iter_mut().zip(name.bytes().take(15)) {
        *slot = byte;
    }
    out
}

fn create_map(ifindex: u32) -> std::io::Result<OwnedFd> {
    let attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: size_of::<NodeConfig>() as u32,
        max_entries: 1,
        map_name: name16(maps::OFFLOAD_NODE),
        map_ifindex: ifindex,
        ..Default::default()
    };
    // SAFETY: BPF_MAP_CREATE returns a new file descriptor.
    bpf(BPF_MAP_CREATE, &attr).map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
}

fn update_entry(map: &OwnedFd, node: &NodeConfig) -> std::io::Result<()> {
    let key = 0u32;
    let attr = MapElemAttr { map_fd: map.as_raw_fd() as u32, _pad: 0, key: &key as *const u32 as u64, value: node as *const NodeConfig as u64, flags: 0 };
    bpf(BPF_MAP_UPDATE_ELEM, &attr).map(drop)
}

/// Loads the program for the device; on refusal, the error and the verifier's log.
fn load_program(instructions: &[bpf_insn], ifindex: u32) -> Result<OwnedFd, (std::io::Error, String)> {
    let license = c"GPL";
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: instructions.len() as u32,
        insns: instructions.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name16(programs::OFFLOAD_XDP),
        prog_ifindex: ifindex,
        expected_attach_type: 0,
    };
    // SAFETY: BPF_PROG_LOAD returns a new file descriptor.
    if let Ok(fd) = bpf(BPF_PROG_LOAD, &attr) {
        return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    // Again with the verifier's log, to say why.
    attr.log_level = 1;
    attr.log_size = log.len() as u32;
    attr.log_buf = log.as_mut_ptr() as u64;
    match bpf(BPF_PROG_LOAD, &attr) {
        // SAFETY: as above.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
        Err(error) => {
            let text = String::from_utf8_lossy(&log[..log.iter().position(|b| *b == 0).unwrap_or(log.len())]).into_owned();
            let tail: Vec<&str> = text.lines().rev().take(8).collect();
            Err((error, tail.into_iter().rev().collect::<Vec<_>>().join(" | ")))
        }
    }
}

fn open_pinned(path: &Path) -> std::io::Result<OwnedFd> {
    let path = CString::new(path.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other)?;
    let attr = ObjAttr { pathname: path.as_ptr() as u64, bpf_fd: 0, file_flags: 0 };
    // SAFETY: BPF_OBJ_GET returns a new file descriptor.
    bpf(BPF_OBJ_GET, &attr).map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
}
