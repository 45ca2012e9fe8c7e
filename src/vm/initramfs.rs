//! The guest's initramfs: the agent as `/init`, the shared libraries it
//! links, and the kernel modules the guest loads before it can reach its
//! root and the host (see the agent's guest module).
//!
//! # Contract
//! - Built once per (agent binary, kernel modules) pair and cached in
//!   `<home>/vm/initramfs-<key>.cpio` (uncompressed: the kernel unpacks it
//!   faster than it would decompress it); a changed agent binary or module
//!   gives a new key, so a stale initramfs is never used.
//! - Written to a temporary file and renamed into place: a concurrent
//!   builder or a crash never leaves a half-written initramfs under its
//!   name.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The modules the guest needs (with what they depend on): virtio-mmio
/// devices, the SAP port, the shared root.
pub const GUEST_MODULES: [&str; 3] = ["virtio_mmio", "virtio_console", "virtiofs"];
/// The file listing the modules in load order (the agent's guest reads it).
const MODULE_ORDER: &str = "modules.order";
/// Directories every initramfs has (mount points of the guest's init).
const DIRS: [&str; 6] = ["dev", "proc", "sys", "tmp", "lib", "modules"];

/// The cached initramfs for `agent` and the modules of `modules_dir`
/// (`/lib/modules/<release>`; none there: a kernel with them built in),
/// built first if missing.
///
/// # Errors
/// [`Error::Io`] naming the file that could not be read or written;
/// [`Error::InvalidConfig`] (`vm_kernel`) when a module the guest needs is
/// neither a module of that kernel nor built into it.
pub fn ensure(home: &Path, agent: &Path, modules_dir: &Path) -> Result<PathBuf> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let agent_bytes = std::fs::read(agent).map_err(io(agent))?;
    let modules = modules(modules_dir)?;
    let libraries = libraries(agent)?;
    let mut hash = Sha256::new();
    hash.update(&agent_bytes);
    for path in modules.iter().chain(libraries.iter()) {
        hash.update(path.as_os_str().as_encoded_bytes());
        hash.update(std::fs::read(path).map_err(io(path))?);
    }
    let key = hex::encode(&hash.finalize()[..8]);
    let dir = home.join("vm");
    let path = dir.join(format!("initramfs-{key}.cpio"));
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(io(&dir))?;
    {
        let mut out = std::io::BufWriter::new(tmp.as_file_mut());
        for dir in DIRS {
            out = entry(out, dir, 0o040_755, &[])?;
        }
        // The kernel opens it for init's standard streams.
        out = cpio::newc::Builder::new("dev/console")
            .mode(0o020_600)
            .rdev_major(5)
            .rdev_minor(1)
            .write(out, 0)
            .finish()
            .map_err(io(&path))?;
        out = entry(
            out,
            "init",
            0o100_755,
            &stripped(agent, &dir).unwrap_or(agent_bytes),
        )?;
        let mut made = BTreeSet::new();
        for library in &libraries {
            let inside = library.strip_prefix("/").unwrap_or(library);
            for parent in inside
                .ancestors()
                .skip(1)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
            {
                let name = parent.to_string_lossy().to_string();
                if !name.is_empty() && made.insert(name.clone()) && !DIRS.contains(&name.as_str()) {
                    out = entry(out, &name, 0o040_755, &[])?;
                }
            }
            let bytes = std::fs::read(library).map_err(io(library))?;
            out = entry(out, &inside.to_string_lossy(), 0o100_755, &bytes)?;
        }
        let mut order = String::new();
        for (i, module) in modules.iter().enumerate() {
            let name = format!("modules/{i:02}.ko");
            let bytes = std::fs::read(module).map_err(io(module))?;
            out = entry(out, &name, 0o100_644, &bytes)?;
            order.push_str(&format!("/{name}\n"));
        }
        out = entry(out, MODULE_ORDER, 0o100_644, order.as_bytes())?;
        let mut out = cpio::newc::trailer(out).map_err(io(&path))?;
        out.flush().map_err(io(&path))?;
    }
    // Read by qemu as root of the sandbox's user namespace (through a
    // descriptor: the home itself stays closed to it).
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .map_err(io(&path))?;
    tmp.as_file().sync_all().map_err(io(&path))?;
    tmp.persist(&path).map_err(|e| Error::Io {
        path: path.clone(),
        source: e.error,
    })?;
    Ok(path)
}

