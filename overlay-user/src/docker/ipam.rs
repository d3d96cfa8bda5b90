//! The IPAM driver's calls. Pools are Docker's `--subnet` and
//! `--ip-range`; addresses come from the agent's allocator (the API's
//! node-local allocations, handed out from the network's range; in
//! cluster mode the registry's cluster-wide allocator), so a container
//! address is never handed out twice, whoever asks.
use std::{collections::BTreeMap, net::Ipv4Addr};

use axum::body::Bytes;

use super::{
    Failure, Plugin,
    driver::parse_address,
    parse,
    protocol::{self, Empty},
    store::Pool,
};
use crate::{agent::AddressError, model::Ipv4Net};


/// The address spaces this driver names (Docker requires two; they are the same here).
const LOCAL_SPACE: &str = "overlay-local";
const GLOBAL_SPACE: &str = "overlay-global";

pub(super) async fn capabilities(_: &Plugin, _: &Bytes) -> Result<protocol::IpamCapabilities, Failure> {
    Ok(protocol::IpamCapabilities { requires_mac_address: false, requires_request_replay: false })
}

pub(super) async fn address_spaces(_: &Plugin, _: &Bytes) -> Result<protocol::AddressSpaces, Failure> {
    Ok(protocol::AddressSpaces { local: LOCAL_SPACE, global: GLOBAL_SPACE })
}

pub(super) async fn request_pool(plugin: &Plugin, body: &Bytes) -> Result<protocol::RequestPoolResponse, Failure> {
    let request: protocol::RequestPoolRequest = parse("RequestPool", body)?;
    if request.v6 {
        return Err(Failure::bad("--ipv6: IPv6 pools are not supported by this IPAM driver yet; create the network without --ipv6"));
    }
    if request.pool.is_empty() {
        return Err(Failure::bad(
            "--subnet: this IPAM driver has no default pool; give the network a subnet (docker network create --subnet 10.0.9.0/24 ...)",
        ));
    }
    let pool: Ipv4Net = request
        .pool
        .parse()
        .map_err(|_| Failure::bad(format!("--subnet {:?}: not an IPv4 subnet (expected a form like 10.0.9.0/24)", request.pool)))?;
    if pool.trunc() != pool {
        return Err(Failure::bad(format!("--subnet {pool}: host bits are set (the subnet is {})", pool.trunc())));
    }
    if pool.prefix_len() > 30 {
        return Err(Failure::bad(format!("--subnet {pool}: too small to hold containers (at most /30)")));
    }
    let sub_pool = match request.sub_pool.as_str() {
        "" => None,
        text => {
            let range: Ipv4Net =
                text.parse().map_err(|_| Failure::bad(format!("--ip-range {text:?}: not an IPv4 range (expected a form like 10.0.9.64/26)")))?;
            if !pool.contains(&range) {
                return Err(Failure::bad(format!("--ip-range {range}: not inside --subnet {pool}")));
            }
            Some(range.trunc())
        }
    };
    if let Some((key, value)) = request.options.iter().next() {
        return Err(Failure::bad(format!("--ipam-opt {key}={value:?}: unknown option (this IPAM driver takes none)")));
    }
    let mut state = plugin.state.lock().await;
    let sequence = state.pools.values().map(|p| p.sequence + 1).max().unwrap_or(0);
    let mut random = [0u8; 4];
    if let Ok(mut urandom) = std::fs::File::open("/dev/urandom") {
        use std::io::Read as _;
        let _ = urandom.read_exact(&mut random);
    }
    // Unique, so two networks with one subnet (tenants) have pools of their own.
    let pool_id = format!("{pool}#{}", random.iter().map(|b| format!("{b:02x}")).collect::<String>());
    state.pools.insert(pool_id.clone(), Pool { pool, sub_pool, addresses: Default::default(), network_id: None, sequence });
    plugin.save(&state)?;
    log::info!("Docker IPAM: pool {pool_id} ({pool}{})", sub_pool.map_or(String::new(), |r| format!(", range {r}")));
    Ok(protocol::RequestPoolResponse { pool_id, pool: pool.to_string(), data: BTreeMap::new() })
}

pub(super) async fn release_pool(plugin: &Plugin, body: &Bytes) -> Result<Empty, Failure> {
    let request: protocol::ReleasePoolRequest = parse("ReleasePool", body)?;
    let mut state = plugin.state.lock().await;
    if state.pools.remove(&request.pool_id).is_some() {
        plugin.save(&state)?;
    }
    Ok(Empty {})
}

