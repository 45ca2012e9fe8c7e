//! The boot probe's answer, kept in the home.
//!
//! The probe boots a guest under KVM and waits up to 20 s for it: on a host
//! whose `/dev/kvm` does not run guests (a nested, paravirtual device) every
//! runtime — every CLI call that starts a VM — would pay that wait. The
//! answer is kept in `<home>/vm/kvm-probe.json` with what it was asked on:
//! the host's boot (`/proc/sys/kernel/random/boot_id`), `/dev/kvm`'s device
//! number, and qemu's and the kernel's paths, sizes and modification times.
//! A change to any of them asks again.

use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Accel;

/// The file in `<home>/vm`.
const PROBE_FILE: &str = "kvm-probe.json";

/// What the probe's answer depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProbeKey {
    /// The host's boot: a reboot may bring another kernel or device.
    boot_id: String,
    /// `/dev/kvm`'s device number (`None`: no device).
    kvm: Option<u64>,
    qemu: FileStamp,
    kernel: FileStamp,
}

/// A file as it was when the probe ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FileStamp {
    path: PathBuf,
    size: u64,
    mtime_ns: i128,
}

impl FileStamp {
    fn of(path: &Path) -> Option<Self> {
        let meta = std::fs::metadata(path).ok()?;
        Some(Self {
            path: path.to_path_buf(),
            size: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        })
    }
}

impl ProbeKey {
    /// The key for probing with `qemu` and `kernel` now; `None` when one of
    /// them cannot be read (the probe then runs and is not kept).
    pub(crate) fn now(qemu: &Path, kernel: &Path) -> Option<Self> {
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        Some(Self {
            boot_id: boot_id.trim().to_string(),
            kvm: std::fs::metadata("/dev/kvm").ok().map(|m| m.rdev()),
            qemu: FileStamp::of(qemu)?,
            kernel: FileStamp::of(kernel)?,
        })
    }
}

/// A kept answer.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    key: ProbeKey,
    accel: Accel,
}

/// The answer kept in `home` for `key`, if any.
pub(crate) fn kept(home: &Path, key: &ProbeKey) -> Option<Accel> {
    let bytes = std::fs::read(home.join("vm").join(PROBE_FILE)).ok()?;
    let record: Record = serde_json::from_slice(&bytes).ok()?;
    (record.key == *key).then_some(record.accel)
}

/// Keeps `accel` as the answer for `key` in `home` (0600, replaced whole).
/// A failure only means the next runtime probes again.
pub(crate) fn keep(home: &Path, key: ProbeKey, accel: Accel) {
    let dir = home.join("vm");
    let Ok(bytes) = serde_json::to_vec(&Record { key, accel }) else {
        return;
    };
    let partial = dir.join(format!("{PROBE_FILE}.{}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)
        .and_then(|mut file| std::io::Write::write_all(&mut file, &bytes))
        .and_then(|()| std::fs::rename(&partial, dir.join(PROBE_FILE)));
    if let Err(err) = written {
        tracing::debug!(%err, "the boot probe's answer is not kept");
        let _ = std::fs::remove_file(&partial);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(dir: &Path) -> ProbeKey {
        let qemu = dir.join("qemu");
        let kernel = dir.join("vmlinuz");
        std::fs::write(&qemu, b"qemu").unwrap();
        std::fs::write(&kernel, b"kernel").unwrap();
        ProbeKey::now(&qemu, &kernel).unwrap()
    }

    #[test]
    fn an_answer_is_reused_for_the_same_programs_only() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join("vm")).unwrap();
        let first = key(home.path());
        assert_eq!(kept(home.path(), &first), None);
        keep(home.path(), first.clone(), Accel::Tcg);
        assert_eq!(kept(home.path(), &first), Some(Accel::Tcg));
        let mode = std::fs::metadata(home.path().join("vm").join(PROBE_FILE))
            .unwrap()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        // A kernel of another size is another question.
        std::fs::write(home.path().join("vmlinuz"), b"another kernel").unwrap();
        let second =
            ProbeKey::now(&home.path().join("qemu"), &home.path().join("vmlinuz")).unwrap();
        assert_ne!(first, second);
        assert_eq!(kept(home.path(), &second), None);
        let mut rebooted = first.clone();
        rebooted.boot_id.push('x');
        assert_eq!(kept(home.path(), &rebooted), None);
    }

    #[test]
    fn a_damaged_record_means_probing_again() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join("vm")).unwrap();
        let key = key(home.path());
        std::fs::write(home.path().join("vm").join(PROBE_FILE), b"{\"key\": 7").unwrap();
        assert_eq!(kept(home.path(), &key), None);
        assert_eq!(
            ProbeKey::now(&home.path().join("missing"), &home.path().join("vmlinuz")),
            None
        );
    }
}
