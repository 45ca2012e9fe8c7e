//! The network a sandbox asks for (SPEC §10), as stored in its config.
//!
//! # Contract
//! - Every type here has a JSON form (serde) and a CLI form (`FromStr`, whose
//!   error is the reason the text is refused, naming it) that `Display`
//!   writes back: `text.parse::<T>()?.to_string()` parses to the same value.
//! - [`Network::validate`] refuses what cannot be built, naming the field
//!   (`network.publish[1]`, `network.egress[0]`, `network.dns[2]`) and the
//!   offending value, before anything starts.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

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

/// Why every private-network address must be IPv4 (the network has no IPv6).
const NO_IPV6: &str = "IPv6 is not provided in private networks";

impl Network {
    /// Checks what a private network could not build; `None` and `Host`
    /// have nothing to check.
    ///
    /// # Errors
    /// `(field, reason)` for the first refused value, `field` being
    /// `network.publish[i]`, `network.egress[i]` or `network.dns[i]`: a port
    /// 0, a port range whose first port is past its last, a CIDR with host
    /// bits set, two publishes binding the same host port (the same
    /// address, or `0.0.0.0` and any other, with the same protocol), any
    /// IPv6 address (only IPv4 is provided), a DNS server that is
    /// unspecified, multicast or broadcast.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let Self::Private {
            publish,
            egress,
            dns,
        } = self
        else {
            return Ok(());
        };
        for (i, item) in publish.iter().enumerate() {
            let field = || format!("network.publish[{i}]");
            check_publish(item).map_err(|reason| (field(), reason))?;
            if let Some(j) = publish[..i]
                .iter()
                .position(|other| binds_same(other, item))
            {
                return Err((
                    field(),
                    format!(
                        "\"{item}\" binds the same host port as network.publish[{j}] (\"{}\")",
                        publish[j]
                    ),
                ));
            }
        }
        for (i, rule) in egress.iter().enumerate() {
            check_rule(rule).map_err(|reason| (format!("network.egress[{i}]"), reason))?;
        }
        for (i, server) in dns.iter().enumerate() {
            check_dns(*server).map_err(|reason| (format!("network.dns[{i}]"), reason))?;
        }
        Ok(())
    }
}

fn check_publish(item: &Publish) -> Result<(), String> {
    if item.host_ip.is_ipv6() {
        return Err(format!("\"{item}\": {NO_IPV6}"));
    }
    if item.host_port == 0 || item.port == 0 {
        return Err(format!("\"{item}\": ports are 1 to 65535"));
    }
    Ok(())
}

/// Whether two publishes would bind the same host socket: the same port and
/// protocol, on the same address or with either on every address.
fn binds_same(a: &Publish, b: &Publish) -> bool {
    a.host_port == b.host_port
        && a.protocol == b.protocol
        && (a.host_ip == b.host_ip || a.host_ip.is_unspecified() || b.host_ip.is_unspecified())
}

fn check_rule(rule: &Rule) -> Result<(), String> {
    if rule.net.addr().is_ipv6() {
        return Err(format!("\"{rule}\": {NO_IPV6}"));
    }
    check_host_bits(rule.net).map_err(|reason| format!("\"{rule}\": {reason}"))?;
    if let Some(ports) = rule.ports {
        check_range(ports).map_err(|reason| format!("\"{rule}\": {reason}"))?;
    }
    Ok(())
}

fn check_dns(server: IpAddr) -> Result<(), String> {
    let refused = match server {
        IpAddr::V6(_) => Some(NO_IPV6),
        IpAddr::V4(v4) if v4.is_unspecified() => Some("the unspecified address is no server"),
        IpAddr::V4(v4) if v4.is_multicast() => Some("a multicast address is no server"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address is no server"),
        IpAddr::V4(_) => None,
    };
    match refused {
        Some(reason) => Err(format!("\"{server}\": {reason}")),
        None => Ok(()),
    }
}

/// A CIDR with host bits set (`10.0.0.1/8`) is refused rather than guessed
/// at: it may mean the network or the one address.
fn check_host_bits(net: IpNet) -> Result<(), String> {
    if net.trunc() == net {
        Ok(())
    } else {
        Err(format!(
            "\"{net}\" has host bits set (the network is {}; one address is {}/{})",
            net.trunc(),
            net.addr(),
            net.max_prefix_len()
        ))
    }
}

fn check_range(ports: PortRange) -> Result<(), String> {
    if ports.first == 0 {
        return Err(format!("\"{ports}\": ports are 1 to 65535"));
    }
    if ports.first > ports.last {
        return Err(format!("\"{ports}\": the first port is past the last"));
    }
    Ok(())
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

impl FromStr for Protocol {
    type Err = String;

    /// `tcp` or `udp`, in any case.
    fn from_str(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Self::Tcp),
            "udp" => Ok(Self::Udp),
            _ => Err(format!("{text:?} is not a protocol (tcp or udp)")),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        })
    }
}

