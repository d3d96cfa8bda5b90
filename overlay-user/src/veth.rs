//! Creating and deleting a container's veth pair over rtnetlink, for the
//! runtimes' plugins (the product does not shell out to `ip`).
//!
//! The host end stays in the agent's network namespace and becomes the
//! endpoint's port; the container end is handed to the runtime, which
//! moves it into the container (Docker: Join's `SrcName`).
use futures_util::TryStreamExt as _;
use netlink_packet_route::link::{InfoData, InfoVeth, LinkMessage};
use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVeth};

use crate::model::MacAddr;

/// Why a veth request failed.
#[derive(Debug, thiserror::Error)]
pub enum VethError {
    /// The netlink socket could not be opened.
    #[error("opening a netlink socket: {0}")]
    Socket(std::io::Error),
    /// The kernel refused or failed a request.
    #[error("{operation} {subject}: {error}")]
    Request { operation: &'static str, subject: String, error: rtnetlink::Error },
}

/// What the pair looks like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VethPair {
    /// The end that stays here (the endpoint's port), set up.
    pub host: String,
    /// The end handed to the container, left down (the runtime moves and renames it).
    pub container: String,
    /// Of both ends: the network's MTU (underlay MTU less the VXLAN overhead).
    pub mtu: u32,
    /// The container end's MAC, which the endpoint is registered with.
    pub container_mac: MacAddr,
}

/// Runs `f` with a route netlink handle on a connection of its own,
/// driven on the current tokio runtime.
async fn with_handle<T, F, Fut>(f: F) -> Result<T, VethError>
where
    F: FnOnce(rtnetlink::Handle) -> Fut,
    Fut: std::future::Future<Output = Result<T, VethError>>,
{
    let (connection, handle, _) = rtnetlink::new_connection().map_err(VethError::Socket)?;
    let task = tokio::spawn(connection);
    let result = f(handle).await;
    task.abort();
    result
}

/// Creates the pair, host end up. A pair left by an earlier attempt with
/// the same host name is replaced.
pub async fn create_pair(pair: &VethPair) -> Result<(), VethError> {
    let _ = delete_link(&pair.host).await;
    with_handle(|handle| async move {
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(pair.container.clone())
            .mtu(pair.mtu)
            .address(pair.container_mac.0.to_vec())
            .build();
        let message = LinkVeth::new(&pair.host, &pair.container).mtu(pair.mtu).up().set_info_data(InfoData::Veth(InfoVeth::Peer(peer))).build();
        handle.link().add(message).execute().await.map_err(|error| VethError::Request {
            operation: "creating the veth pair",
            subject: format!("{} / {}", pair.host, pair.container),
            error,
        })
    })
    .await
}

/// Deletes the link `name` (a veth's other end goes with it). A link that
/// does not exist is not an error: returns whether one was deleted.
pub async fn delete_link(name: &str) -> Result<bool, VethError> {
    with_handle(|handle| async move {
        let Some(index) = link_index(&handle, name).await? else { return Ok(false) };
        match handle.link().del(index).execute().await {
            Ok(()) => Ok(true),
            // Gone meanwhile (the container's namespace went and took the pair).
            Err(rtnetlink::Error::NetlinkError(message)) if message.raw_code() == -libc::ENODEV => Ok(false),
            Err(error) => Err(VethError::Request { operation: "deleting the link", subject: name.to_owned(), error }),
        }
    })
    .await
}

/// The index of the link `name`, if it exists.
async fn link_index(handle: &rtnetlink::Handle, name: &str) -> Result<Option<u32>, VethError> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(Some(LinkMessage { header, .. })) => Ok(Some(header.index)),
        Ok(None) => Ok(None),
        Err(rtnetlink::Error::NetlinkError(message)) if message.raw_code() == -libc::ENODEV => Ok(None),
        Err(error) => Err(VethError::Request { operation: "looking up the link", subject: name.to_owned(), error }),
    }
}

/// Whether the link `name` exists here (for callers without a handle).
pub async fn exists(name: &str) -> Result<bool, VethError> {
    with_handle(|handle| async move { Ok(link_index(&handle, name).await?.is_some()) }).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root and a network namespace of its own: creates a pair in a
    /// fresh namespace (unshare on this thread), checks both ends, deletes.
    #[test]
    fn a_pair_is_created_with_mtu_and_mac_and_deleted() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root (creates links in a namespace of its own)");
            return;
        }
        let result = std::thread::spawn(|| {
            // SAFETY: plain syscall; moves this thread only.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let mac: MacAddr = "02:00:00:00:dd:01".parse().unwrap();
                let pair = VethPair { host: "dkh0".into(), container: "dkc0".into(), mtu: 1400, container_mac: mac };
                create_pair(&pair).await.unwrap();
                assert_eq!(crate::netdev::mtu("dkh0").unwrap(), 1400, "host end MTU");
                assert_eq!(crate::netdev::mtu("dkc0").unwrap(), 1400, "container end MTU");
                assert_eq!(crate::netdev::mac("dkc0").unwrap(), mac.0, "container end MAC");
                // Again: the old pair is replaced, not an error.
                create_pair(&pair).await.unwrap();
                assert!(delete_link("dkh0").await.unwrap(), "expected the host end deleted");
                assert!(!exists("dkc0").await.unwrap(), "expected the container end gone with its peer");
                assert!(!delete_link("dkh0").await.unwrap(), "deleting a missing link is not an error");
            });
        })
        .join();
        assert!(result.is_ok(), "the veth test thread panicked");
    }
}
