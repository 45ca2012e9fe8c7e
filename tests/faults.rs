//! Issue 14, the CLI and control-server faults: the open-file limit, idle
//! and slow connections, absurd durations, closed pipes, many names at
//! once, and what `logs`, `resume` and `ps` print. Real daemons, real
//! limits (`setrlimit` before the daemon starts), real sockets.

#[path = "common/faults.rs"]
mod faults;

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use faults::{eventually, stderr, stdout, Cli};

#[path = "common/tmpfs.rs"]
mod tmpfs;
use tmpfs::{assert_whole_records, free_bytes, Tmpfs};

/// A command that ignores SIGTERM (and so do its children: an ignored
/// signal stays ignored across exec).
const TERM_IGNORING: &[&str] = &["sh", "-c", "trap '' TERM; while :; do sleep 0.2; done"];

/// D3: the daemon raises its soft open-file limit to the hard one, so 400
/// `run -d` against a daemon started at the common soft limit of 1,024 all
/// succeed (or, where the hard limit is that low too, fail with a clear
/// capacity error); none panics.
#[test]
fn d3_the_daemon_raises_its_fd_limit_and_hosts_400_sandboxes() {
    let mut cli = Cli::new();
    let (_, hard) = faults::nofile();
    let pid = cli.serve(Some((1024, hard)));
    let (soft_now, hard_now) = faults::nofile_of(pid);
    assert_eq!(soft_now, hard_now, "the daemon raised its soft limit");

    let outputs = cli.run_many("many", 400, &["sleep", "1000"]);
    let mut failed = Vec::new();
    for (i, out) in outputs.iter().enumerate() {
        let err = stderr(out);
        assert!(
            !err.contains("panicked") && out.status.code() != Some(101),
            "run -d many{i} panicked: {err}"
        );
        if !out.status.success() {
            failed.push(format!("many{i}: {err}"));
        }
    }
    if hard >= 8192 {
        assert!(failed.is_empty(), "{} failed: {failed:#?}", failed.len());
    } else {
        for failure in &failed {
            assert!(failure.contains("capacity"), "{failure}");
        }
    }
    let running = cli.ps().iter().filter(|s| s["status"] == "Running").count();
    assert_eq!(running, 400 - failed.len());

    let names: Vec<String> = (0..400).map(|i| format!("many{i}")).collect();
    let mut args = vec!["rm", "-f"];
    args.extend(names.iter().map(String::as_str));
    let (out, _) = cli.run_within(&args, Duration::from_secs(120));
    assert!(
        out.status.code() == Some(0) || !failed.is_empty(),
        "{}",
        stderr(&out)
    );
    assert!(cli.ps().is_empty());
}

/// Opens `count` connections to `socket` that never send a byte, on a
/// thread (a server that stops accepting cannot block the test); they stay
/// open until the returned sender is dropped.
fn idle_connections(socket: std::path::PathBuf, count: usize) -> std::sync::mpsc::Sender<()> {
    let (keep, until) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for _ in 0..count {
            match UnixStream::connect(&socket) {
                Ok(stream) => held.push(stream),
                Err(err) => eprintln!("idle connection refused: {err}"),
            }
        }
        let _ = until.recv();
    });
    keep
}

/// D3: 1,100 idle connections to the control socket of a daemon whose
/// hard limit is 1,024 (so the raise cannot help: the connection cap and
/// the idle timeout must) delay neither `run -d` nor `stop`.
#[test]
fn d3_idle_connections_do_not_delay_run_or_stop() {
    faults::raise_own_nofile();
    let mut cli = Cli::new();
    cli.serve(Some((1024, 1024)));
    let keep = idle_connections(cli.socket(), 1100);
    // Let them pile up against the server first.
    std::thread::sleep(Duration::from_secs(1));

    let limit = Duration::from_secs(10);
    let (out, took) = cli.run_within(
        &["run", "-d", "--name", "late", "--", "sleep", "1000"],
        limit,
    );
    assert!(out.status.success(), "run -d: {}", stderr(&out));
    assert!(took < limit, "run -d took {took:?}");
    // The figure for the issue's target (under a second); bounded loosely
    // here, since a loaded CI machine is no place for timing asserts.
    eprintln!("run -d with 1,100 idle connections: {took:?}");
    let (out, took) = cli.run_within(&["stop", "late"], limit);
    assert!(out.status.success(), "stop: {}", stderr(&out));
    assert!(took < limit, "stop took {took:?}");
    eprintln!("stop with 1,100 idle connections: {took:?}");
    assert_eq!(cli.status("late"), "Stopped");
    drop(keep);
}

