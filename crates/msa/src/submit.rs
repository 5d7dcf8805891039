//! Hand-off to an MTA: `Queue.Submit`, streamed, with failover.
//!
//! The MTA's OK means "durably queued" (see `proto/queue.proto`), and any
//! error means it holds nothing, so a failed attempt can safely be repeated
//! on the next address. The SMTP client only hears 250 after an OK.

use crate::mta_pool::MtaPool;
use crate::prepare::Outgoing;
use correo_proto::queue::queue_client::QueueClient;
use correo_proto::queue::{Envelope, SubmitChunk, submit_chunk::Part};
use correo_proto::{CHUNK_SIZE, JOURNEY_METADATA_KEY};
use std::net::SocketAddr;
use tonic::Code;
use tonic::metadata::MetadataValue;

/// The MTA's answer to an accepted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub queue_id: String,
    pub node: String,
    pub mta: SocketAddr,
}

/// Why no MTA took the message.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// Every address failed (or none is known): the client should retry later.
    #[error("no transfer agent available")]
    NoTransferAgent,
    /// An MTA refused the message itself; another one would refuse it too.
    #[error("transfer agent refused the message: {0}")]
    Refused(String),
}

/// Codes that say "this message", not "this MTA": not worth another MTA.
fn is_about_the_message(code: Code) -> bool {
    matches!(code, Code::InvalidArgument)
}

/// Submits `message` with `envelope` to the first MTA of the pool's plan
/// that accepts it.
pub async fn submit(
    pool: &MtaPool,
    envelope: &Envelope,
    message: &Outgoing,
) -> Result<Queued, SubmitError> {
    let journey = envelope.journey_id.as_str();
    let mut plan = pool.plan();
    if plan.is_empty() {
        // Nothing resolved yet (DNS down at start-up?): one more try now.
        pool.refresh().await;
        plan = pool.plan();
    }
    for addr in plan {
        let channel = match pool.channel(addr) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(journey = %journey, mta = %addr, error = %e, "cannot build channel to MTA");
                pool.failed(addr);
                continue;
            }
        };
        match submit_once(channel, envelope, message).await {
            Ok((queue_id, node)) => {
                pool.succeeded(addr);
                return Ok(Queued {
                    queue_id,
                    node,
                    mta: addr,
                });
            }
            Err(status) if is_about_the_message(status.code()) => {
                tracing::warn!(journey = %journey, mta = %addr, code = ?status.code(), error = %status.message(), "MTA refused the message");
                return Err(SubmitError::Refused(status.message().to_string()));
            }
            Err(status) => {
                tracing::warn!(journey = %journey, mta = %addr, code = ?status.code(), error = %status.message(), "MTA submission failed; trying the next address");
                pool.failed(addr);
            }
        }
    }
    Err(SubmitError::NoTransferAgent)
}

/// One Queue.Submit call: envelope chunk, then data chunks of [`CHUNK_SIZE`].
async fn submit_once(
    channel: tonic::transport::Channel,
    envelope: &Envelope,
    message: &Outgoing,
) -> Result<(String, String), tonic::Status> {
    let first = SubmitChunk {
        part: Some(Part::Envelope(envelope.clone())),
    };
    let data = message.chunks(CHUNK_SIZE).map(|c| SubmitChunk {
        part: Some(Part::Data(c)),
    });
    // Chunks are produced as tonic pulls them: one 64 KiB copy at a time.
    let stream = tokio_stream::iter(std::iter::once(first).chain(data));
    let mut request = tonic::Request::new(stream);
    if let Ok(value) = MetadataValue::try_from(envelope.journey_id.as_str()) {
        request.metadata_mut().insert(JOURNEY_METADATA_KEY, value);
    }
    let reply = QueueClient::new(channel)
        .submit(request)
        .await?
        .into_inner();
    Ok((reply.queue_id, reply.node))
}
