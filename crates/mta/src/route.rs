//! Routing a remote domain to the hosts that accept its mail (RFC 5321
//! section 5.1, RFC 7505 null MX).
//!
//! The DNS sits behind the small [`Resolver`] trait so the routing rules
//! are unit-tested with a table; [`HickoryResolver`] is the real one.

use futures::future::BoxFuture;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use rand::seq::SliceRandom;
use std::net::{IpAddr, SocketAddr};

/// One MX record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxRecord {
    pub preference: u16,
    /// Exchange host without the trailing dot; "" for the root (null MX).
    pub exchange: String,
}

/// A DNS answer that is not a list of records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// NXDOMAIN: the name does not exist (permanent).
    #[error("{0}: no such domain")]
    NxDomain(String),
    /// The name exists but has no records of the type asked.
    #[error("{0}: no records")]
    NoRecords(String),
    /// Timeout, SERVFAIL, no nameserver reachable: try again later.
    #[error("{name}: DNS lookup failed: {reason}")]
    Temporary { name: String, reason: String },
}

/// The lookups routing needs.
pub trait Resolver: Send + Sync {
    /// MX records of `domain` (any order).
    fn mx<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<Vec<MxRecord>, DnsError>>;
    /// A and AAAA addresses of `host`.
    fn ips<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, DnsError>>;
}

/// A host to try, with its addresses, in the order to try them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub addrs: Vec<IpAddr>,
}

/// Why a domain cannot be routed now; carries the SMTP-style reply that
/// is recorded for its recipients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("{0}")]
    Permanent(String),
    #[error("{0}")]
    Temporary(String),
}

/// The hosts for `domain`: MX hosts by preference (equal preferences in
/// random order, RFC 5321 5.1), or the domain itself when it has no MX
/// (the implicit MX). A null MX or NXDOMAIN is a permanent failure.
pub async fn route(resolver: &dyn Resolver, domain: &str) -> Result<Vec<Target>, RouteError> {
    route_from(resolver, domain, None).await
}

/// [`route`] as seen from the host `me`: when `me` is among the MX hosts,
/// only hosts with a lower preference value are used (RFC 5321 5.1), and
/// if `me` is the best MX of a domain it does not serve, that is a loop.
pub async fn route_from(
    resolver: &dyn Resolver,
    domain: &str,
    me: Option<&str>,
) -> Result<Vec<Target>, RouteError> {
    let records = match resolver.mx(domain).await {
        Ok(records) => records,
        Err(DnsError::NxDomain(_)) => {
            return Err(RouteError::Permanent(format!(
                "550 5.1.2 domain {domain} does not exist"
            )));
        }
        Err(DnsError::NoRecords(_)) => Vec::new(),
        Err(e @ DnsError::Temporary { .. }) => {
            return Err(RouteError::Temporary(format!("451 4.4.3 {e}")));
        }
    };
    if records.len() == 1 && records[0].exchange.is_empty() {
        return Err(RouteError::Permanent(format!(
            "556 5.1.10 domain {domain} does not accept mail (null MX)"
        )));
    }
    let mut hosts: Vec<MxRecord> = records
        .into_iter()
        .filter(|r| !r.exchange.is_empty())
        .collect();
    if hosts.is_empty() {
        // RFC 5321 5.1: no MX → the domain itself, preference 0.
        return match resolver.ips(domain).await {
            Ok(addrs) if !addrs.is_empty() => Ok(vec![Target {
                host: domain.to_string(),
                addrs,
            }]),
            Ok(_) | Err(DnsError::NoRecords(_)) | Err(DnsError::NxDomain(_)) => {
                Err(RouteError::Permanent(format!(
                    "550 5.1.2 domain {domain} has no MX and no address records"
                )))
            }
            Err(e) => Err(RouteError::Temporary(format!("451 4.4.3 {e}"))),
        };
    }
    order_by_preference(&mut hosts);
    if let Some(me) = me
        && let Some(mine) = hosts.iter().find(|h| h.exchange.eq_ignore_ascii_case(me))
    {
        let limit = mine.preference;
        hosts.retain(|h| h.preference < limit);
        if hosts.is_empty() {
            return Err(RouteError::Permanent(format!(
                "554 5.4.6 mail for {domain} loops back to this host (it is the best MX)"
            )));
        }
    }
    let mut targets = Vec::new();
    let mut last_error = None;
    for mx in hosts {
        match resolver.ips(&mx.exchange).await {
            Ok(addrs) if !addrs.is_empty() => targets.push(Target {
                host: mx.exchange,
                addrs,
            }),
            Ok(_) => last_error = Some(format!("{}: no addresses", mx.exchange)),
            Err(e) => {
                tracing::debug!(host = %mx.exchange, error = %e, "MX host does not resolve");
                last_error = Some(e.to_string());
            }
        }
    }
    if targets.is_empty() {
        // Broken MX hosts are usually fixed by their owner; keep trying.
        return Err(RouteError::Temporary(format!(
            "451 4.4.4 no MX host of {domain} resolves ({})",
            last_error.unwrap_or_default()
        )));
    }
    Ok(targets)
}

