//! The peer probe: a VXLAN-carried unicast ARP probe each peer's datapath
//! answers (see the module's parent for how and what it proves).
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, UdpSocket},
    time::{Duration, Instant},
};

use aya::maps::{Array, Map, MapData};
use overlay_common::{ETH_P_ARP, ETH_P_IPV4, MonitorConfig, maps};

use crate::{
    config::{Config, MacAddr, Peer},
    monitor::Monitor,
    neighbour::next_hops_blocking,
    pinning::PinDir,
};
use super::{DatapathState, Finding, Options};


/// Prefix of the MAC a probe comes from: locally administered, unicast,
/// and owned by nobody (the rest is random per run).
const PROBE_MAC_PREFIX: [u8; 3] = [0x02, 0xd0, 0xc7];

/// A VXLAN datagram (header and inner frame) carrying a unicast ARP probe
/// (RFC 5227: sender IP 0.0.0.0, so the target caches nothing) from
/// `probe_mac` to the endpoint `target_mac`/`target_ip`.
pub fn probe_datagram(vni: u32, probe_mac: MacAddr, target_mac: MacAddr, target_ip: Ipv4Addr) -> Vec<u8> {
    let mut datagram = vec![0x08, 0, 0, 0];
    datagram.extend_from_slice(&vni.to_be_bytes()[1..]);
    datagram.push(0);
    datagram.extend_from_slice(&target_mac.0);
    datagram.extend_from_slice(&probe_mac.0);
    datagram.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    datagram.extend_from_slice(&[0, 1]); // hardware type: Ethernet
    datagram.extend_from_slice(&ETH_P_IPV4.to_be_bytes());
    datagram.extend_from_slice(&[6, 4, 0, 1]); // lengths, request
    datagram.extend_from_slice(&probe_mac.0);
    datagram.extend_from_slice(&[0; 4]); // sender IP: none (a probe)
    datagram.extend_from_slice(&[0; 6]);
    datagram.extend_from_slice(&target_ip.octets());
    datagram.resize(8 + 60, 0); // minimum Ethernet frame
    datagram
}

/// One peer's probe: where it goes and what it asks.
struct PeerProbe<'a> {
    peer: &'a Peer,
    vni: u32,
    target: (MacAddr, Ipv4Addr),
    datagram: Vec<u8>,
}

