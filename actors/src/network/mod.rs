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
    /// The agent has a user namespace of its own, which the helper joins
    /// with its network namespace.
    pub user_namespace: bool,
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

/// The network namespace of one sandbox's agent, and its user namespace
/// when it has one, held open for the run: the helper joins them through
/// these descriptors (its own `/proc/self/fd/N`), never through the agent's
/// pid, which could name another process once the agent is gone — and
/// which the helper, without `CAP_SYS_PTRACE`, may not open anyway.
#[derive(Debug)]
pub struct Namespaces {
    /// `/proc/PID/ns/net`.
    pub net: std::os::fd::OwnedFd,
    /// `/proc/PID/ns/user`, if the agent has its own.
    pub user: Option<std::os::fd::OwnedFd>,
}

impl Namespaces {
    /// Opens the namespaces of the agent `agent_pid` (which waits for
    /// `Start`, so its pid names it).
    ///
    /// # Errors
    /// Why not, in words for a boot error.
    pub fn open(agent_pid: u32, user_namespace: bool) -> Result<Self, String> {
        let open = |kind: &str| {
            std::fs::File::open(format!("/proc/{agent_pid}/ns/{kind}"))
                .map(std::os::fd::OwnedFd::from)
                .map_err(|e| format!("cannot open the sandbox's {kind} namespace: {e}"))
        };
        let namespaces = Self {
            net: open("net")?,
            user: if user_namespace {
                Some(open("user")?)
            } else {
                None
            },
        };
        // An agent gone before this, its pid taken by a host process, would
        // hand over the host's own namespaces: never attach to those.
        let ours = |kind: &str, fd: &std::os::fd::OwnedFd| {
            let inode = |meta: std::fs::Metadata| (meta.dev(), meta.ino());
            let theirs = std::fs::File::from(fd.try_clone().ok()?)
                .metadata()
                .ok()
                .map(inode);
            let host = std::fs::metadata(format!("/proc/self/ns/{kind}"))
                .ok()
                .map(inode);
            Some(theirs == host)
        };
        let shared = ours("net", &namespaces.net) != Some(false)
            || namespaces
                .user
                .as_ref()
                .is_some_and(|user| ours("user", user) != Some(false));
        if shared {
            return Err("the sandbox's namespaces are the host's own (its agent is gone)".into());
        }
        Ok(namespaces)
    }
}
