//! Files only root may read (they name the node's interfaces, peers,
//! containers and API socket): the status file, the API's state.
use std::{io, path::Path};

/// Writes `value` as JSON to `path` atomically (a temporary file, synced,
/// then renamed), mode 0600, creating its directory mode 0700.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> io::Result<()> {
    use std::{io::Write as _, os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _}};
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    let temporary = path.with_extension("json.tmp");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&temporary)?;
    file.write_all(&serde_json::to_vec_pretty(value).map_err(io::Error::other)?)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}
