//! The agent's status file, `<run dir>/<node>.json`: what is attached
//! where, the configuration in force and the last reload, for
//! `overlay status` and `overlay down` (bpffs holds only BPF objects).
use std::{
    io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// Default directory of the status files.
pub const DEFAULT_RUN_DIR: &str = "/run/overlay";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: String,
    pub pid: u32,
    pub config: PathBuf,
    pub pin_dir: PathBuf,
    /// Unix time the agent started.
    pub started: u64,
    /// Whether it adopted a datapath pinned by an earlier agent.
    pub adopted: bool,
    pub underlay: String,
    /// The decapsulation hook: "xdp" or "tc" (absent in files of agents
    /// older than TC decapsulation, which always used XDP).
    #[serde(default = "xdp_hook")]
    pub decap: String,
    /// "native", "generic" or "offload"; "none" with TC decapsulation.
    pub xdp_mode: String,
    /// How the TC programs are attached: "tcx" (links) or "netlink"
    /// (clsact filters, kernels without TCX); empty in older files.
    #[serde(default)]
    pub tc_attach: String,
    /// Every attachment, by link name (e.g. `tc-port-veth1`).
    pub attachments: Vec<String>,
    /// Peers carrying each VNI this node has.
    pub peers_per_vni: Vec<(u32, usize)>,
    pub last_reload: Option<Reload>,
    /// The local API's socket.
    #[serde(default)]
    pub api_socket: Option<PathBuf>,
    /// Where Prometheus metrics are served (`--metrics-addr`), if they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Endpoints waiting for their interface: (source and key, why).
    #[serde(default)]
    pub pending: Vec<(String, String)>,
    /// Cluster mode: the registry link's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Cluster>,
}

/// The registry link of an agent in cluster mode.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    /// etcd, the registration, the snapshot applied.
    pub summary: String,
    /// Registry items left out: they conflict with this node's own.
    pub left_out: Vec<String>,
    /// Refused claims between this node and another (either side).
    #[serde(default)]
    pub conflicts: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reload {
    /// Unix time of the attempt.
    pub at: u64,
    pub ok: bool,
    /// What changed, or why nothing did.
    pub message: String,
}

fn xdp_hook() -> String {
    "xdp".into()
}

pub fn path(run_dir: &Path, node: &str) -> PathBuf {
    run_dir.join(format!("{node}.json"))
}

pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl NodeStatus {
    /// Writes the file atomically (write, then rename).
    /// The file and the run directory it creates are root's only (0600,
    /// 0700): they name the node's interfaces, peers and API socket.
    pub fn write(&self, run_dir: &Path) -> io::Result<()> {
        crate::private_file::write_json(&path(run_dir, &self.node), self)
    }

    pub fn read(run_dir: &Path, node: &str) -> io::Result<NodeStatus> {
        let bytes = std::fs::read(path(run_dir, node))?;
        serde_json::from_slice(&bytes).map_err(io::Error::other)
    }

    /// "XDP native", "TC", ...: how this node decapsulates.
    pub fn decap_description(&self) -> String {
        let decap = match self.decap.as_str() {
            "tc" if self.xdp_mode == "offload" => "decapsulation in TC; outer headers judged by XDP offloaded to the NIC".into(),
            "tc" => "decapsulation in TC".into(),
            _ => format!("decapsulation in XDP, {} mode", self.xdp_mode),
        };
        match self.tc_attach.as_str() {
            "netlink" => format!("{decap}; TC programs attached as netlink clsact filters (the kernel has no TCX)"),
            "tcx" => format!("{decap}; TC programs attached as TCX links"),
            _ => decap,
        }
    }

    /// Whether the agent that wrote this is still running.
    pub fn agent_running(&self) -> bool {
        Path::new(&format!("/proc/{}", self.pid)).exists() && self.pid != std::process::id()
    }
}
