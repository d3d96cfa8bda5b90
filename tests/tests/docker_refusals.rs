//! Issue 12, "never apply half", for the Docker plugin against a real
//! agent: every request body of the network and IPAM drivers, from the
//! corpus in `overlay-user/tests/corpus/docker/` mutated by the seeded
//! generator of `overlay::json_fuzz`, posted to the agent's plugin socket as
//! dockerd would (no dockerd: the bodies are what is under test). Each
//! answer is a success, or a 4xx whose `Err` names a field of the request
//! (or the `docker` flag it comes from) and the value sent; the agent never
//! drops the connection (a panic). A refusal leaves the plugin's state file,
//! the API's networks, endpoints and allocations, its state file, h1's
//! pinned maps and h1's links exactly as before; a success is undone by the
//! call Docker would make next (DeleteNetwork, DeleteEndpoint, Leave,
//! ReleasePool, ReleaseAddress), after which all of them are as before.
//!
//! `OVERLAY_DOCKER_FUZZ_CASES` (per call, default 120) and
//! `OVERLAY_JSON_FUZZ_SEED` run more; a failure gives the seed and case.
use std::path::PathBuf;

use overlay::{
    api::client::{self, Method},
    datapath::Datapath,
    json_fuzz::{
        Rng, corpus,
        docker_requests::{CALLS, Call, refusal_problem},
        interesting_values, mutate, run_size, shown,
    },
    pinning::PinDir,
    state::MapState,
};
use overlay_lab::{
    lab::{ContainerSpec, HostKind, HostSpec, Lab, LabSpec, overlay_binary},
    saved_state::api_state,
};
use serde_json::{Value, json};

/// The base state's Docker network and endpoint (the corpus refers to them).
const BASE_NETWORK: &str = "3f2a9c1d4b5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";
const BASE_ENDPOINT: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f9061728394a5b6c7d8e9f0a1b2c3d4e5f6";
const BASE_SUBNET: &str = "10.42.0.0/24";
const PLUGIN: &str = "hardocker";

/// Everything a call could change.
#[derive(Debug, PartialEq)]
struct Snapshot {
    plugin_file: Value,
    networks: String,
    endpoints: String,
    addresses: String,
    /// The agent's saved API state (no file yet is the empty state).
    api_state: Value,
    maps: MapState,
    links: Vec<String>,
}

struct Node {
    lab: Lab,
    api: PathBuf,
    plugin: PathBuf,
    runtime: tokio::runtime::Runtime,
}

impl Node {
    fn get(&self, path: &str) -> String {
        let answer = client::call_blocking(&self.api, Method::GET, path, None).unwrap_or_else(|error| panic!("GET {path}: {error}"));
        String::from_utf8(answer.body).unwrap()
    }

    fn snapshot(&self) -> Snapshot {
        let run = self.lab.dir.join("run");
        let links = self.lab.host("h1").netns.ip(&["-o", "link", "show"]).expect("listing h1's links");
        let mut links: Vec<String> = String::from_utf8_lossy(&links.stdout)
            .lines()
            .filter_map(|line| line.split(": ").nth(1).map(|name| name.split('@').next().unwrap_or(name).to_owned()))
            .collect();
        links.sort();
        Snapshot {
            plugin_file: serde_json::from_slice(&std::fs::read(run.join("h1.docker.json")).unwrap_or_default()).unwrap_or(Value::Null),
            networks: self.get("/v1/networks"),
            endpoints: self.get("/v1/endpoints"),
            addresses: self.get("/v1/networks/hdnet/addresses"),
            api_state: api_state(&self.lab, "h1"),
            maps: Datapath::pinned_state(&PinDir::new(&self.lab.bpffs_dir(), "h1")).expect("reading h1's pinned maps"),
            links,
        }
    }

    /// Posts `body` to the plugin's `call`: (HTTP status, answer), or None when no answer came.
    fn post(&self, call: &str, body: Vec<u8>) -> Option<(u16, Value)> {
        let answer = self.runtime.block_on(client::exchange(&self.plugin, Method::POST, &format!("/{call}"), Some(body))).ok()?;
        Some((answer.status, serde_json::from_slice(&answer.body).unwrap_or(Value::Null)))
    }

    /// Posts a call that must succeed.
    fn expect_ok(&self, call: &str, body: Value) -> Value {
        match self.post(call, serde_json::to_vec(&body).unwrap()) {
            Some((200, answer)) => answer,
            other => panic!("{call} {body}: expected success, got {other:?}\n{}", self.lab.agent_logs()),
        }
    }
}

/// Replaces the corpus's `@pool` with the base pool's id.
fn with_pool(value: &Value, pool: &str) -> Value {
    match value {
        Value::String(text) if text == "@pool" => json!(pool),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), with_pool(v, pool))).collect()),
        other => other.clone(),
    }
}

/// The call that undoes an accepted `call` of `request` that answered `answer`, if one does.
fn undo(call: &Call, request: &Value, answer: &Value) -> Option<(&'static str, Value)> {
    let field = |name: &str| request.get(name).cloned().unwrap_or(Value::Null);
    match call.short() {
        "CreateNetwork" => Some(("NetworkDriver.DeleteNetwork", json!({"NetworkID": field("NetworkID")}))),
        "CreateEndpoint" => Some(("NetworkDriver.DeleteEndpoint", json!({"NetworkID": field("NetworkID"), "EndpointID": field("EndpointID")}))),
        "Join" => Some(("NetworkDriver.Leave", json!({"NetworkID": field("NetworkID"), "EndpointID": field("EndpointID")}))),
        "RequestPool" => Some(("IpamDriver.ReleasePool", json!({"PoolID": answer["PoolID"]}))),
        "RequestAddress" => Some(("IpamDriver.ReleaseAddress", json!({"PoolID": field("PoolID"), "Address": answer["Address"]}))),
        _ => None,
    }
}

