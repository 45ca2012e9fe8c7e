//! Benchmarks sandvisor's log path against bare baselines, in one run:
//!
//! 1. `read_logs` and a `log_stream` drain over a full-retention `exec.log`
//!    chain (written by a real `RelayTap`) vs a bare `serde_json` line loop
//!    over the same files producing the same entries (checked equal), and the
//!    peak memory of one `read_logs` against what it returns.
//! 2. `RelayTap` write throughput vs one `write_all` per pre-encoded record.
//! 3. Follow latency of `log_stream(follow: true)` vs a bare `notify` watcher.
//!
//! Run with `cargo run --release --example bench_logs`; pass `read`, `write`
//! or `follow` to run only those sections (e.g. under `perf record`).

use std::borrow::Cow;
use std::error::Error;
use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use ractor::{Actor, ActorRef};
use sandvisor::engine::log::format::{FileId, Position, RecordEncoder, StreamKey};
use sandvisor::engine::log::tap::{
    Chunk, RelayTap, RelayTapMsg, TapArgs, TapConfig, TapStats, DEFAULT_KEEP, DEFAULT_MAX_BYTES,
};
use sandvisor::{LogCursor, LogEntry, LogOptions, LogSource, LogStreamOptions, Logs};
use serde::Deserialize;

type BenchResult<T> = Result<T, Box<dyn Error>>;

const MIB: f64 = 1024.0 * 1024.0;

/// Records written for the read benchmark (capped by what the chain retains).
const READ_RECORDS: usize = 411_000;
/// Timed `read_logs` runs (after one warm-up).
const READ_RUNS: usize = 5;
/// Records of the ~100-byte write row.
const WRITE_SMALL_RECORDS: usize = 400_000;
/// Records of the 4 KiB write row.
const WRITE_LARGE_RECORDS: usize = 20_000;
/// Bytes of data in each chunk of the 4 KiB write row.
const WRITE_LARGE_CHUNK: usize = 4096;
/// Timed write runs per side.
const WRITE_RUNS: usize = 3;
/// The tap's rotation size in the write benchmark: large enough that it never rotates.
const WRITE_MAX_BYTES: u64 = 1 << 30;
/// Measured appends in the follow benchmark.
const FOLLOW_APPENDS: usize = 1_000;
/// Unmeasured appends before them.
const FOLLOW_WARMUP: usize = 50;
/// Spacing between appends.
const FOLLOW_GAP: Duration = Duration::from_millis(1);
/// How long one append may take to show up before the benchmark gives up.
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(5);

/// A peer's `read_logs` time over a 50 MiB chain, for scale.
const PEER_READ_MS: f64 = 176.0;
/// A peer's follow p99, for scale.
const PEER_FOLLOW_P99_US: f64 = 250.0;