pub(super) async fn request_address(plugin: &Plugin, body: &Bytes) -> Result<protocol::RequestAddressResponse, Failure> {
    let request: protocol::RequestAddressRequest = parse("RequestAddress", body)?;
    let mut state = plugin.state.lock().await;
    let pool = state
        .pools
        .get(&request.pool_id)
        .cloned()
        .ok_or_else(|| Failure::not_found(format!("PoolID {:?}: no such pool (RequestPool first)", request.pool_id)))?;
    let requested = parse_address("--ip", &request.address)?;
    if let Some(address) = requested.filter(|a| !pool.pool.contains(a)) {
        return Err(Failure::bad(format!("--ip {address}: outside --subnet {}", pool.pool)));
    }
    let with_prefix = |address: Ipv4Addr| format!("{address}/{}", pool.pool.prefix_len());
    if request.options.get(protocol::REQUEST_ADDRESS_TYPE).map(String::as_str) == Some(protocol::GATEWAY_ADDRESS_TYPE) {
        // Not allocated: Join installs no gateway, so nothing uses it (module docs).
        let gateway = requested.unwrap_or_else(|| first_host(&pool.pool));
        return Ok(protocol::RequestAddressResponse { address: with_prefix(gateway), data: BTreeMap::new() });
    }
    let network = pool
        .network_id
        .as_ref()
        .and_then(|id| state.networks.get(id))
        .ok_or_else(|| {
            Failure::conflict(format!(
                "PoolID {:?}: its network was not created with this driver (use -d {} with --ipam-driver {})",
                request.pool_id, plugin.name, plugin.name
            ))
        })?
        .name
        .clone();
    let owner = match request.options.get("com.docker.network.endpoint.macaddress") {
        Some(mac) => format!("docker container with MAC {mac}"),
        None => "docker container".to_owned(),
    };
    let mut agent = plugin.agent.lock().await;
    let allocated = agent.allocate_address(&network, requested, &owner).await.map_err(|error| address_failure(&network, requested, error))?;
    drop(agent);
    let address = allocated.allocation.address;
    log::info!("Docker IPAM: {address} of network {network} to {owner}");
    if let Some(stored) = state.pools.get_mut(&request.pool_id) {
        stored.addresses.insert(address);
    }
    if let Err(failure) = plugin.save(&state) {
        let _ = plugin.agent.lock().await.release_address(&network, address).await;
        return Err(failure);
    }
    Ok(protocol::RequestAddressResponse { address: with_prefix(allocated.allocation.address), data: BTreeMap::new() })
}

pub(super) async fn release_address(plugin: &Plugin, body: &Bytes) -> Result<Empty, Failure> {
    let request: protocol::ReleaseAddressRequest = parse("ReleaseAddress", body)?;
    let mut state = plugin.state.lock().await;
    let Some(address) = parse_address("Address", &request.address)? else { return Ok(Empty {}) };
    let Some(pool) = state.pools.get(&request.pool_id) else { return Ok(Empty {}) };
    // Only what this pool handed out: not the gateway's (never allocated),
    // which may be a container's address too.
    if !pool.addresses.contains(&address) {
        return Ok(Empty {});
    }
    let Some(network) = pool.network_id.as_ref().and_then(|id| state.networks.get(id)) else { return Ok(Empty {}) };
    let name = network.name.clone();
    match plugin.agent.lock().await.release_address(&name, address).await {
        Ok(()) => log::info!("Docker IPAM: released {address} of network {name}"),
        // Released already (idempotent), or the network went first.
        Err(AddressError::NotAllocated { .. } | AddressError::UnknownNetwork(_)) => {}
        Err(error) => return Err(Failure::internal(format!("releasing {address} of network {name}: {error}"))),
    }
    if let Some(pool) = state.pools.get_mut(&request.pool_id) {
        pool.addresses.remove(&address);
    }
    plugin.save(&state)?;
    Ok(Empty {})
}

/// The subnet's first host address, which Docker shows as the gateway.
fn first_host(pool: &Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(pool.network()).wrapping_add(1))
}

/// An allocation refused: a taken `--ip` names its holder (the allocator's message does).
fn address_failure(network: &str, requested: Option<Ipv4Addr>, error: AddressError) -> Failure {
    let what = match requested {
        Some(address) => format!("--ip {address} in network {network}"),
        None => format!("an address in network {network}"),
    };
    let message = format!("{what}: {error}");
    match error {
        AddressError::Allocation(_) => Failure::conflict(message),
        AddressError::UnknownNetwork(_) | AddressError::NoSubnet(_) => Failure::not_found(message),
        AddressError::Change(_) | AddressError::NotAllocated { .. } => Failure::internal(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_is_the_first_host_address() {
        assert_eq!(first_host(&"10.0.9.0/24".parse().unwrap()), Ipv4Addr::new(10, 0, 9, 1));
    }
}
