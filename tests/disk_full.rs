//! A full disk under a running runtime (issue 14, D1 and D13), with the real
//! thing: the home on a small tmpfs filled to the last byte while a sandbox
//! writes. Output waits for space and loses nothing; a sandbox whose output
//! stays unwritable ends Crashed; ends the store refused are recorded once
//! space returns, without restarting anything.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sandvisor::store::DB_FILE;
use sandvisor::{LogOptions, LogSource, Mount, SandboxConfig, SandboxStatus, Sandvisor};
use sqlx::Connection;
use tempfile::TempDir;

#[path = "common/tmpfs.rs"]
mod tmpfs;
use tmpfs::{assert_whole_records, Tmpfs};

const AGENT: &str = env!("CARGO_BIN_EXE_sandvisor-agent");
const BIN: &str = env!("CARGO_BIN_EXE_sandvisor");
/// Lines the writing sandbox prints.
const LINES: u32 = 300_000;

/// A sandbox that waits for `<gate>/go` (a directory outside the full
/// disk, bound read-only), then prints `LINES` numbered lines.
fn writer(name: &str, gate: &Path) -> SandboxConfig {
    let mut config = SandboxConfig::shell(
        name,
        format!(
            "while [ ! -e /gate/go ]; do sleep 0.02; done; seq 0 {}",
            LINES - 1
        ),
    );
    config.mounts = vec![Mount {
        source: gate.to_path_buf(),
        target: "/gate".into(),
        read_only: true,
    }];
    config
}

/// Every stdout line of `name`, in order; panics on a record that is not
/// valid JSON (a torn record).
async fn stdout_lines(rt: &Sandvisor, home: &Path, name: &str) -> Vec<String> {
    let dir = home.join("sandboxes").join(name);
    assert_whole_records(&dir);
    let entries = rt
        .logs()
        .read_logs(name, &LogOptions::default())
        .await
        .unwrap();
    let text: Vec<u8> = entries
        .iter()
        .filter(|e| e.source == LogSource::Stdout)
        .flat_map(|e| e.data.iter().copied())
        .collect();
    String::from_utf8(text)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn gate_dir() -> (TempDir, PathBuf) {
    let gate = tempfile::tempdir().unwrap();
    let path = gate.path().to_path_buf();
    (gate, path)
}

/// Empties the WAL into the database and truncates it, so the next commit
/// must grow the file (which a full disk refuses).
async fn truncate_wal(home: &Path) {
    let url = format!("sqlite://{}", home.join(DB_FILE).display());
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut db)
        .await
        .unwrap();
    db.close().await.unwrap();
    let wal = home.join(format!("{DB_FILE}-wal"));
    assert_eq!(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0), 0);
}

/// D13: output written while the disk is full waits for space (the
/// sandbox blocks on its pipes) and resumes when space returns: the run
/// completes and every line is there once, in order, no record torn.
#[tokio::test(flavor = "multi_thread")]
async fn d13_output_waits_out_a_full_disk_and_loses_nothing() {
    let fs = Tmpfs::mount(32 << 20);
    let home = fs.path().join("home");
    let rt = Sandvisor::builder()
        .home(&home)
        .agent_path(AGENT)
        .open()
        .await
        .unwrap();
    let (_gate, gate) = gate_dir();
    let sandbox = rt.create(writer("w", &gate)).await.unwrap();
    let filler = fs.path().join("filler");
    fs.fill(&filler);
    std::fs::write(gate.join("go"), "").unwrap();
    // The old tap spent its whole restart budget on the first write in
    // under a millisecond and the sandbox was killed: give it two seconds.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sandbox.status().await.unwrap(),
        SandboxStatus::Running,
        "the sandbox did not survive a full disk"
    );
    std::fs::remove_file(&filler).unwrap();
    let end = sandbox.wait_until_stopped().await.unwrap();
    assert_eq!(end.status, SandboxStatus::Stopped, "{end:?}");
    assert_eq!(end.exit_code, Some(0), "{end:?}");
    let lines = stdout_lines(&rt, &home, "w").await;
    let expected: Vec<String> = (0..LINES).map(|i| i.to_string()).collect();
    assert_eq!(lines.len(), expected.len(), "lines lost or duplicated");
    assert!(lines == expected, "lines out of order");
}

