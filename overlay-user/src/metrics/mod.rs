//! Prometheus metrics: `overlay run --metrics-addr ADDR` serves `GET /metrics`.
//!
//! Each scrape reads the node's pinned datapath (counters and table sizes,
//! through file descriptors of its own, so the server never touches the
//! agent's [`Datapath`]) and the agent's status file (underlay, XDP mode,
//! last reload), and encodes them with `prometheus-client` in the
//! OpenMetrics text format, the format Prometheus asks for first. It is
//! served by axum (see [`crate::http`]): GET and HEAD of `/metrics`.
//!
//! Names follow the Prometheus conventions: an `overlay_` prefix, counters
//! ending in `_total`, the unit in the name (`_bytes`, `_seconds`). The
//! counters are labelled `direction`, `reason`, `code` (the stable number,
//! `overlay reasons`) and `kind` (`outcome` or `drop`). The counters of each
//! VNI and each peer VTEP are families of their own with one more label,
//! `overlay_vni_{packets,bytes}_total{vni=...}` and
//! `overlay_peer_{packets,bytes}_total{peer=...}`, not more series of
//! `overlay_packets_total`: they are two overlapping breakdowns of the same
//! packets, and neither holds those dropped before their VNI or peer was
//! known, so summing one family over all its labels must give the node's
//! total, a VNI's or a peer's total, never a mix.
use std::{
    fmt,
    net::SocketAddr,
    path::PathBuf,
};

use overlay_common::reason::{Direction, LEARNING_EVENT_REASONS, REASONS, Reason};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge, info::Info},
    registry::{Registry, Unit},
};

use crate::{
    Counters, Datapath, DatapathError, VniPeerCounters,
    datapath::{DatapathSummary, learned::LearnedView},
    pinning::PinDir,
    status::NodeStatus,
};

mod serve;

pub use serve::{bind, exposure_warning, router, spawn};

/// The path the metrics are served at.
pub const PATH: &str = "/metrics";
/// What `prometheus-client` encodes: OpenMetrics 1.0 text (Prometheus's
/// first choice in its Accept header; the older 0.0.4 text format has no
/// `info` type and no `# EOF`).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Why the metrics server could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The listening socket could not be set up (address in use, not on this host, no permission).
    #[error("cannot serve metrics on {address}: {reason}")]
    Bind { address: SocketAddr, reason: std::io::Error },
}

/// Everything one scrape reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The node's name.
    pub node: String,
    pub counters: Counters,
    /// Each VNI's and peer's counters (none from a datapath pinned by a
    /// version without them).
    pub vnis_peers: VniPeerCounters,
    pub datapath: DatapathSummary,
    /// The agent's status file; `None` until the agent has written it.
    pub status: Option<NodeStatus>,
    /// Learning networks' learned entries and learning events.
    pub learned: LearnedView,
}

/// Where a scrape finds a node's state: its pinned datapath and its
/// agent's status file.
#[derive(Clone, Debug)]
pub struct Source {
    pub node: String,
    pub pins: PinDir,
    pub run_dir: PathBuf,
}

impl Source {
    pub fn snapshot(&self) -> Result<Snapshot, DatapathError> {
        Ok(Snapshot {
            node: self.node.clone(),
            counters: Datapath::pinned_counters(&self.pins)?,
            vnis_peers: Datapath::pinned_vni_peer_counters(&self.pins).unwrap_or_else(|error| {
                log::debug!("metrics without per-VNI and per-peer counters: {error}");
                VniPeerCounters::default()
            }),
            datapath: Datapath::pinned_summary(&self.pins)?,
            status: NodeStatus::read(&self.run_dir, &self.node).ok(),
            learned: Datapath::pinned_learned(&self.pins).unwrap_or_else(|error| {
                log::debug!("metrics without learning: {error}");
                LearnedView::default()
            }),
        })
    }

    /// The scrape's text, or why it could not be made.
    fn render(&self) -> Result<String, String> {
        let snapshot = self.snapshot().map_err(|error| format!("reading the datapath of node {}: {error}", self.node))?;
        encode(snapshot).map_err(|error| format!("encoding the metrics: {error}"))
    }
}

/// The OpenMetrics text of a snapshot, `# EOF` included.
pub fn encode(snapshot: Snapshot) -> Result<String, fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

/// Labels of `overlay_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
    vtep: String,
    underlay: String,
    /// The decapsulation hook: "xdp" or "tc".
    decap: String,
    /// "native", "generic", "offload"; "none" with TC decapsulation.
    xdp_mode: String,
    /// How TC programs are attached: "tcx" or "netlink" (no TCX in the kernel).
    tc_attach: String,
    version: &'static str,
}

/// Labels of the packet and byte counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CounterLabels {
    direction: &'static str,
    reason: &'static str,
    code: u32,
    kind: &'static str,
}

/// Labels of the learning event counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LearningLabels {
    reason: &'static str,
    code: u32,
}

