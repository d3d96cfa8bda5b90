//! A node at the limits it is built for (issue 9): 4,096 VNIs, 4,096
//! peers and over 100,000 remote endpoints in one configuration file. It
//! validates, the agent applies it, and two real hosts among the generated
//! peers still ping. Prints the start and reload times, the agent's RSS and
//! the memory of its maps (a note for the report, not an assertion).
use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    os::fd::{AsFd as _, AsRawFd as _},
    time::{Duration, Instant},
};

use overlay_common::{PEER_COUNTER_SLOTS, VNI_COUNTER_SLOTS};
use overlay_lab::lab::{ContainerSpec, HostKind, HostSpec, Lab, LabSpec, overlay_binary};
use overlay_lab::traffic::ping;

/// Remote endpoints generated behind the fake peers (besides h2's container).
const REMOTE_ENDPOINTS: u32 = 100_000;

/// h1's extra local VNIs (one port each) and the fake peers: with VNI 100
/// and peer h2, exactly the node's limits.
fn extra() -> (u32, u32) {
    (VNI_COUNTER_SLOTS - 1, PEER_COUNTER_SLOTS - 1)
}

fn generated_config(base: &str, port: impl Fn(u32) -> String) -> String {
    let (vnis, peers) = extra();
    let mut text = String::with_capacity(8 << 20);
    text.push_str(base);
    for i in 0..vnis {
        let _ = write!(
            text,
            "\n[[endpoints]]\ninterface = \"{}\"\nmac = \"02:01:00:00:{:02x}:{:02x}\"\nip = \"10.200.{}.{}\"\nvni = {}\n",
            port(i),
            i >> 8,
            i & 0xff,
            i >> 8,
            i & 0xff,
            1000 + i
        );
    }
    // Endpoint j lives on fake peer (j / 7) % peers, in VNI 1000 + j % vnis:
    // each peer carries a few dozen VNIs, each VNI has a few dozen peers
    // (below the flood list's 64).
    let mut by_peer: Vec<Vec<u32>> = vec![Vec::new(); peers as usize];
    for j in 0..REMOTE_ENDPOINTS {
        by_peer[((j / 7) % peers) as usize].push(j);
    }
    for (p, endpoints) in by_peer.iter().enumerate() {
        let _ = write!(text, "\n[[peers]]\nname = \"fake{p}\"\nvtep_address = \"198.18.{}.{}\"\n", p >> 8, p & 0xff);
        for &j in endpoints {
            let _ = write!(
                text,
                "  [[peers.endpoints]]\n  mac = \"02:02:00:{:02x}:{:02x}:{:02x}\"\n  ip = \"10.{}.{}.{}\"\n  vni = {}\n",
                j >> 16,
                (j >> 8) & 0xff,
                j & 0xff,
                64 + (j >> 16),
                (j >> 8) & 0xff,
                j & 0xff,
                1000 + j % vnis
            );
        }
    }
    text
}

/// Bytes of kernel memory charged to the BPF maps open in process `pid`
/// (the `memlock` line of each map fd's fdinfo).
fn map_memory_of(pid: u32) -> (u64, usize) {
    let mut total = 0;
    let mut count = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).into_iter().flatten().flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else { continue };
        if !text.contains("map_type:") {
            continue;
        }
        if let Some(bytes) = text.lines().find_map(|l| l.strip_prefix("memlock:")).and_then(|v| v.trim().parse::<u64>().ok()) {
            total += bytes;
            count += 1;
        }
    }
    (total, count)
}

/// (name, entries held / max entries, memlock bytes) of each pinned map.
fn pinned_maps(pins: &std::path::Path) -> Vec<(String, u64, u64)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(pins).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(data) = aya::maps::MapData::from_pin(entry.path()) else { continue };
        let fd = data.fd().as_fd().as_raw_fd();
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
        let field = |key: &str| info.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(0);
        found.push((name, field("max_entries:"), field("memlock:")));
    }
    found.sort();
    found
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap_or(0)
}

