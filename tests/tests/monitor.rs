//! `overlay monitor`: drop events with their reason, VNI and addresses,
//! rate limited in the kernel, switched off when the monitor exits.
use std::{
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, SocketAddrV4},
    process::{Child, Stdio},
    time::Duration,
};

use overlay_lab::{
    frames::{BROADCAST, ETHERTYPE_ARP, Ethernet, Mac, Vxlan, send_vxlan},
    lab::{Lab, LabSpec, overlay_binary}, traffic::ping,
    netns::Netns,
};

const UNKNOWN_VNI: u32 = 999;

fn two_hosts(scope: &str) -> Lab {
    let mut lab = Lab::build(LabSpec::one_container_each(scope, 2, 0x60)).expect("building the lab");
    lab.start_agents(&overlay_binary().unwrap()).expect("starting agents");
    lab
}

/// `overlay monitor --node h1 --json` plus `args`, running in h1's namespace.
/// `overlay monitor` on h1 for `seconds` (stretched with the lab's time
/// scale, as the wait before traffic is: in the emulated 6.1 guest an
/// unstretched run ended before the traffic started).
fn start_monitor(lab: &Lab, seconds: u64, args: &[&str]) -> Child {
    let seconds = overlay_lab::lab::scaled(Duration::from_secs(seconds)).as_secs().to_string();
    let mut child = lab
        .host("h1")
        .netns
        .command(overlay_binary().unwrap().to_str().unwrap())
        .args(["monitor", "--node", "h1", "--json", "--seconds", &seconds])
        .args(args)
        .arg("--bpffs-dir")
        .arg(lab.bpffs_dir())
        .arg("--run-dir")
        .arg(lab.dir.join("run"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting overlay monitor");
    // Let it switch events on before traffic starts.
    std::thread::sleep(overlay_lab::lab::scaled(Duration::from_millis(500)));
    if let Ok(Some(status)) = child.try_wait() {
        panic!("overlay monitor exited at once ({status})");
    }
    child
}

/// The JSON lines a monitor printed before it ended.
fn monitor_output(child: Child) -> Vec<serde_json::Value> {
    let output = child.wait_with_output().expect("waiting for overlay monitor");
    assert!(output.status.success(), "overlay monitor failed: {}", String::from_utf8_lossy(&output.stderr));
    BufReader::new(&output.stdout[..])
        .lines()
        .map(|line| line.unwrap())
        .map(|line| serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect()
}

/// Sends `count` VXLAN datagrams for a VNI h1 does not carry, from h2's
/// VTEP (a configured peer) to h1's: each is dropped as unknown-vni.
fn send_unknown_vni(h2: &Netns, count: usize) {
    let arp = Ethernet { dst: BROADCAST, src: Mac([2, 0, 0, 0, 0x60, 0x99]), ethertype: ETHERTYPE_ARP }.frame(&[0; 28]);
    let (h2_vtep, h1_vtep) = (Ipv4Addr::new(192, 0, 2, 2), SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 4789));
    send_vxlan(h2, h2_vtep, h1_vtep, Vxlan::new(UNKNOWN_VNI), &arp, count).expect("sending VXLAN for an unknown VNI");
}

/// Each drop shows up with its reason, direction, VNI and outer and inner
/// addresses; forwarded traffic is not reported unless asked.
#[test]
fn drops_are_reported_with_reason_vni_and_addresses() {
    let lab = two_hosts("monitor");
    let monitor = start_monitor(&lab, 3, &[]);
    send_unknown_vni(&lab.host("h2").netns, 20);
    assert_eq!(ping(&lab.container("h1", "c").netns, Ipv4Addr::new(10, 10, 0, 2), 2).unwrap().1, 2, "traffic while monitoring");
    let events = monitor_output(monitor);
    let drops: Vec<_> = events.iter().filter(|e| e["reason"] == "unknown-vni").collect();
    assert_eq!(drops.len(), 20, "expected one event per dropped datagram, got {}: {events:?}", drops.len());
    let event = drops[0];
    for (field, expected) in [
        ("kind", serde_json::json!("drop")),
        ("direction", "from-underlay".into()),
        ("vni", UNKNOWN_VNI.into()),
        ("outer_source", "192.0.2.2".into()),
        ("outer_destination", "192.0.2.1".into()),
        ("inner_destination_mac", "ff:ff:ff:ff:ff:ff".into()),
    ] {
        assert_eq!(event[field], expected, "field {field} of {event}");
    }
    assert!(events.iter().all(|e| e["kind"] != "trace"), "forwarded packets were traced without --trace-every: {events:?}");
}

/// A flood of bad packets is cut to the configured rate in the kernel;
/// the monitor reports what it lost, and forwarding carries on meanwhile.
/// Once the monitor exits, the datapath emits nothing.
#[test]
fn event_rate_is_limited_and_events_stop_with_the_monitor() {
    let lab = two_hosts("monrate");
    let monitor = start_monitor(&lab, 2, &["--rate", "10", "--burst", "5"]);
    send_unknown_vni(&lab.host("h2").netns, 3000);
    assert_eq!(ping(&lab.container("h1", "c").netns, Ipv4Addr::new(10, 10, 0, 2), 2).unwrap().1, 2, "traffic under an event flood");
    let events = monitor_output(monitor);
    let shown = events.iter().filter(|e| e["kind"] == "drop").count();
    let lost: u64 = events.iter().filter(|e| e["kind"] == "lost").map(|e| e["events"].as_u64().unwrap()).sum();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Per CPU: the burst, plus 10 a second for the time the monitor ran
    // (2 s, stretched in the guest) and a second more.
    let ran = overlay_lab::lab::scaled(Duration::from_secs(2)).as_secs() as usize + 1;
    let allowed = cpus * (5 + 10 * ran);
    assert!(shown >= 1 && shown <= allowed, "expected between 1 and {allowed} events under the limit, got {shown}");
    assert!(shown as u64 + lost >= 3000, "shown ({shown}) and lost ({lost}) events should account for the 3000 drops");

    // After the monitor is gone, nothing is emitted: a new monitor sees no backlog.
    send_unknown_vni(&lab.host("h2").netns, 50);
    let later = monitor_output(start_monitor(&lab, 1, &[]));
    assert!(later.iter().all(|e| e["kind"] != "drop"), "events emitted while no monitor listened: {later:?}");
}
