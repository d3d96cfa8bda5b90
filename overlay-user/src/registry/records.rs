//! The records the registry keeps in etcd, as JSON, and their validation.
//!
//! Reading goes field by field through [`Fields`] rather than a derived
//! `Deserialize`, so that a bad record is reported with its key, the field
//! at fault and the value as found ([`RecordProblem`]) instead of serde's
//! line and column in a value nobody sees.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
};

use serde_json::{Map, Value, json};

use overlay_common::VNI_MAX;

use super::{
    cidr::{Ipv4Net, Ipv4NetExt, Ipv6Net, parse_v4, parse_v6},
    keys::check_name,
    problem::{ConflictReport, RecordProblem},
};
use crate::model::{
    MacAddr,
    validate::{NETWORK_MTU_MAX, NETWORK_MTU_MIN},
};

/// Default IPAM block: 64 addresses per node at a time, as Calico's /26.
pub const DEFAULT_BLOCK_PREFIX_LEN: u8 = 26;

/// The block length of a network that names none: the default, or the
/// whole subnet when it is smaller than a block.
pub fn default_block_prefix_len(subnet: Ipv4Net) -> u8 {
    DEFAULT_BLOCK_PREFIX_LEN.max(subnet.prefix_len())
}

/// One node (agent): `nodes/<name>`, on the node's lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRecord {
    pub name: String,
    /// The underlay address peers send VXLAN to.
    pub vtep: IpAddr,
    /// UDP destination port of its VXLAN (RFC 7348 section 5: 4789).
    pub vxlan_port: u16,
    pub agent_version: String,
}

/// One network: `networks/<name>`, not leased (it outlives every node).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkRecord {
    pub name: String,
    pub vni: u32,
    pub subnet: Ipv4Net,
    pub subnet6: Option<Ipv6Net>,
    pub mtu: u32,
    /// Length of the IPAM blocks nodes claim from `subnet`.
    pub block_prefix_len: u8,
    /// Free-form settings for the agents (learning, flood limits...).
    pub options: BTreeMap<String, String>,
}

/// One endpoint (a container's interface): `endpoints/<network>/<mac>`, on
/// its node's lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointRecord {
    pub network: String,
    pub mac: MacAddr,
    pub addresses: Vec<IpAddr>,
    /// The node it is attached to.
    pub node: String,
    /// Who asked for it: a container id, a CNI container id, an API name.
    pub owner: String,
}

/// One IPAM block: `blocks/<network>/<base>`, claimed by one node and
/// written only by it; not leased, so allocations outlive agent restarts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockRecord {
    pub network: String,
    pub cidr: Ipv4Net,
    pub node: String,
    /// Allocated address -> owner.
    pub allocations: BTreeMap<Ipv4Addr, String>,
    /// Set (Unix seconds) by the first node that found the holder's node
    /// record gone: the block may be reclaimed once the grace period has
    /// run from then (see [`crate::registry::reclaim`]). `None` while the
    /// holder lives; its own next write clears it.
    pub orphaned_since: Option<u64>,
}

impl NodeRecord {
    pub fn to_json(&self) -> String {
        json!({
            "name": self.name,
            "vtep": self.vtep.to_string(),
            "vxlan_port": self.vxlan_port,
            "agent_version": self.agent_version,
        })
        .to_string()
    }

    pub fn parse(key: &str, value: &[u8]) -> Result<Self, RecordProblem> {
        let fields = Fields::of(key, value)?;
        let record = NodeRecord {
            name: fields.name("name")?,
            vtep: fields.parsed::<IpAddr>("vtep")?,
            vxlan_port: fields.unsigned("vxlan_port", 1, u16::MAX as u64)? as u16,
            agent_version: fields.string("agent_version")?,
        };
        record.validate(key)?;
        Ok(record)
    }

    pub fn validate(&self, key: &str) -> Result<(), RecordProblem> {
        check_name(&self.name).map_err(|reason| RecordProblem::new(key, "name", &self.name, reason))?;
        if self.vtep.is_unspecified() || self.vtep.is_multicast() || self.vtep.is_loopback() {
            return Err(RecordProblem::new(key, "vtep", self.vtep, "must be a unicast address peers can reach"));
        }
        if self.vxlan_port == 0 {
            return Err(RecordProblem::new(key, "vxlan_port", 0, "must not be 0"));
        }
        Ok(())
    }
}

