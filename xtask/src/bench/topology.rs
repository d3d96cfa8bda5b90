//! The benchmark's cells: which forwarding path (topology) over which
//! underlay (profile), each built as its own lab of two hosts with one
//! container each, so every cell has identical underlay links and
//! container ports and differs only in what forwards between them.
use std::{
    net::Ipv4Addr,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::Context;
use overlay_lab::{
    lab::{Container, ContainerSpec, HostKind, HostSpec, Lab, LabOptions, LabSpec, UnderlayOffloads}, traffic::ping,
    netns::Netns,
};
use serde::Serialize;

/// How the overlay agent decapsulates (`overlay run --decap`): each mode is
/// its own column. `auto` is not one: it picks one of these per device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DecapMode {
    /// XDP on the underlay device, native (driver) mode.
    Xdp,
    /// TC ingress of the underlay device, bpf_redirect_peer into the container.
    Tc,
    /// An experiment (`--gro-experiment`, issue 13 goal 2): TC
    /// decapsulation after receive-side GRO of the VXLAN stream. Each host
    /// gets GRO on its underlay veth (NAPI) and a collect-metadata kernel
    /// vxlan device that forwards nothing, only so that its UDP socket
    /// registers the kernel's VXLAN GRO handler for the port: the stack
    /// then merges a flow's VXLAN segments before TC decapsulates them.
    TcGro,
    /// An experiment (`--headroom-experiment`, issue 13's headroom lever):
    /// TC decapsulation, with each host's container ports enslaved to a
    /// bridge that is never up and whose only other member is a kernel
    /// vxlan device that is never up either. The membership does nothing
    /// for forwarding (the endpoint program redirects every frame at TC
    /// ingress, before the bridge's rx handler): it is there because the
    /// bridge raises its ports' rx headroom to its largest member's
    /// (`update_headroom`, net/bridge/br_if.c; vxlan's needed_headroom is
    /// 50 bytes plus its lower device's header), and veth passes that to
    /// its peer's needed_headroom (`veth_set_rx_headroom`), which the
    /// container's sockets then reserve: encapsulation finds room for the
    /// outer headers instead of reallocating the skb (`pskb_expand_head`).
    TcHeadroom,
}

/// Whether the GRO experiment's cells are part of this run.
static GRO_EXPERIMENT: AtomicBool = AtomicBool::new(false);
/// Whether the headroom experiment's cells are part of this run.
static HEADROOM_EXPERIMENT: AtomicBool = AtomicBool::new(false);

pub fn enable_gro_experiment() {
    GRO_EXPERIMENT.store(true, Ordering::Relaxed);
}

pub fn enable_headroom_experiment() {
    HEADROOM_EXPERIMENT.store(true, Ordering::Relaxed);
}

impl DecapMode {
    /// The modes measured: XDP and TC, and the GRO experiment when asked for.
    pub fn all() -> Vec<DecapMode> {
        let mut modes = vec![DecapMode::Xdp, DecapMode::Tc];
        if GRO_EXPERIMENT.load(Ordering::Relaxed) {
            modes.push(DecapMode::TcGro);
        }
        if HEADROOM_EXPERIMENT.load(Ordering::Relaxed) {
            modes.push(DecapMode::TcHeadroom);
        }
        modes
    }

    pub fn name(self) -> &'static str {
        match self {
            DecapMode::Xdp => "xdp",
            DecapMode::Tc => "tc",
            DecapMode::TcGro => "tc-gro",
            DecapMode::TcHeadroom => "tc-headroom",
        }
    }

    /// `overlay run` arguments selecting this mode. Native is asked for
    /// explicitly: a silent fallback to generic XDP would measure another path.
    pub fn agent_args(self) -> &'static [&'static str] {
        match self {
            DecapMode::Xdp => &["--decap", "xdp", "--xdp-mode", "native"],
            DecapMode::Tc | DecapMode::TcGro | DecapMode::TcHeadroom => &["--decap", "tc"],
        }
    }

    /// Host settings beside the agent (the harness's, not the product's).
    fn prepare_host(self, host: &overlay_lab::lab::Host) -> anyhow::Result<()> {
        if self == DecapMode::TcGro {
            let port = VXLAN_PORT.to_string();
            host.netns.ip(&["link", "add", "ovlgro0", "type", "vxlan", "external", "dstport", &port])?;
            host.netns.ip(&["link", "set", "ovlgro0", "up"])?;
            let output = host.netns.exec("ethtool", &["-K", &host.underlay, "gro", "on"])?;
            anyhow::ensure!(output.status.success(), "ethtool -K {} gro on: {}", host.underlay, String::from_utf8_lossy(&output.stderr));
        }
        if self == DecapMode::TcHeadroom {
            // Neither device is ever set up: the vxlan device opens no
            // socket and the bridge forwards nothing.
            host.netns.ip(&["link", "add", "ovlhrvx0", "type", "vxlan", "id", "1", "dstport", "4790", "dev", &host.underlay])?;
            host.netns.ip(&["link", "add", "ovlhr0", "type", "bridge"])?;
            host.netns.ip(&["link", "set", "ovlhrvx0", "master", "ovlhr0"])?;
            for container in &host.containers {
                host.netns.ip(&["link", "set", &container.port, "master", "ovlhr0"])?;
            }
        }
        Ok(())
    }
}

/// What forwards container traffic between the two hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Topology {
    /// Routed over the underlay without encapsulation: the physical limit.
    Routed,
    /// The kernel's vxlan device and a bridge on each host.
    KernelVxlan,
    /// This project's agent on each host.
    Overlay(DecapMode),
}

