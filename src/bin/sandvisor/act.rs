//! `stop`, `kill`, `rm`, `pause`, `resume`, `start`: act on sandboxes by name.
//!
//! Each name is acted on in turn; its name is printed when that worked, one
//! error line when not, and the exit code is 1 if any failed.

use std::path::PathBuf;
use std::process::ExitCode;

use sandvisor::{Result, Sandvisor};

use crate::args::{NamesArgs, RmArgs, StopArgs};
use crate::run::{ensure_daemon, resolve_home};
use crate::{open, report};

/// Prints the name, or reports the error and remembers the failure.
fn outcome(name: &str, result: Result<()>, failed: &mut bool) {
    match result {
        Ok(()) => println!("{name}"),
        Err(err) => {
            report(&err);
            *failed = true;
        }
    }
}

fn code(failed: bool) -> ExitCode {
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// `sandvisor stop`.
pub(crate) async fn stop(home: Option<PathBuf>, args: StopArgs) -> Result<ExitCode> {
    let runtime = open(home).await?;
    let mut failed = false;
    for name in &args.names {
        let result = async {
            let handle = runtime.get(name).await?;
            match args.timeout {
                Some(timeout) => handle.stop_with_timeout(timeout).await?,
                None => handle.stop().await?,
            };
            Ok(())
        }
        .await;
        outcome(name, result, &mut failed);
    }
    Ok(code(failed))
}

/// `sandvisor kill`.
pub(crate) async fn kill(home: Option<PathBuf>, args: NamesArgs) -> Result<ExitCode> {
    let runtime = open(home).await?;
    let mut failed = false;
    for name in &args.names {
        let result = async {
            runtime.get(name).await?.kill().await?;
            Ok(())
        }
        .await;
        outcome(name, result, &mut failed);
    }
    Ok(code(failed))
}

/// `sandvisor rm`.
pub(crate) async fn rm(home: Option<PathBuf>, args: RmArgs) -> Result<ExitCode> {
    let runtime = open(home).await?;
    let mut failed = false;
    for name in &args.names {
        let result = remove(&runtime, name, args.force).await;
        outcome(name, result, &mut failed);
    }
    Ok(code(failed))
}

async fn remove(runtime: &Sandvisor, name: &str, force: bool) -> Result<()> {
    let handle = runtime.get(name).await?;
    if force {
        handle.kill().await?;
    }
    runtime.remove(name).await
}

/// `sandvisor pause`.
pub(crate) async fn pause(home: Option<PathBuf>, args: NamesArgs) -> Result<ExitCode> {
    let runtime = open(home).await?;
    let mut failed = false;
    for name in &args.names {
        let result = async { runtime.get(name).await?.pause().await }.await;
        outcome(name, result, &mut failed);
    }
    Ok(code(failed))
}

/// `sandvisor resume`.
pub(crate) async fn resume(home: Option<PathBuf>, args: NamesArgs) -> Result<ExitCode> {
    let runtime = open(home).await?;
    let mut failed = false;
    for name in &args.names {
        let result = async { runtime.get(name).await?.resume().await }.await;
        outcome(name, result, &mut failed);
    }
    Ok(code(failed))
}

/// `sandvisor start`: the daemon hosts the new run.
pub(crate) async fn start(home: Option<PathBuf>, args: NamesArgs) -> Result<ExitCode> {
    let home = resolve_home(home)?;
    let runtime = open(Some(home.clone())).await?;
    let mut failed = false;
    let mut daemon = None;
    for name in &args.names {
        let result = async {
            runtime.get(name).await?;
            let daemon = match &daemon {
                Some(daemon) => daemon,
                None => daemon.insert(ensure_daemon(home.clone()).await?),
            };
            daemon.start(name).await
        }
        .await;
        outcome(name, result, &mut failed);
    }
    Ok(code(failed))
}
