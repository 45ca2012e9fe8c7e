//! OS plumbing under the actors: pidfds (processes that are not our
//! children, safe against pid reuse), cgroups (resource limits) and unix
//! sockets at long paths. Nothing
//! here knows about actors or sandboxes.

pub mod cgroup;
pub mod launcher;
pub mod pidfd;
pub mod socket;
