//! What the Docker plugin remembers between calls and across agent
//! restarts: which overlay network each Docker network is, the IPAM pools
//! it handed out, and each endpoint's MAC and address until Join (after
//! Join the endpoint is also in the API's state). Written atomically to
//! `<run dir>/<node>.docker.json` (mode 0600) after every change.
use std::{
    collections::BTreeMap,
    io,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::model::{Ipv4Net, MacAddr};

/// A Docker network (by Docker's id, which differs on every host) and the
/// overlay network it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerNetwork {
    /// The overlay network's name (the same on every host).
    pub name: String,
    pub vni: u32,
    pub subnet: Ipv4Net,
    /// The IPAM pool bound to it at CreateNetwork, if this plugin's IPAM serves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_id: Option<String>,
    /// Whether this plugin created the overlay network (rather than finding
    /// it, made by another host through the registry or by an operator).
    pub created_here: bool,
}

/// An IPAM pool: Docker's `--subnet` and `--ip-range`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    pub pool: Ipv4Net,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_pool: Option<Ipv4Net>,
    /// The container addresses handed out from it (through the agent's
    /// allocator), which ReleaseAddress gives back. The gateway's is not
    /// one of them (answered, not allocated: see the IPAM's docs), and the
    /// allocator may hand the same address to a container.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub addresses: std::collections::BTreeSet<Ipv4Addr>,
    /// The Docker network it serves, once CreateNetwork named it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_id: Option<String>,
    /// Order of RequestPool calls: CreateNetwork binds the latest unbound pool of its subnet.
    pub sequence: u64,
}

/// A Docker endpoint between CreateEndpoint and DeleteEndpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerEndpoint {
    pub network_id: String,
    pub mac: MacAddr,
    pub ipv4: Ipv4Addr,
    /// Whether Join made its veth pair and added it to the API's state.
    pub joined: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerState {
    #[serde(default)]
    pub networks: BTreeMap<String, DockerNetwork>,
    #[serde(default)]
    pub pools: BTreeMap<String, Pool>,
    #[serde(default)]
    pub endpoints: BTreeMap<String, DockerEndpoint>,
}

/// Where the plugin state of `node` is kept.
pub fn state_path(run_dir: &Path, node: &str) -> PathBuf {
    run_dir.join(format!("{node}.docker.json"))
}

/// Reads the state an earlier agent left (none: empty).
pub fn load(path: &Path) -> io::Result<DockerState> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {error}", path.display()))),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(DockerState::default()),
        Err(error) => Err(error),
    }
}

/// Writes `state` atomically, readable by root only.
pub fn save(path: &Path, state: &DockerState) -> io::Result<()> {
    crate::private_file::write_json(path, state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_round_trips_and_a_missing_file_is_empty() {
        let dir = std::env::temp_dir().join(format!("overlay-docker-store-{}", std::process::id()));
        let path = state_path(&dir, "n1");
        assert_eq!(load(&path).unwrap(), DockerState::default(), "a missing file is an empty state");
        let mut state = DockerState::default();
        state.networks.insert(
            "abc".into(),
            DockerNetwork { name: "blue".into(), vni: 42, subnet: "10.0.9.0/24".parse().unwrap(), pool_id: Some("p".into()), created_here: true },
        );
        state.endpoints.insert(
            "e1".into(),
            DockerEndpoint { network_id: "abc".into(), mac: "02:00:00:00:00:01".parse().unwrap(), ipv4: Ipv4Addr::new(10, 0, 9, 2), joined: true },
        );
        save(&path, &state).unwrap();
        assert_eq!(load(&path).unwrap(), state, "what was saved is read back");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
