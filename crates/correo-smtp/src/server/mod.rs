//! SMTP server session driver: [`serve`] runs one session on an accepted
//! connection, calling a [`Handler`] once per verb for policy decisions.
//!
//! The driver owns command order, limits, STARTTLS and the AUTH exchange;
//! the command and DATA byte handling is the sans-IO [`crate::reader`].

mod command;
mod conn;
mod sasl;
mod session;

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
}

impl AuthMechanism {
    /// The SASL name advertised in EHLO.
    pub fn name(&self) -> &'static str {
        match self {
            AuthMechanism::Plain => "PLAIN",
            AuthMechanism::Login => "LOGIN",
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
            .finish()
    }
}

impl ServerConfig {
    /// Defaults: no TLS (`TlsMode::None`), no AUTH, 10 MiB messages, 100
    /// recipients, 10 errors, 5 min per command, 10 min for DATA, bare line
    /// endings rejected.
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
