//! The watch hub releases every directory and reader when the streams are
//! dropped, and keeps no inotify watch on a directory its RelayTap is the
//! sole writer of. A test binary of its own: the hub is process-wide, so its
//! counts are only exact with no other test running in the process (the tests
//! here take turns).

mod common;

use std::time::{Duration, Instant};

use common::{next_within, text, Home, Tap};
use sandvisor::engine::log::read::watch_hub::{self, HubStats};
use sandvisor::engine::log::runtime_log;
use sandvisor::engine::log::tap::TapConfig;
use sandvisor::{LogSource, LogStreamOptions};

/// The hub's counts are the process's: one test at a time.
static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits up to 5 s for the hub's counts to become `want`.
async fn stats_become(want: HubStats) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = watch_hub::stats().await.expect("the watch hub runs");
        if stats == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "hub counts {stats:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_streams_release_their_watches() {
    const SANDBOXES: usize = 20;
    let _alone = ALONE.lock().await;
    let home = Home::new();
    let opts = LogStreamOptions {
        follow: true,
        ..LogStreamOptions::default()
    };
    let mut taps = Vec::new();
    let mut streams = Vec::new();
    for k in 0..SANDBOXES {
        let name = format!("w-{k:02}");
        let tap = Tap::spawn(&home.sandbox(&name), 1 << 20, 4).await;
        tap.chunk(1, LogSource::Stdout, format!("{name}\n"));
        tap.flush().await;
        let mut stream = home.logs.log_stream(&name, &opts).await.unwrap();
        let first = next_within(&mut stream, 30).await.unwrap().unwrap();
        assert_eq!(text(&first), format!("{name}\n"));
        streams.push(stream);
        taps.push(tap);
    }
    let stats = watch_hub::stats().await.expect("the watch hub runs");
    assert_eq!(
        stats,
        HubStats {
            dirs: SANDBOXES,
            readers: SANDBOXES,
            watched: SANDBOXES,
        }
    );

    drop(streams);
    stats_become(HubStats::default()).await;
    for tap in taps {
        tap.stop().await;
    }
}

/// A tap that is the only writer of its directory: while it runs the
/// directory has a reader but no inotify watch, and the follower still gets
/// each append (the tap wakes it), a note through `runtime_log` (which wakes
/// it too) and a line another process appends (found by its poll). Once the
/// tap stops the watch is back, and another process's appends still arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sole_writers_directory_is_not_watched_while_it_writes() {
    let _alone = ALONE.lock().await;
    let home = Home::new();
    let dir = home.sandbox("solo");
    let tap = Tap::spawn_with(TapConfig {
        sole_writer: true,
        ..TapConfig::new(&dir)
    })
    .await;
    let opts = LogStreamOptions {
        sources: vec![LogSource::Stdout, LogSource::System],
        follow: true,
        ..LogStreamOptions::default()
    };
    let mut stream = home.logs.log_stream("solo", &opts).await.unwrap();
    tap.chunk(1, LogSource::Stdout, "first\n");
    let first = next_within(&mut stream, 30).await.unwrap().unwrap();
    assert_eq!(text(&first), "first\n");
    // One reader per log of the directory, and no watch.
    let readers = watch_hub::stats().await.unwrap().readers;
    assert!(readers >= 1);
    stats_become(HubStats {
        dirs: 1,
        readers,
        watched: 0,
    })
    .await;

    for i in 0..20 {
        tap.chunk(1, LogSource::Stdout, format!("line {i}\n"));
        let entry = next_within(&mut stream, 30).await.unwrap().unwrap();
        assert_eq!(text(&entry), format!("line {i}\n"));
    }
    runtime_log::append(&dir, tracing::Level::INFO, "solo", "a note");
    let note = next_within(&mut stream, 30).await.unwrap().unwrap();
    assert!(text(&note).contains("a note"), "{note:?}");
    append_foreign_line(&dir, "while claimed");
    let line = next_within(&mut stream, 30).await.unwrap().unwrap();
    assert!(text(&line).contains("while claimed"), "{line:?}");

    tap.stop().await;
    stats_become(HubStats {
        dirs: 1,
        readers,
        watched: 1,
    })
    .await;
    append_foreign_line(&dir, "after the tap");
    let line = next_within(&mut stream, 30).await.unwrap().unwrap();
    assert!(text(&line).contains("after the tap"), "{line:?}");
    drop(stream);
    stats_become(HubStats::default()).await;
}

/// Appends a `runtime.log` line as a writer outside the hub's knowledge would.
fn append_foreign_line(dir: &std::path::Path, message: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(dir.join(runtime_log::RUNTIME_LOG))
        .unwrap();
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    writeln!(file, "{now}  INFO {message}").unwrap();
}