#[tokio::main]
async fn main() -> BenchResult<()> {
    // Optional section names (`read`, `write`, `follow`) run only those, for profiling.
    let only: Vec<String> = std::env::args().skip(1).collect();
    if only.first().map(String::as_str) == Some(RSS_CHILD) {
        let home = only.get(1).ok_or("rss needs the home")?;
        return rss_child(Path::new(home)).await;
    }
    let wanted = |section: &str| only.is_empty() || only.iter().any(|s| s == section);
    let started = Instant::now();
    println!("sandvisor log benchmarks (release, {} cores)", cores());
    println!();
    if wanted("read") {
        bench_read().await?;
        println!();
    }
    if wanted("write") {
        bench_write().await?;
        println!();
    }
    if wanted("follow") {
        bench_follow().await?;
        println!();
    }
    println!("total runtime: {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

// ---------------------------------------------------------------------------
// Workload
// ---------------------------------------------------------------------------

/// A realistic access-log line (~62 bytes, so a record is ~127 bytes on disk
/// and 411k records fill the default 5 × 10 MiB chain).
fn line(i: usize) -> String {
    const AGENTS: [&str; 4] = [
        "curl/8.5.0",
        "Go-http/1.1",
        "python-req/2.31",
        "Mozilla/5.0",
    ];
    const STATUS: [u16; 8] = [200, 200, 200, 200, 201, 304, 404, 500];
    let ms = (i * 7919) % 997;
    let status = STATUS[i % STATUS.len()];
    let agent = AGENTS[(i / 3) % AGENTS.len()];
    format!("{i:08} GET /api/v1/items?id={i} {status} {ms}ms agent={agent}\n")
}

/// Sessions 1..=3, stdout mostly, stderr for every 4th line.
fn origin(i: usize) -> (u64, LogSource) {
    let session = (i % 3) as u64 + 1;
    let source = if i % 4 == 3 {
        LogSource::Stderr
    } else {
        LogSource::Stdout
    };
    (session, source)
}

/// Chunks of `data_len` bytes built from consecutive lines (the last line cut short).
fn big_chunk(index: usize, data_len: usize) -> String {
    let mut data = String::with_capacity(data_len + 128);
    let mut i = index * 64;
    while data.len() < data_len {
        data.push_str(&line(i));
        i += 1;
    }
    data.truncate(data_len);
    data
}

/// The median (sorts `samples`).
fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[rank]
}

async fn spawn_tap(dir: &Path, max_bytes: u64, keep: usize) -> BenchResult<ActorRef<RelayTapMsg>> {
    let args = TapArgs {
        config: TapConfig {
            dir: dir.to_path_buf(),
            max_bytes,
            keep,
            // As for a namespace sandbox: nothing else writes there.
            sole_writer: true,
            ..TapConfig::new(dir)
        },
        generation: 0,
        events: None,
    };
    let (tap, _) = Actor::spawn(None, RelayTap, args).await?;
    Ok(tap)
}

async fn flush(tap: &ActorRef<RelayTapMsg>) -> BenchResult<TapStats> {
    Ok(ractor::call_t!(tap, RelayTapMsg::Flush, 60_000)?)
}

async fn stop(tap: ActorRef<RelayTapMsg>) -> BenchResult<()> {
    tap.stop_and_wait(None, Some(Duration::from_secs(10)))
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// 1. read_logs over a full-retention chain
// ---------------------------------------------------------------------------

/// One `exec.log` record as the baselines see it.
#[derive(Deserialize)]
struct BareRecord<'a> {
    t: &'a str,
    s: &'a str,
    #[serde(borrow)]
    d: Cow<'a, str>,
    e: Option<&'a str>,
    id: Option<u64>,
}

/// What the counting baseline counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct BareCount {
    records: usize,
    data_bytes: usize,
    session_sum: u64,
    stderr: usize,
    bad: usize,
}

/// The counting baseline: each file oldest first, whole, split on `\n`,
/// `serde_json` per line, nothing kept (a lower bound for any reader).
fn bare_count(files: &[ChainFile]) -> BenchResult<BareCount> {
    let mut count = BareCount::default();
    for file in files {
        let bytes = std::fs::read(&file.path)?;
        for line in bytes.split(|&b| b == b'\n') {
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice::<BareRecord<'_>>(line) {
                Ok(rec) => {
                    count.records += 1;
                    count.data_bytes += rec.d.len();
                    count.session_sum += rec.id.unwrap_or(0);
                    count.stderr += usize::from(rec.s == "stderr");
                    count.bad += usize::from(rec.t.len() != 24);
                }
                Err(_) => count.bad += 1,
            }
        }
    }
    Ok(count)
}

/// One file of the chain, oldest first.
struct ChainFile {
    path: PathBuf,
    id: FileId,
}

/// The baseline the targets are measured against: the same loop producing
/// the same entries `read_logs` returns — `serde_json::from_slice` per line,
/// chrono's RFC 3339 parser, the bytes copied, each entry's cursor set.
fn bare_entries(files: &[ChainFile], dir: FileId) -> BenchResult<Vec<LogEntry>> {
    let mut entries = Vec::new();
    for file in files {
        let bytes = std::fs::read(&file.path)?;
        let mut offset = 0u64;
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            offset += line.len() as u64;
            let Some(body) = line.strip_suffix(b"\n") else {
                continue;
            };
            let Ok(rec) = serde_json::from_slice::<BareRecord<'_>>(body) else {
                continue;
            };
            let source = match rec.s {
                "stdout" => LogSource::Stdout,
                "stderr" => LogSource::Stderr,
                "output" => LogSource::Output,
                _ => continue,
            };
            let Ok(t) = DateTime::parse_from_rfc3339(rec.t) else {
                continue;
            };
            let data = match rec.e {
                Some("b64") => Bytes::from(BASE64.decode(rec.d.as_bytes())?),
                _ => Bytes::copy_from_slice(rec.d.as_bytes()),
            };
            let mut cursor = LogCursor::new(dir);
            cursor.set_position(
                StreamKey::Exec,
                Position {
                    file: file.id,
                    offset,
                },
            );
            entries.push(LogEntry {
                timestamp: t.with_timezone(&Utc),
                source,
                session_id: rec.id,
                data,
                cursor,
            });
        }
    }
    Ok(entries)
}

