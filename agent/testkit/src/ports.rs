//! Free TCP ports on 127.0.0.1, never handed out twice within one test process.
//!
//! Ports come from 20000..32000, below Linux's default ephemeral range (32768–60999), so
//! the kernel does not hand the same port to some client socket as its source port
//! between our check and the moment the test's listener (haproxy, an Incus proxy
//! device) binds it. The starting point is random, so parallel test processes rarely
//! probe the same ports.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use anyhow::{Result, bail};

const LOW: u16 = 20000;
const HIGH: u16 = 32000;
const ATTEMPTS: u32 = 2000;

fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static SET: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    SET.get_or_init(|| Mutex::new(HashSet::new()))
}

/// A random number from std's per-process random hasher keys, a counter and the clock.
pub(crate) fn rand_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(d.as_nanos());
    }
    h.finish()
}

/// A port on 127.0.0.1 that is free now and not yet returned to any test in this process.
pub fn free_port() -> Result<u16> {
    let span = u32::from(HIGH - LOW);
    let start = (rand_u64() % u64::from(span)) as u32;
    // A prime stride visits every port of the span once, in scattered order.
    let stride = 7919;
    let mut set = handed_out().lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    for i in 0..ATTEMPTS {
        let port = LOW + ((start + i * stride) % span) as u16;
        if set.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            set.insert(port);
            return Ok(port);
        }
    }
    bail!("no free port on 127.0.0.1 in {LOW}..{HIGH} after {ATTEMPTS} attempts")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_and_bindable() {
        let ports: Vec<u16> = (0..50).map(|_| free_port().unwrap()).collect();
        let unique: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(unique.len(), ports.len());
        for p in ports {
            assert!((LOW..HIGH).contains(&p));
            TcpListener::bind(("127.0.0.1", p)).unwrap();
        }
    }

    #[test]
    fn parallel_callers_get_distinct_ports() {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                std::thread::spawn(|| (0..20).map(|_| free_port().unwrap()).collect::<Vec<_>>())
            })
            .collect();
        let all: Vec<u16> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
        let unique: HashSet<u16> = all.iter().copied().collect();
        assert_eq!(unique.len(), all.len());
    }
}
