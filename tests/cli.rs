//! The `sandvisor` binary against a temp home: real processes, real sockets,
//! real signals. Each test has its own home (and so its own daemon). What
//! the SPEC promises whatever the backend runs on both backends
//! (`on_both!`, `run --vm` for the microVM).

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sandvisor::Backend;
use serde_json::Value;

mod common;
use common::backends;
#[path = "common/cli.rs"]
mod cli_home;
use cli_home::{Cli, BIN};
/// Set when this test binary is re-run as another user to try the socket.
const PROBE_SOCKET_ENV: &str = "SANDVISOR_TEST_PROBE_SOCKET";

impl Cli {
    fn ps(&self) -> Vec<Value> {
        let text = self.ok(&["ps", "-a", "--json"]);
        serde_json::from_str::<Value>(&text)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    fn sandbox(&self, name: &str) -> Value {
        self.ps()
            .into_iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("{name} is not listed"))
    }

    /// Polls `ps` until `name` has `status` (processes start asynchronously),
    /// while `host` (the process that runs it) lives; on failure says what
    /// was seen, the host's exit and stderr, and the sandbox's runtime.log.
    fn wait_for_status(&self, name: &str, status: &str, host: &mut Child) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = None;
        loop {
            if let Some(found) = self.ps().into_iter().find(|s| s["name"] == name) {
                if found["status"] == status {
                    return found;
                }
                seen = Some(found);
            }
            let exited = host.try_wait().unwrap();
            if exited.is_some() || Instant::now() > deadline {
                if exited.is_none() {
                    let _ = host.kill();
                }
                let mut stderr = String::new();
                if let Some(mut pipe) = host.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
                }
                let log = self
                    .home()
                    .join("sandboxes")
                    .join(name)
                    .join("logs/runtime.log");
                panic!(
                    "{name} never became {status}; last seen {seen:?}; host exited {exited:?}; \
                     host stderr: {stderr}; runtime.log: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn daemon_socket(&self) -> PathBuf {
        self.home().join("sandvisord.sock")
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A CLI home ready for `backend`'s sandboxes.
fn cli_for(backend: Backend) -> Cli {
    let cli = Cli::new();
    backends::prepare_home(backend, cli.home());
    cli
}

/// `run` on `backend` with `args`.
fn run_on<'a>(backend: Backend, args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["run"];
    all.extend_from_slice(backends::vm_flag(backend));
    all.extend_from_slice(args);
    all
}

on_both!(blocking run_returns_the_commands_exit_code_and_streams_its_output);
fn run_returns_the_commands_exit_code_and_streams_its_output(backend: Backend) {
    let cli = cli_for(backend);
    let out = cli.run(&run_on(
        backend,
        &[
            "--name",
            "fg",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
    ));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(stderr(&out).contains("err\n"));
    let fg = cli.sandbox("fg");
    assert_eq!(fg["status"], "Stopped");
    assert_eq!(fg["exit_code"], 3);
    // -i: stdin goes to the command, and its end closes the command's stdin.
    let mut cat = cli
        .command(&run_on(backend, &["-i", "--", "sh", "-c", "cat; echo end"]))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut cat.stdin.take().unwrap(), b"piped in\n").unwrap();
    let out = cat.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "piped in\nend\n");
    // Killed by a signal: 128 + signal, as shells report it.
    let out = cli.run(&run_on(backend, &["--", "sh", "-c", "kill -9 $$"]));
    assert_eq!(out.status.code(), Some(137));
}

on_both!(blocking run_detached_is_running_and_stop_escalates_to_sigkill);
fn run_detached_is_running_and_stop_escalates_to_sigkill(backend: Backend) {
    let cli = cli_for(backend);
    let name = cli.ok(&run_on(
        backend,
        &[
            "-d",
            "--name",
            "stubborn",
            "--",
            "sh",
            "-c",
            "trap '' TERM; echo armed; while :; do sleep 0.1; done",
        ],
    ));
    assert_eq!(name.trim(), "stubborn");
    // Stop only once the trap is set (a guest's shell starts slowly).
    let mut follower = cli
        .command(&["logs", "-f", "stubborn"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut armed = String::new();
    BufReader::new(follower.stdout.take().unwrap())
        .read_line(&mut armed)
        .unwrap();
    assert_eq!(armed, "armed\n");
    let running = cli.ps();
    let listed: Vec<&Value> = running.iter().filter(|s| s["name"] == "stubborn").collect();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["status"], "Running");
    assert!(listed[0]["pid"].as_u64().is_some());
    // Plain `ps` lists it too.
    assert!(cli.ok(&["ps"]).contains("stubborn"));

    assert_eq!(cli.ok(&["stop", "-t", "1", "stubborn"]).trim(), "stubborn");
    follower.wait().unwrap();
    let stopped = cli.sandbox("stubborn");
    assert_eq!(stopped["status"], "Stopped");
    assert_eq!(stopped["exit_signal"], 9);
    assert_eq!(stopped["termination_reason"], "Killed");
    let table = cli.ok(&["ps", "-a"]);
    let row = table.lines().find(|l| l.starts_with("stubborn")).unwrap();
    assert!(row.contains("Stopped") && row.contains("signal 9"), "{row}");
    // Not running: plain `ps` leaves it out; stopping again is fine.
    assert!(!cli.ok(&["ps"]).contains("stubborn"));
    cli.ok(&["stop", "stubborn"]);
}

on_both!(blocking logs_follow_in_another_process_sees_new_lines_within_a_second);
fn logs_follow_in_another_process_sees_new_lines_within_a_second(backend: Backend) {
    let cli = cli_for(backend);
    cli.ok(&run_on(
        backend,
        &["-d", "--name", "talker", "--", "sleep", "1000"],
    ));
    let mut follower = cli
        .command(&["logs", "-f", "talker"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = mpsc::channel();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines_tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    for i in 0..5 {
        let marker = format!("marker-{i}");
        cli.ok(&["exec", "talker", "--", "echo", &marker]);
        // The line is on disk when exec returns; the follower must show it
        // within a second.
        let seen = lines.recv_timeout(Duration::from_secs(1));
        assert_eq!(seen.as_deref(), Ok(marker.as_str()));
    }
    // The follower ends by itself once the sandbox stops.
    cli.ok(&["stop", "talker"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = follower.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "logs -f did not end");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
}

on_both!(blocking rm_of_a_running_sandbox_fails_clearly_and_rm_force_removes_it);
fn rm_of_a_running_sandbox_fails_clearly_and_rm_force_removes_it(backend: Backend) {
    let cli = cli_for(backend);
    cli.ok(&run_on(
        backend,
        &["-d", "--name", "busy", "--", "sleep", "1000"],
    ));
    let out = cli.run(&["rm", "busy"]);
    assert_eq!(out.status.code(), Some(1));
    let message = stderr(&out);
    assert!(
        message.contains("sandbox busy is still running") && message.contains("rm -f busy"),
        "{message}"
    );
    assert_eq!(message.lines().count(), 1, "{message}");
    assert_eq!(cli.sandbox("busy")["status"], "Running");
    assert_eq!(cli.ok(&["rm", "-f", "busy"]).trim(), "busy");
    assert!(cli.ps().is_empty());
    assert!(!cli.home().join("sandboxes/busy").exists());
}

on_both!(blocking exec_returns_the_inner_exit_code_and_passes_stdin);
fn exec_returns_the_inner_exit_code_and_passes_stdin(backend: Backend) {
    let cli = cli_for(backend);
    cli.ok(&run_on(
        backend,
        &["-d", "--name", "box", "--", "sleep", "1000"],
    ));
    let out = cli.run(&["exec", "box", "--", "sh", "-c", "echo inside; exit 42"]);
    assert_eq!(out.status.code(), Some(42), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "inside\n");
    let mut child = cli
        .command(&["exec", "-i", "box", "--", "wc", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &[b'x'; 100_000]).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "100000");
    // Much input and much output at once, both ways over the control socket:
    // neither side may wait on the other forever.
    let mut child = cli
        .command(&["exec", "-i", "box", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let payload: Vec<u8> = (0..8 << 20).map(|i| (i % 251) as u8).collect();
    let expected = payload.clone();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &payload));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success());
    assert!(
        out.stdout == expected,
        "cat returned {} bytes",
        out.stdout.len()
    );
    // A missing command: 127, as shells and docker say, with the error.
    let out = cli.run(&["exec", "box", "--", "no-such-command"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(
        stderr(&out).contains("command not found"),
        "{}",
        stderr(&out)
    );
    cli.ok(&["kill", "box"]);
    let out = cli.run(&["exec", "box", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("sandbox box is not running"));
}

on_both!(blocking logs_take_relative_and_absolute_times_sources_and_tail);
fn logs_take_relative_and_absolute_times_sources_and_tail(backend: Backend) {
    let cli = cli_for(backend);
    cli.ok(&run_on(
        backend,
        &[
            "--name",
            "chatty",
            "--",
            "sh",
            "-c",
            // Apart in time, so that each line is a chunk (an entry) of its own.
            "for i in 1 2 3 4 5; do echo out-$i; sleep 0.02; done; echo bad >&2",
        ],
    ));
    let all = cli.ok(&["logs", "--since", "5m", "chatty"]);
    assert_eq!(all, "out-1\nout-2\nout-3\nout-4\nout-5\n");
    // `logs` writes stderr entries to stderr, as they were.
    let out = cli.run(&["logs", "--source", "stderr", "chatty"]);
    assert_eq!(String::from_utf8_lossy(&out.stderr), "bad\n");
    assert!(cli.ok(&["logs", "--until", "5m", "chatty"]).is_empty());
    assert!(cli
        .ok(&["logs", "--since", "2999-01-01T00:00:00Z", "chatty"])
        .is_empty());
    // The last two entries of stdout and stderr: `out-5` and `bad`.
    assert_eq!(cli.ok(&["logs", "-n", "2", "chatty"]), "out-5\n");
    assert_eq!(
        cli.ok(&["logs", "-n", "2", "--source", "stdout", "chatty"]),
        "out-4\nout-5\n"
    );
    let system = cli.ok(&["logs", "--source", "system", "chatty"]);
    assert!(
        system.contains("--- sandbox stopped (exit 0) ---"),
        "{system}"
    );
    let stamped = cli.ok(&[
        "logs",
        "--timestamps",
        "-n",
        "1",
        "--source",
        "stdout",
        "chatty",
    ]);
    let (stamp, rest) = stamped.split_once(' ').unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(stamp).is_ok(),
        "{stamped}"
    );
    assert_eq!(rest, "out-5\n");
    // JSON lines carry cursors that resume exactly after their entry.
    let json = cli.ok(&["logs", "--json", "--source", "stdout", "chatty"]);
    let entries: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(entries.len(), 5);
    assert_eq!(entries[0]["d"], "out-1\n");
    assert_eq!(entries[0]["s"], "stdout");
    assert_eq!(entries[0]["id"], 1);
    let cursor = entries[2]["cursor"].as_str().unwrap();
    assert_eq!(
        cli.ok(&["logs", "--cursor", cursor, "chatty"]),
        "out-4\nout-5\n"
    );
    for bad in [
        vec!["logs", "--since", "yesterday", "chatty"],
        vec!["logs", "--source", "nope", "chatty"],
        vec!["logs", "--cursor", "garbage", "chatty"],
    ] {
        let out = cli.run(&bad);
        assert!(!out.status.success(), "{bad:?}");
        assert_eq!(stderr(&out).trim().lines().count().min(1), 1);
    }
}

#[test]
fn unknown_names_exit_1_with_no_such_sandbox() {
    let cli = Cli::new();
    for args in [
        vec!["logs", "ghost"],
        vec!["stop", "ghost"],
        vec!["kill", "ghost"],
        vec!["rm", "ghost"],
        vec!["inspect", "ghost"],
        vec!["pause", "ghost"],
        vec!["resume", "ghost"],
        vec!["metrics", "ghost"],
        vec!["exec", "ghost", "--", "true"],
        vec!["logs", "-f", "ghost"],
    ] {
        let out = cli.run(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let message = stderr(&out);
        assert!(
            message.contains("no such sandbox: ghost"),
            "{args:?}: {message}"
        );
        assert_eq!(message.lines().count(), 1, "{args:?}: {message}");
    }
    let out = cli.run(&["stop", "bad/name"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("invalid sandbox name"));
    // Usage errors are clap's: exit 2.
    assert_eq!(cli.run(&["run"]).status.code(), Some(2));
    assert_eq!(cli.run(&["frobnicate"]).status.code(), Some(2));
}

on_both!(blocking a_second_terminals_stop_reaches_a_foreground_run);
fn a_second_terminals_stop_reaches_a_foreground_run(backend: Backend) {
    let cli = cli_for(backend);
    let mut foreground: Child = cli
        .command(&run_on(backend, &["--name", "fg", "--", "sleep", "1000"]))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let running = cli.wait_for_status("fg", "Running", &mut foreground);
    // The foreground run hosts it: no daemon was started.
    assert!(!cli.daemon_socket().exists());
    let inspected: Value = serde_json::from_str(&cli.ok(&["inspect", "fg"])).unwrap();
    let socket = inspected[0]["paths"]["control_socket"].as_str().unwrap();
    assert!(Path::new(socket).starts_with(cli.home().join("run")));
    assert_eq!(running["pid"], inspected[0]["runs"][0]["pid"]);

    assert_eq!(cli.ok(&["stop", "fg"]).trim(), "fg");
    let status = foreground.wait().unwrap();
    // sleep dies of SIGTERM: 128 + 15.
    assert_eq!(status.code(), Some(143));
    let fg = cli.sandbox("fg");
    assert_eq!(fg["status"], "Stopped");
    assert_eq!(fg["exit_signal"], 15);
    assert_eq!(fg["termination_reason"], "ShutdownRequested");
    // The foreground process removed its socket on the way out.
    assert!(!Path::new(socket).exists());
}

// Namespaces only: a VM's pause freezes all of qemu, and its metrics are
// qemu's and the guest RAM it touched.
#[test]
fn pause_resume_and_metrics_reach_the_daemon() {
    let cli = Cli::new();
    cli.ok(&["run", "-d", "--name", "p", "--", "sleep", "1000"]);
    cli.ok(&["pause", "p"]);
    assert_eq!(cli.sandbox("p")["status"], "Paused");
    cli.ok(&["resume", "p"]);
    assert_eq!(cli.sandbox("p")["status"], "Running");
    let metrics: Value = serde_json::from_str(&cli.ok(&["metrics", "--json", "p"])).unwrap();
    assert_eq!(metrics[0]["name"], "p");
    assert!(metrics[0]["memory_bytes"].as_u64().unwrap() > 0);
    assert!(metrics[0]["processes"].as_u64().unwrap() >= 2);
    let table = cli.ok(&["metrics"]);
    assert!(
        table.starts_with("NAME") && table.contains("\np "),
        "{table}"
    );
}

on_both!(blocking serve_stops_every_sandbox_gracefully_on_sigterm);
fn serve_stops_every_sandbox_gracefully_on_sigterm(backend: Backend) {
    let cli = cli_for(backend);
    let mut daemon = cli
        .command(&["serve"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(daemon.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert!(ready.starts_with("ready "), "{ready}");
    // `run -d` uses the daemon that is already there.
    cli.ok(&run_on(
        backend,
        &["-d", "--name", "one", "--", "sleep", "1000"],
    ));
    cli.ok(&run_on(
        backend,
        &["-d", "--name", "two", "--", "sleep", "1000"],
    ));
    let socket_mode = std::fs::metadata(cli.daemon_socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(socket_mode & 0o777, 0o600);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(daemon.wait().unwrap().success());
    for name in ["one", "two"] {
        let sandbox = cli.sandbox(name);
        assert_eq!(sandbox["status"], "Stopped", "{name}");
        assert_eq!(sandbox["exit_signal"], 15, "{name}");
        assert_eq!(sandbox["termination_reason"], "ShutdownRequested", "{name}");
    }
    assert!(!cli.daemon_socket().exists());
}

/// Re-run as `nobody` by [`another_user_cannot_use_the_control_socket`]:
/// tries the socket and prints what happened.
#[test]
fn probe_control_socket_as_this_user() {
    let Some(socket) = std::env::var_os(PROBE_SOCKET_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = sandvisor::control::ControlClient::new(PathBuf::from(socket));
    match runtime.block_on(client.host()) {
        Ok(host) => println!("PROBE connected to pid {}", host.pid),
        Err(err) => println!("PROBE refused: {err}"),
    }
}

fn probe_as_nobody(socket: &Path) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "probe_control_socket_as_this_user",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(PROBE_SOCKET_ENV, socket)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.find("PROBE").map(|at| l[at..].to_string()))
        .unwrap_or_else(|| panic!("the probe printed nothing: {text} {}", stderr(&out)))
}

// Namespaces only: the control socket is the host's, whatever runs behind it.
#[test]
fn another_user_cannot_use_the_control_socket() {
    let cli = Cli::new();
    cli.ok(&["run", "-d", "--name", "mine", "--", "sleep", "1000"]);
    let socket = cli.daemon_socket();
    // Let `nobody` reach the socket's directory, so that only the socket's
    // own protection is tested.
    std::fs::set_permissions(cli.home(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let refused = probe_as_nobody(&socket);
    assert!(
        refused.starts_with("PROBE refused") && refused.contains("Permission denied"),
        "{refused}"
    );
    // Even with the file opened up, the server checks who is calling.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let refused = probe_as_nobody(&socket);
    assert!(refused.starts_with("PROBE refused"), "{refused}");
    // The owner still gets through, and the sandbox is untouched.
    assert_eq!(cli.sandbox("mine")["status"], "Running");
    cli.ok(&["stop", "mine"]);
}

on_both!(blocking logs_follow_past_retention_prints_a_resume_hint_and_fails);
fn logs_follow_past_retention_prints_a_resume_hint_and_fails(backend: Backend) {
    let cli = cli_for(backend);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let cursor = runtime.block_on(async {
        let sandvisor = sandvisor::Sandvisor::builder()
            .home(cli.home())
            .agent_path(env!("CARGO_BIN_EXE_sandvisor-agent"))
            .open()
            .await
            .unwrap();
        let mut config =
            sandvisor::SandboxConfig::shell("rolling", "echo first; sleep 1; seq 1 3000")
                .with_backend(backend);
        config.log.max_bytes = 4096;
        config.log.keep = 1;
        let sandbox = sandvisor.create(config).await.unwrap();
        let options = sandvisor::LogStreamOptions {
            follow: true,
            ..Default::default()
        };
        let mut stream = sandbox.log_stream(&options).await.unwrap();
        let first = futures::StreamExt::next(&mut stream)
            .await
            .unwrap()
            .unwrap();
        drop(stream);
        let cursor = first.cursor.to_string();
        sandbox.wait_until_stopped().await.unwrap();
        cursor
    });
    let out = cli.run(&["logs", "-f", "--cursor", &cursor, "rolling"]);
    assert_eq!(out.status.code(), Some(1));
    let message = stderr(&out);
    assert!(
        message.contains("missed rotation") && message.contains("sandvisor logs rolling --cursor "),
        "{message}"
    );
    // The hinted cursor works.
    let hinted = message
        .split("--cursor ")
        .nth(1)
        .unwrap()
        .split(|c: char| c == '`' || c.is_whitespace())
        .next()
        .unwrap();
    let rest = cli.ok(&["logs", "--cursor", hinted, "rolling"]);
    assert!(rest.ends_with("3000\n"), "{rest}");
}

#[test]
fn every_verb_has_complete_help_with_an_example() {
    let cli = Cli::new();
    let top = cli.ok(&["--help"]);
    let verbs = [
        "run", "exec", "ps", "logs", "stop", "kill", "rm", "inspect", "pause", "resume", "start",
        "metrics", "serve", "update", "image",
    ];
    for verb in verbs {
        assert!(
            top.contains(&format!("  {verb} ")),
            "{verb} missing from --help"
        );
        let help = cli.ok(&[verb, "--help"]);
        assert!(help.contains("Example"), "{verb} --help has no example");
        assert!(help.contains(&format!("sandvisor {verb}")), "{verb} --help");
        assert!(help.contains("Usage: sandvisor"), "{verb}");
    }
    let run = cli.ok(&["run", "--help"]);
    for flag in [
        "--name",
        "--detach",
        "--tty",
        "--interactive",
        "--env",
        "--workdir",
        "--net",
        "--rootfs",
        "--memory",
        "--stop-timeout",
    ] {
        assert!(run.contains(flag), "run --help lacks {flag}");
    }
    let logs = cli.ok(&["logs", "--help"]);
    for flag in [
        "--follow",
        "--since",
        "--until",
        "--tail",
        "--source",
        "--timestamps",
        "--json",
        "--cursor",
    ] {
        assert!(logs.contains(flag), "logs --help lacks {flag}");
    }
}

on_both!(blocking tmux_drives_an_interactive_shell_and_the_terminal_is_restored);
fn tmux_drives_an_interactive_shell_and_the_terminal_is_restored(backend: Backend) {
    assert!(
        Command::new("tmux").arg("-V").output().is_ok(),
        "tmux is needed for this test (.ci/run installs it)"
    );
    let cli = cli_for(backend);
    let socket = cli.home().join("tmux.sock");
    let tmux = |args: &[&str]| {
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&socket)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "tmux {args:?}: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The tmux server goes with the test, even a failed one.
    struct KillServer<'a>(&'a Path);
    impl Drop for KillServer<'_> {
        fn drop(&mut self) {
            let _ = Command::new("tmux")
                .arg("-S")
                .arg(self.0)
                .arg("kill-server")
                .output();
        }
    }
    let _server = KillServer(&socket);
    let before = cli.home().join("stty.before");
    let after = cli.home().join("stty.after");
    let done = cli.home().join("done");
    let script = format!(
        "stty -g > {before}; SANDVISOR_HOME={home} {BIN} run -it {vm} --name tty -- sh; stty -g > {after}; touch {done}; exec sleep 600",
        vm = backends::vm_flag(backend).join(" "),
        before = before.display(),
        home = cli.home().display(),
        after = after.display(),
        done = done.display(),
    );
    tmux(&[
        "new-session",
        "-d",
        "-x",
        "120",
        "-y",
        "40",
        "sh",
        "-c",
        &script,
    ]);
    let pane = || tmux(&["capture-pane", "-p"]);
    let wait_for = |what: &dyn Fn() -> bool, why: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !what() {
            assert!(
                Instant::now() < deadline,
                "{why}; the pane shows:\n{}\nsandboxes: {:?}",
                pane(),
                cli.ps()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // The shell's prompt: it runs and reads its terminal.
    wait_for(
        &|| {
            pane()
                .lines()
                .any(|l| l.trim_end() == "#" || l.trim_end() == "$")
        },
        "the sandboxed shell never prompted",
    );
    assert_eq!(cli.sandbox("tty")["status"], "Running");
    tmux(&["send-keys", "echo h''i", "Enter"]);
    wait_for(
        &|| pane().lines().any(|l| l.trim() == "hi"),
        "`hi` never showed in the pane",
    );
    tmux(&["send-keys", "exit", "Enter"]);
    wait_for(&|| done.exists(), "the shell did not end");
    let before = std::fs::read_to_string(&before).unwrap();
    let after = std::fs::read_to_string(&after).unwrap();
    assert_eq!(before, after, "terminal settings were not restored");
    assert_eq!(cli.sandbox("tty")["exit_code"], 0);
}

/// Issue 17: a bad `-p`, `--egress` or `--dns` is a config error (exit 1)
/// naming the flag or field and the value, and nothing is created — in the
/// foreground or with `-d`.
#[test]
fn malformed_network_flags_exit_1_naming_the_value_and_create_nothing() {
    let cli = Cli::new();
    // What parses but cannot be built is named by its config field, in its
    // full form.
    for (flag, value, names, quoted) in [
        ("-p", "8080", "--publish", "8080"),
        ("-p", "0:80", "--publish", "0:80"),
        ("-p", "8080:80/sctp", "--publish", "8080:80/sctp"),
        ("-p", "::1:8080:80", "--publish", "::1:8080:80"),
        (
            "-p",
            "[::1]:8080:80",
            "network.publish[0]",
            "[::1]:8080:80/tcp",
        ),
        (
            "--egress",
            "permit:10.0.0.0/8",
            "--egress",
            "permit:10.0.0.0/8",
        ),
        (
            "--egress",
            "allow:10.0.0.1/8",
            "--egress",
            "allow:10.0.0.1/8",
        ),
        (
            "--egress",
            "allow:10.0.0.0/8:90-80/tcp",
            "--egress",
            "allow:10.0.0.0/8:90-80/tcp",
        ),
        (
            "--egress",
            "allow:[2001:db8::/32]",
            "network.egress[0]",
            "allow:[2001:db8::/32]",
        ),
        ("--dns", "resolver", "--dns", "resolver"),
        ("--dns", "224.0.0.1", "network.dns[0]", "224.0.0.1"),
        (
            "--dns",
            "2606:4700::1111",
            "network.dns[0]",
            "2606:4700::1111",
        ),
    ] {
        for detach in [false, true] {
            let mut args = vec!["run", "--name", "bad", flag, value];
            if detach {
                args.push("-d");
            }
            args.extend(["--", "true"]);
            let out = cli.run(&args);
            let message = stderr(&out);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {message}");
            assert!(
                message.contains("invalid config")
                    && message.contains(names)
                    && message.contains(&format!("{quoted:?}")),
                "{args:?}: {message}"
            );
            assert_eq!(message.lines().count(), 1, "{args:?}: {message}");
        }
    }
    // Two publishes of one host port: refused naming both.
    let out = cli.run(&["run", "-p", "8080:80", "-p", "8080:81", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("network.publish[1]") && stderr(&out).contains("network.publish[0]"),
        "{}",
        stderr(&out)
    );
    assert!(cli.ps().is_empty());
    assert!(!cli.home().join("sandboxes/bad").exists());
    assert!(
        !cli.home().join("sandvisord.sock").exists(),
        "no daemon was started"
    );
}

/// A private network's flags with `--network none|host` (or `--net`), and
/// `--net` with another `--network`, are usage errors: exit 2, nothing
/// created.
#[test]
fn contradicting_network_flags_are_usage_errors() {
    let cli = Cli::new();
    for args in [
        &["--network", "host", "-p", "8080:80"][..],
        &["--network", "none", "--egress", "deny:0.0.0.0/0"],
        &["--net", "--dns", "1.1.1.1"],
        &["--net", "--network", "private"],
        &["--network", "bridge"],
    ] {
        let mut full = vec!["run", "--name", "bad"];
        full.extend(args);
        full.extend(["--", "true"]);
        let out = cli.run(&full);
        let message = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{full:?}: {message}");
        assert!(message.contains("--net"), "{full:?}: {message}");
    }
    assert!(cli.ps().is_empty());
}

/// `ps` marks the host's network (`--net` and `--network host` alike) and
/// `inspect` shows the mode.
// Namespaces only: a VM has no network yet (`--network host` is refused).
#[test]
fn ps_and_inspect_show_host_networking() {
    let cli = Cli::new();
    cli.ok(&["run", "--name", "alias", "--net", "--", "true"]);
    cli.ok(&["run", "--name", "host", "--network", "host", "--", "true"]);
    cli.ok(&["run", "--name", "none", "--", "true"]);
    let table = cli.ok(&["ps", "-a"]);
    assert!(table.lines().next().unwrap().contains("PORTS"), "{table}");
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap()
            .to_string()
    };
    assert!(row("alias").ends_with("host-net"), "{table}");
    assert!(row("host").ends_with("host-net"), "{table}");
    assert!(row("none").ends_with("confined"), "{table}");
    for (name, mode) in [("alias", "host"), ("host", "host"), ("none", "none")] {
        assert_eq!(cli.sandbox(name)["network"], mode);
        let inspected: Value = serde_json::from_str(&cli.ok(&["inspect", name])).unwrap();
        let network = &inspected[0]["network"];
        assert_eq!(network["mode"], mode, "{name}");
        assert_eq!(network["publish"], serde_json::json!([]), "{name}");
    }
}

/// `ps` shows published ports docker's way; `inspect` shows the whole
/// private network, each value in its full CLI form.
// Namespaces only: a VM has no network yet (a private one is refused).
#[test]
fn ps_and_inspect_show_a_private_network() {
    let cli = Cli::new();
    cli.ok(&[
        "run",
        "--name",
        "web",
        "-p",
        "18080:80",
        "-p",
        "0.0.0.0:15353:53/udp",
        "--egress",
        "allow:127.0.0.1:5432/tcp",
        "--egress",
        "deny:0.0.0.0/0:25",
        "--dns",
        "192.0.2.53",
        "--",
        "true",
    ]);
    let table = cli.ok(&["ps", "-a"]);
    let row = table.lines().find(|l| l.starts_with("web ")).unwrap();
    assert!(
        row.contains("127.0.0.1:18080->80/tcp, 0.0.0.0:15353->53/udp") && row.ends_with("confined"),
        "{table}"
    );
    let listed = cli.sandbox("web");
    assert_eq!(listed["network"], "private");
    assert_eq!(
        listed["ports"],
        serde_json::json!(["127.0.0.1:18080->80/tcp", "0.0.0.0:15353->53/udp"])
    );
    let inspected: Value = serde_json::from_str(&cli.ok(&["inspect", "web"])).unwrap();
    assert_eq!(
        inspected[0]["network"],
        serde_json::json!({
            "mode": "private",
            "publish": ["127.0.0.1:18080->80/tcp", "0.0.0.0:15353->53/udp"],
            "egress": ["allow:127.0.0.1/32:5432/tcp", "deny:0.0.0.0/0:25"],
            "dns": ["192.0.2.53"],
        })
    );
}
