//! Property tests of the Docker plugin's requests (issue 12), without an
//! agent: every call's corpus body (`tests/corpus/docker/`) mutated with the
//! seeded generator of [`crate::json_fuzz`], then parsed as the handler
//! parses it, with the checks that need no state (ids, `--opt` values,
//! addresses). Each body parses, or is refused with a 4xx that names a field
//! of the request and the value sent; nothing panics. What the handlers do
//! with the agent (and that a refusal changes nothing) is
//! `tests/tests/docker_refusals.rs`.
// Outside the unit tests (feature "fuzzing") only the checks are used.
#![cfg_attr(not(test), allow(dead_code, unused_imports))]
use super::{
    Failure, parse,
    driver::{network_options, parse_address},
    protocol::{self, id_problem},
};
use crate::json_fuzz::{
    Rng, Tally, corpus,
    docker_requests::{CALLS, Call, refusal_problem},
    interesting_values, mutate, run_size, shown,
};

fn id(field: &str, id: &str) -> Result<(), Failure> {
    match id_problem(id) {
        Some(problem) => Err(Failure::bad(format!("{field} {id:?}: {problem}"))),
        None => Ok(()),
    }
}

/// Parses `body` as `call`'s handler does, up to where it needs the agent.
fn parse_as(call: &Call, body: &[u8]) -> Result<(), Failure> {
    match call.short() {
        "CreateNetwork" => {
            let request: protocol::CreateNetworkRequest = parse("CreateNetwork", body)?;
            id("NetworkID", &request.network_id)?;
            network_options(&request.options).map(drop)
        }
        "DeleteNetwork" => parse::<protocol::NetworkRequest>("DeleteNetwork", body).and_then(|r| id("NetworkID", &r.network_id)),
        "CreateEndpoint" => {
            let request: protocol::CreateEndpointRequest = parse("CreateEndpoint", body)?;
            id("NetworkID", &request.network_id)?;
            id("EndpointID", &request.endpoint_id)?;
            parse_address("Interface.Address", &request.interface.unwrap_or_default().address).map(drop)
        }
        "Join" => {
            let request: protocol::JoinRequest = parse("Join", body)?;
            id("NetworkID", &request.network_id).and(id("EndpointID", &request.endpoint_id))
        }
        "EndpointOperInfo" | "Leave" | "DeleteEndpoint" => {
            let request: protocol::EndpointRequest = parse(call.short(), body)?;
            id("NetworkID", &request.network_id).and(id("EndpointID", &request.endpoint_id))
        }
        "RequestPool" => parse::<protocol::RequestPoolRequest>("RequestPool", body).map(drop),
        "ReleasePool" => parse::<protocol::ReleasePoolRequest>("ReleasePool", body).map(drop),
        "RequestAddress" => parse::<protocol::RequestAddressRequest>("RequestAddress", body).and_then(|r| parse_address("--ip", &r.address).map(drop)),
        "ReleaseAddress" => parse::<protocol::ReleaseAddressRequest>("ReleaseAddress", body).and_then(|r| parse_address("Address", &r.address).map(drop)),
        other => panic!("no parser for {other}"),
    }
}

/// Checks one body; None if all is well.
fn check(call: &Call, body: &[u8], tally: &mut Tally) -> Option<String> {
    match std::panic::catch_unwind(|| parse_as(call, body)) {
        Err(_) => Some(format!("parsing a {} request panicked", call.name)),
        Ok(Ok(())) => {
            tally.valid += 1;
            None
        }
        Ok(Err(failure)) => {
            if matches!(serde_json::from_slice::<serde_json::Value>(body), Ok(serde_json::Value::Object(_))) {
                tally.refused_naming_a_field += 1;
            } else {
                tally.refused_as_not_json += 1;
            }
            refusal_problem(call, body, failure.status.as_u16(), &failure.message)
        }
    }
}

/// One body checked as every call (the `cargo fuzz` target's property).
pub fn check_every_call(body: &[u8]) -> Option<String> {
    CALLS.iter().find_map(|call| check(call, body, &mut Tally::default()).map(|problem| format!("as {}: {problem}", call.name)))
}

#[test]
fn every_docker_corpus_request_parses() {
    for call in CALLS {
        for (name, body) in corpus("docker", call.short()) {
            let bytes = serde_json::to_vec(&body).unwrap();
            if let Err(failure) = parse_as(call, &bytes) {
                panic!("corpus file {name} should parse as {}: {failure:?}", call.name);
            }
        }
    }
}

#[test]
fn mutated_docker_requests_parse_or_are_refused_naming_the_field() {
    let (seed, cases) = run_size();
    let values = interesting_values();
    for (stream, call) in CALLS.iter().enumerate() {
        let bodies = corpus("docker", call.short());
        let mut tally = Tally::default();
        for case in 0..cases {
            let mut rng = Rng::for_case(seed ^ (0xd0c0 + stream as u64), case);
            let (name, base) = &bodies[rng.below(bodies.len())];
            let body = mutate(&mut rng, base, call.fields, &values);
            tally.cases += 1;
            if let Some(problem) = check(call, &body, &mut tally) {
                panic!("{} case {case} (OVERLAY_JSON_FUZZ_SEED={seed:#x}, from {name}): {problem}\nbody: {}", call.name, shown(&body));
            }
        }
        println!("{}: {tally:?}", call.name);
        assert!(
            tally.valid * 50 > tally.cases && tally.refused_naming_a_field * 20 > tally.cases,
            "{}: the mutations should give valid requests and refusals of fields: {tally:?}",
            call.name
        );
    }
}

/// Failures the fuzzing found, kept as rows.
#[test]
fn found_by_fuzzing_ids_and_types_are_named() {
    let create_endpoint = CALLS.iter().find(|c| c.short() == "CreateEndpoint").unwrap();
    for (body, named) in [
        // A multi-byte character across the 12th byte: the short id cut it in two (a panic).
        (r#"{"NetworkID":"3f2a9c1d4b5e","EndpointID":"a1b2c3d4e5féééé"}"#, "EndpointID \"a1b2c3d4e5féééé\""),
        // A '/' would have gone into the veth's name, after CreateEndpoint kept the endpoint.
        (r#"{"NetworkID":"3f2a9c1d4b5e","EndpointID":"../../etc"}"#, "EndpointID \"../../etc\""),
        // A wrong type named no field (serde's message alone).
        (r#"{"NetworkID":"3f2a9c1d4b5e","EndpointID":"a1","Interface":{"Address":5}}"#, "Interface.Address: malformed: invalid type: integer `5`"),
    ] {
        let failure = parse_as(create_endpoint, body.as_bytes()).expect_err(body);
        assert!(failure.message.contains(named), "{body}: expected a refusal naming {named:?}, got {:?}", failure.message);
        assert_eq!(refusal_problem(create_endpoint, body.as_bytes(), failure.status.as_u16(), &failure.message), None, "{body}");
    }
}
