//! The MTA's gRPC services: `Queue.Submit` (the MSA hands over a message)
//! and `QueueAdmin` (the `mta queue …` commands). Both sit behind mutual
//! TLS; the transport refuses clients without a certificate of the
//! private CA before any of this code runs.

use crate::headers;
use crate::index::{MessageEntry, RecipientStatus};
use crate::queue::{Queue, QueueError, now_secs};
use crate::queue_id::QueueId;
use crate::spool::SpoolEnvelope;
use correo_proto::admin::queue_admin_server::QueueAdmin;
use correo_proto::admin::{
    CountReply, DomainSummary, ListQueueReply, ListQueueRequest, QueueIdRequest, QueuedMessage,
    RecipientState, RetryRequest, SummaryReply, SummaryRequest,
};
use correo_proto::queue::queue_server::Queue as QueueRpc;
use correo_proto::queue::{Envelope, SubmitChunk, SubmitReply, submit_chunk};
use correo_smtp::Address;
use std::collections::BTreeMap;
use std::sync::Arc;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

/// `Queue.Submit`.
pub struct QueueService {
    pub queue: Arc<Queue>,
    pub hostname: String,
    pub node: String,
    pub max_message_size: usize,
}

fn invalid(message: impl Into<String>) -> Status {
    Status::invalid_argument(message.into())
}

fn validate_envelope(envelope: &Envelope) -> Result<(), Status> {
    if !envelope.sender.is_empty() {
        Address::parse(&envelope.sender)
            .map_err(|e| invalid(format!("sender `{}`: {e}", envelope.sender)))?;
    }
    if envelope.recipients.is_empty() {
        return Err(invalid("envelope has no recipients"));
    }
    for r in &envelope.recipients {
        Address::parse(r).map_err(|e| invalid(format!("recipient `{r}`: {e}")))?;
    }
    Ok(())
}

/// `Received:` for a gRPC submission (RFC 5321 4.4 syntax; `via gRPC` is
/// the link, ESMTPA because the MSA authenticated the user).
fn received_header(
    peer: Option<std::net::SocketAddr>,
    by: &str,
    node: &str,
    id: &str,
    user: &str,
) -> String {
    let peer = peer
        .map(|p| format!("[{}]", p.ip()))
        .unwrap_or_else(|| "[unknown]".to_string());
    let auth = if user.is_empty() {
        String::new()
    } else {
        format!("\r\n\t(authenticated as {user})")
    };
    format!(
        "Received: from msa ({peer})\r\n\tby {by} ({node}) via gRPC with ESMTPA id {id}{auth};\r\n\t{}\r\n",
        chrono::Utc::now().to_rfc2822()
    )
}