/// `agent` without its debug information (`objcopy --strip-debug`), when
/// binutils are there: the guest's kernel unpacks every byte of the
/// initramfs at boot, and qemu keeps it mapped.
fn stripped(agent: &Path, scratch: &Path) -> Option<Vec<u8>> {
    let out = tempfile::NamedTempFile::new_in(scratch).ok()?;
    let done = std::process::Command::new("objcopy")
        .arg("--strip-debug")
        .arg(agent)
        .arg(out.path())
        .env_clear()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?;
    if !done.success() {
        return None;
    }
    std::fs::read(out.path()).ok()
}

fn entry<W: Write>(out: W, name: &str, mode: u32, bytes: &[u8]) -> Result<W> {
    let size = u32::try_from(bytes.len()).map_err(|_| Error::Io {
        path: PathBuf::from(name),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "too large for cpio"),
    })?;
    let mut writer = cpio::newc::Builder::new(name)
        .mode(mode)
        .nlink(1)
        .write(out, size);
    writer
        .write_all(bytes)
        .and_then(|()| writer.finish())
        .map_err(|source| Error::Io {
            path: PathBuf::from(name),
            source,
        })
}

/// The module files the guest loads, dependencies first, from
/// `modules.dep` of `dir`; modules built into the kernel
/// (`modules.builtin`) need no file.
fn modules(dir: &Path) -> Result<Vec<PathBuf>> {
    let deps_file = dir.join("modules.dep");
    let Ok(deps) = std::fs::read_to_string(&deps_file) else {
        return Ok(Vec::new());
    };
    let builtin = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
    let name_of = |path: &str| {
        Path::new(path)
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split('.').next())
            .map(|n| n.replace('-', "_"))
            .unwrap_or_default()
    };
    let mut table = std::collections::HashMap::new();
    for line in deps.lines() {
        if let Some((module, needs)) = line.split_once(':') {
            let needs: Vec<String> = needs.split_whitespace().map(str::to_string).collect();
            table.insert(name_of(module), (module.to_string(), needs));
        }
    }
    let mut ordered = Vec::new();
    let mut seen = BTreeSet::new();
    for wanted in GUEST_MODULES {
        let Some((file, needs)) = table.get(wanted) else {
            if builtin.lines().any(|line| name_of(line) == wanted) {
                continue;
            }
            return Err(Error::InvalidConfig {
                field: "vm_kernel".into(),
                reason: format!(
                    "{wanted} is neither a module in {} nor built into the kernel",
                    dir.display()
                ),
            });
        };
        // modules.dep lists every module needed, the deepest last.
        for path in needs.iter().rev().chain(std::iter::once(file)) {
            if seen.insert(path.clone()) {
                ordered.push(dir.join(path));
            }
        }
    }
    Ok(ordered)
}

/// The shared libraries `agent` links (and its loader), as `ldd` lists
/// them.
fn libraries(agent: &Path) -> Result<Vec<PathBuf>> {
    let listed = std::process::Command::new("ldd")
        .arg(agent)
        .env_clear()
        .output()
        .map_err(|source| Error::Io {
            path: PathBuf::from("ldd"),
            source,
        })?;
    let text = String::from_utf8_lossy(&listed.stdout);
    let mut found = Vec::new();
    for line in text.lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)`, or the
        // loader alone: `/lib64/ld-linux-x86-64.so.2 (0x…)`.
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            found.push(PathBuf::from(path));
        }
    }
    Ok(found)
}