/// Reads until the server closes `stream`; how long that took (`None`: not
/// within `limit`).
fn closed_within(stream: &mut UnixStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(started.elapsed())
            }
            Err(_) => return None,
        }
    }
}

/// D3: a client that connects and says nothing, one that sends half a
/// request head, and one that keeps an answered connection open are all
/// disconnected by the server.
#[test]
fn d3_idle_and_slow_clients_are_disconnected() {
    let mut cli = Cli::new();
    cli.serve(None);
    let limit = Duration::from_secs(30);
    let mut silent = UnixStream::connect(cli.socket()).unwrap();
    let mut slow = UnixStream::connect(cli.socket()).unwrap();
    slow.write_all(b"GET /v1/host HTTP/1.1\r\nHost: sandvisor\r\n")
        .unwrap();
    let mut kept = UnixStream::connect(cli.socket()).unwrap();
    kept.write_all(b"GET /v1/host HTTP/1.1\r\nHost: sandvisor\r\n\r\n")
        .unwrap();
    let mut slow_body = UnixStream::connect(cli.socket()).unwrap();
    slow_body
        .write_all(
            b"POST /v1/sandboxes HTTP/1.1\r\nHost: sandvisor\r\nContent-Length: 100\r\n\r\n{",
        )
        .unwrap();
    for (what, stream) in [
        ("a silent client", &mut silent),
        ("a client sending half a head", &mut slow),
        ("an idle keep-alive connection", &mut kept),
        ("a client sending half a body", &mut slow_body),
    ] {
        let took = closed_within(stream, limit);
        assert!(
            took.is_some(),
            "{what} was not disconnected within {limit:?}"
        );
    }
    // The server still serves.
    assert!(faults::daemon_pid(&cli.socket()).is_some());
}

