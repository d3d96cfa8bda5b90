//! The curves' lab: one overlay cell (TC decapsulation, wire-like
//! underlay) built apart from the interleaved cells, so growing its tables
//! cannot touch their measurements; the extra VNIs' ports made once; each
//! point set by rewriting the agents' files and checked in their maps.
use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use overlay_lab::lab::{OVERLAY_MTU, scaled};

use super::{CurveSample, Point, Tables};
use crate::bench::{
    metrics::{
        Timing,
        bpf::{self, RunStats},
        cpu::CpuTimes,
        snmp::Snmp,
        spread_udp::{self, SpreadLoad},
        udp_rate::{self, Snapshot, Window},
    },
    topology::{Cell, DecapMode, Profile, RECEIVER_IP, TestBed, Topology, VNI},
};

/// The lab scope (namespaces `ovl-bench-curves-<pid>-*`).
pub const SCOPE: &str = "bench-curves";
/// The cell whose path the curves measure.
pub const CELL: Cell = Cell { topology: Topology::Overlay(DecapMode::Tc), profile: Profile::WireLike };
/// The extra VNIs are this + k, k = 1, 2, ...
const FIRST_EXTRA_VNI: u32 = 1_000;
/// Host names of the lab (`TestBed`'s), by index.
const HOSTS: [&str; 2] = ["h1", "h2"];

/// The curves' lab, with `extra_ports` more ports (VNIs) on each host.
pub struct CurveBed {
    pub bed: TestBed,
    extra_ports: u32,
    overlay_bin: PathBuf,
}

/// The address of host `host`'s container on extra port `k`: a /30 each
/// (172.16.0.0/18 holds 4,095 of them).
fn port_address(host: usize, k: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 0)) + 4 * k + 1 + host as u32)
}

fn port_mac(host: usize, k: u32) -> String {
    format!("02:c{}:00:00:{:02x}:{:02x}", host + 1, k >> 8, k & 0xff)
}

/// The `j`th extra remote endpoint said to be behind host `host`: only
/// in the other host's FDB (no container has it).
fn remote_endpoint(host: usize, j: u32) -> (String, Ipv4Addr) {
    let [_, b, c, d] = j.to_be_bytes();
    let base = u32::from(Ipv4Addr::new(10, 128, 0, 0)) + ((host as u32) << 21);
    (format!("02:b{}:00:{b:02x}:{c:02x}:{d:02x}", host + 1), Ipv4Addr::from(base + j))
}

impl CurveBed {
    /// Builds the lab (agents running with the base tables), then the
    /// extra ports: on each host `extra_ports` veth pairs into its
    /// container, each with its own /30 and MAC, not yet in any file.
    pub fn build(overlay_bin: &Path, extra_ports: u32) -> anyhow::Result<CurveBed> {
        let bed = TestBed::build_in(CELL, overlay_bin, SCOPE.to_owned())?;
        let curves = CurveBed { bed, extra_ports, overlay_bin: overlay_bin.to_owned() };
        curves.add_ports().context("adding the extra VNIs' ports")?;
        Ok(curves)
    }

    fn add_ports(&self) -> anyhow::Result<()> {
        let lab = &self.bed.lab;
        for (index, host) in lab.hosts.iter().enumerate() {
            let container = &host.containers[0];
            // No IPv6 on the new links: no DAD or router solicitations
            // flooded through the overlay while they come up.
            for netns in [&host.netns, &container.netns] {
                netns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
            }
            let (mut host_batch, mut container_batch) = (String::new(), String::new());
            for k in 1..=self.extra_ports {
                let _ = writeln!(host_batch, "link add cv{k} type veth peer name ci{k} netns {}", container.netns.name());
                let _ = writeln!(host_batch, "link set cv{k} up");
                let _ = writeln!(container_batch, "link set ci{k} address {} mtu {OVERLAY_MTU} up", port_mac(index, k));
                let _ = writeln!(container_batch, "addr add {}/30 dev ci{k}", port_address(index, k));
                // Static: no ARP round through the agents for thousands of neighbours.
                let other = 1 - index;
                let _ = writeln!(
                    container_batch,
                    "neigh replace {} lladdr {} dev ci{k} nud permanent",
                    port_address(other, k),
                    port_mac(other, k)
                );
            }
            for (netns, batch, what) in [(&host.netns, host_batch, "host"), (&container.netns, container_batch, "container")] {
                let path = lab.dir.join(format!("{}-{what}.batch", host.spec.name));
                std::fs::write(&path, batch).with_context(|| format!("writing {}", path.display()))?;
                netns.ip(&["-batch", path.to_str().context("lab path is not UTF-8")?])?;
            }
        }
        Ok(())
    }

