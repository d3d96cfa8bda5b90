//! Keeping the underlay next hops of peer VTEPs resolved, over rtnetlink.
//!
//! The datapath takes next-hop MACs from the kernel's neighbour table. A
//! unicast IP frame can wait for resolution (`bpf_redirect_neigh`), but a
//! flooded copy (a clone) or a non-IP frame cannot, and the first frame to
//! a peer is usually a flooded ARP request. So the agent creates a
//! *managed* neighbour entry (NTF_EXT_MANAGED, Linux 5.16+) for each peer's
//! next hop: the kernel resolves it at once and keeps it resolved.
use std::{
    io,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

// include/uapi/linux/netlink.h, rtnetlink.h, neighbour.h
const NETLINK_ROUTE: i32 = 0;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_ACK: u16 = 0x04;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWNEIGH: u16 = 28;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const NDA_DST: u16 = 1;
const NDA_FLAGS_EXT: u16 = 15;
const NTF_EXT_MANAGED: u32 = 1 << 0;
const NUD_NONE: u16 = 0;
const AF_INET: u8 = libc::AF_INET as u8;
const NLMSG_HDR_LEN: usize = 16;

/// Where packets to a peer VTEP leave: the device and the next hop (the
/// peer itself when it is on-link, else the gateway).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextHop {
    pub ifindex: u32,
    pub address: Ipv4Addr,
}

/// A NETLINK_ROUTE socket.
pub struct RouteSocket {
    fd: OwnedFd,
    sequence: u32,
}

impl RouteSocket {
    pub fn open() -> io::Result<RouteSocket> {
        // SAFETY: plain syscall; the fd is owned from here on.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_ROUTE) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, valid descriptor.
        Ok(RouteSocket { fd: unsafe { OwnedFd::from_raw_fd(fd) }, sequence: 0 })
    }

