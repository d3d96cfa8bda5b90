//! `cargo xtask`: setup, build, run, demo, test and bench for the overlay workspace.
//!
//! Every command first makes sure the toolchain is there (nightly rust-src,
//! bpf-linker built against the nightly's own LLVM, the Debian tools the lab
//! uses), so each works on a fresh machine.
mod bench;
mod build;
mod demo;
mod parser_fuzz;
mod setup;
mod vm;

use std::{path::PathBuf, process::Command};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run, demo, test and benchmark the overlay")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need: nightly rust-src, bpf-linker, Debian tools.
    Setup,
    /// Build the eBPF object and the `overlay` binary (release).
    Build,
    /// Build, then run `overlay` as root with the given arguments.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build, then run the Docker workflow on three hosts (network namespaces)
    /// with etcd and a dockerd each; `--static` runs the static-file lab.
    Demo {
        /// The lab whose agents read generated files listing every
        /// container (no etcd, no Docker), instead of the Docker workflow.
        #[arg(long = "static")]
        static_files: bool,
    },
    /// Build, then run every test: unit tests, packet tests, namespace tests,
    /// and the benchmark harness in --quick mode.
    Test {
        /// Only run tests whose name contains this (`bench` runs only the harness check).
        filter: Option<String>,
    },
    /// Build, then measure routed, kernel-vxlan and overlay cells
    /// interleaved; writes target/bench/{report.md,report.json,chart.svg}.
    Bench(bench::Options),
    /// Build, then fuzz every datapath program through BPF_PROG_TEST_RUN
    /// (tests/tests/fuzz_datapath.rs) with more frames than `test` does.
    Fuzz {
        /// Frames per program.
        #[arg(long, default_value_t = 1_000_000)]
        frames: u64,
        /// PRNG seed, decimal or 0x-hex (default: the fixed seed of `cargo xtask test`).
        #[arg(long)]
        seed: Option<String>,
        /// Instead of the datapath: run each `cargo fuzz` (libFuzzer) target
        /// of the agent's parsers (overlay-user/fuzz) for this many seconds.
        #[arg(long)]
        seconds: Option<u64>,
        /// With --seconds: only this target (config_toml, api_json, cni_stdin, docker_requests, etcd_records).
        #[arg(long, requires = "seconds")]
        target: Option<String>,
    },
    /// Build, then run the churn soak (tests/tests/churn.rs `soak`): 5,000
    /// endpoints and 200 peers in and out of a two-node lab under traffic,
    /// the agent restarted now and then; prints the figures for
    /// docs/reliability.md.
    Soak {
        /// Run at least this long (and until 5,000 endpoints came and went).
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        /// Kill -9 and restart the agent every this many rounds of 1,000 changes (0: never).
        #[arg(long, default_value_t = 2)]
        restart_every: u64,
        /// Instead: the cluster-mode churn (tests/tests/cluster_churn.rs
        /// `cluster_soak`): containers in and out through the CNI plugin on
        /// three agents, 200 virtual nodes in and out of etcd.
        #[arg(long)]
        cluster: bool,
    },
    /// Build, then run the lab tests in a guest with another kernel
    /// (Debian 12's 6.1) under QEMU.
    VmTest(vm::Options),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Setup => setup::setup(),
        Task::Build => build::build().map(|_| ()),
        Task::Run { args } => run(args),
        Task::Demo { static_files } => demo::demo(static_files),
        Task::Test { filter } => test(filter),
        Task::Bench(options) if options.cluster_scale => bench::cluster_scale::run(&options),
        Task::Bench(options) => bench::bench(&options).map(|_| ()),
        Task::Fuzz { seconds: Some(seconds), target, .. } => parser_fuzz::fuzz(seconds, target.as_deref()),
        Task::Fuzz { frames, seed, .. } => fuzz(frames, seed),
        Task::Soak { minutes, restart_every, cluster } => soak(minutes, restart_every, cluster),
        Task::VmTest(options) => vm::vm_test(&options),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().expect("workspace root")
}

pub fn is_root() -> bool {
    // SAFETY: plain syscall.
    unsafe { libc::geteuid() == 0 }
}

