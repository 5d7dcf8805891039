//! The journey of a message made visible: each role's own record of what
//! it did with a message, and the tools that put the records of every role
//! together (see `docs/JOURNEY.md`).
//!
//! - **Recording.** A role marks a log line as a journey event by giving
//!   it a `journey_event` field (`tracing::info!(journey_event = "queued",
//!   …)`); the [`layer`] installed by [`crate::telemetry::init`] turns it
//!   into an [`Event`], taking `journey`, `queue_id` and `domain` from the
//!   line or from the spans around it, so a line inside the MTA's
//!   `delivery{queue_id journey domain}` span needs no more than its own
//!   facts. Events go to an append-only JSON-lines file
//!   (`<data_dir>/journey.log`, set by [`init`]) and to a bounded ring in
//!   memory, whatever the log level.
//! - **Serving.** [`service`] is the `correo.journey.v1.Journey` gRPC
//!   service every role mounts on its mutual-TLS listener.
//! - **Viewing.** [`fetch`] asks one role; [`Report`] orders the events of
//!   every role and the `Received:` fields of the delivered message into
//!   hops, and renders them for `correo journey` and `mua journey`.

use correo_proto::journey as pb;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// Events kept in memory (for roles without a log file, and for speed).
const RING: usize = 10_000;

/// One thing a role did with a message. Empty strings mean "not known".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Event {
    pub at_unix_ms: i64,
    pub role: String,
    pub node: String,
    pub journey_id: String,
    pub queue_id: String,
    pub message_id: String,
    /// `submitted`, `queued`, `mx`, `connected`, `delivered`, `deferred`,
    /// `failed`, `stored`.
    pub kind: String,
    /// The other side: where the message came from, or went to.
    pub peer: String,
    /// The host chosen or connected to (MX), or the MTA handed to.
    pub host: String,
    /// TLS on the link this event is about; empty = none.
    pub tls: String,
    pub recipient: String,
    pub reply: String,
    pub received_at_unix_ms: i64,
    pub detail: String,
    /// `Received:` field values, newest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub received: Vec<String>,
}

impl Event {
    fn matches(&self, id: &str) -> bool {
        let bare = id.trim().trim_start_matches('<').trim_end_matches('>');
        !bare.is_empty()
            && (self.journey_id == bare
                || self.queue_id.eq_ignore_ascii_case(bare)
                || self
                    .message_id
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    == bare)
    }
}

impl Event {
    /// When this role got the message, if known, else when the event happened.
    pub fn start_ms(&self) -> i64 {
        if self.received_at_unix_ms > 0 && self.received_at_unix_ms < self.at_unix_ms {
            self.received_at_unix_ms
        } else {
            self.at_unix_ms
        }
    }
}

impl From<Event> for pb::JourneyEvent {
    fn from(e: Event) -> Self {
        pb::JourneyEvent {
            at_unix_ms: e.at_unix_ms,
            role: e.role,
            node: e.node,
            journey_id: e.journey_id,
            queue_id: e.queue_id,
            message_id: e.message_id,
            kind: e.kind,
            peer: e.peer,
            host: e.host,
            tls: e.tls,
            recipient: e.recipient,
            reply: e.reply,
            received_at_unix_ms: e.received_at_unix_ms,
            detail: e.detail,
            received: e.received,
        }
    }
}

impl From<pb::JourneyEvent> for Event {
    fn from(e: pb::JourneyEvent) -> Self {
        Event {
            at_unix_ms: e.at_unix_ms,
            role: e.role,
            node: e.node,
            journey_id: e.journey_id,
            queue_id: e.queue_id,
            message_id: e.message_id,
            kind: e.kind,
            peer: e.peer,
            host: e.host,
            tls: e.tls,
            recipient: e.recipient,
            reply: e.reply,
            received_at_unix_ms: e.received_at_unix_ms,
            detail: e.detail,
            received: e.received,
        }
    }
}

/// `[journey]` in a role's configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JourneyConfig {
    /// The JSON-lines event log. Roles with a `data_dir` default to
    /// `<data_dir>/journey.log`; the MSA keeps events in memory without it.
    #[serde(default)]
    pub log: Option<PathBuf>,
}

struct Recorder {
    role: String,
    node: String,
    path: Option<PathBuf>,
    file: Mutex<Option<std::fs::File>>,
}

static RECORDER: OnceLock<Recorder> = OnceLock::new();
static MEMORY: Mutex<VecDeque<Event>> = Mutex::new(VecDeque::new());

