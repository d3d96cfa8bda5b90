//! Cluster mode end to end: three (then four) overlay hosts whose files
//! hold only their node settings, and one real etcd on the lab's underlay
//! (inside the wire namespace). Networks and endpoints are created through
//! each node's local API; everything else is learned from etcd.
use std::{
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant},
};

use overlay::api::client::{self, Method};
use overlay_lab::{
    etcd::{self, EtcdCluster},
    lab::{ContainerSpec, HostKind, HostSpec, Lab, LabSpec, format_mac, overlay_binary, ping},
};
use serde_json::{Value, json};

/// etcd's address on the lab's underlay bridge.
const ETCD_ADDRESS: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);

fn container_ip(host: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 10, 0, host as u8 + 1)
}

/// `hosts` overlay hosts with one container each; each file keeps only its `[node]` table.
fn lab(scope: &str, hosts: usize) -> Lab {
    let host = |i: usize| HostSpec {
        name: format!("h{}", i + 1),
        kind: HostKind::Overlay,
        containers: vec![ContainerSpec { name: "c".into(), mac: [2, 0, 0, 0, 0x71, i as u8 + 1], ip: container_ip(i), vni: 100 }],
    };
    let lab = Lab::build(LabSpec { scope: scope.into(), vxlan_port: 4789, hosts: (0..hosts).map(host).collect() }).expect("building the lab");
    for host in &lab.hosts {
        let path = host.config_path.clone().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let end = text.find("[[").unwrap_or(text.len());
        std::fs::write(&path, &text[..end]).unwrap();
    }
    let bridge = format!("br{:x}", std::process::id());
    lab.wire.ip(&["addr", "add", &format!("{ETCD_ADDRESS}/24"), "dev", &bridge]).expect("addressing the underlay bridge");
    lab
}

fn socket(lab: &Lab, node: &str) -> PathBuf {
    lab.dir.join("run").join(format!("{node}.sock"))
}

fn call(lab: &Lab, node: &str, method: Method, path: &str, body: Option<Value>) -> Value {
    match client::call_blocking(&socket(lab, node), method, path, body.clone()) {
        Ok(answer) => serde_json::from_slice(&answer.body).unwrap_or(Value::Null),
        Err(error) => panic!("{node}: {path} {body:?}: expected success, got {error}\n{}", lab.agent_logs()),
    }
}

fn add_endpoint(lab: &Lab, index: usize) {
    let host = &lab.hosts[index];
    let container = &host.containers[0];
    let body = json!({"network": "blue", "interface": container.port, "mac": format_mac(&container.spec.mac), "ipv4": container.spec.ip.to_string()});
    call(lab, &host.spec.name, Method::POST, "/v1/endpoints", Some(body));
}

