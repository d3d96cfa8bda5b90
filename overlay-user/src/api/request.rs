//! Request bodies of the local API, read field by field so that every
//! refusal names the field and the value as sent.
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use serde_json::{Map, Value};

use super::ApiError;
use crate::{
    model::{
        Ipv4Net, Ipv6Net, MacAddr, OPTION_AGEING, OPTION_LEARNING, Owner, OwnerKind,
        validate::{ageing_problem, flood_limit_problem, learning_options_problem, interface_name_problem, ipv4_problem, ipv6_problem, name_problem, vni_problem},
    },
    sources::api_store::{ApiEndpoint, ApiNetwork},
};

/// A JSON object's fields, taken one by one; what is left at the end is
/// unknown. `within` is the path of a nested object (`owner`), so that a
/// refusal names `owner.kind`, as sent.
struct Fields {
    map: Map<String, Value>,
    within: String,
}

impl Fields {
    fn parse(body: &[u8]) -> Result<Fields, ApiError> {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => Ok(Fields { map, within: String::new() }),
            Ok(other) => Err(ApiError::bad_request("", &other.to_string(), "the body must be a JSON object")),
            Err(error) => Err(ApiError::bad_request("", &String::from_utf8_lossy(body), &format!("not JSON: {error}"))),
        }
    }

    /// The request's name for `field` of this object.
    fn path(&self, field: &str) -> String {
        if self.within.is_empty() { field.to_owned() } else { format!("{}.{field}", self.within) }
    }

    fn refuse(&self, field: &str, value: &str, message: &str) -> ApiError {
        ApiError::bad_request(&self.path(field), value, message)
    }

    fn string(&mut self, field: &str) -> Result<Option<String>, ApiError> {
        match self.map.remove(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(other) => Err(self.refuse(field, &other.to_string(), "must be a string")),
        }
    }

    fn required_string(&mut self, field: &str) -> Result<String, ApiError> {
        self.string(field)?.ok_or_else(|| self.refuse(field, "", "is required"))
    }

    fn number(&mut self, field: &str) -> Result<Option<u32>, ApiError> {
        match self.map.remove(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => match n.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(n) => Ok(Some(n)),
                None => Err(self.refuse(field, &n.to_string(), "must be a whole number in 0..=4294967295")),
            },
            Some(other) => Err(self.refuse(field, &other.to_string(), "must be a number")),
        }
    }

    fn boolean(&mut self, field: &str) -> Result<Option<bool>, ApiError> {
        match self.map.remove(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(value)) => Ok(Some(value)),
            Some(other) => Err(self.refuse(field, &other.to_string(), "must be true or false")),
        }
    }

    fn parsed<T: std::str::FromStr>(&mut self, field: &str, expected: &str) -> Result<Option<T>, ApiError> {
        Ok(self.parsed_with_text(field, expected)?.map(|(value, _)| value))
    }

    /// [`Fields::parsed`], with the text as sent: later refusals of the
    /// value quote what the client wrote, not its normalised form.
    fn parsed_with_text<T: std::str::FromStr>(&mut self, field: &str, expected: &str) -> Result<Option<(T, String)>, ApiError> {
        match self.string(field)? {
            None => Ok(None),
            Some(text) => match text.parse() {
                Ok(value) => Ok(Some((value, text))),
                Err(_) => Err(self.refuse(field, &text, expected)),
            },
        }
    }

    fn object(&mut self, field: &str) -> Result<Option<Fields>, ApiError> {
        match self.map.remove(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(map)) => Ok(Some(Fields { map, within: self.path(field) })),
            Some(other) => Err(self.refuse(field, &other.to_string(), "must be an object")),
        }
    }

    /// Refuses any field not taken.
    fn finish(self) -> Result<(), ApiError> {
        match self.map.iter().next() {
            None => Ok(()),
            Some((name, value)) => Err(self.refuse(name, &value.to_string(), "unknown field")),
        }
    }
}