/// Sorts by preference, shuffling hosts of equal preference (load
/// spreading as RFC 5321 5.1 asks).
fn order_by_preference(hosts: &mut [MxRecord]) {
    hosts.shuffle(&mut rand::thread_rng());
    // Stable sort keeps the shuffled order within each preference.
    hosts.sort_by_key(|h| h.preference);
}

/// The real resolver: hickory over UDP and TCP.
pub struct HickoryResolver {
    inner: TokioResolver,
}

impl HickoryResolver {
    /// Uses `nameservers` (ip:port, UDP and TCP), or the system
    /// configuration (/etc/resolv.conf) when empty.
    pub fn new(nameservers: &[SocketAddr]) -> Result<HickoryResolver, DnsError> {
        let to_err = |e: NetError| DnsError::Temporary {
            name: "resolver configuration".into(),
            reason: e.to_string(),
        };
        let builder = if nameservers.is_empty() {
            match TokioResolver::builder_tokio() {
                Ok(builder) => builder,
                Err(e) => {
                    // Local delivery must not depend on /etc/resolv.conf:
                    // start anyway; relay lookups then fail temporarily.
                    tracing::warn!(error = %e, "no usable system DNS configuration; remote domains will be deferred");
                    TokioResolver::builder_with_config(
                        ResolverConfig::from_name_servers(Vec::new()),
                        TokioRuntimeProvider::default(),
                    )
                }
            }
        } else {
            let servers = nameservers
                .iter()
                .map(|ns| {
                    let mut config = NameServerConfig::udp_and_tcp(ns.ip());
                    for connection in &mut config.connections {
                        connection.port = ns.port();
                    }
                    config
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        };
        Ok(HickoryResolver {
            inner: builder.build().map_err(to_err)?,
        })
    }
}

/// Absolute name, so search domains of resolv.conf never apply.
fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

fn map_error(name: &str, e: NetError) -> DnsError {
    if e.is_nx_domain() {
        DnsError::NxDomain(name.to_string())
    } else if e.is_no_records_found() {
        DnsError::NoRecords(name.to_string())
    } else {
        DnsError::Temporary {
            name: name.to_string(),
            reason: e.to_string(),
        }
    }
}

impl Resolver for HickoryResolver {
    fn mx<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<Vec<MxRecord>, DnsError>> {
        Box::pin(async move {
            let lookup = self
                .inner
                .mx_lookup(fqdn(domain))
                .await
                .map_err(|e| map_error(domain, e))?;
            Ok(lookup
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    RData::MX(mx) => Some(MxRecord {
                        preference: mx.preference,
                        exchange: if mx.exchange.is_root() {
                            String::new()
                        } else {
                            mx.exchange
                                .to_ascii()
                                .trim_end_matches('.')
                                .to_ascii_lowercase()
                        },
                    }),
                    _ => None,
                })
                .collect())
        })
    }

