//! sandvisor's error type: one enum, variants named for what the caller did or hit.

use std::path::PathBuf;

use sandvisor_actors::LogCursor;

/// Everything the public API can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A sandbox name outside the rules (1–128 bytes; first ASCII alphanumeric;
    /// then ASCII alphanumerics, `.`, `-`, `_`).
    #[error("invalid sandbox name {0:?}: use 1-128 bytes, starting with an ASCII letter or digit, then letters, digits, '.', '-' or '_'")]
    InvalidName(String),
    /// No sandbox (no log directory) of this name.
    #[error("no such sandbox: {0}")]
    SandboxNotFound(String),
    /// The sandbox was removed while its logs were being followed.
    #[error("sandbox {0} was removed while its logs were being read")]
    SandboxRemoved(String),
    /// A cursor that does not parse or does not belong to this sandbox.
    #[error("invalid cursor: {0}")]
    InvalidCursor(String),
    /// The reader fell behind the retention window: the next file it needed
    /// was rotated away. Everything up to `stopped_at` was delivered.
    #[error("missed rotation in the logs of {name}: the reader fell behind log retention; resume with cursor {resume_from} to continue from the oldest retained entry")]
    MissedRotation {
        /// The sandbox.
        name: String,
        /// Everything before this was delivered.
        stopped_at: Box<LogCursor>,
        /// Continues with the oldest entry still on disk.
        resume_from: Box<LogCursor>,
    },
    /// A log reader kept failing and was given up on.
    #[error("reading the logs of {name} failed: {reason}")]
    LogReaderFailed {
        /// The sandbox.
        name: String,
        /// What failed.
        reason: String,
    },
    /// A file operation failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A configuration field that cannot work.
    #[error("invalid config: {field}: {reason}")]
    InvalidConfig {
        /// The field, e.g. `command` or `log.keep`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `create` with a name that is taken.
    #[error("sandbox {0} already exists")]
    SandboxExists(String),
    /// The operation needs a stopped sandbox (e.g. `remove`).
    #[error("sandbox {0} is still running: stop it first")]
    SandboxStillRunning(String),
    /// The sandbox is draining: it takes no new exec sessions.
    #[error("sandbox {0} is draining: no new exec sessions")]
    SandboxDraining(String),
    /// An exec session's command could not start inside the sandbox.
    #[error("exec in {sandbox} failed: {message} (errno {errno})")]
    ExecFailed {
        /// The sandbox.
        sandbox: String,
        /// OS error number.
        errno: i32,
        /// What happened.
        message: String,
        /// `exec(2)` of the command itself failed, and `errno` is its error
        /// (`ENOENT`: not found; anything else: not executable). `false`
        /// when the session failed before (its working directory, its
        /// confinement).
        exec_failed: bool,
    },
    /// The command is not in the sandbox (by its path, or in its `PATH`);
    /// found when the sandbox is created. The CLI exits 127, as shells do.
    #[error("command not found: {command}")]
    CommandNotFound {
        /// The command as given.
        command: String,
    },
    /// The command is in the sandbox but cannot be executed (no execute
    /// permission, or a directory); found when the sandbox is created. The
    /// CLI exits 126, as shells do.
    #[error("{reason}: {command}")]
    CommandNotExecutable {
        /// The command as given.
        command: String,
        /// `permission denied` or `cannot execute`.
        reason: String,
    },
    /// A window size for a session that has no terminal.
    #[error("session {session} of {sandbox} has no terminal")]
    NotATerminal {
        /// The sandbox.
        sandbox: String,
        /// Session id.
        session: u64,
    },
    /// Stdin of a session that has no stdin, closed it, or has exited.
    #[error("session {session} of {sandbox} takes no more input")]
    SessionClosed {
        /// The sandbox.
        sandbox: String,
        /// Session id.
        session: u64,
    },
    /// The sandbox's `metrics_interval` is `None`.
    #[error("metrics are disabled for sandbox {0} (its metrics_interval is None)")]
    MetricsDisabled(String),
    /// A live change of resource limits was refused by the host (the run
    /// has no cgroup for it, or the kernel refused a value); nothing changed.
    #[error("cannot update sandbox {name}: {reason}")]
    UpdateRefused {
        /// The sandbox.
        name: String,
        /// Why.
        reason: String,
    },
    /// A port the sandbox publishes is taken on the host (by another
    /// sandbox or any other program); nothing was started.
    #[error("cannot publish {address}/{protocol} for sandbox {name}: the port is already in use on the host")]
    PortInUse {
        /// The sandbox.
        name: String,
        /// The host address and port (`127.0.0.1:8080`).
        address: std::net::SocketAddr,
        /// `tcp` or `udp`.
        protocol: String,
    },
    /// The operation needs a running (or, for resume, paused) sandbox.
    #[error("sandbox {0} is not running")]
    SandboxNotRunning(String),
    /// No image of this name or id is stored (pull or load it first).
    #[error("no such image: {0}; hint: sandvisor image pull {0}, or image load")]
    ImageNotFound(String),
    /// The image is used by a sandbox (remove the sandbox first).
    #[error("image {0} is used by a sandbox; remove the sandboxes created from it first")]
    ImageInUse(String),
    /// A registry could not be reached, refused the request or does not have
    /// the image.
    #[error("registry error for {reference}: {message}")]
    Registry {
        /// The image reference asked for.
        reference: String,
        /// What the registry (or the connection to it) said.
        message: String,
    },
    /// Image content did not match its digest or could not be read: nothing
    /// of it was stored.
    #[error("image content {digest} is corrupt: {message}")]
    ImageCorrupt {
        /// The digest of the blob (or the archive) at fault.
        digest: String,
        /// What was wrong.
        message: String,
    },
    /// A snapshot was asked of a sandbox that is running (or starting,
    /// paused, draining): stop it first.
    #[error("sandbox {0} is running; snapshots are taken of stopped sandboxes (stop it first)")]
    SnapshotSandboxRunning(String),
    /// No snapshot of this name is stored.
    #[error("no such snapshot: {0}")]
    SnapshotNotFound(String),
    /// A snapshot of this name is stored already.
    #[error("snapshot {0} exists already")]
    SnapshotExists(String),
    /// A snapshot archive is not sound: nothing of it was used.
    #[error("snapshot archive {path} is corrupt: {message}")]
    SnapshotCorrupt {
        /// The archive.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// The sandbox runs, but in another sandvisor process; this runtime cannot
    /// act on it directly.
    #[error("sandbox {0} is running in another sandvisor process")]
    SandboxNotHosted(String),
    /// The sandbox failed before it was ready (also recorded in `boot-error.json`).
    #[error("sandbox failed to start at stage {stage}: {message} (errno {errno}); hint: {hint}")]
    BootFailed {
        /// `mount`, `build_vm`, `config`, `network`, `image` or `other`.
        stage: String,
        /// The OS error number, 0 if none.
        errno: i32,
        /// What happened.
        message: String,
        /// What to check.
        hint: String,
        /// `exec(2)` of the main command failed, and `errno` is its error
        /// (`ENOENT`: not found; anything else: not executable). `false`
        /// for every failure before it (the working directory included).
        exec_failed: bool,
    },
    /// A path inside a sandbox does not exist (or a parent of it).
    #[error("{sandbox}: no such file or directory: {path}")]
    FileNotFound {
        /// The sandbox.
        sandbox: String,
        /// The path inside it.
        path: String,
    },
    /// A path inside a sandbox that must be a directory is not one.
    #[error("{sandbox}: not a directory: {path}")]
    NotADirectory {
        /// The sandbox.
        sandbox: String,
        /// The path inside it.
        path: String,
    },
    /// A directory inside a sandbox where a file was wanted, or a
    /// non-empty one removed without `recursive`.
    #[error("{sandbox}: is a directory (or not empty): {path}")]
    IsADirectory {
        /// The sandbox.
        sandbox: String,
        /// The path inside it.
        path: String,
    },
    /// A path inside a sandbox exists already.
    #[error("{sandbox}: already exists: {path}")]
    FileExists {
        /// The sandbox.
        sandbox: String,
        /// The path inside it.
        path: String,
    },
    /// An archive entry (or a link in one) would land outside its
    /// destination: refused, nothing written for it.
    #[error("{sandbox}: archive entry {path} escapes the destination: {reason}")]
    PathEscapes {
        /// The sandbox.
        sandbox: String,
        /// The entry's name in the archive.
        path: String,
        /// Why.
        reason: String,
    },
    /// A tar stream given to `copy_in` does not parse.
    #[error("{sandbox}: not a valid tar archive: {message}")]
    BadArchive {
        /// The sandbox.
        sandbox: String,
        /// What the parser said.
        message: String,
    },
    /// Any other failure of a file operation (permission, read-only file
    /// system, full disk…).
    #[error("{sandbox}: {path}: {message}")]
    FileOperationFailed {
        /// The sandbox.
        sandbox: String,
        /// The path inside it.
        path: String,
        /// What happened.
        message: String,
    },
    /// The runtime hosting a sandbox did not answer on its control socket.
    #[error("cannot reach the sandvisor process on control socket {socket}: {reason}; hint: is the process that runs the sandbox alive, and are you its user?")]
    ControlUnreachable {
        /// The socket.
        socket: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A call to a control socket that waits (for a sandbox to start, to
    /// end, for an exec session to begin) got no answer in its bounded
    /// time: the host accepted it but is wedged, or overloaded.
    #[error("the sandvisor process on control socket {socket} did not answer {call} within {after:?}; hint: is it wedged? its sandboxes may still run")]
    ControlTimedOut {
        /// The socket.
        socket: PathBuf,
        /// The call (`POST /v1/sandboxes/NAME/stop`, …).
        call: String,
        /// How long the client waited.
        after: std::time::Duration,
    },
    /// `run -d` started `sandvisor serve` for the home and it did not come
    /// up.
    #[error("the sandvisor daemon could not start: {reason}; its log: {log}")]
    DaemonNotStarted {
        /// Why, as the daemon said (or what was seen of it).
        reason: String,
        /// The daemon's log file.
        log: PathBuf,
    },
    /// Another live runtime listens on this control socket.
    #[error("control socket {socket} is in use by another sandvisor process")]
    ControlSocketInUse {
        /// The socket.
        socket: PathBuf,
    },
    /// The SQLite store failed.
    #[error("database error: {0}")]
    Database(String),
    /// The database is missing, truncated or damaged while the home holds
    /// sandboxes: opening it would show an empty home that is not empty.
    #[error("the sandvisor database {path} is missing or damaged: {reason}; hint: restore it, or move the home's sandboxes/ directory aside to start with an empty home")]
    DatabaseDamaged {
        /// The database file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A stored row that does not parse (an unknown status, a config that is
    /// not valid JSON); the other rows are unaffected.
    #[error("the stored row of sandbox {name} does not parse: {reason}")]
    BadRow {
        /// The sandbox.
        name: String,
        /// What does not parse.
        reason: String,
    },
    /// Neither `SANDVISOR_HOME` nor `HOME` is set.
    #[error("no sandvisor home: set SANDVISOR_HOME (or HOME)")]
    NoHome,
    /// An actor failed in a way the caller cannot fix.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Converts an engine error for the sandbox `name`.
    pub(crate) fn from_engine(name: &str, err: sandvisor_actors::Error) -> Self {
        use sandvisor_actors::Error as E;
        match err {
            E::Io { path, source } => Self::Io { path, source },
            E::LogDirMissing(_) => Self::SandboxNotFound(name.to_string()),
            E::LogDirRemoved(_) => Self::SandboxRemoved(name.to_string()),
            E::InvalidCursor(why) => Self::InvalidCursor(why),
            E::MissedRotation {
                stopped_at,
                resume_from,
            } => Self::MissedRotation {
                name: name.to_string(),
                stopped_at,
                resume_from,
            },
            err @ E::ReaderGaveUp { .. } => Self::LogReaderFailed {
                name: name.to_string(),
                reason: err.to_string(),
            },
            E::Actor(why) => Self::Internal(why),
        }
    }
}

/// sandvisor's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
