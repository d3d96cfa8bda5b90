//! Issue 12, "never apply half", for the CNI plugin against a real agent
//! (cluster mode, as `cni.rs`): the network configuration on stdin and the
//! CNI_* variables, from the corpus in `overlay-user/tests/corpus/cni/`
//! mutated together by the seeded generator of the unit property test
//! (`overlay::json_fuzz::cni_input::CniCases`), given to the real
//! `overlay-cni` binary as a runtime gives them. Each invocation succeeds,
//! or fails with the CNI error JSON on stdout (never a panic or a crash),
//! and passes that test's oracle: a code a malformed invocation may get
//! and, for a bad variable (4), stdin that is JSON but does not decode (6)
//! or a bad configuration (7), a message naming the variable or key.
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
    json_fuzz::{
        cni_input::{CniCases, environment, refusal_problem},
        corpus, run_size,
    },
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
use serde_json::{Value, json};

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

/// The variables of a generated environment, as [`invoke`] takes them.
fn variables(env: &[u8]) -> CniEnv {
    let variables = environment(env);
    let get = |name: &str| variables.iter().find(|(n, _)| n == name).and_then(|(_, value)| value.clone());
    CniEnv {
        command: get("CNI_COMMAND").unwrap_or_default(),
        container_id: get("CNI_CONTAINERID"),
        netns: get("CNI_NETNS"),
        ifname: get("CNI_IFNAME"),
        args: get("CNI_ARGS"),
        path: get("CNI_PATH"),
    }
}

/// Codes beyond reading the invocation, which a real agent and kernel add:
/// no such container or namespace, agent unreachable, STATUS, ours (a
/// refusal by the agent).
const AGAINST_THE_AGENT: &[u32] = &[3, 8, 11, 50, 999];

/// What is wrong with a failed invocation's answer, if anything: a crash,
/// no error JSON, or what the property test's oracle finds wrong with it.
fn failure_problem(invocation: &Invocation, stdin: &[u8]) -> Option<String> {
    if invocation.stderr.contains("panicked") || invocation.code < 0 || invocation.code == 101 {
        return Some(format!("the plugin crashed (exit {}): {}", invocation.code, invocation.stderr));
    }
    let Some(code) = invocation.stdout["code"].as_u64() else { return Some(format!("a failure without the CNI error JSON on stdout: {}", invocation.stdout)) };
    let text = |key: &str| invocation.stdout[key].as_str().unwrap_or_default().to_owned();
    refusal_problem(u32::try_from(code).unwrap_or(u32::MAX), &text("msg"), &text("details"), stdin, AGAINST_THE_AGENT)
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
    let placed_corpus = |prefix: &str| corpus("cni", prefix).into_iter().map(|(name, value)| (name, placed(&value, &places))).collect();
    let generator = CniCases::new(seed, placed_corpus("env-"), placed_corpus("conf-"));
    let plugin = cni_binary().unwrap();
    let base = snapshot(&lab, &container);
    let mut outcomes = Outcomes::default();
    for case in 0..cases {
        let generated = generator.case(case);
        // What the plugin is given (invalid UTF-8 replaced: a runtime passes text).
        let (replay, stdin) = (generated.to_string(), String::from_utf8_lossy(&generated.stdin).into_owned());
        let variables = variables(&generated.env);
        let invocation = invoke(&plugin, &variables, &stdin).expect("running overlay-cni");
        if invocation.code != 0 {
            if let Some(problem) = failure_problem(&invocation, stdin.as_bytes()) {
                panic!("{replay}: {problem}");
            }
            let after = snapshot(&lab, &container);
            assert!(after == base, "{replay}\nwas refused ({}) but changed something:\nbefore {base:?}\nafter  {after:?}", invocation.stdout);
            outcomes.refused += 1;
            *outcomes.by_code.entry(invocation.stdout["code"].as_u64().unwrap_or(0)).or_default() += 1;
            continue;
        }
        if variables.command == "ADD" {
            let deleted = invoke(&plugin, &CniEnv { command: "DEL".into(), ..variables.clone() }, &stdin).expect("running overlay-cni");
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
