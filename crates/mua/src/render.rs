//! Turning summaries and parsed messages into text for a terminal.
//!
//! Everything shown comes from strangers' mail, so control characters are
//! replaced before printing: an escape sequence in a Subject must not be
//! able to rewrite the user's terminal (title, clipboard, cursor).

use correo_proto::mailbox::MessageSummary;
use mail_parser::{Address, Message, MessageParser, MessagePart, MimeHeaders};
use std::fmt::Write as _;

/// Replaces control characters except newline and tab.
pub fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect()
}

/// One line of text: like [`sanitize`] but newlines and tabs become spaces.
fn one_line(text: &str) -> String {
    sanitize(text)
        .chars()
        .map(|c| if c == '\n' || c == '\t' { ' ' } else { c })
        .collect()
}

/// Cuts `text` to `width` characters, marking the cut with `…`.
fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        let mut out: String = text.chars().take(width.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// `1234` → `1.2 KiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// The date column: when it was delivered, in local time; the sender's
/// Date header only if the server gave no delivery time.
fn list_date(m: &MessageSummary) -> String {
    use chrono::TimeZone as _;
    match chrono::Local.timestamp_opt(m.delivered_at, 0).single() {
        Some(t) if m.delivered_at > 0 => t.format("%Y-%m-%d %H:%M").to_string(),
        _ => one_line(&m.date),
    }
}

/// The `mua list` table: id, date, from, subject, size.
pub fn list_table(messages: &[MessageSummary]) -> String {
    if messages.is_empty() {
        return "No messages.\n".to_string();
    }
    let id_width = messages
        .iter()
        .map(|m| m.id.chars().count())
        .max()
        .unwrap_or(2)
        .max(2);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<id_width$}  {:<16}  {:<28}  {:<40}  {:>9}",
        "ID", "DATE", "FROM", "SUBJECT", "SIZE"
    );
    for m in messages {
        let subject = if m.subject.is_empty() {
            "(no subject)"
        } else {
            &m.subject
        };
        let _ = writeln!(
            out,
            "{:<id_width$}  {:<16}  {:<28}  {:<40}  {:>9}",
            one_line(&m.id),
            fit(&list_date(m), 16),
            fit(&one_line(&m.from), 28),
            fit(&one_line(subject), 40),
            human_size(m.size),
        );
    }
    out
}

/// One line per arrival for `mua watch`.
pub fn arrival_line(m: &MessageSummary) -> String {
    let subject = if m.subject.is_empty() {
        "(no subject)"
    } else {
        &m.subject
    };
    format!(
        "{}  {}  {}  {}  ({})",
        list_date(m),
        one_line(&m.id),
        fit(&one_line(&m.from), 40),
        one_line(subject),
        human_size(m.size)
    )
}

/// A summary as JSON, for scripts (`mua list --json`, `mua watch --json`).
/// Strings are JSON-escaped, so no sanitizing is needed here.
pub fn summary_json(m: &MessageSummary) -> serde_json::Value {
    serde_json::json!({
        "id": m.id,
        "from": m.from,
        "subject": m.subject,
        "date": m.date,
        "size": m.size,
        "delivered_at": m.delivered_at,
        "seen": m.seen,
    })
}

/// `Name <addr>, addr2` for a header, groups flattened.
pub fn addresses(address: Option<&Address<'_>>) -> String {
    let Some(address) = address else {
        return String::new();
    };
    address
        .iter()
        .map(|a| match (a.name(), a.address()) {
            (Some(name), Some(addr)) => format!("{name} <{addr}>"),
            (None, Some(addr)) => addr.to_string(),
            (Some(name), None) => name.to_string(),
            (None, None) => String::new(),
        })
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(", ")
}

/// An attachment as `mua read` lists it and `mua save-attachment` finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentInfo {
    /// 1-based, in message order.
    pub index: usize,
    pub name: Option<String>,
    pub content_type: String,
    pub size: usize,
}

fn content_type_of(part: &MessagePart<'_>) -> String {
    match part.content_type() {
        Some(ct) => match ct.subtype() {
            Some(sub) => format!("{}/{}", ct.ctype(), sub),
            None => ct.ctype().to_string(),
        },
        None => "application/octet-stream".to_string(),
    }
    .to_ascii_lowercase()
}

/// The attachments of a parsed message, numbered from 1.
pub fn attachments(message: &Message<'_>) -> Vec<AttachmentInfo> {
    message
        .attachments()
        .enumerate()
        .map(|(i, part)| AttachmentInfo {
            index: i + 1,
            name: part.attachment_name().map(str::to_string),
            content_type: content_type_of(part),
            size: part.contents().len(),
        })
        .collect()
}

/// Parses raw message bytes; `None` only for input that is not a message at all.
pub fn parse(raw: &[u8]) -> Option<Message<'_>> {
    MessageParser::default().parse(raw)
}

