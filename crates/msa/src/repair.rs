//! Submission repairs allowed by RFC 6409 section 8: the MSA may fix what a
//! careless MUA left out, so that the message is valid RFC 5322 before it
//! enters the transport system.
//!
//! Only the header section is rewritten; the body is never touched or
//! copied here. The output is the new header fields (CRLF line ends, no
//! empty line) and the list of repairs made, for the log.

use crate::validate::{Field, HeaderSection};
use std::fmt;

/// Header fields whose unqualified addresses are completed (RFC 6409 8.3).
const ADDRESS_FIELDS: &[&str] = &["From", "Sender", "Reply-To", "To", "Cc"];

/// The header we set ourselves; a client's copy is dropped rather than trusted.
pub const JOURNEY_HEADER: &str = "X-Correo-Journey";

/// One change made to a submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repair {
    AddedDate,
    AddedMessageId(String),
    QualifiedAddress {
        header: String,
        from: String,
        to: String,
    },
    DroppedJourneyHeader,
    /// Bcc recipients are in the envelope; the field would show them to
    /// everyone (RFC 5322 3.6.3, first method; Postfix's cleanup does the same).
    RemovedBcc,
}

impl fmt::Display for Repair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Repair::AddedDate => f.write_str("added Date"),
            Repair::AddedMessageId(id) => write!(f, "added Message-ID {id}"),
            Repair::QualifiedAddress { header, from, to } => {
                write!(f, "completed {header} address {from} -> {to}")
            }
            Repair::DroppedJourneyHeader => write!(f, "dropped client-supplied {JOURNEY_HEADER}"),
            Repair::RemovedBcc => f.write_str("removed Bcc"),
        }
    }
}

/// What the repairs need to know.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    /// Domain appended to unqualified addresses (the user's domain).
    pub domain: &'a str,
    /// Right side of a generated Message-ID (the MSA's host name).
    pub hostname: &'a str,
    /// Date to use when the message has none, RFC 5322 format.
    pub date: String,
}

impl<'a> Context<'a> {
    /// A context dated now.
    pub fn now(domain: &'a str, hostname: &'a str) -> Self {
        Context {
            domain,
            hostname,
            date: chrono::Utc::now().to_rfc2822(),
        }
    }
}

/// The repaired header fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repaired {
    /// Header fields, each line ending in CRLF; no trailing empty line.
    pub header: Vec<u8>,
    pub repairs: Vec<Repair>,
}

/// Rewrites the header section of `message` (described by `section`).
pub fn repair(message: &[u8], section: &HeaderSection, ctx: &Context<'_>) -> Repaired {
    let header_len = section.fields.last().map_or(0, |f| f.range.end);
    let mut header = Vec::with_capacity(header_len + 256);
    let mut repairs = Vec::new();
    for field in &section.fields {
        if field.is(message, JOURNEY_HEADER) {
            repairs.push(Repair::DroppedJourneyHeader);
            continue;
        }
        if field.is(message, "Bcc") {
            repairs.push(Repair::RemovedBcc);
            continue;
        }
        let raw = &message[field.range.clone()];
        if ADDRESS_FIELDS.iter().any(|n| field.is(message, n)) && !ctx.domain.is_empty() {
            let completed = complete_addresses(field, message, ctx.domain, &mut repairs);
            push_crlf_lines(&mut header, &completed);
        } else {
            push_crlf_lines(&mut header, raw);
        }
    }
    if section.count(message, "Date") == 0 {
        push_crlf_lines(&mut header, format!("Date: {}", ctx.date).as_bytes());
        repairs.push(Repair::AddedDate);
    }
    if section.count(message, "Message-ID") == 0 {
        let id = format!("<{}@{}>", uuid::Uuid::new_v4(), ctx.hostname);
        push_crlf_lines(&mut header, format!("Message-ID: {id}").as_bytes());
        repairs.push(Repair::AddedMessageId(id));
    }
    Repaired { header, repairs }
}

/// Appends `text` line by line, every line ended by CRLF, whatever line
/// ends (or none) it had.
fn push_crlf_lines(out: &mut Vec<u8>, text: &[u8]) {
    let text = text.strip_suffix(b"\n").unwrap_or(text);
    for line in text.split(|&b| b == b'\n') {
        out.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
        out.extend_from_slice(b"\r\n");
    }
}