    /// The kernel's route to `destination` (RTM_GETROUTE).
    pub fn next_hop(&mut self, destination: Ipv4Addr) -> io::Result<NextHop> {
        // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
        let mut body = vec![AF_INET, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        push_attribute(&mut body, RTA_DST, &destination.octets());
        let reply = self.request(RTM_GETROUTE, NLM_F_REQUEST, &body)?;
        if message_type(&reply) != RTM_NEWROUTE {
            return Err(io::Error::other(format!("unexpected reply type {} to RTM_GETROUTE", message_type(&reply))));
        }
        let mut ifindex = None;
        let mut gateway = None;
        for (kind, value) in attributes(&reply[NLMSG_HDR_LEN + 12..]) {
            match (kind, value.len()) {
                (RTA_OIF, 4) => ifindex = Some(u32::from_ne_bytes(value.try_into().unwrap())),
                (RTA_GATEWAY, 4) => gateway = Some(Ipv4Addr::new(value[0], value[1], value[2], value[3])),
                _ => {}
            }
        }
        let ifindex = ifindex.ok_or_else(|| io::Error::other(format!("route to {destination} has no output device")))?;
        Ok(NextHop { ifindex, address: gateway.unwrap_or(destination) })
    }

    /// Creates (or turns into) a managed neighbour entry for `hop`.
    pub fn keep_resolved(&mut self, hop: NextHop) -> io::Result<()> {
        // struct ndmsg: family, pad1, pad2, ifindex, state, flags, type.
        let mut body = vec![AF_INET, 0, 0, 0];
        body.extend_from_slice(&(hop.ifindex as i32).to_ne_bytes());
        body.extend_from_slice(&NUD_NONE.to_ne_bytes());
        body.extend_from_slice(&[0, 0]);
        push_attribute(&mut body, NDA_DST, &hop.address.octets());
        push_attribute(&mut body, NDA_FLAGS_EXT, &NTF_EXT_MANAGED.to_ne_bytes());
        let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
        let reply = self.request(RTM_NEWNEIGH, flags, &body)?;
        if message_type(&reply) != NLMSG_ERROR {
            return Err(io::Error::other("no acknowledgement for RTM_NEWNEIGH"));
        }
        Ok(())
    }

    /// Sends one request and returns the reply, turning a netlink error
    /// into an `io::Error`.
    fn request(&mut self, kind: u16, flags: u16, body: &[u8]) -> io::Result<Vec<u8>> {
        self.sequence += 1;
        let mut message = Vec::with_capacity(NLMSG_HDR_LEN + body.len());
        message.extend_from_slice(&((NLMSG_HDR_LEN + body.len()) as u32).to_ne_bytes());
        message.extend_from_slice(&kind.to_ne_bytes());
        message.extend_from_slice(&flags.to_ne_bytes());
        message.extend_from_slice(&self.sequence.to_ne_bytes());
        message.extend_from_slice(&0u32.to_ne_bytes());
        message.extend_from_slice(body);
        // SAFETY: sending our buffer on our socket (the kernel is the default destination).
        if unsafe { libc::send(self.fd.as_raw_fd(), message.as_ptr().cast(), message.len(), 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut reply = vec![0u8; 8192];
        // SAFETY: receiving into our buffer.
        let received = unsafe { libc::recv(self.fd.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0) };
        if received < 0 {
            return Err(io::Error::last_os_error());
        }
        reply.truncate(received as usize);
        if reply.len() < NLMSG_HDR_LEN {
            return Err(io::Error::other("short netlink reply"));
        }
        if message_type(&reply) == NLMSG_ERROR && reply.len() >= NLMSG_HDR_LEN + 4 {
            let errno = i32::from_ne_bytes(reply[NLMSG_HDR_LEN..NLMSG_HDR_LEN + 4].try_into().unwrap());
            if errno != 0 {
                return Err(io::Error::from_raw_os_error(-errno));
            }
        }
        Ok(reply)
    }
}

/// Makes the kernel keep the next hop to every peer VTEP resolved; returns
/// the peers for which that failed, with why (a warning, not fatal: unicast
/// IP still resolves on demand).
pub fn keep_peers_resolved(config: &crate::Config) -> Vec<(String, io::Error)> {
    let mut failures = Vec::new();
    let mut socket = match RouteSocket::open() {
        Ok(socket) => socket,
        Err(error) => return vec![("(all peers)".to_owned(), error)],
    };
    for peer in &config.peers {
        let result = socket.next_hop(peer.vtep_address).and_then(|hop| socket.keep_resolved(hop));
        if let Err(error) = result {
            failures.push((peer.name.clone(), error));
        }
    }
    failures
}

fn message_type(message: &[u8]) -> u16 {
    u16::from_ne_bytes([message[4], message[5]])
}

/// Appends a route attribute (struct rtattr), padded to 4 bytes.
fn push_attribute(buffer: &mut Vec<u8>, kind: u16, value: &[u8]) {
    buffer.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    buffer.extend_from_slice(&kind.to_ne_bytes());
    buffer.extend_from_slice(value);
    buffer.resize(buffer.len().next_multiple_of(4), 0);
}

/// The (type, value) pairs of a run of route attributes.
fn attributes(mut bytes: &[u8]) -> Vec<(u16, &[u8])> {
    let mut found = Vec::new();
    while bytes.len() >= 4 {
        let len = u16::from_ne_bytes([bytes[0], bytes[1]]) as usize;
        let kind = u16::from_ne_bytes([bytes[2], bytes[3]]) & 0x3fff;
        if len < 4 || len > bytes.len() {
            break;
        }
        found.push((kind, &bytes[4..len]));
        bytes = &bytes[len.next_multiple_of(4).min(bytes.len())..];
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip() {
        let mut buffer = Vec::new();
        push_attribute(&mut buffer, RTA_DST, &[192, 0, 2, 1]);
        push_attribute(&mut buffer, RTA_OIF, &7u32.to_ne_bytes());
        push_attribute(&mut buffer, 9, &[1, 2, 3]);
        let found = attributes(&buffer);
        assert_eq!(found, vec![(RTA_DST, &[192, 0, 2, 1][..]), (RTA_OIF, &7u32.to_ne_bytes()[..]), (9, &[1, 2, 3][..])]);
    }
}
