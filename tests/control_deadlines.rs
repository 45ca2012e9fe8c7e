//! Every control-socket call that waits has a deadline (issue 18, item 4):
//! a host that accepts but never answers fails each such call with
//! `ControlTimedOut`, and a wait longer than one call's window is a series
//! of bounded calls that still ends with the sandbox's real end.

use std::path::Path;
use std::time::Duration;

use sandvisor::control::{ControlClient, ControlTimeouts};
use sandvisor::{Error, ExecConfig, SandboxConfig, SandboxStatus, Sandvisor};

/// Far longer than the bounds these tests give: a call that hangs fails.
const HANG: Duration = Duration::from_secs(20);

fn short() -> ControlTimeouts {
    ControlTimeouts {
        request: Duration::from_millis(500),
        wait_window: Duration::from_millis(200),
        startup: Duration::from_millis(500),
    }
}

/// A socket that accepts connections and reads them, but never answers:
/// a wedged host.
fn wedged(dir: &Path) -> (std::path::PathBuf, tokio::task::JoinHandle<()>) {
    let path = dir.join("wedged.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (path, task)
}

#[tokio::test]
async fn calls_that_wait_fail_with_control_timed_out_on_a_wedged_host() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, task) = wedged(dir.path());
    let client = ControlClient::new(&socket).with_timeouts(short());
    let config = SandboxConfig::new("x", "true");
    let calls: Vec<(&str, sandvisor::Result<()>)> = vec![
        (
            "create",
            tokio::time::timeout(HANG, client.create(&config))
                .await
                .unwrap()
                .map(drop),
        ),
        (
            "start",
            tokio::time::timeout(HANG, client.start("x")).await.unwrap(),
        ),
        (
            "stop",
            tokio::time::timeout(HANG, client.stop("x", None))
                .await
                .unwrap()
                .map(drop),
        ),
        (
            "kill",
            tokio::time::timeout(HANG, client.kill("x"))
                .await
                .unwrap()
                .map(drop),
        ),
        (
            "drain",
            tokio::time::timeout(HANG, client.drain("x", None))
                .await
                .unwrap()
                .map(drop),
        ),
        (
            "wait",
            tokio::time::timeout(HANG, client.wait("x"))
                .await
                .unwrap()
                .map(drop),
        ),
        (
            "exec",
            tokio::time::timeout(HANG, client.exec("x", &ExecConfig::new("true", [""; 0])))
                .await
                .unwrap()
                .map(drop),
        ),
    ];
    for (what, result) in calls {
        match result {
            Err(Error::ControlTimedOut {
                socket: s, call, ..
            }) => {
                assert_eq!(s, socket, "{what}");
                assert!(call.contains("/v1/sandboxes"), "{what}: {call}");
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_longer_than_one_window_is_bounded_calls_that_end_with_the_real_end() {
    let home = tempfile::tempdir().unwrap();
    let host = Sandvisor::builder()
        .home(home.path())
        .agent_path(env!("CARGO_BIN_EXE_sandvisor-agent"))
        .control_socket(true)
        .open()
        .await
        .unwrap();
    let socket = host.control_socket().unwrap().to_path_buf();
    // Ignores the stop signal: the stop ends only at SIGKILL after its
    // grace period, many windows later.
    let config = SandboxConfig::shell(
        "slow",
        "trap '' TERM; echo trapped; while :; do sleep 0.05; done",
    );
    let slow = host.create(config).await.unwrap();
    // A stop that arrives before the trap is set would end it with SIGTERM.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let logs = slow.logs(&sandvisor::LogOptions::default()).await.unwrap();
        if logs.iter().any(|entry| entry.data.as_ref() == b"trapped\n") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the trap is set");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = ControlClient::new(&socket).with_timeouts(short());
    let stopped =
        tokio::time::timeout(HANG, client.stop("slow", Some(Duration::from_millis(1500))))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(stopped.status, SandboxStatus::Stopped);
    assert_eq!(stopped.signal, Some(libc::SIGKILL));

    host.create(SandboxConfig::shell("sleeper", "sleep 1.5; exit 4"))
        .await
        .unwrap();
    let waited = tokio::time::timeout(HANG, client.wait("sleeper"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(waited.exit_code, Some(4));
}