/// How many of the first `READ_RECORDS` lines fit in the default chain without
/// anything being rotated away (simulating the tap's rotation exactly).
fn records_that_fit() -> usize {
    let max_bytes = DEFAULT_MAX_BYTES;
    let files = DEFAULT_KEEP + 1;
    let mut encoder = RecordEncoder::default();
    let mut buf = Vec::new();
    let at = Utc::now();
    let (mut file, mut size) = (1, 0u64);
    for i in 0..READ_RECORDS {
        let (session, source) = origin(i);
        buf.clear();
        encoder.encode(&mut buf, at, source, Some(session), line(i).as_bytes());
        let len = buf.len() as u64;
        if size > 0 && size + len > max_bytes {
            file += 1;
            size = 0;
        }
        if file > files {
            return i;
        }
        size += len;
    }
    READ_RECORDS
}

/// Medians of `READ_RUNS` timed runs of `run` (after one warm-up), checking
/// every run returns the same count.
async fn timed<F, Fut>(label: &str, mut run: F) -> BenchResult<(f64, Vec<f64>)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = BenchResult<usize>>,
{
    let expected = run().await?;
    let mut samples = Vec::with_capacity(READ_RUNS);
    for _ in 0..READ_RUNS {
        let t0 = Instant::now();
        let got = run().await?;
        samples.push(t0.elapsed().as_secs_f64() * 1e3);
        if got != expected {
            return Err(format!("{label}: {expected} entries, then {got}").into());
        }
    }
    let mut sorted = samples.clone();
    Ok((median(&mut sorted), samples))
}

