//! Serving HTTP (axum on hyper) from the agent's tokio runtime: `/metrics`
//! over TCP, and the local API over a unix socket.
//!
//! Each server runs in a task of its own; a problem while serving is
//! logged (failed accepts are retried after a pause, see axum's
//! `Listener`) and never stops the agent. Connections are HTTP/1.1 with
//! one request each, answered with Title-Case header names: what the
//! hand-written server did, and all a scraper or a local client needs.
use std::{
    io,
    os::unix::fs::{FileTypeExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use axum::{Router, serve::Listener};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};

/// A client that has not sent its request head by then is dropped.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A running server. Dropping it stops the server and removes its unix
/// socket, if it has one; [`Serving::detach`] leaves it running instead.
pub struct Serving {
    task: Option<tokio::task::JoinHandle<()>>,
    socket: Option<PathBuf>,
}

impl Serving {
    /// Leaves the server running for as long as the runtime runs.
    pub fn detach(mut self) {
        self.task = None;
        self.socket = None;
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if let Some(path) = self.socket.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Serves `router` on `listener` (bound beforehand, so that an address that
/// cannot be served is refused before anything else starts). Must be
/// called inside a tokio runtime.
pub fn serve_tcp(listener: std::net::TcpListener, router: Router) -> io::Result<Serving> {
    // Tokio only takes over non-blocking sockets.
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let address = listener.local_addr()?;
    log::debug!("serving HTTP on {address}");
    Ok(Serving { task: Some(tokio::spawn(serve_connections(listener, router))), socket: None })
}

/// Serves `router` on a unix socket at `path` whose permissions are
/// `mode` from the moment it appears (it is bound under a temporary name,
/// given its mode, then renamed into place). A socket file left at `path`
/// by an agent that is gone is replaced; one that still answers, or a file
/// that is not a socket, is an error. Must be called inside a tokio runtime.
pub fn serve_unix(path: &Path, mode: u32, router: Router) -> io::Result<Serving> {
    Ok(serve_bound_unix(bind_unix(path, mode)?, router))
}

/// A unix socket bound by [`bind_unix`], not served yet.
pub struct BoundUnix {
    listener: tokio::net::UnixListener,
    path: PathBuf,
}

/// Serves `router` on a socket bound earlier (a caller that binds before
/// it has what the router needs, so that a socket in use refuses its start
/// first).
pub fn serve_bound_unix(bound: BoundUnix, router: Router) -> Serving {
    log::debug!("serving HTTP on {}", bound.path.display());
    Serving { task: Some(tokio::spawn(serve_connections(bound.listener, router))), socket: Some(bound.path) }
}

/// Accepts connections for ever, each served by a task of its own.
async fn serve_connections<L: Listener>(mut listener: L, router: Router) {
    loop {
        let (io, _) = listener.accept().await;
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .title_case_headers(true)
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(io), service);
            if let Err(error) = connection.await {
                log::debug!("HTTP connection: {error}");
            }
        });
    }
}

/// Binds a unix socket at `path` with `mode` (see [`serve_unix`]). Must be
/// called inside a tokio runtime.
pub fn bind_unix(path: &Path, mode: u32) -> io::Result<BoundUnix> {
    let named = |error: io::Error, what: &str| io::Error::new(error.kind(), format!("{what} {}: {error}", path.display()));
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use: another process answers on it", path.display()),
                ));
            }
            Err(_) => {
                log::info!("removing the stale socket {}", path.display());
                std::fs::remove_file(path).map_err(|e| named(e, "removing the stale socket"))?;
            }
        },
        Ok(_) => {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} exists and is not a socket", path.display())));
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(named(error, "inspecting")),
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| named(e, "creating the directory of"))?;
    }
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".{}.tmp", std::process::id()));
    let temporary = PathBuf::from(temporary);
    let _ = std::fs::remove_file(&temporary);
    let listener = std::os::unix::net::UnixListener::bind(&temporary).map_err(|e| named(e, "binding"))?;
    let placed = std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(mode))
        .and_then(|()| std::fs::rename(&temporary, path));
    if let Err(error) = placed {
        let _ = std::fs::remove_file(&temporary);
        return Err(named(error, "setting up"));
    }
    listener.set_nonblocking(true)?;
    Ok(BoundUnix { listener: tokio::net::UnixListener::from_std(listener)?, path: path.to_owned() })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use axum::routing::get;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("plumb-http-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    async fn exchange(path: &Path, request: &str) -> String {
        let mut stream = tokio::net::UnixStream::connect(path).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.unwrap();
        reply
    }

    #[test]
    fn a_unix_socket_is_private_replaces_a_stale_one_and_goes_at_drop() {
        let dir = scratch("unix");
        let path = dir.join("api.sock");
        // A stale socket: bound, then its listener gone.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let serving = serve_unix(&path, 0o600, Router::new().route("/hello", get(|| async { "hi\n" }))).unwrap();
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "expected mode 0600 on {}, found {mode:o}", path.display());
            let reply = exchange(&path, "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
            assert!(reply.starts_with("HTTP/1.1 200 OK\r\n") && reply.ends_with("\r\n\r\nhi\n"), "expected 200 and hi, got:\n{reply}");
            let second = serve_unix(&path, 0o600, Router::new()).err().map(|e| e.to_string());
            assert!(second.as_deref().is_some_and(|e| e.contains("in use")), "expected a live socket to be refused, got {second:?}");
            drop(serving);
        });
        assert!(!path.exists(), "expected {} removed when the server stops", path.display());
        std::fs::write(&path, "not a socket").unwrap();
        let refused = runtime.block_on(async { serve_unix(&path, 0o600, Router::new()).err().map(|e| e.to_string()) });
        assert!(refused.as_deref().is_some_and(|e| e.contains("not a socket")), "expected a regular file to be refused, got {refused:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
