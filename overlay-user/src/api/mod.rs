//! The local API: HTTP and JSON on a unix socket (`<run dir>/<node>.sock`,
//! mode 0600: root only), served by `overlay run`, for the CLI and the
//! container runtimes' plugins.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /v1/node` | the node: VTEP, underlay, decapsulation hook, attachments |
//! | `GET /v1/networks` | every network, with its source |
//! | `POST /v1/networks` | create one: `{name, vni, subnet?, subnet6?, ip_range?, mtu?, flood_limit?, options?}` |
//! | `DELETE /v1/networks/{name}` | remove one the API created and no endpoint uses |
//! | `GET /v1/endpoints` | every local endpoint with its state (applied, pending with why) |
//! | `POST /v1/endpoints` | add one: `{network, interface, id?, mac?, ipv4?, ipv6?, owner?: {kind, container_id?}}` |
//! | `DELETE /v1/endpoints/{id}` | remove one the API added |
//! | `GET /v1/networks/{name}/addresses` | the addresses handed out in it (by this node) |
//! | `POST /v1/networks/{name}/addresses` | hand one out: `{address?, owner?}` (see [`crate::addresses`]) |
//! | `DELETE /v1/networks/{name}/addresses/{address}` | give one back |
//! | `GET /v1/peers` | every peer and the networks it carries |
//!
//! A malformed or missing field answers 400 naming the field and value; a
//! network that does not exist 400 (`unknown-network`); a MAC, IP, name or
//! VNI already held 409 naming the holder; nothing is applied in any of
//! these cases.
pub mod client;
pub(crate) mod request;
pub mod server;
pub mod views;

use serde::{Deserialize, Serialize};

use crate::model::{Problem, ProblemKind};

/// The body of every refusal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    #[serde(skip)]
    pub status: u16,
    /// A sentence a person can act on.
    pub error: String,
    /// The kind of problem (`invalid`, `unknown-network`, `duplicate`, `limit`, `not-found`, `conflict`, `internal`).
    pub kind: String,
    /// The field of the request, when one is at fault.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub field: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
    /// Who holds the value already, for a duplicate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
}

impl ApiError {
    pub fn bad_request(field: &str, value: &str, message: &str) -> ApiError {
        let error = if field.is_empty() { message.to_owned() } else { format!("{field} = {value:?}: {message}") };
        ApiError { status: 400, error, kind: "invalid".into(), field: field.into(), value: value.into(), holder: None }
    }

    pub fn plain(status: u16, kind: &str, message: impl Into<String>) -> ApiError {
        ApiError { status, error: message.into(), kind: kind.into(), field: String::new(), value: String::new(), holder: None }
    }

    /// The first problem, in the API's terms: its field is the request's.
    pub fn from_problems(problems: &[Problem]) -> ApiError {
        let Some(problem) = problems.first() else { return ApiError::plain(500, "internal", "refused without a reason") };
        let (status, kind) = match problem.kind {
            ProblemKind::Invalid => (400, "invalid"),
            ProblemKind::UnknownNetwork => (400, "unknown-network"),
            ProblemKind::Duplicate => (409, "duplicate"),
            ProblemKind::Limit => (409, "limit"),
        };
        let field = request_field(&problem.field);
        let mut error = format!("{field} = {:?}: {}", problem.value, problem.message);
        if problems.len() > 1 {
            error += &format!(" (and {} more: {})", problems.len() - 1, problems[1..].iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "));
        }
        ApiError {
            status,
            error,
            kind: kind.into(),
            field,
            value: problem.value.clone(),
            holder: problem.holder.as_ref().map(|h| format!("{} {}", h.source, h.key)),
        }
    }
}

/// The request's name for a model field.
fn request_field(field: &str) -> String {
    match field {
        "ip" => "ipv4".into(),
        "" => "".into(),
        other => other.into(),
    }
}
