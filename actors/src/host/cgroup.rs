//! Resource limits of a sandbox's process tree, through cgroups.
//!
//! The agent is moved into the sandbox's cgroup before it is told to start,
//! so everything it forks (PID 1, the main command, their children) is
//! accounted and limited there. cgroup v2 (a unified hierarchy) is used when
//! the host has one; otherwise the v1 `memory` and `pids` hierarchies.
//! The groups are removed when the run has ended (they are empty by then).

use std::io;
use std::path::{Path, PathBuf};

/// The limits a sandbox asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// Memory limit in bytes (the OOM killer acts inside the sandbox past it).
    pub memory_bytes: Option<u64>,
    /// Most processes (and threads) at once.
    pub pids: Option<u64>,
}

impl Limits {
    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        self.memory_bytes.is_some() || self.pids.is_some()
    }
}

const ROOT: &str = "/sys/fs/cgroup";
const PARENT: &str = "sandvisor";

/// The cgroup (one directory per hierarchy) of one run.
#[derive(Debug)]
pub struct Cgroup {
    dirs: Vec<PathBuf>,
}

impl Cgroup {
    /// Creates the run's cgroup named `id` with `limits`.
    pub fn create(id: &str, limits: Limits) -> io::Result<Self> {
        Self::create_under(Path::new(ROOT), id, limits)
    }

    fn create_under(root: &Path, id: &str, limits: Limits) -> io::Result<Self> {
        let mut group = Self { dirs: Vec::new() };
        let result = if root.join("cgroup.controllers").exists() {
            group.create_v2(root, id, limits)
        } else {
            group.create_v1(root, id, limits)
        };
        // On failure, whatever was made is removed by `Drop`.
        result.map(|()| group)
    }

    fn create_v2(&mut self, root: &Path, id: &str, limits: Limits) -> io::Result<()> {
        let parent = root.join(PARENT);
        std::fs::create_dir_all(&parent)?;
        let mut wanted = Vec::new();
        if limits.memory_bytes.is_some() {
            wanted.push("+memory");
        }
        if limits.pids.is_some() {
            wanted.push("+pids");
        }
        for level in [root, parent.as_path()] {
            std::fs::write(level.join("cgroup.subtree_control"), wanted.join(" "))?;
        }
        let dir = parent.join(id);
        std::fs::create_dir(&dir)?;
        self.dirs.push(dir.clone());
        if let Some(bytes) = limits.memory_bytes {
            std::fs::write(dir.join("memory.max"), bytes.to_string())?;
            // Swap would let the tree pass its limit quietly.
            let _ = std::fs::write(dir.join("memory.swap.max"), "0");
        }
        if let Some(pids) = limits.pids {
            std::fs::write(dir.join("pids.max"), pids.to_string())?;
        }
        Ok(())
    }

    fn create_v1(&mut self, root: &Path, id: &str, limits: Limits) -> io::Result<()> {
        let controllers = [
            ("memory", "memory.limit_in_bytes", limits.memory_bytes),
            ("pids", "pids.max", limits.pids),
        ];
        for (controller, file, limit) in controllers {
            let Some(limit) = limit else { continue };
            let hierarchy = root.join(controller);
            if !hierarchy.is_dir() {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!(
                        "no {controller} cgroup controller at {}",
                        hierarchy.display()
                    ),
                ));
            }
            let dir = hierarchy.join(PARENT).join(id);
            std::fs::create_dir_all(&dir)?;
            self.dirs.push(dir.clone());
            std::fs::write(dir.join(file), limit.to_string())?;
        }
        Ok(())
    }

    /// Moves process `pid` (and its future children) into the group.
    pub fn add(&self, pid: u32) -> io::Result<()> {
        for dir in &self.dirs {
            std::fs::write(dir.join("cgroup.procs"), pid.to_string())?;
        }
        Ok(())
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for dir in &self.dirs {
            // Still populated means a process outlived the run: leave the
            // group rather than fail; the kernel refuses to remove it anyway.
            if let Err(err) = std::fs::remove_dir(dir) {
                tracing::debug!(dir = %dir.display(), %err, "cgroup not removed");
            }
        }
    }
}