/// `POST /v1/networks`.
pub fn network(body: &[u8]) -> Result<ApiNetwork, ApiError> {
    let mut fields = Fields::parse(body)?;
    let name = fields.required_string("name")?;
    if let Some(problem) = name_problem(&name) {
        return Err(ApiError::bad_request("name", &name, problem));
    }
    let vni = fields.number("vni")?.ok_or_else(|| ApiError::bad_request("vni", "", "is required"))?;
    if let Some(message) = vni_problem(vni) {
        return Err(ApiError::bad_request("vni", &vni.to_string(), &message));
    }
    let subnet: Option<Ipv4Net> = fields.parsed("subnet", "not an IPv4 prefix (expected a form like 10.0.9.0/24)")?;
    let subnet6: Option<Ipv6Net> = fields.parsed("subnet6", "not an IPv6 prefix (expected a form like fd00:9::/64)")?;
    let ip_range: Option<(Ipv4Net, String)> = fields.parsed_with_text("ip_range", "not an IPv4 prefix (expected a form like 10.0.9.64/26)")?;
    if let Some((range, sent)) = &ip_range {
        match subnet {
            None => return Err(ApiError::bad_request("ip_range", sent, "needs a subnet to lie in")),
            Some(subnet) if !subnet.contains(range) => {
                return Err(ApiError::bad_request("ip_range", sent, &format!("is not inside the subnet {subnet}")));
            }
            Some(_) => {}
        }
    }
    let ip_range = ip_range.map(|(range, _)| range);
    let mtu = fields.number("mtu")?;
    let flood_limit = fields.number("flood_limit")?;
    if let Some(message) = flood_limit.and_then(flood_limit_problem) {
        return Err(ApiError::bad_request("flood_limit", &flood_limit.unwrap_or(0).to_string(), &message));
    }
    let mut options = BTreeMap::new();
    if let Some(given) = fields.object("options")? {
        for (key, value) in given.map {
            match value {
                Value::String(text) => options.insert(key, text),
                other => return Err(ApiError::bad_request(&format!("options.{key}"), &other.to_string(), "must be a string")),
            };
        }
    }
    // `learning` and `ageing` are the options of the same names (which the
    // registry and Docker carry as text), given typed.
    let mut typed = Vec::new();
    if let Some(learning) = fields.boolean(OPTION_LEARNING)? {
        options.insert(OPTION_LEARNING.to_owned(), learning.to_string());
        typed.push(OPTION_LEARNING);
    }
    if let Some(ageing) = fields.number(OPTION_AGEING)? {
        if let Some(message) = ageing_problem(ageing) {
            return Err(ApiError::bad_request(OPTION_AGEING, &ageing.to_string(), &message));
        }
        options.insert(OPTION_AGEING.to_owned(), ageing.to_string());
        typed.push(OPTION_AGEING);
    }
    if let Some((option, value, message)) = learning_options_problem(&options) {
        let field = if typed.contains(&option) { option.to_owned() } else { format!("options.{option}") };
        return Err(ApiError::bad_request(&field, &value, &message));
    }
    fields.finish()?;
    Ok(ApiNetwork { name, vni, subnet, subnet6, mtu, flood_limit, options, ip_range })
}

/// `POST /v1/endpoints`. A missing MAC is made up (locally administered,
/// random); a missing id is the interface's name.
pub fn endpoint(body: &[u8]) -> Result<ApiEndpoint, ApiError> {
    let mut fields = Fields::parse(body)?;
    let network = fields.required_string("network")?;
    let interface = fields.required_string("interface")?;
    if let Some(message) = interface_name_problem(&interface) {
        return Err(ApiError::bad_request("interface", &interface, message));
    }
    let id = fields.string("id")?.unwrap_or_else(|| interface.clone());
    if id.is_empty() || id.len() > 128 || !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')) {
        return Err(ApiError::bad_request("id", &id, "may hold only letters, digits, '-', '_', '.' and ':' (1 to 128)"));
    }
    let mac = match fields.parsed::<MacAddr>("mac", "not a MAC address (expected six hex pairs like 02:00:00:00:00:01)")? {
        Some(mac) => {
            if let Some(message) = mac.endpoint_problem() {
                return Err(ApiError::bad_request("mac", &mac.to_string(), message));
            }
            mac
        }
        None => MacAddr::random_with_prefix(&[0x02]),
    };
    let ipv4: Option<Ipv4Addr> = fields.parsed("ipv4", "not an IPv4 address (expected dotted quad like 10.0.9.2)")?;
    if let Some(message) = ipv4.and_then(ipv4_problem) {
        return Err(ApiError::bad_request("ipv4", &ipv4.unwrap().to_string(), message));
    }
    let ipv6: Option<Ipv6Addr> = fields.parsed("ipv6", "not an IPv6 address (expected a form like fd00::1)")?;
    if let Some(message) = ipv6.and_then(ipv6_problem) {
        return Err(ApiError::bad_request("ipv6", &ipv6.unwrap().to_string(), message));
    }
    if ipv4.is_none() && ipv6.is_none() {
        return Err(ApiError::bad_request("ipv4", "", "an endpoint needs an ipv4 or an ipv6 address"));
    }
    let owner = match fields.object("owner")? {
        None => Owner { kind: OwnerKind::Api, container_id: None },
        Some(mut owner) => {
            let kind = match owner.string("kind")?.as_deref() {
                None | Some("api") => OwnerKind::Api,
                Some("docker") => OwnerKind::Docker,
                Some("cni") => OwnerKind::Cni,
                Some(other) => return Err(ApiError::bad_request("owner.kind", other, "must be one of api, docker, cni")),
            };
            let container_id = owner.string("container_id")?;
            owner.finish()?;
            Owner { kind, container_id }
        }
    };
    fields.finish()?;
    Ok(ApiEndpoint { id, network, interface, mac, ipv4, ipv6, owner })
}

/// `POST /v1/networks/{name}/addresses`: `{address?, owner?}`.
pub fn allocation(body: &[u8]) -> Result<(Option<Ipv4Addr>, String), ApiError> {
    let mut fields = if body.iter().all(u8::is_ascii_whitespace) { Fields { map: Map::new(), within: String::new() } } else { Fields::parse(body)? };
    let address: Option<Ipv4Addr> = fields.parsed("address", "not an IPv4 address (expected dotted quad like 10.0.9.2)")?;
    let owner = fields.string("owner")?.unwrap_or_default();
    if owner.len() > OWNER_MAX || owner.chars().any(char::is_control) {
        return Err(ApiError::bad_request("owner", &owner, &format!("must be at most {OWNER_MAX} characters without control characters")));
    }
    fields.finish()?;
    Ok((address, owner))
}

/// The longest owner label of an allocation.
const OWNER_MAX: usize = 160;
