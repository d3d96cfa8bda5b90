//! The model resolved item by item against this host: which ports exist
//! (with their ifindex) and which are pending, and every peer's VNIs. An
//! endpoint whose interface does not exist yet is *pending*; the rest
//! proceeds without it.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, Ipv6Addr},
};

use crate::{
    model::{MacAddr, Model, Origin},
    netdev::ResolvedConfig,
};

/// An endpoint whose port exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedEndpoint {
    pub origin: Origin,
    pub vni: u32,
    pub interface: String,
    pub ifindex: u32,
    pub mac: MacAddr,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

/// An endpoint behind a peer, with its VNI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedRemote {
    pub vni: u32,
    pub mac: MacAddr,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedPeer {
    pub name: String,
    pub vtep_address: Ipv4Addr,
    /// Every VNI it carries.
    pub vnis: BTreeSet<u32>,
    pub endpoints: Vec<ResolvedRemote>,
}

/// What the maps and attachments are planned from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub node_name: String,
    pub underlay_interface: String,
    pub underlay_ifindex: u32,
    pub vtep_address: Ipv4Addr,
    pub vxlan_port: u16,
    pub ttl: u8,
    pub source_port_min: u16,
    pub source_port_max: u16,
    /// Endpoints whose ports exist, in model order.
    pub endpoints: Vec<ResolvedEndpoint>,
    /// Endpoints waiting for their port, with why.
    pub pending: Vec<(Origin, String)>,
    pub peers: Vec<ResolvedPeer>,
    /// The flood limit of every VNI.
    pub flood_limits: BTreeMap<u32, u32>,
    /// The VNIs whose networks learn, with their ageing in seconds.
    pub learning: BTreeMap<u32, u32>,
}

impl Resolved {
    /// Resolves a validated model; `ifindex` looks interfaces up (the host's,
    /// or a table in tests). `None` when the model is not one validation
    /// passes (an IPv6 VTEP).
    pub fn new(model: &Model, underlay_ifindex: u32, ifindex: impl Fn(&str) -> Option<u32>) -> Option<Resolved> {
        let vtep_address = model.node.vtep_ipv4()?;
        let mut endpoints = Vec::new();
        let mut pending = Vec::new();
        for endpoint in &model.endpoints {
            let Some(vni) = model.vni(&endpoint.network) else {
                pending.push((endpoint.origin.clone(), format!("network {} does not exist", endpoint.network)));
                continue;
            };
            match ifindex(&endpoint.interface) {
                Some(index) => endpoints.push(ResolvedEndpoint {
                    origin: endpoint.origin.clone(),
                    vni,
                    interface: endpoint.interface.clone(),
                    ifindex: index,
                    mac: endpoint.mac,
                    ipv4: endpoint.ipv4,
                    ipv6: endpoint.ipv6,
                }),
                None => pending.push((
                    endpoint.origin.clone(),
                    format!("interface {} does not exist (yet) in this network namespace", endpoint.interface),
                )),
            }
        }
        let peers = model
            .peers
            .iter()
            .filter_map(|peer| {
                let std::net::IpAddr::V4(vtep_address) = peer.vtep_address else { return None };
                Some(ResolvedPeer {
                    name: peer.name.clone(),
                    vtep_address,
                    vnis: model.peer_vnis(peer),
                    endpoints: peer
                        .endpoints
                        .iter()
                        .filter_map(|e| Some(ResolvedRemote { vni: model.vni(&e.network)?, mac: e.mac, ipv4: e.ipv4, ipv6: e.ipv6 }))
                        .collect(),
                })
            })
            .collect();
        let flood_limits = model.networks.iter().map(|n| (n.vni, model.flood_limit(n.vni))).collect();
        let learning = model.networks.iter().filter_map(|n| Some((n.vni, n.learning()?.ageing_seconds))).collect();
        let node = &model.node;
        Some(Resolved {
            node_name: node.name.clone(),
            underlay_interface: node.underlay_interface.clone(),
            underlay_ifindex,
            vtep_address,
            vxlan_port: node.vxlan_port,
            ttl: node.ttl,
            source_port_min: node.source_port_min,
            source_port_max: node.source_port_max,
            endpoints,
            pending,
            peers,
            flood_limits,
            learning,
        })
    }

    /// A configuration file whose interfaces were all looked up.
    pub fn from_config(resolved: &ResolvedConfig) -> Resolved {
        let model = resolved.config.model();
        let ports: BTreeMap<&str, u32> = resolved
            .config
            .endpoints
            .iter()
            .zip(&resolved.endpoint_ifindex)
            .map(|(e, &index)| (e.interface.as_str(), index))
            .collect();
        Resolved::new(&model, resolved.underlay_ifindex, |name| ports.get(name).copied())
            .expect("a validated configuration has an IPv4 VTEP")
    }

    /// The VNIs with a port here: the ones this node carries.
    pub fn local_vnis(&self) -> BTreeSet<u32> {
        self.endpoints.iter().map(|e| e.vni).collect()
    }

    /// Each distinct port with its ifindex, in first-use order.
    pub fn ports(&self) -> Vec<(String, u32)> {
        let mut seen = BTreeSet::new();
        self.endpoints
            .iter()
            .filter(|e| seen.insert(e.interface.as_str()))
            .map(|e| (e.interface.clone(), e.ifindex))
            .collect()
    }

    /// The flood fan-out limit of `vni`.
    pub fn flood_limit(&self, vni: u32) -> u32 {
        self.flood_limits.get(&vni).copied().unwrap_or(overlay_common::DEFAULT_FLOOD_LIMIT)
    }
}
