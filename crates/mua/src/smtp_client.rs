//! Correo's own SMTP submission client (RFC 6409), small enough to read in
//! one sitting: it exists so that `mua send` can report every chunk of the
//! message as it is written (a byte-accurate progress bar), which lettre's
//! one-call `send_raw` cannot.
//!
//! One connection submits one message: connect (with a timeout), TLS from
//! the first byte (RFC 8314) or greeting, EHLO, **required** STARTTLS
//! (RFC 3207) and EHLO again; AUTH PLAIN (RFC 4616) or else LOGIN
//! (RFC 4954); MAIL FROM with SIZE (RFC 1870) and BODY=8BITMIME (RFC 6152)
//! when offered, one RCPT TO per recipient, DATA, the message dot-stuffed in
//! chunks ([`DotStuffer`]), the final reply, QUIT.
//!
//! Replies are read with `correo_smtp`'s sans-IO [`ReplyReader`] (multi-line
//! replies, bounded line length and count). Every write has its own timeout,
//! so a large message on a slow link is fine; every reply has one deadline
//! for all of it, so neither a silent server nor one trickling a byte at a
//! time holds the client. The reply to the end of the message has a longer
//! deadline of its own ([`DATA_TIMEOUT`]). The protocol runs over any
//! `AsyncRead + AsyncWrite` ([`Session`]), which is how the tests drive it
//! over an in-memory pipe.
//!
//! SECURITY: the password is only ever sent inside TLS — with STARTTLS, a
//! server that does not offer it is refused before AUTH, and whatever the
//! server sent after its `220` to STARTTLS is dropped, never read as a reply
//! inside TLS (the client side of CVE-2011-0411). The message is normalized
//! to CRLF while it is stuffed, so it never carries a bare CR or LF that a
//! receiver could read as an end of data (SMTP smuggling). Envelope
//! addresses are validated by the caller (printable ASCII only, so no CR or
//! LF), so no command can be injected.

use correo_smtp::reader::ReplyReader;
use correo_smtp::reply::Reply;
use rustls::pki_types::ServerName;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::profile::Security;

/// How much of the message is stuffed and written between two progress
/// reports.
pub(crate) const CHUNK: usize = 64 * 1024;

/// A QUIT after the message was accepted is a courtesy: do not keep the
/// user waiting long for its `221`.
const QUIT_WAIT: Duration = Duration::from_secs(5);

/// How long to wait for the reply to the end of the message: RFC 5321
/// 4.5.3.2.6 recommends 10 minutes, and Correo's MSA answers only once it
/// has handed the message to an MTA.
pub(crate) const DATA_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// The step whose timeout means the server has the whole message but has
/// not said what it did with it.
pub(crate) const END_OF_DATA: &str = "the end of the message";

/// Reports progress: bytes of the message sent so far, and its size.
pub(crate) type Progress<'a> = &'a mut (dyn FnMut(u64, u64) + Send);

/// Where to submit, and how.
pub(crate) struct Target<'a> {
    pub host: &'a str,
    pub port: u16,
    pub security: Security,
    /// Trusts only the profile's CA.
    pub tls: Arc<rustls::ClientConfig>,
    /// The name the server's certificate must carry.
    pub server_name: ServerName<'static>,
    /// For the connect, the TLS handshake, each write and each reply.
    pub timeout: Duration,
    /// For the reply to the end of the message instead ([`DATA_TIMEOUT`]).
    pub data_timeout: Duration,
}

/// What to submit, as whom.
pub(crate) struct Submission<'a> {
    pub user: &'a str,
    pub password: &'a str,
    /// Addresses validated by `correo_smtp::Address`: printable ASCII only,
    /// so no CR or LF can end a command line early. A quoted local part may
    /// still hold spaces or angle brackets (`"a <b>"@example.test`).
    pub sender: &'a str,
    pub recipients: &'a [String],
    /// The message as composed; stuffed and normalized on the way out.
    pub message: &'a [u8],
}

