//! The command line's grammar.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use sandvisor::config::{Limit, Mount, MAX_MEMORY, MAX_PIDS, MIN_MEMORY};

/// Supervise many sandboxes at once: run commands in fresh Linux namespaces,
/// capture their output, stop them cleanly.
#[derive(Debug, Parser)]
#[command(
    name = "sandvisor",
    version,
    after_help = "Examples:\n  sandvisor run --name web -- python3 -m http.server\n  sandvisor run -d --name job -- sh -c 'while true; do date; sleep 1; done'\n  sandvisor logs -f job\n  sandvisor stop -t 5 job && sandvisor rm job"
)]
pub(crate) struct Cli {
    /// The sandvisor home (state, logs, sockets).
    #[arg(long, global = true, env = "SANDVISOR_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create and start a sandbox running CMD; stream its output until it ends
    /// (Ctrl-C stops it, a second Ctrl-C kills it), or hand it to the daemon
    /// with -d. Exits with the command's exit code.
    #[command(
        after_help = "Examples:\n  sandvisor run -- echo hello\n  sandvisor run --name build -e CI=1 -w /tmp -- make -C /src\n  sandvisor run -it -- sh\n  sandvisor run -d --name worker --memory 256M --stop-timeout 30s -- ./worker"
    )]
    Run(Box<RunArgs>),
    /// Run a command in a running sandbox; exits with its exit code.
    #[command(
        after_help = "Examples:\n  sandvisor exec worker -- ps aux\n  sandvisor exec -it worker -- sh\n  echo data | sandvisor exec -i worker -- wc -c"
    )]
    Exec(ExecArgs),
    /// List sandboxes (running ones; -a for all).
    #[command(after_help = "Examples:\n  sandvisor ps\n  sandvisor ps -a --json")]
    Ps(PsArgs),
    /// Print a sandbox's logs; -f follows them.
    #[command(
        after_help = "Examples:\n  sandvisor logs worker\n  sandvisor logs -f --since 5m worker\n  sandvisor logs -n 20 --source stderr --timestamps worker\n  sandvisor logs --json worker | tail -1   # the last entry's cursor\n  sandvisor logs -f --cursor CURSOR worker   # resume after it"
    )]
    Logs(LogsArgs),
    /// Stop sandboxes: the stop signal, then SIGKILL after the timeout.
    #[command(after_help = "Examples:\n  sandvisor stop worker\n  sandvisor stop -t 1 worker web")]
    Stop(StopArgs),
    /// Kill sandboxes at once (SIGKILL to every process).
    #[command(after_help = "Example:\n  sandvisor kill worker")]
    Kill(NamesArgs),
    /// Remove stopped sandboxes (-f: kill running ones first).
    #[command(after_help = "Examples:\n  sandvisor rm worker\n  sandvisor rm -f worker web")]
    Rm(RmArgs),
    /// Show sandboxes as JSON: config, status, runs, paths.
    #[command(after_help = "Example:\n  sandvisor inspect worker | jq '.[0].runs'")]
    Inspect(InspectArgs),
    /// Freeze every process of sandboxes.
    #[command(after_help = "Example:\n  sandvisor pause worker")]
    Pause(NamesArgs),
    /// Thaw paused sandboxes.
    #[command(after_help = "Example:\n  sandvisor resume worker")]
    Resume(NamesArgs),
    /// Start stopped sandboxes again, in the daemon.
    #[command(after_help = "Example:\n  sandvisor start worker")]
    Start(NamesArgs),
    /// Change the resource limits of running sandboxes, live and for their
    /// later runs.
    #[command(
        after_help = "Examples:\n  sandvisor update --memory 512M worker\n  sandvisor update --cpus 2 --pids-limit 200 worker web"
    )]
    Update(UpdateArgs),
    /// Copy files between a sandbox (running or not) and the host, as
    /// docker cp does: one side is NAME:PATH; `-` is a tar stream on
    /// stdin (SRC) or stdout (DST).
    #[command(
        after_help = "Examples:\n  sandvisor cp ./input worker:/data/\n  sandvisor cp worker:/data/out ./results\n  sandvisor cp worker:/data/. ./results   # the directory's contents\n  tar -c -f - dir | sandvisor cp - worker:/data\n  sandvisor cp worker:/etc/hosts - | tar -t"
    )]
    Cp(CpArgs),
    /// CPU and memory of running sandboxes (-w: every second).
    #[command(after_help = "Examples:\n  sandvisor metrics\n  sandvisor metrics -w worker")]
    Metrics(MetricsArgs),
    /// Run the daemon in the foreground: hosts sandboxes started with
    /// `run -d`; SIGTERM stops them all gracefully, then exits.
    #[command(
        after_help = "Examples:\n  sandvisor serve\n  systemd: ExecStart=/usr/local/bin/sandvisor serve  (KillMode=mixed, TimeoutStopSec=30)"
    )]
    Serve(ServeArgs),
    /// Manage images: pull from registries, load archives, list, remove.
    #[command(
        after_help = "Examples:\n  sandvisor image pull 127.0.0.1:5000/tools:v1\n  sandvisor image load -i app.tar\n  docker save app | sandvisor image load\n  sandvisor image ls\n  sandvisor image rm tools:v1\n  sandvisor image prune -a"
    )]
    Image(ImageArgs),
    /// Snapshots of stopped sandboxes: their writable layer, config and
    /// image, as one portable archive.
    #[command(
        after_help = "Examples:\n  sandvisor snapshot create worker worker-1\n  sandvisor snapshot export worker-1 worker-1.tar.zst\n  sandvisor snapshot import worker-1.tar.zst --name restored\n  sandvisor run --from-snapshot restored --name worker2\n  sandvisor snapshot ls"
    )]
    Snapshot(SnapshotArgs),
}

