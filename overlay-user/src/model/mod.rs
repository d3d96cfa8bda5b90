//! What this node should carry, whichever source said it: node settings,
//! networks, local endpoints and peers. No TOML and no kernel here: the
//! file, the local API and the cluster registry each produce a
//! [`Fragment`]; [`Model::merge`] joins them, [`validate`](validate::validate)
//! checks the whole, and the [reconciler](crate::reconciler) turns it into
//! kernel state.
mod mac;
mod problem;
pub mod validate;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

pub use ipnet::{Ipv4Net, Ipv6Net};
pub use mac::MacAddr;
pub use problem::{Problem, ProblemKind};
use serde::{Deserialize, Serialize};

/// Which source an item came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// The node's configuration file.
    File,
    /// The local API (`overlay endpoint add`, runtimes' plugins).
    Api,
    /// The cluster registry.
    Registry,
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SourceKind::File => "file",
            SourceKind::Api => "api",
            SourceKind::Registry => "registry",
        })
    }
}

/// Where an item was said: its source, and the source's own name for it
/// (the file's is the TOML path, e.g. `peers[1].endpoints[0]`; the API's is
/// the endpoint's or network's id). Problems name their subject by origin,
/// and each front end renders it its own way.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Origin {
    pub source: SourceKind,
    pub key: String,
}

impl Origin {
    pub fn new(source: SourceKind, key: impl Into<String>) -> Origin {
        Origin { source, key: key.into() }
    }

    /// How `self` is named in a message about an item of `from`: by its key
    /// alone within one source, with the source's name across sources.
    pub fn named_from(&self, from: &Origin) -> String {
        if self.source == from.source { self.key.clone() } else { format!("{} {}", self.source, self.key) }
    }
}

/// Who asked for a local endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OwnerKind {
    File,
    Api,
    Docker,
    Cni,
}

impl fmt::Display for OwnerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OwnerKind::File => "file",
            OwnerKind::Api => "api",
            OwnerKind::Docker => "docker",
            OwnerKind::Cni => "cni",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub kind: OwnerKind,
    /// The runtime's container id, when a runtime asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
}

/// This node's VTEP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSettings {
    pub name: String,
    pub underlay_interface: String,
    /// IPv4 today; an IPv6 underlay is refused by validation until the datapath has one.
    pub vtep_address: IpAddr,
    pub vxlan_port: u16,
    pub ttl: u8,
    pub source_port_min: u16,
    pub source_port_max: u16,
    /// Default per-network flood fan-out limit.
    pub flood_limit: u32,
}

impl NodeSettings {
    /// The VTEP address when it is IPv4 (validation refuses any other).
    pub fn vtep_ipv4(&self) -> Option<Ipv4Addr> {
        match self.vtep_address {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        }
    }
}

/// How an endpoint names its network: by name, or (files written before
/// networks existed) by bare VNI.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NetworkRef {
    Name(String),
    Vni(u32),
}

impl fmt::Display for NetworkRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetworkRef::Name(name) => f.write_str(name),
            NetworkRef::Vni(vni) => write!(f, "VNI {vni}"),
        }
    }
}

/// An overlay network: one VXLAN segment (one VNI) with its settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    pub name: String,
    pub vni: u32,
    pub subnet: Option<Ipv4Net>,
    pub subnet6: Option<Ipv6Net>,
    /// The MTU containers should use (default: the underlay's less 50).
    pub mtu: Option<u32>,
    /// Most copies one flooded frame makes (default: the node's).
    pub flood_limit: Option<u32>,
    pub options: BTreeMap<String, String>,
    pub origin: Origin,
}

/// The network option that turns learning on (`"true"` or `"on"`) for a network:
/// the file's `[[vnis]] learning`, the API's `learning`, and the
/// registry's and Docker's network options all set it.
pub const OPTION_LEARNING: &str = "learning";
/// The network option holding learned entries' ageing in seconds.
pub const OPTION_AGEING: &str = "ageing";

/// How a network learns remote MACs (RFC 7348 section 4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Learning {
    /// A learned entry not refreshed for this long is no longer used.
    pub ageing_seconds: u32,
}

impl Network {
    /// Its learning settings, when learning is on (validation refuses
    /// option values this does not understand).
    pub fn learning(&self) -> Option<Learning> {
        if !matches!(self.options.get(OPTION_LEARNING).map(String::as_str), Some("true" | "on")) {
            return None;
        }
        let ageing_seconds = self
            .options
            .get(OPTION_AGEING)
            .and_then(|ageing| ageing.parse().ok())
            .unwrap_or(overlay_common::DEFAULT_LEARNING_AGEING_SECONDS);
        Some(Learning { ageing_seconds })
    }
}

