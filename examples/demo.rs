//! A live demo of the log engine: real processes write through real relay
//! taps into rotating `exec.log` chains, while one follow stream per process
//! prints their output as it lands, and a late reader resumes from a cursor.
//!
//! Run: `cargo run --release --example demo`

use futures::StreamExt;
use ractor::{Actor, ActorRef};
use sandvisor::engine::relay_tap::{Chunk, RelayTap, RelayTapMsg, TapArgs, TapConfig, TapStats};
use sandvisor::{LogOptions, LogSource, LogStreamOptions, LogStreamStart, Logs};
use std::process::Stdio;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

const PROGRAMS: [(&str, &str); 3] = [
    (
        "counter",
        "for i in $(seq 1 12); do echo \"tick $i\"; sleep 0.25; done",
    ),
    (
        "noisy",
        "for i in $(seq 1 3000); do echo \"row $i $(printf '%060d' $i)\"; done; echo done >&2",
    ),
    (
        "failing",
        "echo starting; sleep 1; echo 'something broke' >&2; exit 3",
    ),
];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let home = tempfile::tempdir()?;
    let logs = Logs::at(home.path());
    println!("sandvisor demo — home {}", home.path().display());

    let mut runs = Vec::new();
    for (name, script) in PROGRAMS {
        let dir = logs.log_dir_for(name)?;
        std::fs::create_dir_all(&dir)?;
        let config = TapConfig {
            max_bytes: 64 * 1024,
            ..TapConfig::new(&dir)
        };
        let (tap, _) = Actor::spawn(
            None,
            RelayTap,
            TapArgs {
                config,
                generation: 0,
                events: None,
            },
        )
        .await?;
        let follow = LogStreamOptions {
            sources: LogSource::ALL.to_vec(),
            follow: true,
            ..LogStreamOptions::default()
        };
        let mut stream = logs.log_stream(name, &follow).await?;
        let printer = tokio::spawn(async move {
            let mut seen = 0u64;
            while let Some(Ok(entry)) = stream.next().await {
                seen += 1;
                let text = String::from_utf8_lossy(&entry.data);
                // The noisy sandbox would flood the terminal: show every 500th line.
                if name != "noisy" || seen % 500 == 0 || entry.source != LogSource::Stdout {
                    println!("{name:>8} | {:<6} | {}", entry.source, text.trim_end());
                }
                if entry.source == LogSource::System && text.starts_with("--- sandbox stopped") {
                    break;
                }
            }
        });
        runs.push((
            name,
            tap.clone(),
            printer,
            tokio::spawn(run(script.to_string(), tap)),
        ));
    }

    for (name, tap, printer, run) in runs {
        let code = run.await??;
        let stats: TapStats = ractor::call_t!(tap, RelayTapMsg::Flush, 5_000)?;
        printer.await?;
        println!(
            "{name:>8} | exited with {code}; {} records, exec.log rotated {} times",
            stats.records, stats.generation
        );
        tap.stop(None);
    }

    // A reader that comes late reads a snapshot, then resumes from its cursor.
    let snapshot = logs
        .read_logs_snapshot(
            "noisy",
            &LogOptions {
                tail: Some(2),
                ..LogOptions::default()
            },
        )
        .await?;
    println!("\nlast two retained lines of `noisy`:");
    for entry in &snapshot.entries {
        println!("   {}", String::from_utf8_lossy(&entry.data).trim_end());
    }
    let resume = LogStreamOptions {
        start: LogStreamStart::From(snapshot.cursor),
        ..LogStreamOptions::default()
    };
    let after = logs.log_stream("noisy", &resume).await?.count().await;
    println!(
        "resuming from the snapshot cursor yields {after} more entries (nothing was written since)"
    );
    println!("cursor: {}", snapshot.cursor);
    Ok(())
}

/// Runs `script` under `sh`, sending its stdout and stderr to `tap` chunk by
/// chunk, and brackets the run with system markers.
async fn run(
    script: String,
    tap: ActorRef<RelayTapMsg>,
) -> Result<i32, Box<dyn std::error::Error + Send + Sync>> {
    tap.cast(RelayTapMsg::system("--- sandbox started ---"))?;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let out = tokio::spawn(pump(stdout, LogSource::Stdout, tap.clone()));
    let err = tokio::spawn(pump(stderr, LogSource::Stderr, tap.clone()));
    let status = child.wait().await?;
    out.await?;
    err.await?;
    let code = status.code().unwrap_or(-1);
    tap.cast(RelayTapMsg::system(format!(
        "--- sandbox stopped (exit {code}) ---"
    )))?;
    Ok(code)
}

async fn pump(mut pipe: impl AsyncRead + Unpin, source: LogSource, tap: ActorRef<RelayTapMsg>) {
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0
            || tap
                .cast(RelayTapMsg::Chunk(Chunk::now(1, source, buf[..n].to_vec())))
                .is_err()
        {
            break;
        }
    }
}
