//! Lexical rules for values that end up inside generated config files: one set, used by
//! `validate` (so the manifests repository's CI refuses them) and by the renderers
//! (`veza_plan::edge` for `haproxy.cfg`, [`crate::units`] for systemd units), so a value
//! `validate` accepts is a value the renderers accept.
//!
//! Each rule returns `Err(why)`, a phrase that completes "`VALUE` cannot be written into
//! FILE: …".

/// One HAProxy config token: not empty, no whitespace, control characters, comment sign,
/// quotes or backslashes (any of them could end the token or start a new directive).
pub fn haproxy_token(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        Err("it is empty")
    } else if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err("it contains whitespace or control characters")
    } else if value.chars().any(|c| matches!(c, '#' | '"' | '\'' | '\\')) {
        Err("it contains `#`, a quote or a backslash")
    } else {
        Ok(())
    }
}

/// Several HAProxy tokens on one line, separated by single spaces.
pub fn haproxy_words(value: &str) -> Result<(), &'static str> {
    if value.trim().is_empty() {
        return Err("it is empty");
    }
    if value.split(' ').filter(|w| !w.is_empty()).any(|w| haproxy_token(w).is_err()) {
        return Err("it must be plain words separated by spaces");
    }
    Ok(())
}

/// A value written on one line of a systemd unit (a comment or a setting): no control
/// characters, so no newline can start a new setting.
pub fn unit_line(value: &str) -> Result<(), &'static str> {
    if value.chars().any(char::is_control) {
        Err("it contains a newline or another control character")
    } else {
        Ok(())
    }
}

/// A systemd `User=`: letters, digits, `_`, `-` and `.`.
pub fn unit_user(value: &str) -> Result<(), &'static str> {
    plain(value, b"_-.").then_some(()).ok_or("use letters, digits, `_`, `-` and `.`")
}

/// A time zone as written after an `OnCalendar=` expression: letters, digits, `/`, `_`,
/// `+` and `-`.
pub fn time_zone(value: &str) -> Result<(), &'static str> {
    plain(value, b"/_+-").then_some(()).ok_or("use letters, digits, `/`, `_`, `+` and `-`")
}

fn plain(value: &str, extra: &[u8]) -> bool {
    !value.is_empty() && value.bytes().all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haproxy_tokens_refuse_what_could_inject_directives() {
        for bad in ["", "a b", "a\nbackend x", "a#b", "x\"y", "tab\there", "q'", "b\\s"] {
            assert!(haproxy_token(bad).is_err(), "{bad:?}");
        }
        for good in ["/api/v1/health", "veza-backend-blue.lxd:8080", "VEZA_prod", "[::1]:80"] {
            assert!(haproxy_token(good).is_ok(), "{good:?}");
        }
        assert!(haproxy_words("/dev/log local0").is_ok());
        assert!(haproxy_words("stderr format short local0 info").is_ok());
        assert!(haproxy_words("x\nfrontend evil").is_err());
    }

    #[test]
    fn unit_values() {
        for (value, ok) in [("0 3 * * *", true), ("0 3\n* * *", false), ("a\rb", false)] {
            assert_eq!(unit_line(value).is_ok(), ok, "{value:?}");
        }
        for (value, ok) in [("postgres", true), ("www-data", true), ("ro ot", false), ("", false)] {
            assert_eq!(unit_user(value).is_ok(), ok, "{value:?}");
        }
        for (value, ok) in
            [("Europe/Paris", true), ("UTC", true), ("Etc/GMT+1", true), ("a b", false)]
        {
            assert_eq!(time_zone(value).is_ok(), ok, "{value:?}");
        }
    }
}
