//! `correo.delivery.v1.Delivery`: final delivery into Maildirs, for the MTA.
//! Served on the mutual-TLS listener.
//!
//! The whole message is received before anything is written, so a stream
//! that breaks off delivers nothing; then each recipient is resolved through
//! the aliases and written to its Maildir, and gets its own result.
//! `DeliverBatch` does the same for several messages in one call. Either
//! way the files of a call are one commit on the blocking pool
//! ([`crate::maildir::MailStore::deliver_many`]: one syncfs for all of
//! them, then one fsync of each `new/`). A burst of local mail then costs
//! one call, not one per message.

use crate::address::Address;
use crate::maildir::MaildirError;
use crate::state::{Arrival, State};
use correo_proto::delivery::delivery_server::Delivery;
use correo_proto::delivery::{
    DeliverBatchReply, DeliverChunk, DeliverReply, DeliveryEnvelope, DeliveryStatus,
    RecipientResult, deliver_chunk,
};
use std::collections::HashMap;
use std::sync::Arc;
use tonic::{Request, Response, Status, Streaming};

/// Largest message accepted (the MTA's default limit is 50 MiB; this leaves
/// room for the headers it adds).
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;
/// Most recipients in one delivery.
const MAX_RECIPIENTS: usize = 1000;
/// Most messages in one DeliverBatch call.
const MAX_BATCH_MESSAGES: usize = 1000;
/// Most octets kept of all the messages of one DeliverBatch call (the MTA
/// sends large messages one by one, through Deliver, and batches of at
/// most 4 MiB). Twice the largest message, so that in a batch whose other
/// messages stay within one message's limit, a message too large meets its
/// own limit first and fails alone.
const MAX_BATCH_SIZE: usize = 2 * MAX_MESSAGE_SIZE;

/// The Delivery service over the shared state.
#[derive(Debug, Clone)]
pub struct DeliveryService {
    state: Arc<State>,
}

impl DeliveryService {
    pub fn new(state: Arc<State>) -> Self {
        DeliveryService { state }
    }
}

/// One recipient's outcome: the status the MTA acts on and the SMTP-style
/// reply it logs or puts in a bounce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Verdict {
    status: DeliveryStatus,
    code: u32,
    enhanced: &'static str,
    text: &'static str,
}

impl Verdict {
    const fn new(
        status: DeliveryStatus,
        code: u32,
        enhanced: &'static str,
        text: &'static str,
    ) -> Self {
        Verdict {
            status,
            code,
            enhanced,
            text,
        }
    }

    fn for_recipient(self, recipient: &str) -> RecipientResult {
        RecipientResult {
            recipient: recipient.to_string(),
            status: self.status as i32,
            code: self.code,
            enhanced_code: self.enhanced.to_string(),
            message: self.text.to_string(),
        }
    }
}

const DELIVERED: Verdict = Verdict::new(
    DeliveryStatus::Delivered,
    250,
    "2.0.0",
    "delivered to mailbox",
);
const BAD_SYNTAX: Verdict = Verdict::new(
    DeliveryStatus::Permanent,
    553,
    "5.1.3",
    "bad recipient address syntax",
);
const UNKNOWN_USER: Verdict = Verdict::new(DeliveryStatus::Permanent, 550, "5.1.1", "unknown user");
const FOREIGN_DOMAIN: Verdict = Verdict::new(
    DeliveryStatus::Permanent,
    550,
    "5.1.2",
    "domain not served here",
);
const DISK_FULL: Verdict = Verdict::new(
    DeliveryStatus::Temporary,
    452,
    "4.3.1",
    "insufficient system storage",
);
const TOO_BIG: Verdict = Verdict::new(
    DeliveryStatus::Permanent,
    552,
    "5.3.4",
    "message too big for the mailbox",
);
/// A batched message whose envelope is unusable: deferred, as a single
/// Deliver call refused with INVALID_ARGUMENT would be, without failing the
/// other messages of the batch.
const BAD_ENVELOPE: Verdict = Verdict::new(
    DeliveryStatus::Temporary,
    451,
    "4.3.0",
    "invalid delivery envelope",
);
const IO_ERROR: Verdict = Verdict::new(
    DeliveryStatus::Temporary,
    451,
    "4.3.0",
    "mailbox temporarily unavailable",
);

/// A reverse path goes verbatim into `Return-Path: <…>`: refuse anything
/// that could break out of the angle brackets or the header line.
fn valid_sender(sender: &str) -> bool {
    sender.len() <= 512
        && !sender
            .bytes()
            .any(|b| b.is_ascii_control() || matches!(b, b'<' | b'>'))
}

