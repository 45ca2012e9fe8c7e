//! The sandbox's root filesystem, staged by the staging child (host root,
//! in its own mount namespace; see [`super::stage`]) at `<fs dir>/root`,
//! and moved to [`STAGED_AT`] for the agent.
//!
//! # Layout
//! - With lower layers (an image's, or a rootfs): an overlay of them
//!   (read-only) and the writable layer `<fs dir>/upper/root` (`work/root`
//!   its work directory).
//! - Without one, the *host base*: the writable layer `upper/root` itself as
//!   `/` (a skeleton: the mount points, and the host's links such as
//!   `bin -> usr/bin`), with one overlay per host system directory (`/usr`,
//!   `/etc`, `/lib*`, `/bin`, `/sbin` where they are directories) of that
//!   directory and `upper/<dir>`. Host secrets in `/etc` are masked.
//! - `read_only`: the same lowers (or the skeleton) bound read-only, no
//!   writable layer.
//! - Always: fresh tmpfs `/tmp`, `/run`, `/var/tmp`, `/dev` (nosuid, noexec,
//!   nodev, with binds of the host's null, zero, full, random, urandom and
//!   tty), `/dev/shm`; then the volumes.
//!
//! Lower layers are mounted id-mapped to the sandbox's user namespace, so
//! files root owns on the host are root's inside (and nobody else's ids
//! shift). Every writable mount is nodev: a device node made inside (with
//! `CAP_MKNOD` and host ids) cannot be opened.
//!
//! Paths inside the root are resolved with `openat2(RESOLVE_IN_ROOT)`, so a
//! symbolic link in a rootfs or made by the sandbox never leads a mount out
//! of it; mounts then target the descriptor (`/proc/self/fd/N`).

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use sandvisor_actors::protocol::{BindMount, BootError, BootStage, IdRange, RootPlan, HOST_BASE};

use super::setup::boot_error;
use super::stage::{errno_of, fd_path, owned};

