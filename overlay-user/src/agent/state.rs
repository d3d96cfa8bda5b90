//! The agent's state: each source's part, the reconciler, and the changes
//! a source may ask for. Every change is validated against the whole
//! model, applied through the reconciler and only then kept; a refused
//! one changes nothing.
use std::path::{Path, PathBuf};

use crate::{
    config::{Config, ConfigError},
    model::{Fragment, Model, Origin, Problem, SourceKind},
    reconciler::{EndpointState, Outcome, ReconcileError, Reconciler},
    sources::{
        Parts,
        api_store::{self, ApiEndpoint, ApiNetwork, ApiState},
    },
};

/// Why a change was not made. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The change would make the model invalid.
    #[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
    Refused(Vec<Problem>),
    /// The item does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The item exists but this source may not change it, or others depend on it.
    #[error("{0}")]
    Conflict(String),
    /// The kernel refused it (rolled back).
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
    /// The cluster registry refused it (or could not be reached for a
    /// change that must go through it).
    #[error("cluster registry: {0}")]
    Registry(#[from] crate::registry::RegistryError),
    /// The API's state could not be saved (the change was rolled back).
    #[error("saving the API state to {path}: {error}")]
    Persist { path: PathBuf, error: std::io::Error },
}

pub struct AgentState {
    pub config_path: PathBuf,
    pub config: Config,
    pub api: ApiState,
    pub api_path: PathBuf,
    pub reconciler: Reconciler,
    /// The registry's part (cluster mode), less its items that conflict
    /// with the local sources'.
    pub registry: Fragment,
    /// The link to the registry in cluster mode.
    pub cluster: Option<super::cluster::Cluster>,
}

impl AgentState {
    /// The desired model (see [`Parts::model`]).
    pub fn model(&self) -> Model {
        self.parts(&self.config.fragment(), &self.api.fragment()).model(self.config.node_settings())
    }

