//! The private CA that secures the links between Correo's roles.
//!
//! `correo certs` and the launcher's first start create, in one directory:
//! `ca.pem`/`ca.key` (the CA, kept only where certificates are issued) and
//! one `NAME.pem`/`NAME.key` pair per role, each valid as both TLS server
//! and TLS client, with the DNS names and IP addresses it is reached by.
//! Keys are written with mode 0600. Operators who bring their own PKI point
//! each role's `tls` paths at their files instead.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Errors while creating certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io_err(path))?;
    file.write_all(contents.as_bytes()).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

/// Creates `dir/ca.pem` and `dir/ca.key` unless they exist. Returns whether
/// a new CA was made.
pub fn ensure_ca(dir: &Path) -> Result<bool, PkiError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    if cert_path.exists() && key_path.exists() {
        return Ok(false);
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Correo");
    dn.push(DnType::CommonName, "Correo private CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2044, 1, 1);
    let cert = params.self_signed(&key)?;
    write_file(&key_path, &key.serialize_pem(), 0o600)?;
    write_file(&cert_path, &cert.pem(), 0o644)?;
    Ok(true)
}

/// Issues `dir/NAME.pem` and `dir/NAME.key`, signed by the CA in `dir`, for
/// the given DNS names and IP addresses, unless they already exist.
/// Returns whether a new certificate was made.
pub fn ensure_leaf(dir: &Path, name: &str, hosts: &[&str]) -> Result<bool, PkiError> {
    let (cert_path, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    if cert_path.exists() && key_path.exists() {
        return Ok(false);
    }
    let ca_pem =
        std::fs::read_to_string(dir.join("ca.pem")).map_err(io_err(&dir.join("ca.pem")))?;
    let ca_key_pem =
        std::fs::read_to_string(dir.join("ca.key")).map_err(io_err(&dir.join("ca.key")))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Correo");
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.subject_alt_names = hosts
        .iter()
        .map(|h| match h.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName((*h).try_into()?)),
        })
        .collect::<Result<_, rcgen::Error>>()?;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2044, 1, 1);
    let cert = params.signed_by(&key, &issuer)?;
    write_file(&key_path, &key.serialize_pem(), 0o600)?;
    write_file(&cert_path, &cert.pem(), 0o644)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_a_chain_that_rustls_accepts() {
        crate::tls::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        assert!(ensure_ca(dir.path()).unwrap());
        assert!(!ensure_ca(dir.path()).unwrap());
        assert!(ensure_leaf(dir.path(), "mta", &["mta", "localhost", "127.0.0.1"]).unwrap());
        let files = crate::tls::TlsFiles::in_dir(dir.path(), "mta");
        crate::tls::smtp_server_config(&files.cert, &files.key).unwrap();
        let roots = crate::tls::root_store(&files.ca).unwrap();
        assert_eq!(roots.len(), 1);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&files.key).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }
}
