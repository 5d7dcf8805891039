//! Outbound SMTP client (used by the MTA relay): greeting, EHLO with HELO
//! fallback, opportunistic STARTTLS (RFC 3207, RFC 7435), PIPELINING when
//! offered (RFC 2920), SIZE and 8BITMIME parameters, dot-stuffing, and one
//! outcome per recipient.
//!
//! The client never emits a bare CR or LF: the message is normalized to CRLF
//! while it is dot-stuffed, so no receiver can find an end-of-data marker we
//! did not mean (SMTP smuggling). Paths containing spaces, controls or angle
//! brackets are never sent (no command injection).
//!
//! STARTTLS is opportunistic (RFC 7435): the server's certificate is NOT
//! verified, because relaying by MX has no authenticated name to verify
//! against and refusing would only mean falling back to plaintext. This
//! stops passive eavesdropping, not an active attacker.

mod verify;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::reader::{ReplyReader, dot_stuff};
use crate::reply::Reply;
use crate::tls::MaybeTls;

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Our name in EHLO/HELO.
    pub helo_name: String,
    pub connect_timeout: Duration,
    /// Per command reply (RFC 5321 4.5.3.2 suggests 5 minutes).
    pub command_timeout: Duration,
    /// For sending the body and waiting for the final reply.
    pub data_timeout: Duration,
    /// Opportunistic: use STARTTLS when offered; certificate not verified (RFC 7435).
    pub starttls: bool,
}

type Stream = MaybeTls<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;

/// An open SMTP session to one server, ready for transactions.
pub struct Connection {
    stream: Stream,
    inbuf: Vec<u8>,
    replies: ReplyReader,
    remote: SocketAddr,
    tls: Option<String>,
    /// EHLO keywords and their parameters, e.g. "SIZE 1000", uppercased.
    extensions: Vec<String>,
    config: ClientConfig,
}

/// The final reply for one recipient: its RCPT refusal, or DATA's reply.
#[derive(Debug, Clone)]
pub struct RecipientOutcome {
    pub recipient: String,
    pub reply: Reply,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect failed: {0}")]
    Connect(std::io::Error),
    #[error("timeout during {0}")]
    Timeout(&'static str),
    #[error("i/o error: {0}")]
    Io(std::io::Error),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("rejected: {0}")]
    Rejected(Reply),
    #[error("TLS error: {0}")]
    Tls(String),
}

impl ClientError {
    /// Only a 5xx rejection is permanent; everything else is worth a retry.
    pub fn is_permanent(&self) -> bool {
        matches!(self, ClientError::Rejected(r) if r.is_permanent())
    }
}

/// True for a path we can put between `<` `>` without letting it inject
/// anything: printable ASCII, no spaces, no angle brackets.
fn safe_path(path: &str) -> bool {
    path.len() <= 256
        && path
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'<' && b != b'>')
}

