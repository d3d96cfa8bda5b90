//! Who answers at an address: every container can serve its own name over
//! TCP, so a test or the demo can prove which container (which tenant) it
//! reached when tenants share addresses.
use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context;

use crate::netns::Netns;

/// TCP port the name servers listen on.
pub const NAME_PORT: u16 = 7007;

/// Serves a name on [`NAME_PORT`] (IPv4 and IPv6) inside a namespace until dropped.
pub struct NameServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl NameServer {
    pub fn start(netns: &Netns, name: &str) -> anyhow::Result<NameServer> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let name = name.to_owned();
        let flag = stop.clone();
        let thread = netns.spawn_inside(move || {
            // A dual-stack socket: IPv4 arrives as mapped addresses.
            let listener = TcpListener::bind((Ipv6Addr::UNSPECIFIED, NAME_PORT)).context("binding the name server")?;
            listener.set_nonblocking(true)?;
            ready_tx.send(())?;
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let _ = stream.write_all(name.as_bytes());
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(10)),
                    Err(e) => return Err(e).context("accepting"),
                }
            }
            Ok(())
        })?;
        ready_rx.recv_timeout(Duration::from_secs(5)).context("name server did not start")?;
        Ok(NameServer { stop, thread: Some(thread) })
    }
}

impl Drop for NameServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Connects from inside `from` to the name server at `address` and
/// returns the name it serves.
pub fn ask_name(from: &Netns, address: IpAddr) -> anyhow::Result<String> {
    from.run_inside(move || {
        let target = SocketAddr::new(address, NAME_PORT);
        let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(5)).with_context(|| format!("connecting to {target}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut name = String::new();
        stream.read_to_string(&mut name).context("reading the name")?;
        Ok(name)
    })
}
