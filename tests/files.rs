//! Copy in and out, and the file API, on real sandboxes running and stopped;
//! archives that try to leave the sandbox's root.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use common::runtime;
use futures::StreamExt;
use sandvisor::{Error, ExecConfig, FileKind, Sandbox, SandboxConfig, SandboxStatus};
use tokio::io::AsyncReadExt;

const MTIME: u64 = 1_600_000_000;

/// Appends one entry with the exact `name` (and link target) given, bypassing
/// the builder's own path checks (an attacker's archive does not use them).
fn raw_entry(
    builder: &mut tar::Builder<Vec<u8>>,
    name: &[u8],
    kind: tar::EntryType,
    link: Option<&[u8]>,
    mode: u32,
    data: &[u8],
) {
    let mut header = tar::Header::new_gnu();
    {
        let gnu = header.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name);
        if let Some(link) = link {
            gnu.linkname[..link.len()].copy_from_slice(link);
        }
    }
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(data.len() as u64);
    header.set_mtime(MTIME);
    header.set_cksum();
    builder.append(&header, data).unwrap();
}

fn archive(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    build(&mut builder);
    builder.into_inner().unwrap()
}

/// `d/` (0750) holding `run.sh` (0755) and `secret` (0600), and `top.txt`.
fn sample() -> Vec<u8> {
    archive(|b| {
        raw_entry(b, b"d/", tar::EntryType::Directory, None, 0o750, b"");
        raw_entry(
            b,
            b"d/run.sh",
            tar::EntryType::Regular,
            None,
            0o755,
            b"#!/bin/sh\necho hi\n",
        );
        raw_entry(
            b,
            b"d/secret",
            tar::EntryType::Regular,
            None,
            0o600,
            b"s3cret",
        );
        raw_entry(
            b,
            b"top.txt",
            tar::EntryType::Regular,
            None,
            0o644,
            b"top\n",
        );
    })
}

/// Each entry of a tar stream: name, mode, mtime, contents.
fn entries(bytes: &[u8]) -> Vec<(String, u32, u64, Vec<u8>)> {
    let mut archive = tar::Archive::new(bytes);
    archive
        .entries()
        .unwrap()
        .map(|entry| {
            let mut entry = entry.unwrap();
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let mode = entry.header().mode().unwrap() & 0o7777;
            let mtime = entry.header().mtime().unwrap();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
            (name, mode, mtime, data)
        })
        .collect()
}

async fn read_all(mut stream: sandvisor::TarStream) -> Vec<u8> {
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).await.unwrap();
    bytes
}

async fn sleeper(rt: &sandvisor::Sandvisor, name: &str) -> Sandbox {
    rt.create(SandboxConfig::new(name, "sleep").args(["1000"]))
        .await
        .unwrap()
}

async fn sh_out(sandbox: &Sandbox, script: &str) -> String {
    let mut handle = sandbox
        .exec(ExecConfig::new("sh", ["-c", script]))
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = handle.next().await {
        out.extend_from_slice(&chunk.data);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A host directory the sandbox cannot see, holding `secret`.
struct HostDir {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl HostDir {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sandvisor-files-host")
            .tempdir_in("/var/tmp")
            .unwrap();
        let path = dir.path().to_path_buf();
        std::fs::write(path.join("secret"), "host secret").unwrap();
        Self { _dir: dir, path }
    }

    fn rel(&self) -> String {
        self.path
            .to_str()
            .unwrap()
            .trim_start_matches('/')
            .to_string()
    }

    /// Only `secret` is there, unchanged, with one link.
    fn assert_untouched(&self) {
        let names: Vec<_> = std::fs::read_dir(&self.path)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["secret"], "nothing may be written to the host");
        let secret = self.path.join("secret");
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "host secret");
        assert_eq!(std::fs::metadata(&secret).unwrap().nlink(), 1);
    }
}

