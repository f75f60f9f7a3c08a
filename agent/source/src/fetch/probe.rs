//! The question a poll asks first: does the forge advertise anything the mirror does not
//! hold yet? One protocol-v2 `ls-refs` request (`POST …/git-upload-pack` with
//! `Git-Protocol: version=2` and a `ref-prefix` per ref of interest), sent without the
//! capability advertisement before it: smart HTTP is stateless, so a server that speaks
//! v2 (git's `http-backend`, Forgejo) answers it on its own. When the branch tip and the
//! tip's approval tags it lists are already in the mirror, the fetch is skipped; anything
//! else (a new tip, a new approval, an error, a server that does not speak v2, a redirect)
//! falls back to the full fetch, which decides and reports. The probe never decides what
//! is accepted: it only saves the work of a fetch that would have changed nothing.
//!
//! The HTTP client is kept between polls (its connection too: keep-alive), built with the
//! same TLS setup as the fetch (`tls.rs`), never following redirects. Credentials follow
//! the fetch's rule: sent only to the https remote being probed, only after that remote
//! asked for them (a `401`); once it has asked, later probes send them at once, and a
//! token the remote rejected is not tried again by the probe.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use gix::ObjectId;

use super::{Credentials, FetchOptions, approval_tags_of, why};
use crate::error::FetchError;

/// The largest `ls-refs` answer read (a few refs are expected; `max_refs` of them would be
/// about 100 bytes each).
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// What one remote advertised for the refs asked about: (ref name, object id as listed,
/// not peeled).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Advertised {
    /// The refs, in the server's order.
    pub refs: Vec<(String, ObjectId)>,
}

impl Advertised {
    /// The id advertised for exactly `name`.
    pub fn get(&self, name: &str) -> Option<ObjectId> {
        self.refs.iter().find(|(n, _)| n == name).map(|(_, id)| *id)
    }

    /// The refs under `prefix`.
    pub fn under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a (String, ObjectId)> {
        self.refs.iter().filter(move |(n, _)| n.starts_with(prefix))
    }
}

/// What a remote said about credentials, per URL.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Asked {
    /// It asked (a `401`) and took these: later probes send them at once.
    Took(Credentials),
    /// It refused these: the probe does not send them again (the fetch reports).
    Refused(Credentials),
}

/// A client kept for one TLS setup.
struct Client {
    ca_file: Option<std::path::PathBuf>,
    timeout: Duration,
    https: bool,
    http: reqwest::Client,
}

/// The forge as the probe sees it: a kept HTTP client and what each remote said about
/// credentials. One per agent; cheap until first used.
#[derive(Default)]
pub struct Forge {
    client: Mutex<Option<Client>>,
    asked: Mutex<HashMap<String, Asked>>,
    /// Remotes whose answer was not a v2 ref list (an older server): not asked again.
    no_v2: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for Forge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Forge")
    }
}

/// Appends one pkt-line holding `line`.
fn pkt(body: &mut Vec<u8>, line: &str) {
    body.extend_from_slice(format!("{:04x}", line.len() + 4).as_bytes());
    body.extend_from_slice(line.as_bytes());
}

/// A v2 `ls-refs` request body asking for `prefixes`.
pub fn ls_refs_request(prefixes: &[String]) -> Vec<u8> {
    let mut body = Vec::new();
    pkt(&mut body, "command=ls-refs\n");
    pkt(&mut body, concat!("agent=veza-agent/", env!("CARGO_PKG_VERSION"), "\n"));
    body.extend_from_slice(b"0001");
    for p in prefixes {
        pkt(&mut body, &format!("ref-prefix {p}\n"));
    }
    body.extend_from_slice(b"0000");
    body
}

