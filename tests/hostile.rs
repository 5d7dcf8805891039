//! Hostile input against the real MTA (port 25) and MSA (587/465) processes
//! (issue 4): every case checks the exact reply code and enhanced code, and
//! that the server still serves the next client afterwards.
//!
//! Plaintext cases use a byte-exact client written here; cases that need
//! TLS and AUTH on the MSA run a small Python client (the `ssl` module over
//! a raw socket, so the bytes are still exactly the ones written).

use correo_tests::{Org, OrgOptions, SMTP_PORT, SUBMISSION_PORT, SUBMISSIONS_PORT, wait_until};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// A byte-exact client with its own buffer (reads with deadlines, EOF checks).

struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

#[derive(Debug)]
struct Reply {
    code: u16,
    /// Text lines joined with '\n'; the first starts with the enhanced code.
    text: String,
}

impl Reply {
    fn enhanced(&self) -> &str {
        self.text.split(' ').next().unwrap_or("")
    }
}

#[derive(Debug, PartialEq)]
enum ReadError {
    Eof,
    Timeout,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        Self::connect_from(None, addr)
    }

    /// Connects from a chosen loopback source address (connection limits).
    fn connect_from(source: Option<Ipv4Addr>, addr: SocketAddr) -> Client {
        let stream = correo_tests::connect_from(source, addr).expect("connect");
        stream.set_nonblocking(false).unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    /// Connects and expects `220`.
    fn greeted(addr: SocketAddr) -> Client {
        let mut c = Client::connect(addr);
        let greeting = c.reply();
        assert_eq!(greeting.code, 220, "{greeting:?}");
        c
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    fn line_within(&mut self, limit: Duration) -> Result<String, ReadError> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return Ok(String::from_utf8_lossy(&line)
                    .trim_end_matches(['\r', '\n'])
                    .to_string());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ReadError::Timeout);
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(ReadError::Eof),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(ReadError::Timeout);
                }
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Err(ReadError::Eof),
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    fn reply_within(&mut self, limit: Duration) -> Result<Reply, ReadError> {
        let mut text = Vec::new();
        loop {
            let line = self.line_within(limit)?;
            assert!(line.len() >= 3, "short reply line {line:?}");
            let code: u16 = line[..3]
                .parse()
                .unwrap_or_else(|_| panic!("bad reply {line:?}"));
            text.push(line.get(4..).unwrap_or("").to_string());
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(Reply {
                    code,
                    text: text.join("\n"),
                });
            }
        }
    }

    fn reply(&mut self) -> Reply {
        self.reply_within(WAIT).expect("a reply")
    }

    fn cmd(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// Sends `line` and asserts code and enhanced code ("" = do not check).
    fn expect(&mut self, line: &str, code: u16, enhanced: &str) -> Reply {
        let reply = self.cmd(line);
        check(&reply, code, enhanced, line);
        reply
    }

    fn expect_reply(&mut self, code: u16, enhanced: &str, what: &str) -> Reply {
        let reply = self.reply();
        check(&reply, code, enhanced, what);
        reply
    }

    /// The server has closed the connection (nothing more to read).
    fn expect_closed(&mut self, what: &str) {
        match self.line_within(Duration::from_secs(10)) {
            Err(ReadError::Eof) => {}
            other => panic!("{what}: expected the connection to be closed, got {other:?}"),
        }
    }
}

fn check(reply: &Reply, code: u16, enhanced: &str, what: &str) {
    assert_eq!(reply.code, code, "{what:?}: {reply:?}");
    if !enhanced.is_empty() {
        assert_eq!(reply.enhanced(), enhanced, "{what:?}: {reply:?}");
    }
}

/// A new client gets a greeting and a working EHLO and NOOP.
fn still_serves(addr: SocketAddr) {
    let mut c = Client::greeted(addr);
    c.expect("EHLO next.client.test", 250, "");
    c.expect("NOOP", 250, "2.0.0");
    c.expect("QUIT", 221, "2.0.0");
}

fn mta_session(org: &Org) -> Client {
    let mut c = Client::greeted(org.addr(SMTP_PORT));
    c.expect("EHLO hostile.client.test", 250, "");
    c
}

