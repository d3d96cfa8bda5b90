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
//! - **kernel**: TCX links (probed; without them TC attaches as netlink
//!   filters), managed neighbour entries (5.16), every helper and map type the programs use (probed), BTF, that the `bpf(2)` syscall works (an array map is created
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
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};


use crate::{
    config::{Config, ConfigError, Problem},
    model::ProblemKind,
    netdev,
    pinning::PinDir,
    status::NodeStatus,
};

mod firewall;
mod host;
mod peers;

pub use host::kernel_release;
pub use peers::probe_datagram;
use firewall::firewall_findings;
use host::{bpffs_finding, forwarding_finding, interfaces_finding, kernel_findings, mtu_finding, offload_findings, vtep_finding};
use peers::peer_findings;

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
    Finding::fail(check, format!("{}: {}", path.display(), problem.for_file()), fix)
}

/// The kind of a validation problem, and its fix: a duplicate by the
/// field it is in, anything else `config`.
fn classify_problem(problem: &Problem) -> (&'static str, &'static str) {
    let peer = problem.subject.key.starts_with("peers[") && !problem.subject.key.contains(".endpoints[");
    match (problem.kind, problem.field.as_str()) {
        (ProblemKind::Duplicate, "ip" | "ipv6") => {
            ("duplicate-ip", "two endpoints of one VNI cannot share an IP address: give one of them another address, or put it in another VNI")
        }
        (ProblemKind::Duplicate, "mac") => {
            ("duplicate-mac", "two endpoints of one VNI cannot share a MAC address: give one of them another MAC (the container's and the file's must agree)")
        }
        (ProblemKind::Duplicate, "name") if peer => {
            ("duplicate-peer-name", "peer names must be unique: rename one, or merge the two entries if they are one node")
        }
        (ProblemKind::Duplicate, "vtep_address") if peer => {
            ("duplicate-peer-vtep", "one VTEP address is one node: merge the two peer entries, or correct the address of one")
        }
        _ => ("config", "correct the field as the message says (`overlay validate --config FILE` rechecks)"),
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
                findings.push(metrics_finding(status.metrics_addr));
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
}

/// Where the running agent serves metrics: off or loopback is fine; any
/// other address exposes the node's layout to whoever reaches it.
pub fn metrics_finding(address: Option<std::net::SocketAddr>) -> Finding {
    match address {
        None => Finding::ok("metrics", "metrics are off (the agent runs without --metrics-addr)"),
        Some(address) if address.ip().is_loopback() => Finding::ok("metrics", format!("metrics are served on {address}, this host only")),
        Some(address) => Finding::warn(
            "metrics",
            crate::metrics::exposure_warning(address),
            format!("serve them on loopback (--metrics-addr 127.0.0.1:{}) and scrape locally, or allow only the scraper to port {} in the firewall", address.port(), address.port()),
        ),
    }
}