async fn bench_read() -> BenchResult<()> {
    println!(
        "== 1. read_logs and log_stream over a full-retention exec.log chain (default rotation: 10 MiB x 4) =="
    );
    let home = tempfile::tempdir()?;
    let logs = Logs::at(home.path());
    let name = "bench-read";
    let dir = logs.log_dir_for(name)?;
    std::fs::create_dir_all(&dir)?;

    let records = records_that_fit();
    let tap = spawn_tap(&dir, DEFAULT_MAX_BYTES, DEFAULT_KEEP).await?;
    let write_start = Instant::now();
    for i in 0..records {
        let (session, source) = origin(i);
        tap.cast(RelayTapMsg::Chunk(Chunk::now(session, source, line(i))))?;
    }
    let tap_stats = flush(&tap).await?;
    let write_secs = write_start.elapsed().as_secs_f64();
    stop(tap).await?;

    // Oldest first: exec.log.4 … exec.log.1, exec.log.
    let mut files = Vec::new();
    for path in (1..=DEFAULT_KEEP)
        .rev()
        .map(|g| dir.join(format!("exec.log.{g}")))
        .chain([dir.join("exec.log")])
    {
        if let Some(id) = FileId::of_path(&path)? {
            files.push(ChainFile { path, id });
        }
    }
    let dir_id = FileId::of_path(&dir)?.ok_or("the log directory vanished")?;
    let mut chain_bytes = 0u64;
    for file in &files {
        chain_bytes += std::fs::metadata(&file.path)?.len();
    }
    let chain_mib = chain_bytes as f64 / MIB;
    println!(
        "chain: {} files, {:.1} MiB, {} records ({:.0} B each) written by a RelayTap in {:.2} s (generation {})",
        files.len(),
        chain_mib,
        tap_stats.records,
        chain_bytes as f64 / tap_stats.records.max(1) as f64,
        write_secs,
        tap_stats.generation
    );

    // Exactness first: the same entries, cursors included, as the baseline.
    let options = LogOptions::default();
    let ours = logs.read_logs(name, &options).await?;
    let theirs = bare_entries(&files, dir_id)?;
    if ours.len() != records || ours != theirs {
        let first = ours.iter().zip(&theirs).position(|(a, b)| a != b);
        return Err(format!(
            "read_logs differs from the baseline: {} vs {} entries (of {records} written), first difference at {first:?}",
            ours.len(),
            theirs.len()
        )
        .into());
    }
    let data_bytes: usize = ours.iter().map(|e| e.data.len()).sum();
    drop((ours, theirs));

    let (read_med, read_runs) = timed("read_logs", || async {
        let entries = logs.read_logs(name, &options).await?;
        Ok(black_box(entries).len())
    })
    .await?;
    let stream_options = LogStreamOptions::default();
    let (drain_med, drain_runs) = timed("log_stream drain", || async {
        let mut stream = logs.log_stream(name, &stream_options).await?;
        let mut n = 0;
        while let Some(entry) = stream.next().await {
            black_box(entry?);
            n += 1;
        }
        Ok(n)
    })
    .await?;
    let (bare_med, bare_runs) = timed("baseline", || async {
        Ok(black_box(bare_entries(&files, dir_id)?).len())
    })
    .await?;
    let counted = bare_count(&files)?;
    let (count_med, count_runs) = timed("counting baseline", || async {
        let count = black_box(bare_count(&files)?);
        if count != counted {
            return Err("the counting baseline counted differently between runs".into());
        }
        Ok(count.records)
    })
    .await?;
    if counted.records != records || counted.bad != 0 || counted.data_bytes != data_bytes {
        return Err(format!(
            "the counting baseline saw {} records ({} bad, {} data bytes); written {records} ({data_bytes} data bytes)",
            counted.records, counted.bad, counted.data_bytes
        )
        .into());
    }

    println!(
        "{:<44} {:>9} {:>8} {:>10} {:>9} {:>8}",
        "", "records", "MiB", "ms (med)", "MiB/s", "speed-up"
    );
    let rows = [
        ("sandvisor Logs::read_logs", read_med, &read_runs),
        ("sandvisor Logs::log_stream drain", drain_med, &drain_runs),
        ("baseline serde_json loop -> LogEntry", bare_med, &bare_runs),
        ("(serde_json loop, counting only)", count_med, &count_runs),
    ];
    for (label, ms, _) in rows {
        println!(
            "{label:<44} {records:>9} {chain_mib:>8.1} {ms:>10.1} {:>9.0} {:>7.2}x",
            chain_mib / (ms / 1e3),
            bare_med / ms
        );
    }
    for (label, ms) in [("read_logs", read_med), ("log_stream drain", drain_med)] {
        let ratio = bare_med / ms;
        println!(
            "{label}: {ratio:.2}x the baseline's speed (target >= 2.0: {}); {:.2}x the counting loop's",
            verdict(ratio >= 2.0),
            count_med / ms
        );
    }
    for (label, _, runs) in rows {
        println!("  runs (ms) {label}: {}", list(runs));
    }
    println!(
        "peer: {PEER_READ_MS:.0} ms for a 50 MiB chain; read_logs speed-up vs peer = {:.2}x",
        PEER_READ_MS / read_med
    );
    read_rss(home.path(), data_bytes).await
}

/// Peak memory of one `read_logs` over the chain, measured in a child process
/// of this benchmark (`bench_logs rss HOME`), so nothing else it did counts.
async fn read_rss(home: &Path, data_bytes: usize) -> BenchResult<()> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .arg(RSS_CHILD)
        .arg(home)
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "the memory child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let text = String::from_utf8(out.stdout)?;
    let numbers: Vec<u64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let [before_kib, peak_kib, entries, returned] = numbers[..] else {
        return Err(format!("the memory child said {text:?}").into());
    };
    let growth = (peak_kib.saturating_sub(before_kib) * 1024) as f64;
    let ratio = growth / returned as f64;
    println!(
        "memory: read_logs returns {entries} entries = {:.1} MiB ({} B per entry + {:.1} MiB of data); peak RSS grew {:.1} MiB = {ratio:.2}x what it returns (target <= 2.0: {})",
        returned as f64 / MIB,
        std::mem::size_of::<LogEntry>(),
        data_bytes as f64 / MIB,
        growth / MIB,
        verdict(ratio <= 2.0)
    );
    Ok(())
}

/// The first argument that makes this binary the memory child.
const RSS_CHILD: &str = "rss";