    fn ips<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, DnsError>> {
        Box::pin(async move {
            let lookup = self
                .inner
                .lookup_ip(fqdn(host))
                .await
                .map_err(|e| map_error(host, e))?;
            Ok(lookup.iter().collect())
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A table-driven resolver for tests.
    #[derive(Default)]
    pub struct FakeResolver {
        pub mx: HashMap<String, Result<Vec<MxRecord>, DnsError>>,
        pub ips: HashMap<String, Result<Vec<IpAddr>, DnsError>>,
    }

    impl FakeResolver {
        pub fn with_mx(mut self, domain: &str, records: &[(u16, &str)]) -> Self {
            self.mx.insert(
                domain.into(),
                Ok(records
                    .iter()
                    .map(|(p, e)| MxRecord {
                        preference: *p,
                        exchange: e.to_string(),
                    })
                    .collect()),
            );
            self
        }
        pub fn with_ip(mut self, host: &str, ip: &str) -> Self {
            self.ips.insert(host.into(), Ok(vec![ip.parse().unwrap()]));
            self
        }
    }

    impl Resolver for FakeResolver {
        fn mx<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<Vec<MxRecord>, DnsError>> {
            let answer = self
                .mx
                .get(domain)
                .cloned()
                .unwrap_or_else(|| Err(DnsError::NxDomain(domain.into())));
            Box::pin(async move { answer })
        }
        fn ips<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, DnsError>> {
            let answer = self
                .ips
                .get(host)
                .cloned()
                .unwrap_or_else(|| Err(DnsError::NxDomain(host.into())));
            Box::pin(async move { answer })
        }
    }

    fn hosts(targets: &[Target]) -> Vec<&str> {
        targets.iter().map(|t| t.host.as_str()).collect()
    }

    #[tokio::test]
    async fn mx_hosts_in_preference_order() {
        let r = FakeResolver::default()
            .with_mx(
                "d.test",
                &[(30, "c.d.test"), (10, "a.d.test"), (20, "b.d.test")],
            )
            .with_ip("a.d.test", "192.0.2.1")
            .with_ip("b.d.test", "192.0.2.2")
            .with_ip("c.d.test", "192.0.2.3");
        let targets = route(&r, "d.test").await.unwrap();
        assert_eq!(hosts(&targets), vec!["a.d.test", "b.d.test", "c.d.test"]);
        assert_eq!(
            targets[0].addrs,
            vec!["192.0.2.1".parse::<IpAddr>().unwrap()]
        );
    }

    #[tokio::test]
    async fn equal_preferences_are_shuffled_but_stay_grouped() {
        let r = FakeResolver::default()
            .with_mx(
                "d.test",
                &[(20, "z.d.test"), (10, "x.d.test"), (10, "y.d.test")],
            )
            .with_ip("x.d.test", "192.0.2.1")
            .with_ip("y.d.test", "192.0.2.2")
            .with_ip("z.d.test", "192.0.2.3");
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..64 {
            let targets = route(&r, "d.test").await.unwrap();
            assert_eq!(targets[2].host, "z.d.test");
            firsts.insert(targets[0].host.clone());
        }
        assert_eq!(
            firsts.len(),
            2,
            "both preference-10 hosts come first sometimes"
        );
    }

    #[tokio::test]
    async fn unresolvable_mx_hosts_are_skipped() {
        let r = FakeResolver::default()
            .with_mx("d.test", &[(10, "gone.d.test"), (20, "b.d.test")])
            .with_ip("b.d.test", "192.0.2.2");
        assert_eq!(hosts(&route(&r, "d.test").await.unwrap()), vec!["b.d.test"]);
        let r = FakeResolver::default().with_mx("d.test", &[(10, "gone.d.test")]);
        assert!(matches!(
            route(&r, "d.test").await,
            Err(RouteError::Temporary(_))
        ));
    }

    #[tokio::test]
    async fn no_mx_falls_back_to_the_domain_address() {
        let mut r = FakeResolver::default().with_ip("d.test", "192.0.2.9");
        r.mx.insert("d.test".into(), Err(DnsError::NoRecords("d.test".into())));
        assert_eq!(hosts(&route(&r, "d.test").await.unwrap()), vec!["d.test"]);
        let r = FakeResolver::default().with_mx("e.test", &[]);
        let err = route(&r, "e.test").await.unwrap_err();
        assert!(
            matches!(&err, RouteError::Permanent(m) if m.starts_with("550 5.1.2")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn null_mx_and_nxdomain_are_permanent() {
        let r = FakeResolver::default().with_mx("null.test", &[(0, "")]);
        let err = route(&r, "null.test").await.unwrap_err();
        assert_eq!(
            err,
            RouteError::Permanent(
                "556 5.1.10 domain null.test does not accept mail (null MX)".into()
            )
        );
        let err = route(&r, "nowhere.test").await.unwrap_err();
        assert!(
            matches!(&err, RouteError::Permanent(m) if m.starts_with("550 5.1.2")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn dns_trouble_is_temporary() {
        let mut r = FakeResolver::default();
        r.mx.insert(
            "d.test".into(),
            Err(DnsError::Temporary {
                name: "d.test".into(),
                reason: "timeout".into(),
            }),
        );
        assert!(
            matches!(route(&r, "d.test").await, Err(RouteError::Temporary(m)) if m.starts_with("451 4.4.3"))
        );
    }

    /// A UDP DNS responder on loopback answering from a table: names not
    /// in the table are NXDOMAIN, known names without the asked type are
    /// NOERROR with no answers.
    async fn fake_dns(zone: Vec<(&'static str, RData)>) -> SocketAddr {
        use hickory_proto::op::{Message, ResponseCode};
        use hickory_proto::rr::{Name, Record};
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut response = Message::response(query.metadata.id, query.metadata.op_code);
                response.metadata.recursion_desired = query.metadata.recursion_desired;
                response.metadata.recursion_available = true;
                response.metadata.authoritative = true;
                response.add_queries(query.queries.clone());
                let q = &query.queries[0];
                let name = q
                    .name()
                    .to_ascii()
                    .trim_end_matches('.')
                    .to_ascii_lowercase();
                let known = zone.iter().any(|(n, _)| *n == name);
                if !known {
                    response.metadata.response_code = ResponseCode::NXDomain;
                }
                for (_, rdata) in zone
                    .iter()
                    .filter(|(n, r)| *n == name && r.record_type() == q.query_type())
                {
                    response.add_answer(Record::from_rdata(
                        Name::from_ascii(format!("{name}.")).unwrap(),
                        60,
                        rdata.clone(),
                    ));
                }
                let _ = socket.send_to(&response.to_vec().unwrap(), peer).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn hickory_resolver_against_a_loopback_dns_server() {
        use hickory_proto::rr::Name;
        use hickory_proto::rr::rdata::{A, MX};
        let mx = |p: u16, host: &str| RData::MX(MX::new(p, Name::from_ascii(host).unwrap()));
        let a = |ip: &str| RData::A(A(ip.parse().unwrap()));
        let dns = fake_dns(vec![
            ("d.test", mx(20, "b.d.test.")),
            ("d.test", mx(10, "a.d.test.")),
            ("a.d.test", a("127.0.0.11")),
            ("b.d.test", a("127.0.0.12")),
            ("null.test", RData::MX(MX::new(0, Name::root()))),
            ("plain.test", a("127.0.0.13")),
        ])
        .await;
        let resolver = HickoryResolver::new(&[dns]).unwrap();
        let targets = route(&resolver, "d.test").await.unwrap();
        assert_eq!(hosts(&targets), vec!["a.d.test", "b.d.test"]);
        assert_eq!(
            targets[0].addrs,
            vec!["127.0.0.11".parse::<IpAddr>().unwrap()]
        );
        let err = route(&resolver, "null.test").await.unwrap_err();
        assert!(
            matches!(&err, RouteError::Permanent(m) if m.starts_with("556 5.1.10")),
            "{err}"
        );
        let err = route(&resolver, "nowhere.test").await.unwrap_err();
        assert!(
            matches!(&err, RouteError::Permanent(m) if m.starts_with("550 5.1.2")),
            "{err}"
        );
        let targets = route(&resolver, "plain.test").await.unwrap();
        assert_eq!(hosts(&targets), vec!["plain.test"]);
        assert_eq!(
            targets[0].addrs,
            vec!["127.0.0.13".parse::<IpAddr>().unwrap()]
        );
    }

    #[tokio::test]
    async fn own_mx_entries_cut_the_list() {
        let r = FakeResolver::default()
            .with_mx(
                "d.test",
                &[(10, "a.d.test"), (20, "me.test"), (30, "c.d.test")],
            )
            .with_ip("a.d.test", "192.0.2.1")
            .with_ip("c.d.test", "192.0.2.3")
            .with_mx("loop.test", &[(10, "me.test"), (20, "c.d.test")]);
        let targets = route_from(&r, "d.test", Some("ME.test")).await.unwrap();
        assert_eq!(hosts(&targets), vec!["a.d.test"]);
        let err = route_from(&r, "loop.test", Some("me.test"))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, RouteError::Permanent(m) if m.starts_with("554 5.4.6")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_resolver_without_nameservers_defers() {
        let resolver = HickoryResolver {
            inner: TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(Vec::new()),
                TokioRuntimeProvider::default(),
            )
            .build()
            .unwrap(),
        };
        assert!(matches!(
            route(&resolver, "d.test").await,
            Err(RouteError::Temporary(_))
        ));
    }
}
