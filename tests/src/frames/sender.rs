//! Crafted VXLAN sent as a peer (or a stranger) on the underlay would send
//! it: the VXLAN header and inner frame are built here, the outer IPv4 and
//! UDP headers are the kernel's, from a socket in a lab namespace.
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};

use super::Vxlan;
use crate::netns::Netns;

/// Sends `count` copies of `header` followed by `inner` as UDP from
/// `source` (an address of `from`) to `to` (a VTEP and its VXLAN port).
pub fn send_vxlan(from: &Netns, source: Ipv4Addr, to: SocketAddrV4, header: Vxlan, inner: &[u8], count: usize) -> anyhow::Result<()> {
    let datagram = header.packet(inner);
    from.run_inside(move || {
        let socket = UdpSocket::bind((source, 0))?;
        for _ in 0..count {
            socket.send_to(&datagram, to)?;
        }
        Ok(())
    })
    .map_err(|error| error.context(format!("sending {count} crafted VXLAN datagrams from {source} to {to}")))
}
