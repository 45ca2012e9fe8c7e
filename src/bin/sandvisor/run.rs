//! `run`, `exec` and `serve`: the verbs that host or attach to commands.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use futures::StreamExt;
use sandvisor::control::{daemon_socket, ControlClient};
use sandvisor::logs::{LogSource, LogStreamOptions, LogStreamStart};
use sandvisor::{
    Error, ExecConfig, HealthCheck, Isolation, LogCursor, Network, Result, Sandbox, SandboxConfig,
    SandboxStatus, Sandvisor, Seccomp,
};
use tokio::io::AsyncBufReadExt;
use tokio::signal::unix::{signal, SignalKind};

use crate::args::{ExecArgs, RunArgs, ServeArgs, NETWORK_HOST, NETWORK_PRIVATE};
use crate::out::{errln, outln, write_output};
use crate::session::{raw_terminal, stdin_chunks, terminal_size, Input};
use crate::{exit_code, open};

/// How long a freshly started daemon may take to listen.
const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a process that is about to exit waits for control requests in
/// flight to be answered.
const CONTROL_DRAIN: Duration = Duration::from_secs(5);
/// The daemon's diagnostics, relative to the home.
const DAEMON_LOG: &str = "sandvisord.log";

/// The home: `--home` / `SANDVISOR_HOME`, else `~/.sandvisor`.
pub(crate) fn resolve_home(home: Option<PathBuf>) -> Result<PathBuf> {
    match home {
        Some(home) => Ok(home),
        None => sandvisor::home::home_from_env(),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `KEY=VALUE` as given; a bare `KEY` takes this process's value.
fn env_pairs(env: &[String]) -> Result<Vec<(String, String)>> {
    env.iter()
        .map(|item| match item.split_once('=') {
            Some((key, value)) => Ok((key.to_string(), value.to_string())),
            None => std::env::var(item)
                .map(|value| (item.clone(), value))
                .map_err(|_| Error::InvalidConfig {
                    field: format!("env.{item}"),
                    reason: "not KEY=VALUE, and not set here to pass on".into(),
                }),
        })
        .collect()
}

/// A name for a sandbox run without `--name`.
fn generated_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("sb-{:08x}", nanos ^ std::process::id().rotate_left(16))
}

/// CMD as a program and its arguments.
fn split_command(command: &[String]) -> Result<(String, Vec<String>)> {
    let (program, args) = command.split_first().ok_or_else(|| Error::InvalidConfig {
        field: "command".into(),
        reason: "is missing".into(),
    })?;
    Ok((program.clone(), args.to_vec()))
}

fn config_from(args: &RunArgs) -> Result<SandboxConfig> {
    // With an image, no CMD means the image's.
    let (command, rest) =
        if (args.image.is_some() || args.from_snapshot.is_some()) && args.command.is_empty() {
            (String::new(), Vec::new())
        } else {
            split_command(&args.command)?
        };
    let mut config =
        SandboxConfig::new(args.name.clone().unwrap_or_else(generated_name), command).args(rest);
    for (key, value) in env_pairs(&args.session.env)? {
        config = config.env(key, value);
    }
    config.working_dir = args.session.workdir.clone();
    if args.privileged {
        config.isolation = Isolation::unconfined();
        // A rootfs is a root of its own: that needs the mount namespace.
        config.isolation.mount = args.rootfs.is_some();
    }
    config.network = network_from(args)?;
    if config.network == Network::Host {
        // `--net` and `--network host` alike are stored as `--net` was
        // before `network` existed, so that readers of `isolation.net`
        // alone see the host's network too.
        config.isolation.net = false;
    }
    if args.userns.is_some() {
        config.isolation.user = false;
    }
    config.rootfs = args.rootfs.clone();
    config.image = args.image.clone();
    config.from_snapshot = args.from_snapshot.clone();
    config.read_only = args.read_only;
    config.mounts = args.volume.clone();
    config.cap_add = args.cap_add.clone();
    config.cap_drop = args.cap_drop.clone();
    for option in &args.security_opt {
        apply_security_opt(&mut config, option)?;
    }
    config.user = args.session.user.clone();
    config.cpus = args.limits.cpus;
    if let Some(memory) = args.limits.memory {
        config.memory = memory;
    }
    if let Some(pids) = args.limits.pids_limit {
        config.pids = pids;
    }
    if args.vm {
        config.backend = sandvisor::Backend::MicroVm {
            vcpus: args.vcpus.unwrap_or(1),
            // The guest's memory is the sandbox's memory.
            memory: match args.limits.memory {
                Some(sandvisor::Limit::Value(bytes)) => bytes,
                _ => 0,
            },
        };
    }
    if let Some(timeout) = args.stop_timeout {
        config.stop_timeout = timeout;
    }
    if let Some(policy) = &args.restart {
        config.restart = policy.parse().map_err(|reason| Error::InvalidConfig {
            field: "restart".into(),
            reason,
        })?;
    }
    config.idle_timeout = args.idle_timeout;
    config.max_lifetime = args.max_lifetime;
    if let Some(command) = &args.health_cmd {
        let defaults = HealthCheck::default();
        config.health = Some(HealthCheck {
            command: vec!["sh".into(), "-c".into(), command.clone()],
            interval: args.health_interval.unwrap_or(defaults.interval),
            timeout: args.health_timeout.unwrap_or(defaults.timeout),
            retries: args.health_retries.unwrap_or(defaults.retries),
            start_period: args.health_start_period.unwrap_or(defaults.start_period),
        });
    }
    if let Some(action) = &args.on_unhealthy {
        config.on_unhealthy = action.parse().map_err(|reason| Error::InvalidConfig {
            field: "on_unhealthy".into(),
            reason,
        })?;
    }
    config.stdin = args.session.interactive;
    config.tty = args.session.tty;
    config.validate()?;
    Ok(config)
}

/// The network `--network`, `--net`, `-p`, `--egress` and `--dns` ask for
/// (their conflicts were refused as usage errors already).
fn network_from(args: &RunArgs) -> Result<Network> {
    match args.network_mode() {
        NETWORK_HOST => return Ok(Network::Host),
        NETWORK_PRIVATE => {}
        _ => return Ok(Network::None),
    }
    Ok(Network::Private {
        publish: parse_each("--publish", &args.publish, str::parse)?,
        egress: parse_each("--egress", &args.egress, str::parse)?,
        dns: parse_each("--dns", &args.dns, |text| {
            text.parse()
                .map_err(|_| format!("{text:?} is not an IP address"))
        })?,
    })
}

/// Each of a repeatable flag's values, parsed; the error names the flag and
/// (through `parse`'s reason) the value.
fn parse_each<T>(
    flag: &str,
    values: &[String],
    parse: impl Fn(&str) -> std::result::Result<T, String>,
) -> Result<Vec<T>> {
    values
        .iter()
        .map(|text| {
            parse(text).map_err(|reason| Error::InvalidConfig {
                field: flag.into(),
                reason,
            })
        })
        .collect()
}

/// One `--security-opt`: `seccomp=unconfined`, `seccomp=PATH`, or
/// `no-new-privileges[:true]` (always on).
fn apply_security_opt(config: &mut SandboxConfig, option: &str) -> Result<()> {
    let bad = |reason: String| Error::InvalidConfig {
        field: "--security-opt".into(),
        reason,
    };
    let (key, value) = option.split_once(['=', ':']).unwrap_or((option, ""));
    match (key, value) {
        ("seccomp", "unconfined") => config.seccomp = Seccomp::Unconfined,
        ("seccomp", "") => {
            return Err(bad(
                "seccomp needs a value: unconfined or a profile's path".into()
            ))
        }
        ("seccomp", path) => config.seccomp = Seccomp::Profile(PathBuf::from(path)),
        ("no-new-privileges", "" | "true") => {}
        _ => {
            return Err(bad(format!(
                "{option:?} is not seccomp=unconfined, seccomp=PATH or no-new-privileges"
            )))
        }
    }
    Ok(())
}

/// `sandvisor run`.
pub(crate) async fn run(home: Option<PathBuf>, args: RunArgs) -> Result<ExitCode> {
    let config = config_from(&args)?;
    if args.detach {
        if args.rm {
            return Err(Error::InvalidConfig {
                field: "--rm".into(),
                reason: "works only in the foreground (without -d)".into(),
            });
        }
        if let Some(image) = &args.image {
            crate::image::ensure(&open(home.clone()).await?.images(), image).await?;
        }
        let daemon = ensure_daemon(resolve_home(home)?).await?;
        outln!("{}", daemon.create(&config).await?)?;
        return Ok(ExitCode::SUCCESS);
    }
    // A foreground run's sandbox ends with this process, as `bwrap`'s does;
    // `serve` (and `run -d`) hosts sandboxes that outlive it.
    let mut builder = Sandvisor::builder().control_socket(true).readopt(false);
    if let Some(home) = home {
        builder = builder.home(home);
    }
    let runtime = builder.open().await?;
    if let Some(image) = &args.image {
        crate::image::ensure(&runtime.images(), image).await?;
    }
    let name = config.name.clone();
    let sandbox = runtime.create(config).await?;
    let ended = foreground(&runtime, &sandbox, &args).await;
    if ended.is_err() {
        // The sandbox ends with this process anyway: end it cleanly, so that
        // its row says Killed rather than Crashed.
        sandbox.request_kill();
        sandbox.wait_until_stopped().await?;
    }
    if args.rm {
        runtime.remove(&name).await?;
    }
    ended
}

/// Streams the sandbox's output and feeds its input until it has stopped.
async fn foreground(runtime: &Sandvisor, sandbox: &Sandbox, args: &RunArgs) -> Result<ExitCode> {
    let name = sandbox.name();
    let raw = raw_terminal(args.session.tty)?;
    if args.session.tty {
        if let Some((rows, cols)) = terminal_size() {
            sandbox.resize(rows, cols).await?;
        }
    }
    let options = |start| LogStreamOptions {
        sources: vec![LogSource::Stdout, LogSource::Stderr, LogSource::Output],
        start,
        until: None,
        follow: true,
    };
    let mut stream = runtime
        .logs()
        .log_stream(name, &options(LogStreamStart::Beginning))
        .await?;
    let mut last: Option<LogCursor> = None;
    let mut input = (args.session.interactive || args.session.tty).then(stdin_chunks);
    let mut interrupt = signal(SignalKind::interrupt()).map_err(io_err(Path::new("SIGINT")))?;
    let mut terminate = signal(SignalKind::terminate()).map_err(io_err(Path::new("SIGTERM")))?;
    let mut resized = signal(SignalKind::window_change()).map_err(io_err(Path::new("SIGWINCH")))?;
    let mut interrupts = 0;
    let mut streaming = true;
    let mut stopped = pin!(sandbox.wait_until_stopped());
    let result = loop {
        tokio::select! {
            result = &mut stopped => break result?,
            entry = stream.next(), if streaming => match entry {
                Some(Ok(entry)) => {
                    write_output(entry.source, &entry.data).map_err(io_err(Path::new("stdout")))?;
                    last = Some(entry.cursor);
                }
                Some(Err(Error::MissedRotation { resume_from, .. })) => {
                    tracing::warn!(sandbox = name, "output was rotated away before it could be shown");
                    stream = runtime.logs().log_stream(name, &options(LogStreamStart::From(*resume_from))).await?;
                }
                Some(Err(err)) => return Err(err),
                // A follow stream does not end; if it does, the final drain
                // below still shows everything.
                None => streaming = false,
            },
            chunk = async { input.as_mut()?.recv().await }, if input.is_some() => {
                let (sent, at_end) = match chunk {
                    Some(Input::Data(data)) => (sandbox.write_stdin(data).await, false),
                    Some(Input::End) => (sandbox.close_stdin().await, true),
                    // Our stdin failed: no more input, but none closed.
                    None => (Ok(()), true),
                };
                // At end of input, or when the command no longer takes any
                // (it is ending), stop reading ours; its output goes on.
                if at_end || sent.is_err() {
                    input = None;
                }
            }
            _ = resized.recv(), if args.session.tty => {
                if let Some((rows, cols)) = terminal_size() {
                    sandbox.resize(rows, cols).await?;
                }
            }
            _ = interrupt.recv() => {
                interrupts += 1;
                if interrupts == 1 {
                    errln!("sandvisor: stopping {name} (Ctrl-C again to kill it)");
                    sandbox.request_stop(None);
                } else {
                    sandbox.request_kill();
                }
            }
            _ = terminate.recv() => sandbox.request_stop(None),
        }
    };
    drop(stream);
    // Everything the run wrote is on disk once it has stopped: show the rest.
    let start = last.map_or(LogStreamStart::Beginning, LogStreamStart::From);
    let mut rest = runtime
        .logs()
        .log_stream(
            name,
            &LogStreamOptions {
                follow: false,
                ..options(start)
            },
        )
        .await?;
    while let Some(entry) = rest.next().await {
        match entry {
            Ok(entry) => {
                write_output(entry.source, &entry.data).map_err(io_err(Path::new("stdout")))?
            }
            Err(err) => return Err(err),
        }
    }
    drop(raw);
    // A `stop` from another terminal may be waiting for its answer.
    let _ = tokio::time::timeout(CONTROL_DRAIN, runtime.close_control_socket()).await;
    if result.status == SandboxStatus::Crashed {
        // The last line says so: the WARN lines before it may be many.
        let log = sandvisor::home::log_dir(runtime.home(), name)
            .map(|dir| dir.join("runtime.log").display().to_string())
            .unwrap_or_default();
        errln!("sandvisor: sandbox {name} crashed; why: {log}");
    }
    Ok(exit_code(result.exit_code, result.signal))
}

/// The exit code of an `exec` killed at its `--timeout`.
const EXIT_TIMED_OUT: u8 = 124;

/// `sandvisor exec`.
pub(crate) async fn exec(home: Option<PathBuf>, args: ExecArgs) -> Result<ExitCode> {
    let runtime = open(home).await?;
    let handle = runtime.get(&args.name).await?;
    let (command, rest) = split_command(&args.command)?;
    let mut config = ExecConfig::new(command, rest);
    let io = &args.session;
    config.env = env_pairs(&io.env)?.into_iter().collect();
    config.cwd = io.workdir.clone();
    config.user = io.user.clone();
    config.tty = io.tty;
    config.stdin = io.interactive;
    config.timeout = args.timeout;
    if let Some((rows, cols)) = terminal_size().filter(|_| args.session.tty) {
        config.rows = rows;
        config.cols = cols;
    }
    let mut session = handle.exec(config).await?;
    let raw = raw_terminal(args.session.tty)?;
    let mut input = (args.session.interactive || args.session.tty).then(stdin_chunks);
    let mut interrupt = signal(SignalKind::interrupt()).map_err(io_err(Path::new("SIGINT")))?;
    let mut resized = signal(SignalKind::window_change()).map_err(io_err(Path::new("SIGWINCH")))?;
    let mut interrupts = 0;
    loop {
        tokio::select! {
            output = session.next() => match output {
                Some(output) => write_output(output.source, &output.data).map_err(io_err(Path::new("stdout")))?,
                None => break,
            },
            chunk = async { input.as_mut()?.recv().await }, if input.is_some() => {
                let (sent, at_end) = match chunk {
                    Some(Input::Data(data)) => (session.write_stdin(data), false),
                    Some(Input::End) => (session.close_stdin(), true),
                    // Our stdin failed: no more input, but none closed.
                    None => (Ok(()), true),
                };
                // At end of input, or when the session takes no more (it is
                // ending), stop reading ours; its output and exit still come.
                if at_end || sent.is_err() {
                    input = None;
                }
            }
            _ = resized.recv(), if args.session.tty => {
                if let Some((rows, cols)) = terminal_size() {
                    // A session that has just ended has no window to size.
                    let _ = session.resize(rows, cols);
                }
            }
            _ = interrupt.recv() => {
                interrupts += 1;
                let _ = session.signal(if interrupts == 1 { libc::SIGINT } else { libc::SIGKILL });
            }
        }
    }
    drop(raw);
    match session.status() {
        // coreutils `timeout`'s code: scripts tell a deadline from a crash.
        Some(status) if status.timed_out => Ok(ExitCode::from(EXIT_TIMED_OUT)),
        Some(status) => Ok(exit_code(status.code, status.signal)),
        None => Err(Error::SandboxNotRunning(args.name)),
    }
}

/// A client of the daemon of `home`, starting `sandvisor serve` in the
/// background if none answers.
pub(crate) async fn ensure_daemon(home: PathBuf) -> Result<ControlClient> {
    let client = ControlClient::new(daemon_socket(&home));
    if client.host().await.is_ok() {
        return Ok(client);
    }
    sandvisor::home::create_home(&home)?;
    let log_path = home.join(DAEMON_LOG);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(sandvisor::home::PRIVATE_FILE_MODE)
        .open(&log_path)
        .map_err(io_err(&log_path))?;
    let exe = std::env::current_exe().map_err(io_err(Path::new("/proc/self/exe")))?;
    let mut command = tokio::process::Command::new(exe);
    command
        .arg("serve")
        .arg("--home")
        .arg(&home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; the daemon leaves this terminal's
    // session so that hanging up or Ctrl-C here does not reach it.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = command.spawn().map_err(io_err(&log_path))?;
    let mut line = String::new();
    if let Some(stdout) = child.stdout.take() {
        let mut stdout = tokio::io::BufReader::new(stdout);
        // The daemon says `ready …`, or why it failed (its log may be on
        // the very disk that is full); a lost race leaves the winner
        // listening.
        let _ = tokio::time::timeout(DAEMON_START_TIMEOUT, stdout.read_line(&mut line)).await;
    }
    if line.starts_with(DAEMON_BUSY) {
        // Another `run -d` started the daemon first: wait until it listens.
        let deadline = tokio::time::Instant::now() + DAEMON_START_TIMEOUT;
        while client.host().await.is_err() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    match client.host().await {
        Ok(_) => Ok(client),
        Err(err) => {
            // Said to have failed, it must not come up later behind the
            // caller's back, holding the home (a slow start on a full disk
            // did, in the tests).
            let _ = child.start_kill();
            Err(Error::DaemonNotStarted {
                reason: match DAEMON_FAILED
                    .iter()
                    .find_map(|prefix| line.trim_end().strip_prefix(prefix))
                {
                    Some(why) => why.to_string(),
                    None => format!("it does not answer ({err})"),
                },
                log: log_path,
            })
        }
    }
}

/// How `serve` starts the line that tells `run -d` why it could not start:
/// another daemon holds the home's socket ([`DAEMON_BUSY`]), or anything
/// else.
const DAEMON_FAILED: [&str; 2] = [DAEMON_BUSY, "failed: "];
const DAEMON_BUSY: &str = "busy: ";

/// `sandvisor serve`.
pub(crate) async fn serve(home: Option<PathBuf>, _: ServeArgs) -> Result<ExitCode> {
    let home = resolve_home(home)?;
    let socket = daemon_socket(&home);
    let opened = Sandvisor::builder()
        .home(&home)
        .control_socket_at(&socket)
        .open()
        .await;
    let runtime = match opened {
        Ok(runtime) => runtime,
        Err(err) => {
            // For `run -d`, which reads this line; stdout may be closed.
            let prefix = match err {
                Error::ControlSocketInUse { .. } => DAEMON_BUSY,
                _ => DAEMON_FAILED[1],
            };
            let _ = outln!("{prefix}{err}");
            return Err(err);
        }
    };
    let mut interrupt = signal(SignalKind::interrupt()).map_err(io_err(Path::new("SIGINT")))?;
    let mut terminate = signal(SignalKind::terminate()).map_err(io_err(Path::new("SIGTERM")))?;
    // `run -d` waits for this line.
    outln!("ready {}", socket.display())?;
    tracing::info!(socket = %socket.display(), pid = std::process::id(), "serving");
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    // No new sandboxes while shutting down: `run -d` now starts a new daemon.
    let closed = runtime.close_control_socket();
    let names = runtime.hosted().await?;
    tracing::info!(count = names.len(), "stopping every sandbox");
    let mut sandboxes = Vec::new();
    for name in &names {
        if let Some(sandbox) = runtime.connect(name).await? {
            sandbox.request_stop(None);
            sandboxes.push(sandbox);
        }
    }
    let all_stopped = futures::future::join_all(sandboxes.iter().map(Sandbox::wait_until_stopped));
    let mut all_stopped = pin!(all_stopped);
    tokio::select! {
        _ = &mut all_stopped => {}
        _ = async { tokio::select! { _ = interrupt.recv() => {}, _ = terminate.recv() => {} } } => {
            tracing::warn!("second signal: killing every sandbox");
            for sandbox in &sandboxes {
                sandbox.request_kill();
            }
            all_stopped.await;
        }
    }
    // Answer the requests still in flight (a `stop` of one of them).
    let _ = tokio::time::timeout(CONTROL_DRAIN, closed).await;
    tracing::info!("every sandbox stopped; exiting");
    Ok(ExitCode::SUCCESS)
}
