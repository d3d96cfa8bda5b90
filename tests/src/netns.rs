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
        let Some(rest) = name.strip_prefix(&format!("{PREFIX}-")) else { continue };
        // ovl-<scope>-<pid>-<role>: the pid is the second-to-last field.
        let fields: Vec<&str> = rest.split('-').collect();
        let Some(pid) = fields.len().checked_sub(2).and_then(|i| fields[i].parse::<u32>().ok()) else { continue };
        if !Path::new(&format!("/proc/{pid}")).exists() && ip(&["netns", "del", &name]).is_ok() {
            removed.push(name);
        }
    }
    removed
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
