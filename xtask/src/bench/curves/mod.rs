//! The delivered-rate side of the cost curves (issue 13, goal 5): 64-byte
//! UDP delivered per second, and CPU time per delivered packet, in one
//! overlay cell as the FDB, the VNIs and the flows grow. The program-time
//! side is the micro-benchmark's (`microbench`, tests/tests/microbench/curves.rs).
//!
//! Each point is set through the agents' real input (their configuration
//! files, reloaded with SIGHUP), checked in the maps (`overlay fdb`,
//! `overlay stats`) before it is measured, and measured with the spread
//! generator (`metrics::spread_udp`). How each curve loads its point:
//!
//! - `fdb`: N remote endpoints in each agent's FDB (the other host's one
//!   container and N-1 more behind the other host); the traffic goes to the
//!   one container, so this measures the table's size, not a spread of
//!   lookups (the lab has one receiving container; the micro-benchmark
//!   spreads the lookups).
//! - `vnis`: N VNIs on each host, each with its own port (a veth pair into
//!   the container's namespace, its own /30) and the other host's endpoint
//!   in it; the traffic goes round all N VNIs (N destinations).
//! - `flows`: N distinct 5-tuples (source ports) to the one container,
//!   spread over one sender thread per CPU.
mod lab;

use std::fmt::Write as _;

pub use lab::{CELL, CurveBed, SCOPE};
use serde::Serialize;

use super::{report::Failure, stats::Summary};

/// A dimension the work grows in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Curve {
    Fdb,
    Vnis,
    Flows,
}

impl Curve {
    pub const ALL: [Curve; 3] = [Curve::Fdb, Curve::Vnis, Curve::Flows];

    pub fn name(self) -> &'static str {
        match self {
            Curve::Fdb => "fdb",
            Curve::Vnis => "vnis",
            Curve::Flows => "flows",
        }
    }

    /// The issue's points, or two small ones for `--quick` (which proves
    /// the harness, not the shape).
    pub fn sizes(self, quick: bool) -> &'static [u32] {
        match (self, quick) {
            (Curve::Fdb, false) => &[10, 1_000, 100_000],
            (Curve::Vnis, false) => &[1, 64, 4_096],
            (Curve::Flows, false) => &[1, 1_000, 50_000],
            (Curve::Fdb, true) => &[10, 1_000],
            (Curve::Vnis, true) => &[1, 4],
            (Curve::Flows, true) => &[1, 100],
        }
    }

    /// What the traffic of a point of this curve is.
    fn traffic(self) -> &'static str {
        match self {
            Curve::Fdb => "1 flow to 1 destination; the table grows",
            Curve::Vnis => "1 flow per VNI, round all VNIs",
            Curve::Flows => "N flows (source ports) to 1 destination",
        }
    }
}

/// One point of one curve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Point {
    pub curve: Curve,
    pub size: u32,
}

/// What each agent's tables hold beyond the base lab (one container per
/// host, in one VNI).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tables {
    /// More remote endpoints behind the other host, in the base VNI.
    pub extra_fdb: u32,
    /// More VNIs, each with a port here and the other host's endpoint.
    pub extra_vnis: u32,
}

impl Tables {
    /// Entries the FDB holds: the other host's container, one endpoint per
    /// extra VNI, and the extra remote endpoints.
    pub fn fdb_entries(self) -> u32 {
        1 + self.extra_vnis + self.extra_fdb
    }

    pub fn vnis(self) -> u32 {
        1 + self.extra_vnis
    }
}

impl Point {
    pub fn name(self) -> String {
        format!("{}={}", self.curve.name(), self.size)
    }

    pub fn tables(self) -> Tables {
        match self.curve {
            Curve::Fdb => Tables { extra_fdb: self.size - 1, extra_vnis: 0 },
            Curve::Vnis => Tables { extra_fdb: 0, extra_vnis: self.size - 1 },
            Curve::Flows => Tables::default(),
        }
    }

    /// Distinct source ports of the traffic.
    pub fn flows(self) -> u32 {
        if self.curve == Curve::Flows { self.size } else { 1 }
    }
}

/// Every point, curve by curve.
pub fn points(quick: bool) -> Vec<Point> {
    Curve::ALL.into_iter().flat_map(|curve| curve.sizes(quick).iter().map(move |&size| Point { curve, size })).collect()
}

