//! A lab for the CNI plugin and the runtimes that call it: overlay hosts in
//! cluster mode (one etcd on the underlay, so endpoints and addresses are
//! learned across hosts as in production), no container built by the lab
//! (the plugin builds them), one network created through the API, and the
//! plugin invoked as a runtime does: CNI_* variables and JSON on stdin.
use std::{
    io::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::Context as _;

use crate::{
    etcd::EtcdCluster,
    lab::{HostKind, HostSpec, Lab, LabSpec, overlay_binary},
};

/// etcd's address on the lab's underlay bridge.
pub const ETCD_ADDRESS: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
/// The network the lab creates.
pub const NETWORK: &str = "blue";
pub const SUBNET: &str = "10.10.0.0/24";
pub const VNI: u32 = 100;

pub struct CniLab {
    // Field order is drop order: etcd goes first, as in cluster.rs; the
    // agents keep forwarding without it while they stop.
    pub etcd: EtcdCluster,
    pub lab: Lab,
}

impl CniLab {
    /// Hosts `h1`.. `h<hosts>` with agents running against one etcd, and
    /// network [`NETWORK`] created on h1 (the others learn it from etcd).
    pub fn start(scope: &str, hosts: usize) -> anyhow::Result<CniLab> {
        Self::start_with(scope, hosts, hosts)
    }

    /// As [`CniLab::start`], with agents on the first `running` hosts only
    /// (the others' come and go in the test).
    pub fn start_with(scope: &str, hosts: usize, running: usize) -> anyhow::Result<CniLab> {
        let host = |i: usize| HostSpec { name: format!("h{}", i + 1), kind: HostKind::Overlay, containers: Vec::new() };
        let mut lab = Lab::build(LabSpec { scope: scope.into(), vxlan_port: 4789, hosts: (0..hosts).map(host).collect() })?;
        for host in &lab.hosts {
            // The [node] table only: peers come from etcd.
            let path = host.config_path.clone().context("overlay host without a file")?;
            let text = std::fs::read_to_string(&path)?;
            let end = text.find("[[").unwrap_or(text.len());
            std::fs::write(&path, &text[..end])?;
        }
        let bridge = format!("br{:x}", std::process::id());
        lab.wire.ip(&["addr", "add", &format!("{ETCD_ADDRESS}/24"), "dev", &bridge])?;
        let etcd = EtcdCluster::start_in_netns(scope, lab.wire.name(), ETCD_ADDRESS)?;
        let url = etcd.client_url(0);
        for index in 0..running {
            let agent = lab.start_agent_with_args(index, &overlay_binary()?, &["--etcd", &url, "--etcd-lease-ttl", "5"])?;
            lab.agents.push(agent);
        }
        let lab = CniLab { etcd, lab };
        let output = lab.overlay("h1", &["network", "create", NETWORK, "--vni", &VNI.to_string(), "--subnet", SUBNET])?;
        anyhow::ensure!(output.status.success(), "creating network {NETWORK}: {}", String::from_utf8_lossy(&output.stderr));
        for index in 1..running {
            let node = format!("h{}", index + 1);
            lab.wait_for_network(&node)?;
        }
        Ok(lab)
    }

    /// The agent's API socket on `host`.
    pub fn socket(&self, host: &str) -> PathBuf {
        self.lab.dir.join("run").join(format!("{host}.sock"))
    }

    /// `overlay ARGS --socket <host's socket>` on `host`, as an operator runs it.
    pub fn overlay(&self, host: &str, args: &[&str]) -> anyhow::Result<std::process::Output> {
        let binary = overlay_binary()?;
        let mut command = self.lab.host(host).netns.command(binary.to_str().context("overlay path is not UTF-8")?);
        Ok(command.args(args).arg("--socket").arg(self.socket(host)).output()?)
    }

    /// Waits until `host`'s agent knows [`NETWORK`] (learned from etcd).
    fn wait_for_network(&self, host: &str) -> anyhow::Result<()> {
        let patience = crate::lab::scaled(std::time::Duration::from_secs(30));
        let deadline = std::time::Instant::now() + patience;
        loop {
            let output = self.overlay(host, &["network", "ls"])?;
            if String::from_utf8_lossy(&output.stdout).lines().any(|line| line.split_whitespace().next() == Some(NETWORK)) {
                return Ok(());
            }
            anyhow::ensure!(std::time::Instant::now() < deadline, "{host} did not learn network {NETWORK} from etcd in {} s\n{}", patience.as_secs(), self.lab.agent_logs());
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// The plugin's network configuration for `host` (the `cniVersion` given).
    pub fn conf(&self, host: &str, cni_version: &str) -> serde_json::Value {
        serde_json::json!({
            "cniVersion": cni_version,
            "name": NETWORK,
            "type": "overlay-cni",
            "agent_socket": self.socket(host),
        })
    }
}

/// What one invocation of the plugin gave: its exit code and stdout (JSON
/// when there is any), and stderr.
#[derive(Debug)]
pub struct Invocation {
    pub code: i32,
    pub stdout: serde_json::Value,
    pub stderr: String,
}

impl Invocation {
    /// The CNI error code of a failed invocation (0 when it succeeded).
    pub fn error_code(&self) -> u64 {
        if self.code == 0 { 0 } else { self.stdout["code"].as_u64().unwrap_or(u64::MAX) }
    }
}

/// The CNI_* variables of an invocation; unset ones are not passed.
#[derive(Clone, Debug, Default)]
pub struct CniEnv {
    pub command: String,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: Option<String>,
    pub path: Option<String>,
}

impl CniEnv {
    /// The variables of an attachment command for a container.
    pub fn attachment(command: &str, container_id: &str, netns: &str, ifname: &str) -> CniEnv {
        CniEnv {
            command: command.into(),
            container_id: Some(container_id.into()),
            netns: Some(netns.into()),
            ifname: Some(ifname.into()),
            args: None,
            path: Some("/opt/cni/bin".into()),
        }
    }
}

/// Runs `plugin` with `env` and `stdin`, as a runtime does (nothing of the
/// test's own CNI_* environment leaks in).
pub fn invoke(plugin: &Path, env: &CniEnv, stdin: &str) -> anyhow::Result<Invocation> {
    let mut command = Command::new(plugin);
    for key in ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH"] {
        command.env_remove(key);
    }
    command.env("CNI_COMMAND", &env.command);
    let optional = [
        ("CNI_CONTAINERID", &env.container_id),
        ("CNI_NETNS", &env.netns),
        ("CNI_IFNAME", &env.ifname),
        ("CNI_ARGS", &env.args),
        ("CNI_PATH", &env.path),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            command.env(key, value);
        }
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", plugin.display()))?;
    // A plugin may answer without reading stdin (a bad variable): as a
    // runtime, take its answer rather than the broken pipe.
    match child.stdin.take().context("plugin stdin")?.write_all(stdin.as_bytes()) {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other?,
    }
    let output = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(Invocation {
        code: output.status.code().unwrap_or(-1),
        stdout: if text.trim().is_empty() { serde_json::Value::Null } else { serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text.into_owned())) },
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}
