//! The chart: one panel per figure, bars for the medians of each topology
//! grouped by underlay profile, whiskers from minimum to maximum; a
//! panel for the micro-benchmark and one per cost curve (program time);
//! and one per cost curve of the delivered rate in the lab. SVG, so no
//! font or image library is needed.
use std::path::Path;

use anyhow::anyhow;
use plotters::{
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

use super::{
    metrics::{Better, FigureId},
    microbench::MicrobenchResult,
    report::Report,
    stats::Summary,
    topology::{Cell, Profile, Topology},
};

/// Figures drawn, in panel order (the BPF figures exist for one topology
/// only and are read better from the table).
const CHARTED: [FigureId; 8] = [
    FigureId::Tcp1Gbps,
    FigureId::Tcp4Gbps,
    FigureId::Udp64DeliveredKpps,
    FigureId::CpuNsPerPacket,
    FigureId::RrUdpP50Us,
    FigureId::RrUdpP99Us,
    FigureId::RrTcpP50Us,
    FigureId::RrTcpP99Us,
];

const PALETTE: [RGBColor; 6] = [
    RGBColor(0x4c, 0x72, 0xb0),
    RGBColor(0xdd, 0x84, 0x52),
    RGBColor(0x55, 0xa8, 0x68),
    RGBColor(0x81, 0x72, 0xb3),
    RGBColor(0xc4, 0x4e, 0x52),
    RGBColor(0x93, 0x78, 0x60),
];

const FONT: &str = "sans-serif";

/// One bar: where, how high, its spread, its colour and a label under it.
struct Bar {
    x: f64,
    width: f64,
    summary: Option<Summary>,
    color: RGBColor,
}

/// A group of bars with a name above it.
struct Group {
    name: String,
    bars: Vec<Bar>,
}

pub fn draw(report: &Report, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1500, 1875)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_error)?;
    let (header, body) = root.split_vertically(70);
    let title = format!(
        "routed vs kernel-vxlan vs overlay: medians, whiskers min–max over {} repetition(s){}",
        report.meta.repetitions,
        if report.meta.quick { " (--quick smoke run)" } else { "" }
    );
    header.draw(&Text::new(title, (20, 12), (FONT, 22).into_font())).map_err(draw_error)?;
    let topologies = Topology::all();
    for (index, topology) in topologies.iter().enumerate() {
        let x = 20 + index as i32 * 220;
        header.draw(&Rectangle::new([(x, 44), (x + 16, 60)], PALETTE[index % PALETTE.len()].filled())).map_err(draw_error)?;
        header.draw(&Text::new(topology.name(), (x + 22, 45), (FONT, 16).into_font())).map_err(draw_error)?;
    }

    let panels = body.split_evenly((5, 3));
    for (panel, id) in panels.iter().zip(CHARTED) {
        let Some(figure) = report.figure(id) else { continue };
        let groups: Vec<Group> = Profile::ALL
            .iter()
            .enumerate()
            .map(|(g, profile)| Group {
                name: profile.name().into(),
                bars: topologies
                    .iter()
                    .enumerate()
                    .map(|(k, topology)| {
                        let width = 0.8 / topologies.len() as f64;
                        Bar {
                            x: g as f64 + 0.1 + k as f64 * width,
                            width,
                            summary: figure.cell(Cell { topology: *topology, profile: *profile }).and_then(|c| c.summary.clone()),
                            color: PALETTE[k % PALETTE.len()],
                        }
                    })
                    .collect(),
            })
            .collect();
        let hint = match figure.better {
            Better::Higher => ", higher is better",
            Better::Lower => ", lower is better",
            Better::Neither => "",
        };
        draw_panel(panel, &format!("{} ({}{hint})", figure.label, figure.unit), figure.unit, &groups)?;
    }

    if !report.microbench.is_empty() {
        // This build and the floor; variants and curves are in the tables and panels below.
        let main: Vec<&MicrobenchResult> =
            report.microbench.iter().filter(|r| r.curve.is_empty() && (r.object == "current" || r.object == "floor")).collect();
        let mut cases: Vec<(String, String)> = main.iter().map(|r| (r.program.clone(), r.method.clone())).collect();
        cases.sort();
        cases.dedup();
        let mut sizes: Vec<u32> = main.iter().map(|r| r.frame_bytes).collect();
        sizes.sort_unstable();
        sizes.dedup();
        let groups: Vec<Group> = cases
            .iter()
            .enumerate()
            .map(|(g, (program, method))| Group {
                name: format!("{program} {method}"),
                bars: sizes
                    .iter()
                    .enumerate()
                    .map(|(k, size)| {
                        let width = 0.8 / sizes.len() as f64;
                        Bar {
                            x: g as f64 + 0.1 + k as f64 * width,
                            width,
                            summary: main
                                .iter()
                                .find(|r| &r.program == program && &r.method == method && r.frame_bytes == *size)
                                .map(|r| r.test_run_ns.clone()),
                            color: PALETTE[(3 + k) % PALETTE.len()],
                        }
                    })
                    .collect(),
            })
            .collect();
        let sizes_text: Vec<String> = sizes.iter().map(|s| format!("{s} B")).collect();
        let title = format!("BPF_PROG_TEST_RUN ns per packet (frames {}, lower is better)", sizes_text.join(" / "));
        draw_panel(&panels[8], &title, "ns", &groups)?;
        draw_curves(report, &panels[9..12])?;
    }
    draw_delivered_curves(report, &panels[12..15])?;
    root.present().map_err(draw_error)?;
    Ok(())
}

