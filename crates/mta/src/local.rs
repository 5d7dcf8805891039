//! The MDA as seen from the MTA: Delivery.Deliver for local domains and
//! Directory.CheckRecipient at RCPT time, both over mutual TLS.

use crate::queue::Outcome;
use correo_proto::delivery::delivery_client::DeliveryClient;
use correo_proto::delivery::{
    DeliverChunk, DeliverReply, DeliveryEnvelope, DeliveryStatus, deliver_chunk,
};
use correo_proto::directory::CheckRecipientRequest;
use correo_proto::directory::directory_client::DirectoryClient;
use correo_runtime::tls::{TlsError, TlsFiles, grpc_client_tls};
use futures::future::BoxFuture;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

/// How long a RCPT may wait for the directory before answering 451.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound of one Deliver call (a 50 MB message over loopback is fast;
/// this only catches a hung MDA).
const DELIVER_TIMEOUT: Duration = Duration::from_secs(300);

/// Errors building the MDA client.
#[derive(Debug, thiserror::Error)]
pub enum MdaError {
    #[error("mda.endpoint: {0}")]
    Endpoint(#[from] tonic::transport::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Answers "does this local address exist?" (RCPT time).
pub trait RecipientDirectory: Send + Sync {
    /// Ok(exists), or Err(reason) when the directory cannot answer.
    fn exists<'a>(&'a self, address: &'a str) -> BoxFuture<'a, Result<bool, String>>;
}

/// Positive answers of another directory, reused for a while: a burst of
/// mail to the same users asks the MDA once per address and period
/// instead of once per RCPT. Unknown addresses and errors are always asked
/// again, so a new account works at once.
pub struct CachedDirectory<D> {
    inner: D,
    ttl: Duration,
    known: parking_lot::Mutex<HashMap<String, Instant>>,
}

/// Entries kept at most; past that the cache starts again empty.
const CACHE_ENTRIES: usize = 10_000;

impl<D: RecipientDirectory> CachedDirectory<D> {
    pub fn new(inner: D, ttl: Duration) -> Self {
        CachedDirectory {
            inner,
            ttl,
            known: parking_lot::Mutex::new(HashMap::new()),
        }
    }
}

impl<D: RecipientDirectory> RecipientDirectory for CachedDirectory<D> {
    fn exists<'a>(&'a self, address: &'a str) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(async move {
            if self.ttl.is_zero() {
                return self.inner.exists(address).await;
            }
            let fresh = self
                .known
                .lock()
                .get(address)
                .is_some_and(|at| at.elapsed() < self.ttl);
            if fresh {
                return Ok(true);
            }
            let answer = self.inner.exists(address).await;
            if let Ok(true) = answer {
                let mut known = self.known.lock();
                if known.len() >= CACHE_ENTRIES {
                    known.clear();
                }
                known.insert(address.to_string(), Instant::now());
            }
            answer
        })
    }
}

/// Concurrent DeliverBatch calls at most; messages that come while they
/// run wait for the next batch. A few keep the MDA busy (while one batch
/// is written, the next is on the wire) and let bursts form batches.
const BATCH_CALLS: usize = 2;
/// Messages per batch at most.
const BATCH_MESSAGES: usize = 64;
/// Octets per batch at most; a message larger than this goes alone,
/// through Deliver.
const BATCH_BYTES: usize = 4 << 20;

/// How long an MDA found without DeliverBatch is left alone before it is
/// asked again (it may have been upgraded).
const REPROBE: Duration = Duration::from_secs(600);
/// How long after a failed question (MDA unreachable) messages go one by
/// one before the MTA asks again.
const PROBE_BACKOFF: Duration = Duration::from_secs(30);

/// The MDA's gRPC services on one lazily connected channel.
#[derive(Clone)]
pub struct Mda {
    channel: Channel,
    batches: Arc<Batches>,
}

