//! `boot-error.json`: why a sandbox failed before it was ready.
//!
//! # Contract
//! - Written atomically (temp file, then rename) by the supervisor when a
//!   run ends before Ready (boot failure or boot timeout); removed by the
//!   supervisor when a run reaches Ready.
//! - Failing to write or remove it is logged, never fatal: the run's outcome
//!   is in the store either way.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use chrono::Utc;
use serde::Serialize;

use super::BootFailure;

/// The boot error record's file name in the log directory.
pub const BOOT_ERROR_FILE: &str = "boot-error.json";

/// SPEC §5's fields, exactly: what else a [`BootFailure`] carries is for
/// the host.
#[derive(Serialize)]
struct BootErrorRecord<'a> {
    t: String,
    stage: crate::protocol::BootStage,
    errno: i32,
    message: &'a str,
}

/// Writes `boot-error.json` atomically (temp file, then rename).
pub fn write(log_dir: &Path, failure: &BootFailure) {
    let record = BootErrorRecord {
        t: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        stage: failure.stage,
        errno: failure.errno,
        message: &failure.message,
    };
    let result = serde_json::to_vec_pretty(&record)
        .map_err(std::io::Error::other)
        .and_then(|json| {
            let tmp = log_dir.join(".boot-error.json.tmp");
            // 0600, as every file in the home.
            std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?
                .write_all(&json)?;
            std::fs::rename(&tmp, log_dir.join(BOOT_ERROR_FILE))
        });
    if let Err(err) = result {
        tracing::warn!(dir = %log_dir.display(), %err, "cannot write boot-error.json");
    }
}

/// Removes `boot-error.json` if there is one.
pub fn remove(log_dir: &Path) {
    match std::fs::remove_file(log_dir.join(BOOT_ERROR_FILE)) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!(dir = %log_dir.display(), %err, "cannot remove boot-error.json");
        }
        _ => {}
    }
}

/// Lines of the console a `kernel`-stage failure quotes.
const CONSOLE_LINES: usize = 8;
/// Bytes of the console's end read for them.
const CONSOLE_TAIL: u64 = 4096;

/// Adds the last lines of the guest's console (`kernel.log` in `log_dir`)
/// to every failure at stage `kernel` among `actions` (the boot error
/// record and the run's end alike), so the caller sees why the guest did
/// not come up.
pub fn with_console(log_dir: &Path, actions: &mut [super::phase::Action]) {
    use super::phase::Action;
    let mut lines: Option<String> = None;
    for action in actions.iter_mut() {
        let failure = match action {
            Action::WriteBootError(failure) => failure,
            Action::Finish(ending) => match &mut ending.failure {
                Some(failure) => failure,
                None => continue,
            },
            _ => continue,
        };
        if failure.stage != crate::protocol::BootStage::Kernel {
            continue;
        }
        let tail = lines.get_or_insert_with(|| console_tail(log_dir));
        if !tail.is_empty() {
            failure.message = format!("{}; the console's last lines: {tail}", failure.message);
        }
    }
}

/// Characters of one quoted console line.
const CONSOLE_LINE_CHARS: usize = 200;

/// The console's last [`CONSOLE_LINES`] lines, joined by ` | `, escapes
/// and control characters removed, each line cut at [`CONSOLE_LINE_CHARS`]
/// (empty when there is no console). The text is the guest's: it is quoted,
/// never interpreted.
fn console_tail(log_dir: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let path = log_dir.join(crate::log::runtime_log::KERNEL_LOG);
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut bytes = Vec::new();
    if file
        .seek(SeekFrom::Start(len.saturating_sub(CONSOLE_TAIL)))
        .is_err()
        || file.read_to_end(&mut bytes).is_err()
    {
        return String::new();
    }
    let text = String::from_utf8_lossy(&strip_ansi_escapes::strip(&bytes)).into_owned();
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            line.chars()
                .filter(|c| !c.is_control())
                .take(CONSOLE_LINE_CHARS)
                .collect::<String>()
                .trim()
                .to_string()
        })
        .filter(|line| !line.is_empty())
        .collect();
    lines[lines.len().saturating_sub(CONSOLE_LINES)..].join(" | ")
}
