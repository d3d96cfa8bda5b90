//! `overlay doctor`: a healthy two-host lab passes every check; each
//! breakage made on purpose is named with its status, and failures make
//! the exit status non-zero.
use std::{net::Ipv4Addr, path::Path, process::Output};

use overlay_lab::lab::{ContainerSpec, HostKind, HostSpec, Lab, LabSpec, overlay_binary};

/// Two overlay hosts, one container each in VNI 100; agents started with `args`.
fn two_hosts(scope: &str, args: &[&str]) -> Lab {
    let mut lab = Lab::build(LabSpec::one_container_each(scope, 2, 0x70)).expect("building the lab");
    lab.start_agents_with_args(&overlay_binary().unwrap(), args).expect("starting agents");
    lab
}

/// What `overlay doctor` printed and how it exited.
struct Report {
    findings: Vec<serde_json::Value>,
    success: bool,
    text: String,
}

impl Report {
    /// The findings of `check`.
    fn of(&self, check: &str) -> Vec<&serde_json::Value> {
        self.findings.iter().filter(|f| f["check"] == check).collect()
    }

    /// The one finding of `check` with `status`, whose text contains `words`.
    fn expect(&self, check: &str, status: &str, words: &str) -> &serde_json::Value {
        let found: Vec<_> = self.of(check).into_iter().filter(|f| f["status"] == status && f["what"].as_str().unwrap().contains(words)).collect();
        assert!(found.len() == 1, "expected one {status} {check} finding mentioning {words:?}, got:\n{}", self.text);
        assert!(status == "ok" || status == "skip" || !found[0]["fix"].as_str().unwrap().is_empty(), "a {status} finding without a fix: {}", found[0]);
        found[0]
    }
}

/// `overlay doctor --json` for host `host`'s configuration at `config`, run in its namespace.
fn doctor_with(lab: &Lab, host: &str, config: &Path) -> Report {
    let output: Output = lab
        .host(host)
        .netns
        .command(overlay_binary().unwrap().to_str().unwrap())
        .args(["doctor", "--json", "--probe-timeout", "1.5", "--config"])
        .arg(config)
        .arg("--bpffs-dir")
        .arg(lab.bpffs_dir())
        .arg("--run-dir")
        .arg(lab.dir.join("run"))
        .output()
        .expect("running overlay doctor");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let findings = text.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))).collect();
    let text = format!("{text}{}", String::from_utf8_lossy(&output.stderr));
    Report { findings, success: output.status.success(), text }
}

fn doctor(lab: &Lab, host: &str) -> Report {
    doctor_with(lab, host, lab.host(host).config_path.as_ref().unwrap())
}

/// Every check of a healthy node passes (or is skipped with a reason) and
/// the peer answers the probe.
#[test]
fn healthy_node_passes() {
    let lab = two_hosts("docok", &[]);
    let report = doctor(&lab, "h1");
    assert!(report.success, "doctor failed on a healthy node:\n{}", report.text);
    // A kernel without TCX links (before 6.6) is a warning naming the fallback, not a fault of the node.
    let no_tcx = |f: &serde_json::Value| f["check"] == "kernel-tcx" && f["status"] == "warn" && f["what"].as_str().is_some_and(|m| m.contains("netlink filters"));
    let bad: Vec<_> = report.findings.iter().filter(|f| (f["status"] == "fail" || f["status"] == "warn") && !no_tcx(f)).collect();
    assert!(bad.is_empty(), "a healthy node has no warnings or failures, got {bad:?}");
    report.expect("peer", "ok", "h2 (192.0.2.2): answered");
    for check in ["config", "kernel-bpf", "bpffs", "underlay", "ports", "vtep-address", "mtu", "datapath", "xdp-mode", "forwarding", "offloads"] {
        assert_eq!(report.of(check).first().map(|f| f["status"].clone()), Some("ok".into()), "check {check}:\n{}", report.text);
    }
    eprintln!("{}", report.text);
}

/// A peer whose underlay is down does not answer: a named failure.
#[test]
fn unreachable_peer_fails() {
    let lab = two_hosts("docpeer", &[]);
    let h2 = lab.host("h2");
    h2.netns.ip(&["link", "set", &h2.underlay, "down"]).unwrap();
    let report = doctor(&lab, "h1");
    assert!(!report.success, "doctor passed with a peer down:\n{}", report.text);
    report.expect("peer", "fail", "h2 (192.0.2.2): no answer");
}