/// Where the agent finds the staged root: the home (and so `<fs dir>`) is
/// the host's root only, and the agent is root of its user namespace, not
/// of the host — it could not reach `<fs dir>/root`. `/tmp` exists on every
/// host and anyone may pass through it; the mount hides it only in the
/// sandbox's mount namespace, which detaches all of the host's at
/// `pivot_root`.
pub(crate) const STAGED_AT: &str = "/tmp";
/// Mount points every root gets (created in the writable layer if missing).
const MOUNT_POINTS: [&str; 6] = ["proc", "sys", "dev", "tmp", "run", "var/tmp"];
/// More empty directories of the host base's skeleton.
const SKELETON: [&str; 3] = ["root", "home", "mnt"];
/// Host secrets under `/etc` the host base hides: files read empty, and
/// directories show empty.
const MASKED_ETC_FILES: [&str; 10] = [
    "ipsec.secrets",
    "ppp/chap-secrets",
    "ppp/pap-secrets",
    "shadow",
    "shadow-",
    "gshadow",
    "gshadow-",
    "sudoers",
    "security/opasswd",
    "krb5.keytab",
];
const MASKED_ETC_DIRS: [&str; 14] = [
    "sudoers.d",
    "ssl/private",
    "ssh",
    "wireguard",
    "NetworkManager/system-connections",
    "letsencrypt",
    "credstore",
    "credstore.encrypted",
    "docker",
    "openvpn",
    "sssd",
    "libvirt",
    "ipsec.d/private",
    "polkit-1/rules.d",
];
/// Host devices bound into `/dev`.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Stages `plan` at `<plan.dir>/root`; `userns` is the sandbox's user
/// namespace (its ids, and a descriptor of it for id-mapped mounts). Without
/// `fresh`, the root gets none of [`fresh_mounts`] (a microVM's guest makes
/// its own).
///
/// # Errors
/// The first step that failed, as the agent's boot error (stage `mount`, or
/// `image` for what the rootfs lacks).
pub(super) fn stage(
    plan: &RootPlan,
    userns: Option<(IdRange, &OwnedFd)>,
    fresh: bool,
) -> Result<(), BootError> {
    let dir = Path::new(&plan.dir);
    let owner = userns.map_or(0, |(ids, _)| ids.first);
    let mapping = userns.map(|(_, fd)| fd);
    for path in std::iter::once(&plan.dir).chain(plan.lowers.iter()) {
        if path.contains([',', ':', '\\']) {
            return Err(boot_error(
                BootStage::Mount,
                Errno::EINVAL,
                &format!("{path}: a layer's path may not hold ',', ':' or '\\'"),
            ));
        }
    }
    make_dir(dir, 0o700, 0)?;
    let root = dir.join("root");
    make_dir(&root, 0o700, 0)?;
    let layers = Layers {
        upper: dir.join("upper"),
        work: dir.join("work"),
        owner,
        mapping,
        read_only: plan.read_only,
    };
    if !plan.read_only {
        make_dir(&layers.upper, 0o700, 0)?;
        make_dir(&layers.work, 0o700, 0)?;
    }
    if plan.lowers.is_empty() {
        host_base(&layers, dir, &root)?;
    } else {
        let lowers: Vec<&Path> = plan.lowers.iter().map(Path::new).collect();
        layers.mount(&lowers, "root", &root)?;
    }
    let root_fd = open_path(&root, true)?;
    for point in MOUNT_POINTS {
        inside(&root_fd, point, Kind::Dir, !plan.read_only, owner)?;
        // The agent mounts on these by path: a link (`proc -> .`) would
        // move its mounts elsewhere.
        open_at(
            &root_fd,
            point,
            libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_SYMLINKS,
        )
        .map_err(|e| {
            boot_error(
                BootStage::Image,
                e,
                &format!("/{point} in the root must be a directory"),
            )
        })?;
    }
    if fresh {
        fresh_mounts(&root_fd, plan.tmpfs_bytes, owner)?;
    }
    // A read-only rootfs is never written: its volumes' targets must exist.
    let create = !plan.read_only || plan.lowers.is_empty();
    for (i, volume) in plan.mounts.iter().enumerate() {
        bind_volume(&root_fd, volume, owner, create).map_err(|e| {
            boot_error(
                BootStage::Mount,
                e,
                &format!("mounts[{i}] {}", volume.target),
            )
        })?;
    }
    if plan.read_only && plan.lowers.is_empty() {
        // Only now: the volumes' mount points were made in the skeleton.
        mount(
            None::<&str>,
            &root,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NODEV | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| boot_error(BootStage::Mount, e, "make the root read-only"))?;
    }
    // Last, since it hides the host's `/tmp` (which may hold the home).
    // Moved, not bound: a recursive bind would leave a second copy of every
    // staged mount at `<fs dir>/root`, which the agent's mount namespace
    // would copy again and tear down with it.
    mount(
        Some(&root),
        STAGED_AT,
        None::<&str>,
        MsFlags::MS_MOVE,
        None::<&str>,
    )
    .map_err(|e| {
        boot_error(
            BootStage::Mount,
            e,
            &format!("move the root to {STAGED_AT}"),
        )
    })
}

/// The fresh mounts every root gets, in the root `root_fd`: size-limited
/// tmpfs `/tmp`, `/run`, `/var/tmp`, a private `/dev` (nosuid, noexec) with
/// binds of this namespace's null, zero, full, random, urandom and tty, and
/// `/dev/shm`, owned by `owner`. A microVM's guest makes its own over the
/// root the host shared (see [`crate::guest`]).
///
/// # Errors
/// The first mount that failed (stage `mount`).
pub(crate) fn fresh_mounts(
    root_fd: &OwnedFd,
    tmpfs_bytes: u64,
    owner: u32,
) -> Result<(), BootError> {
    let tmpfs = |target: &str, mode: &str, size: u64, extra: MsFlags| {
        let at = inside(root_fd, target, Kind::Dir, false, owner)?;
        let data = format!("mode={mode},size={size},uid={owner},gid={owner}");
        mount(
            Some("tmpfs"),
            fd_path(&at).as_str(),
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | extra,
            Some(data.as_str()),
        )
        .map_err(|e| boot_error(BootStage::Mount, e, &format!("mount a tmpfs at /{target}")))
    };
    tmpfs("tmp", "1777", tmpfs_bytes, MsFlags::empty())?;
    tmpfs("run", "755", tmpfs_bytes, MsFlags::empty())?;
    tmpfs("var/tmp", "1777", tmpfs_bytes, MsFlags::empty())?;
    tmpfs("dev", "755", 1 << 20, MsFlags::MS_NOEXEC)?;
    dev(root_fd, owner)?;
    tmpfs("dev/shm", "1777", tmpfs_bytes, MsFlags::MS_NOEXEC)?;
    Ok(())
}

