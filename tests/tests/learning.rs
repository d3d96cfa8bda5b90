//! Learning mode (RFC 7348 section 4.1) without a registry: two nodes that
//! list each other's VTEP and no endpoint, one network with learning on
//! (through the local API on h1, the file's `[[vnis]]` on h2), containers
//! added at run time. They reach each other; a third host on the underlay,
//! a peer of neither node for that VNI, sends frames whose inner source
//! MAC would poison the table, and teaches nothing; a frame from the
//! admitted peer claiming a configured (local) MAC is refused too.
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use overlay::{
    api::client::{self, ClientError, Method},
    datapath::Datapath,
    pinning::PinDir,
};
use overlay_common::{Direction, Reason};
use overlay_lab::{
    frames::{self, Ethernet, Mac, Vxlan},
    lab::{ContainerSpec, HostKind, HostSpec, Lab, LabSpec, format_mac, overlay_binary}, traffic::ping,
};
use serde_json::{Value, json};

const VNI: u32 = 100;
const C1_MAC: [u8; 6] = [2, 0, 0, 0, 0x6c, 1];
const C2_MAC: [u8; 6] = [2, 0, 0, 0, 0x6c, 2];
const C1_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 1);
const C2_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 2);
/// A MAC no container has: what the poisoner would like to plant.
const PLANTED_MAC: [u8; 6] = [2, 0, 0, 0, 0x6c, 0x66];
/// An address the crafted sender adds: a peer of no node.
const STRANGER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 9);
/// The local experimental EtherType (IEEE 802): no container's stack takes it.
const ETHERTYPE_EXPERIMENTAL: u16 = 0x88b5;

/// h1 and h2 with a container each, and h3, a bare host on the underlay
/// (the crafted sender). Each node's file lists the other node as a peer
/// of VNI 100 without endpoints, and h3 as a peer of VNI 200 only.
fn lab() -> Lab {
    let container = |mac: [u8; 6], ip| ContainerSpec { name: "c".into(), mac, ip, vni: VNI };
    let lab = Lab::build(LabSpec {
        scope: "learn".into(),
        vxlan_port: 4789,
        hosts: vec![
            HostSpec { name: "h1".into(), kind: HostKind::Overlay, containers: vec![container(C1_MAC, C1_IP)] },
            HostSpec { name: "h2".into(), kind: HostKind::Overlay, containers: vec![container(C2_MAC, C2_IP)] },
            // A kernel-vxlan host with no container sets nothing up: an address on the wire.
            HostSpec { name: "h3".into(), kind: HostKind::KernelVxlan, containers: vec![] },
        ],
    })
    .expect("building the lab");
    let node = |index: usize| {
        let host = &lab.hosts[index];
        format!("[node]\nname = \"{}\"\nunderlay_interface = \"{}\"\nvtep_address = \"{}\"\nvxlan_port = 4789\n\n", host.spec.name, host.underlay, host.vtep)
    };
    let peers = |other: usize| {
        format!(
            "[[peers]]\nname = \"{}\"\nvtep_address = \"{}\"\nvnis = [{VNI}]\n\n[[peers]]\nname = \"h3\"\nvtep_address = \"{}\"\nvnis = [200]\n",
            lab.hosts[other].spec.name, lab.hosts[other].vtep, lab.hosts[2].vtep
        )
    };
    // h1: nothing local in the file; the API creates the network and adds c1.
    std::fs::write(lab.hosts[0].config_path.as_ref().unwrap(), format!("{}{}", node(0), peers(1))).unwrap();
    // h2: its container in the file, learning turned on by `[[vnis]]`.
    let c2 = &lab.hosts[1].containers[0];
    let h2 = format!(
        "{}[[endpoints]]\ninterface = \"{}\"\nmac = \"{}\"\nip = \"{C2_IP}\"\nvni = {VNI}\n\n[[vnis]]\nvni = {VNI}\nlearning = true\n\n{}",
        node(1),
        c2.port,
        format_mac(&C2_MAC),
        peers(0)
    );
    std::fs::write(lab.hosts[1].config_path.as_ref().unwrap(), h2).unwrap();
    lab
}

fn socket(lab: &Lab, node: &str) -> PathBuf {
    lab.dir.join("run").join(format!("{node}.sock"))
}

fn post(socket: &Path, path: &str, body: Value) -> Result<Value, overlay::api::ApiError> {
    match client::call_blocking(socket, Method::POST, path, Some(body)) {
        Ok(answer) => Ok(serde_json::from_slice(&answer.body).unwrap()),
        Err(ClientError::Refused(refusal)) => Err(refusal),
        Err(error) => panic!("calling {path}: {error}"),
    }
}

