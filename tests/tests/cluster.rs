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
    lab::{ContainerSpec, HostKind, HostSpec, Lab, LabSpec, format_mac, overlay_binary}, traffic::ping,
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
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starting ping");
    // An address handed out by h3 before: its block is h3's.
    call(&lab, "h3", Method::POST, "/v1/networks/blue/addresses", Some(json!({"owner": "test:before"})));
    let allocated_before = call(&lab, "h3", Method::GET, "/v1/networks/blue/addresses", None).as_array().map_or(0, Vec::len);
    std::thread::sleep(Duration::from_secs(2));
    etcd.kill(0);
    // Meanwhile h3's container is added: applied on h3, published when etcd returns.
    let added = Instant::now();
    add_endpoint(&lab, 2);
    println!("an API endpoint added while etcd was down took {:?}", added.elapsed());
    // An allocation cannot be made durable: refused (503) within the request
    // timeout, not left hanging, and handed back (no leak).
    let asked = Instant::now();
    let refusal = refused(&lab, "h3", Method::POST, "/v1/networks/blue/addresses", json!({"owner": "test:outage"}));
    println!("an allocation while etcd was down was refused after {:?}: {}", asked.elapsed(), refusal.error);
    assert_eq!(refusal.status, 503, "an allocation etcd cannot store: expected 503, got {refusal:?}");
    std::thread::sleep(Duration::from_secs(2));
    etcd.restart(0).expect("restarting etcd");
    etcd.wait_healthy(0).expect("etcd healthy again");
    let output = flood.wait_with_output().expect("running ping");
    let summary = String::from_utf8_lossy(&output.stdout);
    assert!(summary.contains("1500 packets transmitted, 1500 received"), "expected no loss while etcd was down, got:\n{summary}\n{}", lab.agent_logs());
    // etcd answers its health check before it takes writes at full speed
    // again (under the 6.1 guest's emulation the first write after the
    // restart outlasted the agent's 5 s request timeout): a runtime retries
    // a 503, and so does this, within the lab's (scaled) patience.
    let patience = Instant::now() + overlay_lab::lab::scaled(Duration::from_secs(15));
    loop {
        match client::call_blocking(&socket(&lab, "h3"), Method::POST, "/v1/networks/blue/addresses", Some(json!({"owner": "test:after"}))) {
            Ok(_) => break,
            Err(client::ClientError::Refused(refusal)) if refusal.status == 503 && Instant::now() < patience => std::thread::sleep(Duration::from_millis(500)),
            Err(error) => panic!("h3: an allocation after etcd returned: expected success, got {error}\n{}", lab.agent_logs()),
        }
    }
    let allocated_after = call(&lab, "h3", Method::GET, "/v1/networks/blue/addresses", None).as_array().map_or(0, Vec::len);
    assert_eq!(allocated_after, allocated_before + 1, "the allocation refused during the outage must not stay allocated (before {allocated_before}, after one more {allocated_after})");
    wait_for(&lab, "h1 reaching h3's container added while etcd was down", || reaches(&lab, 0, 2));
    wait_for(&lab, "h3 reaching h2", || reaches(&lab, 2, 1));
    // etcd being down is logged when it starts and when it ends, not at every retry.
    for agent in &lab.agents {
        let mut warnings: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
        for line in agent.log().lines().filter(|line| line.contains(" WARN ")) {
            let message = line.split_once(']').map_or(line, |(_, message)| message).to_owned();
            *warnings.entry(message).or_default() += 1;
        }
        println!("{}: {} warning(s) over the outage: {warnings:#?}", agent.host, warnings.values().sum::<usize>());
        let repeated: Vec<_> = warnings.iter().filter(|(_, count)| **count > 2).collect();
        assert!(repeated.is_empty(), "{}: warnings repeated while etcd was down: {repeated:#?}\n{}", agent.host, agent.log());
    }
}

