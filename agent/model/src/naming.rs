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

/// The `(env, app)` of an edge backend named by [`backend`]; `None` for a name without
/// both parts.
pub fn parse_backend(name: &str) -> Option<(&str, &str)> {
    name.split_once('_').filter(|(e, a)| !e.is_empty() && !a.is_empty())
}

/// The edge server of a slot: `<color>-<short release>`, so a new release is a new server
/// (HAProxy keeps no health state across releases).
pub fn server(color: Color, release: &Release) -> String {
    format!("{color}-{}", release.short())
}

/// The color of an edge server named by [`server`]; `None` for any other.
pub fn server_color(name: &str) -> Option<Color> {
    match name.split_once('-').map_or(name, |(c, _)| c) {
        "blue" => Some(Color::Blue),
        "green" => Some(Color::Green),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_back_as_what_they_were_made_from() {
        let release = Release::try_from("0bd3e563b2".repeat(4)).expect("release");
        assert_eq!(slot_instance("veza-", "backend", Color::Green), "veza-backend-green");
        assert_eq!(backend("prod", "web"), "prod_web");
        assert_eq!(parse_backend(&backend("staging", "stream")), Some(("staging", "stream")));
        for color in [Color::Blue, Color::Green] {
            assert_eq!(server_color(&server(color, &release)), Some(color));
        }
        assert_eq!(server(Color::Blue, &release), "blue-0bd3e563b2");
        // (name, color) — names the agent did not make are nobody's color.
        for (name, color) in [("blue", Some(Color::Blue)), ("bluish-1", None), ("s1", None)] {
            assert_eq!(server_color(name), color, "{name}");
        }
        for name in ["default_503", "prod_web"] {
            assert!(parse_backend(name).is_some(), "{name}");
        }
        for name in ["fe_http", "_x", "x_", "nounderscore"] {
            assert_eq!(parse_backend(name).is_some(), name == "fe_http", "{name}");
        }
    }
}
