//! Composing a message (RFC 5322 headers, MIME per RFC 2045-2049) with
//! mail-builder, and the SMTP envelope that goes with it.
//!
//! Bcc recipients go only into the envelope: a Bcc header would tell every
//! recipient who else got the message, which is the one thing Bcc promises
//! not to do (RFC 5322 §3.6.3 allows leaving it out entirely).

use mail_builder::MessageBuilder;
use mail_builder::headers::address::Address as HeaderAddress;
use std::path::Path;

/// A mailbox as the user typed it: `bob@example.test` or `Bob <bob@example.test>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    pub name: Option<String>,
    pub address: String,
}

impl Mailbox {
    /// Parses `addr` or `Display Name <addr>`; the address must be valid.
    pub fn parse(input: &str) -> Result<Mailbox, ComposeError> {
        let bad = || ComposeError::BadAddress(input.to_string());
        // Header injection: a CR or LF would let the input add headers.
        if input.chars().any(|c| c.is_control()) {
            return Err(bad());
        }
        let input = input.trim();
        let (name, address) = match (input.rfind('<'), input.ends_with('>')) {
            (Some(open), true) => {
                let name = input[..open].trim().trim_matches('"').trim();
                let name = (!name.is_empty()).then(|| name.to_string());
                (name, input[open + 1..input.len() - 1].trim().to_string())
            }
            (None, false) => (None, input.to_string()),
            _ => return Err(bad()),
        };
        correo_smtp::Address::parse(&address).map_err(|reason| ComposeError::InvalidAddress {
            input: input.to_string(),
            reason,
        })?;
        Ok(Mailbox { name, address })
    }

    /// Parses one argument that may hold several mailboxes separated by
    /// commas (`a@x, Bob <b@x>`); commas inside quotes or angle brackets
    /// belong to the name or address (`"Doe, John" <j@x>`).
    pub fn parse_list(input: &str) -> Result<Vec<Mailbox>, ComposeError> {
        let (mut items, mut current) = (Vec::new(), String::new());
        let (mut quoted, mut angle) = (false, false);
        for c in input.chars() {
            match c {
                '"' if !angle => quoted = !quoted,
                '<' if !quoted => angle = true,
                '>' if !quoted => angle = false,
                ',' if !quoted && !angle => {
                    items.push(std::mem::take(&mut current));
                    continue;
                }
                _ => {}
            }
            current.push(c);
        }
        items.push(current);
        items
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| Mailbox::parse(s))
            .collect()
    }

    fn to_header(&self) -> HeaderAddress<'static> {
        match &self.name {
            Some(name) => (name.clone(), self.address.clone()).into(),
            None => self.address.clone().into(),
        }
    }
}

/// A file to attach, already read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub filename: String,
    pub content_type: String,
    pub data: Vec<u8>,
}

impl Attachment {
    /// Reads `path`, naming the attachment after the file and guessing its
    /// type from the extension.
    pub fn from_file(path: &Path) -> Result<Attachment, ComposeError> {
        let data = std::fs::read(path).map_err(|source| ComposeError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let filename = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "attachment".to_string());
        Ok(Attachment {
            content_type: guess_content_type(&filename).to_string(),
            filename,
            data,
        })
    }
}

/// What the user wants to send.
#[derive(Debug, Clone, Default)]
pub struct Draft {
    pub from: Option<Mailbox>,
    pub to: Vec<Mailbox>,
    pub cc: Vec<Mailbox>,
    pub bcc: Vec<Mailbox>,
    pub subject: String,
    pub text: Option<String>,
    pub html: Option<String>,
    pub attachments: Vec<Attachment>,
}

/// A message ready to submit: the bytes as they will be sent, and the
/// envelope (MAIL FROM, RCPT TO).
#[derive(Debug, Clone)]
pub struct Composed {
    pub sender: String,
    pub recipients: Vec<String>,
    pub message_id: String,
    pub bytes: Vec<u8>,
}

