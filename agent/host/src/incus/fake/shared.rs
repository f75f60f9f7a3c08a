//! [`SharedConfig`] on the fake: the project config with an ETag that changes on every
//! write, [`FakeIncus::set_shared`] for a test playing another writer, and
//! [`FakeIncus::race_next_swap`] for a writer that lands just after this agent's swap.

use super::super::shared::{SharedConfig, Swap, Versioned};
use super::super::{Result, validate_user_key};
use super::FakeIncus;

impl FakeIncus {
    /// Writes a shared key as someone else would (no call recorded), changing the ETag.
    pub fn set_shared(&self, key: &str, value: Option<&str>) {
        let mut s = self.state.lock();
        match value {
            Some(v) => s.project_config.insert(key.to_string(), v.to_string()),
            None => s.project_config.remove(key),
        };
        s.project_etag += 1;
    }

    /// The next successful swap of `key` is overwritten by `rival` right after, and still
    /// answers [`Swap::Done`]: Incus checks `If-Match` outside its write transaction, so
    /// two writers can both be told "done".
    pub fn race_next_swap(&self, key: &str, rival: &str) {
        self.state.lock().swap_rival = Some((key.to_string(), rival.to_string()));
    }

    /// A shared key's value.
    pub fn shared(&self, key: &str) -> Option<String> {
        self.state.lock().project_config.get(key).cloned()
    }
}

impl SharedConfig for FakeIncus {
    async fn shared_user_config(&self, key: &str) -> Result<Versioned> {
        let mut s = self.state.lock();
        validate_user_key(key)?;
        s.record("GET /1.0/projects/default".to_string(), false)?;
        Ok(Versioned {
            value: s.project_config.get(key).cloned(),
            etag: s.project_etag.to_string(),
        })
    }

    async fn swap_shared_user_config(
        &self,
        key: &str,
        value: Option<&str>,
        etag: &str,
    ) -> Result<Swap> {
        let mut s = self.state.lock();
        validate_user_key(key)?;
        s.record("GET /1.0/projects/default".to_string(), false)?;
        if s.project_etag.to_string() != etag {
            return Ok(Swap::Changed);
        }
        s.record("PUT /1.0/projects/default".to_string(), true)?;
        match value {
            Some(v) => s.project_config.insert(key.to_string(), v.to_string()),
            None => s.project_config.remove(key),
        };
        s.project_etag += 1;
        if let Some((_, rival)) = s.swap_rival.take_if(|(k, _)| k == key) {
            s.project_config.insert(key.to_string(), rival);
            s.project_etag += 1;
        }
        Ok(Swap::Done)
    }
}
