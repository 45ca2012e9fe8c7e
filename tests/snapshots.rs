//! Snapshots (issue 15): taken of stopped sandboxes, moved to a fresh home,
//! started there; refused while running; corrupt archives refused whole.

#[path = "common/cli.rs"]
mod cli;
mod common;
#[path = "common/image.rs"]
mod image_kit;

use common::{runtime, stdout_of};
use image_kit::{busybox_layer, layout, Entry, RunConfig};
use sandvisor::{Error, SandboxConfig};

async fn run_to_end(rt: &sandvisor::Sandvisor, config: SandboxConfig) -> String {
    let sandbox = rt.create(config).await.unwrap();
    sandbox.wait_until_stopped().await.unwrap();
    stdout_of(&sandbox).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_moves_a_sandbox_s_files_to_a_fresh_home() {
    let (_home, rt) = runtime().await;
    // Host base: files in /root, a setuid file, a link, a deleted host
    // file (a whiteout in the writable layer), an emptied directory.
    run_to_end(
        &rt,
        SandboxConfig::shell(
            "source",
            "mkdir -p /root/work/sub && echo data > /root/work/file && chmod 640 /root/work/file \
             && echo tool > /root/work/tool && chmod 4755 /root/work/tool \
             && ln -s file /root/work/link && ln /root/work/file /root/work/hard \
             && chown 1000:1000 /root/work/sub && rm /etc/debian_version",
        ),
    )
    .await;
    let handle = rt.get("source").await.unwrap();
    let stored = handle.snapshot("snap").await.unwrap();
    assert_eq!(stored.manifest.sandbox, "source");
    assert_eq!(rt.snapshots().list().unwrap().len(), 1);
    match handle.snapshot("snap").await {
        Err(Error::SnapshotExists(name)) => assert_eq!(name, "snap"),
        other => panic!("expected SnapshotExists, got {other:?}"),
    }
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("snap.tar.zst");
    rt.snapshots().export("snap", &archive).await.unwrap();

    let (_other_home, other) = runtime().await;
    let imported = other
        .snapshots()
        .import(&archive, Some("moved"))
        .await
        .unwrap();
    assert_eq!(imported.manifest.name, "moved");
    let out = run_to_end(
        &other,
        SandboxConfig {
            from_snapshot: Some("moved".into()),
            ..SandboxConfig::shell(
                "restored",
                "cat /root/work/file /root/work/link; stat -c '%a %u' /root/work/file /root/work/tool /root/work/sub; \
                 stat -c %h /root/work/hard; test -e /etc/debian_version && echo present || echo gone",
            )
        },
    )
    .await;
    assert_eq!(
        out, "data\ndata\n640 0\n4755 0\n755 1000\n2\ngone\n",
        "{out}"
    );
    // Straight from the file, with the snapshot's own command.
    let first = run_to_end(
        &other,
        SandboxConfig {
            from_snapshot: Some(archive.to_str().unwrap().into()),
            ..SandboxConfig::new("from-file", "")
        },
    )
    .await;
    assert_eq!(
        first, "",
        "the snapshot's command ran again (it prints nothing)"
    );
    let inspected = other.get("from-file").await.unwrap().config().unwrap();
    let source = rt.get("source").await.unwrap().config().unwrap();
    assert_eq!(
        (inspected.command, inspected.args),
        (source.command, source.args),
        "the snapshot's command and arguments"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_sandbox_is_not_snapshotted() {
    let (_home, rt) = runtime().await;
    let sandbox = rt
        .create(SandboxConfig::new("busy", "sleep").args(["30"]))
        .await
        .unwrap();
    let handle = rt.get("busy").await.unwrap();
    match handle.snapshot("nope").await {
        Err(Error::SnapshotSandboxRunning(name)) => assert_eq!(name, "busy"),
        other => panic!("expected SnapshotSandboxRunning, got {other:?}"),
    }
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        handle.snapshot_to(dir.path().join("x")).await,
        Err(Error::SnapshotSandboxRunning(_))
    ));
    assert!(rt.snapshots().list().unwrap().is_empty());
    assert!(!dir.path().join("x").exists());
    sandbox.kill().await.unwrap();
    // Stopped now (Killed): it can be.
    handle.snapshot_to(dir.path().join("x")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_sandbox_snapshot_needs_its_image_and_corrupt_archives_are_refused() {
    let mut base = busybox_layer();
    base.push(Entry::File(
        "app/state".into(),
        b"initial\n".to_vec(),
        0o644,
    ));
    let image = layout(
        &[base],
        &RunConfig {
            cmd: vec!["cat".into(), "/app/state".into()],
            env: vec!["PATH=/bin".into()],
            ..RunConfig::default()
        },
        "v1",
    );
    let (_home, rt) = runtime().await;
    rt.images()
        .load(std::io::Cursor::new(image.tar()))
        .await
        .unwrap();
    run_to_end(
        &rt,
        SandboxConfig::new("app", "sh")
            .args(["-c", "echo changed > /app/state"])
            .image(&image.id),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("app.tar.zst");
    let written = rt
        .get("app")
        .await
        .unwrap()
        .snapshot_to(&archive)
        .await
        .unwrap();
    assert_eq!(written.manifest.image.as_ref().unwrap().id, image.id);

    let (_other_home, other) = runtime().await;
    let missing = other
        .create(SandboxConfig {
            from_snapshot: Some(archive.to_str().unwrap().into()),
            ..SandboxConfig::new("copy", "cat").args(["/app/state"])
        })
        .await;
    assert!(matches!(
        missing.map(|s| s.name().to_string()),
        Err(Error::ImageNotFound(_))
    ));
    assert!(other.list().await.unwrap().is_empty(), "nothing recorded");
    other
        .images()
        .load(std::io::Cursor::new(image.tar()))
        .await
        .unwrap();
    let out = run_to_end(
        &other,
        SandboxConfig {
            from_snapshot: Some(archive.to_str().unwrap().into()),
            ..SandboxConfig::new("copy", "cat").args(["/app/state"])
        },
    )
    .await;
    assert_eq!(out, "changed\n");

    // One byte flipped anywhere: refused whole, nothing stored or created.
    let bytes = std::fs::read(&archive).unwrap();
    for at in [bytes.len() / 3, bytes.len() / 2, bytes.len() - 20] {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x55;
        let bad = dir.path().join(format!("bad-{at}.tar.zst"));
        std::fs::write(&bad, damaged).unwrap();
        assert!(
            matches!(
                other.snapshots().import(&bad, Some("bad")).await,
                Err(Error::SnapshotCorrupt { .. })
            ),
            "damage at {at} is found"
        );
        let created = other
            .create(SandboxConfig {
                from_snapshot: Some(bad.to_str().unwrap().into()),
                ..SandboxConfig::new("bad", "true")
            })
            .await;
        assert!(
            matches!(
                created.map(|s| s.name().to_string()),
                Err(Error::SnapshotCorrupt { .. })
            ),
            "damage at {at} refused at create"
        );
    }
    assert!(other.snapshots().list().unwrap().is_empty());
    assert!(other.get("bad").await.is_err());
    assert!(matches!(
        other.snapshots().get("absent"),
        Err(Error::SnapshotNotFound(_))
    ));
}

#[test]
fn snapshots_from_the_command_line() {
    let cli = cli::Cli::new();
    cli.ok(&[
        "run",
        "--name",
        "src",
        "--",
        "sh",
        "-c",
        "echo kept > /root/note",
    ]);
    assert_eq!(cli.ok(&["snapshot", "create", "src", "s1"]), "s1\n");
    assert!(cli
        .ok(&["snapshot", "ls"])
        .lines()
        .any(|l| l.starts_with("s1 ") && l.contains("src")));
    let file = cli.home().join("s1.tar.zst");
    cli.ok(&["snapshot", "export", "s1", file.to_str().unwrap()]);
    assert_eq!(
        cli.ok(&["snapshot", "import", file.to_str().unwrap(), "--name", "s2"]),
        "s2\n"
    );
    assert_eq!(
        cli.ok(&[
            "run",
            "--rm",
            "--from-snapshot",
            "s2",
            "--",
            "cat",
            "/root/note"
        ]),
        "kept\n"
    );
    cli.ok(&["snapshot", "rm", "s1", "s2"]);
    assert_eq!(cli.ok(&["snapshot", "ls", "--json"]).trim(), "[]");
    let refused = cli.run(&["snapshot", "create", "absent", "s3"]);
    assert_eq!(refused.status.code(), Some(1));
}

/// Rewrites the snapshot archive at `path`: its manifest through `manifest`
/// and its layer replaced by `upper` (the digest fixed), as an attacker
/// would make one.
fn forge(
    path: &std::path::Path,
    manifest: impl Fn(&mut serde_json::Value),
    upper: Option<Vec<u8>>,
) {
    use std::io::Read;
    let mut archive =
        tar::Archive::new(zstd::Decoder::new(std::fs::File::open(path).unwrap()).unwrap());
    let mut parts = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        parts.push(bytes);
    }
    let mut meta: serde_json::Value = serde_json::from_slice(&parts[0]).unwrap();
    if let Some(upper) = upper {
        meta["upper_digest"] = image_kit::digest(&upper).into();
        meta["upper_bytes"] = upper.len().into();
        parts[1] = upper;
    }
    manifest(&mut meta);
    parts[0] = serde_json::to_vec(&meta).unwrap();
    let mut out = tar::Builder::new(
        zstd::Encoder::new(std::fs::File::create(path).unwrap(), 3)
            .unwrap()
            .auto_finish(),
    );
    for (name, bytes) in ["manifest.json", "upper.tar"].iter().zip(&parts) {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        out.append_data(&mut header, name, &bytes[..]).unwrap();
    }
    out.into_inner().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_snapshot_cannot_reach_host_paths() {
    let (_home, rt) = runtime().await;
    run_to_end(&rt, SandboxConfig::shell("honest", "echo hi > /root/file")).await;
    let dir = tempfile::tempdir().unwrap();
    let honest = dir.path().join("honest.tar.zst");
    rt.get("honest")
        .await
        .unwrap()
        .snapshot_to(&honest)
        .await
        .unwrap();

    // 1. A manifest naming a host directory as the root: never taken.
    let rootfs = dir.path().join("rootfs.tar.zst");
    std::fs::copy(&honest, &rootfs).unwrap();
    forge(&rootfs, |m| m["config"]["rootfs"] = "/".into(), None);
    let created = rt
        .create(SandboxConfig {
            from_snapshot: Some(rootfs.to_str().unwrap().into()),
            ..SandboxConfig::new("rootfs", "cat").args(["/etc/shadow"])
        })
        .await;
    match created.map(|s| s.name().to_string()) {
        Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, "rootfs"),
        other => panic!("expected InvalidConfig(rootfs), got {other:?}"),
    }

    // 2. A layer whose top-level `usr` is a link to a host directory.
    let target = tempfile::tempdir().unwrap();
    std::fs::create_dir(target.path().join("bin")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(target.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let upper = image_kit::layer_tar(&vec![
        Entry::Dir("root"),
        Entry::Symlink("usr".into(), target.path().to_str().unwrap().into()),
    ]);
    let linked = dir.path().join("linked.tar.zst");
    std::fs::copy(&honest, &linked).unwrap();
    forge(&linked, |_| {}, Some(upper));
    let created = rt
        .create(SandboxConfig {
            from_snapshot: Some(linked.to_str().unwrap().into()),
            ..SandboxConfig::shell("linked", "echo pwned > /usr/bin/zstd")
        })
        .await;
    assert!(
        matches!(
            created.map(|s| s.name().to_string()),
            Err(Error::SnapshotCorrupt { .. })
        ),
        "a top-level link is refused"
    );
    let mode = std::fs::metadata(target.path())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700, "the host directory's mode is untouched");
    assert!(!target.path().join("bin/zstd").exists());
    assert!(rt.get("linked").await.is_err(), "nothing recorded");

    // 3. A PAX header claiming gigabytes (the tar crate would read it all).
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::XHeader);
    header.set_size(2 << 30);
    header.set_cksum();
    let mut bomb = header.as_bytes().to_vec();
    bomb.resize(bomb.len() + (1 << 20), 0);
    let bomb_path = dir.path().join("bomb.tar.zst");
    std::fs::copy(&honest, &bomb_path).unwrap();
    forge(&bomb_path, |_| {}, Some(bomb.clone()));
    assert!(matches!(
        rt.create(SandboxConfig {
            from_snapshot: Some(bomb_path.to_str().unwrap().into()),
            ..SandboxConfig::new("bomb", "true")
        })
        .await
        .map(|s| s.name().to_string()),
        Err(Error::SnapshotCorrupt { .. })
    ));
    assert!(matches!(
        rt.images().load(std::io::Cursor::new(bomb)).await,
        Err(Error::ImageCorrupt { .. })
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sparse_file_stays_small_in_the_snapshot() {
    let (_home, rt) = runtime().await;
    run_to_end(
        &rt,
        SandboxConfig::shell("sparse", "truncate -s 512M /root/big"),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sparse.tar.zst");
    let taken = rt
        .get("sparse")
        .await
        .unwrap()
        .snapshot_to(&path)
        .await
        .unwrap();
    assert!(taken.manifest.upper_bytes > 512 << 20);
    assert!(
        taken.bytes < 4 << 20,
        "the archive takes {} bytes",
        taken.bytes
    );
}
