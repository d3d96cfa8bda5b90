//! Leaving nothing behind: every namespace, agent and helper process of a
//! run is removed on every exit path. Normal exits rely on the guards
//! (labs, [`ChildGuard`]); an interrupt runs no destructors, so what they
//! own is also registered here for the Ctrl-C handler.
use std::{
    process::{Child, Command, ExitStatus},
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use overlay_lab::netns;

/// What the interrupt handler has to remove.
struct Registry {
    /// Lab scopes: their namespaces are `ovl-<scope>-<pid>-*`.
    scopes: Vec<String>,
    /// Agents: stopped with SIGTERM, so they detach their programs.
    agents: Vec<u32>,
    /// Helpers such as iperf3: killed.
    helpers: Vec<u32>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry { scopes: Vec::new(), agents: Vec::new(), helpers: Vec::new() });

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    // A panic while holding the lock leaves plain lists behind: still usable.
    REGISTRY.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn register_scope(scope: &str) {
    registry().scopes.push(scope.to_owned());
}

pub fn register_agent(pid: u32) {
    registry().agents.push(pid);
}

/// Forgets everything registered (the guards have cleaned up).
pub fn clear() {
    let mut registry = registry();
    registry.scopes.clear();
    registry.agents.clear();
    registry.helpers.clear();
}

/// On Ctrl-C: kill helpers, stop agents (waiting until they have detached),
/// delete the namespaces of every registered scope, exit 130.
/// Installed once per process; later calls (the VM stage of `cargo xtask
/// test` after the benchmark harness) find it there.
pub fn install_interrupt_handler() -> anyhow::Result<()> {
    static INSTALLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if INSTALLED.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return Ok(());
    }
    ctrlc::set_handler(|| {
        eprintln!("\ninterrupted: stopping agents and helpers, removing every lab");
        let (scopes, agents, helpers) = {
            let registry = registry();
            (registry.scopes.clone(), registry.agents.clone(), registry.helpers.clone())
        };
        for pid in &helpers {
            // SAFETY: plain syscall.
            unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
        }
        for pid in &agents {
            // SAFETY: plain syscall.
            unsafe { libc::kill(*pid as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut running: Vec<u32> = agents.into_iter().chain(helpers).collect();
        while !running.is_empty() && Instant::now() < deadline {
            // SAFETY: plain syscall on our own children; a null status pointer is allowed.
            running.retain(|pid| unsafe { libc::waitpid(*pid as i32, std::ptr::null_mut(), libc::WNOHANG) } == 0);
            std::thread::sleep(Duration::from_millis(50));
        }
        for scope in &scopes {
            netns::remove_all_of_this_process(scope);
            let dir = std::env::temp_dir().join(format!("{}-{scope}-{}", netns::PREFIX, std::process::id()));
            // The lab's own bpffs is mounted in its directory (`Lab::bpffs_dir`),
            // which its guard unmounts; no guard runs here.
            let bpffs = dir.join("bpffs");
            if bpffs.exists() {
                let _ = netns::run("umount", &["-l", &bpffs.to_string_lossy()]);
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
        sweep_microbench_namespaces();
        std::process::exit(130);
    })
    .context("installing the interrupt handler")
}

/// Removes the micro-benchmark's namespaces once its test process is gone.
/// That process gets Ctrl-C too and dies without running its guards, maybe
/// after cargo (which does not wait for it) has exited; so wait a few
/// seconds for it to go, sweeping namespaces whose process has gone.
pub fn sweep_microbench_namespaces() {
    let prefix = format!("{}-{}-", netns::PREFIX, super::microbench::NETNS_SCOPE);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        netns::sweep_stale();
        let left = std::fs::read_dir("/var/run/netns")
            .map(|entries| entries.flatten().any(|e| e.file_name().to_string_lossy().starts_with(&prefix)))
            .unwrap_or(false);
        if !left || Instant::now() > deadline {
            sweep_microbench_pins();
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Removes the pinned maps of micro-benchmark processes that are gone
/// (`/sys/fs/bpf/overlay-microbench-<pid>`, see tests/tests/microbench.rs):
/// a killed test process does not run the guard that removes them.
fn sweep_microbench_pins() {
    let Ok(entries) = std::fs::read_dir("/sys/fs/bpf") else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("overlay-microbench-").and_then(|pid| pid.parse::<u32>().ok()) else { continue };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        // Unlinking a pin drops a reference; the maps go with the last one.
        let _ = std::fs::remove_dir_all(entry.path());
    }
}

/// A helper process, killed on drop (and by the interrupt handler).
pub struct ChildGuard {
    child: Option<Child>,
    name: String,
}

impl ChildGuard {
    pub fn spawn(command: &mut Command, name: &str) -> anyhow::Result<ChildGuard> {
        let child = command.spawn().with_context(|| format!("starting {name}"))?;
        registry().helpers.push(child.id());
        Ok(ChildGuard { child: Some(child), name: name.to_owned() })
    }

    /// Waits until the process exits, killing it after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let child = self.child.as_mut().context("process already reaped")?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().with_context(|| format!("waiting for {}", self.name))? {
                self.forget();
                return Ok(status);
            }
            if Instant::now() > deadline {
                self.kill();
                bail!("{} did not finish within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process's piped stdout, once.
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.as_mut()?.stdout.take()
    }

    /// Whether the process has exited.
    pub fn has_exited(&mut self) -> bool {
        self.child.as_mut().is_none_or(|child| child.try_wait().ok().flatten().is_some())
    }

    fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.forget();
    }

    fn forget(&mut self) {
        if let Some(child) = self.child.take() {
            registry().helpers.retain(|pid| *pid != child.id());
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}
