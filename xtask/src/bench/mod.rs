//! `cargo xtask bench`: routed vs kernel-vxlan vs overlay on this machine.
//!
//! Builds every cell (topology × underlay profile, see `topology`) at once
//! as separate labs of network namespaces, keeps them up for the whole run
//! (idle labs carry no traffic, so they do not disturb the one measured),
//! and measures them interleaved: for each repetition, for each metric,
//! every cell in turn (in a rotated order), so drift on this shared machine
//! touches all cells alike. Then writes the report as Markdown and JSON and
//! a chart under target/bench/.
//!
//! Module map: `topology` (cells and their labs), `metrics` (what is
//! measured and how), `microbench` (BPF_PROG_TEST_RUN), `curves` (the
//! delivered rate as the tables and flows grow, in a lab of its own), `stats`, `report`
//! (Markdown, JSON, targets), `chart` (SVG), `cleanup` (guards and the
//! interrupt handler).
mod chart;
pub mod cleanup;
pub mod cluster_scale;
mod curves;
mod metrics;
mod microbench;
mod report;
mod stats;
mod topology;

use std::{
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, bail};
use metrics::{Metric, Timing};
use overlay_lab::netns;
use report::{Failure, Meta, Report, Sample};
use topology::{Cell, TestBed};

use crate::{build, is_root, root, setup};

/// Benchmark options (`cargo xtask bench --help`).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Options {
    /// One short repetition of every cell (1 s windows) and a small
    /// micro-benchmark: proves the harness works, measures little.
    #[arg(long)]
    pub quick: bool,
    /// Also write the JSON report to PATH (it is always written to target/bench/report.json).
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Repetitions of every cell [default: 3, or 1 with --quick].
    #[arg(long, value_name = "N")]
    pub repetitions: Option<u32>,
    /// Seconds of each measurement window [default: 5, or 1 with --quick].
    #[arg(long, value_name = "SECS")]
    pub duration: Option<u32>,
    /// Only these metrics (comma-separated) [default: all].
    #[arg(long, value_delimiter = ',', value_name = "METRIC")]
    pub only: Vec<Metric>,
    /// BPF_PROG_TEST_RUN runs per micro-benchmark case [default: 1000000, or 100000 with --quick].
    #[arg(long, value_name = "N")]
    pub microbench_runs: Option<u32>,
    /// Another build of the eBPF object to measure in the micro-benchmark
    /// beside this one, in the same run (repeatable): how a datapath change
    /// is measured against what it replaces.
    #[arg(long = "microbench-object", value_name = "LABEL=PATH", value_parser = parse_object)]
    pub microbench_objects: Vec<(String, PathBuf)>,
    /// Also measure the receive-side GRO experiment (`overlay-tc-gro`
    /// cells, see `topology::DecapMode::TcGro`).
    #[arg(long)]
    pub gro_experiment: bool,
    /// Also measure the headroom experiment (`overlay-tc-headroom` cells,
    /// see `topology::DecapMode::TcHeadroom`).
    #[arg(long)]
    pub headroom_experiment: bool,
    /// Instead of the datapath cells: cluster mode at scale (a real etcd,
    /// simulated nodes, one agent; `cluster_scale`). Writes target/bench/cluster-scale.json.
    #[arg(long)]
    pub cluster_scale: bool,
    /// Simulated nodes of --cluster-scale [default: 1000].
    #[arg(long, value_name = "N", requires = "cluster_scale")]
    pub nodes: Option<u32>,
    /// Endpoints of each simulated node of --cluster-scale [default: 20].
    #[arg(long, value_name = "N", requires = "cluster_scale")]
    pub endpoints: Option<u32>,
}

fn parse_object(text: &str) -> Result<(String, PathBuf), String> {
    let (label, path) = text.split_once('=').ok_or_else(|| format!("`{text}` is not LABEL=PATH"))?;
    if label.is_empty() || label.contains([',', '"', '=']) || label == "current" || label == "floor" {
        return Err(format!("label `{label}`: must be non-empty, without `,`, `\"` or `=`, and not `current` or `floor`"));
    }
    let path = PathBuf::from(path);
    if !path.is_file() {
        return Err(format!("{}: no such eBPF object", path.display()));
    }
    let path = path.canonicalize().map_err(|error| format!("{}: {error}", path.display()))?;
    if path.to_string_lossy().contains(',') {
        return Err(format!("{}: the path must not contain `,`", path.display()));
    }
    Ok((label.to_owned(), path))
}

