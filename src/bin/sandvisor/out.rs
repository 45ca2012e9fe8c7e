//! Everything the CLI prints goes through here, so that a closed stdout
//! (`sandvisor ps | true`, `| head -1`) never panics.
//!
//! `println!` panics on a write error, which ended verbs with exit code 101
//! after their work was done (`run -d … | true` had created the sandbox).
//! Here a closed stdout (EPIPE; SIGPIPE is ignored in Rust programs) is
//! remembered, not an error: later lines are dropped and the verb ends with
//! its own exit code. Verbs that only stream output ([`write_output`]) stop
//! at it instead, as nothing is left for them to do; `main` ends those with
//! success. Any other write error (a full disk under `> file`) is the verb's
//! error. Diagnostics on stderr are best-effort: nowhere else to report.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use sandvisor::logs::LogSource;
use sandvisor::{Error, Result};

/// Set once a write found stdout closed.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Prints one line on stdout (see the module doc for a closed stdout).
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::out::line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

/// Prints one line on stderr, ignoring failure.
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::out::err_line(format_args!($($arg)*))
    };
}
pub(crate) use errln;

/// `text` and a newline on stdout, unless stdout was found closed.
///
/// # Errors
/// [`Error::Io`] when writing fails otherwise than by a closed stdout.
pub(crate) fn line(text: std::fmt::Arguments<'_>) -> Result<()> {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(text)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    match written {
        Err(err) if closed(&err) => Ok(()),
        Err(source) => Err(Error::Io {
            path: "stdout".into(),
            source,
        }),
        Ok(()) => Ok(()),
    }
}

/// Whether a write found stdout closed.
pub(crate) fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(Ordering::Relaxed)
}

/// `text` and a newline on stderr; a failure has nowhere to be reported.
pub(crate) fn err_line(text: std::fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(text).and_then(|()| err.write_all(b"\n"));
}

/// Whether `err` says stdout is closed; remembers it if so.
fn closed(err: &std::io::Error) -> bool {
    let closed = err.kind() == std::io::ErrorKind::BrokenPipe;
    if closed {
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
    }
    closed
}

/// Writes captured output where it came from: stderr to stderr, the rest to
/// stdout, on the calling thread: a hand-off to a blocking thread per write
/// (tokio's stdout) cost more than the write, which made printing a long log
/// with alternating stdout and stderr entries take seconds. A full pipe
/// blocks the caller, which is the back-pressure wanted.
///
/// # Errors
/// The write's error, a closed stdout included (the stream has no reader
/// left: the caller stops; `main` ends with success).
pub(crate) fn write_output(source: LogSource, data: &[u8]) -> std::io::Result<()> {
    let written = if source == LogSource::Stderr {
        let mut err = std::io::stderr().lock();
        err.write_all(data).and_then(|()| err.flush())
    } else {
        let mut out = std::io::stdout().lock();
        out.write_all(data).and_then(|()| out.flush())
    };
    if let (Err(err), false) = (&written, source == LogSource::Stderr) {
        closed(err);
    }
    written
}
