//! Following under stress and faults: hundreds of rotations, readers held back
//! past retention, stale cursors, killed tailers, a reader that keeps failing,
//! and many streams at once. Real files, a real RelayTap, real rotation; every
//! test has its own home. Timeouts are hang guards only.

mod common;

use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{next_within, number, text, Home, Tap};
use futures::StreamExt;
use ractor::RactorErr;
use sandvisor::engine::log::read::SubscriberMsg;
use sandvisor::engine::{FileId, Position, StreamKey};
use sandvisor::{
    Error, LogCursor, LogOptions, LogSource, LogStream, LogStreamOptions, LogStreamStart, Logs,
};
use tokio::sync::watch;

/// Data bytes of a padded numbered record: with the record's JSON framing
/// (about 60 bytes) each record takes about 200 bytes on disk.
const PADDED: usize = 140;

/// `line-{i:08}` padded with spaces to `len` bytes, newline included.
/// [`number`] trims, so it reads these back.
fn padded_line(i: u64, len: usize) -> String {
    format!("{:<width$}\n", format!("line-{i:08}"), width = len - 1)
}

fn write_padded(tap: &Tap, range: Range<u64>, len: usize) {
    for i in range {
        tap.chunk(1, LogSource::Stdout, padded_line(i, len));
    }
}

fn follow() -> LogStreamOptions {
    LogStreamOptions {
        follow: true,
        ..LogStreamOptions::default()
    }
}

/// The position just past everything in the live `exec.log` (call after a flush).
fn live_end(dir: &Path) -> Position {
    let path = dir.join("exec.log");
    let file = FileId::of_path(&path).unwrap().expect("exec.log exists");
    Position {
        file,
        offset: std::fs::metadata(&path).unwrap().len(),
    }
}

/// Inotify instances this process holds.
fn inotify_instances() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| std::fs::read_link(entry.path()).ok())
        .filter(|target| target.as_os_str() == "anon_inode:inotify")
        .count()
}

async fn numbers_on_disk(logs: &Logs, name: &str) -> Vec<u64> {
    logs.read_logs(name, &LogOptions::default())
        .await
        .unwrap()
        .iter()
        .map(number)
        .collect()
}

/// Reads a non-following stream to its end; every item must be an entry.
async fn collect_numbers(mut stream: LogStream) -> Vec<u64> {
    let mut got = Vec::new();
    while let Some(item) = next_within(&mut stream, 30).await {
        match item {
            Ok(entry) => got.push(number(&entry)),
            Err(err) => panic!("error after {} entries: {err:?}", got.len()),
        }
    }
    got
}

/// Everything a stream yields until it ends: entry numbers, and errors.
async fn drain(stream: &mut LogStream) -> Vec<Result<u64, Error>> {
    let mut items = Vec::new();
    while let Some(item) = next_within(stream, 30).await {
        items.push(item.map(|entry| number(&entry)));
        assert!(items.len() < 1_000_000, "the stream does not end");
    }
    items
}

/// What the subscriber behind a stream is doing with the records written so far.
#[derive(Debug, PartialEq, Eq)]
enum Pipeline {
    /// Everything up to the position asked about is in the stream's channel.
    Delivered,
    /// The subscriber does not answer: it is stuck handing a batch to a
    /// consumer that is not reading, so its tailer waits for an ack.
    Blocked,
}

