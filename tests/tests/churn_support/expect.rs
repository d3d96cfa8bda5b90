//! What h1's maps, TC hooks and pins must hold for the churn's live
//! endpoints, networks and peers.
use std::{collections::BTreeSet, net::Ipv4Addr};

use crate::attachments::{attachments, ingress_programs};
use overlay::datapath::Datapath;

use super::{C1_IP, C2_IP, Churn, FIXED_VNI};
use crate::map_keys::MapKeys;

/// Peer `peer`'s VTEP on the lab's underlay (h1 and h2 are .1 and .2).
pub fn peer_vtep(peer: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 10 + peer as u8)
}

/// The VNI of peer `peer`'s containers.
pub fn peer_vni(peer: usize) -> u32 {
    FIXED_VNI + peer as u32 % super::PEER_VNIS
}

/// Container `j` behind peer `peer`: its MAC and address in the fixed VNI.
pub fn peer_endpoint(peer: usize, j: usize) -> ([u8; 6], Ipv4Addr) {
    let mac = [0x02, 0xdd, 0, (peer >> 8) as u8, peer as u8, j as u8];
    let ip = Ipv4Addr::new(10, 10, 1 + (peer / 120) as u8, ((peer % 120) * 2 + j + 1) as u8);
    (mac, ip)
}

fn be(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

/// What h1's tables must hold for the live churn.
pub fn expected(churn: &Churn) -> MapKeys {
    let c1 = churn.lab.container("h1", "c");
    let c2 = churn.lab.container("h2", "c");
    let applied: Vec<_> = churn.endpoints.values().filter(|e| e.port.is_some()).collect();
    let mut vnis: BTreeSet<u32> = applied.iter().map(|e| e.vni).collect();
    vnis.insert(FIXED_VNI);
    let mut ports: BTreeSet<u32> = applied.iter().map(|e| churn.ifindexes[&churn.pool[e.port.unwrap()]]).collect();
    ports.insert(churn.ifindexes[&c1.port]);
    let mut local_endpoints: BTreeSet<_> = applied.iter().map(|e| (e.vni, e.mac)).collect();
    local_endpoints.insert((FIXED_VNI, c1.spec.mac));
    let mut fdb = BTreeSet::from([(FIXED_VNI, c2.spec.mac)]);
    let mut peers = BTreeSet::from([be(churn.lab.host("h2").vtep)]);
    // Every address the node answers ARP for: its own containers' and those behind peers.
    let mut neighbours: BTreeSet<(u32, u32)> = [C1_IP, C2_IP].iter().map(|ip| (FIXED_VNI, be(*ip))).collect();
    for e in &applied {
        neighbours.insert((e.vni, be(e.ip)));
    }
    for &peer in &churn.peers {
        peers.insert(be(peer_vtep(peer)));
        for j in 0..churn.size.endpoints_per_peer {
            let (mac, ip) = peer_endpoint(peer, j);
            fdb.insert((peer_vni(peer), mac));
            neighbours.insert((peer_vni(peer), be(ip)));
        }
    }
    // A peer is admitted for the VNIs of its containers this node carries.
    let mut peer_vnis: BTreeSet<(u32, u32)> =
        churn.peers.iter().filter(|&&p| vnis.contains(&peer_vni(p))).map(|&p| (be(peer_vtep(p)), peer_vni(p))).collect();
    peer_vnis.insert((be(churn.lab.host("h2").vtep), FIXED_VNI));
    MapKeys { flood: vnis.clone(), vnis, ports, local_endpoints, fdb, peers, peer_vnis, neighbours }
}

/// What differs between what the live churn calls for and h1's pinned maps, or None.
pub fn mismatch(churn: &Churn) -> Option<String> {
    let state = Datapath::pinned_state(&churn.pins).expect("reading h1's pinned maps");
    expected(churn).mismatch(&MapKeys::found(&state))
}

/// Each pool port carries exactly one TC program while an endpoint uses
/// it and none once freed; the pinned links are the baseline's plus one
/// per port in use.
pub fn check_attachments(churn: &Churn) {
    let in_use: BTreeSet<String> = churn.endpoints.values().filter_map(|e| e.port).map(|p| churn.pool[p].clone()).collect();
    let pool = churn.pool.clone();
    let counts: Vec<(String, usize)> = churn
        .lab
        .host("h1")
        .netns
        .run_inside(move || {
            Ok(pool
                .into_iter()
                .map(|name| {
                    let count = ingress_programs(&name).unwrap_or_else(|error| panic!("counting the TC programs of {name}: {error}"));
                    (name, count)
                })
                .collect())
        })
        .expect("counting the pool's TC programs");
    let wrong: Vec<String> = counts
        .iter()
        .filter(|(name, count)| *count != usize::from(in_use.contains(name)))
        .map(|(name, count)| format!("{name}: {count} program(s), in use: {}", in_use.contains(name)))
        .collect();
    assert!(wrong.is_empty(), "TC programs on the pool's ports should follow the endpoints: {wrong:?}");
    let mut expected: BTreeSet<String> = churn.baseline_links.clone();
    expected.extend(in_use.iter().map(|name| format!("tc-port-{name}")));
    assert_eq!(attachments(&churn.pins), expected, "pinned links and recorded filters should be the fixed ones plus one per port in use");
}
