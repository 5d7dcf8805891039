//! The project's own SMTP load client (tokio + rustls, raw SMTP): N sessions
//! share M messages, with or without connection reuse, optionally STARTTLS +
//! AUTH PLAIN (submission) and optionally paced at a fixed total rate
//! (open loop: message `i` is due at `start + i / rate`). No pipelining, like
//! smtp-source. Every message carries `X-Bench-Seq: i` so its Maildir file
//! can be matched to the instant its final `.` was sent.

use anyhow::{Context, Result, bail};
use base64::Engine;
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// TLS and authentication of a session.
#[derive(Clone)]
pub enum Security {
    Plain,
    /// STARTTLS, then AUTH PLAIN.
    StartTlsAuth {
        connector: TlsConnector,
        server_name: String,
        user: String,
        password: String,
    },
}

#[derive(Clone)]
pub struct LoadSpec {
    pub addr: SocketAddr,
    pub sessions: usize,
    pub messages: usize,
    /// Approximate size of each message in bytes (headers included).
    pub size: usize,
    pub reuse: bool,
    pub security: Security,
    pub from: String,
    pub to: String,
    /// Total messages per second across all sessions; None = as fast as possible.
    pub rate: Option<f64>,
    pub timeout: Duration,
}

/// One accepted message.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    pub seq: u64,
    /// When the final `.` had been written.
    pub dot: Instant,
    /// When its 250 arrived.
    pub reply: Instant,
}

/// A TLS connector trusting only the CA in `ca_pem`.
pub fn connector(ca_pem: &std::path::Path) -> Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca_pem).with_context(|| format!("read {}", ca_pem.display()))?;
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// A message of about `size` bytes: headers, then 76-character lines.
pub fn message(seq: u64, size: usize, from: &str, to: &str) -> Vec<u8> {
    let mut m = format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: bench {seq}\r\nDate: Tue, 01 Dec 2026 00:00:00 +0000\r\n\
         Message-ID: <bench.{seq}.{r:08x}@bench.test>\r\nX-Bench-Seq: {seq}\r\n\r\n",
        r = rand::random::<u32>()
    )
    .into_bytes();
    let line = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmn\r\n";
    while m.len() < size {
        m.extend_from_slice(line);
    }
    m
}

struct Session {
    reader: BufReader<Box<dyn Io>>,
}

impl Session {
    async fn reply(&mut self) -> Result<(u16, String)> {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).await? == 0 {
                bail!("connection closed (after {text:?})");
            }
            let l = line.trim_end();
            if l.len() < 3 {
                bail!("short reply {l:?}");
            }
            let code: u16 = l[..3].parse().with_context(|| format!("bad reply {l:?}"))?;
            text.push_str(l);
            text.push('\n');
            if l.as_bytes().get(3) != Some(&b'-') {
                return Ok((code, text));
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        let w = self.reader.get_mut();
        w.write_all(bytes).await?;
        w.flush().await?;
        Ok(())
    }

    async fn cmd(&mut self, line: &str, want: u16) -> Result<String> {
        self.send(format!("{line}\r\n").as_bytes()).await?;
        let (code, text) = self.reply().await?;
        if code != want {
            bail!("{line:?}: expected {want}, got {text}");
        }
        Ok(text)
    }

    async fn open(spec: &LoadSpec) -> Result<Session> {
        let tcp = TcpStream::connect(spec.addr)
            .await
            .with_context(|| format!("connect {}", spec.addr))?;
        tcp.set_nodelay(true)?;
        let mut s = Session {
            reader: BufReader::new(Box::new(tcp) as Box<dyn Io>),
        };
        let (code, text) = s.reply().await?;
        if code != 220 {
            bail!("greeting: {text}");
        }
        s.cmd("EHLO client.bench.test", 250).await?;
        if let Security::StartTlsAuth {
            connector,
            server_name,
            user,
            password,
        } = &spec.security
        {
            s.cmd("STARTTLS", 220).await?;
            // Nothing is buffered: the server waits for our handshake.
            let raw: Box<dyn Io> = s.reader.into_inner();
            let name = ServerName::try_from(server_name.clone())?;
            let tls = connector
                .connect(name, raw)
                .await
                .context("TLS handshake")?;
            s = Session {
                reader: BufReader::new(Box::new(tls) as Box<dyn Io>),
            };
            s.cmd("EHLO client.bench.test", 250).await?;
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
            s.cmd(&format!("AUTH PLAIN {token}"), 235).await?;
        }
        Ok(s)
    }