/// What one point measured in one repetition.
#[derive(Clone, Copy, Debug)]
pub struct CurveSample {
    pub point: Point,
    pub delivered_kpps: f64,
    pub sent_kpps: f64,
    pub cpu_ns_per_packet: f64,
    /// The encapsulation (sending host) and decapsulation (receiving host)
    /// programs' mean run time under the load.
    pub encap_ns: f64,
    pub decap_ns: f64,
}

/// One point over the repetitions.
#[derive(Clone, Debug, Serialize)]
pub struct CurveResult {
    pub curve: Curve,
    pub size: u32,
    /// What the traffic of the point is.
    pub traffic: &'static str,
    /// 64-byte UDP delivered to the receiving container, in Mpps.
    pub delivered_mpps: Option<Summary>,
    /// What the generator sent, in Mpps.
    pub sent_mpps: Option<Summary>,
    /// The whole machine's busy CPU time over the delivered packets.
    pub cpu_ns_per_packet: Option<Summary>,
    /// The programs' run time per packet under the load (BPF statistics).
    pub encap_ns: Option<Summary>,
    pub decap_ns: Option<Summary>,
    /// Medians over the curve's first point's.
    pub delivered_to_first: Option<f64>,
    pub cpu_to_first: Option<f64>,
    pub failed_repetitions: u32,
}

/// The results of `points`, from the samples and failures of every repetition.
pub fn results(points: &[Point], samples: &[CurveSample], failures: &[Failure]) -> Vec<CurveResult> {
    let mut results: Vec<CurveResult> = points
        .iter()
        .map(|point| {
            let of = |value: fn(&CurveSample) -> f64| {
                let values: Vec<f64> = samples.iter().filter(|s| s.point == *point).map(value).collect();
                Summary::of(&values)
            };
            CurveResult {
                curve: point.curve,
                size: point.size,
                traffic: point.curve.traffic(),
                delivered_mpps: of(|s| s.delivered_kpps / 1e3),
                sent_mpps: of(|s| s.sent_kpps / 1e3),
                cpu_ns_per_packet: of(|s| s.cpu_ns_per_packet),
                encap_ns: of(|s| s.encap_ns),
                decap_ns: of(|s| s.decap_ns),
                delivered_to_first: None,
                cpu_to_first: None,
                failed_repetitions: failures.iter().filter(|f| f.cell == point.name()).count() as u32,
            }
        })
        .collect();
    /// (delivered, CPU per packet) medians.
    type Medians = (Option<f64>, Option<f64>);
    let medians = |r: &CurveResult| -> Medians { (r.delivered_mpps.as_ref().map(|s| s.median), r.cpu_ns_per_packet.as_ref().map(|s| s.median)) };
    let firsts: Vec<(Curve, Medians)> = Curve::ALL
        .into_iter()
        .filter_map(|curve| results.iter().find(|r| r.curve == curve).map(|r| (curve, medians(r))))
        .collect();
    for result in &mut results {
        let Some((_, (first_rate, first_cpu))) = firsts.iter().find(|(curve, _)| *curve == result.curve) else { continue };
        let (rate, cpu) = medians(result);
        let ratio = |own: Option<f64>, first: Option<f64>| Some(own? / first.filter(|f| *f > 0.0)?);
        result.delivered_to_first = ratio(rate, *first_rate);
        result.cpu_to_first = ratio(cpu, *first_cpu);
    }
    results
}

