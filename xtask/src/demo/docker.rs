//! `cargo xtask demo`: the workflow of the people this is for, on three
//! hosts (network namespaces) with one etcd and a Docker daemon each. Every
//! command is printed with the host it runs on and what it answered.
use std::{collections::BTreeMap, net::Ipv4Addr, path::Path};

use anyhow::ensure;
use overlay_lab::{
    docker_lab::{DockerLab, NAME_PORT},
    dockerd, netns,
};

const SCOPE: &str = "demo";
const HOSTS: [&str; 3] = ["h1", "h2", "h3"];
/// Both tenants use this subnet: only their VNIs tell them apart.
const SUBNET: &str = "10.0.9.0/24";
const TENANTS: [(&str, &str); 2] = [("blue", "4097"), ("green", "4098")];
const TRANSFER_BYTES: u64 = 10 << 20;

/// Runs the walkthrough; the lab is removed when it returns (either way)
/// and, on Ctrl-C, by the lab library's interrupt handler.
pub fn demo(overlay_bin: &Path) -> anyhow::Result<()> {
    let result = walkthrough(overlay_bin);
    if let Err(error) = &result {
        println!("\n== the demo failed ({error:#}); removing the lab");
    }
    let left = leftovers();
    ensure!(left.is_empty(), "left behind: {}", left.join(", "));
    result?;
    println!("\n== removed: no namespace, daemon, mount, plugin socket or directory of this run is left. Demo complete.");
    Ok(())
}

fn walkthrough(overlay_bin: &Path) -> anyhow::Result<()> {
    println!("\n== three hosts on one underlay switch (192.0.2.0/24), etcd on the switch, and on each host the agent in cluster mode");
    println!("   serving Docker's network and IPAM plugin, and a dockerd of its own (own roots and socket, {})", dockerd::DAEMON_FLAGS.join(" "));
    println!("   All hosts share /run/docker/plugins here, so each agent serves its own plugin name; on real machines every host uses the default, overlay-ebpf.");
    let mut lab = DockerLab::start(SCOPE, &HOSTS, true, overlay_bin, true)?;
    let outcome = tenants(&lab);
    if netns::interrupted() {
        // Ctrl-C: the lab library's handler removes everything and exits.
        loop {
            std::thread::park();
        }
    }
    println!("\n== removing everything: containers, networks, daemons, agents, etcd");
    for host in 0..lab.hosts.len() {
        let ids = lab.hosts[host].docker.docker(&["ps", "-aq"]).unwrap_or_default();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(&ids);
            let _ = lab.docker(host, &args);
        }
        for (tenant, _) in TENANTS {
            if lab.hosts[host].docker.docker(&["network", "inspect", tenant]).is_ok() {
                let _ = lab.docker(host, &["network", "rm", tenant]);
            }
        }
    }
    if outcome.is_ok() {
        println!("   (the last host to remove a Docker network of an overlay network also removed that network from etcd)");
        lab.overlay(0, &["network", "ls", "--node", "h1"])?;
        if let Some(etcd) = &lab.etcd {
            lab.overlay(0, &["cluster", "status", "--etcd", &etcd.client_url(0)])?;
        }
    }
    lab.echo = false;
    drop(lab);
    outcome
}

