//! The MDA as seen from the MTA: Delivery.Deliver for local domains and
//! Directory.CheckRecipient at RCPT time, both over mutual TLS.

use crate::queue::Outcome;
use correo_proto::delivery::delivery_client::DeliveryClient;
use correo_proto::delivery::{DeliverChunk, DeliveryEnvelope, DeliveryStatus, deliver_chunk};
use correo_proto::directory::CheckRecipientRequest;
use correo_proto::directory::directory_client::DirectoryClient;
use correo_runtime::tls::{TlsError, TlsFiles, grpc_client_tls};
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::time::{Duration, Instant};
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

/// The MDA's gRPC services on one lazily connected channel.
#[derive(Clone)]
pub struct Mda {
    channel: Channel,
}

impl Mda {
    /// Builds the channel; it connects on first use and reconnects by itself.
    pub fn new(endpoint: &str, server_name: &str, tls: &TlsFiles) -> Result<Mda, MdaError> {
        let channel = Endpoint::from_shared(endpoint.to_string())?
            .tls_config(grpc_client_tls(tls, server_name, true)?)?
            .connect_timeout(Duration::from_secs(10))
            .connect_lazy();
        Ok(Mda { channel })
    }

    /// Hands a message to the MDA; one outcome per recipient. An MDA that
    /// cannot be reached or answers with an error defers everyone.
    pub async fn deliver(
        &self,
        queue_id: &str,
        journey: &str,
        sender: &str,
        recipients: &[String],
        message: &[u8],
    ) -> Vec<(String, Outcome)> {
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
        let mut request = tonic::Request::new(tokio_stream::iter(chunks));
        request.set_timeout(DELIVER_TIMEOUT);
        if let Ok(value) = journey.parse() {
            request
                .metadata_mut()
                .insert(correo_proto::JOURNEY_METADATA_KEY, value);
        }
        let mut client = DeliveryClient::new(self.channel.clone());
        let reply = match client.deliver(request).await {
            Ok(reply) => reply.into_inner(),
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
                    None => Outcome::Deferred(
                        "451 4.3.0 MDA returned no result for this recipient".into(),
                    ),
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
