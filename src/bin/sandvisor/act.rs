//! `stop`, `kill`, `rm`, `pause`, `resume`, `start`, `update`: act on
//! sandboxes by name.
//!
//! The names are acted on concurrently (at most [`CONCURRENCY`] at once), as
//! docker does: `stop -t 1` of fifty sandboxes that ignore SIGTERM takes a
//! second, not fifty. Each name is printed once it and every name before it
//! are done (so the output keeps the order given), or one error line says
//! why not; the exit code is 1 if any failed.

use std::path::PathBuf;
use std::process::ExitCode;

use futures::StreamExt;
use sandvisor::{Error, SandboxStatus};

use crate::args::{NamesArgs, RmArgs, StopArgs, UpdateArgs};
use crate::out::{errln, outln};
use crate::run::{ensure_daemon, resolve_home};
use crate::{open, report};

/// Names acted on at once: enough for a batch to end in one grace period,
/// few enough to stay well inside the control server's connection cap.
const CONCURRENCY: usize = 64;

/// Why acting on one name failed.
enum Failure {
    /// The library's error.
    Error(Error),
    /// A refusal of the CLI's own, in docker's words.
    Refused { message: String, hint: String },
}

impl From<Error> for Failure {
    fn from(err: Error) -> Self {
        Self::Error(err)
    }
}

/// Acts on the names concurrently; prints each name, in the order given,
/// when `act` worked, one error line when not; exit code 1 if any failed.
async fn each(
    names: &[String],
    act: impl AsyncFn(&str) -> Result<(), Failure>,
) -> sandvisor::Result<ExitCode> {
    let act = &act;
    let mut results = futures::stream::iter(names)
        .map(|name| async move { (name, act(name).await) })
        .buffered(CONCURRENCY);
    let mut failed = false;
    while let Some((name, result)) = results.next().await {
        match result {
            Ok(()) => outln!("{name}")?,
            Err(Failure::Error(err)) => {
                report(&err);
                failed = true;
            }
            Err(Failure::Refused { message, hint }) => {
                errln!("sandvisor: {message} (hint: {hint})");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `sandvisor stop`.
pub(crate) async fn stop(home: Option<PathBuf>, args: StopArgs) -> sandvisor::Result<ExitCode> {
    let runtime = open(home).await?;
    each(&args.names, async |name| {
        let handle = runtime.get(name).await?;
        match args.timeout {
            Some(timeout) => handle.stop_with_timeout(timeout).await?,
            None => handle.stop().await?,
        };
        Ok(())
    })
    .await
}

/// `sandvisor kill`.
pub(crate) async fn kill(home: Option<PathBuf>, args: NamesArgs) -> sandvisor::Result<ExitCode> {
    let runtime = open(home).await?;
    each(&args.names, async |name| {
        runtime.get(name).await?.kill().await?;
        Ok(())
    })
    .await
}

/// `sandvisor rm`.
pub(crate) async fn rm(home: Option<PathBuf>, args: RmArgs) -> sandvisor::Result<ExitCode> {
    let runtime = open(home).await?;
    each(&args.names, async |name| {
        let handle = runtime.get(name).await?;
        if args.force {
            handle.kill().await?;
        }
        Ok(runtime.remove(name).await?)
    })
    .await
}

/// `sandvisor pause`: as `docker pause`, pausing a paused sandbox fails.
pub(crate) async fn pause(home: Option<PathBuf>, args: NamesArgs) -> sandvisor::Result<ExitCode> {
    let runtime = open(home).await?;
    each(&args.names, async |name| {
        let handle = runtime.get(name).await?;
        if handle.status_snapshot() == SandboxStatus::Paused {
            return Err(Failure::Refused {
                message: format!("sandbox {name} is already paused"),
                hint: format!("`sandvisor resume {name}` thaws it"),
            });
        }
        Ok(handle.pause().await?)
    })
    .await
}

/// `sandvisor resume`: as `docker unpause`, resuming a sandbox that is not
/// paused fails.
pub(crate) async fn resume(home: Option<PathBuf>, args: NamesArgs) -> sandvisor::Result<ExitCode> {
    let runtime = open(home).await?;
    each(&args.names, async |name| {
        let handle = runtime.get(name).await?;
        let status = handle.status_snapshot();
        if status != SandboxStatus::Paused {
            return Err(Failure::Refused {
                message: format!("sandbox {name} is not paused (it is {status})"),
                hint: "`sandvisor ps -a` shows every sandbox's status".into(),
            });
        }
        Ok(handle.resume().await?)
    })
    .await
}

/// `sandvisor update`: as `docker update`, the limits of running sandboxes;
/// every value is checked before any sandbox is touched.
pub(crate) async fn update(home: Option<PathBuf>, args: UpdateArgs) -> sandvisor::Result<ExitCode> {
    let resources = sandvisor::Resources {
        memory: args.limits.memory,
        cpus: args.limits.cpus,
        pids: args.limits.pids_limit,
    };
    resources.validate()?;
    let runtime = open(home).await?;
    each(&args.names, async |name| {
        Ok(runtime.get(name).await?.update(resources).await?)
    })
    .await
}

/// `sandvisor start`: the daemon hosts the new run.
pub(crate) async fn start(home: Option<PathBuf>, args: NamesArgs) -> sandvisor::Result<ExitCode> {
    let home = resolve_home(home)?;
    let runtime = open(Some(home.clone())).await?;
    let daemon = tokio::sync::OnceCell::new();
    each(&args.names, async |name| {
        let status = runtime.get(name).await?.status_snapshot();
        if !status.is_terminal() && status != SandboxStatus::Created {
            // Already running (wherever it is hosted): nothing to do.
            return Ok(());
        }
        daemon
            .get_or_try_init(|| ensure_daemon(home.clone()))
            .await?
            .start(name)
            .await?;
        Ok(())
    })
    .await
}