/// Why a submission failed, with the step it failed at.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    #[error("{0}")]
    Connect(io::Error),
    #[error("{0}")]
    Handshake(io::Error),
    #[error("i/o error during {during}: {source}")]
    Io {
        during: &'static str,
        source: io::Error,
    },
    #[error("no answer in time during {during}")]
    Timeout { during: &'static str },
    #[error("the server closed the connection during {during}")]
    Closed { during: &'static str },
    #[error("unexpected reply during {during}: {detail}")]
    Protocol {
        during: &'static str,
        detail: String,
    },
    /// A 4xx or 5xx reply.
    #[error("{reply}")]
    Refused {
        during: &'static str,
        /// For a refused RCPT TO.
        recipient: Option<String>,
        reply: Reply,
    },
    #[error(
        "the server does not offer STARTTLS, so the password would cross in clear; not going on"
    )]
    NoStarttls,
    #[error("STARTTLS refused: {0}")]
    StarttlsRefused(Reply),
    #[error("{}", offered_text(.offered))]
    NoAuth { offered: Vec<String> },
}

fn offered_text(offered: &[String]) -> String {
    if offered.is_empty() {
        "it offers no AUTH mechanism".to_string()
    } else {
        format!("it offers AUTH {}", offered.join(" "))
    }
}

/// Submits one message; returns the server's final reply to it.
pub(crate) async fn send(
    target: &Target<'_>,
    submission: &Submission<'_>,
    on_progress: Progress<'_>,
) -> Result<Reply, ClientError> {
    let tcp = tokio::time::timeout(
        target.timeout,
        TcpStream::connect((target.host, target.port)),
    )
    .await
    .map_err(|_| ClientError::Timeout {
        during: "the connect",
    })?
    .map_err(ClientError::Connect)?;
    let helo = helo_name(&tcp);
    let tcp = match target.security {
        Security::Tls => tcp,
        Security::Starttls => {
            let mut session = Session::new(tcp, target.timeout);
            session.greeting().await?;
            let extensions = session.ehlo(&helo).await?;
            if !extensions.has("STARTTLS") {
                session.quit().await;
                return Err(ClientError::NoStarttls);
            }
            let reply = session.command("STARTTLS", "STARTTLS").await?;
            if reply.code != 220 {
                session.quit().await;
                return Err(ClientError::StarttlsRefused(reply));
            }
            // Anything pipelined after the 220 came in plaintext: dropped.
            session.into_stream()
        }
    };
    let connector = tokio_rustls::TlsConnector::from(target.tls.clone());
    let tls = tokio::time::timeout(
        target.timeout,
        connector.connect(target.server_name.clone(), tcp),
    )
    .await
    .map_err(|_| ClientError::Timeout {
        during: "the TLS handshake",
    })?
    .map_err(ClientError::Handshake)?;
    let mut session = Session::new(tls, target.timeout).with_data_timeout(target.data_timeout);
    if target.security == Security::Tls {
        session.greeting().await?;
    }
    session.submit(&helo, submission, on_progress).await
}

/// EHLO's argument: the address literal of our end of the connection
/// (RFC 5321 4.1.4, for a client without an obvious name).
fn helo_name(tcp: &TcpStream) -> String {
    match tcp.local_addr().map(|a| a.ip()) {
        Ok(std::net::IpAddr::V4(ip)) => format!("[{ip}]"),
        Ok(std::net::IpAddr::V6(ip)) => format!("[IPv6:{ip}]"),
        Err(_) => "[127.0.0.1]".to_string(),
    }
}

/// The EHLO keywords the server offered, uppercased (`"SIZE 1000"`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Extensions(Vec<String>);

impl Extensions {
    fn from_reply(reply: &Reply) -> Extensions {
        // The first line is the server's name and greeting.
        Extensions(
            reply
                .lines
                .iter()
                .skip(1)
                .map(|l| l.trim().to_ascii_uppercase())
                .collect(),
        )
    }

    fn params(&self, keyword: &str) -> Option<Vec<&str>> {
        self.0.iter().find_map(|line| {
            let mut words = line.split([' ', '=']).filter(|w| !w.is_empty());
            (words.next() == Some(keyword)).then(|| words.collect())
        })
    }

    fn has(&self, keyword: &str) -> bool {
        self.params(keyword).is_some()
    }

    fn auth_mechanisms(&self) -> Vec<String> {
        self.params("AUTH")
            .unwrap_or_default()
            .into_iter()
            .map(str::to_string)
            .collect()
    }
}

