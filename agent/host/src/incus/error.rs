//! The Incus driver's errors. Every variant names the request (`METHOD /path`), and where
//! Incus answered, its own error text, the HTTP status and the operation id, so that an
//! operator can match the message with `incus monitor` or `incus operation list`.

use std::fmt;
use std::time::Duration;

/// The kinds of Incus resources the driver names in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind {
    Instance,
    Profile,
    Network,
    Snapshot,
    File,
    ServerConfig,
    SharedConfig,
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResourceKind::Instance => "instance",
            ResourceKind::Profile => "profile",
            ResourceKind::Network => "network",
            ResourceKind::Snapshot => "snapshot",
            ResourceKind::File => "file",
            ResourceKind::ServerConfig => "server config key",
            ResourceKind::SharedConfig => "config key of project `default`",
        })
    }
}

/// How a call to Incus failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IncusError {
    /// The socket (or endpoint) could not be reached at all.
    #[error(
        "cannot reach incusd at `{endpoint}` for `{method} {path}`: {detail}; is incusd running? \
         (`incus admin waitready`, log in /var/log/incus/incusd.log)"
    )]
    Connect { endpoint: String, method: String, path: String, detail: String },

    /// The connection broke while sending the request or reading the reply.
    #[error("`{method} {path}` to incusd at `{endpoint}` failed in transit: {detail}")]
    Transport { endpoint: String, method: String, path: String, detail: String },

    /// Incus answered the request itself with an error.
    #[error("incus rejected `{method} {path}` (HTTP {status}): {message}")]
    Api { method: String, path: String, status: u16, message: String },

    /// The request was accepted as a background operation, which then failed. `code` is
    /// Incus's code for the failure (`error_code` of the `/wait` reply: 400 or 500 in
    /// practice; the HTTP status of that reply is 200).
    #[error("incus operation {operation} for `{method} {path}` failed: {message}{hint}")]
    Operation {
        method: String,
        path: String,
        operation: String,
        message: String,
        code: u16,
        hint: String,
    },

    /// Incus did not finish in time. The work may still complete in the background.
    #[error(
        "`{method} {path}` did not finish within {waited:?}{}; incus may still complete it",
        op_suffix(.operation)
    )]
    Timeout { method: String, path: String, operation: Option<String>, waited: Duration },

    /// The operation was gone before its result could be read (Incus forgets finished
    /// operations after about 5 s).
    #[error(
        "incus operation {operation} for `{method} {path}` disappeared before its result was \
         read; check the resource's current state"
    )]
    OperationLost { method: String, path: String, operation: String },

    /// Incus's reply could not be decoded.
    #[error(
        "could not decode incus's reply to `{method} {path}`: {detail}; reply begins: {excerpt}"
    )]
    Decode { method: String, path: String, detail: String, excerpt: String },

    /// A resource with that name exists but does not carry `user.veza.managed=true`.
    #[error(
        "refusing to change {kind} `{name}`: it exists but is not managed by veza-agent (no \
         `user.veza.managed=true` in its config); choose another name, or remove or adopt it \
         by hand"
    )]
    NotOwned { kind: ResourceKind, name: String },

    /// The instance carries `user.veza.protect=true`.
    #[error(
        "refusing to delete instance `{name}`: it is protected (`user.veza.protect=true`); \
         unset that key by hand if it really must go"
    )]
    Protected { name: String },

    /// The named resource does not exist.
    #[error("{kind} `{name}` does not exist{}", in_instance(.instance))]
    NotFound { kind: ResourceKind, name: String, instance: Option<String> },

    /// The agent tried to create something that already exists (and is its own).
    #[error("{kind} `{name}` already exists; update it instead of creating it")]
    AlreadyExists { kind: ResourceKind, name: String },

    /// What adoption assessed changed before its marks were written, or the resource is
    /// the agent's already with other marks.
    #[error(
        "refusing to adopt {kind} `{name}`: {what}; run `veza-agent adopt` again to see it as it is now"
    )]
    Changed { kind: ResourceKind, name: String, what: String },

    /// An `If-Match` update kept losing against concurrent changes.
    #[error(
        "gave up updating {kind} `{name}` after {attempts} attempts: it kept changing between \
         read and write (HTTP 412, ETag mismatch); is something else editing it?"
    )]
    Conflict { kind: ResourceKind, name: String, attempts: u32 },

    /// On a cluster, this agent no longer holds the lease (the fence before every write):
    /// nothing was sent.
    #[error(
        "not sent: `{call}`: {reason}; only the cluster lease's holder writes \
         (`veza-agent status` names it)"
    )]
    Fenced { call: String, reason: String },

    /// The caller passed a value the driver will not send.
    #[error("invalid {what} `{value}`: {reason}")]
    Invalid { what: &'static str, value: String, reason: &'static str },

    /// A pulled file differs from what was pushed.
    #[error(
        "file `{path}` in instance `{instance}` does not hold what was pushed: expected {expected} \
         bytes, found {actual} bytes{}",
        first_diff(.first_difference)
    )]
    FileMismatch {
        instance: String,
        path: String,
        expected: usize,
        actual: usize,
        first_difference: Option<usize>,
    },

    /// A reply (exec output, a pulled file, a list) was larger than the agent reads; it
    /// stopped reading there.
    #[error("{what} is larger than the {limit}-byte limit; the agent stopped reading it{hint}")]
    TooLarge { what: String, limit: u64, hint: String },

    /// An Incus operation on an instance (one a killed agent left behind, or someone
    /// else's) was still running when the agent stopped waiting for it.
    #[error(
        "instance `{instance}` is still busy with incus operation {operation} (\"{description}\") \
         after waiting {}; nothing was changed. hint: `incus operation show {}` shows what it \
         does; let it finish (or cancel it with `incus operation delete {}` if it may be \
         cancelled) and the next sync continues",
        seconds(.waited),
        op_id(.operation),
        op_id(.operation)
    )]
    Busy { instance: String, operation: String, description: String, waited: Duration },

    /// A pull hit a directory (or something else that is not a regular file).
    #[error("`{path}` in instance `{instance}` is a {found}, not a regular file")]
    NotAFile { instance: String, path: String, found: String },
}

