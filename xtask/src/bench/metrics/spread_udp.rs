//! A 64-byte UDP load spread over many 5-tuples, for the delivered-rate
//! side of the cost curves (`bench::curves`).
//!
//! `udp_rate`'s generator sends one flow per sender thread from a
//! connected UDP socket. This one sends a given list of (destination,
//! source port) pairs in turn, shared out over one sender thread per CPU,
//! each from a raw socket (AF_INET, SOCK_RAW, IPPROTO_UDP: the kernel
//! writes the IPv4 header and picks the source address by route; we write
//! the 8-byte UDP header, checksum 0, which RFC 768 allows over IPv4 as
//! "no checksum") with sendmmsg. One receiver thread drains one socket
//! bound to every address of the receiving container and records which
//! source ports it saw, so a point can prove its flows arrived.
use std::{
    net::{Ipv4Addr, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, bail};
use overlay_lab::netns::Netns;

use super::udp_rate::{PAYLOAD_BYTES, sending_goes_on, set_receive_buffer};

/// The receiver's port (every tuple's destination port).
pub const PORT: u16 = 5302;
/// Source ports are this, this + 1, ...: 50,000 flows fit below 65,536.
pub const FIRST_SOURCE_PORT: u16 = 10_000;
const UDP_HEADER_BYTES: usize = 8;
const DATAGRAM_BYTES: usize = UDP_HEADER_BYTES + PAYLOAD_BYTES;
const BATCH: usize = 64;

/// The (destination, source port) pairs of a load: `flows` source ports
/// and every destination, paired so that each destination and each source
/// port occurs (max(destinations, flows) distinct pairs).
pub fn tuples(destinations: &[Ipv4Addr], flows: u32) -> Vec<(Ipv4Addr, u16)> {
    let count = destinations.len().max(flows as usize);
    (0..count).map(|i| (destinations[i % destinations.len()], FIRST_SOURCE_PORT + (i % flows.max(1) as usize) as u16)).collect()
}

/// The indices of `count` tuples that sender `thread` of `threads` sends:
/// every `threads`-th one, so the tuples are spread over the CPUs; with
/// fewer tuples than threads, threads share them.
pub fn share(count: usize, threads: usize, thread: usize) -> Vec<usize> {
    if count <= thread {
        return vec![thread % count];
    }
    (thread..count).step_by(threads).collect()
}

/// A UDP datagram from `source_port` to [`PORT`]: header (length, no
/// checksum) and payload.
fn datagram(source_port: u16) -> [u8; DATAGRAM_BYTES] {
    let mut datagram = [0x5a; DATAGRAM_BYTES];
    datagram[0..2].copy_from_slice(&source_port.to_be_bytes());
    datagram[2..4].copy_from_slice(&PORT.to_be_bytes());
    datagram[4..6].copy_from_slice(&(DATAGRAM_BYTES as u16).to_be_bytes());
    datagram[6..8].copy_from_slice(&[0, 0]);
    datagram
}

/// A running spread generator and its receiver.
pub struct SpreadLoad {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    receiver: Option<JoinHandle<anyhow::Result<Vec<bool>>>>,
    senders: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl SpreadLoad {
    /// Starts the receiver in `receiver`, then `threads` senders in `sender`
    /// sharing `tuples` out between them.
    pub fn start(sender: &Netns, receiver: &Netns, tuples: &[(Ipv4Addr, u16)], threads: usize) -> anyhow::Result<SpreadLoad> {
        if tuples.is_empty() || threads == 0 {
            bail!("a spread load needs at least one tuple and one thread");
        }
        let mut load = SpreadLoad {
            stop: Arc::new(AtomicBool::new(false)),
            sent: Arc::new(AtomicU64::new(0)),
            received: Arc::new(AtomicU64::new(0)),
            receiver: None,
            senders: Vec::new(),
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, received) = (load.stop.clone(), load.received.clone());
        load.receiver = Some(receiver.spawn_inside(move || receive(stop, received, ready_tx))?);
        if ready_rx.recv_timeout(Duration::from_secs(5)).is_err() {
            let error = load.stop();
            bail!("the UDP receiver did not start: {:?}", error.err());
        }
        for thread in 0..threads {
            let mine: Vec<(Ipv4Addr, u16)> = share(tuples.len(), threads, thread).into_iter().map(|i| tuples[i]).collect();
            let (stop, sent) = (load.stop.clone(), load.sent.clone());
            load.senders.push(sender.spawn_inside(move || send(stop, sent, &mine))?);
        }
        Ok(load)
    }

    /// Datagrams sent and read by the receiver so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.sent.load(Ordering::Relaxed), self.received.load(Ordering::Relaxed))
    }

    /// Stops every thread; returns how many distinct source ports the
    /// receiver saw, or the first error a thread had.
    pub fn stop(mut self) -> anyhow::Result<usize> {
        self.stop.store(true, Ordering::Relaxed);
        let mut first_error = None;
        for thread in self.senders.drain(..) {
            if let Err(error) = thread.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a UDP sender thread panicked"))) {
                first_error.get_or_insert(error);
            }
        }
        let seen = match self.receiver.take().map(|t| t.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the UDP receiver panicked")))) {
            Some(Ok(seen)) => seen.iter().filter(|s| **s).count(),
            Some(Err(error)) => {
                first_error.get_or_insert(error);
                0
            }
            None => 0,
        };
        first_error.map_or(Ok(seen), Err)
    }
}