/// Waits until the subscriber has delivered everything up to `end`, or has
/// stopped answering because the stream's channel is full.
async fn delivered_or_blocked(stream: &LogStream, end: Position) -> Pipeline {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match ractor::call_t!(stream.subscriber(), SubscriberMsg::Cursor, 1_000) {
            Ok(cursor) if cursor.position(StreamKey::Exec) == Some(end) => {
                return Pipeline::Delivered
            }
            Ok(_) => {
                assert!(
                    Instant::now() < deadline,
                    "the subscriber never delivered up to {end:?}"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(RactorErr::Timeout) => return Pipeline::Blocked,
            Err(err) => panic!("the subscriber is gone: {err}"),
        }
    }
}

/// Outcome of a reader task: how many numbered records it saw, in order.
type ReaderResult = Result<(u64, LogStream), String>;

/// Reads numbered records `0, 1, 2, …` until `stop_at` records were seen (or,
/// with `None`, until an `end` marker), publishing the count of records seen.
fn spawn_reader(
    mut stream: LogStream,
    seen: watch::Sender<u64>,
    stop_at: Option<u64>,
) -> tokio::task::JoinHandle<ReaderResult> {
    tokio::spawn(async move {
        let mut expected = 0u64;
        while stop_at.is_none_or(|stop| expected < stop) {
            let item = tokio::time::timeout(Duration::from_secs(60), stream.next())
                .await
                .map_err(|_| format!("nothing for 60 s while waiting for record {expected}"))?;
            match item {
                Some(Ok(entry)) => {
                    if text(&entry).trim() == "end" {
                        return Ok((expected, stream));
                    }
                    let n = number(&entry);
                    if n != expected {
                        return Err(format!("expected record {expected}, got {n}"));
                    }
                    expected += 1;
                    seen.send_replace(expected);
                }
                Some(Err(err)) => {
                    return Err(format!("stream error after {expected} records: {err:?}"))
                }
                None => return Err(format!("stream ended after {expected} records")),
            }
        }
        Ok((expected, stream))
    })
}

async fn join_reader(reader: tokio::task::JoinHandle<ReaderResult>) -> (u64, LogStream) {
    tokio::time::timeout(Duration::from_secs(300), reader)
        .await
        .expect("the reader did not finish")
        .expect("the reader task panicked")
        .unwrap_or_else(|err| panic!("reader: {err}"))
}

/// 60 MiB through 64 KiB files: hundreds of rotations while a follower reads.
/// The writer is paced so the reader is never more than about two files
/// behind (retention is five), so nothing may be missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_stress_every_record_once_in_order() {
    const MAX_BYTES: u64 = 64 << 10;
    const TOTAL_BYTES: u64 = 60 << 20;
    const BATCH: u64 = 100;
    const LAG: u64 = 300;
    let started = Instant::now();
    let home = Home::new();
    let dir = home.sandbox("stress");
    let tap = Tap::spawn(&dir, MAX_BYTES, 4).await;
    write_padded(&tap, 0..1, PADDED);
    let record_len = tap.flush().await.bytes;
    assert!(
        (190..=210).contains(&record_len),
        "record is {record_len} bytes"
    );
    let total = TOTAL_BYTES.div_ceil(record_len).div_ceil(BATCH) * BATCH;

    let stream = home.logs.log_stream("stress", &follow()).await.unwrap();
    let (seen_tx, mut seen) = watch::channel(0u64);
    let reader = spawn_reader(stream, seen_tx, Some(total));

    let mut next = 1;
    while next < total {
        let end = (next + BATCH).min(total);
        write_padded(&tap, next..end, PADDED);
        tap.flush().await;
        // The reader has seen record `next - LAG` (the count of records seen
        // is one more than the last record's number).
        let caught_up =
            tokio::time::timeout(Duration::from_secs(60), seen.wait_for(|&n| n + LAG > next))
                .await
                .unwrap_or_else(|_| panic!("the reader stalled below record {}", next - LAG));
        if caught_up.is_err() {
            // The reader ended early; its result says why.
            break;
        }
        next = end;
    }
    let stats = tap.flush().await;
    let (seen_count, mut stream) = join_reader(reader).await;
    assert_eq!(seen_count, total);
    assert!(
        stats.bytes >= TOTAL_BYTES,
        "only {} bytes written",
        stats.bytes
    );
    assert!(
        (300..1000).contains(&stats.generation),
        "expected hundreds of rotations, got {}",
        stats.generation
    );
    // Nothing more is pending: the next record written is the next one read.
    write_padded(&tap, total..total + 1, PADDED);
    tap.flush().await;
    let after = next_within(&mut stream, 30).await.unwrap().unwrap();
    assert_eq!(number(&after), total);
    eprintln!(
        "rotation stress: {total} records, {} bytes, {} rotations in {:.1?}",
        stats.bytes,
        stats.generation,
        started.elapsed()
    );
}

