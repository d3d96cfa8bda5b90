//! Prometheus metrics (`overlay run --metrics-addr`): scraped from inside
//! the host's namespace, they move with the traffic; an address the agent
//! cannot serve refuses the start with nothing attached.
use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    process::{Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use overlay_lab::lab::{ContainerSpec, HostKind, HostSpec, Lab, LabSpec, overlay_binary, ping, tcp_transfer};

/// Where each agent serves, inside its own host namespace (so the same
/// address on every host).
const METRICS_ADDR: &str = "127.0.0.1:9465";
const PINGS: u32 = 10;
const TRANSFER_BYTES: u64 = 1024 * 1024;

fn two_hosts(scope: &str) -> Lab {
    let container = |o: u8| ContainerSpec { name: "c".into(), mac: [2, 0, 0, 0, 0x60, o], ip: Ipv4Addr::new(10, 10, 0, o), vni: 100 };
    let host = |n: &str, o: u8| HostSpec { name: n.into(), kind: HostKind::Overlay, containers: vec![container(o)] };
    Lab::build(LabSpec { scope: scope.into(), vxlan_port: 4789, hosts: vec![host("h1", 1), host("h2", 2)] }).expect("building the lab")
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
    let info = format!("overlay_info{{node=\"h1\",vtep=\"192.0.2.1\",underlay=\"{}\",xdp_mode=\"none\",", lab.host("h1").underlay);
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
