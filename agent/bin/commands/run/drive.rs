//! The daemon loop, `drive`: sync, answer the `sync` requests, run what follows a sync,
//! wait for the next poll (sooner after a failure: 5 s doubling up to the poll interval,
//! at once after a preemption or a request), re-read the configuration, until stopped.
//! What it drives (`Cycle`) and what wakes it (`Inputs`) are injected, so it is tested
//! here in-process on tokio's paused clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use super::Waiter;
use crate::reconcile::SyncSummary;

/// What the daemon loop drives: one sync, the schedule, and a configuration reload.
pub(super) trait Cycle {
    /// One sync (never an error: a failure is a `failed` summary); `run_now_by`: an
    /// operator's `sync --now`.
    async fn sync(&mut self, stop: &AtomicBool, run_now_by: Option<String>) -> SyncSummary;
    /// What follows a sync once its waiters have their answer (the PR previews); skipped
    /// after a preemption (the newer commit is synced first) and when stopping.
    async fn after(&mut self, stop: &AtomicBool);
    /// The poll interval and the most jitter added to it.
    fn schedule(&self) -> (Duration, Duration);
    /// Re-reads the configuration (an invalid one is rejected, the running one kept).
    fn reload(&mut self);
}

/// What wakes or stops the loop besides its timer; injected, so the loop is tested with
/// channels and tokio's paused clock instead of signals and real time.
pub(super) struct Inputs {
    /// `sync` requests: each waiter gets the summary of the next completed sync.
    pub requests: mpsc::Receiver<Waiter>,
    /// Reload requests (SIGHUP).
    pub reloads: mpsc::Receiver<()>,
    /// Wakes the wait early (a stop, an edit of the configuration or trust root).
    pub wake: Arc<tokio::sync::Notify>,
    /// Set on SIGTERM/SIGINT: the sync in progress finishes its action, then the loop ends.
    pub stop: Arc<AtomicBool>,
    /// Stop after this many syncs (tests and benches).
    pub max_syncs: Option<u64>,
}

/// The daemon loop: sync, answer the waiters, run what follows a sync (PR previews: a
/// `sync` request never waits for them), wait for the poll (sooner after a failure,
/// at once after a preemption or a `sync` request), re-read the configuration, again;
/// until `stop`. `jitter` draws the random part of each wait.
pub(super) async fn drive<C: Cycle>(
    cycle: &mut C,
    mut inputs: Inputs,
    jitter: impl Fn(Duration) -> Duration,
) {
    let mut waiters: Vec<Waiter> = Vec::new();
    let mut syncs = 0u64;
    let mut failures_in_a_row = 0u32;
    let mut refused_in_a_row = 0u32;
    loop {
        // A `sync --now` among the requests this sync answers runs held steps now.
        let run_now_by = waiters.iter().find_map(|w| w.run_now_by.clone());
        let summary = cycle.sync(&inputs.stop, run_now_by).await;
        tracing::info!("sync: {summary}");
        tracing::debug!("sync stages: {}", crate::reconcile::describe_stages(&summary.stages_us));
        for w in waiters.drain(..) {
            let _ = w.reply.send(summary.clone());
        }
        if !summary.preempted && !inputs.stop.load(Ordering::SeqCst) {
            cycle.after(&inputs.stop).await;
        }
        syncs += 1;
        if inputs.stop.load(Ordering::SeqCst) || inputs.max_syncs.is_some_and(|m| syncs >= m) {
            break;
        }
        if summary.preempted {
            continue; // a newer commit is waiting: sync it now
        }
        failures_in_a_row =
            if retry_soon(&summary) { failures_in_a_row.saturating_add(1) } else { 0 };
        refused_in_a_row =
            if credentials_refused(&summary) { refused_in_a_row.saturating_add(1) } else { 0 };
        let (poll, max_jitter) = cycle.schedule();
        let pause = next_pause(poll, failures_in_a_row, refused_in_a_row) + jitter(max_jitter);
        if failures_in_a_row > 0 {
            tracing::info!(
                "sync failed {failures_in_a_row} time(s) in a row; retrying in {pause:?}"
            );
        }
        if refused_in_a_row > 0 {
            tracing::warn!(
                "the forge refused the credentials {refused_in_a_row} time(s) in a row; asking again in {pause:?} (`veza-agent sync`, or a change of the credentials file, asks at once)"
            );
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            Some(w) = inputs.requests.recv() => {
                waiters.push(w);
                while let Ok(w) = inputs.requests.try_recv() {
                    waiters.push(w);
                }
                refused_in_a_row = 0;
            }
            () = inputs.wake.notified() => refused_in_a_row = 0,
            Some(()) = inputs.reloads.recv() => {
                cycle.reload();
                refused_in_a_row = 0;
            }
        }
        if inputs.stop.load(Ordering::SeqCst) {
            break;
        }
        // Pick up configuration edits at every cycle, keeping the old one when invalid.
        cycle.reload();
    }
}

