//! Submission policy, one method per SMTP verb (the driver in
//! `correo_smtp::server` owns the protocol, TLS and the AUTH exchange).

use crate::directory::Directory;
use crate::mta_pool::MtaPool;
use crate::prepare::{self, Submission};
use crate::submit::{self, SubmitError};
use crate::throttle::{LoginThrottle, throttled_reply};
use crate::validate::Identity;
use correo_proto::queue::Envelope as QueueEnvelope;
use correo_smtp::server::{Envelope, Handler, SessionInfo};
use correo_smtp::{Address, Reply, ReversePath};
use std::sync::Arc;

/// What every session shares.
pub struct Shared {
    pub hostname: String,
    pub directory: Directory,
    pub pool: MtaPool,
    /// Failed AUTH attempts per client address and per account.
    pub throttle: LoginThrottle,
}

/// One SMTP session's state.
pub struct Session {
    shared: Arc<Shared>,
    /// Set by a successful AUTH; the sender rights for the whole session.
    identity: Option<Identity>,
    /// During a SCRAM exchange: who the user will be once the proof matches.
    scram_pending: Option<Identity>,
}

impl Session {
    pub fn new(shared: Arc<Shared>) -> Self {
        Session {
            shared,
            identity: None,
            scram_pending: None,
        }
    }
}

fn temporary_auth_failure() -> Reply {
    Reply::new(
        454,
        "4.7.0",
        "temporary authentication failure, try again later",
    )
}

impl Handler for Session {
    async fn authenticate(
        &mut self,
        info: &SessionInfo,
        username: &str,
        password: &str,
    ) -> Result<String, Reply> {
        if !self.shared.throttle.allowed(info.peer.ip(), username) {
            tracing::warn!(username, peer = %info.peer, "login throttled");
            return Err(throttled_reply());
        }
        let client = info.peer.ip().to_string();
        match self
            .shared
            .directory
            .authenticate(username, password, &client)
            .await
        {
            Ok(Some(identity)) => {
                tracing::info!(user = %identity.user, peer = %info.peer, "authenticated");
                let user = identity.user.clone();
                self.identity = Some(identity);
                Ok(user)
            }
            Ok(None) => {
                self.shared.throttle.failed(info.peer.ip(), username);
                tracing::warn!(username, peer = %info.peer, "authentication failed");
                Err(Reply::new(
                    535,
                    "5.7.8",
                    "authentication credentials invalid",
                ))
            }
            Err(e) => {
                tracing::error!(error = %e, peer = %info.peer, "directory unreachable during AUTH");
                Err(temporary_auth_failure())
            }
        }
    }

    async fn scram_credentials(
        &mut self,
        info: &SessionInfo,
        username: &str,
    ) -> Result<Option<correo_smtp::scram::ScramCredentials>, Reply> {
        if !self.shared.throttle.allowed(info.peer.ip(), username) {
            tracing::warn!(username, peer = %info.peer, "login throttled");
            return Err(throttled_reply());
        }
        let client = info.peer.ip().to_string();
        match self
            .shared
            .directory
            .scram_credentials(username, &client)
            .await
        {
            Ok(Some((credentials, identity))) => {
                self.scram_pending = Some(identity);
                Ok(Some(credentials))
            }
            Ok(None) => {
                self.scram_pending = None;
                Ok(None)
            }
            Err(e) => {
                tracing::error!(error = %e, peer = %info.peer, "directory unreachable during AUTH");
                Err(temporary_auth_failure())
            }
        }
    }

    async fn scram_authenticated(
        &mut self,
        info: &SessionInfo,
        username: &str,
    ) -> Result<String, Reply> {
        let Some(identity) = self.scram_pending.take() else {
            return Err(Reply::new(
                535,
                "5.7.8",
                "authentication credentials invalid",
            ));
        };
        tracing::info!(user = %identity.user, peer = %info.peer, username, "authenticated (SCRAM-SHA-256)");
        let user = identity.user.clone();
        self.identity = Some(identity);
        Ok(user)
    }

