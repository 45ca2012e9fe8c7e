//! Durations as users read and write them: humantime strings (`"10s"`,
//! `"1m 30s"`, `"250ms"`), through `humantime-serde`.
//!
//! # Contract
//! - Serializing always writes a humantime string.
//! - Deserializing takes a humantime string, or the `{"secs": S, "nanos":
//!   N}` object serde's own `Duration` impl wrote: configs stored before
//!   durations were strings still load.
//! - Use as `#[serde(with = "sandvisor_actors::duration_serde")]` on a
//!   `Duration`, and `…::duration_serde::option` on an `Option<Duration>`
//!   (`null` is `None`).

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// Either shape a stored duration may have.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stored {
    Text(#[serde(with = "humantime_serde")] Duration),
    Struct { secs: u64, nanos: u32 },
}

impl From<Stored> for Duration {
    fn from(stored: Stored) -> Self {
        match stored {
            Stored::Text(duration) => duration,
            Stored::Struct { secs, nanos } => Duration::new(secs, nanos),
        }
    }
}

/// Writes `duration` as a humantime string.
///
/// # Errors
/// The serializer's.
pub fn serialize<S: Serializer>(duration: &Duration, out: S) -> Result<S::Ok, S::Error> {
    humantime_serde::serialize(duration, out)
}

/// Reads a humantime string or a `{"secs", "nanos"}` object.
///
/// # Errors
/// Anything else, naming both accepted shapes.
pub fn deserialize<'de, D: Deserializer<'de>>(input: D) -> Result<Duration, D::Error> {
    Stored::deserialize(input)
        .map(Duration::from)
        .map_err(|_| serde::de::Error::custom("expected a duration such as \"10s\" or \"1m30s\""))
}

/// The same for `Option<Duration>`; `null` (or a missing field, with
/// `#[serde(default)]`) is `None`.
pub mod option {
    use super::*;

    /// Writes `Some` as a humantime string, `None` as `null`.
    ///
    /// # Errors
    /// The serializer's.
    pub fn serialize<S: Serializer>(
        duration: &Option<Duration>,
        out: S,
    ) -> Result<S::Ok, S::Error> {
        humantime_serde::serialize(duration, out)
    }

    /// Reads `null`, a humantime string or a `{"secs", "nanos"}` object.
    ///
    /// # Errors
    /// Anything else.
    pub fn deserialize<'de, D: Deserializer<'de>>(input: D) -> Result<Option<Duration>, D::Error> {
        Option::<Stored>::deserialize(input)
            .map(|stored| stored.map(Duration::from))
            .map_err(|_| {
                serde::de::Error::custom("expected null or a duration such as \"10s\" or \"1m30s\"")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Both {
        #[serde(with = "super")]
        plain: Duration,
        #[serde(with = "super::option", default)]
        maybe: Option<Duration>,
    }

    #[test]
    fn writes_humantime_and_reads_both_shapes() {
        let both = Both {
            plain: Duration::from_secs(90),
            maybe: Some(Duration::from_millis(250)),
        };
        let text = serde_json::to_string(&both).unwrap();
        assert_eq!(text, r#"{"plain":"1m 30s","maybe":"250ms"}"#);
        assert_eq!(serde_json::from_str::<Both>(&text).unwrap(), both);
        let old: Both =
            serde_json::from_str(r#"{"plain":{"secs":10,"nanos":5},"maybe":null}"#).unwrap();
        assert_eq!(old.plain, Duration::new(10, 5));
        assert_eq!(old.maybe, None);
        let compact: Both = serde_json::from_str(r#"{"plain":"1m30s"}"#).unwrap();
        assert_eq!(compact.plain, Duration::from_secs(90));
        assert!(serde_json::from_str::<Both>(r#"{"plain":"ten seconds"}"#).is_err());
        assert!(serde_json::from_str::<Both>(r#"{"plain":-1}"#).is_err());
    }
}