/// A configuration pointing at a VTEP nobody has (a typo in the peer's
/// address) gets no answer either, and doctor says the agent runs another file.
#[test]
fn wrong_peer_vtep_fails() {
    let lab = two_hosts("docvtep", &[]);
    let original = lab.host("h1").config_path.clone().unwrap();
    let wrong = lab.dir.join("h1-wrong-vtep.toml");
    std::fs::write(&wrong, std::fs::read_to_string(&original).unwrap().replace("\"192.0.2.2\"", "\"192.0.2.9\"")).unwrap();
    let report = doctor_with(&lab, "h1", &wrong);
    assert!(!report.success, "doctor passed with a wrong peer VTEP:\n{}", report.text);
    report.expect("peer", "fail", "h2 (192.0.2.9): no answer");
    report.expect("datapath", "warn", "not what is applied");
}

/// Duplicates the validator refuses are findings, named by kind, with the
/// field and value; doctor does not stop at the first.
#[test]
fn duplicates_in_the_config_are_named() {
    let lab = Lab::build(LabSpec {
        scope: "docdup".into(),
        vxlan_port: 4789,
        hosts: vec![HostSpec {
            name: "h1".into(),
            kind: HostKind::Overlay,
            containers: vec![ContainerSpec { name: "c".into(), mac: [2, 0, 0, 0, 0x70, 1], ip: Ipv4Addr::new(10, 10, 0, 1), vni: 100 }],
        }],
    })
    .expect("building the lab");
    let good = std::fs::read_to_string(lab.host("h1").config_path.as_ref().unwrap()).unwrap();
    let peer = |name: &str, vtep: &str, mac: &str, ip: &str| {
        format!("[[peers]]\nname = \"{name}\"\nvtep_address = \"{vtep}\"\n  [[peers.endpoints]]\n  mac = \"{mac}\"\n  ip = \"{ip}\"\n  vni = 100\n")
    };
    let cases = [
        ("duplicate-ip", peer("h2", "192.0.2.2", "02:00:00:00:70:02", "10.10.0.1"), "peers[0].endpoints[0].ip = \"10.10.0.1\""),
        ("duplicate-mac", peer("h2", "192.0.2.2", "02:00:00:00:70:01", "10.10.0.2"), "peers[0].endpoints[0].mac = \"02:00:00:00:70:01\""),
        (
            "duplicate-peer-name",
            peer("h2", "192.0.2.2", "02:00:00:00:70:02", "10.10.0.2") + &peer("h2", "192.0.2.3", "02:00:00:00:70:03", "10.10.0.3"),
            "peers[1].name = \"h2\"",
        ),
        (
            "duplicate-peer-vtep",
            peer("h2", "192.0.2.2", "02:00:00:00:70:02", "10.10.0.2") + &peer("h3", "192.0.2.2", "02:00:00:00:70:03", "10.10.0.3"),
            "peers[1].vtep_address = \"192.0.2.2\"",
        ),
    ];
    for (check, peers, field) in cases {
        let path = lab.dir.join(format!("{check}.toml"));
        std::fs::write(&path, format!("{good}\n{peers}")).unwrap();
        let report = doctor_with(&lab, "h1", &path);
        assert!(!report.success, "doctor passed a config with {check}:\n{}", report.text);
        report.expect(check, "fail", field);
        report.expect("node", "skip", "need a valid configuration");
    }
}

/// XDP in generic mode works but is named as a warning; the exit status stays 0.
#[test]
fn generic_xdp_is_a_warning() {
    let lab = two_hosts("docxdp", &["--xdp-mode", "generic"]);
    let report = doctor(&lab, "h1");
    assert!(report.success, "generic XDP alone should not fail doctor:\n{}", report.text);
    report.expect("xdp-mode", "warn", "generic (skb) mode");
    report.expect("peer", "ok", "answered");
}

