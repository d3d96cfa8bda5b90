//! veth pairs for containers, over rtnetlink: one end stays in the
//! namespace of the netlink handle (the host's, where the agent attaches
//! the datapath), the other is created straight inside the container's
//! namespace under the name the runtime asked for (no rename, no move: a
//! name taken in either namespace fails the creation and leaves nothing).
//! CNI creates the container end in the container's namespace; Docker
//! wants both ends here and moves the container end itself (Join's
//! `SrcName`): [`create_local_pair`].
use std::os::fd::{AsRawFd, BorrowedFd};

use futures_util::TryStreamExt as _;
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth};

/// Why a veth operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VethError {
    /// An interface of one of the two names exists already.
    #[error("cannot create veth {host} (peer {peer}): an interface of that name exists already in its namespace")]
    Exists { host: String, peer: String },
    /// The kernel refused a request.
    #[error("{operation} {subject}: {error}")]
    Netlink { operation: &'static str, subject: String, error: rtnetlink::Error },
    /// A netlink socket or this thread's namespace could not be opened.
    #[error("opening {what}: {error}")]
    Open { what: &'static str, error: std::io::Error },
}

/// A pair to create: `host` in the handle's namespace, `peer` in `peer_netns`.
pub struct VethPair<'a> {
    pub host: &'a str,
    pub peer: &'a str,
    pub peer_netns: BorrowedFd<'a>,
    /// The peer's MAC (the container's address on the overlay).
    pub peer_mac: [u8; 6],
    /// Both ends' MTU.
    pub mtu: u32,
}

fn errno(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => Some(-message.raw_code()),
        _ => None,
    }
}

/// Creates the pair, both ends down; the peer with its MAC.
pub async fn create_pair(handle: &Handle, pair: &VethPair<'_>) -> Result<(), VethError> {
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(pair.peer.to_owned())
        .mtu(pair.mtu)
        .address(pair.peer_mac.to_vec())
        .setns_by_fd(pair.peer_netns.as_raw_fd())
        .build();
    let message = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(pair.host.to_owned())
        .mtu(pair.mtu)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    match handle.link().add(message).execute().await {
        Ok(()) => Ok(()),
        Err(error) if errno(&error) == Some(libc::EEXIST) => {
            Err(VethError::Exists { host: pair.host.to_owned(), peer: pair.peer.to_owned() })
        }
        Err(error) => Err(VethError::Netlink { operation: "creating veth", subject: pair.host.to_owned(), error }),
    }
}

/// The link called `name` in the handle's namespace, if there is one.
pub async fn link_by_name(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, VethError> {
    match handle.link().get().match_name(name.to_owned()).execute().try_next().await {
        Ok(link) => Ok(link),
        Err(error) if errno(&error) == Some(libc::ENODEV) => Ok(None),
        Err(error) => Err(VethError::Netlink { operation: "looking up", subject: name.to_owned(), error }),
    }
}

/// The names of the veths in the handle's namespace that start with `prefix`.
pub async fn veth_names_with_prefix(handle: &Handle, prefix: &str) -> Result<Vec<String>, VethError> {
    let mut links = handle.link().get().execute();
    let mut names = Vec::new();
    while let Some(link) = links.try_next().await.map_err(|error| VethError::Netlink { operation: "listing links", subject: prefix.to_owned(), error })? {
        let is_veth = link.attributes.iter().any(|attribute| {
            matches!(attribute, LinkAttribute::LinkInfo(infos) if infos.iter().any(|info| matches!(info, LinkInfo::Kind(InfoKind::Veth))))
        });
        let name = link.attributes.iter().find_map(|attribute| match attribute {
            LinkAttribute::IfName(name) => Some(name.clone()),
            _ => None,
        });
        names.extend(name.filter(|name| is_veth && name.starts_with(prefix)));
    }
    Ok(names)
}

/// The MAC of a link, as the kernel reports it.
pub fn link_mac(link: &LinkMessage) -> Option<[u8; 6]> {
    link.attributes.iter().find_map(|attribute| match attribute {
        LinkAttribute::Address(bytes) => bytes.as_slice().try_into().ok(),
        _ => None,
    })
}

/// Sets a link up.
pub async fn set_up(handle: &Handle, index: u32, name: &str) -> Result<(), VethError> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|error| VethError::Netlink { operation: "setting up", subject: name.to_owned(), error })
}

