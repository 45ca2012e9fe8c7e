//! The isolation settings users write (issue 13): validation before anything
//! is created, through the SDK and the CLI; the per-sandbox user id ranges
//! in the store; the specs a run is launched with; the home's modes;
//! `ps` and `inspect`. No sandbox really starts here: runs go to a backend
//! that records their specs and hands them to the simulated one.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use sandvisor::engine::backend::{Backend, SpawnFailed, Started, VmSpec};
use sandvisor::engine::protocol::{IdRange, Ids};
use sandvisor::isolation::caps;
use sandvisor::testing::SimulatedBackend;
use sandvisor::{Error, ExecConfig, Isolation, Limit, Mount, SandboxConfig, Sandvisor, Seccomp};
use serde_json::Value;
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_sandvisor");
const FIRST_RANGE: u32 = 0x4000_0000;

/// The simulated backend, remembering every spec it was asked to start.
#[derive(Debug, Default)]
struct Recording {
    inner: SimulatedBackend,
    specs: Mutex<Vec<VmSpec>>,
}

impl Recording {
    fn last(&self, name: &str) -> VmSpec {
        self.specs
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|spec| spec.start.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} was never started"))
    }
}

impl Backend for Recording {
    fn start<'a>(&'a self, spec: &'a VmSpec) -> BoxFuture<'a, Result<Started, SpawnFailed>> {
        self.specs.lock().unwrap().push(spec.clone());
        self.inner.start(spec)
    }
}

async fn open(home: &Path, backend: &Arc<Recording>) -> Sandvisor {
    Sandvisor::builder()
        .home(home)
        .backend(backend.clone())
        .open()
        .await
        .unwrap()
}

fn config(name: &str) -> SandboxConfig {
    SandboxConfig::new(name, "true")
}

