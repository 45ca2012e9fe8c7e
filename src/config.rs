//! Sandbox configuration: what users write, stored as JSON in the `sandbox` row.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::home::validate_name;

/// `PATH` given to the sandbox when its config sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Time between the stop signal and SIGKILL.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `stop_timeout` and `kill_timeout` (and a stop or drain
/// timeout given over the control socket) may be: 365 days. Longer cannot be
/// meant, and would overflow the supervisor's clock arithmetic.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// Time allowed after SIGKILL.
pub const DEFAULT_KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// Metrics sampling period.
pub const DEFAULT_METRICS_INTERVAL: Duration = Duration::from_secs(1);
/// `exec.log` rotation size.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// Rotated `exec.log` files kept.
pub const DEFAULT_LOG_KEEP: usize = 4;
/// Most bytes of command, arguments and environment together (the kernel's
/// own limit is of the same order, and the agent protocol carries them).
pub const MAX_COMMAND_BYTES: usize = 1 << 20;

/// Which namespaces a sandbox gets. All on by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Isolation {
    /// Own pid namespace: the agent is PID 1, `ps` shows only the sandbox.
    pub pid: bool,
    /// Own mount namespace (and a fresh `/proc`).
    pub mount: bool,
    /// Own network namespace: only `lo`.
    pub net: bool,
    /// Own hostname (the sandbox's name).
    pub uts: bool,
    /// Own System V IPC and POSIX message queues.
    pub ipc: bool,
}

impl Default for Isolation {
    fn default() -> Self {
        Self {
            pid: true,
            mount: true,
            net: true,
            uts: true,
            ipc: true,
        }
    }
}

/// How `exec.log` rotates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    /// Rotate before `exec.log` would pass this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept (`exec.log.1` … `exec.log.{keep}`).
    pub keep: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_LOG_MAX_BYTES,
            keep: DEFAULT_LOG_KEEP,
        }
    }
}

/// Everything about one sandbox that outlives a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SandboxConfig {
    /// Unique name (SPEC §1 rules).
    pub name: String,
    /// The main command (session 1). A bare name is looked up in `PATH`.
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its environment; nothing is inherited from the host. `PATH` defaults
    /// to [`DEFAULT_PATH`].
    pub env: BTreeMap<String, String>,
    /// Working directory inside the sandbox (absolute).
    pub working_dir: Option<String>,
    /// Namespaces.
    pub isolation: Isolation,
    /// A directory to use as `/` (needs the mount namespace).
    pub rootfs: Option<PathBuf>,
    /// Memory limit in bytes.
    pub memory_limit: Option<u64>,
    /// Limit on the number of processes.
    pub pids_limit: Option<u64>,
    /// Signal sent to every process on stop (default SIGTERM).
    pub stop_signal: i32,
    /// Time between the stop signal and SIGKILL.
    pub stop_timeout: Duration,
    /// Time allowed after SIGKILL before the run is declared lost.
    pub kill_timeout: Duration,
    /// `exec.log` rotation.
    pub log: LogConfig,
    /// Metrics sampling period; `None` disables metrics.
    pub metrics_interval: Option<Duration>,
    /// Keep the main command's stdin open for [`crate::Sandbox::write_stdin`]
    /// (else it reads `/dev/null`).
    pub stdin: bool,
    /// Run the main command on a pseudo-terminal inside the sandbox (its
    /// output is then the merged `output` source; size it with
    /// [`crate::Sandbox::resize`]).
    pub tty: bool,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            command: String::new(),
            args: Vec::new(),
            env: BTreeMap::new(),
            working_dir: None,
            isolation: Isolation::default(),
            rootfs: None,
            memory_limit: None,
            pids_limit: None,
            stop_signal: libc::SIGTERM,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            kill_timeout: DEFAULT_KILL_TIMEOUT,
            log: LogConfig::default(),
            metrics_interval: Some(DEFAULT_METRICS_INTERVAL),
            stdin: false,
            tty: false,
        }
    }
}

impl SandboxConfig {
    /// A sandbox named `name` running `command` with the defaults.
    pub fn new(name: impl Into<String>, command: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            command: command.into(),
            ..Self::default()
        }
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// A sandbox running `sh -c script`.
    pub fn shell(name: impl Into<String>, script: impl Into<String>) -> Self {
        Self::new(name, "sh").args(["-c".to_string(), script.into()])
    }

    /// The environment the main command gets.
    pub fn effective_env(&self) -> Vec<(String, String)> {
        let mut env = self.env.clone();
        env.entry("PATH".into())
            .or_insert_with(|| DEFAULT_PATH.into());
        env.into_iter().collect()
    }