/// A follower whose consumer stops reading while more than retention is
/// written gets everything up to where it fell behind, then one missed
/// rotation, then the end; the error's resume cursor continues with the
/// oldest retained record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_held_back_past_retention_gets_missed_rotation_every_time() {
    const MAX_BYTES: u64 = 4 << 10;
    /// About 560 bytes a record: seven to a file.
    const DATA: usize = 500;
    let home = Home::new();
    for round in 0..12u64 {
        let name = format!("held-{round}");
        let dir = home.sandbox(&name);
        let tap = Tap::spawn(&dir, MAX_BYTES, 4).await;
        let on_disk = 3 + round;
        let read_first = 1 + round % 3;
        let burst_files = 6 + 3 * round;

        write_padded(&tap, 0..on_disk, DATA);
        tap.flush().await;
        let mut stream = home.logs.log_stream(&name, &follow()).await.unwrap();
        let mut numbers = Vec::new();
        for _ in 0..read_first {
            numbers.push(number(
                &next_within(&mut stream, 30).await.unwrap().unwrap(),
            ));
        }

        // Stop consuming. Write one record at a time, each delivered into the
        // stream's channel before the next, until the channel is full and the
        // subscriber is stuck handing over a batch: from then on its tailer
        // cannot read on until the consumer takes something.
        let mut next = on_disk;
        let mut stats;
        loop {
            write_padded(&tap, next..next + 1, DATA);
            next += 1;
            stats = tap.flush().await;
            if delivered_or_blocked(&stream, live_end(&dir)).await == Pipeline::Blocked {
                break;
            }
            assert!(next < on_disk + 100, "the subscriber never blocked");
        }
        let held_at = next;

        // More than retention (five files) while nobody reads.
        let record_len = stats.bytes / stats.records;
        let burst = burst_files * (MAX_BYTES / record_len);
        let generation = stats.generation;
        write_padded(&tap, next..next + burst, DATA);
        next += burst;
        let stats = tap.flush().await;
        assert!(
            stats.generation >= generation + 6,
            "round {round}: only {} rotations while held back",
            stats.generation - generation
        );

        let items = drain(&mut stream).await;
        let (err, delivered) = items.split_last().expect("the stream yielded nothing");
        numbers.extend(delivered.iter().map(|item| match item {
            Ok(n) => *n,
            Err(err) => panic!("round {round}: an error before the last item: {err:?}"),
        }));
        let resume_from = match err {
            Err(Error::MissedRotation { resume_from, .. }) => **resume_from,
            other => panic!("round {round}: expected MissedRotation last, got {other:?}"),
        };
        let m = numbers.len() as u64;
        assert_eq!(
            numbers,
            (0..m).collect::<Vec<_>>(),
            "round {round}: entries before the error must be contiguous"
        );
        assert!(
            m >= held_at,
            "round {round}: everything written before holding back ({held_at}) was delivered, got {m}"
        );
        assert!(m < next, "round {round}: nothing was missed");

        // Resuming continues with the oldest record still on disk.
        let on_disk_now = numbers_on_disk(&home.logs, &name).await;
        assert!(
            on_disk_now[0] > m,
            "round {round}: the oldest record on disk ({}) must lie past the gap at {m}",
            on_disk_now[0]
        );
        let opts = LogStreamOptions {
            start: LogStreamStart::From(resume_from),
            ..LogStreamOptions::default()
        };
        let resumed = collect_numbers(home.logs.log_stream(&name, &opts).await.unwrap()).await;
        assert_eq!(resumed, on_disk_now, "round {round}: resuming");
        drop(stream);
        tap.stop().await;
    }
}

