//! Prometheus metrics: one process-wide registry, the functions that
//! record into it (called where the event happens: the SMTP driver, the
//! MTA's queue and scheduler, the MDA's Maildir writes) and a tiny HTTP
//! responder for `GET /metrics`, started when `metrics.listen` is set.
//!
//! Every metric name is listed in `docs/METRICS.md`. Names and labels are
//! chosen here, in one place, so the roles only say *what* happened.
//! Label values are bounded (reply codes, a fixed list of SMTP verbs, the
//! queue's states, at most [`MAX_DESTINATIONS`] destination domains), so a
//! hostile client cannot blow up the number of series.
//!
//! The exposition is the OpenMetrics text format (`prometheus-client`),
//! which Prometheus scrapes natively; counters carry the `_total` suffix.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// `[metrics]` in every role's configuration.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `IP:port` of the `/metrics` HTTP endpoint; absent = no endpoint.
    /// Plain HTTP, no authentication: bind it to loopback or a private
    /// network that only the Prometheus server reaches.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
}

/// Most destination domains the queue gauge names; the rest are summed
/// under `destination="other"`.
pub const MAX_DESTINATIONS: usize = 50;

type Labels1 = [(&'static str, String); 1];
type Labels2 = [(&'static str, String); 2];

fn latency_histogram() -> Histogram {
    // 1 ms … ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

struct Metrics {
    registry: Registry,
    build_info: Family<Labels2, Gauge>,
    smtp_sessions_active: Gauge,
    smtp_sessions: Counter,
    smtp_commands: Family<Labels1, Counter>,
    smtp_replies: Family<Labels1, Counter>,
    smtp_messages: Family<Labels1, Counter>,
    mta_queued: Family<Labels1, Counter>,
    mta_queue: Family<Labels2, Gauge>,
    mta_delivery_attempts: Family<Labels1, Counter>,
    mta_delivery_duration: Histogram,
    mda_writes: Family<Labels1, Counter>,
    mda_write_duration: Histogram,
    journey_events: Family<Labels2, Counter>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut r = Registry::default();
    let build_info = Family::<Labels2, Gauge>::default();
    r.register(
        "correo_build_info",
        "Role and version of this process (always 1)",
        build_info.clone(),
    );
    let smtp_sessions_active = Gauge::default();
    r.register(
        "correo_smtp_sessions_active",
        "SMTP sessions open now",
        smtp_sessions_active.clone(),
    );
    let smtp_sessions = Counter::default();
    r.register(
        "correo_smtp_sessions",
        "SMTP sessions started",
        smtp_sessions.clone(),
    );
    let smtp_commands = Family::<Labels1, Counter>::default();
    r.register(
        "correo_smtp_commands",
        "SMTP command lines received, by verb",
        smtp_commands.clone(),
    );
    let smtp_replies = Family::<Labels1, Counter>::default();
    r.register(
        "correo_smtp_replies",
        "SMTP replies sent, by reply code",
        smtp_replies.clone(),
    );
    let smtp_messages = Family::<Labels1, Counter>::default();
    r.register(
        "correo_smtp_messages",
        "Messages at the end of DATA, by result (accepted, deferred, rejected)",
        smtp_messages.clone(),
    );
    let mta_queued = Family::<Labels1, Counter>::default();
    r.register(
        "correo_mta_messages_queued",
        "Messages durably queued, by source (smtp, grpc)",
        mta_queued.clone(),
    );
    let mta_queue = Family::<Labels2, Gauge>::default();
    r.register(
        "correo_mta_queue_recipients",
        "Recipients in the queue now, by state and destination domain",
        mta_queue.clone(),
    );
    let mta_delivery_attempts = Family::<Labels1, Counter>::default();
    r.register(
        "correo_mta_delivery_attempts",
        "Delivery attempts per recipient, by result (delivered, deferred, failed)",
        mta_delivery_attempts.clone(),
    );
    let mta_delivery_duration = latency_histogram();
    r.register(
        "correo_mta_delivery_duration_seconds",
        "Time of one delivery attempt (one message to one domain: MX lookup, SMTP or MDA call)",
        mta_delivery_duration.clone(),
    );
    let mda_writes = Family::<Labels1, Counter>::default();
    r.register(
        "correo_mda_writes",
        "Maildir writes, by result (ok, error)",
        mda_writes.clone(),
    );
    let mda_write_duration = latency_histogram();
    r.register(
        "correo_mda_write_duration_seconds",
        "Time of one Maildir write (tmp/, fsync, rename into new/, fsync)",
        mda_write_duration.clone(),
    );
    let journey_events = Family::<Labels2, Counter>::default();
    r.register(
        "correo_journey_events",
        "Journey events recorded, by role and kind",
        journey_events.clone(),
    );
    Metrics {
        registry: r,
        build_info,
        smtp_sessions_active,
        smtp_sessions,
        smtp_commands,
        smtp_replies,
        smtp_messages,
        mta_queued,
        mta_queue,
        mta_delivery_attempts,
        mta_delivery_duration,
        mda_writes,
        mda_write_duration,
        journey_events,
    }
});

/// Counts an open SMTP session until dropped.
#[must_use = "the session counts as open while the guard lives"]
pub struct SessionGuard(());

impl Drop for SessionGuard {
    fn drop(&mut self) {
        METRICS.smtp_sessions_active.dec();
    }
}

/// An SMTP session starts (the driver holds the guard for its life).
pub fn smtp_session() -> SessionGuard {
    METRICS.smtp_sessions.inc();
    METRICS.smtp_sessions_active.inc();
    SessionGuard(())
}

const VERBS: [&str; 13] = [
    "EHLO", "HELO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "VRFY", "HELP", "STARTTLS",
    "AUTH", "EXPN",
];

/// A command line arrived; counted by its verb (unknown verbs as `OTHER`).
pub fn smtp_command(line: &str) {
    let word = line.split_ascii_whitespace().next().unwrap_or("");
    let verb = VERBS
        .iter()
        .find(|v| v.eq_ignore_ascii_case(word))
        .copied()
        .unwrap_or("OTHER");
    METRICS
        .smtp_commands
        .get_or_create(&[("command", verb.to_string())])
        .inc();
}

/// A reply is sent.
pub fn smtp_reply(code: u16) {
    METRICS
        .smtp_replies
        .get_or_create(&[("code", code.to_string())])
        .inc();
}

/// The final reply to DATA: 2xx accepted, 4xx deferred, 5xx rejected.
pub fn smtp_message(code: u16) {
    let result = match code {
        200..=299 => "accepted",
        400..=499 => "deferred",
        _ => "rejected",
    };
    METRICS
        .smtp_messages
        .get_or_create(&[("result", result.to_string())])
        .inc();
}

/// The MTA queued a message durably; `source` is `smtp` or `grpc`.
pub fn mta_queued(source: &'static str) {
    METRICS
        .mta_queued
        .get_or_create(&[("source", source.to_string())])
        .inc();
}

/// One delivery attempt (one message to one domain) took `elapsed`;
/// `results` has one entry per recipient: `delivered`, `deferred` or `failed`.
pub fn mta_delivery<'a>(elapsed: Duration, results: impl IntoIterator<Item = &'a str>) {
    METRICS.mta_delivery_duration.observe(elapsed.as_secs_f64());
    for result in results {
        METRICS
            .mta_delivery_attempts
            .get_or_create(&[("result", result.to_string())])
            .inc();
    }
}

/// Recipients in one state for one destination domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueCount {
    /// `pending`, `deferred`, `held`, …
    pub state: String,
    pub destination: String,
    pub recipients: u64,
}

type QueueSource = Arc<dyn Fn() -> Vec<QueueCount> + Send + Sync>;
static QUEUE_SOURCE: OnceLock<QueueSource> = OnceLock::new();

/// The MTA registers how to count its queue; it is asked at every scrape
/// (on a blocking thread), so the gauge is never stale.
pub fn set_queue_source(source: impl Fn() -> Vec<QueueCount> + Send + Sync + 'static) {
    let _ = QUEUE_SOURCE.set(Arc::new(source));
}

fn refresh_queue(counts: Vec<QueueCount>) {
    // Biggest destinations by name, the rest summed as "other".
    let mut by_destination: std::collections::BTreeMap<String, u64> = Default::default();
    for c in &counts {
        *by_destination
            .entry(c.destination.to_ascii_lowercase())
            .or_default() += c.recipients;
    }
    let mut ranked: Vec<(String, u64)> = by_destination.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let named: std::collections::HashSet<String> = ranked
        .into_iter()
        .take(MAX_DESTINATIONS)
        .map(|(d, _)| d)
        .collect();
    let mut totals: std::collections::BTreeMap<(String, String), u64> = Default::default();
    for c in counts {
        let d = c.destination.to_ascii_lowercase();
        let d = if named.contains(&d) {
            d
        } else {
            "other".to_string()
        };
        *totals.entry((c.state, d)).or_default() += c.recipients;
    }
    METRICS.mta_queue.clear();
    for ((state, destination), n) in totals {
        METRICS
            .mta_queue
            .get_or_create(&[("state", state), ("destination", destination)])
            .set(n as i64);
    }
}

/// One Maildir write finished.
pub fn mda_write(ok: bool, elapsed: Duration) {
    let result = if ok { "ok" } else { "error" };
    METRICS
        .mda_writes
        .get_or_create(&[("result", result.to_string())])
        .inc();
    METRICS.mda_write_duration.observe(elapsed.as_secs_f64());
}

pub(crate) fn journey_event(role: &str, kind: &str) {
    METRICS
        .journey_events
        .get_or_create(&[("role", role.to_string()), ("kind", kind.to_string())])
        .inc();
}

/// Marks this process as `role` in `correo_build_info`.
pub fn set_role(role: &str) {
    METRICS
        .build_info
        .get_or_create(&[
            ("role", role.to_string()),
            ("version", env!("CARGO_PKG_VERSION").to_string()),
        ])
        .set(1);
}

/// The current exposition text (OpenMetrics).
pub fn render() -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &METRICS.registry);
    out
}

