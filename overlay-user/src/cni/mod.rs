//! The CNI plugin `overlay-cni` (CNI spec 1.1, results down to 0.3.0's
//! layout, which Podman 4 reads as 0.4.0): a container runtime runs it with
//! CNI_* variables and the network configuration on stdin; it asks the
//! node's agent, over its local API socket, for the container's address and
//! registers the host end of the container's veth as an endpoint.
//!
//! The protocol (variables, version negotiation, result layouts, the error
//! JSON on stdout) is the `rscni-plugin` crate's; what each command does is
//! here: ADD and CHECK in [`attach`], DEL and GC in [`teardown`], STATUS
//! below; as another plugin's IPAM (addresses only) in [`ipam`]; stdin is
//! decoded first in [`stdin`], to name the key of a value that does not
//! decode. Codes: 1 incompatible version, 4 bad variables, 6 undecodable
//! stdin (the key's path named), 7 bad configuration (named key and
//! value), 11 no agent (try again), 50 STATUS without an agent, 999 ours (a
//! refusal by the agent, a failed kernel call, a CHECK that found something
//! missing).
pub mod agent;
pub mod attach;
pub mod conf;
pub mod ipam;
mod netns;
pub mod stdin;
pub mod teardown;

use rscni_plugin::{
    cni::{Cni, Plugin},
    error::Error,
    types::{Args, CNIResult},
};

use self::{agent::Agent, conf::PluginConf, ipam::IpamConf, netns::Namespace};

/// The code of this plugin's own errors (the spec leaves 100 and up to plugins).
pub const OUR_CODE: u32 = 999;

pub(crate) fn internal(details: String) -> Error {
    Error::Custom(OUR_CODE, "overlay-cni failed".into(), details)
}

pub(crate) fn check_failed(details: String) -> Error {
    Error::Custom(OUR_CODE, "check failed".into(), details)
}

pub(crate) fn invalid_netns(details: String) -> Error {
    Error::InvalidNetNS(details)
}

/// Where the host ends of veths go: the configuration's `host_netns`, else
/// the agent's own namespace.
fn host_namespace(conf: &PluginConf, agent: &Agent) -> Result<Namespace, Error> {
    match &conf.host_netns {
        Some(path) => Namespace::open(path),
        None => Namespace::open(&agent.namespace()?),
    }
}

/// The plugin's commands.
#[derive(Debug, Default)]
pub struct OverlayCni {
    /// Why stdin did not decode ([`stdin::take`]): every command answers with it.
    pub undecodable: Option<Error>,
}

impl OverlayCni {
    fn decoded(&self) -> Result<(), Error> {
        self.undecodable.clone().map_or(Ok(()), Err)
    }
}

impl Cni for OverlayCni {
    fn add(&self, args: Args) -> Result<CNIResult, Error> {
        self.decoded()?;
        match IpamConf::delegated(args.config())? {
            Some(ipam) => ipam::add(&ipam, &args),
            None => attach::add(&args),
        }
    }

    fn del(&self, args: Args) -> Result<(), Error> {
        self.decoded()?;
        match IpamConf::delegated(args.config())? {
            Some(ipam) => ipam::del(&ipam, &args),
            None => teardown::del(&args),
        }
    }

    fn check(&self, args: Args) -> Result<(), Error> {
        self.decoded()?;
        match IpamConf::delegated(args.config())? {
            Some(ipam) => ipam::check(&ipam, &args),
            None => attach::check(&args),
        }
    }

    /// Ready when the agent answers and has the network.
    fn status(&self, args: Args) -> Result<(), Error> {
        self.decoded()?;
        let (socket, network) = match IpamConf::delegated(args.config())? {
            Some(ipam) => (ipam.agent_socket, ipam.network),
            None => {
                let conf = PluginConf::parse(args.config())?;
                (conf.agent_socket, conf.network)
            }
        };
        let agent = Agent::new(&socket);
        match agent.network(&network) {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(Error::PluginNotAvailable(format!("the agent at {} has no network {network:?}", socket.display()))),
            Err(Error::TryAgainLater(details)) => Err(Error::PluginNotAvailable(details)),
            Err(other) => Err(other),
        }
    }

    fn gc(&self, args: Args) -> Result<(), Error> {
        self.decoded()?;
        match IpamConf::delegated(args.config())? {
            Some(ipam) => ipam::gc(&ipam, &args),
            None => teardown::gc(&args),
        }
    }
}

/// Runs one invocation; the process's exit code (the error JSON is on stdout already).
pub fn run() -> std::process::ExitCode {
    let plugin = Plugin::default().msg(concat!(
        "overlay-cni ",
        env!("CARGO_PKG_VERSION"),
        ": attaches containers to overlay networks through the node's overlay agent"
    ));
    let undecodable = match stdin::take() {
        Ok(undecodable) => undecodable,
        // Stdin could not be handed on: rscni would read nothing, so answer here as it would.
        Err(error) => {
            let answer = rscni_plugin::types::ErrorResult::new(rscni_plugin::version::SpecVersion::CURRENT, &error);
            println!("{}", serde_json::to_string(&answer).unwrap_or_default());
            return std::process::ExitCode::FAILURE;
        }
    };
    match plugin.run(&OverlayCni { undecodable }) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(_) => std::process::ExitCode::FAILURE,
    }
}
