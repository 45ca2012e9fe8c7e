//! The CLI and its daemon against a temp home, for the fault tests
//! (`tests/faults.rs`): real processes, real limits, real sockets.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_sandvisor");

/// A temp home and the daemon started for it, if any.
pub struct Cli {
    pub home: TempDir,
    daemon: Option<Daemon>,
}

/// A `sandvisor serve` this test started.
pub struct Daemon {
    pub child: Child,
    /// Kept open: the daemon's stdout stays a live pipe.
    _stdout: BufReader<ChildStdout>,
}

impl Cli {
    pub fn new() -> Self {
        Self {
            home: tempfile::tempdir().unwrap(),
            daemon: None,
        }
    }

    /// A home in a new directory under `parent` (e.g. a small tmpfs).
    pub fn in_dir(parent: &Path) -> Self {
        Self {
            home: tempfile::tempdir_in(parent).unwrap(),
            daemon: None,
        }
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    pub fn socket(&self) -> PathBuf {
        self.home().join("sandvisord.sock")
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .env("SANDVISOR_HOME", self.home())
            .env_remove("RUST_LOG")
            .env_remove("SANDVISOR_LOG")
            .stdin(Stdio::null());
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Runs and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "sandvisor {args:?} failed with {:?}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs, killing it after `limit`; returns its output and how long it
    /// took (`limit` or more: it was killed).
    pub fn run_within(&self, args: &[&str], limit: Duration) -> (Output, Duration) {
        let child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let started = Instant::now();
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(child.wait_with_output());
        });
        let output = match finished.recv_timeout(limit) {
            Ok(output) => output.unwrap(),
            Err(_) => {
                signal(pid, nix::sys::signal::Signal::SIGKILL);
                finished.recv().unwrap().unwrap()
            }
        };
        (output, started.elapsed())
    }

    pub fn ps(&self) -> Vec<Value> {
        let text = self.ok(&["ps", "-a", "--json"]);
        serde_json::from_str::<Value>(&text)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    pub fn status(&self, name: &str) -> Value {
        self.ps()
            .into_iter()
            .find(|s| s["name"] == name)
            .map(|s| s["status"].clone())
            .unwrap_or(Value::Null)
    }

    /// Starts `sandvisor serve` with its `RLIMIT_NOFILE` set to `nofile`
    /// (soft, hard) first, and waits until it listens.
    pub fn serve(&mut self, nofile: Option<(u64, u64)>) -> u32 {
        let log = std::fs::File::create(self.home().join("serve.log")).unwrap();
        let mut command = self.command(&["serve"]);
        command.stdout(Stdio::piped()).stderr(log);
        if let Some((soft, hard)) = nofile {
            // SAFETY: setrlimit is async-signal-safe.
            unsafe {
                command.pre_exec(move || set_nofile(soft, hard));
            }
        }
        let mut child = command.spawn().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert!(line.starts_with("ready"), "serve said {line:?}");
        let pid = child.id();
        self.daemon = Some(Daemon {
            child,
            _stdout: stdout,
        });
        pid
    }

    /// SIGKILLs the daemon this test started and reaps it.
    pub fn kill_daemon(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            let _ = daemon.child.kill();
            let _ = daemon.child.wait();
        }
    }

    /// SIGKILLs the agents of sandboxes no daemon hosts (their host was
    /// killed: they wait for one that re-adopts them).
    fn kill_orphans(&self) {
        let out = self.run(&["ps", "-a", "--json"]);
        let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        for row in rows {
            if row["status"] != "Stopped" && row["status"] != "Crashed" {
                if let Some(pid) = row["pid"].as_u64() {
                    signal(pid as u32, nix::sys::signal::Signal::SIGKILL);
                }
            }
        }
    }

    /// Starts `count` sandboxes `{prefix}{i}` running `command` with `run -d`,
    /// a few at a time; returns each call's output, in order.
    pub fn run_many(&self, prefix: &str, count: usize, command: &[&str]) -> Vec<Output> {
        const THREADS: usize = 8;
        let outputs = std::sync::Mutex::new(vec![None; count]);
        std::thread::scope(|scope| {
            for t in 0..THREADS {
                let outputs = &outputs;
                scope.spawn(move || {
                    for i in (t..count).step_by(THREADS) {
                        let name = format!("{prefix}{i}");
                        let mut args = vec!["run", "-d", "--name", &name, "--"];
                        args.extend_from_slice(command);
                        let out = self.run(&args);
                        outputs.lock().unwrap()[i] = Some(out);
                    }
                });
            }
        });
        outputs
            .into_inner()
            .unwrap()
            .into_iter()
            .map(Option::unwrap)
            .collect()
    }
}

impl Drop for Cli {
    /// Stops the daemon of this home: gracefully (its sandboxes stop with
    /// it), SIGKILL if that takes too long. Sandboxes a killed daemon left
    /// waiting for re-adoption are killed.
    fn drop(&mut self) {
        let pid = match &self.daemon {
            Some(daemon) => Some(daemon.child.id()),
            None => daemon_pid(&self.socket()),
        };
        let Some(pid) = pid else {
            self.kill_orphans();
            return;
        };
        signal(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while alive(pid) && Instant::now() < deadline {
            if let Some(daemon) = &mut self.daemon {
                let _ = daemon.child.try_wait();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        signal(pid, nix::sys::signal::Signal::SIGKILL);
        if let Some(mut daemon) = self.daemon.take() {
            let _ = daemon.child.wait();
        }
    }
}

/// The pid of the daemon listening on `socket`, if one answers.
pub fn daemon_pid(socket: &Path) -> Option<u32> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    let client = sandvisor::control::ControlClient::new(socket);
    runtime.block_on(client.host()).ok().map(|host| host.pid)
}

pub fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
}

/// Running (a zombie is not).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
            Some(state != 'Z')
        })
        .unwrap_or(false)
}

/// `Max open files` of a process: (soft, hard).
pub fn nofile_of(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let mut fields = line["Max open files".len()..].split_whitespace();
    (
        fields.next().unwrap().to_string(),
        fields.next().unwrap().to_string(),
    )
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit (the test
/// itself holds many connections).
pub fn raise_own_nofile() -> u64 {
    let (_, hard) = nofile();
    set_nofile(hard, hard).unwrap();
    hard
}

/// This process's `RLIMIT_NOFILE`: (soft, hard).
pub fn nofile() -> (u64, u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the rlimit it is given.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    (limit.rlim_cur, limit.rlim_max)
}

/// Sets this process's `RLIMIT_NOFILE` (async-signal-safe: usable in
/// `pre_exec`).
pub fn set_nofile(soft: u64, hard: u64) -> std::io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the rlimit it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `check` every 50 ms until it holds or `limit` passes; whether it held.
pub fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
