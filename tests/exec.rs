//! Exec sessions and drain, with real processes inside real sandboxes. What
//! the SPEC promises whatever the backend runs on both backends
//! (`on_both!`).

mod common;

use common::backends;
use common::runtime;
use std::time::Duration;

use futures::StreamExt;
use sandvisor::{
    Backend, Error, ExecConfig, LogOptions, LogSource, SandboxConfig, TerminationReason,
};

fn sh(script: &str) -> ExecConfig {
    ExecConfig::new("sh", ["-c", script])
}

on_both!(two_sessions_interleave_and_each_stream_equals_the_log);
async fn two_sessions_interleave_and_each_stream_equals_the_log(backend: Backend) {
    let (_home, rt) = backends::runtime(backend).await;
    let sandbox = rt
        .create(
            SandboxConfig::new("ex", "sleep")
                .args(["1000"])
                .with_backend(backend),
        )
        .await
        .unwrap();
    let a = sandbox
        .exec(sh(
            "for i in $(seq 1 50); do echo a-$i; echo a-err-$i >&2; sleep 0.01; done; exit 3",
        ))
        .await
        .unwrap();
    let b = sandbox
        .exec(sh("for i in $(seq 1 50); do echo b-$i; sleep 0.01; done"))
        .await
        .unwrap();
    assert_eq!((a.id(), b.id()), (2, 3));
    let collect = |mut h: sandvisor::ExecHandle| async move {
        let mut out = Vec::new();
        while let Some(chunk) = h.next().await {
            out.push((chunk.source, chunk.data));
        }
        (out, h.status().unwrap())
    };
    let ((a_out, a_status), (b_out, b_status)) = tokio::join!(collect(a), collect(b));
    assert_eq!(a_status.code, Some(3));
    assert_eq!(b_status.code, Some(0));
    let logs = sandbox.logs(&LogOptions::default()).await.unwrap();
    for (id, live) in [(2, &a_out), (3, &b_out)] {
        let logged: Vec<_> = logs
            .iter()
            .filter(|e| e.session_id == Some(id))
            .map(|e| (e.source, e.data.clone()))
            .collect();
        assert_eq!(
            &logged, live,
            "session {id}: the live stream must equal the log"
        );
    }
    let text = |out: &[(LogSource, bytes::Bytes)], source| {
        out.iter()
            .filter(|(s, _)| *s == source)
            .map(|(_, d)| String::from_utf8_lossy(d).into_owned())
            .collect::<String>()
    };
    assert_eq!(text(&a_out, LogSource::Stdout).lines().count(), 50);
    assert_eq!(text(&a_out, LogSource::Stderr).lines().count(), 50);
    assert!(text(&b_out, LogSource::Stdout)
        .lines()
        .all(|l| l.starts_with("b-")));
    sandbox.kill().await.unwrap();
}

on_both!(stdin_reaches_the_session_and_closed_sessions_refuse_it);
async fn stdin_reaches_the_session_and_closed_sessions_refuse_it(backend: Backend) {
    let (_home, rt) = backends::runtime(backend).await;
    let sandbox = rt
        .create(
            SandboxConfig::new("cat", "sleep")
                .args(["1000"])
                .with_backend(backend),
        )
        .await
        .unwrap();
    let mut cat = sandbox
        .exec(ExecConfig {
            stdin: true,
            ..ExecConfig::new("cat", Vec::<String>::new())
        })
        .await
        .unwrap();
    cat.write_stdin(b"hello\n".to_vec()).unwrap();
    // A hang guard: a guest under TCG starts its programs slowly.
    let echoed = tokio::time::timeout(Duration::from_secs(60), cat.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echoed.data.as_ref(), b"hello\n");
    cat.close_stdin().unwrap();
    assert!(matches!(
        cat.write_stdin(b"more".to_vec()).unwrap_err(),
        Error::SessionClosed { session: 2, .. }
    ));
    assert_eq!(cat.wait().await.unwrap().code, Some(0));
    let mut no_stdin = sandbox.exec(sh("true")).await.unwrap();
    assert!(matches!(
        no_stdin.write_stdin(b"x".to_vec()).unwrap_err(),
        Error::SessionClosed { .. }
    ));
    sandbox.kill().await.unwrap();
}