impl Connection {
    /// TCP connect, greeting, EHLO (HELO fallback), STARTTLS+EHLO when offered and enabled.
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        config: &ClientConfig,
    ) -> Result<Connection, ClientError> {
        let tcp = match tokio::time::timeout(config.connect_timeout, TcpStream::connect(addr)).await
        {
            Err(_) => return Err(ClientError::Timeout("connect")),
            Ok(Err(e)) => return Err(ClientError::Connect(e)),
            Ok(Ok(tcp)) => tcp,
        };
        // Replies are small and latency-bound.
        let _ = tcp.set_nodelay(true);
        let mut conn = Connection {
            stream: MaybeTls::Plain(tcp),
            inbuf: Vec::new(),
            replies: ReplyReader::new(),
            remote: addr,
            tls: None,
            extensions: Vec::new(),
            config: config.clone(),
        };
        let greeting = conn.read_reply("greeting", conn.deadline()).await?;
        if greeting.code != 220 {
            conn.quit_quietly().await;
            return Err(ClientError::Rejected(greeting));
        }
        conn.hello().await?;
        if config.starttls && conn.supports("STARTTLS") {
            let reply = conn.command("STARTTLS\r\n", "STARTTLS").await?;
            // A refusal (e.g. 454) leaves us in plaintext: opportunistic.
            if reply.code == 220 {
                conn.upgrade(server_name).await?;
                conn.hello().await?;
            }
        }
        Ok(conn)
    }

    /// Negotiated protocol/cipher, None = plaintext.
    pub fn tls(&self) -> Option<String> {
        self.tls.clone()
    }

    pub fn remote(&self) -> SocketAddr {
        self.remote
    }

    /// Whether the last EHLO offered `extension` (case-insensitive keyword).
    pub fn supports(&self, extension: &str) -> bool {
        self.extension(extension).is_some()
    }

    /// The parameters of an EHLO keyword (`SIZE` -> `"1000"`).
    fn extension(&self, keyword: &str) -> Option<&str> {
        self.extensions.iter().find_map(|line| {
            let (word, params) = line.split_once(' ').unwrap_or((line, ""));
            word.eq_ignore_ascii_case(keyword).then_some(params)
        })
    }

    /// MAIL, RCPT..., DATA, dot-stuffed body; pipelined when PIPELINING is offered.
    /// One outcome per recipient: the RCPT reply if refused, else the DATA reply.
    /// Err only when the transaction as a whole failed (MAIL refused, I/O, timeout).
    /// After an Err other than Rejected, drop the connection.
    pub async fn send(
        &mut self,
        sender: &str,
        recipients: &[String],
        message: &[u8],
    ) -> Result<Vec<RecipientOutcome>, ClientError> {
        if !(sender.is_empty() || safe_path(sender)) {
            return Err(ClientError::Protocol(format!(
                "invalid sender address {sender:?}"
            )));
        }
        let mut outcomes: Vec<Option<Reply>> = recipients
            .iter()
            .map(|r| {
                (r.is_empty() || !safe_path(r))
                    .then(|| Reply::new(553, "5.1.3", "invalid recipient address"))
            })
            .collect();
        let to_send: Vec<usize> = (0..recipients.len())
            .filter(|&i| outcomes[i].is_none())
            .collect();
        if to_send.is_empty() {
            return Ok(finish(recipients, outcomes));
        }

        let body = dot_stuff(message);
        let mut mail = format!("MAIL FROM:<{sender}>");
        if self.supports("SIZE") {
            mail.push_str(&format!(" SIZE={}", message.len()));
        }
        if self.supports("8BITMIME") && message.iter().any(|&b| b >= 0x80) {
            mail.push_str(" BODY=8BITMIME");
        }
        mail.push_str("\r\n");
        let rcpts: Vec<String> = to_send
            .iter()
            .map(|&i| format!("RCPT TO:<{}>\r\n", recipients[i]))
            .collect();

        let (mail_reply, rcpt_replies, data_reply) = if self.supports("PIPELINING") {
            let mut batch = mail.clone();
            rcpts.iter().for_each(|r| batch.push_str(r));
            batch.push_str("DATA\r\n");
            self.write(batch.as_bytes(), "MAIL", self.deadline())
                .await?;
            let mail_reply = self.read_reply("MAIL", self.deadline()).await?;
            let mut rcpt_replies = Vec::new();
            for _ in &rcpts {
                rcpt_replies.push(self.read_reply("RCPT", self.deadline()).await?);
            }
            let data_reply = self.read_reply("DATA", self.deadline()).await?;
            (mail_reply, rcpt_replies, Some(data_reply))
        } else {
            let mail_reply = self.command(&mail, "MAIL").await?;
            if mail_reply.code / 100 != 2 {
                return Err(ClientError::Rejected(mail_reply));
            }
            let mut rcpt_replies = Vec::new();
            for rcpt in &rcpts {
                rcpt_replies.push(self.command(rcpt, "RCPT").await?);
            }
            let data_reply = if rcpt_replies.iter().any(|r| r.code / 100 == 2) {
                Some(self.command("DATA\r\n", "DATA").await?)
            } else {
                None
            };
            (mail_reply, rcpt_replies, data_reply)
        };

        let mut accepted = Vec::new();
        for (&i, reply) in to_send.iter().zip(rcpt_replies) {
            if reply.code / 100 == 2 {
                accepted.push(i);
            } else {
                outcomes[i] = Some(reply);
            }
        }
        let data_open = data_reply.as_ref().is_some_and(|r| r.code == 354);
        if mail_reply.code / 100 != 2 || accepted.is_empty() {
            // RFC 2920 3.1: a 354 without valid recipients still needs an
            // (empty) message to get back in step.
            if data_open {
                self.write(b".\r\n", "end of data", self.deadline()).await?;
                self.read_reply("end of data", self.deadline()).await?;
            }
            self.rset().await?;
            if mail_reply.code / 100 != 2 {
                return Err(ClientError::Rejected(mail_reply));
            }
            return Ok(finish(recipients, outcomes));
        }
        let final_reply = match data_reply {
            Some(reply) if reply.code == 354 => {
                let deadline = Instant::now() + self.config.data_timeout;
                self.write(&body, "data", deadline).await?;
                self.read_reply("end of data", deadline).await?
            }
            Some(reply) => {
                self.rset().await?;
                reply
            }
            None => Reply::new(451, "4.3.0", "DATA not sent"),
        };
        for i in accepted {
            outcomes[i] = Some(final_reply.clone());
        }
        Ok(finish(recipients, outcomes))
    }

    /// Polite close: QUIT, wait briefly for 221, close.
    pub async fn quit(mut self) {
        self.quit_quietly().await;
    }

    async fn quit_quietly(&mut self) {
        let deadline = Instant::now() + self.config.command_timeout.min(Duration::from_secs(10));
        if self.write(b"QUIT\r\n", "QUIT", deadline).await.is_ok() {
            let _ = self.read_reply("QUIT", deadline).await;
        }
        let _ = tokio::time::timeout_at(deadline, self.stream.shutdown()).await;
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.config.command_timeout
    }

    /// EHLO, or HELO when the server does not know EHLO.
    async fn hello(&mut self) -> Result<(), ClientError> {
        let name = self.config.helo_name.clone();
        let reply = self.command(&format!("EHLO {name}\r\n"), "EHLO").await?;
        if reply.code == 250 {
            self.extensions = reply
                .lines
                .iter()
                .skip(1)
                .map(|l| l.trim().to_ascii_uppercase())
                .collect();
            return Ok(());
        }
        if !reply.is_permanent() {
            return Err(ClientError::Rejected(reply));
        }
        let reply = self.command(&format!("HELO {name}\r\n"), "HELO").await?;
        if reply.code != 250 {
            return Err(ClientError::Rejected(reply));
        }
        self.extensions.clear();
        Ok(())
    }

    async fn rset(&mut self) -> Result<(), ClientError> {
        self.command("RSET\r\n", "RSET").await.map(drop)
    }

    async fn upgrade(&mut self, server_name: &str) -> Result<(), ClientError> {
        // Anything the server sent after its 220 was sent in plaintext and
        // could be injected; it must not be read as a TLS-protected reply.
        self.inbuf.clear();
        self.replies = ReplyReader::new();
        // SNI only; the certificate is not checked against it (RFC 7435). A
        // name rustls cannot use falls back to the peer's address (no SNI).
        let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
            .unwrap_or_else(|_| rustls::pki_types::ServerName::IpAddress(self.remote.ip().into()));
        let config = verify::opportunistic_config().map_err(|e| ClientError::Tls(e.to_string()))?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let Some(plain) = self.stream.take_plain() else {
            return Err(ClientError::Tls("TLS already active".into()));
        };
        let tls =
            match tokio::time::timeout(self.config.command_timeout, connector.connect(name, plain))
                .await
            {
                Err(_) => return Err(ClientError::Timeout("TLS handshake")),
                Ok(Err(e)) => return Err(ClientError::Tls(e.to_string())),
                Ok(Ok(tls)) => tls,
            };
        self.tls = Some(crate::tls::describe(tls.get_ref().1));
        self.stream = MaybeTls::Tls(Box::new(tls));
        Ok(())
    }

    async fn command(&mut self, line: &str, phase: &'static str) -> Result<Reply, ClientError> {
        let deadline = self.deadline();
        self.write(line.as_bytes(), phase, deadline).await?;
        self.read_reply(phase, deadline).await
    }

    async fn write(
        &mut self,
        bytes: &[u8],
        phase: &'static str,
        deadline: Instant,
    ) -> Result<(), ClientError> {
        let write = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout_at(deadline, write).await {
            Err(_) => Err(ClientError::Timeout(phase)),
            Ok(Err(e)) => Err(ClientError::Io(e)),
            Ok(Ok(())) => Ok(()),
        }
    }

    async fn read_reply(
        &mut self,
        phase: &'static str,
        deadline: Instant,
    ) -> Result<Reply, ClientError> {
        loop {
            let (n, reply) = self.replies.feed(&self.inbuf);
            self.inbuf.drain(..n);
            match reply {
                Some(Ok(reply)) => return Ok(reply),
                Some(Err(e)) => return Err(ClientError::Protocol(e.to_string())),
                None => {}
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Err(ClientError::Timeout(phase)),
                Ok(Err(e)) => return Err(ClientError::Io(e)),
                Ok(Ok(0)) => {
                    return Err(ClientError::Io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("connection closed during {phase}"),
                    )));
                }
                Ok(Ok(n)) => self.inbuf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

fn finish(recipients: &[String], outcomes: Vec<Option<Reply>>) -> Vec<RecipientOutcome> {
    recipients
        .iter()
        .zip(outcomes)
        .map(|(recipient, reply)| RecipientOutcome {
            recipient: recipient.clone(),
            reply: reply.unwrap_or_else(|| Reply::new(451, "4.3.0", "no reply")),
        })
        .collect()
}