/// Local deliveries waiting for a DeliverBatch call.
#[derive(Default)]
struct Batches {
    state: parking_lot::Mutex<BatchState>,
    support: parking_lot::Mutex<Support>,
}

/// Whether the MDA has DeliverBatch (an MDA older than the rpc answers
/// UNIMPLEMENTED).
#[derive(Debug, Clone, Copy, Default)]
enum Support {
    #[default]
    Unknown,
    Yes,
    /// No, as of then: every message goes through Deliver until REPROBE.
    No(Instant),
    /// The question failed then (MDA unreachable): Deliver until
    /// PROBE_BACKOFF, so a down MDA costs one failed call per message, not two.
    Unanswered(Instant),
}

#[derive(Default)]
struct BatchState {
    waiting: VecDeque<Pending>,
    calls: usize,
}

/// One message waiting for its batch, and where its answer goes.
struct Pending {
    chunks: Vec<DeliverChunk>,
    size: usize,
    reply: oneshot::Sender<Result<DeliverReply, Status>>,
}

impl Batches {
    /// Queues a message; returns a batch to send now if a call slot is free.
    fn enqueue(&self, pending: Pending) -> Option<Vec<Pending>> {
        let mut state = self.state.lock();
        state.waiting.push_back(pending);
        if state.calls >= BATCH_CALLS {
            return None;
        }
        state.calls += 1;
        Some(take_batch(&mut state.waiting))
    }

    /// After a call: the next batch, or the call slot given back.
    fn next(&self) -> Option<Vec<Pending>> {
        let mut state = self.state.lock();
        state.waiting.retain(|p| !p.reply.is_closed());
        if state.waiting.is_empty() {
            state.calls -= 1;
            return None;
        }
        Some(take_batch(&mut state.waiting))
    }
}

/// Holds a call slot, from the moment it is taken. If its task ends
/// without giving the slot back (a panic, or the runtime dropping the task,
/// even before it first ran), the drop gives the slot back; if no other
/// call is left to send the waiting messages, they are failed (so they are
/// deferred) instead of waiting for a call that never comes.
struct Slot {
    batches: Arc<Batches>,
    released: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let orphans = {
            let mut state = self.batches.state.lock();
            state.calls -= 1;
            if state.calls == 0 {
                std::mem::take(&mut state.waiting)
            } else {
                VecDeque::new()
            }
        };
        drop(orphans); // Outside the lock: their callers wake up.
    }
}

/// The oldest waiting messages, up to the batch limits (at least one if
/// any waits). A message whose caller has gone (timed out, cancelled) is
/// dropped unsent: it stays queued and is tried again later, and sending
/// it now would only deliver it twice.
fn take_batch(waiting: &mut VecDeque<Pending>) -> Vec<Pending> {
    let mut batch = Vec::new();
    let mut bytes = 0;
    waiting.retain(|p| !p.reply.is_closed());
    while let Some(next) = waiting.front() {
        if !batch.is_empty() && (batch.len() >= BATCH_MESSAGES || bytes + next.size > BATCH_BYTES) {
            break;
        }
        bytes += next.size;
        batch.extend(waiting.pop_front());
    }
    batch
}

impl Mda {
    /// Builds the channel; it connects on first use and reconnects by itself.
    pub fn new(endpoint: &str, server_name: &str, tls: &TlsFiles) -> Result<Mda, MdaError> {
        let channel = Endpoint::from_shared(endpoint.to_string())?
            .tls_config(grpc_client_tls(tls, server_name, true)?)?
            .connect_timeout(Duration::from_secs(10))
            .connect_lazy();
        Ok(Mda {
            channel,
            batches: Default::default(),
        })
    }

