//! The results: summarized per figure and cell, with each overlay figure as
//! a ratio to kernel-vxlan and to routed; written as Markdown and JSON.
use std::fmt::Write as _;

use serde::Serialize;

use super::{
    curves::CurveResult,
    metrics::{Better, FigureId, Metric, Timing},
    microbench::MicrobenchResult,
    stats::Summary,
    topology::{Cell, DecapMode, Profile, Topology},
};

/// One value measured in one repetition.
#[derive(Clone, Debug)]
pub struct Sample {
    pub figure: FigureId,
    pub cell: Cell,
    pub value: f64,
}

/// A measurement that failed; its figures are missing for that repetition.
#[derive(Clone, Debug, Serialize)]
pub struct Failure {
    pub metric: Metric,
    pub cell: String,
    pub repetition: u32,
    pub error: String,
}

/// How the run was made.
#[derive(Clone, Debug, Serialize)]
pub struct Meta {
    pub kernel: String,
    pub cpus: usize,
    pub quick: bool,
    pub repetitions: u32,
    pub timing: Timing,
    pub metrics: Vec<Metric>,
    pub udp_payload_bytes: usize,
    pub udp_sender_threads: usize,
    pub microbench_runs: u32,
    /// /proc/loadavg when the run began (other work on the machine shows here).
    pub load_average_at_start: String,
    pub started_unix_s: u64,
    pub elapsed_s: f64,
}

/// One figure in one cell.
#[derive(Clone, Debug, Serialize)]
pub struct CellResult {
    pub cell: String,
    pub topology: Topology,
    pub profile: Profile,
    /// Over the repetitions that succeeded; `None` if none did.
    pub summary: Option<Summary>,
    pub failed_repetitions: u32,
    /// overlay median / kernel-vxlan median in the same profile (overlay cells only).
    pub ratio_to_kernel_vxlan: Option<f64>,
    /// overlay median / routed median in the same profile (overlay cells only).
    pub ratio_to_routed: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FigureResult {
    pub id: FigureId,
    pub label: &'static str,
    pub unit: &'static str,
    pub better: Better,
    pub cells: Vec<CellResult>,
}

impl FigureResult {
    pub fn cell(&self, cell: Cell) -> Option<&CellResult> {
        self.cells.iter().find(|c| c.topology == cell.topology && c.profile == cell.profile)
    }

    fn median(&self, cell: Cell) -> Option<f64> {
        self.cell(cell)?.summary.as_ref().map(|s| s.median)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub meta: Meta,
    pub cells: Vec<String>,
    pub figures: Vec<FigureResult>,
    pub failures: Vec<Failure>,
    pub microbench: Vec<MicrobenchResult>,
    /// The delivered rate along the cost curves (`curves`).
    pub curves: Vec<CurveResult>,
}

impl Report {
    pub fn new(
        meta: Meta,
        cells: &[Cell],
        samples: &[Sample],
        failures: Vec<Failure>,
        microbench: Vec<MicrobenchResult>,
        curves: Vec<CurveResult>,
    ) -> Report {
        let figures = FigureId::ALL
            .into_iter()
            .filter(|id| meta.metrics.contains(&id.info().metric))
            .map(|id| figure_result(id, cells, samples, &failures))
            .collect();
        Report { meta, cells: cells.iter().map(|c| c.name()).collect(), figures, failures, microbench, curves }
    }