impl FromStr for Action {
    type Err = String;

    /// `allow` or `deny`, in any case.
    fn from_str(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().as_str() {
            "allow" => Ok(Self::Allow),
            "deny" => Ok(Self::Deny),
            _ => Err(format!("{text:?} is not an action (allow or deny)")),
        }
    }
}

/// A port number 1–65535, plain decimal.
fn parse_port(text: &str) -> Result<u16, String> {
    let port = if text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse::<u16>().ok()
    } else {
        None
    };
    match port {
        Some(port) if port != 0 => Ok(port),
        _ => Err(format!("{text:?} is not a port (1 to 65535)")),
    }
}

impl fmt::Display for PortRange {
    /// `N` for one port, else `N-M`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl FromStr for PortRange {
    type Err = String;

    /// `N` or `N-M`, ports 1–65535, `N` ≤ `M`.
    fn from_str(text: &str) -> Result<Self, String> {
        let range = match text.split_once('-') {
            Some((first, last)) => Self {
                first: parse_port(first)?,
                last: parse_port(last)?,
            },
            None => {
                let port = parse_port(text)?;
                Self {
                    first: port,
                    last: port,
                }
            }
        };
        check_range(range)?;
        Ok(range)
    }
}

/// `text` without a trailing `/tcp` or `/udp`, and that protocol.
fn split_protocol(text: &str) -> Result<(&str, Option<Protocol>), String> {
    match text.rsplit_once('/') {
        Some((rest, word))
            if word.eq_ignore_ascii_case("tcp") || word.eq_ignore_ascii_case("udp") =>
        {
            Ok((rest, Some(word.parse()?)))
        }
        _ => Ok((text, None)),
    }
}

/// `[inner]rest` as `(inner, rest)`; `None` if `text` does not start with `[`.
fn split_bracketed(text: &str) -> Result<Option<(&str, &str)>, String> {
    let Some(open) = text.strip_prefix('[') else {
        return Ok(None);
    };
    match open.split_once(']') {
        Some((inner, rest)) => Ok(Some((inner, rest))),
        None => Err("a '[' is not closed".into()),
    }
}

impl fmt::Display for Publish {
    /// The full form: `127.0.0.1:8080:80/tcp`, `[::1]:8080:80/udp`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            IpAddr::V4(ip) => write!(f, "{ip}")?,
            IpAddr::V6(ip) => write!(f, "[{ip}]")?,
        }
        write!(f, ":{}:{}/{}", self.host_port, self.port, self.protocol)
    }
}

impl FromStr for Publish {
    type Err = String;

    /// `[IP:]HOSTPORT:PORT[/tcp|/udp]`; an IPv6 address in brackets
    /// (`[::1]:8080:80`); no IP: [`DEFAULT_PUBLISH_IP`]; no protocol: TCP.
    fn from_str(text: &str) -> Result<Self, String> {
        parse_publish(text).map_err(|reason| format!("{text:?}: {reason}"))
    }
}