    /// Host `host`'s configuration with `tables`: the lab's own file, the
    /// extra endpoints behind the other host appended to its (only) peer,
    /// then the extra ports as local endpoints.
    fn config(&self, host: usize, tables: Tables) -> String {
        let mut text = self.bed.lab.overlay_config(host);
        let other = 1 - host;
        let mut remote = |mac: &str, ip: Ipv4Addr, vni: u32| {
            let _ = writeln!(text, "  [[peers.endpoints]]\n  mac = \"{mac}\"\n  ip = \"{ip}\"\n  vni = {vni}\n");
        };
        for k in 1..=tables.extra_vnis {
            remote(&port_mac(other, k), port_address(other, k), FIRST_EXTRA_VNI + k);
        }
        for j in 1..=tables.extra_fdb {
            let (mac, ip) = remote_endpoint(other, j);
            remote(&mac, ip, VNI);
        }
        for k in 1..=tables.extra_vnis {
            let _ = writeln!(
                text,
                "[[endpoints]]\ninterface = \"cv{k}\"\nmac = \"{}\"\nip = \"{}\"\nvni = {}\n",
                port_mac(host, k),
                port_address(host, k),
                FIRST_EXTRA_VNI + k
            );
        }
        text
    }

    /// Sets both agents' tables to `point`'s and waits until their maps
    /// hold exactly that many FDB entries and VNIs.
    pub fn configure(&self, point: Point) -> anyhow::Result<()> {
        let tables = point.tables();
        if tables.extra_vnis > self.extra_ports {
            bail!("{}: needs {} extra ports, the lab has {}", point.name(), tables.extra_vnis, self.extra_ports);
        }
        let lab = &self.bed.lab;
        let written_at = unix_seconds();
        for (index, host) in lab.hosts.iter().enumerate() {
            let path = host.config_path.as_ref().context("an overlay host without a configuration file")?;
            // Whole files only: the agent may notice a half-written one.
            let staged = path.with_extension("toml.new");
            std::fs::write(&staged, self.config(index, tables)).with_context(|| format!("writing {}", staged.display()))?;
            std::fs::rename(&staged, path).with_context(|| format!("replacing {}", path.display()))?;
        }
        for agent in &lab.agents {
            agent.signal(libc::SIGHUP);
        }
        let deadline = Instant::now() + scaled(Duration::from_secs(300));
        loop {
            // The maps are written before the ports are attached (or after
            // they are detached), so both are waited for: a reload of
            // thousands of ports takes minutes, and a point measured
            // during it would measure the reload.
            let held: Vec<(u32, u32)> = HOSTS.iter().map(|host| self.tables_held(host)).collect::<anyhow::Result<_>>()?;
            let reloaded: Vec<Reloaded> = HOSTS.iter().map(|host| self.reloaded(host, written_at)).collect::<anyhow::Result<_>>()?;
            let wanted = Reloaded { since_written: true, ok: true, extra_ports_attached: tables.extra_vnis };
            if held.iter().all(|held| *held == (tables.fdb_entries(), tables.vnis())) && reloaded.iter().all(|r| *r == wanted) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let status = HOSTS.into_iter().map(|host| self.overlay(host, &["status", "--node", host]).unwrap_or_else(|e| format!("{e:#}")));
                bail!(
                    "{}: the agents did not reach {} FDB entries, {} VNIs and {} extra ports attached in a reload since the change \
                     (held (FDB, VNIs) {held:?}, reloads {reloaded:?}); refusing the point:\n{}",
                    point.name(),
                    tables.fdb_entries(),
                    tables.vnis(),
                    tables.extra_vnis,
                    status.collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The configured FDB entries and the VNIs that `host`'s pinned maps
    /// hold, as an operator reads them (`overlay fdb`, `overlay stats`).
    fn tables_held(&self, host: &str) -> anyhow::Result<(u32, u32)> {
        let parse = |text: String| serde_json::from_str::<serde_json::Value>(&text).context("parsing overlay's JSON");
        let fdb = parse(self.overlay(host, &["fdb", "--node", host, "--json"])?)?;
        let configured = fdb["entries"].as_array().map_or(0, |entries| entries.iter().filter(|e| e["source"] == "configured").count());
        let stats = parse(self.overlay(host, &["stats", "--node", host, "--json"])?)?;
        let vnis = stats["vnis"].as_array().map_or(0, Vec::len);
        Ok((configured as u32, vnis as u32))
    }

    /// What `host`'s status file (`overlay status`'s source) says of its
    /// last reload and attachments.
    fn reloaded(&self, host: &str, written_at: u64) -> anyhow::Result<Reloaded> {
        let path = self.bed.lab.dir.join("run").join(format!("{host}.json"));
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let status: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let reload = &status["last_reload"];
        let attachments = status["attachments"].as_array().map_or(0, |a| {
            a.iter().filter(|name| name.as_str().is_some_and(|name| name.starts_with("tc-port-cv"))).count()
        });
        Ok(Reloaded {
            since_written: reload["at"].as_u64().is_some_and(|at| at >= written_at),
            ok: reload["ok"].as_bool() == Some(true),
            extra_ports_attached: attachments as u32,
        })
    }

    fn overlay(&self, host: &str, args: &[&str]) -> anyhow::Result<String> {
        let output = self.bed.lab.overlay_command(host, &self.overlay_bin, args)?.output().context("running overlay")?;
        if !output.status.success() {
            bail!("overlay {} on {host}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Measures `point` (already configured): the spread load, warm-up,
    /// one window; then, under the same load, the programs' run time from
    /// the kernel's BPF statistics in a window of its own (half as long;
    /// statistics cost two clock reads per run, so they are off while the
    /// rate is measured). Refuses the point if its VNIs or flows did not
    /// all carry traffic.
    pub fn measure(&self, point: Point, timing: Timing) -> anyhow::Result<CurveSample> {
        let (sender, receiver) = (self.bed.sender_netns(), self.bed.receiver_netns());
        let destinations: Vec<Ipv4Addr> =
            std::iter::once(RECEIVER_IP).chain((1..=point.tables().extra_vnis).map(|k| port_address(1, k))).collect();
        let tuples = spread_udp::tuples(&destinations, point.flows());
        let load = SpreadLoad::start(sender, receiver, &tuples, udp_rate::sender_threads())?;
        let snapshot = |load: &SpreadLoad| -> anyhow::Result<Snapshot> {
            let receiver = Snmp::read(receiver)?;
            let cpu = CpuTimes::now()?;
            let (sent, app_received) = load.counts();
            Ok(Snapshot { at: Instant::now(), cpu, receiver, sent, app_received })
        };
        std::thread::sleep(timing.warmup);
        let (start, interfaces_start) = (snapshot(&load)?, spread_udp::received_packets(receiver)?);
        std::thread::sleep(timing.window);
        let (end, interfaces_end) = (snapshot(&load)?, spread_udp::received_packets(receiver)?);
        let (encap_ns, decap_ns) = {
            let _stats = bpf::enable_run_time_stats()?;
            let before = bpf::path_stats(&self.bed)?;
            std::thread::sleep((timing.window / 2).max(Duration::from_secs(1)));
            let after = bpf::path_stats(&self.bed)?;
            let per_run = |after: RunStats, before: RunStats, what: &str| {
                after.ns_per_run_since(&before).with_context(|| format!("the {what} program did not run"))
            };
            (per_run(after.encap, before.encap, "encap")?, per_run(after.decap, before.decap, "decap")?)
        };
        let source_ports = load.stop()?;
        let window = Window::between(&start, &end);
        if window.delivered == 0 {
            bail!("nothing delivered: {} datagrams sent in {:.1} s, {} UDP checksum errors", window.sent, window.seconds, window.checksum_errors);
        }
        let receiving = interfaces_end.iter().filter(|(name, packets)| **packets > interfaces_start.get(*name).copied().unwrap_or(0)).count();
        if receiving < destinations.len() {
            bail!("traffic reached {receiving} of the receiver's interfaces, expected all {} destinations' (one per VNI)", destinations.len());
        }
        if source_ports != point.flows() as usize {
            bail!("the receiver saw {source_ports} distinct source ports, expected {}", point.flows());
        }
        Ok(CurveSample {
            point,
            delivered_kpps: window.kpps(window.delivered),
            sent_kpps: window.kpps(window.sent),
            cpu_ns_per_packet: window.busy_cpu_ns / window.delivered as f64,
            encap_ns,
            decap_ns,
        })
    }
}

/// A host's last reload, as its status file tells it.
#[derive(Debug, PartialEq, Eq)]
struct Reloaded {
    since_written: bool,
    ok: bool,
    extra_ports_attached: u32,
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_ports_and_endpoints_have_distinct_addresses() {
        assert_eq!((port_address(0, 1), port_address(1, 1)), (Ipv4Addr::new(172, 16, 0, 5), Ipv4Addr::new(172, 16, 0, 6)));
        assert_eq!(port_address(1, 4_095), Ipv4Addr::new(172, 16, 63, 254));
        assert_eq!((port_mac(0, 4_095), port_mac(1, 1)), ("02:c1:00:00:0f:ff".to_owned(), "02:c2:00:00:00:01".to_owned()));
        assert_eq!(remote_endpoint(0, 99_999), ("02:b1:00:01:86:9f".to_owned(), Ipv4Addr::new(10, 129, 134, 159)));
        assert_eq!(remote_endpoint(1, 1).1, Ipv4Addr::new(10, 160, 0, 1));
    }
}
