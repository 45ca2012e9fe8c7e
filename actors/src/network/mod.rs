//! A sandbox's network: what users ask for ([`Network`]) and how the engine
//! builds it.
//!
//! - [`Network::None`] (the default): the sandbox's own network namespace with
//!   only `lo`.
//! - [`Network::Host`]: the host's network namespace (an unsafe opt-in).
//! - [`Network::Private`]: the sandbox's own namespace joined to the host by a
//!   user-mode network stack (`pasta`, [`helper`]), with published ports and
//!   an egress policy ([`egress`]) that denies the host, loopback, link-local
//!   and private ranges unless a rule allows them.
//!
//! # Addresses inside a private network
//! The sandbox is [`SANDBOX_ADDRESS`] on a /24 whose gateway,
//! [`HOST_ADDRESS`], is the host's loopback (`pasta` maps connections to the
//! gateway to the host's `127.0.0.1`); DNS queries to [`DNS_ADDRESS`] go to
//! the host's resolver. Only IPv4 is provided.

pub mod spec;

pub use spec::{Action, Network, PortRange, Protocol, Publish, Rule};

use std::net::Ipv4Addr;

/// The sandbox's own address in a private network.
pub const SANDBOX_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// The gateway of a private network: the host's loopback, seen from inside.
pub const HOST_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// The DNS forwarder of a private network (to the host's resolver).
pub const DNS_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
/// The prefix length of the private network.
pub const PREFIX_LEN: u8 = 24;
