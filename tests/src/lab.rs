//! A multi-host lab on one machine: hosts and containers in network
//! namespaces, an underlay switch between the hosts, and on each host
//! either the real `overlay` agent or the kernel's vxlan device + bridge.
//!
//! Underlay links are set up as a physical wire behaves: the sending end
//! computes checksums (`tx off`), because a NIC does that before the wire,
//! while veth would otherwise pass CHECKSUM_PARTIAL skbs that native XDP on
//! the receiving veth cannot carry (see shared/notes/toolchain.md). The
//! benchmark also builds labs whose underlay keeps veth's default offloads
//! ([`LabOptions`]). The container end of each port has GRO on: a native
//! XDP_REDIRECT into a veth is only received when the peer runs NAPI, which
//! GRO turns on.
use std::{
    fmt::Write as _,
    io::Read as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::netns::Netns;

/// What forwards overlay traffic on a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostKind {
    /// The `overlay` agent with its eBPF datapath.
    Overlay,
    /// The Linux kernel's vxlan device and a bridge (as Flannel's vxlan
    /// backend and Docker's overlay driver use).
    KernelVxlan,
    /// No overlay: the host routes its containers' packets over the
    /// underlay to the host of the destination container (a /32 route per
    /// remote container via that host's underlay address), and answers
    /// the containers' ARP requests by proxy ARP. Containers keep the same
    /// addresses and prefix as in an overlay, so the container side is
    /// identical; it is the reference without encapsulation.
    Routed,
}

#[derive(Clone, Debug)]
pub struct ContainerSpec {
    pub name: String,
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    pub vni: u32,
}

#[derive(Clone, Debug)]
pub struct HostSpec {
    pub name: String,
    pub kind: HostKind,
    pub containers: Vec<ContainerSpec>,
}

#[derive(Clone, Debug)]
pub struct LabSpec {
    /// Short name of the test or demo; part of every namespace name.
    pub scope: String,
    pub hosts: Vec<HostSpec>,
    pub vxlan_port: u16,
}

impl LabSpec {
    /// `hosts` overlay hosts `h1`, `h2`, ... on VXLAN port 4789, each with one
    /// container `c` in VNI 100: host n's has MAC `02:00:00:00:<mac_byte>:n`
    /// and IP `10.10.0.n`.
    pub fn one_container_each(scope: &str, hosts: u8, mac_byte: u8) -> LabSpec {
        let host = |n: u8| HostSpec {
            name: format!("h{n}"),
            kind: HostKind::Overlay,
            containers: vec![ContainerSpec { name: "c".into(), mac: [2, 0, 0, 0, mac_byte, n], ip: Ipv4Addr::new(10, 10, 0, n), vni: 100 }],
        };
        LabSpec { scope: scope.into(), vxlan_port: 4789, hosts: (1..=hosts).map(host).collect() }
    }
}

/// How the underlay's veth links are set up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnderlayOffloads {
    /// The sending end computes checksums (`ethtool -K <underlay> tx off`),
    /// as a physical NIC delivers frames with complete checksums.
    #[default]
    WireLike,
    /// veth's defaults: CHECKSUM_PARTIAL skbs cross the wire unfinished.
    VethDefault,
}

/// Lab settings beyond the topology; [`Lab::build`] uses the defaults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LabOptions {
    pub underlay: UnderlayOffloads,
}

/// Underlay MTU of the lab's wire.
pub const UNDERLAY_MTU: u32 = 1500;
/// Container MTU: the underlay MTU less the 50 bytes of VXLAN over IPv4.
pub const OVERLAY_MTU: u32 = UNDERLAY_MTU - 50;
/// Overlay prefix length given to container addresses.
pub const OVERLAY_PREFIX_LEN: u8 = 24;

pub struct Container {
    pub spec: ContainerSpec,
    pub netns: Netns,
    /// Host-side interface name of the container's port.
    pub port: String,
}

pub struct Host {
    pub spec: HostSpec,
    pub netns: Netns,
    pub underlay: String,
    pub vtep: Ipv4Addr,
    pub containers: Vec<Container>,
    /// The agent's configuration file, for overlay hosts.
    pub config_path: Option<PathBuf>,
}

/// A running `overlay run`; stopped with SIGTERM on drop.
pub struct Agent {
    pub host: String,
    child: Option<Child>,
    log_path: PathBuf,
}

pub struct Lab {
    // Field order is drop order: agents stop before namespaces go.
    pub agents: Vec<Agent>,
    pub hosts: Vec<Host>,
    pub wire: Netns,
    pub dir: PathBuf,
    pub spec: LabSpec,
    pub options: LabOptions,
}

