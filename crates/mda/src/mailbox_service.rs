//! `correo.mailbox.v1.Mailbox`: a user's own Maildir, for the MUA. Served on
//! the TLS listener without client certificates; instead every call carries
//! `authorization: Basic base64(address:password)`, and the verified user is
//! the only mailbox the call can reach.

use crate::address::Address;
use crate::maildir::{MaildirError, Summary};
use crate::state::State;
use base64::Engine;
use correo_proto::mailbox::mailbox_server::Mailbox;
use correo_proto::mailbox::{
    DeleteReply, DeleteRequest, FetchChunk, FetchRequest, ListReply, ListRequest, MessageSummary,
    WatchRequest,
};
use futures::{Stream, StreamExt};
use std::pin::Pin;
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The Mailbox service over the shared state.
#[derive(Debug, Clone)]
pub struct MailboxService {
    state: Arc<State>,
    /// Becomes `true` at shutdown, ending Watch streams so the server can drain.
    closing: tokio::sync::watch::Receiver<bool>,
}

impl MailboxService {
    pub fn new(state: Arc<State>, closing: tokio::sync::watch::Receiver<bool>) -> Self {
        MailboxService { state, closing }
    }

    /// The user named by the call's credentials, or UNAUTHENTICATED. Every
    /// failure reads the same, so a caller learns nothing about accounts.
    async fn user(&self, metadata: &MetadataMap) -> Result<Address, Status> {
        let denied = || Status::unauthenticated("missing or invalid credentials");
        let (username, password) = basic_credentials(metadata).ok_or_else(denied)?;
        match self.state.auth.verify_cached(&username, &password).await {
            Some(ok) => Ok(ok.user),
            None => {
                tracing::warn!(username = ?username, "mailbox authentication failed");
                Err(denied())
            }
        }
    }
}

/// Parses `authorization: Basic base64(address:password)`.
fn basic_credentials(metadata: &MetadataMap) -> Option<(String, String)> {
    let value = metadata.get("authorization")?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    // Addresses here cannot contain `:`; passwords may.
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

fn to_proto(s: Summary) -> MessageSummary {
    MessageSummary {
        id: s.id,
        from: s.from,
        subject: s.subject,
        date: s.date,
        size: s.size,
        delivered_at: s.delivered_at,
        seen: s.seen,
    }
}

fn storage_status(user: &Address, e: MaildirError) -> Status {
    match e {
        MaildirError::BadId => Status::invalid_argument("invalid message id"),
        MaildirError::Io { .. } => {
            tracing::error!(user = %user, error = %e, "mailbox I/O error");
            Status::unavailable("mailbox temporarily unavailable")
        }
    }
}

/// Runs blocking Maildir work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, MaildirError> + Send + 'static,
) -> Result<T, MaildirError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|join| {
        Err(MaildirError::Io {
            path: Default::default(),
            source: std::io::Error::other(join.to_string()),
        })
    })
}

#[tonic::async_trait]
impl Mailbox for MailboxService {
    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListReply>, Status> {
        let user = self.user(request.metadata()).await?;
        let store = self.state.store.clone();
        let u = user.clone();
        let summaries = blocking(move || store.list(&u))
            .await
            .map_err(|e| storage_status(&user, e))?;
        tracing::debug!(user = %user, messages = summaries.len(), "mailbox listed");
        Ok(Response::new(ListReply {
            messages: summaries.into_iter().map(to_proto).collect(),
        }))
    }

    type FetchStream = BoxStream<FetchChunk>;

    async fn fetch(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<Self::FetchStream>, Status> {
        let user = self.user(request.metadata()).await?;
        let id = request.into_inner().id;
        let store = self.state.store.clone();
        let (u, i) = (user.clone(), id.clone());
        let path = blocking(move || store.find(&u, &i))
            .await
            .map_err(|e| storage_status(&user, e))?
            .ok_or_else(|| Status::not_found("no such message"))?;
        // Opened before answering, so a missing file is NOT_FOUND, not a broken stream.
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Status::not_found("no such message"));
            }
            Err(e) => {
                return Err(storage_status(&user, MaildirError::Io { path, source: e }));
            }
        };
        tracing::debug!(user = %user, id = %id, "message fetched");
        let chunks = futures::stream::unfold(Some(file), |file| async move {
            let mut file = file?;
            let mut buf = vec![0u8; correo_proto::CHUNK_SIZE];
            let mut filled = 0;
            while filled < buf.len() {
                match file.read(&mut buf[filled..]).await {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) => {
                        tracing::error!(error = %e, "reading message failed");
                        return Some((
                            Err(Status::unavailable("mailbox temporarily unavailable")),
                            None,
                        ));
                    }
                }
            }
            if filled == 0 {
                return None;
            }
            buf.truncate(filled);
            Some((Ok(FetchChunk { data: buf }), Some(file)))
        });
        Ok(Response::new(Box::pin(chunks)))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteReply>, Status> {
        let user = self.user(request.metadata()).await?;
        let id = request.into_inner().id;
        let store = self.state.store.clone();
        let (u, i) = (user.clone(), id.clone());
        let deleted = blocking(move || store.delete(&u, &i))
            .await
            .map_err(|e| storage_status(&user, e))?;
        if !deleted {
            return Err(Status::not_found("no such message"));
        }
        tracing::info!(user = %user, id = %id, "message deleted");
        Ok(Response::new(DeleteReply {}))
    }

    type WatchStream = BoxStream<MessageSummary>;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let user = self.user(request.metadata()).await?;
        // Subscribed before answering: nothing delivered after the reply is missed.
        let arrivals = BroadcastStream::new(self.state.arrivals.subscribe());
        let mut closing = self.closing.clone();
        let shutdown = async move {
            let _ = closing.wait_for(|closing| *closing).await;
        };
        tracing::debug!(user = %user, "watch started");
        let stream = arrivals
            .filter_map(move |arrival| {
                let user = user.clone();
                async move {
                    match arrival {
                        Ok(a) if a.user == user => Some(Ok(to_proto(a.summary))),
                        Ok(_) => None,
                        Err(BroadcastStreamRecvError::Lagged(n)) => {
                            tracing::warn!(user = %user, missed = n, "watch stream fell behind; arrivals skipped");
                            None
                        }
                    }
                }
            })
            .take_until(shutdown);
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(value: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("authorization", value.parse().unwrap());
        m
    }

    #[test]
    fn parses_basic_credentials() {
        let b64 = base64::engine::general_purpose::STANDARD.encode("alice@example.test:pa:ss word");
        assert_eq!(
            basic_credentials(&md(&format!("Basic {b64}"))),
            Some(("alice@example.test".into(), "pa:ss word".into()))
        );
        assert!(basic_credentials(&md(&format!("basic {b64}"))).is_some());
        assert_eq!(basic_credentials(&md(&format!("Bearer {b64}"))), None);
        assert_eq!(basic_credentials(&md("Basic !!!")), None);
        let no_colon = base64::engine::general_purpose::STANDARD.encode("alice");
        assert_eq!(basic_credentials(&md(&format!("Basic {no_colon}"))), None);
        assert_eq!(basic_credentials(&MetadataMap::new()), None);
    }
}