fn run_python(script: &str) -> String {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A tiny byte-exact SMTP client in Python, with TLS from the ssl module.
fn python_prelude(org: &Org) -> String {
    format!(
        r#"
import socket, ssl, base64, time
CA = {ca:?}
IP = {ip:?}
def ctx():
    c = ssl.create_default_context(cafile=CA)
    c.check_hostname = False
    return c
class S:
    def __init__(self, port, implicit=False):
        self.sock = socket.create_connection((IP, port), timeout=20)
        if implicit:
            self.sock = ctx().wrap_socket(self.sock)
        self.buf = b""
        self.greeting = self.reply()
        assert self.greeting[0] == 220, self.greeting
    def send(self, b):
        self.sock.sendall(b)
    def line(self):
        while b"\n" not in self.buf:
            d = self.sock.recv(65536)
            if not d:
                raise EOFError(self.buf)
            self.buf += d
        l, _, self.buf = self.buf.partition(b"\n")
        return l.rstrip(b"\r").decode("utf-8", "replace")
    def reply(self):
        lines = []
        while True:
            l = self.line()
            lines.append(l)
            if len(l) < 4 or l[3] != "-":
                return int(l[:3]), "\n".join(x[4:] for x in lines)
    def cmd(self, line):
        self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.reply()
    def expect(self, line, code, enh=""):
        c, t = self.cmd(line)
        assert c == code and t.startswith(enh), (line, c, t)
        return t
    def expect_reply(self, code, enh="", what=""):
        c, t = self.reply()
        assert c == code and t.startswith(enh), (what, c, t)
        return t
    def starttls(self):
        self.expect("STARTTLS", 220, "2.0.0")
        assert self.buf == b"", self.buf
        self.sock = ctx().wrap_socket(self.sock)
    def login(self, user, password, code=235, enh="2.7.0"):
        token = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode()).decode()
        return self.expect("AUTH PLAIN " + token, code, enh)
    def closed(self):
        try:
            d = self.sock.recv(1)
            return d == b""
        except (ConnectionResetError, ssl.SSLError):
            return True
def submission(user="alice@example.test", password="alice-secret"):
    s = S({port})
    s.expect("EHLO py.client.test", 250)
    s.starttls()
    s.expect("EHLO py.client.test", 250)
    s.login(user, password)
    return s
"#,
        ca = org.path("certs/ca.pem").display().to_string(),
        ip = org.ip.to_string(),
        port = SUBMISSION_PORT,
    )
}

/// Rewrites `[section]` of a role's config with `extra` keys and restarts it.
fn reconfigure(org: &mut Org, role: &str, section: &str, extra: &str, ports: &[u16]) {
    let path = org.path(&format!("{role}.toml"));
    let text = std::fs::read_to_string(&path).unwrap();
    let header = format!("[{section}]\n");
    assert!(text.contains(&header), "{role}.toml has no {header}");
    let text = text.replacen(&header, &format!("{header}{extra}\n"), 1);
    std::fs::write(&path, text).unwrap();
    org.start_role(role, ports).unwrap();
}

fn bob_count(org: &Org) -> usize {
    org.maildir_new("bob").len()
}

// ---------------------------------------------------------------------------
// MTA, port 25.

