use overlay_common::{DEFAULT_FLOOD_LIMIT, FLOOD_MAX_LOCAL_PORTS, PEER_COUNTER_SLOTS, VNI_COUNTER_SLOTS};

use super::*;

const GOOD: &str = r#"
[node]
name = "host-a"
underlay_interface = "eth0"
vtep_address = "192.0.2.1"

[[endpoints]]
interface = "veth-a1"
mac = "02:00:00:00:01:01"
ip = "10.10.0.1"
vni = 100

[[peers]]
name = "host-b"
vtep_address = "192.0.2.2"

  [[peers.endpoints]]
  mac = "02:00:00:00:02:01"
  ip = "10.10.0.2"
  vni = 100
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("node.toml"))
}

/// Parses `text` expecting exactly one problem, and returns it.
fn only_problem(text: &str) -> Problem {
    match parse(text) {
        Err(ConfigError::Invalid { problems, .. }) if problems.len() == 1 => problems[0].clone(),
        other => panic!("expected exactly one problem, got {other:?}"),
    }
}

#[test]
fn good_config_parses_with_defaults() {
    let config = parse(GOOD).unwrap();
    assert_eq!(config.node.vxlan_port, 4789);
    assert_eq!(config.node.ttl, 64);
    assert_eq!((config.node.source_port_min, config.node.source_port_max), (49152, 65535));
    assert_eq!(config.endpoints[0].mac, MacAddr([2, 0, 0, 0, 1, 1]));
    assert_eq!(config.peers[0].endpoints[0].ip, Ipv4Addr::new(10, 10, 0, 2));
    assert_eq!(config.local_vnis().into_iter().collect::<Vec<_>>(), vec![100]);
}

#[test]
fn malformed_mac_names_field_and_value() {
    let p = only_problem(&GOOD.replace("02:00:00:00:01:01", "02:00:zz:00:01:01"));
    assert_eq!(p.path(), "endpoints[0].mac");
    assert_eq!(p.value, "02:00:zz:00:01:01");
    let p = only_problem(&GOOD.replace("02:00:00:00:02:01", "02:00:00:00:02"));
    assert_eq!(p.path(), "peers[0].endpoints[0].mac");
}

#[test]
fn multicast_mac_is_rejected() {
    let p = only_problem(&GOOD.replace("02:00:00:00:01:01", "01:00:5e:00:00:01"));
    assert_eq!(p.path(), "endpoints[0].mac");
    assert!(p.message.contains("unicast"), "{p}");
}

#[test]
fn malformed_ip_names_field_and_value() {
    let p = only_problem(&GOOD.replace("\"10.10.0.1\"", "\"10.10.0.300\""));
    assert_eq!((p.path().as_str(), p.value.as_str()), ("endpoints[0].ip", "10.10.0.300"));
    let p = only_problem(&GOOD.replace("\"192.0.2.2\"", "\"not-an-ip\""));
    assert_eq!((p.path().as_str(), p.value.as_str()), ("peers[0].vtep_address", "not-an-ip"));
    let p = only_problem(&GOOD.replace("\"192.0.2.1\"", "\"2001:db8::1\""));
    assert_eq!(p.path(), "node.vtep_address");
    assert!(p.message.contains("IPv6"), "{p}");
}

#[test]
fn vni_out_of_range_is_rejected() {
    for bad in ["0", "16777216", "-5"] {
        let p = only_problem(&GOOD.replacen("vni = 100", &format!("vni = {bad}"), 1));
        assert_eq!((p.path().as_str(), p.value.as_str()), ("endpoints[0].vni", bad));
    }
    let ok = parse(&GOOD.replace("vni = 100", "vni = 16777215")).unwrap();
    assert_eq!(ok.endpoints[0].vni, 16_777_215);
}

#[test]
fn same_mac_twice_in_one_vni_is_rejected() {
    let p = only_problem(&GOOD.replace("02:00:00:00:02:01", "02:00:00:00:01:01"));
    assert_eq!(p.path(), "peers[0].endpoints[0].mac");
    assert!(p.message.contains("endpoints[0]"), "{p}");
}

