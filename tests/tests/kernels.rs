//! Kernel differences: TC programs attached as netlink filters on a
//! `clsact` qdisc where the kernel has no TCX links (before Linux 6.6),
//! and refused starts that leave nothing pinned.
//!
//! The filter tests force the fallback with `OVERLAY_TC_ATTACH=netlink`,
//! so they test it on a kernel with TCX too; on Linux 6.1 (`cargo xtask
//! vm-test`) the agent picks it by itself.
use std::{
    net::Ipv4Addr,
    process::{Output, Stdio},
    time::Duration,
};

use overlay_lab::{
    lab::{Lab, LabSpec, overlay_binary}, traffic::ping,
    netns::Netns,
    tc_filters,
};

fn two_hosts(scope: &str) -> Lab {
    Lab::build(LabSpec::one_container_each(scope, 2, 0x60)).expect("building the lab")
}

fn bin() -> std::path::PathBuf {
    overlay_binary().expect("overlay binary")
}

fn force_netlink_filters() {
    // SAFETY: set before any thread of this test starts an agent; every test
    // of this file wants the same value.
    unsafe { std::env::set_var("OVERLAY_TC_ATTACH", "netlink") };
}

fn overlay(lab: &Lab, host: &str, args: &[&str]) -> Output {
    lab.overlay_command(host, &bin(), args).expect("overlay command").output().expect("running overlay")
}

/// The BPF filters on `device`'s ingress hook, one line each.
fn bpf_filters(netns: &Netns, device: &str) -> Vec<String> {
    tc_filters::ingress_bpf_filters(netns.command("tc"), device).expect("tc filter show")
}

/// The program id in a filter line.
fn program_id(line: &str) -> u64 {
    tc_filters::program_id(line).unwrap_or_else(|| panic!("no program id in {line:?}"))
}

/// A ping flood in the background: 3000 at 5 ms, long enough to span a kill -9 and a restart.
fn flood(from: &Netns, to: Ipv4Addr) -> std::process::Child {
    from.command("ping")
        .args(["-q", "-i", "0.005", "-c", "3000", "-W", "2", &to.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting ping")
}

/// Netlink filters: one per hook, its program replaced in place when a new
/// agent adopts the datapath after kill -9 (no packet lost, no second
/// filter beside it), reported by `overlay status`, and removed by
/// `overlay down`.
#[test]
fn netlink_filters_are_replaced_in_place_and_removed_by_down() {
    force_netlink_filters();
    let mut lab = two_hosts("krnfilter");
    lab.start_agents(&bin()).expect("starting agents");
    let (a, b) = (&lab.container("h1", "c").netns, lab.container("h2", "c").spec.ip);
    assert_eq!(ping(a, b, 2).unwrap().1, 2, "no path with the agents running");
    let h1 = &lab.host("h1").netns;
    let (underlay, port) = (lab.host("h1").underlay.clone(), lab.container("h1", "c").port.clone());
    let before: Vec<Vec<String>> = [&underlay, &port].iter().map(|device| bpf_filters(h1, device)).collect();
    for (device, filters) in [&underlay, &port].iter().zip(&before) {
        assert_eq!(filters.len(), 1, "expected one BPF filter on {device}'s ingress, found {filters:?}");
    }
    let status = overlay(&lab, "h1", &["status", "--node", "h1"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("netlink clsact filters"), "overlay status should say how TC programs are attached:\n{text}");
    let config = lab.host("h1").config_path.clone().unwrap();
    let doctor = overlay(&lab, "h1", &["doctor", "--json", "--probe-timeout", "1.5", "--config", config.to_str().unwrap()]);
    let report = String::from_utf8_lossy(&doctor.stdout);
    let tcx: Vec<serde_json::Value> =
        report.lines().filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok()).filter(|f| f["check"] == "kernel-tcx").collect();
    assert!(
        tcx.len() == 1 && tcx[0]["status"] == "warn" && tcx[0]["what"].as_str().is_some_and(|w| w.contains("netlink filters")),
        "overlay doctor's kernel-tcx should be a warning naming the netlink filter fallback, got {tcx:?}\n{report}"
    );

    let ping_flood = flood(a, b);
    std::thread::sleep(Duration::from_secs(1));
    lab.agents[0].kill();
    let restarted = lab.start_agent(0, &bin()).expect("restarting the agent");
    assert!(restarted.log().contains("adopting the datapath"), "the restarted agent should adopt the datapath:\n{}", restarted.log());
    lab.agents[0] = restarted;
    let output = ping_flood.wait_with_output().expect("waiting for ping");
    let summary = String::from_utf8_lossy(&output.stdout);
    assert!(summary.contains("3000 packets transmitted, 3000 received"), "expected every echo answered across kill -9 and restart:\n{summary}");

    let h1 = &lab.host("h1").netns;
    for (device, earlier) in [&underlay, &port].iter().zip(&before) {
        let now = bpf_filters(h1, device);
        assert_eq!(now.len(), 1, "after the restart {device} should still have one BPF filter (replaced in place), found {now:?}");
        assert_ne!(program_id(&now[0]), program_id(&earlier[0]), "the restarted agent should have put its own program in the filter on {device}: {now:?}");
    }

    lab.agents[0].kill();
    let down = overlay(&lab, "h1", &["down", "--node", "h1"]);
    assert!(down.status.success(), "overlay down: {}", String::from_utf8_lossy(&down.stderr));
    for device in [&underlay, &port] {
        let left = bpf_filters(&lab.host("h1").netns, device);
        assert!(left.is_empty(), "overlay down should remove our filter from {device}, found {left:?}");
    }
    assert!(!lab.bpffs_dir().join("h1").exists(), "overlay down should remove the node's pins");
}

/// A start refused after the datapath was loaded (XDP offload on a veth)
/// leaves nothing behind: no maps pinned for the next start to adopt, no
/// filter on any device; the next start loads afresh.
#[test]
fn a_refused_start_leaves_no_pins_and_no_filters() {
    force_netlink_filters();
    let mut lab = two_hosts("krnrefused");
    lab.mount_bpffs().expect("mounting the lab's bpffs");
    let config = lab.host("h1").config_path.clone().unwrap();
    let output = lab
        .overlay_command("h1", &bin(), &["run", "--config", config.to_str().unwrap(), "--xdp-mode", "offload"])
        .expect("overlay command")
        .output()
        .expect("running overlay");
    assert!(!output.status.success(), "XDP offload on a veth must be refused: {}", String::from_utf8_lossy(&output.stderr));
    let pins = lab.bpffs_dir().join("h1");
    assert!(!pins.exists(), "a refused start must leave no pins, found {:?}", std::fs::read_dir(&pins).map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>()));
    let h1 = &lab.host("h1").netns;
    for device in [lab.host("h1").underlay.as_str(), lab.container("h1", "c").port.as_str()] {
        let left = bpf_filters(h1, device);
        assert!(left.is_empty(), "a refused start must leave no filter on {device}, found {left:?}");
    }
    lab.start_agents(&bin()).expect("starting agents");
    assert!(!lab.agents[0].log().contains("adopting"), "the next start must load afresh, not adopt:\n{}", lab.agents[0].log());
    assert_eq!(ping(&lab.container("h1", "c").netns, lab.container("h2", "c").spec.ip, 2).unwrap().1, 2, "no path after the refused start");
}
