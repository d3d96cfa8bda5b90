//! The node configuration file (TOML): parsing and validation.
//!
//! Parsing reads every address as text so that a bad value can be reported
//! with the field it is in and the value as written; validation then checks
//! the whole file and reports every problem at once. Nothing here touches
//! the kernel (interfaces are resolved later, see [`crate::netdev`]).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};


use crate::model::{
    self, Fragment, Model, Network, NetworkRef, NodeSettings, Origin, Owner, OwnerKind, SourceKind,
};

pub use crate::model::MacAddr;

mod checker;
mod raw;

use checker::Checker;
use raw::*;

/// A validated node configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub node: Node,
    pub endpoints: Vec<LocalEndpoint>,
    pub peers: Vec<Peer>,
    /// Per-VNI settings that differ from the node's defaults.
    pub vnis: BTreeMap<u32, VniSettings>,
}

/// Settings of one VNI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VniSettings {
    /// Most copies one flooded frame makes (local ports and peers together).
    pub flood_limit: u32,
    /// With learning on, the learned entries' ageing in seconds.
    pub learning_ageing: Option<u32>,
    /// Its position in the file's `[[vnis]]` list.
    pub index: usize,
}

/// This node's VTEP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub underlay_interface: String,
    pub vtep_address: Ipv4Addr,
    pub vxlan_port: u16,
    pub ttl: u8,
    pub source_port_min: u16,
    pub source_port_max: u16,
    /// Default per-VNI flood fan-out limit.
    pub flood_limit: u32,
}

/// A container (or any endpoint) attached to this node through a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalEndpoint {
    /// Host-side interface of the endpoint's veth pair.
    pub interface: String,
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
    pub vni: u32,
}

/// Another node and the endpoints behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub vtep_address: Ipv4Addr,
    pub endpoints: Vec<RemoteEndpoint>,
    /// VNIs the peer carries besides those of its listed endpoints.
    pub extra_vnis: BTreeSet<u32>,
}

impl Peer {
    /// Every VNI this peer carries: flooded frames of these go to it.
    pub fn vnis(&self) -> BTreeSet<u32> {
        self.endpoints.iter().map(|e| e.vni).chain(self.extra_vnis.iter().copied()).collect()
    }
}

/// An endpoint behind a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteEndpoint {
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
    pub vni: u32,
}

/// One thing wrong in a configuration, as for every source; the file's
/// own problems name their TOML path ([`Problem::for_file`]).
pub use crate::model::Problem;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    // The cause is in the message, so the field is not named `source`
    // (thiserror would make it the error's source too, and `{:#}` would
    // print it twice).
    #[error("cannot read config file {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    /// The file is not valid TOML or does not have the expected structure.
    #[error("config file {path} is not valid: {message}")]
    Syntax { path: PathBuf, message: String },
    /// The file parsed but some values are wrong.
    #[error("config file {path} has {} problem(s):\n{}", .problems.len(), format_problems(.problems))]
    Invalid { path: PathBuf, problems: Vec<Problem> },
}

fn format_problems(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("  - {}", p.for_file())).collect::<Vec<_>>().join("\n")
}

impl ConfigError {
    /// The problems found, for an invalid configuration.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| ConfigError::Read { path: path.to_owned(), error })?;
        Config::parse(&text, path)
    }

    /// Parses and validates configuration text; `path` is only used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|error| ConfigError::Syntax {
            path: path.to_owned(),
            message: error.to_string().trim_end().to_owned(),
        })?;
        let mut check = Checker::default();
        let config = check.config(&raw);
        match config {
            Some(config) if check.problems.is_empty() => Ok(config),
            _ => Err(ConfigError::Invalid { path: path.to_owned(), problems: check.problems }),
        }
    }

    /// The VNIs that have a local endpoint: the ones this node carries.
    pub fn local_vnis(&self) -> BTreeSet<u32> {
        self.endpoints.iter().map(|e| e.vni).collect()
    }

    /// The flood fan-out limit of `vni`.
    pub fn flood_limit(&self, vni: u32) -> u32 {
        self.vnis.get(&vni).map_or(self.node.flood_limit, |settings| settings.flood_limit)
    }

    /// The node settings the file gives.
    pub fn node_settings(&self) -> NodeSettings {
        let node = &self.node;
        NodeSettings {
            name: node.name.clone(),
            underlay_interface: node.underlay_interface.clone(),
            vtep_address: node.vtep_address.into(),
            vxlan_port: node.vxlan_port,
            ttl: node.ttl,
            source_port_min: node.source_port_min,
            source_port_max: node.source_port_max,
            flood_limit: node.flood_limit,
        }
    }

    /// What the file says, as the model's items; each item's origin key is
    /// its TOML path, so problems render as the file's fields. A `[[vnis]]`
    /// entry is the network of its VNI, named as files' networks are.
    pub fn fragment(&self) -> Fragment {
        let file = |key: String| Origin::new(SourceKind::File, key);
        let networks = self
            .vnis
            .iter()
            .map(|(&vni, settings)| Network {
                name: model::implicit_network_name(vni),
                vni,
                subnet: None,
                subnet6: None,
                mtu: None,
                flood_limit: Some(settings.flood_limit),
                options: settings
                    .learning_ageing
                    .map(|ageing| {
                        [(model::OPTION_LEARNING.to_owned(), "true".to_owned()), (model::OPTION_AGEING.to_owned(), ageing.to_string())].into()
                    })
                    .unwrap_or_default(),
                origin: file(format!("vnis[{}]", settings.index)),
            })
            .collect();
        let endpoints = self
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| model::Endpoint {
                network: NetworkRef::Vni(e.vni),
                interface: e.interface.clone(),
                mac: e.mac,
                ipv4: Some(e.ip),
                ipv6: e.ipv6,
                owner: Owner { kind: OwnerKind::File, container_id: None },
                origin: file(format!("endpoints[{i}]")),
            })
            .collect();
        let peers = self
            .peers
            .iter()
            .enumerate()
            .map(|(p, peer)| model::Peer {
                name: peer.name.clone(),
                vtep_address: peer.vtep_address.into(),
                endpoints: peer
                    .endpoints
                    .iter()
                    .enumerate()
                    .map(|(i, e)| model::RemoteEndpoint {
                        network: NetworkRef::Vni(e.vni),
                        mac: e.mac,
                        ipv4: Some(e.ip),
                        ipv6: e.ipv6,
                        origin: file(format!("peers[{p}].endpoints[{i}]")),
                    })
                    .collect(),
                networks: peer.extra_vnis.iter().map(|&vni| NetworkRef::Vni(vni)).collect(),
                origin: file(format!("peers[{p}]")),
            })
            .collect();
        Fragment { networks, endpoints, peers }
    }

    /// The model of this file alone.
    pub fn model(&self) -> Model {
        Model::merge(self.node_settings(), [&self.fragment()])
    }
}

#[cfg(test)]
mod tests;

#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz_tests;
