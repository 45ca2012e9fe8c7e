//! Images end to end (issue 15): images built here, pushed to a real
//! registry on loopback (`docker-registry`), pulled and loaded by
//! sandvisor, run in real sandboxes.

mod common;
#[path = "common/image.rs"]
mod image_kit;
#[path = "common/tmpfs.rs"]
mod tmpfs;

use std::path::Path;

use common::{runtime, stdout_of};
use image_kit::{busybox_layer, layout, Entry, Registry, RunConfig};
use sandvisor::{Error, PullOptions, SandboxConfig};

/// Two layers: busybox and files, then a layer that deletes one file,
/// empties a directory (opaque) and adds a file.
fn two_layer_image() -> image_kit::Layout {
    let mut base = busybox_layer();
    base.extend([
        Entry::Dir("data"),
        Entry::File("data/kept".into(), b"kept\n".to_vec(), 0o644),
        Entry::File("data/deleted".into(), b"deleted\n".to_vec(), 0o644),
        Entry::Dir("cache"),
        Entry::File("cache/old".into(), b"old\n".to_vec(), 0o644),
        Entry::File(
            "bin/tool".into(),
            b"#!/bin/sh\necho tool ran\n".to_vec(),
            0o4755,
        ),
    ]);
    let top = vec![
        Entry::Whiteout("data/deleted"),
        Entry::Dir("cache"),
        Entry::Opaque("cache"),
        Entry::File("cache/new".into(), b"new\n".to_vec(), 0o600),
        Entry::File("data/added".into(), b"added\n".to_vec(), 0o640),
    ];
    layout(
        &[base, top],
        &RunConfig {
            env: vec!["GREETING=hello from the image".into(), "PATH=/bin".into()],
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "echo $GREETING; pwd; ls /data; ls /cache; id -u".into(),
            ],
            working_dir: Some("/data".into()),
            ..RunConfig::default()
        },
        "v1",
    )
}

async fn run_to_end(rt: &sandvisor::Sandvisor, config: SandboxConfig) -> String {
    let sandbox = rt.create(config).await.unwrap();
    sandbox.wait_until_stopped().await.unwrap();
    stdout_of(&sandbox).await
}

