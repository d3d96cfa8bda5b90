//! Request/response latency: a ping-pong of 64-byte messages with one
//! message in flight, as `sockperf ping-pong` does, written here so that it
//! needs no extra tool and records the full round-trip time of every
//! transaction (sockperf reports half of it). The echo server runs in the
//! receiving container, the client in the sending one; transactions in the
//! warm-up are not counted.
//!
//! While it runs the CPUs are kept out of idle states deeper than polling
//! (a PM QoS request of 0 µs on /dev/cpu_dma_latency, as latency-benchmark
//! guides advise): with one message in flight a CPU would otherwise halt
//! between messages, and waking a halted vCPU of this VM costs about 80 µs,
//! which on an idle machine became every path's median (docs/performance.md).
//! Every cell is measured so, references included.
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use super::{FigureId, Outcome, Timing};
use crate::bench::topology::{RECEIVER_IP, TestBed};

const UDP_PORT: u16 = 5401;
const TCP_PORT: u16 = 5402;
const MESSAGE_BYTES: usize = 64;
/// A request without an answer within this long counts as lost.
const REPLY_TIMEOUT: Duration = Duration::from_millis(200);
/// This many lost requests in a row: the path does not work.
const LOSSES_IN_A_ROW: u32 = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// Round-trip times of one run.
struct RoundTrips {
    nanos: Vec<u64>,
    lost: u64,
    seconds: f64,
}

/// Holds a PM QoS CPU latency request of 0 µs while alive: the kernel
/// keeps every CPU in polling idle until the file is closed (also when the
/// process dies). `None` where the file cannot be opened.
struct NoDeepIdle(#[allow(dead_code)] std::fs::File);

impl NoDeepIdle {
    fn request() -> Option<NoDeepIdle> {
        let mut file = std::fs::OpenOptions::new().write(true).open("/dev/cpu_dma_latency").ok()?;
        file.write_all(&0i32.to_ne_bytes()).ok()?;
        Some(NoDeepIdle(file))
    }
}

pub fn request_response(bed: &TestBed, transport: Transport, timing: Timing) -> anyhow::Result<Outcome> {
    let no_deep_idle = NoDeepIdle::request();
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server_stop = stop.clone();
    let server = bed.receiver_netns().spawn_inside(move || match transport {
        Transport::Udp => udp_echo(server_stop, ready_tx),
        Transport::Tcp => tcp_echo(server_stop, ready_tx),
    })?;
    let client = if ready_rx.recv_timeout(Duration::from_secs(5)).is_ok() {
        bed.sender_netns().run_inside(move || match transport {
            Transport::Udp => udp_client(timing),
            Transport::Tcp => tcp_client(timing),
        })
    } else {
        Err(anyhow::anyhow!("the echo server did not start"))
    };
    stop.store(true, Ordering::Relaxed);
    let server = server.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the echo server panicked")));
    let mut trips = client?;
    server.context("echo server")?;
    if trips.nanos.is_empty() {
        bail!("no transaction completed in the window ({} lost)", trips.lost);
    }
    trips.nanos.sort_unstable();
    let p50 = percentile(&trips.nanos, 50.0) as f64 / 1e3;
    let p99 = percentile(&trips.nanos, 99.0) as f64 / 1e3;
    let (p50_figure, p99_figure) = match transport {
        Transport::Udp => (FigureId::RrUdpP50Us, FigureId::RrUdpP99Us),
        Transport::Tcp => (FigureId::RrTcpP50Us, FigureId::RrTcpP99Us),
    };
    Ok(Outcome {
        figures: vec![(p50_figure, p50), (p99_figure, p99)],
        summary: format!(
            "RTT p50 {p50:.1} µs, p99 {p99:.1} µs ({:.0} transactions/s, {} lost{})",
            trips.nanos.len() as f64 / trips.seconds,
            trips.lost,
            if no_deep_idle.is_some() { "" } else { "; CPUs free to halt: /dev/cpu_dma_latency unavailable" }
        ),
    })
}

/// The nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn is_timeout(error: &std::io::Error) -> bool {
    matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
}

fn udp_echo(stop: Arc<AtomicBool>, ready: std::sync::mpsc::Sender<()>) -> anyhow::Result<()> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, UDP_PORT)).context("binding the UDP echo server")?;
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    let _ = ready.send(());
    let mut buffer = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        match socket.recv_from(&mut buffer) {
            Ok((n, from)) => {
                socket.send_to(&buffer[..n], from).context("UDP echo")?;
            }
            Err(error) if is_timeout(&error) => {}
            Err(error) => return Err(error).context("UDP echo server"),
        }
    }
    Ok(())
}

