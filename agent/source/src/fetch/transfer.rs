//! The network side of a fetch: the blocking gix fetch run on the worker thread, the
//! HTTP client's settings, the pack-size cap, and which server may receive the credentials.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gix::protocol::transport::client::blocking_io::http;

use super::{FetchOutcome, Transfer, open_options, tls, why};
use crate::error::FetchError;

/// Whether a fetch failure (its message) is about credentials: refused by the forge,
/// missing, or not sent (plain http, another host). Retrying those soon cannot help and
/// repeated 401s can lock the account. The phrases are the ones this module writes, plus
/// gix's own for a rejected identity.
pub fn is_credentials_failure(message: &str) -> bool {
    const PHRASES: [&str; 5] = [
        "were not accepted by the remote",
        "the server requires authentication",
        "rejected the credentials",
        "clear text refused",
        "they are only sent to",
    ];
    PHRASES.iter().any(|p| message.contains(p))
}

/// `https://HOST[:PORT]` of an https URL (userinfo dropped, host lower-cased); `None` for
/// any other scheme.
fn https_authority(url: &str) -> Option<String> {
    let rest = url.strip_prefix("https://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    Some(format!("https://{}", host.to_ascii_lowercase()))
}

/// Whether two `https://HOST[:PORT]` authorities name the same server (443 is implied).
fn same_authority(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        let s = s.to_ascii_lowercase();
        s.strip_suffix(":443").map(str::to_string).unwrap_or(s)
    };
    norm(a) == norm(b)
}

/// A progress sink that counts the bytes of the pack as gix reads them from the remote
/// and raises the fetch's interrupt flag once they pass the cap (gix checks the flag on
/// every read of the pack stream, and removes its temporary pack file when interrupted).
#[derive(Clone)]
struct PackCap {
    id: gix::progress::Id,
    limit: u64,
    received: Arc<std::sync::atomic::AtomicU64>,
    exceeded: Arc<AtomicBool>,
    interrupt: Arc<AtomicBool>,
}

impl PackCap {
    /// gix-pack's progress id for the bytes of the pack being read (`ReadPackBytes`).
    const PACK_BYTES: gix::progress::Id = *b"BWRB";

    fn new(limit: u64, interrupt: Arc<AtomicBool>) -> PackCap {
        PackCap {
            id: gix::progress::UNKNOWN,
            limit,
            received: Arc::default(),
            exceeded: Arc::default(),
            interrupt,
        }
    }

    fn exceeded(&self) -> bool {
        self.exceeded.load(Ordering::SeqCst)
    }

    fn child(&self, id: gix::progress::Id) -> PackCap {
        PackCap { id, ..self.clone() }
    }
}

impl gix::progress::Count for PackCap {
    fn set(&self, _step: gix::progress::Step) {}

    fn step(&self) -> gix::progress::Step {
        0
    }

    fn inc_by(&self, step: gix::progress::Step) {
        if self.id != Self::PACK_BYTES {
            return;
        }
        let total = self.received.fetch_add(step as u64, Ordering::SeqCst) + step as u64;
        if total > self.limit {
            self.exceeded.store(true, Ordering::SeqCst);
            self.interrupt.store(true, Ordering::SeqCst);
        }
    }

    fn counter(&self) -> gix::progress::StepShared {
        Arc::default()
    }
}

impl gix::progress::Progress for PackCap {
    fn init(&mut self, _max: Option<gix::progress::Step>, _unit: Option<gix::progress::Unit>) {}

    fn set_name(&mut self, _name: String) {}

    fn name(&self) -> Option<String> {
        None
    }

    fn id(&self) -> gix::progress::Id {
        self.id
    }

    fn message(&self, _level: gix::progress::MessageLevel, _message: String) {}
}

impl gix::progress::NestedProgress for PackCap {
    type SubProgress = PackCap;

