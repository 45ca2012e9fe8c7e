//! `ps`, `inspect`, `metrics` and `logs`: verbs that read.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{FutureExt, StreamExt};
use sandvisor::home;
use sandvisor::isolation::caps;
use sandvisor::logs::{LogOptions, LogSource, LogStreamOptions, LogStreamStart, Logs};
use sandvisor::{
    Error, LogCursor, Result, SandboxHandle, SandboxMetrics, SandboxStatus, Sandvisor,
};
use sandvisor::{Health, Network, PendingRestart, Publish, SandboxConfig, Seccomp};
use serde_json::{json, Value};
use tokio::signal::unix::{signal, SignalKind};

use crate::args::{InspectArgs, LogsArgs, MetricsArgs, PsArgs};
use crate::open;
use crate::out::{outln, stdout_closed};
use crate::printer::Printer;
use crate::run::resolve_home;

/// How long `ps` and `metrics` wait for a hosting process to answer.
const METRICS_TIMEOUT: Duration = Duration::from_secs(2);

fn print_json(value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Internal(e.to_string()))?;
    outln!("{text}")
}

/// A sample from wherever the sandbox runs, or `None` if none can be had.
async fn sample(handle: &SandboxHandle) -> Option<SandboxMetrics> {
    if handle.status_snapshot().is_terminal() {
        return None;
    }
    tokio::time::timeout(METRICS_TIMEOUT, handle.metrics())
        .await
        .ok()
        .and_then(|sampled| sampled.ok())
}

pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

pub(crate) fn since(start: DateTime<Utc>) -> String {
    let seconds = (Utc::now() - start).num_seconds().max(0) as u64;
    humantime::format_duration(Duration::from_secs(seconds)).to_string()
}

/// Prints rows as columns padded to their widest cell.
pub(crate) fn print_table(header: &[&str], rows: &[Vec<String>]) -> Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        outln!("{}", padded.join("   ").trim_end())
    };
    line(header.to_vec())?;
    for row in rows {
        line(row.iter().map(String::as_str).collect())?;
    }
    Ok(())
}

