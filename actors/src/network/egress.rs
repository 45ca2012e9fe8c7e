//! The egress policy of a private network, as nftables rules in the
//! sandbox's network namespace.
//!
//! # Contract
//! - [`ruleset`] is a plain function of the plan and the host's prefixes:
//!   one `inet sandvisor` table with one `output` chain that, in order:
//!   drops packets conntrack finds invalid and new connections from any
//!   source but the sandbox's own (forged sources would plant conntrack
//!   entries); accepts traffic on `lo` (the sandbox talking to itself),
//!   replies to connections already accepted (published ports), DNS to the
//!   forwarder or to the servers the config names; then the config's rules
//!   in their order; then the defaults — reject the host's own addresses,
//!   its connected networks and gateways, loopback, link-local (the
//!   metadata address among them), private and reserved ranges, all IPv6
//!   (not provided) and all other UDP (see below) — and accept the rest.
//! - UDP is denied unless a rule allows it: the installed `pasta` (2023)
//!   binds each UDP flow's source port on every host address, which would
//!   give the sandbox unpublished inbound ports.
//! - A rejected TCP connection gets a reset and anything else an ICMP
//!   "administratively prohibited": a denied connection fails at once, never
//!   hangs.
//! - [`apply`] installs the rules from the host (an `nft` child that enters
//!   only the namespace) before the agent is told to start, so no command of
//!   the sandbox ever runs without them; the sandbox cannot change them
//!   without `CAP_NET_ADMIN`, which a private network refuses to grant.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt as _;
use std::process::Stdio;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net};
use nftables::expr::{
    Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, Range, SetItem, CT,
};
use nftables::schema::{Chain, NfCmd, NfListObject, NfObject, Nftables, Table};
use nftables::stmt::{Match, Operator, Reject, RejectType, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook, RejectCode};
use tokio::io::AsyncWriteExt;

use super::{
    find_program, Action, NetworkPlan, PortRange, Protocol, Rule, DNS_ADDRESS, SANDBOX_ADDRESS,
};

/// The table holding the rules.
pub const TABLE: &str = "sandvisor";
/// Its chain, on the output hook.
pub const CHAIN: &str = "egress";
/// How long `nft` may take.
const NFT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a private network denies unless a rule allows it (besides the
/// host's own addresses): this network, loopback, link-local, private,
/// shared and reserved ranges, multicast and broadcast.
pub const DENIED_BY_DEFAULT: [(Ipv4Addr, u8); 12] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8),
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    (Ipv4Addr::new(100, 64, 0, 0), 10),
    (Ipv4Addr::new(127, 0, 0, 0), 8),
    (Ipv4Addr::new(169, 254, 0, 0), 16),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    (Ipv4Addr::new(192, 0, 0, 0), 24),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
    (Ipv4Addr::new(198, 18, 0, 0), 15),
    (Ipv4Addr::new(224, 0, 0, 0), 4),
    (Ipv4Addr::new(240, 0, 0, 0), 4),
    // Azure's platform endpoint (WireServer), beside the metadata address.
    (Ipv4Addr::new(168, 63, 129, 16), 32),
];

