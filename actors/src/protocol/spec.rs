//! What the host asks the agent to run, as carried by SAP's `Start` and
//! `Exec` frames (JSON), and whom a `Signal` frame is for.
//!
//! # Contract
//! The JSON of these types is the wire format: field names and their order
//! are part of it. A field added later needs `#[serde(default)]`, so an agent
//! and a host of different builds still understand each other.

use serde::{Deserialize, Serialize};

use super::files::FileOp;
use super::isolation::{Confinement, Ids};

/// A session's command and its standard streams: the same for the main
/// command (session 1) and for exec sessions. Flattened into [`StartSpec`]
/// and [`ExecSpec`], so its fields sit directly in their JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandSpec {
    /// Program (a bare name is looked up in `PATH` of `env`).
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its environment (nothing else is inherited).
    pub env: Vec<(String, String)>,
    /// Working directory inside the sandbox.
    pub cwd: Option<String>,
    /// Give it a stdin pipe fed by `Stdin` frames (else `/dev/null`).
    #[serde(default)]
    pub stdin: bool,
    /// Run it on a new pseudo-terminal (its output is then
    /// [`OutputStream::Output`](super::OutputStream::Output), merged).
    #[serde(default)]
    pub tty: bool,
    /// The terminal's size (0: 24 rows).
    #[serde(default)]
    pub rows: u16,
    /// The terminal's size (0: 80 columns).
    #[serde(default)]
    pub cols: u16,
    /// Run as this user and group inside the sandbox (`None`: root, or the
    /// sandbox's default user).
    #[serde(default)]
    pub user: Option<Ids>,
    /// Carry out this file operation instead of running `command` (see
    /// [`files`](super::files)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<FileOp>,
}

/// What the host asks the agent to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartSpec {
    /// The sandbox's name (also its hostname with a UTS namespace).
    pub name: String,
    /// The main command (session 1).
    #[serde(flatten)]
    pub run: CommandSpec,
    /// The agent is PID 1 of its own pid namespace (the host asked the
    /// spawner for one with the same setting).
    pub pid_namespace: bool,
    /// Unshare a mount namespace (the agent then mounts a fresh `/proc`).
    pub mount_namespace: bool,
    /// Unshare a network namespace (the agent brings `lo` up).
    pub net_namespace: bool,
    /// Unshare a UTS namespace (the agent sets the hostname).
    pub uts_namespace: bool,
    /// Unshare an IPC namespace.
    #[serde(default)]
    pub ipc_namespace: bool,
    /// Unshare a cgroup namespace (after the host moved the agent into the
    /// sandbox's cgroup, which becomes its root).
    #[serde(default)]
    pub cgroup_namespace: bool,
    /// What every session's process gets before exec; `None` for an
    /// unconfined sandbox.
    #[serde(default)]
    pub confine: Option<Confinement>,
}

/// Which processes a signal goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalTarget {
    /// The main command only.
    Main,
    /// Every process of the sandbox but the agent.
    All,
    /// An exec session's process group.
    Session(u64),
}

/// A command to run in the running sandbox as an exec session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSpec {
    /// Session id (2, 3, …; [`MAIN_SESSION`](super::MAIN_SESSION) is the
    /// main command).
    pub session: u64,
    /// What it runs.
    #[serde(flatten)]
    pub run: CommandSpec,
    /// Its output goes to `exec.log` (a user's session); `false` for a
    /// health check or a file operation, whose output only its caller
    /// reads. An adoptable agent keeps only logged output for a new host.
    #[serde(default = "logged_default")]
    pub logged: bool,
}

fn logged_default() -> bool {
    true
}
