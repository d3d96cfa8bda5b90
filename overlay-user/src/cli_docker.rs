//! `overlay run --docker-plugin [NAME]`: the flags of the Docker plugin.
use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use overlay::docker::{DEFAULT_PLUGIN_DIR, DEFAULT_PLUGIN_NAME, PluginOptions, name_problem};

#[derive(Args, Clone)]
pub struct DockerArgs {
    /// Serve Docker's network and IPAM plugin under this name
    /// (`docker network create -d NAME --ipam-driver NAME ...`); without a
    /// value, overlay-ebpf.
    #[arg(long, value_name = "NAME", num_args = 0..=1, default_missing_value = DEFAULT_PLUGIN_NAME)]
    docker_plugin: Option<String>,
    /// Where the plugin's socket goes (dockerd looks in /run/docker/plugins).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PLUGIN_DIR)]
    docker_plugin_dir: PathBuf,
}

impl DockerArgs {
    pub fn options(self) -> anyhow::Result<Option<PluginOptions>> {
        let Some(name) = self.docker_plugin else { return Ok(None) };
        if let Some(problem) = name_problem(&name) {
            bail!("--docker-plugin {name:?}: {problem}");
        }
        Ok(Some(PluginOptions { name, dir: self.docker_plugin_dir }))
    }
}