/// Why an envelope cannot be delivered, if it cannot.
fn envelope_problem(envelope: &DeliveryEnvelope) -> Option<String> {
    if !valid_sender(&envelope.sender) {
        return Some("invalid sender".into());
    }
    if envelope.recipients.is_empty() || envelope.recipients.len() > MAX_RECIPIENTS {
        return Some(format!(
            "a delivery needs 1 to {MAX_RECIPIENTS} recipients, not {}",
            envelope.recipients.len()
        ));
    }
    None
}

/// A message being received: its envelope, and its octets so far.
struct Receiving {
    envelope: DeliveryEnvelope,
    journey: String,
    message: Vec<u8>,
    /// Set when the message outgrew [`MAX_MESSAGE_SIZE`]; the rest of it is
    /// dropped as it arrives.
    too_big: bool,
    /// Why its envelope cannot be delivered, if it cannot: its octets are
    /// dropped as they arrive.
    refused: Option<String>,
}

impl Receiving {
    /// Starts a message; the journey id comes from the envelope, else from
    /// the call's metadata.
    fn new(envelope: DeliveryEnvelope, metadata_journey: Option<&str>) -> Receiving {
        let journey = if envelope.journey_id.is_empty() {
            metadata_journey.unwrap_or_default().to_string()
        } else {
            envelope.journey_id.clone()
        };
        Receiving {
            refused: envelope_problem(&envelope),
            envelope,
            journey,
            message: Vec::new(),
            too_big: false,
        }
    }

    fn push(&mut self, data: &[u8]) {
        if self.too_big || self.refused.is_some() {
            return; // Its answer does not depend on the octets.
        }
        if self.message.len() + data.len() > MAX_MESSAGE_SIZE {
            tracing::warn!(queue_id = %self.envelope.queue_id, journey = %self.journey, limit = MAX_MESSAGE_SIZE, "delivery refused: message too large");
            self.too_big = true;
            self.message = Vec::new();
            return;
        }
        self.message.extend_from_slice(data);
    }

    /// The whole message: to be written, or (too large, bad envelope) a
    /// verdict for every recipient.
    fn finish(self) -> Incoming {
        let content = if self.too_big {
            // Retrying cannot help: a permanent answer, per recipient, so
            // the MTA bounces at once.
            Err(TOO_BIG)
        } else if let Some(problem) = &self.refused {
            tracing::warn!(queue_id = %self.envelope.queue_id, journey = %self.journey, sender = ?self.envelope.sender, problem, "delivery refused");
            Err(BAD_ENVELOPE)
        } else {
            tracing::info!(
                queue_id = %self.envelope.queue_id,
                journey = %self.journey,
                sender = %self.envelope.sender,
                recipients = self.envelope.recipients.len(),
                size = self.message.len(),
                "delivery received"
            );
            Ok(self.message.into())
        };
        Incoming {
            envelope: self.envelope,
            journey: self.journey,
            content,
        }
    }
}

/// A message received whole.
struct Incoming {
    envelope: DeliveryEnvelope,
    journey: String,
    content: Result<Arc<[u8]>, Verdict>,
}

/// What one recipient of a message gets: a verdict known without writing,
/// or the outcome of write number `n` of the batch.
enum Slot {
    Now(Verdict),
    Write(usize),
}

#[tonic::async_trait]
impl Delivery for DeliveryService {
    async fn deliver(
        &self,
        request: Request<Streaming<DeliverChunk>>,
    ) -> Result<Response<DeliverReply>, Status> {
        let metadata_journey = journey_metadata(&request);
        let mut stream = request.into_inner();

        let envelope = match stream.message().await? {
            Some(DeliverChunk {
                part: Some(deliver_chunk::Part::Envelope(envelope)),
            }) => envelope,
            _ => {
                return Err(Status::invalid_argument(
                    "the first chunk must carry the envelope",
                ));
            }
        };
        let mut receiving = Receiving::new(envelope, metadata_journey.as_deref());
        if let Some(problem) = receiving.refused.take() {
            tracing::warn!(queue_id = %receiving.envelope.queue_id, journey = %receiving.journey, sender = ?receiving.envelope.sender, problem, "delivery refused");
            return Err(Status::invalid_argument(problem));
        }
        while let Some(chunk) = stream.message().await? {
            match chunk.part {
                Some(deliver_chunk::Part::Data(data)) => {
                    receiving.push(&data);
                    if receiving.too_big {
                        break; // No need to read the rest.
                    }
                }
                Some(deliver_chunk::Part::Envelope(_)) => {
                    return Err(Status::invalid_argument(
                        "only the first chunk may carry an envelope",
                    ));
                }
                None => {}
            }
        }
        let results = self
            .deliver_messages(vec![receiving.finish()])
            .await
            .pop()
            .unwrap_or_default();
        Ok(Response::new(DeliverReply { results }))
    }

