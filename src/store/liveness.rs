//! Whether a process recorded in the store still runs.
//!
//! A host (or a sandbox's PID 1) is named by its pid and its start time in
//! clock ticks since boot (field 22 of `/proc/PID/stat`), so that a recycled
//! pid never passes for it. A process that has exited but is not yet reaped —
//! a zombie (`Z`), or one being torn down (`X`) — keeps its pid and its start
//! time until its parent waits for it, which under a parent that never waits
//! is forever: it counts as dead, since it runs nothing and answers nothing.

/// A process's state letter (field 3) and start ticks (field 22).
struct ProcStat {
    state: char,
    start_ticks: u64,
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; fields
    // resume after its last ')'.
    let mut rest = stat.get(stat.rfind(')')? + 2..)?.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let start_ticks = rest.nth(18)?.parse().ok()?;
    Some(ProcStat { state, start_ticks })
}

/// The start ticks of `pid` if it runs: `None` if it is gone or has exited
/// (a zombie, or dead and being reaped).
pub(super) fn live_start_ticks(pid: u32) -> Option<u64> {
    proc_stat(pid)
        .filter(|stat| !matches!(stat.state, 'Z' | 'X' | 'x'))
        .map(|stat| stat.start_ticks)
}

/// Whether `pid` exists and has not exited.
pub(super) fn is_live(pid: u32) -> bool {
    live_start_ticks(pid).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zombie_is_not_live_until_reaped_and_then_gone() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Unreaped, it turns into a zombie once it exits.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while proc_stat(pid).is_some_and(|s| s.state != 'Z') {
            assert!(std::time::Instant::now() < deadline, "never a zombie");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(proc_stat(pid).is_some(), "the zombie keeps its stat");
        assert!(!is_live(pid));
        child.wait().unwrap();
        assert!(!is_live(pid));
        assert!(is_live(std::process::id()));
        assert!(live_start_ticks(std::process::id()).is_some());
    }
}
