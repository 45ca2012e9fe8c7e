//! The staging child: what is set up for a sandbox with the host's
//! privileges, before its agent runs — the agent's user namespace and its
//! id maps, and its root filesystem.
//!
//! # Contract
//! For a request whose plan asks for a user namespace or a root filesystem,
//! the spawner forks a *staging child* and goes on with its next request.
//! The staging child, still host root in the host's namespaces:
//! 1. unshares a mount namespace of its own (private propagation);
//!    A microVM's kernel, initramfs and console log are opened here too.
//! 2. creates the agent with `clone3` — a child of the spawner
//!    (`CLONE_PARENT`), in a new user namespace, pid namespace and network
//!    namespace as asked — which waits on a pipe until step 5;
//! 3. writes the agent's `setgroups` (`deny`), `uid_map` and `gid_map`;
//! 4. builds the root in its mount namespace, which the agent shares (see
//!    [`super::root`]); the lower layers are mounted id-mapped to the
//!    agent's user namespace;
//! 5. tells the agent how that went (one byte, or the JSON of the
//!    [`BootError`] it reports at `Start`), answers the host's request with
//!    the agent's pid and pidfd, and exits.
//!
//! The agent then copies that mount namespace into one its user namespace
//! owns, so every mount staged here is *locked* there: the sandbox can
//! neither unmount them to reveal what is under them nor clear their
//! read-only, nosuid or nodev flags.

use std::io::Read;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sched::CloneFlags;
use sandvisor_actors::protocol::spawn::Request;
use sandvisor_actors::protocol::{BootError, BootStage, IdRange, SpawnPlan};

use super::root;
use super::setup::boot_error;
use crate::launcher::VmFiles;
use crate::spawner::{answer, become_agent, clone3_fork, AgentEnds, Forked};

/// Whether `plan` needs a staging child.
pub(crate) fn needed(plan: &SpawnPlan) -> bool {
    plan.user_namespace.is_some() || plan.root.is_some() || plan.net_namespace || plan.vm.is_some()
}

/// Forks the staging child for `request` (see the module docs); returns at
/// once in the spawner.
///
/// # Errors
/// The request's id and the errno of the failed fork: the spawner answers
/// it.
pub(crate) fn fork(
    request: Request,
    ends: AgentEnds,
    channel: BorrowedFd<'_>,
) -> Result<(), (u64, Errno)> {
    // With a pidfd, as every fork here (the spawner does not need it).
    match clone3_fork(libc::CLONE_PIDFD as u64) {
        Ok(Forked::Child) => {
            let id = request.id;
            let outcome = stage(request, ends);
            let code = match answer(channel, id, outcome) {
                Ok(()) => 0,
                Err(_) => 1,
            };
            // SAFETY: _exit skips the spawner's atexit handlers and buffers,
            // which belong to the spawner.
            unsafe { libc::_exit(code) }
        }
        Ok(Forked::Parent { .. }) => Ok(()),
        Err(errno) => Err((request.id, errno)),
    }
}

