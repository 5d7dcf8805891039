//! One SMTP session: the command loop and one handler function per verb.
//! Order, limits, TLS and the AUTH exchange are enforced here; policy is the
//! [`Handler`]'s.

use std::future::Future;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::command::{self, Command, MailCommand};
use super::conn::{Conn, End};
use super::sasl;
use super::{AuthMechanism, Envelope, Handler, ServerConfig, SessionInfo, TlsMode};
use crate::address::Address;
use crate::reader::{CommandReader, DataReader, LineError, MAX_AUTH_LINE, MAX_COMMAND_LINE};
use crate::reply::Reply;

fn is_disconnect(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        BrokenPipe | ConnectionReset | ConnectionAborted | UnexpectedEof
    )
}

/// Whether the session goes on after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Close,
}

type Step = Result<Flow, End>;

pub(crate) struct Session<'a, S, H, F> {
    pub conn: Conn<'a, S, F>,
    pub config: &'a ServerConfig,
    pub handler: H,
    pub info: SessionInfo,
    reader: CommandReader,
    envelope: Option<Envelope>,
    errors: usize,
}

impl<'a, S, H, F> Session<'a, S, H, F>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: Handler,
    F: Future<Output = ()>,
{
    pub fn new(
        conn: Conn<'a, S, F>,
        config: &'a ServerConfig,
        handler: H,
        info: SessionInfo,
    ) -> Self {
        Session {
            conn,
            config,
            handler,
            info,
            reader: CommandReader::new(),
            envelope: None,
            errors: 0,
        }
    }

    /// Runs the session to its end and closes the connection.
    pub async fn run(mut self) -> std::io::Result<()> {
        let _metrics = correo_runtime::metrics::smtp_session();
        tracing::debug!(peer = %self.info.peer, "SMTP session start");
        let result = self.run_inner().await;
        tracing::debug!(peer = %self.info.peer, end = ?result, errors = self.errors, "SMTP session end");
        let hostname = &self.config.hostname;
        let last = match &result {
            Err(End::Timeout) => Some(Reply::new(
                421,
                "4.4.2",
                format!("{hostname} timeout, closing connection"),
            )),
            Err(End::Shutdown) => Some(Reply::new(
                421,
                "4.3.2",
                format!("{hostname} shutting down"),
            )),
            _ => None,
        };
        if let Some(reply) = last {
            self.conn.queue(&reply);
        }
        self.conn.close().await;
        match result {
            // The client going away is how many sessions end; not an error.
            Err(End::Io(e)) if is_disconnect(&e) => Ok(()),
            Err(End::Io(e)) => Err(e),
            _ => Ok(()),
        }
    }

    async fn run_inner(&mut self) -> Result<(), End> {
        if self.config.tls_mode == TlsMode::Implicit {
            let Some(tls) = self.config.tls.clone() else {
                return Err(End::Io(std::io::Error::other(
                    "TlsMode::Implicit without a TLS configuration",
                )));
            };
            self.info.tls = Some(
                self.conn
                    .start_tls(tls, self.config.command_timeout)
                    .await?,
            );
        }
        // RFC 5321 4.3.1: the client waits for the greeting. One that talks
        // first is a bot or a smuggling attempt; it never gets a session.
        if self.conn.talks_within(self.config.greeting_delay).await? {
            tracing::info!(peer = %self.info.peer, "client talked before the greeting");
            self.conn.queue(&Reply::new(
                554,
                "5.5.1",
                format!(
                    "{} protocol error: data sent before the greeting",
                    self.config.hostname
                ),
            ));
            return Ok(());
        }
        let greeting = Reply::new(220, "", format!("{} ESMTP Correo", self.config.hostname));
        self.conn.queue(&greeting);
        loop {
            let flow = match self.read_line().await? {
                Err(e) => self.refuse(e.reply()),
                Ok(line) => self.dispatch(&line).await?,
            };
            if flow == Flow::Close {
                return Ok(());
            }
        }
    }

    /// The next command line from the buffer, reading more when needed (the
    /// queued replies are flushed first, as RFC 2920 requires).
    async fn read_line(&mut self) -> Result<Result<String, LineError>, End> {
        let deadline = Instant::now() + self.config.command_timeout;
        loop {
            let (n, line) = self.reader.feed(self.conn.pending());
            self.conn.consume(n);
            if let Some(line) = line {
                return Ok(line);
            }
            self.conn.fill(deadline).await?;
        }
    }

    /// Sends a refusal for a client mistake and counts it; too many and the
    /// session ends (slows down guessing and broken clients).
    fn refuse(&mut self, reply: Reply) -> Flow {
        self.conn.queue(&reply);
        if reply.code == 421 {
            return Flow::Close;
        }
        self.errors += 1;
        if self.errors >= self.config.max_errors {
            self.conn.queue(&Reply::new(
                421,
                "4.7.0",
                format!("{} too many errors", self.config.hostname),
            ));
            return Flow::Close;
        }
        Flow::Continue
    }

    /// Sends a reply; a 421 (e.g. from a handler) closes the session, as
    /// the code says (RFC 5321 4.2.3).
    fn reply(&mut self, reply: Reply) -> Flow {
        self.conn.queue(&reply);
        if reply.code == 421 {
            return Flow::Close;
        }
        Flow::Continue
    }

    async fn dispatch(&mut self, line: &str) -> Step {
        correo_runtime::metrics::smtp_command(line);
        let command = match command::parse(line, &self.config.hostname) {
            Ok(c) => c,
            Err(reply) => return Ok(self.refuse(reply)),
        };
        match command {
            Command::Ehlo(host) => self.ehlo(host, true).await,
            Command::Helo(host) => self.ehlo(host, false).await,
            Command::Mail(mail) => self.mail(mail).await,
            Command::Rcpt(address) => self.rcpt(address).await,
            Command::Data => self.data().await,
            Command::Rset => Ok(self.rset()),
            Command::Noop => Ok(self.reply(Reply::new(250, "2.0.0", "OK"))),
            Command::Quit => Ok(self.quit()),
            Command::Vrfy => Ok(self.reply(Reply::new(
                252,
                "2.5.0",
                "cannot VRFY user, but will accept message and attempt delivery",
            ))),
            Command::Help => Ok(self.reply(Reply::new(214, "2.0.0", "see RFC 5321"))),
            Command::StartTls => self.starttls().await,
            Command::Auth { mechanism, initial } => self.auth(mechanism, initial).await,
            Command::NotImplemented => {
                Ok(self.refuse(Reply::new(502, "5.5.1", "command not implemented")))
            }
        }
    }

    fn reset_transaction(&mut self) {
        self.envelope = None;
        self.handler.reset();
    }

    fn starttls_offered(&self) -> bool {
        self.config.tls_mode == TlsMode::StartTls
            && self.config.tls.is_some()
            && self.info.tls.is_none()
    }

    fn auth_offered(&self) -> bool {
        self.info.tls.is_some() && !self.config.auth_mechanisms.is_empty()
    }

    /// EHLO (`esmtp`) and HELO. Both reset the transaction (RFC 5321 4.1.4).
    async fn ehlo(&mut self, host: String, esmtp: bool) -> Step {
        self.reset_transaction();
        let previous = (self.info.helo.replace(host), self.info.esmtp);
        self.info.esmtp = esmtp;
        if let Err(reply) = self.handler.helo(&self.info).await {
            (self.info.helo, self.info.esmtp) = previous;
            return Ok(self.reply(reply));
        }
        let hostname = self.config.hostname.clone();
        if !esmtp {
            return Ok(self.reply(Reply::new(250, "", hostname)));
        }
        let mut lines = vec![
            hostname,
            "PIPELINING".to_owned(),
            "8BITMIME".to_owned(),
            format!("SIZE {}", self.config.max_message_size),
            "ENHANCEDSTATUSCODES".to_owned(),
        ];
        if self.starttls_offered() {
            lines.push("STARTTLS".to_owned());
        }
        if self.auth_offered() {
            let names: Vec<&str> = self
                .config
                .auth_mechanisms
                .iter()
                .map(|m| m.name())
                .collect();
            lines.push(format!("AUTH {}", names.join(" ")));
        }
        Ok(self.reply(Reply::multiline(250, "", lines)))
    }

    async fn mail(&mut self, mail: MailCommand) -> Step {
        if self.info.helo.is_none() {
            return Ok(self.refuse(Reply::new(503, "5.5.1", "send EHLO or HELO first")));
        }
        if self.config.require_auth && self.info.authenticated.is_none() {
            return Ok(self.refuse(Reply::new(530, "5.7.0", "authentication required")));
        }
        if self.envelope.is_some() {
            return Ok(self.refuse(Reply::new(503, "5.5.1", "sender already specified")));
        }
        if mail.has_params && !self.info.esmtp {
            return Ok(self.refuse(Reply::new(555, "5.5.4", "parameters need EHLO")));
        }
        if mail.size.is_some_and(|s| s > self.config.max_message_size) {
            return Ok(self.reply(Reply::new(
                552,
                "5.3.4",
                "message size exceeds fixed maximum message size",
            )));
        }
        if let Err(reply) = self.handler.mail(&self.info, &mail.sender).await {
            return Ok(self.reply(reply));
        }
        self.envelope = Some(Envelope {
            sender: mail.sender,
            recipients: Vec::new(),
            size_hint: mail.size,
            body_8bit: mail.body_8bit,
        });
        Ok(self.reply(Reply::new(250, "2.1.0", "sender OK")))
    }

    async fn rcpt(&mut self, recipient: Address) -> Step {
        let Some(envelope) = &self.envelope else {
            return Ok(self.refuse(Reply::new(503, "5.5.1", "need MAIL before RCPT")));
        };
        if envelope.recipients.len() >= self.config.max_recipients {
            return Ok(self.reply(Reply::new(452, "4.5.3", "too many recipients")));
        }
        if let Err(reply) = self.handler.rcpt(&self.info, envelope, &recipient).await {
            return Ok(self.reply(reply));
        }
        if let Some(envelope) = &mut self.envelope {
            envelope.recipients.push(recipient);
        }
        Ok(self.reply(Reply::new(250, "2.1.5", "recipient OK")))
    }

    async fn data(&mut self) -> Step {
        let Some(envelope) = &self.envelope else {
            return Ok(self.refuse(Reply::new(503, "5.5.1", "need MAIL before DATA")));
        };
        if envelope.recipients.is_empty() {
            return Ok(self.reply(Reply::new(554, "5.5.1", "no valid recipients")));
        }
        self.conn
            .queue(&Reply::new(354, "", "end data with <CR><LF>.<CR><LF>"));
        let message = self.read_data().await?;
        let reply = match message {
            Err(e) => e.reply(),
            Ok(message) => match &self.envelope {
                Some(envelope) => self.handler.data(&self.info, envelope, message).await,
                None => Reply::new(451, "4.3.0", "transaction lost"),
            },
        };
        correo_runtime::metrics::smtp_message(reply.code);
        self.reset_transaction();
        Ok(self.reply(reply))
    }

    /// Reads to the real end of data, whatever the outcome, so that nothing
    /// of a refused message is ever read as commands.
    async fn read_data(&mut self) -> Result<Result<Vec<u8>, crate::reader::DataError>, End> {
        let deadline = Instant::now() + self.config.data_timeout;
        let mut reader =
            DataReader::new(self.config.max_message_size, self.config.bare_line_endings);
        loop {
            let (n, done) = reader.feed(self.conn.pending());
            self.conn.consume(n);
            if done {
                return Ok(reader.finish());
            }
            self.conn.fill(deadline).await?;
        }
    }

    fn rset(&mut self) -> Flow {
        self.reset_transaction();
        self.reply(Reply::new(250, "2.0.0", "OK"))
    }

    fn quit(&mut self) -> Flow {
        let text = format!("{} closing connection", self.config.hostname);
        self.conn.queue(&Reply::new(221, "2.0.0", text));
        Flow::Close
    }

    async fn starttls(&mut self) -> Step {
        if self.info.tls.is_some() {
            return Ok(self.refuse(Reply::new(503, "5.5.1", "TLS already active")));
        }
        let Some(tls) = self.config.tls.clone().filter(|_| self.starttls_offered()) else {
            return Ok(self.refuse(Reply::new(502, "5.5.1", "STARTTLS not available")));
        };
        self.conn
            .queue(&Reply::new(220, "2.0.0", "ready to start TLS"));
        self.conn.flush().await?;
        // Anything pipelined after STARTTLS arrived in plaintext and must not
        // be executed inside the TLS session (CVE-2011-0411).
        self.conn.discard_input();
        self.reader.clear();
        self.info.tls = Some(
            self.conn
                .start_tls(tls, self.config.command_timeout)
                .await?,
        );
        // RFC 3207 4.2: back to the state right after the greeting.
        self.reset_transaction();
        self.info.helo = None;
        self.info.esmtp = false;
        self.info.authenticated = None;
        Ok(Flow::Continue)
    }

    async fn auth(&mut self, mechanism: Option<AuthMechanism>, initial: Option<String>) -> Step {
        if self.config.auth_mechanisms.is_empty() {
            return Ok(self.refuse(Reply::new(502, "5.5.1", "AUTH not available")));
        }
        if self.info.helo.is_none() || !self.info.esmtp {
            return Ok(self.refuse(Reply::new(503, "5.5.1", "send EHLO first")));
        }
        if self.info.tls.is_none() {
            return Ok(self.refuse(Reply::new(
                538,
                "5.7.11",
                "encryption required for requested authentication mechanism",
            )));
        }
        if self.info.authenticated.is_some() {
            return Ok(self.refuse(Reply::new(503, "5.5.1", "already authenticated")));
        }
        if self.envelope.is_some() {
            return Ok(self.refuse(Reply::new(
                503,
                "5.5.1",
                "AUTH not allowed during a mail transaction",
            )));
        }
        let Some(mechanism) = mechanism.filter(|m| self.config.auth_mechanisms.contains(m)) else {
            return Ok(self.refuse(Reply::new(504, "5.5.4", "unrecognized authentication type")));
        };
        let credentials = match mechanism {
            AuthMechanism::Plain => self.auth_plain(initial).await?,
            AuthMechanism::Login => self.auth_login(initial).await?,
            AuthMechanism::ScramSha256 => return self.auth_scram(initial).await,
        };
        let (username, password) = match credentials {
            Ok(c) => c,
            Err(reply) => return Ok(self.refuse(reply)),
        };
        match self
            .handler
            .authenticate(&self.info, &username, &password)
            .await
        {
            Ok(identity) => {
                tracing::debug!(peer = %self.info.peer, identity = ?identity, "authenticated");
                self.info.authenticated = Some(identity);
                Ok(self.reply(Reply::new(235, "2.7.0", "authentication successful")))
            }
            Err(reply) => {
                // The username is logged for abuse tracking; never the password.
                tracing::debug!(peer = %self.info.peer, username = ?username, "authentication failed");
                Ok(self.refuse(reply))
            }
        }
    }

    /// RFC 5802 over RFC 4954: client-first (initial response or after an
    /// empty 334), 334 server-first, client-final, 334 server-final, an
    /// empty line, 235.
    async fn auth_scram(&mut self, initial: Option<String>) -> Step {
        use crate::scram;
        let first = match initial {
            Some(r) if !r.is_empty() => r,
            _ => match self.challenge("").await? {
                Ok(r) => r,
                Err(reply) => return Ok(self.refuse(reply)),
            },
        };
        let first = match sasl::decode_bytes(&first)
            .map_err(|e| e.reply())
            .and_then(|b| scram::parse_client_first(&b).map_err(|e| scram_reply(&e)))
        {
            Ok(f) => f,
            Err(reply) => return Ok(self.refuse(reply)),
        };
        let username = first.username.clone();
        let credentials = match self.handler.scram_credentials(&self.info, &username).await {
            Ok(Some(c)) => c,
            Ok(None) => scram::decoy_credentials(&username),
            Err(reply) => return Ok(self.refuse(reply)),
        };
        let (server, server_first) =
            scram::ScramServer::new(first, credentials, &scram::random_nonce());
        let final_msg = match self
            .challenge(&sasl::encode(server_first.as_bytes()))
            .await?
        {
            Ok(r) => r,
            Err(reply) => return Ok(self.refuse(reply)),
        };
        let final_msg = match sasl::decode_bytes(&final_msg) {
            Ok(b) => b,
            Err(e) => return Ok(self.refuse(e.reply())),
        };
        let server_final = match server.finish(&final_msg) {
            Ok(v) => v,
            Err(e) => {
                if e == scram::ScramError::Proof {
                    tracing::debug!(peer = %self.info.peer, username = ?username, "SCRAM authentication failed");
                    self.handler.scram_failed(&self.info, &username);
                }
                return Ok(self.refuse(scram_reply(&e)));
            }
        };
        // The client checks our signature and answers with an empty line.
        match self
            .challenge(&sasl::encode(server_final.as_bytes()))
            .await?
        {
            Ok(r) if r.trim().is_empty() => {}
            Ok(_) => {
                return Ok(self.refuse(Reply::new(501, "5.5.2", "expected an empty response")));
            }
            Err(reply) => return Ok(self.refuse(reply)),
        }
        match self
            .handler
            .scram_authenticated(&self.info, &username)
            .await
        {
            Ok(identity) => {
                tracing::debug!(peer = %self.info.peer, identity = ?identity, "authenticated (SCRAM-SHA-256)");
                self.info.authenticated = Some(identity);
                Ok(self.reply(Reply::new(235, "2.7.0", "authentication successful")))
            }
            Err(reply) => Ok(self.refuse(reply)),
        }
    }

    async fn auth_plain(
        &mut self,
        initial: Option<String>,
    ) -> Result<Result<(String, String), Reply>, End> {
        let response = match initial {
            Some(r) => r,
            None => match self.challenge("").await? {
                Ok(r) => r,
                Err(reply) => return Ok(Err(reply)),
            },
        };
        Ok(sasl::decode_plain(&response).map_err(|e| e.reply()))
    }

    async fn auth_login(
        &mut self,
        initial: Option<String>,
    ) -> Result<Result<(String, String), Reply>, End> {
        let username = match initial {
            Some(r) => r,
            None => match self.challenge(sasl::LOGIN_USERNAME).await? {
                Ok(r) => r,
                Err(reply) => return Ok(Err(reply)),
            },
        };
        let username = match sasl::decode_text(&username) {
            Ok(u) if !u.is_empty() => u,
            Ok(_) => return Ok(Err(Reply::new(501, "5.5.2", "empty username"))),
            Err(e) => return Ok(Err(e.reply())),
        };
        let password = match self.challenge(sasl::LOGIN_PASSWORD).await? {
            Ok(r) => r,
            Err(reply) => return Ok(Err(reply)),
        };
        Ok(sasl::decode_text(&password)
            .map(|p| (username, p))
            .map_err(|e| e.reply()))
    }

    /// Sends `334 text` and reads the client's response line; `*` cancels.
    async fn challenge(&mut self, text: &str) -> Result<Result<String, Reply>, End> {
        self.conn.queue(&Reply::new(334, "", text));
        self.reader.set_limit(MAX_AUTH_LINE);
        let line = self.read_line().await;
        self.reader.set_limit(MAX_COMMAND_LINE);
        Ok(match line? {
            Err(e) => Err(e.reply()),
            Ok(line) if line.trim() == "*" => {
                Err(Reply::new(501, "5.0.0", "authentication cancelled"))
            }
            Ok(line) => Ok(line),
        })
    }
}

fn scram_reply(e: &crate::scram::ScramError) -> Reply {
    use crate::scram::ScramError;
    match e {
        ScramError::Proof | ScramError::Authzid => {
            Reply::new(535, "5.7.8", "authentication credentials invalid")
        }
        other => Reply::new(501, "5.5.2", other.to_string()),
    }
}
