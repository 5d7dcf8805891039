//! A deliberately dumb, blocking SMTP client for tests: it sends exactly the
//! bytes it is given and returns the server's replies, so tests can check
//! exact reply codes, including for malformed input.

use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One reply: its code and its text lines joined with '\n'.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

pub struct RawSmtp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl RawSmtp {
    /// Connects and reads the greeting.
    pub fn connect(addr: SocketAddr) -> Result<(RawSmtp, Reply)> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connect {addr}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut smtp = RawSmtp {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        };
        let greeting = smtp.read_reply()?;
        Ok((smtp, greeting))
    }

    /// Reads one (possibly multi-line) reply.
    pub fn read_reply(&mut self) -> Result<Reply> {
        let mut text = Vec::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                bail!("connection closed (after {text:?})");
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.len() < 3 {
                bail!("short reply line {line:?}");
            }
            let code: u16 = line[..3]
                .parse()
                .with_context(|| format!("bad reply {line:?}"))?;
            text.push(line.get(4..).unwrap_or("").to_string());
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(Reply {
                    code,
                    text: text.join("\n"),
                });
            }
        }
    }

    /// Writes raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.writer.write_all(bytes)?;
        Ok(())
    }

    /// Sends one command line (CRLF added) and reads its reply.
    pub fn cmd(&mut self, line: &str) -> Result<Reply> {
        self.send_raw(format!("{line}\r\n").as_bytes())?;
        self.read_reply()
    }

    /// Sends a command and asserts the reply code.
    pub fn expect(&mut self, line: &str, code: u16) -> Result<Reply> {
        let reply = self.cmd(line)?;
        if reply.code != code {
            bail!(
                "{line:?}: expected {code}, got {} {}",
                reply.code,
                reply.text
            );
        }
        Ok(reply)
    }
}