/// An nftables rule dropping UDP 4789 in input: named, with what it does
/// and does not break (the datapath is ahead of netfilter, so the peer
/// still answers). The same rule in output breaks doctor's own probe, and
/// the finding says so.
#[test]
fn firewall_rules_on_the_vxlan_port_are_named() {
    let lab = two_hosts("docnft", &[]);
    let h1 = &lab.host("h1").netns;
    let nft = |args: &[&str]| h1.exec("nft", args).unwrap_or_else(|e| panic!("nft {args:?}: {e:#}"));
    nft(&["add", "table", "inet", "doctortest"]);
    nft(&["add", "chain", "inet", "doctortest", "input", "{ type filter hook input priority 0; policy accept; }"]);
    nft(&["add", "rule", "inet", "doctortest", "input", "udp", "dport", "4789", "drop"]);
    let report = doctor(&lab, "h1");
    assert!(report.success, "an input rule does not break the datapath; doctor should not fail:\n{}", report.text);
    let finding = report.expect("firewall", "warn", "inet doctortest input `udp dport 4789 drop` drops UDP to port 4789 arriving");
    assert!(finding["fix"].as_str().unwrap().contains("nft delete rule inet doctortest input handle"), "{finding}");
    report.expect("peer", "ok", "answered");

    // The same drop in a regular chain the input chain jumps to.
    nft(&["flush", "chain", "inet", "doctortest", "input"]);
    nft(&["add", "chain", "inet", "doctortest", "vxlan_checks"]);
    nft(&["add", "rule", "inet", "doctortest", "vxlan_checks", "udp", "dport", "4789", "drop"]);
    nft(&["add", "rule", "inet", "doctortest", "input", "jump", "vxlan_checks"]);
    let report = doctor(&lab, "h1");
    report.expect("firewall", "warn", "inet doctortest vxlan_checks `udp dport 4789 drop` drops UDP to port 4789 arriving");
    nft(&["flush", "chain", "inet", "doctortest", "input"]);
    nft(&["flush", "chain", "inet", "doctortest", "vxlan_checks"]);

    nft(&["add", "chain", "inet", "doctortest", "output", "{ type filter hook output priority 0; policy accept; }"]);
    nft(&["add", "rule", "inet", "doctortest", "output", "udp", "dport", "4789", "drop"]);
    let report = doctor(&lab, "h1");
    report.expect("firewall", "warn", "doctor's own reachability probe");
    report.expect("peer", "fail", "no answer");
}

/// An underlay MTU that leaves the overlay less than IPv6's 1280 fails.
#[test]
fn small_underlay_mtu_fails() {
    let lab = two_hosts("docmtu", &[]);
    let h1 = lab.host("h1");
    h1.netns.ip(&["link", "set", &h1.underlay, "mtu", "1300"]).unwrap();
    let report = doctor(&lab, "h1");
    assert!(!report.success, "doctor passed an underlay MTU of 1300:\n{}", report.text);
    report.expect("mtu", "fail", "MTU 1300 leaves an overlay MTU of 1250");
}

/// Forwarding turned off on the underlay under a running datapath fails.
#[test]
fn forwarding_off_fails() {
    let lab = two_hosts("docfwd", &[]);
    let h1 = lab.host("h1");
    h1.netns.sysctl(&format!("net.ipv4.conf.{}.forwarding", h1.underlay), "0").unwrap();
    let report = doctor(&lab, "h1");
    assert!(!report.success, "doctor passed with forwarding off:\n{}", report.text);
    report.expect("forwarding", "fail", "IPv4 forwarding is off");
}

/// A veth underlay that leaves checksums to the device is a warning.
#[test]
fn veth_checksum_offload_is_a_warning() {
    let lab = two_hosts("docofl", &[]);
    let h1 = lab.host("h1");
    h1.netns.exec("ethtool", &["-K", &h1.underlay, "tx", "on"]).unwrap();
    let report = doctor(&lab, "h1");
    assert!(report.success, "an offload warning alone should not fail doctor:\n{}", report.text);
    report.expect("offloads", "warn", "tx-checksumming on");
}

/// With no agent and nothing pinned, the node is reported down and the
/// peers are skipped, not failed.
#[test]
fn stopped_node_fails_and_peers_are_skipped() {
    let mut lab = two_hosts("docstop", &[]);
    lab.stop_agents();
    let report = doctor(&lab, "h1");
    assert!(!report.success, "doctor passed a node whose agent is stopped:\n{}", report.text);
    report.expect("datapath", "fail", "no running agent and no pinned datapath");
    report.expect("peer", "skip", "datapath of this node is not running");
}