/// How the layers of this root are made.
struct Layers<'a> {
    upper: PathBuf,
    work: PathBuf,
    /// Host id of root inside.
    owner: u32,
    /// The user namespace lowers are id-mapped to.
    mapping: Option<&'a OwnedFd>,
    read_only: bool,
}

impl Layers<'_> {
    /// Mounts `lowers` (top first) at `target`: one bound read-only, several
    /// as a read-only overlay, or as the lower layers of an overlay whose
    /// writable layer is `upper/<name>`.
    fn mount(&self, lowers: &[&Path], name: &str, target: &Path) -> Result<(), BootError> {
        let shown = lowers
            .first()
            .map_or_else(String::new, |top| top.display().to_string());
        let what =
            |e: Errno, doing: &str| boot_error(BootStage::Mount, e, &format!("{doing} {shown}"));
        let mut trees = Vec::with_capacity(lowers.len());
        for lower in lowers {
            trees.push(
                detached(lower, self.mapping, libc::MOUNT_ATTR_NODEV).map_err(|e| {
                    boot_error(
                        BootStage::Mount,
                        e,
                        &format!("open the layer {}", lower.display()),
                    )
                })?,
            );
        }
        let lowerdir = trees.iter().map(fd_path).collect::<Vec<_>>().join(":");
        if self.read_only {
            if let [tree] = trees.as_slice() {
                let onto = open_path(target, true)?;
                return attach(tree, &onto).map_err(|e| what(e, "mount the read-only layer"));
            }
            // Two or more lowers and no upper: overlayfs mounts them read-only.
            let options = format!("lowerdir={lowerdir}");
            return mount(
                Some("overlay"),
                target,
                Some("overlay"),
                MsFlags::MS_NODEV | MsFlags::MS_RDONLY,
                Some(options.as_str()),
            )
            .map_err(|e| what(e, "mount the read-only layers"));
        }
        let upper = self.upper.join(name);
        let work = self.work.join(name);
        make_dir(&upper, 0o755, self.owner)?;
        make_dir(&work, 0o700, 0)?;
        let options = format!(
            "lowerdir={lowerdir},upperdir={},workdir={}",
            upper.display(),
            work.display()
        );
        mount(
            Some("overlay"),
            target,
            Some("overlay"),
            MsFlags::MS_NODEV,
            Some(options.as_str()),
        )
        .map_err(|e| what(e, "mount the writable layer over"))
    }
}

/// The host base at `root`: the skeleton (the writable layer's root, or a
/// read-only one), the host's system directories, their secrets masked.
fn host_base(layers: &Layers<'_>, dir: &Path, root: &Path) -> Result<(), BootError> {
    let skeleton = if layers.read_only {
        dir.join("base")
    } else {
        layers.upper.join("root")
    };
    make_dir(&skeleton, 0o755, layers.owner)?;
    // The skeleton is the sandbox's own `/` when writable: resolve in it.
    let skeleton_fd = open_path(&skeleton, true)?;
    for name in MOUNT_POINTS.iter().chain(SKELETON.iter()) {
        inside(&skeleton_fd, name, Kind::Dir, true, layers.owner)?;
    }
    let mut dirs = Vec::new();
    for name in HOST_BASE {
        let host = Path::new("/").join(name);
        let Ok(meta) = std::fs::symlink_metadata(&host) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            if resolve_here(&skeleton_fd, name).is_err() {
                let link = std::fs::read_link(&host).map_err(|e| {
                    boot_error(
                        BootStage::Mount,
                        errno_of(&e),
                        &format!("read {}", host.display()),
                    )
                })?;
                nix::unistd::symlinkat(&link, &skeleton_fd, name)
                    .map_err(|e| boot_error(BootStage::Mount, e, &format!("link /{name}")))?;
            }
        } else if meta.is_dir() {
            inside(&skeleton_fd, name, Kind::Dir, true, layers.owner)?;
            dirs.push((host, name));
        }
    }
    mount(
        Some(&skeleton),
        root,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| boot_error(BootStage::Mount, e, "bind the root layer"))?;
    mount(
        None::<&str>,
        root,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(|e| boot_error(BootStage::Mount, e, "make the root layer nodev"))?;
    let root_fd = open_path(root, true)?;
    for (host, name) in dirs {
        let at = inside(&root_fd, name, Kind::Dir, false, layers.owner)?;
        layers.mount(&[&host], name, Path::new(&fd_path(&at)))?;
    }
    mask_secrets(&root_fd)
}