    /// Hands a message to the MDA; one outcome per recipient. An MDA that
    /// cannot be reached or answers with an error defers everyone.
    ///
    /// Messages that arrive while [`BATCH_CALLS`] calls are under way are
    /// sent together in the next DeliverBatch call: under load one call
    /// (and one fsync of each Maildir) serves many messages, and a lone
    /// message still goes at once.
    pub async fn deliver(
        &self,
        queue_id: &str,
        journey: &str,
        sender: &str,
        recipients: &[String],
        message: &[u8],
    ) -> Vec<(String, Outcome)> {
        let chunks = message_chunks(queue_id, journey, sender, recipients, message);
        let reply = if message.len() > BATCH_BYTES || !self.batch_supported().await {
            self.deliver_one(chunks, journey).await
        } else {
            let (reply, answer) = oneshot::channel();
            let pending = Pending {
                chunks,
                size: message.len(),
                reply,
            };
            if let Some(batch) = self.batches.enqueue(pending) {
                let slot = Slot {
                    batches: self.batches.clone(),
                    released: false,
                };
                // A task of its own: the call must finish (and hand the
                // slot on) even if this caller is cancelled. A cancelled
                // caller's message is still delivered; its answer is lost,
                // so the message is delivered again later: a duplicate,
                // never a loss.
                let mda = self.clone();
                tokio::spawn(async move { mda.send_batches(batch, slot).await });
            }
            // Waiting for earlier calls, then this one's own timeout.
            match tokio::time::timeout(2 * DELIVER_TIMEOUT, answer).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(_)) => Err(Status::unavailable("delivery batch abandoned")),
                Err(_) => Err(Status::deadline_exceeded("no answer to the delivery batch")),
            }
        };
        outcomes(recipients, reply)
    }

    /// Whether to batch: known, or found out with an empty DeliverBatch
    /// call (which delivers nothing). An MDA that cannot be reached now
    /// gets single calls, and is asked again next time.
    async fn batch_supported(&self) -> bool {
        let support = *self.batches.support.lock();
        match support {
            Support::Yes => return true,
            Support::No(since) if since.elapsed() < REPROBE => return false,
            Support::Unanswered(since) if since.elapsed() < PROBE_BACKOFF => return false,
            Support::No(_) | Support::Unanswered(_) | Support::Unknown => {}
        }
        let mut client = DeliveryClient::new(self.channel.clone());
        let mut probe = tonic::Request::new(tokio_stream::iter(Vec::<DeliverChunk>::new()));
        probe.set_timeout(CHECK_TIMEOUT);
        match client.deliver_batch(probe).await {
            Ok(_) => {
                *self.batches.support.lock() = Support::Yes;
                true
            }
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                tracing::warn!(
                    "the MDA has no DeliverBatch (an older version): one Deliver call per message"
                );
                *self.batches.support.lock() = Support::No(Instant::now());
                false
            }
            Err(_) => {
                *self.batches.support.lock() = Support::Unanswered(Instant::now());
                false
            }
        }
    }

    /// Sends `batch`, then whatever queued up meanwhile, until nothing waits.
    async fn send_batches(self, mut batch: Vec<Pending>, mut slot: Slot) {
        loop {
            self.send_batch(batch).await;
            match slot.batches.next() {
                Some(next) => batch = next,
                None => {
                    slot.released = true;
                    return;
                }
            }
        }
    }

    /// One DeliverBatch call; every message of it gets its own answer.
    async fn send_batch(&self, batch: Vec<Pending>) {
        if batch.is_empty() {
            return;
        }
        if matches!(*self.batches.support.lock(), Support::No(_)) {
            return self.send_one_by_one(batch).await;
        }
        let (chunks, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|p| (p.chunks, p.reply)).unzip();
        let mut request = tonic::Request::new(tokio_stream::iter(chunks.into_iter().flatten()));
        request.set_timeout(DELIVER_TIMEOUT);
        let mut client = DeliveryClient::new(self.channel.clone());
        let answers = match client.deliver_batch(request).await {
            Ok(reply) => reply.into_inner().messages,
            Err(status) => {
                if status.code() == tonic::Code::Unimplemented {
                    // Replaced by an older MDA since the probe. These
                    // messages went into the call, so they are deferred
                    // this once (nothing is lost).
                    tracing::warn!(
                        "the MDA no longer has DeliverBatch: one Deliver call per message"
                    );
                    *self.batches.support.lock() = Support::No(Instant::now());
                }
                for reply in replies {
                    let _ = reply.send(Err(status.clone()));
                }
                return;
            }
        };
        let mut answers = answers.into_iter();
        for reply in replies {
            let answer = answers.next().ok_or_else(|| {
                Status::internal("the MDA's batch reply has no entry for this message")
            });
            let _ = reply.send(answer);
        }
    }

    async fn send_one_by_one(&self, batch: Vec<Pending>) {
        for pending in batch {
            let journey = match pending.chunks.first().and_then(|c| c.part.as_ref()) {
                Some(deliver_chunk::Part::Envelope(e)) => e.journey_id.clone(),
                _ => String::new(),
            };
            let answer = self.deliver_one(pending.chunks, &journey).await;
            let _ = pending.reply.send(answer);
        }
    }

    /// One Deliver call for one message.
    async fn deliver_one(
        &self,
        chunks: Vec<DeliverChunk>,
        journey: &str,
    ) -> Result<DeliverReply, Status> {
        let mut request = tonic::Request::new(tokio_stream::iter(chunks));
        request.set_timeout(DELIVER_TIMEOUT);
        if let Ok(value) = journey.parse() {
            request
                .metadata_mut()
                .insert(correo_proto::JOURNEY_METADATA_KEY, value);
        }
        let mut client = DeliveryClient::new(self.channel.clone());
        client
            .deliver(request)
            .await
            .map(tonic::Response::into_inner)
    }
}

