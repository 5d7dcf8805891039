//! Open-relay tests (issue 4): from clients that are not authenticated, on
//! the MTA's port 25 and on the MSA, every classic relay trick is refused
//! and nothing is ever queued for a foreign domain. No trust by IP: a
//! client on 127.0.0.1, or on the MTA's own address, is a stranger too.

use correo_tests::{Org, OrgOptions, SMTP_PORT, SUBMISSION_PORT};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// A byte-exact client that can pick its source address.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect_from(source: Option<Ipv4Addr>, addr: SocketAddr) -> Client {
        let stream = correo_tests::connect_from(source, addr).expect("connect");
        stream.set_nonblocking(false).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut c = Client {
            stream,
            buf: Vec::new(),
        };
        let (code, text) = c.reply();
        assert_eq!(code, 220, "{text}");
        c
    }

    fn reply(&mut self) -> (u16, String) {
        let mut text = Vec::new();
        loop {
            while !self.buf.contains(&b'\n') {
                let mut chunk = [0u8; 4096];
                match self.stream.read(&mut chunk) {
                    Ok(0) => panic!("connection closed after {text:?}"),
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => panic!("read: {e}"),
                }
            }
            let pos = self.buf.iter().position(|&b| b == b'\n').unwrap();
            let line: Vec<u8> = self.buf.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line).trim_end().to_string();
            let code: u16 = line[..3].parse().unwrap();
            text.push(line.get(4..).unwrap_or("").to_string());
            if line.as_bytes().get(3) != Some(&b'-') {
                return (code, text.join("\n"));
            }
        }
    }

    fn cmd(&mut self, line: &str) -> (u16, String) {
        self.stream
            .write_all(format!("{line}\r\n").as_bytes())
            .unwrap();
        self.reply()
    }

    fn expect(&mut self, line: &str, code: u16, enhanced: &str) {
        let (c, t) = self.cmd(line);
        assert!(c == code && t.starts_with(enhanced), "{line:?}: {c} {t}");
    }
}

/// The classic forms, for recipient `RCPT TO:<...>` (local domain example.test).
/// Each must be refused: a syntax error (501) or relay denied (554 5.7.1).
const RELAY_FORMS: &[&str] = &[
    // Source routes (RFC 821 A-d-l; RFC 5321 C says "ignore", we refuse).
    "@foreign.test:user@elsewhere.test",
    "@a.foreign.test,@b.foreign.test:user@c.foreign.test",
    "@example.test:user@foreign.test",
    "@foreign.test:bob@example.test",
    // The %-hack.
    "user%foreign.test@example.test",
    "user%foreign.test@EXAMPLE.TEST",
    "\"user%foreign.test\"@example.test",
    "user%foreign.test%example.test@example.test",
    // Bang paths.
    "foreign.test!user@example.test",
    "foreign.test!user",
    "example.test!foreign.test!user@example.test",
    // Quoted local parts hiding an @.
    "\"user@foreign.test\"@example.test",
    "\"user@foreign.test\"",
    "\"user\\@foreign.test\"@example.test",
    // Several @.
    "user@foreign.test@example.test",
    "user@example.test@foreign.test",
    // IP literals, including our own loopback.
    "user@[127.0.0.1]",
    "bob@[127.0.0.1]",
    "user@[IPv6:::1]",
    "user@[192.0.2.1]",
    // Trailing dots.
    "USER@FOREIGN.TEST.",
    "user@foreign.test.",
    "bob@example.test.",
    // Other domain tricks.
    "user@foreign.test%example.test",
    "user@foreign.test:25",
    "user@foreign.test\u{0}",
    "user@foreign..test",
];

/// Plainly foreign recipients: relay denied on port 25 (an authenticated
/// submission may of course send to them).
const FOREIGN: &[&str] = &[
    "user@foreign.test",
    "USER@FOREIGN.TEST",
    "user@Foreign.Test",
    "user@example.test.foreign.test",
    "user@localhost",
    "postmaster@foreign.test",
    "user@mx.example.test",
    "user@sub.example.test",
];

fn relay_refused(c: &mut Client, form: &str) {
    let (code, text) = c.cmd(&format!("RCPT TO:<{form}>"));
    let ok = (code == 501) || (code == 554 && text.starts_with("5.7.1")) || code == 500;
    assert!(ok, "RCPT TO:<{form}> was not refused: {code} {text}");
}

