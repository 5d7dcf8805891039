//! Shared test fixtures: a recording Handler, a raw line-based SMTP client
//! over any stream, and a throwaway certificate.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use correo_smtp::server::{Envelope, Handler, SessionInfo};
use correo_smtp::{Address, Reply, ReversePath};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[derive(Debug, Clone)]
pub struct Received {
    pub sender: String,
    pub recipients: Vec<String>,
    pub message: Vec<u8>,
    pub info: SessionInfo,
    pub envelope: Envelope,
}

/// Records what it sees. Policy: sender `blocked@...` refused, recipient
/// `unknown@...` refused, user `alice` with password `secret`.
#[derive(Clone, Default)]
pub struct TestHandler {
    pub messages: Arc<Mutex<Vec<Received>>>,
    pub mails: Arc<Mutex<Vec<String>>>,
    pub resets: Arc<Mutex<usize>>,
}

impl Handler for TestHandler {
    async fn authenticate(
        &mut self,
        _info: &SessionInfo,
        username: &str,
        password: &str,
    ) -> Result<String, Reply> {
        if username == "alice" && password == "secret" {
            Ok("alice@example.test".to_owned())
        } else {
            Err(Reply::new(535, "5.7.8", "authentication failed"))
        }
    }

    async fn mail(&mut self, _info: &SessionInfo, sender: &ReversePath) -> Result<(), Reply> {
        self.mails.lock().unwrap().push(sender.as_str().to_owned());
        if sender.as_str().starts_with("blocked@") {
            return Err(Reply::new(550, "5.7.1", "sender blocked"));
        }
        Ok(())
    }

    async fn rcpt(
        &mut self,
        _info: &SessionInfo,
        _envelope: &Envelope,
        recipient: &Address,
    ) -> Result<(), Reply> {
        if recipient.local_part() == "unknown" {
            return Err(Reply::new(550, "5.1.1", "no such user"));
        }
        Ok(())
    }

    async fn data(&mut self, info: &SessionInfo, envelope: &Envelope, message: Vec<u8>) -> Reply {
        if message.windows(9).any(|w| w == b"TEMPFAIL!") {
            return Reply::new(451, "4.3.0", "try later");
        }
        let mut messages = self.messages.lock().unwrap();
        messages.push(Received {
            sender: envelope.sender.as_str().to_owned(),
            recipients: envelope.recipients.iter().map(|r| r.to_string()).collect(),
            message,
            info: info.clone(),
            envelope: envelope.clone(),
        });
        Reply::new(250, "2.0.0", format!("queued as {}", messages.len()))
    }

    fn reset(&mut self) {
        *self.resets.lock().unwrap() += 1;
    }
}

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A dumb client that writes raw bytes and reads whole replies.
pub struct RawClient {
    pub stream: Box<dyn Io>,
    buf: Vec<u8>,
}

impl RawClient {
    pub fn new(stream: impl Io + 'static) -> Self {
        RawClient {
            stream: Box::new(stream),
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// One complete reply as text ("250-a\r\n250 b\r\n"), or None at EOF.
    pub async fn reply(&mut self) -> Option<String> {
        let mut text = String::new();
        loop {
            while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let line = String::from_utf8(line).unwrap();
                text.push_str(&line);
                if line.len() < 4 || line.as_bytes()[3] == b' ' {
                    return Some(text);
                }
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                self.stream.read(&mut chunk),
            )
            .await
            .expect("reply timed out")
            .unwrap_or(0);
            if n == 0 {
                return if text.is_empty() { None } else { Some(text) };
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads a reply and checks it starts with `prefix` (e.g. "250 2.1.0").
    pub async fn expect(&mut self, prefix: &str) -> String {
        let reply = self
            .reply()
            .await
            .unwrap_or_else(|| panic!("EOF, expected {prefix}"));
        assert!(
            reply.starts_with(prefix),
            "expected {prefix:?}, got {reply:?}"
        );
        reply
    }

    pub async fn cmd(&mut self, line: &str, prefix: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.expect(prefix).await
    }

    /// True when the server has closed the connection.
    pub async fn is_closed(&mut self) -> bool {
        self.reply().await.is_none()
    }

    pub fn into_stream(self) -> Box<dyn Io> {
        assert!(
            self.buf.is_empty(),
            "unread bytes before TLS: {:?}",
            self.buf
        );
        self.stream
    }
}

pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        correo_runtime::tls::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        correo_runtime::pki::ensure_ca(dir.path()).unwrap();
        correo_runtime::pki::ensure_leaf(dir.path(), "mx", &["localhost", "127.0.0.1"]).unwrap();
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        correo_runtime::tls::smtp_server_config(&self.path("mx.pem"), &self.path("mx.key")).unwrap()
    }

    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        correo_runtime::tls::client_config_trusting(&self.path("ca.pem")).unwrap()
    }

    /// TLS client handshake over `stream`, verifying our test CA.
    pub async fn connect(
        &self,
        stream: Box<dyn Io>,
    ) -> tokio_rustls::client::TlsStream<Box<dyn Io>> {
        let connector = tokio_rustls::TlsConnector::from(self.client_config());
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        connector.connect(name, stream).await.unwrap()
    }
}