    pub fn figure(&self, id: FigureId) -> Option<&FigureResult> {
        self.figures.iter().find(|f| f.id == id)
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let meta = &self.meta;
        let _ = writeln!(out, "# Benchmark: routed vs kernel-vxlan vs overlay\n");
        let _ = writeln!(
            out,
            "Kernel {}, {} CPUs, load average at start {}. {} repetition(s) per cell, interleaved; windows of {:.1} s after {:.1} s of warm-up{}. \
             Each cell shows the median and, in brackets, the minimum and maximum over the repetitions. \
             Ratios are overlay median / reference median in the same profile: above 1 is better for throughput and rates, below 1 for times.\n",
            meta.kernel,
            meta.cpus,
            meta.load_average_at_start.trim(),
            meta.repetitions,
            meta.timing.window.as_secs_f64(),
            meta.timing.warmup.as_secs_f64(),
            if meta.quick { " (--quick: a smoke run, not a measurement)" } else { "" }
        );
        let topologies = Topology::all();
        let overlays: Vec<Topology> = topologies.iter().copied().filter(|t| t.is_overlay()).collect();
        for profile in Profile::ALL {
            let _ = writeln!(out, "## Underlay profile: {}\n", profile.name());
            let mut header = vec!["figure".to_string()];
            header.extend(topologies.iter().map(|t| t.name()));
            for overlay in &overlays {
                header.push(format!("{} / kernel-vxlan", overlay.name()));
                header.push(format!("{} / routed", overlay.name()));
            }
            let _ = writeln!(out, "| {} |", header.join(" | "));
            let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
            for figure in &self.figures {
                let decimals = figure.id.info().decimals;
                let mut row = vec![format!("{} ({})", figure.label, figure.unit)];
                for topology in &topologies {
                    row.push(match figure.cell(Cell { topology: *topology, profile }) {
                        Some(result) => format_cell(result, decimals),
                        None => "·".into(),
                    });
                }
                for overlay in &overlays {
                    let result = figure.cell(Cell { topology: *overlay, profile });
                    row.push(format_ratio(result.and_then(|r| r.ratio_to_kernel_vxlan)));
                    row.push(format_ratio(result.and_then(|r| r.ratio_to_routed)));
                }
                let _ = writeln!(out, "| {} |", row.join(" | "));
            }
            let _ = writeln!(out);
        }
        if !self.microbench.is_empty() {
            out.push_str(&super::microbench::markdown(&self.microbench));
        }
        if !self.curves.is_empty() {
            out.push_str(&super::curves::markdown(&self.curves));
        }
        let targets = self.targets();
        if !targets.is_empty() {
            let _ = writeln!(out, "## Targets of the performance issue\n");
            let _ = writeln!(out, "| target | measured (medians) | met |");
            let _ = writeln!(out, "|---|---|---|");
            for target in targets {
                let verdict = match target.met {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "?",
                };
                let _ = writeln!(out, "| {} | {} | {verdict} |", target.name, target.measured);
            }
            let _ = writeln!(out);
        }
        if !self.failures.is_empty() {
            let _ = writeln!(out, "## Failed measurements\n");
            for failure in &self.failures {
                let _ = writeln!(
                    out,
                    "- {} in {}, repetition {}: {}",
                    failure.metric.name(),
                    failure.cell,
                    failure.repetition + 1,
                    failure.error.replace('\n', " ")
                );
            }
            let _ = writeln!(out);
        }
        let _ = writeln!(out, "Run time: {:.0} s.", meta.elapsed_s);
        out
    }

    /// The targets, judged on the medians of this run.
    pub fn targets(&self) -> Vec<Target> {
        let mut targets = Vec::new();
        let median = |id: FigureId, topology: Topology, profile: Profile| {
            self.figure(id).and_then(|f| f.median(Cell { topology, profile }))
        };
        for overlay in Topology::all().into_iter().filter(|t| t.is_overlay()) {
            let o = overlay.name();
            for profile in Profile::ALL {
                let p = profile.name();
                let compare = |id: FigureId, reference: Topology, factor: f64, higher_is_better: bool, strict: bool| {
                    if self.figure(id).is_none() {
                        return (None, "not measured in this run".to_string());
                    }
                    let decimals = id.info().decimals;
                    let (value, reference_value) = (median(id, overlay, profile), median(id, reference, profile));
                    let (Some(value), Some(reference_value)) = (value, reference_value) else {
                        return match value {
                            None => (Some(false), format!("{o} failed in every repetition")),
                            Some(_) => (None, format!("{} failed in every repetition", reference.name())),
                        };
                    };
                    let bound = reference_value * factor;
                    let met = match (higher_is_better, strict) {
                        (true, false) => value >= bound,
                        (true, true) => value > bound,
                        (false, false) => value <= bound,
                        (false, true) => value < bound,
                    };
                    // Three decimals: a ratio just under a bound must not read as on it.
                    let measured = format!(
                        "{value:.*} vs {} {reference_value:.*} ({:.3}×)",
                        decimals,
                        reference.name(),
                        decimals,
                        value / reference_value
                    );
                    (Some(met), measured)
                };
                let mut push = |name: String, (met, measured): (Option<bool>, String)| targets.push(Target { name, measured, met });
                push(
                    format!("{o}/{p}: UDP 64 B delivered ≥ 1.5× kernel-vxlan"),
                    compare(FigureId::Udp64DeliveredKpps, Topology::KernelVxlan, 1.5, true, false),
                );
                for id in [FigureId::RrUdpP50Us, FigureId::RrUdpP99Us, FigureId::RrTcpP50Us, FigureId::RrTcpP99Us] {
                    let label = id.info().label;
                    push(format!("{o}/{p}: {label} ≤ routed"), compare(id, Topology::Routed, 1.0, false, false));
                    push(format!("{o}/{p}: {label} < kernel-vxlan"), compare(id, Topology::KernelVxlan, 1.0, false, true));
                }
                push(format!("{o}/{p}: TCP 1 stream ≥ 1.0× routed"), compare(FigureId::Tcp1Gbps, Topology::Routed, 1.0, true, false));
                push(
                    format!("{o}/{p}: CPU per packet < kernel-vxlan"),
                    compare(FigureId::CpuNsPerPacket, Topology::KernelVxlan, 1.0, false, true),
                );
            }
        }
        // Issue 13: time above the floor (the empty program of the same
        // hook, same run), and encapsulation against TC decapsulation.
        let main_case = |program: &str, method: &str| {
            self.microbench.iter().find(|r| {
                r.object == "current" && r.curve.is_empty() && r.program == program && r.method == method && r.frame_bytes == 64
            })
        };
        for (program, method, limit) in [("decap", "live-frames", 40.0), ("decap-tc", "single-runs", 40.0), ("encap", "single-runs", 60.0)] {
            if let Some(result) = main_case(program, method) {
                targets.push(Target {
                    name: format!("{program} ≤ {limit:.0} ns above the floor per 64 B frame ({method}, program alone)"),
                    measured: format!(
                        "program {:.1} ns, {:.1} above the floor; test run {:.1} ns, {:.1} above",
                        result.program_ns.median,
                        result.program_above_floor_ns.unwrap_or(f64::NAN),
                        result.test_run_ns.median,
                        result.test_run_above_floor_ns.unwrap_or(f64::NAN),
                    ),
                    met: result.program_above_floor_ns.map(|above| above <= limit),
                });
            }
        }
        for ratio in super::microbench::encap_decap_ratios(&self.microbench) {
            if ratio.object == "current" && ratio.frame_bytes == 64 {
                targets.push(Target {
                    name: "encap ≤ 1.5× decap-tc per 64 B frame (single-runs, program alone)".into(),
                    measured: format!(
                        "{:.2}× ({:.2}× above the floor; test run {:.2}×)",
                        ratio.program,
                        ratio.program_above_floor.unwrap_or(f64::NAN),
                        ratio.test_run
                    ),
                    met: Some(ratio.program <= 1.5),
                });
            }
        }
        targets
    }