/// `etcdctl ARGS` against `etcd`, run on the lab's underlay (where etcd listens).
fn etcdctl(lab: &Lab, etcd: &EtcdCluster, args: &[&str]) -> String {
    // etcdctl's own 5 s command timeout, stretched as the lab's are (under
    // emulation a lease revocation outlasted it).
    let timeout = format!("--command-timeout={}s", overlay_lab::lab::scaled(Duration::from_secs(5)).as_secs());
    let output = lab
        .wire
        .command("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(etcd.client_urls().join(","))
        .arg(timeout)
        .args(args)
        .output()
        .expect("running etcdctl");
    assert!(output.status.success(), "etcdctl {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Kills (SIGKILL) the agent of host `index` and starts it again.
fn kill_and_restart(lab: &mut Lab, etcd: &EtcdCluster, index: usize, ttl: &str) {
    let name = lab.hosts[index].spec.name.clone();
    let position = lab.agents.iter().position(|agent| agent.host == name).unwrap();
    lab.agents[position].kill();
    let url = etcd.client_url(0);
    lab.agents[position] = lab
        .start_agent_with_args(index, &overlay_binary().unwrap(), &["--etcd", &url, "--etcd-lease-ttl", ttl])
        .unwrap_or_else(|error| panic!("restarting the agent of {name} (it has API endpoints in a registry network): {error:#}\n{}", lab.agent_logs()));
}

#[test]
fn an_agent_killed_with_api_endpoints_in_registry_networks_restarts_and_keeps_them() {
    if let Some(why) = etcd::missing() {
        println!("skipped: {why}");
        return;
    }
    let mut lab = lab("clrestart", 2);
    let etcd = EtcdCluster::start_in_netns("clrestart", lab.wire.name(), ETCD_ADDRESS).expect("starting etcd on the underlay");
    // A TTL much longer than a restart: the restarted agent finds its lease alive.
    for index in 0..2 {
        start(&mut lab, &etcd, index, "60");
    }
    call(&lab, "h1", Method::POST, "/v1/networks", Some(json!({"name": "blue", "vni": 100, "subnet": "10.10.0.0/24"})));
    add_endpoint(&lab, 0);
    add_endpoint(&lab, 1);
    wait_for(&lab, "h1 reaching h2", || reaches(&lab, 0, 1));

    // kill -9 and restart under a ping flood: the restarted agent starts
    // (its API endpoint's network comes from the registry), takes its lease
    // over, and no packet is lost.
    let flood = lab.hosts[1].containers[0].netns.command("ping").args(["-q", "-i", "0.01", "-c", "1000", "-W", "1", &container_ip(0).to_string()]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    kill_and_restart(&mut lab, &etcd, 0, "60");
    let output = flood.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&output.stdout);
    assert!(summary.contains("1000 packets transmitted, 1000 received"), "expected no loss across kill -9 and restart:\n{summary}\n{}", lab.agent_logs());
    wait_for(&lab, "the restarted h1 taking its registration over", || lab.agents.iter().any(|a| a.host == "h1" && a.log().contains("took over its registration")));
    wait_for(&lab, "h1 reaching h2 after the restart", || reaches(&lab, 0, 1));
    let endpoints = call(&lab, "h1", Method::GET, "/v1/endpoints", None);
    assert!(endpoints.to_string().contains("\"applied\""), "the restarted h1 must carry its API endpoint, applied: {endpoints}");

    // Killed again, and its lease ends meanwhile (revoked by hand: what an
    // expiry does): h2 drops it; restarted, h1 re-creates its records and
    // h2 reaches it again.
    let lease: i64 = std::fs::read_to_string(lab.dir.join("run").join("h1.lease")).expect("h1's lease file").trim().parse().unwrap();
    let position = lab.agents.iter().position(|agent| agent.host == "h1").unwrap();
    lab.agents[position].kill();
    etcdctl(&lab, &etcd, &["lease", "revoke", &format!("{lease:x}")]);
    wait_for(&lab, "h1 gone from h2's peers after its lease ended", || !peers(&lab, "h2").contains(&"h1".to_owned()));
    kill_and_restart(&mut lab, &etcd, 0, "60");
    wait_for(&lab, "h1 back in h2's peers", || peers(&lab, "h2").contains(&"h1".to_owned()));
    wait_for(&lab, "h2 reaching h1's container after h1 re-created its records", || reaches(&lab, 1, 0));
    let records = etcdctl(&lab, &etcd, &["get", "--prefix", "--keys-only", "/overlay/v1/endpoints/blue/"]);
    let mac = format_mac(&lab.hosts[0].containers[0].spec.mac);
    assert!(records.contains(&mac), "h1's endpoint {mac} must be registered again, etcd has:\n{records}");
}

/// The refusal of a call that must be refused.
fn refused(lab: &Lab, node: &str, method: Method, path: &str, body: Value) -> overlay::api::ApiError {
    match client::call_blocking(&socket(lab, node), method, path, Some(body.clone())) {
        Err(client::ClientError::Refused(refusal)) => refusal,
        Ok(answer) => panic!("{node}: {path} {body}: expected a refusal, got {} {}\n{}", answer.status, String::from_utf8_lossy(&answer.body), lab.agent_logs()),
        Err(error) => panic!("{node}: {path} {body}: expected a refusal, got {error}\n{}", lab.agent_logs()),
    }
}

/// `overlay ARGS` on host `node` with the lab's directories; its stdout (and stderr).
fn overlay(lab: &Lab, node: &str, args: &[&str]) -> String {
    let output = lab.overlay_command(node, &overlay_binary().unwrap(), args).unwrap().output().expect("running overlay");
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// The agent's metrics page, fetched inside its host's namespace.
fn metrics(lab: &Lab, node: &str) -> String {
    use std::io::{Read as _, Write as _};
    lab.host(node)
        .netns
        .run_inside(|| {
            let mut stream = std::net::TcpStream::connect(METRICS_ADDR)?;
            stream.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {METRICS_ADDR}\r\n\r\n").as_bytes())?;
            let mut reply = String::new();
            stream.read_to_string(&mut reply)?;
            Ok(reply)
        })
        .unwrap_or_else(|error| panic!("scraping {node}'s metrics: {error:#}"))
}

const METRICS_ADDR: &str = "127.0.0.1:9464";

/// Everything node `node` reports about conflicts: its status, doctor and
/// metrics, with the conflict gauge's value.
fn reports(lab: &Lab, node: &str) -> (String, String, u64) {
    let status = overlay(lab, node, &["status", "--node", node]);
    let config = lab.host(node).config_path.clone().unwrap();
    let doctor = overlay(lab, node, &["doctor", "--probe-timeout", "1", "--config", config.to_str().unwrap()]);
    let page = metrics(lab, node);
    let gauge = page.lines().find_map(|line| line.strip_prefix("overlay_cluster_conflicts ")).and_then(|value| value.trim().parse().ok());
    (status, doctor, gauge.unwrap_or_else(|| panic!("no overlay_cluster_conflicts gauge on {node}:\n{page}")))
}

/// Waits until `node` reports a conflict whose text holds every one of
/// `words` in `overlay status` and `overlay doctor`, and counts it in its metric.
fn wait_reported(lab: &Lab, node: &str, words: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let reported = |text: &str, marker: &str| text.lines().any(|line| line.contains(marker) && words.iter().all(|word| line.contains(word)));
        let (status, doctor, gauge) = reports(lab, node);
        if reported(&status, "cluster conflict") && reported(&doctor, "cluster-conflict") && gauge > 0 {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "{node}: expected a conflict with {words:?} in status, doctor and overlay_cluster_conflicts; after 60 s:\nstatus:\n{status}\ndoctor:\n{doctor}\ngauge {gauge}\n{}",
                lab.agent_logs()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn conflicting_claims_across_nodes_are_refused_and_reported_on_both() {
    if let Some(why) = etcd::missing() {
        println!("skipped: {why}");
        return;
    }
    let mut lab = lab("clconflict", 3);
    let etcd = EtcdCluster::start_in_netns("clconflict", lab.wire.name(), ETCD_ADDRESS).expect("starting etcd on the underlay");
    let url = etcd.client_url(0);
    for index in 0..2 {
        let agent = lab
            .start_agent_with_args(index, &overlay_binary().unwrap(), &["--etcd", &url, "--etcd-lease-ttl", "4", "--metrics-addr", METRICS_ADDR])
            .unwrap_or_else(|error| panic!("starting the agent on host {index}: {error:#}\n{}", lab.agent_logs()));
        lab.agents.push(agent);
    }
    let (status, _, gauge) = reports(&lab, "h1");
    assert_eq!(gauge, 0, "no conflict yet, h1 reports {gauge}:\n{status}");
    call(&lab, "h1", Method::POST, "/v1/networks", Some(json!({"name": "blue", "vni": 100, "subnet": "10.10.0.0/24"})));
    add_endpoint(&lab, 0);
    let h1_mac = format_mac(&lab.hosts[0].containers[0].spec.mac);
    let h2_port = lab.hosts[1].containers[0].port.clone();

    // h2 claims h1's container's MAC: 409 naming h1, nothing applied on h2,
    // h1's record untouched.
    let refusal = refused(&lab, "h2", Method::POST, "/v1/endpoints", json!({"network": "blue", "interface": h2_port, "mac": h1_mac, "ipv4": "10.10.0.50"}));
    assert_eq!(refusal.status, 409, "a MAC held on h1: expected 409, got {refusal:?}");
    assert!(refusal.error.contains(&format!("MAC {h1_mac}")) && refusal.error.contains("on node h1"), "the refusal must name the MAC and its holder h1: {refusal:?}");
    // ... and h1's container's address.
    let refusal = refused(&lab, "h2", Method::POST, "/v1/endpoints", json!({"network": "blue", "interface": h2_port, "mac": "02:00:00:00:71:99", "ipv4": container_ip(0).to_string()}));
    assert_eq!(refusal.status, 409, "an address held on h1: expected 409, got {refusal:?}");
    assert!(refusal.error.contains(&format!("address {}", container_ip(0))) && refusal.error.contains("on node h1"), "the refusal must name the address and its holder h1: {refusal:?}");
    let endpoints = call(&lab, "h2", Method::GET, "/v1/endpoints", None);
    assert_eq!(endpoints.as_array().map(Vec::len), Some(0), "h2 must have applied nothing: {endpoints}");
    let record = etcdctl(&lab, &etcd, &["get", "--print-value-only", &format!("/overlay/v1/endpoints/blue/{h1_mac}")]);
    assert!(record.contains("\"node\":\"h1\"") && record.contains(&format!("\"{}\"", container_ip(0))), "h1's record must be untouched: {record}");
    for node in ["h1", "h2"] {
        wait_reported(&lab, node, &["node h2 was refused mac", &h1_mac, "h1"]);
        wait_reported(&lab, node, &["node h2 was refused address", &container_ip(0).to_string(), "h1"]);
    }
    // h2 still works with its own container.
    add_endpoint(&lab, 1);
    wait_for(&lab, "h2 reaching h1", || reaches(&lab, 1, 0));

    // h3 comes up with h1's VTEP address: its registration is refused (it
    // runs, publishing nothing), h1 keeps its own, and both report it.
    let config = lab.hosts[2].config_path.clone().unwrap();
    let text = std::fs::read_to_string(&config).unwrap().replace(&format!("vtep_address = \"{}\"", lab.hosts[2].vtep), &format!("vtep_address = \"{}\"", lab.hosts[0].vtep));
    std::fs::write(&config, text).unwrap();
    let agent = lab
        .start_agent_with_args(2, &overlay_binary().unwrap(), &["--etcd", &url, "--etcd-lease-ttl", "4", "--metrics-addr", METRICS_ADDR])
        .unwrap_or_else(|error| panic!("starting h3 with h1's VTEP: {error:#}\n{}", lab.agent_logs()));
    lab.agents.push(agent);
    let vtep = lab.hosts[0].vtep.to_string();
    wait_reported(&lab, "h3", &["registration refused", &format!("VTEP {vtep}"), "node h1"]);
    wait_reported(&lab, "h1", &["node h3 was refused vtep", &vtep, "node h1"]);
    let node = etcdctl(&lab, &etcd, &["get", "--print-value-only", "/overlay/v1/nodes/h1"]);
    assert!(node.contains(&format!("\"vtep\":\"{vtep}\"")), "h1's node record must be untouched: {node}");
    let nodes = etcdctl(&lab, &etcd, &["get", "--prefix", "--keys-only", "/overlay/v1/nodes/"]);
    assert!(!nodes.contains("nodes/h3"), "h3 must not be registered: {nodes}");
    // Past h3's TTL its refusal is still recorded (it is tried again at half the TTL).
    std::thread::sleep(Duration::from_secs(6));
    wait_reported(&lab, "h1", &["node h3 was refused vtep", &vtep]);
    assert!(reaches(&lab, 1, 0), "h2 must still reach h1\n{}", lab.agent_logs());
}

/// The index of the member that leads, as the members say.
fn leader(lab: &Lab, etcd: &EtcdCluster) -> usize {
    let text = etcdctl(lab, etcd, &["endpoint", "status", "--write-out", "json"]);
    let statuses: Value = serde_json::from_str(&text).unwrap_or_else(|error| panic!("etcdctl endpoint status: {error}: {text}"));
    let leading = statuses.as_array().into_iter().flatten().find(|status| status["Status"]["leader"] == status["Status"]["header"]["member_id"]);
    let endpoint = leading.and_then(|status| status["Endpoint"].as_str()).unwrap_or_else(|| panic!("no member says it leads: {text}"));
    (0..etcd.size()).find(|index| etcd.client_url(*index) == endpoint).unwrap_or_else(|| panic!("leader {endpoint} is none of {:?}", etcd.client_urls()))
}

#[test]
fn agents_keep_working_when_the_etcd_leader_of_three_members_is_killed() {
    if let Some(why) = etcd::missing() {
        println!("skipped: {why}");
        return;
    }
    let mut lab = lab("clleader", 3);
    let mut etcd = EtcdCluster::start_members_in_netns("clleader", 3, lab.wire.name(), ETCD_ADDRESS).expect("starting three etcd members on the underlay");
    let urls = etcd.client_urls().join(",");
    for index in 0..3 {
        let agent = lab
            .start_agent_with_args(index, &overlay_binary().unwrap(), &["--etcd", &urls, "--etcd-lease-ttl", "4"])
            .unwrap_or_else(|error| panic!("starting the agent on host {index}: {error:#}\n{}", lab.agent_logs()));
        lab.agents.push(agent);
    }
    call(&lab, "h1", Method::POST, "/v1/networks", Some(json!({"name": "blue", "vni": 100, "subnet": "10.10.0.0/24"})));
    add_endpoint(&lab, 0);
    add_endpoint(&lab, 1);
    wait_for(&lab, "h1 reaching h2", || reaches(&lab, 0, 1));

    // The leader dies under a ping flood between h1 and h2.
    let flood = lab.hosts[0].containers[0].netns.command("ping").args(["-q", "-i", "0.01", "-c", "800", "-W", "1", &container_ip(1).to_string()]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let killed = leader(&lab, &etcd);
    etcd.kill(killed);
    println!("killed etcd member {killed}, the leader");
    // A change made after the kill goes through the survivors: h3's
    // container (registered in etcd on h3's lease) becomes reachable from h1.
    add_endpoint(&lab, 2);
    wait_for(&lab, "h1 reaching h3's container added after the leader died", || reaches(&lab, 0, 2));
    wait_for(&lab, "h3 reaching h2", || reaches(&lab, 2, 1));
    let output = flood.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&output.stdout);
    assert!(summary.contains("800 packets transmitted, 800 received"), "expected no loss while the leader died:\n{summary}\n{}", lab.agent_logs());
    // Leases are kept alive by the survivors: past several TTLs every node is still there.
    std::thread::sleep(Duration::from_secs(10));
    for node in ["h1", "h2", "h3"] {
        let others: Vec<String> = ["h1", "h2", "h3"].iter().filter(|other| **other != node).map(|other| other.to_string()).collect();
        let seen = peers(&lab, node);
        assert!(others.iter().all(|other| seen.contains(other)), "{node} must still have {others:?} as peers 10 s after the leader died, has {seen:?}\n{}", lab.agent_logs());
    }
}

/// `count` allocations on `node` through its API, one call each.
fn allocate_many(socket: PathBuf, node: &'static str, count: usize) -> Vec<Ipv4Addr> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut addresses = Vec::new();
        for index in 0..count {
            let owner = format!("test:{node}-{index}");
            match client::allocate_address(&socket, "blue", None, &owner).await {
                Ok(allocation) => addresses.push(allocation.address),
                Err(error) => panic!("{node}: allocation {index}: expected an address, got {error}"),
            }
        }
        addresses
    })
}

#[test]
fn two_nodes_allocating_concurrently_never_hand_out_one_address_twice() {
    if let Some(why) = etcd::missing() {
        println!("skipped: {why}");
        return;
    }
    const EACH: usize = 150;
    let mut lab = lab("clipam", 2);
    let etcd = EtcdCluster::start_in_netns("clipam", lab.wire.name(), ETCD_ADDRESS).expect("starting etcd on the underlay");
    for index in 0..2 {
        start(&mut lab, &etcd, index, "10");
    }
    call(&lab, "h1", Method::POST, "/v1/networks", Some(json!({"name": "blue", "vni": 100, "subnet": "10.20.0.0/23"})));
    wait_for(&lab, "h2 seeing network blue", || call(&lab, "h2", Method::GET, "/v1/networks", None).to_string().contains("\"blue\""));
    let started = Instant::now();
    let workers: Vec<_> = [("h1", 0), ("h2", 1)]
        .into_iter()
        .map(|(node, _)| {
            let socket = socket(&lab, node);
            std::thread::spawn(move || allocate_many(socket, node, EACH))
        })
        .collect();
    let mut handed: Vec<Vec<Ipv4Addr>> = workers.into_iter().map(|worker| worker.join().expect("an allocating thread panicked")).collect();
    println!("{} allocations through two agents' APIs, concurrently, in {:?}", 2 * EACH, started.elapsed());
    let all: std::collections::BTreeSet<Ipv4Addr> = handed.iter().flatten().copied().collect();
    assert_eq!(all.len(), 2 * EACH, "expected {} distinct addresses, got {} (h1: {:?}, h2: {:?})", 2 * EACH, all.len(), handed[0], handed[1]);
    for (node, addresses) in [("h1", &handed[0]), ("h2", &handed[1])] {
        let listed = call(&lab, node, Method::GET, "/v1/networks/blue/addresses", None);
        let count = listed.as_array().map_or(0, Vec::len);
        assert_eq!(count, addresses.len(), "{node} must list the {} addresses it handed out, lists {count}: {listed}", addresses.len());
    }

    // A static request on h2 for an address h1 handed out: refused, naming h1.
    let held = handed[0][0];
    let refusal = refused(&lab, "h2", Method::POST, "/v1/networks/blue/addresses", json!({"address": held.to_string(), "owner": "test:static"}));
    assert_eq!(refusal.status, 409, "an address h1 holds: expected 409, got {refusal:?}");
    assert!(refusal.error.contains(&held.to_string()) && refusal.error.contains("node h1"), "the refusal must name {held} and node h1: {refusal:?}");
    // Released on h1, it is h1's to hand out again (it stays in h1's block).
    let released = handed[0].pop().unwrap();
    call(&lab, "h1", Method::DELETE, &format!("/v1/networks/blue/addresses/{released}"), None);
    let again = call(&lab, "h1", Method::POST, "/v1/networks/blue/addresses", Some(json!({"address": released.to_string(), "owner": "test:again"})));
    assert_eq!(again["address"], released.to_string(), "h1 must hand out its released {released} again: {again}");
    // The blocks in etcd: every block belongs to one node, and their allocations are the addresses handed out.
    let blocks = etcdctl(&lab, &etcd, &["get", "--prefix", "--print-value-only", "/overlay/v1/blocks/blue/"]);
    let allocated: usize = blocks.lines().filter_map(|line| serde_json::from_str::<Value>(line).ok()).map(|block| block["allocations"].as_object().map_or(0, |a| a.len())).sum();
    assert_eq!(allocated, 2 * EACH, "etcd's blocks must hold the {} allocations, hold {allocated}:\n{blocks}", 2 * EACH);
}

/// Allocates on `ipam` until its node can get no more addresses.
async fn allocate_until_exhausted(ipam: &overlay::registry::Ipam, owner: &str) -> Vec<Ipv4Addr> {
    let mut got = Vec::new();
    loop {
        match ipam.allocate("blue", &format!("{owner}-{}", got.len())).await {
            Ok(address) => got.push(address),
            Err(overlay::registry::RegistryError::PoolExhausted { .. }) => return got,
            Err(error) => panic!("{owner}: expected an address or PoolExhausted, got {error}"),
        }
    }
}

/// Reclaiming IPAM blocks (the library as the agents use it, a real etcd):
/// node a allocates and then loses its lease (it is killed, or cut off);
/// while its block is in the grace period nobody takes it; after it, of
/// two nodes racing to reclaim it exactly one wins, the address an
/// endpoint record still claims is never handed out again, and a, still
/// running, finds its block gone when it writes and fails that write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipam_blocks_of_a_gone_node_are_reclaimed_after_the_grace_period_by_one_node() {
    use overlay::registry::{EndpointRecord, Ipam, NetworkRecord, NodeRecord, NodeSession, Registry, RegistrySettings};
    if let Some(why) = etcd::missing() {
        println!("skipped: {why}");
        return;
    }
    let etcd = EtcdCluster::start("clreclaim", 1).expect("starting etcd");
    let grace = Duration::from_secs(3);
    let connect = || async {
        let mut settings = RegistrySettings::new(etcd.client_urls());
        settings.lease_ttl = Duration::from_secs(1);
        settings.block_reclaim_grace = grace;
        Registry::connect(settings).await.expect("connecting to etcd")
    };
    let registry = connect().await;
    // Two /26 blocks.
    let network = NetworkRecord {
        name: "blue".into(),
        vni: 100,
        subnet: "10.30.0.0/25".parse().unwrap(),
        subnet6: None,
        mtu: 1450,
        block_prefix_len: 26,
        options: Default::default(),
    };
    registry.create_network(&network).await.unwrap();
    let node = |name: &str, last: u8| NodeRecord { name: name.into(), vtep: Ipv4Addr::new(192, 0, 2, last).into(), vxlan_port: 4789, agent_version: "t".into() };
    let session_a = NodeSession::start(connect().await, node("a", 1)).await.unwrap();
    let session_b = NodeSession::start(connect().await, node("b", 2)).await.unwrap();
    let session_c = NodeSession::start(connect().await, node("c", 3)).await.unwrap();
    let (ipam_a, ipam_b, ipam_c) = (Ipam::new(connect().await, "a"), Ipam::new(connect().await, "b"), Ipam::new(connect().await, "c"));
    let from_a: Vec<Ipv4Addr> = allocate_on_a(&ipam_a, 3).await;
    ipam_a.flush().await.unwrap();
    // One of a's addresses is also on an endpoint of node c (a static address given by hand): still recorded after a goes.
    let kept = from_a[1];
    let endpoint = EndpointRecord { network: "blue".into(), mac: "02:00:00:00:7c:01".parse().unwrap(), addresses: vec![kept.into()], node: "c".into(), owner: "test:static".into() };
    session_c.register_endpoint(endpoint).await.unwrap();
    // b takes the other block and fills it: while a lives, its block is not b's to take.
    let from_b = allocate_until_exhausted(&ipam_b, "b").await;
    assert!(!from_b.is_empty(), "b must get the second block's addresses");
    let block_a = |snapshot: &overlay::registry::ClusterSnapshot| snapshot.blocks.get(&("blue".to_owned(), Ipv4Addr::new(10, 30, 0, 0))).cloned().expect("a's block in etcd");
    let block = block_a(&registry.read_store().await.unwrap().snapshot());
    assert_eq!((block.node.as_str(), block.orphaned_since), ("a", None), "a lives: its block must be untouched, is {block:?}");

    // a is killed (its keep-alives stop): its node record goes with its lease.
    drop(session_a);
    let deadline = Instant::now() + Duration::from_secs(30);
    while registry.read_store().await.unwrap().snapshot().nodes.contains_key("a") {
        assert!(Instant::now() < deadline, "a's node record still there 30 s after its 1 s lease stopped being renewed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Within the grace period: marked, not taken.
    assert!(allocate_until_exhausted(&ipam_b, "b-early").await.is_empty(), "b got an address of a's block within the grace period");
    let block = block_a(&registry.read_store().await.unwrap().snapshot());
    assert!(block.node == "a" && block.orphaned_since.is_some(), "a's block must be marked orphaned and still a's, is {block:?}");

    // After the grace period b and c race for it: exactly one wins.
    tokio::time::sleep(grace + Duration::from_millis(500)).await;
    let (for_b, for_c) = tokio::join!(ipam_b.allocate("blue", "b-race"), ipam_c.allocate("blue", "c-race"));
    println!("racing reclaimers: b {for_b:?}, c {for_c:?}");
    let (winner, ipam_winner, loser_error) = match (&for_b, &for_c) {
        (Ok(_), Err(error)) => ("b", &ipam_b, error),
        (Err(error), Ok(_)) => ("c", &ipam_c, error),
        _ => panic!("expected exactly one of b and c to reclaim a's block, got b {for_b:?}, c {for_c:?}"),
    };
    assert!(matches!(loser_error, overlay::registry::RegistryError::PoolExhausted { .. }), "the loser must find no block, got {loser_error}");
    ipam_winner.flush().await.unwrap();
    let block = block_a(&registry.read_store().await.unwrap().snapshot());
    assert_eq!((block.node.as_str(), block.orphaned_since), (winner, None), "the block must be the winner's, is {block:?}");
    assert!(block.allocations.get(&kept).is_some_and(|owner| owner.contains("02:00:00:00:7c:01")), "{kept}, still claimed by c's endpoint, must stay allocated: {block:?}");
    // Every free address of the block is handed out; the one still claimed never is.
    let mut handed = vec![for_b.as_ref().or(for_c.as_ref()).copied().unwrap()];
    handed.extend(allocate_until_exhausted(ipam_winner, winner).await);
    assert!(!handed.contains(&kept), "{kept} is still claimed by an endpoint and was handed out again: {handed:?}");
    assert!(handed.contains(&from_a[0]) && handed.contains(&from_a[2]), "a's unclaimed addresses must be free again: {handed:?}");
    ipam_winner.flush().await.unwrap();

    // a was only cut off and still runs: it hands out an address from the
    // block it believes its own (no round trip), and writing it fails.
    let stale = ipam_a.allocate("blue", "a-after").await.expect("a allocates locally");
    let flushed = tokio::time::timeout(Duration::from_secs(20), ipam_a.flush()).await.expect("a's flush must end");
    assert!(flushed.is_err(), "a's allocation of {stale} in a block reclaimed by {winner} must fail to be written");
    let block = block_a(&registry.read_store().await.unwrap().snapshot());
    assert_eq!(block.node, winner, "a's late write must not take the block back: {block:?}");
    drop(session_b);
    drop(session_c);
}

/// `count` allocations on node a's allocator.
async fn allocate_on_a(ipam: &overlay::registry::Ipam, count: usize) -> Vec<Ipv4Addr> {
    let mut got = Vec::new();
    for index in 0..count {
        got.push(ipam.allocate("blue", &format!("a-{index}")).await.expect("a allocating"));
    }
    got
}
