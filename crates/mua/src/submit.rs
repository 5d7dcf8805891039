//! Message submission (RFC 6409) with lettre: STARTTLS on 587 (RFC 3207) or
//! implicit TLS on 465 (RFC 8314), then AUTH PLAIN/LOGIN.
//!
//! The message goes out with `send_raw`, byte for byte as mail-builder made
//! it, so what was composed (and tested) is what the server receives.
//! Only the profile's CA is trusted: the system roots are left out, so a
//! public certificate for the same name cannot stand in for Correo's MSA.

use crate::compose::Composed;
use crate::errors::{NetCause, classify};
use crate::profile::{Profile, Security};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor, address::Envelope};
use std::time::Duration;

/// The submission server accepted the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The queue id from `250 … queued as ID`, when the server gave one.
    pub queue_id: Option<String>,
    /// The whole final reply, for when there is no queue id.
    pub reply: String,
}

/// Submission failed; each variant says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("cannot read the CA file {path} named by `ca` in the profile: {detail}")]
    Ca { path: String, detail: String },
    #[error(
        "cannot connect to the submission server at {addr}: {detail}: is `correo up` (or the MSA) running, and are `submission.host`/`submission.port` right?"
    )]
    Connect { addr: String, detail: String },
    #[error(
        "TLS with the submission server at {addr} failed: {detail}: check `ca` and `submission.server_name` (now \"{server_name}\") in the profile, and that `submission.security` fits the port (starttls: 587/1587, tls: 465/1465)"
    )]
    Tls {
        addr: String,
        server_name: String,
        detail: String,
    },
    #[error(
        "the submission server refused the login of {address}: {detail}: check CORREO_PASSWORD (or the password you typed)"
    )]
    Auth { address: String, detail: String },
    #[error(
        "the submission server offers no AUTH PLAIN or LOGIN: {detail}: check `submission.security` and `submission.port` in the profile"
    )]
    NoAuth { detail: String },
    #[error("the submission server rejected the message: {code} {detail}")]
    Rejected { code: String, detail: String },
    #[error(
        "the submission server is temporarily refusing the message: {code} {detail}: try again later"
    )]
    Deferred { code: String, detail: String },
    #[error(
        "the submission server at {addr} did not answer in time: check that `submission.security` fits the port (starttls: 587/1587, tls: 465/1465), then that the server is healthy"
    )]
    Timeout { addr: String },
    #[error("bad envelope address: {0}")]
    Envelope(String),
    #[error("submission to {addr} failed: {detail}")]
    Other { addr: String, detail: String },
}

/// Submits `message` as the profile's user.
pub async fn submit(
    profile: &Profile,
    password: &str,
    message: &Composed,
) -> Result<Receipt, SubmitError> {
    let transport = transport(profile, password)?;
    let envelope = envelope(message)?;
    match transport.send_raw(&envelope, &message.bytes).await {
        Ok(response) => {
            let lines: Vec<&str> = response.message().collect();
            Ok(Receipt {
                queue_id: queue_id(&lines),
                reply: format!("{} {}", response.code(), lines.join(" ")),
            })
        }
        Err(e) => Err(explain(profile, &e)),
    }
}