#[derive(Debug, Default)]
struct Outcomes {
    refused: u64,
    accepted_and_undone: u64,
    accepted_changing_nothing: u64,
}

#[test]
fn mutated_docker_requests_are_refused_whole_or_undone_whole() {
    let (seed, _) = run_size();
    let cases: u64 = std::env::var("OVERLAY_DOCKER_FUZZ_CASES").ok().map_or(120, |n| n.parse().expect("OVERLAY_DOCKER_FUZZ_CASES"));
    let container = ContainerSpec { name: "c".into(), mac: [2, 0, 0, 0, 0x78, 1], ip: "10.10.0.1".parse().unwrap(), vni: 100 };
    let mut lab = Lab::build(LabSpec {
        scope: "hardocker".into(),
        vxlan_port: 4789,
        hosts: vec![HostSpec { name: "h1".into(), kind: HostKind::Overlay, containers: vec![container] }],
    })
    .expect("building the lab");
    let plugin_dir = lab.dir.join("plugins");
    std::fs::create_dir_all(&plugin_dir).unwrap();
    lab.start_agents_with_args(&overlay_binary().unwrap(), &["--docker-plugin", PLUGIN, "--docker-plugin-dir", plugin_dir.to_str().unwrap()])
        .expect("starting the agent with its Docker plugin");
    let node = Node {
        api: lab.dir.join("run").join("h1.sock"),
        plugin: plugin_dir.join(format!("{PLUGIN}.sock")),
        runtime: tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
        lab,
    };

    // The base: a pool, its network, an address and an endpoint (not joined), as `docker network create` and `docker create` leave them.
    let pool = node.expect_ok("IpamDriver.RequestPool", json!({"AddressSpace": "overlay-local", "Pool": BASE_SUBNET, "Options": {}, "V6": false}));
    let pool = pool["PoolID"].as_str().expect("a PoolID").to_owned();
    node.expect_ok(
        "NetworkDriver.CreateNetwork",
        json!({"NetworkID": BASE_NETWORK, "Options": {"com.docker.network.generic": {"name": "hdnet", "vni": "4242"}}, "IPv4Data": [{"Pool": BASE_SUBNET}], "IPv6Data": []}),
    );
    let address = node.expect_ok("IpamDriver.RequestAddress", json!({"PoolID": pool, "Address": "", "Options": {}}));
    node.expect_ok("NetworkDriver.CreateEndpoint", json!({"NetworkID": BASE_NETWORK, "EndpointID": BASE_ENDPOINT, "Interface": {"Address": address["Address"]}}));
    let base = node.snapshot();

    let values = interesting_values();
    let mut outcomes = Outcomes::default();
    for (stream, call) in CALLS.iter().enumerate() {
        let bodies: Vec<(String, Value)> = corpus("docker", call.short()).into_iter().map(|(name, body)| (name, with_pool(&body, &pool))).collect();
        for case in 0..cases {
            let mut rng = Rng::for_case(seed ^ (0xd0c0 + stream as u64), case);
            let (name, base_body) = &bodies[rng.below(bodies.len())];
            // One case in eight as in the corpus: the calls' own success path.
            let body = if case % 8 == 0 { serde_json::to_vec(base_body).unwrap() } else { mutate(&mut rng, base_body, call.fields, &values) };
            let replay = format!("{} case {case} (OVERLAY_JSON_FUZZ_SEED={seed:#x}, from {name}), body {}", call.name, shown(&body));
            let Some((status, answer)) = node.post(call.name, body.clone()) else {
                panic!("{replay}: no answer (the handler panicked?)\n{}", node.lab.agent_logs());
            };
            if status != 200 {
                let message = answer["Err"].as_str().unwrap_or_default();
                if let Some(problem) = refusal_problem(call, &body, status, message) {
                    panic!("{replay}: {problem}");
                }
                let after = node.snapshot();
                assert!(after == base, "{replay} was refused ({status} {message:?}) but changed the agent:\nbefore {base:?}\nafter  {after:?}");
                outcomes.refused += 1;
                continue;
            }
            let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let gateway = request["Options"]["RequestAddressType"] == json!("com.docker.network.gateway");
            match undo(call, &request, &answer).filter(|_| !gateway) {
                Some((undo_call, undo_body)) => {
                    let undone = node.post(undo_call, serde_json::to_vec(&undo_body).unwrap());
                    assert!(matches!(undone, Some((200, _))), "{replay} accepted ({answer}), then {undo_call} {undo_body}: {undone:?}");
                    let after = node.snapshot();
                    assert!(after == base, "{replay} accepted ({answer}) then undone by {undo_call} left the agent changed:\nbefore {base:?}\nafter  {after:?}");
                    outcomes.accepted_and_undone += 1;
                }
                None => {
                    let after = node.snapshot();
                    assert!(after == base, "{replay} accepted ({answer}) changed the agent, and nothing undoes it:\nbefore {base:?}\nafter  {after:?}");
                    outcomes.accepted_changing_nothing += 1;
                }
            }
        }
    }
    println!("Docker plugin requests ({} calls x {cases}): {outcomes:?}", CALLS.len());
    assert!(outcomes.refused > cases * 3 && outcomes.accepted_and_undone > cases, "the mutations should give refusals and acceptances: {outcomes:?}");
}
