//! What isolates a sandbox, as the host asks for it: the [`SpawnPlan`] the
//! spawner carries out before the agent runs (user namespace, the staged
//! root filesystem), and the [`Confinement`] the agent applies to every
//! session's process before it executes the command (capabilities,
//! `no_new_privs`, seccomp, user, resource limits).
//!
//! # Contract
//! - The host validates and resolves everything here (paths absolute, ids
//!   in range, the seccomp filter already compiled); the spawner and the
//!   agent still refuse what they cannot carry out, as a boot error.
//! - Paths are host paths, except [`BindMount::target`], which is a path
//!   inside the sandbox's root, resolved there without leaving it.
//! - A field added later needs `#[serde(default)]` (see [`super::spec`]).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Ids in a sandbox's user namespace: `0 .. count` inside are
/// `first .. first + count` on the host, for users and groups alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IdRange {
    /// The host id that root inside maps to.
    pub first: u32,
    /// How many ids are mapped (65,536 per sandbox).
    pub count: u32,
}

/// The host's system directories the host base shows (read-only lowers,
/// each with a writable layer `upper/<name>` beside the root's
/// `upper/root`).
pub const HOST_BASE: [&str; 8] = [
    "usr", "etc", "bin", "sbin", "lib", "lib32", "lib64", "libx32",
];

/// A host path made visible inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    /// Absolute host path (a directory or a file).
    pub source: String,
    /// Absolute path inside the sandbox; created (in the writable layer)
    /// when missing.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// The sandbox's own root filesystem, staged by the spawner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootPlan {
    /// The sandbox's filesystem directory on the host
    /// (`<home>/sandboxes/<name>/fs`): its writable layer (`upper/`,
    /// `work/`) and the mount point of its root (`root/`) live there.
    pub dir: String,
    /// The read-only lower layers, top first (an image's layers, or one
    /// rootfs directory); none: the host base (the host's system
    /// directories, read-only, secrets masked).
    pub lowers: Vec<String>,
    /// No writable layer: only the fresh tmpfs mounts can be written.
    pub read_only: bool,
    /// Host paths bound inside, in order.
    pub mounts: Vec<BindMount>,
    /// Size in bytes of each fresh tmpfs (`/tmp`, `/run`, `/var/tmp`,
    /// `/dev/shm`).
    pub tmpfs_bytes: u64,
}

/// What the spawner sets up for one agent before it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnPlan {
    /// Make the agent PID 1 of a new pid namespace.
    pub pid_namespace: bool,
    /// A new user namespace with this range mapped (setgroups denied);
    /// `None` keeps the host's ids.
    pub user_namespace: Option<IdRange>,
    /// The root filesystem to stage; `None` leaves the host's `/`
    /// (unconfined sandboxes).
    pub root: Option<RootPlan>,
    /// Create the agent in a new network namespace (owned by its user
    /// namespace, if any), so the host can attach the sandbox's network
    /// before `Start`; the agent then does not unshare another.
    #[serde(default)]
    pub net_namespace: bool,
    /// Run the sandbox in a microVM: the process the spawner creates (in
    /// the namespaces above, with the root staged) launches qemu and
    /// virtiofsd instead of being the agent, and the agent runs as PID 1 of
    /// the guest. `None`: the agent is that process.
    #[serde(default)]
    pub vm: Option<Box<VmLaunch>>,
    /// Where the agent listens for a host that re-adopts it (a path in the
    /// home; the spawner binds it with the host's rights before the agent
    /// exists). With one, the agent outlives a host that dies (see
    /// [`sap`](super::sap), "Re-adoption"); `None`: it ends with its host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopt_socket: Option<std::path::PathBuf>,
}

/// How to launch a sandbox's microVM (the microVM backend).
///
/// Host paths are opened by the staging child (host root) and handed to
/// the launcher as descriptors, so the launcher — root of the sandbox's user
/// namespace only — needs no access to the home.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmLaunch {
    /// `qemu-system-x86_64`.
    pub qemu: String,
    /// `virtiofsd`, which shares the staged root with the guest.
    pub virtiofsd: String,
    /// The guest kernel.
    pub kernel: String,
    /// The initramfs whose `/init` is the agent.
    pub initramfs: String,
    /// The guest's console log (`kernel.log`), appended to; qemu's and
    /// virtiofsd's own messages go there too.
    pub console: String,
    /// Hardware acceleration (`/dev/kvm` runs guests); else TCG.
    pub kvm: bool,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Words added to the guest kernel's command line (the host's TSC
    /// frequency, so that a guest under a loaded TCG host need not
    /// calibrate its clock against an emulated timer).
    #[serde(default)]
    pub kernel_args: String,
}

/// The guest's SAP port: a virtio-serial port of this name.
pub const VM_SAP_PORT: &str = "sandvisor.sap";
/// The virtio-fs tag of the guest's root.
pub const VM_ROOT_TAG: &str = "sandvisor.root";
/// What the guest prints on its console when booted only to show that it
/// boots (kernel command line [`VM_PROBE_ARG`]).
pub const VM_PROBE_OK: &str = "sandvisor: the guest booted";
/// The kernel command-line word that asks the guest only to print
/// [`VM_PROBE_OK`] and power off.
pub const VM_PROBE_ARG: &str = "sandvisor.probe";

/// A user and group inside the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ids {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// A resource limit (`setrlimit(2)`) every session's process gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    /// The resource (`RLIMIT_*` number).
    pub resource: u32,
    /// Soft limit.
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

/// What the agent applies to each session's process between fork and exec,
/// in this order: resource limits, groups and user, capabilities,
/// `no_new_privs`, seccomp (last, so the filter never sees the setup).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confinement {
    /// Capabilities kept in the bounding, permitted and effective sets
    /// (bit `n` is capability `n`); the inheritable and ambient sets are
    /// empty.
    pub capabilities: u64,
    /// The seccomp filter: a classic BPF program (8-byte `sock_filter`
    /// instructions in the host's byte order), base64 in JSON; `None`
    /// installs none. Shared: every sandbox of a capability set holds the
    /// runtime's one compiled copy.
    #[serde(with = "base64_opt")]
    pub seccomp: Option<Arc<Vec<u8>>>,
    /// Resource limits.
    pub rlimits: Vec<Rlimit>,
}

mod base64_opt {
    use std::sync::Arc;

    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        bytes: &Option<Arc<Vec<u8>>>,
        out: S,
    ) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => out.serialize_some(
                &base64::engine::general_purpose::STANDARD.encode(bytes.as_slice()),
            ),
            None => out.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        input: D,
    ) -> Result<Option<Arc<Vec<u8>>>, D::Error> {
        let text: Option<String> = Option::deserialize(input)?;
        text.map(|text| {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map(Arc::new)
                .map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}
