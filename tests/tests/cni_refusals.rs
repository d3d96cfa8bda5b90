//! Issue 12, "never apply half", for the CNI plugin against a real agent
//! (cluster mode, as `cni.rs`): the network configuration on stdin and the
//! CNI_* variables, from the corpus in `overlay-user/tests/corpus/cni/`
//! mutated together by the seeded generator of `overlay::json_fuzz`, given to
//! the real `overlay-cni` binary as a runtime gives them. Each invocation
//! succeeds, or fails with the CNI error JSON on stdout (never a panic or a
//! crash), with a code a malformed invocation may get and, for a bad
//! configuration (7) or variable (4), a message naming the key or variable.
//! A refusal leaves the agent's endpoints, allocations, API state file,
//! h1's pinned maps, h1's links and the container's namespace exactly as
//! before; a successful ADD is undone by DEL (with the same input), after
//! which all of them are as before.
//!
//! `OVERLAY_CNI_FUZZ_CASES` (default 250) and `OVERLAY_JSON_FUZZ_SEED` run
//! more; a failure gives the seed and case.
use overlay::{
    api::client::{self, Method},
    datapath::Datapath,
    json_fuzz::{Rng, corpus, interesting_values, mutate, run_size, shown},
    pinning::PinDir,
    state::MapState,
};
use overlay_lab::{
    cni::{CniEnv, CniLab, Invocation, NETWORK, invoke},
    etcd,
    lab::cni_binary,
    netns::Netns,
    saved_state::api_state,
};
use serde_json::{Map, Value, json};

/// The configuration's keys and the variables, for the mutator.
const CONF_FIELDS: &[&str] = &[
    "cniVersion", "name", "type", "agent_socket", "network", "mtu", "host_netns", "ipam", "routes", "dst", "gw", "runtimeConfig", "ips", "mac",
    "prevResult", "interfaces", "capabilities", "dns", "cni.dev/valid-attachments",
];
const ENV_FIELDS: &[&str] = &["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH"];

#[derive(Debug, PartialEq)]
struct Snapshot {
    endpoints: String,
    addresses: String,
    /// The agent's saved API state; no file yet is the empty state.
    api_state: Value,
    maps: MapState,
    host_links: String,
    container_links: String,
}

fn links(netns: &Netns) -> String {
    let output = netns.ip(&["-o", "link", "show"]).expect("listing links");
    // Without the counters and state that change by themselves.
    String::from_utf8_lossy(&output.stdout).lines().map(|line| line.split(" state ").next().unwrap_or(line).to_owned()).collect::<Vec<_>>().join("\n")
}

fn snapshot(lab: &CniLab, container: &Netns) -> Snapshot {
    let socket = lab.socket("h1");
    let get = |path: &str| {
        let answer = client::call_blocking(&socket, Method::GET, path, None).unwrap_or_else(|error| panic!("GET {path}: {error}"));
        String::from_utf8(answer.body).unwrap()
    };
    Snapshot {
        endpoints: get("/v1/endpoints"),
        addresses: get(&format!("/v1/networks/{NETWORK}/addresses")),
        api_state: api_state(&lab.lab, "h1"),
        maps: Datapath::pinned_state(&PinDir::new(&lab.lab.bpffs_dir(), "h1")).expect("reading h1's pinned maps"),
        host_links: links(&lab.lab.host("h1").netns),
        container_links: links(container),
    }
}

/// Replaces the corpus's placeholders (`@socket`, `@netns`, `@host_netns`).
fn placed(value: &Value, places: &[(&str, String)]) -> Value {
    match value {
        Value::String(text) => places.iter().find(|(name, _)| name == text).map_or_else(|| value.clone(), |(_, real)| json!(real)),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), placed(v, places))).collect()),
        Value::Array(items) => Value::Array(items.iter().map(|v| placed(v, places)).collect()),
        other => other.clone(),
    }
}

/// The variables of a mutated environment (a non-string value passed as its
/// JSON text; NUL cannot be in a variable).
fn environment(env: &[u8]) -> CniEnv {
    let map: Map<String, Value> = match serde_json::from_slice::<Value>(env) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    let get = |name: &str| match map.get(name) {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text.replace('\0', "")),
        Some(other) => Some(other.to_string()),
    };
    CniEnv {
        command: get("CNI_COMMAND").unwrap_or_default(),
        container_id: get("CNI_CONTAINERID"),
        netns: get("CNI_NETNS"),
        ifname: get("CNI_IFNAME"),
        args: get("CNI_ARGS"),
        path: get("CNI_PATH"),
    }
}

/// What is wrong with a failed invocation's answer, if anything.
fn refusal_problem(invocation: &Invocation, stdin: &[u8]) -> Option<String> {
    if invocation.stderr.contains("panicked") || invocation.code < 0 || invocation.code == 101 {
        return Some(format!("the plugin crashed (exit {}): {}", invocation.code, invocation.stderr));
    }
    let code = invocation.stdout["code"].as_u64();
    let message = format!("{} {}", invocation.stdout["msg"].as_str().unwrap_or_default(), invocation.stdout["details"].as_str().unwrap_or_default());
    let Some(code) = code else { return Some(format!("a failure without the CNI error JSON on stdout: {}", invocation.stdout)) };
    match code {
        // rscni's own checks call CNI_CONTAINERID and CNI_IFNAME by what they hold.
        4 if !["CNI_", "containerID", "interface name"].iter().any(|name| message.contains(name)) => Some(format!("a bad variable (code 4) should name it: {message:?}")),
        7 => {
            let mut names: Vec<String> = CONF_FIELDS.iter().map(|f| f.to_string()).collect();
            if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(stdin) {
                names.extend(map.keys().cloned());
            }
            (!names.iter().any(|name| message.contains(name.as_str()))).then(|| format!("a bad configuration (code 7) should name its key: {message:?}"))
        }
        // Version, variables, I/O, decoding, no such namespace, agent unreachable, STATUS, ours (a refusal by the agent).
        1 | 2 | 3 | 4 | 5 | 6 | 8 | 11 | 50 | 999 => None,
        other => Some(format!("code {other} is not one a malformed invocation should get: {message:?}")),
    }
}

