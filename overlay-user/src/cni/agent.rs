//! The plugin's calls to the agent's local API, with each failure turned
//! into the CNI error a runtime acts on: no agent is "try again later"
//! (11), a refusal is ours (999) with the agent's sentence.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use rscni_plugin::error::Error;
use serde_json::Value;

use super::{OUR_CODE, conf::PLUGIN_TYPE, internal};
use crate::{
    api::{
        client::{self, ClientError, Method},
        views::{AllocationView, EndpointView, NetworkView, NodeView},
    },
    model::OwnerKind,
};

pub struct Agent {
    socket: PathBuf,
}

impl Agent {
    pub fn new(socket: &Path) -> Agent {
        Agent { socket: socket.to_owned() }
    }

    /// One call; `None` for 404 (callers that must be idempotent take it as done).
    fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Option<Vec<u8>>, Error> {
        match client::call_blocking(&self.socket, method, path, body) {
            Ok(answer) => Ok(Some(answer.body)),
            Err(ClientError::Refused(refusal)) if refusal.status == 404 => Ok(None),
            Err(ClientError::Refused(refusal)) => {
                Err(Error::Custom(OUR_CODE, "the overlay agent refused the request".into(), format!("{path}: {}", refusal.error)))
            }
            Err(error @ (ClientError::Connect { .. } | ClientError::Http { .. })) => Err(Error::TryAgainLater(error.to_string())),
        }
    }

    fn decode<T: serde::de::DeserializeOwned>(path: &str, body: &[u8]) -> Result<T, Error> {
        serde_json::from_slice(body).map_err(|error| internal(format!("the agent's answer to {path} is not what overlay-cni expects: {error}")))
    }

    fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<Option<T>, Error> {
        self.call(Method::GET, path, None)?.map(|body| Agent::decode(path, &body)).transpose()
    }

    pub fn node(&self) -> Result<NodeView, Error> {
        self.get("/v1/node")?.ok_or_else(|| internal("the agent has no /v1/node".into()))
    }

    /// The network called `name`; `None` when the agent has none.
    pub fn network(&self, name: &str) -> Result<Option<NetworkView>, Error> {
        let networks: Vec<NetworkView> = self.get("/v1/networks")?.unwrap_or_default();
        Ok(networks.into_iter().find(|network| network.name == name))
    }

    /// An address in `network` for `owner`: `requested`, or the agent's choice.
    pub fn allocate(&self, network: &str, requested: Option<Ipv4Addr>, owner: &str) -> Result<AllocationView, Error> {
        let path = format!("/v1/networks/{network}/addresses");
        let mut body = serde_json::json!({"owner": owner});
        if let Some(address) = requested {
            body["address"] = Value::String(address.to_string());
        }
        let answer = self.call(Method::POST, &path, Some(body))?.ok_or_else(|| {
            Error::InvalidNetworkConfig(format!("network = {network:?}: the agent at {} has no such network", self.socket.display()))
        })?;
        Agent::decode(&path, &answer)
    }

    /// Gives an address back; one not allocated (or a network gone) is done already.
    pub fn release(&self, network: &str, address: Ipv4Addr) -> Result<(), Error> {
        self.call(Method::DELETE, &format!("/v1/networks/{network}/addresses/{address}"), None).map(|_| ())
    }

    /// Every allocation of `network`; none when the network is gone.
    pub fn allocations(&self, network: &str) -> Result<Vec<AllocationView>, Error> {
        Ok(self.get(&format!("/v1/networks/{network}/addresses"))?.unwrap_or_default())
    }

    /// Registers the host end of a container's veth as an endpoint of `network`.
    pub fn add_endpoint(&self, network: &str, interface: &str, mac: &str, ipv4: Ipv4Addr, container_id: &str) -> Result<EndpointView, Error> {
        let body = serde_json::json!({
            "network": network, "interface": interface, "id": interface, "mac": mac, "ipv4": ipv4.to_string(),
            "owner": {"kind": "cni", "container_id": container_id},
        });
        let answer = self.call(Method::POST, "/v1/endpoints", Some(body))?.ok_or_else(|| internal("the agent has no /v1/endpoints".into()))?;
        Agent::decode("/v1/endpoints", &answer)
    }

    /// Removes an endpoint; `false` when there was none.
    pub fn remove_endpoint(&self, id: &str) -> Result<bool, Error> {
        Ok(self.call(Method::DELETE, &format!("/v1/endpoints/{id}"), None)?.is_some())
    }

    pub fn endpoints(&self) -> Result<Vec<EndpointView>, Error> {
        Ok(self.get("/v1/endpoints")?.unwrap_or_default())
    }

    /// This plugin's endpoints of `network` (owner kind `cni`).
    pub fn cni_endpoints(&self, network: &str) -> Result<Vec<EndpointView>, Error> {
        let mut endpoints = self.endpoints()?;
        endpoints.retain(|endpoint| endpoint.network == network && endpoint.owner.kind == OwnerKind::Cni && endpoint.interface.starts_with("ovc"));
        Ok(endpoints)
    }

    /// The network namespace the agent runs in: the host ends of veths go
    /// there, since that is where it attaches the datapath. Found from the
    /// socket's peer credentials (SO_PEERCRED: the listening process).
    pub fn namespace(&self) -> Result<PathBuf, Error> {
        let stream = std::os::unix::net::UnixStream::connect(&self.socket)
            .map_err(|error| Error::TryAgainLater(format!("cannot reach the agent's API at {}: {error}", self.socket.display())))?;
        let credentials = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
            .map_err(|error| internal(format!("reading the agent's credentials from {}: {error}", self.socket.display())))?;
        if credentials.pid() <= 0 {
            return Err(Error::InvalidNetworkConfig(format!(
                "the agent at {} runs in another PID namespace: set host_netns in the {PLUGIN_TYPE} configuration",
                self.socket.display()
            )));
        }
        Ok(PathBuf::from(format!("/proc/{}/ns/net", credentials.pid())))
    }
}