    /// The sources' parts with `file` and `api` as the file's and the API's
    /// (as they are, or as a change would make them) and the registry's as it is.
    pub(super) fn parts<'a>(&'a self, file: &'a Fragment, api: &'a Fragment) -> Parts<'a> {
        Parts { file, api, registry: &self.registry }
    }

    pub async fn reconcile(&mut self) -> Result<Outcome, ReconcileError> {
        let model = self.model();
        self.reconciler.reconcile(&model).await
    }

    /// Reads the file anew and applies it. A bad file, one that conflicts
    /// with the API's items, or one the kernel refuses changes nothing.
    pub async fn reload_file(&mut self) -> Result<Outcome, ReloadError> {
        let config = Config::load(&self.config_path)?;
        if config.node.name != self.config.node.name {
            return Err(ReloadError::Rename { from: self.config.node.name.clone(), to: config.node.name });
        }
        // The file's claims come last: a conflict with the API is the file's problem.
        let (model, problems) = self.parts(&config.fragment(), &self.api.fragment()).candidate(config.node_settings(), SourceKind::File);
        if !problems.is_empty() {
            return Err(ConfigError::Invalid { path: self.config_path.clone(), problems }.into());
        }
        let outcome = self.reconciler.reconcile(&model).await?;
        self.config = config;
        Ok(outcome)
    }

    /// Adds a network (the API's).
    pub async fn add_network(&mut self, network: ApiNetwork) -> Result<Outcome, ChangeError> {
        if self.cluster.is_some() {
            return self.create_registry_network(network).await;
        }
        let mut api = self.api.clone();
        api.networks.push(network);
        self.change_api(api).await
    }

    /// Removes an API network that no endpoint uses.
    pub async fn remove_network(&mut self, name: &str) -> Result<Outcome, ChangeError> {
        if self.api.network(name).is_none() {
            let model = self.model();
            return Err(match model.networks.iter().find(|n| n.name == name) {
                Some(network) => ChangeError::Conflict(format!(
                    "network {name} comes from the {} ({}); only networks created through the API can be removed here",
                    network.origin.source, network.origin.key
                )),
                None => ChangeError::NotFound(format!("no network named {name}")),
            });
        }
        let users: Vec<String> = self.api.endpoints.iter().filter(|e| e.network == name).map(|e| e.id.clone()).collect();
        if !users.is_empty() {
            return Err(ChangeError::Conflict(format!("network {name} still has endpoint(s) {}: remove them first", users.join(", "))));
        }
        let mut api = self.api.clone();
        api.networks.retain(|n| n.name != name);
        self.change_api(api).await
    }

    /// Adds a local endpoint (the API's). In cluster mode it is registered
    /// in etcd first (see [`super::changes`] for the same without holding
    /// the agent's lock across the request).
    pub async fn add_endpoint(&mut self, endpoint: ApiEndpoint) -> Result<Outcome, ChangeError> {
        let origin = endpoint.origin();
        let api = self.with_endpoint(endpoint)?;
        let registered = match self.endpoint_claim(&api, &origin) {
            Some(claim) => claim.register().await?,
            None => None,
        };
        let outcome = self.change_api(api).await;
        if let (Err(_), Some(registered)) = (&outcome, registered) {
            registered.undo().await;
        }
        outcome
    }

    /// The API's state with `endpoint` added, unless its id is taken.
    pub(super) fn with_endpoint(&self, endpoint: ApiEndpoint) -> Result<ApiState, ChangeError> {
        if let Some(existing) = self.api.endpoint(&endpoint.id) {
            return Err(ChangeError::Conflict(format!(
                "endpoint id {} exists already (interface {}, MAC {}); remove it first or choose another id",
                existing.id, existing.interface, existing.mac
            )));
        }
        let mut api = self.api.clone();
        api.endpoints.push(endpoint);
        Ok(api)
    }

    /// Removes an API endpoint (and, in cluster mode, its registry record).
    pub async fn remove_endpoint(&mut self, id: &str) -> Result<Outcome, ChangeError> {
        let (outcome, registered) = self.remove_endpoint_here(id).await?;
        if let Some(registered) = registered {
            registered.undo().await;
        }
        Ok(outcome)
    }

    /// Removes an API endpoint here; returns what to take out of the registry.
    pub(super) async fn remove_endpoint_here(&mut self, id: &str) -> Result<(Outcome, Option<super::cluster::Registered>), ChangeError> {
        if self.api.endpoint(id).is_none() {
            return Err(ChangeError::NotFound(format!("no endpoint with id {id}")));
        }
        let registered = self.endpoint_registration(id);
        let mut api = self.api.clone();
        api.endpoints.retain(|e| e.id != id);
        let outcome = self.change_api(api).await?;
        Ok((outcome, registered))
    }

    /// The state of the endpoint from `origin`, after the last reconciliation.
    pub fn endpoint_state(&self, origin: &Origin) -> Option<&EndpointState> {
        self.reconciler.endpoint_states().get(origin)
    }

    /// Saves and keeps `api`, a change that does not touch the model (address allocations).
    pub(super) fn save_api(&mut self, api: ApiState) -> Result<(), ChangeError> {
        api_store::save(&self.api_path, &api).map_err(|error| ChangeError::Persist { path: self.api_path.clone(), error })?;
        self.api = api;
        Ok(())
    }

    /// Validates `api` as the API's new part, applies it, then keeps and saves it.
    pub(super) async fn change_api(&mut self, api: ApiState) -> Result<Outcome, ChangeError> {
        let (model, problems) = self.parts(&self.config.fragment(), &api.fragment()).candidate(self.config.node_settings(), SourceKind::Api);
        if !problems.is_empty() {
            return Err(ChangeError::Refused(problems));
        }
        let outcome = self.reconciler.reconcile(&model).await?;
        if let Err(error) = api_store::save(&self.api_path, &api) {
            // Back to what was applied and saved before.
            if let Err(undo) = self.reconcile().await {
                log::error!("restoring the state before an unsaved API change: {undo}");
            }
            return Err(ChangeError::Persist { path: self.api_path.clone(), error });
        }
        self.api = api;
        Ok(outcome)
    }
}

/// Why a reload of the file changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("node.name changed from {from:?} to {to:?}: a running agent cannot rename its node")]
    Rename { from: String, to: String },
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
}

/// Where the agent of `node` keeps its API state in `run_dir`.
pub fn api_state_path(run_dir: &Path, node: &str) -> PathBuf {
    api_store::state_path(run_dir, node)
}