/// What under the host's `/etc` others may not read (paths relative to
/// it; `true` for a directory, whose contents are not listed): the host
/// base hides all of it, since id-mapping makes the host's service users
/// (and root, with `CAP_DAC_OVERRIDE`) the sandbox's own. Read once per
/// spawner process, before it forks anything.
pub(crate) fn private_etc() -> &'static [(String, bool)] {
    static PRIVATE: std::sync::OnceLock<Vec<(String, bool)>> = std::sync::OnceLock::new();
    PRIVATE.get_or_init(|| {
        let mut found = Vec::new();
        walk_private(Path::new("/etc"), "", &mut found);
        found
    })
}

fn walk_private(dir: &Path, prefix: &str, found: &mut Vec<(String, bool)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let readable = meta.permissions().mode() & 0o004 != 0;
        if meta.is_dir() {
            if readable && meta.permissions().mode() & 0o001 != 0 {
                walk_private(&entry.path(), &rel, found);
            } else {
                found.push((rel, true));
            }
        } else if meta.is_file() && !readable {
            found.push((rel, false));
        }
    }
}

/// Hides the host's secrets under `/etc` of the host base: directories
/// first, so what lies under a masked one (a private key in `/etc/ssh`)
/// resolves no more and gets no mount of its own; then files.
fn mask_secrets(root: &OwnedFd) -> Result<(), BootError> {
    let private_dirs = private_etc()
        .iter()
        .filter(|(_, dir)| *dir)
        .map(|(p, _)| p.as_str());
    let mut masked: Vec<&str> = Vec::new();
    let mut empty = EmptyMasks::new(c"755");
    for dir in MASKED_ETC_DIRS.into_iter().chain(private_dirs) {
        // A name on both lists (`ssl/private`) is masked once.
        if masked.contains(&dir) {
            continue;
        }
        masked.push(dir);
        let Ok(at) = resolve(root, &format!("etc/{dir}")) else {
            continue;
        };
        empty
            .cover(&at)
            .map_err(|e| boot_error(BootStage::Mount, e, &format!("mask /etc/{dir}")))?;
    }
    let null = detached(Path::new("/dev/null"), None, 0)
        .map_err(|e| boot_error(BootStage::Mount, e, "open /dev/null"))?;
    let private_files = private_etc()
        .iter()
        .filter(|(_, dir)| !*dir)
        .map(|(p, _)| p.as_str());
    for file in MASKED_ETC_FILES.into_iter().chain(private_files) {
        if masked.contains(&file) {
            continue;
        }
        masked.push(file);
        let Ok(at) = resolve(root, &format!("etc/{file}")) else {
            continue;
        };
        let null =
            clone_tree(&null).map_err(|e| boot_error(BootStage::Mount, e, "clone /dev/null"))?;
        attach(&null, &at)
            .map_err(|e| boot_error(BootStage::Mount, e, &format!("mask /etc/{file}")))?;
    }
    Ok(())
}

/// Empty read-only directories over mask targets, all from one tmpfs: the
/// first target gets a new one (see [`empty_tmpfs`]), attached through its
/// own descriptor, which then stands for the attached mount; the others get
/// copies of that mount. A superblock per mask costs the kernel several
/// times what a copy of a mount does, and no target is looked up twice (a
/// link in the sandbox's own layer could lead a second lookup elsewhere
/// once the first mask is in place).
pub(crate) struct EmptyMasks {
    mode: &'static std::ffi::CStr,
    tree: Option<OwnedFd>,
}

impl EmptyMasks {
    /// Masks whose directories have `mode` (octal, as tmpfs takes it).
    pub(crate) fn new(mode: &'static std::ffi::CStr) -> Self {
        Self { mode, tree: None }
    }