fn op_suffix(op: &Option<String>) -> String {
    match op {
        Some(op) => format!(" (operation {op}; see `incus operation show {}`)", op_id(op)),
        None => String::new(),
    }
}

fn seconds(d: &Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn in_instance(instance: &Option<String>) -> String {
    match instance {
        Some(i) => format!(" in instance `{i}`"),
        None => String::new(),
    }
}

fn first_diff(at: &Option<usize>) -> String {
    match at {
        Some(n) => format!(" (first difference at byte {n})"),
        None => String::new(),
    }
}

/// The UUID at the end of an operation path.
pub(crate) fn op_id(op: &str) -> &str {
    op.rsplit('/').next().unwrap_or(op)
}

impl IncusError {
    /// The HTTP status Incus answered with, when it answered with an error.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            IncusError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Incus's code for the failure: the HTTP status of a rejected request, or the
    /// `error_code` of a failed operation.
    pub fn incus_code(&self) -> Option<u16> {
        match self {
            IncusError::Api { status, .. } => Some(*status),
            IncusError::Operation { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The operation this error belongs to (`/1.0/operations/UUID`), if any.
    pub fn operation(&self) -> Option<&str> {
        match self {
            IncusError::Operation { operation, .. }
            | IncusError::OperationLost { operation, .. }
            | IncusError::Busy { operation, .. } => Some(operation),
            IncusError::Timeout { operation, .. } => operation.as_deref(),
            _ => None,
        }
    }

    /// The request (`METHOD /path`) that failed, if the error is about one.
    pub fn request(&self) -> Option<String> {
        match self {
            IncusError::Connect { method, path, .. }
            | IncusError::Transport { method, path, .. }
            | IncusError::Api { method, path, .. }
            | IncusError::Operation { method, path, .. }
            | IncusError::Timeout { method, path, .. }
            | IncusError::OperationLost { method, path, .. }
            | IncusError::Decode { method, path, .. } => Some(format!("{method} {path}")),
            _ => None,
        }
    }

    /// Incus's own error text, when Incus produced one.
    pub fn incus_message(&self) -> Option<&str> {
        match self {
            IncusError::Api { message, .. } | IncusError::Operation { message, .. } => {
                Some(message)
            }
            _ => None,
        }
    }

    /// `kind` `name` is not there (Incus's 404), for the client and the fake alike.
    pub fn not_found(kind: ResourceKind, name: impl Into<String>) -> IncusError {
        IncusError::NotFound { kind, name: name.into(), instance: None }
    }

    /// `kind` `name` inside `instance` (a file, a snapshot) is not there.
    pub fn not_found_in(kind: ResourceKind, name: impl Into<String>, instance: &str) -> IncusError {
        IncusError::NotFound { kind, name: name.into(), instance: Some(instance.to_string()) }
    }

    /// Whether this is an HTTP 404 from Incus or a `NotFound`.
    pub fn is_not_found(&self) -> bool {
        matches!(self, IncusError::NotFound { .. }) || self.http_status() == Some(404)
    }
}