#[tonic::async_trait]
impl QueueRpc for QueueService {
    async fn submit(
        &self,
        request: Request<Streaming<SubmitChunk>>,
    ) -> Result<Response<SubmitReply>, Status> {
        let peer = request.remote_addr();
        let meta_journey = request
            .metadata()
            .get(correo_proto::JOURNEY_METADATA_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut stream = request.into_inner();
        let envelope = match stream.message().await? {
            Some(SubmitChunk {
                part: Some(submit_chunk::Part::Envelope(envelope)),
            }) => envelope,
            _ => return Err(invalid("the first chunk must carry the envelope")),
        };
        validate_envelope(&envelope)?;
        if let Err(full) = self.queue.check_space() {
            tracing::warn!(reason = %full, "Submit refused: spool nearly full");
            // The MSA answers its client 4xx and keeps nothing; try later.
            return Err(Status::unavailable("452 4.3.1 insufficient system storage"));
        }
        if envelope.size_hint as usize > self.max_message_size {
            return Err(Status::resource_exhausted(format!(
                "message of {} octets exceeds the limit of {}",
                envelope.size_hint, self.max_message_size
            )));
        }
        let mut data = Vec::with_capacity((envelope.size_hint as usize).min(self.max_message_size));
        while let Some(chunk) = stream.message().await? {
            match chunk.part {
                Some(submit_chunk::Part::Data(bytes)) => {
                    if data.len() + bytes.len() > self.max_message_size {
                        return Err(Status::resource_exhausted(format!(
                            "message exceeds the limit of {} octets",
                            self.max_message_size
                        )));
                    }
                    data.extend_from_slice(&bytes);
                }
                Some(submit_chunk::Part::Envelope(_)) => {
                    return Err(invalid("a second envelope chunk"));
                }
                None => {}
            }
        }
        if data.is_empty() {
            return Err(invalid("empty message"));
        }
        let journey = [Some(envelope.journey_id.clone()), meta_journey]
            .into_iter()
            .flatten()
            .find(|j| headers::valid_journey(j))
            .unwrap_or_else(headers::new_journey);
        let id = QueueId::generate();
        let mut message = received_header(
            peer,
            &self.hostname,
            &self.node,
            id.as_str(),
            &envelope.authenticated_user,
        )
        .into_bytes();
        if headers::first(&data, "x-correo-journey").is_none() {
            message.extend_from_slice(format!("X-Correo-Journey: {journey}\r\n").as_bytes());
        }
        message.extend_from_slice(&data);
        drop(data);

        let spool_envelope = SpoolEnvelope {
            queue_id: id.to_string(),
            sender: envelope.sender.clone(),
            recipients: envelope.recipients.clone(),
            journey_id: journey.clone(),
            received_at: now_secs(),
            authenticated_user: (!envelope.authenticated_user.is_empty())
                .then(|| envelope.authenticated_user.clone()),
        };
        let size = message.len();
        let span = tracing::info_span!("submit", queue_id = %id, journey = %journey);
        let result = self
            .queue
            .enqueue(spool_envelope, message)
            .instrument(span.clone())
            .await;
        let _enter = span.enter();
        match result {
            Ok(id) => {
                tracing::info!(
                    sender = %envelope.sender,
                    recipients = envelope.recipients.len(),
                    size,
                    user = %envelope.authenticated_user,
                    journey_event = "queued",
                    detail = "via gRPC",
                    peer = %peer.map(|p| p.to_string()).unwrap_or_default(),
                    "queued from gRPC submission"
                );
                correo_runtime::metrics::mta_queued("grpc");
                Ok(Response::new(SubmitReply {
                    queue_id: id.to_string(),
                    node: self.node.clone(),
                }))
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot spool submitted message");
                // The caller keeps the message and retries (maybe elsewhere).
                Err(Status::unavailable("cannot queue the message now"))
            }
        }
    }
}

/// `QueueAdmin`. Only the node's own certificate may use it: the
/// `mta queue` commands run with the node's config, while other roles
/// (the MSA) hold CA-signed certificates too and must not control the queue.
pub struct AdminService {
    pub queue: Arc<Queue>,
    /// DER of this node's certificate (the first of `tls.cert`).
    pub admin_cert: Vec<u8>,
}

impl AdminService {
    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let presented = request.peer_certs();
        let allowed = presented
            .as_ref()
            .and_then(|chain| chain.first())
            .is_some_and(|cert| cert.as_ref() == self.admin_cert.as_slice());
        if allowed {
            Ok(())
        } else {
            tracing::warn!(peer = ?request.remote_addr(), "QueueAdmin refused: not this node's certificate");
            Err(Status::permission_denied(
                "QueueAdmin requires this node's own certificate (run `mta queue` with the node's config)",
            ))
        }
    }
}

fn internal(e: QueueError) -> Status {
    tracing::error!(error = %e, "queue admin operation failed");
    Status::internal(format!("queue error: {e}"))
}

fn not_found(id: &str) -> Status {
    Status::not_found(format!("queue id {id} not found"))
}

fn checked_id(id: &str) -> Result<&str, Status> {
    match QueueId::parse(id) {
        Some(_) => Ok(id),
        None => Err(not_found(id)),
    }
}

fn to_proto(entry: &MessageEntry) -> QueuedMessage {
    QueuedMessage {
        queue_id: entry.queue_id.clone(),
        sender: entry.sender.clone(),
        recipients: entry
            .recipients
            .iter()
            .map(|r| RecipientState {
                address: r.address.clone(),
                state: r.status.as_str().to_string(),
                last_reply: r.last_reply.clone(),
                next_attempt: if r.status == RecipientStatus::Deferred {
                    r.next_attempt
                } else {
                    0
                },
                attempts: r.attempts,
            })
            .collect(),
        size: entry.size,
        queued_at: entry.received_at,
        held: entry.held,
        journey_id: entry.journey_id.clone(),
    }
}

fn count(
    result: Result<Option<u64>, QueueError>,
    id: &str,
) -> Result<Response<CountReply>, Status> {
    match result.map_err(internal)? {
        Some(count) => Ok(Response::new(CountReply { count })),
        None => Err(not_found(id)),
    }
}

/// Age bucket upper bounds in seconds: <5m, <1h, <4h, <1d, >=1d.
const AGE_BUCKETS: [i64; 4] = [300, 3600, 4 * 3600, 86_400];

/// Counts unfinished recipients per domain and age bucket.
pub fn summarize(entries: &[MessageEntry], now: i64) -> Vec<DomainSummary> {
    let mut domains: BTreeMap<String, DomainSummary> = BTreeMap::new();
    for entry in entries {
        let age = now.saturating_sub(entry.received_at);
        let bucket = AGE_BUCKETS
            .iter()
            .position(|&limit| age < limit)
            .unwrap_or(AGE_BUCKETS.len());
        for r in entry.recipients.iter().filter(|r| !r.status.is_final()) {
            let summary = domains.entry(r.domain()).or_insert_with(|| DomainSummary {
                domain: r.domain(),
                by_age: vec![0; AGE_BUCKETS.len() + 1],
                total: 0,
            });
            summary.by_age[bucket] += 1;
            summary.total += 1;
        }
    }
    domains.into_values().collect()
}

