//! Run time of the agents' BPF programs per packet, from the kernel's BPF
//! statistics (run_time_ns / run_cnt of each program), under the same UDP
//! and TCP loads as the other metrics.
//!
//! Statistics cost two clock reads per program run, so they are on only
//! during this metric's own windows, never while throughput, rate or
//! latency are measured. They are turned on with BPF_ENABLE_STATS, which
//! hands back a file descriptor: the kernel turns them off again when it is
//! closed, also if this process dies, so `kernel.bpf_stats_enabled` is left
//! as it was on every exit path. The figures are read from the agents'
//! /proc/<pid>/fdinfo, which lists exactly the programs those processes
//! loaded, whatever else is loaded on the machine; each is picked by the
//! name the kernel keeps for it (an agent loads several TC programs).
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{Context, bail};
use overlay_common::programs;

use super::{FigureId, Outcome, Timing, tcp, udp_rate};
use crate::bench::topology::{DecapMode, TestBed, Topology};

/// `enum bpf_cmd` and `enum bpf_stats_type` (include/uapi/linux/bpf.h).
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_STATS_RUN_TIME: u32 = 0;
/// Where `char name[BPF_OBJ_NAME_LEN]` sits in `struct bpf_prog_info`, and its size.
const PROG_INFO_NAME_OFFSET: usize = 64;
const BPF_OBJ_NAME_LEN: usize = 16;

/// BPF run-time statistics are on while this lives.
pub struct StatsEnabled {
    _fd: OwnedFd,
}

pub fn enable_run_time_stats() -> anyhow::Result<StatsEnabled> {
    // union bpf_attr, the enable_stats member: `__u32 type`, the rest zero.
    let attr: [u32; 4] = [BPF_STATS_RUN_TIME, 0, 0, 0];
    // SAFETY: the bpf syscall reads `size_of_val(&attr)` bytes from a live array.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_ENABLE_STATS, attr.as_ptr(), std::mem::size_of_val(&attr)) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("BPF_ENABLE_STATS (BPF run-time statistics)");
    }
    // SAFETY: the kernel just gave us this descriptor.
    Ok(StatsEnabled { _fd: unsafe { OwnedFd::from_raw_fd(fd as i32) } })
}

/// Cumulative statistics of one program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    pub run_time_ns: u64,
    pub run_count: u64,
}

impl RunStats {
    /// Mean run time per run since `earlier`; `None` without runs.
    pub fn ns_per_run_since(&self, earlier: &RunStats) -> Option<f64> {
        let runs = self.run_count.checked_sub(earlier.run_count)?;
        (runs > 0).then(|| self.run_time_ns.saturating_sub(earlier.run_time_ns) as f64 / runs as f64)
    }
}

/// The statistics of the program named `name` that process `pid` holds.
pub fn program_stats(pid: u32, name: &str) -> anyhow::Result<RunStats> {
    // The kernel keeps BPF_OBJ_NAME_LEN - 1 bytes of a name.
    let kernel_name = &name[..name.len().min(BPF_OBJ_NAME_LEN - 1)];
    let dir = format!("/proc/{pid}/fdinfo");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        // Descriptors come and go while we read: skip the ones that went.
        let Ok(text) = std::fs::read_to_string(entry?.path()) else { continue };
        let Some(program) = parse_fdinfo(&text) else { continue };
        let program_name = program_name(program.id)?;
        if program_name == kernel_name {
            return Ok(program.stats);
        }
        names.push(program_name);
    }
    bail!("process {pid} holds no BPF program named {kernel_name} (it holds {names:?})")
}

struct FdProgram {
    id: u32,
    stats: RunStats,
}

/// The name the kernel keeps for program `id`.
fn program_name(id: u32) -> anyhow::Result<String> {
    // union bpf_attr for BPF_PROG_GET_FD_BY_ID: prog_id, next_id, open_flags.
    let attr: [u32; 4] = [id, 0, 0, 0];
    // SAFETY: the bpf syscall reads `size_of_val(&attr)` bytes from a live array.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_GET_FD_BY_ID, attr.as_ptr(), std::mem::size_of_val(&attr)) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("opening BPF program {id}"));
    }
    // SAFETY: the kernel just gave us this descriptor; it is closed on drop.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    #[repr(C, align(8))]
    struct ProgInfo([u8; 256]);
    let mut info = ProgInfo([0; 256]);
    // union bpf_attr for BPF_OBJ_GET_INFO_BY_FD: bpf_fd, info_len, info (pointer).
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let attr = InfoAttr { bpf_fd: fd.as_raw_fd() as u32, info_len: info.0.len() as u32, info: info.0.as_mut_ptr() as u64 };
    // SAFETY: `attr` points at `info`, which outlives the call and is as long as `info_len` says.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, &attr as *const InfoAttr, std::mem::size_of::<InfoAttr>()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("reading the information of BPF program {id}"));
    }
    let name = &info.0[PROG_INFO_NAME_OFFSET..PROG_INFO_NAME_OFFSET + BPF_OBJ_NAME_LEN];
    let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
    Ok(String::from_utf8_lossy(&name[..end]).into_owned())
}

