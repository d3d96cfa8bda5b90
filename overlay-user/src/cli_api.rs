//! `overlay network ...` and `overlay endpoint ...`: front ends of the
//! running agent's local API (they parse and render; the agent decides).
use std::{net::IpAddr, path::PathBuf};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use hyper::Method;
use overlay::{
    api::{
        client::{self, ClientError},
        views::{EndpointView, NetworkView},
    },
    model::OwnerKind,
    status::DEFAULT_RUN_DIR,
};
use serde_json::{Map, Value, json};

/// Which agent to talk to.
#[derive(Args, Clone)]
pub struct ApiPlace {
    /// The node whose agent to ask (its socket is <run-dir>/<node>.sock).
    #[arg(long, global = true)]
    node: Option<String>,
    /// The agent's API socket (instead of --node).
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Directory of the agents' status files and sockets.
    #[arg(long, global = true, default_value = DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
}

impl ApiPlace {
    fn socket(&self) -> anyhow::Result<PathBuf> {
        match (&self.socket, &self.node) {
            (Some(socket), _) => Ok(socket.clone()),
            (None, Some(node)) => Ok(overlay::agent::default_api_socket(&self.run_dir, node)),
            (None, None) => bail!("say which agent: --node NAME (or --socket PATH)"),
        }
    }
}

#[derive(Subcommand)]
pub enum NetworkCommand {
    /// Create a network (one VNI) on this node.
    Create {
        name: String,
        #[arg(long)]
        vni: u32,
        /// IPv4 subnet of its endpoints (e.g. 10.0.9.0/24).
        #[arg(long)]
        subnet: Option<String>,
        /// IPv6 subnet of its endpoints (e.g. fd00:9::/64).
        #[arg(long)]
        subnet6: Option<String>,
        /// MTU for its containers (default: the underlay's less 50).
        #[arg(long)]
        mtu: Option<u32>,
        /// Most copies of one flooded frame.
        #[arg(long)]
        flood_limit: Option<u32>,
        /// An option KEY=VALUE (repeatable).
        #[arg(long = "opt", value_name = "KEY=VALUE")]
        options: Vec<String>,
    },
    /// List networks (the file's and the API's).
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove a network created through the API.
    Rm { name: String },
}

#[derive(Subcommand)]
pub enum EndpointCommand {
    /// Add a local endpoint: a host-side interface (veth) in a network.
    Add {
        #[arg(long)]
        network: String,
        /// The host-side interface (it may be created later: the endpoint is pending until then).
        #[arg(long)]
        interface: String,
        /// Its id (default: the interface's name).
        #[arg(long)]
        id: Option<String>,
        /// Its MAC (default: a random locally administered one).
        #[arg(long)]
        mac: Option<String>,
        #[arg(long)]
        ip: Option<String>,
        #[arg(long)]
        ipv6: Option<String>,
    },
    /// List local endpoints with their state.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove an endpoint added through the API.
    Rm { id: String },
}

