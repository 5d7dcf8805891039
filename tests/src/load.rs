//! A small blocking submission client for load and durability tests:
//! STARTTLS (rustls, trusting the org's private CA) + AUTH PLAIN on port
//! 587, one connection reused for many messages, and a reconnect on any
//! failure. Every message carries a unique token (`X-Token:` and in the
//! body) so its Maildir copies can be counted: a token is *accepted* only
//! when its final `250` arrived.

use anyhow::{Context, Result, bail};
use base64::Engine;
use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// Where and as whom to submit.
#[derive(Clone)]
pub struct Submitter {
    pub addr: SocketAddr,
    pub ca: PathBuf,
    pub user: String,
    pub password: String,
    pub to: String,
}

/// An authenticated submission session.
pub struct Session {
    stream: Option<Stream>,
    buf: Vec<u8>,
    from: String,
    to: String,
}

/// A final reply: (code, text).
pub type Reply = (u16, String);

impl Session {
    /// Connect, EHLO, STARTTLS, EHLO, AUTH PLAIN.
    pub fn open(s: &Submitter) -> Result<Session> {
        let tcp = TcpStream::connect_timeout(&s.addr, Duration::from_secs(5))
            .with_context(|| format!("connect {}", s.addr))?;
        tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
        tcp.set_write_timeout(Some(Duration::from_secs(30)))?;
        let _ = tcp.set_nodelay(true);
        let mut session = Session {
            stream: Some(Stream::Plain(tcp)),
            buf: Vec::new(),
            from: s.user.clone(),
            to: s.to.clone(),
        };
        session.expect_reply(220)?;
        session.command("EHLO load.test", 250)?;
        session.command("STARTTLS", 220)?;
        let Some(Stream::Plain(tcp)) = session.stream.take() else {
            bail!("TLS twice")
        };
        let config: Arc<rustls::ClientConfig> = correo_runtime::tls::client_config_trusting(&s.ca)?;
        let name = rustls::pki_types::ServerName::try_from("msa".to_string())?;
        let conn = rustls::ClientConnection::new(config, name)?;
        session.stream = Some(Stream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp))));
        session.buf.clear();
        session.command("EHLO load.test", 250)?;
        let plain = base64::engine::general_purpose::STANDARD
            .encode(format!("\0{}\0{}", s.user, s.password));
        session.command(&format!("AUTH PLAIN {plain}"), 235)?;
        Ok(session)
    }

    fn io(&mut self) -> Result<&mut Stream> {
        self.stream.as_mut().context("no connection")
    }

    fn read_line(&mut self) -> Result<String> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..pos + 2).collect();
                return Ok(String::from_utf8_lossy(&line[..pos]).into_owned());
            }
            let mut chunk = [0u8; 4096];
            let n = self.io()?.read(&mut chunk)?;
            if n == 0 {
                bail!("connection closed");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads one (multi-line) reply.
    pub fn read_reply(&mut self) -> Result<Reply> {
        let mut text = Vec::new();
        loop {
            let line = self.read_line()?;
            if line.len() < 3 {
                bail!("short reply {line:?}");
            }
            let code: u16 = line[..3]
                .parse()
                .with_context(|| format!("bad reply {line:?}"))?;
            text.push(line.get(4..).unwrap_or("").to_string());
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok((code, text.join("\n")));
            }
        }
    }

    fn expect_reply(&mut self, code: u16) -> Result<Reply> {
        let reply = self.read_reply()?;
        if reply.0 != code {
            bail!("expected {code}, got {} {}", reply.0, reply.1);
        }
        Ok(reply)
    }

    fn command(&mut self, line: &str, code: u16) -> Result<Reply> {
        self.io()?.write_all(format!("{line}\r\n").as_bytes())?;
        self.io()?.flush()?;
        self.expect_reply(code)
    }

    /// Sends one message with `token`. Ok(reply) is the final DATA reply
    /// (or the first refusal); Err = the connection is unusable and the
    /// outcome unknown.
    pub fn send(&mut self, token: &str) -> Result<Reply> {
        for (line, code) in [
            (format!("MAIL FROM:<{}>", self.from), 250),
            (format!("RCPT TO:<{}>", self.to), 250),
            ("DATA".to_string(), 354),
        ] {
            self.io()?.write_all(format!("{line}\r\n").as_bytes())?;
            self.io()?.flush()?;
            let reply = self.read_reply()?;
            if reply.0 != code {
                if reply.0 >= 400 {
                    let _ = self.command("RSET", 250);
                }
                return Ok(reply);
            }
        }
        let message = format!(
            "From: {from}\r\nTo: {to}\r\nSubject: load {token}\r\nX-Token: {token}\r\n\r\nThis is message {token}.\r\n.\r\n",
            from = self.from,
            to = self.to
        );
        self.io()?.write_all(message.as_bytes())?;
        self.io()?.flush()?;
        self.read_reply()
    }

    pub fn quit(mut self) {
        let _ = self.command("QUIT", 221);
    }
}