/// Where the report and chart go.
pub fn output_dir() -> PathBuf {
    root().join("target/bench")
}

/// Runs the benchmark and writes its outputs; returns the report.
pub fn bench(options: &Options) -> anyhow::Result<Report> {
    if !is_root() {
        bail!("the benchmark creates network namespaces and loads BPF programs: run it as root");
    }
    if options.gro_experiment {
        topology::enable_gro_experiment();
    }
    if options.headroom_experiment {
        topology::enable_headroom_experiment();
    }
    let repetitions = options.repetitions.unwrap_or(if options.quick { 1 } else { 3 });
    let seconds = options.duration.unwrap_or(if options.quick { 1 } else { 5 });
    if repetitions == 0 || seconds == 0 {
        bail!("--repetitions and --duration must be at least 1");
    }
    let timing = Timing {
        window: Duration::from_secs(u64::from(seconds)),
        warmup: if options.quick { Duration::from_millis(200) } else { Duration::from_secs(1) },
    };
    let microbench_runs = options.microbench_runs.unwrap_or(if options.quick { 100_000 } else { 1_000_000 });
    let metrics: Vec<Metric> = if options.only.is_empty() { Metric::ALL.to_vec() } else { options.only.clone() };

    setup::ensure_bench_tools()?;
    let overlay_bin = build::build()?;
    let stale = netns::sweep_stale();
    if !stale.is_empty() {
        println!("removed namespaces left by killed runs: {}", stale.join(", "));
    }
    cleanup::install_interrupt_handler()?;
    let started = Instant::now();
    let load_average_at_start = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let microbench = if metrics.contains(&Metric::Microbench) {
        println!("\n== BPF_PROG_TEST_RUN micro-benchmark: {microbench_runs} runs per case, {repetitions} repetition(s)");
        microbench::run(microbench_runs, repetitions, &options.microbench_objects).context("the micro-benchmark")?
    } else {
        Vec::new()
    };

    let cells = Cell::all();
    let lab_metrics: Vec<Metric> = metrics.iter().copied().filter(|m| *m != Metric::Microbench).collect();
    let curve_points = if metrics.contains(&Metric::Curves) { curves::points(options.quick) } else { Vec::new() };
    let measured = if lab_metrics.is_empty() {
        Measured::default()
    } else {
        measure_cells(&cells, &lab_metrics, &curve_points, repetitions, timing, &overlay_bin)?
    };
    let Measured { samples, failures, curve_samples } = measured;
    let curve_results = curves::results(&curve_points, &curve_samples, &failures);

    let meta = Meta {
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        quick: options.quick,
        repetitions,
        timing,
        metrics,
        udp_payload_bytes: metrics::udp_rate::PAYLOAD_BYTES,
        udp_sender_threads: metrics::udp_rate::sender_threads(),
        microbench_runs,
        load_average_at_start,
        started_unix_s: SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    let report = Report::new(meta, &cells, &samples, failures, microbench, curve_results);
    write_outputs(&report, options.json.as_deref())?;
    Ok(report)
}

/// What the labs measured.
#[derive(Default)]
struct Measured {
    samples: Vec<Sample>,
    failures: Vec<Failure>,
    curve_samples: Vec<curves::CurveSample>,
}

/// Builds every cell a metric applies to (and the curves' lab if there
/// are `curve_points`), then runs the interleaved measurements.
fn measure_cells(
    cells: &[Cell],
    metrics: &[Metric],
    curve_points: &[curves::Point],
    repetitions: u32,
    timing: Timing,
    overlay_bin: &std::path::Path,
) -> anyhow::Result<Measured> {
    let cells: Vec<Cell> = cells.iter().copied().filter(|cell| metrics.iter().any(|m| m.applies_to(*cell))).collect();
    if !cells.is_empty() {
        println!("\n== building {} cells (each its own lab: 2 hosts, 1 container each, one underlay switch)", cells.len());
    }
    // A cell that cannot be built fails its measurements; the others go on.
    let mut beds: Vec<(Cell, Result<TestBed, String>)> = Vec::new();
    for cell in &cells {
        cleanup::register_scope(&cell.scope());
        let bed = TestBed::build(*cell, overlay_bin).map_err(|error| format!("{error:#}"));
        match &bed {
            Ok(bed) => {
                for pid in bed.lab.agents.iter().filter_map(|a| a.pid()) {
                    cleanup::register_agent(pid);
                }
                println!("   {}: ready", cell.name());
            }
            Err(error) => println!("   {}: FAILED to build: {error}", cell.name()),
        }
        beds.push((*cell, bed));
    }

    let curve_bed = (!curve_points.is_empty()).then(|| build_curve_bed(curve_points, overlay_bin));

    let runs: Vec<(u32, usize, Metric)> = (0..repetitions)
        .flat_map(|repetition| metrics.iter().enumerate().map(move |(index, metric)| (repetition, index, *metric)))
        .collect();
    let total: usize = runs
        .iter()
        .map(|(_, _, metric)| match metric {
            Metric::Curves => curve_points.len(),
            _ => cells.iter().filter(|c| metric.applies_to(**c)).count(),
        })
        .sum();
    println!("\n== measuring: {total} cell measurements, {repetitions} repetition(s), {} s windows", timing.window.as_secs());
    let started = Instant::now();
    let mut measured = Measured::default();
    let (samples, failures) = (&mut measured.samples, &mut measured.failures);
    let mut done = 0;
    for (repetition, metric_index, metric) in runs {
        if metric == Metric::Curves {
            if let Some(curve_bed) = &curve_bed {
                let run = CurveRun { points: curve_points, repetition, repetitions, timing, started };
                measured.curve_samples.extend(run.measure(curve_bed, &mut done, total, failures));
            }
            continue;
        }
        // Rotate the order, so no cell always runs first (or right after a given one).
        let rotation = (repetition as usize + metric_index) % beds.len().max(1);
        for (cell, bed) in beds[rotation..].iter().chain(&beds[..rotation]).filter(|(cell, _)| metric.applies_to(*cell)) {
            done += 1;
            let outcome = match bed {
                Ok(bed) => metrics::measure(metric, bed, timing),
                Err(error) => Err(anyhow::anyhow!("the cell could not be built: {error}")),
            };
            let progress = format!(
                "[{done:>3}/{total} {:>5}] rep {}/{repetitions} {:<6} {:<26}",
                format_elapsed(started.elapsed()),
                repetition + 1,
                metric.name(),
                cell.name()
            );
            match outcome {
                Ok(outcome) => {
                    println!("{progress} {}", outcome.summary);
                    samples.extend(outcome.figures.into_iter().map(|(figure, value)| Sample { figure, cell: *cell, value }));
                }
                Err(error) => {
                    println!("{progress} FAILED: {error:#}");
                    failures.push(Failure { metric, cell: cell.name(), repetition, error: format!("{error:#}") });
                }
            }
        }
    }
    println!("\n== removing the labs");
    drop(beds);
    drop(curve_bed);
    cleanup::clear();
    Ok(measured)
}

/// Builds the curves' lab, with as many extra ports as the largest VNI point needs.
fn build_curve_bed(points: &[curves::Point], overlay_bin: &std::path::Path) -> Result<curves::CurveBed, String> {
    let extra_ports = points.iter().map(|p| p.tables().extra_vnis).max().unwrap_or(0);
    println!("   curves: building their own lab ({}, {extra_ports} extra ports per host)", curves::CELL.name());
    cleanup::register_scope(curves::SCOPE);
    let started = Instant::now();
    let bed = curves::CurveBed::build(overlay_bin, extra_ports).map_err(|error| format!("{error:#}"));
    match &bed {
        Ok(bed) => {
            for pid in bed.bed.lab.agents.iter().filter_map(|a| a.pid()) {
                cleanup::register_agent(pid);
            }
            println!("   curves: ready ({:.0} s)", started.elapsed().as_secs_f64());
        }
        Err(error) => println!("   curves: FAILED to build: {error}"),
    }
    bed
}

/// One repetition of every curve point.
struct CurveRun<'a> {
    points: &'a [curves::Point],
    repetition: u32,
    repetitions: u32,
    timing: Timing,
    started: Instant,
}

