//! The daemon's control socket (`STATE_DIR/control.sock`): one request per connection,
//! one line, answered with the JSON summary of the next completed sync.
//!
//! Requests: `sync` (sync now), or `sync --now NAME` (sync now and run the steps that
//! wait for a maintenance window, recorded with NAME). `--now` is accepted only from a
//! client running as root (the socket's peer credentials), as `apply --now` is.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt as _, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

use crate::reconcile::SyncSummary;

/// The control socket of the daemon.
pub fn control_socket(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("control.sock")
}

/// A `sync` request waiting for the next completed sync.
pub(crate) struct Waiter {
    /// Where the summary goes.
    pub reply: oneshot::Sender<SyncSummary>,
    /// `--now`: who asked to run held steps now.
    pub run_now_by: Option<String>,
}

/// The longest request line read (`sync --now` and a login name).
const MAX_REQUEST: u64 = 96;

/// What a request line asks for: `Ok(None)` a plain sync, `Ok(Some(name))` a sync with
/// `--now` by `name`, `Err` why it is refused. `root`: the client runs as root.
pub(crate) fn parse_request(line: &str, root: bool) -> Result<Option<String>, String> {
    let line = line.trim();
    if line == "sync" {
        return Ok(None);
    }
    // The name is the rest of the line (`uid 0` when the caller has no login name).
    let by = line
        .strip_prefix("sync --now ")
        .map(str::trim)
        .filter(|by| !by.is_empty() && by.len() <= 64 && !by.chars().any(char::is_control));
    match by {
        Some(by) if !root => {
            Err(format!("`--now` is for root only (asked by {by}); run it with sudo"))
        }
        Some(by) => Ok(Some(by.to_string())),
        None => Err("unknown request (expected `sync` or `sync --now NAME`)".to_string()),
    }
}

/// The request line `veza-agent sync` sends.
pub(crate) fn request_line(run_now_by: Option<&str>) -> String {
    match run_now_by {
        Some(by) => format!("sync --now {by}\n"),
        None => "sync\n".to_string(),
    }
}

/// How long a client has to send its request line; an idle one is then let go.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The pause after a failed `accept` (no file descriptor left), before the next.
const ACCEPT_PAUSE: Duration = Duration::from_millis(200);

/// Accepts `sync` requests; each gets the summary of the next completed sync.
pub(crate) async fn serve_control(listener: UnixListener, tx: mpsc::Sender<Waiter>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, most likely: pause rather than spin on it.
                tracing::warn!("control socket: accept failed: {e}");
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        let root = stream.peer_cred().is_ok_and(|c| c.uid() == 0);
        let tx = tx.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(read.take(MAX_REQUEST));
            let asked =
                match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await {
                    Ok(Ok(_)) => parse_request(&line, root),
                    Ok(Err(e)) => Err(format!("unreadable request: {e}")),
                    Err(_) => Err(format!("no request line within {REQUEST_TIMEOUT:?}")),
                };
            let run_now_by = match asked {
                Ok(by) => by,
                Err(why) => {
                    let _ = write.write_all(format!("error: {why}\n").as_bytes()).await;
                    return;
                }
            };
            let (reply, wait) = oneshot::channel();
            if tx.send(Waiter { reply, run_now_by }).await.is_err() {
                return;
            }
            if let Ok(summary) = wait.await {
                let text = serde_json::to_string(&summary).unwrap_or_default();
                let _ = write.write_all(format!("{text}\n").as_bytes()).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_idle_client_is_let_go_and_a_request_still_reaches_the_loop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("control.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let (tx, mut rx) = mpsc::channel(1);
        tokio::spawn(serve_control(listener, tx));
        // Connected, sends nothing: answered with an error once the limit passes.
        let idle = tokio::net::UnixStream::connect(&path).await.expect("connect");
        let mut reply = String::new();
        BufReader::new(idle).read_line(&mut reply).await.expect("reply");
        assert_eq!(reply, "error: no request line within 5s\n");
        // A request still gets through to the sync loop.
        let mut asking = tokio::net::UnixStream::connect(&path).await.expect("connect");
        asking.write_all(b"sync\n").await.expect("send");
        let waiter = rx.recv().await.expect("the request reaches the loop");
        assert_eq!(waiter.run_now_by, None);
    }

    #[test]
    fn requests_are_a_plain_sync_or_a_sync_now_by_root() {
        /// (line, client is root, what it asks: a plain sync, `--now` by whom, or the
        /// start of why it is refused)
        type Case<'a> = (&'a str, bool, Result<Option<&'a str>, &'a str>);
        let table: &[Case] = &[
            ("sync\n", false, Ok(None)),
            ("sync\n", true, Ok(None)),
            ("sync --now alice\n", true, Ok(Some("alice"))),
            ("sync --now alice\n", false, Err("`--now` is for root only (asked by alice)")),
            ("sync --now\n", true, Err("unknown request")),
            ("sync --now uid 0\n", true, Ok(Some("uid 0"))),
            ("sync --now \n", true, Err("unknown request")),
            ("sync --later alice\n", true, Err("unknown request")),
            ("status\n", true, Err("unknown request")),
            ("", true, Err("unknown request")),
        ];
        for (line, root, want) in table {
            let got = parse_request(line, *root);
            match (want, &got) {
                (Ok(w), Ok(g)) => assert_eq!(g.as_deref(), *w, "{line:?}"),
                (Err(w), Err(g)) => assert!(g.starts_with(w), "{line:?}: {g}"),
                _ => panic!("{line:?} (root {root}): {got:?}"),
            }
        }
        let long = format!("sync --now {}\n", "x".repeat(65));
        assert!(parse_request(&long, true).is_err(), "a name longer than 64 is refused");
        // What the client sends is what the daemon reads.
        for by in [None, Some("alice")] {
            assert_eq!(parse_request(&request_line(by), true), Ok(by.map(str::to_string)));
        }
    }
}