/// Labels of a VNI's packet and byte counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VniCounterLabels {
    vni: u32,
    #[prometheus(flatten)]
    counter: CounterLabels,
}

/// Labels of a peer VTEP's packet and byte counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerCounterLabels {
    /// The peer's VTEP address.
    peer: String,
    #[prometheus(flatten)]
    counter: CounterLabels,
}

/// One counter series: labels, packets, bytes.
type CounterSeries<L = CounterLabels> = (L, u64, u64);

fn counter_labels(direction: Direction, reason: Reason) -> CounterLabels {
    CounterLabels {
        direction: direction.name(),
        reason: reason.info().map_or("unknown", |info| info.name),
        code: reason.0,
        kind: if reason.is_drop() { "drop" } else { "outcome" },
    }
}

/// The series of one VNI or peer: `forwarded` in both directions always
/// (so `rate()` sees a new VNI's first packets), every other reason once
/// it has counted something. Every reason for every VNI and peer would be
/// 2 x `REASONS.len()` series each, mostly zero.
fn breakdown_series(counters: &Counters) -> Vec<CounterSeries> {
    let mut counted: Vec<(Direction, Reason, u64, u64)> = Direction::ALL
        .into_iter()
        .filter(|&direction| counters.packets(direction, Reason::FORWARDED) == 0)
        .map(|direction| (direction, Reason::FORWARDED, 0, 0))
        .collect();
    counted.extend(counters.rows.iter().map(|row| (row.direction, row.reason, row.packets, row.bytes)));
    counted.sort();
    counted.into_iter().map(|(direction, reason, packets, bytes)| (counter_labels(direction, reason), packets, bytes)).collect()
}

impl Snapshot {
    /// Every direction and known reason, zero when nothing was counted (a
    /// series that appears only at its first packet hides that packet from
    /// `rate()`), then any code this agent has no name for.
    fn counter_series(&self) -> Vec<CounterSeries> {
        let counted = |direction, reason| self.counters.row(direction, reason).map_or((0, 0), |row| (row.packets, row.bytes));
        let mut series = Vec::new();
        for direction in Direction::ALL {
            // Learning events are not verdicts: overlay_learning_events has them.
            for info in REASONS.iter().filter(|info| !LEARNING_EVENT_REASONS.contains(&info.reason)) {
                let (packets, bytes) = counted(direction, info.reason);
                series.push((counter_labels(direction, info.reason), packets, bytes));
            }
        }
        for row in self.counters.rows.iter().filter(|row| row.reason.info().is_none()) {
            series.push((counter_labels(row.direction, row.reason), row.packets, row.bytes));
        }
        series
    }

    fn vni_series(&self) -> Vec<CounterSeries<VniCounterLabels>> {
        let mut series = Vec::new();
        for (&vni, counters) in &self.vnis_peers.vnis {
            series.extend(breakdown_series(counters).into_iter().map(|(counter, p, b)| (VniCounterLabels { vni, counter }, p, b)));
        }
        series
    }

