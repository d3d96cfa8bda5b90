//! The BPF_PROG_TEST_RUN micro-benchmark. It needs the datapath library,
//! which embeds the eBPF object and so cannot be a dependency of xtask
//! (xtask builds that object); it lives in the `microbench` integration
//! test of overlay-tests (`#[ignore]`d, so the test suite skips it), which
//! this runs and whose `MICROBENCH {json}` lines it reads. How the test
//! keeps every repetition on the real path is explained in
//! tests/tests/microbench.rs.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use super::stats::Summary;
use crate::{build, root};

/// The namespace scope tests/tests/microbench.rs uses (`Netns::new("mb", ...)`).
pub const NETNS_SCOPE: &str = "mb";

/// One line of the test's output.
#[derive(Debug, Deserialize)]
struct Sample {
    program: String,
    method: String,
    frame_bytes: u32,
    wire_bytes: u32,
    runs: u64,
    test_run_ns: f64,
    program_ns: f64,
}

/// One case over all repetitions.
#[derive(Clone, Debug, Serialize)]
pub struct MicrobenchResult {
    /// `decap` (XDP) or `encap` (TC).
    pub program: String,
    /// `live-frames` (one call, repeat = runs) or `single-runs` (runs calls of repeat = 1).
    pub method: String,
    /// The container's Ethernet frame.
    pub frame_bytes: u32,
    /// The frame on the underlay (with the 50 bytes of VXLAN over IPv4).
    pub wire_bytes: u32,
    pub runs: u64,
    /// Per packet as BPF_PROG_TEST_RUN reports it.
    pub test_run_ns: Summary,
    /// Per packet from the kernel's BPF statistics: the program alone.
    pub program_ns: Summary,
}

/// Runs the micro-benchmark: `runs` runs per case, `repetitions` times.
pub fn run(runs: u32, repetitions: u32) -> anyhow::Result<Vec<MicrobenchResult>> {
    let mut child = Command::new("cargo")
        .current_dir(root())
        .env("OVERLAY_EBPF_OBJECT", build::ebpf_object())
        .env("OVERLAY_MICROBENCH_RUNS", runs.to_string())
        .env("OVERLAY_MICROBENCH_REPETITIONS", repetitions.to_string())
        .args(["test", "--package", "overlay-tests", "--test", "microbench", "--"])
        .args(["--ignored", "--exact", "prog_test_run_microbench", "--nocapture", "--test-threads=1"])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting `cargo test --test microbench`")?;
    let stdout = child.stdout.take().context("no stdout from cargo test")?;
    let mut samples = Vec::new();
    let mut other_output = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading the micro-benchmark's output")?;
        // Searched anywhere in the line: libtest prints `test <name> ... `
        // without a newline before the test runs, so the first result
        // shares its line.
        match line.split_once("MICROBENCH ") {
            Some((_, json)) => samples.push(serde_json::from_str::<Sample>(json).with_context(|| format!("parsing `{json}`"))?),
            None => other_output.push(line),
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    if !status.success() {
        // A test process killed (by Ctrl-C, say) runs no guards.
        super::cleanup::sweep_microbench_namespaces();
        bail!("the micro-benchmark failed ({status}):\n{}", other_output.join("\n"));
    }
    let results = summarize(samples);
    if results.is_empty() {
        bail!("the micro-benchmark printed no results:\n{}", other_output.join("\n"));
    }
    Ok(results)
}

fn summarize(samples: Vec<Sample>) -> Vec<MicrobenchResult> {
    let mut cases: BTreeMap<(String, String, u32), Vec<Sample>> = BTreeMap::new();
    for sample in samples {
        cases.entry((sample.program.clone(), sample.method.clone(), sample.frame_bytes)).or_default().push(sample);
    }
    cases
        .into_values()
        .filter_map(|samples| {
            let first = samples.first()?;
            Some(MicrobenchResult {
                program: first.program.clone(),
                method: first.method.clone(),
                frame_bytes: first.frame_bytes,
                wire_bytes: first.wire_bytes,
                runs: first.runs,
                test_run_ns: Summary::of(&samples.iter().map(|s| s.test_run_ns).collect::<Vec<_>>())?,
                program_ns: Summary::of(&samples.iter().map(|s| s.program_ns).collect::<Vec<_>>())?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetitions_of_a_case_are_summarized_together() {
        let line = |ns: f64| {
            serde_json::from_str::<Sample>(&format!(
                "{{\"program\":\"decap\",\"method\":\"live-frames\",\"frame_bytes\":64,\"wire_bytes\":114,\"runs\":1000,\
                 \"test_run_ns\":{ns},\"program_ns\":{},\"repetition\":0,\"elapsed_s\":0.1}}",
                ns / 2.0
            ))
            .unwrap()
        };
        let results = summarize(vec![line(30.0), line(10.0), line(20.0)]);
        assert_eq!(results.len(), 1);
        assert_eq!((results[0].test_run_ns.median, results[0].program_ns.max), (20.0, 15.0));
    }
}
