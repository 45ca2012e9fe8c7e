//! Network benchmark (issue 17): a sandbox's private network against the
//! host's own loopback, in one run.
//!
//! 1. Throughput: 1 GiB written host → sandbox through a published port
//!    (127.0.0.1, forwarded by `pasta`) against the same 1 GiB to the same
//!    python sink running as a host process on 127.0.0.1; median of 3 each.
//! 2. Latency: 1,000 sequential connects, each with a 1-byte request and a
//!    1-byte reply, to a python echo server inside the sandbox (published
//!    port) against the same server on the host's loopback; p50 and p99.
//! 3. Start-up: `create` until it returns (the sandbox running) with a
//!    private network and one published port against `Network::None`;
//!    median of 10 each.
//!
//! Traffic only on 127.0.0.1 and inside the sandbox's own namespace. Every
//! sandbox and host process it starts is ended, on success and on error, and
//! its temp home is removed.
//!
//! Run: `cargo build --release --bin sandvisor-agent --example bench_network`
//! then `target/release/examples/bench_network` (as root: namespaces).

use std::error::Error;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sandvisor::{Network, Protocol, Publish, Sandbox, SandboxConfig, SandboxStatus, Sandvisor};

type BoxError = Box<dyn Error + Send + Sync>;
type Result<T> = std::result::Result<T, BoxError>;

/// Bytes per throughput run.
const TOTAL: u64 = 1 << 30;
/// Bytes per write.
const CHUNK: usize = 1 << 20;
const THROUGHPUT_RUNS: usize = 3;
const CONNECTS: usize = 1000;
/// Unmeasured connects before the measured ones (both paths).
const WARM_CONNECTS: usize = 50;
const STARTUP_RUNS: usize = 10;
/// The ports the servers listen on inside the sandbox.
const SINK_PORT: u16 = 9000;
const ECHO_PORT: u16 = 9001;
const IO_TIMEOUT: Duration = Duration::from_secs(120);
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The servers, the same program in the sandbox and on the host:
/// `ADDRESS SINK_PORT ECHO_PORT`. The sink reads each connection to EOF into
/// a 1 MiB buffer, then answers with the byte count; the echo server answers
/// one byte with that byte and closes.
const SERVERS: &str = r#"
import socket, sys, threading

host, sink_port, echo_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def listen(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(128)
    return s

def sink(s):
    view = memoryview(bytearray(1 << 20))
    while True:
        c, _ = s.accept()
        with c:
            n = 0
            while True:
                k = c.recv_into(view)
                if not k:
                    break
                n += k
            c.sendall(b"%d\n" % n)

def echo(s):
    while True:
        c, _ = s.accept()
        with c:
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            b = c.recv(1)
            if b:
                c.sendall(b)

threads = [
    threading.Thread(target=sink, args=(listen(sink_port),), daemon=True),
    threading.Thread(target=echo, args=(listen(echo_port),), daemon=True),
]
for t in threads:
    t.start()
print("ready", flush=True)
for t in threads:
    t.join()
"#;

/// A host process killed and reaped when dropped (also on error paths).
struct HostProcess(Child);

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every sandbox started, killed at the end whatever happened.
#[derive(Default)]
struct Sandboxes(Vec<Sandbox>);

impl Sandboxes {
    async fn kill_all(&mut self) -> Vec<String> {
        let mut failures = Vec::new();
        for sandbox in self.0.drain(..) {
            let name = sandbox.name().to_string();
            match sandbox.status().await {
                Ok(SandboxStatus::Running) | Ok(SandboxStatus::Starting) | Err(_) => {
                    if let Err(err) = sandbox.kill().await {
                        failures.push(format!("kill {name}: {err}"));
                    }
                }
                Ok(_) => {}
            }
        }
        failures
    }
}

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn Error>> {
    let agent = std::env::current_exe()?
        .parent()
        .and_then(|dir| dir.parent())
        .map(|dir| dir.join("sandvisor-agent"))
        .filter(|path| path.is_file())
        .ok_or("build the agent first: cargo build --release --bin sandvisor-agent")?;
    let python = python_path();

    header(&python);

    let home = tempfile::tempdir().map_err(|e| format!("temp home: {e}"))?;
    let rt = Sandvisor::builder()
        .home(home.path())
        .agent_path(&agent)
        .open()
        .await
        .map_err(|e| format!("open runtime at {}: {e}", home.path().display()))?;
    let mut sandboxes = Sandboxes::default();
    let result = run(&rt, &python, &mut sandboxes).await;
    let failures = sandboxes.kill_all().await;
    for failure in &failures {
        eprintln!("cleanup: {failure}");
    }
    // `kill` returns once the sandbox has ended; its helper exits just after.
    let killed = Instant::now();
    let mut left = pastas_of(home.path());
    while !left.is_empty() && killed.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        left = pastas_of(home.path());
    }
    if !left.is_empty() {
        eprintln!("cleanup: pasta processes still running 10 s after kill: {left:?}");
    }
    drop(rt);
    let home_path = home.path().to_path_buf();
    home.close()
        .map_err(|e| format!("remove temp home {}: {e}", home_path.display()))?;
    result.map_err(|e| -> Box<dyn Error> { e.to_string().into() })
}