/// Why a message could not be composed.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error(
        "`{0}` is not a mail address (expected alice@example.test or \"Alice <alice@example.test>\")"
    )]
    BadAddress(String),
    #[error(
        "`{input}` is not a mail address: {reason} (expected alice@example.test or \"Alice <alice@example.test>\")"
    )]
    InvalidAddress {
        input: String,
        reason: correo_smtp::AddressError,
    },
    #[error("no recipients: give at least one --to, --cc or --bcc")]
    NoRecipients,
    #[error("the subject must be a single line")]
    BadSubject,
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot build the message: {0}")]
    Build(#[from] std::io::Error),
}

/// Builds the message. `from` is the profile address unless the draft names
/// another one (`--from`); it is also the envelope sender.
pub fn compose(profile_address: &str, draft: &Draft) -> Result<Composed, ComposeError> {
    let from = match &draft.from {
        Some(m) => m.clone(),
        None => Mailbox::parse(profile_address)?,
    };
    if draft.subject.contains(['\r', '\n']) {
        return Err(ComposeError::BadSubject);
    }
    let mut recipients: Vec<String> = Vec::new();
    for m in draft.to.iter().chain(&draft.cc).chain(&draft.bcc) {
        // One RCPT TO per mailbox even if it is named twice.
        if !recipients
            .iter()
            .any(|r| r.eq_ignore_ascii_case(&m.address))
        {
            recipients.push(m.address.clone());
        }
    }
    if recipients.is_empty() {
        return Err(ComposeError::NoRecipients);
    }
    let domain = from
        .address
        .rsplit_once('@')
        .map(|(_, d)| d)
        .unwrap_or("localhost");
    // mail-builder would name the host "localhost"; the sender's domain makes
    // a Message-ID that is unique and says where it came from.
    let message_id = format!("{}@{}", uuid::Uuid::new_v4().simple(), domain);

    let list =
        |ms: &[Mailbox]| HeaderAddress::new_list(ms.iter().map(Mailbox::to_header).collect());
    let mut builder = MessageBuilder::new()
        .from(from.to_header())
        .message_id(message_id.clone())
        .subject(draft.subject.clone())
        .header(
            "User-Agent",
            mail_builder::headers::raw::Raw::new(concat!("correo-mua/", env!("CARGO_PKG_VERSION"))),
        );
    if !draft.to.is_empty() {
        builder = builder.to(list(&draft.to));
    } else if draft.cc.is_empty() {
        // Only Bcc recipients: RFC 5322 §3.6.3 suggests an empty group so
        // the message still has a destination header that reveals no one.
        builder = builder.header(
            "To",
            mail_builder::headers::raw::Raw::new("undisclosed-recipients:;"),
        );
    }
    if !draft.cc.is_empty() {
        builder = builder.cc(list(&draft.cc));
    }
    // With both bodies mail-builder makes a multipart/alternative (text
    // first, so the least capable reader still shows something sensible);
    // with attachments it wraps everything in a multipart/mixed.
    match (&draft.text, &draft.html) {
        (Some(text), html) => {
            builder = builder.text_body(text.clone());
            if let Some(html) = html {
                builder = builder.html_body(html.clone());
            }
        }
        (None, Some(html)) => builder = builder.html_body(html.clone()),
        (None, None) => builder = builder.text_body(String::new()),
    }
    for a in &draft.attachments {
        builder = builder.attachment(a.content_type.clone(), a.filename.clone(), a.data.clone());
    }
    let bytes = builder.write_to_vec()?;
    Ok(Composed {
        sender: from.address,
        recipients,
        message_id,
        bytes,
    })
}

