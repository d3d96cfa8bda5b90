//! Network interfaces, looked up through the kernel (netlink and
//! interface ioctls, through rtnetlink and nix), never by running `ip`.
use std::{
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

use crate::config::{Config, ConfigError, Problem};

/// The kernel's index of interface `name` in the calling thread's network
/// namespace, or None when there is no such interface.
///
/// Asked by RTM_GETLINK with IFLA_IFNAME, not by if_nametoindex: that is
/// the SIOCGIFINDEX ioctl, and for a name that does not exist the kernel
/// runs `modprobe netdev-<name>` and `modprobe <name>` first and waits for
/// them (net/core/dev_ioctl.c, dev_load()). On a kernel with modules (Debian
/// 12's) every look-up of a pending endpoint's interface cost two modprobe
/// runs; rtnl_getlink() loads nothing.
pub fn ifindex(name: &str) -> Option<u32> {
    match link_index_by_name(name) {
        Ok(index) => index,
        Err(error) => {
            log::warn!("looking up interface {name:?} over netlink: {error}");
            None
        }
    }
}

fn link_index_by_name(name: &str) -> std::io::Result<Option<u32>> {
    use rtnetlink::{
        packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload},
        packet_route::{
            RouteNetlinkMessage,
            link::{LinkAttribute, LinkMessage},
        },
        sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE},
    };
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    // The kernel's IFNAMSIZ less its NUL: a longer name cannot exist.
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', '\0']) {
        return Ok(None);
    }
    let mut request = LinkMessage::default();
    request.attributes.push(LinkAttribute::IfName(name.to_owned()));
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetLink(request)));
    message.finalize();
    let mut bytes = vec![0; message.buffer_len()];
    message.serialize(&mut bytes);
    let socket = Socket::new(NETLINK_ROUTE)?;
    socket.connect(&SocketAddr::new(0, 0))?;
    socket.send(&bytes, 0)?;
    loop {
        let (answer, _) = socket.recv_from_full()?;
        let mut offset = 0;
        while offset < answer.len() {
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&answer[offset..])
                .map_err(|error| invalid(format!("an RTM_GETLINK answer: {error}")))?;
            let length = reply.header.length as usize;
            match reply.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => return Ok(Some(link.header.index)),
                NetlinkPayload::Error(error) if error.code.is_none() => return Ok(None),
                NetlinkPayload::Error(error) if matches!(error.raw_code().abs(), libc::ENODEV | libc::EINVAL) => return Ok(None),
                NetlinkPayload::Error(error) => return Err(error.to_io()),
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

// include/uapi/linux/sockios.h: each takes a struct ifreq.
nix::ioctl_readwrite_bad!(siocgifmtu, libc::SIOCGIFMTU, libc::ifreq);
nix::ioctl_readwrite_bad!(siocgifhwaddr, libc::SIOCGIFHWADDR, libc::ifreq);
nix::ioctl_readwrite_bad!(siocethtool, libc::SIOCETHTOOL, libc::ifreq);

/// A struct ifreq naming `interface`, and a socket to ask about it.
fn interface_request(interface: &str) -> std::io::Result<(libc::ifreq, OwnedFd)> {
    // SAFETY: a zeroed ifreq is valid; the name is copied in NUL-terminated.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = interface.as_bytes();
    if bytes.len() >= request.ifr_name.len() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "interface name too long"));
    }
    for (dst, src) in request.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let socket = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
    Ok((request, socket))
}

/// The MTU of interface `name` (SIOCGIFMTU ioctl).
pub fn mtu(name: &str) -> std::io::Result<u32> {
    let (mut request, socket) = interface_request(name)?;
    // SAFETY: the ifreq names the interface and outlives the call.
    unsafe { siocgifmtu(socket.as_raw_fd(), &mut request) }?;
    // SAFETY: SIOCGIFMTU filled in the MTU member of the union.
    Ok(unsafe { request.ifr_ifru.ifru_mtu } as u32)
}

/// The MTU containers on this node get by default: the underlay device's
/// less the 50 bytes of VXLAN over IPv4 (RFC 7348 section 4.3: the
/// overlay must not need the underlay to fragment).
pub fn overlay_mtu(underlay: &str) -> std::io::Result<u32> {
    mtu(underlay).map(|mtu| mtu.saturating_sub(overlay_common::VXLAN_ENCAP_LEN as u32))
}

/// The hardware address of interface `name` (SIOCGIFHWADDR ioctl), in the
/// calling thread's network namespace.
pub fn mac(name: &str) -> std::io::Result<[u8; 6]> {
    let (mut request, socket) = interface_request(name)?;
    // SAFETY: the ifreq names the interface and outlives the call.
    unsafe { siocgifhwaddr(socket.as_raw_fd(), &mut request) }?;
    // SAFETY: SIOCGIFHWADDR filled in the hardware address member of the union.
    let address = unsafe { request.ifr_ifru.ifru_hwaddr };
    if address.sa_family != libc::ARPHRD_ETHER {
        return Err(std::io::Error::other(format!("{name} is not an Ethernet device (ARPHRD {})", address.sa_family)));
    }
    // Its first six bytes are the Ethernet MAC.
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(address.sa_data.iter()) {
        *dst = *src as u8;
    }
    Ok(mac)
}

/// A configuration whose interfaces all exist, with their indexes.
#[derive(Clone, Debug)]
pub struct ResolvedConfig {
    pub config: Config,
    pub underlay_ifindex: u32,
    /// Ifindex of `config.endpoints[i].interface`, index for index.
    pub endpoint_ifindex: Vec<u32>,
}

