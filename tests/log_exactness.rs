//! Reading is exact whichever path reads a line: whatever lands in an
//! `exec.log` chain — records of any bytes, escapes, base64 data, records in
//! other tools' shapes, garbage, rotation points, torn tails, files large
//! enough to be read in pieces on the thread pool — `read_logs` and a
//! `log_stream` drain give exactly the entries the exact decoder (serde_json)
//! finds in the files, cursors included.

mod common;

use std::path::Path;

use bytes::Bytes;
use chrono::{TimeZone, Utc};
use common::Home;
use futures::StreamExt;
use proptest::prelude::*;
use sandvisor::engine::log::format::{FileId, Position, RecordDecoder, RecordEncoder, StreamKey};
use sandvisor::{LogCursor, LogEntry, LogOptions, LogSource, LogStreamOptions};

/// One line of a generated chain (without its newline).
#[derive(Debug, Clone)]
enum Line {
    /// A record as sandvisor writes it.
    Canonical(Vec<u8>),
    /// The same record with its fields reordered, `\u`-escaped or spaced.
    Foreign(Vec<u8>),
    /// Anything else (no newline inside).
    Garbage(Vec<u8>),
}

impl Line {
    fn bytes(&self) -> &[u8] {
        match self {
            Line::Canonical(b) | Line::Foreign(b) | Line::Garbage(b) => b,
        }
    }
}

fn source() -> impl Strategy<Value = LogSource> {
    prop_oneof![
        Just(LogSource::Stdout),
        Just(LogSource::Stderr),
        Just(LogSource::Output),
        Just(LogSource::System),
    ]
}

fn data() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        "[a-z \"\\\\/\n\t\u{1}é🦀]{0,40}".prop_map(String::into_bytes),
    ]
}

fn encoded(millis: i64, source: LogSource, id: Option<u64>, data: &[u8]) -> Vec<u8> {
    let mut line = Vec::new();
    let t = Utc.timestamp_millis_opt(millis).unwrap();
    RecordEncoder::default().encode(&mut line, t, source, id, data);
    line.pop();
    line
}

fn canonical() -> impl Strategy<Value = Vec<u8>> {
    // Times within a few seconds, so that some records tie and some go back.
    (
        1_777_000_000_000i64..1_777_000_005_000,
        source(),
        proptest::option::of(0u64..1_000),
        data(),
    )
        .prop_map(|(millis, source, id, data)| encoded(millis, source, id, &data))
}

fn foreign() -> impl Strategy<Value = Vec<u8>> {
    (canonical(), any::<bool>()).prop_map(|(line, escape_all)| {
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
        let mut fields: Vec<_> = value.as_object().unwrap().clone().into_iter().collect();
        fields.reverse();
        let body: Vec<String> = fields
            .iter()
            .map(|(key, value)| {
                let text = serde_json::to_string(value).unwrap();
                let text = if escape_all {
                    text.replace('a', "\\u0061")
                } else {
                    text
                };
                format!("\"{key}\": {text}")
            })
            .collect();
        format!("{{ {} }}", body.join(", ")).into_bytes()
    })
}

fn line() -> impl Strategy<Value = Line> {
    prop_oneof![
        6 => canonical().prop_map(Line::Canonical),
        2 => foreign().prop_map(Line::Foreign),
        1 => proptest::collection::vec(any::<u8>().prop_filter("no newline", |b| *b != b'\n'), 0..40)
            .prop_map(Line::Garbage),
    ]
}

/// A chain: its files' lines (oldest first), and each file's torn tail.
#[derive(Debug, Clone)]
struct Chain {
    files: Vec<(Vec<Line>, Vec<u8>)>,
}

fn chain() -> impl Strategy<Value = Chain> {
    (
        proptest::collection::vec(line(), 0..60),
        // Sometimes enough canonical records to be read in pieces on the pool.
        prop_oneof![3 => Just(0usize), 1 => 2_000usize..4_000],
        any::<prop::sample::Index>(),
        proptest::collection::vec(any::<prop::sample::Index>(), 0..4),
        proptest::collection::vec(proptest::option::of(canonical()), 5),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(mut lines, bulk, bulk_at, cuts, torn, torn_at)| {
            let at = bulk_at.index(lines.len() + 1);
            let bulk_lines = (0..bulk).map(|i| {
                let data = format!("{i:08} GET /api/v1/items?id={i} 200 agent=bench\n");
                Line::Canonical(encoded(
                    1_777_000_002_000 + i as i64,
                    LogSource::Stdout,
                    Some(1),
                    data.as_bytes(),
                ))
            });
            lines.splice(at..at, bulk_lines);
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(lines.len() + 1)).collect();
            cuts.sort_unstable();
            let mut files = Vec::new();
            let mut start = 0;
            for cut in cuts.into_iter().chain([lines.len()]) {
                files.push((lines[start..cut].to_vec(), Vec::new()));
                start = cut;
            }
            for ((_, tail), torn) in files.iter_mut().zip(torn) {
                if let Some(record) = torn {
                    // A record cut short: a crash in a rotated file, a write
                    // still under way in the live one.
                    let keep = torn_at.index(record.len().max(1));
                    *tail = record[..keep].to_vec();
                }
            }
            Chain { files }
        })
}

