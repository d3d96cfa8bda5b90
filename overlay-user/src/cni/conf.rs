//! What one invocation asks for: the plugin's keys in the network
//! configuration, the container's attachment (CNI_CONTAINERID, CNI_IFNAME,
//! CNI_NETNS), and the address and MAC a runtime may request (CNI_ARGS
//! `IP=`/`MAC=`, or `runtimeConfig` `ips`/`mac`).
//!
//! ```json
//! {"cniVersion": "1.0.0", "name": "blue", "type": "overlay-cni",
//!  "agent_socket": "/run/overlay/host-a.sock",
//!  "network": "blue", "mtu": 1450, "host_netns": "/proc/1/ns/net",
//!  "ipam": {"type": "overlay-cni", "routes": [{"dst": "10.20.0.0/16", "gw": "10.0.9.1"}]}}
//! ```
//! Only `agent_socket` is required: the network defaults to the
//! configuration's `name`, the MTU to the network's, the host namespace to
//! the agent's own (found from the socket's peer), and addresses come from
//! the agent.
use std::{
    net::Ipv4Addr,
    path::PathBuf,
    str::FromStr as _,
};

use rscni_plugin::{
    error::Error,
    types::{Args, NetConf},
};
use serde_json::Value;

use crate::model::{Ipv4Net, MacAddr};

/// The plugin's type name, as runtimes find its binary.
pub const PLUGIN_TYPE: &str = "overlay-cni";

/// The plugin's keys of the network configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginConf {
    /// The overlay network at the agent.
    pub network: String,
    pub agent_socket: PathBuf,
    pub mtu: Option<u32>,
    /// Where the host end of each veth goes; the agent's namespace if unset.
    pub host_netns: Option<PathBuf>,
    /// Extra routes for the container (`ipam.routes`).
    pub routes: Vec<RouteConf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteConf {
    pub dst: Ipv4Net,
    pub gw: Option<Ipv4Addr>,
}

/// A container's attachment to the network: the runtime's key for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
    pub netns: Option<PathBuf>,
}

/// What the runtime asked for beyond the configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Requested {
    pub ip: Option<Ipv4Addr>,
    pub mac: Option<MacAddr>,
}

pub(super) fn invalid(field: &str, value: &Value, message: &str) -> Error {
    Error::InvalidNetworkConfig(format!("{field} = {value}: {message}"))
}

fn string_field(conf: &NetConf, field: &str) -> Result<Option<String>, Error> {
    match conf.custom.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if !text.is_empty() => Ok(Some(text.clone())),
        Some(other) => Err(invalid(field, other, "must be a non-empty string")),
    }
}

/// Keys this plugin reads from the configuration's top level (besides the spec's).
const KEYS: [&str; 4] = ["agent_socket", "network", "mtu", "host_netns"];

impl PluginConf {
    pub fn parse(conf: &NetConf) -> Result<PluginConf, Error> {
        if let Some(unknown) = conf.custom.keys().find(|key| !KEYS.contains(&key.as_str())) {
            return Err(invalid(unknown, &conf.custom[unknown], &format!("unknown key (overlay-cni reads {})", KEYS.join(", "))));
        }
        let agent_socket = string_field(conf, "agent_socket")?
            .ok_or_else(|| Error::InvalidNetworkConfig("agent_socket is required: the path of the agent's API socket, e.g. /run/overlay/NODE.sock".into()))?;
        let network = string_field(conf, "network")?.unwrap_or_else(|| conf.name.clone());
        let mtu = match conf.custom.get("mtu") {
            None | Some(Value::Null) => None,
            Some(value) => match value.as_u64() {
                Some(mtu @ 68..=65535) => Some(mtu as u32),
                _ => return Err(invalid("mtu", value, "must be a whole number in 68..=65535")),
            },
        };
        let host_netns = string_field(conf, "host_netns")?.map(PathBuf::from);
        let mut routes = Vec::new();
        if let Some(ipam) = &conf.ipam {
            if ipam.r#type != PLUGIN_TYPE {
                return Err(invalid(
                    "ipam.type",
                    &Value::String(ipam.r#type.clone()),
                    "overlay-cni takes addresses from the agent: leave ipam out or set its type to overlay-cni",
                ));
            }
            for (key, value) in &ipam.custom {
                match key.as_str() {
                    "routes" => routes = parse_routes(value)?,
                    _ => return Err(invalid(&format!("ipam.{key}"), value, "unknown key (overlay-cni's ipam reads routes)")),
                }
            }
        }
        Ok(PluginConf { network, agent_socket: PathBuf::from(agent_socket), mtu, host_netns, routes })
    }
}

