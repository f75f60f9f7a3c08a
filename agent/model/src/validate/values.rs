//! Value rules shared by the validation rules: names (environment, Incus, DNS), proxy
//! and listen addresses, haproxy tokens, and the wording of problems about them.

use super::Rules;
use crate::hint::closest;
use crate::lexical;
use crate::parse::Seg;

/// An `address:port` written into `haproxy.cfg`: `what` names it in the error (`server`,
/// `listen address`) and `token` in the renderer's own rule ([`haproxy_token`]).
pub(super) fn haproxy_address_port(
    r: &mut Rules<'_>,
    path: Vec<Seg>,
    (what, token): (&str, &str),
    value: &str,
) {
    if parse_host_port(value).is_none() {
        r.value(path.clone(), format!("invalid {what} `{value}`: expected `address:port`"));
    }
    haproxy_token(r, path, token, value);
}

/// A value written into `haproxy.cfg` as one token: the renderer's own rule.
pub(super) fn haproxy_token(r: &mut Rules<'_>, path: Vec<Seg>, what: &str, value: &str) {
    if let Err(why) = lexical::haproxy_token(value) {
        r.value(
            path,
            format!("{what} `{}` cannot be written into haproxy.cfg: {why}", shown(value)),
        );
    }
}

/// A value with its control characters escaped (`\n`), so a message stays on one line.
pub(super) fn shown(value: &str) -> String {
    value
        .chars()
        .map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() })
        .collect()
}

pub(super) fn extend(p: &[Seg], seg: impl Into<Seg>) -> Vec<Seg> {
    let mut v = p.to_vec();
    v.push(seg.into());
    v
}

/// "unknown profile `x`" with a did-you-mean hint when a declared name is close.
pub(super) fn unknown_ref<'a>(
    what: &str,
    name: &str,
    known: impl Iterator<Item = &'a String>,
) -> String {
    let known: Vec<&String> = known.collect();
    match closest(name, known.iter().map(|s| s.as_str())) {
        Some(best) => format!("unknown {what} `{name}`; did you mean `{best}`?"),
        None if known.is_empty() => format!("unknown {what} `{name}`: none is declared"),
        None => format!(
            "unknown {what} `{name}`; declared: {}",
            known.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
        ),
    }
}

pub(super) fn is_env_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_lowercase()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && !s.ends_with('-')
}

/// Incus instance/profile name rules: 1-63 characters, ASCII letters, digits and
/// dashes, starting with a letter, not ending with a dash.
pub fn is_incus_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphabetic()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && !s.ends_with('-')
}

pub(super) fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

pub(super) fn parse_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let port: u16 = port.parse().ok()?;
    (port != 0 && !host.is_empty() && !host.contains(char::is_whitespace)).then_some((host, port))
}

pub(super) fn is_proxy_address(s: &str) -> bool {
    match s.split_once(':') {
        Some(("tcp" | "udp", rest)) => parse_host_port(rest).is_some(),
        Some(("unix", rest)) => rest.starts_with('/') || rest.starts_with('@'),
        _ => false,
    }
}

/// Protocol and port of a normalized `proto:host:port` listen key.
pub(super) fn listen_port(key: &str) -> Option<(&str, &str)> {
    let (proto, rest) = key.split_once(':')?;
    let (_, port) = rest.rsplit_once(':')?;
    Some((proto, port))
}

/// A listen address with every wildcard host spelled `*`, so `tcp:0.0.0.0:80` and
/// `tcp:[::]:80` compare equal; wildcard-versus-specific clashes are checked by the caller.
pub(super) fn normalize_listen(addr: &str) -> String {
    match addr.split_once(':') {
        Some((proto @ ("tcp" | "udp"), rest)) => match parse_host_port(rest) {
            Some((host, port)) if host == "0.0.0.0" || host == "::" || host == "*" => {
                format!("{proto}:*:{port}")
            }
            Some((host, port)) => format!("{proto}:{host}:{port}"),
            None => addr.to_string(),
        },
        _ => addr.to_string(),
    }
}
