//! `sandvisor`: the command line. Docker-shaped verbs over a sandvisor home.
//!
//! Verbs that read (`ps`, `logs`, `inspect`) open the home directly and need
//! no daemon. Verbs that act on a running sandbox (`stop`, `kill`, `exec`,
//! `pause`, `resume`, `metrics`) reach the process hosting it through its
//! control socket. `run` hosts its sandbox itself (foreground) or hands it to
//! the daemon (`-d`, which starts `sandvisor serve` when none runs).
//!
//! A process that hosts sandboxes (`serve`, a foreground `run`) first raises
//! its soft open-file limit to the hard one: each sandbox holds descriptors
//! here (pipes, a pidfd, log files), and the usual soft 1,024 ran out at a
//! few hundred sandboxes. Its sandboxes inherit the raised limit, as docker's
//! containers inherit the daemon's.

mod act;
mod args;
mod cp;
mod image;
mod out;
mod printer;
mod run;
mod session;
mod show;
mod snapshot;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use sandvisor::{Error, Sandvisor};

use args::{Cli, Command};
use out::errln;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Run(args) = &cli.command {
        // A usage error, as clap reports its own (exit 2), before anything
        // is opened.
        if let Some(conflict) = args.network_conflict() {
            Cli::command()
                .error(clap::error::ErrorKind::ArgumentConflict, conflict)
                .exit();
        }
    }
    init_tracing(matches!(cli.command, Command::Serve(_)));
    let hosts = match &cli.command {
        Command::Serve(_) => true,
        Command::Run(args) => !args.detach,
        _ => false,
    };
    if hosts {
        raise_open_file_limit();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            errln!("sandvisor: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(dispatch(cli));
    // Background tasks (log watchers, control connections) must not hold the
    // exit up.
    runtime.shutdown_background();
    code
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (see the module doc);
/// a process that cannot goes on with what it has, and says so.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only fills the rlimit it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        tracing::warn!(err = %std::io::Error::last_os_error(), "cannot read the open-file limit");
        return;
    }
    if limit.rlim_cur >= limit.rlim_max {
        return;
    }
    let soft = limit.rlim_cur;
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: setrlimit only reads the rlimit it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } == 0 {
        tracing::debug!(
            from = soft,
            to = limit.rlim_max,
            "raised the open-file limit"
        );
    } else {
        tracing::warn!(
            err = %std::io::Error::last_os_error(),
            soft,
            "cannot raise the open-file limit; this process may host fewer sandboxes"
        );
    }
}

/// Logs go to stderr: `SANDVISOR_LOG` (or `RUST_LOG`) filters, default
/// `warn` (`info` for `serve`).
fn init_tracing(serve: bool) {
    let filter = std::env::var("SANDVISOR_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| if serve { "info" } else { "warn" }.to_string());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

async fn dispatch(cli: Cli) -> ExitCode {
    let home = cli.home.clone();
    let result = match cli.command {
        Command::Run(args) => run::run(home, *args).await,
        Command::Serve(args) => run::serve(home, args).await,
        Command::Start(args) => act::start(home, args).await,
        Command::Exec(args) => run::exec(home, args).await,
        Command::Ps(args) => show::ps(home, args).await,
        Command::Logs(args) => show::logs(home, args).await,
        Command::Inspect(args) => show::inspect(home, args).await,
        Command::Metrics(args) => show::metrics(home, args).await,
        Command::Stop(args) => act::stop(home, args).await,
        Command::Kill(args) => act::kill(home, args).await,
        Command::Rm(args) => act::rm(home, args).await,
        Command::Pause(args) => act::pause(home, args).await,
        Command::Resume(args) => act::resume(home, args).await,
        Command::Update(args) => act::update(home, args).await,
        Command::Image(args) => image::image(home, args).await,
        Command::Snapshot(args) => snapshot::snapshot(home, args).await,
        Command::Cp(args) => cp::cp(home, args).await,
    };
    match result {
        Ok(code) => code,
        // The reader of our output went away (`| head`): nothing to say.
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(err) => {
            report(&err);
            ExitCode::from(cannot_run(&err).unwrap_or(1))
        }
    }
}

/// The exit code of an error that says the command itself could not run,
/// as shells and docker report it: 127 not found, 126 found but not
/// executable. `None` for every other error (a working directory that
/// cannot be entered included: the command was never tried).
fn cannot_run(err: &Error) -> Option<u8> {
    match err {
        Error::CommandNotFound { .. } => Some(127),
        Error::CommandNotExecutable { .. } => Some(126),
        Error::ExecFailed {
            errno,
            exec_failed: true,
            ..
        }
        | Error::BootFailed {
            errno,
            exec_failed: true,
            ..
        } => Some(if *errno == libc::ENOENT { 127 } else { 126 }),
        _ => None,
    }
}

/// Prints one line: the error and what to try.
pub(crate) fn report(err: &Error) {
    match hint(err) {
        Some(hint) => errln!("sandvisor: {err} (hint: {hint})"),
        None => errln!("sandvisor: {err}"),
    }
}

fn hint(err: &Error) -> Option<String> {
    Some(match err {
        Error::SandboxNotFound(_) => "`sandvisor ps -a` lists every sandbox".into(),
        Error::SandboxStillRunning(name) => {
            format!("`sandvisor stop {name}` first, or `sandvisor rm -f {name}`")
        }
        Error::SandboxExists(name) => {
            format!("pick another --name, or `sandvisor rm -f {name}` first")
        }
        Error::SandboxNotRunning(name) => format!("`sandvisor ps -a` shows how {name} ended"),
        Error::SandboxNotHosted(_) => {
            "the process running it has no control socket; act on it from that process".into()
        }
        Error::MissedRotation { name, resume_from, .. } => format!(
            "older entries were rotated away; continue with `sandvisor logs {name} --cursor {resume_from}`"
        ),
        Error::UpdateRefused { .. } => {
            "on cgroup v1 a limit the sandbox was created without can only be given at `sandvisor run` (--cpus, --memory, --pids-limit)".into()
        }
        Error::InvalidCursor(_) => "cursors come from `sandvisor logs --json` of the same sandbox".into(),
        Error::Database(_) => "is the home writable, and not on a network filesystem?".into(),
        Error::CommandNotFound { .. } => {
            "is it in the sandbox's root (--rootfs, or the host's system directories) and on its PATH (-e PATH=…)?".into()
        }
        Error::CommandNotExecutable { command, .. } => {
            format!("{command} must be a file with execute permission")
        }
        _ => return None,
    })
}

/// Opens the home (no control socket: this process hosts nothing, and
/// leaves sandboxes waiting for a host that re-adopts them alone).
pub(crate) async fn open(home: Option<std::path::PathBuf>) -> sandvisor::Result<Sandvisor> {
    let mut builder = Sandvisor::builder().readopt(false);
    if let Some(home) = home {
        builder = builder.home(home);
    }
    builder.open().await
}

/// The exit code of a command that ended with `code` or by `signal`
/// (128 + signal, as shells report it).
pub(crate) fn exit_code(code: Option<i32>, signal: Option<i32>) -> ExitCode {
    let code = match (code, signal) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    };
    ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1))
}
