//! Delivery status notifications (RFC 3464): what the sender is told when
//! recipients fail for good, or are still delayed after
//! `retry.delay_warning`.
//!
//! A DSN is an ordinary message from the null reverse path `<>` to the
//! envelope sender, queued through the same spool as any other mail
//! ([`crate::queue::Queue`] calls [`build`] and stores the result before it
//! records the failure), so it is delivered locally or relayed like any
//! mail and survives a crash the same way. A message whose sender is `<>`
//! is never bounced (RFC 5321 6.1, RFC 3464 2: no DSN about a DSN).
//!
//! Layout (RFC 3462 multipart/report, RFC 3464 message/delivery-status):
//!
//! ```text
//! multipart/report; report-type=delivery-status
//!   text/plain                 what happened, for people
//!   message/delivery-status    per-message fields, then one block per recipient
//!   text/rfc822-headers        the original message's header section
//! ```
//!
//! Everything is written by hand with CRLF line endings; field values that
//! come from elsewhere (replies, addresses) are reduced to printable ASCII
//! on one line so they cannot break the structure.

use crate::index::{MessageEntry, RecipientEntry};

/// Which report this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Recipients failed permanently (`Action: failed`).
    Failed,
    /// Recipients are still being retried (`Action: delayed`).
    Delayed,
}

/// One recipient in a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRecipient {
    pub address: String,
    /// The last reply, e.g. `550 5.1.1 no such user`.
    pub reply: String,
}

impl From<&RecipientEntry> for ReportRecipient {
    fn from(r: &RecipientEntry) -> Self {
        ReportRecipient {
            address: r.address.clone(),
            reply: r.last_reply.clone(),
        }
    }
}

/// What a DSN needs to know.
pub struct Report<'a> {
    pub kind: Kind,
    /// This MTA (`Reporting-MTA: dns; …`).
    pub reporting_mta: &'a str,
    pub message: &'a MessageEntry,
    pub recipients: &'a [ReportRecipient],
    /// The original message (only its header section is used).
    pub original: &'a [u8],
    /// Seconds since the epoch: now, and (delayed only) when retries end.
    pub now: i64,
    pub retry_until: Option<i64>,
}

/// Whether a message may be reported on at all: never to `<>`.
pub fn should_report(message: &MessageEntry) -> bool {
    !message.sender.is_empty()
}

/// The header section of `message`, CRLF-terminated, without the blank line.
pub fn header_section(message: &[u8]) -> &[u8] {
    if message.starts_with(b"\r\n") {
        return &[];
    }
    match message.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => &message[..end + 2],
        None => message,
    }
}

/// One line of printable ASCII: controls and non-ASCII become spaces or `?`,
/// runs of spaces collapse, at most `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    let mut space = false;
    for c in text.chars() {
        let c = if c.is_ascii_control() || c == ' ' {
            ' '
        } else if c.is_ascii() {
            c
        } else {
            '?'
        };
        if c == ' ' {
            if space || out.is_empty() {
                continue;
            }
            space = true;
        } else {
            space = false;
        }
        if out.len() >= max {
            break;
        }
        out.push(c);
    }
    out.trim_end().to_string()
}

/// The RFC 3463 status of a reply: its enhanced code when it has one of the
/// right class, else derived from the basic code (`5.0.0` / `4.0.0`).
pub fn status_of(reply: &str, kind: Kind) -> String {
    let mut words = reply.split_whitespace();
    let code = words.next().unwrap_or("");
    let class = match kind {
        Kind::Delayed => '4',
        Kind::Failed if code.starts_with('4') => '4',
        Kind::Failed => '5',
    };
    if let Some(enhanced) = words.next() {
        let parts: Vec<&str> = enhanced.split('.').collect();
        if parts.len() == 3
            && parts[0].len() == 1
            && parts[0].starts_with(class)
            && parts[1..]
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
        {
            return enhanced.to_string();
        }
    }
    format!("{class}.0.0")
}

fn date(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .unwrap_or_default()
        .to_rfc2822()
}

