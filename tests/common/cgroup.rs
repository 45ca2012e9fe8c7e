#![allow(dead_code)]
//! A sandbox's cgroup limits, read from the host.

/// The value of a limit of the cgroup process `pid` is in, read from the
/// host (`v1` in the controller's own hierarchy, `v2` in the unified one).
pub fn host_limit(pid: u32, controller: &str, v1: &str, v2: &str) -> Option<String> {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    cgroups.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let file = if controllers.is_empty() {
            format!("/sys/fs/cgroup{path}/{v2}")
        } else if controllers.split(',').any(|c| c == controller) {
            format!("/sys/fs/cgroup/{controller}{path}/{v1}")
        } else {
            return None;
        };
        std::fs::read_to_string(file)
            .ok()
            .map(|v| v.trim().to_string())
    })
}
