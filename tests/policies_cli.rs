//! The policies of issue 18 through the `sandvisor` binary: `run -d
//! --restart`, `ps` while a restart waits, `stop` from another process during
//! the backoff, `--idle-timeout`, `exec --timeout`, and bad values.

use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "common/cli.rs"]
mod cli_home;
mod common;
use cli_home::Cli;

/// A CLI home; its daemon (started by `run -d`) is killed with it.
struct Home(Cli);

impl Home {
    fn new() -> Self {
        Self(Cli::new())
    }

    fn sandbox(&self, name: &str) -> Option<Value> {
        let text = self.0.ok(&["ps", "-a", "--json"]);
        serde_json::from_str::<Value>(&text)
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
    }

    /// Polls until `done` holds; fails after 60 s, saying what `what` was.
    fn until<T>(&self, what: &str, mut done: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(found) = done() {
                return found;
            }
            assert!(Instant::now() < deadline, "{what} within 60 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn ps_shows_a_waiting_restart_and_a_stop_from_another_process_ends_it() {
    let home = Home::new();
    let cli = &home.0;
    cli.ok(&[
        "run",
        "-d",
        "--restart",
        "on-failure",
        "--name",
        "crashy",
        "--",
        "sh",
        "-c",
        "exit 2",
    ]);
    // The delays double from 100 ms: `ps` soon catches one waiting.
    let line = home.until("ps showing Restarting", || {
        let table = cli.ok(&["ps", "-a"]);
        table
            .lines()
            .find(|line| line.starts_with("crashy ") && line.contains("Restarting (2) in "))
            .map(str::to_string)
    });
    assert!(line.contains("Restarting (2) in "), "{line}");
    // A separate snapshot: the restart may have begun since the table was
    // read, so wait for one that shows a pending restart too.
    let listed = home.until("ps --json showing a pending restart", || {
        home.sandbox("crashy")
            .filter(|listed| listed["restart"]["attempt"].as_u64().is_some())
    });
    assert_eq!(listed["status"], "Starting");
    assert!(listed["restart"]["attempt"].as_u64().unwrap() >= 1);

    cli.ok(&["stop", "crashy"]);
    let listed = home.sandbox("crashy").unwrap();
    assert_eq!(listed["status"], "Stopped");
    assert_eq!(listed["restart"], Value::Null);
    assert_eq!(listed["exit_code"], 2);
    let inspected: Value = serde_json::from_str(&cli.ok(&["inspect", "crashy"])).unwrap();
    let restart = &inspected[0]["restart"];
    assert_eq!(restart["policy"], "on-failure");
    assert_eq!(restart["ended"], "StopRequested");
    assert_eq!(restart["backoff"]["initial"], "100ms");
    let runs = inspected[0]["runs"].as_array().unwrap();
    assert!(!runs.is_empty());
    assert_eq!(runs.last().unwrap()["restart_end"], "StopRequested");
    // Stopped for good, so removable without -f.
    cli.ok(&["rm", "crashy"]);
    assert!(home.sandbox("crashy").is_none());
}

#[test]
fn idle_timeout_and_exec_timeout_through_the_cli() {
    let home = Home::new();
    let cli = &home.0;
    cli.ok(&[
        "run",
        "-d",
        "--idle-timeout",
        "1s",
        "--name",
        "idler",
        "--",
        "sleep",
        "1000",
    ]);
    cli.ok(&["run", "-d", "--name", "box", "--", "sleep", "1000"]);
    let out = cli.run(&[
        "exec",
        "--timeout",
        "1s",
        "box",
        "--",
        "sh",
        "-c",
        "sleep 100 & sleep 100",
    ]);
    assert_eq!(out.status.code(), Some(124), "{out:?}");
    let idled = home.until("idler stopped", || {
        home.sandbox("idler").filter(|s| s["status"] == "Stopped")
    });
    assert_eq!(idled["termination_reason"], "IdleTimeout");
    cli.ok(&["rm", "-f", "box"]);
}

#[test]
fn bad_policy_values_are_refused_before_anything_is_created() {
    let home = Home::new();
    let cli = &home.0;
    for (args, field) in [
        (&["--restart", "sometimes"][..], "restart"),
        (&["--restart", "on-failure:0"][..], "restart"),
        (&["--restart", "always:3"][..], "restart"),
        (&["--idle-timeout", "0s"][..], "idle_timeout"),
        (&["--max-lifetime", "0s"][..], "max_lifetime"),
    ] {
        let mut all = vec!["run", "-d", "--name", "nope"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--", "true"]);
        let out = cli.run(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(field), "{args:?}: {stderr}");
        assert!(home.sandbox("nope").is_none(), "{args:?}");
    }
    // Not a duration at all: clap's usage error.
    let out = cli.run(&["run", "--idle-timeout", "soon", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
}
