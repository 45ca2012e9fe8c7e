//! Private networks through the CLI and its daemon (issue 17): a published
//! port answers, and a SIGKILLed daemon leaves no network helper behind —
//! the helpers die with their host process, before any reconcile.

// Shared with the fault tests, which use all of it.
#[allow(dead_code)]
#[path = "common/faults.rs"]
mod faults;
#[allow(dead_code)]
#[path = "common/net.rs"]
mod net;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use faults::{stderr, Cli};
use net::pastas_of;

fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "{what} within 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_sigkilled_daemon_leaves_no_network_helper_and_its_port_is_free_again() {
    let mut cli = Cli::new();
    cli.serve(None);
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let publish = format!("{port}:8080");
    let out = cli.run(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        &publish,
        "--",
        "python3",
        "-m",
        "http.server",
        "8080",
        "--directory",
        "/etc",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    until("the published port answers", || {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut answer = String::new();
        stream.write_all(b"GET /hosts HTTP/1.0\r\n\r\n").is_ok()
            && stream.read_to_string(&mut answer).is_ok()
            && answer.starts_with("HTTP/1.0 200")
    });
    assert_eq!(pastas_of(cli.home()).len(), 1);
    let ps = cli.ok(&["ps"]);
    assert!(ps.contains(&format!("127.0.0.1:{port}->8080/tcp")), "{ps}");

    cli.kill_daemon();
    until("the helper dies with its host", || {
        pastas_of(cli.home()).is_empty()
    });
    // Reconcile settles the run; the port is free for the next sandbox.
    assert_eq!(cli.status("web"), "Crashed");
    until("the port is free again", || {
        TcpListener::bind(("127.0.0.1", port)).is_ok()
    });
}