    /// What is wrong with a `--quick` run, for `cargo xtask test`: every
    /// reference cell and every overlay cell on the wire-like underlay (the
    /// configuration the namespace tests prove) must have a positive value
    /// for every figure, and the micro-benchmark must have run. XDP overlay
    /// cells on veth's default underlay have no values: the agent refuses
    /// XDP decapsulation on a veth with tx-checksumming on (XDP loses the
    /// skb's checksum state there; TC decapsulation is the mode for it), and
    /// the cell's failure carries its reason; those are returned as warnings.
    pub fn check_complete(&self, cells: &[Cell]) -> (Vec<String>, Vec<String>) {
        let (mut problems, mut warnings) = (Vec::new(), Vec::new());
        for figure in &self.figures {
            for cell in cells.iter().filter(|c| figure.id.info().metric.applies_to(**c)) {
                let ok = figure.median(*cell).is_some_and(|v| v > 0.0 && v.is_finite());
                if ok {
                    continue;
                }
                let message = format!("{} in {}: no positive value", figure.id.info().label, cell.name());
                if cell.topology == Topology::Overlay(DecapMode::Xdp) && cell.profile == Profile::VethDefault {
                    warnings.push(message);
                } else {
                    problems.push(message);
                }
            }
        }
        if self.meta.metrics.contains(&Metric::Microbench) {
            for program in ["decap", "decap-tc", "encap", "floor-xdp", "floor-tc"] {
                let object = if program.starts_with("floor") { "floor" } else { "current" };
                if !self.microbench.iter().any(|r| r.object == object && r.program == program && r.test_run_ns.median > 0.0 && r.program_ns.median > 0.0) {
                    problems.push(format!("micro-benchmark: no {program} result"));
                }
            }
        }
        if self.meta.metrics.contains(&Metric::Curves) {
            for result in &self.curves {
                if !result.delivered_mpps.as_ref().is_some_and(|s| s.median > 0.0) {
                    problems.push(format!("curves: no delivered rate at {}={}", result.curve.name(), result.size));
                }
            }
            if self.curves.is_empty() {
                problems.push("curves: no point measured".into());
            }
        }
        (problems, warnings)
    }
}

/// One target of the issue, judged.
pub struct Target {
    pub name: String,
    pub measured: String,
    /// `None` when it cannot be judged (not measured, or the reference failed).
    pub met: Option<bool>,
}

fn figure_result(id: FigureId, cells: &[Cell], samples: &[Sample], failures: &[Failure]) -> FigureResult {
    let info = id.info();
    let mut results: Vec<CellResult> = cells
        .iter()
        .filter(|cell| info.metric.applies_to(**cell))
        .map(|cell| {
            let values: Vec<f64> = samples.iter().filter(|s| s.figure == id && s.cell == *cell).map(|s| s.value).collect();
            let failed = failures.iter().filter(|f| f.metric == info.metric && f.cell == cell.name()).count() as u32;
            CellResult {
                cell: cell.name(),
                topology: cell.topology,
                profile: cell.profile,
                summary: Summary::of(&values),
                failed_repetitions: failed,
                ratio_to_kernel_vxlan: None,
                ratio_to_routed: None,
            }
        })
        .collect();
    let median_of = |results: &[CellResult], topology: Topology, profile: Profile| {
        results.iter().find(|r| r.topology == topology && r.profile == profile)?.summary.as_ref().map(|s| s.median)
    };
    let ratios: Vec<(Option<f64>, Option<f64>)> = results
        .iter()
        .map(|result| {
            let own = result.summary.as_ref().map(|s| s.median).filter(|_| result.topology.is_overlay());
            let ratio = |reference: Option<f64>| Some(own? / reference.filter(|r| *r > 0.0)?);
            (
                ratio(median_of(&results, Topology::KernelVxlan, result.profile)),
                ratio(median_of(&results, Topology::Routed, result.profile)),
            )
        })
        .collect();
    for (result, (to_kernel_vxlan, to_routed)) in results.iter_mut().zip(ratios) {
        result.ratio_to_kernel_vxlan = to_kernel_vxlan;
        result.ratio_to_routed = to_routed;
    }
    FigureResult { id, label: info.label, unit: info.unit, better: info.better, cells: results }
}

fn format_summary(summary: &Summary, decimals: usize) -> String {
    if summary.values.len() == 1 {
        return format!("{:.*}", decimals, summary.median);
    }
    format!("{:.*} ({:.*}–{:.*})", decimals, summary.median, decimals, summary.min, decimals, summary.max)
}

fn format_cell(result: &CellResult, decimals: usize) -> String {
    let failed = match result.failed_repetitions {
        0 => String::new(),
        n => format!(" [{n} failed]"),
    };
    match &result.summary {
        Some(summary) => format!("{}{failed}", format_summary(summary, decimals)),
        None => format!("failed{failed}"),
    }
}

fn format_ratio(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "·".into(), |r| format!("{r:.2}×"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            kernel: "6.18".into(),
            cpus: 2,
            quick: true,
            repetitions: 2,
            timing: Timing { window: std::time::Duration::from_secs(1), warmup: std::time::Duration::ZERO },
            metrics: vec![Metric::Tcp1],
            udp_payload_bytes: 64,
            udp_sender_threads: 2,
            microbench_runs: 0,
            load_average_at_start: "0.00".into(),
            started_unix_s: 0,
            elapsed_s: 1.0,
        }
    }