impl Drop for SpreadLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.senders.drain(..) {
            let _ = thread.join();
        }
        if let Some(thread) = self.receiver.take() {
            let _ = thread.join();
        }
    }
}

fn receive(stop: Arc<AtomicBool>, received: Arc<AtomicU64>, ready: std::sync::mpsc::Sender<()>) -> anyhow::Result<Vec<bool>> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, PORT)).context("binding the UDP receiver")?;
    set_receive_buffer(&socket)?;
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    let _ = ready.send(());
    let mut seen = vec![false; 1 << 16];
    let mut buffers = vec![[0u8; 2048]; BATCH];
    // SAFETY: an all-zero sockaddr_in is valid.
    let mut names: Vec<libc::sockaddr_in> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    let mut iovecs: Vec<libc::iovec> =
        buffers.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() }).collect();
    // SAFETY: all-zero mmsghdr is valid; each then points at its own iovec and name.
    let mut messages: Vec<libc::mmsghdr> = iovecs
        .iter_mut()
        .zip(names.iter_mut())
        .map(|(iovec, name)| {
            let mut message: libc::mmsghdr = unsafe { std::mem::zeroed() };
            message.msg_hdr.msg_iov = iovec;
            message.msg_hdr.msg_iovlen = 1;
            message.msg_hdr.msg_name = (name as *mut libc::sockaddr_in).cast();
            message
        })
        .collect();
    while !stop.load(Ordering::Relaxed) {
        for message in &mut messages {
            message.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
        }
        // SAFETY: `messages` and the buffers and names they point to outlive the call.
        let n = unsafe {
            libc::recvmmsg(socket.as_raw_fd(), messages.as_mut_ptr(), BATCH as u32, libc::MSG_WAITFORONE, std::ptr::null_mut())
        };
        if n > 0 {
            received.fetch_add(n as u64, Ordering::Relaxed);
            for message in &messages[..n as usize] {
                // SAFETY: msg_name points at its sockaddr_in, which recvmmsg filled.
                let port = unsafe { (*message.msg_hdr.msg_name.cast::<libc::sockaddr_in>()).sin_port };
                seen[usize::from(u16::from_be(port))] = true;
            }
            continue;
        }
        let error = std::io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::EAGAIN | libc::EINTR) => continue,
            _ => return Err(error).context("receiving UDP"),
        }
    }
    Ok(seen)
}

