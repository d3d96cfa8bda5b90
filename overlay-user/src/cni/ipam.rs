//! overlay-cni as another plugin's IPAM (`"ipam": {"type": "overlay-cni",
//! "agent_socket": ..., "network": ...}` in, say, a macvlan or bridge
//! configuration): the main plugin runs it with the same variables and
//! stdin, and it answers with addresses from the agent's allocator only,
//! building nothing. Its allocations carry the owner
//! `cni-ipam:<container id>:<ifname>`, so GC in either role leaves the
//! other's alone.
use std::{collections::HashSet, net::IpAddr, path::PathBuf};

use ipnet::{IpNet, Ipv4Net};
use rscni_plugin::{
    error::Error,
    types::{Args, CNIResult, IpConfig, NetConf, Route},
};

use super::{
    agent::Agent,
    check_failed, internal,
    conf::{Attachment, PLUGIN_TYPE, Requested, RouteConf, invalid, parse_routes},
};

/// The keys of `ipam` in this role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpamConf {
    pub network: String,
    pub agent_socket: PathBuf,
    pub routes: Vec<RouteConf>,
}

impl IpamConf {
    /// `Some` when this invocation is as another plugin's IPAM: the
    /// configuration's `type` is another plugin's and its `ipam.type` ours.
    pub fn delegated(conf: &NetConf) -> Result<Option<IpamConf>, Error> {
        let Some(ipam) = conf.ipam.as_ref().filter(|ipam| ipam.r#type == PLUGIN_TYPE && conf.r#type != PLUGIN_TYPE) else { return Ok(None) };
        let (mut agent_socket, mut network, mut routes) = (None, conf.name.clone(), Vec::new());
        for (key, value) in &ipam.custom {
            let text = || value.as_str().filter(|text| !text.is_empty()).map(str::to_owned).ok_or_else(|| invalid(&format!("ipam.{key}"), value, "must be a non-empty string"));
            match key.as_str() {
                "agent_socket" => agent_socket = Some(PathBuf::from(text()?)),
                "network" => network = text()?,
                "routes" => routes = parse_routes(value)?,
                _ => return Err(invalid(&format!("ipam.{key}"), value, "unknown key (overlay-cni as IPAM reads agent_socket, network, routes)")),
            }
        }
        let agent_socket = agent_socket.ok_or_else(|| Error::InvalidNetworkConfig("ipam.agent_socket is required: the path of the agent's API socket".into()))?;
        Ok(Some(IpamConf { network, agent_socket, routes }))
    }
}

fn owner(container_id: &str, ifname: &str) -> String {
    format!("cni-ipam:{container_id}:{ifname}")
}

/// ADD: one address (the requested one, or the agent's choice) and the routes.
pub fn add(conf: &IpamConf, args: &Args) -> Result<CNIResult, Error> {
    let attachment = Attachment::of(args)?;
    let requested = Requested::of(args)?;
    let allocation = Agent::new(&conf.agent_socket).allocate(&conf.network, requested.ip, &owner(&attachment.container_id, &attachment.ifname))?;
    let address = Ipv4Net::new(allocation.address, allocation.prefix_len).map_err(|error| internal(format!("the agent's prefix length: {error}")))?;
    Ok(CNIResult {
        interfaces: Vec::new(),
        ips: vec![IpConfig { interface: None, address: IpNet::V4(address), gateway: None }],
        routes: conf
            .routes
            .iter()
            .map(|route| Route { dst: IpNet::V4(route.dst), gw: route.gw.map(IpAddr::V4), mtu: None, advmss: None, priority: None, table: None, scope: None })
            .collect(),
        dns: None,
    })
}

/// DEL: the attachment's addresses back (none left is success).
pub fn del(conf: &IpamConf, args: &Args) -> Result<(), Error> {
    let attachment = Attachment::of(args)?;
    let agent = Agent::new(&conf.agent_socket);
    let owner = owner(&attachment.container_id, &attachment.ifname);
    for row in agent.allocations(&conf.network)?.into_iter().filter(|row| row.owner == owner) {
        agent.release(&conf.network, row.address)?;
    }
    Ok(())
}

/// CHECK: the agent still holds an address for the attachment.
pub fn check(conf: &IpamConf, args: &Args) -> Result<(), Error> {
    let attachment = Attachment::of(args)?;
    let owner = owner(&attachment.container_id, &attachment.ifname);
    if Agent::new(&conf.agent_socket).allocations(&conf.network)?.iter().any(|row| row.owner == owner) {
        Ok(())
    } else {
        Err(check_failed(format!("the agent holds no address of network {} for {owner}", conf.network)))
    }
}

/// GC: addresses of this role whose attachment is not listed go back.
pub fn gc(conf: &IpamConf, args: &Args) -> Result<(), Error> {
    let agent = Agent::new(&conf.agent_socket);
    let valid: HashSet<String> = args.config().valid_attachments.iter().flatten().map(|a| owner(&a.container_id, &a.ifname)).collect();
    let mut first_error = None;
    for row in agent.allocations(&conf.network)? {
        if row.owner.starts_with("cni-ipam:") && !valid.contains(&row.owner) {
            if let Err(error) = agent.release(&conf.network, row.address) {
                first_error.get_or_insert(error);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ipam_role_is_recognised_and_its_keys_checked() {
        let conf = |text: &str| -> NetConf { serde_json::from_str(text).unwrap() };
        let main = conf(r#"{"cniVersion": "1.0.0", "name": "blue", "type": "overlay-cni", "agent_socket": "/s"}"#);
        assert_eq!(IpamConf::delegated(&main).unwrap(), None, "overlay-cni's own configuration is not the IPAM role");
        let delegated = conf(r#"{"cniVersion": "1.0.0", "name": "b", "type": "macvlan", "ipam": {"type": "overlay-cni", "agent_socket": "/s", "network": "blue"}}"#);
        assert_eq!(IpamConf::delegated(&delegated).unwrap(), Some(IpamConf { network: "blue".into(), agent_socket: "/s".into(), routes: Vec::new() }));
        let misspelt = conf(r#"{"cniVersion": "1.0.0", "name": "b", "type": "macvlan", "ipam": {"type": "overlay-cni", "agent_sock": "/s"}}"#);
        let error = IpamConf::delegated(&misspelt).unwrap_err();
        assert!(matches!(&error, Error::InvalidNetworkConfig(details) if details.starts_with("ipam.agent_sock")), "{error:?}");
    }
}
