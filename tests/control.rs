//! The control socket at the library level: a runtime that opts in is
//! reached by another runtime's `SandboxHandle` (as the CLI reaches it).

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use sandvisor::{Error, ExecConfig, LogSource, SandboxConfig, SandboxStatus, Sandvisor};

async fn open(home: &Path, control: bool) -> Sandvisor {
    Sandvisor::builder()
        .home(home)
        .agent_path(env!("CARGO_BIN_EXE_sandvisor-agent"))
        .control_socket(control)
        .open()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_runtime_acts_on_a_hosted_sandbox_through_the_socket() {
    let home = tempfile::tempdir().unwrap();
    let host = open(home.path(), true).await;
    let socket = host.control_socket().unwrap().to_path_buf();
    let meta = std::fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let dir_mode = std::fs::metadata(socket.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700);

    let mut config =
        SandboxConfig::shell("hosted", "trap 'exit 7' TERM; while :; do sleep 0.05; done");
    config.stop_timeout = Duration::from_secs(5);
    host.create(config).await.unwrap();

    let other = open(home.path(), false).await;
    let handle = other.get("hosted").await.unwrap();
    assert_eq!(handle.control_socket(), Some(socket.as_path()));
    // Not hosted by `other`: no live handle here, but every action works.
    assert!(matches!(
        handle.connect().await,
        Err(Error::SandboxNotHosted(_))
    ));

    let mut session = handle
        .exec(ExecConfig {
            stdin: true,
            ..ExecConfig::new(
                "sh",
                ["-c", "read line; echo got $line; echo oops >&2; exit 5"],
            )
        })
        .await
        .unwrap();
    assert!(session.id() >= 2);
    session.write_stdin("hello\n").unwrap();
    let mut out = Vec::new();
    let mut err = Vec::new();
    while let Some(chunk) = session.next().await {
        match chunk.source {
            LogSource::Stderr => err.extend_from_slice(&chunk.data),
            _ => out.extend_from_slice(&chunk.data),
        }
    }
    assert_eq!(out, b"got hello\n");
    assert_eq!(err, b"oops\n");
    assert_eq!(session.status().unwrap().code, Some(5));

    handle.pause().await.unwrap();
    assert_eq!(
        other.get("hosted").await.unwrap().status_snapshot(),
        SandboxStatus::Paused
    );
    handle.resume().await.unwrap();
    let metrics = handle.metrics().await.unwrap();
    assert!(metrics.memory_bytes > 0);
    let failed = handle
        .exec(ExecConfig::new("no-such-program", Vec::<String>::new()))
        .await;
    assert!(
        matches!(failed, Err(Error::ExecFailed { errno, .. }) if errno == libc::ENOENT),
        "{failed:?}"
    );

    let result = handle
        .stop_with_timeout(Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result.status, SandboxStatus::Stopped);
    assert_eq!(result.exit_code, Some(7));
    // Stopping again, from either side, answers the same end.
    let again = handle.stop().await.unwrap().unwrap();
    assert_eq!(again.exit_code, Some(7));
    assert_eq!(
        handle.wait_until_stopped().await.unwrap().exit_code,
        Some(7)
    );

    drop(host);
    // The runtime took its socket with it.
    tokio::task::yield_now().await;
    assert!(!socket.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_socket_is_unreachable_and_paths_are_guarded() {
    let home = tempfile::tempdir().unwrap();
    let path = home.path().join("ctl.sock");
    let host = Sandvisor::builder()
        .home(home.path())
        .agent_path(env!("CARGO_BIN_EXE_sandvisor-agent"))
        .control_socket_at(&path)
        .open()
        .await
        .unwrap();
    // One live server per path.
    let second = Sandvisor::builder()
        .home(home.path())
        .control_socket_at(&path)
        .open()
        .await;
    assert!(
        matches!(second, Err(Error::ControlSocketInUse { .. })),
        "{second:?}"
    );
    // A file that is not a socket is never deleted to make room.
    let not_a_socket = home.path().join("notes.txt");
    std::fs::write(&not_a_socket, "keep me").unwrap();
    let refused = Sandvisor::builder()
        .home(home.path())
        .control_socket_at(&not_a_socket)
        .open()
        .await;
    assert!(
        matches!(refused, Err(Error::InvalidConfig { .. })),
        "{refused:?}"
    );
    assert_eq!(std::fs::read_to_string(&not_a_socket).unwrap(), "keep me");

    host.create(SandboxConfig::new("held", "sleep").args(["1000"]))
        .await
        .unwrap();
    let other = open(home.path(), false).await;
    let handle = other.get("held").await.unwrap();
    handle.pause().await.unwrap();
    handle.resume().await.unwrap();

    host.close_control_socket().await;
    assert!(!path.exists());
    let unreachable = handle.pause().await;
    assert!(
        matches!(&unreachable, Err(Error::ControlUnreachable { socket, .. }) if socket == &path),
        "{unreachable:?}"
    );
    // The host itself still runs and ends its sandbox.
    let live = host.connect("held").await.unwrap().unwrap();
    assert_eq!(live.kill().await.unwrap().signal, Some(9));
    // Now the store answers, with no socket needed.
    assert_eq!(handle.stop().await.unwrap().unwrap().signal, Some(9));
}
