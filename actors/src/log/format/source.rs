//! Where a captured chunk came from.

use serde::{Deserialize, Serialize};

/// The stream a log entry was captured from.
///
/// Serialized as the lowercase name used in the `s` field of `exec.log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogSource {
    /// The process's standard output.
    Stdout,
    /// The process's standard error.
    Stderr,
    /// A pseudo-terminal's merged output.
    Output,
    /// Markers and diagnostics written by sandvisor itself (`exec.log` system
    /// records, `runtime.log`, `kernel.log`).
    System,
}

impl LogSource {
    /// All sources, in declaration order.
    pub const ALL: [LogSource; 4] = [Self::Stdout, Self::Stderr, Self::Output, Self::System];

    /// The sources read when a caller names none.
    pub const DEFAULT: [LogSource; 3] = [Self::Stdout, Self::Stderr, Self::Output];

    /// The name used on disk.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
            Self::Output => "output",
            Self::System => "system",
        }
    }

    /// Parses the on-disk name; `None` for anything else.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "stdout" => Some(Self::Stdout),
            "stderr" => Some(Self::Stderr),
            "output" => Some(Self::Output),
            "system" => Some(Self::System),
            _ => None,
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl std::fmt::Display for LogSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of [`LogSource`]s, as a bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SourceSet(u8);

impl SourceSet {
    /// Builds the set a caller asked for: an empty list means [`LogSource::DEFAULT`].
    pub fn from_requested(sources: &[LogSource]) -> Self {
        let list: &[LogSource] = if sources.is_empty() {
            &LogSource::DEFAULT
        } else {
            sources
        };
        Self(list.iter().fold(0, |mask, s| mask | s.bit()))
    }

    /// Whether `source` is in the set.
    pub fn contains(self, source: LogSource) -> bool {
        self.0 & source.bit() != 0
    }
}