/// [`Publish::from_str`] but for the text in the error.
fn parse_publish(text: &str) -> Result<Publish, String> {
    const FORM: &str = "not [IP:]HOSTPORT:PORT[/tcp|/udp]";
    let (rest, protocol) = split_protocol(text)?;
    if rest.contains('/') {
        return Err(format!("{FORM} (the protocol is tcp or udp)"));
    }
    let (host_ip, ports) = match split_bracketed(rest)? {
        Some((ip, ports)) => (
            parse_ip(ip)?,
            ports.strip_prefix(':').ok_or_else(|| FORM.to_string())?,
        ),
        None => match rest.matches(':').count() {
            0 => return Err(FORM.into()),
            1 => (DEFAULT_PUBLISH_IP, rest),
            2 => match rest.split_once(':') {
                Some((ip, ports)) => (parse_ip(ip)?, ports),
                None => return Err(FORM.into()),
            },
            _ => {
                return Err(format!(
                    "{FORM} (an IPv6 address goes in brackets: [::1]:8080:80)"
                ))
            }
        },
    };
    let (host_port, port) = ports.split_once(':').ok_or_else(|| FORM.to_string())?;
    Ok(Publish {
        host_ip,
        host_port: parse_port(host_port)?,
        port: parse_port(port)?,
        protocol: protocol.unwrap_or(Protocol::Tcp),
    })
}

fn parse_ip(text: &str) -> Result<IpAddr, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not an IP address"))
}

impl fmt::Display for Rule {
    /// `allow:10.0.0.0/8`, `deny:203.0.113.7/32:80-90/tcp`,
    /// `allow:[2001:db8::/32]:53/udp`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.action)?;
        match self.net {
            IpNet::V4(net) => write!(f, "{net}")?,
            IpNet::V6(net) => write!(f, "[{net}]")?,
        }
        if let Some(ports) = self.ports {
            write!(f, ":{ports}")?;
        }
        if let Some(protocol) = self.protocol {
            write!(f, "/{protocol}")?;
        }
        Ok(())
    }
}

impl FromStr for Rule {
    type Err = String;

    /// `allow|deny:CIDR[:PORTS][/PROTO]`: a bare address is a /32 (/128);
    /// an IPv6 CIDR goes in brackets (`[2001:db8::/32]`); PORTS `N` or
    /// `N-M`; PROTO `tcp` or `udp`, none: any (with PORTS: TCP and UDP).
    fn from_str(text: &str) -> Result<Self, String> {
        parse_rule(text).map_err(|reason| format!("{text:?}: {reason}"))
    }
}

/// [`Rule::from_str`] but for the text in the error.
fn parse_rule(text: &str) -> Result<Rule, String> {
    const FORM: &str = "not allow|deny:CIDR[:PORTS][/tcp|/udp]";
    let (action, rest) = text.split_once(':').ok_or_else(|| FORM.to_string())?;
    let action = action.parse::<Action>()?;
    let (rest, protocol) = split_protocol(rest)?;
    let (cidr, ports) = match split_bracketed(rest)? {
        Some((cidr, "")) => (cidr, None),
        Some((cidr, ports)) => (
            cidr,
            Some(ports.strip_prefix(':').ok_or_else(|| FORM.to_string())?),
        ),
        None => match rest.split_once(':') {
            None => (rest, None),
            Some((_, ports)) if ports.contains(':') => {
                return Err(format!(
                    "{FORM} (an IPv6 CIDR goes in brackets: [2001:db8::/32])"
                ))
            }
            Some((cidr, ports)) => (cidr, Some(ports)),
        },
    };
    Ok(Rule {
        action,
        net: parse_cidr(cidr)?,
        ports: ports.map(str::parse::<PortRange>).transpose()?,
        protocol,
    })
}

