//! The CNI plugin's input (`overlay-cni`): the network configuration on
//! stdin (with `ipam`, `runtimeConfig`, `prevResult`) and the CNI_*
//! environment, from `tests/corpus/cni/` (`conf-*.json`, `env-*.json`),
//! mutated together. Read as the plugin reads them (rscni's variables and
//! decoding, then [`crate::cni`]'s parsers, up to the first call to the
//! agent): each invocation is taken, or refused with a CNI error whose code
//! says what is wrong and whose message names the key or variable and the
//! value; nothing panics. What the plugin then does against a real agent
//! (and that a refusal changes nothing) is `tests/tests/cni_refusals.rs`,
//! on the same generator ([`CniCases`]) and oracle ([`refusal_problem`]).
// Outside the unit tests (feature "fuzzing") only the checks are used.
#![cfg_attr(not(test), allow(dead_code, unused_imports))]
use std::str::FromStr as _;

use rscni_plugin::{
    error::Error,
    test_util::ArgsBuilder,
    types::{Args, Cmd},
};
use serde_json::{Map, Value, json};

use super::{Rng, Tally, corpus, interesting_values, mutate, run_size, shown};
use crate::cni::{
    conf::{Attachment, PluginConf, Requested},
    ipam::IpamConf,
};

/// The configuration's keys, for the mutator (nested ones by their own names).
pub const CONF_FIELDS: &[&str] = &[
    "cniVersion", "name", "type", "agent_socket", "network", "mtu", "host_netns", "ipam", "routes", "dst", "gw", "runtimeConfig", "ips", "mac",
    "prevResult", "interfaces", "capabilities", "dns", "cni.dev/valid-attachments",
];
/// The CNI_* variables.
pub const ENV_FIELDS: &[&str] = &["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH"];

/// Values a runtime, or a hostile caller, could put in a variable.
pub fn env_values() -> Vec<Value> {
    let mut values: Vec<Value> = [
        "ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION", "add", "", "ADD ", "IgnoreUnknown=1", "IP=10.10.0.999", "IP=10.10.0.70/24", "MAC=zz",
        "MAC=01:00:5e:00:00:01", "IP", "=", ";;", "IP=10.10.0.71;IP=10.10.0.72", "K8S_POD_NAME=a;MAC=02:00:00:00:0c:4f", "eth0", "lo", "eth 0",
        "a/b", "abcdefghijklmnop", "../x", "/nonexistent/netns", "/var/run/netns/", "/dev/null",
    ]
    .iter()
    .map(|text| json!(text))
    .collect();
    values.extend(interesting_values());
    values
}

/// A mutated environment: each variable's value, or none for unset (a
/// non-string value becomes its JSON text, as a careless runtime would pass it).
pub fn environment(env: &[u8]) -> Vec<(String, Option<String>)> {
    let map: Map<String, Value> = match serde_json::from_slice::<Value>(env) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    ENV_FIELDS
        .iter()
        .map(|name| {
            let value = match map.get(*name) {
                None | Some(Value::Null) => None,
                Some(Value::String(text)) => Some(text.replace('\0', "")),
                Some(other) => Some(other.to_string()),
            };
            (name.to_string(), value)
        })
        .collect()
}

