//! Docker's legacy (v1) remote **network driver** and **IPAM driver**,
//! served by the agent (`overlay run --docker-plugin NAME`) on
//! `/run/docker/plugins/NAME.sock`, where dockerd discovers plugins.
//!
//! Each call makes the same change the local API would (networks and
//! endpoints of the API's part of the model, addresses from the agent's
//! allocator), so everything the agent guarantees holds for Docker's
//! containers too: validation naming field and value, persistence in the
//! API's state, the registry in cluster mode, forwarding across restarts.
//!
//! Choices (see README "Using it with Docker"):
//! - `Scope: local`: Docker 23 removed the cluster store that global scope
//!   needs. One overlay network spans hosts because every host's Docker
//!   network resolves to the same overlay network name and VNI.
//! - Docker does not tell a remote driver the name given to `docker network
//!   create` (CreateNetwork carries only Docker's per-host random id, the
//!   `--opt` map and the IPAM data). The overlay network is named by
//!   `--opt name=NAME`, else `docker-<VNI>`; its VNI is `--opt vni=N`, else
//!   derived from the name when given, else from the subnet ([`derived_vni`]).
//! - Join returns `DisableGatewayService: true` and no gateway: containers
//!   get the overlay's on-link route only, and Docker never creates
//!   `docker_gwbridge`.
//! - The IPAM answers the gateway's request (Docker asks one per network)
//!   with the pool's first address without allocating it: nothing ever
//!   uses it, since Join installs no gateway, so the allocator may give it
//!   to a container. ReleaseAddress gives back only the addresses the pool
//!   handed out (kept in the plugin's state), never the gateway's.
mod driver;
mod ipam;
pub mod protocol;
pub mod store;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use axum::{
    Router,
    body::Bytes,
    http::{StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::post,
};
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::{Mutex, mpsc};

use crate::agent::Shared;

/// The plugin's name when `--docker-plugin` names none (`docker network create -d overlay-ebpf`).
pub const DEFAULT_PLUGIN_NAME: &str = "overlay-ebpf";
/// Where dockerd looks for plugin sockets (it also reads specs in /etc/docker/plugins).
pub const DEFAULT_PLUGIN_DIR: &str = "/run/docker/plugins";

/// The socket of plugin `name` in `dir`.
pub fn socket_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.sock"))
}

/// Why a plugin name is refused, if it is: Docker uses it as `-d NAME` and
/// as a file name; the rule of every name (`validate::name_problem`).
pub use crate::model::validate::name_problem;

/// The VNI of a network that names none: FNV-1a (32 bits) of `key`,
/// folded into 1048576..=16777215 (the upper 15/16 of the VNI space, so a
/// derived VNI never takes the small numbers people pick by hand). Stable
/// across hosts, agents and versions: it is part of the wire contract.
pub fn derived_vni(key: &str) -> u32 {
    const LOW: u32 = 1 << 20;
    const HIGH: u32 = (1 << 24) - 1;
    let hash = key.bytes().fold(0x811c_9dc5_u32, |hash, byte| (hash ^ byte as u32).wrapping_mul(0x0100_0193));
    LOW + hash % (HIGH - LOW + 1)
}

/// What every handler shares.
#[derive(Clone)]
struct Plugin {
    name: Arc<str>,
    agent: Shared,
    /// Wakes the agent's loop after a change (status file).
    changed: mpsc::Sender<()>,
    /// The plugin's own state; its lock is always taken before the agent's.
    state: Arc<Mutex<store::DockerState>>,
    state_path: Arc<Path>,
}

impl Plugin {
    fn save(&self, state: &store::DockerState) -> Result<(), Failure> {
        store::save(&self.state_path, state)
            .map_err(|error| Failure::internal(format!("saving the Docker plugin's state to {}: {error}", self.state_path.display())))
    }
}

/// A refused call: its HTTP status and the `Err` sentence.
#[derive(Debug)]
pub(crate) struct Failure {
    status: StatusCode,
    message: String,
}

impl Failure {
    fn bad(message: impl Into<String>) -> Failure {
        Failure { status: StatusCode::BAD_REQUEST, message: message.into() }
    }

    fn conflict(message: impl Into<String>) -> Failure {
        Failure { status: StatusCode::CONFLICT, message: message.into() }
    }

    fn not_found(message: impl Into<String>) -> Failure {
        Failure { status: StatusCode::NOT_FOUND, message: message.into() }
    }

    fn internal(message: impl Into<String>) -> Failure {
        Failure { status: StatusCode::INTERNAL_SERVER_ERROR, message: message.into() }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        log::warn!("Docker plugin: refused: {}", self.message);
        json_response(self.status, &protocol::ErrorResponse { err: self.message })
    }
}

fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let body = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    (status, [(header::CONTENT_TYPE, protocol::CONTENT_TYPE)], body).into_response()
}

fn reply<T: Serialize>(result: Result<T, Failure>) -> Response {
    match result {
        Ok(body) => json_response(StatusCode::OK, &body),
        Err(failure) => failure.into_response(),
    }
}

