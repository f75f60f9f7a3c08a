//! A unix-socket proxy the test owns, in front of a daemon's socket (the shared incusd):
//! [`SocketProxy::cut`] resets every connection and removes the socket, as the daemon
//! does when it restarts, and [`SocketProxy::restore`] brings it back. The real daemon,
//! used by other tests, is never touched.

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The proxy: listens on `path`, forwards each connection to the upstream socket.
pub struct SocketProxy {
    path: PathBuf,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

struct Shared {
    upstream: PathBuf,
    up: AtomicBool,
    stop: AtomicBool,
    conns: Mutex<Vec<UnixStream>>,
    served: AtomicU64,
}

impl SocketProxy {
    /// Listens on `path` (waiting up to 5 s for the socket) and forwards to `upstream`.
    pub fn start(path: &Path, upstream: &Path) -> SocketProxy {
        let shared = Arc::new(Shared {
            upstream: upstream.to_path_buf(),
            up: AtomicBool::new(true),
            stop: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
            served: AtomicU64::new(0),
        });
        let (s, p) = (shared.clone(), path.to_path_buf());
        let accept = std::thread::spawn(move || proxy_loop(&p, &s));
        let start = Instant::now();
        while !path.exists() {
            assert!(start.elapsed() < Duration::from_secs(5), "proxy socket never appeared");
            std::thread::sleep(Duration::from_millis(5));
        }
        SocketProxy { path: path.to_path_buf(), shared, accept: Some(accept) }
    }

    /// The socket clients connect to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many connections were forwarded so far.
    pub fn served(&self) -> u64 {
        self.shared.served.load(Ordering::SeqCst)
    }

    /// Resets every connection and removes the socket (waits up to 5 s for it to go).
    pub fn cut(&self) {
        self.shared.up.store(false, Ordering::SeqCst);
        if let Ok(mut conns) = self.shared.conns.lock() {
            for c in conns.drain(..) {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        }
        let start = Instant::now();
        while self.path.exists() && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Listens again after [`SocketProxy::cut`] (waits up to 5 s for the socket).
    pub fn restore(&self) {
        self.shared.up.store(true, Ordering::SeqCst);
        let start = Instant::now();
        while !self.path.exists() && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for SocketProxy {
    fn drop(&mut self) {
        self.cut();
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn proxy_loop(path: &Path, shared: &Arc<Shared>) {
    let mut listener: Option<UnixListener> = None;
    while !shared.stop.load(Ordering::SeqCst) {
        let up = shared.up.load(Ordering::SeqCst);
        if up && listener.is_none() {
            let _ = std::fs::remove_file(path);
            listener = UnixListener::bind(path).ok();
            if let Some(l) = &listener {
                let _ = l.set_nonblocking(true);
            }
        }
        if !up && listener.is_some() {
            listener = None;
            let _ = std::fs::remove_file(path);
        }
        match listener.as_ref().map(UnixListener::accept) {
            Some(Ok((client, _))) => {
                let _ = client.set_nonblocking(false);
                let Ok(upstream) = UnixStream::connect(&shared.upstream) else { continue };
                shared.served.fetch_add(1, Ordering::SeqCst);
                if let (Ok(mut c1), Ok(mut c2), Ok(mut u1), Ok(mut u2)) = (
                    client.try_clone(),
                    client.try_clone(),
                    upstream.try_clone(),
                    upstream.try_clone(),
                ) {
                    if let Ok(mut conns) = shared.conns.lock() {
                        conns.push(client);
                        conns.push(upstream);
                    }
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut c1, &mut u1);
                        let _ = u1.shutdown(std::net::Shutdown::Write);
                    });
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut u2, &mut c2);
                        let _ = c2.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
            _ => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    let _ = std::fs::remove_file(path);
}
