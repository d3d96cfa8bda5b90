//! `overlay doctor`: checks a node and its peers and says, for each thing
//! found, what is wrong and how to fix it.
//!
//! Every check yields [`Finding`]s `{check, status, what, fix}`; the CLI
//! prints them and exits non-zero when one is [`Status::Fail`]. What is
//! checked, and what each check can and cannot see:
//!
//! - **config**: the file is parsed and validated as `overlay run` would. A
//!   refused file is not an error of doctor: each problem becomes a failing
//!   finding, named by its kind (`duplicate-ip`, `duplicate-mac`,
//!   `duplicate-peer-name`, `duplicate-peer-vtep`, else `config`), with the
//!   field and value. Checks that need the file are then skipped.
//! - **kernel**: TCX links (probed; without them TC attaches as netlink filters), managed neighbour entries
//!   5.16), BTF, that the `bpf(2)` syscall works (an array map is created
//!   and freed), and that the pin directory is, or can be, on bpffs.
//! - **underlay**: the device and every port exist; the VTEP address is an
//!   address of this host; the overlay MTU (underlay MTU - 50) is at least
//!   1280, which IPv6 inside the overlay needs (the container side of each
//!   port is in the container's namespace, invisible from here); the
//!   underlay's checksum offload (ethtool ioctl, read only): native XDP on a
//!   veth turns skbs into frames and loses CHECKSUM_PARTIAL, so a veth
//!   underlay that leaves checksums to "hardware" (`tx-checksumming on`)
//!   sends frames a native-XDP veth receiver delivers with bad inner
//!   checksums; IPv4 forwarding on the underlay (`bpf_fib_lookup` fails
//!   without it).
//! - **datapath**: the agent's status file and the pins: is it running,
//!   with this file, did its last reload apply, and did XDP fall back to
//!   generic mode.
//! - **firewall**: nftables rules that drop or reject UDP to the VXLAN
//!   port. This is the one external tool doctor reads: `nft -j list
//!   ruleset` (read only; plus `nft -a list ruleset` to quote the rule as
//!   written) when `nft` is installed. Precisely what such a rule breaks:
//!   XDP and TC ingress run before netfilter, so VXLAN arriving for this
//!   node's datapath is decapsulated before any input or prerouting rule
//!   sees it, and the datapath's encapsulated frames are redirected out of
//!   the underlay past the output and postrouting hooks. A drop in input or
//!   prerouting therefore breaks only VXLAN received by the kernel on this
//!   host (a kernel vxlan device, another VTEP), and a drop in output or
//!   postrouting only VXLAN sent from sockets, which includes doctor's own
//!   probe: both are warnings that say so, not failures. iptables-legacy
//!   rules are not read.
//! - **peers**: with the datapath running, one probe per peer that the
//!   peer's datapath answers, with no change to the datapath. From a UDP
//!   socket bound to our VTEP address, doctor sends the peer a VXLAN frame,
//!   in a VNI both carry, holding a unicast ARP *probe* (RFC 5227: sender IP
//!   0.0.0.0, so the receiver caches nothing) from a MAC nobody owns
//!   (02:d0:c7:xx:xx:xx) to one of the peer's endpoints, known from the
//!   configuration. The peer's XDP redirects it into that container, whose
//!   kernel answers to the unknown MAC; the peer's TC program floods that
//!   unknown unicast to the VNI's peers, this node among them, and this
//!   node's XDP drops it as `unknown-destination`, which doctor sees on the
//!   node's monitor ring buffer: an event from the peer's VTEP to the probe
//!   MAC proves the round trip (our VTEP -> peer VTEP over UDP, the peer's
//!   datapath admitting us for the VNI, its container up, its
//!   encapsulation back to us). A missing answer cannot say which leg
//!   failed; the finding lists the candidates. Side effects: the peer's
//!   other local ports in the VNI and its other peers each see (and drop)
//!   one copy of the reply. The probe is skipped when no endpoint of the
//!   peer is in a VNI this node carries, and while an `overlay monitor`
//!   runs on this node (its ring buffer has one reader, and closing ours
//!   would switch its events off).
use std::{
    collections::BTreeMap,
    fmt,
    net::{Ipv4Addr, UdpSocket},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use aya::maps::{Array, Map, MapData};
use overlay_common::{ETH_P_ARP, ETH_P_IPV4, MonitorConfig, VXLAN_ENCAP_LEN, maps};

use crate::{
    config::{Config, ConfigError, MacAddr, Peer, Problem},
    monitor::Monitor,
    neighbour::next_hops_blocking,
    netdev,
    pinning::PinDir,
    status::NodeStatus,
};

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Ok,
    /// Could not be checked here; says why.
    Skip,
    /// Works, but something will bite (slow path, a rule that breaks others).
    Warn,
    /// Broken: `overlay doctor` exits non-zero.
    Fail,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Skip => "skip",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One thing doctor found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// Short stable name of the check, e.g. `peer`, `xdp-mode`, `duplicate-ip`.
    pub check: &'static str,
    pub status: Status,
    /// What was found, with the names and values involved.
    pub what: String,
    /// How to fix it (empty when nothing needs fixing).
    pub fix: String,
}

impl Finding {
    fn ok(check: &'static str, what: impl Into<String>) -> Finding {
        Finding { check, status: Status::Ok, what: what.into(), fix: String::new() }
    }

    fn skip(check: &'static str, what: impl Into<String>) -> Finding {
        Finding { check, status: Status::Skip, what: what.into(), fix: String::new() }
    }

    fn warn(check: &'static str, what: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding { check, status: Status::Warn, what: what.into(), fix: fix.into() }
    }

    fn fail(check: &'static str, what: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding { check, status: Status::Fail, what: what.into(), fix: fix.into() }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "check": self.check, "status": self.status.name(), "what": self.what, "fix": self.fix })
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<4}  {:<20} {}", self.status.name().to_uppercase(), self.check, self.what)?;
        if !self.fix.is_empty() {
            write!(f, "\n      {:<20} fix: {}", "", self.fix)?;
        }
        Ok(())
    }
}