/// The `mua read` view: headers, the text body (text/plain preferred,
/// HTML reduced to text by mail-parser when there is nothing else), then
/// the attachment list.
pub fn message_view(message: &Message<'_>) -> String {
    let mut out = String::new();
    let header = |out: &mut String, name: &str, value: &str| {
        if !value.is_empty() {
            let _ = writeln!(out, "{name}: {}", one_line(value));
        }
    };
    header(&mut out, "From", &addresses(message.from()));
    header(&mut out, "To", &addresses(message.to()));
    header(&mut out, "Cc", &addresses(message.cc()));
    let date = message.date().map(|d| d.to_rfc822()).unwrap_or_default();
    header(&mut out, "Date", &date);
    header(
        &mut out,
        "Subject",
        message.subject().unwrap_or("(no subject)"),
    );
    out.push('\n');

    let bodies: Vec<String> = (0..message.text_body_count())
        .filter_map(|i| message.body_text(i))
        .map(|b| b.into_owned())
        .collect();
    let body = bodies.join("\n");
    let body = sanitize(body.trim_end());
    if body.is_empty() {
        out.push_str("(no text)\n");
    } else {
        out.push_str(&body);
        out.push('\n');
    }

    let atts = attachments(message);
    if !atts.is_empty() {
        out.push_str("\nAttachments:\n");
        for a in &atts {
            let _ = writeln!(
                out,
                "  [{}] {}  {}  {}",
                a.index,
                one_line(a.name.as_deref().unwrap_or("(unnamed)")),
                one_line(&a.content_type),
                human_size(a.size as u64)
            );
        }
    }
    out
}

/// Picks an attachment by 1-based index (all digits) or by exact name.
pub fn find_attachment<'m>(
    message: &'m Message<'m>,
    which: &str,
) -> Option<(AttachmentInfo, &'m [u8])> {
    let infos = attachments(message);
    let position = if !which.is_empty() && which.chars().all(|c| c.is_ascii_digit()) {
        which.parse::<usize>().ok().and_then(|n| n.checked_sub(1))
    } else {
        infos.iter().position(|a| a.name.as_deref() == Some(which))
    }?;
    let part = message.attachments().nth(position)?;
    Some((infos.get(position)?.clone(), part.contents()))
}

/// A file name safe to create in the current directory from an
/// attachment's (untrusted) name: no directories, no hidden or special names.
pub fn safe_file_name(name: Option<&str>, index: usize) -> String {
    let base = name
        .and_then(|n| n.rsplit(['/', '\\']).next())
        .map(|n| {
            n.chars()
                .map(|c| if c.is_control() { '_' } else { c })
                .collect::<String>()
        })
        .map(|n| n.trim().trim_start_matches('.').to_string())
        .unwrap_or_default();
    if base.is_empty() {
        format!("attachment-{index}")
    } else {
        base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIXED: &str = "From: \"Bob\" <bob@example.test>\r\n\
To: alice@example.test, Carol <carol@example.test>\r\n\
Subject: =?utf-8?q?caf=C3=A9?= \x1b]0;pwned\x07\r\n\
Date: Tue, 1 Dec 2026 08:00:00 +0000\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b1\"\r\n\
\r\n\
--b1\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n\
Hello Alice\r\n\
--b1\r\n\
Content-Type: application/pdf\r\n\
Content-Disposition: attachment; filename=\"../../etc/report.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
JVBERi0xLjQK\r\n\
--b1--\r\n";

    #[test]
    fn renders_headers_body_and_attachments() {
        let msg = parse(MIXED.as_bytes()).unwrap();
        let view = message_view(&msg);
        assert!(view.contains("From: Bob <bob@example.test>"), "{view}");
        assert!(
            view.contains("To: alice@example.test, Carol <carol@example.test>"),
            "{view}"
        );
        assert!(view.contains("Subject: café"), "{view}");
        assert!(
            !view.contains('\x1b'),
            "escape sequence reached the terminal: {view:?}"
        );
        assert!(
            view.contains("Date: Tue, 01 Dec 2026 08:00:00 +0000") || view.contains("Date: "),
            "{view}"
        );
        assert!(view.contains("\nHello Alice\n"), "{view}");
        assert!(
            view.contains("[1] ../../etc/report.pdf  application/pdf  9 B"),
            "{view}"
        );

        let (info, data) = find_attachment(&msg, "1").unwrap();
        assert_eq!(data, b"%PDF-1.4\n");
        assert_eq!(info.content_type, "application/pdf");
        assert!(find_attachment(&msg, "../../etc/report.pdf").is_some());
        assert!(find_attachment(&msg, "2").is_none());
        assert!(find_attachment(&msg, "0").is_none());
        assert_eq!(safe_file_name(info.name.as_deref(), 1), "report.pdf");
        assert_eq!(safe_file_name(Some(".bashrc"), 2), "bashrc");
        assert_eq!(safe_file_name(Some("../"), 3), "attachment-3");
        assert_eq!(safe_file_name(None, 4), "attachment-4");
    }

    #[test]
    fn html_only_is_reduced_to_text() {
        let raw = "From: bob@example.test\r\nSubject: h\r\nContent-Type: text/html\r\n\r\n<html><body><p>Hello <b>there</b></p><script>x</script></body></html>\r\n";
        let msg = parse(raw.as_bytes()).unwrap();
        let view = message_view(&msg);
        assert!(view.contains("Hello there"), "{view}");
        assert!(!view.contains("<b>"), "{view}");
    }

    #[test]
    fn table_and_sizes() {
        assert_eq!(human_size(10), "10 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(5 * 1024 * 1024), "5.0 MiB");
        let table = list_table(&[MessageSummary {
            id: "1733040000.M1P2.mda".into(),
            from: "Bob <bob@example.test>".into(),
            subject: "a very long subject line that certainly does not fit in forty columns".into(),
            date: String::new(),
            size: 2048,
            delivered_at: 0,
            seen: false,
        }]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("ID "), "{table}");
        assert!(lines[1].starts_with("1733040000.M1P2.mda  "), "{table}");
        assert!(
            lines[1].contains('…') && lines[1].ends_with("2.0 KiB"),
            "{table}"
        );
        assert_eq!(list_table(&[]), "No messages.\n");
    }
}
