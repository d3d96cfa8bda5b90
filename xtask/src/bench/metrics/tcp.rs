//! TCP throughput with iperf3: a one-off server in the receiving container,
//! the client in the sending one, the figure from the client's JSON report
//! (bytes the receiver got, over the window after the omitted warm-up).
use std::{fs::File, time::Duration};

use anyhow::{Context, bail};
use overlay_lab::netns::Netns;

use super::{FigureId, Outcome, Timing, snmp::Snmp};
use crate::bench::{
    cleanup::ChildGuard,
    topology::{RECEIVER_IP, TestBed},
};

const PORT: u16 = 5201;

pub fn throughput(bed: &TestBed, streams: u32, timing: Timing, figure: FigureId) -> anyhow::Result<Outcome> {
    let (sender, receiver) = (bed.sender_netns(), bed.receiver_netns());
    let counters_before = Snmp::read(receiver)?;
    let mut server = ChildGuard::spawn(
        receiver.command("iperf3").args(["--server", "--one-off", "--port", &PORT.to_string()]).stdout(File::create(bed.lab.dir.join("iperf3-server.log"))?).stderr(std::process::Stdio::null()),
        "iperf3 server",
    )?;
    wait_until_listening(receiver, PORT, &mut server)?;

    let report_path = bed.lab.dir.join("iperf3-client.json");
    let seconds = timing.window.as_secs().max(1);
    let omit = timing.warmup.as_secs();
    let mut client = ChildGuard::spawn(
        sender
            .command("iperf3")
            .args(["--client", &RECEIVER_IP.to_string(), "--port", &PORT.to_string(), "--json", "--connect-timeout", "2000"])
            .args(["--time", &seconds.to_string(), "--omit", &omit.to_string(), "--parallel", &streams.to_string()])
            .stdout(File::create(&report_path)?)
            .stderr(std::process::Stdio::null()),
        "iperf3 client",
    )?;
    let status = client.wait(Duration::from_secs(seconds + omit + 20))?;
    let text = std::fs::read_to_string(&report_path).with_context(|| format!("reading {}", report_path.display()))?;
    let report: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("iperf3 ({status}) wrote no JSON report:\n{text}"))?;
    if let Some(error) = report.get("error").and_then(|e| e.as_str()) {
        let csum_errors = Snmp::read(receiver)?.delta(&counters_before, "Tcp.InCsumErrors");
        bail!("iperf3: {error} (receiver counted {csum_errors} TCP checksum errors meanwhile)");
    }
    let bits_per_second = report
        .pointer("/end/sum_received/bits_per_second")
        .and_then(|v| v.as_f64())
        .with_context(|| format!("no end.sum_received.bits_per_second in iperf3's report ({status})"))?;
    let gbps = bits_per_second / 1e9;
    let retransmits = report.pointer("/end/sum_sent/retransmits").and_then(|v| v.as_u64()).unwrap_or(0);
    Ok(Outcome { figures: vec![(figure, gbps)], summary: format!("{gbps:.2} Gbit/s ({retransmits} retransmits)") })
}

/// Waits until a socket in `netns` listens on TCP `port`, read from the
/// namespace's /proc/net/tcp (probing with a connection would use up the
/// one-off server).
pub fn wait_until_listening(netns: &Netns, port: u16, server: &mut ChildGuard) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if is_listening(netns, port)? {
            return Ok(());
        }
        if server.has_exited() {
            bail!("the server in {} exited before listening on port {port}", netns.name());
        }
        if std::time::Instant::now() > deadline {
            bail!("nothing listens on TCP port {port} in {} after 10 s", netns.name());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn is_listening(netns: &Netns, port: u16) -> anyhow::Result<bool> {
    let text = netns.run_inside(|| {
        let v4 = std::fs::read_to_string("/proc/thread-self/net/tcp").context("reading /proc/thread-self/net/tcp")?;
        let v6 = std::fs::read_to_string("/proc/thread-self/net/tcp6").unwrap_or_default();
        Ok(v4 + &v6)
    })?;
    Ok(listening_ports(&text).contains(&port))
}

/// Local ports in state LISTEN (0A) in /proc/net/tcp format.
fn listening_ports(text: &str) -> Vec<u16> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state) = (fields.get(1)?, fields.get(3)?);
            if *state != "0A" {
                return None;
            }
            u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()
        })
        .collect()
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_sockets_are_found_by_port() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue\n\
                    0: 00000000:1451 00000000:0000 0A 00000000:00000000 00:00000000 00000000\n\
                    1: 0100000A:9C40 0200000A:1451 01 00000000:00000000 00:00000000 00000000\n";
        assert_eq!(listening_ports(text), vec![5201]);
    }
}
