//! 64-byte UDP packet rate and CPU time per packet.
//!
//! The generator is ours: one sender thread per CPU in the sending
//! container, each with its own socket (its own flow) sending batches with
//! sendmmsg, so system-call overhead is not what limits the rate; on veth
//! the sender's system call also carries the packet through every hop it
//! can (softirq on the sending CPU), so the senders' CPU is the path's CPU.
//! One receiver thread drains a socket in the receiving container with
//! recvmmsg. What counts as delivered is what reached the receiving
//! container's UDP layer for our socket (`Udp.InDatagrams` + `RcvbufErrors`
//! of its namespace): the network path's work, whether or not our receiver
//! thread kept up. The generator's own rate is reported beside it, so a
//! generator limit is visible.
use std::{
    net::{Ipv4Addr, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use overlay_lab::netns::Netns;

use super::{FigureId, Outcome, Timing, cpu::CpuTimes, snmp::Snmp};
use crate::bench::topology::{RECEIVER_IP, TestBed};

const PORT: u16 = 5301;
/// UDP payload bytes (a 106-byte Ethernet frame inside the overlay).
pub const PAYLOAD_BYTES: usize = 64;
/// Datagrams per sendmmsg/recvmmsg call.
const BATCH: usize = 64;
/// The receiving socket's buffer: large, so short stalls of the receiver
/// thread do not turn into drops.
const RECEIVE_BUFFER: i32 = 32 << 20;

/// A running generator and receiver.
pub struct UdpLoad {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    threads: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl UdpLoad {
    /// Starts the receiver in `receiver`, then `senders` sender threads in `sender`.
    pub fn start(sender: &Netns, receiver: &Netns, senders: usize) -> anyhow::Result<UdpLoad> {
        let mut load = UdpLoad {
            stop: Arc::new(AtomicBool::new(false)),
            sent: Arc::new(AtomicU64::new(0)),
            received: Arc::new(AtomicU64::new(0)),
            threads: Vec::new(),
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, received) = (load.stop.clone(), load.received.clone());
        load.threads.push(receiver.spawn_inside(move || receive(stop, received, ready_tx))?);
        if ready_rx.recv_timeout(Duration::from_secs(5)).is_err() {
            let error = load.stop();
            bail!("the UDP receiver did not start: {:?}", error.err());
        }
        for _ in 0..senders {
            let (stop, sent) = (load.stop.clone(), load.sent.clone());
            load.threads.push(sender.spawn_inside(move || send(stop, sent))?);
        }
        Ok(load)
    }

    /// Datagrams sent and received by our threads so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.sent.load(Ordering::Relaxed), self.received.load(Ordering::Relaxed))
    }

    /// Stops every thread and reports the first error one of them had.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        let mut first_error = None;
        for thread in self.threads.drain(..) {
            let result = thread.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a UDP load thread panicked")));
            if let Err(error) = result {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for UdpLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn receive(stop: Arc<AtomicBool>, received: Arc<AtomicU64>, ready: std::sync::mpsc::Sender<()>) -> anyhow::Result<()> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, PORT)).context("binding the UDP receiver")?;
    set_receive_buffer(&socket)?;
    // The timeout lets the thread see `stop` when nothing arrives.
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    let _ = ready.send(());
    let mut buffers = vec![[0u8; 2048]; BATCH];
    let mut iovecs: Vec<libc::iovec> =
        buffers.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() }).collect();
    // SAFETY: all-zero mmsghdr is valid; each then points at its own iovec.
    let mut messages: Vec<libc::mmsghdr> = iovecs
        .iter_mut()
        .map(|iovec| {
            let mut message: libc::mmsghdr = unsafe { std::mem::zeroed() };
            message.msg_hdr.msg_iov = iovec;
            message.msg_hdr.msg_iovlen = 1;
            message
        })
        .collect();
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: `messages` and the buffers they point to outlive the call.
        let n = unsafe {
            libc::recvmmsg(socket.as_raw_fd(), messages.as_mut_ptr(), BATCH as u32, libc::MSG_WAITFORONE, std::ptr::null_mut())
        };
        if n > 0 {
            received.fetch_add(n as u64, Ordering::Relaxed);
            continue;
        }
        let error = std::io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::EAGAIN | libc::EINTR) => continue,
            _ => return Err(error).context("receiving UDP"),
        }
    }
    Ok(())
}

pub(super) fn set_receive_buffer(socket: &UdpSocket) -> anyhow::Result<()> {
    // SO_RCVBUFFORCE (we are root) goes past net.core.rmem_max.
    // SAFETY: plain setsockopt with a pointer to a live i32.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&RECEIVE_BUFFER as *const i32).cast(),
            std::mem::size_of::<i32>() as u32,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("setting SO_RCVBUFFORCE on the UDP receiver");
    }
    Ok(())
}

