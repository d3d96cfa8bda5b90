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
    addresses::AllocationError,
    agent::{AddressError, ChangeError, Shared, changes},
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
        .route("/v1/networks/{name}/addresses", get(list_addresses).post(allocate_address))
        .route("/v1/networks/{name}/addresses/{address}", delete(release_address))
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
        ChangeError::Registry(error) => registry_error(error),
        error @ (ChangeError::Reconcile(_) | ChangeError::Persist { .. }) => {
            ApiError::plain(500, "internal", format!("{error}; nothing changed"))
        }
    }
}

/// A refusal of the cluster registry: a claim another holds is a conflict
/// (naming the holder), a bad value the request's fault, no answer 503.
fn registry_error(error: crate::registry::RegistryError) -> ApiError {
    use crate::registry::RegistryError::*;
    let message = format!("cluster registry: {error}; nothing changed");
    match error {
        NodeNameTaken { .. } | VtepTaken { .. } | NetworkExists { .. } | VniTaken { .. } | MacTaken { .. } | AddressTaken { .. } => {
            ApiError::plain(409, "duplicate", message)
        }
        AddressInForeignBlock { .. } | PoolExhausted { .. } => ApiError::plain(409, "conflict", message),
        InvalidRecord(_) | InvalidSetting { .. } | AddressNotInNetwork { .. } => ApiError::plain(400, "invalid", message),
        UnknownNetwork(_) => ApiError::plain(400, "unknown-network", message),
        Etcd(_) | NotRegistered(_) | Contended { .. } => ApiError::plain(503, "unavailable", message),
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
    let outcome = changes::add_network(&context.shared, network).await.map_err(change_error)?;
    let agent = context.shared.lock().await;
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
    let outcome = changes::add_endpoint(&context.shared, endpoint).await.map_err(change_error)?;
    let agent = context.shared.lock().await;
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
    let outcome = changes::remove_endpoint(&context.shared, &id).await.map_err(change_error)?;
    log::info!("API: removed endpoint {id}: {}", outcome.maps);
    let _ = context.changed.try_send(());
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn address_error(error: AddressError) -> ApiError {
    match error {
        AddressError::UnknownNetwork(_) => ApiError::plain(404, "not-found", error.to_string()),
        AddressError::NoSubnet(_) => ApiError::plain(409, "conflict", error.to_string()),
        AddressError::NotAllocated { .. } => ApiError::plain(404, "not-found", error.to_string()),
        AddressError::Allocation(AllocationError::NotAHost { address, ref why }) => {
            ApiError::bad_request("address", &address.to_string(), &format!("{why}; nothing changed"))
        }
        AddressError::Allocation(AllocationError::Taken { address, ref holder }) => ApiError {
            holder: Some(holder.clone()),
            field: "address".into(),
            value: address.to_string(),
            ..ApiError::plain(409, "duplicate", format!("{error}; nothing changed"))
        },
        AddressError::Allocation(AllocationError::Exhausted { .. }) => ApiError::plain(409, "exhausted", error.to_string()),
        AddressError::Change(error) => change_error(error),
    }
}

async fn list_addresses(State(context): State<ApiContext>, UrlPath(name): UrlPath<String>) -> Result<Response, ApiError> {
    let (subnet, allocations) = changes::addresses(&context.shared, &name).await.map_err(address_error)?;
    Ok(Json(allocations.into_iter().map(|a| views::AllocationView::new(a, subnet)).collect::<Vec<_>>()).into_response())
}

async fn allocate_address(State(context): State<ApiContext>, UrlPath(name): UrlPath<String>, body: Bytes) -> Result<Response, ApiError> {
    let (requested, owner) = request::allocation(&body)?;
    let allocated = changes::allocate_address(&context.shared, &name, requested, &owner).await.map_err(address_error)?;
    log::info!("API: allocated {} in network {name} to {owner:?}", allocated.allocation.address);
    Ok((StatusCode::CREATED, Json(views::AllocationView::new(allocated.allocation, allocated.subnet))).into_response())
}

async fn release_address(State(context): State<ApiContext>, UrlPath((name, address)): UrlPath<(String, String)>) -> Result<Response, ApiError> {
    let address: std::net::Ipv4Addr =
        address.parse().map_err(|_| ApiError::bad_request("address", &address, "not an IPv4 address (expected dotted quad like 10.0.9.2)"))?;
    changes::release_address(&context.shared, &name, address).await.map_err(address_error)?;
    log::info!("API: released {address} in network {name}");
    Ok(StatusCode::NO_CONTENT.into_response())
}
