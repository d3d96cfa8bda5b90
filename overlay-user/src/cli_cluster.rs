//! The command line's cluster side: the etcd flags of `overlay run` and
//! `overlay cluster status`, and `overlay cluster status` itself.
use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};
use clap::Args;
use overlay::registry::{Credentials, RegistrySettings, TlsFiles};

/// How to reach the registry in etcd.
#[derive(Args, Clone, Debug)]
pub struct EtcdArgs {
    /// Cluster mode: etcd client URLs (http://HOST:PORT or https://, comma separated).
    #[arg(long, value_name = "URL[,URL...]", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// The registry's key prefix in etcd.
    #[arg(long, value_name = "PREFIX", default_value = overlay::registry::DEFAULT_PREFIX)]
    pub etcd_prefix: String,
    /// TTL of this node's lease in seconds: how long the others keep it after it stops answering.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub etcd_lease_ttl: u64,
    /// Seconds an IPAM block of a node that is gone stays reserved before another node may reclaim its free addresses.
    #[arg(long, value_name = "SECS", default_value_t = overlay::registry::client::DEFAULT_BLOCK_RECLAIM_GRACE.as_secs())]
    pub etcd_block_reclaim_grace: u64,
    /// CA certificate (PEM) that signed etcd's certificate (turns TLS on).
    #[arg(long, value_name = "PATH")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's client certificate authentication.
    #[arg(long, value_name = "PATH", requires = "etcd_ca", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// Key (PEM) of the client certificate.
    #[arg(long, value_name = "PATH", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// etcd user; the password is read from the file named by --etcd-password-file (never from the command line).
    #[arg(long, value_name = "NAME", requires = "etcd_password_file")]
    pub etcd_user: Option<String>,
    /// File holding the etcd user's password (first line).
    #[arg(long, value_name = "PATH", requires = "etcd_user")]
    pub etcd_password_file: Option<PathBuf>,
}

impl EtcdArgs {
    /// The registry settings, or none without --etcd.
    pub fn settings(&self) -> anyhow::Result<Option<RegistrySettings>> {
        if self.etcd.is_empty() {
            return Ok(None);
        }
        if !(1..=86_400).contains(&self.etcd_lease_ttl) {
            bail!("--etcd-lease-ttl {}: must be 1 to 86400 seconds", self.etcd_lease_ttl);
        }
        let mut settings = RegistrySettings::new(self.etcd.iter().cloned());
        settings.prefix = self.etcd_prefix.clone();
        settings.lease_ttl = Duration::from_secs(self.etcd_lease_ttl);
        if self.etcd_block_reclaim_grace < self.etcd_lease_ttl {
            bail!("--etcd-block-reclaim-grace {}: must be at least the lease TTL ({} s)", self.etcd_block_reclaim_grace, self.etcd_lease_ttl);
        }
        settings.block_reclaim_grace = Duration::from_secs(self.etcd_block_reclaim_grace);
        settings.tls = self.etcd_ca.clone().map(|ca| TlsFiles { ca, client_cert: self.etcd_cert.clone(), client_key: self.etcd_key.clone() });
        if let (Some(user), Some(file)) = (&self.etcd_user, &self.etcd_password_file) {
            let text = std::fs::read_to_string(file).with_context(|| format!("--etcd-password-file {}: reading it", file.display()))?;
            let password = text.lines().next().unwrap_or_default().to_owned();
            settings.credentials = Some(Credentials { user: user.clone(), password });
        }
        Ok(Some(settings))
    }
}

/// `overlay cluster ...`.
#[derive(clap::Subcommand)]
pub enum ClusterCommand {
    /// The registry's view: nodes and their lease age, networks with endpoint
    /// and address counts, conflicts.
    Status {
        #[command(flatten)]
        etcd: EtcdArgs,
    },
}

pub fn cluster(command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Status { etcd } => status(&etcd),
    }
}

fn status(etcd: &EtcdArgs) -> anyhow::Result<()> {
    let settings = etcd.settings()?.context("--etcd URL is required")?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")?;
    let status = runtime.block_on(async {
        let registry = overlay::registry::Registry::connect(settings).await?;
        overlay::registry::ClusterStatus::read(&registry).await
    });
    let status = status.context("reading the registry")?;
    println!("registry at revision {}: {} node(s), {} network(s)", status.revision, status.nodes.len(), status.networks.len());
    for node in &status.nodes {
        let age = node.lease_age.map_or("lease gone".to_owned(), |age| format!("lease renewed {age} s ago (TTL {} s)", node.lease_ttl));
        println!(
            "  node {}: VTEP {}:{}, agent {}, {} endpoint(s), {age}",
            node.name, node.vtep, node.vxlan_port, node.agent_version, node.endpoints
        );
    }
    for network in &status.networks {
        println!(
            "  network {} (VNI {}, {}): {} endpoint(s), {} address(es) allocated in {} block(s){}",
            network.name,
            network.vni,
            network.subnet,
            network.endpoints,
            network.allocated,
            network.blocks,
            if network.blocks_of_absent_nodes > 0 { format!(", {} block(s) of absent nodes", network.blocks_of_absent_nodes) } else { String::new() }
        );
    }
    for problem in &status.problems {
        println!("  conflict: {problem}");
    }
    Ok(())
}