on_both!(bad_exec_requests_get_typed_errors);
async fn bad_exec_requests_get_typed_errors(backend: Backend) {
    let (_home, rt) = backends::runtime(backend).await;
    let sandbox = rt
        .create(
            SandboxConfig::new("bad", "sleep")
                .args(["1000"])
                .with_backend(backend),
        )
        .await
        .unwrap();
    let err = sandbox
        .exec(ExecConfig::new("", Vec::<String>::new()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidConfig { ref field, .. } if field == "command"),
        "{err:?}"
    );
    let err = sandbox
        .exec(ExecConfig::new(
            "no-such-command-here",
            Vec::<String>::new(),
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ExecFailed {
                errno: libc::ENOENT,
                ..
            }
        ),
        "{err:?}"
    );
    let plain = sandbox.exec(sh("sleep 0.2")).await.unwrap();
    let err = plain.resize(40, 100).unwrap_err();
    assert!(matches!(err, Error::NotATerminal { .. }), "{err:?}");
    plain.wait().await.unwrap();
    // A session killed by its handle reports the signal.
    let looping = sandbox.exec(sh("while :; do sleep 1; done")).await.unwrap();
    looping.kill().unwrap();
    assert_eq!(looping.wait().await.unwrap().signal, Some(9));
    sandbox.kill().await.unwrap();
    let err = sandbox.exec(sh("true")).await.unwrap_err();
    assert!(matches!(err, Error::SandboxNotRunning(_)), "{err:?}");
    // Removed: not even a record is left to exec in.
    rt.remove("bad").await.unwrap();
    let err = rt.get("bad").await.unwrap_err();
    assert!(matches!(err, Error::SandboxNotFound(_)), "{err:?}");
    let err = sandbox.exec(sh("true")).await.unwrap_err();
    assert!(matches!(err, Error::SandboxNotRunning(_)), "{err:?}");
}

on_both!(drain_refuses_new_sessions_waits_for_running_ones_then_stops);
async fn drain_refuses_new_sessions_waits_for_running_ones_then_stops(backend: Backend) {
    let (_home, rt) = backends::runtime(backend).await;
    let sandbox = rt
        .create(
            SandboxConfig::new("drain", "sleep")
                .args(["1000"])
                .with_backend(backend),
        )
        .await
        .unwrap();
    let running = sandbox.exec(sh("sleep 1; echo finished")).await.unwrap();
    sandbox.request_drain(Some(Duration::from_secs(20)));
    // The drain request is handled before this exec.
    let err = sandbox.exec(sh("true")).await.unwrap_err();
    assert!(matches!(err, Error::SandboxDraining(_)), "{err:?}");
    assert_eq!(running.wait().await.unwrap().code, Some(0));
    let result = sandbox.wait_until_stopped().await.unwrap();
    assert_eq!(result.signal, Some(libc::SIGTERM));
    let runs = rt.runs("drain").await.unwrap();
    assert_eq!(
        runs[0].termination_reason,
        Some(TerminationReason::DrainRequested)
    );
    let out: String = sandbox
        .logs(&LogOptions::default())
        .await
        .unwrap()
        .iter()
        .map(|e| String::from_utf8_lossy(&e.data).into_owned())
        .collect();
    assert!(out.contains("finished"), "{out}");
}