/// `ADDR/LEN` without host bits, or a bare address (one host).
fn parse_cidr(text: &str) -> Result<IpNet, String> {
    if let Ok(addr) = text.parse::<IpAddr>() {
        return Ok(IpNet::from(addr));
    }
    let net = text
        .parse::<IpNet>()
        .map_err(|_| format!("{text:?} is not a CIDR (10.0.0.0/8) or an address"))?;
    check_host_bits(net)?;
    Ok(net)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use ipnet::{Ipv4Net, Ipv6Net};
    use proptest::prelude::*;

    use super::*;

    fn publish(text: &str) -> Publish {
        text.parse().unwrap()
    }

    fn rule(text: &str) -> Rule {
        text.parse().unwrap()
    }

    fn private(publish: Vec<Publish>, egress: Vec<Rule>, dns: Vec<IpAddr>) -> Network {
        Network::Private {
            publish,
            egress,
            dns,
        }
    }

    /// The error of `text.parse::<T>()`, which must quote `quoted`.
    fn refused<T: FromStr<Err = String> + fmt::Debug>(text: &str, quoted: &str) -> String {
        let err = text.parse::<T>().expect_err(text);
        assert!(err.contains(&format!("{quoted:?}")), "{text}: {err}");
        err
    }

    #[test]
    fn publish_defaults_to_loopback_and_tcp() {
        let p = publish("8080:80");
        assert_eq!(p.host_ip, DEFAULT_PUBLISH_IP);
        assert_eq!((p.host_port, p.port, p.protocol), (8080, 80, Protocol::Tcp));
        assert_eq!(p.to_string(), "127.0.0.1:8080:80/tcp");
        assert_eq!(
            publish("0.0.0.0:53:5353/udp").to_string(),
            "0.0.0.0:53:5353/udp"
        );
        assert_eq!(publish("8080:80/UDP").protocol, Protocol::Udp);
        let v6 = publish("[::1]:8080:80");
        assert_eq!(v6.host_ip, IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(v6.to_string(), "[::1]:8080:80/tcp");
    }

    #[test]
    fn malformed_publishes_are_refused_quoting_the_text() {
        for text in [
            "",
            "80",
            "8080:80:90:100",
            "8080:80/sctp",
            "8080:80/",
            "a:80",
            "8080:b",
            "0:80",
            "8080:0",
            "65536:80",
            "8080:-1",
            "8080:+80",
            "localhost:8080:80",
            "1.2.3:8080:80",
            "::1:8080:80",
            "[::1:8080:80",
            "[::1]8080:80",
            "[nope]:8080:80",
            " 8080:80",
        ] {
            refused::<Publish>(text, text);
        }
        assert!(refused::<Publish>("::1:8080:80", "::1:8080:80").contains("brackets"));
    }

    #[test]
    fn rules_parse_cidrs_ports_and_protocols() {
        let r = rule("allow:10.0.0.0/8");
        assert_eq!(r.action, Action::Allow);
        assert_eq!(r.net, "10.0.0.0/8".parse::<IpNet>().unwrap());
        assert_eq!((r.ports, r.protocol), (None, None));
        let one = rule("deny:203.0.113.7");
        assert_eq!(one.net.prefix_len(), 32);
        assert_eq!(one.to_string(), "deny:203.0.113.7/32");
        let r = rule("allow:127.0.0.1:8000-8010/tcp");
        assert_eq!(
            r.ports,
            Some(PortRange {
                first: 8000,
                last: 8010
            })
        );
        assert_eq!(r.protocol, Some(Protocol::Tcp));
        assert_eq!(r.to_string(), "allow:127.0.0.1/32:8000-8010/tcp");
        // Ports without a protocol: TCP and UDP.
        let r = rule("allow:10.1.0.0/16:53");
        assert_eq!(
            (r.ports, r.protocol),
            (
                Some(PortRange {
                    first: 53,
                    last: 53
                }),
                None
            )
        );
        assert_eq!(rule("DENY:0.0.0.0/0/udp").protocol, Some(Protocol::Udp));
        let v6 = rule("allow:[2001:db8::/32]:443/tcp");
        assert_eq!(v6.net, "2001:db8::/32".parse::<IpNet>().unwrap());
        assert_eq!(v6.to_string(), "allow:[2001:db8::/32]:443/tcp");
        assert_eq!(rule("deny:[::1]").net.prefix_len(), 128);
    }

    #[test]
    fn malformed_rules_are_refused_quoting_the_text() {
        for text in [
            "",
            "allow",
            "permit:10.0.0.0/8",
            "allow:",
            "allow:10.0.0.0/33",
            "allow:10.0.0.1/8",
            "allow:10.0.0.0/8:",
            "allow:10.0.0.0/8:0",
            "allow:10.0.0.0/8:90-80",
            "allow:10.0.0.0/8:1-2-3",
            "allow:10.0.0.0/8:65536",
            "allow:10.0.0.0/8/icmp",
            "allow:10.0.0.0/8:80/sctp",
            "allow:10.0.0.0/8:80:90",
            "allow:example.com",
            "allow:2001:db8::/32",
            "allow:[2001:db8::/32",
            "allow:[2001:db8::/32]80",
            "allow:[10.0.0.0/8]:x",
        ] {
            refused::<Rule>(text, text);
        }
        assert!(refused::<Rule>("allow:10.0.0.1/8", "10.0.0.1/8").contains("host bits"));
        assert!(refused::<Rule>("allow:2001:db8::/32", "allow:2001:db8::/32").contains("brackets"));
    }

    #[test]
    fn port_ranges_protocols_and_actions_parse_and_print() {
        assert_eq!("80".parse::<PortRange>().unwrap().to_string(), "80");
        assert_eq!("80-90".parse::<PortRange>().unwrap().to_string(), "80-90");
        assert_eq!("80-80".parse::<PortRange>().unwrap().to_string(), "80");
        for (text, quoted) in [
            ("0", "0"),
            ("0-5", "0"),
            ("9-8", "9-8"),
            ("", ""),
            ("1-", ""),
            ("x", "x"),
        ] {
            refused::<PortRange>(text, quoted);
        }
        assert_eq!("TCP".parse::<Protocol>(), Ok(Protocol::Tcp));
        refused::<Protocol>("icmp", "icmp");
        assert_eq!("deny".parse::<Action>(), Ok(Action::Deny));
        refused::<Action>("drop", "drop");
    }

    #[test]
    fn none_host_and_a_plain_private_network_are_valid() {
        assert_eq!(Network::None.validate(), Ok(()));
        assert_eq!(Network::Host.validate(), Ok(()));
        let network = private(
            vec![
                publish("8080:80"),
                publish("8080:80/udp"),
                publish("0.0.0.0:9090:90"),
            ],
            vec![rule("allow:127.0.0.1:5432/tcp"), rule("deny:0.0.0.0/0:25")],
            vec!["1.1.1.1".parse().unwrap()],
        );
        assert_eq!(network.validate(), Ok(()));
    }

    /// `network.validate()` names `field` and says `says`.
    #[track_caller]
    fn assert_refused(network: &Network, field: &str, says: &str) {
        let (got, reason) = network.validate().expect_err(field);
        assert_eq!(got, field, "{reason}");
        assert!(reason.contains(says), "{field}: {reason}");
    }

    #[test]
    fn validate_refuses_port_zero_and_backward_ranges() {
        let zero = |host_port, port| Publish {
            host_ip: DEFAULT_PUBLISH_IP,
            host_port,
            port,
            protocol: Protocol::Tcp,
        };
        for p in [zero(0, 80), zero(8080, 0)] {
            let network = private(vec![publish("1:1"), p], vec![], vec![]);
            assert_refused(&network, "network.publish[1]", &p.to_string());
        }
        let mut backward = rule("allow:10.0.0.0/8");
        backward.ports = Some(PortRange {
            first: 90,
            last: 80,
        });
        assert_refused(
            &private(vec![], vec![backward], vec![]),
            "network.egress[0]",
            "past the last",
        );
        let mut zero_port = rule("allow:10.0.0.0/8");
        zero_port.ports = Some(PortRange { first: 0, last: 80 });
        assert_refused(
            &private(vec![], vec![rule("deny:1.2.3.4"), zero_port], vec![]),
            "network.egress[1]",
            "1 to 65535",
        );
        let host_bits = Rule {
            net: IpNet::V4(Ipv4Net::new(Ipv4Addr::new(10, 0, 0, 1), 8).unwrap()),
            ..rule("allow:10.0.0.0/8")
        };
        assert_refused(
            &private(vec![], vec![host_bits], vec![]),
            "network.egress[0]",
            "host bits",
        );
    }

    #[test]
    fn validate_refuses_two_publishes_of_one_host_port() {
        let network = private(
            vec![
                publish("8080:80"),
                publish("9090:90"),
                publish("127.0.0.1:8080:81"),
            ],
            vec![],
            vec![],
        );
        assert_refused(&network, "network.publish[2]", "network.publish[0]");
        // Every address overlaps each one.
        let network = private(
            vec![publish("8080:80"), publish("0.0.0.0:8080:81")],
            vec![],
            vec![],
        );
        assert_refused(&network, "network.publish[1]", "127.0.0.1:8080:80/tcp");
        // Another address or another protocol is another socket.
        let network = private(
            vec![
                publish("8080:80"),
                publish("127.0.0.2:8080:80"),
                publish("8080:80/udp"),
            ],
            vec![],
            vec![],
        );
        assert_eq!(network.validate(), Ok(()));
    }

    #[test]
    fn validate_refuses_ipv6_everywhere() {
        assert_refused(
            &private(vec![publish("[::1]:8080:80")], vec![], vec![]),
            "network.publish[0]",
            NO_IPV6,
        );
        assert_refused(
            &private(vec![], vec![rule("allow:[2001:db8::/32]")], vec![]),
            "network.egress[0]",
            NO_IPV6,
        );
        assert_refused(
            &private(
                vec![],
                vec![],
                vec![
                    "1.1.1.1".parse().unwrap(),
                    "2606:4700::1111".parse().unwrap(),
                ],
            ),
            "network.dns[1]",
            NO_IPV6,
        );
    }

    #[test]
    fn validate_refuses_dns_servers_that_are_no_host() {
        for (server, says) in [
            ("0.0.0.0", "unspecified"),
            ("224.0.0.251", "multicast"),
            ("255.255.255.255", "broadcast"),
        ] {
            let network = private(vec![], vec![], vec![server.parse().unwrap()]);
            assert_refused(&network, "network.dns[0]", says);
            assert_refused(&network, "network.dns[0]", server);
        }
    }

    #[test]
    fn networks_have_a_json_form() {
        let network = private(
            vec![publish("8080:80")],
            vec![rule("deny:10.0.0.0/8:22/tcp")],
            vec!["9.9.9.9".parse().unwrap()],
        );
        let json = serde_json::to_string(&network).unwrap();
        assert_eq!(serde_json::from_str::<Network>(&json).unwrap(), network);
        assert_eq!(
            serde_json::from_str::<Network>("\"host\"").unwrap(),
            Network::Host
        );
        assert_eq!(
            serde_json::from_str::<Network>(r#"{"private":{}}"#).unwrap(),
            private(vec![], vec![], vec![])
        );
    }

    fn any_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<u32>().prop_map(|bits| IpAddr::V4(Ipv4Addr::from(bits))),
            any::<u128>().prop_map(|bits| IpAddr::V6(Ipv6Addr::from(bits))),
        ]
    }

    fn any_protocol() -> impl Strategy<Value = Protocol> {
        prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp)]
    }

    fn any_net() -> impl Strategy<Value = IpNet> {
        prop_oneof![
            (any::<u32>(), 0u8..=32).prop_map(|(bits, len)| IpNet::V4(
                Ipv4Net::new(Ipv4Addr::from(bits), len).unwrap().trunc()
            )),
            (any::<u128>(), 0u8..=128).prop_map(|(bits, len)| IpNet::V6(
                Ipv6Net::new(Ipv6Addr::from(bits), len).unwrap().trunc()
            )),
        ]
    }

    fn any_range() -> impl Strategy<Value = PortRange> {
        (1u16..=u16::MAX, 1u16..=u16::MAX).prop_map(|(a, b)| PortRange {
            first: a.min(b),
            last: a.max(b),
        })
    }

    proptest! {
        #[test]
        fn publishes_print_as_they_parse(
            host_ip in any_ip(),
            host_port in 1u16..=u16::MAX,
            port in 1u16..=u16::MAX,
            protocol in any_protocol(),
        ) {
            let p = Publish { host_ip, host_port, port, protocol };
            prop_assert_eq!(p.to_string().parse::<Publish>(), Ok(p));
        }

        #[test]
        fn rules_print_as_they_parse(
            action in prop_oneof![Just(Action::Allow), Just(Action::Deny)],
            net in any_net(),
            ports in proptest::option::of(any_range()),
            protocol in proptest::option::of(any_protocol()),
        ) {
            let r = Rule { action, net, ports, protocol };
            prop_assert_eq!(r.to_string().parse::<Rule>(), Ok(r));
        }
    }
}
