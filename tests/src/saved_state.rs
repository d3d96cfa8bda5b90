//! The agent's saved API state, as the "never apply half" tests
//! (`api_refusals.rs`, `docker_refusals.rs`, `cni_refusals.rs`) compare it
//! before and after a request.
use serde_json::{Value, json};

use crate::lab::Lab;

/// The API state `node`'s agent saved in the lab's run directory
/// (`<node>.api.json`), as JSON, so that the same state written again
/// compares equal whatever its layout. No file yet is the empty state: an
/// agent writes the file at its first change, and a change undone leaves
/// the empty state in it (overlay's `ApiState` with nothing in it; empty
/// allocations are left out).
pub fn api_state(lab: &Lab, node: &str) -> Value {
    let path = lab.dir.join("run").join(format!("{node}.api.json"));
    match std::fs::read(&path) {
        Ok(text) => serde_json::from_slice(&text).unwrap_or_else(|error| panic!("the agent's API state file {} is not JSON: {error}", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => json!({"networks": [], "endpoints": []}),
        Err(error) => panic!("reading the agent's API state file {}: {error}", path.display()),
    }
}
