//! The microVM backend's host side: where its programs and guest kernel
//! are, the guest's initramfs ([`initramfs`]), and whether `/dev/kvm` runs
//! guests ([`Accel`], by a boot probe).
//!
//! A microVM sandbox is started by the same spawner as a namespace sandbox,
//! with the same staged root; its [`VmLaunch`] makes the spawned process
//! launch the VM instead of being the agent (see ARCHITECTURE.md, "The
//! microVM backend").

pub mod initramfs;
mod probe_cache;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sandvisor_actors::protocol::{VmLaunch, VM_PROBE_ARG, VM_PROBE_OK};

use crate::error::{Error, Result};

/// How long the boot probe gives a guest on `/dev/kvm`.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);
/// Host memory a microVM sandbox's cgroup gets beyond its guest's: qemu,
/// its translation cache under TCG, virtiofsd.
pub const VM_OVERHEAD: u64 = 256 << 20;
/// How long a microVM may take from launch to its agent's `Ready`: a TCG
/// guest on a loaded host boots in seconds, not milliseconds.
pub const VM_BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// How guests are run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualization through `/dev/kvm`.
    Kvm,
    /// qemu's software emulation.
    Tcg,
}

impl Accel {
    /// `kvm` or `tcg`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
        }
    }
}

/// The programs and kernel of a runtime's microVMs.
#[derive(Debug, Clone, Default)]
pub struct VmSettings {
    /// The guest kernel; `None`: the newest Debian cloud kernel in `/boot`,
    /// else the newest kernel there.
    pub kernel: Option<PathBuf>,
    /// Its modules (`/lib/modules/<release>`); `None`: derived from the
    /// kernel's file name (`vmlinuz-<release>`).
    pub modules: Option<PathBuf>,
    /// `qemu-system-x86_64`; `None`: found on `PATH`.
    pub qemu: Option<PathBuf>,
    /// `virtiofsd`; `None`: found on `PATH` or where distributions put it.
    pub virtiofsd: Option<PathBuf>,
    /// Forces the accelerator; `None`: KVM if the boot probe passes.
    pub accel: Option<Accel>,
}

/// What a runtime knows of its microVMs once the first one started.
#[derive(Debug, Default)]
pub(crate) struct VmHost {
    settings: VmSettings,
    /// The probe's answer, asked once per runtime.
    accel: Mutex<Option<Accel>>,
    /// The initramfs last ensured, and what it was built from (the agent's
    /// and the modules' identity): every VM start would otherwise hash the
    /// agent binary and run `ldd` again.
    initramfs: Mutex<Option<(Built, PathBuf)>>,
}

/// What an initramfs was built from, as cheaply compared as read: the
/// agent binary's path, size and modification time, and the modules'
/// directory. A rebuilt agent differs in its time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Built {
    agent: PathBuf,
    size: u64,
    modified: Option<std::time::SystemTime>,
    modules: PathBuf,
}

impl Built {
    fn of(agent: &Path, modules: &Path) -> Option<Self> {
        let meta = std::fs::metadata(agent).ok()?;
        Some(Self {
            agent: agent.to_path_buf(),
            size: meta.len(),
            modified: meta.modified().ok(),
            modules: modules.to_path_buf(),
        })
    }
}

impl VmHost {
    pub(crate) fn new(settings: VmSettings) -> Arc<Self> {
        Arc::new(Self {
            settings,
            accel: Mutex::new(None),
            initramfs: Mutex::new(None),
        })
    }

