//! The cron parser (`veza_model::schedule::parse`) and what is computed from a parsed
//! schedule: systemd `OnCalendar=` lines and the next runs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(s) = veza_model::schedule::parse(text) {
        let _ = s.on_calendar(None);
        let _ = s.on_calendar(Some("Europe/Paris"));
        let from = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let _ = s.next_after(from, 3);
    }
});
