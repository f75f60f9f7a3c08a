//! Image families: which distribution and release an image reference stands for, and
//! which one a live instance was made from (Incus copies an image's properties into the
//! instance's `image.*` config keys), so that adoption compares like with like.

use std::collections::BTreeMap;
use std::fmt;

use crate::live::{Config, LiveInstance};

/// A distribution and its release, normalised: lowercase, and a Debian or Ubuntu code
/// name read as its version (`bookworm` is `12`, `jammy` is `22.04`), since
/// `images:debian/13` names by number what the image's properties name by code name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ImageFamily {
    /// `debian`, `ubuntu`, `busybox`, …
    pub os: String,
    /// `13`, `22.04`, …
    pub release: String,
}

impl fmt::Display for ImageFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.os, self.release)
    }
}

/// Code names of the releases whose images name them so (images.linuxcontainers.org).
const CODE_NAMES: [(&str, &str, &str); 10] = [
    ("debian", "buster", "10"),
    ("debian", "bullseye", "11"),
    ("debian", "bookworm", "12"),
    ("debian", "trixie", "13"),
    ("debian", "forky", "14"),
    ("ubuntu", "focal", "20.04"),
    ("ubuntu", "jammy", "22.04"),
    ("ubuntu", "noble", "24.04"),
    ("ubuntu", "oracular", "24.10"),
    ("ubuntu", "plucky", "25.04"),
];

impl ImageFamily {
    /// The family of `os` and `release` as written anywhere (properties, an alias).
    pub fn new(os: &str, release: &str) -> ImageFamily {
        let os = os.trim().to_ascii_lowercase();
        let release = release.trim().to_ascii_lowercase();
        let release = CODE_NAMES
            .iter()
            .find(|(o, code, _)| *o == os && *code == release)
            .map_or(release, |(_, _, number)| (*number).to_string());
        ImageFamily { os, release }
    }

    /// The family in image properties (`os`, `release`), if both are there.
    pub fn from_properties(properties: &Config) -> Option<ImageFamily> {
        Some(ImageFamily::new(properties.get("os")?, properties.get("release")?))
    }

    /// The family a live instance was made from: its `image.os` and `image.release`.
    pub fn of_instance(instance: &LiveInstance) -> Option<ImageFamily> {
        Some(ImageFamily::new(
            instance.config.get("image.os")?,
            instance.config.get("image.release")?,
        ))
    }
}

/// The local image alias a reference names (`alias` or `local:alias`), if any.
pub fn local_alias(reference: &str) -> Option<&str> {
    match reference.split_once(':') {
        None => Some(reference),
        Some(("local", alias)) => Some(alias),
        Some(_) => None,
    }
}

/// What Incus is asked for when the manifests name `reference`: the host's mapping
/// (`incus.images` in the host configuration) applied, as the planner applies it.
pub fn used_image<'a>(reference: &'a str, images: &'a BTreeMap<String, String>) -> &'a str {
    images.get(reference).map_or(reference, String::as_str)
}

/// The family an image reference of a manifest stands for, through the host's mapping
/// (`images`: reference → a local alias, `images:ALIAS` or a simplestreams mirror
/// `https://SERVER/PATH:ALIAS`): an alias `<os>/<release>[/…]` by its parts, a local alias
/// (`alias`, `local:alias`) by that image's properties (`local_images`: alias →
/// properties, read through the Incus driver). `None` when it cannot be told (an unknown
/// remote, a local alias that does not exist or has no `os` and `release`). The one
/// resolution of image references for adoption.
pub fn image_family(
    reference: &str,
    images: &BTreeMap<String, String>,
    local_images: &BTreeMap<String, Config>,
) -> Option<ImageFamily> {
    let alias = match veza_model::image::parse(used_image(reference, images)).ok()? {
        veza_model::image::ImageRef::Local(alias) => {
            return ImageFamily::from_properties(local_images.get(&alias)?);
        }
        veza_model::image::ImageRef::Simplestreams { alias, .. } => alias,
    };
    let mut parts = alias.split('/');
    match (parts.next(), parts.next()) {
        (Some(os), Some(release)) if !os.is_empty() && !release.is_empty() => {
            Some(ImageFamily::new(os, release))
        }
        _ => None,
    }
}