    async fn deliver_batch(
        &self,
        request: Request<Streaming<DeliverChunk>>,
    ) -> Result<Response<DeliverBatchReply>, Status> {
        let metadata_journey = journey_metadata(&request);
        let mut stream = request.into_inner();
        let mut batch: Vec<Incoming> = Vec::new();
        let mut current: Option<Receiving> = None;
        // Octets kept of the finished messages (a message too large is
        // dropped as it arrives, and gets its own permanent answer).
        let mut finished = 0usize;
        while let Some(chunk) = stream.message().await? {
            match chunk.part {
                Some(deliver_chunk::Part::Envelope(envelope)) => {
                    if let Some(done) = current.take() {
                        finished += done.message.len();
                        batch.push(done.finish());
                    }
                    if batch.len() >= MAX_BATCH_MESSAGES {
                        return Err(Status::invalid_argument(format!(
                            "a batch holds at most {MAX_BATCH_MESSAGES} messages"
                        )));
                    }
                    current = Some(Receiving::new(envelope, metadata_journey.as_deref()));
                }
                Some(deliver_chunk::Part::Data(data)) => {
                    let Some(receiving) = current.as_mut() else {
                        return Err(Status::invalid_argument(
                            "the first chunk must carry an envelope",
                        ));
                    };
                    receiving.push(&data);
                    if finished + receiving.message.len() > MAX_BATCH_SIZE {
                        return Err(Status::resource_exhausted(format!(
                            "a batch holds at most {MAX_BATCH_SIZE} octets"
                        )));
                    }
                }
                None => {}
            }
        }
        if let Some(done) = current.take() {
            finished += done.message.len();
            batch.push(done.finish());
        }
        tracing::debug!(
            messages = batch.len(),
            octets = finished,
            "delivery batch received"
        );
        let messages = self
            .deliver_messages(batch)
            .await
            .into_iter()
            .map(|results| DeliverReply { results })
            .collect();
        Ok(Response::new(DeliverBatchReply { messages }))
    }
}

