//! The BPF_PROG_TEST_RUN micro-benchmark. It needs the datapath library,
//! which embeds the eBPF object and so cannot be a dependency of xtask
//! (xtask builds that object); it lives in the `microbench` integration
//! test of overlay-tests (`#[ignore]`d, so the test suite skips it), which
//! this runs and whose `MICROBENCH {json}` lines it reads. How the test
//! keeps every repetition on the real path is explained in
//! tests/tests/microbench.rs.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
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
    /// `current`, `floor`, or a variant's label (`--microbench-object`).
    #[serde(default = "current")]
    object: String,
    program: String,
    method: String,
    /// Empty, or the cost curve the line belongs to, and its point.
    #[serde(default)]
    curve: String,
    #[serde(default)]
    size: u32,
    frame_bytes: u32,
    wire_bytes: u32,
    runs: u64,
    test_run_ns: f64,
    program_ns: f64,
}

fn current() -> String {
    "current".into()
}

/// One case over all repetitions.
#[derive(Clone, Debug, Serialize)]
pub struct MicrobenchResult {
    /// `current` (this build), `floor` (the empty programs) or a variant's label.
    pub object: String,
    /// `decap` (XDP), `decap-tc`, `encap` (TC), `floor-xdp` or `floor-tc`.
    pub program: String,
    /// `live-frames` (one call, repeat = runs) or `single-runs` (runs calls of repeat = 1).
    pub method: String,
    /// Empty, or the cost curve (`fdb`, `vnis`, `flows`) and its point.
    pub curve: String,
    pub size: u32,
    /// The container's Ethernet frame.
    pub frame_bytes: u32,
    /// The frame on the underlay (with the 50 bytes of VXLAN over IPv4).
    pub wire_bytes: u32,
    pub runs: u64,
    /// Per packet as BPF_PROG_TEST_RUN reports it.
    pub test_run_ns: Summary,
    /// Per packet from the kernel's BPF statistics: the program alone.
    pub program_ns: Summary,
    /// Medians less the floor's (the empty program of the same hook, run
    /// the same way on the same frames): what the program adds to nothing.
    pub test_run_above_floor_ns: Option<f64>,
    pub program_above_floor_ns: Option<f64>,
}

impl MicrobenchResult {
    /// The empty program this one is measured against.
    fn floor_program(&self) -> Option<&'static str> {
        match self.program.as_str() {
            "decap" => Some("floor-xdp"),
            "decap-tc" | "encap" => Some("floor-tc"),
            _ => None,
        }
    }
}

/// Runs the micro-benchmark: `runs` runs per case, `repetitions` times,
/// for this build and each of `objects` (label, path of an eBPF object).
pub fn run(runs: u32, repetitions: u32, objects: &[(String, std::path::PathBuf)]) -> anyhow::Result<Vec<MicrobenchResult>> {
    let objects_env: Vec<String> = objects.iter().map(|(label, path)| format!("{label}={}", path.display())).collect();
    let mut child = Command::new("cargo")
        .current_dir(root())
        .env("OVERLAY_EBPF_OBJECT", build::ebpf_object())
        .env("OVERLAY_MICROBENCH_RUNS", runs.to_string())
        .env("OVERLAY_MICROBENCH_REPETITIONS", repetitions.to_string())
        .env("OVERLAY_MICROBENCH_OBJECTS", objects_env.join(","))
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
    type Key = (String, u32, String, String, String, u32);
    let mut cases: BTreeMap<Key, Vec<Sample>> = BTreeMap::new();
    for sample in samples {
        let key = (
            sample.curve.clone(),
            sample.size,
            sample.object.clone(),
            sample.program.clone(),
            sample.method.clone(),
            sample.frame_bytes,
        );
        cases.entry(key).or_default().push(sample);
    }
    let mut results: Vec<MicrobenchResult> = cases
        .into_values()
        .filter_map(|samples| {
            let first = samples.first()?;
            Some(MicrobenchResult {
                object: first.object.clone(),
                program: first.program.clone(),
                method: first.method.clone(),
                curve: first.curve.clone(),
                size: first.size,
                frame_bytes: first.frame_bytes,
                wire_bytes: first.wire_bytes,
                runs: first.runs,
                test_run_ns: Summary::of(&samples.iter().map(|s| s.test_run_ns).collect::<Vec<_>>())?,
                program_ns: Summary::of(&samples.iter().map(|s| s.program_ns).collect::<Vec<_>>())?,
                test_run_above_floor_ns: None,
                program_above_floor_ns: None,
            })
        })
        .collect();
    let floors: Vec<MicrobenchResult> = results.iter().filter(|r| r.object == "floor").cloned().collect();
    for result in &mut results {
        let Some(floor_program) = result.floor_program() else { continue };
        let same_case = |floor: &&MicrobenchResult| {
            floor.program == floor_program && floor.method == result.method && floor.frame_bytes == result.frame_bytes
        };
        // The floor measured at the same curve point, else the main one.
        let floor = floors
            .iter()
            .filter(same_case)
            .find(|floor| floor.curve == result.curve && floor.size == result.size)
            .or_else(|| floors.iter().filter(same_case).find(|floor| floor.curve.is_empty()));
        if let Some(floor) = floor {
            result.test_run_above_floor_ns = Some(result.test_run_ns.median - floor.test_run_ns.median);
            result.program_above_floor_ns = Some(result.program_ns.median - floor.program_ns.median);
        }
    }
    results
}