#[test]
fn mta_limits_order_and_syntax() {
    let org = Org::start(OrgOptions::new("example.test")).unwrap();
    let addr = org.addr(SMTP_PORT);

    // Overlong command lines: 500 5.5.2, and the tail is never executed.
    let mut c = mta_session(&org);
    c.expect("MAIL FROM:<sender@remote.test>", 250, "2.1.0");
    c.expect("RCPT TO:<bob@example.test>", 250, "2.1.5");
    let long = format!("NOOP {}RSET", "x".repeat(595));
    assert!(long.len() > 512);
    c.expect(&long, 500, "5.5.2");
    let long = format!("NOOP {}QUIT", "x".repeat(595));
    c.expect(&long, 500, "5.5.2");
    // Still in the transaction (no RSET ran) and still connected (no QUIT ran).
    c.expect("DATA", 354, "");
    c.send(b"Subject: after overlong\r\n\r\nbody\r\n.\r\n");
    c.expect_reply(250, "2.0.0", "message after overlong lines");
    // A 100 kB line without a line end is not buffered, then refused once.
    c.send(&vec![b'a'; 100_000]);
    c.expect("", 500, "5.5.2");
    c.expect("QUIT", 221, "2.0.0");
    still_serves(addr);

    // A text line over 1000 octets: refused after reading to the end, in step.
    let mut c = mta_session(&org);
    c.expect("MAIL FROM:<sender@remote.test>", 250, "2.1.0");
    c.expect("RCPT TO:<bob@example.test>", 250, "2.1.5");
    c.expect("DATA", 354, "");
    c.send(format!("Subject: long line\r\n\r\n{}\r\n.\r\n", "y".repeat(1200)).as_bytes());
    c.expect_reply(550, "5.5.2", "text line > 1000 octets");
    c.expect("NOOP", 250, "2.0.0");
    // Exactly 998 octets + CRLF is fine.
    c.expect("MAIL FROM:<sender@remote.test>", 250, "2.1.0");
    c.expect("RCPT TO:<bob@example.test>", 250, "2.1.5");
    c.expect("DATA", 354, "");
    c.send(format!("Subject: 998\r\n\r\n{}\r\n.\r\n", "z".repeat(998)).as_bytes());
    c.expect_reply(250, "2.0.0", "998-octet line");
    c.expect("QUIT", 221, "2.0.0");

    // SIZE: declared too big -> 552 5.3.4, and the session goes on.
    let mut c = mta_session(&org);
    c.expect(
        "MAIL FROM:<sender@remote.test> SIZE=999999999999",
        552,
        "5.3.4",
    );
    c.expect(
        "MAIL FROM:<sender@remote.test> SIZE=99999999999999999999999999",
        552,
        "5.3.4",
    );
    c.expect("MAIL FROM:<sender@remote.test> SIZE=1000", 250, "2.1.0");
    c.expect("RSET", 250, "2.0.0");

    // Recipients: 100 accepted, the 101st 452 4.5.3 (pipelined).
    c.expect("MAIL FROM:<sender@remote.test>", 250, "2.1.0");
    let mut batch = String::new();
    for _ in 0..101 {
        batch.push_str("RCPT TO:<bob@example.test>\r\n");
    }
    c.send(batch.as_bytes());
    for i in 0..100 {
        c.expect_reply(250, "2.1.5", &format!("recipient {}", i + 1));
    }
    c.expect_reply(452, "4.5.3", "recipient 101");
    c.expect("RSET", 250, "2.0.0");

    // Commands out of order: 503 5.5.1.
    c.expect("RCPT TO:<bob@example.test>", 503, "5.5.1");
    c.expect("DATA", 503, "5.5.1");
    c.expect("MAIL FROM:<sender@remote.test>", 250, "2.1.0");
    c.expect("MAIL FROM:<sender@remote.test>", 503, "5.5.1");
    c.expect("DATA", 554, "5.5.1");
    c.expect("QUIT", 221, "2.0.0");
    let mut c = Client::greeted(addr);
    c.expect("MAIL FROM:<sender@remote.test>", 503, "5.5.1");
    c.expect("QUIT", 221, "2.0.0");

    // NUL, invalid UTF-8, bare CR in commands: 500 5.5.2.
    let mut c = mta_session(&org);
    c.send(b"NOOP\0\r\n");
    c.expect_reply(500, "5.5.2", "NUL");
    c.send(b"MAIL FROM:<\xff\xfe@remote.test>\r\n");
    c.expect_reply(500, "5.5.2", "invalid UTF-8");
    c.send(b"NOOP\rRSET\r\n");
    c.expect_reply(500, "5.5.2", "bare CR");
    c.expect("QUIT", 221, "2.0.0");

    // Malformed addresses and parameters: 501 (new session: the error budget).
    let mut c = mta_session(&org);
    for (line, enhanced) in [
        ("MAIL FROM:<sender@remote.test> SIZE=abc", "5.5.4"),
        ("MAIL FROM:<sender@remote.test> SIZE=", "5.5.4"),
        ("MAIL FROM:<sender@remote.test> BODY=9BIT", "5.5.4"),
        ("MAIL FROM:<not an address>", "5.1.7"),
        ("MAIL FROM:sender@remote.test", "5.5.4"),
        ("MAIL FROM:<sender@remote.test", ""),
    ] {
        c.expect(line, 501, enhanced);
    }
    c.expect("QUIT", 221, "2.0.0");
    let mut c = mta_session(&org);
    c.expect("MAIL FROM:<sender@remote.test> AUTH=<>", 250, "2.1.0");
    for line in [
        "RCPT TO:<bob@@example.test>",
        "RCPT TO:<bob@exa mple.test>",
        "RCPT TO:<>",
        "RCPT TO:<bob@-example.test>",
        "RCPT TO:bob@example.test",
    ] {
        c.expect(line, 501, "");
    }
    c.expect("QUIT", 221, "2.0.0");
    let mut c = mta_session(&org);
    c.expect("EHLO bad(host)", 501, "5.5.4");
    c.expect("MAIL FROM:<sender@remote.test> AUTH=", 501, "");
    c.expect("QUIT", 221, "2.0.0");

    // AUTH on port 25 is not offered.
    let mut c = mta_session(&org);
    c.expect("AUTH PLAIN AGJvYgBib2Itc2VjcmV0", 502, "5.5.1");
    c.expect("QUIT", 221, "2.0.0");

    // Too many errors: 421 4.7.0 and close.
    let mut c = mta_session(&org);
    for i in 1..10 {
        c.expect("BOGUS", 500, "5.5.2");
        let _ = i;
    }
    c.send(b"BOGUS\r\n");
    c.expect_reply(500, "5.5.2", "10th error");
    c.expect_reply(421, "4.7.0", "too many errors");
    c.expect_closed("after too many errors");

    still_serves(addr);
    // The two accepted messages, nothing else.
    assert!(org.wait_for_mail("bob", 2, WAIT).is_ok());
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(bob_count(&org), 2);
}