/// The journey id a call carries in its metadata (older MTAs send it only
/// there).
fn journey_metadata<T>(request: &Request<T>) -> Option<String> {
    request
        .metadata()
        .get(correo_proto::JOURNEY_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

impl DeliveryService {
    /// Delivers received messages: each recipient is resolved through the
    /// aliases, then the files of the whole batch are written together
    /// ([`DeliveryService::write_all`]). One list of results per message,
    /// in order.
    async fn deliver_messages(&self, batch: Vec<Incoming>) -> Vec<Vec<RecipientResult>> {
        let accounts = self.state.directory.snapshot();
        let mut writes: Vec<(Address, String, Arc<[u8]>)> = Vec::new();
        // Per message, per recipient: (address as given, resolved address, slot).
        let mut plans: Vec<Vec<(String, Option<Address>, Slot)>> = Vec::with_capacity(batch.len());
        for incoming in &batch {
            let queue_id = incoming.envelope.queue_id.as_str();
            let journey = incoming.journey.as_str();
            let message = match &incoming.content {
                Ok(message) => message,
                Err(verdict) => {
                    plans.push(
                        incoming
                            .envelope
                            .recipients
                            .iter()
                            .map(|r| (r.clone(), None, Slot::Now(*verdict)))
                            .collect(),
                    );
                    continue;
                }
            };
            // One copy per mailbox, even if several recipients lead to it
            // (an alias and its user); the later ones share its outcome.
            let mut by_user: HashMap<Address, usize> = HashMap::new();
            let mut plan = Vec::with_capacity(incoming.envelope.recipients.len());
            for rcpt in &incoming.envelope.recipients {
                let address = match Address::parse(rcpt) {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::info!(queue_id, journey, rcpt = ?rcpt, error = %e, "recipient refused");
                        plan.push((rcpt.clone(), None, Slot::Now(BAD_SYNTAX)));
                        continue;
                    }
                };
                let Some(user) = accounts.resolve(&address).cloned() else {
                    let verdict = if accounts.serves_domain(address.domain()) {
                        UNKNOWN_USER
                    } else {
                        FOREIGN_DOMAIN
                    };
                    tracing::info!(queue_id, journey, rcpt = %address, code = verdict.code, enhanced = verdict.enhanced, "recipient refused: {}", verdict.text);
                    plan.push((rcpt.clone(), None, Slot::Now(verdict)));
                    continue;
                };
                let n = match by_user.get(&user) {
                    Some(&n) => {
                        tracing::info!(queue_id, journey, rcpt = %address, user = %user, "same mailbox as an earlier recipient");
                        n
                    }
                    None => {
                        writes.push((
                            user.clone(),
                            incoming.envelope.sender.clone(),
                            Arc::clone(message),
                        ));
                        by_user.insert(user, writes.len() - 1);
                        writes.len() - 1
                    }
                };
                plan.push((rcpt.clone(), Some(address), Slot::Write(n)));
            }
            plans.push(plan);
        }

        let users: Vec<Address> = writes.iter().map(|(user, _, _)| user.clone()).collect();
        let outcomes = self.write_all(writes).await;
        let mut verdicts: Vec<Option<Verdict>> = vec![None; outcomes.len()];
        let mut outcomes: Vec<Option<Result<crate::maildir::Delivered, MaildirError>>> =
            outcomes.into_iter().map(Some).collect();

        let mut replies = Vec::with_capacity(batch.len());
        for (incoming, plan) in batch.iter().zip(plans) {
            let queue_id = incoming.envelope.queue_id.as_str();
            let journey = incoming.journey.as_str();
            let mut results = Vec::with_capacity(plan.len());
            for (rcpt, address, slot) in plan {
                let verdict = match slot {
                    Slot::Now(verdict) => verdict,
                    Slot::Write(n) => *verdicts[n].get_or_insert_with(|| {
                        // The first recipient of this write reports it.
                        let address = address.as_ref().expect("written recipients are parsed");
                        let user = &users[n];
                        let outcome = outcomes[n].take().expect("each write is reported once");
                        self.report(queue_id, journey, address, user, incoming, outcome)
                    }),
                };
                results.push(verdict.for_recipient(&rcpt));
            }
            replies.push(results);
        }
        replies
    }

    /// Logs one write's outcome (the journey's `stored` event when it
    /// worked) and tells watchers of the mailbox.
    fn report(
        &self,
        queue_id: &str,
        journey: &str,
        address: &Address,
        user: &Address,
        incoming: &Incoming,
        outcome: Result<crate::maildir::Delivered, MaildirError>,
    ) -> Verdict {
        match outcome {
            Ok(delivered) => {
                let message = incoming
                    .content
                    .as_ref()
                    .map(|m| &m[..])
                    .unwrap_or_default();
                tracing::info!(
                    queue_id,
                    journey,
                    rcpt = %address,
                    user = %user,
                    id = %delivered.summary.id,
                    journey_event = "stored",
                    received = %correo_runtime::journey::received_json(message),
                    "delivered"
                );
                // Nobody watching is fine: the message is in the Maildir either way.
                let _ = self.state.arrivals.send(Arrival {
                    user: user.clone(),
                    summary: delivered.summary,
                });
                DELIVERED
            }
            Err(e) if e.is_storage_full() => {
                tracing::error!(queue_id, journey, rcpt = %address, error = %e, "delivery deferred: disk full");
                DISK_FULL
            }
            Err(e) => {
                tracing::error!(queue_id, journey, rcpt = %address, error = %e, "delivery deferred");
                IO_ERROR
            }
        }
    }

    /// Writes every (user, sender, message) of a batch on the blocking pool,
    /// as one batch commit ([`crate::maildir::MailStore::deliver_many`]: the
    /// files share one syncfs instead of an fsync each). Results in the
    /// order of `writes`.
    async fn write_all(
        &self,
        writes: Vec<(Address, String, Arc<[u8]>)>,
    ) -> Vec<Result<crate::maildir::Delivered, MaildirError>> {
        if writes.is_empty() {
            return Vec::new();
        }
        let started = std::time::Instant::now();
        let count = writes.len();
        let store = self.state.store.clone();
        let task = tokio::task::spawn_blocking(move || {
            let results = store.deliver_many(&writes);
            // Each write's duration is its batch's: they share the syncs.
            let took = started.elapsed();
            for result in &results {
                correo_runtime::metrics::mda_write(result.is_ok(), took);
            }
            results
        });
        match task.await {
            Ok(results) => results,
            Err(join) => (0..count)
                .map(|_| {
                    Err(MaildirError::Io {
                        path: Default::default(),
                        source: std::io::Error::other(join.to_string()),
                    })
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::valid_sender;

    #[test]
    fn senders_cannot_inject_headers() {
        assert!(valid_sender(""));
        assert!(valid_sender("bob@example.test"));
        assert!(valid_sender("\"odd local\"@x.test"));
        for bad in ["a\r\nX-Evil: 1", "a>b", "<a@b>", "a\tb", "a\0b"] {
            assert!(!valid_sender(bad), "{bad:?}");
        }
    }
}