    fn scram_failed(&mut self, info: &SessionInfo, username: &str) {
        self.scram_pending = None;
        self.shared.throttle.failed(info.peer.ip(), username);
        tracing::warn!(username, peer = %info.peer, "authentication failed (SCRAM-SHA-256)");
    }

    async fn mail(&mut self, _info: &SessionInfo, sender: &ReversePath) -> Result<(), Reply> {
        // The driver refuses MAIL before AUTH (require_auth); this is the
        // belt to its braces.
        let identity = self
            .identity
            .as_ref()
            .ok_or_else(|| Reply::new(530, "5.7.0", "authentication required"))?;
        match sender {
            // Bounces come from MTAs, never from users (RFC 6409 4.1 leaves this to policy).
            ReversePath::Null => Err(Reply::new(
                550,
                "5.7.1",
                "null sender not accepted for submission",
            )),
            ReversePath::Mailbox(address) if identity.owns(address.as_str()) => Ok(()),
            ReversePath::Mailbox(_) => Err(Reply::new(
                550,
                "5.7.1",
                format!("sender address not owned by {}", identity.user),
            )),
        }
    }

    async fn rcpt(
        &mut self,
        _info: &SessionInfo,
        _envelope: &Envelope,
        _recipient: &Address,
    ) -> Result<(), Reply> {
        // Authenticated users may send anywhere; the driver has already
        // checked the syntax and the recipient limit.
        Ok(())
    }

    async fn data(&mut self, info: &SessionInfo, envelope: &Envelope, message: Vec<u8>) -> Reply {
        let Some(identity) = self.identity.as_ref() else {
            return Reply::new(530, "5.7.0", "authentication required");
        };
        let journey = uuid::Uuid::new_v4().to_string();
        let received_at_ms = correo_runtime::journey::now_ms();
        let recipients: Vec<String> = envelope
            .recipients
            .iter()
            .map(|r| r.as_str().to_string())
            .collect();
        let submitted = message.len();
        let sub = Submission {
            info,
            identity,
            hostname: &self.shared.hostname,
            journey: &journey,
            recipients: &recipients,
        };
        let (outgoing, repairs) = match prepare::prepare(message, &sub) {
            Ok(ok) => ok,
            Err(invalid) => {
                tracing::warn!(journey = %journey, user = %identity.user, reason = %invalid, journey_event = "refused", peer = %info.peer, "submission refused");
                return invalid.reply();
            }
        };
        for repair in &repairs {
            tracing::info!(journey = %journey, repair = %repair, "repaired submission");
        }
        let queue_envelope = QueueEnvelope {
            sender: envelope.sender.as_str().to_string(),
            recipients,
            authenticated_user: identity.user.clone(),
            journey_id: journey.clone(),
            size_hint: outgoing.len() as u64,
        };
        match submit::submit(&self.shared.pool, &queue_envelope, &outgoing).await {
            Ok(queued) => {
                tracing::info!(
                    journey = %journey,
                    queue_id = %queued.queue_id,
                    node = %queued.node,
                    mta = %queued.mta,
                    user = %identity.user,
                    recipients = queue_envelope.recipients.len(),
                    size = outgoing.len(),
                    submitted,
                    journey_event = "submitted",
                    peer = %info.peer,
                    tls = info.tls.as_deref().unwrap_or("none"),
                    message_id = %correo_runtime::journey::header(outgoing.head(), "message-id").unwrap_or_default(),
                    received_at_ms,
                    "submission queued"
                );
                Reply::new(250, "2.0.0", format!("queued as {}", queued.queue_id))
            }
            Err(SubmitError::NoTransferAgent) => {
                tracing::error!(journey = %journey, "no transfer agent accepted the submission");
                Reply::new(451, "4.3.0", "no transfer agent available, try again later")
            }
            Err(SubmitError::Refused(why)) => {
                tracing::warn!(journey = %journey, reason = %why, "transfer agent refused the submission");
                Reply::new(554, "5.6.0", "message refused by the transfer agent")
            }
        }
    }
}