/// The request of `call`, or a failure naming what is wrong with it: the
/// field's path (`IPv4Data[0].Pool`) when the body is an object, and serde's
/// sentence, which gives the value of a wrong type (found by fuzzing: serde
/// alone says "invalid type: integer `5`, expected a string" and no field).
fn parse<T: DeserializeOwned>(call: &str, body: &[u8]) -> Result<T, Failure> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let request = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let error = error.into_inner();
        if path == "." || path.is_empty() {
            Failure::bad(format!("{call}: malformed request: {error}"))
        } else {
            Failure::bad(format!("{call}: {path}: malformed: {error}"))
        }
    })?;
    deserializer.end().map_err(|error| Failure::bad(format!("{call}: malformed request: {error}")))?;
    Ok(request)
}

/// The plugin's routes: every call Docker makes of a network and IPAM
/// driver that this one implements; any other answers 404.
fn router(plugin: Plugin) -> Router {
    macro_rules! call {
        ($handler:path) => {
            post(|axum::extract::State(plugin): axum::extract::State<Plugin>, body: Bytes| async move { reply($handler(&plugin, &body).await) })
        };
    }
    Router::new()
        .route("/Plugin.Activate", call!(activate))
        .route("/NetworkDriver.GetCapabilities", call!(driver::capabilities))
        .route("/NetworkDriver.CreateNetwork", call!(driver::create_network))
        .route("/NetworkDriver.DeleteNetwork", call!(driver::delete_network))
        .route("/NetworkDriver.CreateEndpoint", call!(driver::create_endpoint))
        .route("/NetworkDriver.EndpointOperInfo", call!(driver::endpoint_oper_info))
        .route("/NetworkDriver.DeleteEndpoint", call!(driver::delete_endpoint))
        .route("/NetworkDriver.Join", call!(driver::join))
        .route("/NetworkDriver.Leave", call!(driver::leave))
        .route("/NetworkDriver.ProgramExternalConnectivity", call!(driver::nothing_to_do))
        .route("/NetworkDriver.RevokeExternalConnectivity", call!(driver::nothing_to_do))
        .route("/NetworkDriver.DiscoverNew", call!(driver::nothing_to_do))
        .route("/NetworkDriver.DiscoverDelete", call!(driver::nothing_to_do))
        .route("/IpamDriver.GetCapabilities", call!(ipam::capabilities))
        .route("/IpamDriver.GetDefaultAddressSpaces", call!(ipam::address_spaces))
        .route("/IpamDriver.RequestPool", call!(ipam::request_pool))
        .route("/IpamDriver.ReleasePool", call!(ipam::release_pool))
        .route("/IpamDriver.RequestAddress", call!(ipam::request_address))
        .route("/IpamDriver.ReleaseAddress", call!(ipam::release_address))
        .fallback(|uri: Uri| async move { Failure::not_found(format!("{} is not implemented by this plugin", uri.path())).into_response() })
        .with_state(plugin)
}

async fn activate(_: &Plugin, _: &Bytes) -> Result<protocol::ActivateResponse, Failure> {
    Ok(protocol::ActivateResponse { implements: vec!["NetworkDriver", "IpamDriver"] })
}

/// Where and as what the agent serves the plugin.
#[derive(Clone, Debug)]
pub struct PluginOptions {
    pub name: String,
    /// Default [`DEFAULT_PLUGIN_DIR`].
    pub dir: PathBuf,
}

impl PluginOptions {
    pub fn socket(&self) -> PathBuf {
        socket_path(&self.dir, &self.name)
    }
}

/// Serves the plugin on a socket bound earlier ([`crate::http::bind_unix`]),
/// with the state left at `state_path` by an earlier agent. The socket goes
/// when the returned server is dropped.
pub fn serve(
    options: &PluginOptions,
    bound: crate::http::BoundUnix,
    agent: Shared,
    changed: mpsc::Sender<()>,
    state_path: PathBuf,
) -> std::io::Result<crate::http::Serving> {
    let state = store::load(&state_path)?;
    log::info!(
        "Docker plugin {} on {} ({} network(s), {} endpoint(s) remembered from {})",
        options.name,
        options.socket().display(),
        state.networks.len(),
        state.endpoints.len(),
        state_path.display()
    );
    let plugin = Plugin {
        name: options.name.as_str().into(),
        agent,
        changed,
        state: Arc::new(Mutex::new(state)),
        state_path: state_path.into(),
    };
    // Taken before Docker's first call can take it: Join makes veths under it.
    let state = plugin.state.clone().try_lock_owned().expect("the plugin's state is not shared yet");
    tokio::spawn(async move { driver::collect_orphan_veths(&state).await });
    Ok(crate::http::serve_bound_unix(bound, router(plugin)))
}

#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_vnis_are_stable_and_in_the_upper_range() {
        // Part of the wire contract: the same key gives the same VNI on every host and version.
        assert_eq!(derived_vni("name:blue"), derived_vni("name:blue"));
        assert_ne!(derived_vni("name:blue"), derived_vni("name:green"), "different names should differ");
        for key in ["", "name:blue", "subnet:10.0.9.0/24", "x"] {
            let vni = derived_vni(key);
            assert!((1 << 20..1 << 24).contains(&vni), "derived VNI {vni} of {key:?} is outside 1048576..=16777215");
        }
        assert_eq!(derived_vni("name:blue"), 0x100000 + 0xf6cf_c938_u32 % 0xf00000, "FNV-1a of name:blue changed");
    }

    #[test]
    fn plugin_names_that_make_bad_file_names_are_refused() {
        assert_eq!(name_problem("overlay-ebpf"), None);
        assert!(name_problem("").is_some());
        assert!(name_problem("a/b").is_some());
        assert!(name_problem("..").is_some());
    }
}
