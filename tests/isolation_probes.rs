//! The attacker's probe suite (issue 13): from inside real sandboxes started
//! with the built CLI, as a new user would start them, try every known
//! container escape and assert that each one fails.
//!
//! Every probe group runs against two targets: a default sandbox (its root
//! is the host base) and one whose `--rootfs` is a busybox directory built
//! here (skipped, with a message, when `/bin/busybox` is missing). A probe
//! passes when the escape fails. A group reports every escape that worked on
//! every target, with what the sandbox printed, not only the first one.
//!
//! The scripts print `key=value` lines: `val KEY CMD…` prints what the
//! command printed (lines joined by `|`), `try KEY CMD…` prints `KEY.rc`
//! (its exit status) and `KEY.out`.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

#[path = "common/cgroup.rs"]
mod cgroup;
#[path = "common/cli.rs"]
mod cli_home;
mod common;
use cgroup::host_limit;
use cli_home::Cli;
const BUSYBOX: &str = "/bin/busybox";
/// Docker's default capability set (CHOWN DAC_OVERRIDE FSETID FOWNER MKNOD
/// NET_RAW SETGID SETUID SETFCAP SETPCAP NET_BIND_SERVICE SYS_CHROOT KILL
/// AUDIT_WRITE), as `/proc/PID/status` prints it.
const DOCKER_CAPS: &str = "00000000a80425fb";
const NO_CAPS: &str = "0000000000000000";
/// The lowest host id a sandbox's root may map to.
const FIRST_SANDBOX_ID: u64 = 0x4000_0000;
const IDS_PER_SANDBOX: u64 = 65_536;
const CAP_SYS_MODULE: u32 = 16;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_PTRACE: u32 = 19;
/// The only entries a sandbox's `/dev` may have.
const DEV_ALLOWED: &[&str] = &[
    "null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm", "mqueue", "fd",
    "stdin", "stdout", "stderr",
];
const DEV_REQUIRED: &[&str] = &[
    "null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm", "mqueue",
];

/// The helpers every probe script starts with (POSIX sh: dash on the host
/// base, busybox ash in the busybox root).
const PRELUDE: &str = r#"
flat() { tr '\n' '|'; }
val() { k=$1; shift; o=$("$@" 2>&1); printf '%s=%s\n' "$k" "$(printf '%s' "$o" | flat)"; }
try() { k=$1; shift; o=$("$@" 2>&1); c=$?; printf '%s.rc=%s\n%s.out=%s\n' "$k" "$c" "$k" "$(printf '%s' "$o" | flat)"; }
"#;

// ---------------------------------------------------------------------------
// The CLI against a temp home, the targets, the probes' output.

impl Cli {
    fn sandbox(&self, name: &str) -> Option<Value> {
        let text = self.ok(&["ps", "-a", "--json"]);
        serde_json::from_str::<Value>(&text)
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
    }

    /// `inspect`'s object for `name`; `Null` when there is none.
    fn inspect(&self, name: &str) -> Value {
        let out = self.run(&["inspect", name]);
        serde_json::from_slice::<Value>(&out.stdout).map_or(Value::Null, |all| all[0].clone())
    }

    /// Polls `ps` until `name` has `status`; on failure says what was seen
    /// and the sandbox's runtime.log.
    fn wait_for_status(&self, name: &str, status: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let seen = self.sandbox(name);
            if let Some(found) = seen.as_ref().filter(|s| s["status"] == status) {
                return found.clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "{name} never became {status}; last seen {seen:?}; runtime.log: {}",
                    std::fs::read_to_string(
                        self.home()
                            .join("sandboxes")
                            .join(name)
                            .join("logs/runtime.log")
                    )
                    .unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `run --name NAME [target] [extra] -- sh -c PRELUDE+script`, in the
    /// foreground.
    fn probe(&self, target: &Target, name: &str, extra: &[&str], script: &str) -> Probe {
        let script = format!("{PRELUDE}\n{script}");
        let mut args = vec!["run", "--name", name];
        args.extend(target.args());
        args.extend(extra);
        args.extend(["--", "sh", "-c", &script]);
        Probe::new(format!("{name} on {}", target.label), self.run(&args))
    }

    /// A detached sandbox running `sh -c script` (which should end in a
    /// long sleep), Running when this returns; its main (agent) pid.
    fn detached(&self, target: &Target, name: &str, extra: &[&str], script: &str) -> u32 {
        let mut args = vec!["run", "-d", "--name", name];
        args.extend(target.args());
        args.extend(extra);
        args.extend(["--", "sh", "-c", script]);
        self.ok(&args);
        let running = self.wait_for_status(name, "Running");
        running["pid"]
            .as_u64()
            .unwrap_or_else(|| panic!("{name} is running without a pid: {running}")) as u32
    }

    /// `exec NAME [extra] -- sh -c PRELUDE+script`.
    fn exec_probe(&self, target: &Target, name: &str, extra: &[&str], script: &str) -> Probe {
        let script = format!("{PRELUDE}\n{script}");
        let mut args = vec!["exec"];
        args.extend(extra);
        args.extend([name, "--", "sh", "-c", &script]);
        Probe::new(
            format!("exec {extra:?} in {name} on {}", target.label),
            self.run(&args),
        )
    }
}

/// Where a sandbox's root comes from.
struct Target {
    label: &'static str,
    /// The busybox directory given as `--rootfs`; `None` for the host base.
    rootfs: Option<PathBuf>,
    _dir: Option<TempDir>,
}

impl Target {
    fn args(&self) -> Vec<&str> {
        match &self.rootfs {
            Some(dir) => vec!["--rootfs", dir.to_str().unwrap()],
            None => Vec::new(),
        }
    }

    /// The host base carries python3 (for ptrace, sockets and syscalls);
    /// the busybox root does not.
    fn python(&self) -> bool {
        self.rootfs.is_none()
    }

    /// A short tag for sandbox names.
    fn tag(&self) -> &'static str {
        if self.rootfs.is_some() {
            "bb"
        } else {
            "base"
        }
    }
}

/// The host base, and a busybox root when busybox is installed.
fn targets() -> Vec<Target> {
    let mut targets = vec![Target {
        label: "the host base",
        rootfs: None,
        _dir: None,
    }];
    match busybox_rootfs() {
        Some((dir, rootfs)) => targets.push(Target {
            label: "a busybox --rootfs",
            rootfs: Some(rootfs),
            _dir: Some(dir),
        }),
        None => eprintln!(
            "skipping the busybox --rootfs target: {BUSYBOX} is missing (apt-get install busybox-static)"
        ),
    }
    targets
}

/// `<tmp>/rootfs`: busybox and a link for each of its applets, and the
/// usual empty directories.
fn busybox_rootfs() -> Option<(TempDir, PathBuf)> {
    if !Path::new(BUSYBOX).is_file() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    // A rootfs usually lives where anyone may traverse to it.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = dir.path().join("rootfs");
    for sub in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "run", "var/tmp",
        "root", "mnt",
    ] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
    let list = Command::new(BUSYBOX).arg("--list-full").output().unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        let link = root.join(applet.trim_start_matches('/'));
        if applet.is_empty() || link.exists() {
            continue;
        }
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink("/bin/busybox", &link).unwrap();
    }
    Some((dir, root))
}

