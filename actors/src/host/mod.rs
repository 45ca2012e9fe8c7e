//! OS plumbing under the actors: pidfds (processes that are not our
//! children, safe against pid reuse), cgroups (resource limits) and unix
//! sockets at long paths, hints for large buffers. Nothing
//! here knows about actors or sandboxes.

pub mod cgroup;
pub mod launcher;
pub mod memory;
pub mod pidfd;
pub mod socket;
