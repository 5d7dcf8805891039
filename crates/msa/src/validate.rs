//! Checks a submitted message against RFC 5322 before it leaves the MSA.
//!
//! Two layers: our own byte-level pass ([`split`], [`check_line_lengths`])
//! that finds the header fields and enforces the line limit exactly, then
//! mail-parser over the (repaired) header section for the address syntax
//! ([`check_addresses`]). Each refusal names what is wrong and carries an
//! enhanced status code, because a submitting user can fix their message
//! only if we tell them what to fix.

use correo_smtp::reply::Reply;
use mail_parser::{HeaderName, HeaderValue, MessageParser};
use std::ops::Range;

/// RFC 5322 section 2.1.1: a line is at most 998 octets, CRLF excluded.
pub const MAX_LINE_OCTETS: usize = 998;

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("line {line} longer than 998 octets")]
    LineTooLong { line: usize },
    #[error("malformed header section at line {line}: {reason}")]
    MalformedHeader { line: usize, reason: &'static str },
    #[error("header section cannot be parsed")]
    Unparseable,
    #[error("message must have exactly one From header")]
    FromCount,
    #[error("{header} header has no address")]
    NoAddress { header: &'static str },
    #[error("invalid address `{address}` in {header} header")]
    BadAddress {
        header: &'static str,
        address: String,
    },
    #[error("From address {address} not owned by {user}")]
    ForeignFrom { address: String, user: String },
}

impl Invalid {
    /// The SMTP reply for the DATA command: 5.6.0 for content, 5.7.1 for rights.
    pub fn reply(&self) -> Reply {
        let enhanced = match self {
            Invalid::ForeignFrom { .. } => "5.7.1",
            _ => "5.6.0",
        };
        Reply::new(550, enhanced, self.to_string())
    }
}

/// One header field: its byte range in the message (every line, with line
/// ends) and the range of its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub range: Range<usize>,
    pub name: Range<usize>,
}

impl Field {
    /// The field name as written.
    pub fn name<'m>(&self, message: &'m [u8]) -> &'m [u8] {
        &message[self.name.clone()]
    }

    /// Whether the field is called `name` (case-insensitive, RFC 5322 1.2.2).
    pub fn is(&self, message: &[u8], name: &str) -> bool {
        self.name(message).eq_ignore_ascii_case(name.as_bytes())
    }

    /// The value: everything after the colon, folded lines included.
    pub fn value<'m>(&self, message: &'m [u8]) -> &'m [u8] {
        &message[self.name.end + 1..self.range.end]
    }
}

/// Where the header fields are and where the body starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderSection {
    pub fields: Vec<Field>,
    /// Offset of the first body octet: just after the empty line, or the
    /// message length when there is no body.
    pub body_start: usize,
}

impl HeaderSection {
    /// Number of fields called `name`.
    pub fn count(&self, message: &[u8], name: &str) -> usize {
        self.fields.iter().filter(|f| f.is(message, name)).count()
    }
}

/// Yields `(line_number, content_range, next_offset)` with line ends removed.
fn lines(message: &[u8]) -> impl Iterator<Item = (usize, Range<usize>, usize)> + '_ {
    let mut offset = 0;
    let mut number = 0;
    std::iter::from_fn(move || {
        if offset >= message.len() {
            return None;
        }
        number += 1;
        let start = offset;
        let (end, next) = match message[start..].iter().position(|&b| b == b'\n') {
            Some(i) => (start + i, start + i + 1),
            None => (message.len(), message.len()),
        };
        let content_end = if end > start && message[end - 1] == b'\r' {
            end - 1
        } else {
            end
        };
        offset = next;
        Some((number, start..content_end, next))
    })
}

/// Finds the header fields (byte level): every line up to the first empty
/// one must start a field (`name:` with a printable-ASCII name) or continue
/// the previous one with leading white space.
pub fn split(message: &[u8]) -> Result<HeaderSection, Invalid> {
    let mut fields: Vec<Field> = Vec::new();
    for (number, content, next) in lines(message) {
        let line = &message[content.clone()];
        if line.is_empty() {
            return Ok(HeaderSection {
                fields,
                body_start: next,
            });
        }
        if line[0] == b' ' || line[0] == b'\t' {
            match fields.last_mut() {
                Some(field) => field.range.end = next,
                None => {
                    return Err(Invalid::MalformedHeader {
                        line: number,
                        reason: "continuation line before the first header field",
                    });
                }
            }
            continue;
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(Invalid::MalformedHeader {
                line: number,
                reason: "not a header field (no colon), and no empty line before the body",
            })?;
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|&b| (33..=126).contains(&b)) {
            return Err(Invalid::MalformedHeader {
                line: number,
                reason: "invalid header field name",
            });
        }
        fields.push(Field {
            range: content.start..next,
            name: content.start..content.start + colon,
        });
    }
    // Only a header section, no body: legal (RFC 5322 3.5).
    Ok(HeaderSection {
        fields,
        body_start: message.len(),
    })
}

