//! Traffic checks between a lab's containers: ping, and a TCP transfer
//! whose every byte is checked against a position-dependent pattern.
use std::{
    io::Read as _,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::Context;

use crate::{lab::scaled, netns::Netns};

/// Pings `target` from inside `from`; returns (transmitted, received).
pub fn ping(from: &Netns, target: Ipv4Addr, count: u32) -> anyhow::Result<(u32, u32)> {
    let output = from
        .command("ping")
        .args([
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            "-W",
            "2",
            &target.to_string(),
        ])
        .output()
        .context("running ping")?;
    let text = String::from_utf8_lossy(&output.stdout);
    parse_ping_summary(&text).with_context(|| format!("no summary in ping output:\n{text}"))
}

fn parse_ping_summary(text: &str) -> Option<(u32, u32)> {
    let line = text.lines().find(|l| l.contains("packets transmitted"))?;
    let mut numbers = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty());
    Some((numbers.next()?.parse().ok()?, numbers.next()?.parse().ok()?))
}

/// The byte at `offset` of a transfer: position-dependent, so a dropped,
/// duplicated or reordered segment shows up as a mismatch.
pub fn pattern_byte(offset: u64) -> u8 {
    (offset.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8 ^ (offset as u8)
}

/// What a TCP transfer delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferReport {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// First offset whose byte differs from the pattern, if any.
    pub first_mismatch: Option<u64>,
    pub elapsed: Duration,
}

/// Sends `bytes` of [`pattern_byte`] over TCP from a socket inside `sender`
/// to a listener inside `receiver` on `receiver_ip`, and checks every byte
/// that arrives.
pub fn tcp_transfer(
    sender: &Netns,
    receiver: &Netns,
    receiver_ip: Ipv4Addr,
    bytes: u64,
) -> anyhow::Result<TransferReport> {
    use std::{
        io::Write as _,
        net::{Shutdown, TcpListener, TcpStream},
    };
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let server = receiver.spawn_inside(move || {
        let listener =
            TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).context("binding the receiver")?;
        port_tx.send(listener.local_addr()?.port())?;
        listener.set_nonblocking(true)?;
        let deadline = Instant::now() + scaled(Duration::from_secs(15));
        let mut stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => return Err(e).context("accepting the sender's connection"),
            }
        };
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(scaled(Duration::from_secs(10))))?;
        let mut received = 0u64;
        let mut first_mismatch = None;
        let mut buffer = vec![0u8; 256 * 1024];
        loop {
            let n = stream.read(&mut buffer).context("receiving")?;
            if n == 0 {
                break;
            }
            if first_mismatch.is_none() {
                first_mismatch = buffer[..n]
                    .iter()
                    .enumerate()
                    .find(|(i, b)| **b != pattern_byte(received + *i as u64))
                    .map(|(i, _)| received + i as u64);
            }
            received += n as u64;
        }
        Ok((received, first_mismatch))
    })?;
    let port = port_rx
        .recv_timeout(scaled(Duration::from_secs(10)))
        .context("receiver did not start")?;
    let started = Instant::now();
    let client = sender.spawn_inside(move || {
        let address = std::net::SocketAddr::from((receiver_ip, port));
        let mut stream = TcpStream::connect_timeout(&address, scaled(Duration::from_secs(10)))
            .with_context(|| format!("connecting to {address}"))?;
        stream.set_write_timeout(Some(scaled(Duration::from_secs(10))))?;
        let mut chunk = vec![0u8; 64 * 1024];
        let mut sent = 0u64;
        while sent < bytes {
            let n = chunk.len().min((bytes - sent) as usize);
            for (i, byte) in chunk[..n].iter_mut().enumerate() {
                *byte = pattern_byte(sent + i as u64);
            }
            stream.write_all(&chunk[..n]).context("sending")?;
            sent += n as u64;
        }
        stream.shutdown(Shutdown::Write)?;
        Ok(sent)
    })?;
    let sent = client
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))?;
    let received = server
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))?;
    let sent = sent.context("sender")?;
    let (bytes_received, first_mismatch) = received.context("receiver")?;
    Ok(TransferReport {
        bytes_sent: sent,
        bytes_received,
        first_mismatch,
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_summary_is_parsed() {
        let text = "--- 10.0.0.2 ping statistics ---\n5 packets transmitted, 4 received, 20% packet loss, time 804ms\n";
        assert_eq!(parse_ping_summary(text), Some((5, 4)));
    }
}
