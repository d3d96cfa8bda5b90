//! `cargo xtask fuzz --seconds N`: the libFuzzer targets of the agent's
//! parsers (overlay-user/fuzz, run by `cargo fuzz` on the nightly
//! toolchain), each for N seconds, starting from the corpus the seeded
//! property tests use (overlay-user/tests/corpus). New inputs go to
//! target/fuzz/corpus/<target> and crashes to target/fuzz/artifacts/<target>:
//! the repository's corpus is only read.
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::{root, setup::tools_dir};

/// The version `cargo xtask` installs (it builds with nightly 1.97 here).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Each target and its corpus directory under overlay-user/tests/corpus.
pub const TARGETS: &[(&str, &str)] =
    &[("config_toml", "config"), ("api_json", "api"), ("cni_stdin", "cni"), ("docker_requests", "docker"), ("etcd_records", "records")];

/// cargo-fuzz, installed under target/tools (once, about a minute).
fn cargo_fuzz() -> anyhow::Result<std::path::PathBuf> {
    let root = tools_dir().join("cargo-fuzz");
    let binary = root.join("bin/cargo-fuzz");
    if !binary.exists() {
        println!("installing cargo-fuzz {CARGO_FUZZ_VERSION} from crates.io into {}", root.display());
        crate::status(Command::new("cargo").args(["install", "cargo-fuzz", "--locked", "--version", CARGO_FUZZ_VERSION, "--root"]).arg(&root))
            .context("installing cargo-fuzz")?;
    }
    Ok(binary)
}

/// What a libFuzzer run printed: executions and whether it found a crash.
fn summary(stderr: &str) -> (u64, bool) {
    let runs = stderr
        .lines()
        .find_map(|line| line.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    let crashed = stderr.contains("==ERROR: libFuzzer") || stderr.contains("panicked at") || stderr.contains("Test unit written to");
    (runs, crashed)
}

/// Runs `only` (or every target) for `seconds` each; fails on the first crash, naming its input.
pub fn fuzz(seconds: u64, only: Option<&str>) -> anyhow::Result<()> {
    let cargo_fuzz = cargo_fuzz()?;
    // overlay-user's build embeds the eBPF object.
    crate::build::build()?;
    let root = root();
    let work = root.join("target/fuzz");
    let targets: Vec<&(&str, &str)> = TARGETS.iter().filter(|(name, _)| only.is_none_or(|o| o == *name)).collect();
    if targets.is_empty() {
        bail!("no fuzz target {only:?}: the targets are {}", TARGETS.iter().map(|t| t.0).collect::<Vec<_>>().join(", "));
    }
    let mut report = Vec::new();
    for (target, corpus) in targets {
        let found = work.join("corpus").join(target);
        let artifacts = work.join("artifacts").join(target);
        std::fs::create_dir_all(&found)?;
        std::fs::create_dir_all(&artifacts)?;
        let seeds = root.join("overlay-user/tests/corpus").join(corpus);
        println!("cargo fuzz: {target} for {seconds} s from {}", seeds.display());
        // No sanitizer: the parsers are safe Rust, the property is the
        // panic (and the checks' own assertions); ASan would double the
        // build for nothing to find.
        // cargo-fuzz run directly takes "fuzz" first, as cargo passes it;
        // its builds need nightly (-Z flags).
        let output = Command::new(&cargo_fuzz)
            .current_dir(root.join("overlay-user"))
            .env("RUSTUP_TOOLCHAIN", "nightly")
            .args(["fuzz", "run", "--sanitizer", "none", "--target-dir"])
            .arg(&work)
            .arg(target)
            .arg(&found)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .args(["-print_final_stats=1", "-max_len=65536"])
            .output()
            .with_context(|| format!("running cargo fuzz {target}"))?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        let (runs, crashed) = summary(&stderr);
        if crashed || !output.status.success() {
            let tail: Vec<&str> = stderr.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
            bail!("cargo fuzz {target} found a failure (inputs in {}):\n{}", artifacts.display(), tail.join("\n"));
        }
        let kept = std::fs::read_dir(&found).map(|d| d.count()).unwrap_or(0);
        println!("cargo fuzz: {target}: {runs} inputs in {seconds} s, 0 failures, {kept} new corpus inputs kept in {}", found.display());
        report.push((*target, runs));
    }
    println!("cargo fuzz summary ({seconds} s each):");
    for (target, runs) in report {
        println!("  {target:<16} {runs:>10} inputs, 0 failures");
    }
    Ok(())
}
