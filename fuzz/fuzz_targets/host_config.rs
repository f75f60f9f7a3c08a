//! The host configuration parser (`veza_model::config::parse_config`) over arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = veza_model::config::parse_config(data) {
        // The accessors compute defaults and durations from what was parsed.
        let _ = (c.fetch_timeout(), c.health_timeout(), c.poll_interval(), c.max_staleness());
    }
});