/// Runs a command to completion, failing if it does not succeed.
pub fn status(command: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{command:?}");
    let status = command.status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

fn run(args: Vec<String>) -> anyhow::Result<()> {
    let binary = build::build()?;
    let mut command = if is_root() {
        Command::new(&binary)
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg("-E").arg(&binary);
        sudo
    };
    let status = command.args(&args).status().with_context(|| format!("starting {}", binary.display()))?;
    std::process::exit(status.code().unwrap_or(1));
}

fn test(filter: Option<String>) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the tests load BPF programs and create network namespaces: run as root");
    }
    setup::ensure_bench_tools()?;
    let binary = build::build()?;
    let root = root();
    let stale = overlay_lab::netns::sweep_stale();
    if !stale.is_empty() {
        println!("removed namespaces left by killed runs: {}", stale.join(", "));
    }
    let object = build::ebpf_object();
    let filter_args: Vec<String> = filter.into_iter().collect();
    let mut tally = Tally::default();
    println!("== unit tests");
    let units = tally.run(
        Command::new("cargo")
            .current_dir(&root)
            .env("OVERLAY_EBPF_OBJECT", &object)
            .args(["test", "--workspace", "--exclude", "overlay-tests", "--no-fail-fast", "--"])
            .args(&filter_args),
    );
    println!("== lab, packet and namespace tests (one at a time: they share the kernel)");
    let integration = tally.run(
        Command::new("cargo")
            .current_dir(&root)
            .env("OVERLAY_EBPF_OBJECT", &object)
            .env("OVERLAY_BIN", &binary)
            // Every test file runs even after one fails, so a run reports them all.
            .args(["test", "-p", "overlay-tests", "--no-fail-fast", "--", "--test-threads=1"])
            .args(&filter_args),
    );
    let stale = overlay_lab::netns::sweep_stale();
    if !stale.is_empty() {
        println!("warning: tests left namespaces behind (removed): {}", stale.join(", "));
    }
    // The benchmark harness, so it cannot rot. It runs here rather than as a
    // cargo test because it runs `cargo test` itself (the micro-benchmark),
    // which would wait forever on the build lock of a cargo test around it.
    let harness = if filter_args.is_empty() || filter_args.iter().any(|f| "bench".contains(f.as_str())) {
        println!("== benchmark harness: cargo xtask bench --quick");
        let result = bench::quick_check();
        if result.is_ok() { tally.passed += 1 } else { tally.failed += 1 }
        result
    } else {
        Ok(())
    };
    println!("== lab tests in a Debian 12 (Linux 6.1) guest under QEMU: {}", vm::CORE_SUBSET.iter().map(|(_, t)| *t).collect::<Vec<_>>().join(", "));
    let guest = vm::core_subset(filter_args.first().map(String::as_str)).and_then(|outcome| {
        tally.passed += outcome.passed;
        tally.failed += outcome.failed;
        if outcome.failed > 0 { bail!("{} test(s) failed in the 6.1 guest", outcome.failed) } else { Ok(()) }
    });
    // One closing line for the whole suite.
    println!("tests: {} passed, {} failed", tally.passed, tally.failed);
    units.and(integration).and(harness).and(guest)
}

/// Runs the datapath fuzz test with `frames` frames per program; a failure
/// prints the seed and frame to replay.
fn fuzz(frames: u64, seed: Option<String>) -> anyhow::Result<()> {
    if !is_root() {
        bail!("fuzzing loads BPF programs and creates a network namespace: run as root");
    }
    let binary = build::build()?;
    let mut command = Command::new("cargo");
    command
        .current_dir(root())
        .env("OVERLAY_EBPF_OBJECT", build::ebpf_object())
        .env("OVERLAY_BIN", &binary)
        .env("OVERLAY_FUZZ_FRAMES", frames.to_string())
        .args(["test", "-p", "overlay-tests", "--test", "fuzz_datapath", "--", "--nocapture"]);
    if let Some(seed) = seed {
        command.env("OVERLAY_FUZZ_SEED", seed);
    }
    status(&mut command)
}

/// Runs the churn soak (or the cluster-mode one); its figures go to stdout.
fn soak(minutes: u64, restart_every: u64, cluster: bool) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the soak loads BPF programs and creates network namespaces: run as root");
    }
    let binary = build::build()?;
    status(
        Command::new("cargo")
            .current_dir(root())
            .env("OVERLAY_EBPF_OBJECT", build::ebpf_object())
            .env("OVERLAY_BIN", &binary)
            .env("OVERLAY_SOAK_MINUTES", minutes.to_string())
            .env("OVERLAY_SOAK_RESTART_EVERY", restart_every.to_string())
            .args(["test", "-p", "overlay-tests", "--test"])
            .args(if cluster { ["cluster_churn", "cluster_soak"] } else { ["churn", "soak"] })
            .args(["--", "--ignored", "--exact", "--nocapture"]),
    )
}

/// Passed and failed tests over several `cargo test` runs.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
}

impl Tally {
    /// Runs `cargo test`, echoing its output and adding up its
    /// `test result:` lines.
    fn run(&mut self, command: &mut Command) -> anyhow::Result<()> {
        use std::io::BufRead as _;
        let shown = format!("{command:?}");
        let mut child = command.stdout(std::process::Stdio::piped()).spawn().with_context(|| format!("starting {shown}"))?;
        let stdout = child.stdout.take().context("capturing cargo test's output")?;
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line?;
            println!("{line}");
            if let Some((passed, failed)) = test_result_counts(&line) {
                self.passed += passed;
                self.failed += failed;
            }
        }
        let status = child.wait()?;
        if !status.success() {
            bail!("{shown} failed: {status}");
        }
        Ok(())
    }
}

/// (passed, failed) of a cargo test `test result:` line.
pub fn test_result_counts(line: &str) -> Option<(u64, u64)> {
    let summary = line.strip_prefix("test result: ")?;
    let count = |word: &str| summary.split(';').find_map(|part| part.trim().strip_suffix(word)?.trim().rsplit(' ').next()?.parse::<u64>().ok());
    Some((count("passed").unwrap_or(0), count("failed").unwrap_or(0)))
}
