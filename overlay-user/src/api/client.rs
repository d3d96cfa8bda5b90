//! A client of the local API (hyper over the unix socket), for the CLI,
//! the runtimes' plugins and the tests.
use std::path::{Path, PathBuf};

pub use hyper::Method;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, body::Bytes};
use hyper_util::rt::TokioIo;

use super::ApiError;

/// Why a call did not get an answer, or got a refusal.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No agent answers on the socket.
    #[error("cannot reach the agent's API at {path}: {error} (is `overlay run` running for this node?)")]
    Connect { path: PathBuf, error: std::io::Error },
    /// The HTTP exchange failed.
    #[error("talking to the agent's API at {path}: {message}")]
    Http { path: PathBuf, message: String },
    /// The agent refused the request.
    #[error("{} (HTTP {})", .0.error, .0.status)]
    Refused(ApiError),
}

/// An answer: status and body.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Sends one request and returns the answer, or the refusal as an error
/// for 4xx and 5xx answers.
pub async fn call(socket: &Path, method: Method, path: &str, body: Option<serde_json::Value>) -> Result<Answer, ClientError> {
    let answer = exchange(socket, method, path, body.map(|b| b.to_string().into_bytes())).await?;
    if answer.status >= 400 {
        let mut refusal: ApiError = serde_json::from_slice(&answer.body).unwrap_or_else(|_| {
            ApiError::plain(answer.status, "internal", String::from_utf8_lossy(&answer.body).into_owned())
        });
        refusal.status = answer.status;
        return Err(ClientError::Refused(refusal));
    }
    Ok(answer)
}

/// Sends raw bytes and returns whatever comes back (tests send malformed bodies with it).
pub async fn exchange(socket: &Path, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<Answer, ClientError> {
    let http = |message: String| ClientError::Http { path: socket.to_owned(), message };
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|error| ClientError::Connect { path: socket.to_owned(), error })?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| http(e.to_string()))?;
    tokio::spawn(connection);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "overlay")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| http(e.to_string()))?;
    let response = sender.send_request(request).await.map_err(|e| http(e.to_string()))?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.map_err(|e| http(e.to_string()))?.to_bytes().to_vec();
    Ok(Answer { status, body })
}

/// The same, blocking (for the CLI).
pub fn call_blocking(socket: &Path, method: Method, path: &str, body: Option<serde_json::Value>) -> Result<Answer, ClientError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| ClientError::Http { path: socket.to_owned(), message: error.to_string() })?;
    runtime.block_on(call(socket, method, path, body))
}

/// Asks the agent for an address in `network`: `requested`, or the lowest free one.
pub async fn allocate_address(
    socket: &Path,
    network: &str,
    requested: Option<std::net::Ipv4Addr>,
    owner: &str,
) -> Result<super::views::AllocationView, ClientError> {
    let body = serde_json::json!({ "address": requested.map(|a| a.to_string()), "owner": owner });
    let answer = call(socket, Method::POST, &format!("/v1/networks/{network}/addresses"), Some(body)).await?;
    serde_json::from_slice(&answer.body).map_err(|error| ClientError::Http { path: socket.to_owned(), message: format!("reading the allocation: {error}") })
}

/// Gives `address` of `network` back; `Ok(false)` when it was not allocated.
pub async fn release_address(socket: &Path, network: &str, address: std::net::Ipv4Addr) -> Result<bool, ClientError> {
    match call(socket, Method::DELETE, &format!("/v1/networks/{network}/addresses/{address}"), None).await {
        Ok(_) => Ok(true),
        Err(ClientError::Refused(refusal)) if refusal.status == 404 && refusal.kind == "not-found" && refusal.error.contains("not allocated") => Ok(false),
        Err(error) => Err(error),
    }
}