#[test]
fn mta_starttls_injection_and_second_starttls() {
    let org = Org::start(OrgOptions::new("example.test")).unwrap();
    let script = python_prelude(&org)
        + &format!(
            r#"
s = S({port})
s.expect("EHLO py.client.test", 250)
# Everything after STARTTLS arrives in plaintext and must be discarded.
s.send(b"STARTTLS\r\nRSET\r\nMAIL FROM:<evil@attacker.test>\r\nRCPT TO:<bob@example.test>\r\n")
s.expect_reply(220, "2.0.0", "STARTTLS")
assert s.buf == b"", ("replies to injected commands", s.buf)
s.sock = ctx().wrap_socket(s.sock)
# Back to the state after the greeting: no EHLO, no transaction.
s.expect("RCPT TO:<bob@example.test>", 503, "5.5.1")
s.expect("MAIL FROM:<sender@remote.test>", 503, "5.5.1")
t = s.expect("EHLO py.client.test", 250)
assert "STARTTLS" not in t, t
s.expect("STARTTLS", 503, "5.5.1")
s.expect("MAIL FROM:<sender@remote.test>", 250, "2.1.0")
s.expect("RCPT TO:<bob@example.test>", 250, "2.1.5")
s.expect("QUIT", 221)
"#,
            port = SMTP_PORT
        );
    run_python(&script);
    still_serves(org.addr(SMTP_PORT));
}

/// Every end-of-data variant from the SMTP smuggling research, each
/// followed by a pipelined second transaction.
const SMUGGLING: &[&[u8]] = &[
    b"\n.\n",
    b"\n.\r\n",
    b"\r.\n",
    b"\r.\r",
    b"\r.\r\n",
    b"\r\n\x00.\r\n",
    b"\r\n.\n",
    b"\n.\r",
    b"\r\n.\r",
    b"\n\r.\r\n",
    b"\r\n\r.\r\n",
    b"\r\n.\x00\r\n",
    b"\r\n .\r\n",
];

#[test]
fn mta_smuggling_never_makes_a_second_message() {
    let org = Org::start(OrgOptions::new("example.test")).unwrap();
    let mut accepted = 0;
    for (i, seq) in SMUGGLING.iter().enumerate() {
        let mut c = mta_session(&org);
        let mut wire = format!(
            "MAIL FROM:<sender@remote.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n\
             Subject: variant {i}\r\n\r\nfirst part"
        )
        .into_bytes();
        wire.extend_from_slice(seq);
        wire.extend_from_slice(
            b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n\
              Subject: smuggled\r\n\r\nSMUGGLED BODY\r\n.\r\nQUIT\r\n",
        );
        c.send(&wire);
        c.expect_reply(250, "2.1.0", "MAIL");
        c.expect_reply(250, "2.1.5", "RCPT");
        c.expect_reply(354, "", "DATA");
        let end = c.reply();
        match end.code {
            // Bare CR or LF: refused as a whole (MTA policy).
            550 => assert_eq!(end.enhanced(), "5.5.2", "{seq:?}: {end:?}"),
            // No bare line end (NUL, space): one message, smuggled text inside.
            250 => accepted += 1,
            _ => panic!("{seq:?}: unexpected {end:?}"),
        }
        // The very next reply is QUIT's: the smuggled MAIL/RCPT/DATA never ran.
        c.expect_reply(221, "2.0.0", &format!("QUIT after {seq:?}"));
        c.expect_closed("after QUIT");
    }
    still_serves(org.addr(SMTP_PORT));
    let mail = org.wait_for_mail("bob", accepted, WAIT).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(bob_count(&org), accepted);
    for message in &mail {
        assert!(
            message.contains("SMUGGLED BODY") && message.contains("MAIL FROM:<evil"),
            "{message}"
        );
    }
    assert!(
        org.maildir_new("alice").is_empty(),
        "a smuggled message reached alice"
    );
}

// ---------------------------------------------------------------------------
// MSA, ports 587 and 465.

