//! The connection under a session: plain or TLS stream, the input buffer
//! shared by the command and DATA readers, batched replies, timeouts and the
//! shutdown signal. Everything that can block lives here.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::reply::Reply;
use crate::tls::MaybeTls;

const READ_CHUNK: usize = 8192;

/// The transport, which STARTTLS swaps from plain to TLS in place.
pub(crate) type Stream<S> = MaybeTls<S, tokio_rustls::server::TlsStream<S>>;

/// Why a session stops other than by QUIT.
#[derive(Debug)]
pub(crate) enum End {
    /// The client closed the connection.
    Eof,
    Timeout,
    Shutdown,
    Io(io::Error),
}

pub(crate) struct Conn<'a, S, F> {
    pub stream: Stream<S>,
    inbuf: Vec<u8>,
    pos: usize,
    out: Vec<u8>,
    shutdown: Pin<&'a mut F>,
    shutdown_fired: bool,
    write_timeout: Duration,
}

impl<'a, S, F> Conn<'a, S, F>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Future<Output = ()>,
{
    pub fn new(stream: S, shutdown: Pin<&'a mut F>, write_timeout: Duration) -> Self {
        Conn {
            stream: MaybeTls::Plain(stream),
            inbuf: Vec::new(),
            pos: 0,
            out: Vec::new(),
            shutdown,
            shutdown_fired: false,
            write_timeout,
        }
    }

    /// Bytes received and not yet consumed by a reader.
    pub fn pending(&self) -> &[u8] {
        &self.inbuf[self.pos..]
    }

    pub fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.inbuf.len());
        if self.pos == self.inbuf.len() {
            self.inbuf.clear();
            self.pos = 0;
        }
    }

    /// Drops everything received but not yet read (STARTTLS, RFC 3207 4.2).
    pub fn discard_input(&mut self) {
        self.inbuf.clear();
        self.pos = 0;
    }

    /// Queues a reply; replies are sent in batches (RFC 2920) by `flush`,
    /// which runs before every read.
    pub fn queue(&mut self, reply: &Reply) {
        correo_runtime::metrics::smtp_reply(reply.code);
        self.out.extend_from_slice(&reply.to_wire());
    }

    pub async fn flush(&mut self) -> Result<(), End> {
        if self.out.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.out);
        // A client that never reads would otherwise block us forever.
        let write = async {
            self.stream.write_all(&out).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(self.write_timeout, write).await {
            Err(_) => Err(End::Timeout),
            Ok(Err(e)) => Err(End::Io(e)),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// Sends pending replies, then waits for more input until `deadline`.
    pub async fn fill(&mut self, deadline: Instant) -> Result<(), End> {
        if self.shutdown_fired {
            return Err(End::Shutdown);
        }
        self.flush().await?;
        if self.pos > 0 {
            self.inbuf.drain(..self.pos);
            self.pos = 0;
        }
        let start = self.inbuf.len();
        self.inbuf.resize(start + READ_CHUNK, 0);
        let result = tokio::select! {
            biased;
            _ = self.shutdown.as_mut() => {
                self.shutdown_fired = true;
                Err(End::Shutdown)
            }
            r = tokio::time::timeout_at(deadline, self.stream.read(&mut self.inbuf[start..])) => match r {
                Err(_) => Err(End::Timeout),
                Ok(Err(e)) => Err(End::Io(e)),
                Ok(Ok(0)) => Err(End::Eof),
                Ok(Ok(n)) => Ok(start + n),
            },
        };
        match result {
            Ok(len) => {
                self.inbuf.truncate(len);
                Ok(())
            }
            Err(e) => {
                self.inbuf.truncate(start);
                Err(e)
            }
        }
    }

    /// Before the greeting: waits up to `delay` for input (without consuming
    /// it) and says whether the client sent anything. Bytes already
    /// buffered count even with a zero delay.
    pub async fn talks_within(&mut self, delay: Duration) -> Result<bool, End> {
        if !self.pending().is_empty() {
            return Ok(true);
        }
        if delay.is_zero() {
            return Ok(false);
        }
        match self.fill(Instant::now() + delay).await {
            Ok(()) => Ok(true),
            Err(End::Timeout) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Best effort: send what is queued and close (TLS close_notify included).
    pub async fn close(&mut self) {
        let _ = self.flush().await;
        let _ = tokio::time::timeout(self.write_timeout, self.stream.shutdown()).await;
    }

    /// Replaces the plain stream by TLS. The caller has already discarded
    /// buffered input.
    pub async fn start_tls(
        &mut self,
        config: Arc<rustls::ServerConfig>,
        timeout: Duration,
    ) -> Result<String, End> {
        let Some(plain) = self.stream.take_plain() else {
            return Err(End::Io(io::Error::other("TLS already active")));
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let tls = match tokio::time::timeout(timeout, acceptor.accept(plain)).await {
            Err(_) => return Err(End::Timeout),
            Ok(Err(e)) => return Err(End::Io(e)),
            Ok(Ok(tls)) => tls,
        };
        let description = crate::tls::describe(tls.get_ref().1);
        self.stream = MaybeTls::Tls(Box::new(tls));
        Ok(description)
    }
}
