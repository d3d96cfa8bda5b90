//! The network driver's calls: networks, endpoints, Join and Leave.
use std::{collections::BTreeMap, net::Ipv4Addr};

use axum::body::Bytes;
use serde_json::Value;

use super::{
    Failure, Plugin, derived_vni, parse,
    protocol::{self, Empty},
    store::{DockerEndpoint, DockerNetwork, DockerState},
};
use crate::{
    agent::{AgentState, ChangeError},
    model::{Ipv4Net, MacAddr, Owner, OwnerKind},
    sources::api_store::{ApiEndpoint, ApiNetwork},
    veth,
};

pub(super) async fn capabilities(_: &Plugin, _: &Bytes) -> Result<protocol::NetworkCapabilities, Failure> {
    Ok(protocol::NetworkCapabilities { scope: "local", connectivity_scope: "global" })
}

/// Answers a call that needs nothing of this driver (external
/// connectivity is the host's business; discovery is the registry's).
pub(super) async fn nothing_to_do(_: &Plugin, _: &Bytes) -> Result<Empty, Failure> {
    Ok(Empty {})
}

/// A change of the agent refused: why, in Docker's terms.
fn change_failure(what: &str, error: ChangeError) -> Failure {
    let message = format!("{what}: {error}");
    match error {
        ChangeError::Refused(_) | ChangeError::Conflict(_) => Failure::conflict(message),
        ChangeError::NotFound(_) => Failure::not_found(message),
        _ => Failure::internal(message),
    }
}

/// The `--opt` values of CreateNetwork that this driver understands.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct NetworkOptions {
    name: Option<String>,
    vni: Option<u32>,
    mtu: Option<u32>,
}