/// The field with `@domain` appended to every addr-spec that has no `@`.
fn complete_addresses(
    field: &Field,
    message: &[u8],
    domain: &str,
    repairs: &mut Vec<Repair>,
) -> Vec<u8> {
    let raw = &message[field.range.clone()];
    let value_start = field.name.end + 1 - field.range.start;
    let spots = unqualified_addr_specs(&raw[value_start..]);
    let mut out = Vec::with_capacity(raw.len() + spots.len() * (domain.len() + 1));
    let mut copied = 0;
    for spot in spots {
        let (start, end) = (value_start + spot.start, value_start + spot.end);
        out.extend_from_slice(&raw[copied..end]);
        out.push(b'@');
        out.extend_from_slice(domain.as_bytes());
        copied = end;
        let local = String::from_utf8_lossy(&raw[start..end]).into_owned();
        repairs.push(Repair::QualifiedAddress {
            header: String::from_utf8_lossy(field.name(message)).into_owned(),
            to: format!("{local}@{domain}"),
            from: local,
        });
    }
    out.extend_from_slice(&raw[copied..]);
    out
}

/// End of a quoted string starting at `i` (the opening quote); exclusive.
fn skip_quoted(v: &[u8], mut i: usize) -> usize {
    i += 1;
    while i < v.len() {
        match v[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    v.len()
}

/// End of a (possibly nested) comment starting at `i`; exclusive.
fn skip_comment(v: &[u8], mut i: usize) -> usize {
    let mut depth = 0;
    while i < v.len() {
        match v[i] {
            b'\\' => i += 1,
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    v.len()
}

/// The mailbox being scanned in an address list.
#[derive(Default)]
struct Mailbox {
    /// First and last octet of the bare addr-spec tokens (outside `<>`).
    first: Option<usize>,
    last_end: usize,
    has_at: bool,
    /// Inside of `<...>` when the mailbox is a name-addr.
    angle: Option<(usize, usize, bool)>,
}

impl Mailbox {
    fn token(&mut self, start: usize, end: usize) {
        self.first.get_or_insert(start);
        self.last_end = end;
    }

    /// The addr-spec range, when it lacks a domain.
    fn unqualified(&self, v: &[u8]) -> Option<std::ops::Range<usize>> {
        match self.angle {
            Some((start, end, has_at)) => {
                let inner = &v[start..end];
                let lead = inner.iter().take_while(|b| b.is_ascii_whitespace()).count();
                let trail = inner
                    .iter()
                    .rev()
                    .take_while(|b| b.is_ascii_whitespace())
                    .count();
                (!has_at && lead < inner.len()).then(|| start + lead..end - trail)
            }
            None => self
                .first
                .filter(|_| !self.has_at)
                .map(|first| first..self.last_end),
        }
    }
}

/// Ranges (in `v`, a field value) of addr-specs without `@`. A small
/// RFC 5322 address-list scanner: quoted strings, comments, angle
/// addresses and groups, so that only the addr-spec itself is touched and
/// everything else (display names, comments, folding) stays as written.
fn unqualified_addr_specs(v: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut found = Vec::new();
    let mut mailbox = Mailbox::default();
    let mut i = 0;
    while i < v.len() {
        match v[i] {
            b'"' => {
                let end = skip_quoted(v, i);
                mailbox.token(i, end);
                i = end;
                continue;
            }
            b'(' => {
                i = skip_comment(v, i);
                continue;
            }
            b'<' => {
                let mut j = i + 1;
                let mut has_at = false;
                while j < v.len() && v[j] != b'>' {
                    match v[j] {
                        b'"' => {
                            j = skip_quoted(v, j);
                            continue;
                        }
                        b'@' => has_at = true,
                        _ => {}
                    }
                    j += 1;
                }
                mailbox.angle = Some((i + 1, j.min(v.len()), has_at));
                i = j + 1;
                continue;
            }
            b',' | b';' => {
                found.extend(mailbox.unqualified(v));
                mailbox = Mailbox::default();
            }
            // A group's display name ends here; its mailboxes follow.
            b':' => mailbox = Mailbox::default(),
            b'@' => {
                mailbox.has_at = true;
                mailbox.token(i, i + 1);
            }
            b if b.is_ascii_whitespace() => {}
            _ => mailbox.token(i, i + 1),
        }
        i += 1;
    }
    found.extend(mailbox.unqualified(v));
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::split;

    fn ctx() -> Context<'static> {
        Context {
            domain: "example.test",
            hostname: "msa.example.test",
            date: "Tue, 1 Dec 2026 08:00:00 +0000".into(),
        }
    }

    fn run(m: &[u8]) -> Repaired {
        repair(m, &split(m).unwrap(), &ctx())
    }

    fn text(r: &Repaired) -> &str {
        std::str::from_utf8(&r.header).unwrap()
    }

    #[test]
    fn adds_missing_date_and_message_id() {
        let r = run(b"From: alice@example.test\r\nSubject: x\r\n\r\nbody\r\n");
        let t = text(&r);
        assert!(
            t.starts_with("From: alice@example.test\r\nSubject: x\r\n"),
            "{t}"
        );
        assert!(
            t.contains("Date: Tue, 1 Dec 2026 08:00:00 +0000\r\n"),
            "{t}"
        );
        let id_line = t.lines().find(|l| l.starts_with("Message-ID: <")).expect(t);
        assert!(id_line.ends_with("@msa.example.test>"), "{id_line}");
        let uuid_part = &id_line["Message-ID: <".len()..id_line.len() - "@msa.example.test>".len()];
        uuid::Uuid::parse_str(uuid_part).unwrap();
        assert_eq!(r.repairs.len(), 2);
        assert_eq!(r.repairs[0], Repair::AddedDate);
        assert!(!t.contains("\r\n\r\n"), "no empty line: the caller adds it");
    }

    #[test]
    fn keeps_existing_date_and_message_id() {
        let m = b"Date: Mon, 30 Nov 2026 10:00:00 +0100\r\nmessage-id: <a@b>\r\nFrom: alice@example.test\r\n\r\n";
        let r = run(m);
        assert!(r.repairs.is_empty(), "{:?}", r.repairs);
        assert_eq!(r.header, &m[..m.len() - 2]);
    }

    #[test]
    fn completes_unqualified_addresses() {
        let m = b"From: alice\r\nTo: Bob <bob>, carol@other.test,\r\n \"Dan, D.\" <dan> (friend)\r\n\
Cc: team: erin, frank@x.test;\r\nReply-To: <alice>\r\nSubject: bob\r\nDate: x\r\nMessage-ID: <1@x>\r\n\r\n";
        let r = run(m);
        let t = text(&r);
        assert!(t.contains("From: alice@example.test\r\n"), "{t}");
        assert!(
            t.contains("To: Bob <bob@example.test>, carol@other.test,\r\n \"Dan, D.\" <dan@example.test> (friend)\r\n"),
            "{t}"
        );
        assert!(
            t.contains("Cc: team: erin@example.test, frank@x.test;\r\n"),
            "{t}"
        );
        assert!(t.contains("Reply-To: <alice@example.test>\r\n"), "{t}");
        assert!(
            t.contains("Subject: bob\r\n"),
            "Subject is not an address field: {t}"
        );
        let completed: Vec<_> = r
            .repairs
            .iter()
            .filter_map(|r| match r {
                Repair::QualifiedAddress { from, .. } => Some(from.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(completed, ["alice", "bob", "dan", "erin", "alice"]);
        // The result passes validation for alice.
        let id = crate::validate::Identity::new("alice@example.test", ["alice@example.test"]);
        crate::validate::check_addresses(&r.header, &id).unwrap();
    }

    #[test]
    fn quoted_local_parts_and_comments_are_not_split() {
        assert_eq!(
            unqualified_addr_specs(b" \"a,b\"@x.test, (c,d) e@f.test"),
            Vec::<std::ops::Range<usize>>::new()
        );
        let v = b" \"john q\" (x) ";
        assert_eq!(unqualified_addr_specs(v), vec![1..9]);
        assert!(unqualified_addr_specs(b" undisclosed-recipients:;").is_empty());
        assert!(unqualified_addr_specs(b"").is_empty());
    }

    #[test]
    fn normalizes_line_ends_and_drops_client_journey() {
        let m =
            b"From: alice@example.test\nX-Correo-Journey: forged\r\nBcc: boss,\r\n s@x.test\r\nDate: x\r\nMessage-ID: <1@x>";
        let s = split(m).unwrap();
        let r = repair(m, &s, &ctx());
        assert_eq!(
            text(&r),
            "From: alice@example.test\r\nDate: x\r\nMessage-ID: <1@x>\r\n"
        );
        assert_eq!(
            r.repairs,
            vec![Repair::DroppedJourneyHeader, Repair::RemovedBcc]
        );
    }

    #[test]
    fn never_panics_on_arbitrary_headers() {
        // A cheap stand-in for a fuzzer: random values built from the octets
        // the scanners care about, in the fields they rewrite.
        let alphabet = b"ab@.,;:<>\"()\\ \t\r\n\xc3";
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let id = crate::validate::Identity::new("alice@example.test", ["alice@example.test"]);
        for _ in 0..5000 {
            let mut m = Vec::new();
            for name in ["From:", "To:", "Cc:"] {
                m.extend_from_slice(name.as_bytes());
                for _ in 0..next() % 40 {
                    m.push(alphabet[(next() % alphabet.len() as u64) as usize]);
                }
                m.extend_from_slice(b"\r\n");
            }
            m.extend_from_slice(b"\r\nbody\r\n");
            if let Ok(section) = split(&m) {
                let r = repair(&m, &section, &ctx());
                let _ = crate::validate::check_addresses(&r.header, &id);
            }
        }
    }
}
