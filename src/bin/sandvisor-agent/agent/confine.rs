//! The confinement every session's process gets between fork and exec:
//! the main command and exec sessions alike, pipes or terminal.
//!
//! # Contract
//! [`apply`] runs in the forked child (the agent is single-threaded, so the
//! child may run any code; it still only makes system calls), in this order:
//! 1. resource limits (a hard limit above the host's is lowered to it: only
//!    the host's root may raise one);
//! 2. supplementary groups cleared (where the user namespace allows it),
//!    then group and user — switching away from root clears the permitted
//!    and effective capabilities, as the kernel does for any setuid;
//! 3. the bounding set cut to the kept capabilities, the ambient set
//!    cleared, then the permitted and effective sets cut to the kept ones
//!    and the inheritable set emptied (so no capability comes back at exec,
//!    whatever file capabilities the command has);
//! 4. `no_new_privs` (setuid bits and file capabilities grant nothing);
//! 5. the seccomp filter, last: the steps before it are not filtered, and
//!    the filter allows `execve`.

use std::io;

use caps::{CapSet, Capability, CapsHashSet};
use sandvisor_actors::protocol::{Confinement, Ids};

/// What [`apply`] needs, prepared before the fork.
#[derive(Debug, Clone)]
pub(super) struct Prepared {
    confine: Confinement,
    /// The highest capability number the kernel knows.
    last_cap: u32,
    /// The filter as `sock_filter` instructions.
    filter: Vec<libc::sock_filter>,
}

/// Prepares `confine` for [`apply`].
///
/// # Errors
/// `InvalidData` when the seccomp program is not a whole number of
/// instructions.
pub(super) fn prepare(confine: &Confinement) -> io::Result<Prepared> {
    let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(40);
    let filter = match &confine.seccomp {
        Some(bytes) => {
            let size = std::mem::size_of::<libc::sock_filter>();
            if bytes.len() % size != 0 || bytes.is_empty() || bytes.len() / size > u16::MAX as usize
            {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the seccomp program is not a list of BPF instructions",
                ));
            }
            bytes
                .chunks_exact(size)
                .map(|chunk| libc::sock_filter {
                    code: u16::from_ne_bytes([chunk[0], chunk[1]]),
                    jt: chunk[2],
                    jf: chunk[3],
                    k: u32::from_ne_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]),
                })
                .collect()
        }
        None => Vec::new(),
    };
    Ok(Prepared {
        confine: confine.clone(),
        last_cap,
        filter,
    })
}

/// Applies `prepared` and `user` to the calling process (see the module
/// docs).
///
/// # Errors
/// The OS error of the first step that failed; the command is then not run.
pub(super) fn apply(prepared: &Prepared, user: Option<Ids>) -> io::Result<()> {
    let check = |ret: libc::c_int| {
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    for limit in &prepared.confine.rlimits {
        let mut value = libc::rlimit {
            rlim_cur: limit.soft,
            rlim_max: limit.hard,
        };
        // SAFETY: a plain struct of the right type.
        if unsafe { libc::setrlimit(limit.resource as _, &value) } < 0 {
            // Raising a hard limit takes CAP_SYS_RESOURCE of the host's user
            // namespace: keep the host's ceiling instead.
            let mut current = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: as above.
            check(unsafe { libc::getrlimit(limit.resource as _, &mut current) })?;
            value.rlim_max = value.rlim_max.min(current.rlim_max);
            value.rlim_cur = value.rlim_cur.min(value.rlim_max);
            // SAFETY: as above.
            check(unsafe { libc::setrlimit(limit.resource as _, &value) })?;
        }
    }
    if let Some(ids) = user {
        // Denied in a user namespace whose setgroups is "deny"; there the
        // process has no supplementary groups to drop anyway.
        // SAFETY: an empty list.
        let cleared = unsafe { libc::setgroups(0, std::ptr::null()) };
        if cleared < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: plain syscalls on this process's credentials.
        check(unsafe { libc::setresgid(ids.gid, ids.gid, ids.gid) })?;
        check(unsafe { libc::setresuid(ids.uid, ids.uid, ids.uid) })?;
    }
    let keep = prepared.confine.capabilities;
    let kept = |cap: &Capability| cap.index() < 64 && keep & (1 << cap.index()) != 0;
    for cap in caps::all().iter().filter(|cap| !kept(cap)) {
        // EINVAL: a capability this kernel does not have.
        match caps::drop(None, CapSet::Bounding, *cap) {
            Err(_) if u32::from(cap.index()) > prepared.last_cap => {}
            other => other.map_err(caps_error)?,
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(caps_error)?;
    // Effective first: it must stay within permitted at every step.
    for set in [CapSet::Effective, CapSet::Permitted] {
        let now = caps::read(None, set).map_err(caps_error)?;
        let cut: CapsHashSet = now.into_iter().filter(kept).collect();
        caps::set(None, set, &cut).map_err(caps_error)?;
    }
    caps::clear(None, CapSet::Inheritable).map_err(caps_error)?;
    // SAFETY: prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
    if !prepared.filter.is_empty() {
        let program = libc::sock_fprog {
            len: prepared.filter.len() as u16,
            filter: prepared.filter.as_ptr().cast_mut(),
        };
        // SAFETY: the program points at instructions that outlive the call.
        let loaded = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                std::ptr::addr_of!(program),
            )
        };
        if loaded < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn caps_error(err: caps::errors::CapsError) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, err.to_string())
}
