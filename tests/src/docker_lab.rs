//! A Docker lab: lab hosts whose files hold only their `[node]` table, in
//! cluster mode with one etcd on the underlay (or without it), each running
//! `overlay run --docker-plugin` and its own dockerd ([`Dockerd`]) with the
//! busybox-static image imported. Used by tests/tests/docker.rs and by
//! `cargo xtask demo`, which sets [`DockerLab::echo`] to print every
//! command it runs and what came back, as a walkthrough.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::{
    dockerd::{self, Dockerd, PluginSocket},
    etcd::EtcdCluster,
    lab::{HostKind, HostSpec, Lab, LabSpec},
};

/// etcd's address on the lab's underlay bridge.
pub const ETCD_ADDRESS: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
/// The image every container runs: a busybox-static rootfs.
pub const IMAGE: &str = "overlay-busybox";
/// The TCP port on which [`DockerLab::run_container`]'s containers serve their name.
pub const NAME_PORT: u16 = 7000;

/// A lab host with its agent's plugin and its dockerd.
pub struct DockerHost {
    pub name: String,
    pub plugin: PluginSocket,
    pub docker: Dockerd,
}

/// Everything of one Docker lab; fields drop in order: the daemons first
/// (their containers leave through the plugins while the agents still
/// run), then the agents and namespaces, then etcd.
pub struct DockerLab {
    pub hosts: Vec<DockerHost>,
    pub lab: Lab,
    pub etcd: Option<EtcdCluster>,
    pub overlay_bin: PathBuf,
    /// Print every command (`h1$ docker ...`) and its output.
    pub echo: bool,
}

impl DockerLab {
    /// Hosts named `hosts`, etcd on the underlay when `cluster`, an agent
    /// with its plugin and a dockerd with [`IMAGE`] on every host.
    pub fn start(scope: &str, hosts: &[&str], cluster: bool, overlay_bin: &Path, echo: bool) -> anyhow::Result<DockerLab> {
        if let Some(why) = dockerd::missing() {
            bail!("{why}");
        }
        let spec = |name: &&str| HostSpec { name: (*name).into(), kind: HostKind::Overlay, containers: Vec::new() };
        let lab = Lab::build(LabSpec { scope: scope.into(), vxlan_port: 4789, hosts: hosts.iter().map(spec).collect() })
            .context("building the lab")?;
        // Only the node's own settings: networks and peers come from etcd and Docker.
        for host in &lab.hosts {
            let path = host.config_path.clone().context("an overlay host has a file")?;
            let text = std::fs::read_to_string(&path)?;
            let end = text.find("[[").unwrap_or(text.len());
            std::fs::write(&path, &text[..end])?;
        }
        let etcd = if cluster {
            let bridge = format!("br{:x}", std::process::id());
            lab.wire.ip(&["addr", "add", &format!("{ETCD_ADDRESS}/24"), "dev", &bridge]).context("addressing the underlay bridge")?;
            Some(EtcdCluster::start_in_netns(scope, lab.wire.name(), ETCD_ADDRESS).context("starting etcd on the underlay")?)
        } else {
            None
        };
        let mut docker_lab = DockerLab { hosts: Vec::new(), lab, etcd, overlay_bin: overlay_bin.to_owned(), echo };
        if echo && let Some(etcd) = &docker_lab.etcd {
            println!("   etcd {} on the underlay (namespace {}): {}", etcd_version(), docker_lab.lab.wire.name(), etcd.client_url(0));
        }
        let rootfs = dockerd::busybox_rootfs(&docker_lab.lab.dir).context("making the busybox rootfs")?;
        for index in 0..docker_lab.lab.hosts.len() {
            let name = docker_lab.lab.hosts[index].spec.name.clone();
            let plugin = PluginSocket::new(scope, &name);
            docker_lab.start_agent(index, &plugin.name)?;
            let docker = Dockerd::start(&docker_lab.lab.hosts[index].netns, &docker_lab.lab.dir.join(format!("docker-{name}")))
                .with_context(|| format!("starting dockerd on {name}"))?;
            if echo {
                println!("{name}$ dockerd {} --data-root ... --exec-root ... -H unix://{}", dockerd::DAEMON_FLAGS.join(" "), docker.socket().display());
                println!("{name}$ tar -C rootfs -c . | docker import - {IMAGE}   # rootfs: busybox-static and its applet links");
            }
            docker.import(&rootfs, IMAGE).with_context(|| format!("importing the busybox image on {name}"))?;
            docker_lab.hosts.push(DockerHost { name, plugin, docker });
        }
        Ok(docker_lab)
    }