#[test]
fn same_ip_twice_in_one_vni_is_rejected() {
    let p = only_problem(&GOOD.replace("\"10.10.0.2\"", "\"10.10.0.1\""));
    assert_eq!((p.path().as_str(), p.value.as_str()), ("peers[0].endpoints[0].ip", "10.10.0.1"));
}

#[test]
fn same_mac_and_ip_in_different_vnis_are_allowed() {
    let text = GOOD
        .replace("02:00:00:00:02:01", "02:00:00:00:01:01")
        .replace("\"10.10.0.2\"", "\"10.10.0.1\"")
        .replace("  vni = 100", "  vni = 200");
    parse(&text).unwrap();
}

#[test]
fn peer_with_our_own_vtep_is_rejected() {
    let p = only_problem(&GOOD.replace("\"192.0.2.2\"", "\"192.0.2.1\""));
    assert_eq!((p.path().as_str(), p.value.as_str()), ("peers[0].vtep_address", "192.0.2.1"));
}

#[test]
fn duplicate_peers_are_rejected() {
    let text = format!("{GOOD}\n[[peers]]\nname = \"host-b\"\nvtep_address = \"192.0.2.2\"\n");
    let problems = parse(&text).unwrap_err().problems().to_vec();
    let fields: Vec<_> = problems.iter().map(|p| p.path()).collect();
    assert_eq!(fields, ["peers[1].vtep_address", "peers[1].name"], "{problems:?}");
}

#[test]
fn port_with_two_vnis_is_rejected() {
    let text = format!(
        "{GOOD}\n[[endpoints]]\ninterface = \"veth-a1\"\nmac = \"02:00:00:00:01:02\"\nip = \"10.20.0.1\"\nvni = 200\n"
    );
    let p = only_problem(&text);
    assert_eq!((p.path().as_str(), p.value.as_str()), ("endpoints[1].vni", "200"));
}

#[test]
fn bad_port_ttl_and_range_are_rejected() {
    let with = |line: &str| GOOD.replace("vtep_address = \"192.0.2.1\"", &format!("vtep_address = \"192.0.2.1\"\n{line}"));
    assert_eq!(only_problem(&with("vxlan_port = 70000")).path(), "node.vxlan_port");
    assert_eq!(only_problem(&with("ttl = 0")).path(), "node.ttl");
    assert_eq!(only_problem(&with("source_port_range = [60000, 50000]")).path(), "node.source_port_range");
    assert_eq!(parse(&with("vxlan_port = 8472")).unwrap().node.vxlan_port, 8472);
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = GOOD.replace("02:00:00:00:01:01", "bad").replace("\"192.0.2.2\"", "\"bad\"");
    let problems = parse(&text).unwrap_err().problems().to_vec();
    assert_eq!(problems.len(), 2, "{problems:?}");
}

#[test]
fn unknown_key_is_a_syntax_error_naming_it() {
    let err = parse(&GOOD.replace("vtep_address = \"192.0.2.1\"", "vtep_address = \"192.0.2.1\"\nvxlan_prot = 1")).unwrap_err();
    assert!(matches!(err, ConfigError::Syntax { .. }) && err.to_string().contains("vxlan_prot"), "{err}");
}

#[test]
fn missing_field_is_a_syntax_error_naming_it() {
    let err = parse(&GOOD.replace("underlay_interface = \"eth0\"", "")).unwrap_err();
    assert!(err.to_string().contains("underlay_interface"), "{err}");
}

