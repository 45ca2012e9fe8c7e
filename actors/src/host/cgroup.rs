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
//! - [`Cgroup::update`] changes the limits of a running group, all or none:
//!   every file is checked before the first write, and a write that fails
//!   puts back the values already changed. v2 enables a controller the group
//!   lacks; v1 cannot add one (the tree would have to be moved process by
//!   process, racing its forks), so a limit the run started without is
//!   refused there.

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

/// A change to the limits of a running group: `None` leaves a limit as it
/// is, `Some(None)` lifts it, `Some(Some(v))` sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LimitsUpdate {
    /// Memory limit in bytes.
    pub memory_bytes: Option<Option<u64>>,
    /// Most processes at once.
    pub pids: Option<Option<u64>>,
    /// CPU time per [`CPU_PERIOD_US`], in microseconds.
    pub cpu_quota_us: Option<Option<u64>>,
}

impl LimitsUpdate {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.memory_bytes.is_none() && self.pids.is_none() && self.cpu_quota_us.is_none()
    }

    /// `limits` with this change applied.
    pub fn apply_to(&self, limits: Limits) -> Limits {
        Limits {
            memory_bytes: self.memory_bytes.unwrap_or(limits.memory_bytes),
            pids: self.pids.unwrap_or(limits.pids),
            cpu_quota_us: self.cpu_quota_us.unwrap_or(limits.cpu_quota_us),
        }
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
    /// A unified (v2) hierarchy: one directory, all controllers.
    v2: bool,
}

impl Cgroup {
    /// Creates the run's cgroup named `id` with `limits`.
    pub fn create(id: &str, limits: Limits) -> io::Result<Self> {
        Self::create_under(Path::new(ROOT), id, limits)
    }

    fn create_under(root: &Path, id: &str, limits: Limits) -> io::Result<Self> {
        let mut group = Self {
            dirs: Vec::new(),
            v2: root.join("cgroup.controllers").exists(),
        };
        let result = if group.v2 {
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
            // The period first: the quota is checked against it.
            if controller == "cpu" {
                std::fs::write(dir.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string())?;
            }
            std::fs::write(dir.join(file), limit.to_string())?;
        }
        Ok(())
    }

    /// The sandvisor group process `pid` is in (one directory per
    /// hierarchy, as `/proc/PID/cgroup` names them), for a run this process
    /// takes over; `None` if it is in none (the run had no limits).
    ///
    /// # Errors
    /// The I/O error of reading `/proc/PID/cgroup`.
    pub fn of_process(pid: u32) -> io::Result<Option<Self>> {
        let listing = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        Ok(Self::from_listing(Path::new(ROOT), &listing))
    }