/// `sandvisor ps`.
pub(crate) async fn ps(home: Option<PathBuf>, args: PsArgs) -> Result<ExitCode> {
    let runtime = open(home).await?;
    let mut listed = Vec::new();
    for handle in runtime.list().await? {
        if !args.all && handle.status_snapshot().is_terminal() {
            continue;
        }
        let last = runtime.runs(handle.name()).await?.pop();
        listed.push((handle, last));
    }
    let isolation: Vec<String> = listed
        .iter()
        .map(|(handle, _)| isolation_word(handle))
        .collect();
    // Sampled all at once: a host that does not answer costs one timeout.
    let samples = futures::future::join_all(listed.iter().map(|(handle, _)| sample(handle))).await;
    let listed: Vec<_> = listed
        .into_iter()
        .zip(samples)
        .map(|((handle, last), metrics)| (handle, last, metrics))
        .collect();
    if args.json {
        let items: Vec<Value> = listed
            .iter()
            .map(|(handle, last, metrics)| {
                let running = !handle.status_snapshot().is_terminal();
                json!({
                    "name": handle.name(),
                    "status": handle.status_snapshot(),
                    "pid": last.as_ref().filter(|_| running).map(|r| r.pid),
                    "started_at": last.as_ref().map(|r| r.started_at),
                    "uptime_seconds": last.as_ref().filter(|_| running)
                        .map(|r| (Utc::now() - r.started_at).num_seconds().max(0)),
                    "cpu_percent": metrics.map(|m| m.cpu_percent),
                    "memory_bytes": metrics.map(|m| m.memory_bytes),
                    "exit_code": last.as_ref().and_then(|r| r.exit_code),
                    "exit_signal": last.as_ref().and_then(|r| r.exit_signal),
                    "termination_reason": last.as_ref().and_then(|r| r.termination_reason),
                    "restart": handle.pending_restart(),
                    "health": last.as_ref().filter(|_| running).and_then(|r| r.health.as_ref()),
                    "created_at": handle.created_at(),
                    "privileged": handle.config().is_ok_and(|c| c.isolation.privileged),
                    "network": handle.config().ok().map(|c| network_mode(&c)),
                    "ports": handle.config().map_or_else(|_| Vec::new(), |c| ports(&c)),
                    "image": image_of(handle),
                    "writable_layer_bytes": args.size.then(|| handle.writable_layer_bytes().ok()).flatten(),
                })
            })
            .collect();
        print_json(&Value::Array(items))?;
        return Ok(ExitCode::SUCCESS);
    }
    let dash = || "-".to_string();
    let rows: Vec<Vec<String>> = listed
        .iter()
        .zip(&isolation)
        .map(|((handle, last, metrics), isolation)| {
            let status = handle.status_snapshot();
            let pending = handle.pending_restart();
            // Between runs nothing runs: no pid, no uptime, the last exit.
            let running =
                !status.is_terminal() && status != SandboxStatus::Created && pending.is_none();
            let ended = last
                .as_ref()
                .filter(|_| status.is_terminal() || pending.is_some());
            let exit = match ended {
                Some(run) => match (run.exit_code, run.exit_signal) {
                    (_, Some(signal)) => format!("signal {signal}"),
                    (Some(code), None) => code.to_string(),
                    (None, None) => dash(),
                },
                None => dash(),
            };
            let status_text = match pending {
                Some(pending) => restarting(&pending, &exit),
                None => match last
                    .as_ref()
                    .filter(|_| running)
                    .and_then(|r| r.health.as_ref())
                {
                    Some(health) => with_health(status, health.status),
                    None => status.to_string(),
                },
            };
            let mut row = vec![
                handle.name().to_string(),
                handle
                    .config()
                    .ok()
                    .and_then(|c| c.image)
                    .unwrap_or_else(dash),
                status_text,
                last.as_ref()
                    .filter(|_| running)
                    .map_or_else(dash, |r| r.pid.to_string()),
                last.as_ref()
                    .filter(|_| running)
                    .map_or_else(dash, |r| since(r.started_at)),
                metrics.map_or_else(dash, |m| format!("{:.1}%", m.cpu_percent)),
                metrics.map_or_else(dash, |m| human_bytes(m.memory_bytes)),
                exit,
                handle
                    .config()
                    .map(|c| ports(&c).join(", "))
                    .ok()
                    .filter(|ports| !ports.is_empty())
                    .unwrap_or_else(dash),
            ];
            if args.size {
                row.push(
                    handle
                        .writable_layer_bytes()
                        .map_or_else(|_| dash(), human_bytes),
                );
            }
            row.push(isolation.clone());
            row
        })
        .collect();
    let mut header = vec![
        "NAME", "IMAGE", "STATUS", "PID", "UPTIME", "CPU", "MEM", "EXIT", "PORTS",
    ];
    if args.size {
        header.push("SIZE");
    }
    header.push("ISOLATION");
    print_table(&header, &rows)?;
    Ok(ExitCode::SUCCESS)
}

/// The image a sandbox was created from: the name it was given, and the
/// id it is pinned to.
fn image_of(handle: &SandboxHandle) -> Value {
    match handle.image_id() {
        Some(id) => json!({
            "reference": handle.config().ok().and_then(|c| c.image),
            "id": id,
        }),
        None => Value::Null,
    }
}

/// `ps`'s status of a sandbox waiting for a restart, as docker's
/// `Restarting (1)`: the last run's exit, and when the restart is due.
fn restarting(pending: &PendingRestart, exit: &str) -> String {
    let left = (pending.at - Utc::now()).to_std().unwrap_or_default();
    // Whole milliseconds below a second, whole seconds above.
    let left = if left < Duration::from_secs(1) {
        Duration::from_millis(left.as_millis() as u64)
    } else {
        Duration::from_secs(left.as_secs())
    };
    if left.is_zero() {
        format!("Restarting ({exit})")
    } else {
        format!(
            "Restarting ({exit}) in {}",
            humantime::format_duration(left)
        )
    }
}

/// `ps`'s status of a sandbox with a health check, as docker's `Up 5
/// minutes (healthy)`: `Running (healthy)`, `Running (health: starting)`.
fn with_health(status: SandboxStatus, health: Health) -> String {
    match health {
        Health::Starting => format!("{status} (health: starting)"),
        Health::Healthy | Health::Unhealthy => format!("{status} ({health})"),
    }
}

