//! What a host process inherited from its own parent — an open descriptor
//! without close-on-exec, an ignored signal (as under `nohup`) — does not
//! reach the sandbox. A test binary of its own: both are process-wide.

mod common;

use common::{runtime, stdout_of};
use sandvisor::SandboxConfig;

#[tokio::test]
async fn stray_descriptors_and_ignored_signals_stay_with_the_host() {
    // SAFETY: dup of a descriptor we own (no close-on-exec on the copy), and
    // SIG_IGN for SIGHUP installs no handler.
    let stray = unsafe {
        let null = std::fs::File::open("/dev/null").unwrap();
        let fd = libc::dup(std::os::fd::AsRawFd::as_raw_fd(&null));
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        fd
    };
    assert!(stray > 2);
    let (_home, rt) = runtime().await;
    let script = "ls /proc/self/fd | tr '\\n' ' '; grep SigIgn /proc/self/status";
    let sandbox = rt
        .create(SandboxConfig::new("clean", "sh").args(["-c", script]))
        .await
        .unwrap();
    assert_eq!(
        sandbox.wait_until_stopped().await.unwrap().exit_code,
        Some(0)
    );
    let out = stdout_of(&sandbox).await;
    let (fds, ignored) = out.split_once("SigIgn:").unwrap();
    // `ls` holds one more for the directory it reads.
    assert_eq!(fds.trim(), "0 1 2 3", "{out}");
    let mask = u64::from_str_radix(ignored.trim(), 16).unwrap();
    assert_eq!(mask & (1 << (libc::SIGHUP - 1)), 0, "SIGHUP ignored: {out}");
}
