//! Relay to other organisations: route the domain, then try its hosts in
//! turn over SMTP (RFC 5321 5.1 and 4.5.4.1).
//!
//! Per host and address: a connection failure or a transaction-wide 4xx
//! moves on to the next address / host; per-recipient replies decide each
//! recipient (2xx delivered, 4xx tried at the next host and finally
//! deferred, 5xx failed). The SMTP exchange sits behind [`SmtpTransport`]
//! so the fail-over rules are unit-tested without sockets.

use crate::queue::Outcome;
use crate::route::{self, Resolver, RouteError};
use correo_smtp::client::{ClientConfig, ClientError, Connection};
use futures::future::BoxFuture;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Why one SMTP attempt as a whole failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptError {
    /// A 5xx for the whole transaction (MAIL FROM refused): no other host
    /// will think differently.
    pub permanent: bool,
    /// SMTP-style reply recorded for the recipients.
    pub reply: String,
}

/// `(recipient, reply code, reply as "250 2.0.0 text")`.
pub type RecipientReply = (String, u16, String);

/// One SMTP transaction with one server address.
pub trait SmtpTransport: Send + Sync {
    /// One reply per recipient (the RCPT refusal or the DATA reply).
    fn attempt<'a>(
        &'a self,
        addr: SocketAddr,
        host: &'a str,
        sender: &'a str,
        recipients: &'a [String],
        message: &'a [u8],
    ) -> BoxFuture<'a, Result<Vec<RecipientReply>, AttemptError>>;
}

/// How long an idle connection is kept for the next message to the same
/// address (connection reuse: several messages due together share one
/// SMTP session, one transaction after the other).
pub const IDLE_REUSE: Duration = Duration::from_secs(5);

/// Idle connections kept per address at most.
const MAX_IDLE_PER_ADDR: usize = 8;

type IdlePool = Mutex<HashMap<SocketAddr, Vec<(Connection, Instant)>>>;

/// The real transport: `correo_smtp::client`, with a pool of idle
/// connections per address.
pub struct SmtpClient {
    pub config: ClientConfig,
    idle: IdlePool,
    /// Connections opened (tests, diagnostics).
    opened: AtomicU64,
}

impl SmtpClient {
    pub fn new(config: ClientConfig) -> SmtpClient {
        SmtpClient {
            config,
            idle: Mutex::new(HashMap::new()),
            opened: AtomicU64::new(0),
        }
    }

    /// Connections opened so far.
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    fn take(&self, addr: SocketAddr) -> Option<Connection> {
        let mut idle = self.idle.lock();
        let list = idle.get_mut(&addr)?;
        while let Some((connection, since)) = list.pop() {
            if since.elapsed() < IDLE_REUSE {
                return Some(connection);
            }
        }
        None
    }

    fn put_back(&self, addr: SocketAddr, connection: Connection) {
        let mut idle = self.idle.lock();
        let list = idle.entry(addr).or_default();
        if list.len() < MAX_IDLE_PER_ADDR {
            list.push((connection, Instant::now()));
        }
    }

    /// Closes (QUIT) idle connections older than [`IDLE_REUSE`]; `all`
    /// closes every one (shutdown).
    pub async fn close_idle(&self, all: bool) {
        let expired: Vec<Connection> = {
            let mut idle = self.idle.lock();
            let mut expired = Vec::new();
            for list in idle.values_mut() {
                let (old, keep): (Vec<_>, Vec<_>) = list
                    .drain(..)
                    .partition(|(_, since)| all || since.elapsed() >= IDLE_REUSE);
                *list = keep;
                expired.extend(old.into_iter().map(|(c, _)| c));
            }
            idle.retain(|_, list| !list.is_empty());
            expired
        };
        futures::future::join_all(expired.into_iter().map(Connection::quit)).await;
    }

    fn outcomes(outcomes: Vec<correo_smtp::client::RecipientOutcome>) -> Vec<RecipientReply> {
        outcomes
            .into_iter()
            .map(|o| (o.recipient, o.reply.code, o.reply.to_string()))
            .collect()
    }
}

