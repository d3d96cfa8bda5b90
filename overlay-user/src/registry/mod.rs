//! The cluster registry in etcd (v3 API): nodes, networks, endpoints and
//! IPAM blocks shared by every agent, with leases, watches and conflict
//! detection. It is one source of the agent's desired state: it publishes
//! [`ClusterSnapshot`]s and knows nothing of the datapath.
//!
//! # Key layout
//!
//! Under a versioned prefix (default `/overlay/v1`; the version changes
//! with any incompatible change of the layout or the records). Values are
//! JSON objects; claim keys hold a JSON string naming their holder.
//!
//! | key                                  | value                                                       | lease      |
//! |--------------------------------------|-------------------------------------------------------------|------------|
//! | `nodes/<name>`                       | `{name, vtep, vxlan_port, agent_version}`                   | the node's |
//! | `vteps/<vtep address>`               | claim: the node's name                                      | the node's |
//! | `networks/<name>`                    | `{name, vni, subnet, subnet6, mtu, block_prefix_len, options}` | none    |
//! | `vnis/<vni>`                         | claim: the network's name                                   | none       |
//! | `endpoints/<network>/<mac>`          | `{network, mac, addresses, node, owner}`                    | its node's |
//! | `addresses/<network>/<address>`      | claim: the endpoint's MAC                                   | its node's |
//! | `blocks/<network>/<base address>`    | `{network, cidr, node, allocations: {address: owner}}`      | none       |
//! | `conflicts/<claimant>/<kind>/<subject>` | `{claimant, kind, subject, holder, holder_node}`: a refused claim | claimant's |
//! | `users/<network>/<node>`             | `{node}`: the node has a Docker network of it               | none       |
//!
//! - A node's records and its endpoints share the node's lease: when the
//!   node stops renewing it (crash, partition), etcd deletes them all at
//!   once after the TTL, and every watcher sees the deletions.
//! - Networks and IPAM blocks are not leased: they outlive any node. A
//!   network goes with its last user ([`Registry::release_network`]: no
//!   user record and no endpoint left; its blocks stay).
//! - Uniqueness (node name, VTEP, VNI, MAC per network, address per
//!   network, block) is enforced when writing, by transactions that create
//!   a record and its claim keys only if none exists; the later claim is
//!   refused and nothing is overwritten. Readers still check (records
//!   written by hand), keeping the earlier record by create revision.
//!
//! # Pieces
//! - [`records`] and [`keys`]: what is stored where, and validation;
//! - [`Registry`] ([`client`]): the connection, networks;
//! - [`NodeSession`] ([`session`]): a node's lease, its records and endpoints;
//! - [`ClusterWatch`] ([`watcher`]) over [`RegistryStore`] ([`snapshot`]):
//!   read, watch, apply, recover;
//! - [`Ipam`] ([`ipam`]): addresses from per-node blocks;
//! - [`status`]: the cluster report;
//! - [`fragment()`]: a snapshot as the model's [`crate::model::Fragment`].
//!
//! # Wiring (the agent)
//! ```text
//! let registry = Registry::connect(settings).await?;          // lazy: etcd may be down
//! let session = NodeSession::start(registry.clone(), me).await?; // retry Etcd errors; refusals are final
//! let watch = ClusterWatch::start(registry.clone());
//! let mut snapshots = watch.snapshots();
//! loop {
//!     snapshots.changed().await?;                             // level-triggered wake-up
//!     let fragment = registry::fragment(&snapshots.borrow_and_update(), &me.name);
//!     // replace the registry's fragment in the model; wake the reconciler
//! }
//! ```
//! Local endpoints go through `session.register_endpoint` (after
//! `Ipam::allocate` + `Ipam::flush` when the registry hands out the address).
//! While etcd is unreachable the receiver keeps the last snapshot; the
//! session's state and the watcher's status say so.
pub mod cache;
pub mod cidr;
pub mod fragment;
pub mod client;
pub mod ipam;
pub mod keys;
pub mod problem;
pub mod records;
pub mod session;
pub mod snapshot;
pub mod status;
pub mod watcher;

pub use cidr::{Ipv4Net, Ipv6Net};
pub use fragment::fragment;
pub use client::{Credentials, Registry, RegistrySettings, TlsFiles};
pub use ipam::Ipam;
pub use keys::{DEFAULT_PREFIX, KeyLayout};
pub use problem::{ClusterProblem, ConflictReport, Holder, RecordProblem, RegistryError};
pub use records::{BlockRecord, EndpointRecord, NetworkRecord, NodeRecord};
pub use session::{NodeSession, SessionState};
pub use snapshot::{ClusterSnapshot, NodeEntry, RegistryStore};
pub use status::{ClusterStatus, NetworkStatus, NodeStatus};
pub use watcher::{ClusterWatch, WatchStatus};