/// Names this process (`role`, `node`) in its events and, with `log`,
/// appends them to that JSON-lines file. The first call wins.
pub fn init(role: &str, node: &str, log: Option<&Path>) {
    let file = log.and_then(|path| {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        match std::fs::OpenOptions::new().create(true).append(true).open(path) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot open the journey log; keeping events in memory only");
                None
            }
        }
    });
    let _ = RECORDER.set(Recorder {
        role: role.to_string(),
        node: node.to_string(),
        path: log.map(Path::to_path_buf),
        file: Mutex::new(file),
    });
}

/// `<data_dir>/journey.log`, the usual place.
pub fn default_log(data_dir: &Path) -> PathBuf {
    data_dir.join("journey.log")
}

/// Milliseconds since the Unix epoch (the time base of [`Event`]).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Records one event: fills in time, role and node, appends it to the log
/// file (one JSON object per line) and keeps it in memory.
pub fn record(mut event: Event) {
    if event.at_unix_ms == 0 {
        event.at_unix_ms = now_ms();
    }
    if let Some(r) = RECORDER.get() {
        if event.role.is_empty() {
            event.role = r.role.clone();
        }
        if event.node.is_empty() {
            event.node = r.node.clone();
        }
        if let Some(file) = r.file.lock().as_mut()
            && let Ok(mut line) = serde_json::to_vec(&event)
        {
            line.push(b'\n');
            // One write per line: O_APPEND keeps concurrent lines whole.
            let _ = file.write_all(&line);
        }
    }
    crate::metrics::journey_event(&event.role, &event.kind);
    let mut memory = MEMORY.lock();
    if memory.len() >= RING {
        memory.pop_front();
    }
    memory.push_back(event);
}

/// Every event of every journey that `id` (journey id, queue id or
/// Message-ID) matches, oldest first: from the log file when there is one,
/// else from memory.
pub fn lookup(id: &str) -> Vec<Event> {
    let all: Vec<Event> = match RECORDER.get().and_then(|r| r.path.clone()) {
        Some(path) => read_log(&path),
        None => MEMORY.lock().iter().cloned().collect(),
    };
    select(all, id)
}

fn select(all: Vec<Event>, id: &str) -> Vec<Event> {
    let journeys: BTreeSet<String> = all
        .iter()
        .filter(|e| e.matches(id))
        .map(|e| e.journey_id.clone())
        .filter(|j| !j.is_empty())
        .collect();
    let mut out: Vec<Event> = all
        .into_iter()
        .filter(|e| e.matches(id) || journeys.contains(&e.journey_id))
        .collect();
    out.sort_by_key(|e| e.at_unix_ms);
    out
}

/// The events of a JSON-lines journey log; unreadable lines are skipped.
pub fn read_log(path: &Path) -> Vec<Event> {
    let Ok(file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    std::io::BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect()
}

// ---------------------------------------------------------------------------
// The tracing layer.

/// Fields a span lends to the journey events inside it.
#[derive(Debug, Clone, Default)]
struct SpanFields {
    journey: String,
    queue_id: String,
    domain: String,
}

struct SpanVisitor<'a>(&'a mut SpanFields);

impl Visit for SpanVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field, value.to_string());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.set(field, format!("{value:?}"));
    }
}

impl SpanVisitor<'_> {
    fn set(&mut self, field: &Field, value: String) {
        match field.name() {
            "journey" | "journey_id" => self.0.journey = value,
            "queue_id" => self.0.queue_id = value,
            "domain" => self.0.domain = value,
            _ => {}
        }
    }
}

struct EventVisitor<'a> {
    event: &'a mut Event,
    extra: Vec<String>,
    domain: String,
}

impl Visit for EventVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field, value.to_string());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        if field.name() == "received_at_ms" {
            self.event.received_at_unix_ms = value;
        } else {
            self.set(field, value.to_string());
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.record_i64(field, value as i64);
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.set(field, value.to_string());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.set(field, format!("{value:?}"));
    }
}

impl EventVisitor<'_> {
    fn set(&mut self, field: &Field, value: String) {
        let e = &mut *self.event;
        match field.name() {
            "journey_event" => e.kind = value,
            "journey" | "journey_id" => e.journey_id = value,
            "queue_id" => e.queue_id = value,
            "message_id" => e.message_id = value,
            "peer" => e.peer = value,
            "host" | "mta" => e.host = value,
            "tls" if value != "none" => e.tls = value,
            "recipient" | "rcpt" => e.recipient = value,
            "reply" => e.reply = value,
            "detail" => e.detail = value,
            "domain" => self.domain = value,
            "received" => e.received = serde_json::from_str(&value).unwrap_or_default(),
            "message" | "tls" => {}
            other => self.extra.push(format!("{other}={value}")),
        }
    }
}