#[tokio::test]
async fn copy_in_and_out_of_a_running_sandbox_keep_modes_and_times() {
    let (_home, rt) = runtime().await;
    let sandbox = sleeper(&rt, "cp-run").await;
    sandbox.copy_in(&sample()[..], "/tmp").await.unwrap();
    let stat = sandbox.stat("/tmp/d/run.sh").await.unwrap();
    assert_eq!(
        (stat.kind, stat.mode, stat.size),
        (FileKind::File, 0o755, 18)
    );
    assert_eq!(stat.mtime.timestamp() as u64, MTIME);
    let dir = sandbox.stat("/tmp/d").await.unwrap();
    assert_eq!((dir.kind, dir.mode), (FileKind::Dir, 0o750));
    assert_eq!(
        dir.mtime.timestamp() as u64,
        MTIME,
        "a directory keeps its time"
    );
    // The sandbox's own user owns what was copied in (its root, inside).
    assert_eq!(
        sh_out(&sandbox, "stat -c %u:%g /tmp/d/secret; /tmp/d/run.sh").await,
        "0:0\nhi\n"
    );

    // A directory comes out as its top entry, a file by its basename.
    let tar = read_all(sandbox.copy_out("/tmp/d").await.unwrap()).await;
    let mut got = entries(&tar);
    got.sort();
    let names: Vec<_> = got.iter().map(|(n, m, _, _)| (n.as_str(), *m)).collect();
    assert_eq!(
        names,
        [("d/", 0o750), ("d/run.sh", 0o755), ("d/secret", 0o600)]
    );
    assert!(got.iter().all(|(_, _, t, _)| *t == MTIME));
    assert_eq!(got[2].3, b"s3cret");
    let tar = read_all(sandbox.copy_out("/tmp/top.txt").await.unwrap()).await;
    assert_eq!(
        entries(&tar),
        [("top.txt".into(), 0o644, MTIME, b"top\n".to_vec())]
    );

    // No exec.log lines, no sessions counted.
    let logs = sandbox.logs(&Default::default()).await.unwrap();
    assert!(
        logs.iter()
            .all(|e| !String::from_utf8_lossy(&e.data).contains("s3cret")),
        "file operations write nothing to exec.log"
    );
    sandbox.kill().await.unwrap();
}

#[tokio::test]
async fn copy_in_and_out_of_a_stopped_sandbox_through_its_layers() {
    let (_home, rt) = runtime().await;
    let config = SandboxConfig::new("cp-stopped", "sh")
        .args(["-c", "cat /data/d/secret 2>/dev/null || echo missing"]);
    let sandbox = rt.create(config).await.unwrap();
    sandbox.wait_until_stopped().await.unwrap();
    let handle = rt.get("cp-stopped").await.unwrap();
    let runs = rt.runs("cp-stopped").await.unwrap().len();
    let lines = sandbox.logs(&Default::default()).await.unwrap().len();

    handle.mkdir("/data", false).await.unwrap();
    handle.copy_in(&sample()[..], "/data").await.unwrap();
    let stat = handle.stat("/data/d/run.sh").await.unwrap();
    assert_eq!((stat.mode, stat.mtime.timestamp() as u64), (0o755, MTIME));
    let tar = read_all(handle.copy_out("/data/d/secret").await.unwrap()).await;
    assert_eq!(
        entries(&tar),
        [("secret".into(), 0o600, MTIME, b"s3cret".to_vec())]
    );

    // Operations at once take turns on the layers.
    let (a, b) = tokio::join!(
        handle.write_file("/data/a", b"a", 0o600),
        handle.write_file("/data/b", b"b", 0o600)
    );
    a.unwrap();
    b.unwrap();
    assert_eq!(handle.read_file("/data/b").await.unwrap(), b"b");

    // Nothing of the sandbox's records moved.
    let after = rt.get("cp-stopped").await.unwrap();
    assert_eq!(after.status_snapshot(), SandboxStatus::Stopped);
    assert_eq!(
        rt.runs("cp-stopped").await.unwrap().len(),
        runs,
        "no run row"
    );
    let now = sandbox.logs(&Default::default()).await.unwrap().len();
    assert_eq!(now, lines, "no exec.log lines");

    // The next run sees what was copied in: it is in the writable layer.
    let second = rt.start("cp-stopped").await.unwrap();
    second.wait_until_stopped().await.unwrap();
    assert_eq!(common::stdout_of(&second).await, "missing\ns3cret");
}

