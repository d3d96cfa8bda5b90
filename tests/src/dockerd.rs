//! A Docker daemon per lab host, for the tests of the Docker plugin: its
//! own data root, exec root, pidfile, socket and cgroup parent, inside the
//! host's network namespace, touching nothing of the machine's networking
//! (no iptables, no bridge, no forwarding, no proxy). Stopped by pid, with
//! its containers, mounts and cgroups removed, on drop and on Ctrl-C.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::netns::{InterruptCleanup, Netns, on_interrupt};

/// The Docker 20.10 client of Debian's docker.io: `/usr/local/bin/docker`
/// (a newer client alone) may shadow it on PATH.
pub const DOCKER: &str = "/usr/bin/docker";
pub const DOCKERD: &str = "/usr/sbin/dockerd";
/// busybox-static: the containers' whole userland.
pub const BUSYBOX: &str = "/bin/busybox";
/// Where dockerd finds plugin sockets.
pub const PLUGIN_DIR: &str = "/run/docker/plugins";
/// dockerd's flags that keep it off the machine's networking: no iptables
/// rules, no bridge, no forwarding or masquerading, no userland proxy.
pub const DAEMON_FLAGS: &[&str] =
    &["--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false", "--bridge=none", "--userland-proxy=false"];

/// Why the Docker tests cannot run here (printed, then the test returns).
pub fn missing() -> Option<String> {
    for (path, package) in [(DOCKERD, "docker.io"), (DOCKER, "docker.io"), (BUSYBOX, "busybox-static")] {
        if !Path::new(path).exists() {
            return Some(format!("{path} is not installed (Debian package {package})"));
        }
    }
    None
}

/// What tearing a daemon down needs; cloned into the interrupt handler.
#[derive(Clone, Debug)]
struct Teardown {
    socket: PathBuf,
    dir: PathBuf,
    pidfile: PathBuf,
    cgroup_parent: String,
}

/// A running dockerd.
pub struct Dockerd {
    pub host: String,
    child: Option<Child>,
    teardown: Teardown,
    log: PathBuf,
    _interrupt: InterruptCleanup,
}

