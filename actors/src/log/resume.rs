//! Where a re-adopted run's output resumes: how many of the output records
//! an agent kept for a new host are already in `exec.log`.
//!
//! # Contract
//! - The chain is read oldest first (`exec.log.{keep}` … `exec.log.1`,
//!   `exec.log`); only whole lines count, and only records of an output
//!   source (`stdout`, `stderr`, `output`): system markers and lines that do
//!   not decode (a torn record of a host that died mid-write) are not output
//!   anyone wrote whole.
//! - From a [`LogPosition`]: the records after that byte of the file with
//!   that inode, and every record of the files rotated after it. `None` when
//!   no file of the chain has that inode any more.
//! - From the run's start: the records after the last
//!   [`STARTED_MARKER`](crate::sandbox::STARTED_MARKER) of the chain; `None`
//!   if none is left in it.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::log::format::{LogSource, RecordDecoder, StreamKey};
use crate::log::tap::LogPosition;

/// Where counting starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeFrom<'a> {
    /// Just past a record the host said it wrote.
    Position(LogPosition),
    /// After the last `system` record with this text (the run's start
    /// marker).
    Marker(&'a str),
}

/// Output records in the chain of `dir` (keeping `keep` rotated files)
/// after `from`; see the module docs.
///
/// # Errors
/// The I/O error of reading a file of the chain.
pub fn output_records_after(
    dir: &Path,
    keep: usize,
    from: ResumeFrom<'_>,
) -> io::Result<Option<u64>> {
    let live = dir.join(StreamKey::Exec.file_name());
    let mut chain: Vec<PathBuf> = (1..=keep)
        .rev()
        .map(|n| dir.join(format!("{}.{n}", StreamKey::Exec.file_name())))
        .collect();
    chain.push(live);
    let mut decoder = RecordDecoder::default();
    match from {
        ResumeFrom::Position(position) => {
            let mut counting = false;
            let mut count = 0;
            for path in &chain {
                let Some(bytes) = read_if_present(path)? else {
                    continue;
                };
                let start = if counting {
                    0
                } else if inode_of(path)? == Some(position.inode) {
                    counting = true;
                    (position.offset as usize).min(bytes.len())
                } else {
                    continue;
                };
                count += count_output(&mut decoder, &bytes[start..], None).0;
            }
            Ok(counting.then_some(count))
        }
        ResumeFrom::Marker(marker) => {
            let mut since_marker: Option<u64> = None;
            for path in &chain {
                let Some(bytes) = read_if_present(path)? else {
                    continue;
                };
                let (count, reset) = count_output(&mut decoder, &bytes, Some(marker));
                since_marker = match reset {
                    Some(after) => Some(after),
                    None => since_marker.map(|n| n + count),
                };
            }
            Ok(since_marker)
        }
    }
}

fn read_if_present(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

fn inode_of(path: &Path) -> io::Result<Option<u64>> {
    match std::fs::metadata(path) {
        Ok(meta) => Ok(Some(meta.ino())),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

/// Output records in the whole lines of `bytes`; with a `marker`, also the
/// count after its last occurrence, if any.
fn count_output(
    decoder: &mut RecordDecoder,
    bytes: &[u8],
    marker: Option<&str>,
) -> (u64, Option<u64>) {
    let mut count = 0;
    let mut after_marker = None;
    let whole = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(last) => &bytes[..last],
        None => return (0, None),
    };
    for line in whole.split(|&b| b == b'\n') {
        let Ok(record) = decoder.decode(line) else {
            continue;
        };
        if record.source == LogSource::System {
            if marker.is_some_and(|m| record.data.as_ref() == m.as_bytes()) {
                after_marker = Some(0);
            }
            continue;
        }
        count += 1;
        if let Some(n) = after_marker.as_mut() {
            *n += 1;
        }
    }
    (count, after_marker)
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::log::format::RecordEncoder;

    fn record(source: LogSource, data: &str) -> Vec<u8> {
        let mut out = Vec::new();
        let session = (source != LogSource::System).then_some(1);
        RecordEncoder::default().encode(&mut out, Utc::now(), source, session, data.as_bytes());
        out
    }

    #[test]
    fn counts_output_after_a_position_across_rotations() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("exec.log.1");
        let live = dir.path().join("exec.log");
        let mut bytes = record(LogSource::Stdout, "a");
        let offset = bytes.len() as u64;
        bytes.extend(record(LogSource::Stdout, "b"));
        bytes.extend(record(LogSource::System, "--- x ---"));
        bytes.extend(record(LogSource::Stderr, "c"));
        std::fs::write(&old, &bytes).unwrap();
        let mut live_bytes = record(LogSource::Stdout, "d");
        // A torn record at the end is not output written whole.
        live_bytes.extend_from_slice(br#"{"t":"2026-"#);
        std::fs::write(&live, &live_bytes).unwrap();
        let inode = std::fs::metadata(&old).unwrap().ino();
        let from = ResumeFrom::Position(LogPosition { inode, offset });
        assert_eq!(output_records_after(dir.path(), 4, from).unwrap(), Some(3));
        let gone = ResumeFrom::Position(LogPosition {
            inode: 1,
            offset: 0,
        });
        assert_eq!(output_records_after(dir.path(), 4, gone).unwrap(), None);
    }

    #[test]
    fn counts_output_after_the_last_marker() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = record(LogSource::Stdout, "earlier run");
        bytes.extend(record(LogSource::System, "--- sandbox started ---"));
        bytes.extend(record(LogSource::Stdout, "1"));
        std::fs::write(dir.path().join("exec.log.1"), &bytes).unwrap();
        let mut live = record(LogSource::Stdout, "2");
        live.extend(record(LogSource::Output, "3"));
        std::fs::write(dir.path().join("exec.log"), &live).unwrap();
        let from = ResumeFrom::Marker("--- sandbox started ---");
        assert_eq!(output_records_after(dir.path(), 4, from).unwrap(), Some(3));
        let none = ResumeFrom::Marker("--- never ---");
        assert_eq!(output_records_after(dir.path(), 4, none).unwrap(), None);
    }
}
