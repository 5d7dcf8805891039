//! The whole journey, end to end: real binaries, real sockets, real TLS,
//! real DNS. MUA → MSA → MTA → MDA → Maildir within one domain and across
//! two domains through an MX lookup; the MSA's repairs; the refusals; and a
//! client no one here wrote (Python's smtplib).

use correo_tests::smtp::RawSmtp;
use correo_tests::{Dns, Org, OrgOptions, SMTP_PORT, SUBMISSION_PORT, Zone};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn header<'a>(message: &'a str, name: &str) -> Vec<&'a str> {
    let head = message.split("\r\n\r\n").next().unwrap_or("");
    head.split("\r\n")
        .filter(|l| {
            l.len() > name.len()
                && l[..name.len()].eq_ignore_ascii_case(name)
                && l.as_bytes()[name.len()] == b':'
        })
        .collect()
}

#[test]
fn journey_within_one_domain() {
    let org = Org::start(OrgOptions::new("example.test")).unwrap();
    let out = org
        .run_mua(
            "alice",
            &[
                "send",
                "--to",
                "bob@example.test",
                "--subject",
                "Hello Bob",
                "--body",
                "First message.",
            ],
        )
        .unwrap();
    assert!(!out.trim().is_empty(), "mua send printed no queue id");

    let mail = org.wait_for_mail("bob", 1, WAIT).unwrap();
    let message = &mail[0];
    assert!(
        message.starts_with("Return-Path: <alice@example.test>\r\n"),
        "{message}"
    );
    assert_eq!(
        header(message, "Delivered-To"),
        ["Delivered-To: bob@example.test"]
    );
    assert!(message.contains("Subject: Hello Bob"), "{message}");
    assert!(message.contains("First message."), "{message}");
    assert!(
        header(message, "Received").len() >= 2,
        "MSA and MTA each add Received: {message}"
    );

    // Bob reads it through the mailbox API.
    let list = org.run_mua("bob", &["list"]).unwrap();
    assert!(list.contains("Hello Bob"), "{list}");
    let id = std::path::Path::new(&org.maildir_new("bob")[0])
        .file_name()
        .unwrap()
        .to_string_lossy()
        .split(":2,")
        .next()
        .unwrap()
        .to_string();
    let read = org.run_mua("bob", &["read", &id]).unwrap();
    assert!(read.contains("First message."), "{read}");
    // Alice cannot see Bob's mailbox.
    assert!(org.run_mua("alice", &["read", &id]).is_err());
}

#[test]
fn journey_across_two_domains_by_mx() {
    // Org B only receives, so it needs no resolver; the DNS server then
    // learns its address, and org A resolves another.test's MX through it.
    let org_b = Org::start(OrgOptions::new("another.test")).unwrap();
    let dns = Dns::start(&[
        Zone::with_mx("another.test", org_b.ip),
        Zone::raw("example.test", ""),
    ])
    .unwrap();
    let mut a_options = OrgOptions::new("example.test");
    a_options.dns = Some(dns.addr);
    let org_a = Org::start(a_options).unwrap();

    org_a
        .run_mua(
            "alice",
            &[
                "send",
                "--to",
                "bob@another.test",
                "--subject",
                "Across",
                "--body",
                "Over the MX hop.",
            ],
        )
        .unwrap();
    let mail = org_b.wait_for_mail("bob", 1, WAIT).unwrap();
    let message = &mail[0];
    assert!(
        message.starts_with("Return-Path: <alice@example.test>\r\n"),
        "{message}"
    );
    assert!(message.contains("Over the MX hop."), "{message}");
    let received = header(message, "Received");
    assert!(received.len() >= 3, "MSA, MTA A and MTA B: {received:?}");
    assert!(message.contains("by mx.another.test"), "{message}");
    assert!(message.contains("by mx.example.test"), "{message}");
    assert!(org_a.maildir_new("bob").is_empty());
}

#[test]
fn msa_repairs_missing_date_and_message_id() {
    let org = Org::start(OrgOptions::new("example.test")).unwrap();
    let script = format!(
        r#"
import smtplib, ssl
ctx = ssl.create_default_context(cafile={ca:?})
ctx.check_hostname = False
s = smtplib.SMTP({ip:?}, {port}, timeout=20)
s.starttls(context=ctx)
s.login("alice@example.test", "alice-secret")
msg = "From: alice@example.test\r\nTo: bob\r\nSubject: repair me\r\n\r\nno date, no id\n"
s.sendmail("alice@example.test", ["bob@example.test"], msg)
s.quit()
"#,
        ca = org.path("certs/ca.pem").display().to_string(),
        ip = org.ip.to_string(),
        port = SUBMISSION_PORT
    );
    run_python(&script);
    let mail = org.wait_for_mail("bob", 1, WAIT).unwrap();
    let message = &mail[0];
    assert_eq!(header(message, "Date").len(), 1, "{message}");
    assert_eq!(header(message, "Message-ID").len(), 1, "{message}");
    assert_eq!(
        header(message, "To"),
        ["To: bob@example.test"],
        "unqualified address completed"
    );
}

