//! Issue 12, "never apply half", against a real agent: every field of a
//! good `POST /v1/networks` and `POST /v1/endpoints` body replaced in turn
//! by each of a table of hostile values (wrong types, limits, near-valid
//! strings), removed, or joined by an unknown field, plus bodies that are
//! not JSON. Each is refused naming the field, and then the agent's
//! networks and endpoints, its API state file and h1's pinned maps are
//! exactly as before; or it is accepted, and removing it again brings all
//! of them back exactly.
use std::path::{Path, PathBuf};

use overlay::{
    api::client::{self, Method},
    datapath::Datapath,
    pinning::PinDir,
    state::MapState,
};
use overlay_lab::{
    lab::{ContainerSpec, HostKind, HostSpec, Lab, LabSpec, overlay_binary},
    saved_state::api_state,
};
use serde_json::{Value, json};

/// Everything a request could change: the API's views, its state file, the maps.
#[derive(Debug, PartialEq)]
struct Snapshot {
    networks: String,
    endpoints: String,
    /// The agent's saved API state (no file yet is the empty state).
    api_state: Value,
    maps: MapState,
}

fn get(socket: &Path, path: &str) -> String {
    let answer = client::call_blocking(socket, Method::GET, path, None).unwrap_or_else(|error| panic!("GET {path}: {error}"));
    String::from_utf8(answer.body).unwrap()
}

fn snapshot(lab: &Lab, socket: &Path) -> Snapshot {
    Snapshot {
        networks: get(socket, "/v1/networks"),
        endpoints: get(socket, "/v1/endpoints"),
        api_state: api_state(lab, "h1"),
        maps: Datapath::pinned_state(&PinDir::new(&lab.bpffs_dir(), "h1")).expect("reading h1's pinned maps"),
    }
}

/// Hostile values for any field.
fn values() -> Vec<Value> {
    let mut values = vec![
        Value::Null,
        json!(true),
        json!(0),
        json!(-1),
        json!(1.5),
        json!(16777216),
        json!(4294967296u64),
        json!([]),
        json!({}),
        json!({"kind": 1}),
        json!("x".repeat(70)),
    ];
    for text in [
        "", " ", ".", "..", "a/b", "eth:0", "eth\t0", "a\u{0}b", "\u{202e}blue", "é", "p123456789abcdef", "10.20.0.0", "10.20.0.255",
        "10.99.0.5", "10.20.0.5/24", "10.20.0.0/33", "0.0.0.0", "224.0.0.1", "255.255.255.255", "::", "ff02::1", "fd00::/129",
        "01:00:5e:00:00:01", "ff:ff:ff:ff:ff:ff", "00:00:00:00:00:00", "02:00:00:00:00:1g", "02:00:00:00:00", "file", "unknown",
    ] {
        values.push(json!(text));
    }
    values
}

/// The bodies to send: `good` with each field replaced by each value, each
/// field removed, an unknown field added, and a few that are not JSON.
fn bodies(good: &Value) -> Vec<Vec<u8>> {
    let mut bodies = Vec::new();
    let fields: Vec<String> = good.as_object().unwrap().keys().cloned().collect();
    for field in &fields {
        for value in values() {
            let mut body = good.clone();
            body[field] = value;
            bodies.push(serde_json::to_vec(&body).unwrap());
        }
        let mut body = good.clone();
        body.as_object_mut().unwrap().remove(field);
        bodies.push(serde_json::to_vec(&body).unwrap());
    }
    let mut body = good.clone();
    body["colour"] = json!("red");
    bodies.push(serde_json::to_vec(&body).unwrap());
    let text = serde_json::to_vec(good).unwrap();
    bodies.push(text[..text.len() / 2].to_vec());
    bodies.push(b"[1,2]".to_vec());
    bodies.push(b"\xff\xfe".to_vec());
    bodies.push(Vec::new());
    bodies
}

#[derive(Debug, Default)]
struct Outcomes {
    refused: usize,
    accepted_and_removed: usize,
}

