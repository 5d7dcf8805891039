//! `correo.delivery.v1.Delivery`: final delivery into Maildirs, for the MTA.
//! Served on the mutual-TLS listener.
//!
//! The whole message is received before anything is written, so a stream
//! that breaks off delivers nothing; then each recipient is resolved through
//! the aliases and written to its Maildir, and gets its own result.

use crate::address::Address;
use crate::maildir::MaildirError;
use crate::state::{Arrival, State};
use correo_proto::delivery::delivery_server::Delivery;
use correo_proto::delivery::{
    DeliverChunk, DeliverReply, DeliveryEnvelope, DeliveryStatus, RecipientResult, deliver_chunk,
};
use std::collections::HashMap;
use std::sync::Arc;
use tonic::{Request, Response, Status, Streaming};

/// Largest message accepted (the MTA's default limit is 50 MiB; this leaves
/// room for the headers it adds).
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;
/// Most recipients in one delivery.
const MAX_RECIPIENTS: usize = 1000;

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

#[tonic::async_trait]
impl Delivery for DeliveryService {
    async fn deliver(
        &self,
        request: Request<Streaming<DeliverChunk>>,
    ) -> Result<Response<DeliverReply>, Status> {
        let metadata_journey = request
            .metadata()
            .get(correo_proto::JOURNEY_METADATA_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
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
        let journey = if envelope.journey_id.is_empty() {
            metadata_journey.unwrap_or_default()
        } else {
            envelope.journey_id.clone()
        };
        let queue_id = envelope.queue_id.clone();
        if !valid_sender(&envelope.sender) {
            tracing::warn!(queue_id = %queue_id, journey = %journey, sender = ?envelope.sender, "delivery refused: bad sender");
            return Err(Status::invalid_argument("invalid sender"));
        }
        if envelope.recipients.is_empty() || envelope.recipients.len() > MAX_RECIPIENTS {
            tracing::warn!(queue_id = %queue_id, journey = %journey, recipients = envelope.recipients.len(), "delivery refused: recipient count");
            return Err(Status::invalid_argument(format!(
                "a delivery needs 1 to {MAX_RECIPIENTS} recipients"
            )));
        }

        let mut message = Vec::new();
        while let Some(chunk) = stream.message().await? {
            match chunk.part {
                Some(deliver_chunk::Part::Data(data)) => {
                    if message.len() + data.len() > MAX_MESSAGE_SIZE {
                        // Retrying cannot help: a permanent answer, per
                        // recipient, so the MTA bounces at once.
                        tracing::warn!(queue_id = %queue_id, journey = %journey, limit = MAX_MESSAGE_SIZE, "delivery refused: message too large");
                        let results = envelope
                            .recipients
                            .iter()
                            .map(|r| TOO_BIG.for_recipient(r))
                            .collect();
                        return Ok(Response::new(DeliverReply { results }));
                    }
                    message.extend_from_slice(&data);
                }
                Some(deliver_chunk::Part::Envelope(_)) => {
                    return Err(Status::invalid_argument(
                        "only the first chunk may carry an envelope",
                    ));
                }
                None => {}
            }
        }
        let message: Arc<[u8]> = message.into();
        tracing::info!(
            queue_id = %queue_id,
            journey = %journey,
            sender = %envelope.sender,
            recipients = envelope.recipients.len(),
            size = message.len(),
            "delivery received"
        );

        let results = self.deliver_all(&envelope, &journey, message).await;
        Ok(Response::new(DeliverReply { results }))
    }
}

impl DeliveryService {
    async fn deliver_all(
        &self,
        envelope: &DeliveryEnvelope,
        journey: &str,
        message: Arc<[u8]>,
    ) -> Vec<RecipientResult> {
        let queue_id = envelope.queue_id.as_str();
        let accounts = self.state.directory.snapshot();
        // One copy per mailbox, even if several recipients lead to it (an
        // alias and its user); the later ones share the first one's verdict.
        let mut done: HashMap<Address, Verdict> = HashMap::new();
        let mut results = Vec::with_capacity(envelope.recipients.len());

        for rcpt in &envelope.recipients {
            let address = match Address::parse(rcpt) {
                Ok(a) => a,
                Err(e) => {
                    tracing::info!(queue_id, journey, rcpt = ?rcpt, error = %e, "recipient refused");
                    results.push(BAD_SYNTAX.for_recipient(rcpt));
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
                results.push(verdict.for_recipient(rcpt));
                continue;
            };
            if let Some(verdict) = done.get(&user) {
                tracing::info!(queue_id, journey, rcpt = %address, user = %user, "same mailbox as an earlier recipient");
                results.push(verdict.for_recipient(rcpt));
                continue;
            }

            let verdict = match self
                .write(&user, &envelope.sender, Arc::clone(&message))
                .await
            {
                Ok(delivered) => {
                    tracing::info!(
                        queue_id,
                        journey,
                        rcpt = %address,
                        user = %user,
                        id = %delivered.summary.id,
                        journey_event = "stored",
                        received = %correo_runtime::journey::received_json(&message),
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
            };
            results.push(verdict.for_recipient(rcpt));
            done.insert(user, verdict);
        }
        results
    }

    async fn write(
        &self,
        user: &Address,
        sender: &str,
        message: Arc<[u8]>,
    ) -> Result<crate::maildir::Delivered, MaildirError> {
        let store = self.state.store.clone();
        let (user, sender) = (user.clone(), sender.to_string());
        let started = std::time::Instant::now();
        let result =
            tokio::task::spawn_blocking(move || store.deliver(&user, &sender, &user, &message))
                .await
                .unwrap_or_else(|join| {
                    Err(MaildirError::Io {
                        path: Default::default(),
                        source: std::io::Error::other(join.to_string()),
                    })
                });
        correo_runtime::metrics::mda_write(result.is_ok(), started.elapsed());
        result
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