/// The field `config` is refused for; nothing may have been created.
async fn refused(config: SandboxConfig) -> String {
    let home = tempfile::tempdir().unwrap();
    let backend = Arc::new(Recording::default());
    let rt = open(home.path(), &backend).await;
    let err = rt.create(config).await.unwrap_err();
    assert!(rt.list().await.unwrap().is_empty(), "a row was written");
    assert!(
        backend.specs.lock().unwrap().is_empty(),
        "something started"
    );
    assert!(
        !home.path().join("sandboxes").exists(),
        "a sandbox directory was made"
    );
    match err {
        Error::InvalidConfig { field, .. } => field,
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
}

/// A temp directory with an empty file `file` and a directory `dir`.
fn paths() -> (TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let sub = dir.path().join("dir");
    std::fs::create_dir(&sub).unwrap();
    (dir, file, sub)
}

fn mount(source: &Path, target: &str) -> Mount {
    Mount {
        source: source.to_path_buf(),
        target: target.into(),
        read_only: false,
    }
}

/// A change to a config.
type Edit = Box<dyn Fn(&mut SandboxConfig)>;

#[tokio::test]
async fn bad_isolation_settings_are_refused_naming_the_field_before_anything_is_created() {
    let (tmp, file, dir) = paths();
    let bad_json = tmp.path().join("bad.json");
    std::fs::write(&bad_json, "{ not json").unwrap();
    let cases: Vec<(&str, Edit)> = vec![
        (
            "cap_add[1]",
            Box::new(|c| c.cap_add = vec!["NET_ADMIN".into(), "NOT_A_CAP".into()]),
        ),
        (
            "cap_drop[0]",
            Box::new(|c| c.cap_drop = vec!["CAP_WHATEVER".into()]),
        ),
        (
            "seccomp",
            Box::new(|c| c.seccomp = Seccomp::Profile("/nonexistent/profile.json".into())),
        ),
        (
            "seccomp",
            Box::new(move |c| c.seccomp = Seccomp::Profile(bad_json.clone())),
        ),
        (
            "mounts[0].source",
            Box::new(|c| c.mounts = vec![mount(Path::new("relative/dir"), "/data")]),
        ),
        ("mounts[1].source", {
            let dir = dir.clone();
            Box::new(move |c| {
                c.mounts = vec![
                    mount(&dir, "/a"),
                    mount(Path::new("/nonexistent/source"), "/b"),
                ]
            })
        }),
        ("mounts[0].target", {
            let dir = dir.clone();
            Box::new(move |c| c.mounts = vec![mount(&dir, "relative")])
        }),
        ("mounts[0].target", {
            let dir = dir.clone();
            Box::new(move |c| c.mounts = vec![mount(&dir, "/data/../../etc")])
        }),
        ("mounts[0].target", {
            let dir = dir.clone();
            Box::new(move |c| c.mounts = vec![mount(&dir, "/proc/sys")])
        }),
        ("mounts[1].target", {
            let dir = dir.clone();
            Box::new(move |c| c.mounts = vec![mount(&dir, "/x"), mount(&dir, "/y/../x")])
        }),
        ("user", Box::new(|c| c.user = Some("nobody".into()))),
        ("user", Box::new(|c| c.user = Some("1000:".into()))),
        ("user", Box::new(|c| c.user = Some("-1".into()))),
        // Unmapped in the sandbox's 65,536 ids.
        ("user", Box::new(|c| c.user = Some("70000".into()))),
        ("memory", Box::new(|c| c.memory = Limit::Value(0))),
        ("pids", Box::new(|c| c.pids = Limit::Value(0))),
        ("cpus", Box::new(|c| c.cpus = Some(0.0))),
        ("cpus", Box::new(|c| c.cpus = Some(-1.0))),
        ("cpus", Box::new(|c| c.cpus = Some(f64::NAN))),
        ("cpus", Box::new(|c| c.cpus = Some(1e12))),
        ("isolation.mount", Box::new(|c| c.isolation.mount = false)),
        ("rootfs", Box::new(move |c| c.rootfs = Some(file.clone()))),
        (
            "read_only",
            Box::new(|c| {
                c.isolation = Isolation::unconfined();
                c.read_only = true;
            }),
        ),
    ];
    for (i, (field, set)) in cases.iter().enumerate() {
        let mut config = config(&format!("bad{i}"));
        set(&mut config);
        assert_eq!(
            &refused(config.clone()).await,
            field,
            "case {i}: {config:?}"
        );
    }
}

#[tokio::test]
async fn good_isolation_settings_are_accepted() {
    let (_tmp, file, dir) = paths();
    let mut config = config("good");
    config.cap_add = vec!["net_admin".into(), "CAP_SYS_PTRACE".into()];
    config.cap_drop = vec!["ALL".into()];
    config.mounts = vec![
        Mount {
            source: dir.clone(),
            target: "/data/./in".into(),
            read_only: true,
        },
        mount(&file, "/etc/extra.conf"),
    ];
    config.user = Some("1000:100".into());
    config.memory = Limit::Unlimited;
    config.pids = Limit::Value(20);
    config.cpus = Some(0.5);
    config.read_only = true;
    config.validate().unwrap();
    // Outside a user namespace every id but -1 is one.
    config.isolation.user = false;
    config.user = Some("70000".into());
    config.validate().unwrap();
    // A privileged sandbox may share the host's mount namespace.
    let mut host = SandboxConfig::new("host", "true");
    host.isolation = Isolation::unconfined();
    host.validate().unwrap();
}

#[tokio::test]
async fn runtime_default_limits_out_of_range_are_refused() {
    let home = tempfile::tempdir().unwrap();
    for (builder, field) in [
        (
            Sandvisor::builder().default_memory(Limit::Value(0)),
            "default_memory",
        ),
        (
            Sandvisor::builder().default_pids(Limit::Value(0)),
            "default_pids",
        ),
    ] {
        match builder.home(home.path()).open().await {
            Err(Error::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_default_run_is_fully_confined_and_limited() {
    let home = tempfile::tempdir().unwrap();
    let backend = Arc::new(Recording::default());
    let rt = open(home.path(), &backend).await;
    rt.create(config("plain"))
        .await
        .unwrap()
        .kill()
        .await
        .unwrap();
    let spec = backend.last("plain");
    let range = IdRange {
        first: FIRST_RANGE,
        count: 65_536,
    };
    assert_eq!(spec.plan.user_namespace, Some(range));
    assert!(spec.plan.pid_namespace);
    let root = spec.plan.root.as_ref().expect("its own root");
    assert_eq!(
        Path::new(&root.dir),
        rt.home().join("sandboxes").join("plain").join("fs")
    );
    assert!(root.lowers.is_empty());
    assert!(!root.read_only && root.mounts.is_empty());
    assert_eq!(root.tmpfs_bytes, 64 << 20);
    assert!(spec.start.cgroup_namespace && spec.start.mount_namespace && spec.start.net_namespace);
    let confine = spec.start.confine.as_ref().expect("confined");
    assert_eq!(confine.capabilities, caps::DOCKER_DEFAULT);
    assert!(confine
        .seccomp
        .as_ref()
        .is_some_and(|bpf| !bpf.is_empty() && bpf.len() % 8 == 0));
    let rlimit = |resource: u32| {
        confine
            .rlimits
            .iter()
            .find(|r| r.resource == resource)
            .map(|r| (r.soft, r.hard))
    };
    assert_eq!(rlimit(libc::RLIMIT_CORE), Some((0, 0)));
    assert_eq!(rlimit(libc::RLIMIT_NOFILE), Some((1 << 20, 1 << 20)));
    assert_eq!(spec.start.run.user, None);
    assert_eq!(spec.limits.memory_bytes, Some(1 << 30));
    assert_eq!(spec.limits.pids, Some(1024));
    assert_eq!(spec.limits.cpu_quota_us, None);
}

#[tokio::test]
async fn settings_reach_the_run_and_runtime_defaults_fill_in() {
    let (_tmp, _file, dir) = paths();
    let home = tempfile::tempdir().unwrap();
    let backend = Arc::new(Recording::default());
    let rt = Sandvisor::builder()
        .home(home.path())
        .backend(backend.clone())
        .default_memory(Limit::Unlimited)
        .default_pids(Limit::Value(50))
        .open()
        .await
        .unwrap();
    let mut set = config("set");
    set.cap_drop = vec!["ALL".into()];
    set.cap_add = vec!["NET_BIND_SERVICE".into()];
    set.seccomp = Seccomp::Unconfined;
    set.user = Some("1000:100".into());
    set.cpus = Some(1.5);
    set.read_only = true;
    set.mounts = vec![Mount {
        source: dir.clone(),
        target: "/data/../in/".into(),
        read_only: true,
    }];
    set.isolation.user = false;
    set.isolation.cgroup = false;
    rt.create(set).await.unwrap().kill().await.unwrap();
    let spec = backend.last("set");
    assert_eq!(spec.plan.user_namespace, None);
    assert!(!spec.start.cgroup_namespace);
    let confine = spec.start.confine.unwrap();
    assert_eq!(
        confine.capabilities,
        1 << caps::parse("NET_BIND_SERVICE").unwrap()
    );
    assert_eq!(confine.seccomp, None);
    assert_eq!(
        spec.start.run.user,
        Some(Ids {
            uid: 1000,
            gid: 100
        })
    );
    let root = spec.plan.root.unwrap();
    assert!(root.read_only);
    assert_eq!(root.mounts.len(), 1);
    assert_eq!(root.mounts[0].source, dir.to_str().unwrap());
    assert_eq!(root.mounts[0].target, "/in");
    assert!(root.mounts[0].read_only);
    assert_eq!(spec.limits.memory_bytes, None);
    assert_eq!(spec.limits.pids, Some(50));
    assert_eq!(spec.limits.cpu_quota_us, Some(150_000));

    let mut unconfined = config("unconfined");
    unconfined.isolation = Isolation::unconfined();
    unconfined.memory = Limit::Value(64 << 20);
    rt.create(unconfined).await.unwrap().kill().await.unwrap();
    let spec = backend.last("unconfined");
    assert_eq!(spec.plan.user_namespace, None);
    assert_eq!(spec.plan.root, None);
    assert_eq!(spec.start.confine, None);
    assert!(!spec.start.pid_namespace && !spec.start.mount_namespace);
    assert_eq!(spec.limits.memory_bytes, Some(64 << 20));
    assert_eq!(rt.get("unconfined").await.unwrap().id_range(), None);
}

#[tokio::test]
async fn id_ranges_are_per_sandbox_kept_across_runs_and_freed_by_rm() {
    let home = tempfile::tempdir().unwrap();
    let backend = Arc::new(Recording::default());
    let range = |slot: u32| IdRange {
        first: FIRST_RANGE + slot * 65_536,
        count: 65_536,
    };
    {
        let rt = open(home.path(), &backend).await;
        for name in ["a", "b"] {
            rt.create(config(name)).await.unwrap().kill().await.unwrap();
        }
        let mut hostids = config("hostids");
        hostids.isolation.user = false;
        rt.create(hostids).await.unwrap().kill().await.unwrap();
        assert_eq!(rt.get("a").await.unwrap().id_range(), Some(range(0)));
        assert_eq!(rt.get("b").await.unwrap().id_range(), Some(range(1)));
        assert_eq!(rt.get("hostids").await.unwrap().id_range(), None);
        assert_eq!(backend.last("b").plan.user_namespace, Some(range(1)));
        // A second run of `a` in the same runtime.
        rt.start("a").await.unwrap().kill().await.unwrap();
        assert_eq!(backend.last("a").plan.user_namespace, Some(range(0)));
    }
    // A second runtime over the same home: the same ranges.
    let rt = open(home.path(), &backend).await;
    rt.start("b").await.unwrap().kill().await.unwrap();
    assert_eq!(backend.last("b").plan.user_namespace, Some(range(1)));
    assert_eq!(rt.get("a").await.unwrap().id_range(), Some(range(0)));
    // Removing `a` frees its range: the next sandbox takes the lowest free.
    rt.remove("a").await.unwrap();
    rt.create(config("c")).await.unwrap().kill().await.unwrap();
    assert_eq!(rt.get("c").await.unwrap().id_range(), Some(range(0)));
    assert_eq!(backend.last("c").plan.user_namespace, Some(range(0)));
    rt.create(config("d")).await.unwrap().kill().await.unwrap();
    assert_eq!(rt.get("d").await.unwrap().id_range(), Some(range(2)));
}

#[tokio::test]
async fn exec_users_are_checked_before_anything_is_sent() {
    let home = tempfile::tempdir().unwrap();
    let backend = Arc::new(Recording::default());
    let rt = open(home.path(), &backend).await;
    let sandbox = rt.create(config("exec")).await.unwrap();
    for user in ["root", "1:2:3", "65536"] {
        let mut exec = ExecConfig::new("true", Vec::<String>::new());
        exec.user = Some(user.into());
        match sandbox.exec(exec).await {
            Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, "user", "{user}"),
            other => panic!("{user}: {other:?}"),
        }
    }
    sandbox.kill().await.unwrap();
}

/// The mode bits of `path` (not following a last symlink).
fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

/// Every directory under `dir` (and itself) is 0700, every other entry 0600.
fn assert_private(dir: &Path) {
    assert_eq!(mode(dir), 0o700, "{}", dir.display());
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let kind = std::fs::symlink_metadata(&path).unwrap().file_type();
        if kind.is_dir() {
            assert_private(&path);
        } else {
            assert!(kind.is_file() || kind.is_socket(), "{}", path.display());
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
    }
}

#[tokio::test]
async fn the_home_is_private_directories_0700_files_0600() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let backend = Arc::new(Recording::default());
    let rt = Sandvisor::builder()
        .home(&home)
        .backend(backend.clone())
        .control_socket(true)
        .open()
        .await
        .unwrap();
    let sandbox = rt.create(config("files")).await.unwrap();
    sandbox.kill().await.unwrap();
    let logs = home.join("sandboxes").join("files").join("logs");
    for file in ["exec.log", "runtime.log"] {
        assert!(logs.join(file).is_file(), "{file} was not written");
    }
    assert!(rt.control_socket().unwrap().exists());
    assert!(home.join("sandvisor.db-wal").exists());
    assert_private(&home);
    drop(rt);

    // A home that exists with a wider mode is narrowed when opened.
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
    let rt = open(&home, &backend).await;
    assert_eq!(mode(&home), 0o700);
    drop(rt);
}

fn cli(home: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("SANDVISOR_HOME", home)
        .env_remove("RUST_LOG")
        .env_remove("SANDVISOR_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_cli_refuses_bad_isolation_settings_naming_the_field() {
    let home = tempfile::tempdir().unwrap();
    let (_tmp, file, dir) = paths();
    let dir = dir.to_str().unwrap();
    let missing_volume = "/nonexistent/source:/data".to_string();
    let file_rootfs = file.to_str().unwrap().to_string();
    let profile = "seccomp=/nonexistent/profile.json".to_string();
    let inside = format!("{dir}:/data/../../x");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--cap-add", "NET_ADMIN,BOGUS"], "cap_add[1]"),
        (vec!["--cap-drop", "BOGUS"], "cap_drop[0]"),
        (vec!["--security-opt", &profile], "seccomp"),
        (vec!["--security-opt", "apparmor=x"], "--security-opt"),
        (vec!["-v", "relative:/data"], "mounts[0].source"),
        (
            vec!["-v", dir_arg(dir), "--volume", &missing_volume],
            "mounts[1].source",
        ),
        (vec!["-v", &inside], "mounts[0].target"),
        (vec!["--user", "nobody"], "user"),
        (vec!["-u", "70000"], "user"),
        (vec!["--cpus", "0"], "cpus"),
        (vec!["--rootfs", &file_rootfs], "rootfs"),
        (vec!["--privileged", "--read-only"], "read_only"),
    ];
    for (flags, field) in &cases {
        let mut args = vec!["run", "--name", "bad"];
        args.extend(flags);
        args.extend(["--", "true"]);
        let out = cli(home.path(), &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!("invalid config: {field}:")),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    // Malformed values are the grammar's to refuse (exit 2), limits of 0 too.
    for flags in [
        &["--memory", "0"][..],
        &["--pids-limit", "0"],
        &["-v", "/only-a-source"],
        &["-v", "/a:/b:rx"],
        &["--userns", "private"],
    ] {
        let mut args = vec!["run"];
        args.extend(flags);
        args.extend(["--", "true"]);
        let out = cli(home.path(), &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
    let ps = cli(home.path(), &["ps", "-a", "--json"]);
    assert_eq!(String::from_utf8_lossy(&ps.stdout).trim(), "[]");
}

/// `DIR:/data:ro`, leaked: the case table holds `&str`s.
fn dir_arg(dir: &str) -> &'static str {
    Box::leak(format!("{dir}:/data:ro").into_boxed_str())
}

#[tokio::test]
async fn ps_and_inspect_show_the_effective_settings() {
    let (_tmp, _file, dir) = paths();
    let home = tempfile::tempdir().unwrap();
    let backend = Arc::new(Recording::default());
    let rt = open(home.path(), &backend).await;
    let mut set = config("set");
    set.cap_drop = vec!["ALL".into()];
    set.cap_add = vec!["CHOWN".into()];
    set.user = Some("1000".into());
    set.cpus = Some(0.5);
    set.pids = Limit::Value(20);
    set.read_only = true;
    set.mounts = vec![Mount {
        source: dir.clone(),
        target: "/data".into(),
        read_only: true,
    }];
    rt.create(set).await.unwrap().kill().await.unwrap();
    let mut privileged = config("privileged");
    privileged.isolation = Isolation::unconfined();
    rt.create(privileged).await.unwrap().kill().await.unwrap();

    let home = rt.home().to_path_buf();
    let run = |args: &[&str]| {
        let out = cli(&home, args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let inspect: Value =
        serde_json::from_str(&run(&["inspect", "--json", "set", "privileged"])).unwrap();
    let set = &inspect[0]["isolation"];
    assert_eq!(set["privileged"], false);
    assert_eq!(set["namespaces"]["user"], true);
    assert_eq!(set["namespaces"]["cgroup"], true);
    assert_eq!(set["user_namespace"]["first"], FIRST_RANGE);
    assert_eq!(set["user_namespace"]["count"], 65_536);
    assert_eq!(
        set["capabilities"],
        serde_json::json!(caps::names(1 << caps::parse("CHOWN").unwrap()))
    );
    assert_eq!(set["seccomp"], "default");
    assert_eq!(set["no_new_privs"], true);
    assert_eq!(set["limits"]["memory"], 1u64 << 30);
    assert_eq!(set["limits"]["pids"], 20);
    assert_eq!(set["limits"]["cpus"], 0.5);
    assert_eq!(set["read_only"], true);
    assert_eq!(set["user"], "1000");
    assert_eq!(set["mounts"][0]["target"], "/data");
    assert_eq!(set["mounts"][0]["source"], dir.to_str().unwrap());
    assert_eq!(set["mounts"][0]["read_only"], true);
    assert_eq!(inspect[0]["config"]["pids"], 20);
    assert_eq!(inspect[0]["config"]["memory"], "default");

    let privileged = &inspect[1]["isolation"];
    assert_eq!(privileged["privileged"], true);
    assert_eq!(privileged["user_namespace"], Value::Null);
    assert_eq!(privileged["capabilities"], serde_json::json!(["ALL"]));
    assert_eq!(privileged["seccomp"], "unconfined");
    assert_eq!(privileged["no_new_privs"], false);
    assert_eq!(privileged["root"], "host /");

    let ps: Value = serde_json::from_str(&run(&["ps", "-a", "--json"])).unwrap();
    let listed = |name: &str| {
        ps.as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(listed("privileged")["privileged"], true);
    assert_eq!(listed("set")["privileged"], false);
    let table = run(&["ps", "-a"]);
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .to_string()
    };
    assert!(row("privileged").ends_with("privileged"), "{table}");
    assert!(row("set").ends_with("confined"), "{table}");
}

#[test]
fn configs_stored_before_isolation_settings_still_read() {
    let old = r#"{"name":"old","command":"true","memory_limit":16777216,"pids_limit":null,
        "isolation":{"pid":true,"mount":true,"net":false,"uts":true,"ipc":true}}"#;
    let config: SandboxConfig = serde_json::from_str(old).unwrap();
    assert_eq!(config.memory, Limit::Value(16 << 20));
    assert_eq!(config.pids, Limit::Default);
    assert!(config.isolation.user && config.isolation.cgroup && !config.isolation.privileged);
    assert!(!config.isolation.net);
    assert_eq!(config.seccomp, Seccomp::Default);
    // And the new form round-trips.
    let mut new = config.clone();
    new.pids = Limit::Unlimited;
    let text = serde_json::to_string(&new).unwrap();
    assert!(text.contains(r#""pids":"unlimited""#), "{text}");
    assert_eq!(serde_json::from_str::<SandboxConfig>(&text).unwrap(), new);
}
