//! A [`Probe`] with scripted answers, for tests: per address, answers given in order (the
//! last one repeats; an address without answers refuses connections), and a record of
//! every request.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use super::{HttpError, Probe, Reply};
use crate::fake_state::FakeState;

/// One scripted answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A reply with this status and no `X-Release` header.
    Status(u16),
    /// A reply with this status and `X-Release: <release>`.
    Release(u16, String),
    /// The connection is refused.
    Refused,
}

#[derive(Debug, Default)]
struct State {
    answers: BTreeMap<String, VecDeque<Answer>>,
    requests: Vec<String>,
}

/// The scripted probe. Safe to share between threads.
#[derive(Debug, Default)]
pub struct ScriptedProbe {
    state: FakeState<State>,
}

impl ScriptedProbe {
    /// A probe whose every request is refused until answers are scripted.
    pub fn new() -> ScriptedProbe {
        ScriptedProbe::default()
    }

    /// Answers to requests to `addr`, in order, after those already scripted; the last
    /// one repeats.
    pub fn script(&self, addr: &str, answers: impl IntoIterator<Item = Answer>) {
        self.state.lock().answers.entry(addr.to_string()).or_default().extend(answers);
    }

    /// Every request so far, as `GET http://ADDR/PATH (Host: HOST)` (`https` over TLS).
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().requests.clone()
    }

    /// How many requests went to `addr`.
    pub fn requests_to(&self, addr: &str) -> usize {
        let to = format!("{addr}/");
        let st = self.state.lock();
        st.requests
            .iter()
            .filter(|r| r.split_once("://").is_some_and(|(_, u)| u.starts_with(&to)))
            .count()
    }
}

impl Probe for ScriptedProbe {
    async fn get(
        &self,
        addr: &str,
        host: &str,
        path: &str,
        _timeout: Duration,
        tls: bool,
    ) -> Result<Reply, HttpError> {
        let scheme = if tls { "https" } else { "http" };
        let mut st = self.state.lock();
        st.requests.push(format!("GET {scheme}://{addr}{path} (Host: {host})"));
        let answer = match st.answers.get_mut(addr) {
            Some(queue) if queue.len() > 1 => queue.pop_front(),
            Some(queue) => queue.front().cloned(),
            None => None,
        };
        let reply = |status, release: Option<String>| Reply {
            status,
            headers: release.map(|r| ("x-release".to_string(), r)).into_iter().collect(),
            body: Vec::new(),
        };
        match answer.unwrap_or(Answer::Refused) {
            Answer::Status(status) => Ok(reply(status, None)),
            Answer::Release(status, release) => Ok(reply(status, Some(release))),
            Answer::Refused => Err(HttpError {
                scheme,
                addr: addr.to_string(),
                host: host.to_string(),
                path: path.to_string(),
                detail: "connect: Connection refused (scripted)".to_string(),
            }),
        }
    }
}
