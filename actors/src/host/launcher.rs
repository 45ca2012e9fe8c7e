//! Helper processes (the network stack of a sandbox) that die with this
//! process: each is forked by one long-lived thread with `PR_SET_PDEATHSIG`
//! set to SIGKILL.
//!
//! # Contract
//! - The kernel delivers the parent-death signal when the *thread* that
//!   forked a child exits; the launcher thread lives as long as the process,
//!   so a helper is SIGKILLed exactly when its host process dies, however it
//!   dies (a SIGKILLed `sandvisor serve` leaves no helper behind).
//! - [`launch`] answers with the helper's pid once it exists; the helper
//!   stays a child of this process until [`reap`] kills (SIGKILL) and waits
//!   for it, which every caller does once (a helper that exited on its own
//!   is a zombie until then).
//! - The thread only forks and waits; it never blocks on anything else.
//! - Callers pass descriptors on purpose (clearing close-on-exec in their own
//!   `pre_exec`); [`inherit_only`] keeps every other one from leaking.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

use tokio::sync::oneshot;

enum Job {
    Launch(Box<Command>, oneshot::Sender<std::io::Result<u32>>),
    Reap(u32),
}

/// The launcher thread's queue, started on first use.
fn queue() -> std::io::Result<mpsc::Sender<Job>> {
    static QUEUE: OnceLock<Mutex<Option<mpsc::Sender<Job>>>> = OnceLock::new();
    let slot = QUEUE.get_or_init(|| Mutex::new(None));
    let mut slot = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(sender) = slot.as_ref() {
        return Ok(sender.clone());
    }
    let (sender, jobs) = mpsc::channel();
    std::thread::Builder::new()
        .name("sandvisor-launcher".into())
        .spawn(move || run(jobs))?;
    *slot = Some(sender.clone());
    Ok(sender)
}

fn run(jobs: mpsc::Receiver<Job>) {
    let mut children: HashMap<u32, Child> = HashMap::new();
    for job in jobs {
        match job {
            Job::Launch(mut command, reply) => {
                let parent = std::process::id() as libc::pid_t;
                // SAFETY: prctl, getppid and close_range are
                // async-signal-safe and touch only the child's own state.
                unsafe {
                    command.pre_exec(move || {
                        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        // The host died between fork and prctl: no signal
                        // will come, so do not run at all.
                        if libc::getppid() != parent {
                            return Err(std::io::Error::other("the host process is gone"));
                        }
                        Ok(())
                    });
                }
                let launched = command.spawn().map(|child| {
                    let pid = child.id();
                    children.insert(pid, child);
                    pid
                });
                if let Err(Ok(pid)) = reply.send(launched) {
                    // Nobody waits for this helper: do not keep it.
                    end(&mut children, pid);
                }
            }
            Job::Reap(pid) => end(&mut children, pid),
        }
    }
}

fn end(children: &mut HashMap<u32, Child>, pid: u32) {
    if let Some(mut child) = children.remove(&pid) {
        // SIGKILL to a helper that already exited reaches its zombie, which
        // only `wait` removes.
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Forks `command` from the launcher thread (see the module docs); its pid.
///
/// # Errors
/// The error of the fork or exec (a missing program is
/// [`std::io::ErrorKind::NotFound`]), or of starting the launcher thread.
pub async fn launch(command: Command) -> std::io::Result<u32> {
    let (reply, answer) = oneshot::channel();
    queue()?
        .send(Job::Launch(Box::new(command), reply))
        .map_err(|_| std::io::Error::other("the launcher thread is gone"))?;
    answer
        .await
        .map_err(|_| std::io::Error::other("the launcher thread is gone"))?
}

/// SIGKILLs and waits for the helper `pid` on the launcher thread; returns
/// at once.
pub fn reap(pid: u32) {
    if let Ok(queue) = queue() {
        let _ = queue.send(Job::Reap(pid));
    }
}

/// In a `pre_exec` hook: marks every descriptor from 3 up close-on-exec but
/// `keep`, so a helper inherits only what it is given (the host process may
/// hold descriptors it inherited without close-on-exec).
///
/// # Errors
/// The OS error of `close_range(2)` or `fcntl(2)`.
pub fn inherit_only(keep: &[std::os::fd::RawFd]) -> std::io::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags; fcntl
    // on descriptors the caller owns. Both are async-signal-safe.
    unsafe {
        if libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        for &fd in keep {
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}