#[test]
fn msa_hostile_input() {
    let org = Org::start(OrgOptions::new("example.test")).unwrap();
    let addr = org.addr(SUBMISSION_PORT);

    // Plaintext phase of 587.
    let mut c = Client::greeted(addr);
    let ehlo = c.expect("EHLO hostile.client.test", 250, "");
    assert!(
        !ehlo.text.contains("AUTH"),
        "AUTH offered before TLS: {ehlo:?}"
    );
    c.expect(
        "AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABhbGljZS1zZWNyZXQ=",
        538,
        "5.7.11",
    );
    c.expect("AUTH LOGIN", 538, "5.7.11");
    c.expect("MAIL FROM:<alice@example.test>", 530, "5.7.0");
    c.expect(&format!("NOOP {}QUIT", "x".repeat(600)), 500, "5.5.2");
    c.send(b"NOOP\0\r\n");
    c.expect_reply(500, "5.5.2", "NUL");
    c.send(b"NOOP \xc3\x28\r\n");
    c.expect_reply(500, "5.5.2", "invalid UTF-8");
    c.expect("QUIT", 221, "2.0.0");
    still_serves(addr);

    let script = python_prelude(&org)
        + r#"
# STARTTLS injection: a pipelined AUTH must not carry over into TLS.
s = S(587)
s.expect("EHLO py.client.test", 250)
token = base64.b64encode(b"\0alice@example.test\0alice-secret").decode()
s.send(("STARTTLS\r\nAUTH PLAIN " + token + "\r\nMAIL FROM:<alice@example.test>\r\n").encode())
s.expect_reply(220, "2.0.0", "STARTTLS")
assert s.buf == b"", s.buf
s.sock = ctx().wrap_socket(s.sock)
s.expect("MAIL FROM:<alice@example.test>", 503, "5.5.1")
t = s.expect("EHLO py.client.test", 250)
assert "AUTH SCRAM-SHA-256 PLAIN LOGIN" in t, t
s.expect("MAIL FROM:<alice@example.test>", 530, "5.7.0")
s.expect("STARTTLS", 503, "5.5.1")
s.login("alice@example.test", "alice-secret")
s.expect("AUTH PLAIN " + token, 503, "5.5.1")
s.expect("QUIT", 221)

# Limits, order and syntax under TLS + AUTH.
s = submission()
s.expect("RCPT TO:<bob@example.test>", 503, "5.5.1")
s.expect("DATA", 503, "5.5.1")
s.expect("MAIL FROM:<alice@example.test> SIZE=999999999999", 552, "5.3.4")
s.expect("MAIL FROM:<alice@example.test> SIZE=x", 501, "5.5.4")
s.expect("MAIL FROM:<alice@example.test> BODY=9BIT", 501, "5.5.4")
s.expect("MAIL FROM:<@relay.test:alice@example.test>", 501, "5.1.7")
s.expect("MAIL FROM:<alice@example.test>", 250, "2.1.0")
s.expect("MAIL FROM:<alice@example.test>", 503, "5.5.1")
s.expect("RCPT TO:<bob@exa mple.test>", 501)
s.send(b"".join(b"RCPT TO:<bob@example.test>\r\n" for _ in range(101)))
for i in range(100):
    s.expect_reply(250, "2.1.5", i)
s.expect_reply(452, "4.5.3", "101st recipient")
s.expect("RSET", 250, "2.0.0")
s.expect("QUIT", 221)

# A line over 1000 octets in DATA (the MSA repairs line ends, not lengths).
s = submission()
s.expect("MAIL FROM:<alice@example.test>", 250)
s.expect("RCPT TO:<bob@example.test>", 250)
s.expect("DATA", 354)
s.send(b"From: alice@example.test\r\nSubject: long\r\n\r\n" + b"y" * 1200 + b"\r\n.\r\n")
s.expect_reply(550, "5.5.2", "long text line")
s.expect("NOOP", 250, "2.0.0")
s.expect("QUIT", 221)

# Too many errors: 421 and close.
s = submission()
for i in range(9):
    s.expect("BOGUS", 500, "5.5.2")
s.send(b"BOGUS\r\n")
s.expect_reply(500, "5.5.2")
s.expect_reply(421, "4.7.0", "too many errors")
assert s.closed()

# Implicit TLS (465) still serves.
s = S(465, implicit=True)
t = s.expect("EHLO py.client.test", 250)
assert "STARTTLS" not in t and "AUTH" in t, t
s.expect("STARTTLS", 503, "5.5.1")
s.expect("QUIT", 221)
print("ok")
"#;
    assert!(run_python(&script).contains("ok"));
    still_serves(addr);
    let _ = SUBMISSIONS_PORT;
}