#[test]
fn ipv6_addresses_parse_and_must_be_unique_per_vni() {
    let with_v6 = GOOD
        .replace("ip = \"10.10.0.1\"", "ip = \"10.10.0.1\"\nipv6 = \"fd00::1\"")
        .replace("  ip = \"10.10.0.2\"", "  ip = \"10.10.0.2\"\n  ipv6 = \"fd00::2\"");
    let config = parse(&with_v6).unwrap();
    assert_eq!(config.endpoints[0].ipv6, Some("fd00::1".parse().unwrap()));
    assert_eq!(config.peers[0].endpoints[0].ipv6, Some("fd00::2".parse().unwrap()));
    let p = only_problem(&with_v6.replace("fd00::2", "fd00::1"));
    assert_eq!((p.path().as_str(), p.value.as_str()), ("peers[0].endpoints[0].ipv6", "fd00::1"));
    let p = only_problem(&with_v6.replace("fd00::1", "ff02::1"));
    assert_eq!(p.path(), "endpoints[0].ipv6");
    let p = only_problem(&with_v6.replace("fd00::1", "fd00::zz"));
    assert_eq!((p.path().as_str(), p.value.as_str()), ("endpoints[0].ipv6", "fd00::zz"));
}

#[test]
fn flood_limits_default_and_override_per_vni() {
    let config = parse(GOOD).unwrap();
    assert_eq!(config.flood_limit(100), DEFAULT_FLOOD_LIMIT);
    let text = GOOD.replace("vtep_address = \"192.0.2.1\"", "vtep_address = \"192.0.2.1\"\nflood_limit = 8");
    assert_eq!(parse(&text).unwrap().flood_limit(100), 8);
    let text = format!("{GOOD}\n[[vnis]]\nvni = 100\nflood_limit = 2\n");
    assert_eq!(parse(&text).unwrap().flood_limit(100), 2);
    let p = only_problem(&format!("{GOOD}\n[[vnis]]\nvni = 100\nflood_limit = 1000\n"));
    assert_eq!((p.path().as_str(), p.value.as_str()), ("vnis[0].flood_limit", "1000"));
    let p = only_problem(&format!("{GOOD}\n[[vnis]]\nvni = 300\n"));
    assert_eq!((p.path().as_str(), p.value.as_str()), ("vnis[0].vni", "300"));
}

#[test]
fn learning_is_a_per_vni_setting_with_a_checked_ageing() {
    let learning = |text: &str| {
        let config = parse(text).unwrap();
        let model = config.model();
        model.networks.iter().find(|n| n.vni == 100).and_then(|n| n.learning()).map(|l| l.ageing_seconds)
    };
    assert_eq!(learning(GOOD), None, "learning is off unless asked for");
    assert_eq!(learning(&format!("{GOOD}\n[[vnis]]\nvni = 100\nlearning = true\n")), Some(overlay_common::DEFAULT_LEARNING_AGEING_SECONDS));
    assert_eq!(learning(&format!("{GOOD}\n[[vnis]]\nvni = 100\nlearning = true\nageing = 60\n")), Some(60));
    assert_eq!(learning(&format!("{GOOD}\n[[vnis]]\nvni = 100\nlearning = false\n")), None);
    let p = only_problem(&format!("{GOOD}\n[[vnis]]\nvni = 100\nlearning = true\nageing = 0\n"));
    assert_eq!((p.path().as_str(), p.value.as_str()), ("vnis[0].ageing", "0"));
    let p = only_problem(&format!("{GOOD}\n[[vnis]]\nvni = 100\nlearning = true\nageing = 100000\n"));
    assert_eq!((p.path().as_str(), p.value.as_str()), ("vnis[0].ageing", "100000"));
    let p = only_problem(&format!("{GOOD}\n[[vnis]]\nvni = 100\nageing = 60\n"));
    assert!(p.path() == "vnis[0].ageing" && p.message.contains("learning = true"), "{p}");
    let error = parse(&format!("{GOOD}\n[[vnis]]\nvni = 100\nlearning = \"yes\"\n")).unwrap_err();
    assert!(error.to_string().contains("learning"), "a non-boolean learning is refused naming it: {error}");
}

