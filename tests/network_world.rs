//! The egress policy of private networks against a fake world (issue 17):
//! this test binary moves its one test thread — and so the runtime, its
//! agent spawner and every network helper it starts — into a network
//! namespace it creates ("host"), whose only way out is a veth pair to a
//! second namespace ("world") holding the addresses the sandboxes aim at:
//! a metadata address, a private address and a public-looking one from a
//! documentation range. No packet leaves the machine.

mod common;
#[allow(dead_code)]
#[path = "common/net.rs"]
mod net;

use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::process::Command;

use net::{connect, udp};
use sandvisor::{Action, Network, Rule, SandboxConfig};

const PORT: u16 = 8000;
const METADATA: &str = "169.254.169.254";
const PRIVATE: &str = "10.9.0.1";
const PUBLIC: &str = "203.0.113.10";
/// The host namespace's own address (on its veth).
const HOST: &str = "198.51.100.2";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {out:?}");
}

/// Two named namespaces joined by a veth pair; deleted on drop.
struct World {
    host: String,
    world: String,
}

impl World {
    fn new() -> Self {
        let tag = std::process::id();
        let world = Self {
            host: format!("sv-host-{tag}"),
            world: format!("sv-world-{tag}"),
        };
        ip(&["netns", "add", &world.host]);
        ip(&["netns", "add", &world.world]);
        let (h, w) = (format!("svh{tag}"), format!("svw{tag}"));
        let (h, w) = (&h[..h.len().min(15)], &w[..w.len().min(15)]);
        ip(&[
            "-n",
            &world.host,
            "link",
            "add",
            h,
            "type",
            "veth",
            "peer",
            "name",
            w,
            "netns",
            &world.world,
        ]);
        for (ns, dev, address) in [
            (&world.host, h, "198.51.100.2/24"),
            (&world.world, w, "198.51.100.1/24"),
        ] {
            ip(&["-n", ns, "addr", "add", address, "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&[
            "-n",
            &world.host,
            "route",
            "add",
            "default",
            "via",
            "198.51.100.1",
        ]);
        for address in [METADATA, PRIVATE, PUBLIC] {
            ip(&[
                "-n",
                &world.world,
                "addr",
                "add",
                &format!("{address}/32"),
                "dev",
                "lo",
            ]);
        }
        world
    }

    /// Moves the calling thread into namespace `name`.
    fn enter(name: &str) {
        let ns = std::fs::File::open(format!("/run/netns/{name}")).unwrap();
        // SAFETY: setns on a descriptor we hold; it changes only this thread.
        assert_eq!(
            unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
    }

    /// A thread in namespace `name` accepting (and closing) connections on
    /// `address:PORT`.
    fn listen(name: &str, address: &'static str) {
        let name = name.to_string();
        let (ready, bound) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            Self::enter(&name);
            let listener = TcpListener::bind((address, PORT)).unwrap();
            ready.send(()).unwrap();
            for stream in listener.incoming() {
                drop(stream);
            }
        });
        bound.recv().unwrap();
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for ns in [&self.host, &self.world] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn private(egress: Vec<Rule>) -> Network {
    Network::Private {
        publish: Vec::new(),
        egress,
        dns: Vec::new(),
    }
}

#[test]
fn private_networks_deny_metadata_private_ranges_and_the_host_by_default_and_rules_open_them_in_order(
) {
    let world = World::new();
    for address in [METADATA, PRIVATE, PUBLIC] {
        World::listen(&world.world, address);
    }
    World::listen(&world.host, HOST);
    // Everything from here on (the runtime, its spawner, pasta) lives in the
    // host namespace.
    World::enter(&world.host);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (_home, rt) = common::runtime().await;
        let mut config = SandboxConfig::new("default", "sleep").args(["1000"]);
        config.network = private(Vec::new());
        let default = rt.create(config).await.unwrap();
        assert_eq!(
            connect(&default, PUBLIC, PORT).await.0,
            "connected",
            "the public internet is allowed"
        );
        for denied in [METADATA, PRIVATE, HOST] {
            let (result, secs) = connect(&default, denied, PORT).await;
            assert_eq!(
                result, "ConnectionRefusedError",
                "{denied} is denied by default"
            );
            assert!(secs < 1.0, "{denied} fails fast, not after {secs} s");
        }

        // UDP only where a rule allows it (the helper would otherwise open
        // the flow's port on the host).
        assert_eq!(udp(&default, PUBLIC, PORT).await, "PermissionError");

        // DNS: the forwarder is allowed; servers a config names are allowed
        // (port 53 only) and are what its resolv.conf lists.
        assert_eq!(udp(&default, "10.0.2.3", 53).await, "sent");
        let mut config = SandboxConfig::shell("named-dns", "cat /etc/resolv.conf; read line");
        config.network = Network::Private {
            publish: Vec::new(),
            egress: Vec::new(),
            dns: vec![PRIVATE.parse().unwrap()],
        };
        config.stdin = true;
        let named = rt.create(config).await.unwrap();
        assert_eq!(udp(&named, PRIVATE, 53).await, "sent");
        assert_eq!(udp(&named, PRIVATE, 54).await, "PermissionError");
        named.close_stdin().await.unwrap();
        named.wait_until_stopped().await.unwrap();
        // Its log also holds the exec sessions' output, after its own.
        let out = common::stdout_of(&named).await;
        assert!(out.starts_with(&format!("nameserver {PRIVATE}\n")), "{out}");

        let mut config = SandboxConfig::new("ruled", "sleep").args(["1000"]);
        config.network = private(vec![
            Rule {
                action: Action::Deny,
                net: format!("{PUBLIC}/32").parse().unwrap(),
                ports: None,
                protocol: None,
            },
            Rule {
                action: Action::Allow,
                net: "10.9.0.0/16".parse().unwrap(),
                ports: None,
                protocol: None,
            },
            Rule {
                action: Action::Allow,
                net: "0.0.0.0/0".parse().unwrap(),
                ports: Some(sandvisor::PortRange {
                    first: 1,
                    last: PORT - 1,
                }),
                protocol: None,
            },
        ]);
        let ruled = rt.create(config).await.unwrap();
        assert_eq!(
            connect(&ruled, PRIVATE, PORT).await.0,
            "connected",
            "allowed by its rule"
        );
        assert_eq!(
            connect(&ruled, PUBLIC, PORT).await.0,
            "ConnectionRefusedError",
            "denied by its rule"
        );
        assert_eq!(
            connect(&ruled, METADATA, PORT).await.0,
            "ConnectionRefusedError",
            "a rule for other ports leaves the default"
        );
        for sandbox in [default, ruled] {
            sandbox.kill().await.unwrap();
        }
    });
}