impl CurveRun<'_> {
    /// Sets and measures every point, in an order rotated per repetition.
    fn measure(
        &self,
        bed: &Result<curves::CurveBed, String>,
        done: &mut usize,
        total: usize,
        failures: &mut Vec<Failure>,
    ) -> Vec<curves::CurveSample> {
        let mut samples = Vec::new();
        let rotation = self.repetition as usize % self.points.len().max(1);
        for point in self.points[rotation..].iter().chain(&self.points[..rotation]) {
            *done += 1;
            let outcome = match bed {
                Ok(bed) => bed.configure(*point).and_then(|()| bed.measure(*point, self.timing)),
                Err(error) => Err(anyhow::anyhow!("the curves' lab could not be built: {error}")),
            };
            let progress = format!(
                "[{done:>3}/{total} {:>5}] rep {}/{} curves {:<26}",
                format_elapsed(self.started.elapsed()),
                self.repetition + 1,
                self.repetitions,
                point.name(),
                done = *done,
            );
            match outcome {
                Ok(sample) => {
                    println!(
                        "{progress} {:.0} kpps delivered (sent {:.0}), {:.0} ns CPU per packet; programs: encap {:.0} ns, decap {:.0} ns",
                        sample.delivered_kpps, sample.sent_kpps, sample.cpu_ns_per_packet, sample.encap_ns, sample.decap_ns
                    );
                    samples.push(sample);
                }
                Err(error) => {
                    println!("{progress} FAILED: {error:#}");
                    failures.push(Failure { metric: Metric::Curves, cell: point.name(), repetition: self.repetition, error: format!("{error:#}") });
                }
            }
        }
        samples
    }
}

