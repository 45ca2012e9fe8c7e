//! The network a sandbox asks for (SPEC §10), as stored in its config.
//!
//! # Contract
//! - Every type here has a JSON form (serde) and a CLI form (`FromStr`, whose
//!   error is the reason the text is refused, naming it) that `Display`
//!   writes back: `text.parse::<T>()?.to_string()` parses to the same value.
//! - [`Network::validate`] refuses what cannot be built, naming the field
//!   (`network.publish[1]`, `network.egress[0]`, `network.dns[2]`) and the
//!   offending value, before anything starts.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The sandbox's network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// Its own network namespace with only `lo` (the default).
    #[default]
    None,
    /// The host's own network namespace: every host interface and service.
    /// Unsafe; shown by `ps` and `inspect`.
    Host,
    /// Its own namespace, joined to the host by a user-mode network stack.
    Private {
        /// Host ports forwarded to ports inside.
        #[serde(default)]
        publish: Vec<Publish>,
        /// Egress rules, evaluated in order before the defaults (deny the
        /// host, loopback, link-local and private ranges; allow the rest).
        #[serde(default)]
        egress: Vec<Rule>,
        /// DNS servers for the sandbox's `resolv.conf`; empty: the host's
        /// resolver through the network's forwarder.
        #[serde(default)]
        dns: Vec<IpAddr>,
    },
}

/// A transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// A host port forwarded into the sandbox (`-p [IP:]HOSTPORT:PORT[/tcp|/udp]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Publish {
    /// The host address to bind; `127.0.0.1` unless one is given.
    pub host_ip: IpAddr,
    /// The host port (1–65535).
    pub host_port: u16,
    /// The port inside the sandbox (1–65535).
    pub port: u16,
    /// TCP unless `/udp` is given.
    pub protocol: Protocol,
}

/// What a rule does to the traffic it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Let it through.
    Allow,
    /// Refuse it at once (TCP reset, ICMP unreachable).
    Deny,
}

/// Ports `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortRange {
    /// First port (≥ 1).
    pub first: u16,
    /// Last port (≥ `first`).
    pub last: u16,
}

/// One egress rule (`allow|deny:CIDR[:PORTS][/PROTO]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rule {
    /// Allow or deny.
    pub action: Action,
    /// The destinations it matches.
    pub net: IpNet,
    /// The destination ports it matches; `None`: every port (and protocols
    /// without ports).
    #[serde(default)]
    pub ports: Option<PortRange>,
    /// The protocol it matches; `None`: any.
    #[serde(default)]
    pub protocol: Option<Protocol>,
}

/// The host address a [`Publish`] binds when none is given.
pub const DEFAULT_PUBLISH_IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
