//! The file as written (serde), before any check.

use serde::Deserialize;



// The file as written. Addresses stay text until validation so that errors
// can quote them; unknown keys are rejected so a typo cannot silently fall
// back to a default.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) node: RawNode,
    #[serde(default)]
    pub(super) endpoints: Vec<RawLocalEndpoint>,
    #[serde(default)]
    pub(super) peers: Vec<RawPeer>,
    #[serde(default)]
    pub(super) vnis: Vec<RawVni>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVni {
    pub(super) vni: i64,
    pub(super) flood_limit: Option<i64>,
    pub(super) learning: Option<bool>,
    pub(super) ageing: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNode {
    pub(super) name: String,
    pub(super) underlay_interface: String,
    pub(super) vtep_address: String,
    pub(super) vxlan_port: Option<i64>,
    pub(super) ttl: Option<i64>,
    pub(super) source_port_range: Option<[i64; 2]>,
    pub(super) flood_limit: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLocalEndpoint {
    pub(super) interface: String,
    pub(super) mac: String,
    pub(super) ip: String,
    pub(super) ipv6: Option<String>,
    pub(super) vni: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPeer {
    pub(super) name: String,
    pub(super) vtep_address: String,
    #[serde(default)]
    pub(super) endpoints: Vec<RawRemoteEndpoint>,
    #[serde(default)]
    pub(super) vnis: Vec<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRemoteEndpoint {
    pub(super) mac: String,
    pub(super) ip: String,
    pub(super) ipv6: Option<String>,
    pub(super) vni: i64,
}