pub(super) fn parse_routes(value: &Value) -> Result<Vec<RouteConf>, Error> {
    let Some(list) = value.as_array() else { return Err(invalid("ipam.routes", value, "must be a list of {dst, gw?}")) };
    list.iter()
        .enumerate()
        .map(|(index, route)| {
            let field = |name: &str| format!("ipam.routes[{index}].{name}");
            let dst = route.get("dst").and_then(Value::as_str).and_then(|text| Ipv4Net::from_str(text).ok()).ok_or_else(|| {
                invalid(&field("dst"), route.get("dst").unwrap_or(&Value::Null), "must be an IPv4 prefix like 10.20.0.0/16")
            })?;
            let gw = match route.get("gw") {
                None | Some(Value::Null) => None,
                Some(value) => Some(value.as_str().and_then(|text| text.parse().ok()).ok_or_else(|| {
                    invalid(&field("gw"), value, "must be an IPv4 address")
                })?),
            };
            Ok(RouteConf { dst, gw })
        })
        .collect()
}

impl Attachment {
    /// The container id and interface name every attachment command carries
    /// (the crate has checked they are there for ADD, CHECK and DEL).
    pub fn of(args: &Args) -> Result<Attachment, Error> {
        let container_id = args.container_id().map(|id| id.to_string()).ok_or_else(|| Error::missing_env(&["CNI_CONTAINERID"]))?;
        let ifname = args.ifname().map(|name| name.to_string()).ok_or_else(|| Error::missing_env(&["CNI_IFNAME"]))?;
        Ok(Attachment { container_id, ifname, netns: args.netns().cloned().filter(|path| !path.as_os_str().is_empty()) })
    }

    /// The host end of this attachment's veth: derived from the attachment,
    /// so DEL, CHECK and GC find it without any state of their own.
    pub fn host_interface(&self) -> String {
        host_interface(&self.container_id, &self.ifname)
    }

    /// The owner recorded with the address the agent allocates for it.
    pub fn address_owner(&self) -> String {
        address_owner(&self.container_id, &self.ifname)
    }
}

/// `ovc` and 12 hex digits of a hash of the container id and interface
/// name (the kernel allows 15 characters).
pub fn host_interface(container_id: &str, ifname: &str) -> String {
    format!("ovc{:012x}", fnv1a(&[container_id.as_bytes(), b"\0", ifname.as_bytes()]) & 0xffff_ffff_ffff)
}

pub fn address_owner(container_id: &str, ifname: &str) -> String {
    format!("cni:{container_id}:{ifname}")
}

/// FNV-1a, 64 bits: stable across builds (std's hasher makes no such promise).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    parts.iter().flat_map(|part| part.iter()).fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3))
}