/// Builds the plugin's arguments as rscni does from the environment and
/// stdin (none for VERSION, which rscni answers without reading stdin).
fn args(env: &[(String, Option<String>)], stdin: &[u8]) -> Result<(Cmd, Option<Args>), Error> {
    let get = |name: &str| env.iter().find(|(n, _)| n == name).and_then(|(_, v)| v.clone());
    let command = Cmd::from_str(&get("CNI_COMMAND").unwrap_or_default())?;
    if matches!(command, Cmd::Version) {
        return Ok((command, None));
    }
    let mut builder = ArgsBuilder::new();
    if let Some(id) = get("CNI_CONTAINERID") {
        builder = builder.container_id(&id)?;
    }
    if let Some(netns) = get("CNI_NETNS") {
        builder = builder.netns(&netns);
    }
    if let Some(ifname) = get("CNI_IFNAME") {
        builder = builder.ifname(&ifname)?;
    }
    if let Some(args) = get("CNI_ARGS") {
        builder = builder.args(&args);
    }
    if let Some(path) = get("CNI_PATH") {
        builder = builder.path(&path);
    }
    let missing: Vec<&str> = match command {
        Cmd::Add | Cmd::Check => ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"].into_iter().filter(|n| get(n).is_none()).collect(),
        Cmd::Del => ["CNI_CONTAINERID", "CNI_IFNAME"].into_iter().filter(|n| get(n).is_none()).collect(),
        Cmd::Gc => ["CNI_PATH"].into_iter().filter(|n| get(n).is_none_or(|p| p.is_empty())).collect(),
        _ => Vec::new(),
    };
    if !missing.is_empty() {
        return Err(Error::missing_env(&missing));
    }
    let text = std::str::from_utf8(stdin).map_err(|error| Error::IOFailure(error.to_string()))?;
    // The plugin decodes stdin before rscni does, to name the key (crate::cni::stdin).
    if let Some(problem) = crate::cni::stdin::decode_problem(stdin) {
        return Err(problem);
    }
    Ok((command, Some(builder.config(text)?.build()?)))
}

/// Reads an invocation as [`crate::cni::OverlayCni`] does, up to the agent.
fn read(env: &[(String, Option<String>)], stdin: &[u8]) -> Result<(), Error> {
    let (command, Some(args)) = args(env, stdin)? else { return Ok(()) };
    match IpamConf::delegated(args.config())? {
        Some(_) if matches!(command, Cmd::Add | Cmd::Del | Cmd::Check) => {
            Attachment::of(&args)?;
            Requested::of(&args).map(drop)
        }
        Some(_) => Ok(()),
        None => {
            PluginConf::parse(args.config())?;
            if matches!(command, Cmd::Add | Cmd::Del | Cmd::Check) {
                Attachment::of(&args)?;
                Requested::of(&args)?;
            }
            Ok(())
        }
    }
}

/// The codes reading an invocation may end in: a version, a field, a
/// variable, I/O (stdin not UTF-8), decoding, the configuration.
pub const READING_CODES: &[u32] = &[1, 2, 4, 5, 6, 7];

/// What is wrong with a refusal, if anything: a code a malformed invocation
/// may get (one of [`READING_CODES`] or of `also`), and a message that names
/// what is wrong: a bad variable (4) by its name, a value of the wrong type
/// in stdin that is JSON (6) by its key's path, a bad configuration (7) by
/// its key. Stdin that is not JSON (6) gets serde's sentence (line and
/// column).
pub fn refusal_problem(code: u32, msg: &str, details: &str, stdin: &[u8], also: &[u32]) -> Option<String> {
    let message = format!("{msg} {details}");
    match code {
        // rscni's own checks call CNI_CONTAINERID and CNI_IFNAME by what they hold.
        4 if !["CNI_", "containerID", "interface name"].iter().any(|name| message.contains(name)) => Some(format!("a bad variable (code 4) should name it: {message:?}")),
        6 => (!names_undecodable_key(details, stdin)).then(|| format!("stdin that is JSON but does not decode (code 6) should name the key's path: {message:?}")),
        7 => {
            let conf: Option<Map<String, Value>> = match serde_json::from_slice(stdin) {
                Ok(Value::Object(map)) => Some(map),
                _ => None,
            };
            let mut names: Vec<String> = CONF_FIELDS.iter().map(|f| f.to_string()).collect();
            names.extend(conf.iter().flat_map(|map| map.keys().cloned()));
            (!names.iter().any(|name| message.contains(name.as_str()))).then(|| format!("a bad configuration (code 7) should name its key: {message:?}"))
        }
        code if READING_CODES.contains(&code) || also.contains(&code) => None,
        other => Some(format!("code {other} is not one a malformed invocation should get: {message:?}")),
    }
}

/// Whether a decoding error's details start with the path of the value
/// that does not decode (`ipam.routes[0]: invalid type...`): a key of the
/// configuration, or the configuration itself for a missing or repeated
/// key (which serde's sentence names) or a document that is not an object.
fn names_undecodable_key(details: &str, stdin: &[u8]) -> bool {
    let whole = |sentences: &[&str]| details.strip_prefix("the network configuration: ").is_some_and(|rest| sentences.iter().any(|s| rest.starts_with(s)));
    match serde_json::from_slice::<Value>(stdin) {
        Err(_) => true,
        Ok(Value::Object(map)) => {
            map.keys().any(|key| details.strip_prefix(key.as_str()).is_some_and(|rest| rest.starts_with(['.', '[', ':'])))
                || whole(&["missing field `", "duplicate field `"])
        }
        Ok(_) => whole(&["invalid type: "]),
    }
}