/// How isolated a sandbox is, in a word for `ps`: `privileged` (no
/// isolation, the host's network included), else `confined` or what it
/// shares with the host, comma-separated: `host-ids` (no user namespace),
/// `host-net` (the host's network).
fn isolation_word(handle: &SandboxHandle) -> String {
    let Ok(config) = handle.config() else {
        return "-".into();
    };
    if config.isolation.privileged {
        return "privileged".into();
    }
    let shared: Vec<&str> = [
        (!config.isolation.user).then_some("host-ids"),
        config.uses_host_network().then_some("host-net"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if shared.is_empty() {
        "confined".into()
    } else {
        shared.join(",")
    }
}

/// `none`, `host` or `private`: the network a sandbox runs in (`--net`
/// stored as `isolation.net == false` is `host`).
fn network_mode(config: &SandboxConfig) -> &'static str {
    match &config.network {
        _ if config.uses_host_network() => "host",
        Network::Private { .. } => "private",
        Network::None | Network::Host => "none",
    }
}

/// The published ports as docker shows them: `127.0.0.1:8080->80/tcp`.
fn ports(config: &SandboxConfig) -> Vec<String> {
    match &config.network {
        Network::Private { publish, .. } => publish.iter().map(published).collect(),
        Network::None | Network::Host => Vec::new(),
    }
}

fn published(publish: &Publish) -> String {
    let host = match publish.host_ip {
        std::net::IpAddr::V4(ip) => ip.to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
    };
    format!(
        "{host}:{}->{}/{}",
        publish.host_port, publish.port, publish.protocol
    )
}

/// The network a sandbox runs in, as `inspect` shows it.
fn effective_network(config: &SandboxConfig) -> Value {
    let (egress, dns) = match &config.network {
        Network::Private { egress, dns, .. } => (
            egress.iter().map(ToString::to_string).collect(),
            dns.iter().map(ToString::to_string).collect(),
        ),
        Network::None | Network::Host => (Vec::new(), Vec::new()),
    };
    json!({
        "mode": network_mode(config),
        "publish": ports(config),
        "egress": egress,
        "dns": dns,
    })
}

/// The isolation a sandbox gets, as `inspect` shows it: every setting in
/// force, the runtime's defaults filled in.
fn effective_isolation(runtime: &Sandvisor, handle: &SandboxHandle) -> Value {
    let config = match handle.config() {
        Ok(config) => config,
        Err(err) => return json!({ "error": err.to_string() }),
    };
    let iso = config.isolation;
    let confined = !iso.privileged;
    let capabilities = if confined {
        match caps::resolve(&config.cap_add, &config.cap_drop) {
            Ok(mask) => json!(caps::names(mask)),
            Err((field, reason)) => json!({ "error": format!("{field}: {reason}") }),
        }
    } else {
        json!(["ALL"])
    };
    let seccomp = match (&config.seccomp, confined) {
        (_, false) | (Seccomp::Unconfined, true) => json!("unconfined"),
        (Seccomp::Default, true) => json!("default"),
        (Seccomp::Profile(path), true) => json!(path),
    };
    let own_root = confined || config.rootfs.is_some() || config.image.is_some();
    json!({
        "privileged": iso.privileged,
        "namespaces": {
            "pid": iso.pid,
            "mount": iso.mount,
            "net": iso.net,
            "uts": iso.uts,
            "ipc": iso.ipc,
            "user": iso.user,
            "cgroup": iso.cgroup,
        },
        "user_namespace": handle.id_range().map(|range| json!({
            "first": range.first,
            "count": range.count,
        })),
        "root": if own_root {
            json!({
                "lower": match (&config.rootfs, &config.image) {
                    (Some(rootfs), _) => json!(rootfs),
                    (None, Some(image)) => json!({ "image": image, "id": handle.image_id() }),
                    (None, None) => json!("host base"),
                },
                "read_only": config.read_only,
            })
        } else {
            json!("host /")
        },
        "read_only": config.read_only,
        "mounts": config.mounts,
        "capabilities": capabilities,
        "seccomp": seccomp,
        "no_new_privs": confined,
        "user": config.user.as_deref().unwrap_or("0:0"),
        "limits": {
            "memory": config.memory.resolve(runtime.default_memory()),
            "pids": config.pids.resolve(runtime.default_pids()),
            "cpus": config.cpus,
        },
    })
}

/// `sandvisor inspect`: a JSON array, one object per name, as docker prints.
pub(crate) async fn inspect(home: Option<PathBuf>, args: InspectArgs) -> Result<ExitCode> {
    let runtime = open(home).await?;
    let mut items = Vec::new();
    for name in &args.names {
        items.push(describe(&runtime, name).await?);
    }
    print_json(&Value::Array(items))?;
    Ok(ExitCode::SUCCESS)
}

async fn describe(runtime: &Sandvisor, name: &str) -> Result<Value> {
    let handle = runtime.get(name).await?;
    // Parsed and written again: a config stored in an older shape (a
    // duration as {"secs", "nanos"}) prints as today's (a "10s" string).
    let parsed = handle.config()?;
    let config = serde_json::to_value(&parsed).map_err(|e| Error::Internal(e.to_string()))?;
    let runs = runtime.runs(name).await?;
    let last = runs.last();
    let restart = json!({
        "policy": parsed.restart.to_string(),
        "backoff": parsed.restart_backoff,
        "pending": handle.pending_restart(),
        "restarts": last.map_or(0, |run| run.restart_count),
        "ended": last.and_then(|run| run.restart_end),
    });
    let runs: Vec<Value> = runs
        .iter()
        .map(|run| {
            json!({
                "id": run.id,
                "pid": run.pid,
                "status": run.status,
                "exit_code": run.exit_code,
                "exit_signal": run.exit_signal,
                "termination_reason": run.termination_reason,
                "started_at": run.started_at,
                "terminated_at": run.terminated_at,
                "host_pid": run.host.pid,
                "restart_count": run.restart_count,
                "restart_end": run.restart_end,
                "health": run.health,
            })
        })
        .collect();
    let dir = home::sandbox_dir(runtime.home(), name)?;
    let logs = home::log_dir(runtime.home(), name)?;
    Ok(json!({
        "name": name,
        "status": handle.status_snapshot(),
        "created_at": handle.created_at(),
        "updated_at": handle.updated_at(),
        "config": config,
        "isolation": effective_isolation(runtime, &handle),
        "network": effective_network(&parsed),
        "image": image_of(&handle),
        "backend": match parsed.backend {
            sandvisor::Backend::Namespaces => json!({ "kind": "namespaces" }),
            sandvisor::Backend::MicroVm { vcpus, .. } => json!({
                "kind": "micro_vm",
                "vcpus": vcpus,
                "memory": parsed.vm_memory(),
                "accel": sandvisor::vm::recorded_accel(runtime.home()).map(|accel| accel.as_str()),
            }),
        },
        "writable_layer_bytes": handle.writable_layer_bytes().ok(),
        "restart": restart,
        "health": parsed.health.as_ref().map(|check| json!({
            "check": check,
            "on_unhealthy": parsed.on_unhealthy,
            "state": last.and_then(|run| run.health.as_ref()),
        })),
        "runs": runs,
        "paths": {
            "home": runtime.home(),
            "dir": dir,
            "logs": logs,
            "exec_log": logs.join("exec.log"),
            "runtime_log": logs.join("runtime.log"),
            "kernel_log": logs.join("kernel.log"),
            "control_socket": handle.control_socket(),
        },
    }))
}

/// `sandvisor metrics`.
pub(crate) async fn metrics(home: Option<PathBuf>, args: MetricsArgs) -> Result<ExitCode> {
    let runtime = open(home).await?;
    if let Some(name) = &args.name {
        // Errors for one named sandbox are the caller's to see.
        runtime.get(name).await?.metrics().await?;
    }
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|source| Error::Io {
        path: "SIGINT".into(),
        source,
    })?;
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = interrupt.recv() => return Ok(ExitCode::SUCCESS),
        }
        let handles = match &args.name {
            Some(name) => vec![runtime.get(name).await?],
            None => runtime.list().await?,
        };
        let sampled = futures::future::join_all(handles.iter().map(sample)).await;
        let samples: Vec<(String, SandboxMetrics)> = handles
            .iter()
            .zip(sampled)
            .filter_map(|(handle, metrics)| Some((handle.name().to_string(), metrics?)))
            .collect();
        if args.json {
            let items: Vec<Value> = samples
                .iter()
                .map(|(name, m)| {
                    json!({
                        "name": name,
                        "cpu_percent": m.cpu_percent,
                        "memory_bytes": m.memory_bytes,
                        "processes": m.processes,
                        "sampled_at": m.sampled_at,
                    })
                })
                .collect();
            print_json(&Value::Array(items))?;
        } else {
            let rows: Vec<Vec<String>> = samples
                .iter()
                .map(|(name, m)| {
                    vec![
                        name.clone(),
                        format!("{:.1}%", m.cpu_percent),
                        human_bytes(m.memory_bytes),
                        m.processes.to_string(),
                    ]
                })
                .collect();
            print_table(&["NAME", "CPU", "MEM", "PIDS"], &rows)?;
        }
        // Watching for a reader who has gone shows nothing to anyone.
        if !args.watch || stdout_closed() {
            return Ok(ExitCode::SUCCESS);
        }
        outln!("")?;
    }
}