impl NetworkRecord {
    pub fn to_json(&self) -> String {
        json!({
            "name": self.name,
            "vni": self.vni,
            "subnet": self.subnet.to_string(),
            "subnet6": self.subnet6.map(|net| net.to_string()),
            "mtu": self.mtu,
            "block_prefix_len": self.block_prefix_len,
            "options": self.options,
        })
        .to_string()
    }

    pub fn parse(key: &str, value: &[u8]) -> Result<Self, RecordProblem> {
        let fields = Fields::of(key, value)?;
        let record = NetworkRecord {
            name: fields.name("name")?,
            vni: fields.unsigned("vni", 1, VNI_MAX as u64)? as u32,
            subnet: fields.with("subnet", parse_v4)?,
            subnet6: fields.optional_with("subnet6", parse_v6)?,
            // The model's range: a record no agent would accept is refused here.
            mtu: fields.unsigned("mtu", NETWORK_MTU_MIN.into(), NETWORK_MTU_MAX.into())? as u32,
            block_prefix_len: match fields.get("block_prefix_len") {
                None | Some(Value::Null) => default_block_prefix_len(fields.with("subnet", parse_v4)?),
                Some(_) => fields.unsigned("block_prefix_len", 0, 32)? as u8,
            },
            options: fields.string_map("options")?,
        };
        record.validate(key)?;
        Ok(record)
    }

    pub fn validate(&self, key: &str) -> Result<(), RecordProblem> {
        check_name(&self.name).map_err(|reason| RecordProblem::new(key, "name", &self.name, reason))?;
        if self.vni == 0 || self.vni > VNI_MAX {
            return Err(RecordProblem::new(key, "vni", self.vni, format!("must be 1 to {VNI_MAX} (24 bits, RFC 7348 section 5)")));
        }
        if self.subnet.prefix_len() > 30 {
            return Err(RecordProblem::new(key, "subnet", self.subnet, "must hold at least two hosts (/30 or shorter)"));
        }
        if !(68..=65535).contains(&self.mtu) || self.subnet6.is_some() && self.mtu < 1280 {
            return Err(RecordProblem::new(key, "mtu", self.mtu, "must be 68 to 65535, and 1280 or more with IPv6 (RFC 8200 section 5)"));
        }
        if self.block_prefix_len < self.subnet.prefix_len() || self.block_prefix_len > 30 {
            return Err(RecordProblem::new(
                key,
                "block_prefix_len",
                self.block_prefix_len,
                format!("must be {} (the subnet's length) to 30", self.subnet.prefix_len()),
            ));
        }
        Ok(())
    }

    /// Is `address` one a host may use in this network?
    pub fn admits(&self, address: IpAddr) -> bool {
        match address {
            IpAddr::V4(v4) => self.subnet.is_host(v4),
            IpAddr::V6(v6) => self.subnet6.is_some_and(|net| net.contains(&v6)),
        }
    }
}

impl EndpointRecord {
    pub fn to_json(&self) -> String {
        json!({
            "network": self.network,
            "mac": self.mac.to_string(),
            "addresses": self.addresses.iter().map(IpAddr::to_string).collect::<Vec<_>>(),
            "node": self.node,
            "owner": self.owner,
        })
        .to_string()
    }

    pub fn parse(key: &str, value: &[u8]) -> Result<Self, RecordProblem> {
        let fields = Fields::of(key, value)?;
        let record = EndpointRecord {
            network: fields.name("network")?,
            mac: fields.mac("mac")?,
            addresses: fields.parsed_list::<IpAddr>("addresses")?,
            node: fields.name("node")?,
            owner: fields.string("owner")?,
        };
        record.validate(key)?;
        Ok(record)
    }

    pub fn validate(&self, key: &str) -> Result<(), RecordProblem> {
        check_name(&self.network).map_err(|reason| RecordProblem::new(key, "network", &self.network, reason))?;
        check_name(&self.node).map_err(|reason| RecordProblem::new(key, "node", &self.node, reason))?;
        if let Some(reason) = self.mac.endpoint_problem() {
            return Err(RecordProblem::new(key, "mac", self.mac, reason));
        }
        if self.owner.is_empty() {
            return Err(RecordProblem::new(key, "owner", "", "must not be empty"));
        }
        for (index, address) in self.addresses.iter().enumerate() {
            if self.addresses[..index].contains(address) {
                return Err(RecordProblem::new(key, "addresses", address, "listed twice"));
            }
        }
        Ok(())
    }
}