/// Counts of what a run came to.
#[derive(Debug, Default)]
struct CniTally {
    tally: Tally,
    by_code: std::collections::BTreeMap<u32, u64>,
}

fn check(env: &[u8], stdin: &[u8], tally: &mut CniTally) -> Option<String> {
    let environment = environment(env);
    match std::panic::catch_unwind(|| read(&environment, stdin)) {
        Err(_) => Some("reading the invocation panicked".to_owned()),
        Ok(Ok(())) => {
            tally.tally.valid += 1;
            None
        }
        Ok(Err(error)) => {
            let code = u32::from(&error);
            *tally.by_code.entry(code).or_default() += 1;
            if code == 6 && serde_json::from_slice::<Value>(stdin).is_err() {
                tally.tally.refused_as_not_json += 1;
            } else {
                tally.tally.refused_naming_a_field += 1;
            }
            refusal_problem(code, error.msg(), error.details(), stdin, &[])
        }
    }
}

/// The environments of every command, for a fuzzed stdin.
pub const ENVIRONMENTS: &[&str] = &[
    r#"{"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c0ffee", "CNI_NETNS": "/var/run/netns/x", "CNI_IFNAME": "eth0", "CNI_ARGS": "IgnoreUnknown=1;IP=10.10.0.60", "CNI_PATH": "/opt/cni/bin"}"#,
    r#"{"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c0ffee", "CNI_IFNAME": "eth0"}"#,
    r#"{"CNI_COMMAND": "CHECK", "CNI_CONTAINERID": "c0ffee", "CNI_NETNS": "/var/run/netns/x", "CNI_IFNAME": "eth0"}"#,
    r#"{"CNI_COMMAND": "STATUS"}"#,
    r#"{"CNI_COMMAND": "GC", "CNI_PATH": "/opt/cni/bin"}"#,
];

/// One invocation checked (the `cargo fuzz` target's property).
pub fn check_invocation(env: &[u8], stdin: &[u8]) -> Option<String> {
    check(env, stdin, &mut CniTally::default())
}

/// The seeded generator of CNI invocations, shared with
/// `tests/tests/cni_refusals.rs` (which gives it the corpus with the lab's
/// paths put in): case `n` of a seed is always the same invocation.
pub struct CniCases {
    seed: u64,
    envs: Vec<(String, Value)>,
    confs: Vec<(String, Value)>,
    values: Vec<Value>,
    env_values: Vec<Value>,
}

/// One generated invocation: the variables as JSON (see [`environment`]) and stdin.
pub struct CniCase {
    /// The case, the seed and the corpus files it came from, to replay it.
    pub origin: String,
    pub env: Vec<u8>,
    pub stdin: Vec<u8>,
}

impl CniCases {
    /// Cases of `seed` from the environments (`env-*.json`) and configurations (`conf-*.json`) of a corpus.
    pub fn new(seed: u64, envs: Vec<(String, Value)>, confs: Vec<(String, Value)>) -> CniCases {
        assert!(!envs.is_empty() && !confs.is_empty(), "the CNI corpus should have environments and configurations");
        CniCases { seed, envs, confs, values: interesting_values(), env_values: env_values() }
    }

    pub fn case(&self, case: u64) -> CniCase {
        let mut rng = Rng::for_case(self.seed ^ 0xc41, case);
        let (env_name, env) = &self.envs[rng.below(self.envs.len())];
        let (conf_name, conf) = &self.confs[rng.below(self.confs.len())];
        // The variables, the configuration, both, or neither mutated (a
        // corpus invocation as it is, which a real agent carries out).
        let which = rng.below(4);
        let env = if which == 0 || which == 2 { mutate(&mut rng, env, ENV_FIELDS, &self.env_values) } else { serde_json::to_vec(env).unwrap() };
        let stdin = if which == 1 || which == 2 { mutate(&mut rng, conf, CONF_FIELDS, &self.values) } else { serde_json::to_vec(conf).unwrap() };
        CniCase { origin: format!("CNI case {case} (OVERLAY_JSON_FUZZ_SEED={:#x}, from {env_name} and {conf_name})", self.seed), env, stdin }
    }
}

