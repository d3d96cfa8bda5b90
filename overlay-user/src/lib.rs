//! The overlay agent's library: configuration, interface lookup, the map
//! state and its diffs, and the datapath facade. The `overlay` CLI, the
//! agent and the integration tests all go through this layer.
pub mod addresses;
pub mod agent;
pub mod api;
pub mod cni;
pub mod config;
pub mod datapath;
pub mod docker;
pub mod doctor;
pub mod http;
pub mod json_fuzz;
pub mod metrics;
pub mod model;
pub mod monitor;
pub mod neighbour;
pub mod netdev;
pub mod offload;
pub mod pinning;
pub mod private_file;
pub mod reconciler;
pub mod registry;
pub mod slots;
pub mod sources;
pub mod state;
pub mod status;
pub mod tc_legacy;
pub mod veth;

pub use config::{Config, ConfigError};
pub use datapath::{AttachMode, Counters, Datapath, DatapathError, DecapHook, DecapMode, VniPeerCounters, XdpAttachMode};
pub use netdev::ResolvedConfig;
pub use state::MapState;
