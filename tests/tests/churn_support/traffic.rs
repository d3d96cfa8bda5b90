//! The fixed flow between h1's and h2's containers during the churn: a
//! stream of pings (every one counted) and TCP transfers of a pattern
//! (every byte checked), one after another until stopped.
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use overlay_lab::{
    lab::{Lab, pattern_byte},
    netns::Netns,
};

use super::{C2_IP, Figures};

/// Pings per `ping` run, and the gap between them (5 ms: 200 a second).
const PINGS_PER_RUN: u32 = 400;
const PING_INTERVAL: &str = "0.005";
/// Bytes per TCP transfer.
const TRANSFER_BYTES: u64 = 4 << 20;

#[derive(Debug, Default)]
struct Counts {
    pings_sent: u64,
    pings_received: u64,
    transfers: u64,
    bytes: u64,
    /// What went wrong, for the next check to report.
    failures: Vec<String>,
}

pub struct FixedFlow {
    stop: Arc<AtomicBool>,
    counts: Arc<Mutex<Counts>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    retransmitted_before: u64,
}

/// The TCP segments c1's namespace has retransmitted (`/proc/net/snmp`).
fn retransmitted(netns: &Netns) -> u64 {
    let output = netns.exec("cat", &["/proc/net/snmp"]).expect("reading /proc/net/snmp");
    let text = String::from_utf8_lossy(&output.stdout);
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap_or_default(), tcp.next().unwrap_or_default());
    names.split_whitespace().zip(values.split_whitespace()).find(|(n, _)| *n == "RetransSegs").and_then(|(_, v)| v.parse().ok()).unwrap_or(0)
}

impl FixedFlow {
    pub fn start(lab: &Lab) -> FixedFlow {
        let c1 = lab.container("h1", "c").netns.name().to_owned();
        let c2 = lab.container("h2", "c").netns.name().to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Mutex::new(Counts::default()));
        let retransmitted_before = retransmitted(&lab.container("h1", "c").netns);
        let pinger = {
            let (stop, counts, c1) = (stop.clone(), counts.clone(), c1.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let output = std::process::Command::new("ip")
                        .args(["netns", "exec", &c1, "ping", "-q", "-i", PING_INTERVAL, "-c", &PINGS_PER_RUN.to_string(), "-W", "2", &C2_IP.to_string()])
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
            let (stop, counts) = (stop.clone(), counts.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let report = transfer(&c1, &c2, TRANSFER_BYTES);
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
        FixedFlow { stop, counts, threads: Mutex::new(vec![pinger, transfers]), retransmitted_before }
    }

    /// Panics with what went wrong, if anything has.
    pub fn check(&self, lab: &Lab, when: &str) {
        let counts = self.counts.lock().unwrap();
        if !counts.failures.is_empty() {
            panic!("the fixed flow lost traffic {when} ({counts:?}):\n{}\n{}", counts.failures.join("\n"), lab.agent_logs());
        }
    }

    /// (pings sent, answered, TCP bytes, segments retransmitted) so far.
    pub fn counts_so_far(&self, lab: &Lab) -> (u64, u64, u64, u64) {
        let counts = self.counts.lock().unwrap();
        let retransmitted = retransmitted(&lab.container("h1", "c").netns) - self.retransmitted_before;
        (counts.pings_sent, counts.pings_received, counts.bytes, retransmitted)
    }

    /// Stops after the current ping run and transfer, checks them, and adds the counts to `figures`.
    pub fn stop(&self, lab: &Lab, figures: &mut Figures) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.lock().unwrap().drain(..) {
            thread.join().expect("a traffic thread panicked");
        }
        self.check(lab, "at the end");
        let counts = self.counts.lock().unwrap();
        assert!(counts.pings_sent > 0 && counts.transfers > 0, "the fixed flow should have run: {counts:?}");
        figures.pings_sent = counts.pings_sent;
        figures.pings_received = counts.pings_received;
        figures.tcp_transfers = counts.transfers;
        figures.tcp_bytes = counts.bytes;
        figures.tcp_retransmitted_segments = retransmitted(&lab.container("h1", "c").netns) - self.retransmitted_before;
    }
}

impl Drop for FixedFlow {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Sends `bytes` of [`pattern_byte`] from namespace `from` to a listener
/// in `to` on C2_IP; checks every byte and returns how many arrived.
fn transfer(from: &str, to: &str, bytes: u64) -> anyhow::Result<u64> {
    use std::{
        io::{Read as _, Write as _},
        net::{Shutdown, TcpListener, TcpStream},
        time::Duration,
    };
    let open = |name: &str| std::fs::File::open(format!("/var/run/netns/{name}"));
    let (from, to) = (open(from)?, open(to)?);
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let receiver = std::thread::spawn(move || -> anyhow::Result<u64> {
        overlay_lab::netns::enter(&to)?;
        let listener = TcpListener::bind((C2_IP, 0))?;
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
        overlay_lab::netns::enter(&from)?;
        let mut stream = TcpStream::connect_timeout(&(C2_IP, port).into(), Duration::from_secs(10))?;
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
