//! Following a sandbox's logs with resume: a reader follows live, is stopped
//! half-way (as a crashed consumer would be), keeps only the cursor string,
//! and a new reader continues from it with no gap and no repeat. A reader
//! that falls behind retention gets `MissedRotation` and resumes from the
//! oldest entry still on disk.
//!
//! Run (as root, for namespaces):
//! `cargo build --release --bins && cargo run --release --example follow_resume`

use futures::StreamExt;
use sandvisor::{Error, LogCursor, LogStreamOptions, LogStreamStart, SandboxConfig, Sandvisor};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let home = tempfile::tempdir()?;
    let rt = Sandvisor::builder().home(home.path()).open().await?;
    let sandbox = rt
        .create(SandboxConfig::shell(
            "ticker",
            "for i in $(seq 1 40); do echo line-$i; sleep 0.02; done",
        ))
        .await?;

    // First reader: follows live, gives up after 15 entries, keeps the cursor.
    let live = LogStreamOptions {
        follow: true,
        ..Default::default()
    };
    let mut first = sandbox.log_stream(&live).await?;
    let mut saved = String::new();
    let mut got = Vec::new();
    while let Some(entry) = first.next().await {
        let entry = entry?;
        got.push(String::from_utf8_lossy(&entry.data).trim().to_string());
        saved = entry.cursor.to_string();
        if got.len() == 15 {
            break;
        }
    }
    drop(first);
    println!("first reader saw {} .. {}", got[0], got[got.len() - 1]);
    println!("saved cursor: {saved}");

    // The sandbox runs on; a second reader resumes from the string.
    sandbox.wait_until_stopped().await?;
    let resume = LogStreamOptions {
        start: LogStreamStart::From(saved.parse::<LogCursor>()?),
        ..Default::default()
    };
    let rest: Vec<String> = sandbox
        .log_stream(&resume)
        .await?
        .map(|e| e.map(|e| String::from_utf8_lossy(&e.data).trim().to_string()))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    println!(
        "second reader saw {} .. {} ({} entries)",
        rest[0],
        rest[rest.len() - 1],
        rest.len()
    );
    got.extend(rest);
    let expected: Vec<String> = (1..=40).map(|i| format!("line-{i}")).collect();
    assert_eq!(got, expected, "a gap or a repeat");
    println!("together: every line once, in order");

    // A reader behind retention: 8 KiB files, one kept.
    let mut config = SandboxConfig::shell("flood", "echo first; sleep 0.5; seq 1 20000");
    config.log.max_bytes = 8 * 1024;
    config.log.keep = 1;
    let flood = rt.create(config).await?;
    let mut stream = flood.log_stream(&live).await?;
    let first_cursor = stream.next().await.ok_or("no entry")??.cursor;
    drop(stream);
    flood.wait_until_stopped().await?;
    let behind = LogStreamOptions {
        start: LogStreamStart::From(first_cursor),
        ..Default::default()
    };
    let mut late = flood.log_stream(&behind).await?;
    match late.next().await {
        Some(Err(Error::MissedRotation { resume_from, .. })) => {
            let resumed = LogStreamOptions {
                start: LogStreamStart::From(*resume_from),
                ..Default::default()
            };
            let kept = flood.log_stream(&resumed).await?.count().await;
            println!("late reader: MissedRotation, resumed from the oldest retained entry ({kept} captured chunks still on disk)");
        }
        other => println!("late reader: expected MissedRotation, got {other:?}"),
    }
    Ok(())
}