#[test]
fn msa_smuggling_is_one_message() {
    let org = Org::start(OrgOptions::new("example.test")).unwrap();
    let variants: Vec<String> = SMUGGLING
        .iter()
        .map(|s| format!("b{:?}", String::from_utf8_lossy(s).as_ref()))
        .collect();
    let script = python_prelude(&org)
        + &format!(
            r#"
accepted = 0
for i, seq in enumerate([{list}]):
    s = submission()
    wire = (b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
            b"From: alice@example.test\r\nTo: bob@example.test\r\nSubject: variant %d\r\n\r\nfirst part" % i
            + seq +
            b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
            b"From: alice@example.test\r\nSubject: smuggled\r\n\r\nSMUGGLED BODY\r\n.\r\nQUIT\r\n")
    s.send(wire)
    s.expect_reply(250, "2.1.0", "MAIL")
    s.expect_reply(250, "2.1.5", "RCPT")
    s.expect_reply(354, "", "DATA")
    c, t = s.reply()
    assert c == 250 or (c == 550 and t[:5] in ("5.6.0", "5.5.2")), (seq, c, t)
    if c == 250:
        accepted += 1
    s.expect_reply(221, "2.0.0", "QUIT after %r" % seq)
    assert s.closed()
print("accepted", accepted)
"#,
            list = variants.join(", ")
        );
    let out = run_python(&script);
    let accepted: usize = out.trim().rsplit(' ').next().unwrap().parse().unwrap();
    assert!(accepted > 0, "the MSA normalizes bare line ends: {out}");
    let mail = org.wait_for_mail("bob", accepted, WAIT).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(bob_count(&org), accepted);
    for message in &mail {
        assert!(message.contains("SMUGGLED BODY"), "{message}");
        // Normalized: no bare CR or LF reaches the mailbox.
        let bytes = message.as_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            if b == b'\n' {
                assert!(i > 0 && bytes[i - 1] == b'\r', "bare LF in {message:?}");
            }
        }
    }
    assert!(
        org.maildir_new("alice").is_empty(),
        "a smuggled message reached alice"
    );
}

#[test]
fn msa_login_throttling() {
    let org = Org::start(OrgOptions::new("example.test")).unwrap();
    let script = python_prelude(&org)
        + r#"
def tls_session():
    s = S(587)
    s.expect("EHLO py.client.test", 250)
    s.starttls()
    s.expect("EHLO py.client.test", 250)
    return s
# Per account: 5 failures (over two connections), then 421 even for the
# right password, and the connection is closed.
s = tls_session()
for i in range(3):
    s.login("alice@example.test", "wrong-%d" % i, 535, "5.7.8")
s.expect("QUIT", 221)
s = tls_session()
for i in range(2):
    s.login("alice@example.test", "wrong-x%d" % i, 535, "5.7.8")
s.login("alice@example.test", "alice-secret", 421, "4.7.0")
assert s.closed()
s = tls_session()
s.login("ALICE@example.test", "alice-secret", 421, "4.7.0")
assert s.closed()
# Another account from the same address is not affected yet.
s = tls_session()
s.login("bob@example.test", "bob-secret")
s.expect("QUIT", 221)
# Per client address: 10 failures over any accounts, then 421 for anyone.
s = tls_session()
for i in range(5):
    s.login("nobody%d@example.test" % i, "guess", 535, "5.7.8")
s.login("bob@example.test", "bob-secret", 421, "4.7.0")
assert s.closed()
print("ok")
"#;
    assert!(run_python(&script).contains("ok"));
    still_serves(org.addr(SUBMISSION_PORT));
}

// ---------------------------------------------------------------------------
// Timeouts, early talkers, connection limits, real oversize bodies: an
// organisation with short, explicit test settings.

fn tuned_org() -> Org {
    let mut org = Org::start(OrgOptions::new("example.test")).unwrap();
    let knobs = "greeting_delay = \"300ms\"\ncommand_timeout = \"2s\"\n\
                 max_connections = 4\nmax_connections_per_client = 2";
    reconfigure(
        &mut org,
        "mta",
        "smtp",
        &format!("{knobs}\nmax_message_size = 20000"),
        &[SMTP_PORT],
    );
    reconfigure(
        &mut org,
        "msa",
        "submission",
        knobs,
        &[SUBMISSION_PORT, SUBMISSIONS_PORT],
    );
    org
}

