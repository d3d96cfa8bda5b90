//! The messages of Docker's legacy (v1) remote plugin protocol, for the
//! calls this plugin implements: `Plugin.Activate`, the network driver's
//! (`NetworkDriver.*`) and the IPAM driver's (`IpamDriver.*`). Field names
//! are Docker's (libnetwork `drivers/remote/api` and `ipams/remote/api`);
//! unknown fields are ignored, since Docker adds some across versions.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The content type Docker sends and expects.
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1+json";

/// `--opt` values arrive under this key of CreateNetwork's options.
pub const GENERIC_OPTIONS: &str = "com.docker.network.generic";
/// The network's MTU, as `docker network create --opt com.docker.network.driver.mtu=N`.
pub const MTU_OPTION: &str = "com.docker.network.driver.mtu";
/// The VNI, as `--opt vni=N`.
pub const VNI_OPTION: &str = "vni";
/// The overlay network's name, as `--opt name=NAME` (Docker does not tell
/// a remote driver the name given to `docker network create`).
pub const NAME_OPTION: &str = "name";
/// RequestAddress's option that marks the gateway's request.
pub const REQUEST_ADDRESS_TYPE: &str = "RequestAddressType";
pub const GATEWAY_ADDRESS_TYPE: &str = "com.docker.network.gateway";

/// Why a NetworkID or EndpointID is refused, if it is. Docker's are 64 hex
/// digits; the plugin names veths (`dk` and 11 characters) and API
/// endpoints after them, so plain ASCII letters and digits only.
pub fn id_problem(id: &str) -> Option<&'static str> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Some("not a Docker id (1 to 64 ASCII letters and digits, as Docker's 64 hex digits)")
    } else {
        None
    }
}

/// Every failure: a sentence a person can act on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    #[serde(rename = "Err")]
    pub err: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct ActivateResponse {
    #[serde(rename = "Implements")]
    pub implements: Vec<&'static str>,
}

#[derive(Clone, Debug, Serialize)]
pub struct NetworkCapabilities {
    #[serde(rename = "Scope")]
    pub scope: &'static str,
    #[serde(rename = "ConnectivityScope")]
    pub connectivity_scope: &'static str,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct IpamData {
    #[serde(rename = "AddressSpace", default)]
    pub address_space: String,
    #[serde(rename = "Pool", default)]
    pub pool: String,
    #[serde(rename = "Gateway", default)]
    pub gateway: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct CreateNetworkRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "Options", default, deserialize_with = "null_as_default")]
    pub options: BTreeMap<String, Value>,
    #[serde(rename = "IPv4Data", default, deserialize_with = "null_as_default")]
    pub ipv4_data: Vec<IpamData>,
    #[serde(rename = "IPv6Data", default, deserialize_with = "null_as_default")]
    pub ipv6_data: Vec<IpamData>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct NetworkRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct EndpointInterface {
    #[serde(rename = "Address", default)]
    pub address: String,
    #[serde(rename = "AddressIPv6", default)]
    pub address_ipv6: String,
    #[serde(rename = "MacAddress", default)]
    pub mac_address: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct CreateEndpointRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "Interface", default)]
    pub interface: Option<EndpointInterface>,
}

/// What the driver adds to the endpoint's interface: only what Docker did
/// not give (a field Docker gave must not be changed).
#[derive(Clone, Debug, Default, Serialize)]
pub struct EndpointInterfaceResponse {
    #[serde(rename = "MacAddress", skip_serializing_if = "String::is_empty")]
    pub mac_address: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct CreateEndpointResponse {
    #[serde(rename = "Interface", skip_serializing_if = "Option::is_none")]
    pub interface: Option<EndpointInterfaceResponse>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct EndpointRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct JoinRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "SandboxKey", default)]
    pub sandbox_key: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct InterfaceName {
    #[serde(rename = "SrcName")]
    pub src_name: String,
    #[serde(rename = "DstPrefix")]
    pub dst_prefix: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct JoinResponse {
    #[serde(rename = "InterfaceName")]
    pub interface_name: InterfaceName,
    /// No default route through the overlay, and no `docker_gwbridge`
    /// (Docker creates that bridge for a network without a gateway unless told not to).
    #[serde(rename = "DisableGatewayService")]
    pub disable_gateway_service: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct EndpointOperInfoResponse {
    #[serde(rename = "Value")]
    pub value: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct IpamCapabilities {
    #[serde(rename = "RequiresMACAddress")]
    pub requires_mac_address: bool,
    #[serde(rename = "RequiresRequestReplay")]
    pub requires_request_replay: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct AddressSpaces {
    #[serde(rename = "LocalDefaultAddressSpace")]
    pub local: &'static str,
    #[serde(rename = "GlobalDefaultAddressSpace")]
    pub global: &'static str,
}

#[derive(Clone, Debug, Deserialize)]
pub struct RequestPoolRequest {
    #[serde(rename = "AddressSpace", default)]
    pub address_space: String,
    #[serde(rename = "Pool", default)]
    pub pool: String,
    #[serde(rename = "SubPool", default)]
    pub sub_pool: String,
    #[serde(rename = "Options", default, deserialize_with = "null_as_default")]
    pub options: BTreeMap<String, String>,
    #[serde(rename = "V6", default)]
    pub v6: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct RequestPoolResponse {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    #[serde(rename = "Pool")]
    pub pool: String,
    #[serde(rename = "Data")]
    pub data: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ReleasePoolRequest {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct RequestAddressRequest {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    #[serde(rename = "Address", default)]
    pub address: String,
    #[serde(rename = "Options", default, deserialize_with = "null_as_default")]
    pub options: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RequestAddressResponse {
    /// With its prefix length, e.g. `10.0.9.5/24`.
    #[serde(rename = "Address")]
    pub address: String,
    #[serde(rename = "Data")]
    pub data: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ReleaseAddressRequest {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    #[serde(rename = "Address")]
    pub address: String,
}

/// Docker sends `null` for an empty map or list (Go's nil).
fn null_as_default<'de, D: serde::Deserializer<'de>, T: Default + Deserialize<'de>>(deserializer: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// The empty answer of a call that succeeded with nothing to say.
#[derive(Clone, Debug, Serialize)]
pub struct Empty {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_maps_and_lists_are_empty() {
        let request: RequestAddressRequest = serde_json::from_str(r#"{"PoolID":"p","Address":"","Options":null}"#).unwrap();
        assert!(request.options.is_empty());
        let request: CreateNetworkRequest = serde_json::from_str(r#"{"NetworkID":"n","Options":null,"IPv4Data":null,"IPv6Data":null}"#).unwrap();
        assert!(request.ipv4_data.is_empty() && request.options.is_empty());
    }
}