impl Topology {
    /// Every topology, references first.
    pub fn all() -> Vec<Topology> {
        let mut all = vec![Topology::Routed, Topology::KernelVxlan];
        all.extend(DecapMode::all().into_iter().map(Topology::Overlay));
        all
    }

    /// Short name, used in namespace names, JSON and the table.
    pub fn name(self) -> String {
        match self {
            Topology::Routed => "routed".into(),
            Topology::KernelVxlan => "kernel-vxlan".into(),
            Topology::Overlay(mode) => format!("overlay-{}", mode.name()),
        }
    }

    pub fn is_overlay(self) -> bool {
        matches!(self, Topology::Overlay(_))
    }

    fn host_kind(self) -> HostKind {
        match self {
            Topology::Routed => HostKind::Routed,
            Topology::KernelVxlan => HostKind::KernelVxlan,
            Topology::Overlay(_) => HostKind::Overlay,
        }
    }
}

/// How the underlay's veth links treat transmit checksums.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// veth as created: CHECKSUM_PARTIAL skbs cross the wire unfinished.
    VethDefault,
    /// Checksums computed by the sending end (`tx off`), as from a NIC.
    WireLike,
}

impl Profile {
    pub const ALL: [Profile; 2] = [Profile::VethDefault, Profile::WireLike];

    pub fn name(self) -> &'static str {
        match self {
            Profile::VethDefault => "veth-default",
            Profile::WireLike => "wire-like",
        }
    }

    fn offloads(self) -> UnderlayOffloads {
        match self {
            Profile::VethDefault => UnderlayOffloads::VethDefault,
            Profile::WireLike => UnderlayOffloads::WireLike,
        }
    }
}

/// One column of the results: a topology over a profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Cell {
    pub topology: Topology,
    pub profile: Profile,
}

impl Cell {
    /// Every cell: each topology over each profile.
    pub fn all() -> Vec<Cell> {
        Profile::ALL
            .into_iter()
            .flat_map(|profile| Topology::all().into_iter().map(move |topology| Cell { topology, profile }))
            .collect()
    }

    /// `topology/profile`.
    pub fn name(self) -> String {
        format!("{}/{}", self.topology.name(), self.profile.name())
    }

    /// The lab scope (part of every namespace name): unique per cell.
    pub fn scope(self) -> String {
        format!("bench-{}-{}", self.topology.name(), self.profile.name())
    }
}

/// The VXLAN port; irrelevant to the routed cells.
const VXLAN_PORT: u16 = 4789;
/// The containers' VNI.
pub const VNI: u32 = 100;
/// The sending container, on the first host.
pub const SENDER_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 1);
/// The receiving container, on the second host.
pub const RECEIVER_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 2);

/// A built cell: its lab, with agents running on overlay hosts.
pub struct TestBed {
    pub cell: Cell,
    pub lab: Lab,
}

impl TestBed {
    /// Builds the cell's lab (hosts `h1` and `h2`, containers `c1` and `c2`),
    /// starts the agents of an overlay cell and checks that the sender can
    /// ping the receiver (which also resolves every neighbour before the
    /// first measurement).
    pub fn build(cell: Cell, overlay_bin: &Path) -> anyhow::Result<TestBed> {
        TestBed::build_in(cell, overlay_bin, cell.scope())
    }

    /// [`TestBed::build`] under another lab scope, for a second lab of the
    /// same cell (the cost curves' own).
    pub fn build_in(cell: Cell, overlay_bin: &Path, scope: String) -> anyhow::Result<TestBed> {
        let kind = cell.topology.host_kind();
        let container = |name: &str, ip: Ipv4Addr| ContainerSpec {
            name: name.into(),
            mac: [0x02, 0, 0, 0, 0, ip.octets()[3]],
            ip,
            vni: VNI,
        };
        let spec = LabSpec {
            scope,
            vxlan_port: VXLAN_PORT,
            hosts: vec![
                HostSpec { name: "h1".into(), kind, containers: vec![container("c1", SENDER_IP)] },
                HostSpec { name: "h2".into(), kind, containers: vec![container("c2", RECEIVER_IP)] },
            ],
        };
        let mut lab = Lab::build_with(spec, LabOptions { underlay: cell.profile.offloads() })
            .with_context(|| format!("building the lab of {}", cell.name()))?;
        if let Topology::Overlay(mode) = cell.topology {
            lab.start_agents_with_args(overlay_bin, mode.agent_args())
                .with_context(|| format!("starting the agents of {}", cell.name()))?;
            for host in &lab.hosts {
                mode.prepare_host(host).with_context(|| format!("preparing host {} of {}", host.spec.name, cell.name()))?;
            }
        }
        let bed = TestBed { cell, lab };
        let (sent, received) = ping(&bed.sender().netns, RECEIVER_IP, 3)?;
        if received == 0 {
            anyhow::bail!("{}: the sender's {sent} pings to the receiver got no reply", cell.name());
        }
        Ok(bed)
    }

    pub fn sender(&self) -> &Container {
        self.lab.container("h1", "c1")
    }

    pub fn receiver(&self) -> &Container {
        self.lab.container("h2", "c2")
    }

    pub fn sender_netns(&self) -> &Netns {
        &self.sender().netns
    }

    pub fn receiver_netns(&self) -> &Netns {
        &self.receiver().netns
    }

    /// Process ids of the agents on the sending and the receiving host.
    pub fn agent_pids(&self) -> (Option<u32>, Option<u32>) {
        let pid = |host: &str| self.lab.agents.iter().find(|a| a.host == host).and_then(|a| a.pid());
        (pid("h1"), pid("h2"))
    }
}
