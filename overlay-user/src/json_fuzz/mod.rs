//! Property tests of the JSON the agent reads from others: the local API's
//! request bodies ([`crate::api`]) and the registry's etcd records
//! ([`crate::registry::records`]). Each parser must answer every input with
//! a value or an error that names the field and the value, and never panic.
//!
//! Inputs start from the corpus in `tests/corpus/{api,records}/` and are
//! mutated with a seeded PRNG, structurally (fields removed, added,
//! renamed, their values replaced by interesting ones of every JSON type,
//! nested) and then, now and then, byte by byte (cut, bytes inserted,
//! deleted, flipped). Bounded in the unit tests; `OVERLAY_JSON_FUZZ_CASES`
//! and `OVERLAY_JSON_FUZZ_SEED` run more, and a failure prints the seed
//! and case to replay.
//!
//! The generator is public: the integration tests (`tests/tests/docker_refusals.rs`,
//! `cni_refusals.rs`) send its bodies to a real agent.
// The checks are also the `cargo fuzz` targets' properties (overlay-user/fuzz).
#[cfg(any(test, feature = "fuzzing"))]
pub mod api_requests;
#[cfg(any(test, feature = "fuzzing"))]
pub mod cni_input;
pub mod docker_requests;
#[cfg(any(test, feature = "fuzzing"))]
pub mod records;

use std::path::Path;

use serde_json::{Map, Value, json};

const DEFAULT_SEED: u64 = 0x6a73_6f6e_0000_0001;
const DEFAULT_CASES: u64 = 5_000;

/// SplitMix64: a seeded, reproducible stream.
pub struct Rng(u64);

impl Rng {
    /// The stream of case `case` of a run seeded `seed`: any case replays alone.
    pub fn for_case(seed: u64, case: u64) -> Rng {
        let mut rng = Rng(seed ^ case.wrapping_mul(0xa076_1d64_78bd_642f));
        rng.next();
        rng
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// The run's seed and number of cases (from the environment, else the defaults).
pub fn run_size() -> (u64, u64) {
    let number = |name: &str, default: u64| {
        std::env::var(name).ok().map_or(default, |text| {
            let parsed = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("{name}={text:?} is not a number"))
        })
    };
    (number("OVERLAY_JSON_FUZZ_SEED", DEFAULT_SEED), number("OVERLAY_JSON_FUZZ_CASES", DEFAULT_CASES))
}

/// The corpus files of `tests/corpus/<dir>` whose names start with `prefix`.
pub fn corpus(dir: &str, prefix: &str) -> Vec<(String, Value)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(dir);
    let mut files: Vec<(String, Value)> = std::fs::read_dir(&path)
        .unwrap_or_else(|error| panic!("reading the corpus {}: {error}", path.display()))
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(prefix) && name.ends_with(".json"))
        .map(|name| {
            let text = std::fs::read(path.join(&name)).unwrap();
            let value = serde_json::from_slice(&text).unwrap_or_else(|error| panic!("corpus file {name}: {error}"));
            (name, value)
        })
        .collect();
    files.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(!files.is_empty(), "no corpus files {prefix}*.json in {}", path.display());
    files
}

/// Values that probe a parser: every JSON type, limits, and strings that
/// look like the addresses, names and MACs the fields hold, or nearly.
pub fn interesting_values() -> Vec<Value> {
    let mut values = vec![
        Value::Null,
        json!(true),
        json!(false),
        json!(0),
        json!(-1),
        json!(1),
        json!(67),
        json!(68),
        json!(1280),
        json!(4789),
        json!(65535),
        json!(65536),
        json!(16777215),
        json!(16777216),
        json!(4294967295u64),
        json!(4294967296u64),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(1.5),
        json!(-0.0),
        json!(1e300),
        json!([]),
        json!(["10.1.0.5"]),
        json!([1, 2]),
        json!({}),
        json!({"kind": "docker"}),
        json!({"a": 1}),
        json!({"learning": "off"}),
    ];
    let strings = [
        "", " ", "blue", "Blue", "-", ".", "..", ".hidden", "a/b", "../etc", "eth0", "eth 0", "eth\t0", "eth:0", "eth0\n", "a\u{0}b",
        "veth1", "p123456789abcde", "p123456789abcdef", "\u{202e}blue", "é", "\u{a0}", "10.10.0.2", "10.10.0.0/24", "10.10.0.5/24",
        "10.10.0.0/33", "10.10.0.0/0", "0.0.0.0", "255.255.255.255", "224.0.0.1", "127.0.0.1", "010.010.000.002", "10.10.0.300",
        "192.0.2.1", "fd00:10::2", "fd00:10::/64", "fd00:10::/129", "::", "::1", "ff02::1", "fe80::1%eth0", "::ffff:10.10.0.2",
        "2001:db8::2", "02:00:00:00:00:01", "02:00:00:00:00:0", "02:00:00:00:00:01:02", "01:00:5e:00:00:01", "ff:ff:ff:ff:ff:ff",
        "00:00:00:00:00:00", "02-00-00-00-00-01", "0200.0000.0001", "02:00:00:00:00:1G", "docker", "cni", "api", "file",
        "kubernetes", "4789", "100", "-1", "1e3", "null", "true", "{}", "[]",
    ];
    values.extend(strings.iter().map(|s| json!(s)));
    values.push(json!("a".repeat(64)));
    values.push(json!("a".repeat(65)));
    values.push(json!("x".repeat(100_000)));
    values
}

