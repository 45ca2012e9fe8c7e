//! Store-side faults of issue 14, each reproduced with the real thing: a full
//! tmpfs home, a zombie host (a parent that does not reap), an orphaned
//! sandbox directory, a lost or damaged database, rows that do not parse.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sandvisor::store::{this_host, Store, DB_FILE};
use sandvisor::{Error, SandboxConfig, SandboxStatus, Sandvisor};
use sqlx::Connection;
use tempfile::TempDir;

#[path = "common/tmpfs.rs"]
mod tmpfs;
use tmpfs::{free_bytes, Tmpfs};

const BIN: &str = env!("CARGO_BIN_EXE_sandvisor");
const AGENT: &str = env!("CARGO_BIN_EXE_sandvisor-agent");

async fn runtime(home: &Path) -> Sandvisor {
    Sandvisor::builder()
        .home(home)
        .agent_path(AGENT)
        .open()
        .await
        .unwrap()
}

/// Creates `name` running `command` (via `sh -c`) and waits for its end.
async fn run_to_end(rt: &Sandvisor, name: &str, command: &str) {
    let mut config = SandboxConfig::new(name, "/bin/sh");
    config.args = vec!["-c".into(), command.into()];
    let sandbox = rt.create(config).await.unwrap();
    let end = sandbox.wait_until_stopped().await.unwrap();
    assert_eq!(end.status, SandboxStatus::Stopped, "{end:?}");
}

