//! The Docker plugin's requests (`overlay-user/src/docker`): the network
//! and IPAM drivers' calls, their corpus (`tests/corpus/docker/<Call>*.json`)
//! and what a refusal must say. The unit tests (`docker::fuzz_tests`) parse
//! mutated bodies; `tests/tests/docker_refusals.rs` sends them to a real
//! agent's plugin and checks that a refusal changes nothing.
use serde_json::Value;

/// One call of the plugin protocol.
pub struct Call {
    /// Docker's name, `NetworkDriver.CreateNetwork`: also the URL path and the corpus prefix.
    pub name: &'static str,
    /// The request's fields (for the mutator; nested ones by their own names).
    pub fields: &'static [&'static str],
    /// What a refusal may name: the fields, nested paths and the `docker` flags they come from.
    pub names: &'static [&'static str],
}

impl Call {
    /// The corpus file prefix (`CreateNetwork`).
    pub fn short(&self) -> &'static str {
        self.name.split_once('.').map_or(self.name, |(_, call)| call)
    }
}

/// Every call that takes a request body.
pub const CALLS: &[Call] = &[
    Call {
        name: "NetworkDriver.CreateNetwork",
        fields: &["NetworkID", "Options", "IPv4Data", "IPv6Data", "AddressSpace", "Pool", "Gateway", "com.docker.network.generic", "vni", "name", "com.docker.network.driver.mtu"],
        names: &["NetworkID", "Options", "IPv4Data", "IPv6Data", "--opt", "--subnet", "--ipv6", "overlay network"],
    },
    Call { name: "NetworkDriver.DeleteNetwork", fields: &["NetworkID"], names: &["NetworkID"] },
    Call {
        name: "NetworkDriver.CreateEndpoint",
        fields: &["NetworkID", "EndpointID", "Interface", "Address", "AddressIPv6", "MacAddress", "Options"],
        names: &["NetworkID", "EndpointID", "Interface", "Interface.Address", "Interface.AddressIPv6", "Interface.MacAddress"],
    },
    Call { name: "NetworkDriver.EndpointOperInfo", fields: &["NetworkID", "EndpointID"], names: &["NetworkID", "EndpointID"] },
    Call { name: "NetworkDriver.Join", fields: &["NetworkID", "EndpointID", "SandboxKey", "Options"], names: &["NetworkID", "EndpointID", "SandboxKey"] },
    Call { name: "NetworkDriver.Leave", fields: &["NetworkID", "EndpointID"], names: &["NetworkID", "EndpointID"] },
    Call { name: "NetworkDriver.DeleteEndpoint", fields: &["NetworkID", "EndpointID"], names: &["NetworkID", "EndpointID"] },
    Call {
        name: "IpamDriver.RequestPool",
        fields: &["AddressSpace", "Pool", "SubPool", "Options", "V6"],
        names: &["AddressSpace", "Pool", "SubPool", "Options", "V6", "--subnet", "--ip-range", "--ipam-opt", "--ipv6"],
    },
    Call { name: "IpamDriver.ReleasePool", fields: &["PoolID"], names: &["PoolID"] },
    Call {
        name: "IpamDriver.RequestAddress",
        fields: &["PoolID", "Address", "Options", "RequestAddressType", "com.docker.network.endpoint.macaddress"],
        names: &["PoolID", "Address", "Options", "--ip"],
    },
    Call { name: "IpamDriver.ReleaseAddress", fields: &["PoolID", "Address"], names: &["PoolID", "Address"] },
];

/// What is wrong with a refusal (`status`, Docker's `Err`) of `body` by
/// `call`, if anything: a malformed request is the caller's fault (4xx, never
/// a 5xx), and the sentence names a field of the request (or the flag it
/// comes from), unless the body is not a JSON object at all. Where it names a
/// field sent as a string, it gives that value as sent.
pub fn refusal_problem(call: &Call, body: &[u8], status: u16, message: &str) -> Option<String> {
    if !(400..500).contains(&status) || message.is_empty() {
        return Some(format!("a refused request should be a 4xx with a sentence, got HTTP {status} {message:?}"));
    }
    let Ok(Value::Object(_)) = serde_json::from_slice::<Value>(body) else { return None };
    if !call.names.iter().any(|name| message.contains(name)) {
        return Some(format!("the refusal {message:?} names none of {:?}", call.names));
    }
    let body: Value = serde_json::from_slice(body).unwrap();
    // The string values sent under a field the message names by its path.
    let mut leaves = Vec::new();
    string_leaves(&body, "", &mut leaves);
    for (path, value) in leaves {
        let named = [' ', ':', '='].iter().any(|after| names_field(message, &format!("{path}{after}")));
        if named && !value.is_empty() && value.len() < 200 && !message.contains(&value) && !message.contains(&format!("{value:?}")) {
            return Some(format!("the refusal {message:?} names {path} but not its value {value:?}"));
        }
    }
    None
}

/// Does `message` hold `field` as a word (`Pool:` is not in `RequestPool:`)?
fn names_field(message: &str, field: &str) -> bool {
    message.match_indices(field).any(|(at, _)| at == 0 || !message[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '.'))
}

/// `(path, text)` of every string in `value`, paths as Docker's fields
/// (`Interface.Address`, `IPv4Data[0].Pool`).
fn string_leaves(value: &Value, path: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::String(text) => out.push((path.to_owned(), text.clone())),
        Value::Object(map) => {
            for (key, inner) in map {
                let path = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                string_leaves(inner, &path, out);
            }
        }
        Value::Array(items) => {
            for (index, inner) in items.iter().enumerate() {
                string_leaves(inner, &format!("{path}[{index}]"), out);
            }
        }
        _ => {}
    }
}
