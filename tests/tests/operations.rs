//! Operating the agent: restarts and reloads that lose no traffic, a
//! datapath that outlives its agent, and the counters another process reads.
use std::{
    net::Ipv4Addr,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use overlay_lab::{
    lab::{Lab, LabSpec, overlay_binary}, traffic::ping,
    netns::Netns,
};

/// The bar: at least 5,000 packets at 2 ms intervals.
const FLOOD_PACKETS: u32 = 5000;

fn two_hosts(scope: &str) -> Lab {
    Lab::build(LabSpec::one_container_each(scope, 2, 0x50)).expect("building the lab")
}

fn bin() -> std::path::PathBuf {
    overlay_binary().expect("overlay binary")
}

/// A ping flood running in the background: FLOOD_PACKETS at 2 ms.
struct Flood {
    child: Child,
}

impl Flood {
    fn start(from: &Netns, to: Ipv4Addr) -> Flood {
        let child = from
            .command("ping")
            .args(["-q", "-i", "0.002", "-c", &FLOOD_PACKETS.to_string(), "-W", "2", &to.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting ping");
        Flood { child }
    }

    /// Waits for the flood to end; returns (transmitted, received).
    fn finish(self) -> (u32, u32) {
        let output = self.child.wait_with_output().expect("waiting for ping");
        let text = String::from_utf8_lossy(&output.stdout);
        let line = text.lines().find(|l| l.contains("packets transmitted")).unwrap_or_else(|| panic!("no ping summary in:\n{text}"));
        let mut numbers = line.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).map(|n| n.parse::<u32>().unwrap());
        (numbers.next().unwrap(), numbers.next().unwrap())
    }
}

fn assert_no_loss(flood: Flood, what: &str, lab: &Lab) {
    let (sent, received) = flood.finish();
    assert_eq!(
        (sent, received),
        (FLOOD_PACKETS, FLOOD_PACKETS),
        "{what}: expected all {FLOOD_PACKETS} echo replies, got {received} of {sent}\n{}",
        lab.agents.iter().map(|a| format!("--- {}:\n{}", a.host, a.log())).collect::<Vec<_>>().join("\n")
    );
}

fn overlay(lab: &Lab, host: &str, args: &[&str]) -> std::process::Output {
    lab.overlay_command(host, &bin(), args).expect("overlay command").output().expect("running overlay")
}

/// Packets a counters JSON (from `overlay stats --json`) holds for a row.
fn json_packets(json: &str, direction: &str, reason: &str) -> u64 {
    let value: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("stats --json is not JSON ({e}): {json}"));
    value["counters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["direction"] == direction && row["reason"] == reason)
        .map_or(0, |row| row["packets"].as_u64().unwrap())
}

/// kill -9 of an agent in the middle of a ping flood, and a restart that
/// adopts the pinned datapath: not one packet is lost, and the counters,
/// which live in pinned maps, account for every packet sent.
#[test]
fn kill_and_restart_of_the_agent_loses_no_packets() {
    let mut lab = two_hosts("restart");
    lab.start_agents(&bin()).expect("starting agents");
    let (a, b) = (&lab.container("h1", "c").netns, lab.container("h2", "c").spec.ip);
    assert_eq!(ping(a, b, 1).unwrap().1, 1, "no path before the flood");

    let flood = Flood::start(a, b);
    std::thread::sleep(Duration::from_secs(2));
    lab.agents[0].kill();
    // No agent on h1 for a while: the pinned datapath forwards alone.
    std::thread::sleep(Duration::from_secs(2));
    let restarted = lab.start_agent(0, &bin()).expect("restarting the agent");
    assert!(restarted.log().contains("adopting the datapath"), "the restarted agent should adopt the pinned datapath:\n{}", restarted.log());
    lab.agents[0] = restarted;
    assert_no_loss(flood, "kill -9 and restart", &lab);

    let stats = overlay(&lab, "h1", &["stats", "--node", "h1", "--json"]);
    let json = String::from_utf8_lossy(&stats.stdout);
    assert!(stats.status.success(), "overlay stats failed: {}", String::from_utf8_lossy(&stats.stderr));
    let requests = json_packets(&json, "from-endpoint", "forwarded");
    let replies = json_packets(&json, "from-underlay", "forwarded");
    assert!(
        requests >= FLOOD_PACKETS as u64 && replies >= FLOOD_PACKETS as u64,
        "counters across the restart should account for all {FLOOD_PACKETS} requests and replies, have {requests} and {replies}: {json}"
    );
    // The restarted agent read the VNI's and the peer's counter slots back
    // from the pinned tables: their counts went on, nothing was zeroed.
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    for (list, key, name) in [("vnis", "vni", serde_json::json!(100)), ("peers", "peer", serde_json::json!("192.0.2.2"))] {
        let rows = value[list].as_array().and_then(|entries| entries.iter().find(|entry| entry[key] == name)).map(|entry| entry["counters"].to_string());
        let rows = rows.unwrap_or_else(|| panic!("{key} {name} is not listed: {json}"));
        let counts = |direction: &str| json_packets(&format!("{{\"counters\":{rows}}}"), direction, "forwarded");
        assert_eq!(
            (counts("from-endpoint"), counts("from-underlay")),
            (requests, replies),
            "{key} {name} should count every forwarded packet across the restart, as the node does: {json}"
        );
    }
}

/// An upgrade that changes the decapsulation hook: h1's agent runs XDP,
/// is killed, and a new one adopts its datapath with TC (the default on
/// veth), then the reverse. The new hook is attached before the old one is
/// detached, so the flood loses nothing across either switch.
#[test]
fn switching_the_decap_hook_on_restart_loses_no_packets() {
    let mut lab = two_hosts("switch");
    lab.start_agents_with_args(&bin(), &["--decap", "xdp"]).expect("starting agents");
    let (a, b) = (&lab.container("h1", "c").netns, lab.container("h2", "c").spec.ip);
    assert_eq!(ping(a, b, 1).unwrap().1, 1, "no path before the flood");

    let flood = Flood::start(a, b);
    for (args, hook) in [(&[][..], "decapsulation: TC"), (&["--decap", "xdp"][..], "decapsulation: XDP native")] {
        std::thread::sleep(Duration::from_secs(2));
        lab.agents[0].kill();
        std::thread::sleep(Duration::from_secs(1));
        let restarted = lab.start_agent_with_args(0, &bin(), args).expect("restarting the agent");
        let log = restarted.log();
        assert!(log.contains("adopting the datapath") && log.contains(hook), "the restarted agent should adopt the datapath with {hook:?}:\n{log}");
        lab.agents[0] = restarted;
    }
    assert_no_loss(flood, "kill -9 and restarts switching XDP -> TC -> XDP decapsulation", &lab);
    let status = overlay(&lab, "h1", &["status", "--node", "h1"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("xdp-native-") && !text.contains("tc-decap-"), "after switching back only XDP decapsulation should be attached:\n{text}");
}

/// 50 reloads that add and remove a peer during a ping flood, then a
/// reload with an invalid file: no packet is lost, the bad file changes
/// nothing, and `overlay status` says it was refused.
#[test]
fn reloads_lose_no_packets_and_a_bad_file_changes_nothing() {
    let mut lab = two_hosts("reload");
    lab.start_agents(&bin()).expect("starting agents");
    let (a, b) = (&lab.container("h1", "c").netns, lab.container("h2", "c").spec.ip);
    assert_eq!(ping(a, b, 1).unwrap().1, 1, "no path before the flood");
    let path = lab.host("h1").config_path.clone().unwrap();
    let original = std::fs::read_to_string(&path).unwrap();
    let with_extra_peer = format!(
        "{original}\n[[peers]]\nname = \"extra\"\nvtep_address = \"192.0.2.77\"\n  [[peers.endpoints]]\n  mac = \"02:00:00:00:77:01\"\n  ip = \"10.10.0.77\"\n  vni = 100\n"
    );

    let flood = Flood::start(a, b);
    let started = Instant::now();
    for i in 0..50 {
        std::fs::write(&path, if i % 2 == 0 { &with_extra_peer } else { &original }).unwrap();
        lab.agents[0].signal(libc::SIGHUP);
        std::thread::sleep(Duration::from_millis(120));
    }
    let reloads = lab.agents[0].log().matches("reloaded ").count();
    assert!(reloads >= 50, "expected at least 50 reloads in {:?}, the log shows {reloads}:\n{}", started.elapsed(), lab.agents[0].log());

    std::fs::write(&path, original.replace("02:00:00:00:50:01", "02:00:00:00:50:zz")).unwrap();
    lab.agents[0].signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    let status = overlay(&lab, "h1", &["status", "--node", "h1"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("REFUSED") && text.contains("endpoints[0].mac"), "status should show the refused reload naming the field:\n{text}");
    assert_no_loss(flood, "50 reloads and an invalid file", &lab);
    assert_eq!(ping(a, b, 2).unwrap().1, 2, "traffic after the refused reload");
}

/// With --keep-datapath the datapath forwards while no agent runs;
/// `overlay down` removes it and traffic stops.
#[test]
fn kept_datapath_forwards_without_agent_until_down() {
    let mut lab = two_hosts("keep");
    lab.start_agents_with_args(&bin(), &["--keep-datapath"]).expect("starting agents");
    let b = lab.container("h2", "c").spec.ip;
    assert_eq!(ping(&lab.container("h1", "c").netns, b, 2).unwrap().1, 2, "no path with the agents running");
    let outputs = lab.stop_agents();
    let a = &lab.container("h1", "c").netns;
    assert!(outputs.iter().all(|(_, o)| o.contains("leaving the datapath pinned")), "agents should leave the datapath: {outputs:?}");
    assert_eq!(ping(a, b, 3).unwrap().1, 3, "the pinned datapath should forward with no agent running");
    let status = overlay(&lab, "h1", &["status", "--node", "h1"]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("tc-decap-"), "status should list the pinned attachments");
    for host in ["h1", "h2"] {
        let down = overlay(&lab, host, &["down", "--node", host]);
        assert!(down.status.success(), "overlay down on {host}: {}", String::from_utf8_lossy(&down.stderr));
    }
    let (_, received) = ping(a, b, 2).unwrap();
    assert_eq!(received, 0, "after overlay down nothing may forward, got {received} replies");
}
