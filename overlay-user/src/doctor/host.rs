//! The kernel's and the host's checks: kernel features, bpffs, the underlay
//! device, the VTEP address, the MTU, forwarding and checksum offloads.
use std::{
    net::UdpSocket,
    path::Path,
};

use overlay_common::VXLAN_ENCAP_LEN;

use crate::{
    config::Config,
    netdev,
};
use super::Finding;


/// The running kernel's (major, minor) release, from uname(2).
pub fn kernel_release() -> Option<(String, (u32, u32))> {
    // SAFETY: a zeroed utsname is valid output space.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: plain syscall into our struct.
    if unsafe { libc::uname(&mut name) } != 0 {
        return None;
    }
    // SAFETY: uname NUL-terminates the field.
    let release = unsafe { std::ffi::CStr::from_ptr(name.release.as_ptr()) }.to_string_lossy().into_owned();
    let version = parse_release(&release)?;
    Some((release, version))
}

fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

pub(super) fn kernel_findings() -> Vec<Finding> {
    let mut findings = Vec::new();
    match kernel_release() {
        Some((release, version)) => {
            // Probed, not read from the release: distributions backport.
            findings.push(match crate::tc_legacy::probe("lo") {
                crate::tc_legacy::TcAttachKind::Tcx => Finding::ok("kernel-tcx", format!("kernel {release}: TCX links attach and pin the TC programs")),
                crate::tc_legacy::TcAttachKind::Netlink => Finding::warn(
                    "kernel-tcx",
                    format!(
                        "kernel {release} has no TCX links (Linux 6.6+): TC programs attach as netlink filters on a clsact qdisc instead, \
                         replaced in place on restart and removed by `overlay down`; a filter cannot be pinned, so `overlay status` lists its record"
                    ),
                    "nothing needed; Linux 6.6 or newer attaches them as TCX links",
                ),
            });
            findings.push(if version >= (5, 16) {
                Finding::ok("kernel-neighbours", format!("kernel {release}: managed neighbour entries (5.16+) keep peer next hops resolved"))
            } else {
                Finding::warn(
                    "kernel-neighbours",
                    format!("kernel {release} is older than 5.16: no managed neighbour entries, so flooded and non-IP frames to a peer whose next hop is unresolved are dropped"),
                    "run Linux 5.16 or newer",
                )
            });
        }
        None => findings.push(Finding::warn("kernel-tcx", "cannot read the kernel release (uname)", "")),
    }
    findings.push(match crate::datapath::kernel_needs::probed() {
        Ok(needs) => match needs.refusal() {
            None => Finding::ok("kernel-helpers", format!("the kernel has all {} helpers and map types the programs use (probed)", needs.needed.len())),
            Some(refusal) => Finding::fail("kernel-helpers", refusal, "run Linux 6.1 or newer (`overlay run` refuses to start here)"),
        },
        Err(error) => Finding::fail("kernel-helpers", format!("reading what the programs need: {error}"), "rebuild with `cargo xtask build`"),
    });
    findings.push(if Path::new("/sys/kernel/btf/vmlinux").exists() {
        Finding::ok("kernel-btf", "kernel BTF is available (/sys/kernel/btf/vmlinux)")
    } else {
        Finding::warn(
            "kernel-btf",
            "no kernel BTF (/sys/kernel/btf/vmlinux): programs that need CO-RE relocations will not load",
            "use a kernel built with CONFIG_DEBUG_INFO_BTF=y",
        )
    });
    findings.push(match create_test_map() {
        Ok(()) => Finding::ok("kernel-bpf", "the bpf(2) syscall works here (created and freed an array map)"),
        Err(error) => Finding::fail(
            "kernel-bpf",
            format!("the bpf(2) syscall failed creating a one-entry array map: {error}"),
            "run as root (or with CAP_BPF and CAP_NET_ADMIN), outside a seccomp profile that blocks bpf(2), on a kernel with CONFIG_BPF_SYSCALL",
        ),
    });
    findings
}

