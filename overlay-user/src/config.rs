//! The node configuration file (TOML): parsing and validation.
//!
//! Parsing reads every address as text so that a bad value can be reported
//! with the field it is in and the value as written; validation then checks
//! the whole file and reports every problem at once. Nothing here touches
//! the kernel (interfaces are resolved later, see [`crate::netdev`]).
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use overlay_common::{
    DEFAULT_FLOOD_LIMIT, DEFAULT_OUTER_TTL, DEFAULT_SOURCE_PORT_MAX, DEFAULT_SOURCE_PORT_MIN,
    DEFAULT_VXLAN_PORT, FLOOD_MAX_LOCAL_PORTS, FLOOD_MAX_REMOTE_VTEPS, VNI_MAX,
};
use serde::Deserialize;

use crate::model::{
    self, Fragment, Model, Network, NetworkRef, NodeSettings, Origin, Owner, OwnerKind, SourceKind, validate,
};

pub use crate::model::MacAddr;

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

/// One thing wrong in a configuration: the field, its value as written, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Path of the field, e.g. `peers[1].endpoints[0].mac`.
    pub field: String,
    /// The offending value as written (empty when the field is missing).
    pub value: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {:?}: {}", self.field, self.value, self.message)
    }
}

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
    problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n")
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

// The file as written. Addresses stay text until validation so that errors
// can quote them; unknown keys are rejected so a typo cannot silently fall
// back to a default.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node: RawNode,
    #[serde(default)]
    endpoints: Vec<RawLocalEndpoint>,
    #[serde(default)]
    peers: Vec<RawPeer>,
    #[serde(default)]
    vnis: Vec<RawVni>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVni {
    vni: i64,
    flood_limit: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: String,
    underlay_interface: String,
    vtep_address: String,
    vxlan_port: Option<i64>,
    ttl: Option<i64>,
    source_port_range: Option<[i64; 2]>,
    flood_limit: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLocalEndpoint {
    interface: String,
    mac: String,
    ip: String,
    ipv6: Option<String>,
    vni: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    name: String,
    vtep_address: String,
    #[serde(default)]
    endpoints: Vec<RawRemoteEndpoint>,
    #[serde(default)]
    vnis: Vec<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRemoteEndpoint {
    mac: String,
    ip: String,
    ipv6: Option<String>,
    vni: i64,
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
                options: Default::default(),
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

#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn problem(&mut self, field: impl Into<String>, value: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem { field: field.into(), value: value.into(), message: message.into() });
    }

    fn non_empty(&mut self, field: &str, value: &str) -> Option<String> {
        if value.trim().is_empty() {
            self.problem(field, value, "must not be empty");
            return None;
        }
        Some(value.to_owned())
    }

    fn ipv4(&mut self, field: &str, value: &str) -> Option<Ipv4Addr> {
        match value.parse::<Ipv4Addr>() {
            Ok(addr) if addr.is_unspecified() || addr.is_broadcast() || addr.is_multicast() => {
                self.problem(field, value, "must be a unicast IPv4 address");
                None
            }
            Ok(addr) => Some(addr),
            Err(_) if value.parse::<std::net::Ipv6Addr>().is_ok() => {
                self.problem(field, value, "IPv6 is not supported here yet; use an IPv4 address");
                None
            }
            Err(_) => {
                self.problem(field, value, "not an IPv4 address (expected dotted quad like 192.0.2.1)");
                None
            }
        }
    }

    /// An optional IPv6 address: `Some(None)` when absent, `None` when invalid.
    fn ipv6(&mut self, field: &str, value: Option<&String>) -> Option<Option<Ipv6Addr>> {
        let Some(value) = value else { return Some(None) };
        match value.parse::<Ipv6Addr>() {
            Ok(addr) if addr.is_unspecified() || addr.is_multicast() || addr.is_loopback() => {
                self.problem(field, value, "must be a unicast IPv6 address");
                None
            }
            Ok(addr) => Some(Some(addr)),
            Err(_) => {
                self.problem(field, value, "not an IPv6 address (expected a form like fd00::1)");
                None
            }
        }
    }

    fn flood_limit(&mut self, field: &str, value: i64) -> Option<u32> {
        if (0..=(FLOOD_MAX_LOCAL_PORTS + FLOOD_MAX_REMOTE_VTEPS) as i64).contains(&value) {
            Some(value as u32)
        } else {
            self.problem(
                field,
                value.to_string(),
                format!("flood limit must be in 0..={} (copies per flooded frame; 0 turns flooding off)", FLOOD_MAX_LOCAL_PORTS + FLOOD_MAX_REMOTE_VTEPS),
            );
            None
        }
    }

    fn mac(&mut self, field: &str, value: &str) -> Option<MacAddr> {
        match value.parse::<MacAddr>() {
            Ok(mac) if mac.is_multicast() => {
                self.problem(field, value, "must be a unicast MAC address (lowest bit of the first byte clear)");
                None
            }
            Ok(mac) if mac.0 == [0; 6] => {
                self.problem(field, value, "must not be the all-zero MAC address");
                None
            }
            Ok(mac) => Some(mac),
            Err(()) => {
                self.problem(field, value, "not a MAC address (expected six hex pairs like 02:00:00:00:00:01)");
                None
            }
        }
    }

    fn vni(&mut self, field: &str, value: i64) -> Option<u32> {
        if (1..=VNI_MAX as i64).contains(&value) {
            Some(value as u32)
        } else {
            self.problem(field, value.to_string(), format!("VNI must be in 1..={VNI_MAX} (24 bits, 0 is reserved here)"));
            None
        }
    }

    fn port(&mut self, field: &str, value: i64) -> Option<u16> {
        if (1..=65535).contains(&value) {
            Some(value as u16)
        } else {
            self.problem(field, value.to_string(), "UDP port must be in 1..=65535");
            None
        }
    }

    fn config(&mut self, raw: &RawConfig) -> Option<Config> {
        let node = self.node(&raw.node);
        let endpoints: Vec<_> = raw
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| self.local_endpoint(i, e))
            .collect();
        let peers: Vec<_> = raw.peers.iter().enumerate().map(|(i, p)| self.peer(i, p)).collect();
        let mut vnis = BTreeMap::new();
        let mut vnis_valid = true;
        for (i, raw_vni) in raw.vnis.iter().enumerate() {
            let vni = self.vni(&format!("vnis[{i}].vni"), raw_vni.vni);
            let flood_limit = match raw_vni.flood_limit {
                Some(limit) => self.flood_limit(&format!("vnis[{i}].flood_limit"), limit),
                None => node.as_ref().map(|n| n.flood_limit),
            };
            match (vni, flood_limit) {
                (Some(vni), Some(flood_limit)) => {
                    if vnis.insert(vni, VniSettings { flood_limit, index: i }).is_some() {
                        self.problem(format!("vnis[{i}].vni"), vni.to_string(), "VNI listed twice");
                    }
                }
                _ => vnis_valid = false,
            }
        }
        let node = node?;
        let endpoints: Option<Vec<_>> = endpoints.into_iter().collect();
        let peers: Option<Vec<_>> = peers.into_iter().collect();
        if !vnis_valid {
            return None;
        }
        let config = Config { node, endpoints: endpoints?, peers: peers?, vnis };
        // Checks between items run on the model, as for every source.
        for problem in validate::validate(&config.model()) {
            self.problem(problem.path(), problem.value, problem.message);
        }
        let local = config.local_vnis();
        for (i, raw_vni) in raw.vnis.iter().enumerate() {
            if !local.contains(&(raw_vni.vni as u32)) {
                self.problem(format!("vnis[{i}].vni"), raw_vni.vni.to_string(), "no local endpoint is in this VNI");
            }
        }
        Some(config)
    }

    fn node(&mut self, raw: &RawNode) -> Option<Node> {
        let name = self.non_empty("node.name", &raw.name).and_then(|name| {
            // It names the node's pin directory on bpffs and its status file.
            let safe = name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) && !name.starts_with('.');
            if safe {
                Some(name)
            } else {
                self.problem("node.name", &name, "may hold only letters, digits, '-', '_' and '.', and not start with '.'");
                None
            }
        });
        let underlay_interface = self.non_empty("node.underlay_interface", &raw.underlay_interface);
        let vtep_address = self.ipv4("node.vtep_address", &raw.vtep_address);
        let vxlan_port = self.port("node.vxlan_port", raw.vxlan_port.unwrap_or(DEFAULT_VXLAN_PORT.into()));
        let ttl = match raw.ttl {
            None => Some(DEFAULT_OUTER_TTL),
            Some(ttl @ 1..=255) => Some(ttl as u8),
            Some(ttl) => {
                self.problem("node.ttl", ttl.to_string(), "TTL must be in 1..=255");
                None
            }
        };
        let [min, max] = raw
            .source_port_range
            .unwrap_or([DEFAULT_SOURCE_PORT_MIN.into(), DEFAULT_SOURCE_PORT_MAX.into()]);
        let range = match (self.port("node.source_port_range[0]", min), self.port("node.source_port_range[1]", max)) {
            (Some(min), Some(max)) if min <= max => Some((min, max)),
            (Some(_), Some(_)) => {
                self.problem("node.source_port_range", format!("[{min}, {max}]"), "first port must not be above the second");
                None
            }
            _ => None,
        };
        let (source_port_min, source_port_max) = range?;
        let flood_limit = self.flood_limit("node.flood_limit", raw.flood_limit.unwrap_or(DEFAULT_FLOOD_LIMIT.into()));
        Some(Node {
            flood_limit: flood_limit?,
            name: name?,
            underlay_interface: underlay_interface?,
            vtep_address: vtep_address?,
            vxlan_port: vxlan_port?,
            ttl: ttl?,
            source_port_min,
            source_port_max,
        })
    }

    fn local_endpoint(&mut self, index: usize, raw: &RawLocalEndpoint) -> Option<LocalEndpoint> {
        let at = format!("endpoints[{index}]");
        let interface = self.non_empty(&format!("{at}.interface"), &raw.interface);
        let mac = self.mac(&format!("{at}.mac"), &raw.mac);
        let ip = self.ipv4(&format!("{at}.ip"), &raw.ip);
        let ipv6 = self.ipv6(&format!("{at}.ipv6"), raw.ipv6.as_ref());
        let vni = self.vni(&format!("{at}.vni"), raw.vni);
        Some(LocalEndpoint { interface: interface?, mac: mac?, ip: ip?, ipv6: ipv6?, vni: vni? })
    }

    fn peer(&mut self, index: usize, raw: &RawPeer) -> Option<Peer> {
        let at = format!("peers[{index}]");
        let name = self.non_empty(&format!("{at}.name"), &raw.name);
        let vtep_address = self.ipv4(&format!("{at}.vtep_address"), &raw.vtep_address);
        let endpoints: Vec<_> = raw
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let at = format!("{at}.endpoints[{i}]");
                let mac = self.mac(&format!("{at}.mac"), &e.mac);
                let ip = self.ipv4(&format!("{at}.ip"), &e.ip);
                let ipv6 = self.ipv6(&format!("{at}.ipv6"), e.ipv6.as_ref());
                let vni = self.vni(&format!("{at}.vni"), e.vni);
                Some(RemoteEndpoint { mac: mac?, ip: ip?, ipv6: ipv6?, vni: vni? })
            })
            .collect();
        let endpoints: Option<Vec<_>> = endpoints.into_iter().collect();
        let extra_vnis: Option<BTreeSet<u32>> =
            raw.vnis.iter().enumerate().map(|(i, v)| self.vni(&format!("{at}.vnis[{i}]"), *v)).collect();
        Some(Peer { name: name?, vtep_address: vtep_address?, endpoints: endpoints?, extra_vnis: extra_vnis? })
    }

}

