//! The sandvisor demo: real sandboxes (an agent as PID 1 in fresh namespaces),
//! live logs from each, rotation, a stop that escalates to SIGKILL, and a late
//! reader that resumes from a cursor.
//!
//! Run (as root, for namespaces): `cargo run --release --example demo`

use std::time::Duration;

use futures::StreamExt;
use sandvisor::{
    LogOptions, LogSource, LogStreamOptions, LogStreamStart, SandboxConfig, Sandvisor,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let home = tempfile::tempdir()?;
    let rt = Sandvisor::builder().home(home.path()).open().await?;
    println!(
        "sandvisor demo — home {}, agent {}",
        home.path().display(),
        rt.agent_path().display()
    );

    let mut noisy = SandboxConfig::shell(
        "noisy",
        "for i in $(seq 1 3000); do echo \"row $i $(printf '%060d' $i)\"; done; echo done >&2",
    );
    noisy.log.max_bytes = 64 * 1024;
    let mut stubborn = SandboxConfig::shell(
        "stubborn",
        "trap 'echo got TERM, ignoring it' TERM; (trap '' TERM; sleep 1000) & echo 'serving (pid namespace view:)'; ps -e -o pid=,comm=; while :; do sleep 0.2; done",
    );
    stubborn.stop_timeout = Duration::from_secs(1);
    let configs = vec![
        SandboxConfig::shell(
            "counter",
            "for i in $(seq 1 8); do echo \"tick $i on $(hostname)\"; sleep 0.25; done",
        ),
        noisy,
        SandboxConfig::shell(
            "failing",
            "echo starting; sleep 0.5; echo 'something broke' >&2; exit 3",
        ),
        stubborn,
    ];

    let mut printers = Vec::new();
    let mut sandboxes = Vec::new();
    for config in configs {
        let name = config.name.clone();
        let sandbox = rt.create(config).await?;
        let follow = LogStreamOptions {
            sources: LogSource::ALL.to_vec(),
            follow: true,
            ..LogStreamOptions::default()
        };
        let mut stream = sandbox.log_stream(&follow).await?;
        printers.push(tokio::spawn(async move {
            let mut seen = 0u64;
            while let Some(Ok(entry)) = stream.next().await {
                seen += 1;
                let text = String::from_utf8_lossy(&entry.data);
                // The noisy sandbox would flood the terminal: show a sample.
                if name != "noisy" || seen % 400 == 0 || entry.source != LogSource::Stdout {
                    for line in text.lines() {
                        println!("{name:>9} | {:<6} | {line}", entry.source);
                    }
                }
                if entry.source == LogSource::System && text.starts_with("--- sandbox stopped") {
                    break;
                }
            }
        }));
        sandboxes.push(sandbox);
    }

    // Everything but `stubborn` ends by itself; stop that one after a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stubborn = sandboxes.pop().ok_or("no stubborn sandbox")?;
    println!(
        "\n>>> stopping `stubborn` with a 1 s timeout: SIGTERM to every process, then SIGKILL\n"
    );
    let stopped = stubborn.stop().await?;
    println!(
        ">>> stubborn: {} with signal {:?} after escalation\n",
        stopped.status, stopped.signal
    );
    for sandbox in &sandboxes {
        sandbox.wait_until_stopped().await?;
    }
    for printer in printers {
        printer.await?;
    }

    println!(
        "\n{:<9} {:<8} {:>5} {:>6} {:<18}",
        "NAME", "STATUS", "EXIT", "SIGNAL", "REASON"
    );
    for handle in rt.list().await? {
        let run = rt.runs(handle.name()).await?.pop();
        println!(
            "{:<9} {:<8} {:>5} {:>6} {:<18}",
            handle.name(),
            handle.status_snapshot().to_string(),
            run.as_ref()
                .and_then(|r| r.exit_code)
                .map_or("-".into(), |c| c.to_string()),
            run.as_ref()
                .and_then(|r| r.exit_signal)
                .map_or("-".into(), |s| s.to_string()),
            run.and_then(|r| r.termination_reason)
                .map_or("-".into(), |r| r.to_string()),
        );
    }

    // A reader that comes late reads a snapshot, then resumes from its cursor.
    let logs = rt.logs();
    let snapshot = logs
        .read_logs_snapshot(
            "noisy",
            &LogOptions {
                tail: Some(2),
                ..LogOptions::default()
            },
        )
        .await?;
    let rotated = std::fs::read_dir(logs.log_dir_for("noisy")?)?
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("exec.log."))
        })
        .count();
    println!("\n`noisy` rotated its exec.log ({rotated} rotated files kept); its last two lines:");
    for entry in &snapshot.entries {
        println!("   {}", String::from_utf8_lossy(&entry.data).trim_end());
    }
    let resume = LogStreamOptions {
        start: LogStreamStart::From(snapshot.cursor),
        ..LogStreamOptions::default()
    };
    let after = logs.log_stream("noisy", &resume).await?.count().await;
    println!("resuming from the snapshot's cursor yields {after} more entries: nothing was written since");
    println!("cursor: {}", snapshot.cursor);
    println!();
    println!("The same from a terminal (the daemon starts on first use):");
    println!("  target/release/sandvisor run -d --name ticker -- sh -c 'while :; do date; sleep 1; done'");
    println!("  target/release/sandvisor logs -f ticker      # Ctrl-C to leave; `sandvisor ps` in another terminal");
    println!("  target/release/sandvisor stop -t 2 ticker && target/release/sandvisor rm ticker");
    Ok(())
}