/// A snapshot cursor whose file was rotated away: the call succeeds, the stream
/// yields the missed rotation first and then ends.
#[tokio::test]
async fn stale_cursor_past_retention_yields_missed_rotation_from_the_stream() {
    const MAX_BYTES: u64 = 4 << 10;
    const DATA: usize = 500;
    let home = Home::new();
    let dir = home.sandbox("stale");
    let tap = Tap::spawn(&dir, MAX_BYTES, 4).await;
    write_padded(&tap, 0..10, DATA);
    let stats = tap.flush().await;
    let snap = home
        .logs
        .read_logs_snapshot("stale", &LogOptions::default())
        .await
        .unwrap();
    assert_eq!(snap.entries.len(), 10);
    let per_file = MAX_BYTES / (stats.bytes / stats.records);
    write_padded(&tap, 10..10 + 7 * per_file, DATA);
    let after = tap.flush().await;
    assert!(after.generation >= stats.generation + 6);
    let on_disk = numbers_on_disk(&home.logs, "stale").await;
    assert!(on_disk[0] > 10, "the snapshot's files must be gone");

    for follow in [false, true] {
        let opts = LogStreamOptions {
            start: LogStreamStart::From(snap.cursor),
            follow,
            ..LogStreamOptions::default()
        };
        let mut stream = home
            .logs
            .log_stream("stale", &opts)
            .await
            .unwrap_or_else(|err| panic!("follow {follow}: the call must succeed: {err:?}"));
        let resume_from: LogCursor = match next_within(&mut stream, 30).await {
            Some(Err(Error::MissedRotation {
                name,
                stopped_at,
                resume_from,
            })) => {
                assert_eq!(name, "stale");
                assert_eq!(*stopped_at, snap.cursor, "nothing was delivered");
                *resume_from
            }
            other => panic!("follow {follow}: expected MissedRotation first, got {other:?}"),
        };
        assert!(
            next_within(&mut stream, 30).await.is_none(),
            "follow {follow}: the stream must end after the error"
        );
        let opts = LogStreamOptions {
            start: LogStreamStart::From(resume_from),
            ..LogStreamOptions::default()
        };
        let resumed = collect_numbers(home.logs.log_stream("stale", &opts).await.unwrap()).await;
        assert_eq!(resumed, on_disk, "follow {follow}: resuming");
    }
}

/// Tailers killed or stopped from outside are replaced from the last delivered
/// position: the consumer sees every record once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_tailers_mid_stream_loses_nothing() {
    const MAX_BYTES: u64 = 256 << 10;
    /// How far the writer may run ahead of the reader (files hold ~1300).
    const AHEAD: u64 = 1_000;
    const STEP: u64 = 50;
    let home = Home::new();
    let dir = home.sandbox("kill");
    let tap = Arc::new(Tap::spawn(&dir, MAX_BYTES, 4).await);
    let stream = home.logs.log_stream("kill", &follow()).await.unwrap();
    let subscriber = stream.subscriber().clone();
    let (seen_tx, seen) = watch::channel(0u64);
    let reader = spawn_reader(stream, seen_tx, None);

    let written = Arc::new(AtomicU64::new(0));
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let writer = tokio::spawn({
        let tap = tap.clone();
        let written = written.clone();
        let mut seen = seen.clone();
        async move {
            let mut next = 0u64;
            while !*stop_rx.borrow_and_update() {
                let go_on = tokio::time::timeout(Duration::from_secs(60), async {
                    tokio::select! {
                        caught_up = seen.wait_for(|&n| n + AHEAD > next) => caught_up.is_ok(),
                        _ = stop_rx.changed() => true,
                    }
                })
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "the reader stalled below record {}",
                        next.saturating_sub(AHEAD)
                    )
                });
                if !go_on {
                    break;
                }
                if *stop_rx.borrow() {
                    break;
                }
                write_padded(&tap, next..next + STEP, PADDED);
                next += STEP;
                written.store(next, Ordering::Release);
                tap.flush().await;
            }
            tap.chunk(1, LogSource::Stdout, "end\n");
            tap.flush().await;
            next
        }
    });

    let wait_seen = |seen: &watch::Receiver<u64>, target: u64| {
        let mut seen = seen.clone();
        async move {
            let reached =
                tokio::time::timeout(Duration::from_secs(60), seen.wait_for(|&n| n >= target))
                    .await
                    .unwrap_or_else(|_| panic!("no progress to record {target}"));
            reached.is_ok()
        }
    };

    let mut reader_alive = wait_seen(&seen, 200).await;
    let mut kills = 0;
    while reader_alive && kills < 50 {
        let seen_before = *seen.borrow();
        let tailers = ractor::call_t!(subscriber, SubscriberMsg::Tailers, 5_000).unwrap();
        assert_eq!(
            tailers.len(),
            1,
            "one tailer (exec.log) for the default sources"
        );
        let old = tailers[0].get_id();
        if kills % 2 == 0 {
            tailers[0].kill();
        } else {
            tailers[0].stop(None);
        }
        kills += 1;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let tailers = ractor::call_t!(subscriber, SubscriberMsg::Tailers, 5_000).unwrap();
            if tailers.len() == 1 && tailers[0].get_id() != old {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "kill {kills}: tailer not replaced"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // Records written from now on can only come through the new tailer;
        // read a few of them, and enough in all that the kills are spread
        // over many rotations.
        let target = (written.load(Ordering::Acquire) + 5).max(seen_before + 800);
        reader_alive = wait_seen(&seen, target).await;
    }
    stop_tx.send_replace(true);
    let total = tokio::time::timeout(Duration::from_secs(120), writer)
        .await
        .expect("the writer did not stop")
        .expect("the writer panicked");
    let (count, _stream) = join_reader(reader).await;
    assert_eq!(kills, 50);
    assert_eq!(
        count, total,
        "every record once, in order, up to the end marker"
    );
    let rotations = tap.flush().await.generation;
    assert!(rotations >= 20, "only {rotations} rotations");
    eprintln!("killing tailers: {total} records, {rotations} rotations");
}