/// Writes the chain: `exec.log.N` … `exec.log.1`, `exec.log`.
fn write(dir: &Path, chain: &Chain) -> Vec<std::path::PathBuf> {
    let count = chain.files.len();
    let mut paths = Vec::new();
    for (i, (lines, tail)) in chain.files.iter().enumerate() {
        let generation = count - 1 - i;
        let path = if generation == 0 {
            dir.join("exec.log")
        } else {
            dir.join(format!("exec.log.{generation}"))
        };
        let mut bytes = Vec::new();
        for line in lines {
            bytes.extend_from_slice(line.bytes());
            bytes.push(b'\n');
        }
        bytes.extend_from_slice(tail);
        std::fs::write(&path, bytes).unwrap();
        paths.push(path);
    }
    paths
}

/// What the files hold according to the exact decoder alone, in file order.
fn reference(dir: &Path, paths: &[std::path::PathBuf], wanted: &[LogSource]) -> Vec<LogEntry> {
    let dir_id = FileId::of_path(dir).unwrap().unwrap();
    let mut decoder = RecordDecoder::default();
    let mut entries = Vec::new();
    for path in paths {
        let bytes = std::fs::read(path).unwrap();
        let file = FileId::of_path(path).unwrap().unwrap();
        let mut offset = 0u64;
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            offset += line.len() as u64;
            let Some(line) = line.strip_suffix(b"\n") else {
                continue;
            };
            let mut arena = Vec::new();
            let Ok(rec) = decoder.decode_exact_into(line, &mut arena) else {
                continue;
            };
            if !wanted.contains(&rec.source) {
                continue;
            }
            let mut cursor = LogCursor::new(dir_id);
            cursor.set_position(StreamKey::Exec, Position { file, offset });
            entries.push(LogEntry {
                timestamp: rec.timestamp,
                source: rec.source,
                session_id: rec.session_id,
                data: Bytes::copy_from_slice(&arena[rec.data]),
                cursor,
            });
        }
    }
    entries
}

/// `read_logs` sorts by time (stable); with one log, each entry's cursor is
/// its own position.
fn sorted(mut entries: Vec<LogEntry>) -> Vec<LogEntry> {
    entries.sort_by_key(|e| e.timestamp);
    entries
}

fn first_difference(got: &[LogEntry], want: &[LogEntry]) -> String {
    match got.iter().zip(want).position(|(a, b)| a != b) {
        Some(i) => format!(
            "{} vs {} entries; first difference at {i}: {:?} vs {:?}",
            got.len(),
            want.len(),
            got[i],
            want[i]
        ),
        None => format!("{} vs {} entries", got.len(), want.len()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn reads_match_the_exact_decoder(chain in chain()) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let home = Home::new();
            let dir = home.sandbox("box");
            let paths = write(&dir, &chain);
            for sources in [Vec::new(), LogSource::ALL.to_vec()] {
                let wanted = if sources.is_empty() { LogSource::DEFAULT.to_vec() } else { sources.clone() };
                let want = reference(&dir, &paths, &wanted);

                let options = LogOptions { sources: sources.clone(), ..LogOptions::default() };
                let got = home.logs.read_logs("box", &options).await.unwrap();
                let sorted_want = sorted(want.clone());
                prop_assert!(got == sorted_want, "read_logs: {}", first_difference(&got, &sorted_want));

                let options = LogStreamOptions { sources, ..LogStreamOptions::default() };
                let stream = home.logs.log_stream("box", &options).await.unwrap();
                let drained: Vec<LogEntry> = stream.map(Result::unwrap).collect().await;
                prop_assert!(drained == want, "log_stream: {}", first_difference(&drained, &want));
            }
            Ok(())
        })?;
    }
}
