//! One thing wrong in the model, as a value: the file renders it as a TOML
//! path, the API as an HTTP status and JSON body.
use std::fmt;

use serde::Serialize;

use super::{Origin, SourceKind};

/// What kind of problem: decides how front ends answer it (the API: 400
/// for [`Invalid`](ProblemKind::Invalid) and
/// [`UnknownNetwork`](ProblemKind::UnknownNetwork), 409 for
/// [`Duplicate`](ProblemKind::Duplicate) and [`Limit`](ProblemKind::Limit)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemKind {
    /// A value out of range or of the wrong form.
    Invalid,
    /// An endpoint names a network that does not exist.
    UnknownNetwork,
    /// A value another item already holds (MAC or IP in a network, a peer's
    /// name or VTEP, a network's name or VNI).
    Duplicate,
    /// A fixed capacity of the datapath would be exceeded.
    Limit,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub kind: ProblemKind,
    /// The item the problem is in.
    pub subject: Origin,
    /// The field of the item, e.g. `mac` (empty: the item as a whole).
    pub field: String,
    /// The offending value as written.
    pub value: String,
    pub message: String,
    /// For a duplicate: the item that holds the value already.
    pub holder: Option<Origin>,
}

impl Problem {
    pub fn new(kind: ProblemKind, subject: &Origin, field: &str, value: impl fmt::Display, message: impl Into<String>) -> Problem {
        Problem {
            kind,
            subject: subject.clone(),
            field: field.to_owned(),
            value: value.to_string(),
            message: message.into(),
            holder: None,
        }
    }

    /// A wrong value at `path` in the configuration file (`peers[0].mac`:
    /// the item `peers[0]`, its field `mac`).
    pub fn in_file(path: &str, value: impl fmt::Display, message: impl Into<String>) -> Problem {
        let (key, field) = path.rsplit_once('.').unwrap_or((path, ""));
        Problem::new(ProblemKind::Invalid, &Origin::new(SourceKind::File, key), field, value, message)
    }

    /// The problem as the file's reader wants it: the file's own items by
    /// TOML path, other sources' by source and key.
    pub fn for_file(&self) -> String {
        let place = if self.subject.source == SourceKind::File { self.path() } else { format!("{} {}", self.subject.source, self.path()) };
        format!("{place} = {:?}: {}", self.value, self.message)
    }

    pub fn held_by(mut self, holder: &Origin) -> Problem {
        self.holder = Some(holder.clone());
        self
    }

    /// The subject's key and field as one path (`endpoints[0].mac`).
    pub fn path(&self) -> String {
        if self.field.is_empty() { self.subject.key.clone() } else { format!("{}.{}", self.subject.key, self.field) }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} = {:?}: {}", self.subject.source, self.path(), self.value, self.message)
    }
}
