//! Following the cluster: read the whole prefix at one revision, then watch
//! from the next revision and apply each event to the store, publishing a
//! new [`ClusterSnapshot`] after each batch.
//!
//! Consumers get a `tokio::sync::watch` receiver: it always holds the latest
//! snapshot and wakes them on change, which is all a level-triggered
//! reconciler needs; a consumer that is slow skips intermediate snapshots,
//! never the end state.
//!
//! Recovery:
//! - the watch's start revision was compacted (etcd cancels the watch with
//!   `compact_revision` set): read everything again, then watch again;
//! - etcd unreachable (an error or the stream's end): keep the last snapshot
//!   published, retry with backoff, and on success read everything again
//!   (events may have been missed; etcd may even have restarted with other
//!   data, which a watch from the old revision would not show).
use std::{sync::Arc, time::Duration};

use etcd_client::{EventType, WatchOptions};
use tokio::{sync::watch, task::JoinHandle};

use super::{
    client::{Backoff, Registry},
    problem::RegistryError,
    snapshot::{ClusterSnapshot, KeyValue, RegistryStore},
};

/// How the watcher is doing (for status and tests).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchStatus {
    /// The last read or watch answered; false while retrying.
    pub connected: bool,
    /// Full reads done (the first one included).
    pub full_reads: u64,
    /// Full reads caused by a compacted watch revision.
    pub compactions_recovered: u64,
    /// Watches that failed for lack of etcd.
    pub disconnects: u64,
    /// The last error seen, if any.
    pub last_error: Option<String>,
}

/// A running watcher. Dropping it stops the task.
pub struct ClusterWatch {
    snapshots: watch::Receiver<Arc<ClusterSnapshot>>,
    status: watch::Receiver<WatchStatus>,
    task: JoinHandle<()>,
}

impl ClusterWatch {
    /// Starts from a full read.
    pub fn start(registry: Registry) -> ClusterWatch {
        Self::spawn(registry, None)
    }

    /// Resumes from a store read earlier (an agent's saved state): watches
    /// from its revision + 1 without reading first. If that revision was
    /// compacted meanwhile, the watcher falls back to a full read.
    pub fn resume(registry: Registry, store: RegistryStore) -> ClusterWatch {
        Self::spawn(registry, Some(store))
    }

    fn spawn(registry: Registry, store: Option<RegistryStore>) -> ClusterWatch {
        let initial = store.as_ref().map(RegistryStore::snapshot).unwrap_or_default();
        let (snapshot_sender, snapshots) = watch::channel(Arc::new(initial));
        let (status_sender, status) = watch::channel(WatchStatus::default());
        let task = tokio::spawn(run(registry, store, snapshot_sender, status_sender));
        ClusterWatch { snapshots, status, task }
    }

    /// The latest snapshot and its change notifications.
    pub fn snapshots(&self) -> watch::Receiver<Arc<ClusterSnapshot>> {
        self.snapshots.clone()
    }

    pub fn latest(&self) -> Arc<ClusterSnapshot> {
        self.snapshots.borrow().clone()
    }

    pub fn status(&self) -> watch::Receiver<WatchStatus> {
        self.status.clone()
    }
}

impl Drop for ClusterWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why following the watch stopped.
enum WatchEnd {
    /// The start revision is gone; a full read is needed.
    Compacted(i64),
    /// etcd failed or went away.
    Failed(RegistryError),
}

async fn run(
    registry: Registry,
    mut resumed: Option<RegistryStore>,
    snapshots: watch::Sender<Arc<ClusterSnapshot>>,
    status: watch::Sender<WatchStatus>,
) {
    let mut backoff = Backoff::new(Duration::from_secs(5));
    loop {
        let mut store = match resumed.take() {
            Some(store) => store,
            None => match registry.read_store().await {
                Ok(store) => {
                    if status.borrow().last_error.is_some() && !status.borrow().connected {
                        log::info!("registry: etcd answers again; read revision {}", store.revision());
                    }
                    status.send_modify(|status| {
                        status.full_reads += 1;
                        status.connected = true;
                    });
                    snapshots.send_replace(Arc::new(store.snapshot()));
                    backoff.reset();
                    store
                }
                Err(error) => {
                    failed(&status, &error);
                    backoff.wait().await;
                    continue;
                }
            },
        };
        match follow(&registry, &mut store, &snapshots, &status).await {
            WatchEnd::Compacted(compact_revision) => {
                log::info!(
                    "registry: watch revision {} was compacted (oldest kept {compact_revision}); reading everything again",
                    store.revision() + 1
                );
                status.send_modify(|status| status.compactions_recovered += 1);
            }
            WatchEnd::Failed(error) => {
                failed(&status, &error);
                status.send_modify(|status| status.disconnects += 1);
                backoff.wait().await;
            }
        }
    }
}

/// Records a failure; logs it when it is new (not again at every retry
/// while etcd stays down).
fn failed(status: &watch::Sender<WatchStatus>, error: &RegistryError) {
    let error = error.to_string();
    let repeated = { let seen = status.borrow(); !seen.connected && seen.last_error.as_ref() == Some(&error) };
    if repeated {
        log::debug!("registry: {error}; still retrying");
    } else {
        log::warn!("registry: {error}; keeping the last snapshot and retrying with backoff");
    }
    status.send_modify(|status| {
        status.connected = false;
        status.last_error = Some(error);
    });
}

/// Applies the watch's events to `store` until the watch ends.
async fn follow(
    registry: &Registry,
    store: &mut RegistryStore,
    snapshots: &watch::Sender<Arc<ClusterSnapshot>>,
    status: &watch::Sender<WatchStatus>,
) -> WatchEnd {
    let options = WatchOptions::new().with_prefix().with_start_revision(store.revision() + 1).with_progress_notify();
    let mut client = registry.etcd();
    let mut stream = match registry.timed(client.watch(registry.layout().root(), Some(options))).await {
        Ok(stream) => stream,
        Err(error) => return WatchEnd::Failed(error),
    };
    loop {
        let response = match stream.message().await {
            Ok(Some(response)) => response,
            Ok(None) => return WatchEnd::Failed(RegistryError::Etcd(etcd_client::Error::WatchError("the watch stream ended".into()))),
            Err(error) => return WatchEnd::Failed(error.into()),
        };
        if response.canceled() {
            if response.compact_revision() > 0 {
                return WatchEnd::Compacted(response.compact_revision());
            }
            let reason = format!("etcd cancelled the watch: {}", response.cancel_reason());
            return WatchEnd::Failed(RegistryError::Etcd(etcd_client::Error::WatchError(reason)));
        }
        if response.created() {
            status.send_if_modified(|status| !std::mem::replace(&mut status.connected, true));
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let Ok(key) = kv.key_str() else { continue };
            match event.event_type() {
                EventType::Put => {
                    store.put(KeyValue { key, value: kv.value(), create_revision: kv.create_revision(), lease: kv.lease() })
                }
                EventType::Delete => store.delete(key),
            }
            store.set_revision(kv.mod_revision());
        }
        if !response.events().is_empty() {
            snapshots.send_replace(Arc::new(store.snapshot()));
        } else if !response.created()
            && let Some(header) = response.header()
        {
            // A progress notification: nothing changed up to this revision.
            // (Not the creation's header: events older than it may follow.)
            store.set_revision(header.revision());
        }
    }
}
