#![allow(dead_code)]
//! The CLI against a temp home of its own, as a user runs it. A test crate
//! that includes it also has `mod common;`.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use tempfile::TempDir;

/// The built `sandvisor` binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_sandvisor");

/// The CLI with its own `SANDVISOR_HOME`.
pub struct Cli {
    pub home: TempDir,
}

impl Cli {
    pub fn new() -> Self {
        Self {
            home: tempfile::tempdir().unwrap(),
        }
    }

    pub fn home(&self) -> &Path {
        self.home.path()
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
            "sandvisor {args:?} failed with {:?}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Cli {
    /// Stops a daemon that `run -d` started for this home, and its
    /// sandboxes: SIGTERM first (serve stops them), SIGKILL after 20 s. A
    /// daemon SIGKILLed at once would leave its sandboxes' agents waiting
    /// for a host to re-adopt them, past the end of the test.
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        let client = sandvisor::control::ControlClient::new(self.home().join("sandvisord.sock"));
        let Ok(host) = runtime.block_on(client.host()) else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(host.pid as i32);
        if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_err() {
            return;
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !crate::common::ended(host.pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if !crate::common::ended(host.pid) {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}