#[test]
fn talk_before_greeting_idle_and_slow_drip() {
    let org = tuned_org();
    for port in [SMTP_PORT, SUBMISSION_PORT] {
        let addr = org.addr(port);
        // Early talker: 554 5.5.1 and close.
        let mut c = Client::connect(addr);
        c.send(b"EHLO early.talker.test\r\n");
        c.expect_reply(554, "5.5.1", "talk before greeting");
        c.expect_closed("early talker");
        // A patient client gets its greeting after the delay.
        let started = Instant::now();
        let mut c = Client::greeted(addr);
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "no greeting delay"
        );
        c.expect("EHLO patient.client.test", 250, "");

        // Idle: 421 4.4.2 after command_timeout.
        let started = Instant::now();
        c.expect_reply(421, "4.4.2", "idle timeout");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        c.expect_closed("idle");

        // Slow drip: a byte every 200 ms never completes a command; the
        // per-command deadline ends it anyway.
        let mut c = Client::greeted(addr);
        let started = Instant::now();
        let mut got = None;
        for b in b"NOOP ".iter().chain(std::iter::repeat(&b'x')).take(40) {
            c.send(std::slice::from_ref(b));
            match c.reply_within(Duration::from_millis(200)) {
                Ok(reply) => {
                    got = Some(reply);
                    break;
                }
                Err(ReadError::Timeout) => {}
                Err(ReadError::Eof) => panic!("closed without 421"),
            }
        }
        let reply = got.expect("no 421 while dripping");
        check(&reply, 421, "4.4.2", "slow drip");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        c.expect_closed("slow drip");
        still_serves(addr);
    }

    // A real body over max_message_size: 552 5.3.4 after reading to the end.
    let mut c = mta_session(&org);
    c.expect("MAIL FROM:<sender@remote.test>", 250, "2.1.0");
    c.expect("RCPT TO:<bob@example.test>", 250, "2.1.5");
    c.expect("DATA", 354, "");
    let mut body = b"Subject: big\r\n\r\n".to_vec();
    for _ in 0..500 {
        body.extend_from_slice(
            b"0123456789012345678901234567890123456789012345678901234567890123456789\r\n",
        );
    }
    body.extend_from_slice(b".\r\n");
    c.send(&body);
    c.expect_reply(552, "5.3.4", "body over max_message_size");
    c.expect("NOOP", 250, "2.0.0");
    c.expect("QUIT", 221, "2.0.0");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(bob_count(&org), 0);
}

#[test]
fn connection_limits_per_client_and_total() {
    let org = tuned_org();
    for port in [SMTP_PORT, SUBMISSION_PORT] {
        let addr = org.addr(port);
        let from = |last: u8| Some(Ipv4Addr::new(127, 0, 0, last));
        let greeted_from = |last: u8| {
            let mut c = Client::connect_from(from(last), addr);
            c.expect_reply(220, "", "greeting");
            c
        };
        let a1 = greeted_from(1);
        let _a2 = greeted_from(1);
        // Third from the same address: 421 4.7.0, closed.
        let mut a3 = Client::connect_from(from(1), addr);
        let reply = a3.expect_reply(421, "4.7.0", "per-client limit");
        assert!(reply.text.contains("too many connections"), "{reply:?}");
        a3.expect_closed("over the per-client limit");
        // Other addresses fill the total of 4; the fifth is refused.
        let _b1 = greeted_from(2);
        let _b2 = greeted_from(3);
        let mut c = Client::connect_from(from(4), addr);
        let reply = c.expect_reply(421, "4.7.0", "total limit");
        assert!(reply.text.contains("too many connections"), "{reply:?}");
        c.expect_closed("over the total limit");
        // A closed session frees its slot.
        drop(a1);
        let ok = wait_until(Duration::from_secs(5), || {
            let mut c = Client::connect_from(from(1), addr);
            let r = c.reply();
            (r.code == 220).then_some(c)
        });
        let mut c = ok.expect("slot not released");
        c.expect("QUIT", 221, "2.0.0");
    }
    // The MSA's two listeners share one limiter: 587 is full, 465 too.
    let addr587 = org.addr(SUBMISSION_PORT);
    let _x: Vec<Client> = (2..6)
        .map(|last| {
            let mut c = Client::connect_from(Some(Ipv4Addr::new(127, 0, 1, last)), addr587);
            c.expect_reply(220, "", "greeting");
            c
        })
        .collect();
    let script = python_prelude(&org)
        + r#"
sock = ctx().wrap_socket(socket.create_connection((IP, 465), timeout=20))
data = b""
while not data.endswith(b"\r\n"):
    d = sock.recv(1000)
    if not d:
        break
    data += d
assert data.startswith(b"421 4.7.0"), data
print("ok")
"#;
    assert!(run_python(&script).contains("ok"));
}

// ---------------------------------------------------------------------------
// SCRAM-SHA-256 (RFC 5802/7677) against the real MSA and MDA, with a client
// written here (smtplib has none).

