//! The sources of the model. Each owns its part: the configuration file
//! (node settings, and whatever networks, endpoints and peers it lists),
//! the local API (networks and endpoints created at run time) and the
//! cluster registry (`registry::fragment`, in cluster mode). A source's change is validated against the
//! others' current parts with the changing source last, so a conflict is
//! the later claim's problem and nothing is overwritten.
pub mod api_store;
pub mod file;

use crate::model::{Fragment, Model, NodeSettings, Problem, SourceKind, validate};

/// The sources' parts of the model, each as it stands or as a change would
/// make it.
#[derive(Clone, Copy)]
pub struct Parts<'a> {
    pub file: &'a Fragment,
    pub api: &'a Fragment,
    pub registry: &'a Fragment,
}

impl<'a> Parts<'a> {
    /// The sources in the one order their parts are merged in.
    const ORDER: [SourceKind; 3] = [SourceKind::File, SourceKind::Api, SourceKind::Registry];

    fn part(&self, source: SourceKind) -> &'a Fragment {
        match source {
            SourceKind::File => self.file,
            SourceKind::Api => self.api,
            SourceKind::Registry => self.registry,
        }
    }

    /// The desired model: the file's part, then the API's, then the registry's.
    pub fn model(&self, node: NodeSettings) -> Model {
        Model::merge(node, Self::ORDER.map(|source| self.part(source)))
    }

    /// The model with `changing`'s part merged last (a conflict is the later
    /// claim's problem), and the problems that are `changing`'s (all of them
    /// if none is, so that a model with problems is never taken for a good one).
    pub fn candidate(&self, node: NodeSettings, changing: SourceKind) -> (Model, Vec<Problem>) {
        let others = Self::ORDER.into_iter().filter(|source| *source != changing);
        let model = Model::merge(node, others.chain([changing]).map(|source| self.part(source)));
        let problems = validate::validate(&model);
        let problems = if problems.iter().any(|p| p.subject.source == changing) {
            problems.into_iter().filter(|p| p.subject.source == changing).collect()
        } else {
            problems
        };
        (model, problems)
    }
}