/// Segment files of the MTA's spool: one exists once any message was ever
/// written (the segment being filled is never deleted), so an empty list
/// means nothing was ever queued.
fn spool_files(org: &Org) -> Vec<String> {
    let dir = org.path("mta/spool/seg");
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().display().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn port_25_never_relays() {
    let org = Org::start(OrgOptions::new("example.test")).unwrap();
    let addr = org.addr(SMTP_PORT);
    // From the default source, from 127.0.0.1 ("internal-looking") and from
    // the MTA's own address: the same refusals.
    for source in [None, Some(Ipv4Addr::LOCALHOST), Some(org.ip)] {
        for sender in [
            "<stranger@remote.test>",
            "<bob@example.test>",
            "<>",
            "<postmaster@example.test>",
        ] {
            let forms: Vec<&str> = RELAY_FORMS.iter().chain(FOREIGN).copied().collect();
            // Syntax errors count towards the error limit (10): a fresh
            // session for every few forms.
            for chunk in forms.chunks(8) {
                let mut c = Client::connect_from(source, addr);
                c.expect("EHLO localhost", 250, "");
                c.expect(&format!("MAIL FROM:{sender}"), 250, "2.1.0");
                for form in chunk {
                    relay_refused(&mut c, form);
                }
                // Nothing was accepted, so there is nothing to send.
                c.expect("DATA", 554, "5.5.1");
                c.expect("QUIT", 221, "2.0.0");
            }
        }
    }
    // HELO (not EHLO) and a HELO name claiming to be us change nothing.
    let mut c = Client::connect_from(Some(Ipv4Addr::LOCALHOST), addr);
    c.expect("HELO mx.example.test", 250, "");
    c.expect("MAIL FROM:<alice@example.test>", 250, "2.1.0");
    c.expect("RCPT TO:<user@foreign.test>", 554, "5.7.1");
    // A local recipient is of course fine (any case of the domain).
    c.expect("RCPT TO:<bob@EXAMPLE.test>", 250, "2.1.5");
    c.expect("RSET", 250, "2.0.0");
    c.expect("QUIT", 221, "2.0.0");

    std::thread::sleep(Duration::from_millis(500));
    assert!(
        spool_files(&org).is_empty(),
        "something was queued: {:?}",
        spool_files(&org)
    );
    assert!(org.maildir_new("alice").is_empty() && org.maildir_new("bob").is_empty());
}

#[test]
fn msa_never_relays_unauthenticated() {
    let org = Org::start(OrgOptions::new("example.test")).unwrap();
    let addr = org.addr(SUBMISSION_PORT);
    for source in [None, Some(Ipv4Addr::LOCALHOST), Some(org.ip)] {
        let mut c = Client::connect_from(source, addr);
        c.expect("EHLO localhost", 250, "");
        c.expect("MAIL FROM:<alice@example.test>", 530, "5.7.0");
        c.expect("RCPT TO:<user@foreign.test>", 503, "5.5.1");
        c.expect("DATA", 503, "5.5.1");
        c.expect("QUIT", 221, "2.0.0");
    }
    // Under TLS but without AUTH: still nothing; with AUTH the classic
    // forms are still refused (an authenticated user may relay, but only
    // to real addresses).
    let forms: Vec<String> = RELAY_FORMS.iter().map(|f| format!("{f:?}")).collect();
    let script = format!(
        r#"
import smtplib, ssl
ctx = ssl.create_default_context(cafile={ca:?})
ctx.check_hostname = False
s = smtplib.SMTP({ip:?}, {port}, timeout=20)
s.ehlo("localhost")
s.starttls(context=ctx)
s.ehlo("localhost")
code, text = s.mail("alice@example.test")
assert code == 530 and text.startswith(b"5.7.0"), (code, text)
code, text = s.rcpt("user@foreign.test")
assert code == 503, (code, text)
s.quit()
forms = [{forms}]
for start in range(0, len(forms), 8):
    s = smtplib.SMTP({ip:?}, {port}, timeout=20)
    s.starttls(context=ctx)
    s.login("alice@example.test", "alice-secret")
    code, text = s.mail("alice@example.test")
    assert code == 250, (code, text)
    for form in forms[start:start + 8]:
        s.putcmd("RCPT TO:<" + form + ">")
        code, text = s.getreply()
        assert code in (500, 501) or (code == 554 and text.startswith(b"5.7.1")), (form, code, text)
    s.quit()
print("ok")
"#,
        ca = org.path("certs/ca.pem").display().to_string(),
        ip = org.ip.to_string(),
        port = SUBMISSION_PORT,
        forms = forms.join(", "),
    );
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        spool_files(&org).is_empty(),
        "something was queued: {:?}",
        spool_files(&org)
    );
}