impl std::fmt::Display for CniCase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\nenv: {}\nstdin: {}", self.origin, shown(&self.env), shown(&self.stdin))
    }
}

#[test]
fn every_cni_corpus_invocation_is_read() {
    for (env_name, env) in corpus("cni", "env-") {
        for (conf_name, conf) in corpus("cni", "conf-") {
            let environment = environment(&serde_json::to_vec(&env).unwrap());
            let result = read(&environment, &serde_json::to_vec(&conf).unwrap());
            assert!(result.is_ok(), "{env_name} with {conf_name} should be read: {result:?}");
        }
    }
}

#[test]
fn mutated_cni_invocations_are_read_or_refused_naming_the_key() {
    let (seed, cases) = run_size();
    let generator = CniCases::new(seed, corpus("cni", "env-"), corpus("cni", "conf-"));
    let mut tally = CniTally::default();
    for case in 0..cases {
        let invocation = generator.case(case);
        tally.tally.cases += 1;
        if let Some(problem) = check(&invocation.env, &invocation.stdin, &mut tally) {
            panic!("{invocation}: {problem}");
        }
    }
    println!("CNI invocations: {:?}, by code {:?}", tally.tally, tally.by_code);
    assert!(
        tally.tally.valid * 20 > tally.tally.cases && tally.tally.refused_naming_a_field * 10 > tally.tally.cases,
        "the mutations should give valid invocations and refusals of keys: {tally:?}"
    );
}

#[test]
fn a_value_of_the_wrong_type_is_refused_naming_its_key_after_the_variables() {
    let add = environment(ENVIRONMENTS[0].as_bytes());
    let conf = |key: &str, value: Value| {
        let mut conf = json!({"cniVersion": "1.0.0", "name": "blue", "type": "overlay-cni", "agent_socket": "/s"});
        conf[key] = value;
        serde_json::to_vec(&conf).unwrap()
    };
    for (stdin, named) in [
        (conf("name", json!(5)), "name: invalid type: integer `5`"),
        (conf("ipam", json!([])), "ipam: invalid type: sequence"),
        (conf("cniVersion", json!(true)), "cniVersion: invalid type: boolean `true`"),
        // Found by cni_refusals.rs: rscni's version negotiation gave the value alone.
        (conf("cniVersion", json!("192.0.2.1")), "cniVersion: invalid version format: 192.0.2.1"),
        (conf("runtimeConfig", json!({"portMappings": 1})), "runtimeConfig.portMappings: invalid type: integer `1`"),
    ] {
        let error = read(&add, &stdin).expect_err(named);
        assert!(
            u32::from(&error) == 6 && error.details().starts_with(named) && refusal_problem(6, error.msg(), error.details(), &stdin, &[]).is_none(),
            "{}: expected code 6 whose details start {named:?}, got {error:?}",
            shown(&stdin)
        );
        // serde's sentence alone, as rscni gave it, no longer passes.
        let unnamed = error.details().split_once(": ").unwrap().1;
        assert!(refusal_problem(6, error.msg(), unnamed, &stdin, &[]).is_some(), "the oracle should refuse {unnamed:?} for {}", shown(&stdin));
    }
    // rscni's order: the variables first; VERSION does not read stdin.
    let mut no_netns = add.clone();
    no_netns.retain(|(name, _)| name != "CNI_NETNS");
    let error = read(&no_netns, &conf("ipam", json!([]))).expect_err("ADD without CNI_NETNS");
    assert!(u32::from(&error) == 4 && error.details().contains("CNI_NETNS"), "ADD without CNI_NETNS and a bad ipam: expected code 4 naming CNI_NETNS, got {error:?}");
    let version = environment(br#"{"CNI_COMMAND": "VERSION"}"#);
    assert!(read(&version, b"[").is_ok(), "VERSION should be answered whatever stdin holds");
}
