//! Inbound SMTP (the port 25 side): mail from other organisations for the
//! local domains. `correo_smtp::server::serve` drives each session; the
//! [`InboundHandler`] decides policy:
//!
//! - no AUTH, and no trust by client IP: this listener never relays;
//! - RCPT for a domain not in `local_domains` → `554 5.7.1 relay access denied`;
//!   for a local domain the MDA's directory decides (`550 5.1.1` unknown,
//!   `451 4.4.3` when the directory cannot answer);
//! - DATA: refuse loops (> 30 Received), prepend Received and, if absent,
//!   X-Correo-Journey, spool durably, then `250 2.0.0 queued as <id>`.

use crate::headers;
use crate::local::RecipientDirectory;
use crate::queue::{Queue, now_secs};
use crate::queue_id::QueueId;
use crate::spool::SpoolEnvelope;
use correo_smtp::server::{Envelope, Handler, SessionInfo};
use correo_smtp::{Address, Reply, ReversePath};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::Instrument;

/// What every inbound session shares.
pub struct Inbound {
    pub hostname: String,
    pub local_domains: Vec<String>,
    pub queue: Arc<Queue>,
    pub directory: Arc<dyn RecipientDirectory>,
}

/// One session's handler.
pub struct InboundHandler {
    shared: Arc<Inbound>,
    /// Set between MAIL and the end of the transaction, so a shutdown can
    /// let a transfer in progress finish (see `server::accept_loop`).
    busy: Arc<AtomicBool>,
}

impl InboundHandler {
    pub fn new(shared: Arc<Inbound>) -> Self {
        Self::with_busy_flag(shared, Arc::new(AtomicBool::new(false)))
    }

    /// A handler that reports whether a transaction is in progress.
    pub fn with_busy_flag(shared: Arc<Inbound>, busy: Arc<AtomicBool>) -> Self {
        InboundHandler { shared, busy }
    }
}

impl Handler for InboundHandler {
    async fn mail(&mut self, info: &SessionInfo, _sender: &ReversePath) -> Result<(), Reply> {
        // Refuse before the client sends anything big (RFC 3463 4.3.1).
        if let Err(full) = self.shared.queue.check_space() {
            tracing::warn!(peer = %info.peer, reason = %full, "MAIL refused: spool nearly full");
            return Err(Reply::new(452, "4.3.1", "insufficient system storage"));
        }
        // Any reverse path, including <>: bounces must be deliverable.
        self.busy.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn reset(&mut self) {
        self.busy.store(false, Ordering::SeqCst);
    }

    async fn rcpt(
        &mut self,
        info: &SessionInfo,
        _envelope: &Envelope,
        recipient: &Address,
    ) -> Result<(), Reply> {
        let domain = recipient.domain();
        if !self
            .shared
            .local_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
        {
            tracing::info!(peer = %info.peer, %recipient, "relay denied");
            return Err(Reply::new(554, "5.7.1", "relay access denied"));
        }
        match self.shared.directory.exists(recipient.as_str()).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Reply::new(550, "5.1.1", "no such user")),
            Err(reason) => {
                tracing::warn!(%recipient, %reason, "recipient check failed");
                Err(Reply::new(
                    451,
                    "4.4.3",
                    "directory unavailable, try again later",
                ))
            }
        }
    }

    async fn data(&mut self, info: &SessionInfo, envelope: &Envelope, message: Vec<u8>) -> Reply {
        let reply = self.accept(info, envelope, message).await;
        self.busy.store(false, Ordering::SeqCst);
        reply
    }
}