/// The rules for `plan` on a host whose own addresses and routed prefixes
/// (its connected networks and gateways) are `host` (see the module docs).
pub fn ruleset(plan: &NetworkPlan, host: &[(Ipv4Addr, u8)]) -> Nftables<'static> {
    let mut rules: Vec<Vec<Statement<'static>>> = vec![
        // Nothing but the sandbox's own addresses may open a connection: a
        // forged source would plant a conntrack entry whose "reply" is then
        // accepted as established (NET_RAW is refused too; this stays).
        vec![
            matches(
                ct_state(),
                Operator::IN,
                Expression::List(vec![text("invalid")]),
            ),
            Statement::Drop(None),
        ],
        vec![
            matches(
                ct_state(),
                Operator::IN,
                Expression::List(vec![text("new")]),
            ),
            matches(meta(MetaKey::Nfproto), Operator::EQ, text("ipv4")),
            matches(
                payload("ip", "saddr"),
                Operator::NEQ,
                Expression::Named(NamedExpression::Set(vec![
                    SetItem::Element(prefix(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8)),
                    SetItem::Element(Expression::String(Cow::Owned(SANDBOX_ADDRESS.to_string()))),
                ])),
            ),
            Statement::Drop(None),
        ],
        vec![
            matches(meta(MetaKey::Oifname), Operator::EQ, text("lo")),
            accept(),
        ],
        vec![
            matches(
                ct_state(),
                Operator::IN,
                Expression::List(vec![text("established"), text("related")]),
            ),
            accept(),
        ],
    ];
    // DNS: the forwarder, or the servers the config names.
    let servers: Vec<IpAddr> = if plan.dns.is_empty() {
        vec![IpAddr::V4(DNS_ADDRESS)]
    } else {
        plan.dns.clone()
    };
    for server in servers {
        rules.extend(translate(&Rule {
            action: Action::Allow,
            net: IpNet::from(server),
            ports: Some(PortRange {
                first: 53,
                last: 53,
            }),
            protocol: None,
        }));
    }
    for rule in &plan.egress {
        rules.extend(translate(rule));
    }
    let denied = host.iter().copied().chain(DENIED_BY_DEFAULT);
    for (address, len) in denied {
        let net = Ipv4Net::new(address, len).unwrap_or_else(|_| Ipv4Net::from(address));
        rules.extend(translate(&Rule {
            action: Action::Deny,
            net: IpNet::V4(net.trunc()),
            ports: None,
            protocol: None,
        }));
    }
    rules.push(vec![
        matches(meta(MetaKey::Nfproto), Operator::EQ, text("ipv6")),
        reject_other(),
    ]);
    // UDP only where a rule allows it: the installed pasta binds the
    // sandbox's UDP source ports on all the host's addresses, which would
    // open unpublished ports into the sandbox.
    rules.push(vec![
        matches(meta(MetaKey::L4proto), Operator::EQ, text("udp")),
        reject_other(),
    ]);
    let mut objects = vec![
        NfObject::CmdObject(NfCmd::Add(NfListObject::Table(Table {
            family: NfFamily::INet,
            name: TABLE.into(),
            handle: None,
        }))),
        NfObject::CmdObject(NfCmd::Add(NfListObject::Chain(Chain {
            family: NfFamily::INet,
            table: TABLE.into(),
            name: CHAIN.into(),
            _type: Some(NfChainType::Filter),
            hook: Some(NfHook::Output),
            prio: Some(0),
            policy: Some(NfChainPolicy::Accept),
            ..Chain::default()
        }))),
    ];
    objects.extend(rules.into_iter().map(|expr| {
        NfObject::CmdObject(NfCmd::Add(NfListObject::Rule(nftables::schema::Rule {
            family: NfFamily::INet,
            table: TABLE.into(),
            chain: CHAIN.into(),
            expr: expr.into(),
            ..nftables::schema::Rule::default()
        })))
    }));
    Nftables {
        objects: Cow::Owned(objects),
    }
}

/// One config rule as nftables rules: one for an allow; for a deny, a TCP
/// reset for TCP (unless it is UDP only) and an ICMP reject for the rest.
fn translate(rule: &Rule) -> Vec<Vec<Statement<'static>>> {
    let mut matched = Vec::new();
    match rule.net {
        IpNet::V4(net) => {
            matched.push(matches(meta(MetaKey::Nfproto), Operator::EQ, text("ipv4")));
            matched.push(matches(
                payload("ip", "daddr"),
                Operator::EQ,
                prefix(IpAddr::V4(net.network()), net.prefix_len()),
            ));
        }
        IpNet::V6(net) => {
            matched.push(matches(meta(MetaKey::Nfproto), Operator::EQ, text("ipv6")));
            matched.push(matches(
                payload("ip6", "daddr"),
                Operator::EQ,
                prefix(IpAddr::V6(net.network()), net.prefix_len()),
            ));
        }
    }
    match (rule.protocol, rule.ports) {
        (Some(protocol), _) => matched.push(matches(
            meta(MetaKey::L4proto),
            Operator::EQ,
            text(protocol_name(protocol)),
        )),
        // Ports without a protocol mean TCP and UDP.
        (None, Some(_)) => matched.push(matches(
            meta(MetaKey::L4proto),
            Operator::IN,
            Expression::Named(NamedExpression::Set(vec![
                SetItem::Element(text("tcp")),
                SetItem::Element(text("udp")),
            ])),
        )),
        (None, None) => {}
    }
    if let Some(ports) = rule.ports {
        let port = if ports.first == ports.last {
            Expression::Number(u32::from(ports.first))
        } else {
            Expression::Range(Box::new(Range {
                range: [
                    Expression::Number(u32::from(ports.first)),
                    Expression::Number(u32::from(ports.last)),
                ],
            }))
        };
        matched.push(matches(payload("th", "dport"), Operator::EQ, port));
    }
    match rule.action {
        Action::Allow => {
            matched.push(accept());
            vec![matched]
        }
        Action::Deny => {
            let mut out = Vec::new();
            if rule.protocol != Some(Protocol::Udp) {
                let mut tcp = matched.clone();
                tcp.push(matches(meta(MetaKey::L4proto), Operator::EQ, text("tcp")));
                tcp.push(Statement::Reject(Some(Reject::new(
                    Some(RejectType::TCPReset),
                    None,
                ))));
                out.push(tcp);
            }
            matched.push(reject_other());
            out.push(matched);
            out
        }
    }
}

