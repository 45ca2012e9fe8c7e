//! A small tmpfs for the full-disk tests: mounted on a temp directory,
//! filled to the last byte on demand, unmounted (lazily) on drop.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use tempfile::TempDir;

pub struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    /// A tmpfs of `bytes`.
    pub fn mount(bytes: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs: {status:?}");
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `file` until the file system has no byte left.
    #[allow(dead_code)] // not every test crate fills its tmpfs
    pub fn fill(&self, file: &Path) {
        let mut out = std::fs::File::create(file).unwrap();
        for size in [64 * 1024, 512, 1] {
            let block = vec![0u8; size];
            while out.write(&block).is_ok_and(|n| n > 0) {}
        }
        assert_eq!(free_bytes(self.path()), 0, "the tmpfs is not full");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // A daemon a test started on this file system (`run -d` on a full
        // disk may leave one that answers nothing) must not outlive it.
        kill_holders(self.dir.path());
        // Lazily: a process of the test may still hold a file open.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Bytes an unprivileged writer could still write under `path`.
pub fn free_bytes(path: &Path) -> u64 {
    let stat = nix::sys::statvfs::statvfs(path).unwrap();
    stat.blocks_available() as u64 * stat.fragment_size() as u64
}

/// Panics unless every line of every `exec.log*` in `dir` is a whole JSON
/// record (none torn).
#[allow(dead_code)] // not every test crate reads logs
pub fn assert_whole_records(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("exec.log") {
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                serde_json::from_str::<serde_json::Value>(line)
                    .unwrap_or_else(|e| panic!("torn record in {}: {e}: {line}", path.display()));
            }
        }
    }
}

/// SIGKILLs every process other than this one with a file open under `dir`.
fn kill_holders(dir: &Path) {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    let me = std::process::id();
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target.starts_with(dir)));
        if holds {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
