//! Cost curves: the programs' time per packet as the work grows, each point
//! measured in the same run (docs/performance.md explains the shapes).
//!
//! - `fdb`: N remote endpoints in the FDB (the far peer's, in the port's
//!   VNI); encapsulation's frames go to each of them in turn, so the
//!   lookups touch N different entries; decapsulation's come from each.
//! - `vnis`: N VNIs carried, each with the far peer admitted, a local
//!   endpoint behind the port and the far endpoint in the FDB;
//!   decapsulation's frames go round all N VNIs (their admission, endpoint
//!   lookups and per-VNI counters); encapsulation's come from the one port,
//!   whose VNI is fixed (a port per VNI would need thousands of devices).
//! - `flows`: N distinct inner 5-tuples (UDP source ports), one after the
//!   other; nothing in the datapath is keyed by flow except the outer
//!   source port's hash.
use std::collections::BTreeSet;

use overlay::MapState;
use overlay_common::{FdbEntry, LocalEndpoint, PeerVni, PeerVniInfo, VNI_COUNTER_SLOTS, VniInfo, VniMac};
use overlay_lab::frames::{ETHERTYPE_IPV4, Ethernet, IPPROTO_UDP, IPV4_LEN, Ipv4, Mac, UDP_LEN, Udp};

use super::{FAR_IP, FAR_MAC, FAR_VTEP, NEAR_IP, NEAR_MAC, VNI};

/// The dimensions and their points, as the issue asks for them.
pub const CURVES: [(&str, [u32; 3]); 3] = [("fdb", [10, 1_000, 100_000]), ("vnis", [1, 64, 4_096]), ("flows", [1, 1_000, 50_000])];

/// Frames for one point of a curve: what the port sends (encapsulation)
/// and what the far VTEP sends (decapsulation, VXLAN built by the caller
/// from `(vni, inner frame)`).
pub struct Point {
    pub state: MapState,
    pub to_far: Vec<Vec<u8>>,
    pub to_near: Vec<(u32, Vec<u8>)>,
}

const FRAME_BYTES: usize = 64;

fn frame(dst: Mac, src: Mac, from: std::net::Ipv4Addr, to: std::net::Ipv4Addr, src_port: u16) -> Vec<u8> {
    let payload = FRAME_BYTES - 14 - IPV4_LEN - UDP_LEN;
    let datagram = Udp { src_port, dst_port: 5201 }.datagram(&vec![0x5a; payload]);
    Ethernet { dst, src, ethertype: ETHERTYPE_IPV4 }.frame(&Ipv4::new(IPPROTO_UDP, from, to).packet(&datagram))
}

/// A remote endpoint's MAC, distinct for every `i`.
fn remote_mac(i: u32) -> Mac {
    let [a, b, c, d] = i.to_be_bytes();
    Mac([0x02, 0xbb, a, b, c, d])
}

/// The maps and frames of `curve` at `size`, from the base state.
pub fn point(base: &MapState, curve: &str, size: u32, port_ifindex: u32) -> Point {
    let mut state = base.clone();
    let far = *base.fdb.get(&VniMac::new(VNI, FAR_MAC.0)).expect("the far endpoint is in the base FDB");
    match curve {
        "fdb" => {
            let mut to_far = vec![frame(FAR_MAC, NEAR_MAC, NEAR_IP, FAR_IP, 40000)];
            let mut to_near = vec![(VNI, frame(NEAR_MAC, FAR_MAC, FAR_IP, NEAR_IP, 40000))];
            for i in 1..size {
                state.fdb.insert(VniMac::new(VNI, remote_mac(i).0), far);
                to_far.push(frame(remote_mac(i), NEAR_MAC, NEAR_IP, FAR_IP, 40000));
                to_near.push((VNI, frame(NEAR_MAC, remote_mac(i), FAR_IP, NEAR_IP, 40000)));
            }
            Point { state, to_far, to_near }
        }
        "vnis" => {
            let info = *base.vnis.get(&VNI).expect("the base VNI is carried");
            let used: BTreeSet<u32> = base.vnis.values().map(|v| v.counter_slot).collect();
            let mut free = (1..=VNI_COUNTER_SLOTS).filter(|slot| !used.contains(slot));
            let mut to_near = vec![(VNI, frame(NEAR_MAC, FAR_MAC, FAR_IP, NEAR_IP, 40000))];
            for i in 1..size {
                let vni = 1_000 + i;
                let slot = free.next().expect("no VNI counter slot left");
                state.vnis.insert(vni, VniInfo { counter_slot: slot, ..info });
                state.peer_vnis.insert(
                    PeerVni { vtep_addr_be: u32::from_ne_bytes(FAR_VTEP.octets()), vni },
                    PeerVniInfo { peer_slot: far.peer_slot, vni_slot: slot },
                );
                state.local_endpoints.insert(VniMac::new(vni, NEAR_MAC.0), LocalEndpoint { ifindex: port_ifindex, _reserved: 0 });
                state.fdb.insert(VniMac::new(vni, FAR_MAC.0), FdbEntry { ..far });
                to_near.push((vni, frame(NEAR_MAC, FAR_MAC, FAR_IP, NEAR_IP, 40000)));
            }
            let to_far = vec![frame(FAR_MAC, NEAR_MAC, NEAR_IP, FAR_IP, 40000)];
            Point { state, to_far, to_near }
        }
        "flows" => {
            let port = |i: u32| 10_000 + i as u16;
            Point {
                state,
                to_far: (0..size).map(|i| frame(FAR_MAC, NEAR_MAC, NEAR_IP, FAR_IP, port(i))).collect(),
                to_near: (0..size).map(|i| (VNI, frame(NEAR_MAC, FAR_MAC, FAR_IP, NEAR_IP, port(i)))).collect(),
            }
        }
        _ => panic!("no curve {curve}"),
    }
}
