//! `correo.directory.v1.Directory`: authentication for the MSA, recipient
//! checks and served domains for the MTA. Served on the mutual-TLS listener.

use crate::address::Address;
use crate::state::State;
use correo_proto::directory::directory_server::Directory;
use correo_proto::directory::{
    AuthenticateReply, AuthenticateRequest, CheckRecipientReply, CheckRecipientRequest,
    GetScramCredentialsReply, GetScramCredentialsRequest, ListDomainsReply, ListDomainsRequest,
};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The Directory service over the shared state.
#[derive(Debug, Clone)]
pub struct DirectoryService {
    state: Arc<State>,
}

impl DirectoryService {
    pub fn new(state: Arc<State>) -> Self {
        DirectoryService { state }
    }
}

#[tonic::async_trait]
impl Directory for DirectoryService {
    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateReply>, Status> {
        let req = request.into_inner();
        // Uncached: SMTP AUTH happens once per session, and every failure
        // costs the same argon2 run whether or not the user exists.
        let reply = match self.state.auth.verify(&req.username, &req.password).await {
            Some(ok) => {
                tracing::info!(user = %ok.user, client = %req.client_address, "authentication succeeded");
                AuthenticateReply {
                    authenticated: true,
                    user: ok.user.to_string(),
                    addresses: ok.addresses.iter().map(ToString::to_string).collect(),
                }
            }
            None => {
                // The username is the caller's input: log it escaped.
                tracing::warn!(username = ?req.username, client = %req.client_address, "authentication failed");
                AuthenticateReply::default()
            }
        };
        Ok(Response::new(reply))
    }

    async fn get_scram_credentials(
        &self,
        request: Request<GetScramCredentialsRequest>,
    ) -> Result<Response<GetScramCredentialsReply>, Status> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let req = request.into_inner();
        let accounts = self.state.directory.snapshot();
        let found = Address::parse(&req.username).ok().and_then(|a| {
            let (user, u) = accounts.users.get_key_value(&a)?;
            let v = u.scram.as_ref()?;
            Some(GetScramCredentialsReply {
                found: true,
                user: user.to_string(),
                addresses: std::iter::once(user.to_string())
                    .chain(accounts.aliases_of(user).iter().map(ToString::to_string))
                    .collect(),
                salt: b64.decode(&v.salt).ok()?,
                iterations: v.iterations,
                stored_key: b64.decode(&v.stored_key).ok()?,
                server_key: b64.decode(&v.server_key).ok()?,
            })
        });
        // Never log the verifier; the username is the caller's input.
        tracing::debug!(username = ?req.username, client = %req.client_address, found = found.is_some(), "SCRAM verifier requested");
        Ok(Response::new(found.unwrap_or_default()))
    }

    async fn check_recipient(
        &self,
        request: Request<CheckRecipientRequest>,
    ) -> Result<Response<CheckRecipientReply>, Status> {
        let address = request.into_inner().address;
        let accounts = self.state.directory.snapshot();
        let reply = match Address::parse(&address) {
            Ok(a) => CheckRecipientReply {
                exists: accounts.resolve(&a).is_some(),
                domain_served: accounts.serves_domain(a.domain()),
            },
            // A local part we refuse to store can never exist, but the
            // domain may still be ours.
            Err(_) => CheckRecipientReply {
                exists: false,
                domain_served: address
                    .rsplit_once('@')
                    .and_then(|(_, d)| crate::address::validate_domain(d))
                    .is_some_and(|d| accounts.serves_domain(&d)),
            },
        };
        tracing::debug!(address = ?address, exists = reply.exists, domain_served = reply.domain_served, "recipient checked");
        Ok(Response::new(reply))
    }

    async fn list_domains(
        &self,
        _request: Request<ListDomainsRequest>,
    ) -> Result<Response<ListDomainsReply>, Status> {
        let accounts = self.state.directory.snapshot();
        Ok(Response::new(ListDomainsReply {
            domains: accounts.domains.iter().cloned().collect(),
        }))
    }
}