/// A log that cannot be read (`exec.log` is a directory: reads fail with
/// EISDIR) exhausts the restart budget: one error, then the end.
#[tokio::test]
async fn failing_reader_gives_up_after_restart_budget() {
    let home = Home::new();
    let dir = home.sandbox("broken");
    std::fs::create_dir(dir.join("exec.log")).unwrap();
    let mut stream = home
        .logs
        .log_stream("broken", &follow())
        .await
        .unwrap_or_else(|err| panic!("log_stream itself failed: {err:?}"));
    match next_within(&mut stream, 60).await {
        Some(Err(Error::LogReaderFailed { name, reason })) => {
            assert_eq!(name, "broken");
            eprintln!("reader gave up: {reason}");
        }
        other => panic!("expected LogReaderFailed, got {other:?}"),
    }
    assert!(next_within(&mut stream, 30).await.is_none());
}

/// Two hundred sandboxes, each with its own tap and follower: each stream gets
/// exactly its own lines, and the whole process holds one inotify instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_follow_streams_on_two_hundred_sandboxes() {
    const SANDBOXES: usize = 200;
    const LINES: usize = 20;
    let home = Home::new();
    let names: Vec<String> = (0..SANDBOXES).map(|k| format!("many-{k:03}")).collect();
    let mut taps = Vec::new();
    for name in &names {
        taps.push(Tap::spawn(&home.sandbox(name), 1 << 20, 4).await);
    }
    let mut streams = Vec::new();
    for name in &names {
        streams.push(home.logs.log_stream(name, &follow()).await.unwrap());
    }
    assert_eq!(
        inotify_instances(),
        1,
        "one inotify instance for all readers"
    );

    for (tap, name) in taps.iter().zip(&names) {
        for i in 0..LINES {
            tap.chunk(1, LogSource::Stdout, format!("{name} line {i}\n"));
        }
        // A marker after the lines: anything extra would come before it.
        tap.chunk(1, LogSource::Stdout, format!("{name} end\n"));
    }
    for tap in &taps {
        tap.flush().await;
    }
    let received = futures::future::join_all(streams.iter_mut().map(|stream| async move {
        let mut got = Vec::new();
        for _ in 0..=LINES {
            got.push(text(&next_within(stream, 60).await.unwrap().unwrap()));
        }
        got
    }))
    .await;
    for (got, name) in received.iter().zip(&names) {
        let want: Vec<String> = (0..LINES)
            .map(|i| format!("{name} line {i}\n"))
            .chain([format!("{name} end\n")])
            .collect();
        assert_eq!(got, &want, "{name}");
    }
    assert_eq!(
        inotify_instances(),
        1,
        "one inotify instance with {SANDBOXES} streams open"
    );
    drop(streams);
    for tap in taps {
        tap.stop().await;
    }
}