/// One to four structural mutations of `base` (field names from `fields`),
/// serialized, then in one case in four mutated byte by byte.
pub fn mutate(rng: &mut Rng, base: &Value, fields: &[&str], values: &[Value]) -> Vec<u8> {
    let mut value = base.clone();
    for _ in 0..1 + rng.below(4) {
        mutate_value(rng, &mut value, fields, values, 0);
    }
    let mut bytes = serde_json::to_vec(&value).unwrap();
    if rng.below(4) == 0 {
        mutate_bytes(rng, &mut bytes);
    }
    bytes
}

fn mutate_value(rng: &mut Rng, value: &mut Value, fields: &[&str], values: &[Value], depth: usize) {
    let pick = |rng: &mut Rng| values[rng.below(values.len())].clone();
    let Value::Object(map) = value else {
        if rng.below(3) == 0 {
            *value = pick(rng);
        }
        return;
    };
    let keys: Vec<String> = map.keys().cloned().collect();
    let key = (!keys.is_empty()).then(|| keys[rng.below(keys.len())].clone());
    match (rng.below(10), key) {
        (0, Some(key)) => {
            map.remove(&key);
        }
        (1, _) => {
            let name = match rng.below(4) {
                0 => "colour".to_owned(),
                1 => fields[rng.below(fields.len())].to_uppercase(),
                _ => fields[rng.below(fields.len())].to_owned(),
            };
            map.insert(name, pick(rng));
        }
        (2, Some(key)) if depth < 2 => mutate_value(rng, map.get_mut(&key).unwrap(), fields, values, depth + 1),
        (3, Some(key)) => {
            // A value of another field, or the field nested.
            let other = keys[rng.below(keys.len())].clone();
            let moved = map[&other].clone();
            let nested = if rng.below(2) == 0 { json!([map[&key].clone()]) } else { json!({ "value": map[&key].clone() }) };
            map.insert(key, if rng.below(2) == 0 { moved } else { nested });
        }
        (4, Some(key)) => {
            if let Some(Value::String(text)) = map.get_mut(&key) {
                edit_string(rng, text);
            } else {
                map.insert(key, pick(rng));
            }
        }
        (5, _) if depth == 0 && rng.below(8) == 0 => *value = pick(rng),
        (_, Some(key)) => {
            map.insert(key, pick(rng));
        }
        _ => {
            map.insert(fields[rng.below(fields.len())].to_owned(), pick(rng));
        }
    }
}

/// Small edits that keep a string close to valid.
fn edit_string(rng: &mut Rng, text: &mut String) {
    const INSERTS: &[&str] = &[" ", "\t", ":", "/", ".", "0", "9", "f", "-", "%", "\u{0}", "\u{a0}", "é", "\u{202e}", "/33", "::"];
    let at = if text.is_empty() { 0 } else { rng.below(text.len() + 1) };
    let at = (0..=at).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
    match rng.below(5) {
        0 => text.insert_str(at, INSERTS[rng.below(INSERTS.len())]),
        1 => text.truncate(at),
        2 => *text = text.to_uppercase(),
        3 => text.push_str(&text.clone()),
        _ => {
            if at < text.len() {
                text.remove(at);
            }
        }
    }
}

fn mutate_bytes(rng: &mut Rng, bytes: &mut Vec<u8>) {
    const INSERTS: &[u8] = b"{}[]\",:\\ \t\n0-e.ntf\x00\xff\xc3";
    for _ in 0..1 + rng.below(3) {
        let at = rng.below(bytes.len() + 1);
        match rng.below(5) {
            0 => bytes.truncate(at),
            1 => bytes.insert(at, INSERTS[rng.below(INSERTS.len())]),
            2 if at < bytes.len() => {
                bytes.remove(at);
            }
            3 if at < bytes.len() => bytes[at] ^= 1 << rng.below(8),
            _ => bytes.splice(0..0, b"\xef\xbb\xbf".iter().copied()).for_each(drop),
        }
    }
}

/// The keys of a JSON body's top-level object and its nested objects
/// (`owner.kind`), to check that an "unknown field" refusal names one sent.
pub fn sent_fields(body: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) {
        collect(&map, "", &mut names);
    }
    names
}

fn collect(map: &Map<String, Value>, within: &str, names: &mut Vec<String>) {
    for (name, value) in map {
        let full = if within.is_empty() { name.clone() } else { format!("{within}.{name}") };
        if let Value::Object(inner) = value {
            collect(inner, &full, names);
        }
        names.push(full);
    }
}

/// Counts of what a run's inputs came to.
#[derive(Debug, Default)]
pub struct Tally {
    pub cases: u64,
    pub valid: u64,
    pub refused_naming_a_field: u64,
    pub refused_as_not_json: u64,
}

/// Shows an input in a failure message (cut to 400 bytes).
pub fn shown(body: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(&body[..body.len().min(400)]))
}
