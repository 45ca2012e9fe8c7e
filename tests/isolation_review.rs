//! Escapes a security review found in the first isolation build, tried
//! again from inside real sandboxes: a volume's source swapped for a link
//! to the host's `/` between runs, device nodes in a read-only rootfs, and
//! host `/etc` files only their owners may read.

use std::path::Path;
use std::process::{Command, Output};

fn sandvisor(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sandvisor"))
        .args(args)
        .env("SANDVISOR_HOME", home)
        .output()
        .unwrap()
}

/// Kills, when dropped, every live process started for `home` (the daemon
/// that `start` launches, its spawner): the test must not leave them.
struct Reaper<'a>(&'a Path);

impl Drop for Reaper<'_> {
    fn drop(&mut self) {
        let wanted = format!("SANDVISOR_HOME={}", self.0.display());
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            if environ
                .split(|&b| b == 0)
                .any(|var| var == wanted.as_bytes())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_volume_source_swapped_for_a_link_is_refused_at_the_next_start() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let _reaper = Reaper(&home);
    let shared = tmp.path().join("shared");
    std::fs::create_dir_all(shared.join("sub")).unwrap();
    // Shared with the sandbox's root, as a work directory would be.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let outer = format!("{}:/shared", shared.display());
    let inner = format!("{}:/sub", shared.join("sub").display());
    let swap = "mv /shared/sub /shared/old && ln -s / /shared/sub && echo swapped";
    let first = sandvisor(
        &home,
        &[
            "run", "--name", "v", "-v", &outer, "-v", &inner, "--", "sh", "-c", swap,
        ],
    );
    assert!(text(&first).contains("swapped"), "{}", text(&first));
    assert!(shared.join("sub").is_symlink());
    let again = sandvisor(&home, &["start", "v"]);
    assert!(!again.status.success(), "{}", text(&again));
    assert!(
        text(&again).contains("mounts[1]"),
        "the start names the volume: {}",
        text(&again)
    );
}