#[tonic::async_trait]
impl QueueAdmin for AdminService {
    async fn list(
        &self,
        _request: Request<ListQueueRequest>,
    ) -> Result<Response<ListQueueReply>, Status> {
        self.authorize(&_request)?;
        let entries = self.queue.list().map_err(internal)?;
        Ok(Response::new(ListQueueReply {
            messages: entries.iter().map(to_proto).collect(),
        }))
    }

    async fn show(
        &self,
        request: Request<QueueIdRequest>,
    ) -> Result<Response<QueuedMessage>, Status> {
        self.authorize(&request)?;
        let id = request.into_inner().queue_id;
        let entry = self.queue.show(checked_id(&id)?).map_err(internal)?;
        entry
            .map(|e| Response::new(to_proto(&e)))
            .ok_or_else(|| not_found(&id))
    }

    async fn retry(&self, request: Request<RetryRequest>) -> Result<Response<CountReply>, Status> {
        self.authorize(&request)?;
        let request = request.into_inner();
        if request.all {
            return count(self.queue.retry_now(None), "");
        }
        let id = checked_id(&request.queue_id)?;
        tracing::info!(queue_id = %id, "retry requested");
        count(self.queue.retry_now(Some(id)), id)
    }

    async fn hold(&self, request: Request<QueueIdRequest>) -> Result<Response<CountReply>, Status> {
        self.authorize(&request)?;
        let id = request.into_inner().queue_id;
        tracing::info!(queue_id = %id, "hold requested");
        count(self.queue.set_held(checked_id(&id)?, true), &id)
    }

    async fn release(
        &self,
        request: Request<QueueIdRequest>,
    ) -> Result<Response<CountReply>, Status> {
        self.authorize(&request)?;
        let id = request.into_inner().queue_id;
        tracing::info!(queue_id = %id, "release requested");
        count(self.queue.set_held(checked_id(&id)?, false), &id)
    }

    async fn delete(
        &self,
        request: Request<QueueIdRequest>,
    ) -> Result<Response<CountReply>, Status> {
        self.authorize(&request)?;
        let id = request.into_inner().queue_id;
        count(self.queue.delete(checked_id(&id)?), &id)
    }

    async fn bounce(
        &self,
        request: Request<QueueIdRequest>,
    ) -> Result<Response<CountReply>, Status> {
        self.authorize(&request)?;
        let id = request.into_inner().queue_id;
        tracing::info!(queue_id = %id, "bounce requested");
        count(self.queue.bounce(checked_id(&id)?), &id)
    }

    async fn summary(
        &self,
        _request: Request<SummaryRequest>,
    ) -> Result<Response<SummaryReply>, Status> {
        self.authorize(&_request)?;
        let entries = self.queue.list().map_err(internal)?;
        Ok(Response::new(SummaryReply {
            domains: summarize(&entries, now_secs()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::RecipientEntry;

    #[test]
    fn summary_buckets_by_domain_and_age() {
        let entry = |received_at, rcpts: &[&str]| MessageEntry {
            queue_id: "0000000000000001".into(),
            sender: String::new(),
            journey_id: String::new(),
            received_at,
            size: 1,
            held: false,
            warned: false,
            recipients: rcpts
                .iter()
                .map(|r| RecipientEntry::pending(r.to_string()))
                .collect(),
        };
        let mut done = entry(0, &["x@a.test"]);
        done.recipients[0].status = RecipientStatus::Delivered;
        let now = 100_000;
        let s = summarize(
            &[
                entry(now - 10, &["x@a.test", "y@b.test"]),
                entry(now - 4000, &["z@a.test"]),
                entry(now - 90_000, &["w@a.test"]),
                done,
            ],
            now,
        );
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].domain.as_str(), s[0].total), ("a.test", 3));
        assert_eq!(s[0].by_age, vec![1, 0, 1, 0, 1]);
        assert_eq!(s[1].by_age, vec![1, 0, 0, 0, 0]);
    }

    #[test]
    fn received_header_for_submissions() {
        let h = received_header(
            Some("127.0.0.1:5000".parse().unwrap()),
            "mx.test",
            "mta-1",
            "00ff",
            "alice@x.test",
        );
        assert!(h.starts_with(
            "Received: from msa ([127.0.0.1])\r\n\tby mx.test (mta-1) via gRPC with ESMTPA id 00ff"
        ));
        assert!(h.contains("(authenticated as alice@x.test);"));
        assert!(h.ends_with("\r\n"));
        assert_eq!(headers::count(h.as_bytes(), "received"), 1);
    }
}