impl SmtpTransport for SmtpClient {
    fn attempt<'a>(
        &'a self,
        addr: SocketAddr,
        host: &'a str,
        sender: &'a str,
        recipients: &'a [String],
        message: &'a [u8],
    ) -> BoxFuture<'a, Result<Vec<RecipientReply>, AttemptError>> {
        Box::pin(async move {
            if let Some(mut connection) = self.take(addr) {
                match connection.send(sender, recipients, message).await {
                    Ok(outcomes) => {
                        let tls = connection.tls().unwrap_or_else(|| "none".into());
                        tracing::info!(journey_event = "connected", peer = %addr, host, %tls, detail = "reused", "reused connection to MX");
                        self.put_back(addr, connection);
                        return Ok(Self::outcomes(outcomes));
                    }
                    Err(e @ ClientError::Rejected(_)) => {
                        // MAIL refused; the session itself is fine (RSET done).
                        self.put_back(addr, connection);
                        return Err(client_error(addr, e));
                    }
                    // Closed by the server while idle: use a fresh one.
                    Err(e) => tracing::debug!(%addr, error = %e, "idle connection unusable"),
                }
            }
            let mut connection = Connection::connect(addr, host, &self.config)
                .await
                .map_err(|e| client_error(addr, e))?;
            self.opened.fetch_add(1, Ordering::Relaxed);
            let tls = connection.tls().unwrap_or_else(|| "none".into());
            tracing::info!(journey_event = "connected", peer = %addr, host, %tls, "connected to MX");
            match connection.send(sender, recipients, message).await {
                Ok(outcomes) => {
                    self.put_back(addr, connection);
                    Ok(Self::outcomes(outcomes))
                }
                Err(e @ ClientError::Rejected(_)) => {
                    connection.quit().await;
                    Err(client_error(addr, e))
                }
                Err(e) => Err(client_error(addr, e)),
            }
        })
    }
}

fn client_error(addr: SocketAddr, e: ClientError) -> AttemptError {
    let permanent = e.is_permanent();
    let reply = match &e {
        ClientError::Rejected(reply) => format!("{reply} (from {addr})"),
        ClientError::Timeout(_) => format!("451 4.4.2 {addr}: {e}"),
        _ => format!("451 4.4.1 {addr}: {e}"),
    };
    AttemptError { permanent, reply }
}

/// Relays messages for remote domains.
pub struct Relay {
    pub resolver: Arc<dyn Resolver>,
    pub transport: Arc<dyn SmtpTransport>,
    pub port: u16,
    /// This host's name, to recognise itself among MX hosts.
    pub hostname: String,
}

impl Relay {
    /// Delivers `message` to `recipients` (all in `domain`); one outcome
    /// per recipient.
    pub async fn deliver(
        &self,
        domain: &str,
        sender: &str,
        recipients: &[String],
        message: &[u8],
    ) -> Vec<(String, Outcome)> {
        let all = |make: fn(String) -> Outcome, reply: String| {
            recipients
                .iter()
                .map(|r| (r.clone(), make(reply.clone())))
                .collect::<Vec<_>>()
        };
        let targets =
            match route::route_from(self.resolver.as_ref(), domain, Some(&self.hostname)).await {
                Ok(targets) => targets,
                Err(RouteError::Permanent(reply)) => return all(Outcome::Failed, reply),
                Err(RouteError::Temporary(reply)) => return all(Outcome::Deferred, reply),
            };
        let hosts: Vec<&str> = targets.iter().map(|t| t.host.as_str()).collect();
        tracing::info!(journey_event = "mx", domain, host = %hosts.join(", "), "MX lookup");
        let mut results = Vec::new();
        let mut remaining: Vec<String> = recipients.to_vec();
        let mut last_temporary = format!("451 4.4.1 no MX host of {domain} reachable");
        'hosts: for target in &targets {
            for ip in &target.addrs {
                let addr = SocketAddr::new(*ip, self.port);
                match self
                    .transport
                    .attempt(addr, &target.host, sender, &remaining, message)
                    .await
                {
                    Err(e) if e.permanent => {
                        tracing::info!(%addr, host = %target.host, reply = %e.reply, "transaction refused");
                        results.extend(
                            remaining
                                .drain(..)
                                .map(|r| (r, Outcome::Failed(e.reply.clone()))),
                        );
                        break 'hosts;
                    }
                    Err(e) => {
                        tracing::info!(%addr, host = %target.host, reply = %e.reply, "attempt failed; trying next");
                        last_temporary = e.reply;
                    }
                    Ok(outcomes) => {
                        let mut retry_elsewhere = Vec::new();
                        for recipient in remaining.drain(..) {
                            match outcomes
                                .iter()
                                .find(|(r, _, _)| r.eq_ignore_ascii_case(&recipient))
                            {
                                Some((_, code, reply)) if (200..300).contains(code) => {
                                    results.push((recipient, Outcome::Delivered(reply.clone())));
                                }
                                Some((_, code, reply)) if (500..600).contains(code) => {
                                    results.push((recipient, Outcome::Failed(reply.clone())));
                                }
                                Some((_, _, reply)) => {
                                    last_temporary = reply.clone();
                                    retry_elsewhere.push(recipient);
                                }
                                None => retry_elsewhere.push(recipient),
                            }
                        }
                        remaining = retry_elsewhere;
                        if remaining.is_empty() {
                            break 'hosts;
                        }
                        // A 4xx from this host: the next host may do better.
                        continue 'hosts;
                    }
                }
            }
        }
        results.extend(
            remaining
                .into_iter()
                .map(|r| (r, Outcome::Deferred(last_temporary.clone()))),
        );
        results
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::tests::FakeResolver;
    use parking_lot::Mutex;
    use std::collections::HashMap;

