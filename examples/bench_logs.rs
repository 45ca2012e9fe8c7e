//! Benchmarks sandvisor's log path against bare baselines, in one run:
//!
//! 1. `read_logs` over a full-retention `exec.log` chain (written by a real
//!    `RelayTap`) vs a bare `serde_json` line loop over the same files.
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

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use ractor::{Actor, ActorRef};
use sandvisor::engine::log::format::RecordEncoder;
use sandvisor::engine::log::tap::{
    Chunk, RelayTap, RelayTapMsg, TapArgs, TapConfig, TapStats, DEFAULT_KEEP, DEFAULT_MAX_BYTES,
};
use sandvisor::{LogOptions, LogSource, LogStreamOptions, Logs};
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

/// One `exec.log` record as the baseline sees it.
#[derive(Deserialize)]
struct BareRecord<'a> {
    t: &'a str,
    s: &'a str,
    #[serde(borrow)]
    d: Cow<'a, str>,
    id: Option<u64>,
}

/// What the baseline loop counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct BareCount {
    records: usize,
    data_bytes: usize,
    session_sum: u64,
    stderr: usize,
    bad: usize,
}

/// The baseline: each file oldest first, whole, split on `\n`, `serde_json` per line.
fn bare_read(files: &[PathBuf]) -> BenchResult<BareCount> {
    let mut count = BareCount::default();
    for path in files {
        let bytes = std::fs::read(path)?;
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

async fn bench_read() -> BenchResult<()> {
    println!(
        "== 1. read_logs over a full-retention exec.log chain (default rotation: 10 MiB x 4) =="
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
    let mut files: Vec<PathBuf> = (1..=DEFAULT_KEEP)
        .rev()
        .map(|g| dir.join(format!("exec.log.{g}")))
        .filter(|p| p.exists())
        .collect();
    files.push(dir.join("exec.log"));
    let mut chain_bytes = 0u64;
    for path in &files {
        chain_bytes += std::fs::metadata(path)?.len();
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

    // One warm-up run each (page cache, allocator), then the timed runs.
    let options = LogOptions::default();
    let warm = logs.read_logs(name, &options).await?;
    let sandvisor_records = warm.len();
    let sandvisor_data: usize = warm.iter().map(|e| e.data.len()).sum();
    drop(warm);
    let mut sandvisor_ms = Vec::with_capacity(READ_RUNS);
    for _ in 0..READ_RUNS {
        let t0 = Instant::now();
        let entries = logs.read_logs(name, &options).await?;
        sandvisor_ms.push(t0.elapsed().as_secs_f64() * 1e3);
        if entries.len() != sandvisor_records {
            return Err(format!(
                "read_logs returned {} entries, then {}",
                sandvisor_records,
                entries.len()
            )
            .into());
        }
        drop(black_box(entries));
    }
    let sandvisor_median = median(&mut sandvisor_ms);

    let bare = bare_read(&files)?;
    let mut bare_ms = Vec::with_capacity(READ_RUNS);
    for _ in 0..READ_RUNS {
        let t0 = Instant::now();
        let count = black_box(bare_read(&files)?);
        bare_ms.push(t0.elapsed().as_secs_f64() * 1e3);
        if count != bare {
            return Err("the baseline counted differently between runs".into());
        }
    }
    let bare_median = median(&mut bare_ms);

    if bare.records != records || sandvisor_records != records || bare.bad != 0 {
        return Err(format!(
            "record counts differ: written {records}, sandvisor {sandvisor_records}, baseline {} ({} bad)",
            bare.records, bare.bad
        )
        .into());
    }
    if bare.data_bytes != sandvisor_data {
        return Err(format!(
            "data bytes differ: sandvisor {sandvisor_data}, baseline {}",
            bare.data_bytes
        )
        .into());
    }

    println!(
        "{:<34} {:>9} {:>8} {:>10} {:>9}",
        "", "records", "MiB", "ms (med)", "MiB/s"
    );
    for (label, n, ms) in [
        (
            "sandvisor Logs::read_logs",
            sandvisor_records,
            sandvisor_median,
        ),
        ("baseline serde_json line loop", bare.records, bare_median),
    ] {
        println!(
            "{label:<34} {n:>9} {chain_mib:>8.1} {ms:>10.1} {:>9.0}",
            chain_mib / (ms / 1e3)
        );
    }
    let ratio = bare_median / sandvisor_median;
    println!(
        "ratio baseline_ms / sandvisor_ms = {ratio:.2}  (target >= 0.70: {})",
        verdict(ratio >= 0.7)
    );
    println!(
        "runs (ms): sandvisor {}; baseline {}",
        list(&sandvisor_ms),
        list(&bare_ms)
    );
    println!(
        "peer: {PEER_READ_MS:.0} ms for 50 MiB chain; sandvisor speed-up vs peer = {:.2}x ({:.1} MiB here)",
        PEER_READ_MS / sandvisor_median,
        chain_mib
    );
    Ok(())
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
    let sandvisor = follow_sandvisor().await?;
    let bare = follow_bare().await?;
    println!("{:<44} {:>9} {:>9} {:>9}", "", "p50 us", "p99 us", "max us");
    for (label, l) in [
        ("sandvisor RelayTap -> log_stream(follow)", &sandvisor),
        ("baseline write_all -> notify + pread", &bare),
    ] {
        println!("{label:<44} {:>9.0} {:>9.0} {:>9.0}", l.p50, l.p99, l.max);
    }
    println!(
        "p99 ratio sandvisor / baseline = {:.2}  (sandvisor p99 target <= 2000 us: {})",
        sandvisor.p99 / bare.p99,
        verdict(sandvisor.p99 <= 2000.0)
    );
    println!(
        "peer: p99 ~ {PEER_FOLLOW_P99_US:.0} us; sandvisor p99 / peer p99 = {:.2}",
        sandvisor.p99 / PEER_FOLLOW_P99_US
    );
    Ok(())
}