/// D6: absurd durations and sizes are usage errors (exit 2), never accepted
/// and later truncated or overflowed.
#[test]
fn d6_durations_and_sizes_are_range_checked_at_parse_time() {
    let cli = Cli::new();
    for args in [
        &[
            "run",
            "--stop-timeout",
            "18446744073709551615s",
            "--",
            "true",
        ][..],
        &["run", "--stop-timeout", "366d", "--", "true"],
        &["stop", "-t", "18446744073709552s", "x"],
        &["stop", "-t", "18446744073709552", "x"],
        &["run", "--memory", "4096T", "--", "true"],
        &["run", "--memory", "1k", "--", "true"],
        &["run", "--pids-limit", "0", "--", "true"],
        &["run", "--pids-limit", "18446744073709551615", "--", "true"],
        &["logs", "--since", "999999999y", "x"],
    ] {
        let out = cli.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("invalid value"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    // The limits are documented.
    assert!(cli.ok(&["run", "--help"]).contains("at most 1 year"));
    assert!(cli.ok(&["stop", "--help"]).contains("at most 1 year"));
    assert!(cli.ps().is_empty());
}

/// D6, the library: a huge stop timeout sent over the control socket is
/// refused, not truncated to a few hundred milliseconds.
#[test]
fn d6_a_huge_stop_timeout_over_the_socket_is_refused_not_truncated() {
    let cli = Cli::new();
    let mut args = vec!["run", "-d", "--name", "stubborn", "--"];
    args.extend_from_slice(TERM_IGNORING);
    cli.ok(&args);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = sandvisor::control::ControlClient::new(cli.socket());
    for huge in [Duration::from_secs(18446744073709552), Duration::MAX] {
        let refused = runtime.block_on(client.stop("stubborn", Some(huge)));
        assert!(
            matches!(refused, Err(sandvisor::Error::InvalidConfig { .. })),
            "{refused:?}"
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(cli.status("stubborn"), "Running");
    cli.ok(&["rm", "-f", "stubborn"]);
}

/// Runs `args` with stdout a pipe whose reading end is already closed (as
/// `… | true` once `true` has exited).
fn with_closed_stdout(cli: &Cli, args: &[&str]) -> std::process::Output {
    let (read, write): (OwnedFd, OwnedFd) = nix::unistd::pipe().unwrap();
    drop(read);
    cli.command(args)
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

/// D7: verbs end quietly on a closed stdout with their own exit code.
#[test]
fn d7_a_closed_stdout_ends_quietly_with_the_commands_exit_code() {
    let cli = Cli::new();
    let out = with_closed_stdout(
        &cli,
        &["run", "-d", "--name", "piped", "--", "sleep", "1000"],
    );
    assert_eq!(out.status.code(), Some(0), "run -d: {}", stderr(&out));
    assert_eq!(cli.status("piped"), "Running", "run -d created it");
    cli.ok(&["run", "-d", "--name", "other", "--", "sleep", "1000"]);
    for args in [
        &["ps"][..],
        &["ps", "--json"],
        &["ps", "-a"],
        &["inspect", "piped"],
        &["metrics"],
        &["metrics", "--json"],
        &["logs", "piped"],
        &["stop", "other", "piped"],
    ] {
        let out = with_closed_stdout(&cli, args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).is_empty(), "{args:?}: {}", stderr(&out));
    }
    assert_eq!(cli.status("piped"), "Stopped");
    assert_eq!(cli.status("other"), "Stopped");
    // A failure is still one: the exit code is the command's.
    let out = with_closed_stdout(&cli, &["stop", "piped", "ghost"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("no such sandbox: ghost"));
}

/// D14: `stop -t 1` of 50 sandboxes that ignore SIGTERM stops them all at
/// once: about one second, not fifty.
#[test]
fn d14_stop_of_50_term_ignoring_sandboxes_is_concurrent() {
    let cli = Cli::new();
    for (i, out) in cli.run_many("deaf", 50, TERM_IGNORING).iter().enumerate() {
        assert!(out.status.success(), "deaf{i}: {}", stderr(out));
    }
    let names: Vec<String> = (0..50).map(|i| format!("deaf{i}")).collect();
    let mut args = vec!["stop", "-t", "1"];
    args.extend(names.iter().map(String::as_str));
    let (out, took) = cli.run_within(&args, Duration::from_secs(90));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(took < Duration::from_secs(5), "stop took {took:?}");
    // Each name printed once, in the order given.
    assert_eq!(stdout(&out), names.join("\n") + "\n");
    let ps = cli.ps();
    assert!(ps.iter().all(|s| s["status"] == "Stopped"), "{ps:#?}");
    let mut args = vec!["rm"];
    args.extend(names.iter().map(String::as_str));
    cli.ok(&args);
    assert!(cli.ps().is_empty());
}

/// D12: system records are lines of their own, whatever the output around
/// them ended with.
#[test]
fn d12_logs_print_each_system_record_on_its_own_line() {
    let cli = Cli::new();
    cli.ok(&["run", "--name", "sys", "--", "printf", "out1"]);
    let all = cli.ok(&["logs", "--source", "all", "sys"]);
    let system = cli.ok(&["logs", "--source", "system", "sys"]);
    let lines: Vec<&str> = all.lines().collect();
    assert!(lines.contains(&"out1"), "{all:?}");
    assert!(all.ends_with('\n'), "{all:?}");
    for line in lines.iter().filter(|l| **l != "out1") {
        assert!(system.lines().any(|s| s == *line), "{line:?} in {all:?}");
    }
    assert!(
        system.lines().count() >= 1 && system.ends_with('\n'),
        "{system:?}"
    );
    for line in system.lines() {
        assert!(
            line.starts_with("---") && line.ends_with("---"),
            "{system:?}"
        );
    }
    let stamped = cli.ok(&["logs", "--source", "all", "--timestamps", "sys"]);
    assert_eq!(stamped.lines().count(), lines.len(), "{stamped:?}");
}

/// D12: `resume` of a sandbox that is not paused and `pause` of one that
/// is fail as docker's `unpause`/`pause` do.
#[test]
fn d12_resume_of_a_running_sandbox_fails_clearly() {
    let cli = Cli::new();
    cli.ok(&["run", "-d", "--name", "p", "--", "sleep", "1000"]);
    let out = cli.run(&["resume", "p"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("p is not paused"), "{}", stderr(&out));
    cli.ok(&["pause", "p"]);
    let out = cli.run(&["pause", "p"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("p is already paused"),
        "{}",
        stderr(&out)
    );
    assert_eq!(cli.ok(&["resume", "p"]), "p\n");
    assert_eq!(cli.status("p"), "Running");
    cli.ok(&["rm", "-f", "p"]);
}

/// D12: `ps` after a host died does not print a warning per sandbox it
/// looks at; the sandboxes, alive, wait for a host that re-adopts them.
#[test]
fn d12_ps_does_not_warn_per_reconciled_sandbox() {
    let mut cli = Cli::new();
    cli.serve(None);
    for out in cli.run_many("orphan", 3, &["sleep", "1000"]) {
        assert!(out.status.success(), "{}", stderr(&out));
    }
    cli.kill_daemon();
    let out = cli.run(&["ps", "-a"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let warnings: Vec<&str> = std::str::from_utf8(&out.stderr)
        .unwrap()
        .lines()
        .filter(|l| l.contains("orphan"))
        .collect();
    assert!(warnings.len() <= 1, "{warnings:#?}");
    for name in ["orphan0", "orphan1", "orphan2"] {
        assert_eq!(cli.status(name), "Running");
    }
}

/// D8: a torn last line in exec.log (bytes after the last `\n`) does not
/// swallow the next run's first record: the tap ends the torn line before
/// it appends, so the torn bytes stay one skipped line and every record of
/// the new run reads back.
#[test]
fn d8_a_torn_last_line_does_not_swallow_the_next_runs_first_record() {
    let cli = Cli::new();
    cli.ok(&["run", "--name", "torn", "--", "echo", "hello"]);
    let log = cli.home().join("sandboxes/torn/logs/exec.log");
    let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    file.write_all(br#"{"t":"2026-05-01T10:00:00.000Z","s":"stdout","d":"tor"#)
        .unwrap();
    drop(file);

    cli.ok(&["start", "torn"]);
    assert!(
        eventually(Duration::from_secs(20), || cli.status("torn") == "Stopped"),
        "the second run did not end"
    );
    let all = cli.ok(&["logs", "--source", "all", "torn"]);
    let lines: Vec<&str> = all.lines().collect();
    let count = |text: &str| lines.iter().filter(|l| **l == text).count();
    assert_eq!(count("--- sandbox started ---"), 2, "{all:?}");
    assert_eq!(count("hello"), 2, "{all:?}");
    assert_eq!(count("--- sandbox stopped (exit 0) ---"), 2, "{all:?}");
    assert!(!all.contains("tor\n"), "{all:?}");
    // The torn bytes are a line of their own, ended by the tap.
    let raw = std::fs::read_to_string(&log).unwrap();
    assert!(raw.contains("\"d\":\"tor\n{"), "{raw:?}");
}

/// The host pid of the running sandbox `name`'s PID 1 (its agent), as `ps`
/// reports it.
fn agent_pid(cli: &Cli, name: &str) -> u32 {
    let ps = cli.ps();
    let row = ps.iter().find(|s| s["name"] == name).unwrap();
    row["pid"].as_u64().unwrap_or_else(|| panic!("{row:#?}")) as u32
}

/// The lifecycle markers among `name`'s `system` records (runtime.log's
/// lines are system records too).
fn markers(cli: &Cli, name: &str) -> Vec<String> {
    cli.ok(&["logs", "--source", "system", name])
        .lines()
        .filter(|line| line.starts_with("--- "))
        .map(str::to_string)
        .collect()
}

/// D12: every run that started ends with a `--- sandbox stopped … ---`
/// marker: one whose agent is SIGKILLed from outside (the supervisor sees
/// it lost), and one whose host process is SIGKILLed (the next CLI call
/// settles it and writes the marker the host could not).
#[test]
fn d12_a_crashed_run_gets_a_stopped_marker() {
    let mut cli = Cli::new();
    cli.serve(None);
    cli.ok(&["run", "-d", "--name", "lost", "--", "sleep", "1000"]);
    faults::signal(agent_pid(&cli, "lost"), nix::sys::signal::Signal::SIGKILL);
    assert!(
        eventually(Duration::from_secs(20), || cli.status("lost") == "Crashed"),
        "{:?}",
        cli.status("lost")
    );
    assert_eq!(
        markers(&cli, "lost"),
        [
            "--- sandbox started ---",
            "--- sandbox stopped (InternalError) ---"
        ]
    );

    cli.ok(&["run", "-d", "--name", "orphaned", "--", "sleep", "1000"]);
    // Host and sandbox die together: there is nothing left to re-adopt.
    let orphan = agent_pid(&cli, "orphaned");
    cli.kill_daemon();
    faults::signal(orphan, nix::sys::signal::Signal::SIGKILL);
    assert!(
        eventually(Duration::from_secs(10), || !faults::alive(orphan)),
        "the agent did not die"
    );
    assert_eq!(cli.status("orphaned"), "Crashed");
    let records = markers(&cli, "orphaned");
    assert_eq!(records.len(), 2, "{records:#?}");
    assert_eq!(records[0], "--- sandbox started ---");
    assert!(
        records[1].starts_with("--- sandbox stopped (InternalError: host process ")
            && records[1].ends_with("is gone; its processes were killed) ---")
            || records[1].ends_with("is gone; its processes were gone) ---"),
        "{records:#?}"
    );
    // Settled once: later calls add nothing.
    assert_eq!(cli.status("orphaned"), "Crashed");
    assert_eq!(markers(&cli, "orphaned").len(), 2);
}

/// D5: `logs -f` on a sandbox whose host process dies ends by itself, having
/// printed everything the sandbox wrote, and settles the sandbox's row.
#[test]
fn d5_logs_follow_ends_when_the_host_dies() {
    let cli = Cli::new();
    let mut host = cli
        .command(&[
            "run",
            "--name",
            "ticker",
            "--",
            "sh",
            "-c",
            "i=0; while :; do i=$((i+1)); echo tick-$i; sleep 0.1; done",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(20), || {
            cli.run(&["logs", "ticker"]).stdout.starts_with(b"tick-1\n")
        }),
        "the sandbox did not print"
    );
    let mut follower = cli
        .command(&["logs", "-f", "ticker"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut follower_out = follower.stdout.take().unwrap();
    let (first, printed) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        let mut told = false;
        while let Ok(n @ 1..) = follower_out.read(&mut buf) {
            all.extend_from_slice(&buf[..n]);
            // Three lines followed live before the host dies.
            if !told && all.iter().filter(|b| **b == b'\n').count() >= 3 {
                told = first.send(()).is_ok();
            }
        }
        all
    });
    printed
        .recv_timeout(Duration::from_secs(20))
        .expect("logs -f did not print three lines");

    host.kill().unwrap();
    host.wait().unwrap();
    let ended = eventually(Duration::from_secs(20), || {
        follower.try_wait().unwrap().is_some()
    });
    if !ended {
        let _ = follower.kill();
    }
    let status = follower.wait().unwrap();
    let printed = String::from_utf8(reader.join().unwrap()).unwrap();
    assert!(ended, "logs -f still follows a sandbox whose host died");
    assert!(status.success(), "{status:?}");
    // Everything on disk was printed, in order, once.
    assert_eq!(printed, cli.ok(&["logs", "ticker"]));
    assert!(
        printed.starts_with("tick-1\ntick-2\ntick-3\n"),
        "{printed:?}"
    );
    assert_eq!(cli.status("ticker"), "Crashed");
}

/// D11: a command that cannot run exits as shells and docker say — 127 not
/// found, 126 found but not executable — with a message saying which; a
/// working directory that cannot be entered is named with its errno and is
/// not reported as the command's fault (exit 1, sandvisor's own failure).
/// The same for the main command (`run`, `run -d`) and exec sessions.
#[test]
fn d11_commands_that_cannot_run_exit_127_or_126_and_a_bad_workdir_says_so() {
    let cli = Cli::new();
    let expect = |args: &[&str], code: i32, says: &[&str]| {
        let out = cli.run(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        for text in says {
            assert!(err.contains(text), "{args:?} should say {text:?}: {err}");
        }
        assert!(
            code == 127 || !err.contains("not found:"),
            "{args:?}: {err}"
        );
    };
    expect(
        &["run", "--", "no-such-command"],
        127,
        &["command not found: no-such-command"],
    );
    expect(
        &["run", "-d", "--", "no-such-command"],
        127,
        &["command not found: no-such-command"],
    );
    expect(
        &["run", "--", "/etc/passwd"],
        126,
        &["permission denied: /etc/passwd"],
    );
    expect(&["run", "--", "/usr"], 126, &["cannot execute: /usr"]);
    expect(
        &["run", "-w", "/nonexistent", "--", "true"],
        1,
        &["/nonexistent", "ENOENT"],
    );
    expect(
        &["run", "-w", "/etc/passwd", "--", "true"],
        1,
        &["/etc/passwd", "ENOTDIR"],
    );

    cli.ok(&["run", "-d", "--name", "box", "--", "sleep", "1000"]);
    expect(
        &["exec", "box", "--", "no-such-command"],
        127,
        &["command not found: no-such-command"],
    );
    expect(
        &["exec", "box", "--", "/etc/passwd"],
        126,
        &["permission denied: /etc/passwd"],
    );
    expect(
        &["exec", "-w", "/nonexistent", "box", "--", "true"],
        1,
        &["/nonexistent", "ENOENT"],
    );
    // The sandbox is unharmed, and a good working directory works.
    assert_eq!(
        cli.ok(&["exec", "-w", "/usr", "box", "--", "pwd"]),
        "/usr\n"
    );
    cli.ok(&["rm", "-f", "box"]);
}

/// Polls `check` every 100 ms until it holds; panics with `what` after
/// `limit`.
fn wait_for(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The `tick N` numbers in `name`'s stdout, in order.
fn ticks(cli: &Cli, name: &str) -> Vec<u64> {
    cli.ok(&["logs", name])
        .lines()
        .filter_map(|l| l.strip_prefix("tick "))
        .map(|n| n.parse().unwrap())
        .collect()
}

/// D1 and D13 as found: a daemon whose home is a 20 MiB tmpfs, one sandbox
/// ticking every 100 ms and one writing ~100 MiB. The disk fills; the
/// writers wait (the daemon's actors stay up). `rm -f` of the flood frees
/// the space; then, without restarting anything, `ps` is right, the ticker
/// goes on with no tick lost or repeated, `stop`, `rm -f` and `run -d`
/// work, and no record in any exec.log is torn.
#[test]
fn d1_a_full_disk_does_not_wedge_the_daemon() {
    let fs = Tmpfs::mount(20 << 20);
    let mut cli = Cli::in_dir(fs.path());
    cli.serve(None);
    let ticker = "i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.1; done";
    cli.ok(&["run", "-d", "--name", "ticker", "--", "sh", "-c", ticker]);
    cli.ok(&["run", "-d", "--name", "flood", "--", "seq", "0", "14000000"]);
    wait_for(Duration::from_secs(120), "the disk to fill", || {
        free_bytes(fs.path()) < 64 * 1024
    });
    // Long enough for the taps of old to spend their restart budgets.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(cli.status("ticker"), "Running", "{:#?}", cli.ps());
    cli.ok(&["rm", "-f", "flood"]);
    let ps = cli.ps();
    assert!(ps.iter().all(|s| s["name"] != "flood"), "{ps:#?}");
    assert_eq!(cli.status("ticker"), "Running", "{ps:#?}");
    let before = ticks(&cli, "ticker").len();
    wait_for(Duration::from_secs(30), "the ticker to go on", || {
        ticks(&cli, "ticker").len() > before + 3
    });
    cli.ok(&["stop", "ticker"]);
    assert_eq!(cli.status("ticker"), "Stopped");
    let ticks = ticks(&cli, "ticker");
    let expected: Vec<u64> = (0..ticks.len() as u64).collect();
    assert_eq!(ticks, expected, "ticks lost or repeated");
    let dir = cli.home().join("sandboxes").join("ticker");
    assert_whole_records(&dir);
    cli.ok(&["rm", "-f", "ticker"]);
    cli.ok(&["run", "-d", "--name", "again", "--", "echo", "fine"]);
    wait_for(Duration::from_secs(30), "again to end", || {
        cli.status("again") == "Stopped"
    });
    assert_eq!(cli.ok(&["logs", "again"]), "fine\n");
}

/// D13: a foreground `run` whose sandbox crashed (here its agent is
/// SIGKILLed from outside) ends with an error line saying so, after
/// whatever WARN lines came before.
#[test]
fn d13_a_foreground_run_that_crashed_ends_with_an_error_line() {
    let cli = Cli::new();
    let run = cli
        .command(&["run", "--name", "fg", "--", "sleep", "1000"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(20), "fg to run", || {
        cli.status("fg") == "Running"
    });
    faults::signal(agent_pid(&cli, "fg"), nix::sys::signal::Signal::SIGKILL);
    let out = run.wait_with_output().unwrap();
    assert!(!out.status.success(), "{:?}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("sandbox fg crashed") && last.contains("runtime.log"),
        "{stderr}"
    );
}
