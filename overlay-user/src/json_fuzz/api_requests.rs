//! The local API's request bodies (`POST /v1/networks`, `POST
//! /v1/endpoints`, `POST /v1/networks/{name}/addresses`): each mutated body is accepted with a value that passes
//! the same checks and reads back the same, or refused with HTTP 400 naming
//! a field of the request (or the body) and the value as sent.
// Outside the unit tests (feature "fuzzing") only the checks are used.
#![cfg_attr(not(test), allow(dead_code, unused_imports))]
use std::net::{Ipv4Addr, Ipv6Addr};

use super::{Rng, Tally, corpus, interesting_values, mutate, run_size, sent_fields, shown};
use crate::{
    api::{ApiError, request},
    model::{
        MacAddr,
        validate::{flood_limit_problem, ipv4_problem, ipv6_problem, safe_name, vni_problem},
    },
};

const NETWORK_FIELDS: &[&str] = &["name", "vni", "subnet", "subnet6", "ip_range", "mtu", "flood_limit", "learning", "ageing", "options"];
const ALLOCATION_FIELDS: &[&str] = &["address", "owner"];
const ENDPOINT_FIELDS: &[&str] = &["network", "interface", "id", "mac", "ipv4", "ipv6", "owner", "owner.kind", "owner.container_id"];

/// Would the kernel take `name` for a network interface (net/core/dev.c
/// `dev_valid_name`: 1 to 15 bytes, not "." or "..", no '/', ':' or white
/// space, where the kernel's isspace also counts byte 0xa0)? A NUL would
/// end the name early.
pub fn kernel_takes_interface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name.bytes().any(|b| b == b'/' || b == b':' || b == 0 || b == 0xa0 || b.is_ascii_whitespace() || b == 0x0b)
}

/// Does `found` (a refusal's value) stand for `sent` (the field as sent)?
fn same_value(field: &str, found: &str, sent: &str) -> bool {
    found == sent
        || found == serde_json::Value::String(sent.to_owned()).to_string()
        || match field {
            "mac" => found.parse::<MacAddr>().ok().is_some_and(|f| sent.parse::<MacAddr>().ok() == Some(f)),
            "ipv4" => found.parse::<Ipv4Addr>().ok().is_some_and(|f| sent.parse::<Ipv4Addr>().ok() == Some(f)),
            "ipv6" => found.parse::<Ipv6Addr>().ok().is_some_and(|f| sent.parse::<Ipv6Addr>().ok() == Some(f)),
            _ => false,
        }
}

/// What is wrong with a refusal of `body`, if anything.
fn refusal_problem(body: &[u8], error: &ApiError, fields: &[&str]) -> Option<String> {
    if (error.status, error.kind.as_str()) != (400, "invalid") || error.error.is_empty() {
        return Some(format!("a malformed body should be HTTP 400 \"invalid\" with a message, got {error:?}"));
    }
    let sent = sent_fields(body);
    if error.field.is_empty() {
        // The body itself: not JSON, or not an object.
        return match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(serde_json::Value::Object(_)) => Some(format!("a JSON object was refused without naming a field: {error:?}")),
            _ => None,
        };
    }
    let named_in_schema = fields.contains(&error.field.as_str()) || error.field.starts_with("options.");
    if !named_in_schema && !(sent.contains(&error.field) && error.error.contains("unknown field")) {
        return Some(format!("the refusal names {:?}, neither a field of the request nor one sent: {error:?}", error.field));
    }
    if !error.error.starts_with(&format!("{} = ", error.field)) {
        return Some(format!("the message should start with the field and value: {error:?}"));
    }
    // A string field refused for its value names the value as sent: the
    // field's path (`owner.kind`) is looked up nested, and at the top level
    // too (a key spelled `owner.kind` is refused as unknown under that name).
    if let Ok(body) = serde_json::from_slice::<serde_json::Value>(body) {
        let sent = if error.error.ends_with("unknown field") {
            body.get(&error.field).or_else(|| error.field.split('.').try_fold(&body, |value, name| value.get(name)))
        } else {
            error.field.split('.').try_fold(&body, |value, name| value.get(name))
        };
        let sent: Vec<&str> = sent.and_then(|v| v.as_str()).into_iter().collect();
        if !sent.is_empty() && !sent.iter().any(|text| same_value(&error.field, &error.value, text)) {
            return Some(format!("the refusal's value {:?} is not the value sent {sent:?}: {error:?}", error.value));
        }
    }
    None
}

