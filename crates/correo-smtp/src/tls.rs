//! TLS plumbing shared by the server and the client: a stream that STARTTLS
//! can upgrade in place, and a description of the negotiated parameters.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use rustls::{CommonState, ProtocolVersion};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `"TLSv1.3:TLS13_AES_256_GCM_SHA384"`, for SessionInfo and logs.
pub(crate) fn describe(state: &CommonState) -> String {
    let version = match state.protocol_version() {
        Some(ProtocolVersion::TLSv1_3) => "TLSv1.3".to_owned(),
        Some(ProtocolVersion::TLSv1_2) => "TLSv1.2".to_owned(),
        Some(v) => format!("{v:?}"),
        None => "TLS".to_owned(),
    };
    let suite = state
        .negotiated_cipher_suite()
        .map(|s| {
            s.suite()
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("{:?}", s.suite()))
        })
        .unwrap_or_else(|| "unknown".to_owned());
    format!("{version}:{suite}")
}

/// The transport of a session: plain `P`, or TLS `T` over it after STARTTLS
/// or for implicit TLS.
pub(crate) enum MaybeTls<P, T> {
    Plain(P),
    Tls(Box<T>),
    /// Only while a TLS handshake owns the plain stream, or after it failed.
    Gone,
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "stream closed")
}

impl<P, T> MaybeTls<P, T> {
    /// Takes the plain stream out for a handshake.
    pub(crate) fn take_plain(&mut self) -> Option<P> {
        match std::mem::replace(self, MaybeTls::Gone) {
            MaybeTls::Plain(p) => Some(p),
            other => {
                *self = other;
                None
            }
        }
    }
}

impl<P, T> AsyncRead for MaybeTls<P, T>
where
    P: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            MaybeTls::Gone => Poll::Ready(Err(gone())),
        }
    }
}

impl<P, T> AsyncWrite for MaybeTls<P, T>
where
    P: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            MaybeTls::Gone => Poll::Ready(Err(gone())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            MaybeTls::Gone => Poll::Ready(Err(gone())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            MaybeTls::Gone => Poll::Ready(Ok(())),
        }
    }
}
