//! The one writer of kernel state. Level-triggered: whatever woke it (a
//! file change, an API call, a new interface, a timer), it takes the whole
//! desired [`Model`], validates it, resolves it item by item against this
//! host, plans the maps, applies the difference, attaches what is new,
//! keeps the peers' next hops resolved and reports each item's state. A
//! missed or repeated wake-up costs nothing.
mod neighbours;
mod resolve;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use neighbours::NeighbourSync;
pub use resolve::{Resolved, ResolvedEndpoint, ResolvedPeer, ResolvedRemote};
use serde::Serialize;

use crate::{
    datapath::{ApplyReport, AttachMode, AttachPlan, Datapath, DatapathError, DecapHook, Interface},
    model::{Model, Origin, Problem, validate},
    slots::SlotsFull,
    state::MapState,
};

/// Why a model was not applied. Nothing changed in the kernel.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The model has problems (the sources refuse such changes first; this
    /// is the last line).
    #[error("the desired state has {} problem(s): {}", .0.len(), .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<Problem>),
    /// The underlay device does not exist.
    #[error("underlay device {0} does not exist in this network namespace")]
    NoUnderlay(String),
    /// More VNIs or peers than counter slots.
    #[error(transparent)]
    Slots(#[from] SlotsFull),
    /// Writing the maps failed; they were rolled back.
    #[error("changing the maps: {0}")]
    Maps(DatapathError),
    /// Attaching to a port failed; maps and attachments were rolled back.
    #[error("attaching: {0}")]
    Attach(DatapathError),
}

/// Where one local endpoint stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "lowercase")]
pub enum EndpointState {
    /// In the maps, its port attached.
    Applied,
    /// Waiting, with why (its interface does not exist yet).
    Pending(String),
}

/// What one reconciliation did.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub maps: ApplyReport,
    pub hook: DecapHook,
    /// Managed neighbour entries added and removed.
    pub neighbours: (usize, usize),
}

/// The reconciler and the datapath it owns.
pub struct Reconciler {
    datapath: Datapath,
    mode: AttachMode,
    hook: Option<DecapHook>,
    applied: Option<Resolved>,
    neighbours: NeighbourSync,
    states: BTreeMap<Origin, EndpointState>,
}

impl Reconciler {
    pub fn new(datapath: Datapath, mode: AttachMode) -> Reconciler {
        Reconciler { datapath, mode, hook: None, applied: None, neighbours: NeighbourSync::default(), states: BTreeMap::new() }
    }

    pub fn datapath(&self) -> &Datapath {
        &self.datapath
    }

    /// Removes learned entries the datapath no longer uses (see
    /// [`crate::datapath::learned`]); the reconciler stays the one writer.
    pub fn sweep_learned(&mut self) -> Result<usize, DatapathError> {
        self.datapath.sweep_learned()
    }

    /// Gives the datapath back (to detach it, or to leave it pinned).
    pub fn into_datapath(self) -> Datapath {
        self.datapath
    }

    /// The resolved model last applied.
    pub fn applied(&self) -> Option<&Resolved> {
        self.applied.as_ref()
    }

    /// The decapsulation hook in use, once attached.
    pub fn hook(&self) -> Option<DecapHook> {
        self.hook
    }

    /// Each local endpoint's state after the last reconciliation, by origin.
    pub fn endpoint_states(&self) -> &BTreeMap<Origin, EndpointState> {
        &self.states
    }

    /// Whether some endpoint waits for its interface (worth another look soon).
    pub fn has_pending(&self) -> bool {
        self.states.values().any(|s| matches!(s, EndpointState::Pending(_)))
    }

    /// Makes the kernel hold `model`. On error nothing changed: the maps
    /// and attachments are as before.
    pub async fn reconcile(&mut self, model: &Model) -> Result<Outcome, ReconcileError> {
        let problems = validate::validate(model);
        if !problems.is_empty() {
            return Err(ReconcileError::Invalid(problems));
        }
        let underlay = &model.node.underlay_interface;
        let underlay_ifindex = crate::netdev::ifindex(underlay).ok_or_else(|| ReconcileError::NoUnderlay(underlay.clone()))?;
        let resolved = Resolved::new(model, underlay_ifindex, crate::netdev::ifindex)
            .expect("validation refuses a model without an IPv4 VTEP");
        let previous = self.datapath.applied().clone();
        let desired = MapState::from_resolved(&resolved, &previous)?;
        let maps = self.datapath.apply(&desired).map_err(ReconcileError::Maps)?;
        let hook = match self.datapath.attach(&attach_plan(&resolved, self.mode)) {
            Ok(hook) => hook,
            Err(error) => {
                // Back to the previous maps, and to the previous attachments.
                if let Err(undo) = self.datapath.apply(&previous) {
                    log::error!("restoring the previous maps after a failed attach: {undo}");
                }
                if let Some(applied) = &self.applied {
                    let _ = self.datapath.attach(&attach_plan(applied, self.mode));
                }
                return Err(ReconcileError::Attach(error));
            }
        };
        let wanted: BTreeSet<Ipv4Addr> = resolved.peers.iter().map(|p| p.vtep_address).collect();
        let neighbours = self.neighbours.sync(&wanted, resolved.underlay_ifindex).await;
        self.states = resolved
            .endpoints
            .iter()
            .map(|e| (e.origin.clone(), EndpointState::Applied))
            .chain(resolved.pending.iter().map(|(origin, why)| (origin.clone(), EndpointState::Pending(why.clone()))))
            .collect();
        self.hook = Some(hook);
        self.applied = Some(resolved);
        Ok(Outcome { maps, hook, neighbours })
    }

    /// Detaches everything and takes the managed neighbour entries this
    /// agent made away again (a detaching exit).
    pub async fn detach(&mut self) {
        if let Some(resolved) = &self.applied {
            self.neighbours.sync(&BTreeSet::new(), resolved.underlay_ifindex).await;
        }
        self.datapath.detach();
    }
}

/// The attachments a resolved model needs.
pub fn attach_plan(resolved: &Resolved, mode: AttachMode) -> AttachPlan {
    AttachPlan {
        underlay: Interface { name: resolved.underlay_interface.clone(), ifindex: resolved.underlay_ifindex },
        ports: resolved.ports().into_iter().map(|(name, ifindex)| Interface { name, ifindex }).collect(),
        mode,
    }
}