/// The chunks of one message: its envelope, then slices of it.
fn message_chunks(
    queue_id: &str,
    journey: &str,
    sender: &str,
    recipients: &[String],
    message: &[u8],
) -> Vec<DeliverChunk> {
    let mut chunks = vec![DeliverChunk {
        part: Some(deliver_chunk::Part::Envelope(DeliveryEnvelope {
            sender: sender.to_string(),
            recipients: recipients.to_vec(),
            queue_id: queue_id.to_string(),
            journey_id: journey.to_string(),
        })),
    }];
    chunks.extend(
        message
            .chunks(correo_proto::CHUNK_SIZE)
            .map(|c| DeliverChunk {
                part: Some(deliver_chunk::Part::Data(c.to_vec())),
            }),
    );
    chunks
}

/// The MDA's answer for one message as one outcome per recipient.
fn outcomes(recipients: &[String], reply: Result<DeliverReply, Status>) -> Vec<(String, Outcome)> {
    let reply = match reply {
        Ok(reply) => reply,
        Err(status) => {
            let reply = format!("451 4.4.3 MDA unavailable: {}", status.message());
            return recipients
                .iter()
                .map(|r| (r.clone(), Outcome::Deferred(reply.clone())))
                .collect();
        }
    };
    recipients
        .iter()
        .map(|recipient| {
            let result = reply
                .results
                .iter()
                .find(|r| r.recipient.eq_ignore_ascii_case(recipient));
            let outcome = match result {
                None => {
                    Outcome::Deferred("451 4.3.0 MDA returned no result for this recipient".into())
                }
                Some(r) => {
                    let text = format!("{} {} {}", r.code, r.enhanced_code, r.message)
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ");
                    match DeliveryStatus::try_from(r.status) {
                        Ok(DeliveryStatus::Delivered) => Outcome::Delivered(text),
                        Ok(DeliveryStatus::Permanent) => Outcome::Failed(text),
                        // Unspecified or unknown: be safe, try again.
                        _ => Outcome::Deferred(text),
                    }
                }
            };
            (recipient.clone(), outcome)
        })
        .collect()
}