/// The report's section.
pub fn markdown(results: &[CurveResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## Delivered rate along the cost curves ({})\n", lab::CELL.name());
    let _ = writeln!(
        out,
        "64 B UDP delivered to the receiving container and the machine's CPU time per delivered packet, in a lab of its own \
         (overlay with TC decapsulation on the wire-like underlay), each point set through the agents' configuration files \
         and checked in their maps before it is measured; one sender thread per CPU, raw sockets. The `fdb` points measure \
         the table's size with traffic to one container (the lab has one); `vnis` sends round every VNI; `flows` over N \
         source ports. Medians (minimum–maximum); ratios to the curve's first point. The programs' run time per packet \
         is measured under the same load right after (BPF statistics, on only then).\n"
    );
    let _ = writeln!(
        out,
        "| curve | point | traffic | delivered (Mpps) | × first | CPU per delivered packet (ns) | × first | encap program (ns) | decap-tc program (ns) | sent (Mpps) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    for result in results {
        let failed = match result.failed_repetitions {
            0 => String::new(),
            n => format!(" [{n} failed]"),
        };
        let summary = |summary: &Option<Summary>, decimals: usize| match summary {
            Some(s) if s.values.len() > 1 => format!("{:.*} ({:.*}–{:.*})", decimals, s.median, decimals, s.min, decimals, s.max),
            Some(s) => format!("{:.*}", decimals, s.median),
            None => "failed".into(),
        };
        let ratio = |r: Option<f64>| r.map_or_else(|| "·".into(), |r| format!("{r:.2}×"));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {}{failed} | {} | {} | {} | {} | {} | {} |",
            result.curve.name(),
            result.size,
            result.traffic,
            summary(&result.delivered_mpps, 3),
            ratio(result.delivered_to_first),
            summary(&result.cpu_ns_per_packet, 0),
            ratio(result.cpu_to_first),
            summary(&result.encap_ns, 0),
            summary(&result.decap_ns, 0),
            summary(&result.sent_mpps, 3),
        );
    }
    let _ = writeln!(out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::metrics::Metric;

    #[test]
    fn the_points_are_the_issues_and_set_their_tables() {
        let names: Vec<String> = points(false).into_iter().map(Point::name).collect();
        assert_eq!(
            names,
            ["fdb=10", "fdb=1000", "fdb=100000", "vnis=1", "vnis=64", "vnis=4096", "flows=1", "flows=1000", "flows=50000"]
        );
        let fdb = Point { curve: Curve::Fdb, size: 100_000 }.tables();
        assert_eq!((fdb.fdb_entries(), fdb.vnis()), (100_000, 1));
        let vnis = Point { curve: Curve::Vnis, size: 4_096 };
        assert_eq!((vnis.tables().fdb_entries(), vnis.tables().vnis(), vnis.flows()), (4_096, 4_096, 1));
        let flows = Point { curve: Curve::Flows, size: 50_000 };
        assert_eq!((flows.tables(), flows.flows()), (Tables::default(), 50_000));
    }

    #[test]
    fn results_summarize_each_point_with_ratios_to_the_first() {
        let point = |curve, size| Point { curve, size };
        let sample = |p, kpps, cpu| CurveSample {
            point: p,
            delivered_kpps: kpps,
            sent_kpps: kpps * 2.0,
            cpu_ns_per_packet: cpu,
            encap_ns: cpu / 10.0,
            decap_ns: cpu / 20.0,
        };
        let (first, second, third) = (point(Curve::Fdb, 10), point(Curve::Fdb, 1_000), point(Curve::Fdb, 100_000));
        let samples = [sample(first, 400.0, 5_000.0), sample(first, 600.0, 4_000.0), sample(second, 250.0, 8_000.0)];
        let failures = [
            Failure { metric: Metric::Curves, cell: third.name(), repetition: 0, error: "table short".into() },
            Failure { metric: Metric::Curves, cell: second.name(), repetition: 1, error: "nothing delivered".into() },
        ];
        let results = results(&[first, second, third], &samples, &failures);
        assert_eq!(results[0].delivered_mpps.as_ref().map(|s| s.median), Some(0.5));
        assert_eq!((results[0].delivered_to_first, results[0].cpu_to_first), (Some(1.0), Some(1.0)));
        assert_eq!((results[1].delivered_to_first, results[1].cpu_to_first), (Some(0.5), Some(8_000.0 / 4_500.0)));
        assert_eq!((results[1].failed_repetitions, results[2].failed_repetitions), (1, 1));
        assert!(results[2].delivered_mpps.is_none());
        let markdown = markdown(&results);
        assert!(
            markdown.contains("| fdb | 10 | 1 flow to 1 destination; the table grows | 0.500 (0.400–0.600) | 1.00× | 4500 (4000–5000) | 1.00× | 450 (400–500) | 225 (200–250) | 1.000 (0.800–1.200) |"),
            "{markdown}"
        );
        assert!(markdown.contains("| fdb | 1000 | 1 flow to 1 destination; the table grows | 0.250 [1 failed] | 0.50× | 8000 | 1.78× | 800 | 400 | 0.500 |"), "{markdown}");
        assert!(markdown.contains("| fdb | 100000 | 1 flow to 1 destination; the table grows | failed [1 failed] | · | failed | · | failed | failed | failed |"), "{markdown}");
    }
}