    /// Starts `overlay run --docker-plugin PLUGIN [--etcd URL]` on host `index`.
    pub fn start_agent(&mut self, index: usize, plugin: &str) -> anyhow::Result<()> {
        let mut args = vec!["--docker-plugin".to_owned(), plugin.to_owned()];
        if let Some(etcd) = &self.etcd {
            args.extend(["--etcd".to_owned(), etcd.client_url(0)]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let host = self.lab.hosts[index].spec.name.clone();
        if self.echo {
            println!("{host}$ overlay run --config {host}.toml {}", args.join(" "));
        }
        let agent = self
            .lab
            .start_agent_with_args(index, &self.overlay_bin, &args)
            .with_context(|| format!("starting the agent on {host}\n{}", self.lab.agent_logs()))?;
        if self.echo && let Some(line) = agent.log().lines().find(|l| l.contains("forwarding:")) {
            println!("   {}", line.split("] ").last().unwrap_or(line));
        }
        self.lab.agents.push(agent);
        Ok(())
    }

    /// `docker ARGS` on `host`, failing with its stderr; its stdout, trimmed.
    pub fn docker(&self, host: usize, args: &[&str]) -> anyhow::Result<String> {
        self.show(host, "docker", args);
        let result = self.hosts[host].docker.docker(args);
        if self.echo {
            match &result {
                Ok(text) => print_indented(text),
                Err(error) => print_indented(&format!("{error:#}")),
            }
        }
        result
    }

    /// `docker ARGS` on `host` that must fail: its stderr.
    pub fn docker_refused(&self, host: usize, args: &[&str]) -> anyhow::Result<String> {
        self.show(host, "docker", args);
        let output = self.hosts[host].docker.docker_output(args)?;
        if output.status.success() {
            bail!("expected `docker {}` on {} to fail, it succeeded", args.join(" "), self.hosts[host].name);
        }
        let text = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        if self.echo {
            print_indented(&text);
        }
        Ok(text)
    }

    /// `docker network create` of this host's plugin (network and IPAM driver).
    pub fn create_network(&self, host: usize, name: &str, subnet: &str, extra: &[&str]) -> anyhow::Result<String> {
        let plugin = self.hosts[host].plugin.name.clone();
        let mut args = vec!["network", "create", "-d", &plugin, "--ipam-driver", &plugin, "--subnet", subnet];
        args.extend_from_slice(extra);
        args.push(name);
        self.docker(host, &args)
    }

    /// Starts a container that serves its name on TCP [`NAME_PORT`] (and sleeps).
    pub fn run_container(&self, host: usize, name: &str, network: &str) -> anyhow::Result<String> {
        let serve = format!("while true; do echo {name} | nc -l -p {NAME_PORT}; done");
        self.docker(host, &["run", "-d", "--name", name, "--network", network, IMAGE, "sh", "-c", &serve])
    }

    /// The container's address in `network`.
    pub fn address(&self, host: usize, container: &str, network: &str) -> anyhow::Result<Ipv4Addr> {
        let format = format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}");
        let text = self.docker(host, &["inspect", "-f", &format, container])?;
        text.parse().with_context(|| format!("{container}'s address in {network}: {text:?}"))
    }

    /// Whether `container` on `host` gets an answer to one ping of `target` (never echoed).
    pub fn pings(&self, host: usize, container: &str, target: Ipv4Addr) -> bool {
        let output = self.hosts[host].docker.docker_output(&["exec", container, "ping", "-c", "1", "-W", "1", &target.to_string()]);
        output.is_ok_and(|o| o.status.success())
    }

    /// `count` pings of `target` from `container`: (transmitted, received).
    pub fn ping(&self, host: usize, container: &str, target: Ipv4Addr, count: u32) -> anyhow::Result<(u32, u32)> {
        let args = ["exec", container, "ping", "-c", &count.to_string(), "-i", "0.2", "-W", "1", &target.to_string()];
        self.show(host, "docker", &args);
        let output = self.hosts[host].docker.docker_output(&args)?;
        let text = String::from_utf8_lossy(&output.stdout);
        let summary = text.lines().find(|l| l.contains("packets transmitted")).with_context(|| format!("no ping summary:\n{text}"))?;
        if self.echo {
            print_indented(summary);
        }
        let mut numbers = summary.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).map(|n| n.parse::<u32>());
        match (numbers.next(), numbers.next()) {
            (Some(Ok(sent)), Some(Ok(received))) => Ok((sent, received)),
            _ => bail!("unreadable ping summary {summary:?}"),
        }
    }