#[derive(Debug, Default)]
struct Outcomes {
    refused: u64,
    by_code: std::collections::BTreeMap<u64, u64>,
    added_and_deleted: u64,
    succeeded_changing_nothing: u64,
}

#[test]
fn mutated_cni_invocations_are_refused_whole_or_undone_whole() {
    if let Some(why) = etcd::missing() {
        println!("skipped: {why}");
        return;
    }
    let (seed, _) = run_size();
    let cases: u64 = std::env::var("OVERLAY_CNI_FUZZ_CASES").ok().map_or(250, |n| n.parse().expect("OVERLAY_CNI_FUZZ_CASES"));
    let lab = CniLab::start("hardcni", 1).expect("starting the lab");
    let container = Netns::new("hardcni", "ctr").unwrap();
    let places = [
        ("@socket", lab.socket("h1").display().to_string()),
        ("@netns", format!("/var/run/netns/{}", container.name())),
        ("@host_netns", format!("/var/run/netns/{}", lab.lab.host("h1").netns.name())),
    ];
    let envs: Vec<(String, Value)> = corpus("cni", "env-").into_iter().map(|(n, v)| (n, placed(&v, &places))).collect();
    let confs: Vec<(String, Value)> = corpus("cni", "conf-").into_iter().map(|(n, v)| (n, placed(&v, &places))).collect();
    let mut env_values: Vec<Value> =
        ["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION", "add", "", "IgnoreUnknown=1", "IP=10.10.0.999", "IP=10.10.0.70/24", "MAC=zz", "MAC=01:00:5e:00:00:01", "IP", ";;", "eth0", "lo", "eth 0", "a/b", "/nonexistent/netns", "/var/run/netns/"]
            .iter()
            .map(|text| json!(text))
            .collect();
    env_values.extend(interesting_values());
    let values = interesting_values();
    let plugin = cni_binary().unwrap();
    let base = snapshot(&lab, &container);
    let mut outcomes = Outcomes::default();
    for case in 0..cases {
        let mut rng = Rng::for_case(seed ^ 0xc41, case);
        let (env_name, env) = &envs[rng.below(envs.len())];
        let (conf_name, conf) = &confs[rng.below(confs.len())];
        let which = rng.below(4);
        let env = if which == 0 || which == 2 { mutate(&mut rng, env, ENV_FIELDS, &env_values) } else { serde_json::to_vec(env).unwrap() };
        let stdin = if which == 1 || which == 2 { mutate(&mut rng, conf, CONF_FIELDS, &values) } else { serde_json::to_vec(conf).unwrap() };
        let replay = format!(
            "CNI case {case} (OVERLAY_JSON_FUZZ_SEED={seed:#x}, from {env_name} and {conf_name})\nenv: {}\nstdin: {}",
            shown(&env),
            shown(&stdin)
        );
        let variables = environment(&env);
        let invocation = invoke(&plugin, &variables, &String::from_utf8_lossy(&stdin)).expect("running overlay-cni");
        if invocation.code != 0 {
            if let Some(problem) = refusal_problem(&invocation, &stdin) {
                panic!("{replay}: {problem}");
            }
            let after = snapshot(&lab, &container);
            assert!(after == base, "{replay}\nwas refused ({}) but changed something:\nbefore {base:?}\nafter  {after:?}", invocation.stdout);
            outcomes.refused += 1;
            *outcomes.by_code.entry(invocation.stdout["code"].as_u64().unwrap_or(0)).or_default() += 1;
            continue;
        }
        if variables.command == "ADD" {
            let deleted = invoke(&plugin, &CniEnv { command: "DEL".into(), ..variables.clone() }, &String::from_utf8_lossy(&stdin)).expect("running overlay-cni");
            assert_eq!(deleted.code, 0, "{replay}\nADD succeeded ({}), DEL with the same input failed: {:?}", invocation.stdout, deleted);
            let after = snapshot(&lab, &container);
            assert!(after == base, "{replay}\nADD ({}) then DEL left something changed:\nbefore {base:?}\nafter  {after:?}", invocation.stdout);
            outcomes.added_and_deleted += 1;
        } else {
            let after = snapshot(&lab, &container);
            assert!(after == base, "{replay}\n{} succeeded ({}) and changed something:\nbefore {base:?}\nafter  {after:?}", variables.command, invocation.stdout);
            outcomes.succeeded_changing_nothing += 1;
        }
    }
    println!("overlay-cni invocations ({cases}): {outcomes:?}");
    assert!(outcomes.refused > cases / 4 && outcomes.added_and_deleted > cases / 20, "the mutations should give refusals and ADDs: {outcomes:?}");
}