    async fn transaction(&mut self, spec: &LoadSpec, seq: u64) -> Result<Sent> {
        let body = message(seq, spec.size, &spec.from, &spec.to);
        self.cmd(&format!("MAIL FROM:<{}>", spec.from), 250).await?;
        self.cmd(&format!("RCPT TO:<{}>", spec.to), 250).await?;
        self.cmd("DATA", 354).await?;
        let w = self.reader.get_mut();
        w.write_all(&body).await?;
        w.write_all(b".\r\n").await?;
        w.flush().await?;
        let dot = Instant::now();
        let (code, text) = self.reply().await?;
        if code != 250 {
            bail!("end of data: {text}");
        }
        Ok(Sent {
            seq,
            dot,
            reply: Instant::now(),
        })
    }
}

async fn session_loop(
    spec: Arc<LoadSpec>,
    next: Arc<AtomicU64>,
    start: tokio::time::Instant,
) -> Result<Vec<Sent>> {
    let mut out = Vec::new();
    let mut session: Option<Session> = None;
    loop {
        let seq = next.fetch_add(1, Ordering::SeqCst);
        if seq >= spec.messages as u64 {
            break;
        }
        if let Some(rate) = spec.rate {
            tokio::time::sleep_until(start + Duration::from_secs_f64(seq as f64 / rate)).await;
        }
        if session.is_none() {
            session = Some(Session::open(&spec).await?);
        }
        let s = session.as_mut().unwrap();
        out.push(
            s.transaction(&spec, seq)
                .await
                .with_context(|| format!("message {seq}"))?,
        );
        if !spec.reuse {
            let mut s = session.take().unwrap();
            let _ = s.cmd("QUIT", 221).await;
        }
    }
    if let Some(mut s) = session {
        let _ = s.cmd("QUIT", 221).await;
    }
    Ok(out)
}

/// Runs the load; returns every accepted message.
pub async fn run(spec: LoadSpec) -> Result<Vec<Sent>> {
    let spec = Arc::new(spec);
    let next = Arc::new(AtomicU64::new(0));
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..spec.sessions.max(1) {
        tasks.push(tokio::spawn(session_loop(
            spec.clone(),
            next.clone(),
            start,
        )));
    }
    let all = async {
        let mut sent = Vec::new();
        for t in tasks {
            sent.extend(t.await??);
        }
        anyhow::Ok(sent)
    };
    tokio::time::timeout(spec.timeout, all)
        .await
        .with_context(|| format!("load did not finish within {:?}", spec.timeout))?
}

/// Opens `n` SMTP sessions that each read the greeting, say EHLO and then
/// stay idle; returns them (dropping closes them). Connections are spread
/// over many local source addresses, `per_source` per address, so a
/// per-client connection limit is respected and no source runs out of ports.
pub async fn idle_sessions(
    addr: SocketAddr,
    n: usize,
    per_source: usize,
) -> Result<Vec<BufReader<TcpStream>>> {
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await?;
            let socket = tokio::net::TcpSocket::new_v4()?;
            let k = i / per_source.max(1);
            let src = std::net::Ipv4Addr::new(127, 1, (k / 250) as u8, 1 + (k % 250) as u8);
            socket.bind(SocketAddr::from((src, 0)))?;
            let tcp = socket
                .connect(addr)
                .await
                .with_context(|| format!("connect #{i}"))?;
            let mut r = BufReader::new(tcp);
            let mut line = String::new();
            read_raw_reply(&mut r, &mut line).await?;
            r.get_mut().write_all(b"EHLO idle.bench.test\r\n").await?;
            read_raw_reply(&mut r, &mut line).await?;
            anyhow::Ok(r)
        }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await??);
    }
    Ok(out)
}

async fn read_raw_reply(r: &mut BufReader<TcpStream>, line: &mut String) -> Result<()> {
    loop {
        line.clear();
        if r.read_line(line).await? == 0 {
            bail!("closed");
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(());
        }
    }
}