impl Dockerd {
    /// Starts dockerd inside `netns` with everything under `dir`, and waits
    /// until it answers.
    pub fn start(netns: &Netns, dir: &Path) -> anyhow::Result<Dockerd> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let teardown = Teardown {
            socket: dir.join("docker.sock"),
            dir: dir.to_owned(),
            pidfile: dir.join("docker.pid"),
            // Its containers' cgroups go under this, which teardown removes.
            cgroup_parent: netns.name().to_owned(),
        };
        let log = dir.join("dockerd.log");
        let log_file = std::fs::File::create(&log)?;
        // nsenter, not `ip netns exec`: that one remounts /sys, which hides
        // the cgroup hierarchies dockerd needs ("Devices cgroup isn't mounted").
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", netns.name()))
            .arg(DOCKERD)
            .args(DAEMON_FLAGS)
            .args(["--storage-driver", "overlay2", "--exec-opt", "native.cgroupdriver=cgroupfs"])
            .arg("--cgroup-parent")
            .arg(format!("/{}", teardown.cgroup_parent))
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(&teardown.pidfile)
            .arg("-H")
            .arg(format!("unix://{}", teardown.socket.display()))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("starting dockerd")?;
        let interrupt_teardown = teardown.clone();
        let pid = child.id();
        let daemon = Dockerd {
            host: netns.name().to_owned(),
            child: Some(child),
            teardown,
            log,
            _interrupt: on_interrupt(move || tear_down(&interrupt_teardown, Some(pid))),
        };
        let deadline = Instant::now() + crate::lab::scaled(Duration::from_secs(60));
        loop {
            if daemon.docker_output(&["version", "--format", "{{.Server.Version}}"]).is_ok_and(|o| o.status.success()) {
                return Ok(daemon);
            }
            if Instant::now() > deadline {
                bail!("dockerd in {} did not answer within 60 s:\n{}", netns.name(), daemon.log());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `docker ARGS` against this daemon, to spawn.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(DOCKER);
        command.args(args).env("DOCKER_HOST", format!("unix://{}", self.teardown.socket.display())).stdin(Stdio::null());
        command
    }

    /// `docker ARGS` against this daemon, whatever its exit status.
    pub fn docker_output(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.command(args).output().with_context(|| format!("running docker {}", args.join(" ")))
    }

    /// `docker ARGS`, failing with its stderr; returns its stdout, trimmed.
    pub fn docker(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = self.docker_output(args)?;
        if !output.status.success() {
            bail!("`docker {}` on {} failed ({}): {}", args.join(" "), self.host, output.status, String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// Imports the busybox rootfs at `rootfs` (see [`busybox_rootfs`]) as `image`.
    pub fn import(&self, rootfs: &Path, image: &str) -> anyhow::Result<()> {
        let mut tar = Command::new("tar").arg("-C").arg(rootfs).args(["-c", "."]).stdout(Stdio::piped()).spawn().context("running tar")?;
        let output = Command::new(DOCKER)
            .args(["import", "-", image])
            .env("DOCKER_HOST", format!("unix://{}", self.teardown.socket.display()))
            .stdin(tar.stdout.take().context("tar's stdout")?)
            .output()
            .context("running docker import")?;
        // Reaped, not left a zombie for the rest of the run.
        let _ = tar.wait();
        if !output.status.success() {
            bail!("docker import on {} failed: {}", self.host, String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(())
    }

    /// The daemon's socket (`DOCKER_HOST=unix://...`).
    pub fn socket(&self) -> &Path {
        &self.teardown.socket
    }

    /// The daemon's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Removes every container (so that Docker tells the network plugin:
    /// Leave, DeleteEndpoint), then stops the daemon and removes its mounts,
    /// cgroups and directory.
    pub fn stop(&mut self) {
        let pid = self.child.as_ref().map(|c| c.id());
        tear_down(&self.teardown, pid);
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `docker ARGS` for the teardown: given up after 60 s (a daemon whose
/// plugin went away retries its calls for a long time).
fn docker_at(socket: &Path, args: &[&str]) -> Option<String> {
    let mut child = Command::new(DOCKER)
        .args(args)
        .env("DOCKER_HOST", format!("unix://{}", socket.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + crate::lab::scaled(Duration::from_secs(60));
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    let output = child.wait_with_output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Everything [`Dockerd::stop`] does; also what an interrupted run does.
fn tear_down(teardown: &Teardown, pid: Option<u32>) {
    if let Some(ids) = docker_at(&teardown.socket, &["ps", "-aq"]) {
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids);
            let _ = docker_at(&teardown.socket, &args);
        }
    }
    if let Some(pid) = pid.or_else(|| std::fs::read_to_string(&teardown.pidfile).ok().and_then(|p| p.trim().parse().ok())) {
        // SAFETY: plain syscalls on our own child.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid) {
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
    // dockerd leaves the nsfs bind mount of each sandbox under its exec root
    // (and overlay mounts under its data root if killed): deepest first.
    let mut mounts = mounts_under(&teardown.dir);
    mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    for mount in mounts {
        let _ = Command::new("umount").arg("-l").arg(&mount).output();
    }
    for controller in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
        let parent = controller.path().join(&teardown.cgroup_parent);
        if parent.is_dir() {
            for child in std::fs::read_dir(&parent).into_iter().flatten().flatten().filter(|e| e.path().is_dir()) {
                let _ = std::fs::remove_dir(child.path());
            }
            let _ = std::fs::remove_dir(&parent);
        }
    }
    let _ = std::fs::remove_dir_all(&teardown.dir);
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(true)
}

/// Mount points at or below `dir` (from /proc/self/mountinfo).
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return Vec::new() };
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|point| PathBuf::from(point.replace("\\040", " ")))
        .filter(|point| point.starts_with(dir))
        .collect()
}

/// A busybox-static rootfs in `dir`: `/bin/busybox` and a link per applet.
pub fn busybox_rootfs(dir: &Path) -> anyhow::Result<PathBuf> {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin"))?;
    std::fs::create_dir_all(rootfs.join("tmp"))?;
    std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).context("copying busybox")?;
    let list = crate::netns::run(BUSYBOX, &["--list"])?;
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace().filter(|a| *a != "busybox") {
        let link = rootfs.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", &link)?;
        }
    }
    Ok(rootfs)
}

/// A plugin socket some agent serves, removed on drop and on Ctrl-C (an
/// agent killed with SIGKILL leaves it).
pub struct PluginSocket {
    pub name: String,
    pub path: PathBuf,
    _interrupt: InterruptCleanup,
}

impl PluginSocket {
    /// `overlay-<scope>-<pid>-<role>`, unique to this run.
    pub fn new(scope: &str, role: &str) -> PluginSocket {
        let name = format!("overlay-{scope}-{}-{role}", std::process::id());
        let path = Path::new(PLUGIN_DIR).join(format!("{name}.sock"));
        let removed = path.clone();
        PluginSocket { name, path, _interrupt: on_interrupt(move || { let _ = std::fs::remove_file(&removed); }) }
    }
}

impl Drop for PluginSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