/// Refuses the first line (header or body) longer than 998 octets.
pub fn check_line_lengths(message: &[u8]) -> Result<(), Invalid> {
    match lines(message).find(|(_, content, _)| content.len() > MAX_LINE_OCTETS) {
        Some((line, _, _)) => Err(Invalid::LineTooLong { line }),
        None => Ok(()),
    }
}

/// Exactly one From field (RFC 5322 3.6: "1" in the field table).
pub fn check_from_count(message: &[u8], section: &HeaderSection) -> Result<(), Invalid> {
    match section.count(message, "From") {
        1 => Ok(()),
        _ => Err(Invalid::FromCount),
    }
}

/// The authenticated user and the addresses they may send as (lowercase).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub addresses: Vec<String>,
}

impl Identity {
    pub fn new(
        user: impl Into<String>,
        addresses: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> Self {
        Identity {
            user: user.into(),
            addresses: addresses
                .into_iter()
                .map(|a| a.as_ref().to_ascii_lowercase())
                .collect(),
        }
    }

    /// Whether `address` is one of the user's. Case-insensitive: the
    /// directory stores addresses lowercased, and MUAs are not consistent.
    pub fn owns(&self, address: &str) -> bool {
        let address = address.to_ascii_lowercase();
        self.addresses.contains(&address)
    }

    /// The user's domain, used to complete unqualified addresses.
    pub fn domain(&self) -> &str {
        self.user.rsplit_once('@').map(|(_, d)| d).unwrap_or("")
    }
}

/// Client text fit for a one-line reply: control characters and folding
/// collapsed to spaces, at most 80 characters.
fn shown(text: &str) -> String {
    let clean: String = text
        .split(|c: char| c.is_control() || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    match clean.char_indices().nth(80) {
        Some((cut, _)) => format!("{}...", &clean[..cut]),
        None => clean,
    }
}

/// Parses the header section with mail-parser and checks From/To/Cc:
/// every mailbox a valid `local@domain`, and every From mailbox owned by
/// the user. `header_section` is the (repaired) fields without the body.
pub fn check_addresses(header_section: &[u8], identity: &Identity) -> Result<(), Invalid> {
    let parsed = MessageParser::default()
        .parse_headers(header_section)
        .ok_or(Invalid::Unparseable)?;
    for header in parsed.headers() {
        let label = match header.name {
            HeaderName::From => "From",
            HeaderName::To => "To",
            HeaderName::Cc => "Cc",
            _ => continue,
        };
        let list = match &header.value {
            HeaderValue::Address(list) => list,
            _ => {
                let raw = &header_section[header.offset_start as usize..header.offset_end as usize];
                let raw = shown(&String::from_utf8_lossy(raw));
                return Err(if raw.is_empty() {
                    Invalid::NoAddress { header: label }
                } else {
                    Invalid::BadAddress {
                        header: label,
                        address: raw,
                    }
                });
            }
        };
        let mut mailboxes = 0;
        for addr in list.iter() {
            mailboxes += 1;
            let text = addr.address.as_deref().unwrap_or("");
            if text.is_empty() {
                return Err(Invalid::BadAddress {
                    header: label,
                    address: shown(addr.name.as_deref().unwrap_or("")),
                });
            }
            if correo_smtp::address::Address::parse(text).is_err() {
                return Err(Invalid::BadAddress {
                    header: label,
                    address: shown(text),
                });
            }
            if label == "From" && !identity.owns(text) {
                return Err(Invalid::ForeignFrom {
                    address: text.to_string(),
                    user: identity.user.clone(),
                });
            }
        }
        // "To: undisclosed-recipients:;" is fine; an empty From is not.
        if mailboxes == 0 && (label == "From" || list.as_list().is_some()) {
            return Err(Invalid::NoAddress { header: label });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Identity {
        Identity::new(
            "alice@example.test",
            ["alice@example.test", "sales@example.test"],
        )
    }

    #[test]
    fn splits_fields_and_body() {
        let m = b"From: a@example.test\r\nSubject: hi\r\n there\r\n\r\nbody\r\n";
        let s = split(m).unwrap();
        assert_eq!(s.fields.len(), 2);
        assert_eq!(s.fields[1].name(m), b"Subject");
        assert_eq!(s.fields[1].value(m), b" hi\r\n there\r\n");
        assert_eq!(&m[s.body_start..], b"body\r\n");
    }

    #[test]
    fn header_only_message_has_empty_body() {
        let m = b"From: a@example.test\r\n";
        let s = split(m).unwrap();
        assert_eq!(s.fields.len(), 1);
        assert_eq!(s.body_start, m.len());
    }

    #[test]
    fn malformed_headers_are_named() {
        let err = split(b" folded first\r\n\r\n").unwrap_err();
        assert!(
            matches!(err, Invalid::MalformedHeader { line: 1, .. }),
            "{err}"
        );
        let err = split(b"From: a@b.test\r\nthis is body text\r\n").unwrap_err();
        assert!(
            matches!(err, Invalid::MalformedHeader { line: 2, .. }),
            "{err}"
        );
        let err = split(b"Bad Name: x\r\n\r\n").unwrap_err();
        assert!(
            err.to_string().contains("invalid header field name"),
            "{err}"
        );
        assert_eq!(err.reply().enhanced.as_deref(), Some("5.6.0"));
    }

    #[test]
    fn line_of_999_octets_is_refused_with_its_number() {
        let ok = format!("From: a@b.test\r\n\r\n{}\r\n", "x".repeat(998));
        check_line_lengths(ok.as_bytes()).unwrap();
        let bad = format!("From: a@b.test\r\n\r\nfine\r\n{}\r\n", "x".repeat(999));
        let err = check_line_lengths(bad.as_bytes()).unwrap_err();
        assert_eq!(err, Invalid::LineTooLong { line: 4 });
        let reply = err.reply();
        assert_eq!(reply.code, 550);
        assert_eq!(reply.to_string(), "550 5.6.0 line 4 longer than 998 octets");
        // The same without a final line end.
        let bad = format!("From: a@b.test\r\n\r\n{}", "y".repeat(999));
        assert_eq!(
            check_line_lengths(bad.as_bytes()),
            Err(Invalid::LineTooLong { line: 3 })
        );
    }

    #[test]
    fn two_from_headers_are_refused() {
        let m = b"From: alice@example.test\r\nFROM: alice@example.test\r\n\r\nx\r\n";
        let err = check_from_count(m, &split(m).unwrap()).unwrap_err();
        assert_eq!(
            err.reply().to_string(),
            "550 5.6.0 message must have exactly one From header"
        );
        let m = b"To: bob@example.test\r\n\r\nx\r\n";
        assert_eq!(
            check_from_count(m, &split(m).unwrap()),
            Err(Invalid::FromCount)
        );
    }

    #[test]
    fn foreign_from_is_refused_with_5_7_1() {
        let err = check_addresses(b"From: Mallory <ceo@example.test>\r\n", &alice()).unwrap_err();
        assert_eq!(
            err,
            Invalid::ForeignFrom {
                address: "ceo@example.test".into(),
                user: "alice@example.test".into()
            }
        );
        assert_eq!(err.reply().enhanced.as_deref(), Some("5.7.1"));
    }

    #[test]
    fn own_addresses_and_aliases_pass() {
        let head = b"From: \"Alice A.\" <Alice@Example.TEST>\r\nTo: bob@example.test, Carol <carol@other.test>\r\n\
Cc: undisclosed-recipients:;\r\nReply-To: sales@example.test\r\n";
        check_addresses(head, &alice()).unwrap();
        check_addresses(b"From: sales@example.test\r\n", &alice()).unwrap();
    }

    #[test]
    fn invalid_addresses_are_named() {
        let err =
            check_addresses(b"From: alice@example.test\r\nTo: bob@@x\r\n", &alice()).unwrap_err();
        assert!(
            matches!(err, Invalid::BadAddress { header: "To", .. }),
            "{err}"
        );
        let err = check_addresses(b"From: alice@example.test\r\nCc: Bob Smith\r\n", &alice())
            .unwrap_err();
        assert!(
            matches!(err, Invalid::BadAddress { header: "Cc", .. }),
            "{err}"
        );
        let err = check_addresses(
            b"From: alice@example.test\r\nTo: a\r\n b\x07 c\r\n",
            &alice(),
        )
        .unwrap_err();
        assert_eq!(err.reply().lines.len(), 1, "{err}");
        let err = check_addresses(b"From:\r\n", &alice()).unwrap_err();
        assert!(
            matches!(
                err,
                Invalid::NoAddress { header: "From" } | Invalid::BadAddress { .. }
            ),
            "{err}"
        );
    }
}