/// Parses a v2 `ls-refs` answer: pkt-lines `<id> <name>[ <attribute>…]`, then a flush.
/// Anything else (an `ERR` line, a v0 answer, a truncated body) is an error naming it.
pub fn parse_ls_refs(body: &[u8], max_refs: usize) -> Result<Advertised, String> {
    let mut refs = Vec::new();
    let mut rest = body;
    loop {
        let Some((len, after)) = rest.split_at_checked(4) else {
            return Err("the answer ends before its flush packet".into());
        };
        let len = std::str::from_utf8(len)
            .ok()
            .and_then(|s| usize::from_str_radix(s, 16).ok())
            .ok_or_else(|| format!("not a pkt-line length: {:?}", String::from_utf8_lossy(len)))?;
        match len {
            0 => {
                return if after.is_empty() {
                    Ok(Advertised { refs })
                } else {
                    Err("data after the flush packet".into())
                };
            }
            1..=4 => return Err(format!("unexpected special packet {len:04x}")),
            _ => {}
        }
        let Some((line, after)) = after.split_at_checked(len - 4) else {
            return Err("a pkt-line runs past the end of the answer".into());
        };
        rest = after;
        let line = std::str::from_utf8(line).map_err(|_| "a ref line is not UTF-8".to_string())?;
        let line = line.strip_suffix('\n').unwrap_or(line);
        if let Some(message) = line.strip_prefix("ERR ") {
            return Err(format!("the server said: {message}"));
        }
        let mut words = line.split(' ');
        let (Some(id), Some(name)) = (words.next(), words.next()) else {
            return Err(format!("not a ref line: {line:?}"));
        };
        let id = (id.len() == 40)
            .then(|| ObjectId::from_hex(id.as_bytes()).ok())
            .flatten()
            .ok_or_else(|| format!("not an object id in {line:?}"))?;
        if !name.starts_with("refs/") && name != "HEAD" {
            return Err(format!("not a ref name in {line:?}"));
        }
        refs.push((name.to_string(), id));
        if refs.len() > max_refs {
            return Err(format!("more than {max_refs} refs listed"));
        }
    }
}

/// Whether a failed probe was a `401`.
struct Unauthorized;

impl Forge {
    /// An idle forge handle.
    pub fn new() -> Forge {
        Forge::default()
    }

