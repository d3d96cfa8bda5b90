//! Network namespaces as RAII guards, and running code inside one.
//!
//! Names carry a prefix, the test or demo name and the process id, so
//! concurrent runs never collide and leftovers of a killed run can be found
//! and removed ([`sweep_stale`]).
use std::{
    fs::File,
    os::fd::AsRawFd,
    path::Path,
    process::{Command, Output},
};

use anyhow::{Context, bail};

/// Prefix of every namespace this crate creates.
pub const PREFIX: &str = "ovl";

/// Runs a command, failing with its stderr when it exits non-zero.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<Output> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} {}", args.join(" ")))?;
    if !output.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output)
}

/// Runs `ip` with the given arguments.
pub fn ip(args: &[&str]) -> anyhow::Result<Output> {
    run("ip", args)
}

/// A network namespace, deleted (with every link inside it) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `ovl-<scope>-<pid>-<role>` with its loopback up.
    pub fn new(scope: &str, role: &str) -> anyhow::Result<Netns> {
        remove_all_on_interrupt();
        let name = format!("{PREFIX}-{scope}-{}-{role}", std::process::id());
        ip(&["netns", "add", &name])?;
        let netns = Netns { name };
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <this> <args>`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Runs a program inside this namespace (`ip netns exec`).
    pub fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        let mut full = vec!["netns", "exec", self.name.as_str(), program];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// A command that runs `program` inside this namespace, for spawning.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// Sets a sysctl inside this namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")]).map(|_| ())
    }

    /// Runs `f` on a thread that has entered this namespace, so sockets and
    /// interface lookups it makes belong to it; returns what `f` returns.
    pub fn run_inside<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let handle = self.spawn_inside(f)?;
        handle.join().map_err(|_| anyhow::anyhow!("thread inside namespace panicked"))?
    }

    /// Like [`Netns::run_inside`] but returns the thread's handle at once.
    pub fn spawn_inside<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<T>>> {
        let path = format!("/var/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        Ok(std::thread::spawn(move || {
            enter(&file)?;
            f()
        }))
    }
}

/// Moves the calling thread into the namespace of `file` (setns only
/// affects the calling thread).
pub fn enter(file: &File) -> anyhow::Result<()> {
    // SAFETY: plain syscall on an open fd.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setns into network namespace");
    }
    Ok(())
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(error) = ip(&["netns", "del", &self.name]) {
            eprintln!("warning: removing namespace {}: {error:#}", self.name);
        }
    }
}

/// Deletes namespaces left by runs whose process no longer exists (a run
/// killed with SIGKILL cannot clean up after itself), and returns their names.
pub fn sweep_stale() -> Vec<String> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir("/var/run/netns") else { return removed };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = owner_pid(&name) else { continue };
        if !Path::new(&format!("/proc/{pid}")).exists() && ip(&["netns", "del", &name]).is_ok() {
            removed.push(name);
        }
    }
    removed
}

/// Deletes every namespace of this process, whatever its scope, when the
/// process is interrupted (SIGINT, SIGTERM, SIGHUP: a test run stopped with
/// Ctrl-C, whose guards' destructors never run), then exits 130. Installed
/// by the first [`Netns`]; a process that installed its own handler first
/// (the demo and the benchmark, which also stop their agents) keeps its own.
fn remove_all_on_interrupt() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let _ = ctrlc::set_handler(|| {
            INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
            eprintln!("\ninterrupted: stopping this process's children, removing its namespaces and lab directories");
            let me = std::process::id();
            // Daemons that need more than a signal (dockerd: containers, mounts) go
            // first, the latest registered first, as destructors run (a dockerd
            // goes before the plugin socket it was started to use).
            let cleanups = std::mem::take(&mut *INTERRUPT_CLEANUPS.lock().unwrap_or_else(|e| e.into_inner()));
            for (_, cleanup) in cleanups.into_iter().rev() {
                cleanup();
            }
            stop_children(me);
            for name in of_process(me) {
                let _ = ip(&["netns", "del", &name]);
            }
            // Lab directories `ovl-<scope>-<pid>`, with the lab's bpffs mounted
            // inside, and etcd's data directories `ovl-<scope>-<pid>-etcd`.
            if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
                for dir in entries.flatten().map(|e| e.path()) {
                    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    // `ovl-<scope>-<pid>` and its siblings such as etcd's `ovl-<scope>-<pid>-etcd`.
                    if owner_pid(&format!("{name}-lab")) == Some(me) || owner_pid(&name) == Some(me) {
                        let bpffs = dir.join("bpffs");
                        if bpffs.exists() {
                            let _ = run("umount", &["-l", &bpffs.to_string_lossy()]);
                        }
                        let _ = std::fs::remove_dir_all(&dir);
                    }
                }
            }
            std::process::exit(130);
        });
    });
}

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the interrupt handler is tearing everything down (then it exits
/// the process, and the code it interrupted should not clean up as well).
pub fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
}

type Cleanup = Box<dyn Fn() + Send + Sync>;

/// What [`on_interrupt`] registered, by id.
static INTERRUPT_CLEANUPS: std::sync::Mutex<Vec<(u64, Cleanup)>> = std::sync::Mutex::new(Vec::new());

/// Runs `cleanup` if the process is interrupted (before children are
/// stopped and namespaces removed), until the returned guard is dropped:
/// for a fixture whose teardown is more than a signal and a namespace
/// (dockerd's containers, mounts and plugin sockets).
pub fn on_interrupt(cleanup: impl Fn() + Send + Sync + 'static) -> InterruptCleanup {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    remove_all_on_interrupt();
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    INTERRUPT_CLEANUPS.lock().unwrap_or_else(|e| e.into_inner()).push((id, Box::new(cleanup)));
    InterruptCleanup { id }
}

/// Unregisters its [`on_interrupt`] cleanup when dropped.
pub struct InterruptCleanup {
    id: u64,
}

impl Drop for InterruptCleanup {
    fn drop(&mut self) {
        INTERRUPT_CLEANUPS.lock().unwrap_or_else(|e| e.into_inner()).retain(|(id, _)| *id != self.id);
    }
}

/// SIGTERM to every child of `parent` (agents, daemons: they detach and
/// stop), then up to 5 s for them to exit.
fn stop_children(parent: u32) {
    let children: Vec<i32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            // /proc/<pid>/stat: "pid (comm) state ppid ...", comm may hold spaces.
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok()))
                == Some(parent)
        })
        .collect();
    for pid in &children {
        // SAFETY: plain syscall.
        unsafe { libc::kill(*pid, libc::SIGTERM) };
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut running = children;
    while !running.is_empty() && std::time::Instant::now() < deadline {
        // SAFETY: reaping our own children; a null status pointer is allowed.
        running.retain(|pid| unsafe { libc::waitpid(*pid, std::ptr::null_mut(), libc::WNOHANG) } == 0);
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The namespaces `ovl-<scope>-<pid>-<role>` of process `pid`.
fn of_process(pid: u32) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/var/run/netns") else { return Vec::new() };
    entries
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| owner_pid(name) == Some(pid))
        .collect()
}

/// The pid in a name `ovl-<scope>-<pid>-<role>` (the second-to-last field).
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(&format!("{PREFIX}-"))?;
    let fields: Vec<&str> = rest.split('-').collect();
    fields.len().checked_sub(2).and_then(|i| fields[i].parse::<u32>().ok())
}

/// Deletes every namespace of this process under `scope` (for an interrupt
/// handler, where the guards' destructors will not run).
pub fn remove_all_of_this_process(scope: &str) {
    let prefix = format!("{PREFIX}-{scope}-{}-", std::process::id());
    let Ok(entries) = std::fs::read_dir("/var/run/netns") else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

/// The calling thread inside a network namespace until dropped, then back
/// in the namespace it came from (setns only moves the calling thread).
pub struct InsideNetns {
    home: File,
}

impl InsideNetns {
    pub fn enter(target: &Netns) -> anyhow::Result<InsideNetns> {
        let home = File::open("/proc/thread-self/ns/net").context("opening this thread's network namespace")?;
        let path = format!("/var/run/netns/{}", target.name());
        let target = File::open(&path).with_context(|| format!("opening {path}"))?;
        enter(&target)?;
        Ok(InsideNetns { home })
    }
}

impl Drop for InsideNetns {
    fn drop(&mut self) {
        if let Err(error) = enter(&self.home) {
            // A thread left behind would run whatever comes next in a test namespace.
            if std::thread::panicking() {
                eprintln!("returning to the original network namespace: {error:#}");
            } else {
                panic!("returning to the original network namespace: {error:#}");
            }
        }
    }
}
