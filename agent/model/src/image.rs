//! Image references, as manifests write them and as the host's `incus.images` mapping
//! rewrites them: the one parser, shared by config validation, the apply engine (what
//! Incus is asked for) and adoption (which image family a reference stands for).

/// The public simplestreams server `images:` names.
pub const PUBLIC_SERVER: &str = "https://images.linuxcontainers.org";

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// A local image alias (`ALIAS` or `local:ALIAS`).
    Local(String),
    /// An alias on a simplestreams server (`images:ALIAS`, or a mirror written
    /// `https://SERVER/PATH:ALIAS`).
    Simplestreams {
        /// The server's URL.
        server: String,
        /// The alias there, e.g. `debian/13`.
        alias: String,
    },
}

/// Parses an image reference; the error says what is accepted.
pub fn parse(reference: &str) -> Result<ImageRef, String> {
    if reference.is_empty() || reference.contains(char::is_whitespace) {
        return Err(format!("invalid image reference `{reference}`"));
    }
    if let Some(rest) = reference.strip_prefix("https://") {
        // The alias follows the last `:` (a port is digits: an alias never starts with one).
        return match rest.rsplit_once(':') {
            Some((server, alias))
                if !server.is_empty()
                    && alias.chars().next().is_some_and(|c| !c.is_ascii_digit()) =>
            {
                Ok(ImageRef::Simplestreams {
                    server: format!("https://{server}"),
                    alias: alias.to_string(),
                })
            }
            _ => Err(format!(
                "image source `{reference}`: a mirror is written `https://SERVER/PATH:ALIAS`"
            )),
        };
    }
    match reference.split_once(':') {
        None => Ok(ImageRef::Local(reference.to_string())),
        Some(("local", alias)) if !alias.is_empty() => Ok(ImageRef::Local(alias.to_string())),
        Some(("images", alias)) if !alias.is_empty() => Ok(ImageRef::Simplestreams {
            server: PUBLIC_SERVER.to_string(),
            alias: alias.to_string(),
        }),
        Some((remote, _)) => Err(format!(
            "unknown image remote `{remote}` in `{reference}`: use a local alias, `local:ALIAS`, `images:ALIAS`, or map it in the host configuration (`incus.images`)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_into_where_the_image_comes_from() {
        let local = |a: &str| Ok(ImageRef::Local(a.into()));
        let ss =
            |s: &str, a: &str| Ok(ImageRef::Simplestreams { server: s.into(), alias: a.into() });
        let table: [(&str, Result<ImageRef, String>); 8] = [
            ("veza-test-busybox", local("veza-test-busybox")),
            ("local:veza-debian13", local("veza-debian13")),
            ("images:debian/13", ss(PUBLIC_SERVER, "debian/13")),
            ("https://mirror.lan:8443/images:debian/13", ss("https://mirror.lan:8443/images", "debian/13")),
            ("https://mirror.lan/images:ubuntu/24.04", ss("https://mirror.lan/images", "ubuntu/24.04")),
            ("https://mirror.lan:8443/images", Err("image source `https://mirror.lan:8443/images`: a mirror is written `https://SERVER/PATH:ALIAS`".into())),
            ("ubuntu:24.04", Err("unknown image remote `ubuntu` in `ubuntu:24.04`: use a local alias, `local:ALIAS`, `images:ALIAS`, or map it in the host configuration (`incus.images`)".into())),
            ("", Err("invalid image reference ``".into())),
        ];
        for (reference, want) in table {
            assert_eq!(parse(reference), want, "{reference}");
        }
    }
}