/// Whether a sync is retried before the next poll: it failed, and not on credentials
/// (a quick retry cannot fix those, and repeated 401s can lock the account).
fn retry_soon(summary: &SyncSummary) -> bool {
    summary.outcome == veza_state::Outcome::Failed
        && !summary.reason.as_deref().is_some_and(veza_source::fetch::is_credentials_failure)
}

/// Whether the forge refused the agent's credentials (or they could not be sent).
fn credentials_refused(summary: &SyncSummary) -> bool {
    summary.outcome == veza_state::Outcome::Failed
        && summary.reason.as_deref().is_some_and(veza_source::fetch::is_credentials_failure)
}

/// The longest wait between two asks with credentials the forge keeps refusing.
const CREDENTIALS_MAX_PAUSE: Duration = Duration::from_secs(15 * 60);

/// First retry delay after a failed sync; it doubles with each further failure.
const FIRST_RETRY: Duration = Duration::from_secs(5);

/// The wait before the next sync: the poll interval; after `failures` failed syncs in a
/// row, `FIRST_RETRY × 2^(failures-1)` when that is shorter; after the forge refused the
/// credentials `refused` times in a row, the poll interval doubling with each further
/// refusal up to [`CREDENTIALS_MAX_PAUSE`] (a forge locks an account that keeps failing to
/// log in; a poll every few seconds would).
fn next_pause(poll: Duration, failures: u32, refused: u32) -> Duration {
    let doubled = |base: Duration, n: u32| base.saturating_mul(1u32 << (n - 1).min(20));
    match (failures, refused) {
        (_, 1..) => doubled(poll, refused).min(CREDENTIALS_MAX_PAUSE).max(poll),
        (0, 0) => poll,
        (1.., 0) => doubled(FIRST_RETRY, failures).min(poll),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    #[test]
    fn only_failures_a_retry_may_fix_are_retried_soon() {
        use veza_state::Outcome;
        let summary = |outcome, reason: &str| SyncSummary {
            outcome,
            commit: None,
            reason: Some(reason.to_string()),
            steps: 0,
            duration_ms: 0,
            preempted: false,
            refusals: Vec::new(),
            stages_us: Vec::new(),
        };
        // (outcome, reason, retried soon)
        let table = [
            (
                Outcome::Failed,
                "observing Incus: `GET /1.0/instances` did not finish within 30s",
                true,
            ),
            (Outcome::Failed, "fetch: all 1 remote(s) failed: [connection refused]", true),
            (Outcome::Failed, "step 2 (deploy release) failed: artifact download: HTTP 502", true),
            (
                Outcome::Failed,
                "fetch: Credentials provided for \"https://f/x.git\" were not accepted by the remote",
                false,
            ),
            (Outcome::Failed, "fetch: the server requires authentication (HTTP 401)", false),
            (Outcome::Rejected, "signature: unsigned commit", false),
            (Outcome::RolledBack, "green never became healthy", false),
            (Outcome::Applied, "", false),
            (Outcome::NoChange, "", false),
            // Held for a maintenance window: the next poll (or `sync --now`) runs it.
            (Outcome::Waiting, "waiting for window, opens at 2026-01-04T02:00:00+01:00", false),
        ];
        for (outcome, reason, want) in table {
            assert_eq!(retry_soon(&summary(outcome, reason)), want, "{outcome:?}: {reason}");
        }
    }

    #[test]
    fn failed_syncs_are_retried_sooner_than_the_poll_and_refused_credentials_later() {
        let s = Duration::from_secs;
        // (poll interval, failures in a row, refusals of the credentials in a row, pause)
        let table = [
            (s(300), 0, 0, s(300)),
            (s(300), 1, 0, s(5)),
            (s(300), 2, 0, s(10)),
            (s(300), 3, 0, s(20)),
            (s(300), 6, 0, s(160)),
            (s(300), 7, 0, s(300)), // capped at the poll interval
            (s(300), 1000, 0, s(300)),
            (s(2), 1, 0, s(2)), // a poll shorter than the first retry wins
            (s(3600), 1, 0, s(5)),
            // Refused credentials: never sooner than the poll, doubling up to 15 min.
            (s(8), 0, 1, s(8)),
            (s(8), 0, 2, s(16)),
            (s(8), 0, 3, s(32)),
            (s(8), 0, 7, s(512)),
            (s(8), 0, 8, s(900)),
            (s(8), 0, 40, s(900)),
            (s(3600), 0, 1, s(3600)),
            (s(3600), 0, 5, s(3600)),
        ];
        for (poll, failures, refused, want) in table {
            let got = next_pause(poll, failures, refused);
            assert_eq!(got, want, "poll {poll:?}, {failures} failures, {refused} refusals");
        }
    }

    /// One scripted sync: its outcome, and whether a newer commit preempted it.
    type Scripted1 = (veza_state::Outcome, bool);

    /// A scripted cycle: each sync returns the next outcome (then `no-change` forever) and
    /// records when it ran on tokio's (paused) clock.
    struct Scripted {
        outcomes: std::collections::VecDeque<(veza_state::Outcome, bool)>,
        started: tokio::time::Instant,
        at: Vec<Duration>,
        reloads: usize,
        poll: Duration,
        stop_after: Option<(usize, Arc<AtomicBool>)>,
        /// The `--now` each sync ran with.
        run_now_by: Vec<Option<String>>,
        /// After which sync (1-based) the after-sync work ran.
        after: Vec<usize>,
        /// How long the after-sync work takes.
        after_takes: Duration,
        /// Why a sync that did not succeed failed.
        reason: &'static str,
    }

    impl Scripted {
        fn new(poll: Duration, outcomes: &[(veza_state::Outcome, bool)]) -> Scripted {
            Scripted {
                outcomes: outcomes.iter().copied().collect(),
                started: tokio::time::Instant::now(),
                at: Vec::new(),
                reloads: 0,
                poll,
                stop_after: None,
                run_now_by: Vec::new(),
                after: Vec::new(),
                after_takes: Duration::ZERO,
                reason: "observing Incus: timed out",
            }
        }
        fn seconds(&self) -> Vec<u64> {
            self.at.iter().map(Duration::as_secs).collect()
        }
    }

    impl Cycle for Scripted {
        async fn sync(&mut self, _stop: &AtomicBool, run_now_by: Option<String>) -> SyncSummary {
            self.at.push(self.started.elapsed());
            self.run_now_by.push(run_now_by);
            if let Some((n, stop)) = &self.stop_after
                && self.at.len() >= *n
            {
                stop.store(true, Ordering::SeqCst);
            }
            let (outcome, preempted) =
                self.outcomes.pop_front().unwrap_or((veza_state::Outcome::NoChange, false));
            SyncSummary {
                outcome,
                commit: None,
                reason: Some(self.reason.into()),
                steps: 0,
                duration_ms: 0,
                preempted,
                refusals: Vec::new(),
                stages_us: Vec::new(),
            }
        }
        async fn after(&mut self, _stop: &AtomicBool) {
            self.after.push(self.at.len());
            tokio::time::sleep(self.after_takes).await;
        }
        fn schedule(&self) -> (Duration, Duration) {
            (self.poll, Duration::from_secs(3))
        }
        fn reload(&mut self) {
            self.reloads += 1;
        }
    }

    struct Handles {
        requests: mpsc::Sender<Waiter>,
        reloads: mpsc::Sender<()>,
        wake: Arc<tokio::sync::Notify>,
        stop: Arc<AtomicBool>,
    }

    /// A `sync` request (`run_now_by`: a `sync --now` by whom) sent `after` the loop
    /// started; its answer and when it came.
    async fn request_at(
        handles: Handles,
        after: Duration,
        run_now_by: Option<String>,
    ) -> (SyncSummary, tokio::time::Instant) {
        tokio::time::sleep(after).await;
        let (reply, rx) = oneshot::channel();
        handles.requests.send(Waiter { reply, run_now_by }).await.expect("the loop listens");
        (rx.await.expect("answered"), tokio::time::Instant::now())
    }

    fn loop_inputs(max_syncs: Option<u64>) -> (Inputs, Handles) {
        let (requests_tx, requests) = mpsc::channel(4);
        let (reloads_tx, reloads) = mpsc::channel(4);
        let wake = Arc::new(tokio::sync::Notify::new());
        let stop = Arc::new(AtomicBool::new(false));
        let handles = Handles {
            requests: requests_tx,
            reloads: reloads_tx,
            wake: wake.clone(),
            stop: stop.clone(),
        };
        (Inputs { requests, reloads, wake, stop, max_syncs }, handles)
    }

    /// The jitter drawn: its maximum, so the tests know each wait exactly.
    fn full_jitter(max: Duration) -> Duration {
        max
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_polls_backs_off_after_failures_and_syncs_at_once_after_a_preemption() {
        use veza_state::Outcome::{Applied, Failed, NoChange, Rejected};
        let poll = Duration::from_secs(60);
        // (outcomes, when each sync ran in seconds): poll 60 s + jitter 3 s; retries
        // after 5, 10, 20 s (+3) while failing; a preempted sync is followed at once; a
        // refusal is not retried sooner.
        let table: [(&[Scripted1], &[u64]); 4] = [
            (&[], &[0, 63, 126, 189]),
            (&[(Failed, false), (Failed, false), (Failed, false)], &[0, 8, 21, 44]),
            (&[(Failed, false), (Applied, false), (Failed, false)], &[0, 8, 71, 79]),
            (&[(NoChange, true), (Rejected, false)], &[0, 0, 63, 126]),
        ];
        for (outcomes, want) in table {
            let mut cycle = Scripted::new(poll, outcomes);
            let (inputs, _handles) = loop_inputs(Some(want.len() as u64));
            drive(&mut cycle, inputs, full_jitter).await;
            assert_eq!(cycle.seconds(), want, "{outcomes:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn refused_credentials_are_asked_again_ever_more_rarely_until_someone_asks() {
        use veza_state::Outcome::Failed;
        // Poll 8 s + jitter 3 s: refused at 0, again after 8, 16, 32 s (+3 each); a sync
        // request at 100 s is answered at once, and the next ask waits one poll again.
        let mut cycle = Scripted::new(Duration::from_secs(8), &[(Failed, false); 6]);
        cycle.reason = "fetch: the server requires authentication (HTTP 401)";
        let (inputs, handles) = loop_inputs(Some(6));
        let asked = request_at(handles, Duration::from_secs(100), None);
        let ((), _) = tokio::join!(drive(&mut cycle, inputs, full_jitter), asked);
        assert_eq!(cycle.seconds(), [0, 11, 30, 65, 100, 111]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_sync_request_is_answered_by_the_next_sync_without_waiting_for_the_poll() {
        let mut cycle = Scripted::new(Duration::from_secs(3600), &[]);
        let (inputs, handles) = loop_inputs(Some(2));
        let asked = request_at(handles, Duration::from_secs(10), None);
        let ((), (answer, _)) = tokio::join!(drive(&mut cycle, inputs, full_jitter), asked);
        assert_eq!(answer.outcome, veza_state::Outcome::NoChange);
        assert_eq!(cycle.seconds(), [0, 10]);
    }

    /// PR previews run after a sync, once its waiters have their answer; never right after
    /// a preempted sync (the newer commit goes first).
    #[tokio::test(start_paused = true)]
    async fn previews_follow_a_sync_once_its_waiters_are_answered_never_after_a_preemption() {
        use veza_state::Outcome::{Applied, NoChange};
        let mut cycle =
            Scripted::new(Duration::from_secs(60), &[(NoChange, true), (Applied, false)]);
        cycle.after_takes = Duration::from_secs(30);
        let (inputs, handles) = loop_inputs(Some(3));
        let asked = request_at(handles, Duration::from_secs(50), None);
        let started = tokio::time::Instant::now();
        let ((), (answer, answered_at)) =
            tokio::join!(drive(&mut cycle, inputs, full_jitter), asked);
        assert_eq!(answer.outcome, NoChange);
        // Sync 1 was preempted: sync 2 at once, then its previews (30 s); the request at
        // 50 s is answered at 50 s, before the previews that follow sync 3.
        assert_eq!(cycle.seconds(), [0, 0, 50]);
        assert_eq!(cycle.after, [2, 3]);
        assert_eq!((answered_at - started).as_secs(), 50);
    }

    /// `sync --now` runs the next sync (only that one) with the operator's override.
    #[tokio::test(start_paused = true)]
    async fn a_sync_now_request_overrides_windows_for_the_sync_that_answers_it() {
        let mut cycle = Scripted::new(Duration::from_secs(60), &[]);
        let (inputs, handles) = loop_inputs(Some(3));
        let asked = request_at(handles, Duration::from_secs(10), Some("alice".into()));
        let ((), _) = tokio::join!(drive(&mut cycle, inputs, full_jitter), asked);
        assert_eq!(cycle.seconds(), [0, 10, 73]);
        assert_eq!(cycle.run_now_by, [None, Some("alice".to_string()), None]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_ends_the_wait_at_once_and_a_stop_during_a_sync_ends_the_loop_after_it() {
        // Requested while waiting: the loop wakes and ends without another sync.
        let mut cycle = Scripted::new(Duration::from_secs(3600), &[]);
        let (inputs, handles) = loop_inputs(None);
        let stopper = async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            handles.stop.store(true, Ordering::SeqCst);
            handles.wake.notify_one();
        };
        let started = tokio::time::Instant::now();
        tokio::join!(drive(&mut cycle, inputs, full_jitter), stopper);
        assert_eq!((cycle.seconds(), started.elapsed().as_secs()), (vec![0], 30));
        // Requested during the third sync: that sync completes, then the loop ends.
        let mut cycle = Scripted::new(Duration::from_secs(10), &[]);
        let (inputs, handles) = loop_inputs(None);
        cycle.stop_after = Some((3, handles.stop.clone()));
        drive(&mut cycle, inputs, full_jitter).await;
        assert_eq!(cycle.seconds(), [0, 13, 26]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reload_request_rereads_the_configuration_and_each_cycle_does_too() {
        let mut cycle = Scripted::new(Duration::from_secs(3600), &[]);
        let (inputs, handles) = loop_inputs(Some(2));
        let hup = async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            handles.reloads.send(()).await.expect("the loop listens");
            handles
        };
        let ((), _handles) = tokio::join!(drive(&mut cycle, inputs, full_jitter), hup);
        // SIGHUP cuts the hour's wait short: the configuration is re-read (then once more
        // at the end of the cycle, as every cycle does) and the next sync runs at once.
        assert_eq!((cycle.reloads, cycle.seconds()), (2, vec![0, 5]));
    }
}
