//! Message submission (RFC 6409) with Correo's own client
//! (`smtp_client`): STARTTLS on 587 (RFC 3207), required before
//! AUTH, or implicit TLS on 465 (RFC 8314); then AUTH PLAIN, or LOGIN when
//! PLAIN is not offered.
//!
//! The message goes out byte for byte as mail-builder made it (only
//! dot-stuffed, and bare line ends made CRLF), so what was composed (and
//! tested) is what the server receives. It is written in 64 KiB chunks and
//! [`submit_with_progress`] reports each one, which is what `mua send`'s
//! progress bar for large messages shows.
//! Only the profile's CA is trusted: the system roots are left out, so a
//! public certificate for the same name cannot stand in for Correo's MSA.
//! Every write has its own 60 s timeout, so a large message on a slow link
//! is fine, and every reply must be complete within 60 s; a wrong security
//! mode (STARTTLS against an implicit-TLS port) shows up as a timeout. The
//! reply to the end of the message may take up to 10 minutes (RFC 5321
//! 4.5.3.2.6): the MSA answers only once an MTA has the message.

use crate::compose::Composed;
use crate::errors::{NetCause, classify};
use crate::profile::Profile;
use crate::smtp_client::{self, ClientError, Progress};
use correo_runtime::tls::TlsError;
use rustls::pki_types::ServerName;
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
        "the submission server refused the login of {address}: {detail}: {}",
        auth_advice(.temporary)
    )]
    Auth {
        address: String,
        detail: String,
        /// A 4xx reply (454 4.7.0): the server's trouble, not the password.
        temporary: bool,
    },
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
    #[error(
        "the submission server at {addr} received the whole message but did not confirm it in time: it may have accepted it anyway, so before sending it again check whether it arrived (`mua list` as a recipient, or the server's log for Message-ID <{message_id}>)"
    )]
    Unconfirmed {
        addr: String,
        /// Without the angle brackets.
        message_id: String,
    },
    #[error("bad envelope address: {0}")]
    Envelope(String),
    #[error("submission to {addr} failed: {detail}")]
    Other { addr: String, detail: String },
}

fn auth_advice(temporary: &bool) -> &'static str {
    if *temporary {
        "a temporary failure on the server's side: try again later"
    } else {
        "check CORREO_PASSWORD (or the password you typed)"
    }
}

/// Per connect, write and reply; not for the whole message.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Submits `message` as the profile's user.
pub async fn submit(
    profile: &Profile,
    password: &str,
    message: &Composed,
) -> Result<Receipt, SubmitError> {
    submit_with_progress(profile, password, message, |_, _| {}).await
}

/// Like [`submit`], and calls `on_progress(sent, total)` with the octets of
/// the message written so far: once with 0 when the message starts, then
/// after each chunk; the last call has `sent == total` (the size of
/// `message.bytes`). The server's final reply comes after that.
pub async fn submit_with_progress(
    profile: &Profile,
    password: &str,
    message: &Composed,
    mut on_progress: impl FnMut(u64, u64) + Send,
) -> Result<Receipt, SubmitError> {
    submit_with(
        profile,
        password,
        message,
        TIMEOUT,
        smtp_client::DATA_TIMEOUT,
        &mut on_progress,
    )
    .await
}

/// `timeout` is for the connect, each write and each reply;
/// `data_timeout` for the reply to the end of the message.
async fn submit_with(
    profile: &Profile,
    password: &str,
    message: &Composed,
    timeout: Duration,
    data_timeout: Duration,
    on_progress: Progress<'_>,
) -> Result<Receipt, SubmitError> {
    let sub = &profile.submission;
    let tls = tls_config(profile)?;
    let server_name =
        ServerName::try_from(sub.server_name.clone()).map_err(|e| SubmitError::Tls {
            addr: hop(profile),
            server_name: sub.server_name.clone(),
            detail: e.to_string(),
        })?;
    check_envelope(message)?;
    let target = smtp_client::Target {
        host: &sub.host,
        port: sub.port(),
        security: sub.security,
        tls,
        server_name,
        timeout,
        data_timeout,
    };
    let submission = smtp_client::Submission {
        user: &profile.address,
        password,
        sender: &message.sender,
        recipients: &message.recipients,
        message: &message.bytes,
    };
    match smtp_client::send(&target, &submission, on_progress).await {
        Ok(reply) => {
            let lines: Vec<&str> = reply.lines.iter().map(String::as_str).collect();
            Ok(Receipt {
                queue_id: queue_id(&lines),
                reply: reply.to_string(),
            })
        }
        Err(e) => Err(explain(profile, &message.message_id, e)),
    }
}

