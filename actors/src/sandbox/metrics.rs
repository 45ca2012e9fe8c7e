//! Resource use of a sandbox's whole process tree, from `/proc`.
//!
//! The tree is walked from the sandbox's PID 1 through
//! `/proc/PID/task/TID/children`. Memory is the sum of resident set sizes
//! (pages shared between processes count once per process, as `ps` shows
//! them). CPU is the sum of user and system time of every live process plus
//! what each has collected from children it reaped; its rate between two
//! samples gives `cpu_percent` (100 = one core).

use std::io;
use std::time::Instant;

use chrono::{DateTime, Utc};

/// One sample of a sandbox's resource use.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SandboxMetrics {
    /// CPU use since the previous sample, in percent of one core.
    pub cpu_percent: f64,
    /// Resident memory of every process of the sandbox, in bytes.
    pub memory_bytes: u64,
    /// Processes in the sandbox, the agent included.
    pub processes: u32,
    /// When the sample was taken.
    pub sampled_at: DateTime<Utc>,
}

/// Samples one sandbox's tree.
#[derive(Debug)]
pub struct Sampler {
    root: u32,
    previous: Option<(Instant, u64)>,
    ticks_per_second: f64,
    page_size: u64,
}

struct ProcessUse {
    cpu_ticks: u64,
    resident_pages: u64,
}

impl Sampler {
    /// A sampler for the tree under host pid `root`.
    pub fn new(root: u32) -> Self {
        // SAFETY: sysconf takes no pointers.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        // SAFETY: as above.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        Self {
            root,
            previous: None,
            ticks_per_second: if ticks > 0 { ticks as f64 } else { 100.0 },
            page_size: if page > 0 { page as u64 } else { 4096 },
        }
    }

    /// Takes a sample. The first one only sets the baseline: its
    /// `cpu_percent` is 0.
    pub fn sample(&mut self) -> io::Result<SandboxMetrics> {
        let now = Instant::now();
        let mut pending = vec![self.root];
        let (mut ticks, mut pages, mut processes) = (0u64, 0u64, 0u32);
        while let Some(pid) = pending.pop() {
            let Some(usage) = process_use(pid) else {
                // Gone between listing and reading: it counts no more.
                continue;
            };
            ticks += usage.cpu_ticks;
            pages += usage.resident_pages;
            processes += 1;
            pending.extend(children(pid));
        }
        if processes == 0 {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("process {} is gone", self.root),
            ));
        }
        let cpu_percent = match self.previous {
            Some((at, before)) => {
                let seconds = now.duration_since(at).as_secs_f64();
                if seconds > 0.0 {
                    ticks.saturating_sub(before) as f64 / self.ticks_per_second / seconds * 100.0
                } else {
                    0.0
                }
            }
            None => 0.0,
        };
        self.previous = Some((now, ticks));
        Ok(SandboxMetrics {
            cpu_percent,
            memory_bytes: pages * self.page_size,
            processes,
            sampled_at: Utc::now(),
        })
    }
}

fn process_use(pid: u32) -> Option<ProcessUse> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces: ") S ppid …".
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 2..)?
        .split_whitespace()
        .collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    // utime 14, stime 15, cutime 16, cstime 17, rss 24 (man proc_pid_stat).
    let cpu_ticks = field(14)? + field(15)? + field(16)? + field(17)?;
    Some(ProcessUse {
        cpu_ticks,
        resident_pages: field(24)?,
    })
}

fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}