fn layer_count(home: &Path) -> usize {
    std::fs::read_dir(home.join("images/layers/sha256"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

fn work_count(home: &Path) -> usize {
    std::fs::read_dir(home.join("images/tmp"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pulled_image_runs_with_its_config_and_its_whiteouts() {
    let registry = Registry::start();
    let image = two_layer_image();
    registry.push(&image, "v1", "tests/app:v1");
    let (home, rt) = runtime().await;
    let pulled = rt
        .images()
        .pull(&registry.name("tests/app:v1"), &PullOptions::default())
        .await
        .unwrap();
    assert_eq!(pulled.id, image.id);
    assert_eq!(pulled.layers.len(), 2);
    assert_eq!(pulled.references, vec![registry.name("tests/app:v1")]);
    assert_eq!(layer_count(home.path()), 2);
    assert_eq!(work_count(home.path()), 0, "no work directory left");

    // The image's command, environment and working directory.
    let out = run_to_end(
        &rt,
        SandboxConfig::new("app", "").image(registry.name("tests/app:v1")),
    )
    .await;
    assert_eq!(
        out, "hello from the image\n/data\nadded\nkept\nnew\n0\n",
        "{out}"
    );

    // A command given replaces Cmd; the sandbox's env wins over the image's.
    let out = run_to_end(
        &rt,
        SandboxConfig::new("own", "sh")
            .args(["-c", "echo $GREETING; stat -c '%a %u' /data/added /bin/tool; cat /data/deleted 2>&1 || echo gone"])
            .env("GREETING", "mine")
            .image(registry.name("tests/app:v1")),
    )
    .await;
    assert_eq!(
        out,
        "mine\n640 0\n4755 0\ncat: can't open '/data/deleted': No such file or directory\ngone\n",
        "{out}"
    );

    // Writes land in the sandbox's own layer: the image is unchanged for
    // the next sandbox.
    let out = run_to_end(
        &rt,
        SandboxConfig::new("writer", "sh")
            .args([
                "-c",
                "echo changed > /data/kept; rm /data/added; cat /data/kept",
            ])
            .image(registry.name("tests/app:v1")),
    )
    .await;
    assert_eq!(out, "changed\n");
    let out = run_to_end(
        &rt,
        SandboxConfig::new("reader", "sh")
            .args(["-c", "cat /data/kept /data/added"])
            .image(registry.name("tests/app:v1")),
    )
    .await;
    assert_eq!(out, "kept\nadded\n");
    let again = rt
        .images()
        .pull(&registry.name("tests/app:v1"), &PullOptions::default())
        .await
        .unwrap();
    assert_eq!(again.id, pulled.id);
    assert_eq!(layer_count(home.path()), 2, "nothing unpacked twice");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_image_user_is_looked_up_in_its_passwd() {
    let image = layout(
        &[busybox_layer()],
        &RunConfig {
            cmd: vec!["id".into()],
            user: Some("app".into()),
            ..RunConfig::default()
        },
        "v1",
    );
    let (_home, rt) = runtime().await;
    let loaded = rt
        .images()
        .load(std::io::Cursor::new(image.tar()))
        .await
        .unwrap();
    assert_eq!(loaded.len(), 1);
    // A bare tag names no repository: stored by id.
    assert!(
        loaded[0].references.is_empty(),
        "{:?}",
        loaded[0].references
    );
    let out = run_to_end(&rt, SandboxConfig::new("as-app", "").image(&image.id)).await;
    assert_eq!(out, "uid=1000(app) gid=1000(app)\n", "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_layer_is_refused_and_nothing_is_stored() {
    let registry = Registry::start();
    let image = two_layer_image();
    registry.push(&image, "v1", "tests/tampered:v1");
    // Flip a byte of the top layer's blob in the registry's storage.
    let blob = registry.blob(&image.layers[1]);
    let mut bytes = std::fs::read(&blob).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let (home, rt) = runtime().await;
    let result = rt
        .images()
        .pull(&registry.name("tests/tampered:v1"), &PullOptions::default())
        .await;
    match result {
        Err(Error::ImageCorrupt { digest, .. }) => assert_eq!(digest, image.layers[1]),
        other => panic!("expected ImageCorrupt, got {other:?}"),
    }
    assert!(rt.images().list().await.unwrap().is_empty());
    assert_eq!(work_count(home.path()), 0, "no work directory left");
    // The base layer may be in place (unpacked and verified), but no image
    // names it: a prune removes it.
    let pruned = rt.images().prune(false).await.unwrap();
    assert!(pruned.layers.len() <= 1);
    assert_eq!(layer_count(home.path()), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_save_archives_and_oci_layouts_load() {
    let image = two_layer_image();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("saved.tar");
    image_kit::docker_archive(&image, "v1", "example.com/saved:v2", &archive);
    let (home, rt) = runtime().await;
    let loaded = rt
        .images()
        .load(std::fs::File::open(&archive).unwrap())
        .await
        .unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].id, image.id);
    assert_eq!(
        loaded[0].references,
        vec!["example.com/saved:v2".to_string()]
    );
    let out = run_to_end(
        &rt,
        SandboxConfig::new("saved", "cat")
            .args(["/data/added"])
            .image("example.com/saved:v2"),
    )
    .await;
    assert_eq!(out, "added\n");
    // The same image as an OCI layout: nothing new to unpack.
    let again = rt
        .images()
        .load(std::io::Cursor::new(image.tar()))
        .await
        .unwrap();
    assert_eq!(again[0].id, image.id);
    assert_eq!(layer_count(home.path()), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_in_use_is_kept_and_prune_frees_what_nothing_uses() {
    let image = two_layer_image();
    let (home, rt) = runtime().await;
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("a.tar");
    image_kit::docker_archive(&image, "v1", "example.com/used:v1", &archive);
    rt.images()
        .load(std::fs::File::open(&archive).unwrap())
        .await
        .unwrap();
    run_to_end(
        &rt,
        SandboxConfig::new("user", "true").image("example.com/used:v1"),
    )
    .await;
    match rt.images().remove("example.com/used:v1").await {
        Err(Error::ImageInUse(name)) => assert_eq!(name, "example.com/used:v1"),
        other => panic!("expected ImageInUse, got {other:?}"),
    }
    match rt.images().remove(&image.id).await {
        Err(Error::ImageInUse(_)) => {}
        other => panic!("expected ImageInUse, got {other:?}"),
    }
    let pruned = rt.images().prune(true).await.unwrap();
    assert!(pruned.deleted.is_empty(), "{pruned:?}");
    assert_eq!(layer_count(home.path()), 2);
    // The sandbox keeps working (its start needs the layers).
    rt.start("user")
        .await
        .unwrap()
        .wait_until_stopped()
        .await
        .unwrap();

    rt.remove("user").await.unwrap();
    let removed = rt.images().remove("example.com/used:v1").await.unwrap();
    assert_eq!(removed.deleted, vec![image.id.clone()]);
    assert_eq!(removed.layers.len(), 2);
    assert_eq!(layer_count(home.path()), 0);
    assert!(matches!(
        rt.images().inspect("example.com/used:v1").await,
        Err(Error::ImageNotFound(_))
    ));
    match rt
        .create(SandboxConfig::new("late", "true").image("example.com/used:v1"))
        .await
    {
        Err(Error::ImageNotFound(_)) => {}
        other => panic!(
            "expected ImageNotFound, got {:?}",
            other.map(|s| s.name().to_string())
        ),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_references_registries_and_archives_get_typed_errors() {
    let registry = Registry::start();
    let (home, rt) = runtime().await;
    let images = rt.images();
    let options = PullOptions::default();
    assert!(matches!(
        images.pull("Not A Reference", &options).await,
        Err(Error::InvalidConfig { .. })
    ));
    assert!(matches!(
        images
            .pull(&registry.name("tests/absent:v1"), &options)
            .await,
        Err(Error::Registry { .. })
    ));
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    match images
        .pull(&format!("127.0.0.1:{closed}/tests/app:v1"), &options)
        .await
    {
        Err(Error::Registry { reference, .. }) => {
            assert_eq!(reference, format!("127.0.0.1:{closed}/tests/app:v1"))
        }
        other => panic!("expected Registry, got {other:?}"),
    }
    for garbage in [
        b"not a tar at all".to_vec(),
        vec![0u8; 4096],
        image_kit::layer_tar(&vec![Entry::File("x".into(), b"x".to_vec(), 0o644)]),
    ] {
        assert!(
            matches!(
                images.load(std::io::Cursor::new(garbage)).await,
                Err(Error::ImageCorrupt { .. })
            ),
            "garbage is refused"
        );
    }
    // An OCI layout whose layer blob does not match its digest.
    let image = two_layer_image();
    std::fs::write(image.blob(&image.layers[0]), b"tampered").unwrap();
    assert!(matches!(
        images.load(std::io::Cursor::new(image.tar())).await,
        Err(Error::ImageCorrupt { .. })
    ));
    assert!(images.list().await.unwrap().is_empty());
    assert_eq!(work_count(home.path()), 0);
    assert!(matches!(
        rt.create(SandboxConfig::new("nothing", "true").image("absent:v1"))
            .await
            .map(|s| s.name().to_string()),
        Err(Error::ImageNotFound(_))
    ));
    assert!(matches!(
        rt.create(SandboxConfig {
            rootfs: Some("/".into()),
            ..SandboxConfig::new("both", "true").image("absent:v1")
        })
        .await
        .map(|s| s.name().to_string()),
        Err(Error::InvalidConfig { .. })
    ));
    assert!(rt.list().await.unwrap().is_empty(), "nothing was recorded");
}

#[tokio::test(flavor = "multi_thread")]
async fn layers_that_reach_outside_are_refused() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().to_str().unwrap().to_string();
    let secret = outside.path().join("secret");
    std::fs::write(&secret, b"host secret\n").unwrap();
    let attacks: Vec<Vec<Entry>> = vec![
        vec![
            Entry::Symlink("escape".into(), target.clone()),
            Entry::File("escape/planted".into(), b"x".to_vec(), 0o644),
        ],
        vec![Entry::HardLink(
            "stolen".into(),
            secret.to_str().unwrap().into(),
        )],
        vec![
            Entry::Symlink("escape".into(), target.clone()),
            Entry::Whiteout("escape/secret"),
        ],
    ];
    let (home, rt) = runtime().await;
    for (i, attack) in attacks.into_iter().enumerate() {
        let image = layout(&[busybox_layer(), attack], &RunConfig::default(), "v1");
        let result = rt.images().load(std::io::Cursor::new(image.tar())).await;
        assert!(
            matches!(result, Err(Error::ImageCorrupt { .. })),
            "attack {i}: {result:?}"
        );
        assert!(
            !outside.path().join("planted").exists(),
            "attack {i} wrote outside"
        );
        assert_eq!(
            std::fs::read(&secret).unwrap(),
            b"host secret\n",
            "attack {i}"
        );
    }
    assert!(rt.images().list().await.unwrap().is_empty());
    assert_eq!(work_count(home.path()), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_during_unpack_leaves_the_store_usable() {
    let registry = Registry::start();
    // A layer bigger than the disk, that gzip cannot shrink.
    let big: Vec<u8> = (0..12u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let image = layout(
        &[vec![Entry::File("big".into(), big, 0o644)]],
        &RunConfig::default(),
        "v1",
    );
    registry.push(&image, "v1", "tests/big:v1");
    let small = tmpfs::Tmpfs::mount(8 << 20);
    let home = small.path().join("home");
    let rt = sandvisor::Sandvisor::builder()
        .home(&home)
        .agent_path(env!("CARGO_BIN_EXE_sandvisor-agent"))
        .open()
        .await
        .unwrap();
    match rt
        .images()
        .pull(&registry.name("tests/big:v1"), &PullOptions::default())
        .await
    {
        Err(Error::Io { .. }) => {}
        other => panic!("expected Io, got {other:?}"),
    }
    assert!(rt.images().list().await.unwrap().is_empty());
    assert_eq!(layer_count(&home), 0);
    assert_eq!(work_count(&home), 0);
    // The store still works: a small image loads.
    let small_image = layout(
        &[vec![Entry::File("small".into(), b"small".to_vec(), 0o644)]],
        &RunConfig {
            cmd: vec!["/small".into()],
            ..RunConfig::default()
        },
        "v1",
    );
    let loaded = rt
        .images()
        .load(std::io::Cursor::new(small_image.tar()))
        .await
        .unwrap();
    assert_eq!(loaded[0].id, small_image.id);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_sandboxes_share_one_unpacked_image() {
    let image = two_layer_image();
    let (home, rt) = runtime().await;
    rt.images()
        .load(std::io::Cursor::new(image.tar()))
        .await
        .unwrap();
    let images_bytes = image_kit::disk_use(&home.path().join("images"));
    let mut sandboxes = Vec::new();
    for batch in 0..10 {
        let started = futures::future::join_all((0..10).map(|i| {
            rt.create(
                SandboxConfig::new(format!("s{batch}-{i}"), "sh")
                    .args(["-c", "echo $HOSTNAME > /data/mine; cat /data/kept"])
                    .image(&image.id),
            )
        }))
        .await;
        for sandbox in started {
            sandboxes.push(sandbox.unwrap());
        }
    }
    for sandbox in &sandboxes {
        sandbox.wait_until_stopped().await.unwrap();
        assert_eq!(stdout_of(sandbox).await, "kept\n");
    }
    assert_eq!(layer_count(home.path()), 2, "unpacked once");
    let after = image_kit::disk_use(&home.path().join("images"));
    assert_eq!(
        after, images_bytes,
        "running sandboxes wrote nothing to the image"
    );
    let sandboxes_bytes = image_kit::disk_use(&home.path().join("sandboxes"));
    println!(
        "100 sandboxes from one image: images/ {} KiB (unpacked once), sandboxes/ {} KiB in all \
         ({} KiB each: writable layer and logs)",
        after / 1024,
        sandboxes_bytes / 1024,
        sandboxes_bytes / 1024 / 100
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_multi_platform_image_resolves_to_linux_amd64() {
    let registry = Registry::start();
    let image = two_layer_image();
    image_kit::multi_platform(&image, "v1");
    registry.push_all(&image, "v1", "tests/multi:v1");
    let (_home, rt) = runtime().await;
    let pulled = rt
        .images()
        .pull(&registry.name("tests/multi:v1"), &PullOptions::default())
        .await
        .unwrap();
    assert_eq!(pulled.id, image.id, "the amd64 image");
    assert_eq!(pulled.config.architecture, "amd64");
    let (_other_home, other) = runtime().await;
    let loaded = other
        .images()
        .load(std::io::Cursor::new(image.tar()))
        .await
        .unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].id, image.id);
}
