//! The backends a backend-independent test runs on (issue 16): the same
//! body, the backend a parameter, once on namespaces and once in a microVM.
//!
//! A body describes what the SPEC promises whatever the backend: it takes
//! `backend: Backend`, builds its sandboxes with
//! `SandboxConfig::with_backend(backend)` (the CLI with [`vm_flag`]), opens
//! its runtime with [`runtime`] (a CLI home goes through [`prepare_home`]),
//! and asserts the same things on both. Under TCG a guest boots in 3–4 s and
//! starts its first shell slowly: a body waits for output by what it waits
//! for, with generous hang guards, never by sleeping.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sandvisor::{Backend, Sandvisor};
use tempfile::TempDir;

/// The microVM a backend-independent body runs in: one vCPU, the default
/// guest memory.
pub const VM: Backend = Backend::MicroVm {
    vcpus: 1,
    memory: 0,
};

/// Runs a backend-independent body on both backends.
///
/// `on_both!(body)` expects `async fn body(backend: Backend)` next to it and
/// generates `mod body { async fn on_namespaces(); async fn on_microvm(); }`,
/// each a `#[tokio::test(flavor = "multi_thread")]` awaiting
/// `super::body(backend)`. `on_both!(blocking body)` does the same for a
/// synchronous `fn body(backend: Backend)` (the CLI's tests) with `#[test]`s.
/// A test is thus named `body::on_namespaces` or `body::on_microvm`: filter
/// on `on_microvm` to run only the VM halves.
#[macro_export]
macro_rules! on_both {
    ($body:ident) => {
        mod $body {
            #[tokio::test(flavor = "multi_thread")]
            async fn on_namespaces() {
                super::$body(sandvisor::Backend::Namespaces).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn on_microvm() {
                super::$body($crate::common::backends::VM).await
            }
        }
    };
    (blocking $body:ident) => {
        mod $body {
            #[test]
            fn on_namespaces() {
                super::$body(sandvisor::Backend::Namespaces)
            }
            #[test]
            fn on_microvm() {
                super::$body($crate::common::backends::VM)
            }
        }
    };
}

/// A runtime over a fresh temp home (as `common::runtime`), ready for
/// `backend`'s sandboxes.
pub async fn runtime(backend: Backend) -> (TempDir, Sandvisor) {
    let home = tempfile::tempdir().unwrap();
    prepare_home(backend, home.path());
    super::runtime_at(home).await
}

/// `run`'s flags for `backend`: `--vm` for a microVM.
pub fn vm_flag(backend: Backend) -> &'static [&'static str] {
    if backend.is_vm() {
        &["--vm"]
    } else {
        &[]
    }
}

/// Readies a fresh home for `backend`'s sandboxes. For a microVM: gives the
/// home the KVM boot probe's answer this host already gave, as a long-lived
/// home keeps it (`<home>/vm/kvm-probe.json`, checked against the host's
/// boot, `/dev/kvm`, qemu and the kernel before use). Here the probe's guest
/// hangs until its 20 s run out, a core busy all along: every fresh home
/// would pay that before its first VM. The probe itself is tried by the
/// tests in `tests/microvm.rs`, whose homes are not readied.
pub fn prepare_home(backend: Backend, home: &Path) {
    if !backend.is_vm() {
        return;
    }
    if let Some(kept) = kept_probe_answer() {
        let dir = home.join("vm");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(kept, dir.join("kvm-probe.json")).unwrap();
    }
}

/// The probe's answer for this host boot, kept under the target's temp
/// directory; the first test that needs it runs one VM for it (`run --vm
/// -- true` in a throwaway home). `None` if that failed: homes then probe.
fn kept_probe_answer() -> Option<&'static Path> {
    static KEPT: OnceLock<Option<PathBuf>> = OnceLock::new();
    KEPT.get_or_init(|| {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let kept = tmp.join(format!("kvm-probe-{}.json", boot.trim()));
        if kept.is_file() {
            return Some(kept);
        }
        let home = tempfile::tempdir_in(tmp).ok()?;
        std::process::Command::new(env!("CARGO_BIN_EXE_sandvisor"))
            .args(["run", "--vm", "--name", "probe", "--", "true"])
            .env("SANDVISOR_HOME", home.path())
            .env_remove("RUST_LOG")
            .env_remove("SANDVISOR_LOG")
            .stdin(std::process::Stdio::null())
            .output()
            .ok()?;
        // Whole or not at all: another test binary may read it meanwhile.
        let partial = tmp.join(format!("kvm-probe.{}.partial", std::process::id()));
        std::fs::copy(home.path().join("vm/kvm-probe.json"), &partial).ok()?;
        std::fs::rename(&partial, &kept).ok()?;
        Some(kept)
    })
    .as_deref()
}