/// One SMTP session over a stream, client side.
pub(crate) struct Session<S> {
    stream: S,
    /// Bytes read but not yet part of a reply.
    inbuf: Vec<u8>,
    replies: ReplyReader,
    timeout: Duration,
    /// For the reply to the end of the message.
    data_timeout: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    pub(crate) fn new(stream: S, timeout: Duration) -> Self {
        Session {
            stream,
            inbuf: Vec::new(),
            replies: ReplyReader::new(),
            timeout,
            data_timeout: DATA_TIMEOUT,
        }
    }

    pub(crate) fn with_data_timeout(mut self, data_timeout: Duration) -> Self {
        self.data_timeout = data_timeout;
        self
    }

    /// The stream, for the TLS handshake; buffered bytes are dropped.
    fn into_stream(self) -> S {
        self.stream
    }

    /// Reads the server's `220` greeting.
    pub(crate) async fn greeting(&mut self) -> Result<(), ClientError> {
        let reply = self.read_reply("the greeting").await?;
        expect(reply, 220, "the greeting", None).map(drop)
    }

    /// EHLO; returns what the server offers.
    async fn ehlo(&mut self, helo: &str) -> Result<Extensions, ClientError> {
        let reply = self.command(&format!("EHLO {helo}"), "EHLO").await?;
        let reply = expect(reply, 250, "EHLO", None)?;
        Ok(Extensions::from_reply(&reply))
    }

    /// Everything after TLS is up (and after the greeting): EHLO, AUTH,
    /// the transaction, QUIT.
    pub(crate) async fn submit(
        &mut self,
        helo: &str,
        submission: &Submission<'_>,
        on_progress: Progress<'_>,
    ) -> Result<Reply, ClientError> {
        let extensions = self.ehlo(helo).await?;
        let result = self.transaction(&extensions, submission, on_progress).await;
        self.quit().await;
        result
    }

    async fn transaction(
        &mut self,
        extensions: &Extensions,
        submission: &Submission<'_>,
        on_progress: Progress<'_>,
    ) -> Result<Reply, ClientError> {
        self.auth(extensions, submission.user, submission.password)
            .await?;
        let message = submission.message;
        let mut mail = format!("MAIL FROM:<{}>", submission.sender);
        if extensions.has("SIZE") {
            mail.push_str(&format!(" SIZE={}", message.len()));
        }
        if extensions.has("8BITMIME") && message.iter().any(|b| !b.is_ascii()) {
            mail.push_str(" BODY=8BITMIME");
        }
        let reply = self.command(&mail, "MAIL FROM").await?;
        expect_success(reply, "MAIL FROM", None)?;
        for recipient in submission.recipients {
            let reply = self
                .command(&format!("RCPT TO:<{recipient}>"), "RCPT TO")
                .await?;
            // 251 (will forward) is as good as 250 (RFC 5321 4.3.2).
            expect_success(reply, "RCPT TO", Some(recipient))?;
        }
        let reply = self.command("DATA", "DATA").await?;
        expect(reply, 354, "DATA", None)?;
        if let Err(e) = self.write_message(message, on_progress).await {
            // A server that gives up mid-message may have said why.
            return Err(match e {
                ClientError::Io { .. } => match self.read_reply("the message").await {
                    Ok(reply) if !reply.is_positive() => refused(reply, "the message", None),
                    _ => e,
                },
                e => e,
            });
        }
        let reply = self
            .read_reply_within(END_OF_DATA, self.data_timeout)
            .await?;
        expect(reply, 250, END_OF_DATA, None)
    }

    /// AUTH PLAIN if offered, else LOGIN.
    async fn auth(
        &mut self,
        extensions: &Extensions,
        user: &str,
        password: &str,
    ) -> Result<(), ClientError> {
        use base64::Engine as _;
        let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
        let offered = extensions.auth_mechanisms();
        let reply = if offered.iter().any(|m| m == "PLAIN") {
            let response = b64(format!("\0{user}\0{password}").as_bytes());
            self.command(&format!("AUTH PLAIN {response}"), "AUTH")
                .await?
        } else if offered.iter().any(|m| m == "LOGIN") {
            let reply = self.command("AUTH LOGIN", "AUTH").await?;
            expect(reply, 334, "AUTH", None)?;
            let reply = self.command(&b64(user.as_bytes()), "AUTH").await?;
            expect(reply, 334, "AUTH", None)?;
            self.command(&b64(password.as_bytes()), "AUTH").await?
        } else {
            return Err(ClientError::NoAuth { offered });
        };
        expect(reply, 235, "AUTH", None).map(drop)
    }

