//! Real etcd servers for the registry tests: one member or a cluster on
//! free loopback ports, each with its own data directory, killed by pid and
//! removed on drop (so on every exit path of a test, panics included).
use std::{
    fs::{self, File},
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

/// Debian's `etcd-server` installs it here.
pub const ETCD: &str = "/usr/bin/etcd";

/// One member's fixed identity: its name, ports and data directory.
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    /// Plain-HTTP `/health` even when clients must use TLS.
    metrics_port: u16,
    dir: PathBuf,
    process: Option<Child>,
}

/// An etcd cluster of one or more members; every member is killed and
/// every data directory removed on drop.
pub struct EtcdCluster {
    members: Vec<Member>,
    tls: Option<ServerTls>,
    initial_cluster: String,
    token: String,
    root: PathBuf,
    /// The address every member listens on.
    host: std::net::Ipv4Addr,
    /// The network namespace the members run in (none: this one).
    netns: Option<String>,
}

/// TLS for the client port (PEM files): the server's certificate and key,
/// and the CA whose client certificates are required.
#[derive(Clone, Debug)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

/// Why a test cannot run here (printed, then the test returns).
pub fn missing() -> Option<String> {
    (!std::path::Path::new(ETCD).exists()).then(|| format!("{ETCD} is not installed (Debian package etcd-server)"))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0)).context("binding a free port")?.local_addr()?.port())
}

impl EtcdCluster {
    /// Starts `size` members named `<scope>-<i>` and waits until each
    /// answers `/health`. Data directories live under
    /// `$TMPDIR/ovl-<scope>-<pid>-etcd`.
    pub fn start(scope: &str, size: usize) -> anyhow::Result<EtcdCluster> {
        Self::start_with(scope, size, None)
    }

    /// One member listening on `host` inside the network namespace `netns`
    /// (e.g. on a lab's underlay, where the hosts' agents reach it).
    pub fn start_in_netns(scope: &str, netns: &str, host: std::net::Ipv4Addr) -> anyhow::Result<EtcdCluster> {
        Self::start_members_in_netns(scope, 1, netns, host)
    }

    /// `size` members listening on `host` (each on its own ports) inside
    /// the network namespace `netns`.
    pub fn start_members_in_netns(scope: &str, size: usize, netns: &str, host: std::net::Ipv4Addr) -> anyhow::Result<EtcdCluster> {
        // Ports probed free on the host's loopback can still be taken in
        // the namespace: etcd's own outgoing connections there draw local
        // ports from the same ephemeral range (seen in the 6.1 guest: the
        // peer port "already in use" in a namespace of the test's own).
        Self::with_retries(|| Self::try_start_at(scope, size, None, host, Some(netns.to_owned())))
    }

    /// As [`EtcdCluster::start`], with clients required to use TLS and a
    /// client certificate when `tls` is given.
    pub fn start_with(scope: &str, size: usize, tls: Option<ServerTls>) -> anyhow::Result<EtcdCluster> {
        Self::with_retries(|| Self::try_start(scope, size, tls.clone()))
    }

