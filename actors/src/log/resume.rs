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

use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
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
    let mut counting = false;
    let mut count: Option<u64> = None;
    for path in &chain {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        let meta = file.metadata()?;
        let mut reader = BufReader::new(file);
        match from {
            ResumeFrom::Position(position) if !counting => {
                // A file shorter than the mark reuses a gone file's inode.
                if meta.ino() != position.inode || meta.len() < position.offset {
                    continue;
                }
                counting = true;
                reader.seek(SeekFrom::Start(position.offset))?;
                count = Some(count_output(&mut decoder, &mut reader, None)?.0);
            }
            ResumeFrom::Position(_) => {
                let (n, _) = count_output(&mut decoder, &mut reader, None)?;
                count = count.map(|c| c + n);
            }
            ResumeFrom::Marker(marker) => {
                let (n, after) = count_output(&mut decoder, &mut reader, Some(marker))?;
                count = match after {
                    Some(after) => Some(after),
                    None => count.map(|c| c + n),
                };
            }
        }
    }
    Ok(count)
}

/// Output records in the whole lines `reader` holds; with a `marker`, also
/// the count after its last occurrence, if any. Reads a line at a time, so
/// memory stays at the longest line.
fn count_output(
    decoder: &mut RecordDecoder,
    reader: &mut impl BufRead,
    marker: Option<&str>,
) -> io::Result<(u64, Option<u64>)> {
    let mut count = 0;
    let mut after_marker = None;
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 || line.last() != Some(&b'\n') {
            // The end, or a torn tail: not a record written whole.
            return Ok((count, after_marker));
        }
        let Ok(record) = decoder.decode(&line[..line.len() - 1]) else {
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
