//! Lab tests on another kernel: Debian 12's Linux 6.1 booted under QEMU.
//!
//! KVM on this machine kind is PVM and cannot boot a stock kernel, so the
//! guest runs under QEMU's software emulation (TCG). It shares the host's
//! root (its userland, tools and /lib/modules) and the checkout read-only
//! over 9p and chroots into them; the test binaries are built on the host
//! and run in the guest one at a time, their output going to the serial
//! console (echoed here) and to a writable 9p share the host reads back.
//! Under emulation an agent takes about 40 s to start (the verifier runs
//! emulated), so the guest stretches the lab's timeouts
//! (`OVERLAY_LAB_TIME_SCALE`).
mod initramfs;
mod netdevsim;

use std::{
    io::BufRead as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::bench::cleanup::{self, ChildGuard};

/// 9p mount tags.
const SHARE_HOST_ROOT: &str = "hostroot";
const SHARE_CHECKOUT: &str = "checkout";
const SHARE_RESULTS: &str = "results";

/// Lab scope of the VM runs (the temp dir is `ovl-krnvm-<pid>`).
const SCOPE: &str = "krnvm";

/// How much the guest stretches the lab's timeouts (agent start: 20 s here).
const TIME_SCALE: u32 = 8;

/// The kernels a guest can boot: Debian 12's, from `linux-image-amd64`.
const KERNELS: &[&str] = &["6.1"];

/// What `cargo xtask test` runs in the guest: two agents forwarding with
/// TC and with XDP decapsulation, a kill -9 and restart without loss, and
/// reloads without loss.
pub const CORE_SUBSET: &[(&str, &str)] = &[
    ("namespaces", "two_overlay_hosts_carry_ping_and_tcp_both_ways"),
    ("namespaces", "xdp_decapsulation_carries_ping_and_tcp_both_ways"),
    ("operations", "kill_and_restart_of_the_agent_loses_no_packets"),
    ("operations", "reloads_lose_no_packets_and_a_bad_file_changes_nothing"),
];

#[derive(clap::Args)]
pub struct Options {
    /// The guest's kernel: 6.1 (Debian 12's `linux-image-amd64`).
    #[arg(long, default_value = "6.1")]
    kernel: String,
    /// Stop the guest (and count what did not finish as failed) after this many minutes.
    #[arg(long, default_value_t = 180)]
    timeout_minutes: u64,
    /// Run only the core subset that `cargo xtask test` runs in the guest.
    #[arg(long)]
    core: bool,
    /// Only these test files (`--test packets --test load`; default: all).
    #[arg(long = "test")]
    tests: Vec<String>,
    /// Only run lab tests whose name contains this (default: the whole lab suite).
    filter: Option<String>,
}

/// A kernel the guest boots, with its modules on the host.
pub struct Kernel {
    version: String,
    image: PathBuf,
    modules: PathBuf,
}

/// One test binary (an `overlay-tests` target) and what to pass it.
struct Run {
    binary: String,
    /// Names to run exactly, or one substring filter, or nothing (all).
    tests: Vec<String>,
    exact: bool,
}

/// What the guest ran.
#[derive(Debug, Default)]
pub struct Outcome {
    pub passed: u64,
    pub failed: u64,
}

/// `cargo xtask vm-test`: builds, then runs the lab suite (or the tests
/// matching the filter) in the guest.
pub fn vm_test(options: &Options) -> anyhow::Result<()> {
    crate::build::build()?;
    if options.core {
        let started = Instant::now();
        let outcome = core_subset(options.filter.as_deref())?;
        println!("vm-test --core (Linux {}): {} passed, {} failed in {:.0?}", options.kernel, outcome.passed, outcome.failed, started.elapsed());
        return if outcome.failed > 0 { Err(anyhow::anyhow!("{} test(s) failed in the guest", outcome.failed)) } else { Ok(()) };
    }
    let binaries = test_binaries()?;
    // In the order given (`--test a --test b`: the first ones run first, so
    // a timeout costs the last), else the binaries' order.
    let names: Vec<&String> = if options.tests.is_empty() {
        binaries.iter().map(|(name, _)| name).collect()
    } else {
        if let Some(unknown) = options.tests.iter().find(|test| !binaries.iter().any(|(name, _)| name == *test)) {
            bail!("--test {unknown}: no such lab test file (tests/tests/{unknown}.rs)");
        }
        options.tests.iter().collect()
    };
    let runs = names.into_iter().map(|name| Run { binary: name.clone(), tests: options.filter.iter().cloned().collect(), exact: false }).collect();
    let started = Instant::now();
    let outcome = run(&options.kernel, runs, &binaries, Duration::from_secs(options.timeout_minutes * 60))?;
    println!("vm-test (Linux {}): {} passed, {} failed in {:.0?}", options.kernel, outcome.passed, outcome.failed, started.elapsed());
    if outcome.failed > 0 {
        bail!("{} test(s) failed in the {} guest", outcome.failed, options.kernel);
    }
    Ok(())
}

/// The core subset in the 6.1 guest, for `cargo xtask test` (the binaries
/// are built already); `filter` narrows it as it narrows the other stages.
pub fn core_subset(filter: Option<&str>) -> anyhow::Result<Outcome> {
    let mut runs: Vec<Run> = Vec::new();
    for (binary, test) in CORE_SUBSET.iter().filter(|(_, test)| filter.is_none_or(|f| test.contains(f))) {
        match runs.iter_mut().find(|run| run.binary == *binary) {
            Some(run) => run.tests.push(test.to_string()),
            None => runs.push(Run { binary: binary.to_string(), tests: vec![test.to_string()], exact: true }),
        }
    }
    if runs.is_empty() {
        return Ok(Outcome::default());
    }
    let binaries = test_binaries()?;
    run("6.1", runs, &binaries, Duration::from_secs(40 * 60))
}

/// Boots the guest, runs `runs` in it, and adds up their results.
fn run(kernel: &str, runs: Vec<Run>, binaries: &[(String, PathBuf)], timeout: Duration) -> anyhow::Result<Outcome> {
    if !crate::is_root() {
        bail!("the guest's tests load BPF programs: run as root");
    }
    let kernel = ensure_vm_tools(kernel)?;
    let root = crate::root();
    cleanup::install_interrupt_handler()?;
    cleanup::register_scope(SCOPE);
    let dir = TempDir::create()?;
    let results = dir.path.join("results");
    let staging = dir.path.join("staging");
    std::fs::create_dir_all(&results)?;
    std::fs::create_dir_all(&staging)?;
    let initrd = dir.path.join("initramfs.cpio");
    initramfs::build(&kernel, &root, &staging, &initrd)?;
    // Without netdevsim the offload test skips (with its reason): a failed
    // build costs that test, not the run.
    let netdevsim = netdevsim::module(&kernel, &target_dir())
        .inspect_err(|error| println!("netdevsim for the guest could not be built ({error:#}): tests/tests/offload.rs will skip"))
        .ok();
    std::fs::write(results.join(initramfs::GUEST_SCRIPT), guest_script(&root, &runs, binaries, netdevsim.as_deref())?)?;

    println!("booting Linux {} under QEMU (software emulation; an agent takes about 40 s to start there)", kernel.version);
    let started = Instant::now();
    let virtfs = |path: &Path, tag: &str, readonly: bool| {
        format!("local,path={},mount_tag={tag},security_model=passthrough,multidevs=remap{}", path.display(), if readonly { ",readonly=on" } else { "" })
    };
    // Lowest CPU priority: the machine's other work (timing-sensitive
    // tests among it) goes first; emulation only takes longer.
    let mut qemu = Command::new("nice");
    qemu.args(["-n", "19", "qemu-system-x86_64"]);
    qemu.args(["-accel", "tcg", "-cpu", "max", "-m", "2048", "-smp", "2", "-nodefaults", "-display", "none", "-serial", "stdio", "-no-reboot"])
        .arg("-kernel")
        .arg(&kernel.image)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 panic=-1 loglevel=4"])
        .args(["-virtfs", &virtfs(Path::new("/"), SHARE_HOST_ROOT, true)])
        .args(["-virtfs", &virtfs(&root, SHARE_CHECKOUT, true)])
        .args(["-virtfs", &virtfs(&results, SHARE_RESULTS, false)])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut guard = ChildGuard::spawn(&mut qemu, "qemu-system-x86_64")?;
    let console = guard.take_stdout().context("capturing the guest's console")?;
    let echo = std::thread::spawn(move || {
        for line in std::io::BufReader::new(console).split(b'\n').map_while(Result::ok) {
            println!("vm| {}", String::from_utf8_lossy(&line).trim_end());
        }
    });
    let waited = guard.wait(timeout);
    let _ = echo.join();
    if let Err(error) = &waited {
        println!("the guest was stopped: {error:#}");
    }
    println!("guest finished in {:.0?}", started.elapsed());
    Ok(collect(&results, &runs))
}

/// Reads each run's output and exit code back from the results share.
fn collect(results: &Path, runs: &[Run]) -> Outcome {
    let mut outcome = Outcome::default();
    for run in runs {
        let output = std::fs::read_to_string(results.join(format!("{}.out", run.binary))).unwrap_or_default();
        let code = std::fs::read_to_string(results.join(format!("{}.rc", run.binary))).ok().and_then(|c| c.trim().parse::<i32>().ok());
        let (mut passed, mut failed) = (0, 0);
        for line in output.lines() {
            if let Some((p, f)) = crate::test_result_counts(line) {
                passed += p;
                failed += f;
            }
        }
        let failures: Vec<&str> =
            output.lines().filter_map(|line| line.strip_prefix("test ")?.strip_suffix(" ... FAILED")).collect();
        let verdict = match code {
            None => {
                failed += 1;
                "did not finish".to_owned()
            }
            Some(code) if code != 0 && failed == 0 => {
                failed += 1;
                format!("exited {code}")
            }
            Some(_) => format!("{passed} passed, {failed} failed"),
        };
        println!("6.1 guest, {}: {verdict}{}", run.binary, if failures.is_empty() { String::new() } else { format!(" ({})", failures.join(", ")) });
        outcome.passed += passed;
        outcome.failed += failed;
    }
    outcome
}

/// The script the guest runs inside the chroot.
fn guest_script(root: &Path, runs: &[Run], binaries: &[(String, PathBuf)], netdevsim: Option<&Path>) -> anyhow::Result<String> {
    let results = initramfs::RESULTS_IN_GUEST;
    let mut script = format!(
        "#!/bin/sh\n\
         export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp RUST_LOG=info RUST_BACKTRACE=1\n\
         export OVERLAY_BIN={} OVERLAY_EBPF_OBJECT={} OVERLAY_LAB_TIME_SCALE={TIME_SCALE} OVERLAY_LAB_PROGRESS=1\n\
         # The lab's link types and TC pieces (others load on demand).\n\
         for module in veth bridge vxlan sch_ingress cls_bpf; do modprobe $module || echo \"vm: no module $module\"; done\n\
         echo \"vm: Linux $(uname -r), $(nproc) CPUs\"\n\
         {}\
         cd {}\n",
        quote(&target_dir().join("release/overlay")),
        quote(&crate::build::ebpf_object()),
        load_netdevsim(netdevsim),
        quote(&root.join("tests")),
    );
    for run in runs {
        let (_, executable) = binaries
            .iter()
            .find(|(name, _)| *name == run.binary)
            .with_context(|| format!("no test binary {} among {:?}", run.binary, binaries.iter().map(|(n, _)| n).collect::<Vec<_>>()))?;
        let mut args = vec!["--test-threads=1".to_owned()];
        if run.exact {
            args.push("--exact".to_owned());
        }
        args.extend(run.tests.iter().cloned());
        let args: Vec<String> = args.iter().map(|a| quote(Path::new(a))).collect();
        let out = format!("{results}/{}", run.binary);
        script.push_str(&format!(
            "echo \"vm: == {binary} $(date +%T)\"\n( {exe} {args}; echo $? > {out}.rc ) 2>&1 | tee {out}.out\n",
            binary = run.binary,
            exe = quote(executable),
            args = args.join(" "),
        ));
    }
    script.push_str("echo \"vm: finished $(date +%T)\"\n");
    Ok(script)
}

/// The guest script's lines that load netdevsim (built out of tree, see
/// [`netdevsim`]) and check that a device can be created and removed.
fn load_netdevsim(module: Option<&Path>) -> String {
    let Some(module) = module else { return "echo \"vm: no netdevsim module\"\n".to_owned() };
    format!(
        "modprobe psample && insmod {} && echo \"vm: netdevsim loaded\" || echo \"vm: netdevsim did not load\"\n\
         if echo '999 1' > /sys/bus/netdevsim/new_device; then echo \"vm: netdevsim device 999: $(ls /sys/bus/netdevsim/devices/netdevsim999/net)\"; \
         echo 999 > /sys/bus/netdevsim/del_device; fi\n",
        quote(module)
    )
}

/// Cargo's target directory (`$CARGO_TARGET_DIR`, else the workspace's).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| crate::root().join("target"), PathBuf::from)
}