/// What a probe script printed.
struct Probe {
    what: String,
    output: Output,
    values: BTreeMap<String, String>,
}

impl Probe {
    fn new(what: String, output: Output) -> Self {
        let values = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| {
                line.replace('\r', "")
                    .split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        Self {
            what,
            output,
            values,
        }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// The value, or "<missing>" (a failed check then shows the output).
    fn val(&self, key: &str) -> &str {
        self.get(key).unwrap_or("<missing>")
    }

    /// `try`'s exit status; `None` when the probe never got there.
    fn rc(&self, key: &str) -> Option<i32> {
        self.get(&format!("{key}.rc"))?.parse().ok()
    }

    fn out(&self, key: &str) -> &str {
        self.val(&format!("{key}.out"))
    }

    /// The `try` ran and failed.
    fn failed(&self, key: &str) -> bool {
        self.rc(key).is_some_and(|rc| rc != 0)
    }

    /// The `try` ran and succeeded.
    fn worked(&self, key: &str) -> bool {
        self.rc(key) == Some(0)
    }

    /// `val`'s lines, split back.
    fn lines(&self, key: &str) -> Vec<&str> {
        self.val(key).split('|').filter(|l| !l.is_empty()).collect()
    }

    fn exit(&self) -> Option<i32> {
        self.output.status.code()
    }

    fn dump(&self) -> String {
        format!(
            "--- {} (exit {:?})\nstdout:\n{}\nstderr:\n{}",
            self.what,
            self.output.status,
            String::from_utf8_lossy(&self.output.stdout),
            String::from_utf8_lossy(&self.output.stderr)
        )
    }
}

/// The escapes that worked, gathered over a group's probes and targets.
#[derive(Default)]
struct Verdict {
    escapes: Vec<String>,
    dumps: Vec<String>,
}

impl Verdict {
    /// `holds` is what isolation promises; when it does not, `what` is an
    /// escape.
    fn check(&mut self, probe: &Probe, holds: bool, what: impl std::fmt::Display) {
        if !holds {
            self.escapes.push(format!("[{}] {what}", probe.what));
            let dump = probe.dump();
            if !self.dumps.contains(&dump) {
                self.dumps.push(dump);
            }
        }
    }

    /// A check made on the host, about a probe's sandbox.
    fn host(&mut self, label: &str, holds: bool, what: impl std::fmt::Display) {
        if !holds {
            self.escapes
                .push(format!("[{label}, seen from the host] {what}"));
        }
    }

    /// Fails the test listing every escape.
    fn finish(self) {
        assert!(
            self.escapes.is_empty(),
            "{} escape(s):\n  {}\n\n{}",
            self.escapes.len(),
            self.escapes.join("\n  "),
            self.dumps.join("\n")
        );
    }
}

// ---------------------------------------------------------------------------
// Host-side helpers.

/// A field of `/proc/PID/status`.
fn status_field(pid: u32, field: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_string()))
}

/// The pids of the host's processes whose command line contains `marker`.
fn pids_with(marker: &str) -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
        })
        .collect()
}

/// Polls `done` until it holds, for at most 10 s.
fn eventually(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// A host id (of `Uid:` / `Gid:`'s four) belongs to a sandbox's range.
fn unprivileged_ids(line: &str) -> bool {
    let ids: Vec<u64> = line
        .split_whitespace()
        .filter_map(|id| id.parse().ok())
        .collect();
    ids.len() == 4 && ids.iter().all(|&id| id >= FIRST_SANDBOX_ID)
}

/// `uid_map`'s single line, as numbers.
fn id_map(text: &str) -> Vec<u64> {
    text.split(|c: char| c.is_whitespace() || c == '|')
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// A unique word for markers and file names.
fn unique(what: &str) -> String {
    format!(
        "{what}{}x{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// Finds `"privileged": true` anywhere in `value`.
fn says_privileged(value: &Value) -> bool {
    match value {
        Value::Object(map) => map
            .iter()
            .any(|(k, v)| (k == "privileged" && v == &Value::Bool(true)) || says_privileged(v)),
        Value::Array(items) => items.iter().any(says_privileged),
        _ => false,
    }
}

/// The capability bits of a `CapEff:` value.
fn cap_bits(hex: &str) -> u64 {
    u64::from_str_radix(hex.trim(), 16).unwrap_or(u64::MAX)
}

/// Files of a directory tree with their size, mode and mtime: to show that
/// a sandbox never wrote it.
fn tree(root: &Path) -> BTreeMap<PathBuf, (u64, u32, i64)> {
    use std::os::unix::fs::MetadataExt;
    let mut files = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                todo.push(path.clone());
            }
            files.insert(path, (meta.len(), meta.mode(), meta.mtime()));
        }
    }
    files
}

/// The caps, no_new_privs and seccomp lines of `/proc/self/status` as
/// `Key=value` lines (for `val`).
const STATUS_SCRIPT: &str =
    r#"grep -E '^(Cap|NoNewPrivs|Seccomp)' /proc/self/status | tr -d ' \t' | sed 's/:/=/'"#;

/// Checks the confinement lines [`STATUS_SCRIPT`] printed.
fn check_confinement(verdict: &mut Verdict, probe: &Probe) {
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        verdict.check(
            probe,
            probe.val(set) == DOCKER_CAPS,
            format_args!("{set} is {} (want Docker's {DOCKER_CAPS})", probe.val(set)),
        );
    }
    for set in ["CapInh", "CapAmb"] {
        verdict.check(
            probe,
            probe.val(set) == NO_CAPS,
            format_args!("{set} is {} (want none)", probe.val(set)),
        );
    }
    let effective = cap_bits(probe.val("CapEff"));
    for (cap, name) in [
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
        (CAP_SYS_MODULE, "CAP_SYS_MODULE"),
        (CAP_SYS_PTRACE, "CAP_SYS_PTRACE"),
    ] {
        verdict.check(
            probe,
            effective & (1 << cap) == 0,
            format_args!("{name} is held"),
        );
    }
    verdict.check(
        probe,
        probe.val("NoNewPrivs") == "1",
        format_args!("NoNewPrivs is {}", probe.val("NoNewPrivs")),
    );
    verdict.check(
        probe,
        probe.val("Seccomp") == "2",
        format_args!(
            "Seccomp mode is {} (want 2, a filter)",
            probe.val("Seccomp")
        ),
    );
}

// ---------------------------------------------------------------------------
// The probes.