    /// The message, dot-stuffed and CRLF-normalized, then `.` CRLF;
    /// `on_progress` hears of every chunk once it is written.
    async fn write_message(
        &mut self,
        message: &[u8],
        on_progress: Progress<'_>,
    ) -> Result<(), ClientError> {
        const DURING: &str = "the message";
        let total = message.len() as u64;
        let mut stuffer = DotStuffer::default();
        // Stuffing adds at most one octet per input octet.
        let mut out = Vec::with_capacity(2 * CHUNK.min(message.len()) + 5);
        let mut sent = 0;
        on_progress(sent, total);
        for chunk in message.chunks(CHUNK) {
            out.clear();
            stuffer.feed(chunk, &mut out);
            self.write(&out, DURING).await?;
            sent += chunk.len() as u64;
            on_progress(sent, total);
        }
        out.clear();
        stuffer.finish(&mut out);
        self.write(&out, DURING).await?;
        self.flush(DURING).await
    }

    /// QUIT, best effort: the outcome is already known.
    async fn quit(&mut self) {
        self.timeout = self.timeout.min(QUIT_WAIT);
        if self.command("QUIT", "QUIT").await.is_ok() {
            let _ = tokio::time::timeout(self.timeout, self.stream.shutdown()).await;
        }
    }

    /// Sends one command line and reads its reply.
    async fn command(&mut self, line: &str, during: &'static str) -> Result<Reply, ClientError> {
        let mut bytes = Vec::with_capacity(line.len() + 2);
        bytes.extend_from_slice(line.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        self.write(&bytes, during).await?;
        self.flush(during).await?;
        self.read_reply(during).await
    }

    async fn write(&mut self, bytes: &[u8], during: &'static str) -> Result<(), ClientError> {
        tokio::time::timeout(self.timeout, self.stream.write_all(bytes))
            .await
            .map_err(|_| ClientError::Timeout { during })?
            .map_err(|source| ClientError::Io { during, source })
    }

    async fn flush(&mut self, during: &'static str) -> Result<(), ClientError> {
        tokio::time::timeout(self.timeout, self.stream.flush())
            .await
            .map_err(|_| ClientError::Timeout { during })?
            .map_err(|source| ClientError::Io { during, source })
    }

    /// Reads one complete (possibly multi-line) reply within the timeout.
    async fn read_reply(&mut self, during: &'static str) -> Result<Reply, ClientError> {
        self.read_reply_within(during, self.timeout).await
    }

    /// Reads one complete reply, all of it within `wait`: a deadline for
    /// the whole reply, not for each read, so a server trickling bytes
    /// cannot keep the client forever.
    async fn read_reply_within(
        &mut self,
        during: &'static str,
        wait: Duration,
    ) -> Result<Reply, ClientError> {
        let deadline = Instant::now() + wait;
        loop {
            while !self.inbuf.is_empty() {
                let (n, reply) = self.replies.feed(&self.inbuf);
                self.inbuf.drain(..n);
                match reply {
                    Some(Ok(reply)) => return Ok(reply),
                    Some(Err(e)) => {
                        return Err(ClientError::Protocol {
                            during,
                            detail: e.to_string(),
                        });
                    }
                    None if n == 0 => break,
                    None => {}
                }
            }
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut buf))
                .await
                .map_err(|_| ClientError::Timeout { during })?
                .map_err(|source| ClientError::Io { during, source })?;
            if n == 0 {
                return Err(ClientError::Closed { during });
            }
            self.inbuf.extend_from_slice(&buf[..n]);
        }
    }
}

/// `reply` if its code is `code`; a refusal for 4xx/5xx; a protocol error
/// for any other positive code.
fn expect(
    reply: Reply,
    code: u16,
    during: &'static str,
    recipient: Option<&str>,
) -> Result<Reply, ClientError> {
    check(reply, |c| c == code, during, recipient)
}

/// Like [`expect`], for any 2xx.
fn expect_success(
    reply: Reply,
    during: &'static str,
    recipient: Option<&str>,
) -> Result<Reply, ClientError> {
    check(reply, |c| (200..300).contains(&c), during, recipient)
}