    fn peer_series(&self) -> Vec<CounterSeries<PeerCounterLabels>> {
        let mut series = Vec::new();
        for (peer, counters) in &self.vnis_peers.peers {
            let peer = peer.to_string();
            series.extend(
                breakdown_series(counters).into_iter().map(|(counter, p, b)| (PeerCounterLabels { peer: peer.clone(), counter }, p, b)),
            );
        }
        series
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        // OpenMetrics HELP text must not contain double quotes or backslashes.
        let status = self.status.as_ref();
        let info = Info::new(NodeLabels {
            node: self.node.clone(),
            vtep: self.datapath.vtep.map(|vtep| vtep.to_string()).unwrap_or_default(),
            underlay: status.map(|s| s.underlay.clone()).unwrap_or_default(),
            decap: status.map(|s| s.decap.clone()).unwrap_or_default(),
            xdp_mode: status.map(|s| s.xdp_mode.clone()).unwrap_or_default(),
            tc_attach: status.map(|s| s.tc_attach.clone()).unwrap_or_default(),
            version: env!("CARGO_PKG_VERSION"),
        });
        info.encode(encoder.encode_descriptor(
            "overlay",
            "The node: its name, VTEP address, underlay device, decapsulation hook, XDP mode, TC attachment kind and agent version.",
            None,
            info.metric_type(),
        )?)?;

        let series = self.counter_series();
        let by_reason = "by direction (from-underlay: XDP or TC on the underlay device; from-endpoint: TC on a container port) \
                         and numbered reason (overlay reasons lists them; kind is drop for drops, outcome otherwise).";
        counter_family(&mut encoder, "overlay_packets", None, &format!("Packets the datapath handled, {by_reason}"), &series, |(_, packets, _)| *packets)?;
        // Registered as `overlay` with the unit bytes: the encoder appends
        // the unit, giving `overlay_bytes` and its sample `overlay_bytes_total`.
        counter_family(
            &mut encoder,
            "overlay",
            Some(&Unit::Bytes),
            &format!("Bytes of the packets the datapath handled (Ethernet frames as the hook saw them), {by_reason}"),
            &series,
            |(_, _, bytes)| *bytes,
        )?;

        let by_vni = "by VNI, direction and numbered reason, as overlay_packets (forwarded in both directions always, other reasons once counted). \
                      Packets dropped before their VNI was known (unknown peer, malformed outer headers) are only in overlay_packets.";
        counter_family(&mut encoder, "overlay_vni_packets", None, &format!("Packets of each VNI, {by_vni}"), &self.vni_series(), |(_, packets, _)| *packets)?;
        counter_family(
            &mut encoder,
            "overlay_vni",
            Some(&Unit::Bytes),
            &format!("Bytes of each VNI's packets, {by_vni}"),
            &self.vni_series(),
            |(_, _, bytes)| *bytes,
        )?;
        let by_peer = "by peer VTEP address, direction (from-underlay: received from the peer; from-endpoint: encapsulated to it) and numbered reason, \
                       as overlay_packets (forwarded in both directions always, other reasons once counted). Flooded copies count per VNI, not per peer.";
        counter_family(&mut encoder, "overlay_peer_packets", None, &format!("Packets of each peer VTEP, {by_peer}"), &self.peer_series(), |(_, packets, _)| *packets)?;
        counter_family(
            &mut encoder,
            "overlay_peer",
            Some(&Unit::Bytes),
            &format!("Bytes of each peer VTEP's packets, {by_peer}"),
            &self.peer_series(),
            |(_, _, bytes)| *bytes,
        )?;

        let tables = [
            ("overlay_vnis", "VNIs (tenant networks) this node carries.", self.datapath.vnis),
            ("overlay_local_endpoints", "Containers on this node, counted per VNI and MAC.", self.datapath.local_endpoints),
            ("overlay_remote_endpoints", "Containers behind peers, counted per VNI and MAC (forwarding database entries).", self.datapath.remote_endpoints),
            ("overlay_peers", "Peer VTEPs this node accepts VXLAN from.", self.datapath.peers),
        ];
        for (name, help, value) in tables {
            gauge(&mut encoder, name, help, None, value as i64)?;
        }

        let mut events = encoder.encode_descriptor(
            "overlay_learning_events",
            "Learning (RFC 7348 section 4.1, in networks with learning on) by numbered reason: learned is a new or moved entry, \
             learning-refused a frame whose inner source MAC is configured elsewhere (configured entries are never overridden).",
            None,
            MetricType::Counter,
        )?;
        for reason in LEARNING_EVENT_REASONS {
            let labels = LearningLabels { reason: reason.info().map_or("unknown", |info| info.name), code: reason.0 };
            ConstCounter::new(self.learned.events(reason)).encode(events.encode_family(&labels)?)?;
        }
        drop(events);
        gauge(
            &mut encoder,
            "overlay_learned_entries",
            "Learned forwarding entries encapsulation uses now (fresh, in a learning network, not shadowed by a configured entry).",
            None,
            self.learned.rows.iter().filter(|row| row.in_use).count() as i64,
        )?;

        let Some(status) = status else { return Ok(()) };
        gauge(&mut encoder, "overlay_agent_start_time", "When the agent started, in seconds since the Unix epoch.", Some(&Unit::Seconds), status.started as i64)?;
        // The start is the first load of the file: a reload only replaces it.
        let (ok, at) = status.last_reload.as_ref().map_or((true, status.started), |reload| (reload.ok, reload.at));
        gauge(
            &mut encoder,
            "overlay_last_reload_success",
            "Whether the last load of the configuration file (at start, on SIGHUP or on a change) was applied: 1, or refused with nothing changed: 0.",
            None,
            i64::from(ok),
        )?;
        gauge(
            &mut encoder,
            "overlay_last_reload_timestamp",
            "When the configuration file was last loaded (at start, on SIGHUP or on a change), in seconds since the Unix epoch.",
            Some(&Unit::Seconds),
            at as i64,
        )?;
        let Some(cluster) = &status.cluster else { return Ok(()) };
        gauge(
            &mut encoder,
            "overlay_cluster_conflicts",
            "Cluster mode: refused claims between this node and another (either side), and registry items left out because they conflict with this node's own.",
            None,
            (cluster.conflicts.len() + cluster.left_out.len()) as i64,
        )
    }
}

/// A counter family of `series` (registered as `name` with `unit`: the
/// encoder appends the unit, `overlay_vni` with bytes is `overlay_vni_bytes`).
fn counter_family<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    unit: Option<&Unit>,
    help: &str,
    series: &[CounterSeries<L>],
    value: impl Fn(&CounterSeries<L>) -> u64,
) -> Result<(), fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for one in series {
        ConstCounter::new(value(one)).encode(family.encode_family(&one.0)?)?;
    }
    Ok(())
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, unit: Option<&Unit>, value: i64) -> Result<(), fmt::Error> {
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, help, unit, gauge.metric_type())?)
}

#[cfg(test)]
mod tests;
