//! TLS configuration for SMTP listeners and for the gRPC links between roles.

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// Selects rustls' ring crypto provider for the whole process. Every Correo
/// binary calls this first; calling it again is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A TLS identity on disk: the private CA that vouches for peers, and this
/// process's own certificate chain and key (PEM files).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// CA certificate that signs every role's certificate.
    pub ca: PathBuf,
    /// This process's certificate chain.
    pub cert: PathBuf,
    /// This process's private key.
    pub key: PathBuf,
}

impl TlsFiles {
    /// The conventional file names inside a certificate directory for `name`
    /// (`ca.pem`, `NAME.pem`, `NAME.key`), as written by [`crate::pki`].
    pub fn in_dir(dir: &Path, name: &str) -> Self {
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        }
    }
}

/// Errors loading TLS material; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate found")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no PEM private key found")]
    NoKey { path: PathBuf },
    #[error("invalid TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Loads every certificate of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Loads the first private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| TlsError::NoKey {
            path: path.to_path_buf(),
        })
}

/// A rustls server configuration for an SMTP listener (STARTTLS or implicit
/// TLS) from a certificate chain and key. No client certificates.
pub fn smtp_server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    install_crypto_provider();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(load_certs(cert)?, load_key(key)?)?;
    Ok(Arc::new(config))
}

/// A root store holding the certificates of a PEM file (the private CA).
pub fn root_store(ca: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// A rustls client configuration that trusts only the private CA; for
/// clients that speak TLS outside tonic (the MUA's SMTP submission).
pub fn client_config_trusting(ca: &Path) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    install_crypto_provider();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(root_store(ca)?)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Server TLS for a role's gRPC listener. With `require_client_cert`, only
/// clients holding a certificate signed by the private CA get through
/// (mutual TLS between roles).
pub fn grpc_server_tls(
    files: &TlsFiles,
    require_client_cert: bool,
) -> Result<ServerTlsConfig, TlsError> {
    install_crypto_provider();
    let identity = Identity::from_pem(read(&files.cert)?, read(&files.key)?);
    let mut config = ServerTlsConfig::new().identity(identity);
    if require_client_cert {
        config = config.client_ca_root(Certificate::from_pem(read(&files.ca)?));
    }
    Ok(config)
}

/// Client TLS for calling another role: trusts only the private CA and, when
/// `with_identity`, presents this process's certificate (mutual TLS).
/// `server_name` is the name the peer's certificate must carry.
pub fn grpc_client_tls(
    files: &TlsFiles,
    server_name: &str,
    with_identity: bool,
) -> Result<ClientTlsConfig, TlsError> {
    install_crypto_provider();
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&files.ca)?))
        .domain_name(server_name.to_string());
    if with_identity {
        config = config.identity(Identity::from_pem(read(&files.cert)?, read(&files.key)?));
    }
    Ok(config)
}

/// Client TLS that trusts only a CA file, with no client identity (the MUA).
pub fn grpc_client_tls_ca_only(ca: &Path, server_name: &str) -> Result<ClientTlsConfig, TlsError> {
    install_crypto_provider();
    Ok(ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(ca)?))
        .domain_name(server_name.to_string()))
}