fn quote(text: &Path) -> String {
    format!("'{}'", text.to_string_lossy().replace('\'', "'\\''"))
}

/// The `overlay-tests` test binaries, built (by target name).
fn test_binaries() -> anyhow::Result<Vec<(String, PathBuf)>> {
    let output = Command::new("cargo")
        .current_dir(crate::root())
        .env("OVERLAY_EBPF_OBJECT", crate::build::ebpf_object())
        .args(["test", "-p", "overlay-tests", "--no-run", "--message-format=json-render-diagnostics"])
        .stderr(Stdio::inherit())
        .output()
        .context("building the lab's test binaries")?;
    if !output.status.success() {
        bail!("building the lab's test binaries failed: {}", output.status);
    }
    let mut binaries = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let is_test = message["target"]["kind"].as_array().is_some_and(|kinds| kinds.iter().any(|k| k == "test"));
        if let (true, Some(name), Some(executable)) = (is_test, message["target"]["name"].as_str(), message["executable"].as_str()) {
            binaries.push((name.to_owned(), PathBuf::from(executable)));
        }
    }
    binaries.sort();
    Ok(binaries)
}

/// QEMU, busybox-static and the kernel, installed if missing.
fn ensure_vm_tools(wanted: &str) -> anyhow::Result<Kernel> {
    if !KERNELS.contains(&wanted) {
        bail!("--kernel {wanted}: the guest can boot {KERNELS:?} (Debian 12's linux-image-amd64)");
    }
    let mut missing = Vec::new();
    if Command::new("qemu-system-x86_64").arg("--version").output().is_err() {
        missing.push("qemu-system-x86");
    }
    let busybox_static = Command::new("dpkg-query").args(["-W", "-f=${Status}", "busybox-static"]).output();
    if !busybox_static.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed")) {
        missing.push("busybox-static");
    }
    if find_kernel(wanted).is_none() {
        missing.push("linux-image-amd64");
    }
    if !missing.is_empty() {
        println!("installing Debian packages for the VM tests: {}", missing.join(" "));
        // Other sessions may hold the dpkg lock for a while.
        let apt = |args: &[&str]| {
            crate::status(
                Command::new("apt-get").env("DEBIAN_FRONTEND", "noninteractive").args(["-o", "DPkg::Lock::Timeout=900", "-qq"]).args(args),
            )
        };
        apt(&["update"])?;
        apt(&[&["install", "-y", "--no-install-recommends"][..], &missing].concat())?;
    }
    find_kernel(wanted).with_context(|| format!("no Linux {wanted} in /boot after installing linux-image-amd64 (is this Debian 12?)"))
}

/// The newest /boot/vmlinuz-<wanted>.* with its modules.
fn find_kernel(wanted: &str) -> Option<Kernel> {
    let mut versions: Vec<String> = std::fs::read_dir("/boot")
        .ok()?
        .flatten()
        .filter_map(|entry| entry.file_name().to_string_lossy().strip_prefix("vmlinuz-").map(str::to_owned))
        .filter(|version| version.strip_prefix(wanted).is_some_and(|rest| rest.starts_with('.')))
        .filter(|version| Path::new("/lib/modules").join(version).join("modules.dep").exists())
        .collect();
    versions.sort();
    let version = versions.pop()?;
    Some(Kernel { image: PathBuf::from(format!("/boot/vmlinuz-{version}")), modules: Path::new("/lib/modules").join(&version), version })
}

/// The run's directory, removed on drop (and by the interrupt handler,
/// which removes every registered scope's `ovl-<scope>-<pid>`).
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn create() -> anyhow::Result<TempDir> {
        let path = std::env::temp_dir().join(format!("{}-{SCOPE}-{}", overlay_lab::netns::PREFIX, std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