fn parse_sources(names: &[String]) -> Result<Vec<LogSource>> {
    let mut sources = Vec::new();
    for name in names {
        let name = name.trim();
        if name == "all" {
            return Ok(vec![
                LogSource::Stdout,
                LogSource::Stderr,
                LogSource::Output,
                LogSource::System,
            ]);
        }
        let source = LogSource::from_name(name).ok_or_else(|| Error::InvalidConfig {
            field: "--source".into(),
            reason: format!("{name:?} is not one of stdout, stderr, output, system, all"),
        })?;
        if !sources.contains(&source) {
            sources.push(source);
        }
    }
    Ok(sources)
}

/// `sandvisor logs`.
pub(crate) async fn logs(home: Option<PathBuf>, args: LogsArgs) -> Result<ExitCode> {
    let home = resolve_home(home)?;
    let logs = Logs::at(&home);
    let sources = parse_sources(&args.source)?;
    let mut printer = Printer::new(args.json, args.timestamps);
    let start = match &args.cursor {
        Some(cursor) => {
            let cursor: LogCursor = cursor
                .parse()
                .map_err(|e: sandvisor::LogCursorParseError| Error::InvalidCursor(e.to_string()))?;
            LogStreamStart::From(cursor)
        }
        None => {
            let options = LogOptions {
                sources: sources.clone(),
                since: args.since,
                until: args.until,
                tail: args.tail,
            };
            let snapshot = logs.read_logs_snapshot(&args.name, &options).await?;
            for entry in &snapshot.entries {
                printer.print(entry)?;
            }
            printer.flush()?;
            if !args.follow {
                return Ok(ExitCode::SUCCESS);
            }
            LogStreamStart::From(snapshot.cursor)
        }
    };
    let options = LogStreamOptions {
        sources,
        start,
        until: args.until,
        follow: args.follow,
    };
    let mut stream = logs.log_stream(&args.name, &options).await?;
    if !args.follow {
        while let Some(entry) = stream.next().await {
            printer.print(&entry?)?;
        }
        printer.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    follow(&home, &logs, &args.name, options, stream, &mut printer).await
}

/// Prints entries as they come until the sandbox has stopped or its host
/// process is found gone (then the rest on disk), or Ctrl-C.
async fn follow(
    home: &std::path::Path,
    logs: &Logs,
    name: &str,
    options: LogStreamOptions,
    mut stream: sandvisor::LogStream,
    printer: &mut Printer,
) -> Result<ExitCode> {
    let runtime = open(Some(home.to_path_buf())).await?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|source| Error::Io {
        path: "SIGINT".into(),
        source,
    })?;
    let mut checks = tokio::time::interval(Duration::from_millis(500));
    let mut last: Option<LogCursor> = None;
    loop {
        tokio::select! {
            entry = stream.next() => match entry {
                Some(entry) => {
                    let entry = entry?;
                    printer.print(&entry)?;
                    last = Some(entry.cursor);
                    // What is already read goes out in one write; then it
                    // shows before waiting for more.
                    let mut ended = false;
                    while let Some(next) = stream.next().now_or_never() {
                        let Some(entry) = next else {
                            ended = true;
                            break;
                        };
                        let entry = entry?;
                        printer.print(&entry)?;
                        last = Some(entry.cursor);
                    }
                    printer.flush()?;
                    if ended {
                        return Ok(ExitCode::SUCCESS);
                    }
                }
                // The stream reached `until`.
                None => return Ok(ExitCode::SUCCESS),
            },
            _ = checks.tick() => {
                let mut sandbox = runtime.get(name).await?;
                // A host that died (crashed, SIGKILLed) never records the
                // end: settle its run here, or this would follow forever.
                if sandbox.host_gone().await? {
                    runtime.reconcile().await?;
                    sandbox.refresh().await?;
                }
                if sandbox.status_snapshot().is_terminal() {
                    break;
                }
            }
            _ = interrupt.recv() => return Ok(ExitCode::SUCCESS),
        }
    }
    drop(stream);
    // It has stopped: everything it wrote is on disk.
    let rest = LogStreamOptions {
        start: last.map_or(options.start.clone(), LogStreamStart::From),
        follow: false,
        ..options
    };
    let mut stream = logs.log_stream(name, &rest).await?;
    while let Some(entry) = stream.next().await {
        printer.print(&entry?)?;
    }
    printer.flush()?;
    Ok(ExitCode::SUCCESS)
}