    /// Covers what the `O_PATH` descriptor `at` refers to.
    ///
    /// # Errors
    /// The errno of making, copying or attaching the mount.
    pub(crate) fn cover(&mut self, at: &OwnedFd) -> Result<(), Errno> {
        if let Some(tree) = &self.tree {
            return attach(&clone_tree(tree)?, at);
        }
        let tree = empty_tmpfs(self.mode)?;
        attach(&tree, at)?;
        self.tree = Some(tree);
        Ok(())
    }
}

/// A new empty tmpfs whose root has `mode`, not attached anywhere:
/// read-only (its superblock too, owned by the user namespace that made it:
/// the host's for the staging child's masks, so no sandbox may make those
/// writable), nosuid, nodev and noexec.
fn empty_tmpfs(mode: &std::ffi::CStr) -> Result<OwnedFd, Errno> {
    let context = owned(unsafe {
        // SAFETY: fsopen takes a NUL-terminated filesystem name and flags.
        libc::syscall(libc::SYS_fsopen, c"tmpfs".as_ptr(), libc::FSOPEN_CLOEXEC)
    })?;
    let settings: [(libc::c_uint, &std::ffi::CStr, Option<&std::ffi::CStr>); 4] = [
        (libc::FSCONFIG_SET_STRING, c"size", Some(c"4k")),
        (libc::FSCONFIG_SET_STRING, c"mode", Some(mode)),
        (libc::FSCONFIG_SET_FLAG, c"ro", None),
        (libc::FSCONFIG_CMD_CREATE, c"", None),
    ];
    for (command, key, value) in settings {
        let key = if key.is_empty() {
            std::ptr::null()
        } else {
            key.as_ptr()
        };
        let value = value.map_or(std::ptr::null(), std::ffi::CStr::as_ptr);
        // SAFETY: NUL-terminated strings (or null where the command takes
        // none) and no binary argument.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                context.as_raw_fd(),
                command,
                key,
                value,
                0,
            )
        };
        if ret < 0 {
            return Err(Errno::last());
        }
    }
    owned(unsafe {
        // SAFETY: fsmount takes the context's descriptor, flags and mount
        // attributes.
        libc::syscall(
            libc::SYS_fsmount,
            context.as_raw_fd(),
            libc::FSMOUNT_CLOEXEC,
            libc::MOUNT_ATTR_RDONLY
                | libc::MOUNT_ATTR_NOSUID
                | libc::MOUNT_ATTR_NODEV
                | libc::MOUNT_ATTR_NOEXEC,
        )
    })
}

/// `/dev`'s contents (its tmpfs is mounted): the host's harmless devices,
/// and the mount points and links the agent completes.
fn dev(root: &OwnedFd, owner: u32) -> Result<(), BootError> {
    for name in DEVICES {
        let host = detached(&Path::new("/dev").join(name), None, 0)
            .map_err(|e| boot_error(BootStage::Mount, e, &format!("open /dev/{name}")))?;
        let at = inside(root, &format!("dev/{name}"), Kind::File, true, owner)?;
        attach(&host, &at)
            .map_err(|e| boot_error(BootStage::Mount, e, &format!("bind /dev/{name}")))?;
    }
    for name in ["pts", "shm", "mqueue"] {
        inside(root, &format!("dev/{name}"), Kind::Dir, true, owner)?;
    }
    let dev = resolve(root, "dev").map_err(|e| boot_error(BootStage::Mount, e, "open /dev"))?;
    for (name, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        nix::unistd::symlinkat(target, &dev, name)
            .map_err(|e| boot_error(BootStage::Mount, e, &format!("link /dev/{name}")))?;
    }
    Ok(())
}

