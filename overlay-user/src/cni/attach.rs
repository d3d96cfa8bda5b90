//! ADD and CHECK: a container's veth into its namespace, its address,
//! routes and MTU, and its endpoint at the agent; and the check that all of
//! it is still there.
use std::{
    net::{IpAddr, Ipv4Addr},
    os::fd::AsFd as _,
};

use futures_util::TryStreamExt as _;
use ipnet::{IpNet, Ipv4Net};
use netlink_packet_route::address::AddressAttribute;
use rscni_plugin::{
    error::Error,
    types::{Args, CNIResult, Interface, IpConfig, Route},
};
use rtnetlink::RouteMessageBuilder;

use super::{
    agent::Agent,
    check_failed, host_namespace, internal,
    conf::{Attachment, PluginConf, Requested, RouteConf},
    netns::Namespace,
};
use crate::{
    api::views::AllocationView,
    model::MacAddr,
    veth::{self, VethError, VethPair},
};

fn veth_error(error: VethError) -> Error {
    match error {
        // The runtime chose a name taken in the container, or ADD ran twice without DEL.
        VethError::Exists { .. } => Error::Custom(super::OUR_CODE, "interface exists".into(), error.to_string()),
        other => internal(other.to_string()),
    }
}

/// ADD: allocates the address, builds the veth, registers the endpoint;
/// on any failure undoes what it did, so a failed ADD leaves nothing.
pub fn add(args: &Args) -> Result<CNIResult, Error> {
    let conf = PluginConf::parse(args.config())?;
    let attachment = Attachment::of(args)?;
    let requested = Requested::of(args)?;
    let netns_path = attachment.netns.clone().ok_or_else(|| Error::missing_env(&["CNI_NETNS"]))?;
    let container = Namespace::open(&netns_path)?;
    let agent = Agent::new(&conf.agent_socket);
    let network = agent.network(&conf.network)?.ok_or_else(|| {
        Error::InvalidNetworkConfig(format!("network = {:?}: the agent at {} has no such network", conf.network, conf.agent_socket.display()))
    })?;
    let mtu = conf.mtu.or(network.mtu).ok_or_else(|| {
        Error::InvalidNetworkConfig(format!("mtu: network {} has no MTU at the agent; set mtu in the configuration", network.name))
    })?;
    let host = host_namespace(&conf, &agent)?;
    let mac = requested.mac.unwrap_or_else(random_mac);
    let allocation = agent.allocate(&conf.network, requested.ip, &attachment.address_owner())?;

    // Undo exactly what this invocation did: a repeated ADD that finds the
    // veth there must not take the first one's veth or endpoint with it.
    let (mut created, mut registered) = (false, false);
    let mut attach = || -> Result<MacAddr, Error> {
        let host_mac = create_veth(&host, &container, &attachment, mac, mtu)?;
        created = true;
        configure_container(&container, &attachment, &conf.routes, &allocation)?;
        let endpoint = agent.add_endpoint(&conf.network, &attachment.host_interface(), &mac.to_string(), allocation.address, &attachment.container_id)?;
        registered = true;
        if endpoint.state != "applied" {
            return Err(internal(format!("the agent holds endpoint {} as {}: {}", endpoint.id, endpoint.state, endpoint.reason)));
        }
        Ok(host_mac)
    };
    let host_mac = match attach() {
        Ok(host_mac) => host_mac,
        Err(error) => {
            // Best effort: the error that stopped ADD is the one to report.
            let name = attachment.host_interface();
            if registered {
                let _ = agent.remove_endpoint(&name);
            }
            if created {
                let _ = host.run(move |handle| async move { veth::delete_link(&handle, &name).await.map_err(veth_error) });
            }
            let _ = agent.release(&conf.network, allocation.address);
            return Err(error);
        }
    };

    let address = Ipv4Net::new(allocation.address, allocation.prefix_len).map_err(|error| internal(format!("the agent's prefix length: {error}")))?;
    Ok(CNIResult {
        interfaces: vec![
            Interface { name: attachment.host_interface(), mac: host_mac.to_string(), mtu: Some(mtu), sandbox: None, socket_path: None, pci_id: None },
            Interface {
                name: attachment.ifname.clone(),
                mac: mac.to_string(),
                mtu: Some(mtu),
                sandbox: Some(netns_path.display().to_string()),
                socket_path: None,
                pci_id: None,
            },
        ],
        ips: vec![IpConfig { interface: Some(1), address: IpNet::V4(address), gateway: None }],
        routes: conf
            .routes
            .iter()
            .map(|route| Route {
                dst: IpNet::V4(route.dst),
                gw: route.gw.map(IpAddr::V4),
                mtu: None,
                advmss: None,
                priority: None,
                table: None,
                scope: None,
            })
            .collect(),
        dns: None,
    })
}