    fn from_listing(root: &Path, listing: &str) -> Option<Self> {
        let v2 = root.join("cgroup.controllers").exists();
        let prefix = format!("/{PARENT}/");
        let mut dirs = Vec::new();
        for line in listing.lines() {
            let mut fields = line.splitn(3, ':');
            let (Some(_), Some(controllers), Some(path)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            if !path.starts_with(&prefix) || path.contains("/../") || path.ends_with("/..") {
                continue;
            }
            let relative = path.trim_start_matches('/');
            if v2 && controllers.is_empty() {
                dirs.push(root.join(relative));
            } else if !v2 {
                for controller in controllers.split(',') {
                    if ["memory", "pids", "cpu"].contains(&controller) {
                        dirs.push(root.join(controller).join(relative));
                    }
                }
            }
        }
        (!dirs.is_empty()).then_some(Self { dirs, v2 })
    }

    /// The directories of the group, one per hierarchy.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// How many processes the kernel's OOM killer has killed in the group
    /// (0 without a memory limit, or when the count cannot be read).
    pub fn oom_kills(&self) -> u64 {
        // `memory.events` (v2) or `memory.oom_control` (v1) exists only
        // while the memory controller is on, which an update may change.
        self.dirs
            .iter()
            .flat_map(|dir| [dir.join("memory.events"), dir.join("memory.oom_control")])
            .find_map(|file| std::fs::read_to_string(file).ok())
            .and_then(|text| {
                text.lines()
                    .filter_map(|line| line.strip_prefix("oom_kill "))
                    .find_map(|count| count.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// Changes the group's limits (see the module docs), all or none.
    ///
    /// # Errors
    /// [`io::ErrorKind::Unsupported`] for a v1 controller the group was
    /// created without (nothing is written then); the OS error of a write
    /// the kernel refused (a memory limit below what v1 cannot reclaim),
    /// after the values already written were put back.
    pub fn update(&self, update: &LimitsUpdate) -> io::Result<()> {
        let writes = self.planned(update)?;
        let mut done: Vec<(PathBuf, String)> = Vec::new();
        for (file, value) in writes {
            let old = std::fs::read_to_string(&file).map(|old| old.trim().to_string());
            let result = old.and_then(|old| std::fs::write(&file, &value).map(|()| old));
            match result {
                Ok(old) => done.push((file, old)),
                Err(err) => {
                    for (file, old) in done.iter().rev() {
                        if let Err(undo) = std::fs::write(file, old) {
                            tracing::warn!(file = %file.display(), %undo, "cgroup limit not put back");
                        }
                    }
                    return Err(io::Error::new(
                        err.kind(),
                        format!("cannot write {}: {err}", file.display()),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The files `update` writes and their values, in order; on v2 the
    /// controllers it needs are enabled first (which changes no limit).
    fn planned(&self, update: &LimitsUpdate) -> io::Result<Vec<(PathBuf, String)>> {
        let mut writes = Vec::new();
        let changes = [
            ("memory", update.memory_bytes),
            ("pids", update.pids),
            ("cpu", update.cpu_quota_us),
        ];
        for (controller, change) in changes {
            let Some(limit) = change else { continue };
            let dir = self.dir_of(controller)?;
            let (file, value) = match (self.v2, controller) {
                (true, "memory") => ("memory.max", limit.map_or("max".into(), |v| v.to_string())),
                (true, "pids") => ("pids.max", limit.map_or("max".into(), |v| v.to_string())),
                (true, _) => (
                    "cpu.max",
                    format!(
                        "{} {CPU_PERIOD_US}",
                        limit.map_or("max".into(), |v| v.to_string())
                    ),
                ),
                (false, "memory") => (
                    "memory.limit_in_bytes",
                    limit.map_or("-1".into(), |v| v.to_string()),
                ),
                (false, "pids") => ("pids.max", limit.map_or("max".into(), |v| v.to_string())),
                (false, _) => (
                    "cpu.cfs_quota_us",
                    limit.map_or("-1".into(), |v| v.to_string()),
                ),
            };
            let swap = dir.join("memory.swap.max");
            writes.push((dir.join(file), value));
            // As at creation: swap would let the tree pass a new memory
            // limit quietly (where the kernel accounts swap at all).
            if self.v2 && controller == "memory" && limit.is_some() && swap.exists() {
                writes.push((swap, "0".into()));
            }
        }
        Ok(writes)
    }

    /// The directory holding `controller`'s files, enabling the controller
    /// on v2 if the group lacks it.
    fn dir_of(&self, controller: &str) -> io::Result<PathBuf> {
        if self.v2 {
            let Some(dir) = self.dirs.first() else {
                return Err(io::Error::new(io::ErrorKind::NotFound, "no cgroup"));
            };
            let enabled = std::fs::read_to_string(dir.join("cgroup.controllers"))?;
            if !enabled.split_whitespace().any(|c| c == controller) {
                // `<root>/sandvisor/<id>`: enable it on both levels above.
                let parent = dir.parent().unwrap_or(dir);
                let root = parent.parent().unwrap_or(parent);
                for level in [root, parent] {
                    std::fs::write(
                        level.join("cgroup.subtree_control"),
                        format!("+{controller}"),
                    )?;
                }
            }
            return Ok(dir.clone());
        }
        // v1: `<root>/<controller>/sandvisor/<id>`.
        self.dirs
            .iter()
            .find(|dir| {
                dir.parent()
                    .and_then(Path::parent)
                    .and_then(Path::file_name)
                    .is_some_and(|name| name == controller)
            })
            .cloned()
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!(
                        "the run has no {controller} limit, and a cgroup v1 controller cannot be added to a running sandbox"
                    ),
                )
            })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A v1 layout under a temp dir: plain files stand in for the kernel's.
    fn fake_v1() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for controller in ["memory", "pids", "cpu"] {
            std::fs::create_dir(root.path().join(controller)).unwrap();
        }
        root
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn an_update_writes_every_limit_or_puts_back_what_it_wrote() {
        let root = fake_v1();
        let limits = Limits {
            memory_bytes: Some(1 << 30),
            pids: Some(100),
            cpu_quota_us: None,
        };
        let group = Cgroup::create_under(root.path(), "g", limits).unwrap();
        let memory = root.path().join("memory/sandvisor/g/memory.limit_in_bytes");
        let pids = root.path().join("pids/sandvisor/g/pids.max");

        group
            .update(&LimitsUpdate {
                memory_bytes: Some(Some(64 << 20)),
                pids: Some(None),
                cpu_quota_us: None,
            })
            .unwrap();
        assert_eq!(
            (read(&memory), read(&pids)),
            ("67108864".into(), "max".into())
        );

        // No cpu group: refused before anything is written.
        let err = group
            .update(&LimitsUpdate {
                memory_bytes: Some(Some(32 << 20)),
                cpu_quota_us: Some(Some(50_000)),
                ..LimitsUpdate::default()
            })
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Unsupported);
        assert_eq!(read(&memory), "67108864");

        // The pids write fails (a directory where the file was): the memory
        // limit written before it is put back.
        std::fs::remove_file(&pids).unwrap();
        std::fs::create_dir(&pids).unwrap();
        group
            .update(&LimitsUpdate {
                memory_bytes: Some(Some(32 << 20)),
                pids: Some(Some(10)),
                cpu_quota_us: None,
            })
            .unwrap_err();
        assert_eq!(read(&memory), "67108864");
    }

    #[test]
    fn a_memory_limit_added_on_v2_also_turns_swap_off() {
        // A unified layout: plain files stand in for the kernel's.
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "memory pids cpu").unwrap();
        let limits = Limits {
            memory_bytes: None,
            pids: Some(100),
            cpu_quota_us: None,
        };
        let group = Cgroup::create_under(root.path(), "g", limits).unwrap();
        let dir = root.path().join("sandvisor/g");
        std::fs::write(dir.join("cgroup.controllers"), "memory pids").unwrap();
        std::fs::write(dir.join("memory.max"), "max").unwrap();
        std::fs::write(dir.join("memory.swap.max"), "max").unwrap();
        group
            .update(&LimitsUpdate {
                memory_bytes: Some(Some(256 << 20)),
                ..LimitsUpdate::default()
            })
            .unwrap();
        assert_eq!(read(&dir.join("memory.max")), "268435456");
        assert_eq!(read(&dir.join("memory.swap.max")), "0");
    }

    #[test]
    fn the_group_of_a_process_is_read_from_its_listing() {
        let root = fake_v1();
        let listing =
            "9:name=systemd:/\n8:pids:/sandvisor/web-1-7-1\n4:memory:/sandvisor/web-1-7-1\n\
                       2:cpu,cpuacct:/sandvisor/web-1-7-1\n1:blkio:/sandvisor/web-1-7-1\n0::/\n";
        let group = Cgroup::from_listing(root.path(), listing).unwrap();
        let names: Vec<_> = group
            .dirs()
            .iter()
            .map(|d| d.strip_prefix(root.path()).unwrap().to_path_buf())
            .collect();
        assert_eq!(
            names,
            [
                "pids/sandvisor/web-1-7-1",
                "memory/sandvisor/web-1-7-1",
                "cpu/sandvisor/web-1-7-1"
            ]
            .map(PathBuf::from)
        );
        // Not a sandvisor group, or one that climbs out of it: none.
        assert!(Cgroup::from_listing(root.path(), "4:memory:/user.slice\n").is_none());
        assert!(Cgroup::from_listing(root.path(), "4:memory:/sandvisor/../x\n").is_none());
        std::mem::forget(group);
    }

    #[test]
    fn an_update_applies_to_limits_as_given() {
        let limits = Limits {
            memory_bytes: Some(1),
            pids: Some(2),
            cpu_quota_us: None,
        };
        let update = LimitsUpdate {
            memory_bytes: None,
            pids: Some(None),
            cpu_quota_us: Some(Some(3)),
        };
        assert_eq!(
            update.apply_to(limits),
            Limits {
                memory_bytes: Some(1),
                pids: None,
                cpu_quota_us: Some(3)
            }
        );
        assert!(LimitsUpdate::default().is_empty() && !update.is_empty());
    }
}
