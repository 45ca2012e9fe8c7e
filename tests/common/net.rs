//! Probes for the network tests: python run inside a sandbox, and the
//! network helpers (`pasta`) a home has on the host.

use std::path::Path;

use futures::StreamExt;
use sandvisor::{ExecConfig, Sandbox};

/// Runs `script` with python3 in `sandbox`; what it printed.
pub async fn python(sandbox: &Sandbox, script: &str) -> String {
    let mut session = sandbox
        .exec(ExecConfig::new("python3", ["-c", script]))
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = session.next().await {
        out.extend_from_slice(&chunk.data);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How a TCP connect from `sandbox` to `host:port` went (`connected` or the
/// exception's name) and how many seconds it took.
pub async fn connect(sandbox: &Sandbox, host: &str, port: u16) -> (String, f64) {
    let script = format!(
        "import socket, time\n\
         s = socket.socket(); s.settimeout(5); t = time.time()\n\
         try:\n    s.connect(({host:?}, {port})); r = 'connected'\n\
         except Exception as e:\n    r = type(e).__name__\n\
         print(r, round(time.time() - t, 3))"
    );
    let out = python(sandbox, &script).await;
    let (result, secs) = out.trim().split_once(' ').unwrap_or((out.trim(), ""));
    (result.to_string(), secs.parse().unwrap_or(f64::MAX))
}

/// How sending one UDP datagram from `sandbox` to `address:port` went
/// (`sent` or the exception's name).
pub async fn udp(sandbox: &Sandbox, address: &str, port: u16) -> String {
    let script = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         try:\n    s.sendto(b'x', ({address:?}, {port})); print('sent')\n\
         except Exception as e:\n    print(type(e).__name__)"
    );
    python(sandbox, &script).await.trim().to_string()
}

/// Pids of live (not zombie) `pasta` processes whose command line names
/// `home`.
pub fn pastas_of(home: &Path) -> Vec<u32> {
    let needle = home.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let running = stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'));
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            running && text.contains("--config-net") && text.contains(&needle)
        })
        .collect()
}
