//! The floor of the micro-benchmark: an empty XDP and an empty TC program
//! (`r0 = action; exit`), run through the same harness as the datapath's
//! programs in the same run, so that each program's figure can be given as
//! time above what the harness and the kernel's test-run path cost alone.
//!
//! They are loaded from two raw instructions with the bpf() system call:
//! they belong to no object (aya loads programs only from ELF objects), and
//! the product's object should not carry benchmark-only programs.
use std::os::fd::{FromRawFd as _, OwnedFd};

use anyhow::{Context as _, bail};
use aya::programs::{ProgramInfo, SchedClassifier, Xdp, loaded_programs};
use aya_obj::programs::XdpAttachType;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_PROG_TYPE_XDP: u32 = 6;

/// What the empty programs return: XDP_DROP (in live-frames mode the frame
/// is recycled at once, the cheapest verdict) and TC_ACT_OK.
pub const FLOOR_XDP_ACTION: u32 = 1;
pub const FLOOR_TC_ACTION: u32 = 0;

/// The two empty programs, opened like the datapath's.
pub struct Floor {
    pub xdp: Xdp,
    pub tc: SchedClassifier,
}

impl Floor {
    pub fn load() -> anyhow::Result<Floor> {
        let xdp = load_empty(BPF_PROG_TYPE_XDP, "mb_floor_xdp", FLOOR_XDP_ACTION)?;
        let tc = load_empty(BPF_PROG_TYPE_SCHED_CLS, "mb_floor_tc", FLOOR_TC_ACTION)?;
        Ok(Floor {
            xdp: Xdp::from_program_info(by_id(&xdp)?, std::borrow::Cow::Borrowed("mb_floor_xdp"), XdpAttachType::Interface)
                .context("opening the empty XDP program")?,
            tc: SchedClassifier::from_program_info(by_id(&tc)?, std::borrow::Cow::Borrowed("mb_floor_tc"))
                .context("opening the empty TC program")?,
        })
        // The fds from loading close here; the programs live on through the
        // fds the aya handles opened by id.
    }
}

/// Loads `r0 = action; exit` as a program of `prog_type` named `name`.
fn load_empty(prog_type: u32, name: &str, action: u32) -> anyhow::Result<OwnedFd> {
    // BPF_ALU64 | BPF_MOV | BPF_K into r0, then BPF_JMP | BPF_EXIT.
    let mut instructions = [0u8; 16];
    instructions[0] = 0xb7;
    instructions[4..8].copy_from_slice(&action.to_ne_bytes());
    instructions[8] = 0x95;
    let license = b"GPL\0";
    // union bpf_attr, BPF_PROG_LOAD part (include/uapi/linux/bpf.h).
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&prog_type.to_ne_bytes());
    attr[4..8].copy_from_slice(&2u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&(instructions.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    attr[48..48 + name.len().min(15)].copy_from_slice(&name.as_bytes()[..name.len().min(15)]);
    // SAFETY: attr, the instructions and the licence outlive the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, attr.as_mut_ptr(), attr.len() as u32) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("loading the empty program {name}"));
    }
    // SAFETY: the kernel just gave us this fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The loaded program behind `fd`, as aya lists it.
fn by_id(fd: &OwnedFd) -> anyhow::Result<ProgramInfo> {
    use std::os::fd::AsRawFd as _;
    // struct bpf_prog_info starts with type and id.
    let mut info = [0u32; 2];
    let mut attr = [0u8; 16];
    attr[0..4].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&8u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
    // SAFETY: attr and info outlive the call; info has the 8 bytes announced.
    if unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, attr.as_mut_ptr(), attr.len() as u32) } < 0 {
        return Err(std::io::Error::last_os_error()).context("reading the empty program's id");
    }
    let id = info[1];
    for program in loaded_programs() {
        let program = program.context("listing loaded BPF programs")?;
        if program.id() == id {
            return Ok(program);
        }
    }
    bail!("the empty program {id} is not among the loaded programs")
}