impl Lab {
    /// Creates every namespace, link and address of `spec`, and writes each
    /// overlay host's configuration file. Starts no agent.
    pub fn build(spec: LabSpec) -> anyhow::Result<Lab> {
        Lab::build_with(spec, LabOptions::default())
    }

    /// [`Lab::build`] with non-default [`LabOptions`].
    pub fn build_with(spec: LabSpec, options: LabOptions) -> anyhow::Result<Lab> {
        let tag = format!("{:x}", std::process::id());
        let dir = std::env::temp_dir().join(format!("{}-{}-{}", crate::netns::PREFIX, spec.scope, std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let wire = Netns::new(&spec.scope, "wire")?;
        let bridge = format!("br{tag}");
        wire.ip(&["link", "add", &bridge, "type", "bridge"])?;
        wire.ip(&["link", "set", &bridge, "up"])?;
        let mut lab = Lab { agents: Vec::new(), hosts: Vec::new(), wire, dir, spec: spec.clone(), options };

        for (index, host_spec) in spec.hosts.iter().enumerate() {
            let number = index + 1;
            let netns = Netns::new(&spec.scope, &host_spec.name)?;
            let underlay = format!("ul{tag}{number}");
            let wire_end = format!("w{tag}{number}");
            let vtep = Ipv4Addr::new(192, 0, 2, number as u8);
            lab.wire.ip(&["link", "add", &wire_end, "type", "veth", "peer", "name", &underlay, "netns", netns.name()])?;
            lab.wire.ip(&["link", "set", &wire_end, "master", &bridge, "up"])?;
            netns.ip(&["addr", "add", &format!("{vtep}/24"), "dev", &underlay])?;
            netns.ip(&["link", "set", &underlay, "mtu", &UNDERLAY_MTU.to_string(), "up"])?;
            if options.underlay == UnderlayOffloads::WireLike {
                // Wire-like: the sender computes checksums, as a NIC does.
                netns.exec("ethtool", &["-K", &underlay, "tx", "off"])?;
            }
            lab.hosts.push(Host { spec: host_spec.clone(), netns, underlay, vtep, containers: Vec::new(), config_path: None });
        }

        for host_index in 0..lab.hosts.len() {
            let number = host_index + 1;
            for (k, container_spec) in lab.spec.hosts[host_index].containers.clone().into_iter().enumerate() {
                let host = &mut lab.hosts[host_index];
                let netns = Netns::new(&spec.scope, &format!("{}{}", host.spec.name, container_spec.name))?;
                let port = format!("p{tag}{number}{k}");
                let inside = format!("e{tag}{number}{k}");
                host.netns.ip(&["link", "add", &port, "type", "veth", "peer", "name", &inside, "netns", netns.name()])?;
                host.netns.ip(&["link", "set", &port, "up"])?;
                let mac = format_mac(&container_spec.mac);
                netns.ip(&["link", "set", &inside, "address", &mac, "mtu", &OVERLAY_MTU.to_string(), "up"])?;
                netns.ip(&["addr", "add", &format!("{}/{OVERLAY_PREFIX_LEN}", container_spec.ip), "dev", &inside])?;
                // NAPI on the receiving end of XDP_REDIRECT (see module docs).
                netns.exec("ethtool", &["-K", &inside, "gro", "on"])?;
                host.containers.push(Container { spec: container_spec, netns, port });
            }
        }

        for host_index in 0..lab.hosts.len() {
            match lab.hosts[host_index].spec.kind {
                HostKind::Overlay => {
                    let text = lab.overlay_config(host_index);
                    let path = lab.dir.join(format!("{}.toml", lab.hosts[host_index].spec.name));
                    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
                    lab.hosts[host_index].config_path = Some(path);
                }
                HostKind::KernelVxlan => lab.setup_kernel_vxlan(host_index, &tag)?,
                HostKind::Routed => lab.setup_routing(host_index)?,
            }
        }
        Ok(lab)
    }

    /// The `overlay` configuration for host `index`: its containers as
    /// endpoints, every other host as a peer with its containers.
    pub fn overlay_config(&self, index: usize) -> String {
        let host = &self.hosts[index];
        let mut text = String::new();
        let _ = writeln!(
            text,
            "[node]\nname = \"{}\"\nunderlay_interface = \"{}\"\nvtep_address = \"{}\"\nvxlan_port = {}\n",
            host.spec.name, host.underlay, host.vtep, self.spec.vxlan_port
        );
        for container in &host.containers {
            let _ = writeln!(
                text,
                "[[endpoints]]\ninterface = \"{}\"\nmac = \"{}\"\nip = \"{}\"\nvni = {}\n",
                container.port,
                format_mac(&container.spec.mac),
                container.spec.ip,
                container.spec.vni
            );
        }
        for (other_index, other) in self.hosts.iter().enumerate() {
            if other_index == index {
                continue;
            }
            let _ = writeln!(text, "[[peers]]\nname = \"{}\"\nvtep_address = \"{}\"\n", other.spec.name, other.vtep);
            for container in &other.containers {
                let _ = writeln!(
                    text,
                    "  [[peers.endpoints]]\n  mac = \"{}\"\n  ip = \"{}\"\n  vni = {}\n",
                    format_mac(&container.spec.mac),
                    container.spec.ip,
                    container.spec.vni
                );
            }
        }
        text
    }

    /// A kernel vxlan device and bridge per VNI, with static FDB entries
    /// for every remote container and head-end replication of BUM frames
    /// to every other host that has the VNI (the all-zero MAC entries).
    fn setup_kernel_vxlan(&mut self, index: usize, tag: &str) -> anyhow::Result<()> {
        let port = self.spec.vxlan_port.to_string();
        let mut vnis: Vec<u32> = self.hosts[index].containers.iter().map(|c| c.spec.vni).collect();
        vnis.sort();
        vnis.dedup();
        for (n, vni) in vnis.iter().enumerate() {
            let host = &self.hosts[index];
            let vxlan = format!("vx{tag}{n}");
            let bridge = format!("b{tag}{n}");
            let vtep = host.vtep.to_string();
            host.netns.ip(&[
                "link", "add", &vxlan, "type", "vxlan", "id", &vni.to_string(), "local", &vtep, "dstport", &port,
                "nolearning", "dev", &host.underlay,
            ])?;
            host.netns.ip(&["link", "add", &bridge, "type", "bridge"])?;
            host.netns.ip(&["link", "set", &vxlan, "master", &bridge, "mtu", &OVERLAY_MTU.to_string(), "up"])?;
            for container in host.containers.iter().filter(|c| c.spec.vni == *vni) {
                host.netns.ip(&["link", "set", &container.port, "master", &bridge])?;
            }
            host.netns.ip(&["link", "set", &bridge, "up"])?;
            for (other_index, other) in self.hosts.iter().enumerate() {
                let remote: Vec<_> = other.containers.iter().filter(|c| c.spec.vni == *vni).collect();
                if other_index == index || remote.is_empty() {
                    continue;
                }
                let dst = other.vtep.to_string();
                host.netns.exec("bridge", &["fdb", "append", "00:00:00:00:00:00", "dev", &vxlan, "dst", &dst])?;
                for container in remote {
                    host.netns.exec("bridge", &["fdb", "append", &format_mac(&container.spec.mac), "dev", &vxlan, "dst", &dst])?;
                }
            }
        }
        Ok(())
    }

    /// Routes this host's containers' traffic over the underlay: forwarding
    /// on, a /32 route to each local container through its port, a /32
    /// route to each remote container via its host's underlay address, and
    /// proxy ARP on the ports so containers, which see their whole /24 as
    /// on-link, reach every remote address through the host.
    fn setup_routing(&mut self, index: usize) -> anyhow::Result<()> {
        let host = &self.hosts[index];
        host.netns.sysctl("net.ipv4.ip_forward", "1")?;
        for container in &host.containers {
            host.netns.sysctl(&format!("net.ipv4.conf.{}.proxy_arp", container.port), "1")?;
            host.netns.ip(&["route", "add", &format!("{}/32", container.spec.ip), "dev", &container.port])?;
        }
        for (other_index, other) in self.hosts.iter().enumerate() {
            if other_index == index {
                continue;
            }
            let via = other.vtep.to_string();
            for container in &other.containers {
                host.netns.ip(&["route", "add", &format!("{}/32", container.spec.ip), "via", &via, "dev", &host.underlay])?;
            }
        }
        Ok(())
    }

    /// Starts `overlay run` on every overlay host and waits until each says
    /// it is forwarding.
    pub fn start_agents(&mut self, overlay_bin: &Path) -> anyhow::Result<()> {
        self.start_agents_with_args(overlay_bin, &[])
    }

    /// [`Lab::start_agents`] with extra `overlay run` arguments (such as
    /// `--xdp-mode native`).
    pub fn start_agents_with_args(&mut self, overlay_bin: &Path, args: &[&str]) -> anyhow::Result<()> {
        for index in 0..self.hosts.len() {
            if self.hosts[index].spec.kind == HostKind::Overlay {
                let agent = self.start_agent_with_args(index, overlay_bin, args)?;
                self.agents.push(agent);
            }
        }
        Ok(())
    }

    /// Starts `overlay run` on host `index`.
    pub fn start_agent(&self, index: usize, overlay_bin: &Path) -> anyhow::Result<Agent> {
        self.start_agent_with_args(index, overlay_bin, &[])
    }

    /// [`Lab::start_agent`] with extra `overlay run` arguments.
    pub fn start_agent_with_args(&self, index: usize, overlay_bin: &Path, args: &[&str]) -> anyhow::Result<Agent> {
        self.start_agent_within(index, overlay_bin, args, Duration::from_secs(20))
    }

    /// [`Lab::start_agent_with_args`], waiting up to `timeout` for the
    /// agent to say it is forwarding (a large configuration takes longer).
    pub fn start_agent_within(&self, index: usize, overlay_bin: &Path, args: &[&str], timeout: Duration) -> anyhow::Result<Agent> {
        self.mount_bpffs()?;
        let host = &self.hosts[index];
        let config = host.config_path.as_ref().context("host has no overlay configuration")?;
        let log_path = self.dir.join(format!("{}.log", host.spec.name));
        let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let child = host
            .netns
            .command(overlay_bin.to_str().context("overlay binary path is not UTF-8")?)
            .args(["run", "--config"])
            .arg(config)
            .arg("--bpffs-dir")
            .arg(self.bpffs_dir())
            .arg("--run-dir")
            .arg(self.dir.join("run"))
            .args(args)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {} on {}", overlay_bin.display(), host.spec.name))?;
        let mut agent = Agent { host: host.spec.name.clone(), child: Some(child), log_path };
        agent.wait_until_forwarding(scaled(timeout))?;
        Ok(agent)
    }

    /// `overlay ARGS` in host `host`'s namespace with this lab's
    /// `--bpffs-dir` and `--run-dir`, as an operator on that host runs a
    /// subcommand (`stats`, `status`, `down`...).
    pub fn overlay_command(&self, host: &str, overlay_bin: &Path, args: &[&str]) -> anyhow::Result<std::process::Command> {
        let mut command = self.host(host).netns.command(overlay_bin.to_str().context("overlay binary path is not UTF-8")?);
        command.args(args).arg("--bpffs-dir").arg(self.bpffs_dir()).arg("--run-dir").arg(self.dir.join("run"));
        Ok(command)
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts.iter().find(|h| h.spec.name == name).unwrap_or_else(|| panic!("no host {name} in the lab"))
    }

    /// The container `name` on host `host`.
    pub fn container(&self, host: &str, name: &str) -> &Container {
        self.host(host)
            .containers
            .iter()
            .find(|c| c.spec.name == name)
            .unwrap_or_else(|| panic!("no container {name} on host {host}"))
    }

    /// This lab's own bpffs, where its agents pin their datapaths: labs run
    /// side by side and node names repeat across them, and `ip netns exec`
    /// gives each agent a private /sys (so not /sys/fs/bpf) but shares the
    /// lab's directory.
    pub fn bpffs_dir(&self) -> PathBuf {
        self.dir.join("bpffs")
    }

    /// Mounts the lab's bpffs (done by the agent starters; for running `overlay` by hand).
    pub fn mount_bpffs(&self) -> anyhow::Result<()> {
        let dir = self.bpffs_dir();
        if dir.exists() {
            return Ok(());
        }
        std::fs::create_dir_all(&dir)?;
        crate::netns::run("mount", &["-t", "bpf", "bpf", dir.to_str().context("lab path is not UTF-8")?]).map(|_| ())
    }

    /// Every running agent's output so far, for failure messages.
    pub fn agent_logs(&self) -> String {
        self.agents.iter().map(|a| format!("--- agent on {}:\n{}", a.host, a.log())).collect::<Vec<_>>().join("\n")
    }

    /// [`Lab::agent_logs`] and each running agent's `overlay stats` (its
    /// counters by reason): what a failure message needs to say where
    /// frames went.
    pub fn diagnostics(&self) -> String {
        let stats = |host: &str| -> String {
            let output = overlay_binary().and_then(|bin| Ok(self.overlay_command(host, &bin, &["stats", "--node", host])?.output()?));
            match output {
                Ok(output) => String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr),
                Err(error) => format!("(overlay stats failed: {error:#})"),
            }
        };
        let counters = self.agents.iter().map(|a| format!("--- overlay stats on {}:\n{}", a.host, stats(&a.host))).collect::<Vec<_>>().join("\n");
        format!("{}\n{counters}", self.agent_logs())
    }

    /// Stops every agent and returns their output (logs and exit counters).
    pub fn stop_agents(&mut self) -> Vec<(String, String)> {
        self.agents.drain(..).map(|mut agent| (agent.host.clone(), agent.stop())).collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for mut agent in self.agents.drain(..) {
            agent.stop();
        }
        // Deleting a namespace does not delete pins on bpffs: a datapath an
        // agent left pinned (killed, or --keep-datapath) would stay loaded
        // until this lab's bpffs is unmounted.
        if self.bpffs_dir().exists() {
            let _ = crate::netns::run("umount", &["-l", self.bpffs_dir().to_str().unwrap_or_default()]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Agent {
    fn wait_until_forwarding(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if log.contains("forwarding:") {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                bail!("overlay on {} exited ({status}) before forwarding:\n{log}", self.host);
            }
            if Instant::now() > deadline {
                bail!("overlay on {} did not report forwarding within {timeout:?}:\n{log}", self.host);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The agent's output so far.
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(&self.log_path) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    /// The process id of the agent.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL, as a crash: the agent cleans nothing up. Reaped at once, so
    /// its pid is gone when this returns.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal (e.g. `libc::SIGHUP`) to the running agent.
    pub fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: plain syscall.
            unsafe { libc::kill(child.id() as i32, signal) };
        }
    }

    /// SIGTERM, then SIGKILL after 10 s; returns the agent's whole output.
    pub fn stop(&mut self) -> String {
        if let Some(mut child) = self.child.take() {
            // SAFETY: plain syscall.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + scaled(Duration::from_secs(10));
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.log()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What an agent's exit report (its counters table) counts for a direction
/// and reason name, e.g. ("from-underlay", "forwarded"): (packets, bytes),
/// zero when the row is absent. Packets on the encap side are skbs, which
/// GSO makes up to 64 KB each: compare bytes for transfers.
pub fn reported_counter(agent_output: &str, direction: &str, reason: &str) -> (u64, u64) {
    let row = agent_output.lines().find(|line| line.starts_with(direction) && line.contains(&format!(" {reason} (")));
    let column = |n: usize| row.and_then(|line| line.split_whitespace().nth(n)?.parse().ok()).unwrap_or(0);
    (column(3), column(4))
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// How much longer than on this machine things may take: the factor in
/// `$OVERLAY_LAB_TIME_SCALE` (default 1). `cargo xtask vm-test` sets it in
/// a guest under QEMU's software emulation, where starting an agent takes
/// about 40 s (the verifier runs emulated) instead of about one.
pub fn scaled(timeout: Duration) -> Duration {
    let factor = std::env::var("OVERLAY_LAB_TIME_SCALE").ok().and_then(|f| f.parse::<u32>().ok()).unwrap_or(1).max(1);
    timeout * factor
}

/// Writes `what` with the time of day to stderr at once, past libtest's
/// capture, when `$OVERLAY_LAB_PROGRESS` is set: `cargo xtask vm-test` sets
/// it, so that a long lab in the guest shows on the console how far it got.
pub fn progress(what: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    if std::env::var_os("OVERLAY_LAB_PROGRESS").is_none() {
        return;
    }
    let seconds = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs() % 86_400;
    let line = format!("progress {:02}:{:02}:{:02} {what}\n", seconds / 3600, seconds / 60 % 60, seconds % 60);
    // Not eprintln!: libtest captures that until the test ends.
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// The `overlay` binary to test: `$OVERLAY_BIN`, else the workspace's
/// release build, else its debug build.
pub fn overlay_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("OVERLAY_BIN") {
        let path = PathBuf::from(path);
        return path.canonicalize().with_context(|| format!("OVERLAY_BIN={}", path.display()));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for profile in ["release", "debug"] {
        let candidate = root.join("target").join(profile).join("overlay");
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    bail!("no overlay binary: build with `cargo xtask build` or set OVERLAY_BIN")
}

/// The `overlay-cni` plugin to test: `$OVERLAY_CNI_BIN`, else the one
/// built beside the `overlay` binary (`cargo xtask build` builds both).
pub fn cni_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("OVERLAY_CNI_BIN") {
        let path = PathBuf::from(path);
        return path.canonicalize().with_context(|| format!("OVERLAY_CNI_BIN={}", path.display()));
    }
    let overlay = overlay_binary()?;
    let candidate = overlay.with_file_name("overlay-cni");
    if candidate.exists() {
        return Ok(candidate);
    }
    bail!("no overlay-cni binary beside {}: build with `cargo xtask build` or set OVERLAY_CNI_BIN", overlay.display())
}