impl ResolvedConfig {
    /// Looks up every interface the configuration names; reports all the
    /// missing ones at once, in the same form as validation problems.
    pub fn resolve(config: Config, path: &Path) -> Result<ResolvedConfig, ConfigError> {
        let mut problems = Vec::new();
        let mut lookup = |field: String, name: &str| {
            let index = ifindex(name);
            if index.is_none() {
                problems.push(Problem::in_file(&field, name, "no such network interface in this network namespace"));
            }
            index.unwrap_or(0)
        };
        let underlay_ifindex = lookup("node.underlay_interface".to_owned(), &config.node.underlay_interface);
        let endpoint_ifindex = config
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| lookup(format!("endpoints[{i}].interface"), &e.interface))
            .collect();
        if !problems.is_empty() {
            return Err(ConfigError::Invalid { path: path.to_owned(), problems });
        }
        Ok(ResolvedConfig { config, underlay_ifindex, endpoint_ifindex })
    }
}

/// IPv4 forwarding on the underlay device, which `bpf_fib_lookup` (a
/// forwarding lookup) needs to resolve the next hop to a peer VTEP: with it
/// off, every lookup fails (BPF_FIB_LKUP_RET_FWD_DISABLED). Container hosts (Docker,
/// every Kubernetes CNI) run with forwarding on; the agent turns it on for
/// the underlay device only, and [`ForwardingGuard`] restores the previous
/// value when dropped.
pub fn enable_ipv4_forwarding(interface: &str) -> std::io::Result<ForwardingGuard> {
    let path = ipv4_forwarding_path(interface);
    let previous = std::fs::read_to_string(&path)?.trim().to_owned();
    if previous != "1" {
        std::fs::write(&path, "1")?;
        log::info!("enabled IPv4 forwarding on underlay {interface} (was {previous}); it is restored at exit");
    }
    Ok(ForwardingGuard { path, restore: (previous != "1").then_some(previous) })
}

/// The sysctl that turns IPv4 forwarding on and off for `interface`.
pub fn ipv4_forwarding_path(interface: &str) -> PathBuf {
    PathBuf::from(format!("/proc/sys/net/ipv4/conf/{interface}/forwarding"))
}

/// Puts the underlay's forwarding setting back as it was.
pub struct ForwardingGuard {
    path: PathBuf,
    restore: Option<String>,
}

impl ForwardingGuard {
    /// Leaves forwarding on after all: the datapath stays behind the agent.
    pub fn keep(mut self) {
        self.restore = None;
    }
}

impl Drop for ForwardingGuard {
    fn drop(&mut self) {
        if let Some(previous) = &self.restore {
            if let Err(error) = std::fs::write(&self.path, previous) {
                log::warn!("restoring {} to {previous}: {error}", self.path.display());
            }
        }
    }
}

// struct ethtool_value / ethtool_drvinfo commands (include/uapi/linux/ethtool.h).
const ETHTOOL_GDRVINFO: u32 = 0x03;
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_SGRO: u32 = 0x2c;

/// Runs one SIOCETHTOOL command on `interface` with `buffer` (whose first
/// u32 is the command).
fn ethtool(interface: &str, buffer: &mut [u32]) -> std::io::Result<()> {
    let (mut request, socket) = interface_request(interface)?;
    request.ifr_ifru.ifru_data = buffer.as_mut_ptr().cast();
    // SAFETY: the buffer outlives the call and is as large as the command's structure.
    unsafe { siocethtool(socket.as_raw_fd(), &mut request) }?;
    Ok(())
}

/// The driver name of `interface` (ETHTOOL_GDRVINFO).
pub fn driver(interface: &str) -> std::io::Result<String> {
    // struct ethtool_drvinfo is 196 bytes; the driver name follows the command.
    let mut buffer = [0u32; 49];
    buffer[0] = ETHTOOL_GDRVINFO;
    ethtool(interface, &mut buffer)?;
    let bytes: Vec<u8> = buffer[1..9].iter().flat_map(|w| w.to_ne_bytes()).take_while(|b| *b != 0).collect();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Whether `interface` leaves transmit checksums to the device (ETHTOOL_GTXCSUM).
pub fn tx_checksum_offload(interface: &str) -> std::io::Result<bool> {
    let mut buffer = [ETHTOOL_GTXCSUM, 0];
    ethtool(interface, &mut buffer)?;
    Ok(buffer[1] != 0)
}

/// Turns GRO on or off on `interface` (ETHTOOL_SGRO): on at the container
/// end of a veth, the kernel accepts native XDP redirects into it (its peer
/// then runs NAPI).
pub fn set_gro(interface: &str, on: bool) -> std::io::Result<()> {
    let mut buffer = [ETHTOOL_SGRO, u32::from(on)];
    ethtool(interface, &mut buffer)
}

#[cfg(test)]
mod tests {
    use super::ifindex;

    #[test]
    fn ifindex_finds_loopback_and_answers_none_for_missing_or_impossible_names() {
        let expected = nix::net::if_::if_nametoindex("lo").expect("lo exists in every network namespace");
        assert_eq!(ifindex("lo"), Some(expected), "lo's index by netlink should be the ioctl's");
        for name in ["ovlnosuchif0", "", "a-name-longer-than-ifnamsiz", "a/b"] {
            assert_eq!(ifindex(name), None, "no interface is named {name:?}");
        }
    }
}