impl BlockRecord {
    pub fn to_json(&self) -> String {
        let mut value = json!({
            "network": self.network,
            "cidr": self.cidr.to_string(),
            "node": self.node,
            "allocations": self.allocations.iter().map(|(address, owner)| (address.to_string(), owner.clone())).collect::<BTreeMap<_, _>>(),
        });
        if let Some(since) = self.orphaned_since {
            value["orphaned_since"] = since.into();
        }
        value.to_string()
    }

    pub fn parse(key: &str, value: &[u8]) -> Result<Self, RecordProblem> {
        let fields = Fields::of(key, value)?;
        let cidr = fields.with("cidr", parse_v4)?;
        let mut allocations = BTreeMap::new();
        for (address, owner) in fields.string_map("allocations")? {
            let parsed: Ipv4Addr = address
                .parse()
                .map_err(|_| RecordProblem::new(key, "allocations", &address, "not an IPv4 address"))?;
            if !cidr.contains(&parsed) {
                return Err(RecordProblem::new(key, "allocations", &address, format!("outside the block {cidr}")));
            }
            allocations.insert(parsed, owner);
        }
        let orphaned_since = match fields.get("orphaned_since") {
            None | Some(Value::Null) => None,
            Some(_) => Some(fields.unsigned("orphaned_since", 0, u64::MAX)?),
        };
        Ok(BlockRecord { network: fields.name("network")?, cidr, node: fields.name("node")?, allocations, orphaned_since })
    }
}

impl ConflictReport {
    pub fn to_json(&self) -> String {
        json!({ "claimant": self.claimant, "kind": self.kind, "subject": self.subject, "holder": self.holder, "holder_node": self.holder_node })
            .to_string()
    }

    pub fn parse(key: &str, value: &[u8]) -> Result<Self, RecordProblem> {
        let fields = Fields::of(key, value)?;
        Ok(ConflictReport {
            claimant: fields.string("claimant")?,
            kind: fields.string("kind")?,
            subject: fields.string("subject")?,
            holder: fields.string("holder")?,
            // Absent in reports of older agents.
            holder_node: fields.optional_with("holder_node", |text| Ok(text.to_owned()))?,
        })
    }
}

/// The value of a claim key (`vteps/`, `vnis/`, `addresses/`): who holds it.
pub fn claim_value(holder: &str) -> String {
    Value::String(holder.to_owned()).to_string()
}

pub fn parse_claim(value: &[u8]) -> Option<String> {
    match serde_json::from_slice(value) {
        Ok(Value::String(holder)) => Some(holder),
        _ => None,
    }
}

/// A JSON object's fields, each read with the key and field named on error.
pub struct Fields<'a> {
    key: &'a str,
    map: Map<String, Value>,
}

impl<'a> Fields<'a> {
    pub fn of(key: &'a str, value: &[u8]) -> Result<Self, RecordProblem> {
        let shown = || String::from_utf8_lossy(&value[..value.len().min(200)]).into_owned();
        match serde_json::from_slice::<Value>(value) {
            Ok(Value::Object(map)) => Ok(Fields { key, map }),
            Ok(_) => Err(RecordProblem::new(key, "-", shown(), "not a JSON object")),
            Err(error) => Err(RecordProblem::new(key, "-", shown(), format!("not JSON: {error}"))),
        }
    }

    fn get(&self, field: &str) -> Option<&Value> {
        self.map.get(field)
    }

    fn problem(&self, field: &str, value: impl std::fmt::Display, reason: impl Into<String>) -> RecordProblem {
        RecordProblem::new(self.key, field, value, reason)
    }

    fn string(&self, field: &str) -> Result<String, RecordProblem> {
        match self.get(field) {
            Some(Value::String(text)) => Ok(text.clone()),
            Some(other) => Err(self.problem(field, other, "must be a string")),
            None => Err(self.problem(field, "", "missing")),
        }
    }

    fn name(&self, field: &str) -> Result<String, RecordProblem> {
        let name = self.string(field)?;
        check_name(&name).map_err(|reason| self.problem(field, &name, reason))?;
        Ok(name)
    }