#[tokio::test]
async fn the_file_api_on_a_running_sandbox() {
    let (_home, rt) = runtime().await;
    let sandbox = sleeper(&rt, "api").await;
    sandbox.mkdir("/tmp/a/b/c", true).await.unwrap();
    sandbox.mkdir("/tmp/a/b/c", true).await.unwrap();
    assert!(matches!(
        sandbox.mkdir("/tmp/a", false).await,
        Err(Error::FileExists { path, .. }) if path == "/tmp/a"
    ));
    sandbox
        .write_file("/tmp/a/f", b"hello", 0o640)
        .await
        .unwrap();
    assert_eq!(sandbox.read_file("/tmp/a/f").await.unwrap(), b"hello");
    let listed = sandbox.list("/tmp/a").await.unwrap();
    let summary: Vec<_> = listed
        .iter()
        .map(|e| (e.name.as_str(), e.kind, e.mode))
        .collect();
    assert_eq!(
        summary,
        [("b", FileKind::Dir, 0o755), ("f", FileKind::File, 0o640)]
    );
    assert_eq!(listed[1].size, 5);
    assert_eq!(sh_out(&sandbox, "cat /tmp/a/f").await, "hello");

    assert!(matches!(
        sandbox.read_file("/tmp/nope").await,
        Err(Error::FileNotFound { path, .. }) if path == "/tmp/nope"
    ));
    assert!(matches!(
        sandbox.list("/tmp/a/f").await,
        Err(Error::NotADirectory { path, .. }) if path == "/tmp/a/f"
    ));
    assert!(matches!(
        sandbox.read_file("/tmp/a").await,
        Err(Error::IsADirectory { .. })
    ));
    assert!(matches!(
        sandbox.remove("/tmp/a", false).await,
        Err(Error::IsADirectory { path, .. }) if path == "/tmp/a"
    ));
    sandbox.remove("/tmp/a/f", false).await.unwrap();
    sandbox.remove("/tmp/a", true).await.unwrap();
    assert!(matches!(
        sandbox.stat("/tmp/a").await,
        Err(Error::FileNotFound { .. })
    ));
    // The sandbox's read-only system directories stay read-only.
    assert!(matches!(
        sandbox
            .write_file("/proc/sys/kernel/hostname", b"x", 0o644)
            .await,
        Err(Error::FileOperationFailed { .. })
    ));
    sandbox.kill().await.unwrap();
}

#[tokio::test]
async fn file_operations_run_as_the_sandbox_user() {
    let (_home, rt) = runtime().await;
    let mut config = SandboxConfig::new("as-user", "sleep").args(["1000"]);
    config.user = Some("1000:1000".into());
    let sandbox = rt.create(config).await.unwrap();
    // Not root inside: /etc is not the user's to write.
    assert!(matches!(
        sandbox.write_file("/etc/owned", b"x", 0o644).await,
        Err(Error::FileOperationFailed { .. })
    ));
    sandbox.write_file("/tmp/mine", b"x", 0o644).await.unwrap();
    assert_eq!(
        sh_out(&sandbox, "stat -c %u:%g /tmp/mine").await,
        "1000:1000\n"
    );
    sandbox.kill().await.unwrap();
}

/// An archive entry with `..` is refused; nothing reaches the host.
#[tokio::test]
async fn an_entry_with_dotdot_is_refused() {
    let host = HostDir::new();
    let (_home, rt) = runtime().await;
    let sandbox = sleeper(&rt, "dotdot").await;
    let name = format!("../../../../../../../../{}/x", host.rel());
    let tar = archive(|b| {
        raw_entry(
            b,
            name.as_bytes(),
            tar::EntryType::Regular,
            None,
            0o644,
            b"x",
        );
    });
    let err = sandbox.copy_in(&tar[..], "/tmp").await.unwrap_err();
    assert!(
        matches!(&err, Error::PathEscapes { path, .. } if *path == name),
        "{err}"
    );
    host.assert_untouched();
    sandbox.kill().await.unwrap();
}

