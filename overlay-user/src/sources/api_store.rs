//! The local API's part of the model: the networks and endpoints created
//! through it, kept in creation order and written atomically to
//! `<run dir>/<node>.api.json` (mode 0600) on every change, so they
//! survive an agent restart or kill -9 and are re-applied on adoption.
use std::{
    collections::BTreeMap,
    io,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::model::{
    Endpoint, Fragment, Ipv4Net, Ipv6Net, MacAddr, Network, NetworkRef, Origin, Owner, SourceKind,
};

/// A network as the API keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiNetwork {
    pub name: String,
    pub vni: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<Ipv4Net>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<Ipv6Net>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flood_limit: Option<u32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    /// Where this node hands out addresses without a registry (inside `subnet`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<Ipv4Net>,
}

impl ApiNetwork {
    pub fn to_model(&self) -> Network {
        Network {
            name: self.name.clone(),
            vni: self.vni,
            subnet: self.subnet,
            subnet6: self.subnet6,
            mtu: self.mtu,
            flood_limit: self.flood_limit,
            options: self.options.clone(),
            origin: Origin::new(SourceKind::Api, format!("network {}", self.name)),
        }
    }
}

/// A local endpoint as the API keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiEndpoint {
    pub id: String,
    pub network: String,
    pub interface: String,
    pub mac: MacAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    pub owner: Owner,
}

impl ApiEndpoint {
    pub fn origin(&self) -> Origin {
        endpoint_origin(&self.id)
    }

    pub fn to_model(&self) -> Endpoint {
        Endpoint {
            network: NetworkRef::Name(self.network.clone()),
            interface: self.interface.clone(),
            mac: self.mac,
            ipv4: self.ipv4,
            ipv6: self.ipv6,
            owner: self.owner.clone(),
            origin: self.origin(),
        }
    }
}

/// The origin of the API endpoint `id`.
pub fn endpoint_origin(id: &str) -> Origin {
    Origin::new(SourceKind::Api, format!("endpoint {id}"))
}

/// Everything the API created, as persisted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiState {
    pub networks: Vec<ApiNetwork>,
    pub endpoints: Vec<ApiEndpoint>,
    /// Addresses handed out without a registry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allocations: Vec<crate::addresses::Allocation>,
}

impl ApiState {
    pub fn fragment(&self) -> Fragment {
        Fragment {
            networks: self.networks.iter().map(ApiNetwork::to_model).collect(),
            endpoints: self.endpoints.iter().map(ApiEndpoint::to_model).collect(),
            peers: Vec::new(),
        }
    }

    pub fn network(&self, name: &str) -> Option<&ApiNetwork> {
        self.networks.iter().find(|n| n.name == name)
    }

    pub fn endpoint(&self, id: &str) -> Option<&ApiEndpoint> {
        self.endpoints.iter().find(|e| e.id == id)
    }
}

/// Where the API's state of `node` is kept.
pub fn state_path(run_dir: &Path, node: &str) -> PathBuf {
    run_dir.join(format!("{node}.api.json"))
}

/// Reads the API state an earlier agent left (none: empty).
pub fn load(path: &Path) -> io::Result<ApiState> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {error}", path.display()))),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(ApiState::default()),
        Err(error) => Err(error),
    }
}

/// Writes `state` atomically (a temporary file, synced, then renamed), readable by root only.
pub fn save(path: &Path, state: &ApiState) -> io::Result<()> {
    crate::private_file::write_json(path, state)
}
