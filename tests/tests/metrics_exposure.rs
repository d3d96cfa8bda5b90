//! Issue 12's security check on metrics: the agent listens on no TCP port
//! unless `--metrics-addr` is given; given a loopback address it listens
//! there only (another host cannot connect); given any other address it
//! serves, warns in its log, and `overlay doctor` reports the exposure
//! with a fix.
use std::process::Output;

use overlay_lab::lab::{ContainerSpec, HostKind, HostSpec, Lab, LabSpec, overlay_binary};

/// The TCP sockets listening in host `host`'s namespace (only the agent runs there).
fn listening(lab: &Lab, host: &str) -> Vec<String> {
    let output = lab.host(host).netns.exec("ss", &["-Hltn"]).expect("running ss");
    String::from_utf8_lossy(&output.stdout).lines().filter_map(|line| line.split_whitespace().nth(3).map(str::to_owned)).collect()
}

/// `overlay doctor --json`'s metrics finding: (status, what, fix).
fn doctor_metrics(lab: &Lab) -> (String, String, String) {
    let config = lab.host("h1").config_path.clone().unwrap();
    let output: Output = lab
        .overlay_command("h1", &overlay_binary().unwrap(), &["doctor", "--json", "--probe-timeout", "1", "--config", config.to_str().unwrap()])
        .unwrap()
        .output()
        .expect("running overlay doctor");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let found: Vec<serde_json::Value> =
        text.lines().filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok()).filter(|f| f["check"] == "metrics").collect();
    assert_eq!(found.len(), 1, "doctor should give one metrics finding:\n{text}");
    let field = |name: &str| found[0][name].as_str().unwrap_or_default().to_owned();
    (field("status"), field("what"), field("fix"))
}

/// Can a TCP connection from host `from`'s namespace reach `address`?
fn connects(lab: &Lab, from: &str, address: &str) -> bool {
    let address: std::net::SocketAddr = address.parse().unwrap();
    lab.host(from)
        .netns
        .run_inside(move || Ok(std::net::TcpStream::connect_timeout(&address, std::time::Duration::from_secs(2)).is_ok()))
        .unwrap()
}

fn restart_h1(lab: &mut Lab, args: &[&str]) {
    let index = lab.agents.iter().position(|a| a.host == "h1").unwrap();
    lab.agents[index].stop();
    lab.agents[index] = lab.start_agent_with_args(0, &overlay_binary().unwrap(), args).expect("restarting h1's agent");
}

#[test]
fn metrics_listen_nowhere_unless_asked_and_doctor_reports_an_exposed_address() {
    let container = |mac: [u8; 6], ip: &str| ContainerSpec { name: "c".into(), mac, ip: ip.parse().unwrap(), vni: 100 };
    let host = |n: &str, c| HostSpec { name: n.into(), kind: HostKind::Overlay, containers: vec![c] };
    let mut lab = Lab::build(LabSpec {
        scope: "hdmetrics".into(),
        vxlan_port: 4789,
        hosts: vec![host("h1", container([2, 0, 0, 0, 0x78, 1], "10.10.0.1")), host("h2", container([2, 0, 0, 0, 0x78, 2], "10.10.0.2"))],
    })
    .expect("building the lab");
    lab.start_agents(&overlay_binary().unwrap()).expect("starting the agents");
    let h1_underlay = lab.host("h1").vtep;

    // Without --metrics-addr: no TCP listener at all.
    assert_eq!(listening(&lab, "h1"), Vec::<String>::new(), "an agent without --metrics-addr should listen on no TCP port");
    let (status, what, _) = doctor_metrics(&lab);
    assert_eq!(status, "ok", "{what}");
    assert!(what.contains("off"), "doctor should say metrics are off: {what}");

    // Loopback: there only; another host cannot connect to the underlay address.
    restart_h1(&mut lab, &["--metrics-addr", "127.0.0.1:9465"]);
    assert_eq!(listening(&lab, "h1"), vec!["127.0.0.1:9465".to_owned()], "metrics asked on loopback should listen there only");
    assert!(connects(&lab, "h1", "127.0.0.1:9465"), "the host itself should reach its metrics on loopback");
    assert!(!connects(&lab, "h2", &format!("{h1_underlay}:9465")), "another host should not reach loopback-bound metrics");
    let (status, what, _) = doctor_metrics(&lab);
    assert_eq!((status.as_str(), what.contains("127.0.0.1:9465")), ("ok", true), "doctor on loopback metrics: {what}");

    // Every address: served, and both the log and doctor say so.
    restart_h1(&mut lab, &["--metrics-addr", "0.0.0.0:9466"]);
    assert!(connects(&lab, "h2", &format!("{h1_underlay}:9466")), "metrics on 0.0.0.0 are reachable from another host (the case doctor warns of)");
    let (status, what, fix) = doctor_metrics(&lab);
    assert_eq!(status, "warn", "doctor should warn of metrics on 0.0.0.0: {what}");
    assert!(what.contains("0.0.0.0:9466") && fix.contains("127.0.0.1:9466"), "the warning should name the address and the fix: {what} / {fix}");
    let log = lab.agents.iter().find(|a| a.host == "h1").unwrap().log();
    assert!(log.contains("beyond this host"), "the agent should warn in its log:\n{log}");
}