/// A program descriptor's fdinfo (links have a prog_id too, but no run_cnt).
fn parse_fdinfo(text: &str) -> Option<FdProgram> {
    let field = |name: &str| {
        text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(':').map(|v| v.trim().to_owned()))
    };
    Some(FdProgram {
        id: field("prog_id")?.parse().ok()?,
        stats: RunStats { run_time_ns: field("run_time_ns")?.parse().ok()?, run_count: field("run_cnt")?.parse().ok()? },
    })
}

/// Encapsulation on the sending host, decapsulation on the receiving host:
/// the programs the measured direction runs through.
#[derive(Clone, Copy, Debug)]
pub struct PathStats {
    pub encap: RunStats,
    pub decap: RunStats,
}

pub fn path_stats(bed: &TestBed) -> anyhow::Result<PathStats> {
    let (Some(sending), Some(receiving)) = bed.agent_pids() else { bail!("{} has no agent on each host", bed.cell.name()) };
    Ok(PathStats {
        encap: program_stats(sending, programs::ENDPOINT_TC)?,
        decap: program_stats(receiving, match bed.cell.topology {
            Topology::Overlay(DecapMode::Tc | DecapMode::TcGro | DecapMode::TcHeadroom) => programs::DECAP_TC,
            _ => programs::DECAP_XDP,
        })?,
    })
}

pub fn run_time_under_load(bed: &TestBed, timing: Timing) -> anyhow::Result<Outcome> {
    let _stats = enable_run_time_stats()?;
    let (window, start, end) = udp_rate::measure_window(bed, timing, || path_stats(bed))?;
    let per_run = |after: RunStats, before: RunStats, what: &str| {
        after.ns_per_run_since(&before).with_context(|| format!("the {what} program did not run"))
    };
    let decap_udp = per_run(end.decap, start.decap, "decap")?;
    let encap_udp = per_run(end.encap, start.encap, "encap")?;
    let decap_runs_per_packet = (end.decap.run_count - start.decap.run_count) as f64 / window.delivered as f64;

    let before = path_stats(bed)?;
    tcp::throughput(bed, 1, timing, FigureId::Tcp1Gbps).context("TCP load")?;
    let after = path_stats(bed)?;
    let decap_tcp = per_run(after.decap, before.decap, "decap")?;
    let encap_tcp = per_run(after.encap, before.encap, "encap")?;
    Ok(Outcome {
        figures: vec![
            (FigureId::BpfDecapNsUdp64, decap_udp),
            (FigureId::BpfEncapNsUdp64, encap_udp),
            (FigureId::BpfDecapNsTcp, decap_tcp),
            (FigureId::BpfEncapNsTcp, encap_tcp),
        ],
        summary: format!(
            "UDP 64 B: decap {decap_udp:.0} ns, encap {encap_udp:.0} ns per packet ({decap_runs_per_packet:.2} decap runs per delivered packet); \
             TCP: decap {decap_tcp:.0} ns per frame, encap {encap_tcp:.0} ns per skb"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_fdinfo_is_parsed_and_link_fdinfo_is_not() {
        let program = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t2077\nprog_type:\t6\nprog_jited:\t1\n\
                       prog_tag:\t0123456789abcdef\nmemlock:\t4096\nprog_id:\t42\nrun_time_ns:\t5000\nrun_cnt:\t100\n\
                       recursion_misses:\t0\nverified_insns:\t321\n";
        let parsed = parse_fdinfo(program).unwrap();
        assert_eq!((parsed.id, parsed.stats), (42, RunStats { run_time_ns: 5000, run_count: 100 }));
        let link = "pos:\t0\nflags:\t02000000\nlink_type:\ttcx\nlink_id:\t7\nprog_tag:\t0123456789abcdef\nprog_id:\t42\n";
        assert!(parse_fdinfo(link).is_none());
    }

    #[test]
    fn time_per_run_needs_runs() {
        let before = RunStats { run_time_ns: 1000, run_count: 10 };
        assert_eq!(RunStats { run_time_ns: 3000, run_count: 30 }.ns_per_run_since(&before), Some(100.0));
        assert_eq!(before.ns_per_run_since(&before), None);
    }
}