/// Content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A running `/metrics` endpoint; stops when dropped.
pub struct MetricsServer {
    addr: SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl MetricsServer {
    /// The bound address (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl MetricsServer {
    /// Lets the endpoint run for the rest of the process, without a guard.
    pub fn detach(mut self) {
        self.task.take();
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Starts the endpoint if `config.listen` is set. Needs a tokio runtime.
pub async fn start(config: &MetricsConfig, role: &str) -> std::io::Result<Option<MetricsServer>> {
    set_role(role);
    match config.listen {
        None => Ok(None),
        Some(addr) => serve(addr).await.map(Some),
    }
}

/// Binds `addr` and answers `GET /metrics` (and `GET /` with a pointer to it).
pub async fn serve(addr: SocketAddr) -> std::io::Result<MetricsServer> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "metrics listening (GET /metrics)");
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(10), respond(stream)).await;
            });
        }
    });
    Ok(MetricsServer {
        addr,
        task: Some(task),
    })
}

/// One HTTP/1.x exchange, then close.
async fn respond(mut stream: tokio::net::TcpStream) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > 16 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(head.split(|&b| b == b'\n').next().unwrap_or_default())
        .into_owned();
    let mut parts = line.split_ascii_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            if let Some(source) = QUEUE_SOURCE.get().cloned()
                && let Ok(counts) = tokio::task::spawn_blocking(move || source()).await
            {
                refresh_queue(counts);
            }
            ("200 OK", CONTENT_TYPE, render())
        }
        ("GET" | "HEAD", "/") => (
            "200 OK",
            "text/plain; charset=utf-8",
            "Correo metrics: GET /metrics\n".to_string(),
        ),
        ("GET" | "HEAD", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET\n".to_string(),
        ),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        response.extend_from_slice(body.as_bytes());
    }
    stream.write_all(&response).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_exposed_with_bounded_labels() {
        let _s = smtp_session();
        smtp_command("ehlo client.test");
        smtp_command("XYZZY with a very long and hostile argument");
        smtp_reply(250);
        smtp_message(250);
        smtp_message(550);
        mta_delivery(Duration::from_millis(20), ["delivered", "deferred"]);
        mda_write(true, Duration::from_millis(3));
        let text = render();
        for needle in [
            "correo_smtp_sessions_total",
            "correo_smtp_sessions_active 1",
            "correo_smtp_commands_total{command=\"EHLO\"} 1",
            "correo_smtp_commands_total{command=\"OTHER\"} 1",
            "correo_smtp_replies_total{code=\"250\"}",
            "correo_smtp_messages_total{result=\"rejected\"} 1",
            "correo_mta_delivery_attempts_total{result=\"deferred\"} 1",
            "correo_mta_delivery_duration_seconds_count 1",
            "correo_mda_writes_total{result=\"ok\"} 1",
            "correo_mda_write_duration_seconds_count 1",
        ] {
            assert!(text.contains(needle), "{needle} missing:\n{text}");
        }
    }

    #[test]
    fn queue_gauge_caps_destinations() {
        let mut counts: Vec<QueueCount> = (0..MAX_DESTINATIONS + 5)
            .map(|i| QueueCount {
                state: "deferred".into(),
                destination: format!("d{i:03}.test"),
                recipients: 1,
            })
            .collect();
        counts.push(QueueCount {
            state: "deferred".into(),
            destination: "Big.Test".into(),
            recipients: 9,
        });
        refresh_queue(counts);
        let text = render();
        assert!(
            text.contains(
                "correo_mta_queue_recipients{state=\"deferred\",destination=\"big.test\"} 9"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "correo_mta_queue_recipients{state=\"deferred\",destination=\"other\"} 6"
            ),
            "{text}"
        );
    }

    #[tokio::test]
    async fn http_endpoint_serves_metrics() {
        let server = serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let mut s = tokio::net::TcpStream::connect(server.local_addr())
            .await
            .unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("correo_smtp_sessions_total"), "{out}");
        assert!(out.trim_end().ends_with("# EOF"), "{out}");
        let mut s = tokio::net::TcpStream::connect(server.local_addr())
            .await
            .unwrap();
        s.write_all(b"GET /nope HTTP/1.0\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    }
}
