//! The change feed: Incus's event stream (`GET /1.0/events?type=lifecycle`, a websocket on
//! the unix socket) reduced to one number, the *generation*, that moves whenever something
//! Incus manages may have changed — and whenever the stream itself broke, since events
//! sent while nobody listened are lost.
//!
//! A long-running agent (the daemon) keeps its last observation and reuses it while the
//! generation has not moved since that observation began ([`ChangeFeed::mark`],
//! [`ChangeFeed::unchanged_since`]): a quiet host then costs no list call. The feed is a
//! hint that makes re-reading unnecessary, never a source of state: the caller still
//! re-reads everything at a bounded interval (what changes inside an instance — a file,
//! a service, HAProxy's health — sends no Incus event), and after anything unclear.
//!
//! Which lifecycle actions count is the pure [`changes_state`]: reading actions
//! (`instance-exec`, `…-retrieved`) do not, so the agent's own reads through exec and the
//! file API do not invalidate its cache; everything else does, including actions this
//! version does not know.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

/// The longest event frame read (an event is a few hundred bytes).
const MAX_EVENT_BYTES: usize = 1024 * 1024;
/// First and longest pause before reconnecting after the stream broke.
const RECONNECT_MIN: Duration = Duration::from_millis(250);
const RECONNECT_MAX: Duration = Duration::from_secs(30);

/// Where the feed stood at one instant: compare with [`ChangeFeed::unchanged_since`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark(u64);

#[derive(Debug, Default)]
struct Shared {
    generation: AtomicU64,
    connected: AtomicBool,
    /// Events that counted, for logs and tests.
    changes: AtomicU64,
    /// The names of the instances, profiles, networks and pools that matter; `None`:
    /// every event counts.
    interest: std::sync::RwLock<Option<BTreeSet<String>>>,
}

impl Shared {
    fn counts(&self, action: &str, source: &str) -> bool {
        if !changes_state(action) {
            return false;
        }
        // A rename is reported under the new name: the old one may be of interest.
        if action.ends_with("-renamed") {
            return true;
        }
        match self.interest.read() {
            Ok(interest) => concerns(source, interest.as_ref()),
            Err(_) => true,
        }
    }
}

impl Shared {
    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

/// A subscription to incusd's lifecycle events, kept open (and reopened) by a task on the
/// runtime that created it. Dropping it ends the task.
#[derive(Debug)]
pub struct ChangeFeed {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
    barriers: tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<()>>,
}

/// How long [`ChangeFeed::settled_mark`] waits for incusd's pong.
const BARRIER_TIMEOUT: Duration = Duration::from_millis(200);

impl Drop for ChangeFeed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ChangeFeed {
    /// Subscribes to the events of the incusd listening on `socket`. Must be called
    /// inside a tokio runtime; the first connection is made in the background
    /// ([`ChangeFeed::mark`] is `None` until it is up).
    pub fn start(socket: PathBuf) -> ChangeFeed {
        let shared = Arc::new(Shared::default());
        let (barriers, requests) = tokio::sync::mpsc::channel(4);
        let task = tokio::spawn(listen(socket, shared.clone(), requests));
        ChangeFeed { shared, task, barriers }
    }

    /// The feed's position once every event incusd had sent when this was called has been
    /// read: a websocket ping goes out and the frames before its pong are processed first
    /// (one stream, in order). `None` when not connected or no pong came in time.
    pub async fn settled_mark(&self) -> Option<Mark> {
        self.mark()?;
        let (done, pong) = tokio::sync::oneshot::channel();
        self.barriers.try_send(done).ok()?;
        tokio::time::timeout(BARRIER_TIMEOUT, pong).await.ok()?.ok()?;
        self.mark()
    }

    /// The feed's position now, or `None` while it is not connected (nothing can be
    /// known unchanged then).
    pub fn mark(&self) -> Option<Mark> {
        // Generation first: a disconnect bumps it after clearing `connected`, so a mark
        // taken across a disconnect never matches a later one.
        let generation = self.shared.generation.load(Ordering::SeqCst);
        self.shared.connected.load(Ordering::SeqCst).then_some(Mark(generation))
    }

    /// Whether nothing that changes Incus state was reported since `mark` was taken,
    /// and the stream stayed connected all along.
    pub fn unchanged_since(&self, mark: Mark) -> bool {
        self.mark() == Some(mark)
    }

    /// Counts only the events about these names (instances, profiles, networks, storage
    /// pools; events without a name always count); `None`: all events.
    pub fn set_interest(&self, names: Option<BTreeSet<String>>) {
        if let Ok(mut i) = self.shared.interest.write() {
            *i = names;
        }
    }

    /// How many state-changing events were seen since the feed started.
    pub fn changes(&self) -> u64 {
        self.shared.changes.load(Ordering::SeqCst)
    }