#[test]
fn identity_root_inside_is_an_unprivileged_host_range() {
    let cli = Cli::new();
    let mut verdict = Verdict::default();
    let mut firsts = Vec::new();
    let mut detached = Vec::new();
    for target in targets() {
        let probe = cli.probe(
            &target,
            &format!("ident-{}", target.tag()),
            &[],
            "val uid id -u; val gid id -g; val uid_map cat /proc/self/uid_map; \
             val gid_map cat /proc/self/gid_map; val setgroups cat /proc/self/setgroups",
        );
        verdict.check(&probe, probe.exit() == Some(0), "the probe ran");
        verdict.check(&probe, probe.val("uid") == "0", "root inside (id -u is 0)");
        verdict.check(
            &probe,
            probe.val("gid") == "0",
            "group root inside (id -g is 0)",
        );
        for map in ["uid_map", "gid_map"] {
            let ids = id_map(probe.val(map));
            verdict.check(
                &probe,
                ids.len() == 3
                    && ids[0] == 0
                    && ids[1] >= FIRST_SANDBOX_ID
                    && ids[2] == IDS_PER_SANDBOX,
                format_args!(
                    "{map} is {:?}: root inside must map to a range of {IDS_PER_SANDBOX} ids at or above {FIRST_SANDBOX_ID:#x}, not the host's",
                    probe.val(map)
                ),
            );
            if map == "uid_map" && ids.len() == 3 {
                firsts.push(ids[1]);
            }
        }
        verdict.check(
            &probe,
            probe.val("setgroups") == "deny",
            format_args!("setgroups is {:?} (want deny)", probe.val("setgroups")),
        );

        // Seen from the host: the agent and the command run under the range.
        let marker = unique("idmark");
        let name = format!("ident-d-{}", target.tag());
        let pid = cli.detached(&target, &name, &[], &format!("sleep 1000; : {marker}"));
        let label = format!("{name} on {}", target.label);
        let uid = status_field(pid, "Uid:").unwrap_or_default();
        let gid = status_field(pid, "Gid:").unwrap_or_default();
        verdict.host(
            &label,
            unprivileged_ids(&uid) && unprivileged_ids(&gid),
            format_args!("the main pid {pid} runs as host Uid {uid:?} Gid {gid:?}"),
        );
        let found = eventually(|| !pids_with(&marker).is_empty());
        verdict.host(&label, found, "the command is visible on the host");
        for command in pids_with(&marker) {
            let uid = status_field(command, "Uid:").unwrap_or_default();
            verdict.host(
                &label,
                unprivileged_ids(&uid),
                format_args!("the command (host pid {command}) runs as host Uid {uid:?}"),
            );
            if let Some(first) = uid.split_whitespace().next().and_then(|u| u.parse().ok()) {
                firsts.push(first);
            }
        }
        detached.push(name);
    }
    // Sandboxes that exist together (none was removed yet: rm frees a
    // range for the next one) have ranges of their own.
    let distinct: BTreeSet<u64> = firsts.iter().copied().collect();
    verdict.host(
        "every sandbox",
        distinct.len() == firsts.len(),
        format_args!("sandboxes share a host id range: {firsts:?}"),
    );
    for name in detached {
        cli.ok(&["rm", "-f", &name]);
    }
    verdict.finish();
}

#[test]
fn namespaces_are_all_new_and_the_hostname_is_the_name() {
    let cli = Cli::new();
    let mut verdict = Verdict::default();
    let kinds = ["user", "pid", "mnt", "net", "uts", "ipc", "cgroup"];
    for target in targets() {
        let name = format!("ns-{}", target.tag());
        let script: String = kinds
            .iter()
            .map(|ns| format!("val {ns} readlink /proc/self/ns/{ns}; "))
            .chain(["val hostname cat /proc/sys/kernel/hostname".to_string()])
            .collect();
        let probe = cli.probe(&target, &name, &[], &script);
        for ns in kinds {
            let host = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
            let host = host.to_string_lossy();
            let inside = probe.val(ns);
            verdict.check(
                &probe,
                inside.starts_with(&format!("{ns}:[")) && inside != host,
                format_args!("the {ns} namespace is {inside:?}, the host's is {host:?}"),
            );
        }
        verdict.check(
            &probe,
            probe.val("hostname") == name,
            format_args!(
                "the hostname is {:?}, not the sandbox's name",
                probe.val("hostname")
            ),
        );
    }
    verdict.finish();
}

#[test]
fn capabilities_are_dockers_default_with_no_new_privs_and_seccomp() {
    let cli = Cli::new();
    let mut verdict = Verdict::default();
    for target in targets() {
        let probe = cli.probe(
            &target,
            &format!("caps-{}", target.tag()),
            &[],
            STATUS_SCRIPT,
        );
        check_confinement(&mut verdict, &probe);
        // A setuid-root binary gains nothing: the sets stay the same.
    }
    verdict.finish();
}

#[test]
fn mount_unshare_mknod_and_host_devices_are_out_of_reach() {
    let cli = Cli::new();
    let mut verdict = Verdict::default();
    for target in targets() {
        let probe = cli.probe(
            &target,
            &format!("admin-{}", target.tag()),
            &[],
            // Every write here is undone when it works, so that running the
            // probes against an unconfined sandbox leaves the host as it was.
            r#"d=/tmp/probe.$$; mkdir -p $d/m $d/b
try mount_tmpfs mount -t tmpfs x $d/m
try mount_bind mount --bind $d/b $d/m
try unshare_user unshare -U true
try unshare_mount unshare -m true
try unshare_net unshare -n true
try mknod sh -c "mknod $d/sda b 8 0 && head -c 1 $d/sda > /dev/null"
try mknod_mem sh -c "mknod $d/mem c 1 1 && head -c 1 $d/mem > /dev/null"
val dev ls -A /dev
val pts ls -A /dev/pts
try kmsg head -c 1 /dev/kmsg
try pts0 sh -c ': > /dev/pts/0'
try vda head -c 1 /dev/vda
try null sh -c 'echo x > /dev/null'
val zero sh -c 'head -c 8 /dev/zero | wc -c'
val urandom sh -c 'head -c 8 /dev/urandom | wc -c'
umount $d/m 2>/dev/null; umount $d/m 2>/dev/null; rm -rf $d
"#,
        );
        for key in [
            "mount_tmpfs",
            "mount_bind",
            "unshare_user",
            "unshare_mount",
            "unshare_net",
            "kmsg",
            "pts0",
            "vda",
        ] {
            verdict.check(
                &probe,
                probe.failed(key),
                format_args!(
                    "{key} worked (exit {:?}): {}",
                    probe.rc(key),
                    probe.out(key)
                ),
            );
        }
        for key in ["mknod", "mknod_mem"] {
            verdict.check(
                &probe,
                probe.failed(key),
                format_args!(
                    "{key}: a device node was made and opened: {}",
                    probe.out(key)
                ),
            );
        }
        let dev = probe.lines("dev");
        let strangers: Vec<&&str> = dev.iter().filter(|e| !DEV_ALLOWED.contains(e)).collect();
        verdict.check(
            &probe,
            strangers.is_empty(),
            format_args!("/dev has entries beyond the private set: {strangers:?}"),
        );
        let lacking: Vec<&&str> = DEV_REQUIRED.iter().filter(|e| !dev.contains(e)).collect();
        verdict.check(
            &probe,
            lacking.is_empty(),
            format_args!("/dev lacks {lacking:?}"),
        );
        verdict.check(
            &probe,
            probe.lines("pts") == ["ptmx"],
            format_args!("/dev/pts is not a fresh instance: {:?}", probe.val("pts")),
        );
        // The devices a program needs still work.
        verdict.check(&probe, probe.worked("null"), "/dev/null cannot be written");
        verdict.check(
            &probe,
            probe.val("zero").trim() == "8",
            "/dev/zero cannot be read",
        );
        verdict.check(
            &probe,
            probe.val("urandom").trim() == "8",
            "/dev/urandom cannot be read",
        );
    }
    verdict.finish();
}

