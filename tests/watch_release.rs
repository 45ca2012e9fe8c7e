//! The watch hub releases every directory and reader when the streams are
//! dropped. A test binary of its own: the hub is process-wide, so its counts
//! are only exact with no other test running in the process.

mod common;

use std::time::{Duration, Instant};

use common::{next_within, text, Home, Tap};
use sandvisor::engine::log::read::watch_hub::{self, HubStats};
use sandvisor::{LogSource, LogStreamOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_streams_release_their_watches() {
    const SANDBOXES: usize = 20;
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
            readers: SANDBOXES
        }
    );

    drop(streams);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = watch_hub::stats().await.expect("the watch hub runs");
        if stats == HubStats::default() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "watches still held 5 s after every stream was dropped: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for tap in taps {
        tap.stop().await;
    }
}