fn ct_state() -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: "state".into(),
        family: None,
        dir: None,
    }))
}

fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

fn text(value: &'static str) -> Expression<'static> {
    Expression::String(Cow::Borrowed(value))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

fn prefix(address: IpAddr, len: u8) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(Expression::String(Cow::Owned(address.to_string()))),
        len: u32::from(len),
    }))
}

fn matches(
    left: Expression<'static>,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn accept() -> Statement<'static> {
    Statement::Accept(None)
}

fn reject_other() -> Statement<'static> {
    Statement::Reject(Some(Reject::new(
        Some(RejectType::ICMPX),
        Some(RejectCode::AdminProhibited),
    )))
}

/// What of the host a private network denies besides the fixed ranges (in
/// this process's network namespace, read when the network is built): the
/// IPv4 addresses of its interfaces (loopback's aside, denied as a range),
/// the prefixes of its routes other than the default route (its connected
/// networks), and its gateways.
pub fn host_prefixes() -> Vec<(Ipv4Addr, u8)> {
    let mut prefixes: Vec<(Ipv4Addr, u8)> = nix::ifaddrs::getifaddrs()
        .map(|interfaces| {
            interfaces
                .filter_map(|interface| interface.address)
                .filter_map(|address| address.as_sockaddr_in().map(|inet| inet.ip()))
                .filter(|address| !address.is_loopback())
                .map(|address| (address, 32))
                .collect()
        })
        .unwrap_or_default();
    let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    prefixes.extend(routes.lines().skip(1).flat_map(route_prefixes));
    prefixes.sort_unstable();
    prefixes.dedup();
    prefixes
}

/// One line of `/proc/net/route` (`Iface Destination Gateway Flags RefCnt
/// Use Metric Mask …`; addresses are the bytes of the address in network
/// order, printed as a native-endian hex word): its prefix unless it is the
/// default route, and its gateway if it has one.
fn route_prefixes(line: &str) -> Vec<(Ipv4Addr, u8)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let address = |at: usize| {
        fields
            .get(at)
            .and_then(|hex| u32::from_str_radix(hex, 16).ok())
            .map(|word| Ipv4Addr::from(word.to_ne_bytes()))
    };
    let (Some(destination), Some(gateway), Some(mask)) = (address(1), address(2), address(7))
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let len = u32::from(mask).count_ones() as u8;
    if len > 0 {
        out.push((destination, len));
    }
    if !gateway.is_unspecified() {
        out.push((gateway, 32));
    }
    out
}

/// Installs `rules` in the network namespace `netns`.
///
/// # Errors
/// Why not, in words for a boot error: `nft` missing, `nft` refusing the
/// rules (its message), or taking longer than 10 s.
pub async fn apply(netns: BorrowedFd<'_>, rules: &Nftables<'_>) -> Result<(), String> {
    let nft = find_program("nft")
        .ok_or("nft is not installed (Debian's nftables package provides it)")?;
    let json = serde_json::to_vec(rules).map_err(|e| format!("cannot encode the rules: {e}"))?;
    let fd = netns.as_raw_fd();
    let mut command = tokio::process::Command::new(nft);
    command
        .args(["-j", "-f", "-"])
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: setns is async-signal-safe; `fd` is borrowed for the whole
    // call, so it is open when the child is forked.
    unsafe {
        command.as_std_mut().pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            crate::host::launcher::inherit_only(&[])
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    let run = async {
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(&json).await?;
        }
        child.wait_with_output().await
    };
    let output = tokio::time::timeout(NFT_TIMEOUT, run)
        .await
        .map_err(|_| format!("nft did not finish within {NFT_TIMEOUT:?}"))?
        .map_err(|e| format!("cannot run nft: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft refused the egress rules ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}
