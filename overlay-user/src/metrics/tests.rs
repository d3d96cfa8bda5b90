use std::collections::BTreeMap;

use super::{serve::spawn_serving, *};
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
        learned: Default::default(),
    }
}

#[test]
fn learning_events_and_learned_entries_have_families_of_their_own() {
    use crate::{datapath::learned::LearnedRow, model::MacAddr};
    use overlay_common::Counter;
    let row = |last, in_use| LearnedRow { vni: 100, mac: MacAddr([2, 0, 0, 0, 0, last]), vtep: "192.0.2.2".parse().unwrap(), age_seconds: 1, in_use };
    let mut snapshot = snapshot();
    snapshot.learned.rows = vec![row(1, true), row(2, true), row(3, false)];
    snapshot.learned.events = vec![(Reason::LEARNED, Counter { packets: 2, bytes: 196 }), (Reason::LEARNING_REFUSED, Counter { packets: 5, bytes: 490 })];
    let text = encode(snapshot).unwrap();
    let lines = lines_of(&text);
    for expected in [
        "# TYPE overlay_learning_events counter",
        r#"overlay_learning_events_total{reason="learned",code="9"} 2"#,
        r#"overlay_learning_events_total{reason="learning-refused",code="10"} 5"#,
        "overlay_learned_entries 2",
    ] {
        assert!(lines.contains(&expected), "expected the line\n  {expected}\nin:\n{text}");
    }
    assert!(!text.contains(r#"reason="learned",code="9",kind"#), "learning events are not packet verdicts:\n{text}");
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
    // Learning events are not verdicts: they have a family of their own.
    let verdicts = REASONS.len() - overlay_common::reason::LEARNING_EVENT_REASONS.len();
    assert_eq!(series("overlay_packets_total{"), 2 * verdicts, "one packet series per direction and reason:\n{text}");
    assert_eq!(series("overlay_bytes_total{"), 2 * verdicts, "one byte series per direction and reason:\n{text}");
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
            "overlay_learning_events",
            "overlay_learned_entries",
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