/// In the staging child: steps 1–5; the agent's pid and pidfd.
fn stage(request: Request, ends: AgentEnds) -> Result<(u32, OwnedFd), Errno> {
    nix::sched::unshare(CloneFlags::CLONE_NEWNS)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    let (release_rx, release_tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let plan = request.plan;
    let mut flags = (libc::CLONE_PIDFD | libc::CLONE_PARENT) as u64;
    if plan.user_namespace.is_some() {
        flags |= libc::CLONE_NEWUSER as u64;
    }
    if plan.pid_namespace {
        flags |= libc::CLONE_NEWPID as u64;
    }
    // A microVM's launcher gets a network namespace of its own even without
    // a network: qemu then has none of the host's.
    if plan.net_namespace || plan.vm.is_some() {
        flags |= libc::CLONE_NEWNET as u64;
    }
    // Opened here, with the host's privileges, and inherited by the launcher;
    // which never runs qemu as host root or outside a pid namespace of its own.
    let (vm_files, opened) = match plan.vm.as_deref().map(VmFiles::open).transpose() {
        Ok(_) if plan.vm.is_some() && (plan.user_namespace.is_none() || !plan.pid_namespace) => (
            None,
            Err(boot_error(
                BootStage::BuildVm,
                Errno::EPERM,
                "a microVM needs the sandbox's own user and pid namespaces",
            )),
        ),
        Ok(files) => (files, Ok(())),
        Err(error) => (None, Err(error)),
    };
    let (pid, pidfd) = match clone3_fork(flags)? {
        Forked::Child => {
            drop(release_tx);
            let staged = wait_for_release(release_rx, plan.user_namespace.is_some()).and(opened);
            become_agent(ends, plan, staged, vm_files)
        }
        Forked::Parent { pid, pidfd } => (pid, pidfd),
    };
    drop(vm_files);
    drop(release_rx);
    drop(ends);
    let staged = prepare(&plan, pid);
    let message = match &staged {
        Ok(()) => vec![0],
        Err(error) => serde_json::to_vec(error).unwrap_or_default(),
    };
    // The agent reads to the end; if it is gone, its pidfd tells the host.
    let _ = nix::unistd::write(&release_tx, &message);
    Ok((pid, pidfd))
}

/// Steps 3 and 4, for the agent `pid`.
fn prepare(plan: &SpawnPlan, pid: u32) -> Result<(), BootError> {
    let userns = match plan.user_namespace {
        Some(ids) => {
            write_id_maps(pid, ids)?;
            let path = format!("/proc/{pid}/ns/user");
            let file = std::fs::File::open(&path).map_err(|e| {
                boot_error(BootStage::BuildVm, errno_of(&e), "open the user namespace")
            })?;
            Some((ids, OwnedFd::from(file)))
        }
        None => None,
    };
    match &plan.root {
        // A microVM's guest mounts its own /tmp, /run, /dev…: the host's
        // device binds are never shared into it.
        Some(root) => root::stage(
            root,
            userns.as_ref().map(|(ids, fd)| (*ids, fd)),
            plan.vm.is_none(),
        ),
        None => Ok(()),
    }
}

/// Maps `ids` as root and up in the user namespace of `pid`; `setgroups`
/// is denied there, so nobody inside can take host groups.
fn write_id_maps(pid: u32, ids: IdRange) -> Result<(), BootError> {
    let map = format!("0 {} {}\n", ids.first, ids.count);
    for (file, text) in [("setgroups", "deny"), ("uid_map", &map), ("gid_map", &map)] {
        std::fs::write(format!("/proc/{pid}/{file}"), text).map_err(|e| {
            boot_error(
                BootStage::BuildVm,
                errno_of(&e),
                &format!("write the user namespace's {file}"),
            )
        })?;
    }
    Ok(())
}

/// In the agent: waits until the staging child is done; then becomes root
/// of its user namespace (whose maps are written by now).
fn wait_for_release(release: OwnedFd, user_namespace: bool) -> Result<(), BootError> {
    let mut message = Vec::new();
    let read = std::fs::File::from(release).read_to_end(&mut message);
    match (read, message.as_slice()) {
        (Ok(_), [0]) => {}
        (Ok(_), []) | (Err(_), _) => {
            return Err(boot_error(
                BootStage::BuildVm,
                Errno::EPIPE,
                "the spawner's staging child ended before the sandbox was set up",
            ))
        }
        (Ok(_), json) => {
            return Err(serde_json::from_slice(json).unwrap_or_else(|_| {
                boot_error(BootStage::BuildVm, Errno::EPROTO, "staging failed")
            }))
        }
    }
    if user_namespace {
        // SAFETY: plain syscalls on this process's own credentials.
        let done = unsafe { libc::setresgid(0, 0, 0) == 0 && libc::setresuid(0, 0, 0) == 0 };
        if !done {
            return Err(boot_error(
                BootStage::BuildVm,
                Errno::last(),
                "become root of the user namespace",
            ));
        }
    }
    Ok(())
}

/// The errno of an I/O error (EIO when it has none).
pub(crate) fn errno_of(err: &std::io::Error) -> Errno {
    Errno::from_raw(err.raw_os_error().unwrap_or(libc::EIO))
}

/// Takes ownership of a descriptor a raw syscall returned.
///
/// # Errors
/// The errno when the syscall failed (`ret < 0`).
pub(super) fn owned(ret: libc::c_long) -> Result<OwnedFd, Errno> {
    if ret < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the syscall returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as i32) })
}

/// `/proc/self/fd/N` of `fd`: a path to what it refers to, for the calls
/// (mount sources and targets, overlay layers) that take a path.
pub(super) fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}
