//! A sandbox's network: what users ask for ([`Network`]) and how the engine
//! builds it.
//!
//! - [`Network::None`] (the default): the sandbox's own network namespace with
//!   only `lo`.
//! - [`Network::Host`]: the host's network namespace (an unsafe opt-in).
//! - [`Network::Private`]: the sandbox's own namespace joined to the host by a
//!   user-mode network stack (`pasta`, [`pasta`]), with published ports and
//!   an egress policy ([`egress`]) that denies the host, loopback, link-local
//!   and private ranges unless a rule allows them.
//!
//! # Addresses inside a private network
//! The sandbox is [`SANDBOX_ADDRESS`] on a /24 whose gateway,
//! [`HOST_ADDRESS`], is the host's loopback (`pasta` maps connections to the
//! gateway to the host's `127.0.0.1`); DNS queries to [`DNS_ADDRESS`] go to
//! the host's resolver. Only IPv4 is provided.

pub mod egress;
pub mod pasta;
pub mod spec;

pub use spec::{Action, Network, PortRange, Protocol, Publish, Rule};

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// The sandbox's own address in a private network.
pub const SANDBOX_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// The gateway of a private network: the host's loopback, seen from inside.
pub const HOST_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// The DNS forwarder of a private network (to the host's resolver).
pub const DNS_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
/// The prefix length of the private network.
pub const PREFIX_LEN: u8 = 24;

/// The private network of one run, as the runtime resolved it from the
/// sandbox's config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPlan {
    /// Host ports forwarded into the sandbox.
    pub publish: Vec<Publish>,
    /// The config's egress rules, in order (the defaults follow them).
    pub egress: Vec<Rule>,
    /// DNS servers the config names; empty: the forwarder at
    /// [`DNS_ADDRESS`], which is then always allowed.
    pub dns: Vec<IpAddr>,
    /// The helper's own files (its readiness FIFO, its log):
    /// `<home>/sandboxes/<name>/net`.
    pub dir: PathBuf,
}

/// A program this module runs, looked up in `PATH` and then in the system
/// directories a root `PATH` holds (`nft` lives in `/usr/sbin`).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The network and user namespaces of one sandbox's agent (a private
/// network always has its own user namespace), held open for the run: the
/// helper joins them through these descriptors (its own `/proc/self/fd/N`),
/// never through the agent's pid, which could name another process once the
/// agent is gone — and which the helper, without `CAP_SYS_PTRACE`, may not
/// open anyway.
#[derive(Debug)]
pub struct Namespaces {
    /// `/proc/PID/ns/net`.
    pub net: OwnedFd,
    /// `/proc/PID/ns/user`.
    pub user: OwnedFd,
}

impl Namespaces {
    /// Opens the namespaces of the agent `agent_pid` (which waits for
    /// `Start`, so its pid names it).
    ///
    /// # Errors
    /// Why not, in words for a boot error; namespaces that are the host's
    /// own (an agent gone before this, its pid taken by a host process) are
    /// refused.
    pub fn open(agent_pid: u32) -> Result<Self, String> {
        let open = |kind: &str| {
            let fd = std::fs::File::open(format!("/proc/{agent_pid}/ns/{kind}"))
                .map(OwnedFd::from)
                .map_err(|e| format!("cannot open the sandbox's {kind} namespace: {e}"))?;
            if is_hosts(kind, &fd) {
                return Err(format!(
                    "the sandbox's {kind} namespace is the host's own (its agent is gone)"
                ));
            }
            Ok(fd)
        };
        Ok(Self {
            net: open("net")?,
            user: open("user")?,
        })
    }
}

/// Whether `fd` is this process's own namespace of `kind` (or cannot be
/// told apart from it).
fn is_hosts(kind: &str, fd: &OwnedFd) -> bool {
    let identity = |meta: std::fs::Metadata| (meta.dev(), meta.ino());
    let theirs = fd
        .try_clone()
        .and_then(|fd| std::fs::File::from(fd).metadata())
        .map(identity);
    let ours = std::fs::metadata(format!("/proc/self/ns/{kind}")).map(identity);
    match (theirs, ours) {
        (Ok(theirs), Ok(ours)) => theirs == ours,
        _ => true,
    }
}