/// Sends each body to `path`; checks the refusals changed nothing and the
/// acceptances are undone whole by `remove` (which returns the DELETE path).
fn send_all(lab: &Lab, socket: &Path, path: &str, bodies: Vec<Vec<u8>>, remove: impl Fn(&Value) -> String) -> Outcomes {
    let mut outcomes = Outcomes::default();
    let before = snapshot(lab, socket);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for body in bodies {
        let shown = String::from_utf8_lossy(&body).into_owned();
        let answer = runtime.block_on(client::exchange(socket, Method::POST, path, Some(body))).unwrap();
        if answer.status >= 400 {
            let refusal: Value = serde_json::from_slice(&answer.body).unwrap_or_else(|_| panic!("{shown}: a refusal that is not JSON"));
            assert!(answer.status < 500, "{shown}: a bad request is the client's fault, got HTTP {} {refusal}", answer.status);
            let is_object = matches!(serde_json::from_str::<Value>(&shown), Ok(Value::Object(_)));
            assert!(!is_object || refusal["field"].as_str().is_some_and(|f| !f.is_empty()), "{shown}: the refusal should name a field: {refusal}");
            let after = snapshot(lab, socket);
            assert!(after == before, "{shown} was refused ({refusal}) but changed the agent:\nbefore {before:?}\nafter  {after:?}");
            outcomes.refused += 1;
        } else {
            let created: Value = serde_json::from_slice(&answer.body).unwrap();
            assert_ne!(snapshot(lab, socket).api_state, before.api_state, "{shown} was accepted ({created}) but the API state did not change");
            let delete = remove(&created);
            client::call_blocking(socket, Method::DELETE, &delete, None).unwrap_or_else(|error| panic!("{delete} after {shown}: {error}"));
            let after = snapshot(lab, socket);
            assert!(after == before, "{shown} accepted then removed ({delete}) left the agent changed:\nbefore {before:?}\nafter  {after:?}");
            outcomes.accepted_and_removed += 1;
        }
    }
    outcomes
}

#[test]
fn hostile_api_bodies_are_refused_whole_or_undone_whole() {
    let container = |mac: [u8; 6], ip| ContainerSpec { name: "c".into(), mac, ip, vni: 100 };
    let host = |n: &str, c| HostSpec { name: n.into(), kind: HostKind::Overlay, containers: vec![c] };
    let mut lab = Lab::build(LabSpec {
        scope: "hdrefuse".into(),
        vxlan_port: 4789,
        hosts: vec![
            host("h1", container([2, 0, 0, 0, 0x77, 1], "10.10.0.1".parse().unwrap())),
            host("h2", container([2, 0, 0, 0, 0x77, 2], "10.10.0.2".parse().unwrap())),
        ],
    })
    .expect("building the lab");
    // A port for the endpoints: a veth pair in h1's namespace.
    lab.host("h1").netns.ip(&["link", "add", "hdq0", "type", "veth", "peer", "name", "hdq0x"]).unwrap();
    lab.host("h1").netns.ip(&["link", "set", "hdq0", "up"]).unwrap();
    lab.start_agents(&overlay_binary().unwrap()).expect("starting the agents");
    let socket: PathBuf = lab.dir.join("run").join("h1.sock");
    // A network of the API's to add endpoints to (it stays throughout).
    client::call_blocking(&socket, Method::POST, "/v1/networks", Some(json!({"name": "hdblue", "vni": 200, "subnet": "10.20.0.0/24"}))).unwrap();

    let network = json!({"name": "hdred", "vni": 300, "subnet": "10.30.0.0/24", "mtu": 1450, "flood_limit": 8, "options": {"note": "x"}});
    let networks = send_all(&lab, &socket, "/v1/networks", bodies(&network), |created| format!("/v1/networks/{}", created["name"].as_str().unwrap()));
    let endpoint = json!({"network": "hdblue", "interface": "hdq0", "id": "hdq0", "mac": "02:00:00:00:77:05", "ipv4": "10.20.0.5", "ipv6": "fd00:20::5", "owner": {"kind": "api"}});
    let endpoints = send_all(&lab, &socket, "/v1/endpoints", bodies(&endpoint), |created| format!("/v1/endpoints/{}", created["id"].as_str().unwrap()));
    println!("POST /v1/networks: {networks:?}\nPOST /v1/endpoints: {endpoints:?}");
    assert!(networks.refused > 50 && endpoints.refused > 100, "most hostile bodies should be refused: {networks:?} {endpoints:?}");
    assert!(networks.accepted_and_removed > 5 && endpoints.accepted_and_removed > 5, "some variations are valid and undone: {networks:?} {endpoints:?}");
}
