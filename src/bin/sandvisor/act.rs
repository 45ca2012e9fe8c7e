//! `stop`, `kill`, `rm`, `pause`, `resume`, `start`: act on sandboxes by name.
//!
//! Each name is acted on in turn; its name is printed when that worked, one
//! error line when not, and the exit code is 1 if any failed.

use std::path::PathBuf;
use std::process::ExitCode;

use sandvisor::Result;

use crate::args::{NamesArgs, RmArgs, StopArgs};
use crate::run::{ensure_daemon, resolve_home};
use crate::{open, report};

/// Acts on each name in turn: prints the name when `act` worked, one error
/// line when not; exit code 1 if any failed.
async fn each(names: &[String], act: impl AsyncFn(&str) -> Result<()>) -> ExitCode {
    let mut failed = false;
    for name in names {
        match act(name).await {
            Ok(()) => println!("{name}"),
            Err(err) => {
                report(&err);
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// `sandvisor stop`.
pub(crate) async fn stop(home: Option<PathBuf>, args: StopArgs) -> Result<ExitCode> {
    let runtime = open(home).await?;
    Ok(each(&args.names, async |name| {
        let handle = runtime.get(name).await?;
        match args.timeout {
            Some(timeout) => handle.stop_with_timeout(timeout).await?,
            None => handle.stop().await?,
        };
        Ok(())
    })
    .await)
}

/// `sandvisor kill`.
pub(crate) async fn kill(home: Option<PathBuf>, args: NamesArgs) -> Result<ExitCode> {
    let runtime = open(home).await?;
    Ok(each(&args.names, async |name| {
        runtime.get(name).await?.kill().await.map(drop)
    })
    .await)
}

/// `sandvisor rm`.
pub(crate) async fn rm(home: Option<PathBuf>, args: RmArgs) -> Result<ExitCode> {
    let runtime = open(home).await?;
    Ok(each(&args.names, async |name| {
        let handle = runtime.get(name).await?;
        if args.force {
            handle.kill().await?;
        }
        runtime.remove(name).await
    })
    .await)
}

/// `sandvisor pause`.
pub(crate) async fn pause(home: Option<PathBuf>, args: NamesArgs) -> Result<ExitCode> {
    let runtime = open(home).await?;
    Ok(each(&args.names, async |name| {
        runtime.get(name).await?.pause().await
    })
    .await)
}

/// `sandvisor resume`.
pub(crate) async fn resume(home: Option<PathBuf>, args: NamesArgs) -> Result<ExitCode> {
    let runtime = open(home).await?;
    Ok(each(&args.names, async |name| {
        runtime.get(name).await?.resume().await
    })
    .await)
}

/// `sandvisor start`: the daemon hosts the new run.
pub(crate) async fn start(home: Option<PathBuf>, args: NamesArgs) -> Result<ExitCode> {
    let home = resolve_home(home)?;
    let runtime = open(Some(home.clone())).await?;
    let daemon = tokio::sync::OnceCell::new();
    Ok(each(&args.names, async |name| {
        let status = runtime.get(name).await?.status_snapshot();
        if !status.is_terminal() && status != sandvisor::SandboxStatus::Created {
            // Already running (wherever it is hosted): nothing to do.
            return Ok(());
        }
        daemon
            .get_or_try_init(|| ensure_daemon(home.clone()))
            .await?
            .start(name)
            .await
    })
    .await)
}