pub(super) fn peer_findings(config: &Config, datapath: &DatapathState, options: &Options) -> Vec<Finding> {
    if config.peers.is_empty() {
        return vec![Finding::ok("peer", "no peers configured")];
    }
    let skip_all = |why: String| config.peers.iter().map(|p| Finding::skip("peer", format!("{} ({}): {why}", p.name, p.vtep_address))).collect::<Vec<_>>();
    if !datapath.running() {
        return skip_all("not probed: the datapath of this node is not running".to_owned());
    }
    match monitor_enabled(&datapath.pins) {
        Ok(false) => {}
        Ok(true) => return skip_all("not probed: an `overlay monitor` is listening on this node (it reads the events the probe's answer needs)".to_owned()),
        Err(error) => return skip_all(format!("not probed: cannot read the node's monitor settings: {error}")),
    }
    let mut findings = Vec::new();
    let local_vnis = config.local_vnis();
    let probe_mac = MacAddr::random_with_prefix(&PROBE_MAC_PREFIX);
    let mut probes = Vec::new();
    let destinations: Vec<std::net::IpAddr> = config.peers.iter().map(|peer| peer.vtep_address.into()).collect();
    // Without a netlink socket the routes are not checked; the probes still run.
    let mut routes = next_hops_blocking(&destinations).map(Vec::into_iter).ok();
    for peer in &config.peers {
        if let Some(Err(error)) = routes.as_mut().and_then(Iterator::next) {
            findings.push(Finding::fail(
                "peer",
                format!("{} ({}): no underlay route to its VTEP: {error}", peer.name, peer.vtep_address),
                format!("add a route to {} (the underlay must reach every peer VTEP), or correct its vtep_address", peer.vtep_address),
            ));
            continue;
        }
        let Some(endpoint) = peer.endpoints.iter().find(|e| local_vnis.contains(&e.vni)) else {
            findings.push(Finding::skip(
                "peer",
                format!("{} ({}): not probed: none of its configured endpoints is in a VNI this node carries, and the probe needs one to answer", peer.name, peer.vtep_address),
            ));
            continue;
        };
        let datagram = probe_datagram(endpoint.vni, probe_mac, endpoint.mac, endpoint.ip);
        probes.push(PeerProbe { peer, vni: endpoint.vni, target: (endpoint.mac, endpoint.ip), datagram });
    }
    if probes.is_empty() {
        return findings;
    }
    let socket = match UdpSocket::bind((config.node.vtep_address, 0)) {
        Ok(socket) => socket,
        Err(error) => {
            findings.extend(probes.iter().map(|p| {
                Finding::skip("peer", format!("{} ({}): not probed: cannot bind a socket to our VTEP address {}: {error}", p.peer.name, p.peer.vtep_address, config.node.vtep_address))
            }));
            return findings;
        }
    };
    let settings = MonitorConfig {
        enabled: 1,
        events_per_second: overlay_common::DEFAULT_MONITOR_RATE,
        burst: overlay_common::DEFAULT_MONITOR_BURST,
        sample_forwarded_every: 0,
    };
    let mut monitor = match Monitor::open(&datapath.pins, settings) {
        Ok(monitor) => monitor,
        Err(error) => {
            findings.extend(probes.iter().map(|p| Finding::skip("peer", format!("{} ({}): not probed: cannot open the node's events: {error}", p.peer.name, p.peer.vtep_address))));
            return findings;
        }
    };
    let port = config.node.vxlan_port;
    let mut answered: BTreeMap<Ipv4Addr, Duration> = BTreeMap::new();
    let started = Instant::now();
    // Three sends, spread over the timeout: one lost datagram is not a verdict.
    let rounds = 3u32;
    for round in 0..rounds {
        for probe in probes.iter().filter(|p| !answered.contains_key(&p.peer.vtep_address)) {
            let _ = socket.send_to(&probe.datagram, (probe.peer.vtep_address, port));
        }
        let round_end = started + options.probe_timeout * (round + 1) / rounds;
        while answered.len() < probes.len() {
            let now = Instant::now();
            if now >= round_end {
                break;
            }
            let Some(event) = monitor.next(round_end - now) else { continue };
            let Some((source, _)) = event.outer else { continue };
            let to_probe = event.inner_eth.is_some_and(|(_, destination, _)| destination == probe_mac);
            if to_probe && probes.iter().any(|p| p.peer.vtep_address == source) {
                answered.entry(source).or_insert(started.elapsed());
            }
        }
        if answered.len() == probes.len() {
            break;
        }
    }
    drop(monitor);
    let us = config.node.vtep_address;
    for probe in &probes {
        let peer = probe.peer;
        let (mac, ip) = probe.target;
        let asked = format!("an ARP probe in VNI {} for its endpoint {ip} ({mac}), sent as VXLAN to {}:{port}", probe.vni, peer.vtep_address);
        findings.push(match answered.get(&peer.vtep_address) {
            Some(after) => Finding::ok(
                "peer",
                format!("{} ({}): answered {asked} in {:.1} ms: UDP {port} reaches it, its datapath admits {us} in VNI {} and encapsulates back", peer.name, peer.vtep_address, after.as_secs_f64() * 1000.0, probe.vni),
            ),
            None => Finding::fail(
                "peer",
                format!(
                    "{} ({}): no answer in {:?} to {asked}: the peer host or its underlay is down, UDP {port} is filtered between the VTEPs, its agent is not running or does not list {us} as a peer in VNI {}, or the container {ip} is down",
                    peer.name, peer.vtep_address, options.probe_timeout, probe.vni
                ),
                format!(
                    "on {}: run `overlay doctor` and `overlay monitor --node {} --peer {us}` (shows what its datapath drops from us); check the path between {us} and {} for UDP {port}",
                    peer.name, peer.name, peer.vtep_address
                ),
            ),
        });
    }
    findings
}

/// Whether an `overlay monitor` has the node's events switched on.
fn monitor_enabled(pins: &PinDir) -> Result<bool, String> {
    let data = MapData::from_pin(pins.map(maps::MONITOR)).map_err(|e| format!("opening {}: {e}", pins.map(maps::MONITOR).display()))?;
    let array: Array<MapData, MonitorConfig> = Array::try_from(Map::Array(data)).map_err(|e| e.to_string())?;
    Ok(array.get(&0, 0).map_err(|e| e.to_string())?.enabled != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_is_a_unicast_arp_probe_in_vxlan() {
        let probe = MacAddr([2, 0xd0, 0xc7, 1, 2, 3]);
        let target = MacAddr([2, 0, 0, 0, 2, 1]);
        let datagram = probe_datagram(0x01_02_03, probe, target, Ipv4Addr::new(10, 10, 0, 2));
        assert_eq!(&datagram[..8], &[0x08, 0, 0, 0, 1, 2, 3, 0], "VXLAN header with the I flag and the VNI");
        assert_eq!(&datagram[8..14], &target.0, "inner destination: the endpoint");
        assert_eq!(&datagram[14..20], &probe.0, "inner source: the probe MAC");
        assert_eq!(&datagram[20..22], &[0x08, 0x06]);
        let arp = &datagram[22..50];
        assert_eq!(&arp[..8], &[0, 1, 8, 0, 6, 4, 0, 1], "Ethernet/IPv4 ARP request");
        assert_eq!(&arp[14..18], &[0; 4], "sender IP 0.0.0.0: a probe, cached by nobody");
        assert_eq!(&arp[24..28], &[10, 10, 0, 2]);
        assert_eq!(datagram.len(), 8 + 60);
    }
}
