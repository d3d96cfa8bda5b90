//! The listener: `GET /metrics` over axum (see crate::http).
use std::{
    net::SocketAddr,
    sync::Arc,
};

use axum::{
    Router,
    http::{StatusCode, header},
    response::IntoResponse as _,
    routing::get,
};


use super::{CONTENT_TYPE, MetricsError, PATH, Source};

/// Binds the metrics listener. The agent calls this before it touches the
/// kernel, so an address it cannot serve refuses the start with nothing
/// loaded or attached.
pub fn bind(address: SocketAddr) -> Result<std::net::TcpListener, MetricsError> {
    let error = |reason| MetricsError::Bind { address, reason };
    let listener = std::net::TcpListener::bind(address).map_err(error)?;
    // Tokio only takes over non-blocking sockets.
    listener.set_nonblocking(true).map_err(error)?;
    Ok(listener)
}

/// What serving metrics on a non-loopback `address` exposes, for the
/// agent's log and `overlay doctor`: the endpoint has no authentication
/// and names the node's VTEP, underlay, VNIs and peers.
pub fn exposure_warning(address: SocketAddr) -> String {
    format!(
        "metrics are served on {address}, beyond this host: anyone who reaches it can read the node's VTEP, underlay, VNIs, peers and counters (no authentication)"
    )
}

/// Serves `GET /metrics` on `listener`, from a task on the current tokio
/// runtime, rendering each scrape from `source`. A problem after this point
/// is logged: metrics never stop the agent or the datapath.
pub fn spawn(listener: std::net::TcpListener, source: Source) {
    spawn_serving(listener, move || source.render());
}

pub(super) fn spawn_serving<F>(listener: std::net::TcpListener, render: F)
where
    F: Fn() -> Result<String, String> + Send + Sync + 'static,
{
    let address = listener.local_addr().map_or_else(|_| "?".to_owned(), |a| a.to_string());
    match crate::http::serve_tcp(listener, router(render)) {
        Ok(serving) => {
            log::info!("serving Prometheus metrics on http://{address}{PATH}");
            serving.detach();
        }
        Err(error) => log::error!("serving metrics on {address}: {error}; running without metrics"),
    }
}

/// `GET` (and `HEAD`) of [`PATH`]; 404 elsewhere, 405 with `Allow` for other methods.
pub fn router<F>(render: F) -> Router
where
    F: Fn() -> Result<String, String> + Send + Sync + 'static,
{
    let render = Arc::new(render);
    Router::new()
        .route(
            PATH,
            get(move || {
                let render = render.clone();
                async move {
                    // Reading the pinned maps is a few system calls per table: off the agent's thread.
                    let rendered = tokio::task::spawn_blocking(move || render()).await.unwrap_or_else(|error| Err(error.to_string()));
                    match rendered {
                        Ok(body) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
                        Err(error) => {
                            log::warn!("metrics scrape failed: {error}");
                            (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")).into_response()
                        }
                    }
                }
            }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, format!("not found: only {PATH} is served\n")) })
}
