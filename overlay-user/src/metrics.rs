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
    sync::Arc,
};

use overlay_common::reason::{Direction, REASONS, Reason};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge, info::Info},
    registry::{Registry, Unit},
};
use axum::{
    Router,
    http::{StatusCode, header},
    response::IntoResponse as _,
    routing::get,
};

use crate::{
    Counters, Datapath, DatapathError, VniPeerCounters,
    datapath::DatapathSummary,
    pinning::PinDir,
    status::NodeStatus,
};

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
/// 2 x 41 series each, mostly zero.
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
        let counted = |direction: Direction, reason: Reason| {
            self.counters
                .rows
                .iter()
                .find(|row| row.direction == direction && row.reason == reason)
                .map_or((0, 0), |row| (row.packets, row.bytes))
        };
        let mut series = Vec::new();
        for direction in Direction::ALL {
            for info in REASONS {
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
        let mut packets = encoder.encode_descriptor(
            "overlay_packets",
            &format!("Packets the datapath handled, {by_reason}"),
            None,
            MetricType::Counter,
        )?;
        for (labels, count, _) in &series {
            ConstCounter::new(*count).encode(packets.encode_family(labels)?)?;
        }
        // Registered as `overlay` with the unit bytes: the encoder appends
        // the unit, giving `overlay_bytes` and its sample `overlay_bytes_total`.
        let mut bytes = encoder.encode_descriptor(
            "overlay",
            &format!("Bytes of the packets the datapath handled (Ethernet frames as the hook saw them), {by_reason}"),
            Some(&Unit::Bytes),
            MetricType::Counter,
        )?;
        for (labels, _, count) in &series {
            ConstCounter::new(*count).encode(bytes.encode_family(labels)?)?;
        }

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

/// Binds the metrics listener. The agent calls this before it touches the
/// kernel, so an address it cannot serve refuses the start with nothing
/// loaded or attached.
pub fn bind(address: SocketAddr) -> Result<std::net::TcpListener, MetricsError> {
    let error = |reason| MetricsError::Bind { address, reason };
    let listener = std::net::TcpListener::bind(address).map_err(error)?;
    // Tokio only takes over non-blocking sockets.
    listener.set_nonblocking(true).map_err(error)?;
    Ok(listener)
}

/// What serving metrics on a non-loopback `address` exposes, for the
/// agent's log and `overlay doctor`: the endpoint has no authentication
/// and names the node's VTEP, underlay, VNIs and peers.
pub fn exposure_warning(address: SocketAddr) -> String {
    format!(
        "metrics are served on {address}, beyond this host: anyone who reaches it can read the node's VTEP, underlay, VNIs, peers and counters (no authentication)"
    )
}

/// Serves `GET /metrics` on `listener`, from a task on the current tokio
/// runtime, rendering each scrape from `source`. A problem after this point
/// is logged: metrics never stop the agent or the datapath.
pub fn spawn(listener: std::net::TcpListener, source: Source) {
    spawn_serving(listener, move || source.render());
}

fn spawn_serving<F>(listener: std::net::TcpListener, render: F)
where
    F: Fn() -> Result<String, String> + Send + Sync + 'static,
{
    let address = listener.local_addr().map_or_else(|_| "?".to_owned(), |a| a.to_string());
    match crate::http::serve_tcp(listener, router(render)) {
        Ok(serving) => {
            log::info!("serving Prometheus metrics on http://{address}{PATH}");
            serving.detach();
        }
        Err(error) => log::error!("serving metrics on {address}: {error}; running without metrics"),
    }
}

/// `GET` (and `HEAD`) of [`PATH`]; 404 elsewhere, 405 with `Allow` for other methods.
pub fn router<F>(render: F) -> Router
where
    F: Fn() -> Result<String, String> + Send + Sync + 'static,
{
    let render = Arc::new(render);
    Router::new()
        .route(
            PATH,
            get(move || {
                let render = render.clone();
                async move {
                    // Reading the pinned maps is a few system calls per table: off the agent's thread.
                    let rendered = tokio::task::spawn_blocking(move || render()).await.unwrap_or_else(|error| Err(error.to_string()));
                    match rendered {
                        Ok(body) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
                        Err(error) => {
                            log::warn!("metrics scrape failed: {error}");
                            (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")).into_response()
                        }
                    }
                }
            }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, format!("not found: only {PATH} is served\n")) })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        datapath::CounterRow,
        status::Reload,
    };

    fn snapshot() -> Snapshot {
        let row = |direction, reason, packets, bytes| CounterRow { direction, reason, packets, bytes };
        Snapshot {
            node: "h1".into(),
            counters: Counters {
                rows: vec![
                    row(Direction::FROM_UNDERLAY, Reason::FORWARDED, 20, 2960),
                    row(Direction::FROM_UNDERLAY, Reason::UNKNOWN_PEER, 3, 150),
                    row(Direction::FROM_ENDPOINT, Reason::FORWARDED, 21, 1960),
                ],
            },
            vnis_peers: VniPeerCounters {
                vnis: BTreeMap::from([
                    (
                        100,
                        Counters {
                            rows: vec![
                                row(Direction::FROM_UNDERLAY, Reason::FORWARDED, 20, 2960),
                                row(Direction::FROM_ENDPOINT, Reason::FORWARDED, 21, 1960),
                                row(Direction::FROM_ENDPOINT, Reason::INNER_VLAN, 1, 102),
                            ],
                        },
                    ),
                    (200, Counters::default()),
                ]),
                peers: BTreeMap::from([
                    ("192.0.2.2".parse().unwrap(), Counters { rows: vec![row(Direction::FROM_UNDERLAY, Reason::FORWARDED, 20, 2960)] }),
                    ("192.0.2.3".parse().unwrap(), Counters { rows: vec![row(Direction::FROM_UNDERLAY, Reason::PEER_NOT_IN_VNI, 2, 200)] }),
                ]),
            },
            datapath: DatapathSummary {
                vtep: Some("192.0.2.1".parse().unwrap()),
                vnis: 2,
                local_endpoints: 3,
                remote_endpoints: 4,
                peers: 2,
            },
            status: Some(NodeStatus {
                node: "h1".into(),
                underlay: "ul1".into(),
                decap: "xdp".into(),
                xdp_mode: "native".into(),
                tc_attach: "tcx".into(),
                started: 1_700_000_000,
                last_reload: Some(Reload { at: 1_700_000_100, ok: false, message: "bad file".into() }),
                ..NodeStatus::default()
            }),
        }
    }

    fn lines_of(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    #[test]
    fn counters_are_named_and_labelled_by_prometheus_conventions() {
        let text = encode(snapshot()).unwrap();
        let lines = lines_of(&text);
        for expected in [
            "# HELP overlay_packets Packets the datapath handled, by direction (from-underlay: XDP or TC on the underlay device; from-endpoint: TC on a container port) and numbered reason (overlay reasons lists them; kind is drop for drops, outcome otherwise).",
            "# TYPE overlay_packets counter",
            r#"overlay_packets_total{direction="from-endpoint",reason="forwarded",code="0",kind="outcome"} 21"#,
            r#"overlay_packets_total{direction="from-underlay",reason="forwarded",code="0",kind="outcome"} 20"#,
            r#"overlay_packets_total{direction="from-underlay",reason="unknown-peer",code="16",kind="drop"} 3"#,
            // Never counted, still there.
            r#"overlay_packets_total{direction="from-underlay",reason="passed",code="1",kind="outcome"} 0"#,
            "# TYPE overlay_bytes counter",
            "# UNIT overlay_bytes bytes",
            r#"overlay_bytes_total{direction="from-endpoint",reason="forwarded",code="0",kind="outcome"} 1960"#,
            r#"overlay_bytes_total{direction="from-underlay",reason="unknown-peer",code="16",kind="drop"} 150"#,
        ] {
            assert!(lines.contains(&expected), "expected the line\n  {expected}\nin:\n{text}");
        }
        let series = |prefix: &str| lines.iter().filter(|l| l.starts_with(prefix)).count();
        assert_eq!(series("overlay_packets_total{"), 2 * REASONS.len(), "one packet series per direction and reason:\n{text}");
        assert_eq!(series("overlay_bytes_total{"), 2 * REASONS.len(), "one byte series per direction and reason:\n{text}");
        assert!(text.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF:\n{text}");
    }

    #[test]
    fn each_vni_and_peer_has_its_own_labelled_series() {
        let text = encode(snapshot()).unwrap();
        let lines = lines_of(&text);
        for expected in [
            "# TYPE overlay_vni_packets counter",
            r#"overlay_vni_packets_total{vni="100",direction="from-underlay",reason="forwarded",code="0",kind="outcome"} 20"#,
            r#"overlay_vni_packets_total{vni="100",direction="from-endpoint",reason="forwarded",code="0",kind="outcome"} 21"#,
            r#"overlay_vni_packets_total{vni="100",direction="from-endpoint",reason="inner-vlan",code="36",kind="drop"} 1"#,
            // Nothing counted: forwarded is there at zero, nothing else.
            r#"overlay_vni_packets_total{vni="200",direction="from-underlay",reason="forwarded",code="0",kind="outcome"} 0"#,
            r#"overlay_vni_packets_total{vni="200",direction="from-endpoint",reason="forwarded",code="0",kind="outcome"} 0"#,
            "# UNIT overlay_vni_bytes bytes",
            r#"overlay_vni_bytes_total{vni="100",direction="from-endpoint",reason="forwarded",code="0",kind="outcome"} 1960"#,
            "# TYPE overlay_peer_packets counter",
            r#"overlay_peer_packets_total{peer="192.0.2.2",direction="from-underlay",reason="forwarded",code="0",kind="outcome"} 20"#,
            r#"overlay_peer_packets_total{peer="192.0.2.2",direction="from-endpoint",reason="forwarded",code="0",kind="outcome"} 0"#,
            r#"overlay_peer_packets_total{peer="192.0.2.3",direction="from-underlay",reason="peer-not-in-vni",code="40",kind="drop"} 2"#,
            r#"overlay_peer_bytes_total{peer="192.0.2.3",direction="from-underlay",reason="peer-not-in-vni",code="40",kind="drop"} 200"#,
        ] {
            assert!(lines.contains(&expected), "expected the line\n  {expected}\nin:\n{text}");
        }
        let series = |prefix: &str| lines.iter().filter(|l| l.starts_with(prefix)).count();
        // VNI 100: forwarded both ways and inner-vlan; VNI 200: forwarded both ways.
        assert_eq!(series("overlay_vni_packets_total{"), 5, "{text}");
        assert_eq!(series("overlay_vni_bytes_total{"), 5, "{text}");
        // 192.0.2.2: forwarded both ways; 192.0.2.3: forwarded both ways and its drop.
        assert_eq!(series("overlay_peer_packets_total{"), 5, "{text}");
        assert!(!text.contains(r#"vni="200",direction="from-underlay",reason="passed""#), "reasons that counted nothing are left out:\n{text}");
    }

    #[test]
    fn node_gauges_come_from_the_datapath_and_the_status_file() {
        let text = encode(snapshot()).unwrap();
        let lines = lines_of(&text);
        for expected in [
            "# TYPE overlay info",
            r#"overlay_info{node="h1",vtep="192.0.2.1",underlay="ul1",decap="xdp",xdp_mode="native",tc_attach="tcx",version="0.1.0"} 1"#,
            "# TYPE overlay_vnis gauge",
            "overlay_vnis 2",
            "overlay_local_endpoints 3",
            "overlay_remote_endpoints 4",
            "# HELP overlay_peers Peer VTEPs this node accepts VXLAN from.",
            "# TYPE overlay_peers gauge",
            "overlay_peers 2",
            "# TYPE overlay_agent_start_time_seconds gauge",
            "# UNIT overlay_agent_start_time_seconds seconds",
            "overlay_agent_start_time_seconds 1700000000",
            "overlay_last_reload_success 0",
            "# UNIT overlay_last_reload_timestamp_seconds seconds",
            "overlay_last_reload_timestamp_seconds 1700000100",
        ] {
            assert!(lines.contains(&expected), "expected the line\n  {expected}\nin:\n{text}");
        }
    }

    #[test]
    fn the_start_counts_as_a_successful_load() {
        let mut snapshot = snapshot();
        snapshot.status.as_mut().unwrap().last_reload = None;
        let text = encode(snapshot).unwrap();
        let lines = lines_of(&text);
        assert!(lines.contains(&"overlay_last_reload_success 1"), "{text}");
        assert!(lines.contains(&"overlay_last_reload_timestamp_seconds 1700000000"), "{text}");
    }

    #[test]
    fn without_a_status_file_only_the_agent_gauges_are_left_out() {
        let mut snapshot = snapshot();
        snapshot.status = None;
        let text = encode(snapshot).unwrap();
        assert!(text.contains(r#"overlay_info{node="h1",vtep="192.0.2.1",underlay="",decap="",xdp_mode="",tc_attach="","#), "{text}");
        assert!(text.contains("overlay_peers 2"), "{text}");
        assert!(!text.contains("overlay_last_reload") && !text.contains("overlay_agent_start"), "{text}");
    }

    #[test]
    fn a_code_without_a_name_is_labelled_unknown() {
        let mut snapshot = snapshot();
        snapshot.counters.rows.push(CounterRow { direction: Direction::FROM_ENDPOINT, reason: Reason(63), packets: 5, bytes: 500 });
        let text = encode(snapshot).unwrap();
        assert!(text.contains(r#"overlay_packets_total{direction="from-endpoint",reason="unknown",code="63",kind="drop"} 5"#), "{text}");
    }

    /// Checks the exposition's grammar in the ways a typo would break it.
    #[test]
    fn every_sample_belongs_to_a_described_family() {
        let text = encode(snapshot()).unwrap();
        let mut families: Vec<(String, String)> = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (_, help) = rest.split_once(' ').unwrap();
                assert!(!help.contains('"') && !help.contains('\\'), "HELP text must not need escaping: {line}");
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                families.push((name.to_owned(), kind.to_owned()));
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(
                    name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && name.starts_with("overlay_"),
                    "bad metric name in: {line}"
                );
                let family = families.last().unwrap_or_else(|| panic!("sample before any TYPE: {line}"));
                let suffix = match family.1.as_str() {
                    "counter" => "_total",
                    "info" => "_info",
                    _ => "",
                };
                assert_eq!(name, format!("{}{suffix}", family.0), "sample {line} under # TYPE {} {}", family.0, family.1);
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<u64>().is_ok(), "value is not a non-negative integer: {line}");
            }
        }
        let names: Vec<&str> = families.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            names,
            [
                "overlay",
                "overlay_packets",
                "overlay_bytes",
                "overlay_vni_packets",
                "overlay_vni_bytes",
                "overlay_peer_packets",
                "overlay_peer_bytes",
                "overlay_vnis",
                "overlay_local_endpoints",
                "overlay_remote_endpoints",
                "overlay_peers",
                "overlay_agent_start_time_seconds",
                "overlay_last_reload_success",
                "overlay_last_reload_timestamp_seconds"
            ]
        );
    }

    /// Serves `render` on a loopback port and sends each raw request on a
    /// connection of its own; returns the replies.
    fn exchanges(render: impl Fn() -> Result<String, String> + Send + Sync + 'static, requests: &[&str]) -> Vec<String> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = listener.local_addr().unwrap();
        runtime.block_on(async move {
            spawn_serving(listener, render);
            let mut replies = Vec::new();
            for request in requests {
                let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
                stream.write_all(request.as_bytes()).await.unwrap();
                let mut reply = String::new();
                stream.read_to_string(&mut reply).await.unwrap();
                replies.push(reply);
            }
            replies
        })
    }

    fn status_line(response: &str) -> &str {
        response.lines().next().unwrap_or_default()
    }

    #[test]
    fn only_get_and_head_of_metrics_are_served() {
        let render = || Ok::<_, String>("overlay_peers 1\n# EOF\n".to_owned());
        let replies = exchanges(
            render,
            &[
                "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                "HEAD /metrics?x=1 HTTP/1.0\r\n\r\n",
                "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                "GET /metricsx HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                "hello\r\n\r\n",
            ],
        );
        let lower: Vec<String> = replies.iter().map(|r| r.to_ascii_lowercase()).collect();
        let get = &replies[0];
        assert!(get.starts_with("HTTP/1.1 200 OK\r\n"), "{get}");
        assert!(lower[0].contains(&format!("\r\ncontent-type: {}\r\n", CONTENT_TYPE.to_ascii_lowercase())), "{get}");
        assert!(lower[0].contains("\r\ncontent-length: 22\r\n") && get.ends_with("\r\n\r\noverlay_peers 1\n# EOF\n"), "{get}");
        let head = &replies[1];
        assert!(head.starts_with("HTTP/1.0 200 OK\r\n") && head.ends_with("\r\n\r\n"), "HEAD: headers only:\n{head}");
        assert_eq!(status_line(&replies[2]), "HTTP/1.1 404 Not Found");
        assert_eq!(status_line(&replies[3]), "HTTP/1.1 404 Not Found");
        let post = &replies[4];
        assert!(post.starts_with("HTTP/1.1 405 Method Not Allowed\r\n") && lower[4].contains("\r\nallow: get,head\r\n"), "{post}");
        assert_eq!(status_line(&replies[5]), "HTTP/1.1 400 Bad Request");
    }

    #[test]
    fn a_datapath_that_cannot_be_read_is_a_server_error() {
        let render = || Err::<String, _>("reading the datapath of node h1: gone".to_owned());
        let replies = exchanges(render, &["GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"]);
        let text = &replies[0];
        assert!(text.starts_with("HTTP/1.1 500 Internal Server Error\r\n") && text.ends_with("gone\n"), "{text}");
    }

    #[test]
    fn an_address_that_cannot_be_bound_is_named() {
        let taken = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = taken.local_addr().unwrap();
        let error = bind(address).unwrap_err().to_string();
        assert!(error.starts_with(&format!("cannot serve metrics on {address}: ")), "{error}");
    }

    /// The whole exchange over a loopback socket, as a scraper makes it.
    #[test]
    fn a_scrape_over_loopback_gets_the_rendered_text() {
        let reply = exchanges(
            || encode(snapshot()).map_err(|e| e.to_string()),
            &["GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\nConnection: close\r\n\r\n"],
        )
        .remove(0);
        let (head, body) = reply.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end in:\n{reply}"));
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert!(head.to_ascii_lowercase().contains(&format!("content-length: {}", body.len())), "{head}");
        assert_eq!(body, encode(snapshot()).unwrap());
    }
}