/// The DSN as message octets (CRLF throughout), ready to be spooled.
pub fn build(report: &Report<'_>) -> Vec<u8> {
    let m = report.message;
    let host = one_line(report.reporting_mta, 255);
    let sender = one_line(&m.sender, 512);
    let headers = header_section(report.original);
    let mut boundary = format!("=_dsn_{:016x}", rand::random::<u64>());
    while headers
        .windows(boundary.len())
        .any(|w| w == boundary.as_bytes())
    {
        boundary = format!("=_dsn_{:016x}", rand::random::<u64>());
    }
    let (subject, action) = match report.kind {
        Kind::Failed => ("Undelivered Mail Returned to Sender", "failed"),
        Kind::Delayed => ("Delayed Mail (still being retried)", "delayed"),
    };
    let mut out = String::new();
    let mut line = |s: &str| {
        out.push_str(s);
        out.push_str("\r\n");
    };
    line(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{host}>"
    ));
    line(&format!("To: <{sender}>"));
    line(&format!("Subject: {subject}"));
    line(&format!("Date: {}", date(report.now)));
    line(&format!(
        "Message-ID: <dsn.{}.{:08x}@{host}>",
        one_line(&m.queue_id, 64),
        rand::random::<u32>()
    ));
    line("Auto-Submitted: auto-replied");
    line("MIME-Version: 1.0");
    line(&format!(
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\""
    ));
    line("");
    line("This is a MIME-encapsulated delivery status notification.");
    line("");
    // Part 1: for people.
    line(&format!("--{boundary}"));
    line("Content-Type: text/plain; charset=us-ascii");
    line("Content-Description: Notification");
    line("");
    line(&format!("This is the mail system at {host}."));
    line("");
    match report.kind {
        Kind::Failed => {
            line("Your message could not be delivered to one or more recipients.");
            line("It has not been delivered to the addresses below, and will not be.");
        }
        Kind::Delayed => {
            line("Your message has not been delivered yet to the recipients below.");
            line("The mail system will keep trying; you do not need to resend it.");
            if let Some(until) = report.retry_until {
                line(&format!("It will give up after {}.", date(until)));
            }
        }
    }
    line("");
    for r in report.recipients {
        line(&format!(
            "<{}>: {}",
            one_line(&r.address, 512),
            one_line(&r.reply, 900)
        ));
    }
    line("");
    line(&format!("Queue id: {}", one_line(&m.queue_id, 64)));
    line("");
    // Part 2: for programs (RFC 3464 2.1–2.3).
    line(&format!("--{boundary}"));
    line("Content-Type: message/delivery-status");
    line("Content-Description: Delivery report");
    line("");
    line(&format!("Reporting-MTA: dns; {host}"));
    line(&format!("X-Correo-Queue-ID: {}", one_line(&m.queue_id, 64)));
    line(&format!("Arrival-Date: {}", date(m.received_at)));
    for r in report.recipients {
        line("");
        line(&format!(
            "Final-Recipient: rfc822; {}",
            one_line(&r.address, 512)
        ));
        line(&format!("Action: {action}"));
        line(&format!("Status: {}", status_of(&r.reply, report.kind)));
        if !r.reply.is_empty() {
            line(&format!(
                "Diagnostic-Code: smtp; {}",
                one_line(&r.reply, 900)
            ));
        }
        line(&format!("Last-Attempt-Date: {}", date(report.now)));
        if let Some(until) = report.retry_until {
            line(&format!("Will-Retry-Until: {}", date(until)));
        }
    }
    line("");
    // Part 3: the original header section.
    line(&format!("--{boundary}"));
    line("Content-Type: text/rfc822-headers");
    if headers.iter().any(|&b| b >= 0x80) {
        line("Content-Transfer-Encoding: 8bit");
    }
    line("Content-Description: Undelivered message headers");
    line("");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(headers);
    if !headers.is_empty() && !headers.ends_with(b"\r\n") {
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(sender: &str) -> MessageEntry {
        MessageEntry {
            queue_id: "0193a1b2c3d4e5f6".into(),
            sender: sender.into(),
            journey_id: "j".into(),
            received_at: 1_700_000_000,
            size: 10,
            held: false,
            warned: false,
            recipients: Vec::new(),
        }
    }

    const ORIGINAL: &[u8] = b"Received: from x\r\n\tby y; now\r\nFrom: alice@example.test\r\nSubject: hi\r\n\r\nbody line\r\n--=_dsn_ not a boundary\r\n";

    fn boundary_of(text: &str) -> String {
        let start = text.find("boundary=\"").unwrap() + 10;
        let end = text[start..].find('"').unwrap();
        text[start..start + end].to_string()
    }

    #[test]
    fn failed_report_is_a_well_formed_multipart_report() {
        let m = entry("alice@example.test");
        let recipients = vec![
            ReportRecipient {
                address: "nobody@another.test".into(),
                reply: "550 5.1.1 no such user\r\nInjected: header (from 127.0.0.1:25)".into(),
            },
            ReportRecipient {
                address: "x@gone.test".into(),
                reply: "556 5.1.10 domain gone.test does not accept mail (null MX)".into(),
            },
        ];
        let dsn = build(&Report {
            kind: Kind::Failed,
            reporting_mta: "mx.example.test",
            message: &m,
            recipients: &recipients,
            original: ORIGINAL,
            now: 1_700_000_100,
            retry_until: None,
        });
        let text = String::from_utf8(dsn.clone()).unwrap();
        // CRLF only.
        for (i, &b) in dsn.iter().enumerate() {
            if b == b'\n' {
                assert_eq!(dsn[i - 1], b'\r', "bare LF at {i}");
            }
            if b == b'\r' {
                assert_eq!(dsn[i + 1], b'\n', "bare CR at {i}");
            }
        }
        assert!(text.starts_with("From: Mail Delivery System <MAILER-DAEMON@mx.example.test>\r\n"));
        assert!(text.contains("\r\nTo: <alice@example.test>\r\n"));
        assert!(text.contains("\r\nAuto-Submitted: auto-replied\r\n"));
        assert!(text.contains("Content-Type: multipart/report; report-type=delivery-status;"));
        let b = boundary_of(&text);
        assert_eq!(text.matches(&format!("\r\n--{b}\r\n")).count(), 3);
        assert!(text.ends_with(&format!("\r\n--{b}--\r\n")));
        // The parts, in order.
        let plain = text.find("Content-Type: text/plain").unwrap();
        let status = text.find("Content-Type: message/delivery-status").unwrap();
        let headers = text.find("Content-Type: text/rfc822-headers").unwrap();
        assert!(plain < status && status < headers);
        // The delivery-status fields (RFC 3464).
        let report = &text[status..headers];
        assert!(report.contains("\r\n\r\nReporting-MTA: dns; mx.example.test\r\n"));
        assert!(report.contains("Arrival-Date: "));
        assert!(report.contains("\r\n\r\nFinal-Recipient: rfc822; nobody@another.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"));
        assert!(report.contains(
            "Final-Recipient: rfc822; x@gone.test\r\nAction: failed\r\nStatus: 5.1.10\r\n"
        ));
        // A reply cannot inject fields: it stays on one line.
        assert!(report.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user Injected: header"));
        assert!(!report.contains("\r\nInjected:"));
        // The original headers, not the body.
        let tail = &text[headers..];
        assert!(tail.contains("\r\n\r\nReceived: from x\r\n\tby y; now\r\nFrom: alice@example.test\r\nSubject: hi\r\n\r\n--"));
        assert!(!tail.contains("body line"));
    }

    #[test]
    fn delayed_report_says_when_retries_end() {
        let m = entry("alice@example.test");
        let recipients = vec![ReportRecipient {
            address: "bob@slow.test".into(),
            reply: "451 4.4.1 192.0.2.1:25: connect failed".into(),
        }];
        let text = String::from_utf8(build(&Report {
            kind: Kind::Delayed,
            reporting_mta: "mx.example.test",
            message: &m,
            recipients: &recipients,
            original: b"Subject: x\r\n\r\nbody\r\n",
            now: 1_700_000_100,
            retry_until: Some(1_700_400_000),
        }))
        .unwrap();
        assert!(text.contains("Subject: Delayed Mail"));
        assert!(text.contains("Action: delayed\r\nStatus: 4.4.1\r\n"));
        assert!(text.contains("Will-Retry-Until: "));
    }

    #[test]
    fn status_codes_and_header_sections() {
        assert_eq!(status_of("550 5.1.1 unknown", Kind::Failed), "5.1.1");
        assert_eq!(status_of("550 unknown user", Kind::Failed), "5.0.0");
        assert_eq!(status_of("554 4.1.1 wrong class", Kind::Failed), "5.0.0");
        assert_eq!(
            status_of(
                "451 4.4.1 x (gave up: queue lifetime exceeded)",
                Kind::Failed
            ),
            "4.4.1"
        );
        assert_eq!(status_of("", Kind::Delayed), "4.0.0");
        assert_eq!(
            header_section(b"A: 1\r\nB: 2\r\n\r\nbody"),
            b"A: 1\r\nB: 2\r\n"
        );
        assert_eq!(header_section(b"A: 1\r\n"), b"A: 1\r\n");
        assert_eq!(header_section(b"\r\nbody"), b"");
        assert!(!should_report(&entry("")));
        assert!(should_report(&entry("a@b.test")));
    }
}