pub(super) fn network_options(options: &BTreeMap<String, Value>) -> Result<NetworkOptions, Failure> {
    let mut parsed = NetworkOptions::default();
    let Some(generic) = options.get(protocol::GENERIC_OPTIONS) else { return Ok(parsed) };
    let Some(generic) = generic.as_object() else { return Ok(parsed) };
    for (key, value) in generic {
        let text = match value {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        match key.as_str() {
            protocol::VNI_OPTION => {
                let vni = text.parse::<u32>().ok().filter(|v| (1..=overlay_common::VNI_MAX).contains(v));
                parsed.vni = Some(vni.ok_or_else(|| {
                    Failure::bad(format!("--opt vni={text:?}: not a VNI (a whole number from 1 to {})", overlay_common::VNI_MAX))
                })?);
            }
            protocol::MTU_OPTION => {
                let mtu = text.parse::<u32>().ok().filter(|m| (MIN_MTU..=MAX_MTU).contains(m));
                parsed.mtu = Some(mtu.ok_or_else(|| {
                    Failure::bad(format!("--opt {}={text:?}: not an MTU (a whole number from {MIN_MTU} to {MAX_MTU})", protocol::MTU_OPTION))
                })?);
            }
            protocol::NAME_OPTION => {
                if let Some(problem) = crate::model::validate::name_problem(&text) {
                    return Err(Failure::bad(format!("--opt name={text:?}: a network name {problem}")));
                }
                parsed.name = Some(text);
            }
            other => {
                return Err(Failure::bad(format!(
                    "--opt {other}={text:?}: unknown option (this driver takes vni, name and {})",
                    protocol::MTU_OPTION
                )));
            }
        }
    }
    Ok(parsed)
}

/// IPv4's minimum (RFC 791) and the largest a veth takes.
const MIN_MTU: u32 = 68;
const MAX_MTU: u32 = 65535;

pub(super) async fn create_network(plugin: &Plugin, body: &Bytes) -> Result<Empty, Failure> {
    let request: protocol::CreateNetworkRequest = parse("CreateNetwork", body)?;
    check_id("NetworkID", &request.network_id)?;
    if request.ipv6_data.iter().any(|data| !data.pool.is_empty()) {
        return Err(Failure::bad("--ipv6: IPv6 subnets are not supported by this driver yet; create the network without --ipv6"));
    }
    let [data] = request.ipv4_data.as_slice() else {
        return Err(Failure::bad(format!(
            "--subnet: this driver needs exactly one IPv4 subnet, got {}",
            request.ipv4_data.len()
        )));
    };
    let subnet: Ipv4Net = data
        .pool
        .parse()
        .map_err(|_| Failure::bad(format!("--subnet {:?}: not an IPv4 subnet (expected a form like 10.0.9.0/24)", data.pool)))?;
    let options = network_options(&request.options)?;
    let vni = options.vni.unwrap_or_else(|| match &options.name {
        Some(name) => derived_vni(&format!("name:{name}")),
        None => derived_vni(&format!("subnet:{subnet}")),
    });
    let name = options.name.clone().unwrap_or_else(|| format!("docker-{vni}"));

    let mut state = plugin.state.lock().await;
    if let Some((id, _)) = state.networks.iter().find(|(id, n)| n.name == name && **id != request.network_id) {
        return Err(Failure::conflict(format!(
            "overlay network {name} (VNI {vni}) is already Docker network {} on this host: give this one another --opt name or --opt vni",
            short(id)
        )));
    }
    let pool_id = bind_pool(&mut state, &subnet, &request.network_id);
    let mut agent = plugin.agent.lock().await;
    let existing = agent.model().networks.into_iter().find(|n| n.name == name);
    let created_here = match existing {
        Some(network) if network.vni == vni && network.subnet == Some(subnet) => {
            log::info!("Docker network {} is overlay network {name} (VNI {vni}), which exists ({} {})", short(&request.network_id), network.origin.source, network.origin.key);
            false
        }
        Some(network) => {
            return Err(Failure::conflict(format!(
                "overlay network {name} exists with VNI {} and subnet {} ({} {}), not VNI {vni} and subnet {subnet}: use the same --subnet and --opt vni on every host, or another --opt name",
                network.vni,
                network.subnet.map_or("none".into(), |s| s.to_string()),
                network.origin.source,
                network.origin.key
            )));
        }
        None => {
            let ip_range = pool_id.as_ref().and_then(|id| state.pools.get(id)).and_then(|pool| pool.sub_pool);
            let mut network_options = BTreeMap::new();
            network_options.insert("docker.driver".to_owned(), plugin.name.to_string());
            let network = ApiNetwork {
                name: name.clone(),
                vni,
                subnet: Some(subnet),
                subnet6: None,
                mtu: options.mtu,
                flood_limit: None,
                options: network_options,
                ip_range,
            };
            agent.add_network(network).await.map_err(|error| change_failure(&format!("creating overlay network {name} (VNI {vni})"), error))?;
            log::info!("Docker network {} created overlay network {name} (VNI {vni}, subnet {subnet})", short(&request.network_id));
            true
        }
    };
    let registry = registry_of(&agent);
    drop(agent);
    if let Some((registry, node)) = registry {
        // Docker networks are per host: etcd keeps which hosts use the overlay network (see delete_network).
        registry.use_network(&name, &node).await.map_err(|error| {
            Failure::internal(format!("recording in etcd that {node} uses overlay network {name}: {error}"))
        })?;
    }
    state.networks.insert(request.network_id.clone(), DockerNetwork { name, vni, subnet, pool_id, created_here });
    plugin.save(&state)?;
    let _ = plugin.changed.try_send(());
    Ok(Empty {})
}

/// Binds the latest pool of `subnet` that serves no network yet to
/// `network_id` (Docker asks for the pool just before CreateNetwork, which
/// names the subnet but not the pool).
fn bind_pool(state: &mut DockerState, subnet: &Ipv4Net, network_id: &str) -> Option<String> {
    if let Some((id, _)) = state.pools.iter().find(|(_, p)| p.network_id.as_deref() == Some(network_id)) {
        return Some(id.clone());
    }
    let (id, pool) = state.pools.iter_mut().filter(|(_, p)| p.pool == *subnet && p.network_id.is_none()).max_by_key(|(_, p)| p.sequence)?;
    pool.network_id = Some(network_id.to_owned());
    Some(id.clone())
}

pub(super) async fn delete_network(plugin: &Plugin, body: &Bytes) -> Result<Empty, Failure> {
    let request: protocol::NetworkRequest = parse("DeleteNetwork", body)?;
    check_id("NetworkID", &request.network_id)?;
    let mut state = plugin.state.lock().await;
    let Some(network) = state.networks.get(&request.network_id).cloned() else {
        log::info!("Docker network {} deleted: not one of this driver's, nothing to do", short(&request.network_id));
        return Ok(Empty {});
    };
    let mut agent = plugin.agent.lock().await;
    // Only a network this host created through the API goes; one in the
    // registry serves the other hosts too and stays.
    if network.created_here && agent.api.network(&network.name).is_some() {
        match agent.remove_network(&network.name).await {
            Ok(_) | Err(ChangeError::NotFound(_)) => log::info!("removed overlay network {} with its Docker network", network.name),
            Err(error) => return Err(change_failure(&format!("removing overlay network {}", network.name), error)),
        }
    }
    let registry = registry_of(&agent);
    drop(agent);
    // In cluster mode the network's record goes only with its last user:
    // other hosts may still have their Docker network of it (see README).
    let others = state.networks.iter().any(|(id, other)| *id != request.network_id && other.name == network.name);
    if let Some((registry, node)) = registry.filter(|_| !others) {
        match registry.release_network(&network.name, &node).await {
            Ok(true) => log::info!("removed overlay network {} from etcd: {node} was its last user", network.name),
            Ok(false) => log::info!("overlay network {} stays in etcd: other hosts use it, or endpoints of it remain", network.name),
            Err(error) => log::warn!("overlay network {} stays in etcd: releasing it failed: {error}", network.name),
        }
    }
    state.networks.remove(&request.network_id);
    for pool in state.pools.values_mut().filter(|p| p.network_id.as_deref() == Some(request.network_id.as_str())) {
        pool.network_id = None;
    }
    plugin.save(&state)?;
    let _ = plugin.changed.try_send(());
    Ok(Empty {})
}

pub(super) async fn create_endpoint(plugin: &Plugin, body: &Bytes) -> Result<protocol::CreateEndpointResponse, Failure> {
    let request: protocol::CreateEndpointRequest = parse("CreateEndpoint", body)?;
    check_id("NetworkID", &request.network_id)?;
    check_id("EndpointID", &request.endpoint_id)?;
    let mut state = plugin.state.lock().await;
    let network = known_network(&state, &request.network_id)?;
    let interface = request.interface.unwrap_or_default();
    if !interface.address_ipv6.is_empty() {
        return Err(Failure::bad(format!("Interface.AddressIPv6 {:?}: IPv6 is not supported by this driver yet", interface.address_ipv6)));
    }
    let ipv4 = parse_address("Interface.Address", &interface.address)?
        .ok_or_else(|| Failure::bad("Interface.Address: empty; this driver needs an IPv4 address (give the network a --subnet)"))?;
    if !network.subnet.contains(&ipv4) {
        return Err(Failure::bad(format!("Interface.Address {ipv4}: outside network {}'s subnet {}", network.name, network.subnet)));
    }
    let (mac, response) = if interface.mac_address.is_empty() {
        let mac = MacAddr::random_with_prefix(&[0x02]);
        (mac, Some(protocol::EndpointInterfaceResponse { mac_address: mac.to_string() }))
    } else {
        let mac: MacAddr = interface
            .mac_address
            .parse()
            .map_err(|_| Failure::bad(format!("Interface.MacAddress {:?}: not a MAC address", interface.mac_address)))?;
        if let Some(problem) = mac.endpoint_problem() {
            return Err(Failure::bad(format!("Interface.MacAddress {mac}: {problem}")));
        }
        (mac, None)
    };
    state.endpoints.insert(request.endpoint_id.clone(), DockerEndpoint { network_id: request.network_id, mac, ipv4, joined: false });
    plugin.save(&state)?;
    log::info!("Docker endpoint {} in {}: MAC {mac}, {ipv4}", short(&request.endpoint_id), network.name);
    Ok(protocol::CreateEndpointResponse { interface: response })
}

pub(super) async fn endpoint_oper_info(plugin: &Plugin, body: &Bytes) -> Result<protocol::EndpointOperInfoResponse, Failure> {
    let request: protocol::EndpointRequest = parse("EndpointOperInfo", body)?;
    check_id("NetworkID", &request.network_id)?;
    check_id("EndpointID", &request.endpoint_id)?;
    let state = plugin.state.lock().await;
    let mut value = BTreeMap::new();
    if let Some(endpoint) = state.endpoints.get(&request.endpoint_id) {
        value.insert("interface".to_owned(), host_interface(&request.endpoint_id));
        value.insert("mac".to_owned(), endpoint.mac.to_string());
    }
    Ok(protocol::EndpointOperInfoResponse { value })
}

pub(super) async fn join(plugin: &Plugin, body: &Bytes) -> Result<protocol::JoinResponse, Failure> {
    let request: protocol::JoinRequest = parse("Join", body)?;
    check_id("NetworkID", &request.network_id)?;
    check_id("EndpointID", &request.endpoint_id)?;
    let mut state = plugin.state.lock().await;
    let network = known_network(&state, &request.network_id)?;
    let endpoint = state
        .endpoints
        .get(&request.endpoint_id)
        .cloned()
        .ok_or_else(|| Failure::not_found(format!("EndpointID {:?}: no such endpoint (CreateEndpoint first)", request.endpoint_id)))?;
    let mut agent = plugin.agent.lock().await;
    let pair = JoinPair {
        host: host_interface(&request.endpoint_id),
        container: container_interface(&request.endpoint_id),
        mtu: network_mtu(&agent, &network.name),
        container_mac: endpoint.mac,
    };
    veth::create_local_pair(&pair.host, &pair.container, pair.container_mac.0, pair.mtu).await.map_err(|error| Failure::internal(format!("Join of endpoint {}: {error}", short(&request.endpoint_id))))?;
    let id = api_endpoint_id(&request.endpoint_id);
    if agent.api.endpoint(&id).is_some() {
        // A repeated Join (after a failed one): start from scratch.
        let _ = agent.remove_endpoint(&id).await;
    }
    let api_endpoint = ApiEndpoint {
        id: id.clone(),
        network: network.name.clone(),
        interface: pair.host.clone(),
        mac: endpoint.mac,
        ipv4: Some(endpoint.ipv4),
        ipv6: None,
        owner: Owner { kind: OwnerKind::Docker, container_id: Some(request.endpoint_id.clone()) },
    };
    if let Err(error) = agent.add_endpoint(api_endpoint).await {
        let _ = veth::delete_local_link(&pair.host).await;
        return Err(change_failure(&format!("Join of endpoint {} ({}, MAC {})", short(&request.endpoint_id), endpoint.ipv4, endpoint.mac), error));
    }
    drop(agent);
    if let Some(stored) = state.endpoints.get_mut(&request.endpoint_id) {
        stored.joined = true;
    }
    plugin.save(&state)?;
    let _ = plugin.changed.try_send(());
    log::info!("Docker endpoint {} joined {} on {} (sandbox {})", short(&request.endpoint_id), network.name, pair.host, request.sandbox_key);
    Ok(protocol::JoinResponse {
        interface_name: protocol::InterfaceName { src_name: pair.container, dst_prefix: "eth".into() },
        disable_gateway_service: true,
    })
}

pub(super) async fn leave(plugin: &Plugin, body: &Bytes) -> Result<Empty, Failure> {
    let request: protocol::EndpointRequest = parse("Leave", body)?;
    check_id("NetworkID", &request.network_id)?;
    check_id("EndpointID", &request.endpoint_id)?;
    let mut state = plugin.state.lock().await;
    withdraw(plugin, &request.endpoint_id).await?;
    if let Some(stored) = state.endpoints.get_mut(&request.endpoint_id) {
        stored.joined = false;
    }
    plugin.save(&state)?;
    let _ = plugin.changed.try_send(());
    Ok(Empty {})
}

pub(super) async fn delete_endpoint(plugin: &Plugin, body: &Bytes) -> Result<Empty, Failure> {
    let request: protocol::EndpointRequest = parse("DeleteEndpoint", body)?;
    check_id("NetworkID", &request.network_id)?;
    check_id("EndpointID", &request.endpoint_id)?;
    let mut state = plugin.state.lock().await;
    withdraw(plugin, &request.endpoint_id).await?;
    state.endpoints.remove(&request.endpoint_id);
    plugin.save(&state)?;
    let _ = plugin.changed.try_send(());
    Ok(Empty {})
}

/// Takes the endpoint out of the datapath (and the registry) and deletes
/// its veth. Whatever is already gone is not an error.
async fn withdraw(plugin: &Plugin, endpoint_id: &str) -> Result<(), Failure> {
    let id = api_endpoint_id(endpoint_id);
    let mut agent = plugin.agent.lock().await;
    match agent.remove_endpoint(&id).await {
        Ok(outcome) => log::info!("Docker endpoint {} withdrawn: {}", short(endpoint_id), outcome.maps),
        Err(ChangeError::NotFound(_)) => {}
        Err(error) => return Err(change_failure(&format!("withdrawing endpoint {}", short(endpoint_id)), error)),
    }
    drop(agent);
    veth::delete_local_link(&host_interface(endpoint_id))
        .await
        .map_err(|error| Failure::internal(format!("deleting the veth of endpoint {}: {error}", short(endpoint_id))))?;
    Ok(())
}

/// Refuses an id that is not Docker's kind (found by fuzzing: the plugin
/// names veths and API endpoints after an id's first characters, and cut a
/// multi-byte character in two, a panic; `/` or spaces made a veth name the
/// kernel refuses, after CreateEndpoint had kept the endpoint).
fn check_id(field: &str, id: &str) -> Result<(), Failure> {
    match protocol::id_problem(id) {
        Some(problem) => Err(Failure::bad(format!("{field} {id:?}: {problem}"))),
        None => Ok(()),
    }
}

/// Deletes the host ends (`dk` and 11 hex digits) of veths this plugin made for
/// endpoints it no longer knows (an agent killed between creating a pair
/// and saving its state, or a state file removed): at agent start, with the
/// plugin's state locked so no Join runs meanwhile. Deleting one end of a
/// veth deletes its peer, wherever it is.
pub(super) async fn collect_orphan_veths(state: &DockerState) {
    let known: std::collections::BTreeSet<String> = state.endpoints.keys().map(|id| host_interface(id)).collect();
    let links = veth::with_handle(|handle| async move { veth::veth_names_with_prefix(&handle, HOST_INTERFACE_PREFIX).await }).await;
    let links = match links {
        Ok(links) => links,
        Err(error) => return log::warn!("Docker plugin: listing links to find orphan veths: {error}"),
    };
    // Only names this plugin makes: dk and 11 hex digits of a Docker id.
    let ours = |name: &String| name.len() == HOST_INTERFACE_PREFIX.len() + 11 && name[HOST_INTERFACE_PREFIX.len()..].chars().all(|c| c.is_ascii_hexdigit());
    for orphan in links.into_iter().filter(|name| ours(name) && !known.contains(name)) {
        match veth::delete_local_link(&orphan).await {
            Ok(_) => log::info!("Docker plugin: deleted veth {orphan}, whose endpoint this plugin no longer knows"),
            Err(error) => log::warn!("Docker plugin: deleting orphan veth {orphan}: {error}"),
        }
    }
}

/// The registry client and this node's name, in cluster mode.
fn registry_of(agent: &AgentState) -> Option<(crate::registry::Registry, String)> {
    agent.cluster.as_ref().map(|cluster| (cluster.registry.clone(), agent.config.node.name.clone()))
}

fn known_network(state: &DockerState, network_id: &str) -> Result<DockerNetwork, Failure> {
    state.networks.get(network_id).cloned().ok_or_else(|| {
        Failure::not_found(format!("NetworkID {network_id:?}: not a network of this driver (created before this agent kept state, or removed)"))
    })
}

/// `10.0.9.5/24` (Docker's form) or a bare address; empty is none.
pub(super) fn parse_address(field: &str, text: &str) -> Result<Option<Ipv4Addr>, Failure> {
    if text.is_empty() {
        return Ok(None);
    }
    let address = text.split_once('/').map_or(text, |(address, _)| address);
    address.parse().map(Some).map_err(|_| Failure::bad(format!("{field} {text:?}: not an IPv4 address")))
}

/// The MTU of the network's veths: the network's, else the underlay's less
/// the 50 bytes of VXLAN over IPv4.
fn network_mtu(agent: &AgentState, network: &str) -> u32 {
    crate::api::views::networks(agent).into_iter().find(|n| n.name == network).and_then(|n| n.mtu).unwrap_or(1450)
}

/// The endpoint's id in the API's state.
fn api_endpoint_id(endpoint_id: &str) -> String {
    format!("docker-{}", short(endpoint_id))
}

/// What the host end of every endpoint's veth is named by.
const HOST_INTERFACE_PREFIX: &str = "dk";

/// The host end of the endpoint's veth (15 characters at most).
fn host_interface(endpoint_id: &str) -> String {
    format!("{HOST_INTERFACE_PREFIX}{}", first_chars(endpoint_id, 11))
}

/// The container end, until Docker renames it `eth<N>` inside the container.
fn container_interface(endpoint_id: &str) -> String {
    format!("dc{}", first_chars(endpoint_id, 11))
}

/// Docker's ids are 64 hex digits; 12 name one, as `docker ps` shows them.
fn short(id: &str) -> &str {
    first_chars(id, 12)
}

/// The first `count` characters of `text` (whole characters: ids reach the
/// logs before they are checked).
fn first_chars(text: &str, count: usize) -> &str {
    &text[..text.char_indices().nth(count).map_or(text.len(), |(at, _)| at)]
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn options(generic: Value) -> BTreeMap<String, Value> {
        serde_json::from_value(json!({"com.docker.network.enable_ipv6": false, "com.docker.network.generic": generic})).unwrap()
    }

    #[test]
    fn network_options_are_parsed_and_bad_ones_named() {
        let parsed = network_options(&options(json!({"vni": "42", "com.docker.network.driver.mtu": "1400", "name": "blue"}))).unwrap();
        assert_eq!(parsed, NetworkOptions { name: Some("blue".into()), vni: Some(42), mtu: Some(1400) });
        for (generic, named) in [
            (json!({"vni": "0"}), "--opt vni=\"0\""),
            (json!({"vni": "16777216"}), "--opt vni=\"16777216\""),
            (json!({"com.docker.network.driver.mtu": "20"}), "com.docker.network.driver.mtu=\"20\""),
            (json!({"name": "a b"}), "--opt name=\"a b\""),
            (json!({"colour": "red"}), "--opt colour=\"red\": unknown option"),
        ] {
            let failure = network_options(&options(generic.clone())).expect_err(&format!("{generic} should be refused"));
            assert!(failure.message.contains(named), "expected the refusal of {generic} to name {named:?}, got {:?}", failure.message);
        }
    }

    #[test]
    fn interface_names_fit_the_kernel_limit() {
        let id = "3f2a9c1d4b5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";
        assert_eq!(host_interface(id), "dk3f2a9c1d4b5");
        assert_eq!(container_interface(id), "dc3f2a9c1d4b5");
        assert!(host_interface(id).len() <= 15);
        assert_eq!(api_endpoint_id(id), "docker-3f2a9c1d4b5e");
    }

    #[test]
    fn addresses_come_with_or_without_a_prefix() {
        assert_eq!(parse_address("Address", "10.0.9.5/24").unwrap(), Some(Ipv4Addr::new(10, 0, 9, 5)));
        assert_eq!(parse_address("Address", "10.0.9.5").unwrap(), Some(Ipv4Addr::new(10, 0, 9, 5)));
        assert_eq!(parse_address("Address", "").unwrap(), None);
        assert!(parse_address("Address", "10.0.9/24").unwrap_err().message.contains("Address \"10.0.9/24\""));
    }
}

/// The veth of an endpoint that joins: the host end is the endpoint's
/// port, Docker moves the container end into the sandbox.
struct JoinPair {
    host: String,
    container: String,
    mtu: u32,
    container_mac: crate::model::MacAddr,
}
