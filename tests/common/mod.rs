//! Shared helpers: a temp home with one or more sandbox log directories, and a
//! real RelayTap writing into them.
#![allow(dead_code)]

pub mod backends;

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use ractor::{Actor, ActorRef};
use sandvisor::engine::log::tap::{Chunk, RelayTap, RelayTapMsg, TapArgs, TapConfig, TapStats};
use sandvisor::{LogEntry, LogSource, LogStream, Logs};
use tempfile::TempDir;

pub struct Home {
    pub dir: TempDir,
    pub logs: Logs,
}

impl Home {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let logs = Logs::at(dir.path());
        Self { dir, logs }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Creates the sandbox's log directory and returns it.
    pub fn sandbox(&self, name: &str) -> PathBuf {
        let dir = self.logs.log_dir_for(name).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

pub struct Tap {
    pub actor: ActorRef<RelayTapMsg>,
    pub dir: PathBuf,
}

impl Tap {
    pub async fn spawn(dir: &Path, max_bytes: u64, keep: usize) -> Self {
        Self::spawn_with(TapConfig {
            dir: dir.to_path_buf(),
            max_bytes,
            keep,
            ..TapConfig::new(dir)
        })
        .await
    }

    pub async fn spawn_with(config: TapConfig) -> Self {
        let dir = config.dir.clone();
        let args = TapArgs {
            config,
            generation: 0,
            events: None,
        };
        let (actor, _) = Actor::spawn(None, RelayTap, args).await.unwrap();
        Self { actor, dir }
    }

    pub fn chunk(&self, session: u64, source: LogSource, data: impl Into<bytes::Bytes>) {
        self.actor
            .cast(RelayTapMsg::Chunk(Chunk::now(session, source, data)))
            .unwrap();
    }

    pub fn system(&self, text: &str) {
        self.actor.cast(RelayTapMsg::system(text)).unwrap();
    }

    /// Numbered stdout lines `line-{i}` for i in range.
    pub fn numbered(&self, range: std::ops::Range<u64>) {
        for i in range {
            self.chunk(1, LogSource::Stdout, format!("line-{i:08}\n"));
        }
    }

    pub async fn flush(&self) -> TapStats {
        ractor::call_t!(self.actor, RelayTapMsg::Flush, 30_000).unwrap()
    }

    pub async fn stop(self) {
        self.actor.stop_and_wait(None, None).await.unwrap();
    }
}

pub fn text(entry: &LogEntry) -> String {
    String::from_utf8_lossy(&entry.data).into_owned()
}

pub fn number(entry: &LogEntry) -> u64 {
    let t = text(entry);
    t.trim()
        .strip_prefix("line-")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a numbered line: {t:?}"))
}

/// Next item within `secs`, panicking on timeout.
pub async fn next_within(stream: &mut LogStream, secs: u64) -> Option<sandvisor::Result<LogEntry>> {
    tokio::time::timeout(Duration::from_secs(secs), stream.next())
        .await
        .expect("stream produced nothing in time")
}

/// A runtime over a fresh temp home, with the agent cargo built.
pub async fn runtime() -> (TempDir, sandvisor::Sandvisor) {
    runtime_at(tempfile::tempdir().unwrap()).await
}

/// A runtime over the temp home `home`, with the agent cargo built.
pub async fn runtime_at(home: TempDir) -> (TempDir, sandvisor::Sandvisor) {
    let rt = sandvisor::Sandvisor::builder()
        .home(home.path())
        .agent_path(env!("CARGO_BIN_EXE_sandvisor-agent"))
        .open()
        .await
        .unwrap();
    (home, rt)
}

/// A field of `/proc/PID/status`, if the process exists.
pub fn status_field(pid: u32, field: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_string()))
}

/// The parent pid of a live process.
pub fn parent_of(pid: u32) -> u32 {
    status_field(pid, "PPid:").unwrap().parse().unwrap()
}

/// Gone, or a zombie nobody has reaped yet: it runs no more.
pub fn ended(pid: u32) -> bool {
    status_field(pid, "State:").is_none_or(|state| state.starts_with('Z'))
}

/// SIGKILL to `pid`.
pub fn sigkill(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

/// Polls `done` (a process state, a file) until it holds; fails after 10 s.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what} within 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a sandbox wrote to its stdout, from its logs.
pub async fn stdout_of(sandbox: &sandvisor::Sandbox) -> String {
    let out: Vec<u8> = sandbox
        .logs(&sandvisor::LogOptions::default())
        .await
        .unwrap()
        .iter()
        .filter(|e| e.source == LogSource::Stdout)
        .flat_map(|e| e.data.to_vec())
        .collect();
    String::from_utf8(out).unwrap()
}

/// Polls the store until `done` holds for the sandbox's runs; fails after
/// 60 s, saying `what`.
pub async fn runs_until(
    rt: &sandvisor::Sandvisor,
    name: &str,
    what: &str,
    done: impl Fn(&[sandvisor::RunRow]) -> bool,
) -> Vec<sandvisor::RunRow> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let runs = rt.runs(name).await.unwrap();
        if done(&runs) {
            return runs;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}; runs: {runs:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every event published so far on `events`, without metrics samples.
pub fn drain_events(
    events: &mut (impl futures::Stream<Item = sandvisor::EventEnvelope> + Unpin),
) -> Vec<sandvisor::EventEnvelope> {
    use futures::FutureExt;
    let mut seen = Vec::new();
    while let Some(Some(envelope)) = events.next().now_or_never() {
        if !matches!(envelope.event, sandvisor::SandboxEvent::MetricsSampled(_)) {
            seen.push(envelope);
        }
    }
    seen
}

/// Runs test `name` of this test binary as a child process (an ignored test
/// that finds its home in the environment variable `var`) and waits up to
/// 60 s for the line it prints starting with `marker`; returns the child and
/// the rest of that line.
pub async fn child_test(
    name: &str,
    var: &str,
    home: &Path,
    marker: &'static str,
) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--ignored", "--nocapture"])
        .env(var, home)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let ready = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| line.strip_prefix(marker).map(str::to_string))
    });
    let rest = tokio::time::timeout(Duration::from_secs(60), ready)
        .await
        .unwrap()
        .unwrap()
        .unwrap_or_else(|| panic!("{name} never printed {marker:?}"));
    (child, rest)
}
