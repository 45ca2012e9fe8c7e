//! File operations on a sandbox's root filesystem, as SAP carries them: a
//! [`FileOp`] rides in a session's [`CommandSpec`](super::CommandSpec)
//! (`files`) instead of a program to run.
//!
//! # Contract
//! - The agent forks a process for the operation inside the sandbox's mount
//!   namespace and root, confined exactly like a session (user,
//!   capabilities, `no_new_privs`, seccomp), and runs the operation there
//!   instead of `exec(2)`: a file operation can do nothing the sandbox's own
//!   code could not.
//! - Data flows as a session's: into the operation on its stdin (`Stdin`
//!   frames under the stdin window: a tar stream for [`FileOp::CopyIn`],
//!   the bytes for [`FileOp::Write`]), out of it on its stdout (`Output`
//!   frames: the tar stream of [`FileOp::CopyOut`], the bytes of
//!   [`FileOp::Read`]). Output of a file session is windowed too: the agent
//!   has at most [`FILE_OUTPUT_WINDOW`] bytes in flight that the host has
//!   not acknowledged with `OutputConsumed`, so a large copy out never sits
//!   in memory.
//! - Its stderr carries exactly one JSON [`FileResult`] at the end; its
//!   exit code is 0 for success, 1 for a failure.
//! - Paths are absolute paths inside the sandbox (a relative one is taken
//!   from `/`).

use serde::{Deserialize, Serialize};

/// Bytes of a file session's output the agent sends ahead of the host's
/// acknowledgements.
pub const FILE_OUTPUT_WINDOW: u64 = 4 << 20;

/// One file operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum FileOp {
    /// Unpack the tar stream on stdin at `dest` (an existing directory).
    CopyIn {
        /// Where, inside the sandbox.
        dest: String,
    },
    /// Write `path` as a tar stream on stdout: a file as one entry named by
    /// its basename, a directory as its top entry (docker cp's semantics);
    /// `DIR/.` as the directory's contents (entries named `./…`).
    CopyOut {
        /// What, inside the sandbox.
        path: String,
    },
    /// Write the contents of the file `path` on stdout.
    Read {
        /// The file.
        path: String,
    },
    /// Replace (or create) the file `path` with stdin, with `mode`.
    Write {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// The entries of the directory `path`.
    List {
        /// The directory.
        path: String,
    },
    /// What `path` is (a link is not followed).
    Stat {
        /// The path.
        path: String,
    },
    /// Remove `path` (a directory only if empty, unless `recursive`).
    Remove {
        /// The path.
        path: String,
        /// Remove a directory with its contents.
        recursive: bool,
    },
    /// Create the directory `path` (and missing parents with `parents`).
    Mkdir {
        /// The directory.
        path: String,
        /// Create missing parents; an existing directory is then no error.
        parents: bool,
    },
}

/// What kind of file an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// Anything else (device, fifo, socket).
    Other,
}

/// One file, as `stat` and `list` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStat {
    /// Its name (the last component of the path).
    pub name: String,
    /// What it is.
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits (and setuid, setgid, sticky).
    pub mode: u32,
    /// Last modification, seconds since the Unix epoch.
    pub mtime: i64,
}

/// What a successful operation answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileAnswer {
    /// Done (copies, write, remove, mkdir; the data went on stdout).
    Done,
    /// The answer of `stat`.
    Stat(FileStat),
    /// The answer of `list`, by name.
    List(Vec<FileStat>),
}

/// Why an operation failed, by kind, so the host can give a typed error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileFailureKind {
    /// The path (or a parent) does not exist.
    NotFound,
    /// A component that must be a directory is not one.
    NotADirectory,
    /// The path is a directory where a file was wanted (or a non-empty
    /// directory removed without `recursive`).
    IsADirectory,
    /// The path already exists.
    Exists,
    /// An archive entry or link would land outside its destination (`..`).
    Escapes,
    /// The archive is not a valid tar stream.
    BadArchive,
    /// Anything else (permission, read-only, disk full…).
    Other,
}

/// A failed operation: what, about which path, and the OS error if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileFailure {
    /// What kind of failure.
    pub kind: FileFailureKind,
    /// The path (inside the sandbox, or the archive entry) it is about.
    pub path: String,
    /// What happened.
    pub message: String,
}

/// The last thing a file session writes on its stderr.
pub type FileResult = Result<FileAnswer, FileFailure>;