/// The MIME type for a file name, from its extension; unknown types are
/// `application/octet-stream`, which every reader treats as opaque.
pub fn guess_content_type(filename: &str) -> &'static str {
    let ext = filename
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "txt" | "text" | "log" => "text/plain",
        "md" => "text/markdown",
        "csv" => "text/csv",
        "htm" | "html" => "text/html",
        "css" => "text/css",
        "ics" => "text/calendar",
        "vcf" => "text/vcard",
        "xml" => "application/xml",
        "json" => "application/json",
        "js" => "text/javascript",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" | "tgz" => "application/gzip",
        "tar" => "application/x-tar",
        "7z" => "application/x-7z-compressed",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "svg" => "image/svg+xml",
        "bmp" => "image/bmp",
        "tif" | "tiff" => "image/tiff",
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        "ogg" => "audio/ogg",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "eml" => "message/rfc822",
        "doc" => "application/msword",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "xls" => "application/vnd.ms-excel",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "ppt" => "application/vnd.ms-powerpoint",
        "pptx" => "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        "odt" => "application/vnd.oasis.opendocument.text",
        "ods" => "application/vnd.oasis.opendocument.spreadsheet",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::{MessageParser, MimeHeaders};

    fn mb(s: &str) -> Mailbox {
        Mailbox::parse(s).unwrap()
    }

    fn headers_of(bytes: &[u8]) -> String {
        let text = String::from_utf8_lossy(bytes);
        text.split("\r\n\r\n").next().unwrap().to_string()
    }

    #[test]
    fn bcc_is_in_the_envelope_not_the_headers() {
        let draft = Draft {
            to: vec![mb("Bob <bob@example.test>")],
            cc: vec![mb("carol@example.test")],
            bcc: vec![mb("secret@example.test"), mb("BOB@example.test")],
            subject: "Hello".into(),
            text: Some("Hi Bob".into()),
            ..Draft::default()
        };
        let c = compose("alice@example.test", &draft).unwrap();
        assert_eq!(c.sender, "alice@example.test");
        assert_eq!(
            c.recipients,
            [
                "bob@example.test",
                "carol@example.test",
                "secret@example.test"
            ]
        );
        let head = headers_of(&c.bytes);
        // A header named Bcc; not "bcc" anywhere (a random Message-ID or
        // boundary may contain those letters).
        assert!(
            !head
                .to_ascii_lowercase()
                .lines()
                .any(|l| l.starts_with("bcc:")),
            "{head}"
        );
        assert!(
            !String::from_utf8_lossy(&c.bytes).contains("secret@"),
            "Bcc leaked"
        );

        let msg = MessageParser::default().parse(&c.bytes).unwrap();
        assert_eq!(
            msg.from().unwrap().first().unwrap().address(),
            Some("alice@example.test")
        );
        assert_eq!(msg.to().unwrap().first().unwrap().name(), Some("Bob"));
        assert_eq!(
            msg.cc().unwrap().first().unwrap().address(),
            Some("carol@example.test")
        );
        assert!(msg.bcc().is_none());
        assert_eq!(msg.subject(), Some("Hello"));
        assert_eq!(msg.message_id(), Some(c.message_id.as_str()));
        assert!(c.message_id.ends_with("@example.test"));
        assert!(msg.date().is_some());
        assert_eq!(msg.body_text(0).unwrap().trim(), "Hi Bob");
    }

    #[test]
    fn only_bcc_gets_undisclosed_recipients() {
        let draft = Draft {
            bcc: vec![mb("secret@example.test")],
            subject: "s".into(),
            text: Some("t".into()),
            ..Draft::default()
        };
        let c = compose("alice@example.test", &draft).unwrap();
        let head = headers_of(&c.bytes);
        assert!(head.contains("To: undisclosed-recipients:;"), "{head}");
        assert!(!String::from_utf8_lossy(&c.bytes).contains("secret@"));
        assert_eq!(c.recipients, ["secret@example.test"]);
    }

    #[test]
    fn attachments_and_html_alternative() {
        let png = vec![0x89, b'P', b'N', b'G', 0, 1, 2, 3, 255];
        let draft = Draft {
            from: Some(mb("Alice Liddell <alice@example.test>")),
            to: vec![mb("bob@example.test")],
            subject: "Report — ünïcode".into(),
            text: Some("plain version".into()),
            html: Some("<p>html <b>version</b></p>".into()),
            attachments: vec![
                Attachment {
                    filename: "chart.png".into(),
                    content_type: guess_content_type("chart.png").into(),
                    data: png.clone(),
                },
                Attachment {
                    filename: "notes.txt".into(),
                    content_type: guess_content_type("notes.txt").into(),
                    data: b"line 1\nline 2\n".to_vec(),
                },
            ],
            ..Draft::default()
        };
        let c = compose("ignored@example.test", &draft).unwrap();
        assert_eq!(c.sender, "alice@example.test");
        let msg = MessageParser::default().parse(&c.bytes).unwrap();
        assert_eq!(msg.subject(), Some("Report — ünïcode"));
        assert_eq!(
            msg.from().unwrap().first().unwrap().name(),
            Some("Alice Liddell")
        );
        assert_eq!(msg.body_text(0).unwrap().trim(), "plain version");
        assert!(msg.body_html(0).unwrap().contains("<b>version</b>"));
        let raw = String::from_utf8_lossy(&c.bytes);
        assert!(raw.contains("multipart/alternative"), "{raw}");
        assert!(raw.contains("multipart/mixed"), "{raw}");

        let atts: Vec<_> = msg.attachments().collect();
        assert_eq!(atts.len(), 2);
        assert_eq!(atts[0].attachment_name(), Some("chart.png"));
        let ct = atts[0].content_type().unwrap();
        assert_eq!((ct.ctype(), ct.subtype()), ("image", Some("png")));
        assert_eq!(atts[0].contents(), png.as_slice());
        assert_eq!(atts[1].attachment_name(), Some("notes.txt"));
        assert_eq!(atts[1].contents(), b"line 1\nline 2\n");
    }

    #[test]
    fn html_only_message() {
        let draft = Draft {
            to: vec![mb("bob@example.test")],
            subject: "s".into(),
            html: Some("<p>only <i>html</i></p>".into()),
            ..Draft::default()
        };
        let c = compose("alice@example.test", &draft).unwrap();
        let msg = MessageParser::default().parse(&c.bytes).unwrap();
        assert!(msg.body_html(0).unwrap().contains("<i>html</i>"));
    }

    #[test]
    fn rejects_bad_input() {
        assert!(Mailbox::parse("bob@example.test\r\nBcc: x@y.z").is_err());
        let err = Mailbox::parse("not an address").unwrap_err();
        assert!(err.to_string().contains("exactly one @"), "{err}");
        let err = Mailbox::parse("Bob <bob@[192.0.2.1]>").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("`Bob <bob@[192.0.2.1]>` is not a mail address: IP address literals"),
            "{err}"
        );
        assert!(Mailbox::parse("Bob <bob@example.test").is_err());
        assert_eq!(
            mb("\"Bob B\" <bob@example.test>").name.as_deref(),
            Some("Bob B")
        );
        let draft = Draft {
            subject: "s".into(),
            ..Draft::default()
        };
        assert!(matches!(
            compose("a@example.test", &draft),
            Err(ComposeError::NoRecipients)
        ));
        let draft = Draft {
            to: vec![mb("bob@example.test")],
            subject: "a\r\nBcc: x@example.test".into(),
            ..Draft::default()
        };
        assert!(matches!(
            compose("a@example.test", &draft),
            Err(ComposeError::BadSubject)
        ));
    }

    #[test]
    fn content_types_from_extensions() {
        assert_eq!(guess_content_type("a.PDF"), "application/pdf");
        assert_eq!(guess_content_type("photo.jpeg"), "image/jpeg");
        assert_eq!(guess_content_type("archive.tar.gz"), "application/gzip");
        assert_eq!(guess_content_type("Makefile"), "application/octet-stream");
    }
}