impl InboundHandler {
    async fn accept(&self, info: &SessionInfo, envelope: &Envelope, message: Vec<u8>) -> Reply {
        let hops = headers::count(&message, "received");
        if hops > headers::MAX_HOPS {
            tracing::warn!(peer = %info.peer, hops, "refused: too many hops");
            return Reply::new(554, "5.4.6", "too many hops");
        }
        let existing =
            headers::first(&message, "x-correo-journey").filter(|j| headers::valid_journey(j));
        let journey = existing.clone().unwrap_or_else(headers::new_journey);
        let id = QueueId::generate();
        let recipients: Vec<String> = envelope
            .recipients
            .iter()
            .map(|r| r.as_str().to_string())
            .collect();
        let for_recipient = (recipients.len() == 1).then(|| recipients[0].as_str());
        let received = correo_smtp::received::received_header(
            info,
            &self.shared.hostname,
            id.as_str(),
            for_recipient,
        );

        let mut spooled = Vec::with_capacity(received.len() + 64 + message.len());
        spooled.extend_from_slice(received.as_bytes());
        if existing.is_none() {
            spooled.extend_from_slice(format!("X-Correo-Journey: {journey}\r\n").as_bytes());
        }
        spooled.extend_from_slice(&message);

        let spool_envelope = SpoolEnvelope {
            queue_id: id.to_string(),
            sender: envelope.sender.as_str().to_string(),
            recipients,
            journey_id: journey.clone(),
            received_at: now_secs(),
            authenticated_user: None,
        };
        let size = spooled.len();
        let span = tracing::info_span!("inbound", queue_id = %id, journey = %journey);
        let result = self
            .shared
            .queue
            .enqueue(spool_envelope, spooled)
            .instrument(span.clone())
            .await;
        let _enter = span.enter();
        match result {
            Ok(id) => {
                tracing::info!(
                    peer = %info.peer,
                    sender = %envelope.sender.as_str(),
                    recipients = envelope.recipients.len(),
                    size,
                    tls = info.tls.as_deref().unwrap_or("none"),
                    journey_event = "queued",
                    detail = "via SMTP",
                    "queued from SMTP"
                );
                correo_runtime::metrics::mta_queued("smtp");
                Reply::new(250, "2.0.0", format!("queued as {id}"))
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot spool message");
                Reply::new(
                    451,
                    "4.3.0",
                    "cannot queue the message now, try again later",
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RetryConfig;
    use crate::retry::RetryPolicy;
    use futures::future::BoxFuture;

    struct FakeDirectory;

    impl RecipientDirectory for FakeDirectory {
        fn exists<'a>(&'a self, address: &'a str) -> BoxFuture<'a, Result<bool, String>> {
            Box::pin(async move {
                match address {
                    "down@example.test" => Err("unreachable".into()),
                    _ => Ok(address.starts_with("alice@")),
                }
            })
        }
    }

    fn info() -> SessionInfo {
        SessionInfo {
            peer: "192.0.2.7:40000".parse().unwrap(),
            local: "127.0.0.1:25".parse().unwrap(),
            helo: Some("client.remote.test".into()),
            esmtp: true,
            tls: None,
            authenticated: None,
        }
    }

    fn handler(dir: &std::path::Path) -> (InboundHandler, Arc<Queue>) {
        handler_with(dir, crate::queue::QueueOptions::default())
    }

    fn handler_with(
        dir: &std::path::Path,
        options: crate::queue::QueueOptions,
    ) -> (InboundHandler, Arc<Queue>) {
        let policy = RetryPolicy::new(&RetryConfig::default());
        let queue = Arc::new(Queue::open_with(dir, policy, options).unwrap().0);
        let shared = Arc::new(Inbound {
            hostname: "mx.example.test".into(),
            local_domains: vec!["example.test".into()],
            queue: queue.clone(),
            directory: Arc::new(FakeDirectory),
        });
        (InboundHandler::new(shared), queue)
    }

    fn envelope() -> Envelope {
        Envelope {
            sender: ReversePath::Mailbox(Address::parse("bob@remote.test").unwrap()),
            recipients: Vec::new(),
            size_hint: None,
            body_8bit: false,
        }
    }

    #[tokio::test]
    async fn relay_is_denied_and_unknown_users_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut h, _) = handler(dir.path());
        let env = envelope();
        let rcpt = |s: &str| Address::parse(s).unwrap();
        let err = h
            .rcpt(&info(), &env, &rcpt("someone@elsewhere.test"))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "554 5.7.1 relay access denied");
        let err = h
            .rcpt(&info(), &env, &rcpt("nobody@example.test"))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "550 5.1.1 no such user");
        let err = h
            .rcpt(&info(), &env, &rcpt("down@example.test"))
            .await
            .unwrap_err();
        assert_eq!((err.code, err.enhanced.as_deref()), (451, Some("4.4.3")));
        h.rcpt(&info(), &env, &rcpt("alice@EXAMPLE.test"))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn too_many_hops_are_refused_before_spooling() {
        let dir = tempfile::tempdir().unwrap();
        let (mut h, queue) = handler(dir.path());
        let mut env = envelope();
        env.recipients
            .push(Address::parse("alice@example.test").unwrap());
        let message = format!(
            "{}Subject: loop\r\n\r\nx\r\n",
            "Received: from x by y; now\r\n".repeat(31)
        );
        let reply = h.data(&info(), &env, message.into_bytes()).await;
        assert_eq!(reply.to_string(), "554 5.4.6 too many hops");
        assert!(queue.list().unwrap().is_empty());
    }

    #[tokio::test]
    async fn nearly_full_disk_is_452_at_mail_and_a_failed_write_is_451() {
        use crate::space::FixedSpace;
        use std::sync::atomic::AtomicU64;
        let dir = tempfile::tempdir().unwrap();
        let probe = Arc::new(FixedSpace(AtomicU64::new(1_000)));
        let options = crate::queue::QueueOptions {
            min_free_bytes: 1_000_000,
            probe: probe.clone(),
            ..Default::default()
        };
        let (mut h, queue) = handler_with(dir.path(), options);
        let sender = ReversePath::Mailbox(Address::parse("bob@remote.test").unwrap());
        let err = h.mail(&info(), &sender).await.unwrap_err();
        assert_eq!(err.to_string(), "452 4.3.1 insufficient system storage");
        probe.0.store(2_000_000, Ordering::SeqCst);
        h.mail(&info(), &sender).await.unwrap();

        // The spool write fails (its segment directory is gone, so no
        // segment can be started): 451 4.3.0, nothing queued.
        let seg = dir.path().join("spool/seg");
        let aside = dir.path().join("spool/seg.aside");
        std::fs::rename(&seg, &aside).unwrap();
        let mut env = envelope();
        env.recipients
            .push(Address::parse("alice@example.test").unwrap());
        let reply = h
            .data(&info(), &env, b"Subject: x\r\n\r\ny\r\n".to_vec())
            .await;
        assert_eq!(
            (reply.code, reply.enhanced.as_deref()),
            (451, Some("4.3.0"))
        );
        assert!(queue.list().unwrap().is_empty());
        // Once the disk is back, mail is accepted again.
        std::fs::rename(&aside, &seg).unwrap();
        let reply = h
            .data(&info(), &env, b"Subject: x\r\n\r\ny\r\n".to_vec())
            .await;
        assert_eq!(reply.code, 250, "{reply}");
    }
}
