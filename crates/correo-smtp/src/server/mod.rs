//! SMTP server session driver: [`serve`] runs one session on an accepted
//! connection, calling a [`Handler`] once per verb for policy decisions.
//!
//! The driver owns command order, limits, STARTTLS and the AUTH exchange;
//! the command and DATA byte handling is the sans-IO [`crate::reader`].

pub(crate) mod command;
mod conn;
mod limit;
mod sasl;
mod session;

pub use limit::{ConnectionLimiter, ConnectionPermit, LimitExceeded};

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::address::{Address, ReversePath};
use crate::reply::Reply;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    None,
    StartTls,
    Implicit,
}

pub use crate::reader::BareLineEndings;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMechanism {
    Plain,
    Login,
    /// RFC 5802/7677; needs [`Handler::scram_credentials`].
    ScramSha256,
}

impl AuthMechanism {
    /// The SASL name advertised in EHLO.
    pub fn name(&self) -> &'static str {
        match self {
            AuthMechanism::Plain => "PLAIN",
            AuthMechanism::Login => "LOGIN",
            AuthMechanism::ScramSha256 => "SCRAM-SHA-256",
        }
    }
}

#[derive(Clone)]
pub struct ServerConfig {
    /// Greeting `220 {hostname} ESMTP Correo` and the EHLO reply.
    pub hostname: String,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub tls_mode: TlsMode,
    /// Empty = no AUTH; advertised and accepted only under TLS.
    pub auth_mechanisms: Vec<AuthMechanism>,
    /// MAIL before AUTH -> 530 5.7.0.
    pub require_auth: bool,
    /// SIZE advertised; bigger -> 552 5.3.4 after reading to the end.
    pub max_message_size: usize,
    /// More -> 452 4.5.3.
    pub max_recipients: usize,
    /// Client errors before 421 4.7.0 and close.
    pub max_errors: usize,
    /// Per command read (and per reply write); 421 4.4.2 on expiry.
    pub command_timeout: Duration,
    /// For the whole DATA phase.
    pub data_timeout: Duration,
    pub bare_line_endings: BareLineEndings,
    /// How long to wait before sending the greeting. A client that sends
    /// anything before it is an early talker (spam bots, RFC 5321 4.3.1
    /// violators): `554 5.5.1` and close. Default 0: no wait, but bytes
    /// already buffered at greeting time are still refused.
    pub greeting_delay: Duration,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("hostname", &self.hostname)
            .field("tls", &self.tls.is_some())
            .field("tls_mode", &self.tls_mode)
            .field("auth_mechanisms", &self.auth_mechanisms)
            .field("require_auth", &self.require_auth)
            .field("max_message_size", &self.max_message_size)
            .field("max_recipients", &self.max_recipients)
            .field("max_errors", &self.max_errors)
            .field("command_timeout", &self.command_timeout)
            .field("data_timeout", &self.data_timeout)
            .field("bare_line_endings", &self.bare_line_endings)
            .field("greeting_delay", &self.greeting_delay)
            .finish()
    }
}

impl ServerConfig {
    /// Defaults: no TLS (`TlsMode::None`), no AUTH, 10 MiB messages, 100
    /// recipients, 10 errors, 5 min per command, 10 min for DATA, bare line
    /// endings rejected, no greeting delay.
    pub fn new(hostname: impl Into<String>) -> Self {
        ServerConfig {
            hostname: hostname.into(),
            tls: None,
            tls_mode: TlsMode::None,
            auth_mechanisms: Vec::new(),
            require_auth: false,
            max_message_size: 10 * 1024 * 1024,
            max_recipients: 100,
            max_errors: 10,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            bare_line_endings: BareLineEndings::Reject,
            greeting_delay: Duration::ZERO,
        }
    }
}

/// What the session knows about its client, passed to every handler call.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// The EHLO/HELO argument; reset by STARTTLS.
    pub helo: Option<String>,
    /// EHLO (true) or HELO (false).
    pub esmtp: bool,
    /// e.g. "TLSv1.3:TLS13_AES_256_GCM_SHA384"; None = plaintext.
    pub tls: Option<String>,
    /// Identity returned by Handler::authenticate.
    pub authenticated: Option<String>,
}

/// The current mail transaction.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub sender: ReversePath,
    pub recipients: Vec<Address>,
    /// MAIL FROM SIZE=.
    pub size_hint: Option<usize>,
    /// BODY=8BITMIME.
    pub body_8bit: bool,
}

