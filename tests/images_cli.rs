//! `sandvisor image …` and `run --image` from the command line, against a
//! real registry on loopback.

#[path = "common/cli.rs"]
mod cli;
mod common;
#[path = "common/image.rs"]
mod image_kit;

use cli::Cli;
use image_kit::{busybox_layer, layout, Entry, Registry, RunConfig};
use serde_json::Value;

fn app_image() -> image_kit::Layout {
    let mut layer = busybox_layer();
    layer.push(Entry::File(
        "hello".into(),
        b"hello from the layer\n".to_vec(),
        0o644,
    ));
    layout(
        &[layer],
        &RunConfig {
            cmd: vec!["cat".into(), "/hello".into()],
            env: vec!["PATH=/bin".into()],
            ..RunConfig::default()
        },
        "v1",
    )
}

#[test]
fn pull_list_run_and_remove_from_the_command_line() {
    let registry = Registry::start();
    let image = app_image();
    registry.push(&image, "v1", "cli/app:v1");
    let name = registry.name("cli/app:v1");
    let cli = Cli::new();

    let pulled = cli.ok(&["image", "pull", "-q", &name]);
    assert_eq!(pulled.trim(), image.id);
    let table = cli.ok(&["image", "ls"]);
    let row = table.lines().find(|l| l.contains("cli/app")).unwrap();
    assert!(
        row.contains(" v1 ") && row.contains(&image.id[7..19]),
        "{table}"
    );
    let listed: Value = serde_json::from_str(&cli.ok(&["image", "ls", "--json"])).unwrap();
    assert_eq!(listed[0]["id"], image.id.as_str());
    assert_eq!(
        listed[0]["config"]["cmd"],
        serde_json::json!(["cat", "/hello"])
    );

    // The image's command, then one given after --.
    assert_eq!(
        cli.ok(&["run", "--name", "a", "--image", &name]),
        "hello from the layer\n"
    );
    assert_eq!(
        cli.ok(&[
            "run",
            "--name",
            "b",
            "--image",
            &name,
            "--",
            "sh",
            "-c",
            "echo written > /hello; cat /hello"
        ]),
        "written\n"
    );
    let ps = cli.ok(&["ps", "-a", "--size"]);
    let row = ps.lines().find(|l| l.starts_with("b ")).unwrap();
    assert!(row.contains(&name), "{ps}");
    let inspected: Value = serde_json::from_str(&cli.ok(&["inspect", "b"])).unwrap();
    assert_eq!(inspected[0]["image"]["id"], image.id.as_str());
    assert_eq!(inspected[0]["image"]["reference"], name.as_str());
    assert_eq!(inspected[0]["writable_layer_bytes"], 8, "{inspected}");

    // In use: refused, exit 1, naming it; after rm it goes, layers too.
    let refused = cli.run(&["image", "rm", &name]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("used by a sandbox"));
    cli.ok(&["rm", "a", "b"]);
    let removed = cli.ok(&["image", "rm", &name]);
    assert!(
        removed.contains(&format!("Untagged: {name}")) && removed.contains(&image.id),
        "{removed}"
    );
    assert_eq!(cli.ok(&["image", "ls", "-q"]), "");
    let layers = std::fs::read_dir(cli.home().join("images/layers/sha256"))
        .unwrap()
        .count();
    assert_eq!(layers, 0);

    // run --image pulls what the home lacks.
    assert_eq!(
        cli.ok(&["run", "--rm", "--image", &name, "--", "cat", "/hello"]),
        "hello from the layer\n"
    );
}

#[test]
fn load_from_stdin_and_bad_input() {
    let image = app_image();
    let cli = Cli::new();
    let mut load = cli.command(&["image", "load"]);
    load.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = load.spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &image.tar()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("Loaded image ID: {}\n", image.id)
    );
    assert_eq!(
        cli.ok(&["run", "--rm", "--image", &image.id[7..19]]),
        "hello from the layer\n"
    );

    let garbage = cli.home().join("garbage.tar");
    std::fs::write(&garbage, b"garbage").unwrap();
    let failed = cli.run(&["image", "load", "-i", garbage.to_str().unwrap()]);
    assert_eq!(failed.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&failed.stderr).contains("corrupt"),
        "{failed:?}"
    );
    let failed = cli.run(&["image", "inspect", "nothing:here"]);
    assert_eq!(failed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&failed.stderr).contains("no such image"));
    let failed = cli.run(&["run", "--image", "x", "--rootfs", "/", "--", "true"]);
    assert_eq!(
        failed.status.code(),
        Some(2),
        "clap refuses --image with --rootfs"
    );
}