/// Binds `volume`'s host source at its target inside the root.
fn bind_volume(root: &OwnedFd, volume: &BindMount, owner: u32, create: bool) -> Result<(), Errno> {
    // The runtime stored the source's canonical path when the sandbox was
    // created: a link in it now was put there later (perhaps by a sandbox
    // sharing a parent directory), so it is refused, not followed.
    let root_dir = open_path(Path::new("/"), true).map_err(|e| Errno::from_raw(e.errno))?;
    let source = open_at(
        &root_dir,
        volume.source.trim_start_matches('/'),
        libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_BENEATH,
    )?;
    let kind = if nix::sys::stat::fstat(&source)?.st_mode & libc::S_IFMT == libc::S_IFDIR {
        Kind::Dir
    } else {
        Kind::File
    };
    // Not recursive: mounts under the source (a host /proc) stay out.
    let tree = clone_tree(&source)?;
    let mut attrs = libc::MOUNT_ATTR_NODEV | libc::MOUNT_ATTR_NOSUID;
    if volume.read_only {
        attrs |= libc::MOUNT_ATTR_RDONLY;
    }
    set_attrs(&tree, attrs, None, false)?;
    let target = volume.target.trim_start_matches('/');
    let at = inside(root, target, kind, create, owner).map_err(|e| Errno::from_raw(e.errno))?;
    attach(&tree, &at)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
}

/// An `O_PATH` descriptor of `path` inside the root `root`, created (as
/// `kind`, owned by `owner`, with its missing parents) when `create`.
///
/// # Errors
/// A boot error naming the path.
fn inside(
    root: &OwnedFd,
    path: &str,
    kind: Kind,
    create: bool,
    owner: u32,
) -> Result<OwnedFd, BootError> {
    let failed = |e: Errno, doing: &str| {
        boot_error(BootStage::Image, e, &format!("{doing} /{path} in the root"))
    };
    match resolve(root, path) {
        Ok(fd) => return Ok(fd),
        Err(Errno::ENOENT) if create => {}
        Err(e) => return Err(failed(e, "find")),
    }
    let mut parent = String::new();
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    for (i, part) in parts.iter().enumerate() {
        let here = if parent.is_empty() {
            (*part).to_string()
        } else {
            format!("{parent}/{part}")
        };
        if resolve(root, &here).is_err() {
            let dir = if parent.is_empty() {
                resolve(root, ".")
            } else {
                resolve(root, &parent)
            }
            .map_err(|e| failed(e, "find the parent of"))?;
            let dir = reopen_dir(&dir).map_err(|e| failed(e, "open the parent of"))?;
            let last = i + 1 == parts.len();
            let made = if last && kind == Kind::File {
                nix::fcntl::openat(
                    &dir,
                    *part,
                    nix::fcntl::OFlag::O_CREAT
                        | nix::fcntl::OFlag::O_EXCL
                        | nix::fcntl::OFlag::O_CLOEXEC
                        | nix::fcntl::OFlag::O_WRONLY,
                    nix::sys::stat::Mode::from_bits_truncate(0o644),
                )
                .map(drop)
            } else {
                nix::sys::stat::mkdirat(
                    &dir,
                    *part,
                    nix::sys::stat::Mode::from_bits_truncate(0o755),
                )
            };
            match made {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(failed(e, "create")),
            }
            nix::unistd::fchownat(
                &dir,
                *part,
                Some(owner.into()),
                Some(owner.into()),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| failed(e, "own"))?;
        }
        parent = here;
    }
    resolve(root, path).map_err(|e| failed(e, "find"))
}

/// Whether `name` exists right in the directory `dir` (a link is not
/// followed).
fn resolve_here(dir: &OwnedFd, name: &str) -> Result<(), Errno> {
    nix::sys::stat::fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).map(|_| ())
}

/// `openat2(root, path, O_PATH, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`.
fn resolve(root: &OwnedFd, path: &str) -> Result<OwnedFd, Errno> {
    open_at(
        root,
        path,
        libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    )
}

/// `openat2(dir, path, O_PATH, resolve)`.
fn open_at(dir: &OwnedFd, path: &str, resolve: u64) -> Result<OwnedFd, Errno> {
    let root = dir;
    let path = std::ffi::CString::new(path).map_err(|_| Errno::EINVAL)?;
    // SAFETY: open_how is plain data; zero is "unset" for every field.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
    how.resolve = resolve;
    owned(unsafe {
        // SAFETY: a NUL-terminated path and an open_how of the size given.
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            path.as_ptr(),
            std::ptr::addr_of!(how),
            std::mem::size_of::<libc::open_how>(),
        )
    })
}

