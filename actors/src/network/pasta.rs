//! The user-mode network stack of a private network: one `pasta` process
//! (Debian's `passt`) per sandbox, attached to the agent's network
//! namespace.
//!
//! # Contract
//! - [`Pasta::start`] answers once the sandbox's interface is configured
//!   (address [`SANDBOX_ADDRESS`], gateway [`HOST_ADDRESS`] mapped to the
//!   host's loopback, routes, `lo`) and the published ports are bound on the
//!   host, or with why not; nothing is left running on failure.
//! - `pasta` runs in the foreground as a child of this process forked by the
//!   launcher (`crate::host::launcher`; it dies with this process), as root
//!   (joining the sandbox's namespaces needs it; `pasta` keeps only
//!   `CAP_NET_BIND_SERVICE` and `CAP_SYS_ADMIN` and confines itself with
//!   seccomp and namespaces of its own), IPv4 only, with no forwarding from
//!   the sandbox to the host's ports (`-T none -U none`): the host is reached
//!   only through the gateway address, which the egress rules deny unless
//!   allowed.
//! - Dropping a [`Pasta`] kills it.
//!
//! Readiness: `pasta` writes its pid to its pid file once the namespace is
//! configured; the pid file is a FIFO this side reads.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::{
    find_program, Namespaces, NetworkPlan, Protocol, DNS_ADDRESS, HOST_ADDRESS, PREFIX_LEN,
    SANDBOX_ADDRESS,
};
use crate::host::launcher;
use crate::host::pidfd::Pidfd;

/// How long `pasta` may take to configure the namespace.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of `pasta`'s own messages quoted in an error.
const LOG_TAIL: u64 = 2048;

/// A running `pasta`.
#[derive(Debug)]
pub struct Pasta {
    pidfd: Arc<Pidfd>,
}

impl Pasta {
    /// Starts `pasta` for the sandbox's `namespaces` as `plan` says, and
    /// waits until it is ready.
    ///
    /// # Errors
    /// Why the network could not be built, in words for a boot error: no
    /// `pasta` installed, it exited (with the tail of its log: a published
    /// port already taken, a host without a default route), or it was not
    /// ready within [`READY_TIMEOUT`].
    pub async fn start(plan: &NetworkPlan, namespaces: &Namespaces) -> Result<Self, String> {
        let program = find_program("pasta")
            .ok_or("pasta is not installed (Debian's passt package provides it)")?;
        std::fs::create_dir_all(&plan.dir)
            .map_err(|e| format!("cannot create {}: {e}", plan.dir.display()))?;
        let fifo = plan.dir.join("ready");
        let log = plan.dir.join("pasta.log");
        let _ = std::fs::remove_file(&fifo);
        nix::unistd::mkfifo(
            &fifo,
            nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
        )
        .map_err(|e| format!("cannot create {}: {e}", fifo.display()))?;
        // Read-write, so the FIFO never reads as ended before pasta opens it.
        let mut ready = tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&fifo)
            .map_err(|e| format!("cannot open {}: {e}", fifo.display()))?;
        let stderr = std::fs::File::create(&log)
            .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let net = namespaces.net.as_raw_fd();
        let user = namespaces.user.as_raw_fd();
        let mut command = Command::new(program);
        // SAFETY: `inherit_only` is async-signal-safe; the descriptors are
        // borrowed from `namespaces` for the whole call, open at the fork.
        unsafe {
            command.pre_exec(move || {
                // Inherited by pasta, which opens them as /proc/self/fd/N;
                // nothing else is.
                launcher::inherit_only(&[net, user])
            });
        }
        command
            .args(arguments(plan, net, user, &fifo))
            .env_clear()
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let pid = launcher::launch(command)
            .await
            .map_err(|e| format!("cannot start pasta: {e}"))?;
        let pidfd = match Pidfd::open(pid) {
            Ok(pidfd) => pidfd,
            Err(err) => {
                launcher::reap(pid);
                return Err(format!("cannot watch pasta: {err}"));
            }
        };
        let pasta = Self {
            pidfd: Arc::new(pidfd),
        };
        let mut line = Vec::new();
        let outcome = tokio::time::timeout(READY_TIMEOUT, async {
            tokio::select! {
                read = read_line(&mut ready, &mut line) => read.map_err(|e| format!("cannot read pasta's pid file: {e}")),
                () = pasta.pidfd.exited() => Err(format!("pasta exited: {}", log_tail(&log))),
            }
        })
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "pasta did not configure the network within {READY_TIMEOUT:?}: {}",
                log_tail(&log)
            ))
        });
        let _ = std::fs::remove_file(&fifo);
        outcome.map(|()| pasta)
    }

    /// The host pid of `pasta`.
    pub fn pid(&self) -> u32 {
        self.pidfd.pid()
    }

    /// Its pidfd, to wait for its exit from another task.
    pub fn pidfd(&self) -> Arc<Pidfd> {
        self.pidfd.clone()
    }
}

impl Drop for Pasta {
    fn drop(&mut self) {
        launcher::reap(self.pidfd.pid());
    }
}

/// Reads up to the end of the first line.
async fn read_line(
    from: &mut tokio::net::unix::pipe::Receiver,
    line: &mut Vec<u8>,
) -> std::io::Result<()> {
    let mut buf = [0u8; 64];
    while !line.contains(&b'\n') {
        let read = from.read(&mut buf).await?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        line.extend_from_slice(&buf[..read]);
    }
    Ok(())
}

/// The end of `pasta`'s log, for an error message.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read(log).unwrap_or_default();
    let from = text.len().saturating_sub(LOG_TAIL as usize);
    let tail = String::from_utf8_lossy(&text[from..]);
    let tail: Vec<&str> = tail
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("Failed to send"))
        .collect();
    if tail.is_empty() {
        "it printed nothing".into()
    } else {
        tail.join("; ")
    }
}

/// `pasta`'s command line for `plan` (see the module docs).
fn arguments(plan: &NetworkPlan, net: RawFd, user: RawFd, fifo: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "--runas",
        "0:0",
        "--foreground",
        "--quiet",
        "--ipv4-only",
        "--config-net",
        "--address",
        &SANDBOX_ADDRESS.to_string(),
        "--netmask",
        &PREFIX_LEN.to_string(),
        "--gateway",
        &HOST_ADDRESS.to_string(),
        "--tcp-ns",
        "none",
        "--udp-ns",
        "none",
    ]
    .map(OsString::from)
    .to_vec();
    if plan.dns.is_empty() {
        args.extend(["--dns-forward".into(), DNS_ADDRESS.to_string().into()]);
    }
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        let flag = match protocol {
            Protocol::Tcp => "--tcp-ports",
            Protocol::Udp => "--udp-ports",
        };
        let specs: Vec<String> = plan
            .publish
            .iter()
            .filter(|publish| publish.protocol == protocol)
            .map(|publish| format!("{}/{}:{}", publish.host_ip, publish.host_port, publish.port))
            .collect();
        if specs.is_empty() {
            args.extend([flag.into(), "none".into()]);
        }
        for spec in specs {
            args.extend([flag.into(), spec.into()]);
        }
    }
    args.extend(["--pid".into(), fifo.into()]);
    args.extend(["--userns".into(), format!("/proc/self/fd/{user}").into()]);
    args.extend(["--netns".into(), format!("/proc/self/fd/{net}").into()]);
    // The namespace is not bound to a file: nothing to watch.
    args.push("--no-netns-quit".into());
    args
}