/// One panel per cost curve of the lab: a bar per point, the delivered
/// rate (the CPU per packet is in the table).
fn draw_delivered_curves<DB: DrawingBackend>(report: &Report, panels: &[DrawingArea<DB, plotters::coord::Shift>]) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    for (panel, curve) in panels.iter().zip(super::curves::Curve::ALL) {
        let points: Vec<_> = report.curves.iter().filter(|r| r.curve == curve).collect();
        if points.is_empty() {
            continue;
        }
        let groups: Vec<Group> = points
            .iter()
            .enumerate()
            .map(|(g, result)| Group {
                name: format!("{} = {}", curve.name(), result.size),
                bars: vec![Bar { x: g as f64 + 0.3, width: 0.4, summary: result.delivered_mpps.clone(), color: PALETTE[(g + 2) % PALETTE.len()] }],
            })
            .collect();
        let title = format!("lab, {}: 64 B UDP delivered as {} grows (Mpps, higher is better)", super::curves::CELL.name(), curve.name());
        draw_panel(panel, &title, "Mpps", &groups)?;
    }
    Ok(())
}

/// One panel per cost curve: a group per point, a bar per program (time
/// in the program alone, from BPF statistics).
fn draw_curves<DB: DrawingBackend>(report: &Report, panels: &[DrawingArea<DB, plotters::coord::Shift>]) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let mut curves: Vec<&str> = report.microbench.iter().filter(|r| !r.curve.is_empty()).map(|r| r.curve.as_str()).collect();
    curves.dedup();
    const PROGRAMS: [&str; 4] = ["floor-tc", "decap", "decap-tc", "encap"];
    for (panel, curve) in panels.iter().zip(curves) {
        let mut sizes: Vec<u32> = report.microbench.iter().filter(|r| r.curve == curve).map(|r| r.size).collect();
        sizes.dedup();
        let groups: Vec<Group> = sizes
            .iter()
            .enumerate()
            .map(|(g, size)| Group {
                name: format!("{curve} = {size}"),
                bars: PROGRAMS
                    .iter()
                    .enumerate()
                    .map(|(k, program)| {
                        let width = 0.8 / PROGRAMS.len() as f64;
                        Bar {
                            x: g as f64 + 0.1 + k as f64 * width,
                            width,
                            summary: report
                                .microbench
                                .iter()
                                .find(|r| r.curve == curve && r.size == *size && r.program == *program)
                                .map(|r| r.program_ns.clone()),
                            color: PALETTE[k % PALETTE.len()],
                        }
                    })
                    .collect(),
            })
            .collect();
        let title = format!("cost curve {curve}: ns in the program, bars {} (lower is better)", PROGRAMS.join(" / "));
        draw_panel(panel, &title, "ns", &groups)?;
    }
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(area: &DrawingArea<DB, plotters::coord::Shift>, title: &str, unit: &str, groups: &[Group]) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let highest = groups
        .iter()
        .flat_map(|g| &g.bars)
        .filter_map(|b| b.summary.as_ref().map(|s| s.max))
        .fold(0.0f64, f64::max);
    let top = if highest > 0.0 { highest * 1.25 } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 14))
        .margin(8)
        .x_label_area_size(6)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..groups.len() as f64, 0f64..top)
        .map_err(draw_error)?;
    chart.configure_mesh().disable_x_mesh().x_labels(0).y_desc(unit).label_style((FONT, 12)).draw().map_err(draw_error)?;
    let bars: Vec<&Bar> = groups.iter().flat_map(|g| &g.bars).collect();
    chart
        .draw_series(bars.iter().filter_map(|bar| {
            let height = bar.summary.as_ref()?.median;
            Some(Rectangle::new([(bar.x, 0.0), (bar.x + bar.width * 0.9, height)], bar.color.filled()))
        }))
        .map_err(draw_error)?;
    chart
        .draw_series(bars.iter().filter_map(|bar| {
            let summary = bar.summary.as_ref()?;
            let x = bar.x + bar.width * 0.45;
            Some(PathElement::new(vec![(x, summary.min), (x, summary.max)], BLACK.stroke_width(1)))
        }))
        .map_err(draw_error)?;
    // A cell without any value is marked, not left looking like zero.
    let centered = |size| TextStyle::from((FONT, size).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
    chart
        .draw_series(bars.iter().filter(|bar| bar.summary.is_none()).map(|bar| {
            Text::new("failed", (bar.x + bar.width * 0.45, top * 0.02), centered(11).color(&bar.color))
        }))
        .map_err(draw_error)?;
    chart
        .draw_series(groups.iter().enumerate().map(|(g, group)| Text::new(group.name.clone(), (g as f64 + 0.5, top * 0.97), centered(12))))
        .map_err(draw_error)?;
    Ok(())
}

fn draw_error<E: std::error::Error + Send + Sync>(error: DrawingAreaErrorKind<E>) -> anyhow::Error {
    anyhow!("drawing the chart: {error}")
}