/// The layer that turns log lines with a `journey_event` field into
/// [`Event`]s. Installed by [`crate::telemetry::init`], beside (not under)
/// the log level filter, and seeing INFO and above: journey events (and
/// the spans that carry their `journey`/`queue_id`) must be INFO or WARN.
pub struct JourneyLayer;

/// See [`JourneyLayer`].
pub fn layer() -> JourneyLayer {
    JourneyLayer
}

impl<S> tracing_subscriber::Layer<S> for JourneyLayer
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let fields = attrs.metadata().fields();
        if fields.field("journey").is_none()
            && fields.field("queue_id").is_none()
            && fields.field("domain").is_none()
        {
            return;
        }
        let mut values = SpanFields::default();
        attrs.record(&mut SpanVisitor(&mut values));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(values);
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        if event.metadata().fields().field("journey_event").is_none() {
            return;
        }
        let mut record_event = Event::default();
        let mut visitor = EventVisitor {
            event: &mut record_event,
            extra: Vec::new(),
            domain: String::new(),
        };
        event.record(&mut visitor);
        let (extra, mut domain) = (visitor.extra, visitor.domain);
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope {
                if let Some(f) = span.extensions().get::<SpanFields>() {
                    if record_event.journey_id.is_empty() {
                        record_event.journey_id = f.journey.clone();
                    }
                    if record_event.queue_id.is_empty() {
                        record_event.queue_id = f.queue_id.clone();
                    }
                    if domain.is_empty() {
                        domain = f.domain.clone();
                    }
                }
            }
        }
        let mut detail = Vec::new();
        if !domain.is_empty() {
            detail.push(format!("domain={domain}"));
        }
        if !record_event.detail.is_empty() {
            detail.push(std::mem::take(&mut record_event.detail));
        }
        detail.extend(extra);
        record_event.detail = detail.join(" ");
        record(record_event);
    }
}

// ---------------------------------------------------------------------------
// Helpers for the roles.

/// The unfolded value of the first header field `name` of `message`.
pub fn header(message: &[u8], name: &str) -> Option<String> {
    headers(message, name).into_iter().next()
}

/// Every value of header field `name`, in order (unfolded).
pub fn headers(message: &[u8], name: &str) -> Vec<String> {
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .or_else(|| message.windows(2).position(|w| w == b"\n\n").map(|p| p + 1))
        .unwrap_or(message.len());
    let text = String::from_utf8_lossy(&message[..end]);
    let mut out: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with([' ', '\t']) {
            if let Some(v) = current.as_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
            continue;
        }
        if let Some(v) = current.take() {
            out.push(v);
        }
        if let Some((n, v)) = line.split_once(':')
            && n.trim().eq_ignore_ascii_case(name)
        {
            current = Some(v.trim().to_string());
        }
    }
    out.extend(current);
    out
}

/// The `Received:` values of `message` as the JSON array the `received`
/// field of a journey event takes.
pub fn received_json(message: &[u8]) -> String {
    serde_json::to_string(&headers(message, "received")).unwrap_or_else(|_| "[]".into())
}

// ---------------------------------------------------------------------------
// The gRPC service and client.

/// `correo.journey.v1.Journey` over this process's records.
#[derive(Debug, Clone, Default)]
pub struct JourneyService;

/// The service, ready for `Server::add_service`.
pub fn service() -> pb::journey_server::JourneyServer<JourneyService> {
    pb::journey_server::JourneyServer::new(JourneyService)
}

#[tonic::async_trait]
impl pb::journey_server::Journey for JourneyService {
    async fn events(
        &self,
        request: tonic::Request<pb::JourneyRequest>,
    ) -> Result<tonic::Response<pb::JourneyReply>, tonic::Status> {
        let id = request.into_inner().id;
        if id.trim().is_empty() || id.len() > 998 {
            return Err(tonic::Status::invalid_argument(
                "id: a journey id, queue id or Message-ID",
            ));
        }
        let events = tokio::task::spawn_blocking(move || lookup(&id))
            .await
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        Ok(tonic::Response::new(pb::JourneyReply {
            events: events.into_iter().map(Into::into).collect(),
        }))
    }
}