fn transport(
    profile: &Profile,
    password: &str,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, SubmitError> {
    let sub = &profile.submission;
    let ca_error = |detail: String| SubmitError::Ca {
        path: profile.ca.display().to_string(),
        detail,
    };
    let pem = std::fs::read(&profile.ca).map_err(|e| ca_error(e.to_string()))?;
    let ca = Certificate::from_pem(&pem).map_err(|e| ca_error(e.to_string()))?;
    let tls = TlsParameters::builder(sub.server_name.clone())
        .certificate_store(CertificateStore::None)
        .add_root_certificate(ca)
        .build_rustls()
        .map_err(|e| ca_error(e.to_string()))?;
    let tls = match sub.security {
        // Required, not Opportunistic: the password must never cross in clear.
        Security::Starttls => Tls::Required(tls),
        Security::Tls => Tls::Wrapper(tls),
    };
    Ok(
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(sub.host.clone())
            .port(sub.port())
            .tls(tls)
            .credentials(Credentials::new(
                profile.address.clone(),
                password.to_string(),
            ))
            .authentication(vec![Mechanism::Plain, Mechanism::Login])
            // Per read/write, not for the whole message, so a large message on
            // a slow link is fine; a wrong security mode (STARTTLS against an
            // implicit-TLS port) shows up as this timeout.
            .timeout(Some(Duration::from_secs(60)))
            .build(),
    )
}

fn envelope(message: &Composed) -> Result<Envelope, SubmitError> {
    let parse = |a: &str| {
        a.parse::<lettre::Address>()
            .map_err(|e| SubmitError::Envelope(format!("{a}: {e}")))
    };
    let to = message
        .recipients
        .iter()
        .map(|r| parse(r))
        .collect::<Result<Vec<_>, _>>()?;
    Envelope::new(Some(parse(&message.sender)?), to)
        .map_err(|e| SubmitError::Envelope(e.to_string()))
}

/// Finds `ID` in a reply like `250 2.0.0 Ok: queued as 0123456789abcdef`.
pub fn queue_id(lines: &[&str]) -> Option<String> {
    lines.iter().find_map(|line| {
        let lower = line.to_ascii_lowercase();
        let at = lower.find("queued as ")? + "queued as ".len();
        let id: String = line[at..]
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_' || *c == '.')
            .collect();
        let id = id.trim_end_matches('.').to_string();
        (!id.is_empty()).then_some(id)
    })
}

/// Turns lettre's error into one that names the hop and the fix.
fn explain(profile: &Profile, e: &lettre::transport::smtp::Error) -> SubmitError {
    let sub = &profile.submission;
    let addr = format!("{}:{}", sub.host, sub.port());
    let detail = e.to_string();
    if let Some(code) = e.status() {
        let code = code.to_string();
        // The reply text is in the error's source; strip lettre's prefix.
        let text = std::error::Error::source(e)
            .map(|s| s.to_string())
            .unwrap_or_default();
        return match code.as_str() {
            "535" | "534" | "530" | "538" => SubmitError::Auth {
                address: profile.address.clone(),
                detail: format!("{code} {text}"),
            },
            _ if e.is_transient() => SubmitError::Deferred { code, detail: text },
            _ => SubmitError::Rejected { code, detail: text },
        };
    }
    if e.is_timeout() {
        return SubmitError::Timeout { addr };
    }
    if detail.contains("No compatible authentication mechanism") {
        return SubmitError::NoAuth { detail };
    }
    match classify(e) {
        NetCause::Tls(detail) => SubmitError::Tls {
            addr,
            server_name: sub.server_name.clone(),
            detail,
        },
        NetCause::Unreachable(detail) => SubmitError::Connect { addr, detail },
        NetCause::Timeout => SubmitError::Timeout { addr },
        NetCause::Other if e.is_tls() => SubmitError::Tls {
            addr,
            server_name: sub.server_name.clone(),
            detail,
        },
        NetCause::Other => SubmitError::Other { addr, detail },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_queue_id() {
        assert_eq!(
            queue_id(&["2.0.0 Ok: queued as 0123456789abcdef"]).as_deref(),
            Some("0123456789abcdef")
        );
        assert_eq!(
            queue_id(&["OK", "Queued as ABC123."]).as_deref(),
            Some("ABC123")
        );
        assert_eq!(queue_id(&["2.0.0 OK id=1"]), None);
        assert_eq!(queue_id(&["queued as "]), None);
    }

    #[tokio::test]
    async fn refused_connection_names_the_hop() {
        correo_runtime::tls::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        correo_runtime::pki::ensure_ca(dir.path()).unwrap();
        // A port that was just free: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let profile = Profile {
            address: "alice@example.test".into(),
            ca: dir.path().join("ca.pem"),
            submission: crate::profile::Submission {
                port: Some(port),
                ..Default::default()
            },
            mailbox: Default::default(),
        };
        let draft = crate::compose::Draft {
            to: vec![crate::compose::Mailbox::parse("bob@example.test").unwrap()],
            subject: "s".into(),
            text: Some("t".into()),
            ..Default::default()
        };
        let message = crate::compose::compose(&profile.address, &draft).unwrap();
        let err = submit(&profile, "pw", &message).await.unwrap_err();
        assert!(matches!(err, SubmitError::Connect { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
        assert!(text.contains("correo up"), "{text}");
    }
}