/// Two tenant networks with one subnet on every host, a container of each
/// on every host, then traffic, isolation and what the tools show.
fn tenants(lab: &DockerLab) -> anyhow::Result<()> {
    println!("\n== two tenant networks, blue and green, with the SAME subnet {SUBNET} on every host (Docker networks are per host: one");
    println!("   overlay network spans hosts because every host creates it with the same subnet and VNI)");
    for host in 0..lab.hosts.len() {
        for (tenant, vni) in TENANTS {
            lab.create_network(host, tenant, SUBNET, &["--opt", &format!("vni={vni}")])?;
        }
    }

    println!("\n== a container of each tenant on every host; each serves its name on TCP port {NAME_PORT} (busybox nc)");
    let mut addresses: BTreeMap<(usize, &str), Ipv4Addr> = BTreeMap::new();
    for host in 0..lab.hosts.len() {
        for (tenant, _) in TENANTS {
            let name = container(tenant, host);
            lab.run_container(host, &name, tenant)?;
            addresses.insert((host, tenant), lab.address(host, &name, tenant)?);
        }
    }
    lab.docker(0, &["exec", "blue-1", "ip", "-o", "-4", "addr", "show", "eth0"])?;
    lab.docker(0, &["exec", "blue-1", "ip", "route"])?;

    println!("\n== ping across hosts, every pair of each tenant (the hosts learned each other's containers from etcd)");
    for (tenant, _) in TENANTS {
        for from in 0..lab.hosts.len() {
            for to in (0..lab.hosts.len()).filter(|to| *to != from) {
                let target = addresses[&(to, tenant)];
                let from_name = container(tenant, from);
                lab.wait_for(&format!("{from_name} reaching {}", container(tenant, to)), || lab.pings(from, &from_name, target))?;
                let (sent, received) = lab.ping(from, &from_name, target, 3)?;
                ensure!(sent == received, "{from_name} -> {} ({target}): {received} of {sent} pings answered", container(tenant, to));
            }
        }
    }

    println!("\n== TCP across hosts: {} MiB of random bytes, MD5 of what was sent and of what arrived", TRANSFER_BYTES >> 20);
    for (tenant, from, to) in [("blue", 0, 2), ("green", 2, 1)] {
        let (sent, received) = lab.transfer((from, &container(tenant, from)), (to, &container(tenant, to)), addresses[&(to, tenant)], TRANSFER_BYTES)?;
        ensure!(sent == received, "{tenant}: {} -> {}: sent MD5 {sent}, received {received}", container(tenant, from), container(tenant, to));
        println!("   {} -> {}: {} bytes, MD5 {sent} on both ends", container(tenant, from), container(tenant, to), TRANSFER_BYTES);
    }

    println!("\n== isolation: both tenants hold the same addresses; each container asks who is at its tenant-mates' addresses");
    for (tenant, _) in TENANTS {
        let other = TENANTS.iter().map(|(t, _)| *t).find(|t| *t != tenant).unwrap_or(tenant);
        for to in 1..lab.hosts.len() {
            let target = addresses[&(to, tenant)];
            let from_name = container(tenant, 0);
            let command = format!("sleep 3 | nc -w 2 {target} {NAME_PORT}");
            let answer = lab.docker(0, &["exec", &from_name, "sh", "-c", &command])?;
            let same_address = addresses[&(to, other)] == target;
            println!(
                "   {from_name} ({tenant}) asked {target}: {answer}{}",
                if same_address { format!(" (that is also {}'s address, in {other})", container(other, to)) } else { String::new() }
            );
            ensure!(answer == container(tenant, to), "{from_name} ({tenant}) reached {answer:?} at {target}, expected {}", container(tenant, to));
        }
    }

    println!("\n== what Docker and the agent show");
    lab.docker(0, &["network", "ls", "--filter", &format!("driver={}", lab.hosts[0].plugin.name)])?;
    lab.docker(0, &["network", "inspect", "blue"])?;
    lab.overlay(0, &["network", "ls", "--node", "h1"])?;
    lab.overlay(0, &["endpoint", "ls", "--node", "h1"])?;
    if let Some(etcd) = &lab.etcd {
        lab.overlay(0, &["cluster", "status", "--etcd", &etcd.client_url(0)])?;
    }
    lab.overlay(0, &["stats", "--node", "h1"])?;
    Ok(())
}

/// `blue-1` is blue's container on the first host.
fn container(tenant: &str, host: usize) -> String {
    format!("{tenant}-{}", host + 1)
}

/// What this run left: namespaces, processes, mounts, plugin sockets, directories.
fn leftovers() -> Vec<String> {
    let me = std::process::id();
    let mut left = Vec::new();
    let prefix = format!("{}-{SCOPE}-{me}", netns::PREFIX);
    for entry in std::fs::read_dir("/var/run/netns").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) {
            left.push(format!("namespace {name}"));
        }
    }
    for entry in std::fs::read_dir(std::env::temp_dir()).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) {
            left.push(format!("directory {}", entry.path().display()));
        }
    }
    for entry in std::fs::read_dir(dockerd::PLUGIN_DIR).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("overlay-{SCOPE}-{me}-")) {
            left.push(format!("plugin socket {}", entry.path().display()));
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for point in mounts.lines().filter_map(|line| line.split(' ').nth(4)).filter(|point| point.contains(&prefix)) {
        left.push(format!("mount {point}"));
    }
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&prefix) && !cmdline.contains("xtask") {
            left.push(format!("process {} ({})", entry.file_name().to_string_lossy(), cmdline.trim()));
        }
    }
    for controller in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
        for entry in std::fs::read_dir(controller.path()).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                left.push(format!("cgroup {}", entry.path().display()));
            }
        }
    }
    left
}