#[test]
fn device_nodes_in_a_read_only_rootfs_cannot_be_opened() {
    let Ok(busybox) = std::fs::canonicalize("/bin/busybox") else {
        eprintln!("skipped: no /bin/busybox (apt-get install busybox-static)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let rootfs = tmp.path().join("rootfs");
    for dir in ["bin", "proc", "sys", "dev", "tmp", "run", "var/tmp"] {
        std::fs::create_dir_all(rootfs.join(dir)).unwrap();
    }
    std::fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
    // /dev/null's numbers: harmless if the probe failed, but a device all
    // the same.
    nix::sys::stat::mknod(
        &rootfs.join("null-device"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    for read_only in [true, false] {
        let mut args = vec!["run", "--rm", "--rootfs", rootfs.to_str().unwrap()];
        if read_only {
            args.push("--read-only");
        }
        args.extend([
            "--",
            "/bin/sh",
            "-c",
            "echo x > /null-device && echo OPENED",
        ]);
        let out = sandvisor(&home, &args);
        assert!(
            !text(&out).contains("OPENED"),
            "read_only {read_only}: {}",
            text(&out)
        );
    }
}

#[test]
fn host_etc_files_others_may_not_read_are_hidden() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    // Files and directories under the host's /etc that others may not
    // read, as the host sees them now.
    let mut private = Vec::new();
    let mut dirs = vec![std::path::PathBuf::from("/etc")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode();
            if meta.is_dir() && mode & 0o005 == 0o005 {
                dirs.push(entry.path());
            } else if (meta.is_file() || meta.is_dir()) && mode & 0o004 == 0 {
                private.push((entry.path(), meta.is_dir()));
            }
        }
    }
    let script = private
        .iter()
        .map(|(path, dir)| match dir {
            true => format!("ls -A {} 2>/dev/null;", path.display()),
            false => format!("cat {} 2>/dev/null;", path.display()),
        })
        .collect::<String>()
        + "echo end";
    let out = sandvisor(&home, &["run", "--rm", "--", "sh", "-c", &script]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "end",
        "private host files showed through: {private:?}"
    );
}

/// The masks of a default sandbox, read from its own mount table: no path
/// is masked twice (a secret on both of the runtime's lists once got two
/// stacked mounts), every mask is read-only, and the masked directories of
/// `/etc` share one empty tmpfs, as do those of `/proc` and `/sys` (a
/// superblock per mask cost the kernel more at every start and exit).
#[test]
fn secrets_are_masked_once_and_masked_directories_share_one_tmpfs() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let out = sandvisor(&home, &["run", "--rm", "--", "cat", "/proc/self/mountinfo"]);
    assert!(out.status.success(), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    // (mount point, device, mount options, filesystem type)
    let mounts: Vec<(&str, &str, &str, &str)> = table
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let dash = fields.iter().position(|f| *f == "-")?;
            Some((fields[4], fields[2], fields[5], *fields.get(dash + 1)?))
        })
        .collect();
    let etc_dirs = [
        "ssh",
        "ssl/private",
        "sudoers.d",
        "docker",
        "polkit-1/rules.d",
    ];
    let etc_files = ["shadow", "shadow-", "gshadow", "gshadow-", "sudoers"];
    // The one mount at `path`, read-only; its device.
    let masked_once = |path: &str| {
        let at: Vec<_> = mounts.iter().filter(|m| m.0 == path).collect();
        assert_eq!(at.len(), 1, "{path} masked {} times:\n{table}", at.len());
        assert!(at[0].2.split(',').any(|o| o == "ro"), "{path} writable");
        at[0]
    };
    let mut dir_devices = Vec::new();
    for dir in etc_dirs {
        if Path::new("/etc").join(dir).is_dir() {
            let mask = masked_once(&format!("/etc/{dir}"));
            assert_eq!(mask.3, "tmpfs", "/etc/{dir}:\n{table}");
            dir_devices.push(mask.1);
        }
    }
    for file in etc_files {
        if Path::new("/etc").join(file).is_file() {
            masked_once(&format!("/etc/{file}"));
        }
    }
    dir_devices.sort_unstable();
    dir_devices.dedup();
    assert!(
        dir_devices.len() <= 1,
        "one tmpfs for all the /etc masks:\n{table}"
    );
    let mut kernel_devices = Vec::new();
    for dir in ["/proc/acpi", "/proc/asound", "/proc/scsi", "/sys/firmware"] {
        if mounts.iter().any(|m| m.0 == dir) {
            kernel_devices.push(masked_once(dir).1);
        }
    }
    kernel_devices.sort_unstable();
    kernel_devices.dedup();
    assert!(
        kernel_devices.len() <= 1,
        "one tmpfs for the /proc and /sys masks:\n{table}"
    );
}

/// Links the sandbox leaves at masked names in its own writable layer
/// (`/etc/sudoers.d -> ssl/private/..` where the host has no
/// `/etc/sudoers.d`) neither stop its next start nor uncover what a mask
/// hides. The staging child once looked such a path up a second time after
/// its first mask was in place, and the link then led nowhere.
#[test]
fn links_at_masked_names_do_not_stop_the_next_start() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let _reaper = Reaper(&home);
    let script = "for n in sudoers.d wireguard letsencrypt openvpn credstore; do \
                  [ -e /etc/$n ] || [ -L /etc/$n ] || ln -s ssl/private/.. /etc/$n; done; \
                  echo private=$(ls -A /etc/ssl/private 2>/dev/null | wc -l)";
    let first = sandvisor(&home, &["run", "--name", "l", "--", "sh", "-c", script]);
    assert!(first.status.success(), "{}", text(&first));
    let again = sandvisor(&home, &["start", "l"]);
    assert!(again.status.success(), "{}", text(&again));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let logs = loop {
        let logs = text(&sandvisor(&home, &["logs", "l"]));
        if logs.matches("private=").count() == 2 || std::time::Instant::now() > deadline {
            break logs;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(logs.matches("private=0").count(), 2, "{logs}");
}