/// The veth, its host end up in `host` and its other end (named as the
/// runtime asked, with the container's MAC) in `container`; returns the host
/// end's MAC.
fn create_veth(host: &Namespace, container: &Namespace, attachment: &Attachment, mac: MacAddr, mtu: u32) -> Result<MacAddr, Error> {
    let container_fd = container.file.try_clone().map_err(|error| internal(format!("duplicating {}: {error}", container.label)))?;
    let (host_name, ifname) = (attachment.host_interface(), attachment.ifname.clone());
    host.run(move |handle| async move {
        let pair = VethPair { host: &host_name, peer: &ifname, peer_netns: container_fd.as_fd(), peer_mac: mac.0, mtu };
        veth::create_pair(&handle, &pair).await.map_err(veth_error)?;
        let link = veth::link_by_name(&handle, &host_name).await.map_err(veth_error)?;
        let link = link.ok_or_else(|| internal(format!("{host_name} vanished after its creation")))?;
        veth::set_up(&handle, link.header.index, &host_name).await.map_err(veth_error)?;
        veth::link_mac(&link).map(MacAddr).ok_or_else(|| internal(format!("{host_name} has no MAC")))
    })
}

/// The container's end: its address, up, its routes, GRO on.
fn configure_container(container: &Namespace, attachment: &Attachment, routes: &[RouteConf], allocation: &AllocationView) -> Result<(), Error> {
    let (ifname, routes, address, prefix_len) = (attachment.ifname.clone(), routes.to_vec(), allocation.address, allocation.prefix_len);
    container.run(move |handle| async move {
        let link = veth::link_by_name(&handle, &ifname).await.map_err(veth_error)?;
        let index = link.ok_or_else(|| internal(format!("{ifname} is not in the container after its creation")))?.header.index;
        let failed = |what: String| move |error: rtnetlink::Error| internal(format!("{what}: {error}"));
        handle.address().add(index, IpAddr::V4(address), prefix_len).execute().await.map_err(failed(format!("adding {address}/{prefix_len} to {ifname}")))?;
        veth::set_up(&handle, index, &ifname).await.map_err(veth_error)?;
        for route in &routes {
            let mut message = RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(route.dst.addr(), route.dst.prefix_len()).output_interface(index);
            if let Some(gw) = route.gw {
                message = message.gateway(gw);
            }
            handle.route().add(message.build()).execute().await.map_err(failed(format!("adding the route to {}", route.dst)))?;
        }
        crate::netdev::set_gro(&ifname, true).map_err(|error| internal(format!("turning GRO on for {ifname}: {error}")))
    })
}

/// CHECK: the endpoint is at the agent and applied, both veth ends exist,
/// and the container's interface has the endpoint's MAC and address (and
/// the address of `prevResult`, when the runtime sends one).
pub fn check(args: &Args) -> Result<(), Error> {
    let conf = PluginConf::parse(args.config())?;
    let attachment = Attachment::of(args)?;
    let netns_path = attachment.netns.clone().ok_or_else(|| Error::missing_env(&["CNI_NETNS"]))?;
    let container = Namespace::open(&netns_path)?;
    let agent = Agent::new(&conf.agent_socket);
    let host_name = attachment.host_interface();
    let endpoint = agent
        .endpoints()?
        .into_iter()
        .find(|endpoint| endpoint.id == host_name)
        .ok_or_else(|| check_failed(format!("the agent has no endpoint {host_name} for container {}", attachment.container_id)))?;
    if endpoint.network != conf.network {
        return Err(check_failed(format!("endpoint {host_name} is in network {}, not {}", endpoint.network, conf.network)));
    }
    if endpoint.state != "applied" {
        return Err(check_failed(format!("endpoint {host_name} is {}: {}", endpoint.state, endpoint.reason)));
    }
    let ipv4 = endpoint.ipv4.ok_or_else(|| check_failed(format!("endpoint {host_name} has no IPv4 address")))?;
    if let Some(previous) = &args.config().prev_result {
        if !previous.ips.iter().any(|ip| ip.address.addr() == IpAddr::V4(ipv4)) {
            return Err(check_failed(format!("prevResult does not list {ipv4}, the address of endpoint {host_name}")));
        }
    }

    let host = host_namespace(&conf, &agent)?;
    let name = host_name.clone();
    host.run(move |handle| async move {
        match veth::link_by_name(&handle, &name).await.map_err(veth_error)? {
            Some(_) => Ok(()),
            None => Err(check_failed(format!("the host end {name} of the container's veth is gone"))),
        }
    })?;
    let (ifname, mac) = (attachment.ifname.clone(), endpoint.mac);
    container.run(move |handle| async move {
        let link = veth::link_by_name(&handle, &ifname).await.map_err(veth_error)?;
        let link = link.ok_or_else(|| check_failed(format!("interface {ifname} is gone from the container")))?;
        let found = veth::link_mac(&link).map(MacAddr);
        if found != Some(mac) {
            return Err(check_failed(format!("interface {ifname} has MAC {found:?}, the endpoint {mac}")));
        }
        let mut addresses = handle.address().get().set_link_index_filter(link.header.index).execute();
        while let Some(message) = addresses.try_next().await.map_err(|error| internal(format!("listing {ifname}'s addresses: {error}")))? {
            if message.attributes.iter().any(|attribute| matches!(attribute, AddressAttribute::Address(IpAddr::V4(a)) if *a == ipv4)) {
                return Ok(());
            }
        }
        Err(check_failed(format!("interface {ifname} does not have the endpoint's address {ipv4}")))
    })
}

/// A random locally administered unicast MAC.
fn random_mac() -> MacAddr {
    let mut bytes = [0u8; 6];
    if let Ok(mut random) = std::fs::File::open("/dev/urandom") {
        use std::io::Read as _;
        let _ = random.read_exact(&mut bytes);
    }
    bytes[0] = (bytes[0] & 0xfc) | 0x02;
    MacAddr(bytes)
}