// Namespaces only: a stress test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_sandboxes_with_ten_sessions_each_lose_nothing() {
    use sandvisor::testing::Probe;
    use sandvisor::SandboxEvent;
    let (_home, rt) = runtime().await;
    let probe = Probe::<sandvisor::EventEnvelope>::spawn().await.unwrap();
    let mut tasks = Vec::new();
    for s in 0..100 {
        let rt = rt.clone();
        let sink = probe.sink();
        tasks.push(tokio::spawn(async move {
            let name = format!("many-{s}");
            let mut config = SandboxConfig::new(&name, "sleep").args(["1000"]);
            config.metrics_interval = None;
            let sandbox = rt.create(config).await.unwrap();
            sandbox.subscribe(sink).unwrap();
            let mut sessions = Vec::new();
            for _ in 0..10 {
                let script = "i=0; while [ $i -lt 100 ]; do echo $i; i=$((i+1)); done";
                sessions.push(sandbox.exec(sh(script)).await.unwrap());
            }
            let mut ids = Vec::new();
            for session in sessions {
                ids.push(session.id());
                assert_eq!(session.wait().await.unwrap().code, Some(0));
            }
            let logs = sandbox.logs(&LogOptions::default()).await.unwrap();
            for id in ids {
                let text: String = logs
                    .iter()
                    .filter(|e| e.session_id == Some(id))
                    .map(|e| String::from_utf8_lossy(&e.data).into_owned())
                    .collect();
                let numbers: Vec<u32> = text.lines().map(|l| l.parse().unwrap()).collect();
                assert_eq!(numbers, (0..100).collect::<Vec<_>>(), "{name} session {id}");
            }
            sandbox.kill().await.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // Every sandbox's events reached the probe: ten sessions started and
    // exited, its stop, in order, with no gap in the sequence. They were all
    // sent before the sandboxes reported stopped; a marker sent now arrives
    // after them.
    let marker = sandvisor::EventEnvelope {
        sandbox: "marker".into(),
        run: None,
        seq: 0,
        at: chrono::Utc::now(),
        event: SandboxEvent::Rotated { generation: 0 },
    };
    probe.actor().cast(marker).unwrap();
    let mut probe = probe;
    probe
        .expect_match(|e| e.sandbox == "marker", Duration::from_secs(30))
        .await
        .unwrap();
    let events = probe.received();
    for s in 0..100 {
        let name = format!("many-{s}");
        let mine: Vec<_> = events.iter().filter(|e| e.sandbox == name).collect();
        let started = mine
            .iter()
            .filter(|e| matches!(e.event, SandboxEvent::SessionStarted { id } if id >= 2))
            .count();
        let exited = mine
            .iter()
            .filter(|e| matches!(e.event, SandboxEvent::SessionExited { id, .. } if id >= 2))
            .count();
        assert_eq!((started, exited), (10, 10), "{name}");
        assert!(
            mine.windows(2).all(|w| w[1].seq == w[0].seq + 1),
            "{name}: an event was lost"
        );
        assert!(
            matches!(
                mine.last().unwrap().event,
                SandboxEvent::StatusChanged {
                    to: sandvisor::SandboxStatus::Stopped,
                    ..
                }
            ),
            "{name}"
        );
    }
}

on_both!(a_terminal_session_gets_a_pty_merged_output_and_resizes);
async fn a_terminal_session_gets_a_pty_merged_output_and_resizes(backend: Backend) {
    let (_home, rt) = backends::runtime(backend).await;
    let sandbox = rt
        .create(
            SandboxConfig::new("pty", "sleep")
                .args(["1000"])
                .with_backend(backend),
        )
        .await
        .unwrap();
    let term = ExecConfig {
        tty: true,
        rows: 30,
        cols: 90,
        ..sh("tty; stty size; echo to-stderr >&2")
    };
    let mut session = sandbox.exec(term).await.unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = session.next().await {
        assert_eq!(chunk.source, LogSource::Output);
        out.extend_from_slice(&chunk.data);
    }
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("/dev/pts/"), "{text}");
    assert!(text.contains("30 90"), "{text}");
    assert!(text.contains("to-stderr"), "{text}");
    // A resize reaches the running program; typed input is echoed by the terminal.
    let mut session = sandbox
        .exec(ExecConfig {
            tty: true,
            ..sh("read line; stty size; echo got-$line")
        })
        .await
        .unwrap();
    session.resize(40, 100).unwrap();
    session.write_stdin(b"hi\n".to_vec()).unwrap();
    let mut out = Vec::new();
    // A hang guard: a guest under TCG starts its programs slowly.
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(60), session.next())
        .await
        .unwrap()
    {
        out.extend_from_slice(&chunk.data);
    }
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("40 100"), "{text}");
    assert!(text.contains("got-hi"), "{text}");
    sandbox.kill().await.unwrap();
}

#[test]
fn raw_mode_is_restored_on_drop_and_on_panic() {
    use nix::sys::termios::{tcgetattr, LocalFlags};
    use sandvisor::attach::RawTerminal;
    let pty = nix::pty::openpty(None, None).unwrap();
    let before = tcgetattr(&pty.slave).unwrap();
    assert!(before.local_flags.contains(LocalFlags::ICANON));
    {
        let _raw = RawTerminal::enable(&pty.slave).unwrap();
        let now = tcgetattr(&pty.slave).unwrap();
        assert!(
            !now.local_flags.contains(LocalFlags::ICANON)
                && !now.local_flags.contains(LocalFlags::ISIG)
        );
    }
    assert_eq!(
        tcgetattr(&pty.slave).unwrap().local_flags,
        before.local_flags
    );
    let slave = &pty.slave;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _raw = RawTerminal::enable(slave).unwrap();
        panic!("the session failed");
    }));
    assert!(result.is_err());
    let after = tcgetattr(&pty.slave).unwrap();
    assert_eq!(after.local_flags, before.local_flags);
    assert_eq!(after.input_flags, before.input_flags);
    assert_eq!(after.output_flags, before.output_flags);
}