/// Checks one `POST /v1/networks` body; None if all is well.
pub fn check_network(body: &[u8], tally: &mut Tally) -> Option<String> {
    let outcome = std::panic::catch_unwind(|| request::network(body));
    match outcome {
        Err(_) => Some("request::network panicked".into()),
        Ok(Ok(network)) => {
            tally.valid += 1;
            if !safe_name(&network.name) || vni_problem(network.vni).is_some() || network.flood_limit.and_then(flood_limit_problem).is_some()
                || crate::model::validate::learning_options_problem(&network.options).is_some()
            {
                return Some(format!("accepted a network that fails the model's checks: {network:?}"));
            }
            let again = request::network(&serde_json::to_vec(&network).unwrap());
            (again.as_ref() != Ok(&network)).then(|| format!("the accepted network {network:?} does not read back the same: {again:?}"))
        }
        Ok(Err(error)) => {
            count_refusal(tally, &error);
            refusal_problem(body, &error, NETWORK_FIELDS)
        }
    }
}

/// Checks one `POST /v1/endpoints` body; None if all is well.
pub fn check_endpoint(body: &[u8], tally: &mut Tally) -> Option<String> {
    let outcome = std::panic::catch_unwind(|| request::endpoint(body));
    match outcome {
        Err(_) => Some("request::endpoint panicked".into()),
        Ok(Ok(endpoint)) => {
            tally.valid += 1;
            if !kernel_takes_interface_name(&endpoint.interface) {
                return Some(format!("accepted interface {:?}, a name the kernel never gives an interface", endpoint.interface));
            }
            if endpoint.mac.endpoint_problem().is_some()
                || endpoint.ipv4.and_then(ipv4_problem).is_some()
                || endpoint.ipv6.and_then(ipv6_problem).is_some()
                || endpoint.ipv4.is_none() && endpoint.ipv6.is_none()
            {
                return Some(format!("accepted an endpoint that fails the model's checks: {endpoint:?}"));
            }
            let again = request::endpoint(&serde_json::to_vec(&endpoint).unwrap());
            (again.as_ref() != Ok(&endpoint)).then(|| format!("the accepted endpoint {endpoint:?} does not read back the same: {again:?}"))
        }
        Ok(Err(error)) => {
            count_refusal(tally, &error);
            refusal_problem(body, &error, ENDPOINT_FIELDS)
        }
    }
}

/// Checks one `POST /v1/networks/{name}/addresses` body; None if all is well.
pub fn check_allocation(body: &[u8], tally: &mut Tally) -> Option<String> {
    let outcome = std::panic::catch_unwind(|| request::allocation(body));
    match outcome {
        Err(_) => Some("request::allocation panicked".into()),
        Ok(Ok((address, owner))) => {
            tally.valid += 1;
            let again = request::allocation(&serde_json::to_vec(&serde_json::json!({"address": address, "owner": owner})).unwrap());
            (again.as_ref() != Ok(&(address, owner.clone()))).then(|| format!("the accepted allocation {address:?} {owner:?} does not read back the same: {again:?}"))
        }
        Ok(Err(error)) => {
            count_refusal(tally, &error);
            refusal_problem(body, &error, ALLOCATION_FIELDS)
        }
    }
}

/// One body checked as every request (the `cargo fuzz` target's property).
pub fn check_every_request(body: &[u8]) -> Option<String> {
    let tally = &mut Tally::default();
    check_network(body, tally)
        .map(|p| format!("as POST /v1/networks: {p}"))
        .or_else(|| check_endpoint(body, tally).map(|p| format!("as POST /v1/endpoints: {p}")))
        .or_else(|| check_allocation(body, tally).map(|p| format!("as POST /v1/networks/N/addresses: {p}")))
}

fn count_refusal(tally: &mut Tally, error: &ApiError) {
    if error.field.is_empty() {
        tally.refused_as_not_json += 1;
    } else {
        tally.refused_naming_a_field += 1;
    }
}

