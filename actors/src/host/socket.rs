//! Connecting to a unix socket whose path may be longer than a socket
//! address holds (`sun_path` is 108 bytes; a home can be deeper): the
//! socket is reached through a descriptor of its directory,
//! `/proc/self/fd/<dir>/<name>`.

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

/// Connects to the unix socket at `path` within `limit`.
///
/// # Errors
/// The OS error of opening its directory or of `connect(2)`;
/// [`io::ErrorKind::TimedOut`] past `limit` (a listener whose backlog is
/// full).
pub async fn connect(path: &Path, limit: Duration) -> io::Result<tokio::net::UnixStream> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    let dir = nix::fcntl::open(
        dir,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    let through = Path::new("/proc/self/fd")
        .join(dir.as_raw_fd().to_string())
        .join(name);
    // `dir` stays open until the connection is made.
    let connected = tokio::time::timeout(limit, tokio::net::UnixStream::connect(through)).await;
    drop(dir);
    connected.map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_socket_deeper_than_sun_path_is_reached() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("d".repeat(120));
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("agent.sock");
        assert!(path.as_os_str().len() > 108);
        let absent = connect(&path, Duration::from_secs(1)).await.unwrap_err();
        assert_eq!(absent.kind(), io::ErrorKind::NotFound);
        let through = Path::new("/proc/self/fd");
        let dir_fd = std::fs::File::open(&dir).unwrap();
        let listener = std::os::unix::net::UnixListener::bind(
            through
                .join(dir_fd.as_raw_fd().to_string())
                .join("agent.sock"),
        )
        .unwrap();
        let mut stream = connect(&path, Duration::from_secs(1)).await.unwrap();
        let (mut accepted, _) = listener.accept().unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut stream, b"x")
            .await
            .unwrap();
        let mut byte = [0u8];
        std::io::Read::read_exact(&mut accepted, &mut byte).unwrap();
        assert_eq!(&byte, b"x");
    }
}
