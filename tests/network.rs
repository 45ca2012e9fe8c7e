//! Private networks (issue 17) with real sandboxes, a real `pasta`, real
//! nftables rules and real sockets — traffic only on the host's loopback and
//! inside the sandboxes' own network namespaces.

mod common;
#[allow(dead_code)]
#[path = "common/net.rs"]
mod net;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::runtime;
use net::{connect, pastas_of, python};
use sandvisor::{Action, Error, Network, PortRange, Protocol, Publish, Rule, SandboxConfig};

/// A free TCP port on the host's loopback (bound once and let go).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn publish(host_port: u16, port: u16) -> Publish {
    Publish {
        host_ip: Ipv4Addr::LOCALHOST.into(),
        host_port,
        port,
        protocol: Protocol::Tcp,
    }
}

fn private(publish: Vec<Publish>, egress: Vec<Rule>) -> Network {
    Network::Private {
        publish,
        egress,
        dns: Vec::new(),
    }
}

/// A sandbox serving HTTP on `port` inside (python's http.server).
fn http_server(name: &str, port: u16, network: Network) -> SandboxConfig {
    let mut config = SandboxConfig::new(name, "python3").args([
        "-m",
        "http.server",
        "--bind",
        "0.0.0.0",
        "--directory",
        "/etc",
        &port.to_string(),
    ]);
    config.network = network;
    config
}

/// GETs `/hosts` from 127.0.0.1:`port` until it answers (or 20 s pass),
/// off the test's runtime, whose thread runs the sandboxes' actors.
async fn get_until_answered(port: u16) -> String {
    tokio::task::spawn_blocking(move || get_blocking(port))
        .await
        .unwrap()
}

fn get_blocking(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = (|| -> std::io::Result<String> {
            let mut stream = TcpStream::connect(("127.0.0.1", port))?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            stream.write_all(b"GET /hosts HTTP/1.0\r\n\r\n")?;
            let mut body = String::new();
            stream.read_to_string(&mut body)?;
            Ok(body)
        })();
        match answer {
            Ok(body) if body.starts_with("HTTP/1.0 200") => return body,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "no answer on 127.0.0.1:{port}: {other:?}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Polls `done` until it holds, without blocking the test's runtime;
/// fails after 10 s.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "{what} within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_published_port_answers_on_the_hosts_loopback_and_a_second_publisher_is_refused() {
    let (home, rt) = runtime().await;
    let port = free_port();
    let web = rt
        .create(http_server(
            "web",
            8080,
            private(vec![publish(port, 8080)], vec![]),
        ))
        .await
        .unwrap();
    let body = get_until_answered(port).await;
    assert!(
        body.contains("10.0.2.15\tweb\n") && body.contains("host.sandvisor.internal"),
        "the sandbox's /etc/hosts: {body}"
    );
    assert_eq!(pastas_of(home.path()).len(), 1);

    let err = rt
        .create(http_server(
            "web2",
            8080,
            private(vec![publish(port, 8080)], vec![]),
        ))
        .await
        .unwrap_err();
    match err {
        Error::PortInUse {
            name,
            address,
            protocol,
        } => {
            assert_eq!(name, "web2");
            assert_eq!(address, SocketAddr::from(([127, 0, 0, 1], port)));
            assert_eq!(protocol, "tcp");
        }
        other => panic!("expected PortInUse, got {other:?}"),
    }
    assert_eq!(pastas_of(home.path()).len(), 1, "nothing started for web2");

    web.stop().await.unwrap();
    eventually("stop leaves no helper", || {
        pastas_of(home.path()).is_empty()
    })
    .await;
}

#[tokio::test]
async fn the_hosts_loopback_is_denied_by_default_and_reachable_when_a_rule_allows_it() {
    let (_home, rt) = runtime().await;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });
    let mut closed = SandboxConfig::new("closed", "sleep").args(["1000"]);
    closed.network = private(vec![], vec![]);
    let closed = rt.create(closed).await.unwrap();
    let (result, secs) = connect(&closed, "10.0.2.2", port).await;
    assert_eq!(result, "ConnectionRefusedError");
    assert!(secs < 1.0, "denied at once, not after {secs} s");
    // No raw sockets: they would write below the egress rules.
    let out = python(
        &closed,
        "import socket\n\
         for kind in (socket.SOCK_RAW, ):\n\
         \x20   try:\n        socket.socket(socket.AF_INET, kind, socket.IPPROTO_TCP); print('raw allowed')\n\
         \x20   except Exception as e:\n        print(type(e).__name__)\n\
         try:\n    socket.socket(socket.AF_PACKET, socket.SOCK_RAW); print('packet allowed')\n\
         except Exception as e:\n    print(type(e).__name__)",
    )
    .await;
    assert_eq!(out, "PermissionError\nPermissionError\n", "{out}");
    // The sandbox's own loopback is its own.
    assert_eq!(
        connect(&closed, "127.0.0.1", port).await.0,
        "ConnectionRefusedError"
    );

    let mut open = SandboxConfig::new("open", "sleep").args(["1000"]);
    open.network = private(
        vec![],
        vec![Rule {
            action: Action::Allow,
            net: "10.0.2.2/32".parse().unwrap(),
            ports: Some(PortRange {
                first: port,
                last: port,
            }),
            protocol: Some(Protocol::Tcp),
        }],
    );
    let open = rt.create(open).await.unwrap();
    assert_eq!(
        connect(&open, "host.sandvisor.internal", port).await.0,
        "connected",
        "allowed by its rule"
    );
    // Rules are evaluated in order: a deny before the allow wins.
    let mut first_deny = SandboxConfig::new("first-deny", "sleep").args(["1000"]);
    first_deny.network = private(
        vec![],
        vec![
            Rule {
                action: Action::Deny,
                net: "10.0.2.0/24".parse().unwrap(),
                ports: None,
                protocol: None,
            },
            Rule {
                action: Action::Allow,
                net: "10.0.2.2/32".parse().unwrap(),
                ports: None,
                protocol: None,
            },
        ],
    );
    let first_deny = rt.create(first_deny).await.unwrap();
    assert_eq!(
        connect(&first_deny, "10.0.2.2", port).await.0,
        "ConnectionRefusedError"
    );
    for sandbox in [closed, open, first_deny] {
        sandbox.kill().await.unwrap();
    }
}

#[tokio::test]
async fn a_killed_helper_is_restarted_and_the_published_port_answers_again() {
    let (home, rt) = runtime().await;
    let port = free_port();
    let web = rt
        .create(http_server(
            "phoenix",
            8080,
            private(vec![publish(port, 8080)], vec![]),
        ))
        .await
        .unwrap();
    get_until_answered(port).await;
    let before = pastas_of(home.path());
    assert_eq!(before.len(), 1);
    common::sigkill(before[0]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        let now = pastas_of(home.path());
        if now.len() == 1 && now != before {
            break now;
        }
        assert!(Instant::now() < deadline, "no new helper: {now:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    get_until_answered(port).await;
    let runtime_log = home.path().join("sandboxes/phoenix/logs/runtime.log");
    eventually("the restart noted in runtime.log", || {
        std::fs::read_to_string(&runtime_log).is_ok_and(|log| log.contains("restarted it"))
    })
    .await;
    web.stop().await.unwrap();
    eventually("the helper ends with the sandbox", || {
        common::ended(after[0])
    })
    .await;
    assert!(pastas_of(home.path()).is_empty());
}
