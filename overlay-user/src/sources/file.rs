//! The configuration file as a source: loaded at start, reloaded on SIGHUP
//! and whenever it changes (an inotify watch on its directory, through the
//! `notify` crate, so editors that replace the file by renaming are seen).
use std::path::{Path, PathBuf};

use notify::Watcher as _;
use tokio::sync::mpsc;

/// Watches `path` and sends `()` on `changes` (coalesced) whenever it may
/// have changed. Keep the returned watcher alive for as long as you want
/// the events.
pub fn watch(path: &Path, changes: mpsc::Sender<()>) -> notify::Result<notify::RecommendedWatcher> {
    let target = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    let name = target.file_name().map(|n| n.to_owned());
    let directory: PathBuf = target.parent().map_or_else(|| PathBuf::from("."), Path::to_owned);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if matches!(event.kind, notify::EventKind::Access(_)) {
            return;
        }
        if event.paths.iter().any(|p| p.file_name() == name.as_deref()) {
            // Full: a wake-up is already queued, which is all a level-triggered loop needs.
            let _ = changes.try_send(());
        }
    })?;
    watcher.watch(&directory, notify::RecursiveMode::NonRecursive)?;
    Ok(watcher)
}