fn check(
    reply: Reply,
    ok: impl FnOnce(u16) -> bool,
    during: &'static str,
    recipient: Option<&str>,
) -> Result<Reply, ClientError> {
    if ok(reply.code) {
        Ok(reply)
    } else if reply.is_positive() {
        Err(ClientError::Protocol {
            during,
            detail: reply.to_string(),
        })
    } else {
        Err(refused(reply, during, recipient))
    }
}

fn refused(reply: Reply, during: &'static str, recipient: Option<&str>) -> ClientError {
    ClientError::Refused {
        during,
        recipient: recipient.map(str::to_string),
        reply,
    }
}

/// Dot-stuffing (RFC 5321 4.5.2) with CRLF normalization, fed the message
/// chunk by chunk: the streaming form of [`correo_smtp::reader::dot_stuff`],
/// byte for byte the same output however the message is split. CRLF, a
/// lone CR and a lone LF each become one CRLF (a CR ending one chunk and an
/// LF starting the next are one line end); a `.` at the start of a line
/// gets another in front.
#[derive(Debug)]
pub(crate) struct DotStuffer {
    at_line_start: bool,
    /// The last octet was a CR: an LF now belongs to its line end.
    after_cr: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer {
            at_line_start: true,
            after_cr: false,
        }
    }
}

