//! How the agent names what it makes from a manifest: slot instances, edge backends and
//! servers. One module, so that what is written (Incus, the HAProxy config) and what is
//! read back (observation, `status`) can never disagree.

use crate::manifest::{Color, Release};

/// The Incus instance of an app's slot: `<prefix><app>-<color>` (e.g. `veza-backend-green`).
pub fn slot_instance(prefix: &str, app: &str, color: Color) -> String {
    format!("{prefix}{app}-{color}")
}

/// The edge backend of an app: `<env>_<app>` (environment and app names have no `_`).
pub fn backend(env: &str, app: &str) -> String {
    format!("{env}_{app}")
}

/// The edge server of a slot: `<color>-<short release>`, so a new release is a new server
/// (HAProxy keeps no health state across releases).
pub fn server(color: Color, release: &Release) -> String {
    format!("{color}-{}", release.short())
}

/// The slot an edge server of an app backend routes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServedSlot<'a> {
    /// Environment of the backend.
    pub env: &'a str,
    /// App of the backend.
    pub app: &'a str,
    /// Color of the server.
    pub color: Color,
}

/// Reads back server `server` of backend `backend`, named by [`backend`] and [`server`]:
/// the one place a name is read back. `None` for any backend or server the agent did not
/// name that way (the 503 backend, external backends).
pub fn read_server<'a>(backend: &'a str, server: &str) -> Option<ServedSlot<'a>> {
    let (env, app) = backend.split_once('_').filter(|(e, a)| !e.is_empty() && !a.is_empty())?;
    let color = match server.split_once('-').map_or(server, |(c, _)| c) {
        "blue" => Color::Blue,
        "green" => Color::Green,
        _ => return None,
    };
    Some(ServedSlot { env, app, color })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_back_as_what_they_were_made_from() {
        let release = Release::try_from("0bd3e563b2".repeat(4)).expect("release");
        assert_eq!(slot_instance("veza-", "backend", Color::Green), "veza-backend-green");
        assert_eq!(backend("prod", "web"), "prod_web");
        assert_eq!(server(Color::Blue, &release), "blue-0bd3e563b2");
        let staging_stream = backend("staging", "stream");
        for color in [Color::Blue, Color::Green] {
            let got = read_server(&staging_stream, &server(color, &release))
                .expect("an app server reads back");
            assert_eq!((got.env, got.app, got.color), ("staging", "stream", color));
        }
        // (backend, server, color) — names the agent did not make are nobody's slot.
        let cases = [
            ("prod_web", "blue", Some(Color::Blue)),
            ("prod_web", "green-1", Some(Color::Green)),
            ("prod_web", "bluish-1", None),
            ("prod_web", "s1", None),
            ("default_503", "s1", None),
            ("_web", "blue-1", None),
            ("prod_", "blue-1", None),
            ("nounderscore", "blue-1", None),
        ];
        for (backend, server, color) in cases {
            assert_eq!(read_server(backend, server).map(|s| s.color), color, "{backend} {server}");
        }
    }
}