/// The name given to a network that files name only by its VNI.
pub fn implicit_network_name(vni: u32) -> String {
    format!("vni-{vni}")
}

/// A container (or any endpoint) attached to this node through a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub network: NetworkRef,
    /// Host-side interface of the endpoint's veth pair.
    pub interface: String,
    pub mac: MacAddr,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub owner: Owner,
    pub origin: Origin,
}

/// Another node and what it carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub vtep_address: IpAddr,
    pub endpoints: Vec<RemoteEndpoint>,
    /// Networks the peer carries besides those of its listed endpoints.
    pub networks: Vec<NetworkRef>,
    pub origin: Origin,
}

/// An endpoint behind a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteEndpoint {
    pub network: NetworkRef,
    pub mac: MacAddr,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub origin: Origin,
}

/// What one source says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fragment {
    pub networks: Vec<Network>,
    pub endpoints: Vec<Endpoint>,
    pub peers: Vec<Peer>,
}

/// Everything the node should carry: the sources' fragments joined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Model {
    pub node: NodeSettings,
    /// Explicit networks first, then one per VNI that items name only by
    /// number and no explicit network has.
    pub networks: Vec<Network>,
    pub endpoints: Vec<Endpoint>,
    pub peers: Vec<Peer>,
    /// The sources in the order their fragments were merged: validation
    /// reports a conflict on the item of the later source.
    pub source_order: Vec<SourceKind>,
}

impl Model {
    /// Joins the fragments in order. Nothing is dropped or overwritten
    /// here: conflicts between them are for [`validate::validate`] to report.
    pub fn merge<'a>(node: NodeSettings, fragments: impl IntoIterator<Item = &'a Fragment>) -> Model {
        let mut model = Model { node, networks: Vec::new(), endpoints: Vec::new(), peers: Vec::new(), source_order: Vec::new() };
        for fragment in fragments {
            let sources = fragment
                .networks
                .iter()
                .map(|n| n.origin.source)
                .chain(fragment.endpoints.iter().map(|e| e.origin.source))
                .chain(fragment.peers.iter().map(|p| p.origin.source));
            for source in sources {
                if !model.source_order.contains(&source) {
                    model.source_order.push(source);
                }
            }
            model.networks.extend(fragment.networks.iter().cloned());
            model.endpoints.extend(fragment.endpoints.iter().cloned());
            model.peers.extend(fragment.peers.iter().cloned());
        }
        let explicit: BTreeSet<u32> = model.networks.iter().map(|n| n.vni).collect();
        let mut implicit: BTreeMap<u32, Origin> = BTreeMap::new();
        let bare = model
            .endpoints
            .iter()
            .map(|e| (&e.network, &e.origin))
            .chain(model.peers.iter().flat_map(|p| {
                p.endpoints.iter().map(|e| (&e.network, &e.origin)).chain(p.networks.iter().map(|n| (n, &p.origin)))
            }));
        for (network, origin) in bare {
            if let NetworkRef::Vni(vni) = network {
                if !explicit.contains(vni) {
                    implicit.entry(*vni).or_insert_with(|| origin.clone());
                }
            }
        }
        model.networks.extend(implicit.into_iter().map(|(vni, origin)| Network {
            name: implicit_network_name(vni),
            vni,
            subnet: None,
            subnet6: None,
            mtu: None,
            flood_limit: None,
            options: BTreeMap::new(),
            origin,
        }));
        model
    }

    /// Where `source` stands in the merge order (unknown sources last).
    pub fn source_rank(&self, source: SourceKind) -> usize {
        self.source_order.iter().position(|s| *s == source).unwrap_or(usize::MAX)
    }

    /// The network `reference` names, if any.
    pub fn network(&self, reference: &NetworkRef) -> Option<&Network> {
        match reference {
            NetworkRef::Name(name) => self.networks.iter().find(|n| &n.name == name),
            NetworkRef::Vni(vni) => self.networks.iter().find(|n| n.vni == *vni),
        }
    }

    /// The VNI of the network `reference` names.
    pub fn vni(&self, reference: &NetworkRef) -> Option<u32> {
        self.network(reference).map(|n| n.vni)
    }

    /// The flood fan-out limit of `vni`.
    pub fn flood_limit(&self, vni: u32) -> u32 {
        self.networks.iter().find(|n| n.vni == vni).and_then(|n| n.flood_limit).unwrap_or(self.node.flood_limit)
    }

    /// Every VNI `peer` carries: flooded frames of these go to it.
    pub fn peer_vnis(&self, peer: &Peer) -> BTreeSet<u32> {
        peer.endpoints.iter().map(|e| &e.network).chain(&peer.networks).filter_map(|n| self.vni(n)).collect()
    }
}