#[test]
fn python_smtplib_with_starttls_and_auth_delivers() {
    let org = Org::start(OrgOptions::new("example.test")).unwrap();
    let script = format!(
        r#"
import smtplib, ssl
from email.message import EmailMessage
ctx = ssl.create_default_context(cafile={ca:?})
ctx.check_hostname = False
m = EmailMessage()
m["From"] = "alice@example.test"
m["To"] = "bob@example.test"
m["Subject"] = "from smtplib"
m.set_content("sent by Python's smtplib\n")
with smtplib.SMTP({ip:?}, {port}, timeout=20) as s:
    s.ehlo("python.client")
    assert "auth" not in s.esmtp_features, "AUTH offered before TLS"
    s.starttls(context=ctx)
    s.ehlo("python.client")
    assert "auth" in s.esmtp_features
    s.login("alice@example.test", "alice-secret")
    refused = s.send_message(m)
    assert not refused, refused
with smtplib.SMTP_SSL({ip:?}, 465, context=ctx, timeout=20) as s:
    s.login("alice@example.test", "alice-secret")
    m.replace_header("Subject", "over implicit TLS")
    s.send_message(m)
"#,
        ca = org.path("certs/ca.pem").display().to_string(),
        ip = org.ip.to_string(),
        port = SUBMISSION_PORT
    );
    run_python(&script);
    let mail = org.wait_for_mail("bob", 2, WAIT).unwrap();
    assert!(mail.iter().any(|m| m.contains("Subject: from smtplib")));
    assert!(
        mail.iter()
            .any(|m| m.contains("Subject: over implicit TLS"))
    );
}

#[test]
fn refusals_530_554_550() {
    let org = Org::start(OrgOptions::new("example.test")).unwrap();

    // MSA: MAIL before AUTH.
    let (mut msa, greeting) = RawSmtp::connect(org.addr(SUBMISSION_PORT)).unwrap();
    assert_eq!(greeting.code, 220);
    org_expect(&mut msa, "EHLO client.test", 250);
    let reply = msa.cmd("MAIL FROM:<alice@example.test>").unwrap();
    assert_eq!(reply.code, 530, "{reply:?}");
    assert!(reply.text.starts_with("5.7.0"), "{reply:?}");

    // MTA port 25: relay denied, unknown user, known user accepted.
    let (mut mta, greeting) = RawSmtp::connect(org.addr(SMTP_PORT)).unwrap();
    assert_eq!(greeting.code, 220);
    org_expect(&mut mta, "EHLO relay.test", 250);
    org_expect(&mut mta, "MAIL FROM:<someone@elsewhere.test>", 250);
    let reply = mta.cmd("RCPT TO:<victim@foreign.test>").unwrap();
    assert_eq!(reply.code, 554, "{reply:?}");
    assert!(reply.text.starts_with("5.7.1"), "{reply:?}");
    let reply = mta.cmd("RCPT TO:<nobody@example.test>").unwrap();
    assert_eq!(reply.code, 550, "{reply:?}");
    assert!(reply.text.starts_with("5.1.1"), "{reply:?}");
    org_expect(&mut mta, "RCPT TO:<bob@example.test>", 250);
    org_expect(&mut mta, "QUIT", 221);

    // MSA: an authenticated user may not send as someone else (envelope and From:).
    let script = format!(
        r#"
import smtplib, ssl
ctx = ssl.create_default_context(cafile={ca:?})
ctx.check_hostname = False
s = smtplib.SMTP({ip:?}, {port}, timeout=20)
s.starttls(context=ctx)
s.login("alice@example.test", "alice-secret")
code, text = s.mail("bob@example.test")
assert code == 550 and text.startswith(b"5.7.1"), (code, text)
s.rset()
try:
    s.sendmail("alice@example.test", ["bob@example.test"], "From: bob@example.test\r\nSubject: forged\r\n\r\nx\r\n")
    raise SystemExit("forged From accepted")
except smtplib.SMTPDataError as e:
    assert e.smtp_code == 550 and e.smtp_error.startswith(b"5.7.1"), e
s.quit()
"#,
        ca = org.path("certs/ca.pem").display().to_string(),
        ip = org.ip.to_string(),
        port = SUBMISSION_PORT
    );
    run_python(&script);
}

fn org_expect(smtp: &mut RawSmtp, line: &str, code: u16) {
    smtp.expect(line, code).unwrap();
}

fn run_python(script: &str) {
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
}
