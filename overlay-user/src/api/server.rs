//! Serving the local API (axum on a unix socket).
use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path as UrlPath, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{delete, get},
};
use tokio::sync::mpsc;

use super::{ApiError, request, views};
use crate::{
    agent::{ChangeError, Shared},
    reconciler::EndpointState,
};

#[derive(Clone)]
struct ApiContext {
    shared: Shared,
    /// Wakes the agent's loop after a change (status file, logs).
    changed: mpsc::Sender<()>,
}

/// The API's routes over the agent's state; `changed` wakes the agent's
/// loop after a change (status file).
pub fn router(shared: Shared, changed: mpsc::Sender<()>) -> Router {
    Router::new()
        .route("/v1/node", get(node))
        .route("/v1/networks", get(list_networks).post(create_network))
        .route("/v1/networks/{name}", delete(delete_network))
        .route("/v1/endpoints", get(list_endpoints).post(create_endpoint))
        .route("/v1/endpoints/{id}", delete(delete_endpoint))
        .route("/v1/peers", get(list_peers))
        .fallback(|| async { ApiError::plain(404, "not-found", "no such API path (see `GET /v1/node`, `/v1/networks`, `/v1/endpoints`, `/v1/peers`)") })
        .with_state(ApiContext { shared, changed })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self)).into_response()
    }
}

fn change_error(error: ChangeError) -> ApiError {
    match error {
        ChangeError::Refused(problems) => ApiError::from_problems(&problems),
        ChangeError::NotFound(message) => ApiError::plain(404, "not-found", message),
        ChangeError::Conflict(message) => ApiError::plain(409, "conflict", message),
        error @ (ChangeError::Reconcile(_) | ChangeError::Persist { .. }) => {
            ApiError::plain(500, "internal", format!("{error}; nothing changed"))
        }
    }
}

async fn node(State(context): State<ApiContext>) -> Response {
    Json(views::node(&*context.shared.lock().await)).into_response()
}

async fn list_networks(State(context): State<ApiContext>) -> Response {
    Json(views::networks(&*context.shared.lock().await)).into_response()
}

async fn list_endpoints(State(context): State<ApiContext>) -> Response {
    Json(views::endpoints(&*context.shared.lock().await)).into_response()
}

async fn list_peers(State(context): State<ApiContext>) -> Response {
    Json(views::peers(&*context.shared.lock().await)).into_response()
}

async fn create_network(State(context): State<ApiContext>, body: Bytes) -> Result<Response, ApiError> {
    let network = request::network(&body)?;
    let name = network.name.clone();
    let mut agent = context.shared.lock().await;
    let outcome = agent.add_network(network).await.map_err(change_error)?;
    log::info!("API: created network {name}: {}", outcome.maps);
    let view = views::networks(&agent).into_iter().find(|n| n.name == name);
    drop(agent);
    let _ = context.changed.try_send(());
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn delete_network(State(context): State<ApiContext>, UrlPath(name): UrlPath<String>) -> Result<Response, ApiError> {
    let outcome = context.shared.lock().await.remove_network(&name).await.map_err(change_error)?;
    log::info!("API: removed network {name}: {}", outcome.maps);
    let _ = context.changed.try_send(());
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn create_endpoint(State(context): State<ApiContext>, body: Bytes) -> Result<Response, ApiError> {
    let endpoint = request::endpoint(&body)?;
    let origin = endpoint.origin();
    let id = endpoint.id.clone();
    let mut agent = context.shared.lock().await;
    let outcome = agent.add_endpoint(endpoint).await.map_err(change_error)?;
    match agent.endpoint_state(&origin) {
        Some(EndpointState::Pending(why)) => log::info!("API: endpoint {id} is pending: {why}"),
        _ => log::info!("API: added endpoint {id}: {}", outcome.maps),
    }
    let view = views::endpoints(&agent).into_iter().find(|e| e.source == origin.source && e.id == id);
    drop(agent);
    let _ = context.changed.try_send(());
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn delete_endpoint(State(context): State<ApiContext>, UrlPath(id): UrlPath<String>) -> Result<Response, ApiError> {
    let outcome = context.shared.lock().await.remove_endpoint(&id).await.map_err(change_error)?;
    log::info!("API: removed endpoint {id}: {}", outcome.maps);
    let _ = context.changed.try_send(());
    Ok(StatusCode::NO_CONTENT.into_response())
}