/// One method per verb. The driver enforces command order, limits, TLS and
/// the AUTH exchange; the handler decides policy. Err(reply) refuses.
#[allow(async_fn_in_trait)]
pub trait Handler: Send {
    /// After an accepted EHLO/HELO. Default: accept.
    async fn helo(&mut self, _info: &SessionInfo) -> Result<(), Reply> {
        Ok(())
    }
    /// AUTH PLAIN/LOGIN decoded credentials. Ok(identity) on success;
    /// Err(535 5.7.8 ...) on bad credentials. Default: refuse.
    async fn authenticate(
        &mut self,
        _info: &SessionInfo,
        _username: &str,
        _password: &str,
    ) -> Result<String, Reply> {
        Err(Reply::new(535, "5.7.8", "authentication failed"))
    }
    /// AUTH SCRAM-SHA-256: the stored verifier of `username`. `Ok(None)`
    /// for an unknown user (or one without a verifier): the exchange then
    /// runs against a decoy and fails at the proof like a wrong password.
    /// Err refuses at once (e.g. 454 4.7.0, or 421 when throttled).
    /// Default: no verifiers.
    async fn scram_credentials(
        &mut self,
        _info: &SessionInfo,
        _username: &str,
    ) -> Result<Option<crate::scram::ScramCredentials>, Reply> {
        Ok(None)
    }
    /// After a verified SCRAM proof: Ok(identity), as `authenticate`'s Ok.
    /// Default: refuse.
    async fn scram_authenticated(
        &mut self,
        _info: &SessionInfo,
        _username: &str,
    ) -> Result<String, Reply> {
        Err(Reply::new(535, "5.7.8", "authentication failed"))
    }
    /// A SCRAM proof did not verify (wrong password or unknown user); for
    /// throttling and logs. Default: nothing.
    fn scram_failed(&mut self, _info: &SessionInfo, _username: &str) {}
    async fn mail(&mut self, info: &SessionInfo, sender: &ReversePath) -> Result<(), Reply>;
    /// `envelope` holds the sender and the recipients accepted so far.
    async fn rcpt(
        &mut self,
        info: &SessionInfo,
        envelope: &Envelope,
        recipient: &Address,
    ) -> Result<(), Reply>;
    /// The message after dot-unstuffing, CRLF line endings, end-of-data removed.
    /// Return the final reply (250 ... queued as ID, or an error).
    async fn data(&mut self, info: &SessionInfo, envelope: &Envelope, message: Vec<u8>) -> Reply;
    /// RSET, a new EHLO, or the end of a transaction. Default: nothing.
    fn reset(&mut self) {}
}

// A handler reply with code 421 (from any method) makes the driver close the
// session after sending it: 421 means "closing the channel" (RFC 5321 4.2.3).

/// Runs one SMTP session on an accepted connection until QUIT, error, timeout
/// or `shutdown` resolving (then 421 4.3.2 and close). Never panics on input.
///
/// Returns `Ok` when the session ended normally, by timeout or shutdown, or
/// because the client went away; `Err` for other I/O errors, a failed TLS
/// handshake, or [`TlsMode::Implicit`] without `tls`.
pub async fn serve<S, H>(
    stream: S,
    peer: SocketAddr,
    local: SocketAddr,
    config: Arc<ServerConfig>,
    handler: H,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: Handler,
{
    let shutdown = std::pin::pin!(shutdown);
    let conn = conn::Conn::new(stream, shutdown, config.command_timeout);
    let info = SessionInfo {
        peer,
        local,
        helo: None,
        esmtp: false,
        tls: None,
        authenticated: None,
    };
    session::Session::new(conn, &config, handler, info)
        .run()
        .await
}

/// Refuses an accepted connection without a session: runs the TLS
/// handshake first for [`TlsMode::Implicit`] (so the client can read the
/// reply), sends `reply` (e.g. from [`LimitExceeded::reply`]) and closes.
/// Bounded by `config.command_timeout`, at most 10 s (refusals are cheap).
pub async fn refuse<S>(stream: S, config: &ServerConfig, reply: &Reply) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let limit = config.command_timeout.min(Duration::from_secs(10));
    let never = std::pin::pin!(std::future::pending::<()>());
    let mut conn = conn::Conn::new(stream, never, limit);
    if config.tls_mode == TlsMode::Implicit {
        let Some(tls) = config.tls.clone() else {
            return Err(std::io::Error::other(
                "TlsMode::Implicit without a TLS configuration",
            ));
        };
        if let Err(e) = conn.start_tls(tls, limit).await {
            return Err(std::io::Error::other(format!("TLS handshake: {e:?}")));
        }
    }
    conn.queue(reply);
    conn.close().await;
    Ok(())
}