impl Requested {
    /// `IP=`/`MAC=` of CNI_ARGS (what Podman passes for `--ip`/`--mac-address`),
    /// else `runtimeConfig.ips`/`mac` (the `ips` and `mac` capabilities).
    pub fn of(args: &Args) -> Result<Requested, Error> {
        let mut requested = Requested::default();
        for pair in args.args().unwrap_or_default().split(';').filter(|pair| !pair.is_empty()) {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(Error::InvalidEnvValue(format!("CNI_ARGS: {pair:?} is not KEY=VALUE")));
            };
            match key {
                "IP" => requested.ip = Some(parse_ip(value).map_err(|message| Error::InvalidEnvValue(format!("CNI_ARGS IP={value}: {message}")))?),
                "MAC" => requested.mac = Some(parse_mac(value).map_err(|message| Error::InvalidEnvValue(format!("CNI_ARGS MAC={value}: {message}")))?),
                // Others (IgnoreUnknown, K8S_POD_NAME...) are for other plugins.
                _ => {}
            }
        }
        if let Some(runtime) = &args.config().runtime_config {
            if let (None, Some(ips)) = (requested.ip, runtime.custom.get("ips")) {
                let first = ips.as_array().and_then(|list| list.iter().find_map(Value::as_str));
                if let Some(text) = first {
                    requested.ip = Some(parse_ip(text).map_err(|message| invalid("runtimeConfig.ips", ips, &message))?);
                }
            }
            if let (None, Some(mac)) = (requested.mac, runtime.custom.get("mac")) {
                let text = mac.as_str().unwrap_or_default();
                requested.mac = Some(parse_mac(text).map_err(|message| invalid("runtimeConfig.mac", mac, &message))?);
            }
        }
        Ok(requested)
    }
}

/// An IPv4 address, alone or with a prefix length (which the network's subnet decides anyway).
fn parse_ip(text: &str) -> Result<Ipv4Addr, String> {
    let address = text.split_once('/').map_or(text, |(address, _)| address);
    address.parse().map_err(|_| "not an IPv4 address (expected a dotted quad like 10.0.9.5)".to_owned())
}

fn parse_mac(text: &str) -> Result<MacAddr, String> {
    let mac: MacAddr = text.parse().map_err(|()| "not a MAC address (expected six hex pairs like 02:00:00:00:00:01)".to_owned())?;
    match mac.endpoint_problem() {
        Some(problem) => Err(problem.to_owned()),
        None => Ok(mac),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_interface_names_are_short_stable_and_distinct() {
        let a = host_interface("0123abcd", "eth0");
        assert_eq!(a.len(), 15, "{a}");
        assert_eq!(a, host_interface("0123abcd", "eth0"), "the name must be the same at ADD and DEL");
        assert_ne!(a, host_interface("0123abcd", "eth1"));
        assert_ne!(a, host_interface("0123abce", "eth0"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_naming_them() {
        let conf = |extra: &str| -> NetConf {
            serde_json::from_str(&format!(r#"{{"cniVersion": "1.0.0", "name": "blue", "type": "overlay-cni", "agent_socket": "/s"{extra}}}"#)).unwrap()
        };
        let parsed = PluginConf::parse(&conf("")).unwrap();
        assert_eq!((parsed.network.as_str(), parsed.mtu, parsed.routes.len()), ("blue", None, 0));
        for (extra, named) in [
            (r#", "agent_sockt": "/x""#, "agent_sockt"),
            (r#", "mtu": 20"#, "mtu"),
            (r#", "ipam": {"type": "host-local"}"#, "ipam.type"),
            (r#", "ipam": {"type": "overlay-cni", "routes": [{"dst": "10.1.0.0"}]}"#, "ipam.routes[0].dst"),
        ] {
            let error = PluginConf::parse(&conf(extra)).expect_err(extra);
            assert!(matches!(&error, Error::InvalidNetworkConfig(details) if details.starts_with(named)), "{extra}: expected code 7 naming {named}, got {error:?}");
        }
        let routes = PluginConf::parse(&conf(r#", "ipam": {"type": "overlay-cni", "routes": [{"dst": "10.20.0.0/16", "gw": "10.0.9.1"}]}"#)).unwrap().routes;
        assert_eq!(routes, vec![RouteConf { dst: "10.20.0.0/16".parse().unwrap(), gw: Some(Ipv4Addr::new(10, 0, 9, 1)) }]);
    }
}
