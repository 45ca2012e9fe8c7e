//! The local end of an attached session: stdin and the terminal.

use std::io::IsTerminal;
use std::os::fd::AsRawFd;

use sandvisor::attach::RawTerminal;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

/// What this process's stdin gave.
pub(crate) enum Input {
    /// Bytes read.
    Data(Vec<u8>),
    /// End of input: the session's stdin is to be closed.
    End,
}

/// Reads this process's stdin on a task. A read error is not end of input
/// (on a terminal, closing sends the session an end-of-file): the channel
/// just closes, and the session's stdin stays open.
pub(crate) fn stdin_chunks() -> mpsc::Receiver<Input> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stdin.read(&mut buf).await {
                Ok(0) => {
                    let _ = tx.send(Input::End).await;
                    return;
                }
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => {
                    tracing::warn!(%err, "reading stdin failed; no more input is sent");
                    return;
                }
                Ok(n) => {
                    if tx.send(Input::Data(buf[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// Raw mode on the local terminal for a `-t` session, if stdin is one;
/// restored when dropped.
pub(crate) fn raw_terminal(tty: bool) -> sandvisor::Result<Option<RawTerminal>> {
    if tty && std::io::stdin().is_terminal() {
        RawTerminal::enable(std::io::stdin()).map(Some)
    } else {
        Ok(None)
    }
}

/// The local terminal's size (rows, columns), if stdout or stdin is one.
pub(crate) fn terminal_size() -> Option<(u16, u16)> {
    [std::io::stdout().as_raw_fd(), std::io::stdin().as_raw_fd()]
        .into_iter()
        .find_map(|fd| {
            let mut size = libc::winsize {
                ws_row: 0,
                ws_col: 0,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            // SAFETY: TIOCGWINSZ fills the winsize it is given.
            let ok = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut size) } == 0;
            (ok && size.ws_row > 0 && size.ws_col > 0).then_some((size.ws_row, size.ws_col))
        })
}