    fn add_child(&mut self, _name: impl Into<String>) -> PackCap {
        self.child(gix::progress::UNKNOWN)
    }

    fn add_child_with_id(&mut self, _name: impl Into<String>, id: gix::progress::Id) -> PackCap {
        self.child(id)
    }
}

/// The blocking fetch, run on the worker thread with its own repository handle.
pub(super) fn fetch_blocking(
    dir: &Path,
    url: &str,
    refspecs: &[String],
    transfer: &Transfer,
    interrupt: Arc<AtomicBool>,
) -> Result<FetchOutcome, FetchError> {
    let (timeout, credentials) = (transfer.timeout, transfer.credentials.as_ref());
    let remote_err = |e: gix::Error| {
        let mut reason = why(e);
        if reason.contains("were not accepted by the remote") {
            reason.push_str(
                " (check the user and token in source.credentials_file, and that the token \
                 may read the repository)",
            );
        }
        FetchError::Remote { url: url.to_string(), reason }
    };
    let repo = gix::open_opts(dir, open_options())
        .map_err(|e| FetchError::Open { dir: dir.to_path_buf(), reason: why(e) })?;
    let remote = repo
        .remote_at(url)
        .map_err(remote_err)?
        .with_fetch_tags(gix::remote::fetch::Tags::None)
        .with_refspecs(refspecs.iter().map(String::as_str), gix::remote::Direction::Fetch)
        .map_err(remote_err)?;
    // Credentials come from the host config only: no prompt, no credential helpers, and
    // only for the https remote being fetched (not another host, not plain http, not a
    // redirect elsewhere). gix asks again after a rejection; a second ask (or any ask
    // without credentials) ends the fetch with a message that says what to configure.
    let mut asked = 0u32;
    let home = https_authority(url);
    let answer = move |action: gix::credentials::helper::Action| -> gix::Result<
        Option<gix::credentials::protocol::Outcome>,
    > {
        let gix::credentials::helper::Action::Get(ctx) = action else { return Ok(None) };
        asked += 1;
        let refuse = |why: String| Err(gix::Error::from_error(std::io::Error::other(why)));
        let Some(c) = credentials else {
            return refuse(
                "the server requires authentication (HTTP 401): set source.credentials_file to a \
                 file holding `username:token`"
                    .to_string(),
            );
        };
        // Who asks: gix fills in the URL it talks to (after redirects); protocol and host
        // only in some versions.
        let asking = match (ctx.url.as_ref(), ctx.protocol.as_deref(), ctx.host.as_deref()) {
            (Some(u), _, _) => Some(u.to_string()),
            (None, Some(protocol), Some(host)) => Some(format!("{protocol}://{host}")),
            _ => None,
        };
        let clear_text = || {
            refuse(
                "the server asked for credentials over plain http: they are only ever sent over \
                 https (clear text refused); use an https remote"
                    .to_string(),
            )
        };
        let Some(home) = &home else { return clear_text() };
        let Some(asking) = asking else {
            return refuse("a server asked for credentials without saying which URL".to_string());
        };
        let Some(asking) = https_authority(&asking) else { return clear_text() };
        if !same_authority(home, &asking) {
            return refuse(format!(
                "{asking} asked for credentials: they are only sent to {home}, the remote being \
                 fetched"
            ));
        }
        if asked > 1 {
            return refuse(format!(
                "the server rejected the credentials of user `{}` (HTTP 401): check the token in \
                 source.credentials_file and its access to the repository",
                c.username
            ));
        }
        Ok(Some(gix::credentials::protocol::Outcome {
            identity: gix::sec::identity::Account {
                username: c.username.clone(),
                password: c.token.clone(),
                oauth_refresh_token: None,
            },
            next: ctx.into(),
        }))
    };
    let mut connection =
        remote.connect(gix::remote::Direction::Fetch).map_err(remote_err)?.with_credentials(answer);
    if let Some(options) = http_options(&repo, url, transfer)? {
        connection = connection.with_transport_options(options);
    }
    let prepared =
        connection.prepare_fetch(gix::progress::Discard, Default::default()).map_err(remote_err)?;
    let advertised = prepared.ref_map().remote_refs.len();
    if advertised > transfer.max_refs {
        return Err(FetchError::TooManyRefs {
            url: url.to_string(),
            count: advertised,
            limit: transfer.max_refs,
        });
    }
    let cap = PackCap::new(transfer.max_pack_bytes, Arc::clone(&interrupt));
    let outcome = prepared.receive(cap.clone(), &interrupt).map_err(|e| {
        if cap.exceeded() {
            FetchError::PackTooLarge { url: url.to_string(), limit: transfer.max_pack_bytes }
        } else if interrupt.load(Ordering::SeqCst) {
            FetchError::Timeout { url: url.to_string(), timeout }
        } else {
            remote_err(e)
        }
    })?;
    let local_refs = outcome
        .ref_map
        .mappings
        .iter()
        .filter_map(|m| m.local.as_ref().map(ToString::to_string))
        .collect();
    let received_pack = matches!(outcome.status, gix::remote::fetch::Status::Change { .. });
    Ok(FetchOutcome { received_pack, local_refs })
}

