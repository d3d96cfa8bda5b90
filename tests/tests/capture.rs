//! RFC 7348 conformance on real packets: the encapsulated traffic between
//! two hosts running the agent is captured on the underlay wire and
//! dissected by tshark (Wireshark's dissectors, an implementation that is
//! not ours), and every outer field is checked.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, UdpSocket},
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use overlay_lab::{
    lab::{ContainerSpec, HostKind, HostSpec, Lab, LabSpec, overlay_binary}, traffic::{ping, tcp_transfer},
    netns::Netns,
};

const FLOWS: u16 = 64;
const FIRST_FLOW_PORT: u16 = 40000;
const DATAGRAMS_PER_FLOW: usize = 3;
const VNI: u32 = 4242;

fn container(name: &str, last_octet: u8) -> ContainerSpec {
    ContainerSpec { name: name.into(), mac: [0x02, 0, 0, 0x42, 0, last_octet], ip: Ipv4Addr::new(10, 10, 0, last_octet), vni: VNI }
}

/// tshark capturing on one interface of a namespace into a file until stopped.
struct Capture {
    child: Option<Child>,
}

impl Capture {
    fn start(netns: &Netns, interface: &str, file: &Path) -> Capture {
        // tshark's complaints go to a file beside the capture, for the panic.
        let errors_path = file.with_extension("stderr");
        let errors = std::fs::File::create(&errors_path).expect("creating tshark's stderr file");
        let mut child = netns
            .command("tshark")
            .args(["-q", "-i", interface, "-f", "udp", "-w"])
            .arg(file)
            .stdout(Stdio::null())
            .stderr(errors)
            .spawn()
            .expect("starting tshark (Debian package tshark)");
        // The capture file appears once dumpcap has opened the interface.
        // tshark loads every dissector first: slow under emulation (the 6.1 guest).
        let deadline = Instant::now() + overlay_lab::lab::scaled(Duration::from_secs(15));
        while std::fs::metadata(file).map(|m| m.len() == 0).unwrap_or(true) {
            if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
                let _ = child.kill();
                let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                let errors = std::fs::read_to_string(&errors_path).unwrap_or_default();
                panic!("tshark did not start capturing on {interface} (tshark: {status}); its stderr:\n{errors}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300));
        Capture { child: Some(child) }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: plain syscall; SIGINT lets tshark flush the file.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One dissected VXLAN packet: the fields checked, as tshark prints them.
#[derive(Debug)]
struct Dissected {
    frame_len: u32,
    ip_len: u32,
    df: String,
    ttl: String,
    ip_id: u32,
    checksum_status: String,
    src_port: u16,
    dst_port: u16,
    udp_len: u32,
    udp_checksum: String,
    vxlan_flags: String,
    vni: u32,
    reserved8: String,
    inner_udp_src_port: Option<u16>,
    outer_source: String,
}

// Each field once: tshark prints a field listed twice in one column only.
// Fields with several occurrences (outer, then inner headers) print them
// all, comma-separated.
const FIELDS: [&str; 15] = [
    "frame.len",
    "ip.len",
    "ip.flags.df",
    "ip.ttl",
    "ip.id",
    "ip.checksum.status",
    "udp.srcport",
    "udp.dstport",
    "udp.length",
    "udp.checksum",
    "vxlan.flags",
    "vxlan.vni",
    "vxlan.reserved8",
    "ip.src",
    "ip.proto",
];

fn dissect(file: &Path) -> Vec<Dissected> {
    let mut args: Vec<String> = ["-r", file.to_str().unwrap(), "-o", "ip.check_checksum:TRUE", "-Y", "vxlan", "-T", "fields", "-E", "separator=|", "-E", "occurrence=a", "-E", "aggregator=,"]
        .map(String::from)
        .to_vec();
    for field in FIELDS {
        args.push("-e".into());
        args.push(field.into());
    }
    let output = std::process::Command::new("tshark").args(&args).output().expect("running tshark");
    assert!(output.status.success(), "tshark failed: {}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .map(|line| {
            let f: Vec<&str> = line.split('|').collect();
            let first = |i: usize| f[i].split(',').next().unwrap_or("").to_owned();
            let number = |i: usize| {
                let value = first(i);
                value.strip_prefix("0x").map(|h| u32::from_str_radix(h, 16).unwrap()).unwrap_or_else(|| value.parse().unwrap_or(u32::MAX))
            };
            Dissected {
                frame_len: number(0),
                ip_len: number(1),
                df: first(2),
                ttl: first(3),
                ip_id: number(4),
                checksum_status: first(5),
                src_port: number(6) as u16,
                // The second udp.srcport is the inner datagram's when the inner
                // packet is UDP (not an ICMP error quoting one).
                inner_udp_src_port: (f[14].split(',').nth(1) == Some("17"))
                    .then(|| f[6].split(',').nth(1).and_then(|p| p.parse().ok()))
                    .flatten(),
                outer_source: first(13),
                dst_port: number(7) as u16,
                udp_len: number(8),
                udp_checksum: first(9),
                vxlan_flags: first(10),
                vni: number(11),
                reserved8: first(12),
            }
        })
        .collect()
}

/// Every outer field of real encapsulated packets, as Wireshark's
/// dissectors read them, and the UDP source port's spread over 64 flows.
#[test]
fn encapsulated_packets_conform_to_rfc_7348() {
    let hosts = vec![
        HostSpec { name: "h1".into(), kind: HostKind::Overlay, containers: vec![container("a", 1)] },
        HostSpec { name: "h2".into(), kind: HostKind::Overlay, containers: vec![container("b", 2)] },
    ];
    let mut lab = Lab::build(LabSpec { scope: "capture".into(), vxlan_port: 4789, hosts }).expect("building the lab");
    lab.start_agents(&overlay_binary().unwrap()).expect("starting agents");
    let (a, b) = (&lab.container("h1", "a").netns, &lab.container("h2", "b").netns);
    assert_eq!(ping(a, Ipv4Addr::new(10, 10, 0, 2), 1).unwrap().1, 1, "no path before capturing");

    // The wire-side end of h1's underlay link, in the switch namespace.
    let wire_port = format!("w{:x}1", std::process::id());
    let file = lab.dir.join("vxlan.pcap");
    let mut capture = Capture::start(&lab.wire, &wire_port, &file);

    // 64 UDP flows (one inner source port each), a few datagrams per flow.
    a.run_inside(|| {
        for flow in 0..FLOWS {
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, FIRST_FLOW_PORT + flow))?;
            for _ in 0..DATAGRAMS_PER_FLOW {
                socket.send_to(b"flow", (Ipv4Addr::new(10, 10, 0, 2), 9))?;
            }
        }
        Ok(())
    })
    .unwrap();
    // And TCP (GSO-sized sends, segmented on the way) and ICMP.
    tcp_transfer(a, b, Ipv4Addr::new(10, 10, 0, 2), 1 << 20).expect("TCP transfer");
    ping(a, Ipv4Addr::new(10, 10, 0, 2), 2).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    capture.stop();

    let packets = dissect(&file);
    assert!(packets.len() > FLOWS as usize * DATAGRAMS_PER_FLOW, "expected the flows' VXLAN packets in the capture, got {}", packets.len());
    for p in &packets {
        let what = format!("{p:?}");
        assert_eq!(p.vni, VNI, "VNI: {what}");
        // RFC 7348 section 5: I flag set (0x08 in the first byte), every other flag and reserved bit zero.
        assert_eq!(p.vxlan_flags, "0x0800", "VXLAN flags: {what}");
        assert_eq!(p.reserved8, "0", "VXLAN last reserved byte: {what}");
        assert_eq!(p.dst_port, 4789, "UDP destination port: {what}");
        assert!((49152..=65535).contains(&p.src_port), "UDP source port outside 49152-65535: {what}");
        assert_eq!(p.udp_checksum, "0x0000", "outer UDP checksum must be zero over IPv4: {what}");
        assert_eq!(p.udp_len + 20, p.ip_len, "UDP length vs IP length: {what}");
        assert_eq!(p.ip_len + 14, p.frame_len, "IP length vs frame length: {what}");
        assert!(p.df == "1" || p.df == "True", "DF must be set: {what}");
        assert_eq!(p.ttl, "64", "TTL: {what}");
        assert!(p.checksum_status == "2" || p.checksum_status == "Good" || p.checksum_status == "1", "outer IPv4 checksum: {what}");
        assert!(p.frame_len <= 1514, "no outer frame beyond the 1500 MTU: {what}");
    }
    let ids: BTreeSet<u32> = packets.iter().map(|p| p.ip_id).collect();
    assert!(ids.len() > packets.len() / 2, "outer IPv4 IDs should vary per packet as the kernel's do; {} distinct over {} packets", ids.len(), packets.len());

    // One flow keeps one source port; different flows spread.
    let mut ports_by_flow: BTreeMap<u16, BTreeSet<u16>> = BTreeMap::new();
    for p in packets.iter().filter(|p| p.outer_source == "192.0.2.1") {
        if let Some(inner) = p.inner_udp_src_port.filter(|port| (FIRST_FLOW_PORT..FIRST_FLOW_PORT + FLOWS).contains(port)) {
            ports_by_flow.entry(inner).or_default().insert(p.src_port);
        }
    }
    assert_eq!(ports_by_flow.len(), FLOWS as usize, "expected all {FLOWS} flows in the capture, saw {}", ports_by_flow.len());
    for (flow, ports) in &ports_by_flow {
        assert_eq!(ports.len(), 1, "flow from inner port {flow} used several outer source ports: {ports:?}");
    }
    let distinct: BTreeSet<u16> = ports_by_flow.values().flatten().copied().collect();
    println!("{FLOWS} flows got {} distinct outer source ports", distinct.len());
    assert!(
        distinct.len() >= 60,
        "{FLOWS} flows should spread over (nearly) as many source ports, got {}: {distinct:?}\n{}",
        distinct.len(),
        lab.agents.iter().map(|a| a.log()).collect::<Vec<_>>().join("\n")
    );
}