/// The micro-benchmark's tables: every case with its figures above the
/// floor, the encapsulation/decapsulation ratios per build, and the cost
/// curves.
pub fn markdown(results: &[MicrobenchResult]) -> String {
    let mut out = String::new();
    let above = |value: Option<f64>| value.map_or("·".to_string(), |v| format!("{v:.1}"));
    let _ = writeln!(out, "## BPF_PROG_TEST_RUN micro-benchmark\n");
    let _ = writeln!(
        out,
        "Per packet. `test run`: as BPF_PROG_TEST_RUN reports it (live-frames: one call, repeat = runs, program + redirect; \
         single-runs: median over calls of repeat = 1, program + one clock read). `program`: mean from the kernel's BPF statistics \
         (run_time_ns / run_cnt) over the same runs, the program alone. `floor`: an empty program of the same hook \
         (`floor-xdp`, `floor-tc`) through the same harness in the same run; `above floor` is a median less the floor's.\n"
    );
    let _ = writeln!(out, "| build | program | method | frame (underlay) | runs | test run (ns) | above floor | program (ns) | above floor |");
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for result in results.iter().filter(|r| r.curve.is_empty()) {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} B ({} B) | {} | {} | {} | {} | {} |",
            result.object,
            result.program,
            result.method,
            result.frame_bytes,
            result.wire_bytes,
            result.runs,
            format_summary(&result.test_run_ns),
            above(result.test_run_above_floor_ns),
            format_summary(&result.program_ns),
            above(result.program_above_floor_ns),
        );
    }
    let _ = writeln!(out);
    let ratios = encap_decap_ratios(results);
    if !ratios.is_empty() {
        let _ = writeln!(out, "Encapsulation / TC decapsulation (single-runs, medians):\n");
        let _ = writeln!(out, "| build | frame | test run | above floor | program | above floor |");
        let _ = writeln!(out, "|---|---|---|---|---|---|");
        for ratio in ratios {
            let _ = writeln!(
                out,
                "| {} | {} B | {:.2}× | {} | {:.2}× | {} |",
                ratio.object,
                ratio.frame_bytes,
                ratio.test_run,
                ratio.test_run_above_floor.map_or("·".into(), |r| format!("{r:.2}×")),
                ratio.program,
                ratio.program_above_floor.map_or("·".into(), |r| format!("{r:.2}×")),
            );
        }
        let _ = writeln!(out);
    }
    if results.iter().any(|r| !r.curve.is_empty()) {
        let _ = writeln!(out, "### Cost curves (64 B frames, single-runs)\n");
        let _ = writeln!(
            out,
            "`fdb`: remote endpoints in the FDB, frames to (or from) each in turn; `vnis`: VNIs carried, decapsulated frames \
             round all of them (encapsulation stays in its port's VNI); `flows`: distinct inner 5-tuples in turn.\n"
        );
        let _ = writeln!(out, "| curve | size | program | test run (ns) | above floor | program (ns) | above floor |");
        let _ = writeln!(out, "|---|---|---|---|---|---|---|");
        for result in results.iter().filter(|r| !r.curve.is_empty() && r.object != "floor") {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                result.curve,
                result.size,
                result.program,
                format_summary(&result.test_run_ns),
                above(result.test_run_above_floor_ns),
                format_summary(&result.program_ns),
                above(result.program_above_floor_ns),
            );
        }
        let _ = writeln!(out);
    }
    out
}