/// An absolute entry lands below the destination.
#[tokio::test]
async fn an_absolute_entry_is_confined_to_the_destination() {
    let host = HostDir::new();
    let (_home, rt) = runtime().await;
    let sandbox = sleeper(&rt, "absolute").await;
    let name = format!("{}/abs", host.path.display());
    let tar = archive(|b| {
        raw_entry(
            b,
            name.as_bytes(),
            tar::EntryType::Regular,
            None,
            0o644,
            b"abs",
        );
    });
    sandbox.copy_in(&tar[..], "/tmp/dest").await.unwrap_err();
    sandbox.mkdir("/tmp/dest", false).await.unwrap();
    sandbox.copy_in(&tar[..], "/tmp/dest").await.unwrap();
    let inside = format!("/tmp/dest{}", name);
    assert_eq!(sandbox.read_file(&inside).await.unwrap(), b"abs");
    host.assert_untouched();
    sandbox.kill().await.unwrap();
}

/// A symlink entry to `/`, then a file "under" it: the link resolves with
/// the destination as root.
#[tokio::test]
async fn a_symlink_entry_to_the_root_cannot_lead_out() {
    let host = HostDir::new();
    let (_home, rt) = runtime().await;
    let sandbox = sleeper(&rt, "symlink").await;
    let through = format!("link/{}/through", host.rel());
    let tar = archive(|b| {
        raw_entry(b, b"link", tar::EntryType::Symlink, Some(b"/"), 0o777, b"");
        raw_entry(
            b,
            through.as_bytes(),
            tar::EntryType::Regular,
            None,
            0o644,
            b"t",
        );
    });
    sandbox.mkdir("/tmp/dest", false).await.unwrap();
    sandbox.copy_in(&tar[..], "/tmp/dest").await.unwrap();
    let inside = format!("/tmp/dest/{}/through", host.rel());
    assert_eq!(sandbox.read_file(&inside).await.unwrap(), b"t");
    assert_eq!(
        sandbox.stat("/tmp/dest/link").await.unwrap().kind,
        FileKind::Symlink
    );
    host.assert_untouched();
    sandbox.kill().await.unwrap();
}

/// A hard link to a host file (by absolute path, and by `..`), then data
/// written to the link's name: nothing of the host is linked or written.
#[tokio::test]
async fn a_hard_link_to_a_host_file_is_refused() {
    let host = HostDir::new();
    let (_home, rt) = runtime().await;
    let sandbox = sleeper(&rt, "hardlink").await;
    let secret = format!("{}/secret", host.path.display());
    let tar = archive(|b| {
        raw_entry(
            b,
            b"hl",
            tar::EntryType::Link,
            Some(secret.as_bytes()),
            0o644,
            b"",
        );
        raw_entry(b, b"hl", tar::EntryType::Regular, None, 0o644, b"pwned");
    });
    sandbox.mkdir("/tmp/dest", false).await.unwrap();
    let err = sandbox.copy_in(&tar[..], "/tmp/dest").await.unwrap_err();
    assert!(matches!(err, Error::FileNotFound { .. }), "{err}");
    let dotdot = format!("../../../../../../../..{secret}");
    let tar = archive(|b| {
        raw_entry(
            b,
            b"hl",
            tar::EntryType::Link,
            Some(dotdot.as_bytes()),
            0o644,
            b"",
        );
    });
    let err = sandbox.copy_in(&tar[..], "/tmp/dest").await.unwrap_err();
    assert!(matches!(err, Error::PathEscapes { .. }), "{err}");
    host.assert_untouched();
    sandbox.kill().await.unwrap();
}