/// The HTTP transport's options for `url` (`None` for other schemes): the client's
/// TLS configuration ([`tls::client_config`]) and its timeouts, a little longer than the
/// watchdog's so that the watchdog, not the client, decides and reports the timeout
/// (they only end a worker the watchdog left behind).
fn http_options(
    repo: &gix::Repository,
    url: &str,
    transfer: &Transfer,
) -> Result<Option<Box<dyn std::any::Any>>, FetchError> {
    let remote_err = |reason: String| FetchError::Remote { url: url.to_string(), reason };
    let Some(options) = repo.transport_options(url, None).map_err(|e| remote_err(why(e)))? else {
        return Ok(None);
    };
    let Ok(mut options) = options.downcast::<http::Options>() else {
        return Err(remote_err("unexpected HTTP transport options".to_string()));
    };
    // Always set, for plain http too: the client is built without a TLS setup of its own.
    let tls = if url.starts_with("https://") {
        tls::client_config(transfer.ca_file.as_deref())
    } else {
        tls::plain_http_config()
    }
    .map_err(remote_err)?;
    let backstop = transfer.timeout + Duration::from_secs(5);
    let backend = http::reqwest::Options {
        configure_client: Some(Box::new(move |client| {
            Ok(client
                .connect_timeout(backstop)
                .timeout(backstop)
                .tls_backend_preconfigured(tls.clone()))
        })),
        configure_request: None,
    };
    options.backend = Some(Arc::new(Mutex::new(backend)));
    Ok(Some(options))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_go_only_to_the_https_server_being_fetched() {
        // (remote URL, its authority)
        let authorities = [
            ("https://forge.example/veza/manifests.git", Some("https://forge.example")),
            ("https://Forge.Example:8443/x.git", Some("https://forge.example:8443")),
            ("https://agent:tok@forge.example/x.git", Some("https://forge.example")),
            ("http://forge.example/x.git", None),
            ("file:///srv/x.git", None),
        ];
        for (url, want) in authorities {
            assert_eq!(https_authority(url).as_deref(), want, "{url}");
        }
        // (remote, who asks, same server)
        let asks = [
            ("https://forge.example", "https://forge.example", true),
            ("https://forge.example", "https://forge.example:443", true),
            ("https://forge.example", "https://FORGE.example", true),
            ("https://forge.example", "https://mirror.example", false),
            ("https://forge.example", "https://forge.example:8443", false),
            ("https://forge.example", "http://forge.example", false),
        ];
        for (home, asking, same) in asks {
            assert_eq!(same_authority(home, asking), same, "{home} vs {asking}");
        }
    }
}