/// What a load run did.
#[derive(Debug, Default, Clone)]
pub struct LoadResult {
    /// Tokens that got a 250.
    pub accepted: Vec<String>,
    /// Attempts answered 4xx/5xx (the client then retried with a new token).
    pub refused: usize,
    /// Attempts whose outcome is unknown (connection lost mid-way).
    pub broken: usize,
}

/// Sends `messages` messages over `clients` concurrent sessions; each
/// message is retried (with a fresh token) until it gets a 250 or
/// `max_attempts` is reached.
pub fn run_load(
    s: &Submitter,
    clients: usize,
    messages: usize,
    tag: &str,
    max_attempts: usize,
) -> LoadResult {
    let mut handles = Vec::new();
    for client in 0..clients {
        let s = s.clone();
        let tag = tag.to_string();
        handles.push(std::thread::spawn(move || {
            let mut result = LoadResult::default();
            let mut session: Option<Session> = None;
            for seq in (client..messages).step_by(clients) {
                for attempt in 0..max_attempts {
                    let token = format!("{tag}-{client}-{seq}-{attempt}");
                    if session.is_none() {
                        match Session::open(&s) {
                            Ok(open) => session = Some(open),
                            Err(_) => {
                                std::thread::sleep(Duration::from_millis(200));
                                continue;
                            }
                        }
                    }
                    match session.as_mut().expect("open").send(&token) {
                        Ok((250, _)) => {
                            result.accepted.push(token);
                            break;
                        }
                        Ok(_) => {
                            result.refused += 1;
                            session = None;
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        Err(_) => {
                            result.broken += 1;
                            session = None;
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            }
            if let Some(session) = session {
                session.quit();
            }
            result
        }));
    }
    let mut total = LoadResult::default();
    for handle in handles {
        let r = handle.join().expect("load client");
        total.accepted.extend(r.accepted);
        total.refused += r.refused;
        total.broken += r.broken;
    }
    total
}

/// Token → number of copies in a Maildir `new/` directory.
pub fn tokens_in_maildir(dir: &Path) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return counts;
    };
    for entry in entries.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        if let Some(token) = text
            .lines()
            .find_map(|l| l.strip_prefix("X-Token: "))
            .map(|t| t.trim().to_string())
        {
            *counts.entry(token).or_insert(0) += 1;
        }
    }
    counts
}

/// Accepted tokens missing from the Maildir, and copies beyond the first.
pub fn lost_and_duplicated(
    accepted: &[String],
    delivered: &BTreeMap<String, usize>,
) -> (Vec<String>, usize) {
    let lost = accepted
        .iter()
        .filter(|t| !delivered.contains_key(*t))
        .cloned()
        .collect();
    let duplicated = delivered.values().map(|&n| n.saturating_sub(1)).sum();
    (lost, duplicated)
}

/// Delivered tokens that never got a 250 (allowed: the client was not
/// told it succeeded).
pub fn unacknowledged(accepted: &[String], delivered: &BTreeMap<String, usize>) -> usize {
    let accepted: HashSet<&String> = accepted.iter().collect();
    delivered.keys().filter(|t| !accepted.contains(t)).count()
}