impl DotStuffer {
    /// Appends the stuffed form of `input` to `out`.
    pub(crate) fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            if std::mem::take(&mut self.after_cr) && b == b'\n' {
                i += 1;
                continue;
            }
            match b {
                b'\r' | b'\n' => {
                    out.extend_from_slice(b"\r\n");
                    self.at_line_start = true;
                    self.after_cr = b == b'\r';
                    i += 1;
                }
                _ => {
                    if self.at_line_start && b == b'.' {
                        out.push(b'.');
                    }
                    self.at_line_start = false;
                    // Copy up to the next line end in one go.
                    let rest = &input[i..];
                    let n = rest
                        .iter()
                        .position(|&c| c == b'\r' || c == b'\n')
                        .unwrap_or(rest.len());
                    out.extend_from_slice(&rest[..n]);
                    i += n;
                }
            }
        }
    }

    /// Ends the last line if it is open and appends the end-of-data line.
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        *self = DotStuffer::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use correo_smtp::reader::dot_stuff;

    /// a@example.test (password "pw") sending `message` to `recipients`.
    fn alice_to<'a>(recipients: &'a [String], message: &'a [u8]) -> Submission<'a> {
        Submission {
            user: "a@example.test",
            password: "pw",
            sender: "a@example.test",
            recipients,
            message,
        }
    }

    fn stuffed(chunks: &[&[u8]]) -> Vec<u8> {
        let mut stuffer = DotStuffer::default();
        let mut out = Vec::new();
        for chunk in chunks {
            stuffer.feed(chunk, &mut out);
        }
        stuffer.finish(&mut out);
        out
    }

    #[test]
    fn dot_at_line_start_across_a_chunk_boundary() {
        assert_eq!(stuffed(&[b"a\r\n", b".b\r\n"]), b"a\r\n..b\r\n.\r\n");
        assert_eq!(stuffed(&[b"a\r\n.", b"\r\n"]), b"a\r\n..\r\n.\r\n");
        assert_eq!(stuffed(&[b".", b"."]), b"...\r\n.\r\n");
        // Not at a line start: left alone.
        assert_eq!(stuffed(&[b"a", b".b"]), b"a.b\r\n.\r\n");
    }

    #[test]
    fn crlf_split_across_chunks_is_one_line_end() {
        assert_eq!(stuffed(&[b"a\r", b"\n.b"]), b"a\r\n..b\r\n.\r\n");
        assert_eq!(stuffed(&[b"a\r", b"\r\n"]), b"a\r\n\r\n.\r\n");
        assert_eq!(stuffed(&[b"a\r", b"", b"\nb"]), b"a\r\nb\r\n.\r\n");
    }

    #[test]
    fn bare_line_ends_become_crlf() {
        assert_eq!(stuffed(&[b"a\nb\rc\r\n"]), b"a\r\nb\r\nc\r\n.\r\n");
        assert_eq!(stuffed(&[b"a\n.\nb"]), b"a\r\n..\r\nb\r\n.\r\n");
        assert_eq!(stuffed(&[b"\n\n"]), b"\r\n\r\n.\r\n");
    }

    #[test]
    fn final_crlf() {
        assert_eq!(stuffed(&[b"a"]), b"a\r\n.\r\n");
        assert_eq!(stuffed(&[b"a\r\n"]), b"a\r\n.\r\n");
        assert_eq!(stuffed(&[b"a\r"]), b"a\r\n.\r\n");
        assert_eq!(stuffed(&[]), b".\r\n");
    }

    /// However the message is cut, the output is correo-smtp's
    /// whole-message `dot_stuff`.
    #[test]
    fn chunking_never_changes_the_output() {
        let alphabet: &[u8] = b"\r\n.ab\xc3";
        let mut seed: u64 = 0x9e3779b97f4a7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..2000 {
            let len = (next() % 40) as usize;
            let input: Vec<u8> = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let mut chunks = Vec::new();
            let mut pos = 0;
            while pos < input.len() {
                let end = (pos + (next() % 5) as usize).min(input.len());
                chunks.push(&input[pos..end]);
                pos = end;
            }
            assert_eq!(
                stuffed(&chunks),
                dot_stuff(&input),
                "{input:?} as {chunks:?}"
            );
        }
    }

    #[test]
    fn extensions() {
        let reply = Reply::multiline(
            250,
            "",
            vec![
                "msa.example.test".into(),
                "size 1000".into(),
                "AUTH=LOGIN".into(),
                "8BITMIME".into(),
            ],
        );
        let ext = Extensions::from_reply(&reply);
        assert!(ext.has("SIZE") && ext.has("8BITMIME") && !ext.has("STARTTLS"));
        assert_eq!(ext.auth_mechanisms(), ["LOGIN"]);
        // The greeting line is not a keyword.
        assert!(!ext.has("MSA.EXAMPLE.TEST"));
    }

    /// The session over an in-memory pipe, against a scripted server:
    /// exact commands, LOGIN when PLAIN is not offered, no SIZE or BODY
    /// when not offered, multi-line replies, and the progress reports.
    #[tokio::test]
    async fn session_over_a_pipe() {
        let (client, mut server) = tokio::io::duplex(1024);
        let message = b"Subject: x\r\n\r\n.hi\n".to_vec();
        let server = tokio::spawn(async move {
            let mut log = Vec::new();
            let mut buf = Vec::new();
            let script: &[(&[u8], &str)] = &[
                (b"220 test ESMTP\r\n", ""),
                (
                    b"250-test\r\n250-AUTH LOGIN\r\n250 PIPELINING\r\n",
                    "EHLO [127.0.0.1]",
                ),
                (b"334 VXNlcm5hbWU6\r\n", "AUTH LOGIN"),
                (b"334 UGFzc3dvcmQ6\r\n", "YUBleGFtcGxlLnRlc3Q="),
                (b"235 2.7.0 ok\r\n", "cHc="),
                (b"250 2.1.0 ok\r\n", "MAIL FROM:<a@example.test>"),
                // 251 is success too (RFC 5321 4.3.2).
                (b"251 2.1.5 will forward\r\n", "RCPT TO:<b@example.test>"),
                (b"354 go\r\n", "DATA"),
            ];
            for (reply, expect) in script {
                if !expect.is_empty() {
                    log.push(read_line(&mut server, &mut buf).await);
                    assert_eq!(log.last().unwrap(), expect);
                }
                server.write_all(reply).await.unwrap();
            }
            let data = read_until(&mut server, &mut buf, b"\r\n.\r\n").await;
            server
                .write_all(b"250-2.0.0 ok\r\n250 2.0.0 queued as Q1\r\n")
                .await
                .unwrap();
            assert_eq!(read_line(&mut server, &mut buf).await, "QUIT");
            server.write_all(b"221 bye\r\n").await.unwrap();
            data
        });
        let recipients = vec!["b@example.test".to_string()];
        let submission = alice_to(&recipients, &message);
        let mut reports = Vec::new();
        let mut session = Session::new(client, Duration::from_secs(5));
        session.greeting().await.unwrap();
        let reply = session
            .submit("[127.0.0.1]", &submission, &mut |s, t| reports.push((s, t)))
            .await
            .unwrap();
        assert_eq!(reply.lines, ["ok", "queued as Q1"]);
        assert_eq!(server.await.unwrap(), dot_stuff(&message));
        assert_eq!(reports, [(0, 18), (18, 18)]);
    }

    /// A greeting that never comes is a timeout, not a hang.
    #[tokio::test]
    async fn silent_server_times_out() {
        let (client, _server) = tokio::io::duplex(64);
        let mut session = Session::new(client, Duration::from_millis(50));
        let err = session.greeting().await.unwrap_err();
        assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
    }

    /// A server sending a byte well within each read's timeout but never
    /// ending the line still runs into the deadline for the whole reply.
    #[tokio::test]
    async fn trickling_server_times_out() {
        let (client, mut server) = tokio::io::duplex(64);
        let trickle = tokio::spawn(async move {
            server.write_all(b"220 ").await.unwrap();
            // Until the client goes away.
            while server.write_all(b"x").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let mut session = Session::new(client, Duration::from_millis(300));
        let err = tokio::time::timeout(Duration::from_secs(10), session.greeting())
            .await
            .expect("the reply has no deadline")
            .unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::Timeout {
                    during: "the greeting"
                }
            ),
            "{err:?}"
        );
        drop(session);
        trickle.await.unwrap();
    }

    /// The reply to the end of the message gets the longer data timeout,
    /// not the one for other replies.
    #[tokio::test]
    async fn end_of_data_reply_may_take_longer() {
        let (client, mut server) = tokio::io::duplex(1024);
        let server = tokio::spawn(async move {
            let mut buf = Vec::new();
            server.write_all(b"220 test ESMTP\r\n").await.unwrap();
            read_line(&mut server, &mut buf).await; // EHLO
            server
                .write_all(b"250-test\r\n250 AUTH PLAIN\r\n")
                .await
                .unwrap();
            for reply in [
                &b"235 ok\r\n"[..],
                b"250 ok\r\n",
                b"250 ok\r\n",
                b"354 go\r\n",
            ] {
                read_line(&mut server, &mut buf).await;
                server.write_all(reply).await.unwrap();
            }
            read_until(&mut server, &mut buf, b"\r\n.\r\n").await;
            tokio::time::sleep(Duration::from_millis(1500)).await;
            server.write_all(b"250 queued as Q2\r\n").await.unwrap();
            read_line(&mut server, &mut buf).await; // QUIT
            server.write_all(b"221 bye\r\n").await.unwrap();
        });
        let recipients = vec!["b@example.test".to_string()];
        let submission = alice_to(&recipients, b"Subject: x\r\n\r\nhi\r\n");
        let mut session = Session::new(client, Duration::from_millis(500))
            .with_data_timeout(Duration::from_secs(20));
        session.greeting().await.unwrap();
        let reply = session
            .submit("[127.0.0.1]", &submission, &mut |_, _| {})
            .await
            .unwrap();
        assert_eq!(reply.lines, ["queued as Q2"]);
        server.await.unwrap();
    }

    #[test]
    fn any_2xx_is_success_for_mail_and_rcpt() {
        for code in [250, 251, 252] {
            let reply = Reply::new(code, "2.1.5", "ok");
            assert!(expect_success(reply, "RCPT TO", None).is_ok(), "{code}");
        }
        let err = expect_success(Reply::new(354, "", "go"), "RCPT TO", None).unwrap_err();
        assert!(matches!(err, ClientError::Protocol { .. }), "{err:?}");
        let err = expect_success(Reply::new(550, "5.1.1", "no"), "RCPT TO", Some("b@x.test"))
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::Refused { recipient: Some(r), .. } if r == "b@x.test"),
            "{err:?}"
        );
        // Where one code is required, another 2xx is still unexpected.
        let err = expect(Reply::new(251, "", "ok"), 250, END_OF_DATA, None).unwrap_err();
        assert!(matches!(err, ClientError::Protocol { .. }), "{err:?}");
    }

    async fn read_line<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> String {
        let line = read_until(s, buf, b"\r\n").await;
        String::from_utf8(line[..line.len() - 2].to_vec()).unwrap()
    }

    /// Reads up to and including `end`; what follows stays in `buf`.
    async fn read_until<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>, end: &[u8]) -> Vec<u8> {
        loop {
            if let Some(at) = buf.windows(end.len()).position(|w| w == end) {
                return buf.drain(..at + end.len()).collect();
            }
            let mut chunk = [0u8; 8192];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "client closed early; got {:?}",
                String::from_utf8_lossy(buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    }
}
