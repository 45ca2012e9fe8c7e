//! OS plumbing under the actors: pidfds (processes that are not our
//! children, safe against pid reuse) and cgroups (resource limits). Nothing
//! here knows about actors or sandboxes.

pub mod cgroup;
pub mod launcher;
pub mod pidfd;
