//! Attaching a local terminal to a terminal session.
//!
//! [`RawTerminal`] puts a local terminal in raw mode (every key goes to the
//! session as typed, Ctrl-C included) and restores the saved settings when it
//! is dropped — on return, on error and on panic (unwinding drops it).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg, Termios};

use crate::error::{Error, Result};

/// A terminal in raw mode until dropped. See the module docs.
#[derive(Debug)]
pub struct RawTerminal {
    fd: RawFd,
    saved: Termios,
}

impl RawTerminal {
    /// Switches the terminal on `fd` to raw mode. `fd` must stay open for the
    /// guard's life (it is usually standard input).
    ///
    /// # Errors
    /// [`Error::Io`] (path `terminal`) if `fd` is not a terminal or its
    /// settings cannot be read or changed.
    pub fn enable(fd: impl AsFd) -> Result<Self> {
        let fd = fd.as_fd();
        let saved = tcgetattr(fd).map_err(|errno| Error::Io {
            path: "terminal".into(),
            source: errno.into(),
        })?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(fd, SetArg::TCSANOW, &raw).map_err(|errno| Error::Io {
            path: "terminal".into(),
            source: errno.into(),
        })?;
        Ok(Self {
            fd: fd.as_raw_fd(),
            saved,
        })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: the caller keeps the descriptor open for the guard's life.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        // Nothing more can be done if the terminal went away meanwhile.
        let _ = tcsetattr(fd, SetArg::TCSANOW, &self.saved);
    }
}
