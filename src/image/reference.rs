//! Image names and ids as users write them.
//!
//! Names follow docker's rules (the `oci-spec` parser): `busybox` is
//! `docker.io/library/busybox:latest`, a name without a tag gets `latest`,
//! and a first component with a `.` or `:` (or `localhost`) is a registry.
//! Names are stored in that normalized form.

use oci_client::Reference;

use crate::error::{Error, Result};

/// The normalized form of image name `reference`.
///
/// # Errors
/// [`Error::InvalidConfig`] (`image`) if it is not an image name.
pub fn normalize(reference: &str) -> Result<String> {
    parse(reference).map(|parsed| parsed.whole())
}

/// `reference` parsed.
///
/// # Errors
/// As [`normalize`].
pub(super) fn parse(reference: &str) -> Result<Reference> {
    Reference::try_from(reference).map_err(|e| Error::InvalidConfig {
        field: "image".into(),
        reason: format!("{reference:?} is not an image reference: {e}"),
    })
}

/// The id prefix (`sha256:<hex…>`) `reference` stands for, if it is an id:
/// `sha256:` and hex digits, or 12 to 64 bare hex digits (docker's short
/// and long ids).
pub(crate) fn id_prefix(reference: &str) -> Option<String> {
    let is_hex = |s: &str| {
        !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    match reference.strip_prefix("sha256:") {
        Some(hex) if is_hex(hex) => Some(reference.to_string()),
        Some(_) => None,
        None if reference.len() >= 12 && is_hex(reference) => Some(format!("sha256:{reference}")),
        None => None,
    }
}

/// Whether `registry` (`host[:port]`) is on this machine's loopback, where
/// plain HTTP is allowed without asking.
pub(super) fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalized_like_docker() {
        assert_eq!(
            normalize("busybox").unwrap(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            normalize("127.0.0.1:5000/app").unwrap(),
            "127.0.0.1:5000/app:latest"
        );
        assert_eq!(normalize("localhost/a/b:v1").unwrap(), "localhost/a/b:v1");
        assert!(matches!(
            normalize("Bad Name"),
            Err(Error::InvalidConfig { .. })
        ));
        assert!(matches!(normalize(""), Err(Error::InvalidConfig { .. })));
    }

    #[test]
    fn ids_and_loopback() {
        assert_eq!(
            id_prefix("0123456789ab").as_deref(),
            Some("sha256:0123456789ab")
        );
        assert_eq!(id_prefix("sha256:01").as_deref(), Some("sha256:01"));
        assert_eq!(id_prefix("busybox"), None);
        assert_eq!(id_prefix("0123456789a"), None);
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost:80"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("registry.example.com"));
        assert!(!is_loopback("10.0.0.1:5000"));
    }
}
