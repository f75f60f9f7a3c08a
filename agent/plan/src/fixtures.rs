//! Test fixtures shared by the crates that test against plans (this one, and `veza-host`
//! through the `fixtures` feature): one example of each value many tests build, so that
//! a field added to it is filled in one place.

use std::collections::BTreeMap;

use veza_model::live::{Config, InstanceKind, InstanceStatus, LiveInstance};
use veza_model::manifest::{Color, Release};

use crate::desired::SlotSpec;

/// The release made of `c` repeated (`'2'` → `222…2`, 40 hex digits).
pub fn release(c: char) -> Release {
    Release::try_from(c.to_string().repeat(40))
        .unwrap_or_else(|e| panic!("`{c}` is not a hex digit for a test release: {e}"))
}

/// The `color` slot of `env`/`app` at release `r` (see [`release`]): unpacked in
/// `/srv/APP` from `https://forge.example/APP.tar.gz`, started with `./server` on port
/// 8080, healthy after two 200 answers on `/health` (2 s each), reached over the bridge,
/// no environment, no migration.
pub fn slot(env: &str, app: &str, color: Color, r: char) -> SlotSpec {
    SlotSpec {
        env: env.into(),
        app: app.into(),
        color,
        release: release(r),
        artifact_url: format!("https://forge.example/{app}.tar.gz"),
        sha256: "0".repeat(64),
        install_dir: format!("/srv/{app}"),
        start: "./server".into(),
        port: 8080,
        health_path: "/health".into(),
        expect_status: 200,
        health_rise: 2,
        health_timeout_ms: 2000,
        loopback: None,
        environment: BTreeMap::new(),
        secrets: BTreeMap::new(),
        migrate: None,
    }
}

/// A running container someone else built (no agent marks) from the image family
/// `os`/`release` (Incus's `image.os` and `image.release`), with these profiles and no
/// devices of its own.
pub fn foreign_instance(name: &str, os: &str, release: &str, profiles: &[String]) -> LiveInstance {
    LiveInstance {
        name: name.into(),
        kind: InstanceKind::Container,
        status: InstanceStatus::Running,
        config: Config::from([
            ("image.os".to_string(), os.to_string()),
            ("image.release".to_string(), release.to_string()),
            ("volatile.uuid".to_string(), format!("uuid-{name}")),
        ]),
        profiles: profiles.to_vec(),
        ..LiveInstance::default()
    }
}