/// A directory descriptor (not `O_PATH`) of the `O_PATH` descriptor `fd`.
fn reopen_dir(fd: &OwnedFd) -> Result<OwnedFd, Errno> {
    nix::fcntl::open(
        fd_path(fd).as_str(),
        nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
}

/// An `O_PATH` descriptor of the host path `path`.
pub(crate) fn open_path(path: &Path, dir: bool) -> Result<OwnedFd, BootError> {
    let mut flags = nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC;
    if dir {
        flags |= nix::fcntl::OFlag::O_DIRECTORY;
    }
    nix::fcntl::open(path, flags, nix::sys::stat::Mode::empty())
        .map_err(|e| boot_error(BootStage::Mount, e, &format!("open {}", path.display())))
}

/// A detached, read-only, nosuid copy of the mount at `path` (not its
/// submounts), with the mount attributes `extra` (`MOUNT_ATTR_NODEV` for
/// every layer: only the device binds may open devices), id-mapped to
/// `mapping` if given.
fn detached(path: &Path, mapping: Option<&OwnedFd>, extra: u64) -> Result<OwnedFd, Errno> {
    let c_path =
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| Errno::EINVAL)?;
    let tree = owned(unsafe {
        // SAFETY: open_tree takes a NUL-terminated path and flags.
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c_path.as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC,
        )
    })?;
    let mut attrs = libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | extra;
    if mapping.is_some() {
        attrs |= libc::MOUNT_ATTR_IDMAP;
    }
    set_attrs(&tree, attrs, mapping, false)?;
    Ok(tree)
}

/// Another detached copy of the detached tree `tree`.
fn clone_tree(tree: &OwnedFd) -> Result<OwnedFd, Errno> {
    owned(unsafe {
        // SAFETY: open_tree on a descriptor with an empty path.
        libc::syscall(
            libc::SYS_open_tree,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_EMPTY_PATH as u32,
        )
    })
}

/// `mount_setattr` on the detached tree `tree`.
fn set_attrs(
    tree: &OwnedFd,
    attrs: u64,
    mapping: Option<&OwnedFd>,
    recursive: bool,
) -> Result<(), Errno> {
    // SAFETY: mount_attr is plain data; zero is "unset" for every field.
    let mut attr: libc::mount_attr = unsafe { std::mem::zeroed() };
    attr.attr_set = attrs;
    if let Some(userns) = mapping {
        attr.userns_fd = userns.as_raw_fd() as u64;
    }
    let mut flags = libc::AT_EMPTY_PATH as u32;
    if recursive {
        flags |= libc::AT_RECURSIVE as u32;
    }
    // SAFETY: an empty path on a descriptor, and a mount_attr of its size.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            flags,
            std::ptr::addr_of!(attr),
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if ret < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Mounts the detached tree `tree` on what the `O_PATH` descriptor `onto`
/// refers to.
fn attach(tree: &OwnedFd, onto: &OwnedFd) -> Result<(), Errno> {
    // SAFETY: empty paths on two descriptors.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            onto.as_raw_fd(),
            c"".as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if ret < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Creates `path` (and its parents) if missing; sets its mode and owner.
fn make_dir(path: &Path, mode: u32, owner: u32) -> Result<(), BootError> {
    let failed = |e: std::io::Error, doing: &str| {
        boot_error(
            BootStage::Mount,
            errno_of(&e),
            &format!("{doing} {}", path.display()),
        )
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|e| failed(e, "create"))?;
    // Only sandvisor writes these paths (a restored snapshot included): a
    // link here would send the mode, the owner and the overlay's writable
    // layer to wherever it points.
    let is_dir = std::fs::symlink_metadata(path).map_err(|e| failed(e, "inspect"))?;
    if !is_dir.is_dir() {
        return Err(boot_error(
            BootStage::Mount,
            Errno::ENOTDIR,
            &format!("{} is not a directory (a link?)", path.display()),
        ));
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| failed(e, "set the mode of"))?;
    lchown(path, owner)
}

fn lchown(path: &Path, owner: u32) -> Result<(), BootError> {
    std::os::unix::fs::lchown(path, Some(owner), Some(owner)).map_err(|e| {
        boot_error(
            BootStage::Mount,
            errno_of(&e),
            &format!("own {}", path.display()),
        )
    })
}