/// Asks the role at `endpoint` (`https://host:port`) for its events about `id`.
pub async fn fetch(
    endpoint: &str,
    tls: tonic::transport::ClientTlsConfig,
    id: &str,
) -> Result<Vec<Event>, String> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| format!("{endpoint}: {e}"))?
        .tls_config(tls)
        .map_err(|e| format!("{endpoint}: {e}"))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(20))
        .connect()
        .await
        .map_err(|e| format!("{endpoint}: cannot connect: {}", error_chain(&e)))?;
    let reply = pb::journey_client::JourneyClient::new(channel)
        .events(pb::JourneyRequest { id: id.to_string() })
        .await
        .map_err(|s| format!("{endpoint}: {}: {}", s.code(), s.message()))?;
    Ok(reply
        .into_inner()
        .events
        .into_iter()
        .map(Into::into)
        .collect())
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        source = s.source();
    }
    out
}

// ---------------------------------------------------------------------------
// Putting a journey together.

/// One `Received:` field, read back (RFC 5321 4.4 clauses).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Hop {
    pub from: String,
    pub by: String,
    /// `ESMTPSA`, `ESMTPS`, `ESMTP`, `SMTP`, …
    pub with: String,
    /// `gRPC` when the hop was a gRPC submission.
    pub via: String,
    pub id: String,
    pub date: String,
    /// The protocol says TLS (`…S`, `…SA`, RFC 3848), or a TLS comment is present.
    pub tls: bool,
    pub raw: String,
}

