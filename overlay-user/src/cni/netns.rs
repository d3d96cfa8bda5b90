//! Work inside another network namespace: the container's (CNI_NETNS) and
//! the host's where the agent runs (which need not be the runtime's: a
//! runtime may call plugins from its own namespace).
//!
//! setns(CLONE_NEWNET) moves only the calling thread, and a netlink or
//! ioctl socket belongs to the namespace it was created in; so each piece of
//! work runs on a thread of its own that enters the namespace first and
//! opens its sockets there, and the thread ends with it.
use std::{fs::File, future::Future, os::fd::AsFd as _, path::Path};

use nix::sched::{CloneFlags, setns};
use rscni_plugin::error::Error;

use super::{internal, invalid_netns};

/// A network namespace, opened.
pub struct Namespace {
    pub file: File,
    /// How it was named, for messages.
    pub label: String,
}

impl Namespace {
    /// Opens a namespace file (`/run/netns/NAME`, `/proc/PID/ns/net`).
    pub fn open(path: &Path) -> Result<Namespace, Error> {
        let file = File::open(path).map_err(|error| invalid_netns(format!("opening network namespace {}: {error}", path.display())))?;
        Ok(Namespace { file, label: path.display().to_string() })
    }

    /// Runs `work` with a netlink handle inside this namespace, on a thread
    /// that has entered it (ioctl sockets `work` opens are in it too).
    pub fn run<T, F, Fut>(&self, work: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(rtnetlink::Handle) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, Error>>,
    {
        let file = self.file.try_clone().map_err(|error| internal(format!("duplicating the namespace fd of {}: {error}", self.label)))?;
        let label = self.label.clone();
        let thread = std::thread::spawn(move || -> Result<T, Error> {
            setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|error| invalid_netns(format!("entering network namespace {label}: {error}")))?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|error| internal(format!("starting a runtime: {error}")))?;
            runtime.block_on(async move {
                let (connection, handle, _) =
                    rtnetlink::new_connection().map_err(|error| internal(format!("opening a netlink socket in {label}: {error}")))?;
                tokio::spawn(connection);
                work(handle).await
            })
        });
        thread.join().map_err(|_| internal(format!("the thread working in {} panicked", self.label)))?
    }
}