#[cfg(test)]
mod tests {
    use overlay_common::{PEER_COUNTER_SLOTS, VNI_COUNTER_SLOTS};

    use super::*;

    const GOOD: &str = r#"
[node]
name = "host-a"
underlay_interface = "eth0"
vtep_address = "192.0.2.1"

[[endpoints]]
interface = "veth-a1"
mac = "02:00:00:00:01:01"
ip = "10.10.0.1"
vni = 100

[[peers]]
name = "host-b"
vtep_address = "192.0.2.2"

  [[peers.endpoints]]
  mac = "02:00:00:00:02:01"
  ip = "10.10.0.2"
  vni = 100
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("node.toml"))
    }

    /// Parses `text` expecting exactly one problem, and returns it.
    fn only_problem(text: &str) -> Problem {
        match parse(text) {
            Err(ConfigError::Invalid { problems, .. }) if problems.len() == 1 => problems[0].clone(),
            other => panic!("expected exactly one problem, got {other:?}"),
        }
    }

    #[test]
    fn good_config_parses_with_defaults() {
        let config = parse(GOOD).unwrap();
        assert_eq!(config.node.vxlan_port, 4789);
        assert_eq!(config.node.ttl, 64);
        assert_eq!((config.node.source_port_min, config.node.source_port_max), (49152, 65535));
        assert_eq!(config.endpoints[0].mac, MacAddr([2, 0, 0, 0, 1, 1]));
        assert_eq!(config.peers[0].endpoints[0].ip, Ipv4Addr::new(10, 10, 0, 2));
        assert_eq!(config.local_vnis().into_iter().collect::<Vec<_>>(), vec![100]);
    }

    #[test]
    fn malformed_mac_names_field_and_value() {
        let p = only_problem(&GOOD.replace("02:00:00:00:01:01", "02:00:zz:00:01:01"));
        assert_eq!(p.field, "endpoints[0].mac");
        assert_eq!(p.value, "02:00:zz:00:01:01");
        let p = only_problem(&GOOD.replace("02:00:00:00:02:01", "02:00:00:00:02"));
        assert_eq!(p.field, "peers[0].endpoints[0].mac");
    }

    #[test]
    fn multicast_mac_is_rejected() {
        let p = only_problem(&GOOD.replace("02:00:00:00:01:01", "01:00:5e:00:00:01"));
        assert_eq!(p.field, "endpoints[0].mac");
        assert!(p.message.contains("unicast"), "{p}");
    }

    #[test]
    fn malformed_ip_names_field_and_value() {
        let p = only_problem(&GOOD.replace("\"10.10.0.1\"", "\"10.10.0.300\""));
        assert_eq!((p.field.as_str(), p.value.as_str()), ("endpoints[0].ip", "10.10.0.300"));
        let p = only_problem(&GOOD.replace("\"192.0.2.2\"", "\"not-an-ip\""));
        assert_eq!((p.field.as_str(), p.value.as_str()), ("peers[0].vtep_address", "not-an-ip"));
        let p = only_problem(&GOOD.replace("\"192.0.2.1\"", "\"2001:db8::1\""));
        assert_eq!(p.field, "node.vtep_address");
        assert!(p.message.contains("IPv6"), "{p}");
    }

    #[test]
    fn vni_out_of_range_is_rejected() {
        for bad in ["0", "16777216", "-5"] {
            let p = only_problem(&GOOD.replacen("vni = 100", &format!("vni = {bad}"), 1));
            assert_eq!((p.field.as_str(), p.value.as_str()), ("endpoints[0].vni", bad));
        }
        let ok = parse(&GOOD.replace("vni = 100", "vni = 16777215")).unwrap();
        assert_eq!(ok.endpoints[0].vni, 16_777_215);
    }

    #[test]
    fn same_mac_twice_in_one_vni_is_rejected() {
        let p = only_problem(&GOOD.replace("02:00:00:00:02:01", "02:00:00:00:01:01"));
        assert_eq!(p.field, "peers[0].endpoints[0].mac");
        assert!(p.message.contains("endpoints[0]"), "{p}");
    }

    #[test]
    fn same_ip_twice_in_one_vni_is_rejected() {
        let p = only_problem(&GOOD.replace("\"10.10.0.2\"", "\"10.10.0.1\""));
        assert_eq!((p.field.as_str(), p.value.as_str()), ("peers[0].endpoints[0].ip", "10.10.0.1"));
    }

    #[test]
    fn same_mac_and_ip_in_different_vnis_are_allowed() {
        let text = GOOD
            .replace("02:00:00:00:02:01", "02:00:00:00:01:01")
            .replace("\"10.10.0.2\"", "\"10.10.0.1\"")
            .replace("  vni = 100", "  vni = 200");
        parse(&text).unwrap();
    }

    #[test]
    fn peer_with_our_own_vtep_is_rejected() {
        let p = only_problem(&GOOD.replace("\"192.0.2.2\"", "\"192.0.2.1\""));
        assert_eq!((p.field.as_str(), p.value.as_str()), ("peers[0].vtep_address", "192.0.2.1"));
    }

    #[test]
    fn duplicate_peers_are_rejected() {
        let text = format!("{GOOD}\n[[peers]]\nname = \"host-b\"\nvtep_address = \"192.0.2.2\"\n");
        let problems = parse(&text).unwrap_err().problems().to_vec();
        let fields: Vec<_> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["peers[1].vtep_address", "peers[1].name"], "{problems:?}");
    }

    #[test]
    fn port_with_two_vnis_is_rejected() {
        let text = format!(
            "{GOOD}\n[[endpoints]]\ninterface = \"veth-a1\"\nmac = \"02:00:00:00:01:02\"\nip = \"10.20.0.1\"\nvni = 200\n"
        );
        let p = only_problem(&text);
        assert_eq!((p.field.as_str(), p.value.as_str()), ("endpoints[1].vni", "200"));
    }

    #[test]
    fn bad_port_ttl_and_range_are_rejected() {
        let with = |line: &str| GOOD.replace("vtep_address = \"192.0.2.1\"", &format!("vtep_address = \"192.0.2.1\"\n{line}"));
        assert_eq!(only_problem(&with("vxlan_port = 70000")).field, "node.vxlan_port");
        assert_eq!(only_problem(&with("ttl = 0")).field, "node.ttl");
        assert_eq!(only_problem(&with("source_port_range = [60000, 50000]")).field, "node.source_port_range");
        assert_eq!(parse(&with("vxlan_port = 8472")).unwrap().node.vxlan_port, 8472);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = GOOD.replace("02:00:00:00:01:01", "bad").replace("\"192.0.2.2\"", "\"bad\"");
        let problems = parse(&text).unwrap_err().problems().to_vec();
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn unknown_key_is_a_syntax_error_naming_it() {
        let err = parse(&GOOD.replace("vtep_address = \"192.0.2.1\"", "vtep_address = \"192.0.2.1\"\nvxlan_prot = 1")).unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }) && err.to_string().contains("vxlan_prot"), "{err}");
    }

    #[test]
    fn missing_field_is_a_syntax_error_naming_it() {
        let err = parse(&GOOD.replace("underlay_interface = \"eth0\"", "")).unwrap_err();
        assert!(err.to_string().contains("underlay_interface"), "{err}");
    }

    #[test]
    fn ipv6_addresses_parse_and_must_be_unique_per_vni() {
        let with_v6 = GOOD
            .replace("ip = \"10.10.0.1\"", "ip = \"10.10.0.1\"\nipv6 = \"fd00::1\"")
            .replace("  ip = \"10.10.0.2\"", "  ip = \"10.10.0.2\"\n  ipv6 = \"fd00::2\"");
        let config = parse(&with_v6).unwrap();
        assert_eq!(config.endpoints[0].ipv6, Some("fd00::1".parse().unwrap()));
        assert_eq!(config.peers[0].endpoints[0].ipv6, Some("fd00::2".parse().unwrap()));
        let p = only_problem(&with_v6.replace("fd00::2", "fd00::1"));
        assert_eq!((p.field.as_str(), p.value.as_str()), ("peers[0].endpoints[0].ipv6", "fd00::1"));
        let p = only_problem(&with_v6.replace("fd00::1", "ff02::1"));
        assert_eq!(p.field, "endpoints[0].ipv6");
        let p = only_problem(&with_v6.replace("fd00::1", "fd00::zz"));
        assert_eq!((p.field.as_str(), p.value.as_str()), ("endpoints[0].ipv6", "fd00::zz"));
    }

    #[test]
    fn flood_limits_default_and_override_per_vni() {
        let config = parse(GOOD).unwrap();
        assert_eq!(config.flood_limit(100), DEFAULT_FLOOD_LIMIT);
        let text = GOOD.replace("vtep_address = \"192.0.2.1\"", "vtep_address = \"192.0.2.1\"\nflood_limit = 8");
        assert_eq!(parse(&text).unwrap().flood_limit(100), 8);
        let text = format!("{GOOD}\n[[vnis]]\nvni = 100\nflood_limit = 2\n");
        assert_eq!(parse(&text).unwrap().flood_limit(100), 2);
        let p = only_problem(&format!("{GOOD}\n[[vnis]]\nvni = 100\nflood_limit = 1000\n"));
        assert_eq!((p.field.as_str(), p.value.as_str()), ("vnis[0].flood_limit", "1000"));
        let p = only_problem(&format!("{GOOD}\n[[vnis]]\nvni = 300\n"));
        assert_eq!((p.field.as_str(), p.value.as_str()), ("vnis[0].vni", "300"));
    }

    #[test]
    fn peer_vnis_include_extra_ones() {
        let text = GOOD.replace("vtep_address = \"192.0.2.2\"", "vtep_address = \"192.0.2.2\"\nvnis = [300]");
        let config = parse(&text).unwrap();
        assert_eq!(config.peers[0].vnis().into_iter().collect::<Vec<_>>(), vec![100, 300]);
        let p = only_problem(&GOOD.replace("vtep_address = \"192.0.2.2\"", "vtep_address = \"192.0.2.2\"\nvnis = [0]"));
        assert_eq!(p.field, "peers[0].vnis[0]");
    }

    #[test]
    fn too_many_ports_in_one_vni_is_rejected() {
        let mut text = GOOD.to_owned();
        for i in 0..FLOOD_MAX_LOCAL_PORTS {
            text.push_str(&format!(
                "\n[[endpoints]]\ninterface = \"port{i}\"\nmac = \"02:00:00:01:00:{i:02x}\"\nip = \"10.10.1.{i}\"\nvni = 100\n"
            ));
        }
        let p = only_problem(&text);
        assert!(p.field.ends_with(".interface") && p.message.contains("VNI 100"), "{p}");
    }

    #[test]
    fn more_vnis_or_peers_than_counter_slots_is_rejected() {
        let endpoints = |count: u32| {
            (0..count)
                .map(|i| {
                    format!(
                        "\n[[endpoints]]\ninterface = \"port{i}\"\nmac = \"02:00:00:02:{:02x}:{:02x}\"\nip = \"10.20.0.1\"\nvni = {}\n",
                        i >> 8,
                        i & 0xff,
                        1000 + i
                    )
                })
                .collect::<String>()
        };
        // With GOOD's VNI 100: exactly as many VNIs as slots, then one more.
        parse(&format!("{GOOD}{}", endpoints(VNI_COUNTER_SLOTS - 1))).unwrap();
        let p = only_problem(&format!("{GOOD}{}", endpoints(VNI_COUNTER_SLOTS)));
        let last = VNI_COUNTER_SLOTS as usize;
        assert_eq!((p.field.as_str(), p.value.as_str()), (format!("endpoints[{last}].vni").as_str(), (1000 + VNI_COUNTER_SLOTS - 1).to_string().as_str()));
        assert!(p.message.contains(&format!("{VNI_COUNTER_SLOTS} VNIs")), "{p}");

        let peers = |count: u32| {
            (0..count)
                .map(|i| format!("\n[[peers]]\nname = \"extra{i}\"\nvtep_address = \"198.18.{}.{}\"\n", i >> 8, i & 0xff))
                .collect::<String>()
        };
        parse(&format!("{GOOD}{}", peers(PEER_COUNTER_SLOTS - 1))).unwrap();
        let p = only_problem(&format!("{GOOD}{}", peers(PEER_COUNTER_SLOTS)));
        assert_eq!((p.field.as_str(), p.value.as_str()), (format!("peers[{}]", PEER_COUNTER_SLOTS).as_str(), format!("extra{}", PEER_COUNTER_SLOTS - 1).as_str()));
        assert!(p.message.contains(&format!("{PEER_COUNTER_SLOTS} peers")), "{p}");
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = Config::load(Path::new("/nonexistent/overlay/node.toml")).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/overlay/node.toml"), "{err}");
    }
}

#[cfg(test)]
mod fuzz_tests;