/// The measurements; every sandbox it creates is pushed to `sandboxes`,
/// every host process is dropped (killed) before it returns.
async fn run(rt: &Sandvisor, python: &Path, sandboxes: &mut Sandboxes) -> Result<()> {
    // The servers in a private sandbox, both ports published on 127.0.0.1.
    let (sink_host, echo_host) = (free_port()?, free_port()?);
    let mut config = SandboxConfig::new("servers", python.to_string_lossy()).args([
        "-c".to_string(),
        SERVERS.to_string(),
        "0.0.0.0".to_string(),
        SINK_PORT.to_string(),
        ECHO_PORT.to_string(),
    ]);
    config.network = private(vec![
        publish(sink_host, SINK_PORT),
        publish(echo_host, ECHO_PORT),
    ]);
    let servers = rt
        .create(config)
        .await
        .map_err(|e| format!("create the server sandbox: {e}"))?;
    sandboxes.0.push(servers);
    let sandboxed = Endpoints {
        sink: loopback(sink_host),
        echo: loopback(echo_host),
    };

    // The same servers as a host process on 127.0.0.1.
    let (sink_base, echo_base) = (free_port()?, free_port()?);
    let _baseline = HostProcess(
        Command::new(python)
            .args([
                "-c",
                SERVERS,
                "127.0.0.1",
                &sink_base.to_string(),
                &echo_base.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("start {} on the host: {e}", python.display()))?,
    );
    let host = Endpoints {
        sink: loopback(sink_base),
        echo: loopback(echo_base),
    };

    blocking(move || {
        wait_ready("sandbox", &sandboxed)?;
        wait_ready("host", &host)?;
        Ok(())
    })
    .await?;

    // 1. Throughput, alternating the paths run by run.
    let mut sandbox_rates = Vec::new();
    let mut host_rates = Vec::new();
    for _ in 0..THROUGHPUT_RUNS {
        host_rates.push(blocking(move || transfer(host.sink, TOTAL)).await?);
        sandbox_rates.push(blocking(move || transfer(sandboxed.sink, TOTAL)).await?);
    }

    // 2. Latency.
    let host_lat = blocking(move || connects(host.echo)).await?;
    let sandbox_lat = blocking(move || connects(sandboxed.echo)).await?;

    // 3. Start-up, alternating none and private; one unmeasured round first.
    let mut none_times = Vec::new();
    let mut private_times = Vec::new();
    for round in 0..=STARTUP_RUNS {
        let none = start_once(rt, sandboxes, &format!("none-{round}"), Network::None).await?;
        let port = free_port()?;
        let net = private(vec![publish(port, 8080)]);
        let private = start_once(rt, sandboxes, &format!("private-{round}"), net).await?;
        if round > 0 {
            none_times.push(none);
            private_times.push(private);
        }
    }

    // The table.
    let (st, ht) = (median_f(&mut sandbox_rates), median_f(&mut host_rates));
    let (sp50, sp99) = (
        percentile(&sandbox_lat, 0.50),
        percentile(&sandbox_lat, 0.99),
    );
    let (hp50, hp99) = (percentile(&host_lat, 0.50), percentile(&host_lat, 0.99));
    let (pt, nt) = (median(&mut private_times), median(&mut none_times));
    println!();
    println!("| measure | sandvisor | baseline | difference | ratio sandvisor/baseline |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    println!(
        "| 1 GiB host→sandbox, 1 MiB writes, MiB/s (median of {THROUGHPUT_RUNS}; published port vs host loopback) | {st:.0} | {ht:.0} | {:+.0} | {:.2}x |",
        st - ht,
        st / ht
    );
    println!(
        "| connect + 1-byte echo, p50 µs ({CONNECTS} sequential; published port vs host loopback) | {:.0} | {:.0} | {:+.0} | {:.2}x |",
        us(sp50),
        us(hp50),
        us(sp50) - us(hp50),
        us(sp50) / us(hp50)
    );
    println!(
        "| connect + 1-byte echo, p99 µs ({CONNECTS} sequential; published port vs host loopback) | {:.0} | {:.0} | {:+.0} | {:.2}x |",
        us(sp99),
        us(hp99),
        us(sp99) - us(hp99),
        us(sp99) / us(hp99)
    );
    println!(
        "| create → Running, ms (median of {STARTUP_RUNS}; private + 1 published port vs network none) | {:.1} | {:.1} | {:+.1} | {:.2}x |",
        ms(pt),
        ms(nt),
        ms(pt) - ms(nt),
        pt.as_secs_f64() / nt.as_secs_f64()
    );
    println!();
    println!(
        "throughput runs, MiB/s: sandvisor {:?}, baseline {:?}",
        rounded(&sandbox_rates),
        rounded(&host_rates)
    );
    println!(
        "create ms: private {:?}, none {:?}",
        rounded(&private_times.iter().map(|d| ms(*d)).collect::<Vec<_>>()),
        rounded(&none_times.iter().map(|d| ms(*d)).collect::<Vec<_>>())
    );
    Ok(())
}

#[derive(Clone, Copy)]
struct Endpoints {
    sink: SocketAddr,
    echo: SocketAddr,
}

/// Times one `create` (it returns with the sandbox running), then kills it.
async fn start_once(
    rt: &Sandvisor,
    sandboxes: &mut Sandboxes,
    name: &str,
    network: Network,
) -> Result<Duration> {
    let mut config = SandboxConfig::new(name, "sleep").args(["1000"]);
    config.network = network;
    let started = Instant::now();
    let sandbox = rt
        .create(config)
        .await
        .map_err(|e| format!("create {name}: {e}"))?;
    let took = started.elapsed();
    let status = sandbox
        .status()
        .await
        .map_err(|e| format!("status of {name}: {e}"))?;
    sandboxes.0.push(sandbox);
    if status != SandboxStatus::Running {
        return Err(format!("{name} is {status:?} after create, not Running").into());
    }
    if let Some(sandbox) = sandboxes.0.pop() {
        sandbox
            .kill()
            .await
            .map_err(|e| format!("kill {name}: {e}"))?;
    }
    Ok(took)
}

/// Polls both servers until the sink counts an empty connection and the
/// echo server echoes (through pasta, a connect can succeed before anything
/// listens inside, so only an answer counts).
fn wait_ready(what: &str, endpoints: &Endpoints) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let sink = transfer_bytes(endpoints.sink, 0).map(|_| ());
        let echo = echo_once(endpoints.echo).map(|_| ());
        match sink.and(echo) {
            Ok(()) => return Ok(()),
            Err(err) if Instant::now() >= deadline => {
                return Err(format!(
                    "{what} servers ({} / {}) not answering after {READY_TIMEOUT:?}: {err}",
                    endpoints.sink, endpoints.echo
                )
                .into())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// MiB/s of sending `total` bytes to the sink at `addr` until it confirms
/// the count.
fn transfer(addr: SocketAddr, total: u64) -> Result<f64> {
    let started = Instant::now();
    transfer_bytes(addr, total)?;
    let secs = started.elapsed().as_secs_f64();
    Ok(total as f64 / (1024.0 * 1024.0) / secs)
}

/// Writes `total` bytes in 1 MiB chunks, shuts the write side, and checks
/// the sink's count.
fn transfer_bytes(addr: SocketAddr, total: u64) -> Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let chunk = vec![0x5au8; CHUNK];
    let mut left = total;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        stream
            .write_all(&chunk[..n])
            .map_err(|e| format!("write to {addr} ({} bytes sent): {e}", total - left))?;
        left -= n as u64;
    }
    stream
        .shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown write to {addr}: {e}"))?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("read the count from {addr}: {e}"))?;
    let count: u64 = answer
        .trim()
        .parse()
        .map_err(|e| format!("sink at {addr} answered {answer:?}: {e}"))?;
    if count != total {
        return Err(format!("sink at {addr} counted {count} bytes, {total} were sent").into());
    }
    Ok(())
}

/// One connect + 1-byte request + 1-byte reply; how long it took.
fn echo_once(addr: SocketAddr) -> Result<Duration> {
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream
        .write_all(b"x")
        .map_err(|e| format!("write to {addr}: {e}"))?;
    let mut reply = [0u8; 1];
    stream
        .read_exact(&mut reply)
        .map_err(|e| format!("read the echo from {addr}: {e}"))?;
    let took = started.elapsed();
    if reply != *b"x" {
        return Err(format!("echo at {addr} answered {reply:?}").into());
    }
    Ok(took)
}

/// `CONNECTS` sequential echoes after `WARM_CONNECTS` unmeasured ones,
/// sorted.
fn connects(addr: SocketAddr) -> Result<Vec<Duration>> {
    for _ in 0..WARM_CONNECTS {
        echo_once(addr)?;
    }
    let mut times = Vec::with_capacity(CONNECTS);
    for _ in 0..CONNECTS {
        times.push(echo_once(addr)?);
    }
    times.sort();
    Ok(times)
}

/// Runs blocking socket work off the runtime's worker threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| format!("blocking task: {e}"))?
}

