//! The request loop that runs through the edge during every test (and bench) that touches
//! a serving slot: worker threads sending `GET` with the host's name, counting answers
//! other than 200. Bounded (20 000 requests per worker); stopped on drop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::demo::DemoHost;

/// Requests per worker at the most.
const MAX_REQUESTS: usize = 20_000;

/// A running request loop.
#[derive(Debug)]
pub struct Traffic {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl Traffic {
    /// Starts `workers` threads looping through `host`'s edge, `pause` between requests.
    pub fn start(host: &DemoHost, workers: usize, pause: Duration) -> Traffic {
        let addr = format!("127.0.0.1:{}", host.edge_port);
        Traffic::to(&addr, &host.host_name, "/", workers, pause)
    }

    /// Starts `workers` threads sending `GET path` with `Host: name` to `addr` (a
    /// loopback address), `pause` between requests.
    pub fn to(addr: &str, name: &str, path: &str, workers: usize, pause: Duration) -> Traffic {
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..workers)
            .map(|_| {
                let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
                let (addr, name, path) = (addr.to_string(), name.to_string(), path.to_string());
                std::thread::spawn(move || {
                    for _ in 0..MAX_REQUESTS {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        match veza_host::http::get(&addr, &name, &path, Duration::from_secs(3)) {
                            Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::SeqCst),
                            _ => failed.fetch_add(1, Ordering::SeqCst),
                        };
                        std::thread::sleep(pause);
                    }
                })
            })
            .collect();
        Traffic { ok, failed, stop, workers }
    }

    /// (ok, failed) so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.ok.load(Ordering::SeqCst), self.failed.load(Ordering::SeqCst))
    }

    /// Stops the loop; returns (ok, failed).
    pub fn stop(mut self) -> (u64, u64) {
        self.halt();
        self.counts()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.halt();
    }
}