#[test]
fn four_thousand_vnis_and_peers_and_a_hundred_thousand_endpoints_apply_and_forward() {
    let container = |o: u8| ContainerSpec { name: "c".into(), mac: [2, 0, 0, 0, 0x70, o], ip: Ipv4Addr::new(10, 10, 0, o), vni: 100 };
    let host = |n: &str, o: u8| HostSpec { name: n.into(), kind: HostKind::Overlay, containers: vec![container(o)] };
    let mut lab = Lab::build(LabSpec { scope: "plumb-scale".into(), vxlan_port: 4789, hosts: vec![host("h1", 1), host("h2", 2)] })
        .expect("building the lab");
    let h1 = &lab.host("h1").netns;
    let tag = format!("{:x}", std::process::id());
    let port = |i: u32| format!("s{tag}{i}");
    let (vnis, _) = extra();
    let started = Instant::now();
    let batch: String = (0..vnis).map(|i| format!("link add {} type veth peer name t{tag}{i}\n", port(i))).collect();
    let batch_path = lab.dir.join("ports.batch");
    std::fs::write(&batch_path, batch).unwrap();
    h1.ip(&["-batch", batch_path.to_str().unwrap()]).expect("creating the ports");
    // The fake peers are reached through h2 (one next hop, one managed neighbour entry).
    h1.ip(&["route", "add", "198.18.0.0/15", "via", "192.0.2.2"]).unwrap();
    println!("{vnis} ports created in {:?}", started.elapsed());

    let path = lab.host("h1").config_path.clone().unwrap();
    let text = generated_config(&std::fs::read_to_string(&path).unwrap(), port);
    std::fs::write(&path, &text).unwrap();
    println!("configuration: {} bytes, {} lines", text.len(), text.lines().count());

    let bin = overlay_binary().expect("overlay binary");
    let checked = Instant::now();
    let output = h1.command(bin.to_str().unwrap()).args(["validate", "--config"]).arg(&path).output().expect("overlay validate");
    assert!(output.status.success(), "expected the configuration to validate, got:\n{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    println!("overlay validate: {:?}", checked.elapsed());

    let start = Instant::now();
    let agent = lab.start_agent_within(0, &bin, &[], Duration::from_secs(600)).expect("starting h1's agent");
    let start_time = start.elapsed();
    lab.agents.push(agent);
    lab.agents.push(lab.start_agent(1, &bin).expect("starting h2's agent"));
    let pid = lab.agents[0].pid().unwrap();

    let (a, b) = (&lab.container("h1", "c").netns, lab.container("h2", "c").spec.ip);
    let (sent, received) = ping(a, b, 3).unwrap();
    assert_eq!((sent, received), (3, 3), "expected h1's container to reach h2's across the large node\n{}", lab.agent_logs());

    let pins = lab.bpffs_dir().join("h1").join("maps");
    let summary = lab.overlay_command("h1", &bin, &["status", "--node", "h1"]).unwrap().output().unwrap();
    let status = String::from_utf8_lossy(&summary.stdout);
    let shown: Vec<String> = status.lines().take(5).map(|l| l.chars().take(160).collect()).collect();
    println!("$ overlay status --node h1 (head, lines cut at 160 characters)\n{}", shown.join("\n"));

    // A reload that changes one remote endpoint: applied as a diff.
    let moved = text.replacen("mac = \"02:02:00:00:00:00\"", "mac = \"02:02:00:ff:00:00\"", 1);
    assert_ne!(moved, text, "the generated configuration has no endpoint 02:02:00:00:00:00");
    let reloads_before = lab.agents[0].log().matches("reloaded").count();
    let reload = Instant::now();
    std::fs::write(&path, moved).unwrap();
    lab.agents[0].signal(libc::SIGHUP);
    while lab.agents[0].log().matches("reloaded").count() == reloads_before && reload.elapsed() < Duration::from_secs(300) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let reload_time = reload.elapsed();
    let log = lab.agents[0].log();
    let last = log.lines().filter(|l| l.contains("reloaded")).last().unwrap_or_else(|| panic!("no reload in the log:\n{log}")).to_owned();
    assert!(last.contains("FDB: 2"), "expected the reload to change 2 FDB entries (one out, one in), log says: {last}");
    assert_eq!(ping(a, b, 2).unwrap().1, 2, "traffic after the reload");

    let (memory, count) = map_memory_of(pid);
    println!("\n== scale note: {vnis} + 1 VNIs, {} + 1 peers, {REMOTE_ENDPOINTS} + 1 remote endpoints ==", extra().1);
    println!("agent start to forwarding (load, verify, apply, attach {} ports): {start_time:?}", vnis + 1);
    println!("reload changing one endpoint (parse, validate, diff, apply): {reload_time:?}");
    println!("agent RSS: {} MiB", rss_kib(pid) / 1024);
    println!("BPF maps held by the agent: {count} maps, {:.1} MiB memlock in all ({} CPUs)", memory as f64 / 1048576.0, aya::util::nr_cpus().unwrap_or(0));
    for (name, max_entries, memlock) in pinned_maps(&pins) {
        println!("  {name:<16} max_entries {max_entries:>7}  memlock {:>9.1} KiB", memlock as f64 / 1024.0);
    }
}