/// `overlay ARGS` on `host`; its standard output.
fn overlay(lab: &Lab, host: &str, args: &[&str]) -> String {
    let output = lab.overlay_command(host, &overlay_binary().unwrap(), args).unwrap().output().unwrap();
    assert!(output.status.success(), "overlay {args:?} on {host} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `overlay fdb --json` of `host`.
fn fdb(lab: &Lab, host: &str) -> Value {
    serde_json::from_str(&overlay(lab, host, &["fdb", "--node", host, "--json"])).expect("overlay fdb --json prints JSON")
}

/// Where `host`'s FDB puts `mac`, and as what: (source, VTEP) of each entry.
fn entries_for(fdb: &Value, mac: [u8; 6]) -> Vec<(String, String)> {
    let mac = format_mac(&mac);
    fdb["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["mac"] == mac.as_str() && entry["vni"] == VNI)
        .map(|entry| (entry["source"].as_str().unwrap().to_owned(), entry["vtep"].as_str().unwrap().to_owned()))
        .collect()
}

/// Frames `node` encapsulated to the peer at `vtep` (forwarded, not flooded), and frames it flooded.
fn sent_to_peer_and_flooded(lab: &Lab, node: &str, vtep: Ipv4Addr) -> (u64, u64) {
    let pins = PinDir::new(&lab.bpffs_dir(), node);
    let peers = Datapath::pinned_vni_peer_counters(&pins).expect("reading the pinned per-peer counters").peers;
    let to_peer = peers.get(&vtep).map_or(0, |counters| counters.packets(Direction::FROM_ENDPOINT, Reason::FORWARDED));
    let flooded = Datapath::pinned_counters(&pins).expect("reading the pinned counters").packets(Direction::FROM_ENDPOINT, Reason::FLOODED);
    (to_peer, flooded)
}

fn counted(lab: &Lab, node: &str, reason: Reason) -> u64 {
    Datapath::pinned_counters(&PinDir::new(&lab.bpffs_dir(), node)).expect("reading the pinned counters").packets(Direction::FROM_UNDERLAY, reason)
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what} did not happen within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// VXLAN in `VNI` to h1 from `source` (an address of the sending
/// namespace): `count` frames from inner source `inner_source` to c1.
fn send_vxlan(from: &overlay_lab::netns::Netns, source: Ipv4Addr, inner_source: [u8; 6], count: usize) {
    let inner = Ethernet { dst: Mac(C1_MAC), src: Mac(inner_source), ethertype: ETHERTYPE_EXPERIMENTAL }.frame(&[0; 46]);
    frames::send_vxlan(from, source, SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 4789), Vxlan::new(VNI), &inner, count).expect("sending crafted VXLAN");
}

#[test]
fn static_peers_learn_runtime_containers_and_unadmitted_frames_teach_nothing() {
    let mut lab = lab();
    lab.start_agents(&overlay_binary().unwrap()).expect("starting the agents");
    let h1 = socket(&lab, "h1");

    // Bad learning settings are refused naming the field, nothing created.
    for (body, field, value) in [
        (json!({"name": "red", "vni": 300, "learning": "yes"}), "learning", "\"yes\""),
        (json!({"name": "red", "vni": 300, "learning": true, "ageing": 0}), "ageing", "0"),
        (json!({"name": "red", "vni": 300, "ageing": 60}), "ageing", "60"),
        (json!({"name": "red", "vni": 300, "options": {"learning": "maybe"}}), "options.learning", "maybe"),
    ] {
        let refusal = post(&h1, "/v1/networks", body.clone()).expect_err(&format!("{body} should be refused"));
        assert_eq!((refusal.status, refusal.field.as_str(), refusal.value.as_str()), (400, field, value), "{body}: {refusal:?}");
    }

    let network = post(&h1, "/v1/networks", json!({"name": "blue", "vni": VNI, "subnet": "10.10.0.0/24", "learning": true})).expect("creating blue");
    assert_eq!(network["options"]["learning"], "true", "the network shows learning on: {network}");
    let port = lab.container("h1", "c").port.clone();
    let endpoint = post(&h1, "/v1/endpoints", json!({"network": "blue", "interface": port, "mac": format_mac(&C1_MAC), "ipv4": C1_IP.to_string()}))
        .expect("adding c1");
    assert_eq!(endpoint["state"], "applied", "{endpoint}");
    assert!(entries_for(&fdb(&lab, "h1"), C2_MAC).is_empty() && entries_for(&fdb(&lab, "h2"), C1_MAC).is_empty(), "nothing configured or learned yet");

    // Neither node lists the other's container: they learn it from the ARP
    // exchange (flooded request, unicast reply) and forward unicast.
    let c1 = &lab.container("h1", "c").netns;
    let c2 = &lab.container("h2", "c").netns;
    let (sent, received) = ping(c1, C2_IP, 5).unwrap();
    assert_eq!(received, sent, "c1 should reach c2 through learning\n{}", lab.agent_logs());
    let (sent, received) = ping(c2, C1_IP, 5).unwrap();
    assert_eq!(received, sent, "c2 should reach c1 through learning\n{}", lab.agent_logs());
    let h1_fdb = fdb(&lab, "h1");
    assert_eq!(entries_for(&h1_fdb, C2_MAC), vec![("learned".to_owned(), "192.0.2.2".to_owned())], "h1 learned c2 behind h2: {h1_fdb}");
    assert_eq!(entries_for(&fdb(&lab, "h2"), C1_MAC), vec![("learned".to_owned(), "192.0.2.1".to_owned())], "h2 learned c1 behind h1");
    let learned_before = h1_fdb["learning_events"]["learned"].as_u64().unwrap();
    assert!(learned_before >= 1, "h1 counted its learning: {h1_fdb}");
    let text = overlay(&lab, "h1", &["fdb", "--node", "h1"]);
    assert!(text.lines().any(|line| line.contains(&format_mac(&C2_MAC)) && line.contains("learned (")), "overlay fdb marks learned entries:\n{text}");
    let status = overlay(&lab, "h1", &["status", "--node", "h1"]);
    assert!(status.contains(&format!("VNI {VNI} learns (ageing 300 s): 1 learned entries in use")), "overlay status shows learning:\n{status}");

    // h3 (a peer for VNI 200 only) and a stranger claim c2's MAC and plant a new one in VNI 100.
    let h3 = &lab.host("h3").netns;
    h3.ip(&["addr", "add", &format!("{STRANGER}/24"), "dev", &lab.host("h3").underlay]).unwrap();
    let (not_in_vni, unknown_peer) = (counted(&lab, "h1", Reason::PEER_NOT_IN_VNI), counted(&lab, "h1", Reason::UNKNOWN_PEER));
    send_vxlan(h3, lab.host("h3").vtep, C2_MAC, 5);
    send_vxlan(h3, lab.host("h3").vtep, PLANTED_MAC, 5);
    send_vxlan(h3, STRANGER, C2_MAC, 5);
    wait_for("h1 to drop the 15 crafted frames", Duration::from_secs(10), || {
        counted(&lab, "h1", Reason::PEER_NOT_IN_VNI) == not_in_vni + 10 && counted(&lab, "h1", Reason::UNKNOWN_PEER) == unknown_peer + 5
    });
    let after = fdb(&lab, "h1");
    assert_eq!(entries_for(&after, C2_MAC), vec![("learned".to_owned(), "192.0.2.2".to_owned())], "c2 still behind h2: {after}");
    assert!(entries_for(&after, PLANTED_MAC).is_empty(), "a frame from a peer not admitted for the VNI teaches nothing: {after}");
    assert_eq!(after["learning_events"]["learned"].as_u64().unwrap(), learned_before, "no learning event from refused frames: {after}");
    let h2_vtep = lab.host("h2").vtep;
    let (to_h2, flooded) = sent_to_peer_and_flooded(&lab, "h1", h2_vtep);
    let (sent, received) = ping(c1, C2_IP, 3).unwrap();
    assert_eq!(received, sent, "after the poisoning attempt c1 still reaches c2\n{}", lab.agent_logs());
    let (to_h2_after, flooded_after) = sent_to_peer_and_flooded(&lab, "h1", h2_vtep);
    assert!(
        to_h2_after >= to_h2 + 3 && flooded_after == flooded,
        "the echo requests go to h2 by the learned entry, not flooded: to h2 {to_h2} -> {to_h2_after}, flooded {flooded} -> {flooded_after}"
    );

    // h2, admitted for the VNI, claims c1's MAC (h1's own endpoint): refused, counted.
    let refused_before = after["learning_events"]["learning_refused"].as_u64().unwrap();
    send_vxlan(&lab.host("h2").netns, lab.host("h2").vtep, C1_MAC, 5);
    wait_for("h1 to count the refused learning", Duration::from_secs(10), || {
        fdb(&lab, "h1")["learning_events"]["learning_refused"].as_u64().unwrap() == refused_before + 5
    });
    assert!(entries_for(&fdb(&lab, "h1"), C1_MAC).is_empty(), "a local endpoint's MAC is never learned");
    let (sent, received) = ping(c2, C1_IP, 3).unwrap();
    assert_eq!(received, sent, "c2 still reaches c1\n{}", lab.agent_logs());
}
