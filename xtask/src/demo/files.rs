//! `cargo xtask demo --static`: a three-host lab whose agents read
//! generated files listing every container (no etcd, no Docker).
use std::{
    net::Ipv4Addr,
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use overlay_lab::{
    lab::{ContainerSpec, HostKind, HostSpec, Lab, LabSpec, OVERLAY_MTU}, traffic::{ping, tcp_transfer},
    netns,
    probe::{NameServer, ask_name},
};

const SCOPE: &str = "demo";
const TRANSFER_BYTES: u64 = 100 * 1024 * 1024;

/// Agent pids, for the interrupt handler (the lab's destructors do not run
/// when the process is interrupted).
static AGENT_PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Two tenants share the subnet and the addresses; only the VNI (and the
/// MAC, for readability) differ.
const BLUE: u32 = 100;
const GREEN: u32 = 200;

fn container(name: &str, last_octet: u8, vni: u32) -> ContainerSpec {
    ContainerSpec {
        name: name.into(),
        mac: [0x02, 0, 0, (vni / 100) as u8, 0, last_octet],
        ip: Ipv4Addr::new(10, 10, 0, last_octet),
        vni,
    }
}

fn tenant_of(vni: u32) -> &'static str {
    if vni == BLUE { "blue" } else { "green" }
}

pub fn demo(overlay_bin: &std::path::Path) -> anyhow::Result<()> {
    install_interrupt_handler()?;

    let spec = LabSpec {
        scope: SCOPE.into(),
        vxlan_port: 4789,
        hosts: vec![
            HostSpec {
                name: "h1".into(),
                kind: HostKind::Overlay,
                containers: vec![container("blue-a", 11, BLUE), container("blue-d", 14, BLUE), container("green-a", 11, GREEN)],
            },
            HostSpec {
                name: "h2".into(),
                kind: HostKind::Overlay,
                containers: vec![container("blue-b", 12, BLUE), container("green-b", 12, GREEN)],
            },
            HostSpec {
                name: "h3".into(),
                kind: HostKind::Overlay,
                containers: vec![container("blue-c", 13, BLUE), container("green-c", 13, GREEN)],
            },
        ],
    };
    println!("\n== building the lab: 3 hosts on one underlay switch (192.0.2.0/24); two tenants, blue (VNI {BLUE}) and green (VNI {GREEN}), with the same subnet 10.10.0.0/24 and the same addresses on the same hosts (MTU {OVERLAY_MTU})");
    let mut lab = Lab::build(spec)?;
    for host in &lab.hosts {
        let containers: Vec<String> =
            host.containers.iter().map(|c| format!("{} {} (VNI {}) on port {}", c.spec.name, c.spec.ip, c.spec.vni, c.port)).collect();
        println!("   {} (namespace {}): VTEP {} on {}; containers: {}", host.spec.name, host.netns.name(), host.vtep, host.underlay, containers.join(", "));
    }

    println!("\n== starting `overlay run` on every host ({})", overlay_bin.display());
    lab.start_agents(overlay_bin)?;
    AGENT_PIDS.lock().unwrap().extend(lab.agents.iter().filter_map(|a| a.pid()));
    for agent in &lab.agents {
        if let Some(line) = agent.log().lines().find(|l| l.contains("forwarding:")) {
            println!("   {}", line.split("] ").last().unwrap_or(line));
        }
    }

    println!("\n== ping between every pair of containers of each tenant");
    let all: Vec<(String, String)> = lab
        .hosts
        .iter()
        .flat_map(|h| h.containers.iter().map(move |c| (h.spec.name.clone(), c.spec.name.clone())))
        .collect();
    let mut failures = Vec::new();
    for (from_host, from) in &all {
        for (to_host, to) in &all {
            let source = lab.container(from_host, from);
            let target = lab.container(to_host, to);
            if (from_host, from) == (to_host, to) || source.spec.vni != target.spec.vni {
                continue;
            }
            let (sent, received) = ping(&source.netns, target.spec.ip, 3)?;
            let path = if from_host == to_host { "local switch" } else { "VXLAN" };
            println!("   {from}@{from_host} -> {to}@{to_host} ({}, {path}): {received}/{sent} replies", target.spec.ip);
            if received != sent {
                failures.push(format!("{from} -> {to}"));
            }
        }
    }
    ensure!(failures.is_empty(), "pings failed: {}", failures.join(", "));

    println!("\n== isolation: every container serves its name; each asks who is at 10.10.0.12 (both tenants have that address, on h2)");
    let _servers: Vec<NameServer> = lab
        .hosts
        .iter()
        .flat_map(|h| h.containers.iter().map(move |c| (h, c)))
        .map(|(h, c)| NameServer::start(&c.netns, &format!("{}@{}", c.spec.name, h.spec.name)))
        .collect::<anyhow::Result<_>>()?;
    for host in &lab.hosts {
        for source in host.containers.iter().filter(|c| c.spec.ip != Ipv4Addr::new(10, 10, 0, 12)) {
            let answer = ask_name(&source.netns, Ipv4Addr::new(10, 10, 0, 12).into())?;
            let expected = format!("{}-b@h2", tenant_of(source.spec.vni));
            println!("   {}@{} ({}) reached {answer}", source.spec.name, host.spec.name, tenant_of(source.spec.vni));
            ensure!(answer == expected, "{} reached {answer}, expected {expected}: tenants are not isolated", source.spec.name);
        }
    }

    println!("\n== TCP: {} MiB each way between blue-a@h1 and blue-c@h3, every byte checked", TRANSFER_BYTES >> 20);
    let a = lab.container("h1", "blue-a");
    let c = lab.container("h3", "blue-c");
    for (from, to) in [(a, c), (c, a)] {
        let report = tcp_transfer(&from.netns, &to.netns, to.spec.ip, TRANSFER_BYTES)?;
        ensure!(
            report.bytes_received == TRANSFER_BYTES && report.first_mismatch.is_none(),
            "transfer {} -> {} delivered {} of {TRANSFER_BYTES} bytes, first wrong byte at {:?}",
            from.spec.name,
            to.spec.name,
            report.bytes_received,
            report.first_mismatch
        );
        let rate = report.bytes_received as f64 * 8.0 / report.elapsed.as_secs_f64() / 1e9;
        println!("   {} -> {}: {} bytes intact in {:.2?} ({rate:.2} Gbit/s)", from.spec.name, to.spec.name, report.bytes_received, report.elapsed);
    }

    println!("\n== stopping the agents (SIGTERM: each detaches and prints its counters)");
    AGENT_PIDS.lock().unwrap().clear();
    for (host, output) in lab.stop_agents() {
        let counters: Vec<&str> = output.lines().skip_while(|l| !l.starts_with("datapath counters")).collect();
        println!("-- {host}");
        for line in counters {
            println!("   {line}");
        }
    }

    drop(lab);
    let left: Vec<String> = std::fs::read_dir("/var/run/netns")
        .map(|entries| entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    let ours: Vec<&String> = left.iter().filter(|n| n.starts_with(&format!("{}-{SCOPE}-{}-", netns::PREFIX, std::process::id()))).collect();
    ensure!(ours.is_empty(), "namespaces left behind: {ours:?}");
    println!("\n== lab removed: every namespace and link is gone. Demo complete.");
    Ok(())
}

fn install_interrupt_handler() -> anyhow::Result<()> {
    ctrlc::set_handler(|| {
        eprintln!("\ninterrupted: stopping agents and removing the lab");
        let pids: Vec<u32> = AGENT_PIDS.lock().map(|p| p.clone()).unwrap_or_default();
        for pid in &pids {
            // SAFETY: plain syscall.
            unsafe { libc::kill(*pid as i32, libc::SIGTERM) };
        }
        // Wait (reaping them: they are our children) until each has detached.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut running = pids;
        while !running.is_empty() && Instant::now() < deadline {
            // SAFETY: plain syscall; a null status pointer is allowed.
            running.retain(|pid| unsafe { libc::waitpid(*pid as i32, std::ptr::null_mut(), libc::WNOHANG) } == 0);
            std::thread::sleep(Duration::from_millis(50));
        }
        netns::remove_all_of_this_process(SCOPE);
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("{}-{SCOPE}-{}", netns::PREFIX, std::process::id())));
        std::process::exit(130);
    })
    .context("installing the interrupt handler")
}
