//! Embedding sandvisor in a tokio service: 100 sandboxes spawned at once,
//! their lifecycle events consumed as they happen, every exit code collected,
//! and a control socket so that `sandvisor ps`, `stop`, `exec` … work on
//! them from another terminal while the service runs.
//!
//! Run (as root, for namespaces):
//! `cargo build --release --bins && cargo run --release --example embed_service`

use std::collections::BTreeMap;
use std::time::Instant;

use futures::StreamExt;
use sandvisor::{SandboxConfig, SandboxEvent, SandboxStatus, Sandvisor};

const SANDBOXES: usize = 100;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let home = tempfile::tempdir()?;
    let rt = Sandvisor::builder()
        .home(home.path())
        .control_socket(true)
        .open()
        .await?;
    println!(
        "service up: home {}, control socket {}",
        home.path().display(),
        rt.control_socket()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    );
    println!(
        "  from another terminal: SANDVISOR_HOME={} sandvisor ps",
        home.path().display()
    );

    // The service's event consumer: counts what each sandbox went through.
    let mut events = rt.events();
    let consumer = tokio::spawn(async move {
        let mut seen: BTreeMap<&'static str, usize> = BTreeMap::new();
        let mut stopped = 0;
        while let Some(envelope) = events.next().await {
            let kind = match envelope.event {
                SandboxEvent::StatusChanged {
                    to: SandboxStatus::Running,
                    ..
                } => "running",
                SandboxEvent::StatusChanged { to, .. } if to.is_terminal() => "stopped",
                SandboxEvent::SessionExited { .. } => "session exited",
                _ => "other",
            };
            *seen.entry(kind).or_default() += 1;
            if kind == "stopped" {
                stopped += 1;
                if stopped == SANDBOXES {
                    break;
                }
            }
        }
        seen
    });

    let began = Instant::now();
    let jobs = (0..SANDBOXES).map(|i| {
        let rt = rt.clone();
        tokio::spawn(async move {
            let name = format!("job-{i:03}");
            let config = SandboxConfig::shell(
                name.clone(),
                format!("echo job {i} on $(hostname); exit $(({i} % 3))"),
            );
            let sandbox = rt.create(config).await?;
            let result = sandbox.wait_until_stopped().await?;
            Ok::<_, sandvisor::Error>((name, result.exit_code))
        })
    });
    let results = futures::future::join_all(jobs).await;
    let elapsed = began.elapsed();

    let mut by_code: BTreeMap<Option<i32>, usize> = BTreeMap::new();
    for result in results {
        let (_, code) = result??;
        *by_code.entry(code).or_default() += 1;
    }
    let seen = consumer.await?;
    println!("{SANDBOXES} sandboxes ran and were reaped in {elapsed:.2?}");
    for (code, count) in &by_code {
        println!("  exit {code:?}: {count}");
    }
    println!("events consumed: {seen:?}");

    let sample = rt.logs().read_logs("job-042", &Default::default()).await?;
    for entry in sample {
        print!("job-042 says: {}", String::from_utf8_lossy(&entry.data));
    }
    Ok(())
}
