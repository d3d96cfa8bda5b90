//! veth pairs for containers, over rtnetlink: one end stays in the
//! namespace of the netlink handle (the host's, where the agent attaches
//! the datapath), the other is created straight inside the container's
//! namespace under the name the runtime asked for (no rename, no move: a
//! name taken in either namespace fails the creation and leaves nothing).
use std::os::fd::{AsRawFd, BorrowedFd};

use futures_util::TryStreamExt as _;
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage};
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
