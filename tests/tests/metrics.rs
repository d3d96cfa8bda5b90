//! Prometheus metrics (`overlay run --metrics-addr`): scraped from inside
//! the host's namespace, they move with the traffic, the node's and each
//! VNI's and peer's (checked against `overlay stats --json`, across a
//! reload too); an address the agent cannot serve refuses the start with
//! nothing attached.
use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    process::{Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use overlay_lab::lab::{ContainerSpec, HostKind, HostSpec, Lab, LabSpec, overlay_binary};
use overlay_lab::traffic::{ping, tcp_transfer};

/// Where each agent serves, inside its own host namespace (so the same
/// address on every host).
const METRICS_ADDR: &str = "127.0.0.1:9465";
const PINGS: u32 = 10;
const TRANSFER_BYTES: u64 = 1024 * 1024;

fn two_hosts(scope: &str) -> Lab {
    Lab::build(LabSpec::one_container_each(scope, 2, 0x60)).expect("building the lab")
}

fn bin() -> std::path::PathBuf {
    overlay_binary().expect("overlay binary")
}

/// One HTTP GET from inside `host`'s namespace: (status line and headers, body).
fn get(lab: &Lab, host: &str, path: &str) -> (String, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {METRICS_ADDR}\r\nAccept: */*\r\n\r\n");
    lab.host(host)
        .netns
        .run_inside(move || {
            let address: SocketAddr = METRICS_ADDR.parse()?;
            let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5)).with_context(|| format!("connecting to {address}"))?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            stream.write_all(request.as_bytes())?;
            let mut reply = String::new();
            stream.read_to_string(&mut reply).context("reading the reply")?;
            let (head, body) = reply.split_once("\r\n\r\n").with_context(|| format!("no end of headers in:\n{reply}"))?;
            Ok((head.to_owned(), body.to_owned()))
        })
        .unwrap_or_else(|e| panic!("GET http://{METRICS_ADDR}{path} on {host}: {e:#}\n{}", lab.agent_logs()))
}

/// A successful scrape's body.
fn scrape(lab: &Lab, host: &str) -> String {
    let (head, body) = get(lab, host, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200 "), "scrape of {host}: expected 200, got:\n{head}\n{body}");
    assert!(
        head.contains("Content-Type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "scrape of {host}: expected the OpenMetrics content type:\n{head}"
    );
    body
}

/// The value of the counter `metric` for a direction and reason.
fn counter(body: &str, metric: &str, direction: &str, reason: &str) -> u64 {
    let prefix = format!("{metric}{{direction=\"{direction}\",reason=\"{reason}\",");
    let line = body.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no {prefix}...}} series in:\n{body}"));
    line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no value in: {line}"))
}

/// Counters scraped before and after a ping and a TCP transfer grow by at
/// least what was sent, on both hosts; the node gauges describe the lab.
#[test]
fn scraped_counters_move_with_traffic() {
    let mut lab = two_hosts("metrics");
    lab.start_agents_with_args(&bin(), &["--metrics-addr", METRICS_ADDR]).expect("starting agents");
    assert!(
        lab.agents[0].log().contains(&format!("serving Prometheus metrics on http://{METRICS_ADDR}/metrics")),
        "the agent should say where it serves metrics:\n{}",
        lab.agents[0].log()
    );
    let before = [scrape(&lab, "h1"), scrape(&lab, "h2")];

    let (a, b) = (&lab.container("h1", "c").netns, lab.container("h2", "c"));
    let (sent, received) = ping(a, b.spec.ip, PINGS).expect("running ping");
    assert_eq!((sent, received), (PINGS, PINGS), "ping h1 -> h2 through the overlay\n{}", lab.agent_logs());
    let transfer = tcp_transfer(a, &b.netns, b.spec.ip, TRANSFER_BYTES).expect("TCP transfer h1 -> h2");
    assert_eq!((transfer.bytes_received, transfer.first_mismatch), (TRANSFER_BYTES, None), "TCP transfer h1 -> h2: {transfer:?}");
    let after = [scrape(&lab, "h1"), scrape(&lab, "h2")];

    let grew = |host: usize, metric: &str, direction: &str| {
        counter(&after[host], metric, direction, "forwarded") - counter(&before[host], metric, direction, "forwarded")
    };
    // h1 encapsulates the echo requests and the TCP data, and decapsulates
    // the replies; h2 the other way round.
    for (host, name) in [(0, "h1"), (1, "h2")] {
        for direction in ["from-endpoint", "from-underlay"] {
            let packets = grew(host, "overlay_packets_total", direction);
            assert!(
                packets >= PINGS as u64,
                "{name}: overlay_packets_total{{direction={direction},reason=forwarded}} should grow by at least the {PINGS} echo messages, grew by {packets}\nbefore:\n{}\nafter:\n{}",
                before[host],
                after[host]
            );
        }
    }
    let (encapsulated, decapsulated) = (grew(0, "overlay_bytes_total", "from-endpoint"), grew(1, "overlay_bytes_total", "from-underlay"));
    assert!(
        encapsulated >= TRANSFER_BYTES && decapsulated >= TRANSFER_BYTES,
        "overlay_bytes_total forwarded should grow by at least the {TRANSFER_BYTES} bytes sent: h1 from-endpoint grew by {encapsulated}, h2 from-underlay by {decapsulated}"
    );

    let lines: Vec<&str> = after[0].lines().collect();
    let info = format!("overlay_info{{node=\"h1\",vtep=\"192.0.2.1\",underlay=\"{}\",decap=\"tc\",xdp_mode=\"none\",", lab.host("h1").underlay);
    assert!(lines.iter().any(|l| l.starts_with(&info) && l.ends_with("} 1")), "expected {info}...}} 1 in:\n{}", after[0]);
    for gauge in ["overlay_vnis 1", "overlay_local_endpoints 1", "overlay_remote_endpoints 1", "overlay_peers 1", "overlay_last_reload_success 1"] {
        assert!(lines.contains(&gauge), "expected {gauge} in:\n{}", after[0]);
    }
    assert_eq!(lines.last(), Some(&"# EOF"), "the exposition ends with # EOF");

    let (head, _) = get(&lab, "h1", "/");
    assert!(head.starts_with("HTTP/1.1 404 "), "only /metrics is served, GET / answered:\n{head}");
}

/// `overlay run` on h1 of `lab` with `--metrics-addr address`, which must
/// fail within 20 s: its output.
fn run_refused(lab: &Lab, address: &str) -> Output {
    let host = lab.host("h1");
    let mut child = host
        .netns
        .command(bin().to_str().unwrap())
        .args(["run", "--config"])
        .arg(host.config_path.as_ref().unwrap())
        .arg("--bpffs-dir")
        .arg(lab.bpffs_dir())
        .arg("--run-dir")
        .arg(lab.dir.join("run"))
        .args(["--metrics-addr", address])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting overlay run");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("waiting for overlay run").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("reaping overlay run");
            panic!("overlay run --metrics-addr {address} should fail at start, it was still running:\n{}", String::from_utf8_lossy(&output.stderr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("reading overlay run's output")
}

/// A malformed address, one that is not on the host and one already in use
/// each stop `overlay run` with an error naming the address before anything
/// is loaded: no XDP on the underlay, nothing pinned (an agent that failed
/// after loading would leave its pinned datapath attached). The same
/// configuration starts before and after.
#[test]
fn an_address_that_cannot_be_served_refuses_the_start_with_nothing_attached() {
    let mut lab = two_hosts("metricsaddr");
    // A first run mounts the lab's bpffs, where a refused run would pin.
    lab.start_agents_with_args(&bin(), &["--metrics-addr", METRICS_ADDR]).expect("starting agents with a good address");
    assert!(scrape(&lab, "h1").contains("overlay_peers 1"), "the agent serves metrics");
    lab.stop_agents();
    let (netns, underlay, pins) = (&lab.host("h1").netns, &lab.host("h1").underlay, lab.bpffs_dir().join("h1"));
    let attached = || String::from_utf8_lossy(&netns.ip(&["link", "show", underlay]).expect("ip link show").stdout).into_owned();
    assert!(!attached().contains("xdp") && !pins.exists(), "the stopped agent should have detached:\n{}", attached());

    let taken: TcpListener = netns.run_inside(|| Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?)).expect("binding a port inside h1");
    let in_use = taken.local_addr().unwrap().to_string();
    for address in ["999.1.1.1:1", "192.0.2.99:9465", in_use.as_str()] {
        let output = run_refused(&lab, address);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "overlay run --metrics-addr {address} should fail, exited {}:\n{stderr}", output.status);
        assert!(stderr.contains(address), "the error should name {address}:\n{stderr}");
        let link = attached();
        assert!(!link.contains("xdp"), "nothing may be attached after the refused start with {address}:\n{link}");
        assert!(!pins.exists(), "nothing may be pinned after the refused start with {address}: {} exists", pins.display());
        eprintln!("--metrics-addr {address}: {}", stderr.trim());
    }
    drop(taken);
    lab.start_agents_with_args(&bin(), &["--metrics-addr", METRICS_ADDR]).expect("starting agents again");
    assert!(scrape(&lab, "h1").contains("overlay_peers 1"), "the agent started after the refusals serves metrics");
}

/// Below 100, so it has the lower counter slot: a reload that reshuffled
/// slots would hand VNI 100 this one, zeroed.
const QUIET_VNI: u32 = 50;
/// A peer in h1's configuration that no host answers for: nothing is ever
/// sent to it as unicast, nothing comes from it.
const GHOST_VTEP: &str = "192.0.2.99";

/// Two hosts, each with a container in VNI 100 (`a`) and one in [`QUIET_VNI`] (`b`).
fn two_hosts_two_vnis(scope: &str) -> Lab {
    let container = |name: &str, vni: u32, o: u8| ContainerSpec {
        name: name.into(),
        mac: [2, 0, 0, (vni / 100) as u8, 0x61, o],
        ip: Ipv4Addr::new(10, (vni / 10) as u8, 0, o),
        vni,
    };
    let host = |n: &str, o: u8| HostSpec {
        name: n.into(),
        kind: HostKind::Overlay,
        containers: vec![container("a", 100, o), container("b", QUIET_VNI, o)],
    };
    Lab::build(LabSpec { scope: scope.into(), vxlan_port: 4789, hosts: vec![host("h1", 1), host("h2", 2)] }).expect("building the lab")
}

/// `overlay stats --json` on `host`.
fn stats_json(lab: &Lab, host: &str) -> serde_json::Value {
    let output = lab
        .overlay_command(host, &bin(), &["stats", "--node", host, "--json"])
        .expect("overlay command")
        .output()
        .expect("running overlay stats");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "overlay stats --json on {host} failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("overlay stats --json on {host} is not JSON ({e}):\n{text}"))
}

/// The counter rows of VNI `vni` (key "vnis", "vni") or of a peer (key
/// "peers", "peer") in a stats JSON; `None` when it is not listed.
fn rows_of<'a>(stats: &'a serde_json::Value, list: &str, key: &str, value: serde_json::Value) -> Option<&'a Vec<serde_json::Value>> {
    stats[list].as_array()?.iter().find(|entry| entry[key] == value)?["counters"].as_array()
}

/// (packets, bytes) of a row of `rows` (zero when absent).
fn row(rows: &[serde_json::Value], direction: &str, reason: &str) -> (u64, u64) {
    rows.iter()
        .find(|row| row["direction"] == direction && row["reason"] == reason)
        .map_or((0, 0), |row| (row["packets"].as_u64().unwrap(), row["bytes"].as_u64().unwrap()))
}

/// The value of the series of `metric` whose labels start with `labels`.
fn series(body: &str, metric: &str, labels: &str) -> Option<u64> {
    let prefix = format!("{metric}{{{labels},");
    body.lines().find(|l| l.starts_with(&prefix)).and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

/// Per-VNI and per-peer counters, end to end: with traffic in VNI 100
/// only, between h1 and h2 only, the counters of VNI 100 and of the peer
/// move, in `overlay stats --json` and in `/metrics`, by what was sent and
/// exactly as the node's forwarded counters (no other VNI carries
/// anything); VNI 50 and a configured peer nobody talks to stay at zero.
/// Then a reload that replaces VNI 50 by VNI 300 keeps VNI 100's slot:
/// its counts survive and go on growing; VNI 300 starts empty.
#[test]
fn vni_and_peer_counters_move_for_their_vni_and_peer_only() {
    let mut lab = two_hosts_two_vnis("vnipeer");
    // No IPv6 autoconfiguration chatter in the quiet VNI.
    for host in ["h1", "h2"] {
        for container in ["a", "b"] {
            lab.container(host, container).netns.sysctl("net.ipv6.conf.all.disable_ipv6", "1").expect("disabling IPv6");
        }
    }
    let h1_config = lab.host("h1").config_path.clone().unwrap();
    let ghost = format!(
        "[[peers]]\nname = \"ghost\"\nvtep_address = \"{GHOST_VTEP}\"\n  [[peers.endpoints]]\n  mac = \"02:00:00:01:61:63\"\n  ip = \"10.10.0.99\"\n  vni = 100\n"
    );
    let original = std::fs::read_to_string(&h1_config).unwrap() + &ghost;
    std::fs::write(&h1_config, &original).unwrap();
    lab.start_agents_with_args(&bin(), &["--metrics-addr", METRICS_ADDR]).expect("starting agents");

    let (a, b) = (&lab.container("h1", "a").netns, lab.container("h2", "a"));
    let (sent, received) = ping(a, b.spec.ip, PINGS).expect("running ping");
    assert_eq!((sent, received), (PINGS, PINGS), "ping h1 -> h2 in VNI 100\n{}", lab.agent_logs());
    let transfer = tcp_transfer(a, &b.netns, b.spec.ip, TRANSFER_BYTES).expect("TCP transfer h1 -> h2");
    assert_eq!((transfer.bytes_received, transfer.first_mismatch), (TRANSFER_BYTES, None), "TCP transfer h1 -> h2: {transfer:?}");
    std::thread::sleep(Duration::from_millis(500)); // the last ACKs

    let peer_of = |host: &str| if host == "h1" { "192.0.2.2" } else { "192.0.2.1" };
    let mut vni_100_before_reload = Vec::new();
    for host in ["h1", "h2"] {
        let stats = stats_json(&lab, host);
        let node = stats["counters"].as_array().unwrap();
        let vni = rows_of(&stats, "vnis", "vni", 100.into()).unwrap_or_else(|| panic!("{host}: VNI 100 is not listed: {stats}"));
        let peer = rows_of(&stats, "peers", "peer", peer_of(host).into()).unwrap_or_else(|| panic!("{host}: peer {} is not listed: {stats}", peer_of(host)));
        for direction in ["from-endpoint", "from-underlay"] {
            let (packets, bytes) = row(vni, direction, "forwarded");
            assert!(packets >= PINGS as u64, "{host}: VNI 100 {direction} forwarded should count at least the {PINGS} echo messages, counted {packets}: {stats}");
            assert_eq!(
                (row(node, direction, "forwarded"), row(peer, direction, "forwarded")),
                ((packets, bytes), (packets, bytes)),
                "{host}: every packet forwarded {direction} is VNI 100's and the peer's, so the node, VNI 100 and peer {} count the same: {stats}",
                peer_of(host)
            );
        }
        let sender_bytes = if host == "h1" { row(vni, "from-endpoint", "forwarded").1 } else { row(vni, "from-underlay", "forwarded").1 };
        assert!(sender_bytes >= TRANSFER_BYTES, "{host}: VNI 100's forwarded bytes should include the {TRANSFER_BYTES}-byte transfer, have {sender_bytes}: {stats}");
        let quiet = rows_of(&stats, "vnis", "vni", QUIET_VNI.into()).unwrap_or_else(|| panic!("{host}: VNI {QUIET_VNI} is not listed: {stats}"));
        assert!(quiet.is_empty(), "{host}: nothing was sent in VNI {QUIET_VNI}, yet it counted {quiet:?}");
        if host == "h1" {
            let ghost = rows_of(&stats, "peers", "peer", GHOST_VTEP.into()).unwrap_or_else(|| panic!("h1: peer {GHOST_VTEP} is not listed: {stats}"));
            assert!(ghost.is_empty(), "h1: nothing went to or came from {GHOST_VTEP}, yet it counted {ghost:?}");
            vni_100_before_reload = vni.clone();
        }
    }

    let body = scrape(&lab, "h1");
    let forwarded = |direction: &str| format!("direction=\"{direction}\",reason=\"forwarded\"");
    for direction in ["from-endpoint", "from-underlay"] {
        let in_stats = row(&vni_100_before_reload, direction, "forwarded").0;
        for (metric, labels) in [
            ("overlay_vni_packets_total", format!("vni=\"100\",{}", forwarded(direction))),
            ("overlay_peer_packets_total", format!("peer=\"192.0.2.2\",{}", forwarded(direction))),
        ] {
            let scraped = series(&body, metric, &labels).unwrap_or_else(|| panic!("no {metric}{{{labels},...}} series in:\n{body}"));
            assert_eq!(scraped, in_stats, "{metric}{{{labels}}}: expected what overlay stats showed ({in_stats}), scraped {scraped}");
        }
        for (metric, labels) in [
            ("overlay_vni_packets_total", format!("vni=\"{QUIET_VNI}\",{}", forwarded(direction))),
            ("overlay_peer_packets_total", format!("peer=\"{GHOST_VTEP}\",{}", forwarded(direction))),
        ] {
            assert_eq!(series(&body, metric, &labels), Some(0), "{metric}{{{labels}}} should be there at 0:\n{body}");
        }
    }
    let moved_quiet: Vec<&str> = body
        .lines()
        .filter(|l| (l.contains(&format!("{{vni=\"{QUIET_VNI}\"")) || l.contains(&format!("{{peer=\"{GHOST_VTEP}\""))) && !l.ends_with(" 0"))
        .collect();
    assert!(moved_quiet.is_empty(), "VNI {QUIET_VNI} and peer {GHOST_VTEP} should have no counts, scraped:\n{}", moved_quiet.join("\n"));
    let text = lab.overlay_command("h1", &bin(), &["stats", "--node", "h1"]).unwrap().output().unwrap();
    println!("$ overlay stats --node h1\n{}", String::from_utf8_lossy(&text.stdout));
    println!(
        "$ curl -s http://{METRICS_ADDR}/metrics | grep -E 'overlay_(vni|peer)_packets'\n{}",
        body.lines().filter(|l| l.starts_with("overlay_vni_packets") || l.starts_with("overlay_peer_packets")).collect::<Vec<_>>().join("\n")
    );

    // Reload: h1's port b moves from VNI 50 to VNI 300.
    let b_ip = lab.container("h1", "b").spec.ip;
    let moved = original.replace(&format!("ip = \"{b_ip}\"\nvni = {QUIET_VNI}\n"), &format!("ip = \"{b_ip}\"\nvni = 300\n"));
    assert_ne!(moved, original, "h1's configuration should have a local endpoint {b_ip} in VNI {QUIET_VNI}:\n{original}");
    let reloads = lab.agents[0].log().matches("reloaded ").count();
    std::fs::write(&h1_config, &moved).unwrap();
    lab.agents[0].signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while lab.agents[0].log().matches("reloaded ").count() == reloads {
        assert!(Instant::now() < deadline, "h1 did not reload within 10 s:\n{}", lab.agents[0].log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let stats = stats_json(&lab, "h1");
    assert_eq!(
        rows_of(&stats, "vnis", "vni", 100.into()),
        Some(&vni_100_before_reload),
        "VNI 100 should keep its counts (and its slot) across the reload: {stats}"
    );
    assert!(rows_of(&stats, "vnis", "vni", QUIET_VNI.into()).is_none(), "VNI {QUIET_VNI} is gone after the reload: {stats}");
    assert_eq!(rows_of(&stats, "vnis", "vni", 300.into()).map(Vec::len), Some(0), "VNI 300 is listed, with nothing counted: {stats}");
    let (sent, received) = ping(a, b.spec.ip, 3).expect("running ping");
    assert_eq!((sent, received), (3, 3), "ping h1 -> h2 in VNI 100 after the reload\n{}", lab.agent_logs());
    let stats = stats_json(&lab, "h1");
    let grown = row(rows_of(&stats, "vnis", "vni", 100.into()).unwrap(), "from-endpoint", "forwarded").0;
    let before = row(&vni_100_before_reload, "from-endpoint", "forwarded").0;
    assert!(grown >= before + 3, "VNI 100 from-endpoint forwarded should go on from {before} by at least 3 echo requests, is {grown}: {stats}");
}