/// BPF_MAP_CREATE of a one-entry array map, closed at once.
fn create_test_map() -> std::io::Result<()> {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    // union bpf_attr starts with map_type, key_size, value_size, max_entries.
    let mut attr = [0u32; 32];
    attr[..4].copy_from_slice(&[BPF_MAP_TYPE_ARRAY, 4, 4, 1]);
    // SAFETY: the attr buffer is larger than the map-create part of bpf_attr.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, attr.as_ptr(), size_of_val(&attr)) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: closing the descriptor we were just given.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

pub(super) fn bpffs_finding(dir: &Path) -> Finding {
    let existing = dir.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    if crate::pinning::is_bpffs(existing) {
        Finding::ok("bpffs", format!("{} is on bpffs", existing.display()))
    } else if dir.starts_with("/sys/fs/bpf") {
        Finding::ok("bpffs", format!("bpffs is not mounted on /sys/fs/bpf yet; `overlay run` mounts it there for {}", dir.display()))
    } else {
        Finding::fail(
            "bpffs",
            format!("{} (the pin directory's nearest existing part) is not on bpffs: the datapath cannot be pinned there", existing.display()),
            format!("mount one (`mount -t bpf bpf {}`) or use a --bpffs-dir under /sys/fs/bpf", existing.display()),
        )
    }
}

// ---- underlay --------------------------------------------------------------

pub(super) fn interfaces_finding(config: &Config) -> Finding {
    let missing: Vec<String> = config
        .endpoints
        .iter()
        .enumerate()
        .filter(|(_, e)| netdev::ifindex(&e.interface).is_none())
        .map(|(i, e)| format!("endpoints[{i}].interface = {:?}", e.interface))
        .collect();
    if missing.is_empty() {
        Finding::ok("ports", format!("all {} port(s) exist", config.endpoints.len()))
    } else {
        // Not a failure: the agent keeps such endpoints pending and applies
        // them when the interface appears; until then they get no traffic.
        Finding::warn(
            "ports",
            format!("no such network interface, so these endpoints are pending (no traffic until it exists): {}", missing.join(", ")),
            "create the containers' veth pairs (the runtime does), or remove their endpoints from the file",
        )
    }
}

pub(super) fn vtep_finding(config: &Config) -> Finding {
    let address = config.node.vtep_address;
    match UdpSocket::bind((address, 0)) {
        Ok(_) => Finding::ok("vtep-address", format!("VTEP address {address} is an address of this host")),
        Err(error) => Finding::fail(
            "vtep-address",
            format!("VTEP address {address} (node.vtep_address) cannot be bound here ({error}): peers send VXLAN to an address this host does not have"),
            format!("add {address} to {} or correct node.vtep_address", config.node.underlay_interface),
        ),
    }
}

/// Smallest MTU IPv6 allows (RFC 8200 section 5), the smallest a network may have.
const IPV6_MIN_MTU: u32 = crate::model::validate::NETWORK_MTU_MIN;

pub(super) fn mtu_finding(underlay: &str) -> Finding {
    let encap = VXLAN_ENCAP_LEN as u32;
    match netdev::mtu(underlay) {
        Ok(mtu) if mtu < IPV6_MIN_MTU + encap => Finding::fail(
            "mtu",
            format!(
                "underlay {underlay} MTU {mtu} leaves an overlay MTU of {}, below the {IPV6_MIN_MTU} IPv6 needs: IPv6 between containers cannot work",
                mtu.saturating_sub(encap)
            ),
            format!("raise the MTU of {underlay} to at least {} (1550 or more gives containers 1500)", IPV6_MIN_MTU + encap),
        ),
        Ok(mtu) => Finding::ok(
            "mtu",
            format!(
                "underlay {underlay} MTU {mtu}: the container side of each port should use {} (underlay less 50); it is in the containers' namespaces, not visible here, and larger frames get ICMP too-big",
                mtu - encap
            ),
        ),
        Err(error) => Finding::warn("mtu", format!("cannot read the MTU of {underlay}: {error}"), ""),
    }
}

pub(super) fn forwarding_finding(underlay: &str, datapath_running: bool) -> Finding {
    let path = netdev::ipv4_forwarding_path(underlay).display().to_string();
    let value = std::fs::read_to_string(&path).map(|v| v.trim().to_owned());
    match value {
        Ok(value) if value == "1" => Finding::ok("forwarding", format!("IPv4 forwarding is on for {underlay}")),
        Ok(value) if datapath_running => Finding::fail(
            "forwarding",
            format!("IPv4 forwarding is off on {underlay} ({path} = {value}) while the datapath runs: every next-hop lookup to a peer fails and frames to peers are dropped (underlay-forwarding-disabled)"),
            format!("sysctl -w net.ipv4.conf.{underlay}.forwarding=1 (the agent sets it at start; something turned it off since)"),
        ),
        Ok(value) => Finding::ok("forwarding", format!("IPv4 forwarding is off on {underlay} ({value}); `overlay run` turns it on at start")),
        Err(error) => Finding::warn("forwarding", format!("cannot read {path}: {error}"), ""),
    }
}

pub(super) fn offload_findings(underlay: &str, xdp_mode: Option<&str>) -> Vec<Finding> {
    let driver = match crate::netdev::driver(underlay) {
        Ok(driver) => driver,
        Err(error) => return vec![Finding::skip("offloads", format!("cannot read the driver of {underlay}: {error}"))],
    };
    if driver != "veth" {
        return vec![Finding::ok("offloads", format!("underlay {underlay} is a {driver} device: no offload setting known to break VXLAN checksums"))];
    }
    let receives_in_xdp = matches!(xdp_mode, Some("native" | "generic"));
    let receiving = if receives_in_xdp {
        " This node receives with XDP on a veth, so what arrives must carry complete checksums too: every peer's sending veth needs tx-checksumming off (doctor on each peer checks its own)."
    } else {
        ""
    };
    match crate::netdev::tx_checksum_offload(underlay) {
        Ok(true) => vec![Finding::warn(
            "offloads",
            format!(
                "underlay {underlay} is a veth with tx-checksumming on: frames this node sends leave with unfinished (CHECKSUM_PARTIAL, GSO) checksums, which XDP decapsulation on a peer's veth would deliver with bad inner TCP/UDP checksums (so the agent refuses XDP decapsulation on a veth with tx-checksumming on; TC decapsulation, the default on a veth, keeps that state).{receiving}"
            ),
            format!("ethtool -K {underlay} tx off (a physical NIC completes checksums before the wire; a veth does not)"),
        )],
        Ok(false) => vec![Finding::ok("offloads", format!("underlay {underlay} is a veth that computes checksums (tx-checksumming off), as a wire needs.{receiving}"))],
        Err(error) => vec![Finding::skip("offloads", format!("cannot read the checksum offload of {underlay}: {error}"))],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_release_is_parsed() {
        assert_eq!(parse_release("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(parse_release("5.15.0-91-generic"), Some((5, 15)));
        assert_eq!(parse_release("garbage"), None);
    }
}