    /// The kept client for `options`' TLS setup, built on first use or when it changed.
    fn client(&self, url: &str, options: &FetchOptions) -> Result<reqwest::Client, String> {
        let https = url.starts_with("https://");
        let mut kept = self.client.lock().map_err(|_| "probe client lock poisoned".to_string())?;
        if let Some(c) = kept.as_ref()
            && c.ca_file == options.ca_file
            && c.timeout == options.timeout
            && c.https == https
        {
            return Ok(c.http.clone());
        }
        let tls = if https {
            super::tls::client_config(options.ca_file.as_deref())?
        } else {
            super::tls::plain_http_config()?
        };
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(options.timeout)
            .timeout(options.timeout)
            .user_agent(concat!("veza-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(why)?;
        *kept = Some(Client {
            ca_file: options.ca_file.clone(),
            timeout: options.timeout,
            https,
            http: http.clone(),
        });
        Ok(http)
    }

    fn asked(&self, url: &str) -> Option<Asked> {
        self.asked.lock().ok().and_then(|m| m.get(url).cloned())
    }

    fn note(&self, url: &str, asked: Asked) {
        if let Ok(mut m) = self.asked.lock() {
            m.insert(url.to_string(), asked);
        }
    }

    /// What `url` advertises under `prefixes` (one request, two when the remote first asks
    /// for credentials).
    pub async fn ls_refs(
        &self,
        url: &str,
        prefixes: &[String],
        options: &FetchOptions,
    ) -> Result<Advertised, FetchError> {
        let remote = |reason: String| FetchError::Remote { url: url.to_string(), reason };
        if let Some(why) = self.no_v2.lock().ok().and_then(|m| m.get(url).cloned()) {
            return Err(remote(format!("not asked again: {why}")));
        }
        let client = self.client(url, options).map_err(remote)?;
        let https = url.starts_with("https://");
        let body = ls_refs_request(prefixes);
        let creds = options.credentials.as_ref();
        let send_at_once = match (self.asked(url), creds) {
            (Some(Asked::Took(took)), Some(c)) => &took == c,
            (Some(Asked::Refused(refused)), Some(c)) if &refused == c => {
                return Err(remote("the remote refused these credentials before".into()));
            }
            _ => false,
        };
        let first = self.post(&client, url, &body, send_at_once.then_some(creds).flatten());
        let answer = match first.await.map_err(remote)? {
            Ok(bytes) => bytes,
            Err(Unauthorized) => {
                let (Some(c), true, false) = (creds, https, send_at_once) else {
                    return Err(remote("the remote asks for credentials (HTTP 401)".into()));
                };
                match self.post(&client, url, &body, Some(c)).await.map_err(remote)? {
                    Ok(bytes) => {
                        self.note(url, Asked::Took(c.clone()));
                        bytes
                    }
                    Err(Unauthorized) => {
                        self.note(url, Asked::Refused(c.clone()));
                        return Err(remote("the remote refused the credentials (HTTP 401)".into()));
                    }
                }
            }
        };
        parse_ls_refs(&answer, options.max_refs).map_err(|e| {
            let why = format!("its answer to ls-refs was not a protocol v2 ref list: {e}");
            if let Ok(mut m) = self.no_v2.lock() {
                m.insert(url.to_string(), why.clone());
            }
            remote(why)
        })
    }

    /// One `ls-refs` POST; `Ok(Err(Unauthorized))` for a `401`.
    async fn post(
        &self,
        client: &reqwest::Client,
        url: &str,
        body: &[u8],
        creds: Option<&Credentials>,
    ) -> Result<Result<Vec<u8>, Unauthorized>, String> {
        let endpoint = format!("{}/git-upload-pack", url.trim_end_matches('/'));
        let mut request = client
            .post(&endpoint)
            .header("Content-Type", "application/x-git-upload-pack-request")
            .header("Accept", "application/x-git-upload-pack-result")
            .header("Git-Protocol", "version=2")
            .body(body.to_vec());
        if let Some(c) = creds {
            request = request.basic_auth(&c.username, Some(&c.token));
        }
        let mut response = request.send().await.map_err(why)?;
        match response.status().as_u16() {
            200 => {}
            401 => return Ok(Err(Unauthorized)),
            code => return Err(format!("HTTP {code} from {endpoint}")),
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(why)? {
            if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(format!("the ls-refs answer exceeds {MAX_ANSWER_BYTES} bytes"));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Ok(bytes))
    }
}

/// The prefixes a poll asks about: the branch, and the approval tags of the tip the mirror
/// holds when approvals are needed.
pub(super) fn prefixes(options: &FetchOptions, tip: ObjectId) -> Vec<String> {
    let mut prefixes = vec![format!("refs/heads/{}", options.branch)];
    if options.approval_tags {
        prefixes.push(approval_tags_of(tip));
    }
    prefixes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ls_refs_request_is_the_command_its_capabilities_and_one_prefix_per_ref() {
        let body = ls_refs_request(&["refs/heads/main".into(), "refs/tags/x/".into()]);
        let text = String::from_utf8(body).unwrap();
        let want = format!(
            "0014command=ls-refs\n{:04x}agent=veza-agent/{}\n0001\
             001fref-prefix refs/heads/main\n001cref-prefix refs/tags/x/\n0000",
            "agent=veza-agent/\n".len() + env!("CARGO_PKG_VERSION").len() + 4,
            env!("CARGO_PKG_VERSION"),
        );
        assert_eq!(text, want);
    }

    #[test]
    fn an_ls_refs_answer_is_read_strictly() {
        let a = "1111111111111111111111111111111111111111";
        let b = "2222222222222222222222222222222222222222";
        let line = |s: &str| format!("{:04x}{s}", s.len() + 4);
        let good = format!(
            "{}{}0000",
            line(&format!("{a} refs/heads/main\n")),
            line(&format!("{b} refs/tags/gitops/approve/{a}/alice peeled:{a}\n")),
        );
        // (answer, max refs, refs read or the start of the error)
        let cases: Vec<(String, usize, Result<usize, &str>)> = vec![
            (good.clone(), 10, Ok(2)),
            ("0000".into(), 10, Ok(0)),
            (good.clone(), 1, Err("more than 1 refs")),
            (good.trim_end_matches("0000").into(), 10, Err("the answer ends")),
            (format!("{good}0000"), 10, Err("data after the flush")),
            (format!("{}0000", line("ERR upload-pack: not our ref\n")), 10, Err("the server said")),
            // A v0 advertisement (what a server without v2 answers) has no object id where one belongs.
            (format!("{}0000", line("# service=git-upload-pack\n")), 10, Err("not an object id")),
            (format!("{}0000", line(&format!("{a}x refs/heads/main\n"))), 10, Err("not an object")),
            (format!("{}0000", line(&format!("{a} main\n"))), 10, Err("not a ref name")),
            (format!("0001{good}"), 10, Err("unexpected special packet")),
            ("zzzz".into(), 10, Err("not a pkt-line length")),
            ("00ff1111".into(), 10, Err("a pkt-line runs past")),
        ];
        for (answer, max, want) in cases {
            let got = parse_ls_refs(answer.as_bytes(), max);
            match (&got, want) {
                (Ok(adv), Ok(n)) => assert_eq!(adv.refs.len(), n, "{answer:?}"),
                (Err(e), Err(start)) => assert!(e.starts_with(start), "{answer:?}: {e}"),
                _ => panic!("{answer:?}: got {got:?}, want {want:?}"),
            }
        }
        let adv = parse_ls_refs(good.as_bytes(), 10).unwrap();
        assert_eq!(adv.get("refs/heads/main"), ObjectId::from_hex(a.as_bytes()).ok());
        assert_eq!(adv.under("refs/tags/gitops/approve/").count(), 1);
        assert_eq!(adv.get("refs/heads/other"), None);
    }
}
