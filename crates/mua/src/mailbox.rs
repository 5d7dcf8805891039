//! Client of the MDA's Mailbox gRPC service (`proto/mailbox.proto`).
//!
//! TLS trusts only the profile's CA; every call carries
//! `authorization: Basic base64(address:password)`, marked sensitive so
//! tonic/hyper never log it.

use crate::errors::{NetCause, chain, classify};
use crate::profile::Profile;
use base64::Engine as _;
use correo_proto::mailbox::mailbox_client::MailboxClient as Grpc;
use correo_proto::mailbox::{
    DeleteRequest, FetchRequest, ListRequest, MessageSummary, WatchRequest,
};
use futures::{Stream, StreamExt};
use std::time::Duration;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

/// A mailbox API call failed; each variant says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum MailboxError {
    #[error("cannot read the CA file named by `ca` in the profile: {0}")]
    Ca(String),
    #[error("`mailbox.endpoint` in the profile is not a valid URL: {0}")]
    Endpoint(String),
    #[error(
        "cannot connect to the mailbox API at {endpoint}: {detail}: is `correo up` (or the MDA) running, and is `mailbox.endpoint` right?"
    )]
    Connect { endpoint: String, detail: String },
    #[error(
        "TLS with the mailbox API at {endpoint} failed: {detail}: check `ca` and `mailbox.server_name` (now \"{server_name}\") in the profile"
    )]
    Tls {
        endpoint: String,
        server_name: String,
        detail: String,
    },
    #[error(
        "the mailbox API refused the login of {address}: check CORREO_PASSWORD (or the password you typed)"
    )]
    Auth { address: String },
    #[error("no message with id `{id}` in the mailbox: see `mua list`")]
    NotFound { id: String },
    #[error(
        "the mailbox API at {endpoint} is unavailable: {detail}: is `correo up` (or the MDA) running?"
    )]
    Unavailable { endpoint: String, detail: String },
    #[error("the mailbox API closed the watch stream (server restarting?): run `mua watch` again")]
    WatchEnded,
    #[error("the mailbox API failed: {code}: {detail}")]
    Call { code: String, detail: String },
}

/// Adds the Basic credentials to every request.
#[derive(Clone)]
pub struct BasicAuth {
    header: MetadataValue<tonic::metadata::Ascii>,
}

impl BasicAuth {
    /// Credentials for `address` with `password` (RFC 7617 encoding).
    pub fn new(address: &str, password: &str) -> BasicAuth {
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("{address}:{password}"));
        let mut header: MetadataValue<_> = format!("Basic {token}")
            .parse()
            .expect("base64 is valid metadata");
        header.set_sensitive(true);
        BasicAuth { header }
    }
}

impl Interceptor for BasicAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.header.clone());
        Ok(request)
    }
}

/// A connected, authenticated mailbox.
#[derive(Clone)]
pub struct MailboxClient {
    grpc: Grpc<InterceptedService<Channel, BasicAuth>>,
    endpoint: String,
    server_name: String,
    address: String,
}

impl MailboxClient {
    /// Connects now (not lazily), so a wrong endpoint or CA is reported as
    /// such rather than as the failure of whatever call comes first.
    pub async fn connect(profile: &Profile, password: &str) -> Result<MailboxClient, MailboxError> {
        let endpoint = profile.mailbox.endpoint.clone();
        let server_name = profile.mailbox.server_name.clone();
        let tls = correo_runtime::tls::grpc_client_tls_ca_only(&profile.ca, &server_name)
            .map_err(|e| MailboxError::Ca(e.to_string()))?;
        let channel = Endpoint::from_shared(endpoint.clone())
            .map_err(|e| MailboxError::Endpoint(e.to_string()))?
            .tls_config(tls)
            .map_err(|e| MailboxError::Ca(chain(&e)))?
            .connect_timeout(Duration::from_secs(10))
            .connect()
            .await
            .map_err(|e| match classify(&e) {
                NetCause::Tls(detail) => MailboxError::Tls {
                    endpoint: endpoint.clone(),
                    server_name: server_name.clone(),
                    detail,
                },
                NetCause::Unreachable(detail) => MailboxError::Connect {
                    endpoint: endpoint.clone(),
                    detail,
                },
                NetCause::Timeout => MailboxError::Connect {
                    endpoint: endpoint.clone(),
                    detail: "timed out".into(),
                },
                NetCause::Other => MailboxError::Connect {
                    endpoint: endpoint.clone(),
                    detail: chain(&e),
                },
            })?;
        let auth = BasicAuth::new(&profile.address, password);
        Ok(MailboxClient {
            grpc: Grpc::with_interceptor(channel, auth),
            endpoint,
            server_name,
            address: profile.address.clone(),
        })
    }

    /// Every message in the mailbox, oldest first.
    pub async fn list(&mut self) -> Result<Vec<MessageSummary>, MailboxError> {
        let reply = self
            .grpc
            .list(ListRequest {})
            .await
            .map_err(|s| self.status(s, None))?;
        Ok(reply.into_inner().messages)
    }

    /// One message, raw as stored.
    pub async fn fetch(&mut self, id: &str) -> Result<Vec<u8>, MailboxError> {
        let mut stream = self
            .grpc
            .fetch(FetchRequest { id: id.to_string() })
            .await
            .map_err(|s| self.status(s, Some(id)))?
            .into_inner();
        let mut data = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|s| self.status(s, Some(id)))?;
            data.extend_from_slice(&chunk.data);
        }
        Ok(data)
    }

    /// Deletes one message; OK means it is gone from the Maildir.
    pub async fn delete(&mut self, id: &str) -> Result<(), MailboxError> {
        self.grpc
            .delete(DeleteRequest { id: id.to_string() })
            .await
            .map_err(|s| self.status(s, Some(id)))?;
        Ok(())
    }

    /// Summaries of messages as they arrive. The stream ends with
    /// [`MailboxError::WatchEnded`] if the server closes it.
    pub async fn watch(
        &mut self,
    ) -> Result<impl Stream<Item = Result<MessageSummary, MailboxError>> + use<>, MailboxError>
    {
        let stream = self
            .grpc
            .watch(WatchRequest {})
            .await
            .map_err(|s| self.status(s, None))?
            .into_inner();
        let this = self.clone();
        let ended = futures::stream::once(async { Err(MailboxError::WatchEnded) });
        Ok(stream
            .map(move |item| item.map_err(|s| this.status(s, None)))
            .chain(ended))
    }

    fn status(&self, status: Status, id: Option<&str>) -> MailboxError {
        match status.code() {
            Code::Unauthenticated => MailboxError::Auth {
                address: self.address.clone(),
            },
            Code::NotFound => MailboxError::NotFound {
                id: id.unwrap_or_default().to_string(),
            },
            Code::Unavailable => match classify(&status) {
                NetCause::Tls(detail) => MailboxError::Tls {
                    endpoint: self.endpoint.clone(),
                    server_name: self.server_name.clone(),
                    detail,
                },
                _ => MailboxError::Unavailable {
                    endpoint: self.endpoint.clone(),
                    detail: status.message().to_string(),
                },
            },
            code => MailboxError::Call {
                code: format!("{code:?}"),
                detail: status.message().to_string(),
            },
        }
    }
}