// Namespaces only: its 45 MiB of input is too slow into a guest under TCG.
#[tokio::test]
async fn sessions_end_with_their_leader_and_large_input_and_terminal_eof_work() {
    let (_home, rt) = runtime().await;
    let sandbox = rt
        .create(SandboxConfig::new("edge", "sleep").args(["1000"]))
        .await
        .unwrap();
    // A background child holding the output does not keep the session alive.
    let bg = sandbox.exec(sh("sleep 1000 & echo started")).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), bg.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code, Some(0));
    // 5 MiB of input (more than one protocol frame) goes through whole.
    let counted = bytes_counted_by(&sandbox, "wc -c", 1, 5 << 20).await;
    assert_eq!(counted, 5 << 20);
    // 40 MiB to a session that starts reading late: more than the agent
    // could hold; flow control keeps the rest on the host, none is dropped.
    let counted = bytes_counted_by(&sandbox, "sleep 1; wc -c", 40, 1 << 20).await;
    assert_eq!(counted, 40 << 20);
    // Closing a terminal session's input is end of file for its program.
    let mut term = sandbox
        .exec(ExecConfig {
            tty: true,
            ..ExecConfig::new("cat", Vec::<String>::new())
        })
        .await
        .unwrap();
    term.write_stdin(b"line\n".to_vec()).unwrap();
    term.close_stdin().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), term.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code, Some(0));
    assert_eq!(
        sandbox.status().await.unwrap(),
        sandvisor::SandboxStatus::Running
    );
    sandbox.kill().await.unwrap();
}

// Namespaces only: a VM refuses `isolation.pid = false`.
#[tokio::test]
async fn without_a_pid_namespace_stop_still_reaches_exec_sessions() {
    let (_home, rt) = runtime().await;
    let mut config = SandboxConfig::new("nopidns", "sleep").args(["1000"]);
    config.isolation.pid = false;
    let sandbox = rt.create(config).await.unwrap();
    let session = sandbox.exec(sh("sleep 1000")).await.unwrap();
    let pid = session.pid();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    sandbox
        .stop_with_timeout(Duration::from_secs(5))
        .await
        .unwrap();
    let status = session.wait().await.unwrap();
    assert!(status.signal.is_some(), "{status:?}");
    for _ in 0..250 {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the session outlived its sandbox"
    );
}

on_both!(the_main_command_takes_input_only_as_configured);
async fn the_main_command_takes_input_only_as_configured(backend: Backend) {
    let (_home, rt) = backends::runtime(backend).await;
    let plain = rt
        .create(
            SandboxConfig::new("plain", "sleep")
                .args(["1000"])
                .with_backend(backend),
        )
        .await
        .unwrap();
    let refused = plain.write_stdin("x").await;
    assert!(
        matches!(refused, Err(Error::SessionClosed { session: 1, .. })),
        "{refused:?}"
    );
    let refused = plain.resize(10, 40).await;
    assert!(
        matches!(refused, Err(Error::NotATerminal { session: 1, .. })),
        "{refused:?}"
    );
    plain.kill().await.unwrap();

    let mut config = SandboxConfig::shell("reader", "read line; echo got $line; cat; echo end")
        .with_backend(backend);
    config.stdin = true;
    let reader = rt.create(config).await.unwrap();
    assert!(matches!(
        reader.resize(10, 40).await,
        Err(Error::NotATerminal { .. })
    ));
    reader.write_stdin("hello\n").await.unwrap();
    reader.write_stdin("rest\n").await.unwrap();
    // Closing ends `cat`; the close waits behind the bytes sent before it.
    reader.close_stdin().await.unwrap();
    let result = reader.wait_until_stopped().await.unwrap();
    assert_eq!(result.exit_code, Some(0));
    let out: Vec<u8> = reader
        .logs(&Default::default())
        .await
        .unwrap()
        .iter()
        .flat_map(|e| e.data.to_vec())
        .collect();
    assert_eq!(String::from_utf8_lossy(&out), "got hello\nrest\nend\n");
}

/// Writes `writes` × `size` bytes to a session running `script`, closes its
/// stdin, and returns the number the script printed.
async fn bytes_counted_by(
    sandbox: &sandvisor::Sandbox,
    script: &str,
    writes: usize,
    size: usize,
) -> usize {
    let mut session = sandbox
        .exec(ExecConfig {
            stdin: true,
            ..ExecConfig::new("sh", ["-c", script])
        })
        .await
        .unwrap();
    for _ in 0..writes {
        session.write_stdin(vec![b'x'; size]).unwrap();
    }
    session.close_stdin().unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(30), session.next())
        .await
        .unwrap()
    {
        out.extend_from_slice(&chunk.data);
    }
    String::from_utf8_lossy(&out).trim().parse().unwrap()
}