/// What to check.
#[derive(Clone, Debug)]
pub struct Options {
    pub config: PathBuf,
    pub bpffs_dir: PathBuf,
    pub run_dir: PathBuf,
    /// How long to wait for each peer's answer to the reachability probe.
    pub probe_timeout: Duration,
}

/// Runs every check; the findings come in the order they were made.
pub fn diagnose(options: &Options) -> Vec<Finding> {
    let mut findings = Vec::new();
    let config = match Config::load(&options.config) {
        Ok(config) => {
            findings.push(Finding::ok(
                "config",
                format!("{} is valid: node {}, {} endpoint(s), {} peer(s)", options.config.display(), config.node.name, config.endpoints.len(), config.peers.len()),
            ));
            Some(config)
        }
        Err(error) => {
            findings.extend(config_findings(&error));
            None
        }
    };
    findings.extend(kernel_findings());
    findings.push(bpffs_finding(&options.bpffs_dir));
    let Some(config) = config else {
        findings.push(Finding::skip("node", "the underlay, datapath, firewall and peer checks need a valid configuration"));
        return findings;
    };
    let underlay = &config.node.underlay_interface;
    let underlay_exists = netdev::ifindex(underlay).is_some();
    findings.push(if underlay_exists {
        Finding::ok("underlay", format!("underlay device {underlay} exists"))
    } else {
        Finding::fail(
            "underlay",
            format!("underlay device {underlay} (node.underlay_interface) does not exist in this network namespace"),
            "set node.underlay_interface to the device that carries the VTEP address, or run doctor where that device is",
        )
    });
    findings.push(interfaces_finding(&config));
    findings.push(vtep_finding(&config));
    if underlay_exists {
        findings.push(mtu_finding(underlay));
    }
    let datapath = DatapathState::read(&config, options);
    findings.extend(datapath.findings(&config, options));
    findings.extend(cluster_findings(datapath.status.as_ref().filter(|_| datapath.agent_running)));
    if underlay_exists {
        findings.extend(offload_findings(underlay, datapath.xdp_mode.as_deref()));
        findings.push(forwarding_finding(underlay, datapath.running()));
    }
    findings.extend(firewall_findings(config.node.vxlan_port));
    findings.extend(peer_findings(&config, &datapath, options));
    findings
}

/// Cluster mode, as the running agent reports it: each conflict between
/// this node and another, and each registry item left out, is a warning
/// (the later claim is refused and nothing was overwritten).
fn cluster_findings(status: Option<&NodeStatus>) -> Vec<Finding> {
    let Some(cluster) = status.and_then(|status| status.cluster.as_ref()) else { return Vec::new() };
    let fix = "give one of the two another name, VTEP address, MAC or IP address (the later claim stays refused until then)";
    let mut findings: Vec<Finding> = cluster.conflicts.iter().map(|conflict| Finding::warn("cluster-conflict", conflict.clone(), fix)).collect();
    findings.extend(cluster.left_out.iter().map(|item| Finding::warn("cluster-conflict", format!("registry item left out: {item}"), fix)));
    if findings.is_empty() {
        findings.push(Finding::ok("cluster", cluster.summary.clone()));
    }
    findings
}

/// Whether any finding fails the node.
pub fn failed(findings: &[Finding]) -> bool {
    findings.iter().any(|f| f.status == Status::Fail)
}

// ---- configuration -------------------------------------------------------

/// A refused configuration as findings: one per problem, named by its kind.
fn config_findings(error: &ConfigError) -> Vec<Finding> {
    match error {
        ConfigError::Invalid { path, problems } => problems.iter().map(|p| problem_finding(path, p)).collect(),
        other => vec![Finding::fail("config", other.to_string(), "fix the file (`overlay validate --config FILE` checks it without touching the kernel)")],
    }
}

fn problem_finding(path: &Path, problem: &Problem) -> Finding {
    let (check, fix) = classify_problem(problem);
    Finding::fail(check, format!("{}: {problem}", path.display()), fix)
}

/// The kind of a validation problem, and its fix. Keyed on the messages
/// config.rs writes (its tests and ours pin them).
fn classify_problem(problem: &Problem) -> (&'static str, &'static str) {
    let message = problem.message.as_str();
    let peer_duplicate = message.starts_with("already used by peers[");
    if message.contains("IP already used") || message.contains("IPv6 address already used") {
        ("duplicate-ip", "two endpoints of one VNI cannot share an IP address: give one of them another address, or put it in another VNI")
    } else if message.contains("MAC already used") {
        ("duplicate-mac", "two endpoints of one VNI cannot share a MAC address: give one of them another MAC (the container's and the file's must agree)")
    } else if peer_duplicate && problem.field.ends_with(".name") {
        ("duplicate-peer-name", "peer names must be unique: rename one, or merge the two entries if they are one node")
    } else if peer_duplicate && problem.field.ends_with(".vtep_address") {
        ("duplicate-peer-vtep", "one VTEP address is one node: merge the two peer entries, or correct the address of one")
    } else {
        ("config", "correct the field as the message says (`overlay validate --config FILE` rechecks)")
    }
}

// ---- kernel ----------------------------------------------------------------

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