/// Runs `cases` mutated bodies of each kind; returns the tallies (networks, endpoints, allocations).
pub fn fuzz(seed: u64, cases: u64) -> (Tally, Tally, Tally) {
    let values = interesting_values();
    let networks = corpus("api", "network-");
    let endpoints = corpus("api", "endpoint-");
    let allocations = corpus("api", "allocation-");
    let (mut network_tally, mut endpoint_tally, mut allocation_tally) = (Tally::default(), Tally::default(), Tally::default());
    for case in 0..cases {
        let mut rng = Rng::for_case(seed, case);
        let (name, base) = &networks[rng.below(networks.len())];
        let body = mutate(&mut rng, base, NETWORK_FIELDS, &values);
        network_tally.cases += 1;
        if let Some(problem) = check_network(&body, &mut network_tally) {
            panic!("POST /v1/networks case {case} (OVERLAY_JSON_FUZZ_SEED={seed:#x}, from {name}): {problem}\nbody: {}", shown(&body));
        }
        let (name, base) = &endpoints[rng.below(endpoints.len())];
        let body = mutate(&mut rng, base, ENDPOINT_FIELDS, &values);
        endpoint_tally.cases += 1;
        if let Some(problem) = check_endpoint(&body, &mut endpoint_tally) {
            panic!("POST /v1/endpoints case {case} (OVERLAY_JSON_FUZZ_SEED={seed:#x}, from {name}): {problem}\nbody: {}", shown(&body));
        }
        let (name, base) = &allocations[rng.below(allocations.len())];
        let body = mutate(&mut rng, base, ALLOCATION_FIELDS, &values);
        allocation_tally.cases += 1;
        if let Some(problem) = check_allocation(&body, &mut allocation_tally) {
            panic!("POST /v1/networks/N/addresses case {case} (OVERLAY_JSON_FUZZ_SEED={seed:#x}, from {name}): {problem}\nbody: {}", shown(&body));
        }
    }
    (network_tally, endpoint_tally, allocation_tally)
}

#[test]
fn every_api_corpus_body_is_accepted() {
    let mut tally = Tally::default();
    for (name, body) in corpus("api", "network-") {
        let bytes = serde_json::to_vec(&body).unwrap();
        assert!(request::network(&bytes).is_ok(), "{name} should be accepted: {:?}", request::network(&bytes));
        assert_eq!(check_network(&bytes, &mut tally), None, "{name}");
    }
    for (name, body) in corpus("api", "endpoint-") {
        let bytes = serde_json::to_vec(&body).unwrap();
        assert!(request::endpoint(&bytes).is_ok(), "{name} should be accepted: {:?}", request::endpoint(&bytes));
        assert_eq!(check_endpoint(&bytes, &mut tally), None, "{name}");
    }
    for (name, body) in corpus("api", "allocation-") {
        let bytes = serde_json::to_vec(&body).unwrap();
        assert!(request::allocation(&bytes).is_ok(), "{name} should be accepted: {:?}", request::allocation(&bytes));
        assert_eq!(check_allocation(&bytes, &mut tally), None, "{name}");
    }
}

#[test]
fn mutated_api_bodies_are_accepted_whole_or_refused_naming_the_field() {
    let (seed, cases) = run_size();
    let (networks, endpoints, allocations) = fuzz(seed, cases);
    println!("POST /v1/networks: {networks:?}\nPOST /v1/endpoints: {endpoints:?}\nPOST /v1/networks/N/addresses: {allocations:?}");
    // The mutations must reach past the JSON syntax to the fields' checks, and some must stay valid.
    for (what, tally) in [("networks", &networks), ("endpoints", &endpoints), ("allocations", &allocations)] {
        assert!(
            tally.valid * 50 > tally.cases && tally.refused_naming_a_field * 4 > tally.cases,
            "{what}: the mutations should give valid bodies and refusals of fields: {tally:?}"
        );
    }
}

/// Found by the libFuzzer target `api_json`: an `ip_range` the prefix
/// parser normalises (a leading zero) was refused quoting the normalised
/// value, not the one sent.
#[test]
fn found_by_fuzzing_a_refused_ip_range_is_quoted_as_sent() {
    let body = br#"{"name": "n", "vni": 100, "subnet": "10.0.9.0/24", "ip_range": "05.40.8.0/24"}"#;
    assert_eq!(check_network(body, &mut Tally::default()), None);
    let error = request::network(body).expect_err("a range outside the subnet is refused");
    assert!(format!("{error:?}").contains("\"05.40.8.0/24\""), "the refusal should quote \"05.40.8.0/24\" as sent, it says: {error:?}");
}