/// Waits (generously) until `condition` holds; panics with `what` and the logs.
fn wait_for(lab: &Lab, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition() {
        if Instant::now() > deadline {
            panic!("{what}: not after 60 s\n{}", lab.agent_logs());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn peers(lab: &Lab, node: &str) -> Vec<String> {
    let answer = call(lab, node, Method::GET, "/v1/peers", None);
    answer.as_array().into_iter().flatten().filter_map(|peer| peer["name"].as_str().map(str::to_owned)).collect()
}

fn reaches(lab: &Lab, from: usize, to: usize) -> bool {
    let from = &lab.hosts[from].containers[0].netns;
    ping(from, container_ip(to), 1).is_ok_and(|(_, received)| received == 1)
}

fn start(lab: &mut Lab, etcd: &EtcdCluster, index: usize, ttl: &str) {
    let url = etcd.client_url(0);
    let agent = lab
        .start_agent_with_args(index, &overlay_binary().unwrap(), &["--etcd", &url, "--etcd-lease-ttl", ttl])
        .unwrap_or_else(|error| panic!("starting the agent on host {index}: {error:#}\n{}", lab.agent_logs()));
    lab.agents.push(agent);
}

#[test]
fn mesh_is_learned_from_etcd_and_a_killed_node_goes_after_its_ttl() {
    if let Some(why) = etcd::missing() {
        println!("skipped: {why}");
        return;
    }
    let mut lab = lab("clumesh", 4);
    let etcd = EtcdCluster::start_in_netns("clumesh", lab.wire.name(), ETCD_ADDRESS).expect("starting etcd on the underlay");
    for index in 0..3 {
        start(&mut lab, &etcd, index, "2");
    }
    call(&lab, "h1", Method::POST, "/v1/networks", Some(json!({"name": "blue", "vni": 100, "subnet": "10.10.0.0/24"})));
    for index in 0..3 {
        add_endpoint(&lab, index);
    }
    for from in 0..3 {
        for to in (0..3).filter(|to| *to != from) {
            wait_for(&lab, &format!("container of h{} reaching h{}'s", from + 1, to + 1), || reaches(&lab, from, to));
        }
    }
    // A fourth node joins: every other reaches it, it reaches every other.
    start(&mut lab, &etcd, 3, "2");
    add_endpoint(&lab, 3);
    for other in 0..3 {
        wait_for(&lab, &format!("h4 reaching h{}", other + 1), || reaches(&lab, 3, other));
        wait_for(&lab, &format!("h{} reaching h4", other + 1), || reaches(&lab, other, 3));
    }
    // h3 dies without a word: after its lease's TTL it is gone from h1's peers.
    assert!(peers(&lab, "h1").contains(&"h3".to_owned()), "h1's peers before the kill: {:?}", peers(&lab, "h1"));
    let h3 = lab.agents.iter_mut().find(|agent| agent.host == "h3").unwrap();
    h3.kill();
    wait_for(&lab, "h3 gone from h1's peers after its TTL", || !peers(&lab, "h1").contains(&"h3".to_owned()));
    assert!(reaches(&lab, 0, 1), "h1 must still reach h2 after h3 went\n{}", lab.agent_logs());
    // The registry as `overlay cluster status` shows it: h1, h2, h4 and blue with their three endpoints.
    let output = lab.hosts[0]
        .netns
        .command(overlay_binary().unwrap().to_str().unwrap())
        .args(["cluster", "status", "--etcd", &etcd.client_url(0)])
        .output()
        .expect("running overlay cluster status");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "overlay cluster status failed: {}", String::from_utf8_lossy(&output.stderr));
    for expected in ["3 node(s), 1 network(s)", "node h1: VTEP 192.0.2.1:4789", "node h4:", "network blue (VNI 100, 10.10.0.0/24): 3 endpoint(s)"] {
        assert!(text.contains(expected), "expected {expected:?} in overlay cluster status, got:\n{text}");
    }
}

#[test]
fn etcd_outage_loses_no_packet_and_changes_made_meanwhile_arrive() {
    if let Some(why) = etcd::missing() {
        println!("skipped: {why}");
        return;
    }
    let mut lab = lab("cluoutage", 3);
    let mut etcd = EtcdCluster::start_in_netns("cluoutage", lab.wire.name(), ETCD_ADDRESS).expect("starting etcd on the underlay");
    for index in 0..3 {
        start(&mut lab, &etcd, index, "10");
    }
    call(&lab, "h1", Method::POST, "/v1/networks", Some(json!({"name": "blue", "vni": 100, "subnet": "10.10.0.0/24"})));
    add_endpoint(&lab, 0);
    add_endpoint(&lab, 1);
    wait_for(&lab, "h1 reaching h2", || reaches(&lab, 0, 1));
    // A flood of pings (every 10 ms, 15 s) from h1 to h2 while etcd is down for ~10 s.
    let flood = lab.hosts[0].containers[0]
        .netns
        .command("ping")
        .args(["-q", "-i", "0.01", "-c", "1500", "-W", "1", &container_ip(1).to_string()])
        .output();
    let flood = std::thread::spawn(move || flood);
    std::thread::sleep(Duration::from_secs(2));
    etcd.kill(0);
    // Meanwhile h3's container is added: applied on h3, published when etcd returns.
    add_endpoint(&lab, 2);
    std::thread::sleep(Duration::from_secs(8));
    etcd.restart(0).expect("restarting etcd");
    etcd.wait_healthy(0).expect("etcd healthy again");
    let output = flood.join().unwrap().expect("running ping");
    let summary = String::from_utf8_lossy(&output.stdout);
    assert!(summary.contains("1500 packets transmitted, 1500 received"), "expected no loss while etcd was down, got:\n{summary}\n{}", lab.agent_logs());
    wait_for(&lab, "h1 reaching h3's container added while etcd was down", || reaches(&lab, 0, 2));
    wait_for(&lab, "h3 reaching h2", || reaches(&lab, 2, 1));
}