fn kernel_findings() -> Vec<Finding> {
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

fn bpffs_finding(dir: &Path) -> Finding {
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

fn interfaces_finding(config: &Config) -> Finding {
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

fn vtep_finding(config: &Config) -> Finding {
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

/// Smallest MTU IPv6 allows (RFC 8200 section 5).
const IPV6_MIN_MTU: u32 = 1280;

fn mtu_finding(underlay: &str) -> Finding {
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

fn forwarding_finding(underlay: &str, datapath_running: bool) -> Finding {
    let path = format!("/proc/sys/net/ipv4/conf/{underlay}/forwarding");
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

fn offload_findings(underlay: &str, xdp_mode: Option<&str>) -> Vec<Finding> {
    let driver = match crate::netdev::driver(underlay) {
        Ok(driver) => driver,
        Err(error) => return vec![Finding::skip("offloads", format!("cannot read the driver of {underlay}: {error}"))],
    };
    if driver != "veth" {
        return vec![Finding::ok("offloads", format!("underlay {underlay} is a {driver} device: no offload setting known to break VXLAN checksums"))];
    }
    let native = xdp_mode == Some("native");
    let receiving = if native {
        " This node receives with native XDP on a veth, so what arrives must carry complete checksums too: every peer's sending veth needs tx-checksumming off (doctor on each peer checks its own)."
    } else {
        ""
    };
    match crate::netdev::tx_checksum_offload(underlay) {
        Ok(true) => vec![Finding::warn(
            "offloads",
            format!(
                "underlay {underlay} is a veth with tx-checksumming on: frames this node sends leave with unfinished (CHECKSUM_PARTIAL) checksums, which a peer receiving with native XDP on a veth delivers with bad inner TCP/UDP checksums.{receiving}"
            ),
            format!("ethtool -K {underlay} tx off (a physical NIC completes checksums before the wire; a veth does not)"),
        )],
        Ok(false) => vec![Finding::ok("offloads", format!("underlay {underlay} is a veth that computes checksums (tx-checksumming off), as a wire needs.{receiving}"))],
        Err(error) => vec![Finding::skip("offloads", format!("cannot read the checksum offload of {underlay}: {error}"))],
    }
}

// ---- datapath --------------------------------------------------------------

/// What doctor knows of the node's running datapath.
struct DatapathState {
    pins: PinDir,
    status: Option<NodeStatus>,
    agent_running: bool,
    pinned_links: Vec<String>,
    xdp_mode: Option<String>,
}

impl DatapathState {
    fn read(config: &Config, options: &Options) -> DatapathState {
        let pins = PinDir::new(&options.bpffs_dir, &config.node.name);
        let status = NodeStatus::read(&options.run_dir, &config.node.name).ok();
        let agent_running = status.as_ref().is_some_and(|s| s.agent_running());
        let pinned_links = pins.pinned_links();
        let underlay = &config.node.underlay_interface;
        // "none": decapsulation in TC, no XDP program.
        let xdp_mode = status.as_ref().map(|s| s.xdp_mode.clone()).or_else(|| {
            [(true, "native"), (false, "generic")]
                .into_iter()
                .find(|(native, _)| pinned_links.contains(&crate::pinning::xdp_link_name(*native, underlay)))
                .map(|(_, mode)| mode.to_owned())
                .or_else(|| pinned_links.contains(&crate::pinning::decap_tc_link_name(underlay)).then(|| "none".to_owned()))
        });
        DatapathState { pins, status, agent_running, pinned_links, xdp_mode }
    }

    /// Whether programs are attached (by a running agent or left pinned).
    fn running(&self) -> bool {
        self.agent_running || !self.pinned_links.is_empty()
    }

    fn findings(&self, config: &Config, options: &Options) -> Vec<Finding> {
        let node = &config.node.name;
        let mut findings = Vec::new();
        let start = format!("overlay run --config {}", options.config.display());
        match &self.status {
            Some(status) if self.agent_running => {
                findings.push(Finding::ok(
                    "datapath",
                    format!("agent pid {} runs node {node}; attached: {}", status.pid, status.attachments.join(", ")),
                ));
                let ours = std::fs::canonicalize(&options.config).unwrap_or(options.config.clone());
                if status.config != ours {
                    findings.push(Finding::warn(
                        "datapath",
                        format!("the agent runs {}, not {}: what doctor checked is not what is applied", status.config.display(), ours.display()),
                        "run doctor with the agent's file, or restart the agent with this one",
                    ));
                }
                if let Some(reload) = status.last_reload.as_ref().filter(|r| !r.ok) {
                    findings.push(Finding::warn(
                        "datapath",
                        format!("the agent refused its last reload (unix time {}), so an older file is in force: {}", reload.at, reload.message),
                        "fix the file; the agent reloads it when it changes",
                    ));
                }
            }
            _ if !self.pinned_links.is_empty() => findings.push(Finding::warn(
                "datapath",
                format!(
                    "no agent runs node {node}, but its datapath is pinned in {} and forwarding ({}): nothing applies configuration changes",
                    self.pins.root().display(),
                    self.pinned_links.join(", ")
                ),
                format!("start the agent ({start}), which adopts it, or remove it (overlay down --node {node})"),
            )),
            _ => findings.push(Finding::fail(
                "datapath",
                format!("node {node} has no running agent and no pinned datapath (status in {}, pins in {})", options.run_dir.display(), options.bpffs_dir.display()),
                format!("start it: {start}"),
            )),
        }
        match self.xdp_mode.as_deref() {
            Some("generic") => findings.push(Finding::warn(
                "xdp-mode",
                format!("XDP runs in generic (skb) mode on {}: decapsulation works but is slower, after the kernel has built an skb", config.node.underlay_interface),
                "use an underlay device whose driver supports native XDP (most 10G+ NICs, veth), and start the agent with --xdp-mode auto or native",
            )),
            Some("none") => findings.push(Finding::ok(
                "xdp-mode",
                format!("no XDP program: VXLAN is decapsulated in TC on {} (--decap tc, or auto's choice for this device)", config.node.underlay_interface),
            )),
            Some(mode) => findings.push(Finding::ok("xdp-mode", format!("XDP runs in {mode} mode on {}", config.node.underlay_interface))),
            None => {}
        }
        findings
    }
}

// ---- firewall --------------------------------------------------------------

/// Where in the packet's path an nftables hook sits, for VXLAN on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HookSide {
    /// ingress, prerouting, input: after XDP and TC ingress.
    Receive,
    /// output, postrouting: sockets' packets, not TC-redirected ones.
    Send,
}

/// A rule (or chain policy) that drops UDP to the VXLAN port.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FirewallDrop {
    side: HookSide,
    /// `family table chain`.
    chain: String,
    /// The rule as nft prints it, or the policy.
    rule: String,
    /// A command that removes it, when it is a rule.
    removal: Option<String>,
    /// Some of the rule's conditions were not understood: it may not apply.
    conditional: bool,
}

fn find_nft() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|dir| dir.join("nft"))
        .find(|candidate| candidate.is_file())
}

fn firewall_findings(port: u16) -> Vec<Finding> {
    let Some(nft) = find_nft() else {
        return vec![Finding::skip("firewall", "nft is not installed: no nftables ruleset to read (iptables-legacy rules are never read)")];
    };
    let listing = |args: &[&str]| -> Result<String, String> {
        let output = Command::new(&nft).args(args).output().map_err(|e| format!("running {}: {e}", nft.display()))?;
        if !output.status.success() {
            return Err(format!("`nft {}` failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim()));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };
    let json = match listing(&["-j", "list", "ruleset"]) {
        Ok(json) => json,
        Err(error) => return vec![Finding::skip("firewall", format!("cannot read the nftables ruleset: {error}"))],
    };
    let text = listing(&["-a", "list", "ruleset"]).unwrap_or_default();
    let ruleset: serde_json::Value = match serde_json::from_str(&json) {
        Ok(value) => value,
        Err(error) => return vec![Finding::skip("firewall", format!("cannot parse `nft -j list ruleset`: {error}"))],
    };
    let (drops, rules) = firewall_drops(&ruleset, port, &rule_texts(&text));
    if drops.is_empty() {
        return vec![Finding::ok("firewall", format!("no nftables rule drops UDP port {port} ({rules} rule(s) read)"))];
    }
    drops
        .into_iter()
        .map(|drop| {
            let maybe = if drop.conditional { "may drop (some of its conditions were not evaluated)" } else { "drops" };
            let what = match drop.side {
                HookSide::Receive => format!(
                    "{} `{}` {maybe} UDP to port {port} arriving at this host. This node's datapath is unaffected (XDP and TC ingress decapsulate VXLAN before netfilter sees it), but a kernel vxlan device or any other VXLAN socket on this host would lose it",
                    drop.chain, drop.rule
                ),
                HookSide::Send => format!(
                    "{} `{}` {maybe} UDP to port {port} sent from this host's sockets. The datapath's encapsulated frames are unaffected (TC redirects them past netfilter), but a kernel vxlan device here, and doctor's own reachability probe, are not: a failing peer check may be this rule",
                    drop.chain, drop.rule
                ),
            };
            let fix = match &drop.removal {
                Some(removal) => format!("if something on this host needs kernel VXLAN on port {port}, remove it ({removal}) or accept the port before it; for this datapath alone nothing needs to change"),
                None => format!("accept UDP port {port} in that chain if something on this host needs kernel VXLAN; for this datapath alone nothing needs to change"),
            };
            Finding::warn("firewall", what, fix)
        })
        .collect()
}

/// `nft -a list ruleset` lines by (family, table, chain, handle), so a
/// finding quotes the rule as written.
fn rule_texts(text: &str) -> BTreeMap<(String, String, String, u64), String> {
    let mut rules = BTreeMap::new();
    let (mut table, mut chain) = (None::<(String, String)>, None::<String>);
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["table", family, name, ..] => {
                table = Some((family.to_string(), name.to_string()));
                chain = None;
            }
            ["chain", name, ..] => chain = Some(name.to_string()),
            _ => {
                let (Some((family, name)), Some(chain)) = (&table, &chain) else { continue };
                let Some((rule, handle)) = line.rsplit_once("# handle ") else { continue };
                let Ok(handle) = handle.trim().parse() else { continue };
                if line.starts_with("type ") {
                    continue;
                }
                rules.insert((family.clone(), name.clone(), chain.clone(), handle), rule.trim().to_owned());
            }
        }
    }
    rules
}

/// Chains and rules of an `nft -j list ruleset` document that drop UDP to
/// `port`, and the number of rules read.
fn firewall_drops(ruleset: &serde_json::Value, port: u16, texts: &BTreeMap<(String, String, String, u64), String>) -> (Vec<FirewallDrop>, usize) {
    let items = ruleset["nftables"].as_array().cloned().unwrap_or_default();
    let key = |v: &serde_json::Value, chain_field: &str| {
        (v["family"].as_str().unwrap_or("").to_owned(), v["table"].as_str().unwrap_or("").to_owned(), v[chain_field].as_str().unwrap_or("").to_owned())
    };
    // Base chains: (family, table, name) -> (hook side, policy).
    let mut chains: BTreeMap<(String, String, String), (Option<HookSide>, String)> = BTreeMap::new();
    for chain in items.iter().filter_map(|i| i.get("chain")) {
        let side = match chain["hook"].as_str() {
            Some("ingress" | "prerouting" | "input") => Some(HookSide::Receive),
            Some("output" | "postrouting") => Some(HookSide::Send),
            _ => None,
        };
        // IPv6-only and ARP families never see IPv4 VXLAN.
        let family = chain["family"].as_str().unwrap_or("");
        let side = side.filter(|_| matches!(family, "ip" | "inet" | "netdev" | "bridge"));
        chains.insert(key(chain, "name"), (side, chain["policy"].as_str().unwrap_or("accept").to_owned()));
    }
    // Every chain a datagram to the port can pass through: the base chains,
    // and regular chains reached from them by jump or goto (transitively),
    // with the side of the base chain and whether reaching it depended on
    // conditions doctor cannot decide.
    let rules: Vec<&serde_json::Value> = items.iter().filter_map(|i| i.get("rule")).collect();
    let mut reach: BTreeMap<(String, String, String), (HookSide, bool)> =
        chains.iter().filter_map(|(chain, (side, _))| side.map(|side| (chain.clone(), (side, false)))).collect();
    loop {
        let mut found = Vec::new();
        for rule in &rules {
            let Some(&(side, via_conditional)) = reach.get(&key(rule, "chain")) else { continue };
            let Some((target, conditional)) = jump_target(rule["expr"].as_array().map_or(&[][..], Vec::as_slice), port) else { continue };
            let target_key = (rule["family"].as_str().unwrap_or("").to_owned(), rule["table"].as_str().unwrap_or("").to_owned(), target);
            if !reach.contains_key(&target_key) {
                found.push((target_key, (side, via_conditional || conditional)));
            }
        }
        if found.is_empty() {
            break;
        }
        reach.extend(found);
    }
    let mut drops = Vec::new();
    let mut accepted: Vec<(String, String, String)> = Vec::new();
    let mut count = 0;
    for rule in &rules {
        count += 1;
        let chain_key = key(rule, "chain");
        let Some(&(side, via_conditional)) = reach.get(&chain_key) else { continue };
        let Some(mut effect) = rule_effect(rule["expr"].as_array().map_or(&[][..], Vec::as_slice), port) else { continue };
        effect.conditional |= via_conditional;
        let handle = rule["handle"].as_u64().unwrap_or(0);
        let (family, table, chain) = &chain_key;
        if effect.verdict == Verdict::Accept {
            if !effect.conditional {
                accepted.push(chain_key.clone());
            }
            continue;
        }
        // A rule after an unconditional accept of the port never sees it.
        if accepted.contains(&chain_key) {
            continue;
        }
        let text = texts.get(&(family.clone(), table.clone(), chain.clone(), handle)).cloned().unwrap_or_else(|| format!("rule handle {handle}"));
        drops.push(FirewallDrop {
            side,
            chain: format!("{family} {table} {chain}"),
            rule: text,
            removal: Some(format!("nft delete rule {family} {table} {chain} handle {handle}")),
            conditional: effect.conditional,
        });
    }
    for ((family, table, name), (side, policy)) in &chains {
        let Some(side) = side else { continue };
        if policy == "drop" && !accepted.contains(&(family.clone(), table.clone(), name.clone())) {
            drops.push(FirewallDrop {
                side: *side,
                chain: format!("{family} {table} {name}"),
                rule: "policy drop".to_owned(),
                removal: None,
                conditional: true,
            });
        }
    }
    (drops, count)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Accept,
    Drop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RuleEffect {
    verdict: Verdict,
    conditional: bool,
}

/// Whether an IPv4 UDP datagram to `port` can pass all of a rule's match
/// conditions: `None` when one of them can never hold, else whether some
/// depend on what doctor cannot decide.
fn conditions_for(exprs: &[serde_json::Value], port: u16) -> Option<bool> {
    let mut conditional = false;
    for condition in exprs.iter().filter_map(|expr| expr.get("match")) {
        match match_effect(condition, port) {
            Match::Never => return None,
            Match::Always => {}
            Match::Unknown => conditional = true,
        }
    }
    Some(conditional)
}

/// The chain a rule jumps or goes to (`jump`/`goto`), if an IPv4 UDP
/// datagram to `port` can take it, and whether that depends on conditions
/// doctor cannot decide.
fn jump_target(exprs: &[serde_json::Value], port: u16) -> Option<(String, bool)> {
    let target = exprs.iter().find_map(|expr| expr.get("jump").or_else(|| expr.get("goto")))?;
    let name = target["target"].as_str()?.to_owned();
    conditions_for(exprs, port).map(|conditional| (name, conditional))
}

/// What a rule does to an IPv4 UDP datagram to `port`: `None` when it
/// cannot match one or has no final verdict.
fn rule_effect(exprs: &[serde_json::Value], port: u16) -> Option<RuleEffect> {
    let conditional = conditions_for(exprs, port)?;
    let mut verdict = None;
    for expr in exprs {
        if expr.get("drop").is_some() || expr.get("reject").is_some() {
            verdict = Some(Verdict::Drop);
        } else if expr.get("accept").is_some() {
            verdict = Some(Verdict::Accept);
        } else if expr.get("jump").is_some() || expr.get("goto").is_some() || expr.get("queue").is_some() {
            return None; // decided elsewhere (firewall_drops follows jump and goto)
        }
    }
    verdict.map(|verdict| RuleEffect { verdict, conditional })
}

enum Match {
    Always,
    Never,
    Unknown,
}

fn match_effect(condition: &serde_json::Value, port: u16) -> Match {
    let op = condition["op"].as_str().unwrap_or("==");
    let left = &condition["left"];
    let right = &condition["right"];
    let positive = match op {
        "==" | "in" => true,
        "!=" => false,
        _ => return Match::Unknown,
    };
    let decide = |holds: bool| if holds == positive { Match::Always } else { Match::Never };
    if let Some(payload) = left.get("payload") {
        let protocol = payload["protocol"].as_str().unwrap_or("");
        let field = payload["field"].as_str().unwrap_or("");
        return match (protocol, field) {
            ("udp" | "th", "dport") => decide(value_contains(right, port as u64)),
            ("ip", "protocol") => decide(right.as_str() == Some("udp") || right.as_u64() == Some(17) || set_contains_str(right, "udp")),
            ("udp", _) | ("ip", _) | ("th", _) | ("ether", _) => Match::Unknown,
            // tcp, sctp, icmp, ip6... headers an IPv4 UDP datagram does not have.
            _ if positive => Match::Never,
            _ => Match::Unknown,
        };
    }
    if let Some(meta) = left.get("meta") {
        return match meta["key"].as_str().unwrap_or("") {
            "l4proto" => decide(right.as_str() == Some("udp") || right.as_u64() == Some(17) || set_contains_str(right, "udp")),
            "nfproto" => decide(right.as_str() == Some("ipv4")),
            _ => Match::Unknown,
        };
    }
    Match::Unknown
}

/// Whether an nft JSON value (a number, a range, a set of those) contains `n`.
fn value_contains(value: &serde_json::Value, n: u64) -> bool {
    if let Some(v) = value.as_u64() {
        return v == n;
    }
    if let Some(range) = value.get("range").and_then(|r| r.as_array()) {
        return matches!(range.as_slice(), [low, high] if low.as_u64().is_some_and(|l| l <= n) && high.as_u64().is_some_and(|h| n <= h));
    }
    if let Some(items) = value.get("set").and_then(|s| s.as_array()) {
        return items.iter().any(|item| value_contains(item, n));
    }
    false
}

fn set_contains_str(value: &serde_json::Value, text: &str) -> bool {
    value.get("set").and_then(|s| s.as_array()).is_some_and(|items| items.iter().any(|i| i.as_str() == Some(text)))
}

// ---- peers -----------------------------------------------------------------

/// Prefix of the MAC a probe comes from: locally administered, unicast,
/// and owned by nobody (the rest is random per run).
const PROBE_MAC_PREFIX: [u8; 3] = [0x02, 0xd0, 0xc7];

/// A VXLAN datagram (header and inner frame) carrying a unicast ARP probe
/// (RFC 5227: sender IP 0.0.0.0, so the target caches nothing) from
/// `probe_mac` to the endpoint `target_mac`/`target_ip`.
pub fn probe_datagram(vni: u32, probe_mac: MacAddr, target_mac: MacAddr, target_ip: Ipv4Addr) -> Vec<u8> {
    let mut datagram = vec![0x08, 0, 0, 0];
    datagram.extend_from_slice(&vni.to_be_bytes()[1..]);
    datagram.push(0);
    datagram.extend_from_slice(&target_mac.0);
    datagram.extend_from_slice(&probe_mac.0);
    datagram.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    datagram.extend_from_slice(&[0, 1]); // hardware type: Ethernet
    datagram.extend_from_slice(&ETH_P_IPV4.to_be_bytes());
    datagram.extend_from_slice(&[6, 4, 0, 1]); // lengths, request
    datagram.extend_from_slice(&probe_mac.0);
    datagram.extend_from_slice(&[0; 4]); // sender IP: none (a probe)
    datagram.extend_from_slice(&[0; 6]);
    datagram.extend_from_slice(&target_ip.octets());
    datagram.resize(8 + 60, 0); // minimum Ethernet frame
    datagram
}

fn random_probe_mac() -> MacAddr {
    let mut bytes = [0u8; 3];
    // SAFETY: writing at most 3 bytes into our buffer.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if got != bytes.len() as isize {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        bytes = (nanos ^ std::process::id()).to_be_bytes()[1..].try_into().unwrap();
    }
    let [a, b, c] = PROBE_MAC_PREFIX;
    MacAddr([a, b, c, bytes[0], bytes[1], bytes[2]])
}

/// One peer's probe: where it goes and what it asks.
struct PeerProbe<'a> {
    peer: &'a Peer,
    vni: u32,
    target: (MacAddr, Ipv4Addr),
    datagram: Vec<u8>,
}

fn peer_findings(config: &Config, datapath: &DatapathState, options: &Options) -> Vec<Finding> {
    if config.peers.is_empty() {
        return vec![Finding::ok("peer", "no peers configured")];
    }
    let skip_all = |why: String| config.peers.iter().map(|p| Finding::skip("peer", format!("{} ({}): {why}", p.name, p.vtep_address))).collect::<Vec<_>>();
    if !datapath.running() {
        return skip_all("not probed: the datapath of this node is not running".to_owned());
    }
    match monitor_enabled(&datapath.pins) {
        Ok(false) => {}
        Ok(true) => return skip_all("not probed: an `overlay monitor` is listening on this node (it reads the events the probe's answer needs)".to_owned()),
        Err(error) => return skip_all(format!("not probed: cannot read the node's monitor settings: {error}")),
    }
    let mut findings = Vec::new();
    let local_vnis = config.local_vnis();
    let probe_mac = random_probe_mac();
    let mut probes = Vec::new();
    let destinations: Vec<std::net::IpAddr> = config.peers.iter().map(|peer| peer.vtep_address.into()).collect();
    // Without a netlink socket the routes are not checked; the probes still run.
    let mut routes = next_hops_blocking(&destinations).map(Vec::into_iter).ok();
    for peer in &config.peers {
        if let Some(Err(error)) = routes.as_mut().and_then(Iterator::next) {
            findings.push(Finding::fail(
                "peer",
                format!("{} ({}): no underlay route to its VTEP: {error}", peer.name, peer.vtep_address),
                format!("add a route to {} (the underlay must reach every peer VTEP), or correct its vtep_address", peer.vtep_address),
            ));
            continue;
        }
        let Some(endpoint) = peer.endpoints.iter().find(|e| local_vnis.contains(&e.vni)) else {
            findings.push(Finding::skip(
                "peer",
                format!("{} ({}): not probed: none of its configured endpoints is in a VNI this node carries, and the probe needs one to answer", peer.name, peer.vtep_address),
            ));
            continue;
        };
        let datagram = probe_datagram(endpoint.vni, probe_mac, endpoint.mac, endpoint.ip);
        probes.push(PeerProbe { peer, vni: endpoint.vni, target: (endpoint.mac, endpoint.ip), datagram });
    }
    if probes.is_empty() {
        return findings;
    }
    let socket = match UdpSocket::bind((config.node.vtep_address, 0)) {
        Ok(socket) => socket,
        Err(error) => {
            findings.extend(probes.iter().map(|p| {
                Finding::skip("peer", format!("{} ({}): not probed: cannot bind a socket to our VTEP address {}: {error}", p.peer.name, p.peer.vtep_address, config.node.vtep_address))
            }));
            return findings;
        }
    };
    let settings = MonitorConfig {
        enabled: 1,
        events_per_second: overlay_common::DEFAULT_MONITOR_RATE,
        burst: overlay_common::DEFAULT_MONITOR_BURST,
        sample_forwarded_every: 0,
    };
    let mut monitor = match Monitor::open(&datapath.pins, settings) {
        Ok(monitor) => monitor,
        Err(error) => {
            findings.extend(probes.iter().map(|p| Finding::skip("peer", format!("{} ({}): not probed: cannot open the node's events: {error}", p.peer.name, p.peer.vtep_address))));
            return findings;
        }
    };
    let port = config.node.vxlan_port;
    let mut answered: BTreeMap<Ipv4Addr, Duration> = BTreeMap::new();
    let started = Instant::now();
    // Three sends, spread over the timeout: one lost datagram is not a verdict.
    let rounds = 3u32;
    for round in 0..rounds {
        for probe in probes.iter().filter(|p| !answered.contains_key(&p.peer.vtep_address)) {
            let _ = socket.send_to(&probe.datagram, (probe.peer.vtep_address, port));
        }
        let round_end = started + options.probe_timeout * (round + 1) / rounds;
        while answered.len() < probes.len() {
            let now = Instant::now();
            if now >= round_end {
                break;
            }
            let Some(event) = monitor.next(round_end - now) else { continue };
            let Some((source, _)) = event.outer else { continue };
            let to_probe = event.inner_eth.is_some_and(|(_, destination, _)| destination == probe_mac);
            if to_probe && probes.iter().any(|p| p.peer.vtep_address == source) {
                answered.entry(source).or_insert(started.elapsed());
            }
        }
        if answered.len() == probes.len() {
            break;
        }
    }
    drop(monitor);
    let us = config.node.vtep_address;
    for probe in &probes {
        let peer = probe.peer;
        let (mac, ip) = probe.target;
        let asked = format!("an ARP probe in VNI {} for its endpoint {ip} ({mac}), sent as VXLAN to {}:{port}", probe.vni, peer.vtep_address);
        findings.push(match answered.get(&peer.vtep_address) {
            Some(after) => Finding::ok(
                "peer",
                format!("{} ({}): answered {asked} in {:.1} ms: UDP {port} reaches it, its datapath admits {us} in VNI {} and encapsulates back", peer.name, peer.vtep_address, after.as_secs_f64() * 1000.0, probe.vni),
            ),
            None => Finding::fail(
                "peer",
                format!(
                    "{} ({}): no answer in {:?} to {asked}: the peer host or its underlay is down, UDP {port} is filtered between the VTEPs, its agent is not running or does not list {us} as a peer in VNI {}, or the container {ip} is down",
                    peer.name, peer.vtep_address, options.probe_timeout, probe.vni
                ),
                format!(
                    "on {}: run `overlay doctor` and `overlay monitor --node {} --peer {us}` (shows what its datapath drops from us); check the path between {us} and {} for UDP {port}",
                    peer.name, peer.name, peer.vtep_address
                ),
            ),
        });
    }
    findings
}

/// Whether an `overlay monitor` has the node's events switched on.
fn monitor_enabled(pins: &PinDir) -> Result<bool, String> {
    let data = MapData::from_pin(pins.map(maps::MONITOR)).map_err(|e| format!("opening {}: {e}", pins.map(maps::MONITOR).display()))?;
    let array: Array<MapData, MonitorConfig> = Array::try_from(Map::Array(data)).map_err(|e| e.to_string())?;
    Ok(array.get(&0, 0).map_err(|e| e.to_string())?.enabled != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<Finding> {
        match Config::parse(text, Path::new("node.toml")) {
            Err(error) => config_findings(&error),
            Ok(_) => panic!("expected a refused configuration"),
        }
    }

    const GOOD: &str = r#"
[node]
name = "a"
underlay_interface = "eth0"
vtep_address = "192.0.2.1"

[[endpoints]]
interface = "p1"
mac = "02:00:00:00:01:01"
ip = "10.10.0.1"
vni = 100

[[peers]]
name = "b"
vtep_address = "192.0.2.2"

  [[peers.endpoints]]
  mac = "02:00:00:00:02:01"
  ip = "10.10.0.2"
  vni = 100
"#;

    fn checks(findings: &[Finding]) -> Vec<&'static str> {
        findings.iter().map(|f| f.check).collect()
    }

    #[test]
    fn config_problems_are_named_by_kind() {
        let dup_ip = problems(&GOOD.replace("\"10.10.0.2\"", "\"10.10.0.1\""));
        assert_eq!(checks(&dup_ip), ["duplicate-ip"], "{dup_ip:?}");
        assert!(dup_ip[0].what.contains("peers[0].endpoints[0].ip") && dup_ip[0].status == Status::Fail, "{dup_ip:?}");
        let dup_mac = problems(&GOOD.replace("02:00:00:00:02:01", "02:00:00:00:01:01"));
        assert_eq!(checks(&dup_mac), ["duplicate-mac"], "{dup_mac:?}");
        let dup_peer = problems(&format!("{GOOD}\n[[peers]]\nname = \"b\"\nvtep_address = \"192.0.2.2\"\n"));
        assert_eq!(checks(&dup_peer), ["duplicate-peer-vtep", "duplicate-peer-name"], "{dup_peer:?}");
        let bad = problems(&GOOD.replace("02:00:00:00:01:01", "zz"));
        assert_eq!(checks(&bad), ["config"], "{bad:?}");
        let syntax = problems(&GOOD.replace("vni = 100", "vni = \"x\""));
        assert_eq!(checks(&syntax), ["config"], "{syntax:?}");
    }

    #[test]
    fn kernel_release_is_parsed() {
        assert_eq!(parse_release("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(parse_release("5.15.0-91-generic"), Some((5, 15)));
        assert_eq!(parse_release("garbage"), None);
    }

    #[test]
    fn probe_is_a_unicast_arp_probe_in_vxlan() {
        let probe = MacAddr([2, 0xd0, 0xc7, 1, 2, 3]);
        let target = MacAddr([2, 0, 0, 0, 2, 1]);
        let datagram = probe_datagram(0x01_02_03, probe, target, Ipv4Addr::new(10, 10, 0, 2));
        assert_eq!(&datagram[..8], &[0x08, 0, 0, 0, 1, 2, 3, 0], "VXLAN header with the I flag and the VNI");
        assert_eq!(&datagram[8..14], &target.0, "inner destination: the endpoint");
        assert_eq!(&datagram[14..20], &probe.0, "inner source: the probe MAC");
        assert_eq!(&datagram[20..22], &[0x08, 0x06]);
        let arp = &datagram[22..50];
        assert_eq!(&arp[..8], &[0, 1, 8, 0, 6, 4, 0, 1], "Ethernet/IPv4 ARP request");
        assert_eq!(&arp[14..18], &[0; 4], "sender IP 0.0.0.0: a probe, cached by nobody");
        assert_eq!(&arp[24..28], &[10, 10, 0, 2]);
        assert_eq!(datagram.len(), 8 + 60);
    }

    fn ruleset(chain_hook: &str, policy: &str, exprs: serde_json::Value) -> serde_json::Value {
        serde_json::json!({ "nftables": [
            { "metainfo": { "json_schema_version": 1 } },
            { "table": { "family": "inet", "name": "filter", "handle": 1 } },
            { "chain": { "family": "inet", "table": "filter", "name": "c", "handle": 1, "type": "filter", "hook": chain_hook, "prio": 0, "policy": policy } },
            { "rule": { "family": "inet", "table": "filter", "chain": "c", "handle": 3, "expr": exprs } },
        ]})
    }

    fn udp_dport(op: &str, right: serde_json::Value) -> serde_json::Value {
        serde_json::json!({ "match": { "op": op, "left": { "payload": { "protocol": "udp", "field": "dport" } }, "right": right } })
    }

    #[test]
    fn firewall_rules_dropping_the_port_are_found() {
        let texts = BTreeMap::new();
        let drop = serde_json::json!({ "drop": null });
        let found = |hook: &str, policy: &str, exprs: serde_json::Value| firewall_drops(&ruleset(hook, policy, exprs), 4789, &texts).0;

        let input = found("input", "accept", serde_json::json!([udp_dport("==", 4789.into()), drop]));
        assert_eq!(input.len(), 1, "{input:?}");
        assert_eq!((input[0].side, input[0].conditional), (HookSide::Receive, false));
        assert_eq!(input[0].removal.as_deref(), Some("nft delete rule inet filter c handle 3"));
        let set = serde_json::json!({ "set": [8472, { "range": [4000, 5000] }] });
        assert_eq!(found("output", "accept", serde_json::json!([udp_dport("==", set), drop]))[0].side, HookSide::Send);
        assert!(found("input", "accept", serde_json::json!([udp_dport("==", 53.into()), drop])).is_empty(), "another port");
        assert!(found("input", "accept", serde_json::json!([udp_dport("!=", 4789.into()), drop])).is_empty(), "all but our port");
        assert!(found("forward", "accept", serde_json::json!([udp_dport("==", 4789.into()), drop])).is_empty(), "forward never sees VXLAN to us");
        let tcp = serde_json::json!({ "match": { "op": "==", "left": { "payload": { "protocol": "tcp", "field": "dport" } }, "right": 4789 } });
        assert!(found("input", "accept", serde_json::json!([tcp, drop])).is_empty(), "TCP only");
        let saddr = serde_json::json!({ "match": { "op": "==", "left": { "payload": { "protocol": "ip", "field": "saddr" } }, "right": "198.51.100.1" } });
        assert!(found("input", "accept", serde_json::json!([saddr, udp_dport("==", 4789.into()), { "reject": null }]))[0].conditional);
        assert_eq!(found("input", "accept", serde_json::json!([drop])).len(), 1, "drop everything");
        let policy = found("input", "drop", serde_json::json!([{ "counter": null }]));
        assert_eq!(policy.iter().map(|d| d.rule.as_str()).collect::<Vec<_>>(), ["policy drop"]);
        assert!(found("input", "drop", serde_json::json!([udp_dport("==", 4789.into()), { "accept": null }])).is_empty(), "policy drop, port accepted");
    }

    /// A drop in a regular chain counts when a base chain jumps (or goes)
    /// to it, even through another regular chain; a chain nothing reaches,
    /// or reached only by a jump the datagram cannot take, does not.
    #[test]
    fn firewall_rules_behind_jumps_are_found() {
        let texts = BTreeMap::new();
        let chain = |name: &str, hook: Option<&str>| match hook {
            Some(hook) => serde_json::json!({ "chain": { "family": "inet", "table": "filter", "name": name, "type": "filter", "hook": hook, "prio": 0, "policy": "accept" } }),
            None => serde_json::json!({ "chain": { "family": "inet", "table": "filter", "name": name } }),
        };
        let rule = |chain: &str, handle: u64, exprs: serde_json::Value| serde_json::json!({ "rule": { "family": "inet", "table": "filter", "chain": chain, "handle": handle, "expr": exprs } });
        let tcp_dport = serde_json::json!({ "match": { "op": "==", "left": { "payload": { "protocol": "tcp", "field": "dport" } }, "right": 22 } });
        let ruleset = serde_json::json!({ "nftables": [
            chain("input", Some("input")),
            chain("udp_checks", None),
            chain("vxlan", None),
            chain("ssh_only", None),
            chain("orphan", None),
            rule("input", 1, serde_json::json!([{ "jump": { "target": "udp_checks" } }])),
            rule("input", 2, serde_json::json!([tcp_dport, { "jump": { "target": "ssh_only" } }])),
            rule("udp_checks", 3, serde_json::json!([udp_dport("==", 4789.into()), { "goto": { "target": "vxlan" } }])),
            rule("vxlan", 4, serde_json::json!([{ "drop": null }])),
            rule("ssh_only", 5, serde_json::json!([{ "drop": null }])),
            rule("orphan", 6, serde_json::json!([udp_dport("==", 4789.into()), { "drop": null }])),
        ]});
        let (drops, count) = firewall_drops(&ruleset, 4789, &texts);
        assert_eq!(count, 6);
        let chains: Vec<(&str, HookSide, bool)> = drops.iter().map(|d| (d.chain.as_str(), d.side, d.conditional)).collect();
        assert_eq!(chains, [("inet filter vxlan", HookSide::Receive, false)], "expected only the drop behind input -> udp_checks -> vxlan, found {drops:?}");
    }

    #[test]
    fn rule_texts_are_keyed_by_chain_and_handle() {
        let text = "table inet filter { # handle 7\n\tchain input { # handle 1\n\t\ttype filter hook input priority filter; policy accept;\n\t\tudp dport 4789 drop # handle 2\n\t}\n}\n";
        let texts = rule_texts(text);
        assert_eq!(texts.get(&("inet".into(), "filter".into(), "input".into(), 2)).map(String::as_str), Some("udp dport 4789 drop"), "{texts:?}");
        assert_eq!(texts.len(), 1, "{texts:?}");
    }
}