    /// Waits up to `limit` for the stream to be connected; whether it is.
    pub async fn wait_connected(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.shared.connected.load(Ordering::SeqCst) {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }
}

/// Whether a lifecycle event's `action` can mean a change of what the agent observes
/// (instances, profiles, networks, storage pools). Reads (`instance-exec`,
/// `instance-console`, `…-retrieved`), an exec's output logs (`instance-log-*`: incusd
/// deletes them once read) and the server's own config (`config-updated`: not observed;
/// the agent writes its high-water mark there) do not; anything else does, unknown
/// actions included.
pub fn changes_state(action: &str) -> bool {
    !(action == "instance-exec"
        || action == "instance-console"
        || action == "config-updated"
        || action.starts_with("instance-log-")
        || action.ends_with("-retrieved")
        || action.is_empty())
}

/// Whether an event about `source` (`/1.0/instances/web-blue/snapshots/s1`,
/// `/1.0/profiles/veza-app`, `/1.0`) concerns one of `interest`, written `KIND/NAME`
/// (`instances/web-blue`, `profiles/veza-app`, `networks/net-veza`,
/// `storage-pools/default`): the kind and name are the second and third segments.
/// Projects never count against an interest (only the `default` project is used, and its
/// config holds nothing observed: a cluster's lease is renewed there). A source without a
/// name concerns everything; without an interest, every event does.
pub fn concerns(source: &str, interest: Option<&BTreeSet<String>>) -> bool {
    let Some(interest) = interest else { return true };
    let path = source.split('?').next().unwrap_or(source);
    let mut parts = path.split('/').skip(2);
    match (parts.next(), parts.next()) {
        (Some("projects"), _) => false,
        (Some(kind), Some(name)) if !name.is_empty() => {
            interest.contains(&format!("{kind}/{name}"))
        }
        _ => true,
    }
}

/// The action and source of one event frame, if it is a lifecycle event; an event that
/// cannot be read is `("unreadable", "")`, which counts as a change (to be safe).
fn lifecycle_action(text: &str) -> Option<(String, String)> {
    let unreadable = || Some(("unreadable".to_string(), String::new()));
    let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else { return unreadable() };
    if v.get("type").and_then(|t| t.as_str()) != Some("lifecycle") {
        return None;
    }
    let Some(action) = v.pointer("/metadata/action").and_then(|a| a.as_str()) else {
        return unreadable();
    };
    let source = v.pointer("/metadata/source").and_then(|a| a.as_str()).unwrap_or_default();
    Some((action.to_string(), source.to_string()))
}

type Barrier = tokio::sync::oneshot::Sender<()>;

async fn listen(
    socket: PathBuf,
    shared: Arc<Shared>,
    mut barriers: tokio::sync::mpsc::Receiver<Barrier>,
) {
    let mut pause = RECONNECT_MIN;
    loop {
        match connect(&socket).await {
            Ok(ws) => {
                // Whatever happened while nobody listened is unknown.
                shared.bump();
                shared.connected.store(true, Ordering::SeqCst);
                pause = RECONNECT_MIN;
                tracing::debug!("incus event feed connected on {}", socket.display());
                if let Err(e) = follow(ws, &shared, &mut barriers).await {
                    tracing::debug!("incus event feed broke: {e}");
                }
                shared.connected.store(false, Ordering::SeqCst);
                shared.bump();
            }
            Err(e) => tracing::debug!("incus event feed: cannot subscribe: {e}"),
        }
        // Barriers asked for while disconnected are dropped (their callers see `None`).
        while barriers.try_recv().is_ok() {}
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RECONNECT_MAX);
    }
}

/// Reads frames until the stream ends, counting changes and answering barriers: each
/// barrier sends a ping with its own number and is released when that pong comes back.
async fn follow(
    mut ws: Stream,
    shared: &Shared,
    barriers: &mut tokio::sync::mpsc::Receiver<Barrier>,
) -> Result<(), String> {
    use futures_util::SinkExt;
    let mut waiting: Vec<(u64, Barrier)> = Vec::new();
    let mut next_ping = 0u64;
    loop {
        tokio::select! {
            frame = ws.next() => match frame {
                None | Some(Ok(Message::Close(_))) => return Ok(()),
                Some(Err(e)) => return Err(e.to_string()),
                Some(Ok(Message::Text(text))) => {
                    if let Some((action, source)) = lifecycle_action(text.as_str())
                        && shared.counts(&action, &source)
                    {
                        shared.changes.fetch_add(1, Ordering::SeqCst);
                        shared.bump();
                    }
                }
                Some(Ok(Message::Pong(payload))) => {
                    let id = <[u8; 8]>::try_from(payload.as_ref()).map(u64::from_be_bytes).ok();
                    if let Some(i) = waiting.iter().position(|(n, _)| Some(*n) == id) {
                        // Earlier barriers whose pong was lost are released with it.
                        for (_, done) in waiting.drain(..=i) {
                            let _ = done.send(());
                        }
                    }
                }
                Some(Ok(_)) => {}
            },
            Some(done) = barriers.recv() => {
                next_ping += 1;
                let payload = next_ping.to_be_bytes().to_vec();
                ws.send(Message::Ping(payload.into())).await.map_err(|e| e.to_string())?;
                // Callers that gave up (their pong never came) are dropped.
                waiting.retain(|(_, d)| !d.is_closed());
                waiting.push((next_ping, done));
            }
        }
    }
}

type Stream = tokio_tungstenite::WebSocketStream<tokio::net::UnixStream>;

async fn connect(socket: &std::path::Path) -> Result<Stream, String> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_EVENT_BYTES))
        .max_frame_size(Some(MAX_EVENT_BYTES));
    // Only the path and query matter to incusd; `incus` becomes the Host header.
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        "ws://incus/1.0/events?type=lifecycle",
        stream,
        Some(config),
    )
    .await
    .map_err(|e| format!("subscribing to /1.0/events: {e}"))?;
    // incusd registers the listener after the handshake: one ping answered means it
    // is in place, so no event sent after the feed says "connected" is missed.
    let mut ws = ws;
    {
        use futures_util::SinkExt;
        ws.send(Message::Ping(b"subscribed?".to_vec().into())).await.map_err(|e| e.to_string())?;
    }
    let answered = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(frame) = ws.next().await {
            match frame {
                Ok(Message::Pong(_)) => return Ok(()),
                Ok(Message::Close(_)) => break,
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Err("the event stream closed before answering a ping".to_string())
    })
    .await
    .map_err(|_| "no answer to a ping on the event stream within 5s".to_string())?;
    answered?;
    Ok(ws)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_do_not_count_as_changes_and_unknown_actions_do() {
        // (lifecycle action, whether a cached observation is invalidated)
        let table = [
            ("instance-created", true),
            ("instance-started", true),
            ("instance-updated", true),
            ("instance-stopped", true),
            ("instance-deleted", true),
            ("instance-paused", true),
            ("instance-snapshot-created", true),
            ("instance-file-pushed", true),
            ("profile-updated", true),
            ("network-updated", true),
            ("config-updated", false),
            ("instance-log-deleted", false),
            ("some-future-action", true),
            ("instance-exec", false),
            ("instance-console", false),
            ("instance-log-retrieved", false),
            ("instance-file-retrieved", false),
        ];
        for (action, counts) in table {
            assert_eq!(changes_state(action), counts, "{action}");
        }
    }

    #[test]
    fn only_lifecycle_frames_have_an_action_and_unreadable_ones_count() {
        let lifecycle = r#"{"type":"lifecycle","metadata":{"action":"instance-started","source":"/1.0/instances/web"}}"#;
        assert_eq!(
            lifecycle_action(lifecycle),
            Some(("instance-started".to_string(), "/1.0/instances/web".to_string()))
        );
        let operation = r#"{"type":"operation","metadata":{"id":"x","status":"Running"}}"#;
        assert_eq!(lifecycle_action(operation), None);
        let shared = Shared::default();
        for broken in ["not json", r#"{"type":"lifecycle","metadata":{}}"#] {
            let event = lifecycle_action(broken);
            assert!(event.is_some_and(|(a, s)| shared.counts(&a, &s)), "{broken}");
        }
    }

    #[test]
    fn with_an_interest_only_events_about_those_names_or_no_name_count() {
        let interest: BTreeSet<String> = [
            "instances/web-blue",
            "profiles/veza-app",
            "networks/net-veza",
            "storage-pools/default",
        ]
        .map(String::from)
        .into();
        // (source, counts with the interest)
        let table = [
            ("/1.0/instances/web-blue", true),
            ("/1.0/instances/web-blue/snapshots/s1", true),
            ("/1.0/instances/web-blue?project=default", true),
            ("/1.0/profiles/veza-app", true),
            ("/1.0/networks/net-veza", true),
            ("/1.0/storage-pools/default/volumes/custom/x", true),
            ("/1.0/instances/someone-elses", false),
            ("/1.0/profiles/vt-sentinel", false),
            ("/1.0/profiles/web-blue", false),
            ("/1.0/projects/default", false),
            ("/1.0", true),
            ("", true),
        ];
        for (source, counts) in table {
            assert_eq!(concerns(source, Some(&interest)), counts, "{source}");
            assert!(concerns(source, None), "without an interest everything counts: {source}");
        }
        // A rename counts whatever the names (the event carries the new one).
        let shared = Shared::default();
        if let Ok(mut i) = shared.interest.write() {
            *i = Some(interest);
        }
        assert!(shared.counts("instance-renamed", "/1.0/instances/someone-elses"));
        assert!(!shared.counts("instance-updated", "/1.0/instances/someone-elses"));
        assert!(!shared.counts("instance-exec", "/1.0/instances/web-blue"));
    }
}