    #[test]
    fn overlay_figures_get_ratios_to_both_references() {
        let cells = Cell::all();
        let wire = |topology| Cell { topology, profile: Profile::WireLike };
        let sample = |topology, value| Sample { figure: FigureId::Tcp1Gbps, cell: wire(topology), value };
        let overlay = Topology::Overlay(DecapMode::Xdp);
        let samples = vec![
            sample(Topology::Routed, 10.0),
            sample(Topology::Routed, 12.0),
            sample(Topology::KernelVxlan, 8.0),
            sample(overlay, 11.0),
            sample(overlay, 9.0),
        ];
        let failures = vec![Failure {
            metric: Metric::Tcp1,
            cell: Cell { topology: overlay, profile: Profile::VethDefault }.name(),
            repetition: 0,
            error: "no connection".into(),
        }];
        let report = Report::new(meta(), &cells, &samples, failures, Vec::new(), Vec::new());
        let figure = report.figure(FigureId::Tcp1Gbps).unwrap();
        let result = figure.cell(wire(overlay)).unwrap();
        assert_eq!(result.summary.as_ref().unwrap().median, 10.0);
        assert_eq!((result.ratio_to_kernel_vxlan, result.ratio_to_routed), (Some(1.25), Some(10.0 / 11.0)));
        assert_eq!(figure.cell(wire(Topology::Routed)).unwrap().ratio_to_routed, None);
        let markdown = report.markdown();
        assert!(
            markdown.contains("| TCP throughput, 1 stream (Gbit/s) | 11.00 (10.00–12.00) | 8.00 | 10.00 (9.00–11.00) | failed | 1.25× | 0.91× | · | · |"),
            "{markdown}"
        );
        assert!(markdown.contains("failed [1 failed]"), "{markdown}");
        let (problems, warnings) = report.check_complete(&cells);
        assert_eq!(problems.len(), 4, "routed, kernel-vxlan and overlay-tc on veth-default and overlay-tc on wire-like have no value: {problems:?}");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
    }
}
