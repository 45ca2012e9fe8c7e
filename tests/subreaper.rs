//! sandvisor embedded in a host that is a subreaper, as PID 1 of a container
//! is: agents that lose their spawner are reparented to the host, and none
//! is left a zombie. A test binary of its own: being a subreaper is a
//! property of the whole test process.

mod common;

use std::time::Duration;

use common::{parent_of, runtime, sigkill, status_field, wait_until};
use sandvisor::SandboxConfig;

fn gone(pid: u32) -> bool {
    status_field(pid, "State:").is_none()
}

#[tokio::test]
async fn a_subreaper_host_is_left_no_zombie_agent() {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes no pointers.
    assert_eq!(
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
        0
    );
    let (_home, rt) = runtime().await;

    // The spawner dies while a sandbox runs: its agent becomes ours, and
    // once it has exited it is reaped, not left a zombie.
    let orphaned = rt
        .create(SandboxConfig::new("orphaned", "sleep").args(["1000"]))
        .await
        .unwrap();
    let agent = rt.runs("orphaned").await.unwrap()[0].pid;
    sigkill(parent_of(agent));
    tokio::task::spawn_blocking(move || {
        wait_until("the agent is reparented to the host", || {
            parent_of(agent) == std::process::id()
        })
    })
    .await
    .unwrap();
    let result = orphaned
        .stop_with_timeout(Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(result.signal, Some(libc::SIGTERM));
    tokio::task::spawn_blocking(move || wait_until("the agent is reaped", || gone(agent)))
        .await
        .unwrap();
    drop(orphaned);

    // The runtime goes away while a sandbox runs: its spawner outlives the
    // agent, which is never ours, and both are gone.
    rt.create(SandboxConfig::new("running", "sleep").args(["1000"]))
        .await
        .unwrap();
    let agent = rt.runs("running").await.unwrap()[0].pid;
    let spawner = parent_of(agent);
    drop(rt);
    tokio::task::spawn_blocking(move || {
        wait_until("agent and spawner are reaped", || {
            gone(agent) && gone(spawner)
        })
    })
    .await
    .unwrap();
}