    /// The launch of a microVM with `vcpus` and `memory_mib` whose console
    /// is `console`: builds the initramfs if needed and probes `/dev/kvm`
    /// once. Blocking: call it off the runtime's threads.
    ///
    /// # Errors
    /// As [`initramfs::ensure`]. A missing kernel, qemu or virtiofsd is not
    /// an error here: the run fails at stage `build_vm`, naming it.
    pub(crate) fn launch(
        &self,
        home: &Path,
        agent: &Path,
        console: &Path,
        vcpus: u32,
        memory_mib: u64,
    ) -> Result<VmLaunch> {
        let kernel = self.kernel();
        let initramfs = if kernel.is_file() {
            self.initramfs(home, agent, &self.modules_dir(&kernel))?
        } else {
            home.join("vm").join("initramfs-missing-kernel.cpio")
        };
        let qemu = self
            .settings
            .qemu
            .clone()
            .unwrap_or_else(|| on_path("qemu-system-x86_64", &[]));
        let virtiofsd = self.settings.virtiofsd.clone().unwrap_or_else(|| {
            on_path(
                "virtiofsd",
                &["/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"],
            )
        });
        let accel = self.accel(home, &qemu, &kernel, &initramfs);
        // For `inspect` from other processes; a failed write only leaves it
        // unknown there.
        let _ = std::fs::write(home.join("vm").join(ACCEL_FILE), accel.as_str());
        let text = |path: &Path| {
            path.to_str()
                .map(str::to_string)
                .ok_or_else(|| Error::InvalidConfig {
                    field: "vm".into(),
                    reason: format!("{} is not UTF-8", path.display()),
                })
        };
        Ok(VmLaunch {
            qemu: text(&qemu)?,
            virtiofsd: text(&virtiofsd)?,
            kernel: text(&kernel)?,
            initramfs: text(&initramfs)?,
            console: text(console)?,
            kvm: accel == Accel::Kvm,
            vcpus,
            memory_mib,
            kernel_args: clock_args(),
        })
    }

    /// The initramfs for `agent` and `modules`: the one ensured last if
    /// neither changed since (and it is still there), else ensured anew.
    fn initramfs(&self, home: &Path, agent: &Path, modules: &Path) -> Result<PathBuf> {
        let built = Built::of(agent, modules);
        let mut last = self.initramfs.lock().unwrap_or_else(|e| e.into_inner());
        if let (Some(built), Some((was, path))) = (&built, last.as_ref()) {
            if built == was && path.is_file() {
                return Ok(path.clone());
            }
        }
        let path = initramfs::ensure(home, agent, modules)?;
        *last = built.map(|built| (built, path.clone()));
        Ok(path)
    }

    /// The accelerator guests run with: probed at most once per runtime,
    /// and not at all when `home` kept the answer for the same host boot,
    /// `/dev/kvm`, qemu and kernel.
    pub(crate) fn accel(&self, home: &Path, qemu: &Path, kernel: &Path, initramfs: &Path) -> Accel {
        if let Some(accel) = self.settings.accel {
            return accel;
        }
        let mut known = self.accel.lock().unwrap_or_else(|e| e.into_inner());
        *known.get_or_insert_with(|| {
            let key = probe_cache::ProbeKey::now(qemu, kernel);
            if let Some(accel) = key.as_ref().and_then(|key| probe_cache::kept(home, key)) {
                return accel;
            }
            let accel = probe(qemu, kernel, initramfs);
            tracing::info!(
                accel = accel.as_str(),
                "microVM accelerator chosen by the boot probe"
            );
            if let Some(key) = key {
                probe_cache::keep(home, key, accel);
            }
            accel
        })
    }