#[test]
fn the_host_filesystem_is_neither_visible_nor_written() {
    let cli = Cli::new();
    let mut verdict = Verdict::default();
    // A root-only host file the sandbox must not see.
    let secret_dir = tempfile::tempdir().unwrap();
    let secret = secret_dir.path().join("secret");
    std::fs::write(&secret, "host secret\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mark = unique("xmark");
    for target in targets() {
        let before = target.rootfs.as_deref().map(tree);
        let name = format!("hostfs-{}", target.tag());
        let probe = cli.probe(
            &target,
            &name,
            &[],
            &format!(
                r#"try touch_etc touch /etc/{mark}
try touch_usr touch /usr/{mark}
try touch_root touch /{mark}
try secret cat {secret}
try secret_dir ls -A {secret_dir}
try home ls -d {home}
for d in root home srv mnt media run var/run; do val ls_$d sh -c "ls -A /$d 2>/dev/null"; done
val found sh -c "timeout 60 find / \( -path /proc -o -path /sys \) -prune -o \( -name sandvisor.db -o -name '*.sock' -o -type s \) -print 2>/dev/null"
try shadow cat /etc/shadow
try gshadow cat /etc/gshadow
try tmp sh -c 'echo written > /tmp/{mark} && cat /tmp/{mark}'
try var_tmp sh -c 'echo written > /var/tmp/{mark} && cat /var/tmp/{mark}'
rm -f /tmp/{mark} /var/tmp/{mark}
"#,
                secret = secret.display(),
                secret_dir = secret_dir.path().display(),
                home = cli.home().display(),
            ),
        );
        for key in ["secret", "secret_dir", "home"] {
            verdict.check(
                &probe,
                probe.failed(key),
                format_args!("{key}: a host path is visible inside: {}", probe.out(key)),
            );
        }
        for dir in ["root", "home", "srv", "mnt", "media"] {
            let key = format!("ls_{dir}");
            verdict.check(
                &probe,
                probe.val(&key).is_empty(),
                format_args!("/{dir} is not empty: {}", probe.val(&key)),
            );
        }
        verdict.check(
            &probe,
            probe.val("found").is_empty(),
            format_args!(
                "sockets or a sandvisor database are reachable: {}",
                probe.val("found")
            ),
        );
        for key in ["shadow", "gshadow"] {
            verdict.check(
                &probe,
                probe.failed(key) || probe.out(key).is_empty(),
                format_args!("/etc/{key} is readable: {}", probe.out(key)),
            );
        }
        for key in ["tmp", "var_tmp"] {
            verdict.check(
                &probe,
                probe.worked(key) && probe.out(key) == "written",
                format_args!("{key} cannot be written: {}", probe.out(key)),
            );
        }
        let label = format!("{name} on {}", target.label);
        for path in [
            format!("/etc/{mark}"),
            format!("/usr/{mark}"),
            format!("/{mark}"),
        ] {
            let on_host = Path::new(&path).exists();
            if on_host {
                let _ = std::fs::remove_file(&path);
            }
            verdict.host(
                &label,
                !on_host,
                format_args!("{path} was written on the host"),
            );
        }
        if let (Some(rootfs), Some(before)) = (&target.rootfs, before) {
            verdict.host(
                &label,
                tree(rootfs) == before,
                format_args!("the --rootfs directory {} was written", rootfs.display()),
            );
        }
        // Another sandbox on the same root does not see this one's writes.
        let other = cli.probe(
            &target,
            &format!("hostfs2-{}", target.tag()),
            &[],
            &format!("try peek ls /etc/{mark}"),
        );
        verdict.check(
            &other,
            other.failed("peek"),
            "a write of another sandbox on the same root is visible",
        );
    }
    verdict.finish();
}

#[test]
fn writes_persist_across_runs_of_a_sandbox_and_go_with_rm() {
    let cli = Cli::new();
    let mut verdict = Verdict::default();
    for target in targets() {
        let name = format!("keep-{}", target.tag());
        let kept = format!("/etc/{}", unique("kept"));
        let script = format!("cat {kept} 2>/dev/null || echo none; echo run >> {kept}");
        let script = script.as_str();
        let first = cli.probe(&target, &name, &[], script);
        verdict.check(
            &first,
            first.exit() == Some(0),
            "the first run wrote /etc/kept",
        );
        let label = format!("{name} on {}", target.label);
        cli.ok(&["start", &name]);
        let restarted = eventually(|| {
            cli.sandbox(&name).is_some_and(|s| {
                s["status"] == "Stopped"
                    && cli.inspect(&name)["runs"]
                        .as_array()
                        .is_some_and(|r| r.len() == 2)
            })
        });
        verdict.host(&label, restarted, "the sandbox ran again after `start`");
        let logs = cli.ok(&["logs", "--source", "stdout", &name]);
        verdict.host(
            &label,
            logs.contains("none\n") && logs.contains("run\n"),
            format_args!(
                "the second run did not see the first one's write; stdout of both runs: {logs:?}"
            ),
        );
        let layer = cli.home().join("sandboxes").join(&name).join("fs");
        cli.ok(&["rm", &name]);
        verdict.host(
            &label,
            !layer.exists(),
            format_args!("{} is still there after rm", layer.display()),
        );
        let again = cli.probe(&target, &name, &[], script);
        verdict.check(
            &again,
            again.output.stdout.starts_with(b"none"),
            "a new sandbox of the same name sees the removed one's writes",
        );
        // Written on the host when there is no own root: put it back.
        let _ = std::fs::remove_file(&kept);
    }
    verdict.finish();
}

#[test]
fn a_read_only_root_refuses_writes_but_tmp_works() {
    let cli = Cli::new();
    let mut verdict = Verdict::default();
    for target in targets() {
        let probe = cli.probe(
            &target,
            &format!("ro-{}", target.tag()),
            &["--read-only"],
            "try etc touch /etc/x; try root touch /x; try tmp sh -c 'echo ok > /tmp/x && cat /tmp/x'",
        );
        for key in ["etc", "root"] {
            verdict.check(
                &probe,
                probe.failed(key) && probe.out(key).contains("Read-only file system"),
                format_args!(
                    "{key}: a read-only root was written or failed otherwise: {}",
                    probe.out(key)
                ),
            );
        }
        verdict.check(
            &probe,
            probe.worked("tmp") && probe.out("tmp") == "ok",
            format_args!("/tmp cannot be written: {}", probe.out("tmp")),
        );
    }
    verdict.finish();
}

#[test]
fn proc_and_sys_are_masked_and_read_only() {
    let cli = Cli::new();
    let mut verdict = Verdict::default();
    for target in targets() {
        let probe = cli.probe(
            &target,
            &format!("procsys-{}", target.tag()),
            &[],
            // A write is tried with the value already there: as conclusive,
            // and harmless when it works.
            r#"rewrite() { cat "$1" > /tmp/rewrite.$$ && cat /tmp/rewrite.$$ > "$1"; }
try core_pattern rewrite /proc/sys/kernel/core_pattern
try sysrq sh -c 'echo h > /proc/sysrq-trigger'
try hostname_sysctl rewrite /proc/sys/kernel/hostname
try sys_kernel rewrite /sys/kernel/profiling
for f in kcore keys timer_list sched_debug latency_stats timer_stats interrupts; do val read_$f sh -c "head -c 64 /proc/$f 2>/dev/null | wc -c"; done
for d in acpi scsi asound; do val ls_$d sh -c "ls -A /proc/$d 2>/dev/null"; done
val proc_mount sh -c "grep ' /proc proc ' /proc/self/mounts | head -1"
val pid1 sh -c "tr '\0' ' ' < /proc/1/cmdline"
val sys_mount sh -c "grep ' /sys sysfs ' /proc/self/mounts | head -1"
val firmware sh -c "ls -A /sys/firmware 2>/dev/null"
val powercap sh -c "ls -A /sys/devices/virtual/powercap 2>/dev/null"
try remount_sys mount -o remount,rw /sys
try touch_sys touch /sys/x
try umount_proc umount /proc
try umount_proc_lazy umount -l /proc
rm -f /tmp/rewrite.$$
"#,
        );
        for key in [
            "core_pattern",
            "sysrq",
            "hostname_sysctl",
            "umount_proc",
            "umount_proc_lazy",
            "remount_sys",
            "touch_sys",
            "sys_kernel",
        ] {
            verdict.check(
                &probe,
                probe.failed(key),
                format_args!("{key} worked: {}", probe.out(key)),
            );
        }
        for file in [
            "kcore",
            "keys",
            "timer_list",
            "sched_debug",
            "latency_stats",
            "timer_stats",
            "interrupts",
        ] {
            let key = format!("read_{file}");
            verdict.check(
                &probe,
                probe.val(&key).trim() == "0",
                format_args!("/proc/{file} is not masked: {} bytes read", probe.val(&key)),
            );
        }
        for dir in ["acpi", "scsi", "asound"] {
            let key = format!("ls_{dir}");
            verdict.check(
                &probe,
                probe.val(&key).is_empty(),
                format_args!("/proc/{dir} is not masked: {}", probe.val(&key)),
            );
        }
        let proc_mount = probe.val("proc_mount");
        verdict.check(
            &probe,
            ["nosuid", "nodev", "noexec"]
                .iter()
                .all(|o| proc_mount.contains(o)),
            format_args!("/proc is not nosuid,nodev,noexec: {proc_mount:?}"),
        );
        verdict.check(
            &probe,
            probe.val("pid1").contains("sandvisor-agent"),
            format_args!("PID 1 is not the sandbox's agent: {:?}", probe.val("pid1")),
        );
        let sys_mount = probe.val("sys_mount");
        verdict.check(
            &probe,
            sys_mount
                .split_whitespace()
                .nth(3)
                .is_some_and(|o| o.split(',').any(|o| o == "ro")),
            format_args!("/sys is not a read-only sysfs: {sys_mount:?}"),
        );
        for key in ["firmware", "powercap"] {
            verdict.check(
                &probe,
                probe.val(key).is_empty(),
                format_args!("/sys {key} is not masked: {}", probe.val(key)),
            );
        }
    }
    verdict.finish();
}

#[test]
fn cgroups_are_read_only_own_and_v1_cannot_be_mounted() {
    let cli = Cli::new();
    let mut verdict = Verdict::default();
    for target in targets() {
        let probe = cli.probe(
            &target,
            &format!("cgroup-{}", target.tag()),
            &[],
            r#"val cg_mounts sh -c "grep ' /sys/fs/cgroup' /proc/self/mounts"
val self cat /proc/self/cgroup
try touch_cg sh -c 'touch /sys/fs/cgroup/memory/x.$$ && rm -f /sys/fs/cgroup/memory/x.$$'
try mkdir_cg sh -c 'mkdir /sys/fs/cgroup/escape.$$ && rmdir /sys/fs/cgroup/escape.$$'
try mkdir_cg_memory sh -c 'mkdir /sys/fs/cgroup/memory/escape.$$ && rmdir /sys/fs/cgroup/memory/escape.$$'
try procs_cg sh -c 'f=/sys/fs/cgroup/cgroup.procs; [ -e $f ] || f=/sys/fs/cgroup/memory/cgroup.procs; echo $$ > $f'
d=/tmp/cg.$$; mkdir -p $d/c $d/r $d/u
try v1_memory mount -t cgroup -o memory c $d/c
try v1_rdma mount -t cgroup -o rdma c $d/r
try v2 mount -t cgroup2 c $d/u
try release_agent sh -c "for f in \$(find /sys/fs/cgroup $d -name release_agent 2>/dev/null); do cat \$f > $d/ra && cat $d/ra > \$f && echo wrote \$f; done; true"
for m in c r u; do umount $d/$m 2>/dev/null; done; rm -rf $d
val children sh -c "find /sys/fs/cgroup/memory /sys/fs/cgroup/pids -mindepth 1 -type d 2>/dev/null; [ -e /sys/fs/cgroup/cgroup.controllers ] && find /sys/fs/cgroup -mindepth 1 -type d"
"#,
        );
        let mounts = probe.lines("cg_mounts");
        verdict.check(
            &probe,
            !mounts.is_empty()
                && mounts.iter().all(|m| {
                    m.split_whitespace()
                        .nth(3)
                        .is_some_and(|o| o.split(',').any(|o| o == "ro"))
                }),
            format_args!("/sys/fs/cgroup is missing or not read-only: {mounts:?}"),
        );
        let own = probe.lines("self");
        verdict.check(
            &probe,
            !own.is_empty() && own.iter().all(|l| l.ends_with(":/")),
            format_args!(
                "/proc/self/cgroup shows host cgroup paths (no cgroup namespace): {own:?}"
            ),
        );
        for key in [
            "touch_cg",
            "mkdir_cg",
            "mkdir_cg_memory",
            "procs_cg",
            "v1_memory",
            "v1_rdma",
            "v2",
        ] {
            verdict.check(
                &probe,
                probe.failed(key),
                format_args!("{key} worked: {}", probe.out(key)),
            );
        }
        verdict.check(
            &probe,
            !probe.out("release_agent").contains("wrote"),
            format_args!(
                "a release_agent was written: {}",
                probe.out("release_agent")
            ),
        );
        verdict.check(
            &probe,
            probe.val("children").is_empty(),
            format_args!(
                "/sys/fs/cgroup shows groups beyond the sandbox's own: {}",
                probe.val("children")
            ),
        );
    }
    verdict.finish();
}

/// ptrace and pidfd_getfd of PID 1, with python's ctypes (x86_64 numbers).
const PTRACE_PY: &str = r#"
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def call(nr, *args):
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return r, ctypes.get_errno()
r, e = call(101, 16, 1, 0, 0)
print("ptrace=%d" % r)
if r == 0:
    # Attached: the attach stopped PID 1; let it go again.
    os.waitpid(1, 0x40000000)
    call(101, 17, 1, 0, 0)
    os.kill(1, 18)
r, e = call(434, 1, 0)
got = 0
if r >= 0:
    for fd in range(64):
        g, _ = call(438, r, fd, 0)
        if g >= 0:
            got += 1
print("pidfd_getfd=%d" % got)
"#;

#[test]
fn pid_1_is_protected() {
    let cli = Cli::new();
    let mut verdict = Verdict::default();
    for target in targets() {
        let mut script = String::from(
            r#"try environ sh -c "tr '\0' '\n' < /proc/1/environ"
try exe readlink /proc/1/exe
try exe_open sh -c 'head -c 1 /proc/1/exe > /dev/null'
try fd ls /proc/1/fd
try root ls /proc/1/root/
try maps sh -c 'head -c 64 /proc/1/maps'
try mem sh -c 'head -c 1 /proc/1/mem > /dev/null'
try ns readlink /proc/1/ns/mnt
try kill_1 kill -9 1
val name sh -c "grep '^Name:' /proc/1/status"
val pids sh -c "ls /proc | grep -E '^[0-9]+$'"
"#,
        );
        if target.python() {
            script.push_str(&format!("val py /usr/bin/python3 -c '{PTRACE_PY}'\n"));
        }
        let probe = cli.probe(&target, &format!("pid1-{}", target.tag()), &[], &script);
        verdict.check(
            &probe,
            probe.failed("environ") || probe.out("environ").is_empty(),
            format_args!("PID 1's environment is readable: {}", probe.out("environ")),
        );
        for key in ["exe", "exe_open", "fd", "root", "mem", "ns"] {
            verdict.check(
                &probe,
                probe.failed(key),
                format_args!("/proc/1/{key} is reachable: {}", probe.out(key)),
            );
        }
        verdict.check(
            &probe,
            probe.failed("maps") || probe.out("maps").is_empty(),
            format_args!("PID 1's maps are readable: {}", probe.out("maps")),
        );
        verdict.check(
            &probe,
            probe.get("pids").is_some(),
            "the sandbox did not survive `kill -9 1` from inside",
        );
        verdict.check(
            &probe,
            probe.val("name").contains("sandvisor-agen"),
            format_args!("PID 1 is not the agent: {}", probe.val("name")),
        );
        let pids = probe.lines("pids");
        verdict.check(
            &probe,
            pids.contains(&"1") && pids.len() <= 8,
            format_args!("host pids are visible under /proc: {pids:?}"),
        );
        if target.python() {
            verdict.check(
                &probe,
                probe.val("py").contains("ptrace=-1"),
                format_args!("PTRACE_ATTACH to PID 1 worked: {}", probe.val("py")),
            );
            verdict.check(
                &probe,
                probe.val("py").contains("pidfd_getfd=0"),
                format_args!(
                    "pidfd_getfd copied PID 1's descriptors: {}",
                    probe.val("py")
                ),
            );
        }
    }
    verdict.finish();
}

/// Syscalls Docker's default profile denies, each called with harmless
/// arguments (x86_64 numbers): each must fail with EPERM (or ENOSYS); any
/// other error means the kernel saw the call. Then an unknown syscall
/// (ENOSYS) and the x32 ABI (refused), in a child in case the filter kills.
#[cfg(target_arch = "x86_64")]
const SYSCALLS_PY: &str = r#"
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
def call(nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return r, ctypes.get_errno()
path = ctypes.c_char_p(b"/tmp")
p = ctypes.cast(path, ctypes.c_void_p).value
denied = {
    "mount": (165, p, p, 0, 0, 0), "umount2": (166, p, 0), "pivot_root": (155, p, p),
    "unshare_user": (272, 0x10000000), "unshare_ns": (272, 0x00020000), "setns": (308, 0, 0),
    "keyctl": (250, 0, -3, 0), "add_key": (248, 0, 0, 0, 0, 0), "request_key": (249, 0, 0, 0, 0),
    "bpf": (321, 0, 0, 0), "perf_event_open": (298, 0, 0, -1, -1, 0),
    "kexec_load": (246, 0, 0, 0, 0), "kexec_file_load": (320, -1, -1, 0, 0, 0),
    "init_module": (175, 0, 0, 0), "finit_module": (313, -1, 0, 0), "delete_module": (176, 0, 0),
    "open_by_handle_at": (304, -100, 0, 0), "reboot": (169, 0, 0, 0, 0),
    "swapon": (167, p, 0), "swapoff": (168, p), "settimeofday": (164, 0, 0),
    "clock_settime": (227, 0, 0), "acct": (163, 0), "iopl": (172, 0), "ioperm": (173, 0, 0, 0),
    "userfaultfd": (323, 0), "process_vm_readv": (310, 1, 0, 0, 0, 0, 0),
    "process_vm_writev": (311, 1, 0, 0, 0, 0, 0), "quotactl": (179, 0, 0, 0, 0),
    "syslog": (103, 10, 0, 0), "fsopen": (430, p, 0), "fsmount": (432, -1, 0, 0),
    "move_mount": (429, -1, p, -1, p, 0), "open_tree": (428, -100, p, 0),
    "mount_setattr": (442, -100, p, 0, 0, 0), "socket_vsock": (41, 40, 1, 0),
    "personality_no_aslr": (135, 0x0040000),
}
for name, (nr, *args) in denied.items():
    r, e = call(nr, *args)
    ok = r == -1 and e in (errno.EPERM, errno.ENOSYS)
    print("%s=%s %d %s" % (name, "refused" if ok else "REACHED", r, errno.errorcode.get(e, e)))
r, e = call(1000)
print("unknown=%s" % ("enosys" if r == -1 and e == errno.ENOSYS else "r=%d e=%d" % (r, e)))
pid = os.fork()
if pid == 0:
    r, e = call(39 | 0x40000000)
    os._exit(0 if r >= 0 else 3)
_, status = os.waitpid(pid, 0)
print("x32=%s" % ("RAN" if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 else "refused"))
"#;

#[cfg(target_arch = "x86_64")]
#[test]
fn syscalls_dockers_profile_denies_are_refused() {
    let cli = Cli::new();
    let mut verdict = Verdict::default();
    for target in targets().into_iter().filter(Target::python) {
        let probe = cli.probe(
            &target,
            "syscalls",
            &[],
            &format!("/usr/bin/python3 -c '{SYSCALLS_PY}'"),
        );
        verdict.check(
            &probe,
            probe.exit() == Some(0),
            "the python probe ran to its end",
        );
        for (name, result) in &probe.values {
            if name == "unknown" {
                verdict.check(
                    &probe,
                    result == "enosys",
                    format_args!("an unknown syscall gave {result}, not ENOSYS"),
                );
            } else if name == "x32" {
                verdict.check(&probe, result == "refused", "an x32-ABI syscall ran");
            } else {
                verdict.check(
                    &probe,
                    result.starts_with("refused"),
                    format_args!("{name} reached the kernel: {result}"),
                );
            }
        }
        verdict.check(&probe, probe.values.len() > 30, "every syscall was tried");
    }
    verdict.finish();
}

/// Tries TCP to the host's loopback and a host abstract unix socket.
const NET_PY: &str = r#"
import socket, sys
port, name = int(sys.argv[1]), sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(3)
try:
    s.connect(("127.0.0.1", port)); print("tcp=CONNECTED")
except OSError as e:
    print("tcp=refused %s" % e)
u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    u.connect("\0" + name); print("abstract=CONNECTED")
except OSError as e:
    print("abstract=refused %s" % e)
"#;

#[test]
fn the_network_is_only_loopback_and_host_sockets_are_unreachable() {
    use std::os::linux::net::SocketAddrExt;
    let cli = Cli::new();
    let mut verdict = Verdict::default();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    tcp.set_nonblocking(true).unwrap();
    let port = tcp.local_addr().unwrap().port();
    let abstract_name = unique("sandvisor-probe-");
    let unix = std::os::unix::net::UnixListener::bind_addr(
        &std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes()).unwrap(),
    )
    .unwrap();
    unix.set_nonblocking(true).unwrap();
    for target in targets() {
        let connect = if target.python() {
            format!("val py /usr/bin/python3 -c '{NET_PY}' {port} {abstract_name}\n")
        } else {
            format!("try tcp sh -c 'echo hi | nc -w 3 127.0.0.1 {port}'\n")
        };
        let probe = cli.probe(
            &target,
            &format!("net-{}", target.tag()),
            &[],
            &format!(
                "val links sh -c \"tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '\"\n\
                 val unix cat /proc/net/unix\n{connect}"
            ),
        );
        verdict.check(
            &probe,
            probe.lines("links") == ["lo"],
            format_args!("interfaces beyond lo: {:?}", probe.val("links")),
        );
        let unix_table = probe.val("unix");
        verdict.check(
            &probe,
            !unix_table.contains(&abstract_name)
                && !unix_table.contains(&*cli.home().to_string_lossy()),
            "the host's unix sockets are listed in /proc/net/unix",
        );
        verdict.check(
            &probe,
            probe.lines("unix").len() <= 4,
            format_args!("/proc/net/unix lists the host's sockets: {unix_table}"),
        );
        if target.python() {
            verdict.check(
                &probe,
                probe.val("py").contains("tcp=refused"),
                format_args!("the host's loopback was reached: {}", probe.val("py")),
            );
            verdict.check(
                &probe,
                probe.val("py").contains("abstract=refused"),
                format_args!(
                    "the host's abstract socket was reached: {}",
                    probe.val("py")
                ),
            );
        } else {
            verdict.check(
                &probe,
                probe.failed("tcp"),
                format_args!("the host's loopback was reached: {}", probe.out("tcp")),
            );
        }
        let label = format!("net on {}", target.label);
        verdict.host(
            &label,
            tcp.accept().is_err(),
            "the host's TCP listener accepted a connection",
        );
        verdict.host(
            &label,
            unix.accept().is_err(),
            "the host's abstract socket accepted a connection",
        );
    }
    verdict.finish();
}

#[test]
fn the_environment_and_descriptors_are_only_what_was_asked() {
    let cli = Cli::new();
    let mut verdict = Verdict::default();
    let leak = unique("leak");
    for target in targets() {
        let name = format!("env-{}", target.tag());
        let mut command = cli.command(&[]);
        command.env("SANDVISOR_PROBE_HOST_SECRET", &leak);
        let script = format!(
            "{PRELUDE}\nval env sh -c \"tr '\\0' '\\n' < /proc/$$/environ | cut -d= -f1 | sort\"\n\
             val fds ls /proc/self/fd\nval leak sh -c 'env | grep -c {leak}'"
        );
        let mut args = vec!["run", "--name", &name, "-e", "ASKED=1"];
        args.extend(target.args());
        args.extend(["--", "sh", "-c", &script]);
        let probe = Probe::new(
            format!("{name} on {}", target.label),
            command.args(&args).output().unwrap(),
        );
        let keys = probe.lines("env");
        verdict.check(
            &probe,
            keys == ["ASKED", "PATH"],
            format_args!("the command's environment is {keys:?}, not only ASKED and PATH"),
        );
        verdict.check(
            &probe,
            probe.val("leak").trim() == "0",
            "the CLI's environment reached the command",
        );
        let fds = probe.lines("fds");
        verdict.check(
            &probe,
            fds.iter().all(|fd| ["0", "1", "2", "3"].contains(fd)),
            format_args!("descriptors beyond 0 1 2 (and ls's own): {fds:?}"),
        );
    }
    verdict.finish();
}

#[test]
fn memory_and_pids_are_limited_by_default_and_enforced() {
    let cli = Cli::new();
    let mut verdict = Verdict::default();
    for target in targets() {
        let name = format!("limits-{}", target.tag());
        let pid = cli.detached(&target, &name, &[], "exec sleep 1000");
        let inside = cli.exec_probe(
            &target,
            &name,
            &[],
            r#"for f in /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory.max; do [ -r $f ] && val memory cat $f; done
for f in /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/pids.max; do [ -r $f ] && val pids cat $f; done
"#,
        );
        verdict.check(
            &inside,
            inside.val("memory") == "1073741824",
            format_args!(
                "the memory limit inside is {} (want 1 GiB)",
                inside.val("memory")
            ),
        );
        verdict.check(
            &inside,
            inside.val("pids") == "1024",
            format_args!(
                "the pids limit inside is {} (want 1024)",
                inside.val("pids")
            ),
        );
        // The same, from the host: the cgroup the agent is in.
        let label = format!("{name} on {}", target.label);
        let memory = host_limit(pid, "memory", "memory.limit_in_bytes", "memory.max");
        verdict.host(
            &label,
            memory.as_deref() == Some("1073741824"),
            format_args!("the host's memory limit for the sandbox is {memory:?}"),
        );
        let pids = host_limit(pid, "pids", "pids.max", "pids.max");
        verdict.host(
            &label,
            pids.as_deref() == Some("1024"),
            format_args!("the host's pids limit for the sandbox is {pids:?}"),
        );
        cli.ok(&["rm", "-f", &name]);

        // A fork bomb hits the limit.
        let bomb = cli.probe(
            &target,
            &format!("forks-{}", target.tag()),
            &[],
            "try forks sh -c 'i=0; while [ $i -lt 1100 ]; do sleep 60 & i=$((i+1)); done; echo spawned-all'",
        );
        verdict.check(
            &bomb,
            bomb.out("forks").to_lowercase().contains("fork"),
            "1,100 processes were started: no pids limit by default",
        );
        // Memory beyond the limit ends the run as OutOfMemory.
        let oom_name = format!("oom-{}", target.tag());
        let oom = cli.probe(
            &target,
            &oom_name,
            &["--memory", "32m"],
            r#"x=$(head -c 67108864 /dev/zero | tr '\0' a); echo survived"#,
        );
        verdict.check(
            &oom,
            !String::from_utf8_lossy(&oom.output.stdout).contains("survived"),
            "64 MiB fit in a 32 MiB sandbox",
        );
        let reason = cli
            .sandbox(&oom_name)
            .map(|s| s["termination_reason"].clone())
            .unwrap_or_default();
        verdict.check(
            &oom,
            reason == "OutOfMemory",
            format_args!("the termination reason is {reason}, not OutOfMemory"),
        );
    }
    verdict.finish();
}

#[test]
fn exec_and_terminal_sessions_are_confined_like_the_main_one() {
    let cli = Cli::new();
    let mut verdict = Verdict::default();
    let same_root = r#"readlink /proc/self/ns/mnt; cat /proc/self/uid_map; ls -A /"#;
    for target in targets() {
        let name = format!("sess-{}", target.tag());
        cli.detached(
            &target,
            &name,
            &[],
            &format!("({same_root}) > /tmp/main-view; {STATUS_SCRIPT} > /tmp/main-status; exec sleep 1000"),
        );
        for extra in [&[][..], &["-t"][..]] {
            let probe = cli.exec_probe(
                &target,
                &name,
                extra,
                &format!(
                    "{STATUS_SCRIPT}\nval view sh -c '{same_root}'\nval main_view cat /tmp/main-view\n\
                     val main_status cat /tmp/main-status\nval tty tty\n\
                     val env sh -c \"tr '\\0' '\\n' < /proc/$$/environ | cut -d= -f1 | sort\"\n\
                     val fds ls /proc/self/fd"
                ),
            );
            check_confinement(&mut verdict, &probe);
            verdict.check(
                &probe,
                probe.val("view") == probe.val("main_view") && probe.val("view") != "<missing>",
                format_args!(
                    "the session's namespace, ids and root differ from the main command's: {:?} vs {:?}",
                    probe.val("view"),
                    probe.val("main_view")
                ),
            );
            let status: Vec<String> = [
                "CapInh",
                "CapPrm",
                "CapEff",
                "CapBnd",
                "CapAmb",
                "NoNewPrivs",
                "Seccomp",
            ]
            .iter()
            .map(|k| format!("{k}={}", probe.val(k)))
            .collect();
            let main = probe.val("main_status");
            verdict.check(
                &probe,
                status.iter().all(|line| main.split('|').any(|m| m == line)),
                format_args!(
                    "the session's confinement {status:?} differs from the main command's {main:?}"
                ),
            );
            let keys = probe.lines("env");
            let expected: &[&str] = if extra.is_empty() {
                &["PATH"]
            } else {
                &["PATH", "TERM"]
            };
            verdict.check(
                &probe,
                keys.iter().all(|k| expected.contains(k)),
                format_args!("the session's environment is {keys:?}"),
            );
            if extra.is_empty() {
                verdict.check(
                    &probe,
                    probe
                        .lines("fds")
                        .iter()
                        .all(|fd| ["0", "1", "2", "3"].contains(fd)),
                    format_args!(
                        "the session has descriptors beyond 0 1 2 (and ls's own): {:?}",
                        probe.val("fds")
                    ),
                );
            } else {
                verdict.check(
                    &probe,
                    probe.val("tty").starts_with("/dev/pts/"),
                    format_args!(
                        "the terminal session has no terminal of its own: {:?}",
                        probe.val("tty")
                    ),
                );
            }
        }
        cli.ok(&["rm", "-f", &name]);
    }
    verdict.finish();
}

#[test]
fn privileged_is_the_one_switch_back_to_host_root() {
    let cli = Cli::new();
    let mut verdict = Verdict::default();
    let host_caps = status_field(std::process::id(), "CapEff:").unwrap();
    let host_root: BTreeSet<String> = std::fs::read_dir("/")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let target = Target {
        label: "the host's / (privileged)",
        rootfs: None,
        _dir: None,
    };
    let name = "priv";
    let probe = cli.probe(
        &target,
        name,
        &["--privileged"],
        "val caps sh -c \"grep '^CapEff:' /proc/self/status | cut -f2\"\nval uid_map cat /proc/self/uid_map\nval root ls -A /",
    );
    verdict.check(&probe, probe.exit() == Some(0), "a privileged sandbox runs");
    verdict.check(
        &probe,
        probe.val("caps") == host_caps,
        format_args!(
            "CapEff is {} (want the host's {host_caps})",
            probe.val("caps")
        ),
    );
    verdict.check(
        &probe,
        id_map(probe.val("uid_map")) == [0, 0, 4_294_967_295],
        format_args!("uid_map is {:?} (want the host's)", probe.val("uid_map")),
    );
    let root: BTreeSet<String> = probe.lines("root").iter().map(|s| s.to_string()).collect();
    verdict.check(
        &probe,
        root == host_root,
        format_args!("/ is {root:?}, not the host's {host_root:?}"),
    );
    let ps = cli.ok(&["ps", "-a"]);
    verdict.host(
        name,
        ps.lines()
            .any(|l| l.contains(name) && l.to_lowercase().contains("privileged")),
        format_args!("`ps -a` does not show it privileged:\n{ps}"),
    );
    let inspected = cli.inspect(name);
    verdict.host(
        name,
        says_privileged(&inspected),
        format_args!("`inspect` does not show it privileged: {inspected}"),
    );
    // A default sandbox is not privileged, in ps and inspect alike.
    cli.probe(&target, "plain", &[], "true");
    verdict.host(
        "plain",
        !says_privileged(&cli.inspect("plain")),
        "`inspect` shows a default sandbox privileged",
    );
    verdict.finish();
}

#[test]
fn userns_host_keeps_host_ids_but_still_confines() {
    let cli = Cli::new();
    let mut verdict = Verdict::default();
    let mark = unique("usernsmark");
    for target in targets() {
        let probe = cli.probe(
            &target,
            &format!("userns-{}", target.tag()),
            &["--userns=host"],
            &format!(
                "{STATUS_SCRIPT}\nval uid_map cat /proc/self/uid_map\nval root ls -A /\n\
                 try touch_etc touch /etc/{mark}\ntry home ls -d {home}",
                home = cli.home().display()
            ),
        );
        verdict.check(
            &probe,
            id_map(probe.val("uid_map")) == [0, 0, 4_294_967_295],
            format_args!(
                "uid_map is {:?} (want the host's ids)",
                probe.val("uid_map")
            ),
        );
        check_confinement(&mut verdict, &probe);
        verdict.check(
            &probe,
            probe.failed("home"),
            "the sandvisor home is visible",
        );
        let root: BTreeSet<&str> = probe.lines("root").into_iter().collect();
        match &target.rootfs {
            Some(rootfs) => {
                let expected: BTreeSet<String> = std::fs::read_dir(rootfs)
                    .unwrap()
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect();
                verdict.check(
                    &probe,
                    expected.iter().all(|e| root.contains(e.as_str())),
                    format_args!("/ is {root:?}, not the rootfs's {expected:?}"),
                );
            }
            None => verdict.check(
                &probe,
                !root.contains("root") || !root.contains("home") || !root.contains("srv"),
                format_args!("/ looks like the host's: {root:?}"),
            ),
        }
        let written = Path::new("/etc").join(&mark);
        let on_host = written.exists();
        if on_host {
            let _ = std::fs::remove_file(&written);
        }
        verdict.host(
            &format!("userns on {}", target.label),
            !on_host,
            "touch /etc/x inside wrote the host's /etc",
        );
    }
    verdict.finish();
}
