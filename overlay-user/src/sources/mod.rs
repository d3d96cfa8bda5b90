//! The sources of the model. Each owns its part: the configuration file
//! (node settings, and whatever networks, endpoints and peers it lists),
//! the local API (networks and endpoints created at run time) and the
//! cluster registry (`registry::fragment`, in cluster mode). A source's change is validated against the
//! others' current parts with the changing source last, so a conflict is
//! the later claim's problem and nothing is overwritten.
pub mod api_store;
pub mod file;

use crate::model::{Fragment, Model, NodeSettings, Problem, SourceKind, validate};

/// The model of `node` with `fragments` merged in order, and its problems.
pub fn candidate<'a>(node: NodeSettings, fragments: impl IntoIterator<Item = &'a Fragment>) -> (Model, Vec<Problem>) {
    let model = Model::merge(node, fragments);
    let problems = validate::validate(&model);
    (model, problems)
}

/// The problems that belong to `source`'s items (the others' parts were
/// valid before this change); all of them if none does, so that a model
/// with problems is never taken for a good one.
pub fn problems_of(problems: Vec<Problem>, source: SourceKind) -> Vec<Problem> {
    if problems.iter().any(|p| p.subject.source == source) {
        problems.into_iter().filter(|p| p.subject.source == source).collect()
    } else {
        problems
    }
}