    /// The accelerator chosen so far, if any VM was launched.
    pub(crate) fn chosen(&self) -> Option<Accel> {
        self.settings
            .accel
            .or(*self.accel.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn kernel(&self) -> PathBuf {
        self.settings.kernel.clone().unwrap_or_else(default_kernel)
    }

    fn modules_dir(&self, kernel: &Path) -> PathBuf {
        self.settings.modules.clone().unwrap_or_else(|| {
            let release = kernel
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("vmlinuz-"))
                .unwrap_or_default();
            Path::new("/lib/modules").join(release)
        })
    }
}

/// The guest kernel's clock words: its TSC is the host's, so it is told the
/// frequency and trusted instead of calibrated against an emulated timer,
/// which a loaded TCG host made hang.
pub fn clock_args() -> String {
    match tsc_khz() {
        Some(khz) => format!("tsc=reliable no_timer_check tsc_early_khz={khz}"),
        None => "no_timer_check".to_string(),
    }
}

/// The host's TSC frequency in kHz, when its TSC is constant (the guest's
/// TSC is the host's, under TCG and KVM alike): `cpu MHz` of
/// `/proc/cpuinfo`.
fn tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let flags = info.lines().find(|l| l.starts_with("flags"))?;
    if !flags.split_whitespace().any(|flag| flag == "constant_tsc") {
        return None;
    }
    let mhz: f64 = info
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0).round() as u64)
}

/// Where a home records the accelerator its last microVM used.
const ACCEL_FILE: &str = "accel";

/// The accelerator the home's last microVM used, if any was launched.
pub fn recorded_accel(home: &Path) -> Option<Accel> {
    match std::fs::read_to_string(home.join("vm").join(ACCEL_FILE))
        .ok()?
        .trim()
    {
        "kvm" => Some(Accel::Kvm),
        "tcg" => Some(Accel::Tcg),
        _ => None,
    }
}

/// The newest Debian cloud kernel in `/boot`, else the newest kernel there
/// (`/boot/vmlinuz` when there is none: the run then fails naming it).
pub fn default_kernel() -> PathBuf {
    let mut kernels: Vec<PathBuf> = std::fs::read_dir("/boot")
        .map(|dir| {
            dir.flatten()
                .map(|entry| entry.path())
                .filter(|path| {
                    path.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("vmlinuz-"))
                })
                .collect()
        })
        .unwrap_or_default();
    kernels.sort();
    let cloud = kernels
        .iter()
        .rev()
        .find(|path| path.to_string_lossy().ends_with("-cloud-amd64"));
    cloud
        .or(kernels.last())
        .cloned()
        .unwrap_or_else(|| PathBuf::from("/boot/vmlinuz"))
}

/// `name` on `PATH`, else the first of `also` that exists, else `name`
/// itself (the run then fails naming it).
fn on_path(name: &str, also: &[&str]) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .chain(also.iter().map(PathBuf::from))
        .find(|path| path.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Whether `/dev/kvm` runs a guest: boots `kernel` with `initramfs` asked
/// only to print [`VM_PROBE_OK`], under KVM, and waits for it. Some hosts
/// (nested, paravirtual `/dev/kvm`) expose a device on which stock kernels
/// do not boot: anything but that line in time is TCG.
fn probe(qemu: &Path, kernel: &Path, initramfs: &Path) -> Accel {
    if std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Accel::Tcg;
    }
    let child = std::process::Command::new(qemu)
        .env_clear()
        .args(["-M", "microvm,pit=on,pic=on,rtc=on,isa-serial=on"])
        .args(["-accel", "kvm", "-cpu", "host", "-m", "128M", "-smp", "1"])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-serial", "stdio", "-no-reboot"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        .args([
            "-append",
            &format!(
                "console=ttyS0 panic=-1 quiet tsc=reliable no_timer_check {VM_PROBE_ARG} {}",
                tsc_khz()
                    .map(|khz| format!("tsc_early_khz={khz}"))
                    .unwrap_or_default()
            ),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        return Accel::Tcg;
    };
    let Some(stdout) = child.stdout.take() else {
        return Accel::Tcg;
    };
    let (found_tx, found_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let found = std::io::BufReader::new(stdout)
            .lines()
            .map_while(std::result::Result::ok)
            .any(|line| line.contains(VM_PROBE_OK));
        let _ = found_tx.send(found);
    });
    let booted = found_rx.recv_timeout(PROBE_TIMEOUT).unwrap_or(false);
    let _ = child.kill();
    let _ = child.wait();
    if booted {
        Accel::Kvm
    } else {
        Accel::Tcg
    }
}