    /// A free port can be taken by someone else between our probe and
    /// etcd's bind: then a member exits at once, and `start` is tried again
    /// with new ports (three times in all).
    fn with_retries(start: impl Fn() -> anyhow::Result<EtcdCluster>) -> anyhow::Result<EtcdCluster> {
        let mut attempt = 1;
        loop {
            match start() {
                Ok(cluster) => return Ok(cluster),
                Err(error) if attempt < 3 && error.to_string().contains("exited") => {
                    println!("etcd did not start ({error}); trying other ports");
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    fn try_start(scope: &str, size: usize, tls: Option<ServerTls>) -> anyhow::Result<EtcdCluster> {
        Self::try_start_at(scope, size, tls, std::net::Ipv4Addr::LOCALHOST, None)
    }

    fn try_start_at(
        scope: &str,
        size: usize,
        tls: Option<ServerTls>,
        host: std::net::Ipv4Addr,
        netns: Option<String>,
    ) -> anyhow::Result<EtcdCluster> {
        let root = std::env::temp_dir().join(format!("{}-{scope}-{}-etcd", crate::netns::PREFIX, std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        let mut members = Vec::new();
        for index in 0..size {
            members.push(Member {
                name: format!("{scope}-{index}"),
                client_port: free_port()?,
                peer_port: free_port()?,
                metrics_port: free_port()?,
                dir: root.join(format!("member-{index}")),
                process: None,
            });
        }
        let initial_cluster =
            members.iter().map(|member| format!("{}=http://{host}:{}", member.name, member.peer_port)).collect::<Vec<_>>().join(",");
        // From here on the guard owns what was started: an error drops it,
        // which kills the members and removes the directory.
        let mut cluster = EtcdCluster { members, tls, initial_cluster, token: format!("{scope}-{}", std::process::id()), root, host, netns };
        for index in 0..size {
            cluster.spawn(index)?;
        }
        for index in 0..size {
            cluster.wait_healthy(index)?;
        }
        Ok(cluster)
    }

    /// Client URLs of every member (`http://127.0.0.1:PORT`).
    pub fn client_urls(&self) -> Vec<String> {
        (0..self.members.len()).map(|index| self.client_url(index)).collect()
    }

    pub fn client_url(&self, index: usize) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.host, self.members[index].client_port)
    }

    pub fn size(&self) -> usize {
        self.members.len()
    }

    fn spawn(&mut self, index: usize) -> anyhow::Result<()> {
        let member = &self.members[index];
        let log = File::create(self.root.join(format!("member-{index}.log")))?;
        let client = self.client_url(index);
        let peer = format!("http://{}:{}", self.host, member.peer_port);
        let metrics = format!("http://{}:{}", self.host, member.metrics_port);
        let state = if member.dir.exists() { "existing" } else { "new" };
        // `ip netns exec` execs etcd: the child's pid is etcd's.
        let mut command = match &self.netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns, ETCD]);
                command
            }
            None => Command::new(ETCD),
        };
        if let Some(tls) = &self.tls {
            command.arg("--cert-file").arg(&tls.cert).arg("--key-file").arg(&tls.key);
            command.arg("--client-cert-auth").arg("--trusted-ca-file").arg(&tls.client_ca);
        }
        let child = command
            .args(["--logger=zap", "--name", &member.name])
            .arg("--data-dir")
            .arg(&member.dir)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster, "--initial-cluster-state", state])
            .args(["--initial-cluster-token", &self.token])
            .args(["--listen-metrics-urls", &metrics])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {ETCD}"))?;
        self.members[index].process = Some(child);
        Ok(())
    }

    /// Waits until the member answers `{"health":"true"}` on its client
    /// port: 30 s, stretched by the lab's time scale (under emulation and
    /// load etcd took longer to start).
    pub fn wait_healthy(&mut self, index: usize) -> anyhow::Result<()> {
        let patience = crate::lab::scaled(Duration::from_secs(30));
        let deadline = Instant::now() + patience;
        let port = self.members[index].metrics_port;
        loop {
            if let Some(process) = self.members[index].process.as_mut()
                && let Some(status) = process.try_wait()?
            {
                let log = fs::read_to_string(self.root.join(format!("member-{index}.log"))).unwrap_or_default();
                bail!("etcd member {index} exited ({status}): {}", log.lines().rev().take(5).collect::<Vec<_>>().join("\n"));
            }
            let healthy = match &self.netns {
                Some(netns) => {
                    let (path, host) = (format!("/var/run/netns/{netns}"), self.host);
                    thread::spawn(move || -> anyhow::Result<bool> {
                        crate::netns::enter(&File::open(&path).with_context(|| format!("opening {path}"))?)?;
                        health(host, port)
                    })
                    .join()
                    .map_err(|_| anyhow::anyhow!("health check thread panicked"))?
                }
                None => health(self.host, port),
            };
            if healthy.unwrap_or(false) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("etcd member {index} on port {port} not healthy after {} s", patience.as_secs());
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills a member (SIGKILL, by pid) and reaps it; its data stays.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut process) = self.members[index].process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// Starts a killed member again on its data directory.
    pub fn restart(&mut self, index: usize) -> anyhow::Result<()> {
        self.spawn(index)
    }

    /// Removes a killed member's data: restarted, it is an empty etcd (of a
    /// one-member cluster), as after a lost disk.
    pub fn wipe(&mut self, index: usize) -> anyhow::Result<()> {
        assert!(self.members[index].process.is_none(), "wipe needs the member killed first");
        fs::remove_dir_all(&self.members[index].dir).context("removing the member's data")?;
        Ok(())
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for index in 0..self.members.len() {
            self.kill(index);
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// GET /health over plain HTTP/1.0.
fn health(host: std::net::Ipv4Addr, port: u16) -> anyhow::Result<bool> {
    let mut stream = TcpStream::connect_timeout(&(host, port).into(), Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer.contains("\"health\":\"true\""))
}