fn call(place: &ApiPlace, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Vec<u8>> {
    let socket = place.socket()?;
    match client::call_blocking(&socket, method, path, body) {
        Ok(answer) => Ok(answer.body),
        Err(ClientError::Refused(refusal)) => bail!("the agent refused: {}", refusal.error),
        Err(error) => Err(error.into()),
    }
}

pub fn network(command: NetworkCommand, place: &ApiPlace) -> anyhow::Result<()> {
    match command {
        NetworkCommand::Create { name, vni, subnet, subnet6, mtu, flood_limit, options } => {
            let mut body = Map::new();
            body.insert("name".into(), json!(name));
            body.insert("vni".into(), json!(vni));
            for (key, value) in [("subnet", subnet.map(Value::from)), ("subnet6", subnet6.map(Value::from)), ("mtu", mtu.map(Value::from)), ("flood_limit", flood_limit.map(Value::from))] {
                if let Some(value) = value {
                    body.insert(key.into(), value);
                }
            }
            let mut opts = Map::new();
            for option in options {
                let Some((key, value)) = option.split_once('=') else { bail!("--opt {option:?}: expected KEY=VALUE") };
                opts.insert(key.into(), json!(value));
            }
            if !opts.is_empty() {
                body.insert("options".into(), Value::Object(opts));
            }
            let answer = call(place, Method::POST, "/v1/networks", Some(Value::Object(body)))?;
            let network: NetworkView = serde_json::from_slice(&answer).context("reading the agent's answer")?;
            println!("network {} created: VNI {}{}", network.name, network.vni, network.mtu.map_or(String::new(), |m| format!(", MTU {m}")));
        }
        NetworkCommand::Ls { json } => {
            let answer = call(place, Method::GET, "/v1/networks", None)?;
            if json {
                println!("{}", String::from_utf8_lossy(&answer));
                return Ok(());
            }
            let networks: Vec<NetworkView> = serde_json::from_slice(&answer).context("reading the agent's answer")?;
            println!("{:<20} {:>8}  {:<18} {:<22} {:>5}  {:<6} SOURCE", "NAME", "VNI", "SUBNET", "SUBNET6", "MTU", "FLOOD");
            for n in networks {
                let show = |v: Option<String>| v.unwrap_or_else(|| "-".into());
                println!(
                    "{:<20} {:>8}  {:<18} {:<22} {:>5}  {:<6} {} {}",
                    n.name,
                    n.vni,
                    show(n.subnet.map(|s| s.to_string())),
                    show(n.subnet6.map(|s| s.to_string())),
                    show(n.mtu.map(|m| m.to_string())),
                    n.flood_limit,
                    n.source,
                    n.key
                );
            }
        }
        NetworkCommand::Rm { name } => {
            call(place, Method::DELETE, &format!("/v1/networks/{name}"), None)?;
            println!("network {name} removed");
        }
    }
    Ok(())
}

pub fn endpoint(command: EndpointCommand, place: &ApiPlace) -> anyhow::Result<()> {
    match command {
        EndpointCommand::Add { network, interface, id, mac, ip, ipv6 } => {
            let mut body = Map::new();
            body.insert("network".into(), json!(network));
            body.insert("interface".into(), json!(interface));
            for (key, value) in [("id", id), ("mac", mac), ("ipv4", ip), ("ipv6", ipv6)] {
                if let Some(value) = value {
                    body.insert(key.into(), json!(value));
                }
            }
            let answer = call(place, Method::POST, "/v1/endpoints", Some(Value::Object(body)))?;
            let endpoint: EndpointView = serde_json::from_slice(&answer).context("reading the agent's answer")?;
            println!("{}", describe(&endpoint));
        }
        EndpointCommand::Ls { json } => {
            let answer = call(place, Method::GET, "/v1/endpoints", None)?;
            if json {
                println!("{}", String::from_utf8_lossy(&answer));
                return Ok(());
            }
            let endpoints: Vec<EndpointView> = serde_json::from_slice(&answer).context("reading the agent's answer")?;
            for endpoint in endpoints {
                println!("{}", describe(&endpoint));
            }
        }
        EndpointCommand::Rm { id } => {
            call(place, Method::DELETE, &format!("/v1/endpoints/{id}"), None)?;
            println!("endpoint {id} removed");
        }
    }
    Ok(())
}

fn describe(e: &EndpointView) -> String {
    let addresses: Vec<String> = e.ipv4.map(IpAddr::V4).into_iter().chain(e.ipv6.map(IpAddr::V6)).map(|a| a.to_string()).collect();
    let state = if e.reason.is_empty() { e.state.clone() } else { format!("{} ({})", e.state, e.reason) };
    // Who asked for it: the file, an API client, Docker (which names the
    // endpoint, not the container, to a plugin) or a CNI runtime.
    let owner = match (&e.owner.container_id, e.owner.kind) {
        (Some(id), OwnerKind::Docker) => format!("docker endpoint {}", id.chars().take(12).collect::<String>()),
        (Some(id), kind) => format!("{kind} container {}", id.chars().take(12).collect::<String>()),
        (None, kind) => kind.to_string(),
    };
    format!(
        "endpoint {} [{}] owner {owner} network {} (VNI {}) on {} MAC {} {}: {state}",
        e.id,
        e.source,
        e.network,
        e.vni.map_or("?".into(), |v| v.to_string()),
        e.interface,
        e.mac,
        addresses.join(" ")
    )
}