fn send(stop: Arc<AtomicBool>, sent: Arc<AtomicU64>, tuples: &[(Ipv4Addr, u16)]) -> anyhow::Result<()> {
    // SAFETY: plain syscall; the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_UDP) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("opening a raw UDP socket");
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut addresses: Vec<libc::sockaddr_in> = tuples
        .iter()
        .map(|(destination, _)| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            // Ignored for raw sockets (the protocol is the socket's).
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(destination.octets()) },
            sin_zero: [0; 8],
        })
        .collect();
    let mut datagrams: Vec<[u8; DATAGRAM_BYTES]> = tuples.iter().map(|(_, port)| datagram(*port)).collect();
    // SAFETY: all-zero iovec and mmsghdr are valid; they are pointed at the tuples below.
    let mut iovecs: Vec<libc::iovec> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    let mut messages: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    let mut next = 0;
    while !stop.load(Ordering::Relaxed) {
        for (j, (message, iovec)) in messages.iter_mut().zip(iovecs.iter_mut()).enumerate() {
            let index = (next + j) % tuples.len();
            *iovec = libc::iovec { iov_base: datagrams[index].as_mut_ptr().cast(), iov_len: DATAGRAM_BYTES };
            message.msg_hdr.msg_iov = iovec;
            message.msg_hdr.msg_iovlen = 1;
            message.msg_hdr.msg_name = (&mut addresses[index] as *mut libc::sockaddr_in).cast();
            message.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
        }
        // SAFETY: `messages` and the iovecs, datagrams and addresses they point to outlive the call.
        let n = unsafe { libc::sendmmsg(socket.as_raw_fd(), messages.as_mut_ptr(), BATCH as u32, 0) };
        if n > 0 {
            sent.fetch_add(n as u64, Ordering::Relaxed);
            next = (next + n as usize) % tuples.len();
            continue;
        }
        let error = std::io::Error::last_os_error();
        if !sending_goes_on(&error) {
            return Err(error).context("sending UDP on a raw socket");
        }
        std::thread::yield_now();
    }
    Ok(())
}

/// Received packets of every interface of `netns` but loopback, by name
/// (/proc/net/dev read from a thread inside it).
pub fn received_packets(netns: &Netns) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
    let text = netns
        .run_inside(|| std::fs::read_to_string("/proc/thread-self/net/dev").context("reading /proc/thread-self/net/dev"))
        .with_context(|| format!("reading the interface counters of {}", netns.name()))?;
    Ok(parse_net_dev(&text))
}

/// `name: rx_bytes rx_packets ...` lines after two header lines.
fn parse_net_dev(text: &str) -> std::collections::BTreeMap<String, u64> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, values) = line.split_once(':')?;
            let packets = values.split_whitespace().nth(1)?.parse().ok()?;
            Some((name.trim().to_owned(), packets))
        })
        .filter(|(name, _)| name != "lo")
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuples_pair_every_destination_and_every_source_port() {
        let a = Ipv4Addr::new(10, 0, 0, 1);
        let b = Ipv4Addr::new(10, 0, 0, 2);
        assert_eq!(tuples(&[a], 1), vec![(a, FIRST_SOURCE_PORT)]);
        assert_eq!(tuples(&[a], 3), vec![(a, 10_000), (a, 10_001), (a, 10_002)]);
        assert_eq!(tuples(&[a, b], 1), vec![(a, 10_000), (b, 10_000)]);
        let many = tuples(&[a], 50_000);
        assert_eq!((many.len(), many.last().copied()), (50_000, Some((a, 59_999))));
    }

    #[test]
    fn tuples_are_shared_over_the_threads_without_gaps() {
        assert_eq!((share(1, 2, 0), share(1, 2, 1)), (vec![0], vec![0]), "one flow: both CPUs send it");
        assert_eq!((share(5, 2, 0), share(5, 2, 1)), (vec![0, 2, 4], vec![1, 3]));
        let mut all: Vec<usize> = (0..3).flat_map(|t| share(1_000, 3, t)).collect();
        all.sort_unstable();
        assert_eq!(all, (0..1_000).collect::<Vec<_>>());
    }

    #[test]
    fn the_udp_header_has_ports_length_and_no_checksum() {
        let header = &datagram(10_001)[..8];
        assert_eq!(header, &[0x27, 0x11, 0x14, 0xb6, 0, 72, 0, 0]);
    }

    #[test]
    fn net_dev_counts_received_packets_by_interface() {
        let text = "Inter-|   Receive                            |  Transmit\n \
                    face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets\n    \
                    lo:       0       0    0    0    0     0          0         0        0       0\n  \
                    ci7:    6400     100    0    0    0     0          0         0        0       0\n";
        assert_eq!(parse_net_dev(text).into_iter().collect::<Vec<_>>(), vec![("ci7".to_owned(), 100)]);
    }
}
