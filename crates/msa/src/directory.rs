//! Client of the MDA's `Directory.Authenticate`, over mutual TLS.
//!
//! The MSA stores no passwords: every AUTH is checked by the directory,
//! which also says which sender addresses the user may use.

use crate::validate::Identity;
use correo_proto::directory::directory_client::DirectoryClient;
use correo_proto::directory::{AuthenticateRequest, GetScramCredentialsRequest};
use correo_smtp::scram::{MAX_ITERATIONS, ScramCredentials};
use std::time::Duration;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// The directory could not answer (down, TLS refused, timeout…): a
/// temporary failure for the SMTP client, never a "wrong password".
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("directory unavailable: {0}")]
    Unavailable(String),
    #[error("invalid directory endpoint: {0}")]
    Endpoint(#[from] tonic::transport::Error),
}

/// A lazily connected, cloneable client.
#[derive(Clone)]
pub struct Directory {
    client: DirectoryClient<Channel>,
}

impl Directory {
    /// No connection is made here; the first AUTH connects (and a failure
    /// then is a 454, not a start-up error, so the MSA can start before the MDA).
    pub fn new(
        endpoint: &str,
        tls: ClientTlsConfig,
        timeout: Duration,
    ) -> Result<Self, DirectoryError> {
        let channel = Endpoint::from_shared(endpoint.to_string())?
            .tls_config(tls)?
            .connect_timeout(timeout)
            .timeout(timeout)
            .connect_lazy();
        Ok(Directory {
            client: DirectoryClient::new(channel),
        })
    }

    /// `Ok(Some(identity))` when the password matched, `Ok(None)` when it
    /// did not (or the user is unknown: we are not told which).
    pub async fn authenticate(
        &self,
        username: &str,
        password: &str,
        client_address: &str,
    ) -> Result<Option<Identity>, DirectoryError> {
        let request = AuthenticateRequest {
            username: username.to_string(),
            password: password.to_string(),
            client_address: client_address.to_string(),
        };
        let reply = match self.client.clone().authenticate(request).await {
            Ok(r) => r.into_inner(),
            // A malformed username is the client's fault, like a bad password.
            Err(status) if status.code() == tonic::Code::InvalidArgument => return Ok(None),
            Err(status) => {
                return Err(DirectoryError::Unavailable(format!(
                    "{:?}: {}",
                    status.code(),
                    status.message()
                )));
            }
        };
        if !reply.authenticated {
            return Ok(None);
        }
        let user = if reply.user.is_empty() {
            username.to_string()
        } else {
            reply.user
        };
        // The canonical address is the user's own even if the list forgets it.
        let addresses = std::iter::once(user.clone()).chain(reply.addresses);
        Ok(Some(Identity::new(user, addresses)))
    }

    /// The SCRAM-SHA-256 verifier of `username` and the identity it
    /// authenticates as once the proof matched. `Ok(None)`: unknown user
    /// or no verifier stored (or a malformed one).
    pub async fn scram_credentials(
        &self,
        username: &str,
        client_address: &str,
    ) -> Result<Option<(ScramCredentials, Identity)>, DirectoryError> {
        let request = GetScramCredentialsRequest {
            username: username.to_string(),
            client_address: client_address.to_string(),
        };
        let reply = match self.client.clone().get_scram_credentials(request).await {
            Ok(r) => r.into_inner(),
            Err(status) if status.code() == tonic::Code::InvalidArgument => return Ok(None),
            Err(status) => {
                return Err(DirectoryError::Unavailable(format!(
                    "{:?}: {}",
                    status.code(),
                    status.message()
                )));
            }
        };
        if !reply.found || reply.iterations == 0 || reply.iterations > MAX_ITERATIONS {
            return Ok(None);
        }
        let (Ok(stored_key), Ok(server_key)) = (
            <[u8; 32]>::try_from(reply.stored_key.as_slice()),
            <[u8; 32]>::try_from(reply.server_key.as_slice()),
        ) else {
            return Ok(None);
        };
        let user = if reply.user.is_empty() {
            username.to_string()
        } else {
            reply.user
        };
        let addresses = std::iter::once(user.clone()).chain(reply.addresses);
        Ok(Some((
            ScramCredentials {
                salt: reply.salt,
                iterations: reply.iterations,
                stored_key,
                server_key,
            },
            Identity::new(user, addresses),
        )))
    }
}
