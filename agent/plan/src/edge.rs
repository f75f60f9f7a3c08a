//! The shared HAProxy edge: every environment of a host rendered into one `haproxy.cfg`.
//!
//! One HAProxy serves every environment of the host (the seed's single `veza-haproxy`):
//! a host-name ACL per environment selects the environment, path ACLs select the app
//! within it (path routes before the environment's default route), and each
//! environment × app gets one backend `<env>_<app>` holding both colors. The active color
//! is enabled; the other is a standby for an instant switch back: `weight 0` and no
//! persistence cookie, so it gets no request, yet HAProxy keeps checking it and a
//! promotion finds its health already known (the gate needs no extra wait).
//! Server names are `<color>-<short release>`, so a new release is a new server and the
//! server-state file can never pin a stale address onto it.
//!
//! Pure: [`render_edge`] turns [`EdgeEnv`]s (built from validated manifests with
//! [`EdgeEnv::from_manifest`]) and host [`EdgeSettings`] into the config text and an
//! [`EdgeSummary`] (which server is active in which backend) for status and install.
//! The output is deterministic: the same input always gives the same bytes, so an
//! unchanged edge is detected by comparing text and never reloads HAProxy.

use veza_model::manifest::Color;

pub mod diff;
mod model;
mod render;

pub use model::{
    BackendKind, BackendSummary, EdgeApp, EdgeEnv, EdgeExternal, EdgeHealth, EdgeRoute,
    EdgeSettings, EdgeSlot, EdgeSummary, EdgeTls, RenderedEdge, ServerSummary,
};
pub use render::render_edge;

/// Plain HTTP listen address when no environment declares `edge.listen`.
pub const DEFAULT_HTTP_LISTEN: &str = "0.0.0.0:80";
/// HTTPS listen address when TLS is on and no environment declares `edge.listen.https`.
pub const DEFAULT_HTTPS_LISTEN: &str = "0.0.0.0:443";
/// The backend that answers 503 for unknown host names.
pub const DEFAULT_503_BACKEND: &str = "default_503";
/// Upstream DNS suffix when an app declares neither `dns_suffix` nor `loopback_ports`.
pub const DEFAULT_DNS_SUFFIX: &str = "lxd";

/// Why the edge could not be rendered. Nothing is written when this happens.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// Two inputs describe the same environment.
    #[error("environment `{env}` is given twice to the edge renderer")]
    DuplicateEnv { env: String },
    /// An override names an app the environment does not declare.
    #[error("active-color override for `{env}/{app}`: the environment declares no app `{app}`")]
    UnknownOverride { env: String, app: String },
    /// A route names an app the environment does not declare.
    #[error("route `{route}` of environment `{env}` points to undefined app `{app}`")]
    UnknownApp { env: String, route: String, app: String },
    /// The active color of an app has no release (an empty slot cannot serve).
    #[error("`{env}/{app}`: the active color `{color}` has an empty slot; nothing could serve it")]
    ActiveSlotEmpty { env: String, app: String, color: Color },
    /// An app with loopback upstreams has no port for one of its non-empty slots.
    #[error(
        "`{env}/{app}`: the {color} slot has a release but `upstream.loopback_ports` has no port for it"
    )]
    MissingLoopbackPort { env: String, app: String, color: Color },
    /// Several routes to one app ask for different balance algorithms.
    #[error(
        "`{env}/{app}`: routes ask for different balance algorithms ({first} and {second}); one backend has one"
    )]
    ConflictingBalance { env: String, app: String, first: &'static str, second: &'static str },
    /// Environments declare different listen addresses for the shared edge.
    #[error(
        "edge listen addresses differ: `{first}` ({first_env}) and `{second}` ({second_env}); the shared edge has one set"
    )]
    ListenConflict { first_env: String, first: String, second_env: String, second: String },
    /// Two backends would get the same name.
    #[error("two backends would both be named `{name}` ({first} and {second}); rename one")]
    NameCollision { name: String, first: String, second: String },
    /// A value would not be a single safe HAProxy config token (whitespace, control or
    /// comment characters could change the meaning of the config).
    #[error("{what} `{value}` cannot be written into haproxy.cfg: {why}")]
    UnsafeValue { what: String, value: String, why: &'static str },
    /// The shipped template failed (a bug in the project, not in the input).
    #[error("haproxy.cfg template failed: {message}")]
    Template { message: String },
}