fn udp_client(timing: Timing) -> anyhow::Result<RoundTrips> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).context("binding the UDP client")?;
    socket.connect((RECEIVER_IP, UDP_PORT)).context("connecting the UDP client")?;
    socket.set_read_timeout(Some(REPLY_TIMEOUT))?;
    let started = Instant::now();
    let (counted_from, end) = (started + timing.warmup, started + timing.warmup + timing.window);
    let mut trips = RoundTrips { nanos: Vec::with_capacity(1 << 20), lost: 0, seconds: timing.window.as_secs_f64() };
    let mut request = [0u8; MESSAGE_BYTES];
    let mut reply = [0u8; 2048];
    let mut lost_in_a_row = 0;
    for sequence in 0u64.. {
        let sent_at = Instant::now();
        if sent_at >= end {
            break;
        }
        request[..8].copy_from_slice(&sequence.to_be_bytes());
        socket.send(&request).context("sending a UDP request")?;
        loop {
            match socket.recv(&mut reply) {
                // A late reply to an earlier (lost) request: keep waiting for ours.
                Ok(n) if n < 8 || reply[..8] != request[..8] => continue,
                Ok(_) => {
                    if sent_at >= counted_from {
                        trips.nanos.push(sent_at.elapsed().as_nanos() as u64);
                    }
                    lost_in_a_row = 0;
                    break;
                }
                Err(error) if is_timeout(&error) || error.kind() == std::io::ErrorKind::ConnectionRefused => {
                    trips.lost += 1;
                    lost_in_a_row += 1;
                    if lost_in_a_row >= LOSSES_IN_A_ROW {
                        bail!("{LOSSES_IN_A_ROW} requests in a row got no reply within {REPLY_TIMEOUT:?}");
                    }
                    break;
                }
                Err(error) => return Err(error).context("receiving a UDP reply"),
            }
        }
    }
    Ok(trips)
}

fn tcp_echo(stop: Arc<AtomicBool>, ready: std::sync::mpsc::Sender<()>) -> anyhow::Result<()> {
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, TCP_PORT)).context("binding the TCP echo server")?;
    listener.set_nonblocking(true)?;
    let _ = ready.send(());
    let mut stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(error) if is_timeout(&error) => {
                if stop.load(Ordering::Relaxed) {
                    return Ok(()); // the client never connected; it reports why
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(error) => return Err(error).context("accepting the TCP client"),
        }
    };
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    // The timeout lets the thread see `stop` if the connection goes silent.
    stream.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut message = [0u8; MESSAGE_BYTES];
    let mut filled = 0;
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut message[filled..]) {
            Ok(0) => break, // the client closed
            Ok(n) => {
                filled += n;
                if filled == MESSAGE_BYTES {
                    stream.write_all(&message).context("TCP echo")?;
                    filled = 0;
                }
            }
            Err(error) if is_timeout(&error) => {}
            Err(error) => return Err(error).context("TCP echo server"),
        }
    }
    Ok(())
}

fn tcp_client(timing: Timing) -> anyhow::Result<RoundTrips> {
    let address = SocketAddr::from((RECEIVER_IP, TCP_PORT));
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2)).with_context(|| format!("connecting to {address}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    let started = Instant::now();
    let (counted_from, end) = (started + timing.warmup, started + timing.warmup + timing.window);
    let mut trips = RoundTrips { nanos: Vec::with_capacity(1 << 20), lost: 0, seconds: timing.window.as_secs_f64() };
    let request = [0x5au8; MESSAGE_BYTES];
    let mut reply = [0u8; MESSAGE_BYTES];
    loop {
        let sent_at = Instant::now();
        if sent_at >= end {
            break;
        }
        stream.write_all(&request).context("sending a TCP request")?;
        stream.read_exact(&mut reply).context("no complete TCP reply within 1 s")?;
        if sent_at >= counted_from {
            trips.nanos.push(sent_at.elapsed().as_nanos() as u64);
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
    Ok(trips)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!((percentile(&values, 50.0), percentile(&values, 99.0), percentile(&values, 100.0)), (50, 99, 100));
        assert_eq!(percentile(&[7], 99.0), 7);
    }
}
