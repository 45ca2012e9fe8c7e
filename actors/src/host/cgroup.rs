//! Resource limits of a sandbox's process tree, through cgroups.
//!
//! The agent is moved into the sandbox's cgroup before it is told to start,
//! so everything it forks (PID 1, the main command, their children) is
//! accounted and limited there. cgroup v2 (a unified hierarchy) is used when
//! the host has one; otherwise the v1 `memory`, `pids` and `cpu`
//! hierarchies. The groups are removed when the run has ended (they are
//! empty by then).
//! - CPU: a quota of `cpu_quota_us` per [`CPU_PERIOD_US`] (`cpus 1.5` is
//!   150,000 µs every 100,000 µs), `cpu.max` (v2) or
//!   `cpu.cfs_quota_us` / `cpu.cfs_period_us` (v1).
//! - OOM kills inside the group are counted by the kernel
//!   ([`Cgroup::oom_kills`]), so the run's end can say it ran out of memory.

use std::io;
use std::path::{Path, PathBuf};

/// The limits a sandbox asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// Memory limit in bytes (the OOM killer acts inside the sandbox past it).
    pub memory_bytes: Option<u64>,
    /// Most processes (and threads) at once.
    pub pids: Option<u64>,
    /// CPU time allowed per [`CPU_PERIOD_US`], in microseconds.
    pub cpu_quota_us: Option<u64>,
}

impl Limits {
    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        self.memory_bytes.is_some() || self.pids.is_some() || self.cpu_quota_us.is_some()
    }
}

/// The CPU quota's period: 100 ms, the kernel's default.
pub const CPU_PERIOD_US: u64 = 100_000;

/// The quota for `cpus` CPUs (`1.5` → 150,000 µs per period), at least the
/// kernel's minimum of 1 ms; `None` for a value that is not a positive
/// finite number.
pub fn cpu_quota_us(cpus: f64) -> Option<u64> {
    if !cpus.is_finite() || cpus <= 0.0 {
        return None;
    }
    // Rounded to whole microseconds; the float-to-int cast saturates.
    let quota = (cpus * CPU_PERIOD_US as f64).round() as u64;
    Some(quota.max(MIN_CPU_QUOTA_US))
}

/// The smallest quota the kernel accepts.
const MIN_CPU_QUOTA_US: u64 = 1_000;

const ROOT: &str = "/sys/fs/cgroup";
const PARENT: &str = "sandvisor";

/// The cgroup (one directory per hierarchy) of one run.
#[derive(Debug)]
pub struct Cgroup {
    dirs: Vec<PathBuf>,
    /// The file whose `oom_kill` line counts the group's OOM kills
    /// (`memory.events` in v2, `memory.oom_control` in v1), when the memory
    /// controller is on.
    oom_counter: Option<PathBuf>,
}

impl Cgroup {
    /// Creates the run's cgroup named `id` with `limits`.
    pub fn create(id: &str, limits: Limits) -> io::Result<Self> {
        Self::create_under(Path::new(ROOT), id, limits)
    }

    fn create_under(root: &Path, id: &str, limits: Limits) -> io::Result<Self> {
        let mut group = Self {
            dirs: Vec::new(),
            oom_counter: None,
        };
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
        if limits.cpu_quota_us.is_some() {
            wanted.push("+cpu");
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
            self.oom_counter = Some(dir.join("memory.events"));
        }
        if let Some(pids) = limits.pids {
            std::fs::write(dir.join("pids.max"), pids.to_string())?;
        }
        if let Some(quota) = limits.cpu_quota_us {
            std::fs::write(dir.join("cpu.max"), format!("{quota} {CPU_PERIOD_US}"))?;
        }
        Ok(())
    }

    fn create_v1(&mut self, root: &Path, id: &str, limits: Limits) -> io::Result<()> {
        let controllers = [
            ("memory", "memory.limit_in_bytes", limits.memory_bytes),
            ("pids", "pids.max", limits.pids),
            ("cpu", "cpu.cfs_quota_us", limits.cpu_quota_us),
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
            match controller {
                // The period first: the quota is checked against it.
                "cpu" => std::fs::write(dir.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string())?,
                "memory" => self.oom_counter = Some(dir.join("memory.oom_control")),
                _ => {}
            }
            std::fs::write(dir.join(file), limit.to_string())?;
        }
        Ok(())
    }

    /// The directories of the group, one per hierarchy.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// How many processes the kernel's OOM killer has killed in the group
    /// (0 without a memory limit, or when the count cannot be read).
    pub fn oom_kills(&self) -> u64 {
        let Some(file) = &self.oom_counter else {
            return 0;
        };
        let Ok(text) = std::fs::read_to_string(file) else {
            return 0;
        };
        text.lines()
            .filter_map(|line| line.strip_prefix("oom_kill "))
            .find_map(|count| count.trim().parse().ok())
            .unwrap_or(0)
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
