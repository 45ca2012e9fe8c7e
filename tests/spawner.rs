//! The spawner process (`sandvisor-agent` as the host starts it) and the
//! Spawner actor, with real processes: requests on the spawn channel, a
//! killed spawner, a missing agent binary, a runtime that goes away.

mod common;

use std::os::fd::{AsFd, OwnedFd};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{ended, parent_of, runtime, sigkill, status_field, stdout_of, wait_until};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{socketpair, AddressFamily, MsgFlags, SockFlag, SockType};
use sandvisor::engine::protocol::spawn::{self, Reply, Request, REPLY_LEN};
use sandvisor::engine::protocol::SpawnPlan;
use sandvisor::{Error, SandboxConfig, SandboxStatus, Sandvisor};

fn send(channel: &OwnedFd, bytes: &[u8], fd: Option<&OwnedFd>) {
    spawn::send(
        channel.as_fd(),
        bytes,
        fd.map(AsFd::as_fd),
        MsgFlags::empty(),
    )
    .unwrap();
}

/// The next reply and its pidfd, waiting at most 10 s.
fn reply(channel: &OwnedFd) -> (Reply, Option<OwnedFd>) {
    let mut fds = [PollFd::new(channel.as_fd(), PollFlags::POLLIN)];
    assert_eq!(
        poll(&mut fds, PollTimeout::from(10_000u16)).unwrap(),
        1,
        "no reply within 10 s"
    );
    let message = spawn::receive(channel.as_fd(), REPLY_LEN, MsgFlags::empty())
        .unwrap()
        .expect("a reply, not the end");
    (Reply::decode(&message.bytes).unwrap(), message.fd)
}