/// A symlink the sandbox itself planted (`ln -s /host-path /tmp/out`), then
/// `cp file NAME:/tmp/out/`: the link resolves inside the sandbox, where
/// the host path does not exist — running and stopped alike.
#[tokio::test]
async fn a_symlink_the_sandbox_planted_resolves_inside_it() {
    let host = HostDir::new();
    let (_home, rt) = runtime().await;
    let sandbox = sleeper(&rt, "planted").await;
    let target = host.path.display().to_string();
    sh_out(
        &sandbox,
        &format!("ln -s {target} /tmp/out; mkdir /data; ln -s {target} /data/out; ln -s {target}/secret /data/secret"),
    )
    .await;
    let file = archive(|b| raw_entry(b, b"f", tar::EntryType::Regular, None, 0o644, b"f"));
    let err = sandbox.copy_in(&file[..], "/tmp/out/").await.unwrap_err();
    assert!(matches!(err, Error::FileNotFound { .. }), "{err}");
    let err = sandbox.read_file("/data/secret").await.unwrap_err();
    assert!(matches!(err, Error::FileNotFound { .. }), "{err}");
    sandbox.kill().await.unwrap();

    // Stopped: the same links, read from the writable layer.
    let handle = rt.get("planted").await.unwrap();
    let err = handle.copy_in(&file[..], "/data/out/").await.unwrap_err();
    assert!(matches!(err, Error::FileNotFound { .. }), "{err}");
    let err = handle.copy_out("/data/secret/").await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::FileNotFound { .. } | Error::NotADirectory { .. }
        ),
        "{err}"
    );
    host.assert_untouched();
}

/// The resident memory of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// A 1 GiB copy both ways streams under flow control: this process's
/// memory grows by far less than the copy.
#[tokio::test]
async fn a_large_copy_streams_both_ways() {
    const SIZE: u64 = 1 << 30;
    let (_home, rt) = runtime().await;
    let sandbox = sleeper(&rt, "large").await;
    // The archive is made as it is read: a header, then zeros.
    let mut header = tar::Header::new_gnu();
    header.set_path("big").unwrap();
    header.set_size(SIZE);
    header.set_mode(0o600);
    header.set_cksum();
    let head = header.as_bytes().to_vec();
    let body = tokio::io::repeat(0).take(SIZE);
    let tail = std::io::Cursor::new(vec![0u8; 1024]);
    let stream = AsyncReadExt::chain(AsyncReadExt::chain(std::io::Cursor::new(head), body), tail);
    sandbox.mkdir("/data", false).await.unwrap();
    let before = rss();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    sandbox.copy_in(stream, "/data").await.unwrap();
    assert_eq!(sandbox.stat("/data/big").await.unwrap().size, SIZE);
    let mut out = sandbox.copy_out("/data/big").await.unwrap();
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = out.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    assert!(total > SIZE, "the whole file came out ({total} bytes)");
    sampler.abort();
    let grown = peak
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(before);
    println!(
        "resident memory grew by {} MiB during 1 GiB in and out",
        grown >> 20
    );
    assert!(grown < 128 << 20, "grew by {grown} bytes");
    // A stream dropped mid-way ends its operation (no process is left).
    let mut partial = sandbox.copy_out("/data/big").await.unwrap();
    let _ = partial.read(&mut buf).await.unwrap();
    drop(partial);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let left = "for p in /proc/[0-9]*; do [ $p = /proc/1 ] || grep -qx sandvisor-agent $p/comm 2>/dev/null && echo $p; done | grep -vc /proc/1$ || true";
    assert_eq!(sh_out(&sandbox, left).await.trim(), "0");
    sandbox.kill().await.unwrap();
}

/// A fifo or a link to `/dev/zero` planted where the host reads a file:
/// refused at once, neither a hang nor an endless stream.
#[tokio::test(flavor = "multi_thread")]
async fn reading_a_planted_fifo_or_device_is_refused() {
    let (_home, rt) = runtime().await;
    let sandbox = sleeper(&rt, "planted").await;
    sh_out(&sandbox, "mkfifo /tmp/fifo; ln -s /dev/zero /tmp/zero").await;
    for path in ["/tmp/fifo", "/tmp/zero"] {
        let read = tokio::time::timeout(Duration::from_secs(10), sandbox.read_file(path))
            .await
            .unwrap_or_else(|_| panic!("read_file({path}) returned within 10 s"));
        assert!(read.is_err(), "{path}: {read:?}");
    }
    sandbox.kill().await.unwrap();
}
