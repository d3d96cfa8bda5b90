//! The registry's etcd records (nodes, networks, endpoints, IPAM blocks,
//! conflict reports): each mutated value parses into a record that passes
//! its own validation and writes back the same, or is refused with a
//! [`RecordProblem`] that names the key, a field of the record (or `-` for a
//! value that is not a JSON object) and a reason. Another node, an older
//! agent or a person with etcdctl writes these; none of it may panic an agent.
// Outside the unit tests (feature "fuzzing") only the checks are used.
#![cfg_attr(not(test), allow(dead_code, unused_imports))]
use super::{Rng, Tally, corpus, interesting_values, mutate, run_size, shown};
use crate::registry::{BlockRecord, ConflictReport, EndpointRecord, NetworkRecord, NodeRecord, RecordProblem};

/// One kind of record: its corpus prefix, key, fields, and a check of one value.
struct Kind {
    prefix: &'static str,
    key: &'static str,
    fields: &'static [&'static str],
    /// Parses, and for a record checks validation and the round trip.
    check: fn(key: &str, value: &[u8]) -> Result<Result<(), String>, RecordProblem>,
}

fn round_trip<R: PartialEq + std::fmt::Debug>(
    key: &str,
    value: &[u8],
    parse: fn(&str, &[u8]) -> Result<R, RecordProblem>,
    to_json: fn(&R) -> String,
    validate: fn(&R, &str) -> Result<(), RecordProblem>,
) -> Result<Result<(), String>, RecordProblem> {
    let record = parse(key, value)?;
    if let Err(problem) = validate(&record, key) {
        return Ok(Err(format!("parsed {record:?}, which its own validation refuses: {problem}")));
    }
    let again = parse(key, to_json(&record).as_bytes());
    Ok(if again.as_ref() == Ok(&record) { Ok(()) } else { Err(format!("{record:?} does not read back the same: {again:?}")) })
}

const KINDS: &[Kind] = &[
    Kind {
        prefix: "node",
        key: "/overlay/v1/nodes/n1",
        fields: &["name", "vtep", "vxlan_port", "agent_version"],
        check: |key, value| round_trip(key, value, NodeRecord::parse, NodeRecord::to_json, NodeRecord::validate),
    },
    Kind {
        prefix: "network",
        key: "/overlay/v1/networks/blue",
        fields: &["name", "vni", "subnet", "subnet6", "mtu", "block_prefix_len", "options"],
        check: |key, value| round_trip(key, value, NetworkRecord::parse, NetworkRecord::to_json, NetworkRecord::validate),
    },
    Kind {
        prefix: "endpoint",
        key: "/overlay/v1/endpoints/blue/02:00:00:00:00:01",
        fields: &["network", "mac", "addresses", "node", "owner"],
        check: |key, value| round_trip(key, value, EndpointRecord::parse, EndpointRecord::to_json, EndpointRecord::validate),
    },
    Kind {
        prefix: "block",
        key: "/overlay/v1/blocks/blue/10.1.0.64",
        fields: &["network", "cidr", "node", "allocations"],
        check: |key, value| round_trip(key, value, BlockRecord::parse, BlockRecord::to_json, |_, _| Ok(())),
    },
    Kind {
        prefix: "conflict",
        key: "/overlay/v1/conflicts/n2/vtep",
        fields: &["claimant", "kind", "subject", "holder"],
        check: |key, value| round_trip(key, value, ConflictReport::parse, ConflictReport::to_json, |_, _| Ok(())),
    },
];

/// Checks one value of `kind`; None if all is well.
fn check(kind: &Kind, value: &[u8], tally: &mut Tally) -> Option<String> {
    let outcome = std::panic::catch_unwind(|| (kind.check)(kind.key, value));
    match outcome {
        Err(_) => Some(format!("parsing a {} record panicked", kind.prefix)),
        Ok(Ok(result)) => {
            tally.valid += 1;
            result.err()
        }
        Ok(Err(problem)) => {
            let is_object = matches!(serde_json::from_slice::<serde_json::Value>(value), Ok(serde_json::Value::Object(_)));
            if problem.field == "-" {
                tally.refused_as_not_json += 1;
            } else {
                tally.refused_naming_a_field += 1;
            }
            if problem.key != kind.key || problem.reason.is_empty() {
                Some(format!("the problem should name the key {} and a reason: {problem:?}", kind.key))
            } else if problem.field == "-" && is_object {
                Some(format!("a JSON object was refused without naming a field: {problem:?}"))
            } else if problem.field != "-" && !kind.fields.contains(&problem.field.as_str()) && !problem.field.starts_with("options.")
                && !problem.field.starts_with("allocations.")
            {
                Some(format!("the problem names {:?}, not a field of a {} record: {problem:?}", problem.field, kind.prefix))
            } else {
                None
            }
        }
    }
}

/// One value checked as every kind of record (the `cargo fuzz` target's property).
pub fn check_every_kind(value: &[u8]) -> Option<String> {
    KINDS.iter().find_map(|kind| check(kind, value, &mut Tally::default()).map(|problem| format!("as a {} record: {problem}", kind.prefix)))
}

/// Runs `cases` mutated values of every kind; returns each kind's tally.
fn fuzz(seed: u64, cases: u64) -> Vec<(&'static str, Tally)> {
    let values = interesting_values();
    KINDS
        .iter()
        .map(|kind| {
            let corpus = corpus("records", kind.prefix);
            let mut tally = Tally::default();
            for case in 0..cases {
                let mut rng = Rng::for_case(seed ^ kind.prefix.len() as u64, case);
                let (name, base) = &corpus[rng.below(corpus.len())];
                let value = mutate(&mut rng, base, kind.fields, &values);
                tally.cases += 1;
                if let Some(problem) = check(kind, &value, &mut tally) {
                    panic!("{} record case {case} (OVERLAY_JSON_FUZZ_SEED={seed:#x}, from {name}): {problem}\nvalue: {}", kind.prefix, shown(&value));
                }
            }
            (kind.prefix, tally)
        })
        .collect()
}

#[test]
fn every_record_corpus_value_parses() {
    for kind in KINDS {
        for (name, value) in corpus("records", kind.prefix) {
            let bytes = serde_json::to_vec(&value).unwrap();
            assert_eq!((kind.check)(kind.key, &bytes), Ok(Ok(())), "corpus file {name}");
        }
    }
}

#[test]
fn mutated_records_parse_whole_or_name_the_field() {
    let (seed, cases) = run_size();
    for (kind, tally) in fuzz(seed, cases) {
        println!("{kind} records: {tally:?}");
        assert!(
            tally.valid * 50 > tally.cases && tally.refused_naming_a_field * 4 > tally.cases,
            "{kind}: the mutations should give valid records and refusals of fields: {tally:?}"
        );
    }
}