fn format_elapsed(elapsed: Duration) -> String {
    let seconds = elapsed.as_secs();
    format!("{}m{:02}s", seconds / 60, seconds % 60)
}

fn write_outputs(report: &Report, json_path: Option<&std::path::Path>) -> anyhow::Result<()> {
    let dir = output_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let markdown = report.markdown();
    let json = serde_json::to_string_pretty(report).context("serializing the report")?;
    let markdown_path = dir.join("report.md");
    std::fs::write(&markdown_path, &markdown).with_context(|| format!("writing {}", markdown_path.display()))?;
    let default_json = dir.join("report.json");
    for path in std::iter::once(default_json.as_path()).chain(json_path) {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
    }
    let chart_path = dir.join("chart.svg");
    chart::draw(report, &chart_path)?;
    println!("\n{markdown}");
    println!("written: {}, {}, {}", markdown_path.display(), default_json.display(), chart_path.display());
    if let Some(path) = json_path {
        println!("         {}", path.display());
    }
    Ok(())
}

/// `--quick` run for `cargo xtask test`: the harness must produce every
/// figure of every cell that is expected to work.
pub fn quick_check() -> anyhow::Result<()> {
    let json_path = std::env::temp_dir().join(format!("overlay-bench-quick-{}.json", std::process::id()));
    let options = Options { quick: true, json: Some(json_path.clone()), ..Options::default() };
    let report = bench(&options)?;
    // The JSON written must read back and hold every cell.
    let text = std::fs::read_to_string(&json_path).with_context(|| format!("reading {}", json_path.display()))?;
    let _ = std::fs::remove_file(&json_path);
    let json: serde_json::Value = serde_json::from_str(&text).context("parsing the JSON report")?;
    let cells_in_json = json.get("cells").and_then(|c| c.as_array()).map_or(0, |c| c.len());
    let cells = Cell::all();
    let (mut problems, warnings) = report.check_complete(&cells);
    if cells_in_json != cells.len() {
        problems.push(format!("the JSON report lists {cells_in_json} cells, expected {}", cells.len()));
    }
    for warning in &warnings {
        println!("warning (known limitation, not a harness failure): {warning}");
    }
    if !problems.is_empty() {
        bail!("bench --quick is incomplete:\n  {}", problems.join("\n  "));
    }
    println!("bench --quick: every cell measured");
    Ok(())
}
