//! The host's side of a private network, before its run starts: published
//! ports checked free, the sandbox's `resolv.conf` and `hosts` written, and
//! the engine's [`NetworkPlan`].
//!
//! # Contract
//! - [`check_ports`] binds each published address once and lets it go: a
//!   port held by another sandbox or program is [`Error::PortInUse`] before
//!   anything starts. Two starts racing for one port both pass here; the
//!   loser's `pasta` then fails to bind it and the start fails at stage
//!   `network`.
//! - [`write_files`] writes `<sandbox>/net/resolv.conf` and `hosts` (0644:
//!   the sandbox's users read them through read-only bind mounts).

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};

use sandvisor_actors::network::{
    NetworkPlan, Protocol, Publish, DNS_ADDRESS, HOST_ADDRESS, SANDBOX_ADDRESS,
};
use sandvisor_actors::protocol::BindMount;

use crate::config::{Network, SandboxConfig};
use crate::error::{Error, Result};
use crate::home;

/// The name the host's loopback has inside a private network.
pub const HOST_NAME: &str = "host.sandvisor.internal";
/// The sandbox's directory for its network's files.
pub const NET_DIR: &str = "net";

/// The private network of `config`, if it has one.
///
/// # Errors
/// [`Error::InvalidName`] for a name that has no directory.
pub(crate) fn plan(config: &SandboxConfig, home: &Path) -> Result<Option<NetworkPlan>> {
    let Network::Private {
        publish,
        egress,
        dns,
    } = &config.network
    else {
        return Ok(None);
    };
    Ok(Some(NetworkPlan {
        publish: publish.clone(),
        egress: egress.clone(),
        dns: dns.clone(),
        dir: net_dir(home, &config.name)?,
    }))
}

fn net_dir(home: &Path, name: &str) -> Result<PathBuf> {
    Ok(home::sandbox_dir(home, name)?.join(NET_DIR))
}

/// Checks that every port `publish` asks for is free on the host.
///
/// # Errors
/// [`Error::PortInUse`] for the first one that is taken;
/// [`Error::InvalidConfig`] (`network.publish[i]`) for an address the host
/// does not have.
pub(crate) fn check_ports(name: &str, publish: &[Publish]) -> Result<()> {
    for (i, port) in publish.iter().enumerate() {
        let address = SocketAddr::new(port.host_ip, port.host_port);
        let bound = match port.protocol {
            Protocol::Tcp => TcpListener::bind(address).map(drop),
            Protocol::Udp => UdpSocket::bind(address).map(drop),
        };
        match bound {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(Error::PortInUse {
                    name: name.to_string(),
                    address,
                    protocol: protocol_name(port.protocol).into(),
                })
            }
            Err(err) => {
                return Err(Error::InvalidConfig {
                    field: format!("network.publish[{i}]"),
                    reason: format!("cannot bind {address}: {err}"),
                })
            }
        }
    }
    Ok(())
}

fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// Writes the sandbox's `resolv.conf` and `hosts`; the bind mounts that put
/// them at `/etc/resolv.conf` and `/etc/hosts`.
///
/// # Errors
/// [`Error::Io`] naming the file that could not be written.
pub(crate) fn write_files(plan: &NetworkPlan, name: &str) -> Result<Vec<BindMount>> {
    home::create_private_dir(&plan.dir).map_err(|source| Error::Io {
        path: plan.dir.clone(),
        source,
    })?;
    let servers: Vec<String> = if plan.dns.is_empty() {
        vec![DNS_ADDRESS.to_string()]
    } else {
        plan.dns.iter().map(ToString::to_string).collect()
    };
    let resolv: String = servers
        .iter()
        .map(|server| format!("nameserver {server}\n"))
        .collect();
    // Hostnames are at most 64 bytes (the agent cuts the name the same way).
    let hostname = &name[..name.len().min(64)];
    let hosts = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{SANDBOX_ADDRESS}\t{hostname}\n{HOST_ADDRESS}\t{HOST_NAME}\n"
    );
    let mut mounts = Vec::new();
    for (file, text) in [("resolv.conf", resolv), ("hosts", hosts)] {
        let path = plan.dir.join(file);
        write_public(&path, text.as_bytes()).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        mounts.push(BindMount {
            source: path
                .to_str()
                .map(str::to_string)
                .ok_or_else(|| Error::InvalidConfig {
                    field: "home".into(),
                    reason: format!("{} is not UTF-8", path.display()),
                })?,
            target: format!("/etc/{file}"),
            read_only: true,
        });
    }
    Ok(mounts)
}

/// Writes `bytes` to `path`, replacing it, readable by all.
fn write_public(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
    file.write_all(bytes)
}
