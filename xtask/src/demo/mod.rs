//! `cargo xtask demo`: by default the Docker workflow in cluster mode
//! ([`docker`]); `--static` runs the static-file lab ([`files`]).
mod docker;
mod files;

use anyhow::bail;

use crate::{build, is_root, setup};

pub fn demo(static_files: bool) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the demo creates network namespaces, loads BPF programs and starts daemons: run it as root");
    }
    setup::ensure_lab_tools()?;
    let overlay_bin = build::build()?;
    if static_files { files::demo(&overlay_bin) } else { docker::demo(&overlay_bin) }
}