fn format_summary(summary: &Summary) -> String {
    format!("{:.1} ({:.1}–{:.1})", summary.median, summary.min, summary.max)
}

/// Encapsulation over TC decapsulation for one build and frame size.
pub struct EncapDecapRatio {
    pub object: String,
    pub frame_bytes: u32,
    pub test_run: f64,
    pub test_run_above_floor: Option<f64>,
    pub program: f64,
    pub program_above_floor: Option<f64>,
}

pub fn encap_decap_ratios(results: &[MicrobenchResult]) -> Vec<EncapDecapRatio> {
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    results
        .iter()
        .filter(|r| r.curve.is_empty() && r.program == "encap")
        .filter_map(|encap| {
            let decap = results.iter().find(|r| {
                r.curve.is_empty() && r.program == "decap-tc" && r.object == encap.object && r.frame_bytes == encap.frame_bytes
            })?;
            Some(EncapDecapRatio {
                object: encap.object.clone(),
                frame_bytes: encap.frame_bytes,
                test_run: encap.test_run_ns.median / decap.test_run_ns.median,
                test_run_above_floor: ratio(encap.test_run_above_floor_ns, decap.test_run_above_floor_ns),
                program: encap.program_ns.median / decap.program_ns.median,
                program_above_floor: ratio(encap.program_above_floor_ns, decap.program_above_floor_ns),
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

    #[test]
    fn figures_above_the_floor_use_the_floor_of_the_same_hook_method_and_point() {
        let line = |object: &str, program: &str, curve: &str, ns: f64| {
            serde_json::from_str::<Sample>(&format!(
                "{{\"object\":\"{object}\",\"program\":\"{program}\",\"method\":\"single-runs\",\"curve\":\"{curve}\",\"size\":10,\
                 \"frame_bytes\":64,\"wire_bytes\":114,\"runs\":1000,\"test_run_ns\":{ns},\"program_ns\":{ns},\"repetition\":0,\"elapsed_s\":0.1}}"
            ))
            .unwrap()
        };
        let results = summarize(vec![
            line("floor", "floor-tc", "", 50.0),
            line("floor", "floor-xdp", "", 40.0),
            line("floor", "floor-tc", "fdb", 60.0),
            line("current", "encap", "", 200.0),
            line("current", "decap-tc", "", 150.0),
            line("current", "decap", "", 100.0),
            line("current", "encap", "fdb", 300.0),
            line("current", "decap", "fdb", 90.0),
        ]);
        let above = |program: &str, curve: &str| {
            results.iter().find(|r| r.program == program && r.curve == curve).and_then(|r| r.test_run_above_floor_ns)
        };
        assert_eq!(above("encap", ""), Some(150.0));
        assert_eq!(above("decap", ""), Some(60.0));
        assert_eq!(above("encap", "fdb"), Some(240.0));
        // No XDP floor at that point: the main one.
        assert_eq!(above("decap", "fdb"), Some(50.0));
        let ratios = encap_decap_ratios(&results);
        assert_eq!(ratios.len(), 1);
        assert_eq!((ratios[0].test_run, ratios[0].test_run_above_floor), (200.0 / 150.0, Some(150.0 / 100.0)));
    }
}
