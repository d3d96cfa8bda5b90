//! What the churn tests share (tests/tests/churn.rs and cluster_churn.rs):
//! the fixed flow between two containers that must stay whole while
//! everything around it changes (a stream of pings, every one counted, and
//! TCP transfers of a pattern, every byte checked, one after another until
//! stopped), and an agent's use of memory and open files, which must not
//! grow with the number of changes.
use std::{
    fmt,
    net::Ipv4Addr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::{netns::Netns, traffic::pattern_byte};

/// Pings per `ping` run, and the gap between them (5 ms: 200 a second).
const PINGS_PER_RUN: u32 = 400;
const PING_INTERVAL: &str = "0.005";
/// Bytes per TCP transfer.
const TRANSFER_BYTES: u64 = 4 << 20;

/// What the fixed flow carried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCounts {
    pub pings_sent: u64,
    pub pings_received: u64,
    pub transfers: u64,
    pub bytes: u64,
    /// TCP segments the sender's namespace retransmitted.
    pub retransmitted: u64,
}

#[derive(Debug, Default)]
struct Counts {
    pings_sent: u64,
    pings_received: u64,
    transfers: u64,
    bytes: u64,
    /// What went wrong, for the next check to report.
    failures: Vec<String>,
}

/// Pings and TCP transfers from one container to another, on threads,
/// until stopped (or dropped).
pub struct FixedFlow {
    from: String,
    stop: Arc<AtomicBool>,
    counts: Arc<Mutex<Counts>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    retransmitted_before: u64,
}

/// The TCP segments namespace `netns` has retransmitted (`/proc/net/snmp`).
fn retransmitted(netns: &str) -> u64 {
    let output = std::process::Command::new("ip").args(["netns", "exec", netns, "cat", "/proc/net/snmp"]).output().expect("reading /proc/net/snmp");
    let text = String::from_utf8_lossy(&output.stdout);
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap_or_default(), tcp.next().unwrap_or_default());
    names.split_whitespace().zip(values.split_whitespace()).find(|(n, _)| *n == "RetransSegs").and_then(|(_, v)| v.parse().ok()).unwrap_or(0)
}

impl FixedFlow {
    /// Starts pinging `to_ip` (an address of namespace `to`) from `from`,
    /// and sending TCP transfers to a listener there.
    pub fn start(from: &Netns, to: &Netns, to_ip: Ipv4Addr) -> FixedFlow {
        let (c1, c2) = (from.name().to_owned(), to.name().to_owned());
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Mutex::new(Counts::default()));
        let retransmitted_before = retransmitted(&c1);
        let pinger = {
            let (stop, counts, c1) = (stop.clone(), counts.clone(), c1.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let output = std::process::Command::new("ip")
                        .args(["netns", "exec", &c1, "ping", "-q", "-i", PING_INTERVAL, "-c", &PINGS_PER_RUN.to_string(), "-W", "2", &to_ip.to_string()])
                        .output()
                        .expect("running ping");
                    let text = String::from_utf8_lossy(&output.stdout).into_owned();
                    let mut counts = counts.lock().unwrap();
                    match summary(&text) {
                        Some((sent, received)) => {
                            counts.pings_sent += sent;
                            counts.pings_received += received;
                            if received != sent {
                                counts.failures.push(format!("ping: {received} of {sent} answered:\n{text}"));
                            }
                        }
                        None => counts.failures.push(format!("ping printed no summary:\n{text}{}", String::from_utf8_lossy(&output.stderr))),
                    }
                }
            })
        };
        let transfers = {
            let (stop, counts, c1) = (stop.clone(), counts.clone(), c1.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let report = transfer(&c1, &c2, to_ip, TRANSFER_BYTES);
                    let mut counts = counts.lock().unwrap();
                    match report {
                        Ok(bytes) => {
                            counts.transfers += 1;
                            counts.bytes += bytes;
                        }
                        Err(error) => counts.failures.push(format!("TCP transfer: {error:#}")),
                    }
                }
            })
        };
        FixedFlow { from: c1, stop, counts, threads: Mutex::new(vec![pinger, transfers]), retransmitted_before }
    }

    /// Panics with what went wrong, if anything has, and `diagnostics()`
    /// (the agents' logs, say).
    pub fn check(&self, when: &str, diagnostics: impl FnOnce() -> String) {
        let counts = self.counts.lock().unwrap();
        if !counts.failures.is_empty() {
            panic!("the fixed flow lost traffic {when} ({counts:?}):\n{}\n{}", counts.failures.join("\n"), diagnostics());
        }
    }

    /// What the flow carried so far.
    pub fn counts_so_far(&self) -> FlowCounts {
        let counts = self.counts.lock().unwrap();
        FlowCounts {
            pings_sent: counts.pings_sent,
            pings_received: counts.pings_received,
            transfers: counts.transfers,
            bytes: counts.bytes,
            retransmitted: retransmitted(&self.from) - self.retransmitted_before,
        }
    }

    /// Stops after the current ping run and transfer, checks them, and
    /// returns what the flow carried in all.
    pub fn stop(&self, diagnostics: impl FnOnce() -> String) -> FlowCounts {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.lock().unwrap().drain(..) {
            thread.join().expect("a traffic thread panicked");
        }
        self.check("at the end", diagnostics);
        let counts = self.counts_so_far();
        assert!(counts.pings_sent > 0 && counts.transfers > 0, "the fixed flow should have run: {counts:?}");
        counts
    }
}

