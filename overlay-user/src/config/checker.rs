//! The checks of one file's fields, reporting every problem at once.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, Ipv6Addr},
};

use overlay_common::{
    DEFAULT_FLOOD_LIMIT, DEFAULT_OUTER_TTL, DEFAULT_SOURCE_PORT_MAX, DEFAULT_SOURCE_PORT_MIN,
    DEFAULT_VXLAN_PORT,
};

use crate::model::validate;

use super::{Config, LocalEndpoint, Node, Peer, Problem, RemoteEndpoint, VniSettings, raw::*};

pub use crate::model::MacAddr;

#[derive(Default)]
pub(super) struct Checker {
    pub(super) problems: Vec<Problem>,
}

impl Checker {
    fn problem(&mut self, field: impl Into<String>, value: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem::in_file(&field.into(), value.into(), message.into()));
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
            Ok(addr) => match validate::ipv4_problem(addr) {
                Some(message) => {
                    self.problem(field, value, message);
                    None
                }
                None => Some(addr),
            },
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
            Ok(addr) => match validate::ipv6_problem(addr) {
                Some(message) => {
                    self.problem(field, value, message);
                    None
                }
                None => Some(Some(addr)),
            },
            Err(_) => {
                self.problem(field, value, "not an IPv6 address (expected a form like fd00::1)");
                None
            }
        }
    }

    fn flood_limit(&mut self, field: &str, value: i64) -> Option<u32> {
        // Negative or beyond u32: as far out of range as u32::MAX.
        let limit = u32::try_from(value).unwrap_or(u32::MAX);
        match validate::flood_limit_problem(limit) {
            Some(message) => {
                self.problem(field, value.to_string(), message);
                None
            }
            None => Some(limit),
        }
    }

    /// A `[[vnis]]` entry's learning: `Some(None)` off, `Some(Some(ageing))`
    /// on, `None` when its fields are wrong (each reported).
    fn learning(&mut self, i: usize, raw: &RawVni) -> Option<Option<u32>> {
        let ageing = match raw.ageing {
            None => overlay_common::DEFAULT_LEARNING_AGEING_SECONDS,
            Some(seconds) => {
                // Negative or beyond u32: as far out of range as 0.
                let ageing = u32::try_from(seconds).unwrap_or(0);
                if let Some(message) = validate::ageing_problem(ageing) {
                    self.problem(format!("vnis[{i}].ageing"), seconds.to_string(), message);
                    return None;
                }
                if raw.learning != Some(true) {
                    self.problem(format!("vnis[{i}].ageing"), seconds.to_string(), "only applies with learning = true");
                    return None;
                }
                ageing
            }
        };
        Some((raw.learning == Some(true)).then_some(ageing))
    }

    fn mac(&mut self, field: &str, value: &str) -> Option<MacAddr> {
        match value.parse::<MacAddr>() {
            Ok(mac) => match mac.endpoint_problem() {
                Some(message) => {
                    self.problem(field, value, message);
                    None
                }
                None => Some(mac),
            },
            Err(()) => {
                self.problem(field, value, "not a MAC address (expected six hex pairs like 02:00:00:00:00:01)");
                None
            }
        }
    }

    fn vni(&mut self, field: &str, value: i64) -> Option<u32> {
        let vni = u32::try_from(value).unwrap_or(0);
        match validate::vni_problem(vni) {
            Some(message) => {
                self.problem(field, value.to_string(), message);
                None
            }
            None => Some(vni),
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

    pub(super) fn config(&mut self, raw: &RawConfig) -> Option<Config> {
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
            let learning_ageing = self.learning(i, raw_vni);
            match (vni, flood_limit, learning_ageing) {
                (Some(vni), Some(flood_limit), Some(learning_ageing)) => {
                    if vnis.insert(vni, VniSettings { flood_limit, learning_ageing, index: i }).is_some() {
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
        self.problems.extend(validate::validate(&config.model()));
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
            if validate::safe_name(&name) {
                Some(name)
            } else {
                self.problem("node.name", &name, validate::NAME_RULE);
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