/// Reads one `Received:` value.
pub fn parse_received(value: &str) -> Hop {
    let (clauses, date) = match value.rsplit_once(';') {
        Some((c, d)) => (c, d.trim().to_string()),
        None => (value, String::new()),
    };
    let words: Vec<&str> = clauses.split_whitespace().collect();
    let mut hop = Hop {
        date,
        raw: value.to_string(),
        ..Hop::default()
    };
    let mut i = 0;
    while i < words.len() {
        let next = words.get(i + 1).map(|w| w.to_string()).unwrap_or_default();
        match words[i].to_ascii_lowercase().as_str() {
            "from" if hop.from.is_empty() => {
                // `from HELO ([IP])`: keep the parenthesised part too.
                let mut from = next;
                if let Some(p) = words.get(i + 2).filter(|w| w.starts_with('(')) {
                    from.push(' ');
                    from.push_str(p);
                    i += 1;
                }
                hop.from = from;
                i += 1;
            }
            "by" if hop.by.is_empty() => {
                hop.by = next;
                i += 1;
            }
            "with" if hop.with.is_empty() => {
                hop.with = next;
                i += 1;
            }
            "via" if hop.via.is_empty() => {
                hop.via = next;
                i += 1;
            }
            "id" if hop.id.is_empty() => {
                hop.id = next;
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    let with = hop.with.to_ascii_uppercase();
    // RFC 3848 / RFC 6531: the S in ESMTPS and ESMTPSA means TLS.
    hop.tls = matches!(
        with.as_str(),
        "ESMTPS" | "ESMTPSA" | "UTF8SMTPS" | "UTF8SMTPSA" | "LMTPS" | "LMTPSA"
    ) || clauses.contains("TLS")
        // Correo's gRPC hops are mutual TLS, always.
        || hop.via.eq_ignore_ascii_case("grpc");
    hop
}

/// A journey put together from every source.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// The id asked about.
    pub id: String,
    pub journey_ids: Vec<String>,
    pub message_ids: Vec<String>,
    /// Oldest first.
    pub events: Vec<Event>,
    /// From the delivered message's `Received:` fields, oldest first.
    pub hops: Vec<Hop>,
    /// Sources that could not be asked, with the reason.
    pub errors: Vec<String>,
}

impl Report {
    /// Orders `events` (duplicates dropped) and reads the hops from the
    /// `received` list of the newest event that has one (the MDA's
    /// `stored`), or from `received` when given (a message at hand).
    pub fn new(id: &str, mut events: Vec<Event>, received: Option<Vec<String>>) -> Report {
        // In the order the hops got the message: a role that reports only
        // after handing on (the MSA) still sorts where it received it.
        events.sort_by(|a, b| {
            a.start_ms()
                .cmp(&b.start_ms())
                .then_with(|| a.at_unix_ms.cmp(&b.at_unix_ms))
                .then_with(|| a.role.cmp(&b.role))
                .then_with(|| a.kind.cmp(&b.kind))
        });
        events.dedup();
        let received = received.unwrap_or_else(|| {
            events
                .iter()
                .rev()
                .find(|e| !e.received.is_empty())
                .map(|e| e.received.clone())
                .unwrap_or_default()
        });
        let hops = received.iter().rev().map(|r| parse_received(r)).collect();
        let set = |f: fn(&Event) -> &String| -> Vec<String> {
            events
                .iter()
                .map(|e| f(e).clone())
                .filter(|s| !s.is_empty())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        };
        Report {
            id: id.to_string(),
            journey_ids: set(|e| &e.journey_id),
            message_ids: set(|e| &e.message_id),
            hops,
            events,
            errors: Vec::new(),
        }
    }

    /// Human-readable: the hops, then the events with the time since the
    /// previous one, then what retries there were.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "Journey of {}", self.id);
        if !self.journey_ids.is_empty() {
            let _ = writeln!(out, "  journey id: {}", self.journey_ids.join(", "));
        }
        if !self.message_ids.is_empty() {
            let _ = writeln!(out, "  Message-ID: {}", self.message_ids.join(", "));
        }
        if !self.hops.is_empty() {
            let _ = writeln!(
                out,
                "\nHops (Received: fields of the delivered message, oldest first):"
            );
            for (n, h) in self.hops.iter().enumerate() {
                let via = if h.via.is_empty() {
                    String::new()
                } else {
                    format!(" via {}", h.via)
                };
                let tls = match (h.tls, h.via.eq_ignore_ascii_case("grpc")) {
                    (true, true) => "mutual TLS",
                    (true, false) => "TLS",
                    _ => "no TLS",
                };
                let _ = writeln!(
                    out,
                    "  {}. {} received from {}{} with {} ({tls}) id {}\n     at {}",
                    n + 1,
                    h.by,
                    h.from,
                    via,
                    h.with,
                    h.id,
                    h.date
                );
            }
        }
        if self.events.is_empty() {
            let _ = writeln!(out, "\nNo role has a record of it.");
        } else {
            let _ = writeln!(out, "\nEvents (each role's own record, oldest first):");
            let mut previous: Option<i64> = None;
            for e in &self.events {
                let since = previous.map_or(String::new(), |p| {
                    format!("+{}", short_duration(e.start_ms() - p))
                });
                previous = Some(e.start_ms());
                let _ = writeln!(
                    out,
                    "  {} {:>8}  {:<3} {:<22} {:<10} {}",
                    clock(e.start_ms()),
                    since,
                    e.role,
                    e.node,
                    e.kind,
                    describe(e)
                );
            }
            let deferred: Vec<&Event> = self
                .events
                .iter()
                .filter(|e| e.kind == "deferred")
                .collect();
            if !deferred.is_empty() {
                let _ = writeln!(out, "\nRetries: {} deferred attempt(s)", deferred.len());
                for e in deferred {
                    let _ = writeln!(
                        out,
                        "  {} {} {}: {}",
                        clock(e.at_unix_ms),
                        e.node,
                        e.recipient,
                        e.reply
                    );
                }
            }
            if let (Some(first), Some(last)) = (self.events.first(), self.events.last()) {
                let _ = writeln!(
                    out,
                    "\nFrom first to last event: {}",
                    short_duration(last.at_unix_ms - first.at_unix_ms)
                );
            }
        }
        for e in &self.errors {
            let _ = writeln!(out, "warning: {e}");
        }
        out
    }
}

fn describe(e: &Event) -> String {
    let mut parts: Vec<String> = Vec::new();
    let tls = if e.tls.is_empty() && e.detail.starts_with("via gRPC") {
        // Correo's gRPC links are mutual TLS, always.
        "mutual TLS".to_string()
    } else if e.tls.is_empty() {
        "no TLS".to_string()
    } else {
        format!("TLS {}", e.tls)
    };
    match e.kind.as_str() {
        "submitted" => {
            parts.push(format!("from {} ({tls})", e.peer));
            if !e.host.is_empty() {
                parts.push(format!("handed to MTA {}", e.host));
            }
        }
        "queued" => parts.push(format!("from {} ({tls})", e.peer)),
        "mx" => parts.push(format!("MX hosts: {}", e.host)),
        "connected" => parts.push(format!("to {} {} ({tls})", e.host, e.peer)),
        "stored" => parts.push(format!("for {}", e.recipient)),
        _ => {
            if !e.recipient.is_empty() {
                parts.push(e.recipient.clone());
            }
        }
    }
    if !e.queue_id.is_empty() && e.kind != "stored" {
        parts.push(format!("queue id {}", e.queue_id));
    }
    if !e.reply.is_empty() {
        parts.push(format!("reply \"{}\"", e.reply));
    }
    if e.received_at_unix_ms > 0 && e.received_at_unix_ms < e.at_unix_ms {
        parts.push(format!(
            "handed on after {}",
            short_duration(e.at_unix_ms - e.received_at_unix_ms)
        ));
    }
    if !e.detail.is_empty() {
        parts.push(format!("[{}]", e.detail));
    }
    parts.join(", ")
}

fn clock(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
        .unwrap_or_else(|| ms.to_string())
}

fn short_duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m{}s", ms / 60_000, ms % 60_000 / 1000)
    } else {
        format!("{}h{}m", ms / 3_600_000, ms % 3_600_000 / 60_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn reads_received_fields() {
        let h = parse_received(
            "from mx.example.test ([127.0.0.5]) by mx.another.test with ESMTPS id 0123456789abcdef for <bob@another.test>; Tue, 1 Dec 2026 08:36:10 +0000",
        );
        assert_eq!(h.from, "mx.example.test ([127.0.0.5])");
        assert_eq!(h.by, "mx.another.test");
        assert_eq!(h.with, "ESMTPS");
        assert_eq!(h.id, "0123456789abcdef");
        assert!(h.tls);
        assert_eq!(h.date, "Tue, 1 Dec 2026 08:36:10 +0000");
        let g = parse_received(
            "from msa ([127.0.0.5]) by mx.example.test (mta-1) via gRPC with ESMTPA id 1 (authenticated as a@b); Tue, 1 Dec 2026 08:36:10 +0000",
        );
        assert_eq!(
            (g.via.as_str(), g.with.as_str(), g.tls),
            ("gRPC", "ESMTPA", true)
        );
        assert!(parse_received("from a by b with ESMTPSA id x; now").tls);
        assert!(!parse_received("from a by b with ESMTP id x; now").tls);
    }

    #[test]
    fn headers_unfold() {
        let m = b"Received: from a\r\n\tby b; now\r\nMessage-ID: <x@y>\r\nreceived: second\r\n\r\nReceived: body\r\n";
        assert_eq!(headers(m, "received"), vec!["from a by b; now", "second"]);
        assert_eq!(header(m, "message-id").as_deref(), Some("<x@y>"));
        assert_eq!(received_json(b"Subject: x\r\n\r\n"), "[]");
    }

    #[test]
    fn layer_takes_ids_from_spans_and_selection_follows_journeys() {
        let subscriber = tracing_subscriber::registry().with(layer());
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "delivery",
                queue_id = "00000000000000aa",
                journey = "j-test-1",
                domain = "d.test"
            );
            let _g = span.enter();
            tracing::info!(
                journey_event = "connected",
                host = "mx.d.test",
                peer = "192.0.2.1:25",
                tls = "TLSv1.3",
                "connected"
            );
            tracing::info!(
                journey_event = "delivered",
                recipient = "u@d.test",
                reply = "250 ok",
                attempt = 1u64,
                "delivered"
            );
            tracing::info!(not_a_journey_event = 1, "ignored");
        });
        record(Event {
            kind: "submitted".into(),
            journey_id: "j-test-1".into(),
            message_id: "<m-1@x.test>".into(),
            ..Event::default()
        });
        let events = select(MEMORY.lock().iter().cloned().collect(), "<m-1@x.test>");
        assert_eq!(events.len(), 3, "{events:?}");
        let connected = events.iter().find(|e| e.kind == "connected").unwrap();
        assert_eq!(connected.queue_id, "00000000000000aa");
        assert_eq!(connected.tls, "TLSv1.3");
        assert_eq!(connected.detail, "domain=d.test");
        let delivered = events.iter().find(|e| e.kind == "delivered").unwrap();
        assert_eq!(delivered.detail, "domain=d.test attempt=1");
        let report = Report::new(
            "m-1@x.test",
            events,
            Some(vec!["from a by b with ESMTPS id 1; now".into()]),
        );
        let text = report.render();
        assert!(text.contains("TLS TLSv1.3"), "{text}");
        assert!(
            text.contains("1. b received from a with ESMTPS (TLS)"),
            "{text}"
        );
    }
}