impl RecipientDirectory for Mda {
    fn exists<'a>(&'a self, address: &'a str) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(async move {
            let mut client = DirectoryClient::new(self.channel.clone());
            let call = client.check_recipient(CheckRecipientRequest {
                address: address.to_string(),
            });
            match tokio::time::timeout(CHECK_TIMEOUT, call).await {
                Ok(Ok(reply)) => Ok(reply.into_inner().exists),
                Ok(Err(status)) => Err(format!("directory: {}", status.message())),
                Err(_) => Err("directory: timeout".into()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Knows "alice@example.test" only; counts the questions.
    #[derive(Default)]
    struct Counting(AtomicUsize);

    impl RecipientDirectory for Counting {
        fn exists<'a>(&'a self, address: &'a str) -> BoxFuture<'a, Result<bool, String>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move { Ok(address == "alice@example.test") })
        }
    }

    fn pending(size: usize) -> (Pending, oneshot::Receiver<Result<DeliverReply, Status>>) {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            chunks: Vec::new(),
            size,
            reply,
        };
        (pending, answer)
    }

    #[test]
    fn batches_keep_their_limits_and_skip_callers_that_left() {
        let batches = Arc::new(Batches::default());
        let mut answers = Vec::new();
        // The first message takes a slot and goes at once, alone.
        let (p, a) = pending(10);
        answers.push(a);
        assert_eq!(batches.enqueue(p).map(|b| b.len()), Some(1));
        let (p, a) = pending(10);
        answers.push(a);
        assert_eq!(batches.enqueue(p).map(|b| b.len()), Some(1));
        // Both slots are busy: the rest waits.
        for _ in 0..BATCH_MESSAGES + 5 {
            let (p, a) = pending(10);
            answers.push(a);
            assert!(batches.enqueue(p).is_none());
        }
        // A caller that gave up is not sent.
        drop(answers.remove(2));
        assert_eq!(batches.next().map(|b| b.len()), Some(BATCH_MESSAGES));
        assert_eq!(batches.next().map(|b| b.len()), Some(4));
        assert!(batches.next().is_none());
        assert!(batches.next().is_none());
        assert_eq!(batches.state.lock().calls, 0);

        // Octets: a message that would pass the limit waits for the next call.
        let big = BATCH_BYTES / 2 + 1;
        let mut waiting: VecDeque<Pending> = VecDeque::new();
        let mut keep = Vec::new();
        for size in [big, big, 1] {
            let (p, a) = pending(size);
            keep.push(a);
            waiting.push_back(p);
        }
        assert_eq!(take_batch(&mut waiting).len(), 1);
        assert_eq!(take_batch(&mut waiting).len(), 2);
    }

    #[tokio::test]
    async fn a_slot_dropped_unreleased_is_given_back_and_fails_the_waiting() {
        let batches = Arc::new(Batches::default());
        let (first, _first_answer) = pending(1);
        assert!(batches.enqueue(first).is_some());
        let (waiting, waiting_answer) = pending(1);
        batches.state.lock().waiting.push_back(waiting);
        drop(Slot {
            batches: batches.clone(),
            released: false,
        });
        assert_eq!(batches.state.lock().calls, 0);
        assert!(waiting_answer.await.is_err(), "the waiting caller is told");
    }

    #[tokio::test]
    async fn only_positive_answers_are_reused_and_only_for_the_ttl() {
        let cache = CachedDirectory::new(Counting::default(), Duration::from_millis(200));
        for _ in 0..3 {
            assert_eq!(cache.exists("alice@example.test").await, Ok(true));
            assert_eq!(cache.exists("nobody@example.test").await, Ok(false));
        }
        // alice asked once, nobody every time.
        assert_eq!(cache.inner.0.load(Ordering::SeqCst), 1 + 3);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(cache.exists("alice@example.test").await, Ok(true));
        assert_eq!(cache.inner.0.load(Ordering::SeqCst), 5);

        let uncached = CachedDirectory::new(Counting::default(), Duration::ZERO);
        uncached.exists("alice@example.test").await.unwrap();
        uncached.exists("alice@example.test").await.unwrap();
        assert_eq!(uncached.inner.0.load(Ordering::SeqCst), 2);
    }
}