impl Drop for FixedFlow {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Sends `bytes` of [`pattern_byte`] from namespace `from` to a listener
/// on `to_ip` in `to`; checks every byte and returns how many arrived.
fn transfer(from: &str, to: &str, to_ip: Ipv4Addr, bytes: u64) -> anyhow::Result<u64> {
    use std::{
        io::{Read as _, Write as _},
        net::{Shutdown, TcpListener, TcpStream},
    };
    let open = |name: &str| std::fs::File::open(format!("/var/run/netns/{name}"));
    let (from, to) = (open(from)?, open(to)?);
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let receiver = std::thread::spawn(move || -> anyhow::Result<u64> {
        crate::netns::enter(&to)?;
        let listener = TcpListener::bind((to_ip, 0))?;
        port_tx.send(listener.local_addr()?.port())?;
        let (mut stream, _) = listener.accept()?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let (mut received, mut buffer) = (0u64, vec![0u8; 256 * 1024]);
        loop {
            let n = stream.read(&mut buffer)?;
            if n == 0 {
                return Ok(received);
            }
            if let Some(i) = (0..n).find(|&i| buffer[i] != pattern_byte(received + i as u64)) {
                anyhow::bail!("byte {} differs from the pattern", received + i as u64);
            }
            received += n as u64;
        }
    });
    let port = port_rx.recv_timeout(Duration::from_secs(10))?;
    let sender = std::thread::spawn(move || -> anyhow::Result<()> {
        crate::netns::enter(&from)?;
        let mut stream = TcpStream::connect_timeout(&(to_ip, port).into(), Duration::from_secs(10))?;
        stream.set_write_timeout(Some(Duration::from_secs(30)))?;
        let mut chunk = vec![0u8; 64 * 1024];
        let mut sent = 0u64;
        while sent < bytes {
            let n = chunk.len().min((bytes - sent) as usize);
            for (i, byte) in chunk[..n].iter_mut().enumerate() {
                *byte = pattern_byte(sent + i as u64);
            }
            stream.write_all(&chunk[..n])?;
            sent += n as u64;
        }
        Ok(stream.shutdown(Shutdown::Write)?)
    });
    sender.join().map_err(|_| anyhow::anyhow!("the sender panicked"))??;
    let received = receiver.join().map_err(|_| anyhow::anyhow!("the receiver panicked"))??;
    anyhow::ensure!(received == bytes, "{received} of {bytes} bytes arrived");
    Ok(received)
}

/// (transmitted, received) from ping's summary line.
fn summary(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.contains("packets transmitted"))?;
    let mut numbers = line.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty());
    Some((numbers.next()?.parse().ok()?, numbers.next()?.parse().ok()?))
}

/// A process's resident memory and open files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub rss_kib: u64,
    pub fds: usize,
}

impl Usage {
    pub fn of(pid: u32) -> Usage {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_else(|error| panic!("reading /proc/{pid}/status: {error}"));
        let rss_kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap();
        // The agent opens files for a moment after a change (its status
        // file, a reload, an etcd request): the fewest of a few looks is
        // what it holds.
        let fds = (0..10)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(20));
                std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
            })
            .min()
            .unwrap();
        Usage { rss_kib, fds }
    }
}

/// One agent's usage at the end of a round (after its drain).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageSample {
    pub agent: String,
    pub round: usize,
    /// Which process of that agent (0, then one more per restart).
    pub life: usize,
    pub usage: Usage,
}

impl fmt::Display for UsageSample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} r{}: {} KiB/{} fds (life {})", self.agent, self.round, self.usage.rss_kib, self.usage.fds, self.life)
    }
}

/// How much an agent's resident memory may grow from the end of its
/// first round to the end of its last (allocator arenas settle; a leak
/// of a few hundred bytes per change would pass 16 MiB within the soak).
pub const RSS_GROWTH_BOUND_KIB: u64 = 16 * 1024;

/// Within each agent process's life, open files after every drain equal
/// those after its first, and memory grows within the bound; `context`
/// (the run's figures) goes into the panic message.
pub fn check_usage(samples: &[UsageSample], context: &dyn fmt::Display) {
    let lives: std::collections::BTreeSet<(&str, usize)> = samples.iter().map(|s| (s.agent.as_str(), s.life)).collect();
    for (agent, life) in lives {
        let mut of_life = samples.iter().filter(|s| s.agent == agent && s.life == life);
        let Some(first) = of_life.next() else { continue };
        for sample in of_life {
            assert_eq!(
                sample.usage.fds, first.usage.fds,
                "{agent}'s open files after round {}'s drain should equal those after round {}'s: {context}",
                sample.round, first.round
            );
            assert!(
                sample.usage.rss_kib <= first.usage.rss_kib + RSS_GROWTH_BOUND_KIB,
                "{agent}'s memory grew from {} KiB (round {}) to {} KiB (round {}), more than {RSS_GROWTH_BOUND_KIB} KiB: {context}",
                first.usage.rss_kib,
                first.round,
                sample.usage.rss_kib,
                sample.round
            );
        }
    }
}
