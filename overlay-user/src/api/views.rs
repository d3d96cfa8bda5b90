//! What the API answers: the model's items with their source and state.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use serde::{Deserialize, Serialize};

use crate::{
    agent::AgentState,
    model::{Ipv4Net, Ipv6Net, MacAddr, Origin, Owner, SourceKind},
    reconciler::EndpointState,
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkView {
    pub name: String,
    pub vni: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<Ipv4Net>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<Ipv6Net>,
    /// The MTU containers should use: the network's, else the underlay's less 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    pub flood_limit: u32,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    pub source: SourceKind,
    /// The source's name for it (the file's TOML path, or `network NAME`).
    pub key: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointView {
    /// The API's id, or the file's TOML path.
    pub id: String,
    pub source: SourceKind,
    pub network: String,
    pub vni: Option<u32>,
    pub interface: String,
    pub mac: MacAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    pub owner: Owner,
    /// `applied`, or `pending` with the reason.
    pub state: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    pub name: String,
    pub vtep_address: IpAddr,
    pub source: SourceKind,
    /// The networks it carries, by name.
    pub networks: Vec<String>,
    pub endpoints: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub name: String,
    pub vtep_address: IpAddr,
    pub vxlan_port: u16,
    pub underlay: String,
    /// `xdp` or `tc`.
    pub decap: String,
    pub xdp_mode: String,
    pub attachments: Vec<String>,
    pub endpoints_applied: usize,
    pub endpoints_pending: usize,
    pub peers: usize,
}

/// The id an endpoint is known by in the API.
pub fn endpoint_id(origin: &Origin) -> String {
    match origin.source {
        SourceKind::Api => origin.key.strip_prefix("endpoint ").unwrap_or(&origin.key).to_owned(),
        _ => origin.key.clone(),
    }
}

pub fn networks(agent: &AgentState) -> Vec<NetworkView> {
    let model = agent.model();
    let overlay_mtu = crate::netdev::overlay_mtu(&model.node.underlay_interface).ok();
    model
        .networks
        .iter()
        .map(|n| NetworkView {
            name: n.name.clone(),
            vni: n.vni,
            subnet: n.subnet,
            subnet6: n.subnet6,
            mtu: n.mtu.or(overlay_mtu),
            flood_limit: model.flood_limit(n.vni),
            options: n.options.clone(),
            source: n.origin.source,
            key: n.origin.key.clone(),
        })
        .collect()
}

pub fn endpoints(agent: &AgentState) -> Vec<EndpointView> {
    let model = agent.model();
    model
        .endpoints
        .iter()
        .map(|e| {
            let network = model.network(&e.network);
            let (state, reason) = match agent.endpoint_state(&e.origin) {
                Some(EndpointState::Applied) => ("applied".to_owned(), String::new()),
                Some(EndpointState::Pending(why)) => ("pending".to_owned(), why.clone()),
                None => ("pending".to_owned(), "not reconciled yet".to_owned()),
            };
            EndpointView {
                id: endpoint_id(&e.origin),
                source: e.origin.source,
                network: network.map_or_else(|| e.network.to_string(), |n| n.name.clone()),
                vni: network.map(|n| n.vni),
                interface: e.interface.clone(),
                mac: e.mac,
                ipv4: e.ipv4,
                ipv6: e.ipv6,
                owner: e.owner.clone(),
                state,
                reason,
            }
        })
        .collect()
}

pub fn peers(agent: &AgentState) -> Vec<PeerView> {
    let model = agent.model();
    model
        .peers
        .iter()
        .map(|p| PeerView {
            name: p.name.clone(),
            vtep_address: p.vtep_address,
            source: p.origin.source,
            networks: model
                .peer_vnis(p)
                .into_iter()
                .filter_map(|vni| model.networks.iter().find(|n| n.vni == vni).map(|n| n.name.clone()))
                .collect(),
            endpoints: p.endpoints.len(),
        })
        .collect()
}

pub fn node(agent: &AgentState) -> NodeView {
    let model = agent.model();
    let reconciler = &agent.reconciler;
    let hook = reconciler.hook();
    NodeView {
        name: model.node.name.clone(),
        vtep_address: model.node.vtep_address,
        vxlan_port: model.node.vxlan_port,
        underlay: model.node.underlay_interface.clone(),
        decap: hook.map_or_else(String::new, |h| h.hook().to_owned()),
        xdp_mode: hook.map_or_else(String::new, |h| h.xdp_mode()),
        attachments: reconciler.datapath().attachments(),
        endpoints_applied: reconciler.applied().map_or(0, |r| r.endpoints.len()),
        endpoints_pending: reconciler.applied().map_or(0, |r| r.pending.len()),
        peers: model.peers.len(),
    }
}

/// An address handed out (`/v1/networks/{name}/addresses`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationView {
    pub network: String,
    pub address: Ipv4Addr,
    /// The network's prefix length (the container's address is `address/prefix_len`).
    pub prefix_len: u8,
    #[serde(default)]
    pub owner: String,
}

impl AllocationView {
    pub fn new(allocation: crate::addresses::Allocation, subnet: Ipv4Net) -> AllocationView {
        AllocationView { network: allocation.network, address: allocation.address, prefix_len: subnet.prefix_len(), owner: allocation.owner }
    }
}