/// A rustls client configuration that trusts the profile's CA and nothing
/// else.
fn tls_config(profile: &Profile) -> Result<std::sync::Arc<rustls::ClientConfig>, SubmitError> {
    correo_runtime::tls::client_config_trusting(&profile.ca).map_err(|e| SubmitError::Ca {
        path: profile.ca.display().to_string(),
        detail: match e {
            // The message names the path already.
            TlsError::Read { source, .. } => source.to_string(),
            TlsError::NoCertificate { .. } => "no PEM certificate found".to_string(),
            e => e.to_string(),
        },
    })
}

/// The envelope goes into command lines as it is, so every address must be
/// one `correo_smtp::Address` accepts: printable ASCII only, so no CR or LF
/// can end a command early. A quoted local part may still hold spaces or
/// angle brackets (`"a <b>"@example.test`), which RFC 5321 allows there.
fn check_envelope(message: &Composed) -> Result<(), SubmitError> {
    if message.recipients.is_empty() {
        return Err(SubmitError::Envelope("no recipients".into()));
    }
    for a in std::iter::once(&message.sender).chain(&message.recipients) {
        correo_smtp::Address::parse(a).map_err(|e| SubmitError::Envelope(format!("{a}: {e}")))?;
    }
    Ok(())
}

fn hop(profile: &Profile) -> String {
    format!("{}:{}", profile.submission.host, profile.submission.port())
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

/// Turns the client's error into one that names the hop and the fix.
fn explain(profile: &Profile, message_id: &str, e: ClientError) -> SubmitError {
    let sub = &profile.submission;
    let addr = hop(profile);
    let tls = |detail: String| SubmitError::Tls {
        addr: addr.clone(),
        server_name: sub.server_name.clone(),
        detail,
    };
    match e {
        ClientError::Connect(io) => match classify(&io) {
            NetCause::Timeout => SubmitError::Timeout { addr },
            _ => SubmitError::Connect {
                addr,
                detail: io.to_string(),
            },
        },
        ClientError::Handshake(io) => match classify(&io) {
            NetCause::Tls(detail) => tls(detail),
            NetCause::Timeout => SubmitError::Timeout { addr },
            _ => tls(io.to_string()),
        },
        // The server has the message and may be handing it on: a resend
        // could deliver it twice.
        ClientError::Timeout { during } if during == smtp_client::END_OF_DATA => {
            SubmitError::Unconfirmed {
                addr,
                message_id: message_id
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string(),
            }
        }
        ClientError::Timeout { .. } => SubmitError::Timeout { addr },
        ClientError::Io { ref source, .. } => match classify(source) {
            NetCause::Tls(detail) => tls(detail),
            NetCause::Timeout => SubmitError::Timeout { addr },
            _ => SubmitError::Other {
                addr,
                detail: e.to_string(),
            },
        },
        ClientError::Closed { .. } | ClientError::Protocol { .. } => SubmitError::Other {
            addr,
            detail: e.to_string(),
        },
        // 454 4.7.0 and the like: the server's trouble, not the profile's.
        ClientError::StarttlsRefused(reply) if reply.is_transient() => SubmitError::Deferred {
            code: reply.code.to_string(),
            detail: format!("{} (at STARTTLS)", reply_detail(&reply)),
        },
        ClientError::NoStarttls | ClientError::StarttlsRefused(_) => tls(e.to_string()),
        ClientError::NoAuth { .. } => SubmitError::NoAuth {
            detail: e.to_string(),
        },
        ClientError::Refused {
            reply,
            recipient,
            during,
        } => {
            let code = reply.code.to_string();
            if during == "AUTH" || matches!(reply.code, 535 | 534 | 530 | 538) {
                return SubmitError::Auth {
                    address: profile.address.clone(),
                    temporary: reply.is_transient(),
                    detail: reply.to_string(),
                };
            }
            let mut detail = reply_detail(&reply);
            if let Some(recipient) = recipient {
                detail.push_str(&format!(" (recipient {recipient})"));
            }
            if reply.is_transient() {
                SubmitError::Deferred { code, detail }
            } else {
                SubmitError::Rejected { code, detail }
            }
        }
    }
}

/// `5.1.1 text`, or the text alone.
fn reply_detail(reply: &correo_smtp::Reply) -> String {
    match &reply.enhanced {
        Some(enhanced) => format!("{enhanced} {}", reply.text()),
        None => reply.text(),
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

    use crate::profile::{Security, Submission};
    use correo_smtp::reader::dot_stuff;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// How the test server behaves.
    #[derive(Clone)]
    struct Script {
        implicit_tls: bool,
        offer_starttls: bool,
        /// After `AUTH`, once in TLS.
        auth: &'static str,
        /// (recipient, reply) for a refused RCPT TO.
        refuse: Option<(&'static str, &'static str)>,
        /// No reply to the end of the message; hangs up at the next command.
        silent_after_data: bool,
    }

    impl Default for Script {
        fn default() -> Self {
            Script {
                implicit_tls: false,
                offer_starttls: true,
                auth: "PLAIN LOGIN",
                refuse: None,
                silent_after_data: false,
            }
        }
    }

    /// What the test server saw.
    #[derive(Debug, Default)]
    struct Seen {
        /// Command lines, each marked with whether it came inside TLS.
        commands: Vec<(bool, String)>,
        /// The raw bytes after DATA's 354, up to and including `.` CRLF.
        data: Vec<u8>,
    }

    impl Seen {
        fn saw(&self, prefix: &str) -> bool {
            self.commands.iter().any(|(_, c)| c.starts_with(prefix))
        }
    }

    /// A tiny submission server on loopback for one connection, with a
    /// certificate for `localhost` from a fresh private CA.
    struct TestServer {
        dir: tempfile::TempDir,
        port: u16,
        seen: Arc<Mutex<Seen>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl TestServer {
        async fn start(script: Script) -> TestServer {
            correo_runtime::tls::install_crypto_provider();
            let dir = tempfile::tempdir().unwrap();
            correo_runtime::pki::ensure_ca(dir.path()).unwrap();
            correo_runtime::pki::ensure_leaf(dir.path(), "msa", &["localhost", "127.0.0.1"])
                .unwrap();
            let files = correo_runtime::tls::TlsFiles::in_dir(dir.path(), "msa");
            let config = correo_runtime::tls::smtp_server_config(&files.cert, &files.key).unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let seen = Arc::new(Mutex::new(Seen::default()));
            let log = seen.clone();
            let task = tokio::spawn(async move {
                let (mut tcp, _) = listener.accept().await.unwrap();
                if script.implicit_tls {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    tls.write_all(b"220 test ESMTP\r\n").await.unwrap();
                    converse(&mut tls, &script, true, &log).await;
                    return;
                }
                tcp.write_all(b"220 test ESMTP\r\n").await.unwrap();
                if converse(&mut tcp, &script, false, &log).await {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    converse(&mut tls, &script, true, &log).await;
                }
            });
            TestServer {
                dir,
                port,
                seen,
                task,
            }
        }

        fn profile(&self, security: Security) -> Profile {
            Profile {
                address: "alice@example.test".into(),
                ca: self.dir.path().join("ca.pem"),
                submission: Submission {
                    host: "127.0.0.1".into(),
                    port: Some(self.port),
                    security,
                    server_name: "localhost".into(),
                },
                mailbox: Default::default(),
            }
        }

        /// Waits for the session to end and returns what the server saw.
        async fn seen(self) -> Seen {
            self.task.await.unwrap();
            std::mem::take(&mut *self.seen.lock().unwrap())
        }
    }

    /// Submits the big test message with `password` over STARTTLS to a
    /// fresh server playing `script`; returns the refusal, and the server
    /// for what it saw.
    async fn refused(script: Script, password: &str) -> (SubmitError, TestServer) {
        let server = TestServer::start(script).await;
        let profile = server.profile(Security::Starttls);
        let err = submit(&profile, password, &big_message(&["bob@example.test"]))
            .await
            .unwrap_err();
        (err, server)
    }

    /// Runs commands until QUIT (false) or STARTTLS (true), or until the
    /// client goes away (false).
    async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
        s: &mut S,
        script: &Script,
        secure: bool,
        log: &Mutex<Seen>,
    ) -> bool {
        let mut buf = Vec::new();
        while let Some(line) = read_line(s, &mut buf).await {
            log.lock().unwrap().commands.push((secure, line.clone()));
            let upper = line.to_ascii_uppercase();
            let reply = if upper.starts_with("EHLO ") {
                let mut lines = vec!["250-test".to_string(), "250-SIZE 100000000".into()];
                lines.push("250-8BITMIME".into());
                if !secure && script.offer_starttls {
                    lines.push("250-STARTTLS".into());
                }
                if secure {
                    lines.push(format!("250-AUTH {}", script.auth));
                }
                lines.push("250 ENHANCEDSTATUSCODES".into());
                lines.join("\r\n")
            } else if upper == "STARTTLS" {
                s.write_all(b"220 2.0.0 go ahead\r\n").await.unwrap();
                return true;
            } else if let Some(response) = line.strip_prefix("AUTH PLAIN ") {
                use base64::Engine as _;
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(response)
                    .unwrap();
                if decoded == b"\0alice@example.test\0pw" {
                    "235 2.7.0 ok".into()
                } else {
                    "535 5.7.8 authentication failed".into()
                }
            } else if upper == "AUTH LOGIN" {
                s.write_all(b"334 VXNlcm5hbWU6\r\n").await.unwrap();
                let _user = read_line(s, &mut buf).await;
                s.write_all(b"334 UGFzc3dvcmQ6\r\n").await.unwrap();
                match read_line(s, &mut buf).await.as_deref() {
                    Some("cHc=") => "235 2.7.0 ok".into(),
                    _ => "535 5.7.8 authentication failed".into(),
                }
            } else if upper.starts_with("MAIL FROM:") {
                "250 2.1.0 ok".into()
            } else if let Some(to) = upper.strip_prefix("RCPT TO:") {
                match script.refuse {
                    Some((who, reply)) if to.contains(&who.to_ascii_uppercase()) => reply.into(),
                    _ => "250 2.1.5 ok".into(),
                }
            } else if upper == "DATA" {
                s.write_all(b"354 go ahead\r\n").await.unwrap();
                let Some(data) = read_until(s, &mut buf, b"\r\n.\r\n").await else {
                    return false;
                };
                log.lock().unwrap().data = data;
                if script.silent_after_data {
                    if let Some(line) = read_line(s, &mut buf).await {
                        log.lock().unwrap().commands.push((secure, line));
                    }
                    return false;
                }
                "250-2.0.0 ok\r\n250 2.0.0 queued as ABC123".into()
            } else if upper == "QUIT" {
                s.write_all(b"221 2.0.0 bye\r\n").await.unwrap();
                return false;
            } else {
                "500 5.5.2 what?".into()
            };
            s.write_all(format!("{reply}\r\n").as_bytes())
                .await
                .unwrap();
        }
        false
    }

    async fn read_line<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Option<String> {
        let line = read_until(s, buf, b"\r\n").await?;
        Some(String::from_utf8(line[..line.len() - 2].to_vec()).unwrap())
    }

    /// Reads up to and including `end`; `None` if the client went away.
    async fn read_until<S: AsyncRead + Unpin>(
        s: &mut S,
        buf: &mut Vec<u8>,
        end: &[u8],
    ) -> Option<Vec<u8>> {
        loop {
            if let Some(at) = buf.windows(end.len()).position(|w| w == end) {
                return Some(buf.drain(..at + end.len()).collect());
            }
            let mut chunk = [0u8; 16384];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// A message of several chunks with what stuffing must handle: dot
    /// lines (one right at a chunk boundary), a bare LF, 8-bit text and no
    /// final line end.
    fn big_message(recipients: &[&str]) -> Composed {
        let mut bytes = b"From: alice@example.test\r\nSubject: big\r\n\r\n".to_vec();
        while bytes.len() < smtp_client::CHUNK - 3 {
            bytes.extend_from_slice(b"0123456789abcdef0123456789abcdef0123456789abcdef\r\n");
        }
        bytes.truncate(smtp_client::CHUNK - 2);
        bytes.extend_from_slice(b"\r\n.first line of chunk two\r\n");
        for i in 0..3000 {
            bytes.extend_from_slice(format!(".line {i} caf\u{e9}\n").as_bytes());
        }
        bytes.extend_from_slice(b".\r\nthe end");
        Composed {
            sender: "alice@example.test".into(),
            recipients: recipients.iter().map(|r| r.to_string()).collect(),
            message_id: "<x@example.test>".into(),
            bytes,
        }
    }

    #[tokio::test]
    async fn starttls_submission_sends_the_stuffed_message_with_progress() {
        let server = TestServer::start(Script::default()).await;
        let profile = server.profile(Security::Starttls);
        let message = big_message(&["bob@example.test", "carol@example.test"]);
        assert_eq!(message.bytes[smtp_client::CHUNK], b'.');
        let mut reports = Vec::new();
        let receipt = submit_with_progress(&profile, "pw", &message, |sent, total| {
            reports.push((sent, total))
        })
        .await
        .unwrap();
        assert_eq!(receipt.queue_id.as_deref(), Some("ABC123"));
        assert_eq!(receipt.reply, "250 2.0.0 ok queued as ABC123");

        let total = message.bytes.len() as u64;
        assert!(reports.len() >= 3, "{reports:?}");
        assert!(reports.iter().all(|&(_, t)| t == total));
        assert!(reports.windows(2).all(|w| w[0].0 <= w[1].0), "{reports:?}");
        assert_eq!(reports.first(), Some(&(0, total)));
        assert_eq!(reports.last(), Some(&(total, total)));

        let seen = server.seen().await;
        assert_eq!(seen.data, dot_stuff(&message.bytes));
        let commands: Vec<&str> = seen.commands.iter().map(|(_, c)| c.as_str()).collect();
        assert_eq!(commands[0], "EHLO [127.0.0.1]");
        assert_eq!(commands[1], "STARTTLS");
        // Nothing but EHLO and STARTTLS in clear.
        assert!(
            seen.commands[2..].iter().all(|(tls, _)| *tls),
            "{commands:?}"
        );
        assert!(commands[3].starts_with("AUTH PLAIN "), "{commands:?}");
        assert!(!seen.saw("AUTH LOGIN"));
        assert_eq!(
            commands[4],
            format!("MAIL FROM:<alice@example.test> SIZE={total} BODY=8BITMIME")
        );
        assert_eq!(
            &commands[5..],
            [
                "RCPT TO:<bob@example.test>",
                "RCPT TO:<carol@example.test>",
                "DATA",
                "QUIT"
            ]
        );
    }

    #[tokio::test]
    async fn implicit_tls_submission() {
        let server = TestServer::start(Script {
            implicit_tls: true,
            ..Default::default()
        })
        .await;
        let profile = server.profile(Security::Tls);
        let message = big_message(&["bob@example.test"]);
        let receipt = submit(&profile, "pw", &message).await.unwrap();
        assert_eq!(receipt.queue_id.as_deref(), Some("ABC123"));
        let seen = server.seen().await;
        assert!(seen.commands.iter().all(|(tls, _)| *tls));
        assert!(seen.saw("AUTH PLAIN "));
        assert_eq!(seen.data, dot_stuff(&message.bytes));
    }

    #[tokio::test]
    async fn refused_recipient_is_rejected_and_named() {
        let server = TestServer::start(Script {
            refuse: Some(("carol@example.test", "550 5.1.1 no such user")),
            ..Default::default()
        })
        .await;
        let profile = server.profile(Security::Starttls);
        let message = big_message(&["bob@example.test", "carol@example.test"]);
        let err = submit(&profile, "pw", &message).await.unwrap_err();
        let SubmitError::Rejected { code, detail } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(code, "550");
        assert!(detail.contains("5.1.1 no such user"), "{detail}");
        assert!(detail.contains("carol@example.test"), "{detail}");
        let seen = server.seen().await;
        assert!(!seen.saw("DATA") && seen.saw("QUIT"));
    }

    #[tokio::test]
    async fn transient_refusal_is_deferred() {
        let (err, _server) = refused(
            Script {
                refuse: Some(("bob@example.test", "451 4.3.0 try again later")),
                ..Default::default()
            },
            "pw",
        )
        .await;
        assert!(
            matches!(&err, SubmitError::Deferred { code, .. } if code == "451"),
            "{err:?}"
        );
        assert!(err.to_string().contains("try again later"), "{err}");
    }

    #[tokio::test]
    async fn no_starttls_means_no_password() {
        let (err, server) = refused(
            Script {
                offer_starttls: false,
                ..Default::default()
            },
            "pw",
        )
        .await;
        assert!(matches!(err, SubmitError::Tls { .. }), "{err:?}");
        assert!(err.to_string().contains("STARTTLS"), "{err}");
        let seen = server.seen().await;
        assert!(!seen.saw("AUTH") && !seen.saw("STARTTLS"), "{seen:?}");
    }

    #[tokio::test]
    async fn login_when_plain_is_not_offered_and_a_wrong_password() {
        let (err, server) = refused(
            Script {
                auth: "LOGIN",
                ..Default::default()
            },
            "wrong",
        )
        .await;
        assert!(matches!(err, SubmitError::Auth { .. }), "{err:?}");
        assert!(err.to_string().contains("535 5.7.8"), "{err}");
        let seen = server.seen().await;
        assert!(seen.saw("AUTH LOGIN") && !seen.saw("MAIL"));
    }

    #[tokio::test]
    async fn no_plain_or_login_is_no_auth() {
        let (err, _server) = refused(
            Script {
                auth: "SCRAM-SHA-256",
                ..Default::default()
            },
            "pw",
        )
        .await;
        assert!(matches!(err, SubmitError::NoAuth { .. }), "{err:?}");
        assert!(err.to_string().contains("SCRAM-SHA-256"), "{err}");
    }

    #[tokio::test]
    async fn wrong_server_name_is_a_tls_error_naming_it() {
        let server = TestServer::start(Script {
            implicit_tls: true,
            ..Default::default()
        })
        .await;
        let mut profile = server.profile(Security::Tls);
        profile.submission.server_name = "other.test".into();
        let err = submit(&profile, "pw", &big_message(&["bob@example.test"]))
            .await
            .unwrap_err();
        assert!(matches!(err, SubmitError::Tls { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("\"other.test\""), "{text}");
        assert!(text.contains("invalid peer certificate"), "{text}");
    }

    /// STARTTLS against a server that waits for a TLS ClientHello: nobody
    /// speaks first, which is a timeout.
    #[tokio::test]
    async fn silent_server_is_a_timeout() {
        correo_runtime::tls::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        correo_runtime::pki::ensure_ca(dir.path()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let _server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(tcp);
        });
        let profile = Profile {
            address: "alice@example.test".into(),
            ca: dir.path().join("ca.pem"),
            submission: Submission {
                port: Some(port),
                ..Default::default()
            },
            mailbox: Default::default(),
        };
        let message = big_message(&["bob@example.test"]);
        let err = submit_with(
            &profile,
            "pw",
            &message,
            Duration::from_millis(200),
            Duration::from_millis(200),
            &mut |_, _| {},
        )
        .await
        .unwrap_err();
        assert!(matches!(err, SubmitError::Timeout { .. }), "{err:?}");
    }

    /// The whole message went out and the server never answered: not a
    /// configuration problem, and perhaps delivered, so no plain resend.
    #[tokio::test]
    async fn silence_after_the_message_may_mean_accepted() {
        let server = TestServer::start(Script {
            silent_after_data: true,
            ..Default::default()
        })
        .await;
        let profile = server.profile(Security::Starttls);
        let message = big_message(&["bob@example.test"]);
        let err = submit_with(
            &profile,
            "pw",
            &message,
            TIMEOUT,
            Duration::from_millis(300),
            &mut |_, _| {},
        )
        .await
        .unwrap_err();
        assert!(matches!(err, SubmitError::Unconfirmed { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("may have accepted it"), "{text}");
        assert!(text.contains("mua list"), "{text}");
        assert!(text.contains("<x@example.test>"), "{text}");
        assert!(!text.contains("submission.security"), "{text}");
        let seen = server.seen().await;
        assert_eq!(seen.data, dot_stuff(&message.bytes));
    }

    fn test_profile() -> Profile {
        Profile {
            address: "alice@example.test".into(),
            ca: "/nonexistent/ca.pem".into(),
            submission: Default::default(),
            mailbox: Default::default(),
        }
    }

    fn explained(e: ClientError) -> SubmitError {
        explain(&test_profile(), "<x@example.test>", e)
    }

    #[test]
    fn transient_starttls_refusal_is_deferred() {
        let reply = correo_smtp::Reply::new(454, "4.7.0", "TLS not available right now");
        let err = explained(ClientError::StarttlsRefused(reply));
        assert!(
            matches!(&err, SubmitError::Deferred { code, .. } if code == "454"),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains("try again later") && text.contains("STARTTLS"),
            "{text}"
        );
        // A permanent refusal still points at the configuration.
        let reply = correo_smtp::Reply::new(502, "5.5.1", "not implemented");
        let err = explained(ClientError::StarttlsRefused(reply));
        assert!(matches!(err, SubmitError::Tls { .. }), "{err:?}");
    }

    #[test]
    fn any_auth_refusal_is_an_auth_error() {
        for (code, enhanced) in [
            (454, "4.7.0"),
            (501, "5.5.2"),
            (504, "5.5.4"),
            (534, "5.7.9"),
            (535, "5.7.8"),
            (538, "5.7.11"),
        ] {
            let err = explained(ClientError::Refused {
                during: "AUTH",
                recipient: None,
                reply: correo_smtp::Reply::new(code, enhanced, "no"),
            });
            let SubmitError::Auth {
                address,
                detail,
                temporary,
            } = &err
            else {
                panic!("{code}: {err:?}");
            };
            assert_eq!(address, "alice@example.test");
            assert!(
                detail.starts_with(&format!("{code} {enhanced}")),
                "{detail}"
            );
            assert_eq!(*temporary, code == 454);
            let text = err.to_string();
            if code == 454 {
                assert!(text.contains("temporary"), "{text}");
                assert!(!text.contains("CORREO_PASSWORD"), "{text}");
            } else {
                assert!(text.contains("CORREO_PASSWORD"), "{text}");
            }
        }
    }

    #[test]
    fn only_the_end_of_data_timeout_is_unconfirmed() {
        let err = explained(ClientError::Timeout {
            during: smtp_client::END_OF_DATA,
        });
        assert!(
            matches!(&err, SubmitError::Unconfirmed { message_id, .. } if message_id == "x@example.test"),
            "{err:?}"
        );
        for during in ["the greeting", "EHLO", "the message", "DATA"] {
            let err = explained(ClientError::Timeout { during });
            assert!(
                matches!(err, SubmitError::Timeout { .. }),
                "{during}: {err:?}"
            );
            assert!(err.to_string().contains("submission.security"), "{err}");
        }
    }

    #[tokio::test]
    async fn missing_ca_file() {
        let profile = Profile {
            address: "alice@example.test".into(),
            ca: "/nonexistent/ca.pem".into(),
            submission: Default::default(),
            mailbox: Default::default(),
        };
        let err = submit(&profile, "pw", &big_message(&["bob@example.test"]))
            .await
            .unwrap_err();
        assert!(matches!(err, SubmitError::Ca { .. }), "{err:?}");
    }
}