    /// Checks every field; the error names the first bad one.
    ///
    /// # Errors
    /// [`Error::InvalidName`] for a bad name; [`Error::InvalidConfig`]
    /// naming the first other field that cannot work.
    pub fn validate(&self) -> Result<()> {
        validate_name(&self.name)?;
        let bad = |field: &str, reason: String| Error::InvalidConfig {
            field: field.to_string(),
            reason,
        };
        if self.command.is_empty() {
            return Err(bad("command", "is empty".into()));
        }
        if self.command.contains('\0') {
            return Err(bad("command", "contains a NUL byte".into()));
        }
        if let Some(i) = self.args.iter().position(|a| a.contains('\0')) {
            return Err(bad(&format!("args[{i}]"), "contains a NUL byte".into()));
        }
        for (key, value) in &self.env {
            if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
                return Err(bad(
                    &format!("env.{key}"),
                    "keys must be non-empty without '=' or NUL; values without NUL".into(),
                ));
            }
        }
        let size = self.command.len()
            + self.args.iter().map(String::len).sum::<usize>()
            + self
                .env
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        if size > MAX_COMMAND_BYTES {
            return Err(bad("args", format!("command, arguments and environment take {size} bytes; at most {MAX_COMMAND_BYTES}")));
        }
        if let Some(dir) = &self.working_dir {
            if !dir.starts_with('/') || dir.contains('\0') {
                return Err(bad(
                    "working_dir",
                    format!("{dir:?} is not an absolute path"),
                ));
            }
        }
        if let Some(rootfs) = &self.rootfs {
            if !self.isolation.mount {
                return Err(bad(
                    "rootfs",
                    "needs the mount namespace (isolation.mount)".into(),
                ));
            }
            if !rootfs.is_absolute() || !rootfs.is_dir() {
                return Err(bad(
                    "rootfs",
                    format!("{} is not an existing absolute directory", rootfs.display()),
                ));
            }
        }
        if nix::sys::signal::Signal::try_from(self.stop_signal).is_err() {
            return Err(bad(
                "stop_signal",
                format!("{} is not a signal number", self.stop_signal),
            ));
        }
        if self.kill_timeout.is_zero() {
            return Err(bad("kill_timeout", "must be more than zero".into()));
        }
        for (field, timeout) in [
            ("stop_timeout", self.stop_timeout),
            ("kill_timeout", self.kill_timeout),
        ] {
            if timeout > MAX_TIMEOUT {
                return Err(bad(field, format!("{timeout:?} is longer than 365 days")));
            }
        }
        if self.log.max_bytes < 1024 {
            return Err(bad(
                "log.max_bytes",
                format!("{} is below the minimum of 1024", self.log.max_bytes),
            ));
        }
        if !(1..=64).contains(&self.log.keep) {
            return Err(bad(
                "log.keep",
                format!("{} is outside 1..=64", self.log.keep),
            ));
        }
        if self.memory_limit.is_some_and(|m| m < 1 << 20) {
            return Err(bad("memory_limit", "must be at least 1 MiB".into()));
        }
        if self.pids_limit == Some(0) {
            return Err(bad("pids_limit", "must be at least 1".into()));
        }
        if self
            .metrics_interval
            .is_some_and(|i| i < Duration::from_millis(10))
        {
            return Err(bad("metrics_interval", "must be at least 10 ms".into()));
        }
        self.resolve_command().map(|_| ()).ok_or_else(|| {
            bad(
                "command",
                format!("{} not found in the sandbox's PATH", self.command),
            )
        })
    }

    /// Where the main command is, as seen from inside the sandbox.
    fn resolve_command(&self) -> Option<PathBuf> {
        let root = self.rootfs.as_deref().unwrap_or(Path::new("/"));
        let inside = |path: &Path| root.join(path.strip_prefix("/").unwrap_or(path));
        let is_executable = |path: &Path| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(path)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        };
        if self.command.contains('/') {
            let path = Path::new(&self.command);
            let host_path = if path.is_absolute() {
                inside(path)
            } else {
                let cwd = Path::new(self.working_dir.as_deref().unwrap_or("/"));
                inside(&cwd.join(path))
            };
            return is_executable(&host_path).then(|| path.to_path_buf());
        }
        let env = self.effective_env();
        let path_var = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_str())
            .unwrap_or(DEFAULT_PATH);
        path_var
            .split(':')
            .filter(|dir| dir.starts_with('/'))
            .map(|dir| Path::new(dir).join(&self.command))
            .find(|candidate| is_executable(&inside(candidate)))
    }
}