/// The facts the figures depend on.
fn header(python: &Path) {
    let pasta = first_line("pasta", &["--version"]);
    let kernel = first_line("uname", &["-r"]);
    let python_version = first_line(&python.to_string_lossy(), &["--version"]);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get().to_string())
        .unwrap_or_else(|_| "?".into());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "?".into());
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into());
    println!(
        "network benchmark: pasta {pasta:?}; kernel {kernel}; {cores} cores ({cpu}), load {load}; {python_version} ({}) for both sink/echo servers; traffic on 127.0.0.1 only",
        python.display()
    );
}

/// The first line of a command's output (stdout, else stderr), or why not.
fn first_line(program: &str, args: &[&str]) -> String {
    match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => {
            let text = if out.stdout.is_empty() {
                out.stderr
            } else {
                out.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        }
        Err(err) => format!("unavailable ({err})"),
    }
}

/// The system python (visible inside the sandbox's read-only /usr too).
fn python_path() -> PathBuf {
    let system = PathBuf::from("/usr/bin/python3");
    if system.is_file() {
        system
    } else {
        PathBuf::from("python3")
    }
}

/// Pids of `pasta` processes whose command line names `home`.
fn pastas_of(home: &Path) -> Vec<u32> {
    let needle = home.to_string_lossy().into_owned();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let running = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .map(|s| {
                    !s.lines()
                        .any(|l| l.starts_with("State:") && l.contains('Z'))
                })
                .unwrap_or(false);
            running
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|cmdline| {
                        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                        text.contains("--config-net") && text.contains(&needle)
                    })
                    .unwrap_or(false)
        })
        .collect()
}

/// A free TCP port on the host's loopback (bound once and let go).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("find a free port: {e}"))?
        .local_addr()?
        .port())
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

fn publish(host_port: u16, port: u16) -> Publish {
    Publish {
        host_ip: Ipv4Addr::LOCALHOST.into(),
        host_port,
        port,
        protocol: Protocol::Tcp,
    }
}

fn private(publish: Vec<Publish>) -> Network {
    Network::Private {
        publish,
        egress: Vec::new(),
        dns: Vec::new(),
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied().unwrap_or_default()
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times.get(times.len() / 2).copied().unwrap_or_default()
}

fn median_f(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn rounded(values: &[f64]) -> Vec<f64> {
    values.iter().map(|v| (v * 10.0).round() / 10.0).collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