#[test]
fn msa_scram_sha256() {
    let org = Org::start(OrgOptions::new("example.test")).unwrap();
    let script = python_prelude(&org)
        + r#"
import hashlib, hmac, os
def tls_session():
    s = S(587)
    s.expect("EHLO py.client.test", 250)
    s.starttls()
    t = s.expect("EHLO py.client.test", 250)
    assert "SCRAM-SHA-256" in t, t
    return s
def scram(s, user, password, tamper=None):
    cnonce = base64.b64encode(os.urandom(18)).decode()
    bare = "n=%s,r=%s" % (user.replace("=", "=3D").replace(",", "=2C"), cnonce)
    c, t = s.cmd("AUTH SCRAM-SHA-256 " + base64.b64encode(("n,," + bare).encode()).decode())
    assert c == 334, (c, t)
    sf = base64.b64decode(t).decode()
    attrs = dict(kv.split("=", 1) for kv in sf.split(","))
    assert attrs["r"].startswith(cnonce) and len(attrs["r"]) > len(cnonce), sf
    salt = base64.b64decode(attrs["s"])
    it = int(attrs["i"])
    assert it >= 4096, it
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, it)
    ck = hmac.new(salted, b"Client Key", "sha256").digest()
    sk = hashlib.sha256(ck).digest()
    nonce = attrs["r"] + ("x" if tamper == "nonce" else "")
    wp = ("c=biws" if tamper != "cbind" else "c=eSws") + ",r=" + nonce
    am = (bare + "," + sf + "," + wp).encode()
    sig = hmac.new(sk, am, "sha256").digest()
    proof = bytes(a ^ b for a, b in zip(ck, sig))
    c, t = s.cmd(base64.b64encode((wp + ",p=" + base64.b64encode(proof).decode()).encode()).decode())
    if c != 334:
        return c, t, attrs
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    expect = "v=" + base64.b64encode(hmac.new(server_key, am, "sha256").digest()).decode()
    assert base64.b64decode(t).decode() == expect, "server signature does not verify"
    c, t = s.cmd("")
    return c, t, attrs

# Success, then a message goes through.
s = tls_session()
c, t, good = scram(s, "alice@example.test", "alice-secret")
assert c == 235 and t.startswith("2.7.0"), (c, t)
s.expect("AUTH SCRAM-SHA-256", 503, "5.5.1")
s.expect("MAIL FROM:<alice@example.test>", 250, "2.1.0")
s.expect("MAIL FROM:<alice@example.test>", 503, "5.5.1")
s.expect("RSET", 250)
s.expect("MAIL FROM:<bob@example.test>", 550, "5.7.1")
s.expect("MAIL FROM:<alice@example.test>", 250, "2.1.0")
s.expect("RCPT TO:<bob@example.test>", 250, "2.1.5")
s.expect("DATA", 354)
s.send(b"From: alice@example.test\r\nTo: bob@example.test\r\nSubject: via SCRAM\r\n\r\nscram body\r\n.\r\n")
s.expect_reply(250, "2.0.0", "DATA")
s.expect("QUIT", 221)

# Wrong password and unknown user: the same 535 5.7.8, and an unknown user
# gets a server-first message of the same shape.
s = tls_session()
c, t, _ = scram(s, "alice@example.test", "wrong")
assert c == 535 and t.startswith("5.7.8"), (c, t)
c, t, decoy = scram(s, "nobody@example.test", "whatever")
assert c == 535 and t.startswith("5.7.8"), (c, t)
assert decoy["i"] == good["i"] and len(base64.b64decode(decoy["s"])) == len(base64.b64decode(good["s"])), (decoy, good)
c, t, decoy2 = scram(s, "nobody@example.test", "whatever")
assert decoy2["s"] == decoy["s"], "decoy salt must be stable per user"
# Tampered nonce or channel binding: refused.
c, t, _ = scram(s, "bob@example.test", "bob-secret", tamper="nonce")
assert c == 501, (c, t)
c, t, _ = scram(s, "bob@example.test", "bob-secret", tamper="cbind")
assert c == 501, (c, t)
s.expect("QUIT", 221)

# Malformed and cancelled exchanges.
s = tls_session()
s.expect("AUTH SCRAM-SHA-256 " + base64.b64encode(b"p=tls-unique,,n=bob@example.test,r=abc").decode(), 501, "5.5.2")
s.expect("AUTH SCRAM-SHA-256 " + base64.b64encode(b"n,,m=x,n=bob@example.test,r=abc").decode(), 501, "5.5.2")
s.expect("AUTH SCRAM-SHA-256 " + base64.b64encode(b"n,a=alice@example.test,n=bob@example.test,r=abc").decode(), 535, "5.7.8")
s.expect("AUTH SCRAM-SHA-256 !!!", 501, "5.5.2")
s.expect("AUTH SCRAM-SHA-256", 334)
s.expect("*", 501)
s.expect("QUIT", 221)

# SCRAM failures count towards login throttling (5 per account).
s = tls_session()
for i in range(5):
    c, t, _ = scram(s, "bob@example.test", "wrong-%d" % i)
    assert c == 535, (c, t)
s.expect("QUIT", 221)
s = tls_session()
c, t = s.cmd("AUTH SCRAM-SHA-256 " + base64.b64encode(b"n,,n=bob@example.test,r=abcdef").decode())
assert c == 421 and t.startswith("4.7.0"), (c, t)
assert s.closed()
print("ok")
"#;
    assert!(run_python(&script).contains("ok"));
    let mail = org.wait_for_mail("bob", 1, WAIT).unwrap();
    assert!(mail[0].contains("scram body"), "{}", mail[0]);
}