#[derive(Debug, Args)]
pub(crate) struct SnapshotArgs {
    #[command(subcommand)]
    pub command: SnapshotCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum SnapshotCommand {
    /// Snapshot a stopped sandbox into the home.
    Create {
        /// The sandbox (stopped, crashed or never started).
        sandbox: String,
        /// The snapshot's name.
        snapshot: String,
    },
    /// List stored snapshots.
    Ls {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove stored snapshots.
    Rm {
        /// Their names.
        #[arg(required = true)]
        snapshots: Vec<String>,
    },
    /// Write a stored snapshot to a file.
    Export {
        /// The snapshot.
        snapshot: String,
        /// The file to write (replaced if it exists).
        file: PathBuf,
    },
    /// Check a snapshot archive whole and store it.
    Import {
        /// The archive.
        file: PathBuf,
        /// Store it under this name (default: the name it was taken as).
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Debug, Args)]
pub(crate) struct ImageArgs {
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ImageCommand {
    /// Pull an image from its registry (plain HTTP for registries on
    /// loopback, or with --insecure); credentials from ~/.docker/config.json.
    Pull {
        /// The image: NAME[:TAG] or NAME@DIGEST (docker's rules: `busybox`
        /// is docker.io/library/busybox:latest).
        #[arg(value_name = "REF")]
        reference: String,
        /// Reach the registry over plain HTTP.
        #[arg(long)]
        insecure: bool,
        /// Print only the image id; no progress.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Load images from a `docker save` archive or an OCI image layout tar
    /// (gzip or zstd compressed too), from a file or stdin.
    Load {
        /// Read this file instead of stdin.
        #[arg(short, long, value_name = "FILE")]
        input: Option<PathBuf>,
        /// Print only the image ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// List images.
    Ls {
        /// As JSON.
        #[arg(long)]
        json: bool,
        /// Only the ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show images as JSON.
    Inspect {
        /// Names or ids.
        #[arg(required = true, value_name = "REF")]
        references: Vec<String>,
    },
    /// Remove names (an image goes with its last name) or, by id, images;
    /// refused for an image a sandbox was created from.
    Rm {
        /// Names or ids.
        #[arg(required = true, value_name = "REF")]
        references: Vec<String>,
    },
    /// Remove images without a name that no sandbox uses, and layers no
    /// image has.
    Prune {
        /// Every image no sandbox uses, named or not.
        #[arg(short, long)]
        all: bool,
    },
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The sandbox's name (default: a generated one).
    #[arg(long)]
    pub name: Option<String>,
    /// Run in the background, in the daemon; print the name.
    #[arg(short, long)]
    pub detach: bool,
    #[command(flatten)]
    pub session: SessionArgs,
    /// Share the host's network: the same as `--network host`.
    #[arg(long)]
    pub net: bool,
    /// The sandbox's network: `none` (only `lo`, the default), `host` (the
    /// host's own network: every host interface and service; unsafe) or
    /// `private` (its own network through a user-mode stack; the host,
    /// loopback, link-local and private ranges denied unless --egress
    /// allows them). -p, --egress and --dns imply `private`.
    #[arg(long, value_name = "MODE", value_parser = [NETWORK_NONE, NETWORK_HOST, NETWORK_PRIVATE])]
    pub network: Option<String>,
    /// Publish a port of a private network on the host:
    /// [IP:]HOSTPORT:PORT[/tcp|/udp], IP 127.0.0.1 unless given
    /// (repeatable).
    #[arg(short, long, value_name = "SPEC")]
    pub publish: Vec<String>,
    /// An egress rule of a private network, tried in order before the
    /// defaults: allow|deny:CIDR[:PORTS][/tcp|/udp], PORTS N or N-M
    /// (repeatable).
    #[arg(long, value_name = "RULE")]
    pub egress: Vec<String>,
    /// A DNS server for a private network (IPv4; repeatable; default: the
    /// host's resolver).
    #[arg(long, value_name = "IP")]
    pub dns: Vec<String>,
    /// A directory to use as the read-only lower layer of the sandbox's `/`
    /// (never written; writes go to the sandbox's own layer).
    #[arg(long, value_name = "DIR", conflicts_with = "image")]
    pub rootfs: Option<PathBuf>,
    /// Run an image (pulled first if the home lacks it): its layers are the
    /// sandbox's `/`, its Entrypoint/Cmd the command when no CMD is given,
    /// its Env, WorkingDir and User the defaults.
    #[arg(long, value_name = "REF")]
    pub image: Option<String>,
    /// Create the sandbox from a snapshot (a stored name, or an archive's
    /// path): its files, image and command (unless CMD is given).
    #[arg(long, value_name = "SNAPSHOT", conflicts_with = "rootfs")]
    pub from_snapshot: Option<String>,
    /// No isolation at all: host root with every capability, the host's `/`
    /// (or the --rootfs) and the host's namespaces. Only for trusted
    /// commands.
    #[arg(long)]
    pub privileged: bool,
    /// `host`: keep the host's user ids (no user namespace; root inside is
    /// host root, confined by capabilities and seccomp).
    #[arg(long, value_name = "MODE", value_parser = ["host"])]
    pub userns: Option<String>,
    /// Nothing but the tmpfs mounts (/tmp, /run, /var/tmp, /dev/shm) and
    /// read-write volumes can be written.
    #[arg(long)]
    pub read_only: bool,
    /// Run the sandbox in a microVM with its own kernel (qemu microvm; KVM
    /// where it runs guests, else TCG). Its memory is --memory (default
    /// 512M).
    #[arg(long)]
    pub vm: bool,
    /// Virtual CPUs of the microVM (with --vm; default 1).
    #[arg(long, value_name = "N", requires = "vm")]
    pub vcpus: Option<u32>,
    /// Bind a host path inside: SRC:DST[:ro|rw], SRC an absolute host path
    /// (repeatable).
    #[arg(short, long = "volume", value_name = "SRC:DST[:ro]", value_parser = parse_volume)]
    pub volume: Vec<Mount>,
    /// Add capabilities to the default set: names (NET_ADMIN or
    /// CAP_NET_ADMIN) or ALL (repeatable, or comma-separated).
    #[arg(long, value_name = "CAP", value_delimiter = ',')]
    pub cap_add: Vec<String>,
    /// Drop capabilities from the default set (names or ALL; repeatable, or
    /// comma-separated).
    #[arg(long, value_name = "CAP", value_delimiter = ',')]
    pub cap_drop: Vec<String>,
    /// Security options: seccomp=unconfined, seccomp=PATH (a profile in
    /// Docker's JSON format); no-new-privileges is always on.
    #[arg(long, value_name = "OPT")]
    pub security_opt: Vec<String>,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Time between the stop signal and SIGKILL (10s, 1m, …; at most 1 year).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub stop_timeout: Option<Duration>,
    /// Restart policy: no (default), on-failure[:N] (at most N restarts in
    /// a row), always, unless-stopped; 100 ms between restarts, doubling to
    /// 1 minute, back to 100 ms after 10 s up. A stop ends it.
    #[arg(long, value_name = "POLICY")]
    pub restart: Option<String>,
    /// Stop the sandbox after this long without exec sessions and without
    /// output (termination reason IdleTimeout).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Stop the sandbox this long after it started (termination reason
    /// LifetimeExceeded).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub max_lifetime: Option<Duration>,
    /// A health check: a command run with `sh -c` inside the sandbox every
    /// --health-interval; exit 0 is healthy (`ps` shows the health).
    #[arg(long, value_name = "STRING")]
    pub health_cmd: Option<String>,
    /// Time between health checks (default 30s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "health_cmd")]
    pub health_interval: Option<Duration>,
    /// A health check running longer is killed and fails (default 30s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "health_cmd")]
    pub health_timeout: Option<Duration>,
    /// Failed health checks in a row that make the sandbox unhealthy
    /// (default 3, at least 1).
    #[arg(long, value_name = "N", requires = "health_cmd")]
    pub health_retries: Option<u32>,
    /// Failed health checks this soon after the start do not count
    /// (default 0s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "health_cmd")]
    pub health_start_period: Option<Duration>,
    /// What turning unhealthy does: none (default), restart (whatever the
    /// restart policy) or stop (termination reason Unhealthy).
    #[arg(long, value_name = "ACTION", value_parser = ["none", "restart", "stop"])]
    pub on_unhealthy: Option<String>,
    /// Remove the sandbox once it has stopped (foreground only).
    #[arg(long)]
    pub rm: bool,
    /// The command and its arguments (optional with --image).
    #[arg(
        required_unless_present = "image",
        trailing_var_arg = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

/// How a command runs: `run` and `exec` share these.
#[derive(Debug, Args)]
pub(crate) struct SessionArgs {
    /// Give the command a terminal inside the sandbox.
    #[arg(short, long)]
    pub tty: bool,
    /// Keep stdin open and send it to the command.
    #[arg(short, long)]
    pub interactive: bool,
    /// Set an environment variable (KEY=VALUE, or KEY to pass this one's).
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory inside the sandbox (absolute).
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// The user and group to run as: uid or uid:gid, numbers only (the gid
    /// is the uid when left out). Default: root inside the sandbox.
    #[arg(short, long, value_name = "UID[:GID]")]
    pub user: Option<String>,
}

/// `--network`'s words.
pub(crate) const NETWORK_NONE: &str = "none";
/// See [`NETWORK_NONE`].
pub(crate) const NETWORK_HOST: &str = "host";
/// See [`NETWORK_NONE`].
pub(crate) const NETWORK_PRIVATE: &str = "private";

impl RunArgs {
    /// The `--network` asked for: as given, `host` for `--net`, else
    /// `private` when a private network's flags are given, else `none`.
    pub(crate) fn network_mode(&self) -> &str {
        match (&self.network, self.net) {
            (Some(mode), _) => mode,
            (None, true) => NETWORK_HOST,
            (None, false) if self.private_flag().is_some() => NETWORK_PRIVATE,
            (None, false) => NETWORK_NONE,
        }
    }

    /// The first flag given that only a private network takes.
    fn private_flag(&self) -> Option<&'static str> {
        [
            ("-p/--publish", self.publish.is_empty()),
            ("--egress", self.egress.is_empty()),
            ("--dns", self.dns.is_empty()),
        ]
        .into_iter()
        .find(|(_, empty)| !empty)
        .map(|(flag, _)| flag)
    }

    /// What makes the network flags contradict each other, if anything:
    /// `--net` with another `--network`, or a private network's flags with
    /// `none` or `host`.
    pub(crate) fn network_conflict(&self) -> Option<String> {
        let mode = self.network_mode();
        if self.net && mode != NETWORK_HOST {
            return Some(format!(
                "--net is --network host; it cannot be combined with --network {mode}"
            ));
        }
        let flag = self.private_flag()?;
        (mode != NETWORK_PRIVATE).then(|| {
            let given = if self.net { "--net" } else { "--network" };
            let given = if self.net {
                given.to_string()
            } else {
                format!("{given} {mode}")
            };
            format!("{flag} needs a private network (--network private); {given} has none")
        })
    }
}

#[derive(Debug, Args)]
pub(crate) struct ExecArgs {
    #[command(flatten)]
    pub session: SessionArgs,
    /// Kill the command's whole process group after this long (1s, 5m);
    /// then exit 124, as coreutils `timeout` does.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// The sandbox.
    pub name: String,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct PsArgs {
    /// Show every sandbox, not only running ones.
    #[arg(short, long)]
    pub all: bool,
    /// Print JSON (one array).
    #[arg(long)]
    pub json: bool,
    /// Show the size of each sandbox's writable layer.
    #[arg(short, long)]
    pub size: bool,
}

#[derive(Debug, Args)]
pub(crate) struct LogsArgs {
    /// The sandbox.
    pub name: String,
    /// Keep printing new entries until the sandbox stops (Ctrl-C ends).
    #[arg(short, long)]
    pub follow: bool,
    /// Entries at or after T (RFC 3339, or relative: 30s, 5m, 2h, 1d).
    #[arg(long, value_name = "T", value_parser = parse_time)]
    pub since: Option<DateTime<Utc>>,
    /// Entries before T (RFC 3339, or relative: 30s, 5m, 2h, 1d).
    #[arg(long, value_name = "T", value_parser = parse_time)]
    pub until: Option<DateTime<Utc>>,
    /// Only the last N entries (an entry is one captured chunk, often one
    /// line; with -f, of what is already there).
    #[arg(short = 'n', long, value_name = "N")]
    pub tail: Option<usize>,
    /// Sources: stdout, stderr, output, system, or all (comma-separated).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub source: Vec<String>,
    /// Prefix each entry with its time.
    #[arg(short, long)]
    pub timestamps: bool,
    /// Print entries as JSON lines, each with its resume cursor.
    #[arg(long)]
    pub json: bool,
    /// Start right after this cursor (from a `--json` entry or a hint).
    #[arg(long, value_name = "C", conflicts_with_all = ["since", "tail"])]
    pub cursor: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct StopArgs {
    /// Seconds (or a duration: 500ms, 1m; at most 1 year) before SIGKILL;
    /// default the sandbox's stop timeout.
    #[arg(short = 't', long = "time", value_name = "SECS", value_parser = parse_seconds)]
    pub timeout: Option<Duration>,
    /// The sandboxes.
    #[arg(required = true)]
    pub names: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct NamesArgs {
    /// The sandboxes.
    #[arg(required = true)]
    pub names: Vec<String>,
}

/// Resource limits, for `run` (defaults: memory 1g, 1024 processes, no CPU
/// limit) and `update`.
#[derive(Debug, Args)]
pub(crate) struct LimitArgs {
    /// CPU limit in CPUs (1.5: one and a half CPUs' time).
    #[arg(long, value_name = "N")]
    pub cpus: Option<f64>,
    /// Memory limit: bytes, or with a suffix k, m, g, t (binary units), from
    /// 1m to 1024t; or `unlimited` (`run`'s default: 1g).
    #[arg(short, long, value_name = "SIZE", value_parser = parse_memory)]
    pub memory: Option<Limit>,
    /// Limit on the number of processes: 1 to 4194304 (the kernel's most),
    /// or `unlimited` (`run`'s default: 1024).
    #[arg(long, value_name = "N", value_parser = parse_pids)]
    pub pids_limit: Option<Limit>,
}

#[derive(Debug, Args)]
pub(crate) struct CpArgs {
    /// What to copy: a host path, NAME:PATH, or `-` (a tar stream on stdin).
    pub src: String,
    /// Where: NAME:PATH, a host path, or `-` (a tar stream on stdout).
    pub dst: String,
}

#[derive(Debug, Args)]
pub(crate) struct UpdateArgs {
    #[command(flatten)]
    pub limits: LimitArgs,
    /// The sandboxes.
    #[arg(required = true)]
    pub names: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// Print JSON (what inspect always prints; accepted for scripts that
    /// say so).
    #[arg(long)]
    pub json: bool,
    /// The sandboxes.
    #[arg(required = true)]
    pub names: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct RmArgs {
    /// Kill running sandboxes first.
    #[arg(short, long)]
    pub force: bool,
    /// The sandboxes.
    #[arg(required = true)]
    pub names: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct MetricsArgs {
    /// One sandbox (default: every running one).
    pub name: Option<String>,
    /// Print again every second until Ctrl-C.
    #[arg(short, long)]
    pub watch: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {}

/// The longest duration any option takes; longer cannot be meant, and
/// would overflow the clock arithmetic of whoever waits that long.
const MAX_DURATION: Duration = sandvisor::config::MAX_TIMEOUT;
/// The word that lifts a limit.
const UNLIMITED: &str = "unlimited";

/// A memory limit: `unlimited`, or a size within
/// [`MIN_MEMORY`]..=[`MAX_MEMORY`].
fn parse_memory(text: &str) -> Result<Limit, String> {
    if text.eq_ignore_ascii_case(UNLIMITED) {
        return Ok(Limit::Unlimited);
    }
    let bytes = parse_size(text)?;
    if bytes < MIN_MEMORY {
        return Err(format!("{text:?} is below the minimum of 1m"));
    }
    if bytes > MAX_MEMORY {
        return Err(format!("{text:?} is above the maximum of 1024t"));
    }
    Ok(Limit::Value(bytes))
}

/// A pids limit: `unlimited`, or 1..=[`MAX_PIDS`].
fn parse_pids(text: &str) -> Result<Limit, String> {
    if text.eq_ignore_ascii_case(UNLIMITED) {
        return Ok(Limit::Unlimited);
    }
    match text.parse::<u64>() {
        Ok(pids) if (1..=MAX_PIDS).contains(&pids) => Ok(Limit::Value(pids)),
        _ => Err(format!(
            "{text:?} is neither a number from 1 to {MAX_PIDS} nor {UNLIMITED:?}"
        )),
    }
}

/// `SRC:DST`, `SRC:DST:ro` or `SRC:DST:rw`, as docker's `-v`. The paths are
/// checked by `SandboxConfig::validate`, which names the volume.
fn parse_volume(text: &str) -> Result<Mount, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let (source, target, read_only) = match parts.as_slice() {
        [source, target] => (source, target, false),
        [source, target, "ro"] => (source, target, true),
        [source, target, "rw"] => (source, target, false),
        _ => return Err(format!("{text:?} is not SRC:DST, SRC:DST:ro or SRC:DST:rw")),
    };
    if source.is_empty() || target.is_empty() {
        return Err(format!("{text:?}: SRC and DST must not be empty"));
    }
    Ok(Mount {
        source: PathBuf::from(source),
        target: target.to_string(),
        read_only,
    })
}

/// `256M`, `1g`, `4096`: bytes with an optional binary suffix.
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (try 256M)"))?;
    let unit: u64 = match suffix.to_ascii_lowercase().trim_end_matches(['b', 'i']) {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return Err(format!("{text:?}: unknown size unit (use k, m, g or t)")),
    };
    number
        .checked_mul(unit)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// `10s`, `1m30s`, `500ms`: at most [`MAX_DURATION`].
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration =
        humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e} (try 10s or 1m)"))?;
    within_max(text, duration)
}

/// A plain number of seconds, as docker takes it, or a duration; at most
/// [`MAX_DURATION`].
fn parse_seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<u64>() {
        Ok(seconds) => within_max(text, Duration::from_secs(seconds)),
        Err(_) => parse_duration(text),
    }
}

fn within_max(text: &str, duration: Duration) -> Result<Duration, String> {
    if duration > MAX_DURATION {
        return Err(format!("{text:?} is longer than the maximum of 1 year"));
    }
    Ok(duration)
}

/// RFC 3339, or a duration before now (`30s`, `5m`, `2h`, `1d`).
pub(crate) fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    let ago = humantime::parse_duration(text).map_err(|_| {
        format!("{text:?} is neither an RFC 3339 time nor a relative one like 30s, 5m, 2h, 1d")
    })?;
    let ago = chrono::Duration::from_std(ago).map_err(|_| format!("{text:?} is too far back"))?;
    Utc::now()
        .checked_sub_signed(ago)
        .ok_or_else(|| format!("{text:?} is too far back"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_grammar_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("2KiB"), Ok(2048));
        assert!(parse_size("12x").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999999T").is_err());
    }

    #[test]
    fn times_are_absolute_or_relative() {
        let t = parse_time("2026-05-01T10:00:00Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-05-01T10:00:00+00:00");
        let five_minutes_ago = parse_time("5m").unwrap();
        let delta = Utc::now() - five_minutes_ago;
        assert!(delta >= chrono::Duration::seconds(299) && delta <= chrono::Duration::seconds(310));
        assert!(parse_time("1d").is_ok());
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn stop_timeouts_take_seconds_or_durations() {
        assert_eq!(parse_seconds("1"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_seconds("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_seconds("soon").is_err());
    }

    #[test]
    fn durations_and_sizes_are_range_checked() {
        assert_eq!(parse_duration("365d"), Ok(MAX_DURATION));
        assert_eq!(parse_seconds("31536000"), Ok(MAX_DURATION));
        for text in ["366d", "18446744073709551615s", "18446744073709552s"] {
            assert!(parse_duration(text).is_err(), "{text}");
            assert!(parse_seconds(text).is_err(), "{text}");
        }
        assert!(parse_seconds("18446744073709552").is_err());
        assert_eq!(parse_memory("1m"), Ok(Limit::Value(MIN_MEMORY)));
        assert_eq!(parse_memory("1024t"), Ok(Limit::Value(MAX_MEMORY)));
        assert_eq!(parse_memory("unlimited"), Ok(Limit::Unlimited));
        assert!(parse_memory("1023k").is_err());
        assert!(parse_memory("1025t").is_err());
        assert_eq!(parse_pids("20"), Ok(Limit::Value(20)));
        assert_eq!(parse_pids("unlimited"), Ok(Limit::Unlimited));
        assert!(parse_pids("0").is_err());
        assert!(parse_pids("4194305").is_err());
    }

    #[test]
    fn volumes_are_src_dst_and_a_mode() {
        let volume = parse_volume("/data:/mnt/data:ro").unwrap();
        assert_eq!(volume.source, PathBuf::from("/data"));
        assert_eq!(volume.target, "/mnt/data");
        assert!(volume.read_only);
        assert!(!parse_volume("/data:/mnt").unwrap().read_only);
        assert!(!parse_volume("/data:/mnt:rw").unwrap().read_only);
        for bad in ["/data", "/data:/mnt:rx", ":/mnt", "/a:/b:ro:x"] {
            assert!(parse_volume(bad).is_err(), "{bad}");
        }
    }
}