fn cli(home: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("SANDVISOR_HOME", home)
        .env_remove("RUST_LOG")
        .env_remove("SANDVISOR_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ps_json(home: &Path) -> Vec<serde_json::Value> {
    let out = cli(home, &["ps", "-a", "--json"]);
    assert!(
        out.status.success(),
        "ps -a failed: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn status_in_ps(home: &Path, name: &str) -> Option<String> {
    ps_json(home)
        .into_iter()
        .find(|s| s["name"] == name)
        .map(|s| s["status"].as_str().unwrap().to_string())
}

/// D1: a commit that fails on a full disk must not leave the writer
/// connection inside a transaction; once space returns, writes succeed.
#[tokio::test]
async fn a_failed_commit_on_a_full_disk_leaves_the_writer_usable() {
    let fs = Tmpfs::mount(2 * 1024 * 1024);
    let home = fs.path().join("home");
    let store = Store::open(&home).await.unwrap();
    let host = this_host();
    let insert = |name: String| {
        let store = store.clone();
        async move {
            // Large configs: each insert needs fresh WAL frames.
            let mut config = SandboxConfig::new(name, "true");
            config.args = vec!["x".repeat(3000)];
            store
                .insert_sandbox(&config, SandboxStatus::Created, host, None)
                .await
        }
    };
    insert("before".into()).await.unwrap();
    let filler = fs.path().join("filler");
    fs.fill(&filler);
    let mut failures = Vec::new();
    for i in 0..100 {
        match insert(format!("full{i}")).await {
            Ok(_) => {}
            Err(err) => failures.push(err.to_string()),
        }
        if failures.len() >= 3 {
            break;
        }
    }
    assert!(
        !failures.is_empty(),
        "no write failed on the full disk: the test proves nothing"
    );
    assert!(failures.iter().any(|f| f.contains("full")), "{failures:?}");
    std::fs::remove_file(&filler).unwrap();
    // Space is back: the grouped writes and the read-then-write
    // transactions work again, without reopening anything.
    insert("after".into()).await.unwrap();
    assert_eq!(store.delete_sandbox("before").await.unwrap(), None);
    let names: Vec<String> = store
        .sandboxes()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert!(names.contains(&"after".to_string()), "{names:?}");
    assert!(!names.contains(&"before".to_string()), "{names:?}");
    // A write that failed did not land half-way.
    for name in &names {
        assert!(name == "after" || name.starts_with("full"), "{names:?}");
    }
}

/// D2: `remove` frees a full disk: the sandbox's files go before the row
/// delete needs WAL space, and the name can be removed and reused.
#[tokio::test]
async fn remove_frees_a_full_disk() {
    let fs = Tmpfs::mount(4 * 1024 * 1024);
    let home = fs.path().join("home");
    let rt = runtime(&home).await;
    run_to_end(&rt, "big", "echo hello").await;
    // Its logs fill the disk.
    fs.fill(&home.join("sandboxes/big/logs/exec.log.1"));
    rt.remove("big").await.unwrap();
    assert!(free_bytes(fs.path()) > 2 * 1024 * 1024);
    assert!(!home.join("sandboxes/big").exists());
    assert!(matches!(
        rt.get("big").await,
        Err(Error::SandboxNotFound(_))
    ));
    run_to_end(&rt, "big", "echo again").await;
    rt.remove("big").await.unwrap();
}

/// D2, through the CLI: `rm -f` on a full disk succeeds and frees it.
///
/// The home stays open in this process, as a daemon would hold it: once the
/// last connection to a home closes, SQLite deletes its `-shm`, and creating
/// that again on a full disk fails before any command runs (a limit this
/// test does not cover).
#[tokio::test]
async fn rm_f_frees_a_full_disk() {
    let fs = Tmpfs::mount(4 * 1024 * 1024);
    let home = fs.path().join("home");
    let out = cli(&home, &["run", "--name", "big", "true"]);
    assert!(out.status.success(), "{out:?}");
    let held = Store::open(&home).await.unwrap();
    fs.fill(&home.join("sandboxes/big/logs/exec.log.1"));
    let out = cli(&home, &["rm", "-f", "big"]);
    assert!(
        out.status.success(),
        "rm -f on a full disk: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(free_bytes(fs.path()) > 2 * 1024 * 1024);
    assert_eq!(status_in_ps(&home, "big"), None);
    drop(held);
}

/// D4: a host that is a zombie (SIGKILLed, not reaped by its parent) is
/// dead: a new runtime reconciles its sandbox instead of showing it Running.
#[test]
fn a_zombie_host_counts_as_dead() {
    let home = tempfile::tempdir().unwrap();
    // This test process is the parent, and it does not reap the host until
    // the end.
    let mut host = Command::new(BIN)
        .args(["run", "--name", "z", "sleep", "1000"])
        .env("SANDVISOR_HOME", home.path())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while status_in_ps(home.path(), "z").as_deref() != Some("Running") {
        assert!(Instant::now() < deadline, "z never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(host.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", host.id())).unwrap();
        let state = stat[stat.rfind(')').unwrap() + 2..].chars().next();
        if state == Some('Z') {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the host is not a zombie: {stat}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let status = status_in_ps(home.path(), "z");
    // Reap before asserting, so a failure leaves no zombie behind.
    host.wait().unwrap();
    assert_eq!(status.as_deref(), Some("Crashed"));
}

/// D9: a sandbox directory without a row is set aside, never reused: the
/// new sandbox's exec.log holds only its own output.
#[tokio::test]
async fn an_orphaned_sandbox_directory_is_set_aside_not_reused() {
    let home = tempfile::tempdir().unwrap();
    // A home in use (a database that is not empty: a home whose database is
    // lost is another fault), then a directory appears without a row.
    let rt = runtime(home.path()).await;
    run_to_end(&rt, "other", "true").await;
    let logs = home.path().join("sandboxes/x/logs");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(logs.join("exec.log"), "OLD-SANDBOX-OUTPUT\n").unwrap();
    run_to_end(&rt, "x", "echo NEW-OUTPUT").await;
    let log = std::fs::read_to_string(logs.join("exec.log")).unwrap();
    assert!(!log.contains("OLD-SANDBOX-OUTPUT"), "{log}");
    assert!(log.contains("NEW-OUTPUT"), "{log}");
    let aside: Vec<PathBuf> = std::fs::read_dir(home.path().join("sandboxes/.orphaned"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    let name = aside[0].file_name().unwrap().to_string_lossy().to_string();
    assert!(name.starts_with("x-"), "{name}");
    let old = std::fs::read_to_string(aside[0].join("logs/exec.log")).unwrap();
    assert_eq!(old, "OLD-SANDBOX-OUTPUT\n");
    // The set-aside directory is no sandbox.
    let listed: Vec<String> = rt
        .list()
        .await
        .unwrap()
        .iter()
        .map(|h| h.name().to_string())
        .collect();
    assert_eq!(listed, ["other", "x"]);
}

/// Opens a copy of `home`'s database file alone (no `-wal`): what a lost
/// WAL would leave.
async fn database_file_alone(home: &Path) -> (TempDir, Store) {
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(home.join(DB_FILE), copy.path().join(DB_FILE)).unwrap();
    let store = Store::open(copy.path()).await.unwrap();
    (copy, store)
}

/// D10: the WAL is checkpointed periodically: a runtime left open and idle
/// has its state in the database file itself.
#[tokio::test]
async fn the_wal_is_checkpointed_periodically() {
    let home = tempfile::tempdir().unwrap();
    let rt = runtime(home.path()).await;
    run_to_end(&rt, "a", "true").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_copy, store) = database_file_alone(home.path()).await;
    let row = store.sandbox("a").await.unwrap().expect("a is in the .db");
    assert_eq!(row.status, SandboxStatus::Stopped);
    drop(rt);
}

/// D10: the WAL is checkpointed when a runtime closes: after a foreground
/// `run` exits, the database file alone holds its sandbox.
#[tokio::test]
async fn the_wal_is_checkpointed_on_close() {
    let home = tempfile::tempdir().unwrap();
    let out = cli(home.path(), &["run", "--name", "a", "true"]);
    assert!(out.status.success(), "{out:?}");
    let (_copy, store) = database_file_alone(home.path()).await;
    let row = store.sandbox("a").await.unwrap().expect("a is in the .db");
    assert_eq!(row.status, SandboxStatus::Stopped);
}

/// A home with one stopped sandbox, its runtime closed.
async fn home_with_a_sandbox() -> TempDir {
    let home = tempfile::tempdir().unwrap();
    let rt = runtime(home.path()).await;
    run_to_end(&rt, "a", "true").await;
    drop(rt);
    home
}

fn remove_database(home: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let path = home.join(format!("{DB_FILE}{suffix}"));
        match std::fs::remove_file(&path) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => panic!("{err}"),
            _ => {}
        }
    }
}

fn assert_damaged(opened: sandvisor::Result<Sandvisor>, home: &Path) {
    match opened {
        Err(Error::DatabaseDamaged { path, .. }) => assert_eq!(path, home.join(DB_FILE)),
        other => panic!("expected DatabaseDamaged, got {other:?}"),
    }
}

/// D10: a home with sandboxes whose database is missing, truncated or
/// garbage is an error naming the database, never a silently empty home.
#[tokio::test]
async fn a_missing_or_damaged_database_is_an_error_not_an_empty_home() {
    let open = |home: PathBuf| async move {
        Sandvisor::builder()
            .home(home)
            .agent_path(AGENT)
            .open()
            .await
    };
    // Missing.
    let home = home_with_a_sandbox().await;
    remove_database(home.path());
    assert_damaged(open(home.path().to_path_buf()).await, home.path());
    assert_damaged(open(home.path().to_path_buf()).await, home.path());
    // Truncated to nothing.
    let home = home_with_a_sandbox().await;
    remove_database(home.path());
    std::fs::write(home.path().join(DB_FILE), b"").unwrap();
    assert_damaged(open(home.path().to_path_buf()).await, home.path());
    // Garbage.
    let home = home_with_a_sandbox().await;
    remove_database(home.path());
    std::fs::write(home.path().join(DB_FILE), vec![0x5a; 8192]).unwrap();
    assert_damaged(open(home.path().to_path_buf()).await, home.path());
    // A new home, and a home whose only directory was set aside, open.
    let fresh = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(fresh.path().join("sandboxes/.orphaned/x-1")).unwrap();
    open(fresh.path().to_path_buf()).await.unwrap();
}

/// D10: a row that does not parse is reported alone; the others list.
#[tokio::test]
async fn a_row_that_does_not_parse_is_reported_alone() {
    let home = tempfile::tempdir().unwrap();
    let rt = runtime(home.path()).await;
    for name in ["a", "b", "c"] {
        run_to_end(&rt, name, "true").await;
    }
    let url = format!("sqlite://{}", home.path().join(DB_FILE).display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("UPDATE sandbox SET status = 'Exploded' WHERE name = 'b'")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("UPDATE sandbox SET config = '{bad' WHERE name = 'c'")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE run SET status = 'Weird' WHERE sandbox_id = (SELECT id FROM sandbox WHERE name = 'a')",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    let listed: Vec<String> = rt
        .list()
        .await
        .unwrap()
        .iter()
        .map(|h| h.name().to_string())
        .collect();
    assert_eq!(listed, ["a", "c"]);
    let checked = rt.list_checked().await.unwrap();
    assert_eq!(checked.len(), 3);
    match &checked[1] {
        Err(Error::BadRow { name, reason }) => {
            assert_eq!(name, "b");
            assert!(reason.contains("Exploded"), "{reason}");
        }
        other => panic!("expected BadRow for b, got {other:?}"),
    }
    assert!(matches!(rt.get("b").await, Err(Error::BadRow { .. })));
    assert!(matches!(rt.remove("b").await, Err(Error::BadRow { .. })));
    assert!(matches!(
        rt.get("c").await.unwrap().config(),
        Err(Error::BadRow { .. })
    ));
    drop(rt);
    // `ps -a` lists the good rows and names the bad one.
    let out = cli(home.path(), &["ps", "-a", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names: Vec<String> = serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["a", "c"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("b"), "{stderr}");
}