    fn parsed<T: std::str::FromStr>(&self, field: &str) -> Result<T, RecordProblem> {
        let text = self.string(field)?;
        text.parse().map_err(|_| self.problem(field, &text, "does not parse"))
    }

    /// A string field read by `parse`, whose message becomes the reason.
    fn with<T>(&self, field: &str, parse: impl Fn(&str) -> Result<T, String>) -> Result<T, RecordProblem> {
        let text = self.string(field)?;
        parse(&text).map_err(|reason| self.problem(field, &text, reason))
    }

    fn optional_with<T>(&self, field: &str, parse: impl Fn(&str) -> Result<T, String>) -> Result<Option<T>, RecordProblem> {
        match self.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.with(field, parse).map(Some),
        }
    }

    fn mac(&self, field: &str) -> Result<MacAddr, RecordProblem> {
        let text = self.string(field)?;
        text.parse().map_err(|()| self.problem(field, &text, "not a MAC address (xx:xx:xx:xx:xx:xx)"))
    }

    fn unsigned(&self, field: &str, min: u64, max: u64) -> Result<u64, RecordProblem> {
        match self.get(field) {
            Some(Value::Number(number)) => match number.as_u64() {
                Some(value) if (min..=max).contains(&value) => Ok(value),
                _ => Err(self.problem(field, number, format!("must be an integer from {min} to {max}"))),
            },
            Some(other) => Err(self.problem(field, other, "must be a number")),
            None => Err(self.problem(field, "", "missing")),
        }
    }

    fn parsed_list<T: std::str::FromStr>(&self, field: &str) -> Result<Vec<T>, RecordProblem> {
        match self.get(field) {
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Value::String(text) => text.parse().map_err(|_| self.problem(field, text, "does not parse")),
                    other => Err(self.problem(field, other, "items must be strings")),
                })
                .collect(),
            Some(other) => Err(self.problem(field, other, "must be a list")),
            None => Err(self.problem(field, "", "missing")),
        }
    }

    fn string_map(&self, field: &str) -> Result<BTreeMap<String, String>, RecordProblem> {
        match self.get(field) {
            None | Some(Value::Null) => Ok(BTreeMap::new()),
            Some(Value::Object(map)) => map
                .iter()
                .map(|(name, value)| match value {
                    Value::String(text) => Ok((name.clone(), text.clone())),
                    other => Err(self.problem(&format!("{field}.{name}"), other, "must be a string")),
                })
                .collect(),
            Some(other) => Err(self.problem(field, other, "must be an object")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let network = NetworkRecord {
            name: "blue".into(),
            vni: 42,
            subnet: parse_v4("10.1.0.0/16").unwrap(),
            subnet6: Some(parse_v6("fd00:1::/64").unwrap()),
            mtu: 1450,
            block_prefix_len: 26,
            options: BTreeMap::from([("learning".into(), "off".into())]),
        };
        assert_eq!(NetworkRecord::parse("k", network.to_json().as_bytes()), Ok(network));
        let endpoint = EndpointRecord {
            network: "blue".into(),
            mac: "02:00:00:00:00:01".parse().unwrap(),
            addresses: vec!["10.1.0.5".parse().unwrap(), "fd00:1::5".parse().unwrap()],
            node: "n1".into(),
            owner: "c1".into(),
        };
        assert_eq!(EndpointRecord::parse("k", endpoint.to_json().as_bytes()), Ok(endpoint));
    }

    #[test]
    fn a_bad_field_is_named_with_its_value() {
        let problem = NodeRecord::parse("/overlay/v1/nodes/n1", br#"{"name":"n1","vtep":"10.0.0.300","vxlan_port":4789,"agent_version":"x"}"#)
            .unwrap_err();
        assert_eq!((problem.field.as_str(), problem.value.as_str()), ("vtep", "10.0.0.300"), "{problem}");
        let problem = NetworkRecord::parse("k", br#"{"name":"b","vni":16777216,"subnet":"10.0.0.0/8","mtu":1450}"#).unwrap_err();
        assert_eq!(problem.field, "vni", "{problem}");
        let problem = NetworkRecord::parse("k", b"not json").unwrap_err();
        assert_eq!(problem.field, "-", "{problem}");
    }
}
