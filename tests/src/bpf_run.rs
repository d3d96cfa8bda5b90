//! What the BPF_PROG_TEST_RUN tests (packets/, fuzz_datapath.rs) share:
//! the programs' return values and raw packet sockets that see the frames
//! a run really sends (clones leave during a test run).
use std::{
    io,
    mem,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::Context as _;

// Hook return values (include/uapi/linux/bpf.h, pkt_cls.h).
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_REDIRECT: u32 = 4;
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

/// A raw packet socket (AF_PACKET, every protocol, non-blocking) bound to
/// the device `ifindex` of the calling thread's namespace.
pub fn packet_socket(ifindex: u32) -> anyhow::Result<OwnedFd> {
    let all = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain syscall; the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, all.into()) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("opening a packet socket");
    }
    // SAFETY: fd is fresh and ours.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut address: libc::sockaddr_ll = unsafe { mem::zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_protocol = all;
    address.sll_ifindex = ifindex as i32;
    // SAFETY: address is a valid sockaddr_ll of the size given.
    let bound = unsafe {
        libc::bind(socket.as_raw_fd(), (&raw const address).cast(), mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t)
    };
    if bound != 0 {
        return Err(io::Error::last_os_error()).context("binding a packet socket");
    }
    Ok(socket)
}

/// Every frame queued on a packet socket that its device received (frames
/// it sent itself are skipped).
pub fn receive_queued(socket: &OwnedFd) -> io::Result<Vec<Vec<u8>>> {
    let mut frames = Vec::new();
    let mut buffer = vec![0u8; 65536];
    loop {
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut from: libc::sockaddr_ll = unsafe { mem::zeroed() };
        let mut from_len = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: buffer and from are valid for the sizes given.
        let received = unsafe {
            libc::recvfrom(socket.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len(), libc::MSG_DONTWAIT, (&raw mut from).cast(), &mut from_len)
        };
        if received < 0 {
            let error = io::Error::last_os_error();
            return if error.kind() == io::ErrorKind::WouldBlock { Ok(frames) } else { Err(error) };
        }
        if from.sll_pkttype != libc::PACKET_OUTGOING {
            frames.push(buffer[..received as usize].to_vec());
        }
    }
}