    type Script = Result<Vec<RecipientReply>, AttemptError>;
    type Answer = Box<dyn Fn(&[String]) -> Script + Send + Sync>;

    /// Answers per address; records the order of attempts.
    #[derive(Default)]
    struct FakeTransport {
        answers: HashMap<SocketAddr, Answer>,
        tried: Mutex<Vec<SocketAddr>>,
    }

    impl SmtpTransport for FakeTransport {
        fn attempt<'a>(
            &'a self,
            addr: SocketAddr,
            _host: &'a str,
            _sender: &'a str,
            recipients: &'a [String],
            _message: &'a [u8],
        ) -> BoxFuture<'a, Result<Vec<RecipientReply>, AttemptError>> {
            self.tried.lock().push(addr);
            let answer = match self.answers.get(&addr) {
                Some(f) => f(recipients),
                None => Err(AttemptError {
                    permanent: false,
                    reply: "451 4.4.1 connection refused".into(),
                }),
            };
            Box::pin(async move { answer })
        }
    }

    fn addr(s: &str) -> SocketAddr {
        format!("{s}:25").parse().unwrap()
    }

    fn relay(transport: Arc<FakeTransport>) -> Relay {
        let resolver = FakeResolver::default()
            .with_mx("d.test", &[(10, "a.d.test"), (20, "b.d.test")])
            .with_ip("a.d.test", "192.0.2.1")
            .with_ip("b.d.test", "192.0.2.2")
            .with_mx("null.test", &[(0, "")]);
        Relay {
            resolver: Arc::new(resolver),
            transport,
            port: 25,
            hostname: "mx.example.test".into(),
        }
    }

    fn rcpts(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn refused_connection_moves_to_the_next_mx() {
        let mut t = FakeTransport::default();
        t.answers.insert(
            addr("192.0.2.2"),
            Box::new(|r: &[String]| {
                Ok(r.iter()
                    .map(|r| (r.clone(), 250, "250 2.0.0 ok".into()))
                    .collect())
            }),
        );
        let t = Arc::new(t);
        let out = relay(t.clone())
            .deliver("d.test", "s@x.test", &rcpts(&["u@d.test"]), b"m")
            .await;
        assert_eq!(
            out,
            vec![("u@d.test".into(), Outcome::Delivered("250 2.0.0 ok".into()))]
        );
        assert_eq!(*t.tried.lock(), vec![addr("192.0.2.1"), addr("192.0.2.2")]);
    }

    #[tokio::test]
    async fn per_recipient_outcomes_and_4xx_tries_next_host() {
        let mut t = FakeTransport::default();
        t.answers.insert(
            addr("192.0.2.1"),
            Box::new(|_: &[String]| {
                Ok(vec![
                    ("ok@d.test".into(), 250, "250 ok".into()),
                    ("later@d.test".into(), 451, "451 4.2.0 busy".into()),
                    ("bad@d.test".into(), 550, "550 5.1.1 unknown".into()),
                ])
            }),
        );
        t.answers.insert(
            addr("192.0.2.2"),
            Box::new(|r: &[String]| {
                assert_eq!(r, ["later@d.test".to_string()]);
                Ok(vec![("later@d.test".into(), 452, "452 4.3.1 full".into())])
            }),
        );
        let t = Arc::new(t);
        let out = relay(t.clone())
            .deliver(
                "d.test",
                "s@x.test",
                &rcpts(&["ok@d.test", "later@d.test", "bad@d.test"]),
                b"m",
            )
            .await;
        assert!(out.contains(&("ok@d.test".into(), Outcome::Delivered("250 ok".into()))));
        assert!(out.contains(&(
            "bad@d.test".into(),
            Outcome::Failed("550 5.1.1 unknown".into())
        )));
        assert!(out.contains(&(
            "later@d.test".into(),
            Outcome::Deferred("452 4.3.1 full".into())
        )));
        assert_eq!(t.tried.lock().len(), 2);
    }

    #[tokio::test]
    async fn permanent_refusal_stops_and_unreachable_defers() {
        let mut t = FakeTransport::default();
        t.answers.insert(
            addr("192.0.2.1"),
            Box::new(|_: &[String]| {
                Err(AttemptError {
                    permanent: true,
                    reply: "550 5.7.1 go away".into(),
                })
            }),
        );
        let t = Arc::new(t);
        let out = relay(t.clone())
            .deliver("d.test", "s@x.test", &rcpts(&["u@d.test"]), b"m")
            .await;
        assert_eq!(
            out,
            vec![(
                "u@d.test".into(),
                Outcome::Failed("550 5.7.1 go away".into())
            )]
        );
        assert_eq!(t.tried.lock().len(), 1);

        let t = Arc::new(FakeTransport::default());
        let out = relay(t)
            .deliver("d.test", "s@x.test", &rcpts(&["u@d.test"]), b"m")
            .await;
        assert!(matches!(&out[0].1, Outcome::Deferred(r) if r.starts_with("451 4.4.1")));
    }

    #[tokio::test]
    async fn null_mx_fails_without_connecting() {
        let t = Arc::new(FakeTransport::default());
        let out = relay(t.clone())
            .deliver("null.test", "s@x.test", &rcpts(&["u@null.test"]), b"m")
            .await;
        assert!(matches!(&out[0].1, Outcome::Failed(r) if r.starts_with("556 5.1.10")));
        assert!(t.tried.lock().is_empty());
    }

    /// A minimal SMTP server: counts connections and transactions.
    async fn sink() -> (
        SocketAddr,
        Arc<std::sync::atomic::AtomicUsize>,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        use std::sync::atomic::AtomicUsize;
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let messages = Arc::new(AtomicUsize::new(0));
        let (c, m) = (connections.clone(), messages.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                c.fetch_add(1, Ordering::SeqCst);
                let m = m.clone();
                tokio::spawn(async move {
                    let (r, mut w) = stream.into_split();
                    let mut lines = BufReader::new(r).lines();
                    w.write_all(b"220 sink\r\n").await.unwrap();
                    let mut in_data = false;
                    while let Ok(Some(line)) = lines.next_line().await {
                        let reply: &[u8] = if in_data {
                            if line != "." {
                                continue;
                            }
                            in_data = false;
                            m.fetch_add(1, Ordering::SeqCst);
                            b"250 2.0.0 ok\r\n"
                        } else if line.starts_with("EHLO") {
                            b"250-sink\r\n250 8BITMIME\r\n"
                        } else if line == "DATA" {
                            in_data = true;
                            b"354 go\r\n"
                        } else if line == "QUIT" {
                            let _ = w.write_all(b"221 bye\r\n").await;
                            break;
                        } else {
                            b"250 2.1.0 ok\r\n"
                        };
                        if w.write_all(reply).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (addr, connections, messages)
    }

    #[tokio::test]
    async fn messages_to_the_same_host_share_one_connection() {
        let (addr, connections, messages) = sink().await;
        let client = SmtpClient::new(ClientConfig {
            helo_name: "mx.example.test".into(),
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(5),
            data_timeout: Duration::from_secs(5),
            starttls: false,
        });
        for i in 0..3 {
            let out = client
                .attempt(
                    addr,
                    "sink",
                    "a@x.test",
                    &rcpts(&["u@d.test"]),
                    format!("Subject: {i}\r\n\r\nx\r\n").as_bytes(),
                )
                .await
                .unwrap();
            assert_eq!(out[0].1, 250, "{out:?}");
        }
        assert_eq!(messages.load(Ordering::SeqCst), 3);
        assert_eq!(connections.load(Ordering::SeqCst), 1);
        assert_eq!(client.opened(), 1);
        client.close_idle(true).await;
        // After closing, a new message opens a new connection.
        client
            .attempt(addr, "sink", "a@x.test", &rcpts(&["u@d.test"]), b"x\r\n")
            .await
            .unwrap();
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    }
}