/// The memory child: one `read_logs`, then its RSS before, its peak, the
/// entries and the bytes they hold (the `Vec`'s slots plus the data).
async fn rss_child(home: &Path) -> BenchResult<()> {
    let logs = Logs::at(home);
    let before = status_kib("VmRSS")?;
    let entries = logs.read_logs("bench-read", &LogOptions::default()).await?;
    let peak = status_kib("VmHWM")?;
    let returned = entries.capacity() * std::mem::size_of::<LogEntry>()
        + entries.iter().map(|e| e.data.len()).sum::<usize>();
    println!("{before} {peak} {} {returned}", entries.len());
    Ok(())
}

/// A `kB` field of `/proc/self/status`.
fn status_kib(field: &str) -> BenchResult<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let value = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .ok_or_else(|| format!("no {field} in /proc/self/status"))?;
    Ok(value.trim().trim_end_matches("kB").trim().parse()?)
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "MISS"
    }
}

fn list(samples: &[f64]) -> String {
    samples
        .iter()
        .map(|s| format!("{s:.1}"))
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------
// 2. RelayTap write throughput vs write_all
// ---------------------------------------------------------------------------

/// The chunks of one write row and the same records pre-encoded.
struct WriteSet {
    chunks: Vec<Chunk>,
    encoded: Vec<u8>,
    /// End offset of each record in `encoded`.
    ends: Vec<usize>,
}

impl WriteSet {
    fn new(records: usize, data: impl Fn(usize) -> String) -> Self {
        let captured_at: DateTime<Utc> = Utc::now();
        let mut encoder = RecordEncoder::default();
        let mut record = Vec::new();
        let mut chunks = Vec::with_capacity(records);
        let mut encoded = Vec::new();
        let mut ends = Vec::with_capacity(records);
        for i in 0..records {
            let (session_id, source) = origin(i);
            // Spread timestamps over a few seconds, like a real capture.
            let at = captured_at + chrono::Duration::microseconds(i as i64 * 10);
            let bytes = Bytes::from(data(i));
            record.clear();
            encoder.encode(&mut record, at, source, Some(session_id), &bytes);
            encoded.extend_from_slice(&record);
            ends.push(encoded.len());
            chunks.push(Chunk {
                session_id,
                source,
                data: bytes,
                captured_at: at,
            });
        }
        Self {
            chunks,
            encoded,
            ends,
        }
    }

    fn bytes(&self) -> u64 {
        self.encoded.len() as u64
    }

    /// "N B data (M B/rec)": average chunk size and record size on disk.
    fn label(&self) -> String {
        let n = self.chunks.len().max(1) as f64;
        let data: usize = self.chunks.iter().map(|c| c.data.len()).sum();
        format!(
            "{:.0} B data ({:.0} B/rec)",
            data as f64 / n,
            self.bytes() as f64 / n
        )
    }

    /// Baseline: one `write_all` per record on an `O_APPEND` descriptor; seconds.
    fn write_plain(&self, dir: &Path) -> BenchResult<f64> {
        let path = dir.join("exec.log");
        let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
        let t0 = Instant::now();
        let mut start = 0;
        for &end in &self.ends {
            file.write_all(&self.encoded[start..end])?;
            start = end;
        }
        let secs = t0.elapsed().as_secs_f64();
        drop(file);
        let len = std::fs::metadata(&path)?.len();
        if len != self.bytes() {
            return Err(format!("baseline wrote {len} bytes, expected {}", self.bytes()).into());
        }
        Ok(secs)
    }

    /// The tap: the chunks sent `batch` to a message (one message per chunk
    /// for 1), then a flush; seconds.
    async fn write_tap(&self, dir: &Path, batch: usize) -> BenchResult<f64> {
        let tap = spawn_tap(dir, WRITE_MAX_BYTES, 4).await?;
        let messages: Vec<RelayTapMsg> = if batch == 1 {
            self.chunks
                .iter()
                .cloned()
                .map(RelayTapMsg::Chunk)
                .collect()
        } else {
            self.chunks
                .chunks(batch)
                .map(|group| RelayTapMsg::Chunks(group.to_vec()))
                .collect()
        };
        let t0 = Instant::now();
        for msg in messages {
            tap.cast(msg)?;
        }
        let stats = flush(&tap).await?;
        let secs = t0.elapsed().as_secs_f64();
        stop(tap).await?;
        if stats.bytes != self.bytes() || stats.generation != 0 {
            return Err(format!(
                "tap wrote {} bytes in {} rotations, expected {} in none",
                stats.bytes,
                stats.generation,
                self.bytes()
            )
            .into());
        }
        let on_disk = std::fs::read(dir.join("exec.log"))?;
        if on_disk != self.encoded {
            return Err("the tap's file differs from the pre-encoded records".into());
        }
        Ok(secs)
    }
}

async fn bench_write() -> BenchResult<()> {
    println!(
        "== 2. RelayTap write throughput vs one write_all per record (O_APPEND, no rotation) =="
    );
    println!(
        "{:<32} {:>8} {:>8} {:>14} {:>14} {:>7}",
        "row", "records", "MiB", "tap MiB/s", "write_all MiB/s", "ratio"
    );
    let rows = [
        WriteSet::new(WRITE_SMALL_RECORDS, line),
        WriteSet::new(WRITE_LARGE_RECORDS, |i| big_chunk(i, WRITE_LARGE_CHUNK)),
    ];
    let mut details = Vec::new();
    // One message per chunk, and batches of 64 as the VM capture path sends
    // them (all frames decoded from one socket read go to the tap together).
    for batch in [1, 64] {
        for set in &rows {
            let label = format!("{} x{batch}/msg", set.label());
            let mib = set.bytes() as f64 / MIB;
            let mut tap_secs = Vec::with_capacity(WRITE_RUNS);
            let mut plain_secs = Vec::with_capacity(WRITE_RUNS);
            // Interleaved so that writeback and cache state hit both sides alike.
            for _ in 0..WRITE_RUNS {
                let plain_dir = tempfile::tempdir()?;
                plain_secs.push(set.write_plain(plain_dir.path())?);
                drop(plain_dir);
                let tap_dir = tempfile::tempdir()?;
                tap_secs.push(set.write_tap(tap_dir.path(), batch).await?);
                drop(tap_dir);
            }
            let tap_mibs = mib / median(&mut tap_secs);
            let plain_mibs = mib / median(&mut plain_secs);
            let ratio = tap_mibs / plain_mibs;
            println!(
                "{label:<32} {:>8} {mib:>8.1} {tap_mibs:>14.0} {plain_mibs:>14.0} {ratio:>7.2}  (target >= 0.80: {})",
                set.chunks.len(),
                verdict(ratio >= 0.8)
            );
            let ms = |s: &[f64]| s.iter().map(|s| s * 1e3).collect::<Vec<_>>();
            details.push(format!(
                "  {label}: tap runs (ms) {}; write_all runs (ms) {}",
                list(&ms(&tap_secs)),
                list(&ms(&plain_secs))
            ));
        }
    }
    println!("ratio = tap MiB/s / write_all MiB/s (medians of {WRITE_RUNS}); tap time includes encoding, send and Flush");
    for detail in details {
        println!("{detail}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// 3. Follow latency
// ---------------------------------------------------------------------------

struct Latency {
    p50: f64,
    p99: f64,
    max: f64,
}

impl Latency {
    fn of(mut micros: Vec<f64>) -> Self {
        micros.sort_by(f64::total_cmp);
        Self {
            p50: percentile(&micros, 0.50),
            p99: percentile(&micros, 0.99),
            max: micros[micros.len() - 1],
        }
    }
}

/// sandvisor: a RelayTap appends, `log_stream(follow: true)` delivers.
async fn follow_sandvisor() -> BenchResult<Latency> {
    let home = tempfile::tempdir()?;
    let logs = Logs::at(home.path());
    let name = "bench-follow";
    let dir = logs.log_dir_for(name)?;
    std::fs::create_dir_all(&dir)?;
    let tap = spawn_tap(&dir, DEFAULT_MAX_BYTES, DEFAULT_KEEP).await?;
    flush(&tap).await?;
    let options = LogStreamOptions {
        follow: true,
        ..LogStreamOptions::default()
    };
    let mut stream = logs.log_stream(name, &options).await?;
    let mut micros = Vec::with_capacity(FOLLOW_APPENDS);
    for i in 0..FOLLOW_WARMUP + FOLLOW_APPENDS {
        let data = Bytes::from(line(i));
        let (session, source) = origin(i);
        let t0 = Instant::now();
        tap.cast(RelayTapMsg::Chunk(Chunk::now(
            session,
            source,
            data.clone(),
        )))?;
        let entry = tokio::time::timeout(FOLLOW_TIMEOUT, stream.next())
            .await
            .map_err(|_| format!("append {i} did not arrive within {FOLLOW_TIMEOUT:?}"))?
            .ok_or("the stream ended")??;
        let elapsed = t0.elapsed();
        if entry.data != data {
            return Err(format!("append {i}: got {:?}", entry.data).into());
        }
        if i >= FOLLOW_WARMUP {
            micros.push(elapsed.as_secs_f64() * 1e6);
        }
        tokio::time::sleep(FOLLOW_GAP).await;
    }
    drop(stream);
    stop(tap).await?;
    Ok(Latency::of(micros))
}

/// Baseline: plain `write_all` appends, a bare notify watcher on the
/// directory, and a read of the new bytes after each event.
async fn follow_bare() -> BenchResult<Latency> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("exec.log");
    let mut writer = OpenOptions::new().create(true).append(true).open(&path)?;
    let reader = File::open(&path)?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // The receiver outlives the watcher; a failed send only happens at teardown.
        let _ = tx.send(event);
    })?;
    notify::Watcher::watch(
        &mut watcher,
        dir.path(),
        notify::RecursiveMode::NonRecursive,
    )?;

    let mut encoder = RecordEncoder::default();
    let mut record = Vec::new();
    let mut offset = 0u64;
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut micros = Vec::with_capacity(FOLLOW_APPENDS);
    for i in 0..FOLLOW_WARMUP + FOLLOW_APPENDS {
        let (session, source) = origin(i);
        encoder.encode(
            &mut record,
            Utc::now(),
            source,
            Some(session),
            line(i).as_bytes(),
        );
        // Events of earlier appends must not count for this one.
        while rx.try_recv().is_ok() {}
        let t0 = Instant::now();
        writer.write_all(&record)?;
        loop {
            let event = tokio::time::timeout(FOLLOW_TIMEOUT, rx.recv())
                .await
                .map_err(|_| format!("no event for append {i} within {FOLLOW_TIMEOUT:?}"))?
                .ok_or("the watcher stopped")?;
            event?;
            loop {
                let n = reader.read_at(&mut buf, offset)?;
                if n == 0 {
                    break;
                }
                pending.extend_from_slice(&buf[..n]);
                offset += n as u64;
            }
            if pending.last() == Some(&b'\n') {
                break;
            }
        }
        let elapsed = t0.elapsed();
        if pending != record {
            return Err(format!(
                "append {i}: read {} bytes, wrote {}",
                pending.len(),
                record.len()
            )
            .into());
        }
        pending.clear();
        if i >= FOLLOW_WARMUP {
            micros.push(elapsed.as_secs_f64() * 1e6);
        }
        tokio::time::sleep(FOLLOW_GAP).await;
    }
    drop(watcher);
    Ok(Latency::of(micros))
}

async fn bench_follow() -> BenchResult<()> {
    println!(
        "== 3. Follow latency: {FOLLOW_APPENDS} appends ~{} ms apart, send -> entry delivered ==",
        FOLLOW_GAP.as_millis()
    );
    // Both loops run as tasks of the runtime, as a service's consumers do
    // (the main future runs on the main thread, outside the workers).
    let sandvisor =
        tokio::spawn(async { follow_sandvisor().await.map_err(|e| e.to_string()) }).await??;
    let bare = tokio::spawn(async { follow_bare().await.map_err(|e| e.to_string()) }).await??;
    println!("{:<44} {:>9} {:>9} {:>9}", "", "p50 us", "p99 us", "max us");
    for (label, l) in [
        ("sandvisor RelayTap -> log_stream(follow)", &sandvisor),
        ("baseline write_all -> notify + pread", &bare),
    ] {
        println!("{label:<44} {:>9.0} {:>9.0} {:>9.0}", l.p50, l.p99, l.max);
    }
    println!(
        "sandvisor p99 {:.0} us (target <= 150 us: {}); baseline p99 {:.0} us; ratio sandvisor / baseline = {:.2}",
        sandvisor.p99,
        verdict(sandvisor.p99 <= 150.0),
        bare.p99,
        sandvisor.p99 / bare.p99
    );
    println!(
        "peer: p99 ~ {PEER_FOLLOW_P99_US:.0} us; sandvisor p99 / peer p99 = {:.2}",
        sandvisor.p99 / PEER_FOLLOW_P99_US
    );
    Ok(())
}