/// D1: a sandbox whose output stays unwritable for the whole wait ends
/// Crashed; the store, refusing writes on the same full disk, gets the end
/// once space returns — without a restart, the runtime stays usable, the
/// CLI's `ps` is right and no record is torn.
#[tokio::test(flavor = "multi_thread")]
async fn d1_a_run_that_cannot_write_ends_crashed_and_is_recorded_when_space_returns() {
    let fs = Tmpfs::mount(32 << 20);
    let home = fs.path().join("home");
    let rt = Sandvisor::builder()
        .home(&home)
        .agent_path(AGENT)
        .disk_full_wait(Duration::from_secs(1))
        .open()
        .await
        .unwrap();
    let (_gate, gate) = gate_dir();
    let sandbox = rt.create(writer("stuck", &gate)).await.unwrap();
    truncate_wal(&home).await;
    let filler = fs.path().join("filler");
    fs.fill(&filler);
    std::fs::write(gate.join("go"), "").unwrap();
    let end = sandbox.wait_until_stopped().await.unwrap();
    assert_eq!(end.status, SandboxStatus::Crashed, "{end:?}");
    // The store could not take the end: the row still says Running (else
    // this test would not show the runtime recording it later).
    assert_eq!(
        rt.get("stuck").await.unwrap().status_snapshot(),
        SandboxStatus::Running
    );
    std::fs::remove_file(&filler).unwrap();
    // Recorded by the runtime on its own, now that writes succeed again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = rt.get("stuck").await.unwrap().status_snapshot();
        if status == SandboxStatus::Crashed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the end was never recorded: still {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ps = Command::new(BIN)
        .args(["ps", "-a", "--json"])
        .env("SANDVISOR_HOME", &home)
        .output()
        .unwrap();
    assert!(ps.status.success(), "{ps:?}");
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&ps.stdout).unwrap();
    let row = rows.iter().find(|r| r["name"] == "stuck").unwrap();
    assert_eq!(row["status"], "Crashed", "{row}");
    // Whatever reached exec.log is whole records of lines in order.
    let lines = stdout_lines(&rt, &home, "stuck").await;
    assert!(lines.len() < LINES as usize, "everything was written");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line, &i.to_string());
    }
    // The runtime goes on: a new sandbox runs, the old one is removed.
    let mut config = SandboxConfig::shell("after", "echo fine");
    config.mounts.clear();
    let after = rt.create(config).await.unwrap();
    let end = after.wait_until_stopped().await.unwrap();
    assert_eq!(end.exit_code, Some(0), "{end:?}");
    rt.remove("stuck").await.unwrap();
}

/// D13: `run -d` on a home whose disk is full says why the daemon could
/// not start (it said "cannot reach … sandvisord.sock: No such file").
#[test]
fn d13_run_d_says_why_the_daemon_could_not_start() {
    let fs = Tmpfs::mount(4 << 20);
    let home = fs.path().join("home");
    fs.fill(&fs.path().join("filler"));
    let out = Command::new(BIN)
        .args(["run", "-d", "--name", "x", "true"])
        .env("SANDVISOR_HOME", &home)
        .env_remove("RUST_LOG")
        .env_remove("SANDVISOR_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("daemon could not start") && stderr.contains("full"),
        "{stderr}"
    );
    // Said to have failed, no daemon is left holding the home.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_of_home(&home).is_empty() {
        assert!(
            Instant::now() < deadline,
            "a daemon outlived its reported failure: {:?}",
            processes_of_home(&home)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Live (not zombie) processes whose `SANDVISOR_HOME` is `home`.
fn processes_of_home(home: &std::path::Path) -> Vec<u32> {
    let wanted = format!("SANDVISOR_HOME={}", home.display());
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rfind(')')
                .is_some_and(|end| stat[end + 2..].starts_with('Z'));
            !zombie
                && environ
                    .split(|&b| b == 0)
                    .any(|var| var == wanted.as_bytes())
        })
        .collect()
}