#[test]
fn learning_options_of_any_source_are_checked_by_the_model() {
    use crate::model::validate::learning_options_problem;
    let options = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    assert_eq!(learning_options_problem(&options(&[("learning", "true"), ("ageing", "30")])), None);
    assert_eq!(learning_options_problem(&options(&[("learning", "false")])), None);
    assert_eq!(learning_options_problem(&options(&[("learning", "on"), ("ageing", "30")])), None, "Docker-style on/off");
    assert_eq!(learning_options_problem(&options(&[("learning", "off")])), None);
    let problem = |pairs| learning_options_problem(&options(pairs)).map(|(option, value, _)| (option, value));
    assert_eq!(problem(&[("learning", "yes")]), Some(("learning", "yes".to_owned())));
    assert_eq!(problem(&[("learning", "true"), ("ageing", "soon")]), Some(("ageing", "soon".to_owned())));
    assert_eq!(problem(&[("learning", "true"), ("ageing", "0")]), Some(("ageing", "0".to_owned())));
    assert_eq!(problem(&[("ageing", "30")]), Some(("ageing", "30".to_owned())));
}

#[test]
fn peer_vnis_include_extra_ones() {
    let text = GOOD.replace("vtep_address = \"192.0.2.2\"", "vtep_address = \"192.0.2.2\"\nvnis = [300]");
    let config = parse(&text).unwrap();
    assert_eq!(config.peers[0].vnis().into_iter().collect::<Vec<_>>(), vec![100, 300]);
    let p = only_problem(&GOOD.replace("vtep_address = \"192.0.2.2\"", "vtep_address = \"192.0.2.2\"\nvnis = [0]"));
    assert_eq!(p.path(), "peers[0].vnis[0]");
}

#[test]
fn too_many_ports_in_one_vni_is_rejected() {
    let mut text = GOOD.to_owned();
    for i in 0..FLOOD_MAX_LOCAL_PORTS {
        text.push_str(&format!(
            "\n[[endpoints]]\ninterface = \"port{i}\"\nmac = \"02:00:00:01:00:{i:02x}\"\nip = \"10.10.1.{i}\"\nvni = 100\n"
        ));
    }
    let p = only_problem(&text);
    assert!(p.path().ends_with(".interface") && p.message.contains("VNI 100"), "{p}");
}

#[test]
fn more_vnis_or_peers_than_counter_slots_is_rejected() {
    let endpoints = |count: u32| {
        (0..count)
            .map(|i| {
                format!(
                    "\n[[endpoints]]\ninterface = \"port{i}\"\nmac = \"02:00:00:02:{:02x}:{:02x}\"\nip = \"10.20.0.1\"\nvni = {}\n",
                    i >> 8,
                    i & 0xff,
                    1000 + i
                )
            })
            .collect::<String>()
    };
    // With GOOD's VNI 100: exactly as many VNIs as slots, then one more.
    parse(&format!("{GOOD}{}", endpoints(VNI_COUNTER_SLOTS - 1))).unwrap();
    let p = only_problem(&format!("{GOOD}{}", endpoints(VNI_COUNTER_SLOTS)));
    let last = VNI_COUNTER_SLOTS as usize;
    assert_eq!((p.path().as_str(), p.value.as_str()), (format!("endpoints[{last}].vni").as_str(), (1000 + VNI_COUNTER_SLOTS - 1).to_string().as_str()));
    assert!(p.message.contains(&format!("{VNI_COUNTER_SLOTS} VNIs")), "{p}");

    let peers = |count: u32| {
        (0..count)
            .map(|i| format!("\n[[peers]]\nname = \"extra{i}\"\nvtep_address = \"198.18.{}.{}\"\n", i >> 8, i & 0xff))
            .collect::<String>()
    };
    parse(&format!("{GOOD}{}", peers(PEER_COUNTER_SLOTS - 1))).unwrap();
    let p = only_problem(&format!("{GOOD}{}", peers(PEER_COUNTER_SLOTS)));
    assert_eq!((p.path().as_str(), p.value.as_str()), (format!("peers[{}]", PEER_COUNTER_SLOTS).as_str(), format!("extra{}", PEER_COUNTER_SLOTS - 1).as_str()));
    assert!(p.message.contains(&format!("{PEER_COUNTER_SLOTS} peers")), "{p}");
}

#[test]
fn missing_file_names_the_path() {
    let err = Config::load(Path::new("/nonexistent/overlay/node.toml")).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/overlay/node.toml"), "{err}");
}
