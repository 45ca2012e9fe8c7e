//! `sandvisor cp` as a user runs it: docker's semantics both ways, on a
//! sandbox the daemon hosts and on a stopped one, and links that point out.

#[path = "common/cli.rs"]
mod cli_home;
mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;

use cli_home::Cli;

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

/// `src/` holding `a.txt` (0640) and `sub/b.sh` (0755).
fn host_tree(dir: &Path) -> std::path::PathBuf {
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("a.txt"), "a\n").unwrap();
    std::fs::set_permissions(src.join("a.txt"), PermissionsExt::from_mode(0o640)).unwrap();
    std::fs::write(src.join("sub/b.sh"), "#!/bin/sh\necho b\n").unwrap();
    std::fs::set_permissions(src.join("sub/b.sh"), PermissionsExt::from_mode(0o755)).unwrap();
    src
}

fn fails_naming(cli: &Cli, args: &[&str], path: &str) {
    let out = cli.run(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(stderr.contains(path), "{args:?} must name {path}: {stderr}");
}

#[test]
fn cp_both_ways_with_a_sandbox_the_daemon_hosts() {
    let cli = Cli::new();
    let work = tempfile::tempdir().unwrap();
    let src = host_tree(work.path());
    let src_arg = src.to_str().unwrap();
    cli.ok(&["run", "-d", "--name", "box", "--", "sleep", "1000"]);

    // Into an existing directory, under its own name; modes kept.
    cli.ok(&["cp", src_arg, "box:/tmp/"]);
    let modes = cli.ok(&[
        "exec",
        "box",
        "--",
        "stat",
        "-c",
        "%a %n",
        "/tmp/src/a.txt",
        "/tmp/src/sub/b.sh",
    ]);
    assert_eq!(modes, "640 /tmp/src/a.txt\n755 /tmp/src/sub/b.sh\n");
    // `SRC/.` copies the contents; a new name becomes the copy.
    cli.ok(&["cp", &format!("{src_arg}/."), "box:/tmp/flat"]);
    assert_eq!(
        cli.ok(&["exec", "box", "--", "ls", "/tmp/flat"]),
        "a.txt\nsub\n"
    );
    cli.ok(&["cp", &format!("{src_arg}/a.txt"), "box:/tmp/renamed.txt"]);
    assert_eq!(
        cli.ok(&["exec", "box", "--", "cat", "/tmp/renamed.txt"]),
        "a\n"
    );
    // A directory onto a file, a missing directory: exit 1 naming the path.
    fails_naming(
        &cli,
        &["cp", src_arg, "box:/tmp/renamed.txt"],
        "/tmp/renamed.txt",
    );
    fails_naming(&cli, &["cp", src_arg, "box:/tmp/nodir/"], "/tmp/nodir/");
    fails_naming(
        &cli,
        &["cp", "box:/nope", work.path().to_str().unwrap()],
        "/nope",
    );

    // Out: into an existing directory, as contents, to a new file name.
    let out = work.path().join("out");
    std::fs::create_dir(&out).unwrap();
    cli.ok(&["cp", "box:/tmp/src", out.to_str().unwrap()]);
    assert_eq!(mode(&out.join("src/a.txt")), 0o640);
    assert_eq!(mode(&out.join("src/sub/b.sh")), 0o755);
    let flat = work.path().join("flat");
    cli.ok(&["cp", "box:/tmp/src/.", flat.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(flat.join("a.txt")).unwrap(), "a\n");
    let file = work.path().join("file.txt");
    cli.ok(&["cp", "box:/tmp/renamed.txt", file.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "a\n");

    // `-`: a tar stream on stdout, and one on stdin.
    let tar = cli.run(&["cp", "box:/tmp/src", "-"]);
    assert!(tar.status.success());
    let mut names: Vec<String> = tar::Archive::new(&tar.stdout[..])
        .entries()
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .unwrap()
                .display()
                .to_string()
                .trim_end_matches('/')
                .to_string()
        })
        .collect();
    names.sort();
    assert_eq!(names, ["src", "src/a.txt", "src/sub", "src/sub/b.sh"]);
    let mut child = cli
        .command(&["cp", "-", "box:/tmp/flat"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&tar.stdout).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(
        cli.ok(&["exec", "box", "--", "cat", "/tmp/flat/src/a.txt"]),
        "a\n"
    );
    cli.ok(&["kill", "box"]);
}

#[test]
fn cp_on_a_stopped_sandbox_leaves_it_stopped() {
    let cli = Cli::new();
    let work = tempfile::tempdir().unwrap();
    let src = host_tree(work.path());
    cli.ok(&["run", "--name", "st", "--", "true"]);
    cli.ok(&["cp", src.to_str().unwrap(), "st:/data"]);
    let back = work.path().join("back");
    cli.ok(&["cp", "st:/data/sub/b.sh", back.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(&back).unwrap(),
        "#!/bin/sh\necho b\n"
    );
    assert_eq!(mode(&back), 0o755);
    // A setuid file the sandbox made is no setuid file on the host.
    cli.ok(&[
        "run",
        "--name",
        "suid",
        "--",
        "sh",
        "-c",
        "mkdir -p /root/s && cp /bin/true /root/s/tool && chmod 6755 /root/s/tool",
    ]);
    let tool = work.path().join("tool");
    cli.ok(&["cp", "suid:/root/s/tool", tool.to_str().unwrap()]);
    assert_eq!(mode(&tool), 0o755, "setuid and setgid bits stripped");
    let ps = cli.ok(&["ps", "-a", "--json"]);
    assert!(ps.contains("\"Stopped\""), "{ps}");
    assert!(
        !cli.home().join("sandvisord.sock").exists(),
        "no daemon was needed"
    );
}

/// A link the sandbox planted, to a host directory: `cp file NAME:/tmp/out/`
/// fails inside the sandbox, and a link copied out stays a link.
#[test]
fn links_the_sandbox_planted_never_reach_the_host() {
    let cli = Cli::new();
    let work = tempfile::tempdir().unwrap();
    let host = tempfile::Builder::new()
        .prefix("sandvisor-cp-host")
        .tempdir_in("/var/tmp")
        .unwrap();
    std::fs::write(host.path().join("secret"), "host secret").unwrap();
    let target = host.path().to_str().unwrap();
    cli.ok(&["run", "-d", "--name", "box", "--", "sleep", "1000"]);
    cli.ok(&[
        "exec",
        "box",
        "--",
        "sh",
        "-c",
        &format!("ln -s {target} /tmp/out; mkdir /tmp/x; ln -s {target} /tmp/x/link"),
    ]);
    let file = work.path().join("f");
    std::fs::write(&file, "f").unwrap();
    fails_naming(
        &cli,
        &["cp", file.to_str().unwrap(), "box:/tmp/out/"],
        "/tmp/out/",
    );
    let out = work.path().join("x");
    cli.ok(&["cp", "box:/tmp/x", out.to_str().unwrap()]);
    let link = std::fs::read_link(out.join("link")).unwrap();
    assert_eq!(link, host.path(), "the link itself is copied, not followed");
    let names: Vec<_> = std::fs::read_dir(host.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["secret"]);
    assert_eq!(
        std::fs::read_to_string(host.path().join("secret")).unwrap(),
        "host secret"
    );
    cli.ok(&["kill", "box"]);
}