fn send(stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) -> anyhow::Result<()> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).context("binding a UDP sender")?;
    socket.connect((RECEIVER_IP, PORT)).context("connecting a UDP sender")?;
    let mut payload = [0x5au8; PAYLOAD_BYTES];
    let mut iovec = libc::iovec { iov_base: payload.as_mut_ptr().cast(), iov_len: payload.len() };
    // SAFETY: all-zero mmsghdr is valid; all point at the one payload (connected socket: no address).
    let mut messages: Vec<libc::mmsghdr> = (0..BATCH)
        .map(|_| {
            let mut message: libc::mmsghdr = unsafe { std::mem::zeroed() };
            message.msg_hdr.msg_iov = &mut iovec;
            message.msg_hdr.msg_iovlen = 1;
            message
        })
        .collect();
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: `messages`, `iovec` and `payload` outlive the call.
        let n = unsafe { libc::sendmmsg(socket.as_raw_fd(), messages.as_mut_ptr(), BATCH as u32, 0) };
        if n > 0 {
            sent.fetch_add(n as u64, Ordering::Relaxed);
            continue;
        }
        let error = std::io::Error::last_os_error();
        if !sending_goes_on(&error) {
            return Err(error).context("sending UDP");
        }
        std::thread::yield_now();
    }
    Ok(())
}

/// Whether a generator keeps sending after `error` from sendmmsg: queues
/// full, an interrupted call, or an ICMP error from an earlier datagram
/// reported on the socket.
pub fn sending_goes_on(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR | libc::ECONNREFUSED))
}

/// Everything read at one edge of a measurement window.
pub struct Snapshot {
    pub at: Instant,
    pub cpu: CpuTimes,
    pub receiver: Snmp,
    pub sent: u64,
    pub app_received: u64,
}

impl Snapshot {
    pub fn take(load: &UdpLoad, receiver: &Netns) -> anyhow::Result<Snapshot> {
        let receiver = Snmp::read(receiver)?;
        let cpu = CpuTimes::now()?;
        let (sent, app_received) = load.counts();
        Ok(Snapshot { at: Instant::now(), cpu, receiver, sent, app_received })
    }
}

/// What a window measured.
pub struct Window {
    pub seconds: f64,
    pub sent: u64,
    /// Reached the receiving socket (see the module docs).
    pub delivered: u64,
    pub app_received: u64,
    pub busy_cpu_ns: f64,
    pub checksum_errors: u64,
}

impl Window {
    pub fn between(start: &Snapshot, end: &Snapshot) -> Window {
        Window {
            seconds: end.at.duration_since(start.at).as_secs_f64(),
            sent: end.sent - start.sent,
            delivered: end.receiver.delta(&start.receiver, "Udp.InDatagrams")
                + end.receiver.delta(&start.receiver, "Udp.RcvbufErrors"),
            app_received: end.app_received - start.app_received,
            busy_cpu_ns: end.cpu.busy_ns_since(&start.cpu),
            checksum_errors: end.receiver.delta(&start.receiver, "Udp.InCsumErrors"),
        }
    }

    pub fn kpps(&self, packets: u64) -> f64 {
        packets as f64 / self.seconds / 1e3
    }
}

/// Sender threads: one per CPU.
pub fn sender_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Runs the load, warms up, then measures one window; `also` reads
/// something more at each edge of the window (such as BPF statistics).
pub fn measure_window<T>(bed: &TestBed, timing: Timing, mut also: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<(Window, T, T)> {
    let load = UdpLoad::start(bed.sender_netns(), bed.receiver_netns(), sender_threads())?;
    std::thread::sleep(timing.warmup);
    let start = Snapshot::take(&load, bed.receiver_netns())?;
    let also_start = also()?;
    std::thread::sleep(timing.window);
    let end = Snapshot::take(&load, bed.receiver_netns())?;
    let also_end = also()?;
    load.stop()?;
    let window = Window::between(&start, &end);
    if window.delivered == 0 {
        bail!(
            "nothing delivered: {} datagrams sent in {:.1} s, the receiver counted {} UDP checksum errors",
            window.sent,
            window.seconds,
            window.checksum_errors
        );
    }
    Ok((window, also_start, also_end))
}

pub fn rate_and_cpu(bed: &TestBed, timing: Timing) -> anyhow::Result<Outcome> {
    let (window, (), ()) = measure_window(bed, timing, || Ok(()))?;
    let delivered = window.kpps(window.delivered);
    let sent = window.kpps(window.sent);
    let cpu_ns = window.busy_cpu_ns / window.delivered as f64;
    Ok(Outcome {
        figures: vec![
            (FigureId::Udp64DeliveredKpps, delivered),
            (FigureId::Udp64SentKpps, sent),
            (FigureId::CpuNsPerPacket, cpu_ns),
        ],
        summary: format!(
            "{delivered:.0} kpps delivered (sent {sent:.0}, read by the receiver {:.0}), {cpu_ns:.0} ns CPU per packet",
            window.kpps(window.app_received)
        ),
    })
}