#[test]
fn the_spawner_answers_every_request_in_order_and_exits_when_the_host_goes() {
    let (host, spawner_end) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .unwrap();
    let mut spawner = std::process::Command::new(env!("CARGO_BIN_EXE_sandvisor-agent"))
        .stdin(Stdio::from(spawner_end))
        .spawn()
        .unwrap();
    let request = |id, pid_namespace| {
        Request {
            id,
            plan: SpawnPlan {
                pid_namespace,
                ..SpawnPlan::default()
            },
        }
        .encode()
    };
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let theirs = OwnedFd::from(theirs);

    // Too short to carry an id: nobody to answer, so ignored.
    send(&host, &[1, 2, 3], Some(&theirs));
    // A plan that does not parse, and a request without its socket:
    // refused by id.
    let mut unknown = request(7, true);
    unknown.truncate(unknown.len() - 1);
    send(&host, &unknown, Some(&theirs));
    send(&host, &request(8, true), None);
    // Good ones, with and without a new pid namespace.
    send(&host, &request(9, true), Some(&theirs));
    let (other_ours, other_theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    send(
        &host,
        &request(10, false),
        Some(&OwnedFd::from(other_theirs)),
    );
    drop(theirs);

    let (refused, fd) = reply(&host);
    assert_eq!(
        (refused.id, refused.outcome, fd.is_none()),
        (7, Err(libc::EINVAL), true)
    );
    let (refused, fd) = reply(&host);
    assert_eq!(
        (refused.id, refused.outcome, fd.is_none()),
        (8, Err(libc::EBADF), true)
    );
    let (isolated, isolated_fd) = reply(&host);
    let (shared, shared_fd) = reply(&host);
    assert_eq!((isolated.id, shared.id), (9, 10));
    let (isolated_pid, shared_pid) = (isolated.outcome.unwrap(), shared.outcome.unwrap());
    assert!(isolated_fd.is_some() && shared_fd.is_some());
    // Both are forks of the spawner; only the first is PID 1 of its own
    // pid namespace.
    assert_eq!(parent_of(isolated_pid), spawner.id());
    assert_eq!(parent_of(shared_pid), spawner.id());
    let nspid = status_field(isolated_pid, "NSpid:").unwrap();
    assert_eq!(nspid, format!("{isolated_pid}\t1"));
    assert_eq!(
        status_field(shared_pid, "NSpid:").unwrap(),
        shared_pid.to_string()
    );

    // An agent whose host closes the socket before Start exits, and its
    // pidfd says so.
    drop(ours);
    drop(other_ours);
    for fd in [isolated_fd.unwrap(), shared_fd.unwrap()] {
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        assert_eq!(
            poll(&mut fds, PollTimeout::from(10_000u16)).unwrap(),
            1,
            "agent exit"
        );
    }
    // Reaped by the spawner: no zombie is left.
    wait_until("both agents reaped", || {
        !std::path::Path::new(&format!("/proc/{isolated_pid}")).exists()
            && !std::path::Path::new(&format!("/proc/{shared_pid}")).exists()
    });

    drop(host);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = spawner.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the spawner exits once the host is gone"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn a_killed_spawner_leaves_sandboxes_running_and_a_new_one_takes_over() {
    let (_home, rt) = runtime().await;
    let first = rt
        .create(SandboxConfig::new("first", "sleep").args(["1000"]))
        .await
        .unwrap();
    let first_init = rt.runs("first").await.unwrap()[0].pid;
    let spawner = parent_of(first_init);
    sigkill(spawner);
    wait_until("the spawner is dead", || ended(spawner));

    // The next sandbox gets a new spawner, at once and without an error.
    let second = rt
        .create(SandboxConfig::new("second", "sleep").args(["1000"]))
        .await
        .unwrap();
    let second_init = rt.runs("second").await.unwrap()[0].pid;
    let new_spawner = parent_of(second_init);
    assert_ne!(new_spawner, spawner);
    assert!(!ended(new_spawner));

    // The first sandbox never noticed: it runs, execs, and stops as usual.
    assert_eq!(first.status().await.unwrap(), SandboxStatus::Running);
    let exec = first
        .exec(sandvisor::ExecConfig::new("sh", ["-c", "exit 7"]))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(exec.code, Some(7));
    for sandbox in [&first, &second] {
        let result = sandbox
            .stop_with_timeout(Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(result.signal, Some(libc::SIGTERM));
    }
}

#[tokio::test]
async fn a_missing_agent_binary_is_a_boot_failure_that_names_it() {
    let home = tempfile::tempdir().unwrap();
    let missing = home.path().join("no-such-agent");
    let rt = Sandvisor::builder()
        .home(home.path())
        .agent_path(&missing)
        .open()
        .await
        .unwrap();
    for name in ["one", "two"] {
        match rt.create(SandboxConfig::new(name, "true")).await {
            Err(Error::BootFailed {
                stage,
                errno,
                message,
                ..
            }) => {
                assert_eq!(stage, "build_vm");
                assert_eq!(errno, libc::ENOENT);
                assert!(
                    message.contains(&missing.display().to_string()),
                    "{message}"
                );
            }
            other => panic!("expected BootFailed, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_spawner_ends_with_its_runtime() {
    let (_home, rt) = runtime().await;
    let sandbox = rt
        .create(SandboxConfig::new("s", "sleep").args(["1000"]))
        .await
        .unwrap();
    let spawner = parent_of(rt.runs("s").await.unwrap()[0].pid);
    sandbox.stop().await.unwrap();
    drop(sandbox);
    assert!(!ended(spawner), "the spawner outlives a sandbox");
    drop(rt);
    tokio::task::spawn_blocking(move || wait_until("the spawner ends", || ended(spawner)))
        .await
        .unwrap();
}

#[tokio::test]
async fn sandboxes_starting_while_the_spawner_dies_start_or_fail_cleanly() {
    let (_home, rt) = runtime().await;
    rt.create(SandboxConfig::new("probe", "sleep").args(["1000"]))
        .await
        .unwrap();
    let spawner = parent_of(rt.runs("probe").await.unwrap()[0].pid);
    // The spawner dies once a few have started, while the rest are on their way.
    let running = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let starts: Vec<_> = (0..100)
        .map(|i| {
            let rt = rt.clone();
            let running = running.clone();
            tokio::spawn(async move {
                match rt.create(SandboxConfig::new(format!("s{i}"), "true")).await {
                    Ok(sandbox) => {
                        running.add_permits(1);
                        let result = sandbox.wait_until_stopped().await.unwrap();
                        assert_eq!(result.exit_code, Some(0));
                        true
                    }
                    Err(Error::BootFailed { stage, message, .. }) => {
                        assert_eq!(stage, "build_vm", "{message}");
                        false
                    }
                    Err(other) => panic!("s{i}: {other}"),
                }
            })
        })
        .collect();
    let _ = running.acquire_many(5).await.unwrap();
    sigkill(spawner);
    let mut started = 0;
    for start in starts {
        let outcome = tokio::time::timeout(Duration::from_secs(60), start)
            .await
            .expect("every start ends, one way or the other");
        started += usize::from(outcome.unwrap());
    }
    println!("{started} of 100 started across the spawner's death");
    let after = rt
        .create(SandboxConfig::new("after", "sh").args(["-c", "exit 3"]))
        .await
        .unwrap();
    assert_eq!(after.wait_until_stopped().await.unwrap().exit_code, Some(3));
}

#[tokio::test]
async fn a_sandbox_without_a_working_directory_starts_in_root() {
    let (_home, rt) = runtime().await;
    let sandbox = rt.create(SandboxConfig::new("where", "pwd")).await.unwrap();
    assert_eq!(
        sandbox.wait_until_stopped().await.unwrap().exit_code,
        Some(0)
    );
    assert_eq!(stdout_of(&sandbox).await, "/\n");
}

#[tokio::test]
async fn a_spawner_that_never_answers_holds_up_nothing_else() {
    // An "agent binary" that reads its channel to the end and never answers.
    let home = tempfile::tempdir().unwrap();
    let silent = home.path().join("silent-agent");
    std::fs::write(&silent, "#!/bin/sh\nexec cat > /dev/null\n").unwrap();
    std::fs::set_permissions(&silent, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let rt = Sandvisor::builder()
        .home(home.path().join("home"))
        .agent_path(&silent)
        .open()
        .await
        .unwrap();
    let stuck = {
        let rt = rt.clone();
        tokio::spawn(async move { rt.create(SandboxConfig::new("stuck", "true")).await })
    };
    // The sandbox is launched (Starting) while its agent is never spawned;
    // the runtime's root still answers.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let hosted = tokio::time::timeout(Duration::from_secs(10), rt.hosted())
            .await
            .expect("the root answers while a spawn hangs")
            .unwrap();
        if hosted == ["stuck"] {
            break;
        }
        assert!(Instant::now() < deadline, "the sandbox is launched");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let listed = tokio::time::timeout(Duration::from_secs(10), rt.list())
        .await
        .expect("listing answers while a spawn hangs")
        .unwrap();
    assert_eq!(listed.len(), 1);
    stuck.abort();
}
