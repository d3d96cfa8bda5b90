//! `cargo xtask bench --cluster-scale`: one agent against a registry of
//! many simulated nodes (issue 10). The measuring is done by the ignored
//! test `tests/tests/cluster_scale.rs` (it needs the lab and the registry
//! library); this runs it with the options, shows its progress, and keeps
//! its `CLUSTER_SCALE {json}` result in target/bench/cluster-scale.json.
use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use super::{Options, output_dir};
use crate::{build, is_root, root, setup};

pub fn run(options: &Options) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the benchmark creates network namespaces and loads BPF programs: run it as root");
    }
    setup::ensure_bench_tools()?;
    let binary = build::build()?;
    let nodes = options.nodes.unwrap_or(1000);
    let endpoints = options.endpoints.unwrap_or(20);
    let repetitions = options.repetitions.unwrap_or(3);
    if nodes == 0 || endpoints == 0 || repetitions == 0 {
        bail!("--nodes, --endpoints and --repetitions must be at least 1");
    }
    if nodes > 16_000 || endpoints > 500 {
        bail!("--nodes {nodes} --endpoints {endpoints}: at most 16000 nodes (the simulated VTEPs' range) and 500 endpoints each");
    }
    println!("cluster scale: {nodes} simulated nodes x {endpoints} endpoints, {repetitions} repetition(s)");
    let mut child = Command::new("cargo")
        .current_dir(root())
        .env("OVERLAY_EBPF_OBJECT", build::ebpf_object())
        .env("OVERLAY_BIN", &binary)
        .env("OVERLAY_SCALE_NODES", nodes.to_string())
        .env("OVERLAY_SCALE_ENDPOINTS", endpoints.to_string())
        .env("OVERLAY_SCALE_REPETITIONS", repetitions.to_string())
        .args(["test", "--package", "overlay-tests", "--test", "cluster_scale", "--"])
        .args(["--ignored", "--exact", "cluster_scale", "--nocapture", "--test-threads=1"])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting `cargo test --test cluster_scale`")?;
    let stdout = child.stdout.take().context("no stdout from cargo test")?;
    let mut result = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading the benchmark's output")?;
        match line.split_once("CLUSTER_SCALE ") {
            Some((_, json)) => result = Some(serde_json::from_str::<serde_json::Value>(json).with_context(|| format!("parsing `{json}`"))?),
            None => println!("{line}"),
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    let result = match (status.success(), result) {
        (true, Some(result)) => result,
        (true, None) => bail!("the cluster benchmark printed no result"),
        (false, _) => bail!("the cluster benchmark failed ({status})"),
    };
    std::fs::create_dir_all(output_dir())?;
    let path = output_dir().join("cluster-scale.json");
    std::fs::write(&path, serde_json::to_string_pretty(&result)?).with_context(|| format!("writing {}", path.display()))?;
    println!("\n{}\nwritten to {}", serde_json::to_string_pretty(&result)?, path.display());
    Ok(())
}