    /// Who answers on `target`:[`NAME_PORT`] for `container` (empty: nobody).
    pub fn who_is_at(&self, host: usize, container: &str, target: Ipv4Addr) -> anyhow::Result<String> {
        let command = format!("sleep 3 | nc -w 2 {target} {NAME_PORT}");
        let args = ["exec", container, "sh", "-c", &command];
        let output = self.hosts[host].docker.docker_output(&args)?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// Sends `bytes` random bytes over TCP (busybox nc) from `from` to
    /// `to` at `to_address` and returns the MD5 digests (sent, received).
    pub fn transfer(&self, from: (usize, &str), to: (usize, &str), to_address: Ipv4Addr, bytes: u64) -> anyhow::Result<(String, String)> {
        self.docker(to.0, &["exec", "-d", to.1, "sh", "-c", "rm -f /tmp/received; sleep 3600 | nc -l -p 5000 | md5sum > /tmp/received"])?;
        let send = format!("head -c {bytes} /dev/urandom > /tmp/blob && md5sum < /tmp/blob && sleep 1 && nc {to_address} 5000 < /tmp/blob");
        let sent = self.docker(from.0, &["exec", from.1, "sh", "-c", &send])?;
        let mut received = String::new();
        self.wait_for("the receiver's checksum of what arrived", || {
            received = self.hosts[to.0].docker.docker(&["exec", to.1, "cat", "/tmp/received"]).unwrap_or_default();
            !received.is_empty()
        })?;
        self.docker(to.0, &["exec", to.1, "cat", "/tmp/received"])?;
        let digest = |text: &str| text.split_whitespace().next().unwrap_or_default().to_owned();
        Ok((digest(&sent), digest(&received)))
    }

    /// `overlay ARGS` on host `host`, with this lab's run dir (and bpffs
    /// dir, for the commands that read the pinned datapath); shown without them.
    pub fn overlay(&self, host: usize, args: &[&str]) -> anyhow::Result<String> {
        self.show(host, "overlay", args);
        let name = self.lab.hosts[host].spec.name.clone();
        let mut command = self.lab.hosts[host].netns.command(self.overlay_bin.to_str().context("overlay binary path is not UTF-8")?);
        command.args(args);
        match args.first().copied() {
            Some("network" | "endpoint") => {
                command.arg("--run-dir").arg(self.lab.dir.join("run"));
            }
            Some("cluster") => {}
            _ => {
                command.arg("--bpffs-dir").arg(self.lab.bpffs_dir()).arg("--run-dir").arg(self.lab.dir.join("run"));
            }
        }
        let output = command.output().context("running overlay")?;
        if !output.status.success() {
            bail!("`overlay {}` on {name} failed ({}): {}", args.join(" "), output.status, String::from_utf8_lossy(&output.stderr).trim());
        }
        let text = String::from_utf8_lossy(&output.stdout).trim_end().to_owned();
        if self.echo {
            print_indented(&text);
        }
        Ok(text)
    }

    /// The agent's API socket on `host`.
    pub fn api_socket(&self, host: usize) -> PathBuf {
        self.lab.dir.join("run").join(format!("{}.sock", self.hosts[host].name))
    }

    /// The host's links whose names start with `prefix` (the plugin's veths are `dk...`).
    pub fn links(&self, host: usize, prefix: &str) -> anyhow::Result<Vec<String>> {
        let output = self.lab.hosts[host].netns.ip(&["-o", "link", "show"])?;
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.split(": ").nth(1))
            .map(|name| name.split('@').next().unwrap_or(name).to_owned())
            .filter(|name| name.starts_with(prefix))
            .collect())
    }

    /// The agents' logs and the end of each dockerd's, for failure messages.
    pub fn logs(&self) -> String {
        let daemons: String = self.hosts.iter().map(|h| format!("--- dockerd on {}:\n{}\n", h.name, tail(&h.docker.log(), 30))).collect();
        format!("{}\n{daemons}", self.lab.agent_logs())
    }

    /// Polls `condition` every 250 ms for up to 60 s.
    pub fn wait_for(&self, what: &str, mut condition: impl FnMut() -> bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + crate::lab::scaled(Duration::from_secs(60));
        while !condition() {
            if Instant::now() > deadline {
                bail!("{what}: not after 60 s\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Ok(())
    }

    fn show(&self, host: usize, program: &str, args: &[&str]) {
        if self.echo {
            println!("{}$ {program} {}", self.hosts.get(host).map_or_else(|| self.lab.hosts[host].spec.name.as_str(), |h| h.name.as_str()), shell_words(args));
        }
    }
}

/// `args` as a person would type them: quoted where the shell needs it.
pub fn shell_words(args: &[&str]) -> String {
    let quote = |arg: &&str| {
        if !arg.is_empty() && arg.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c)) {
            (*arg).to_owned()
        } else {
            format!("'{}'", arg.replace('\'', r"'\''"))
        }
    };
    args.iter().map(quote).collect::<Vec<_>>().join(" ")
}

fn print_indented(text: &str) {
    for line in text.lines() {
        println!("   {line}");
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn etcd_version() -> String {
    let output = std::process::Command::new(crate::etcd::ETCD).arg("--version").output();
    output
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().find_map(|l| l.strip_prefix("etcd Version: ").map(str::to_owned)))
        .unwrap_or_default()
}