/// Deletes the link `name` (a veth takes its peer with it); `false` when
/// there was none, which callers that must be idempotent treat as done.
pub async fn delete_link(handle: &Handle, name: &str) -> Result<bool, VethError> {
    let Some(link) = link_by_name(handle, name).await? else { return Ok(false) };
    match handle.link().del(link.header.index).execute().await {
        Ok(()) => Ok(true),
        // Gone meanwhile (its namespace went, or another DEL was faster).
        Err(error) if errno(&error) == Some(libc::ENODEV) => Ok(false),
        Err(error) => Err(VethError::Netlink { operation: "deleting", subject: name.to_owned(), error }),
    }
}

/// Runs `f` with a route netlink handle on a connection of its own, in
/// this thread's namespace, driven on the current tokio runtime.
pub async fn with_handle<T, F, Fut>(f: F) -> Result<T, VethError>
where
    F: FnOnce(Handle) -> Fut,
    Fut: std::future::Future<Output = Result<T, VethError>>,
{
    let (connection, handle, _) = rtnetlink::new_connection().map_err(|error| VethError::Open { what: "a netlink socket", error })?;
    let task = tokio::spawn(connection);
    let result = f(handle).await;
    task.abort();
    result
}

/// A pair with both ends in this namespace (Docker moves the container
/// end itself): the host end `host` up, the container end `container`
/// down with `container_mac`, both with `mtu`. A pair left by an earlier
/// attempt with the same host name is replaced.
pub async fn create_local_pair(host: &str, container: &str, container_mac: [u8; 6], mtu: u32) -> Result<(), VethError> {
    let here = std::fs::File::open("/proc/thread-self/ns/net").map_err(|error| VethError::Open { what: "this thread's network namespace", error })?;
    with_handle(|handle| async move {
        delete_link(&handle, host).await?;
        let pair = VethPair { host, peer: container, peer_netns: std::os::fd::AsFd::as_fd(&here), peer_mac: container_mac, mtu };
        create_pair(&handle, &pair).await?;
        let link = link_by_name(&handle, host).await?.ok_or_else(|| VethError::Exists { host: host.to_owned(), peer: container.to_owned() })?;
        set_up(&handle, link.header.index, host).await
    })
    .await
}

/// [`delete_link`] on a connection of its own (callers without a handle).
pub async fn delete_local_link(name: &str) -> Result<bool, VethError> {
    with_handle(|handle| async move { delete_link(&handle, name).await }).await
}

#[cfg(test)]
mod local_pair_tests {
    use super::*;

    /// Needs root and a network namespace of its own: creates a pair in a
    /// fresh namespace (unshare on this thread), checks both ends, deletes.
    #[test]
    fn a_local_pair_is_created_with_mtu_and_mac_and_deleted() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root (creates links in a namespace of its own)");
            return;
        }
        let result = std::thread::spawn(|| {
            // SAFETY: plain syscall; moves this thread only.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let mac = [2, 0, 0, 0, 0xdd, 1];
                create_local_pair("dkh0", "dkc0", mac, 1400).await.unwrap();
                assert_eq!(crate::netdev::mtu("dkh0").unwrap(), 1400, "host end MTU");
                assert_eq!(crate::netdev::mtu("dkc0").unwrap(), 1400, "container end MTU");
                assert_eq!(crate::netdev::mac("dkc0").unwrap(), mac, "container end MAC");
                // Again: the old pair is replaced, not an error.
                create_local_pair("dkh0", "dkc0", mac, 1400).await.unwrap();
                assert!(delete_local_link("dkh0").await.unwrap(), "expected the host end deleted");
                assert!(crate::netdev::ifindex("dkc0").is_none(), "expected the container end gone with its peer");
                assert!(!delete_local_link("dkh0").await.unwrap(), "deleting a missing link is not an error");
            });
        })
        .join();
        assert!(result.is_ok(), "the veth test thread panicked");
    }
}
