//! SMTP replies (RFC 5321 4.2) with enhanced status codes (RFC 2034, RFC 3463).

use std::fmt;

/// One SMTP reply: a three-digit code, an optional enhanced status code and
/// one or more text lines (a multi-line reply on the wire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// `"5.7.1"`; `None` for replies that carry none (greeting, EHLO).
    pub enhanced: Option<String>,
    pub lines: Vec<String>,
}

impl Reply {
    /// `enhanced` = `""` means no enhanced status code. Line breaks in `text`
    /// become separate reply lines so a reply can never inject another one.
    pub fn new(code: u16, enhanced: &str, text: impl Into<String>) -> Reply {
        let text = text.into();
        let lines = text
            .split(['\r', '\n'])
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect::<Vec<_>>();
        Reply {
            code,
            enhanced: (!enhanced.is_empty()).then(|| enhanced.to_owned()),
            lines: if lines.is_empty() {
                vec![String::new()]
            } else {
                lines
            },
        }
    }

    /// A multi-line reply from several lines of text.
    pub fn multiline(code: u16, enhanced: &str, lines: Vec<String>) -> Reply {
        Reply::new(code, enhanced, lines.join("\n"))
    }

    /// 2xx or 3xx.
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// 4xx: try again later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx: do not retry.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// The text lines joined with a space.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }

    /// Wire form: `"250-a\r\n250 5.0.0 b\r\n"`; the enhanced code is repeated
    /// on every line as RFC 2034 requires.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            out.extend_from_slice(format!("{:03}{sep}", self.code).as_bytes());
            if let Some(enhanced) = &self.enhanced {
                out.extend_from_slice(enhanced.as_bytes());
                if !line.is_empty() {
                    out.push(b' ');
                }
            }
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:03}", self.code)?;
        if let Some(enhanced) = &self.enhanced {
            write!(f, " {enhanced}")?;
        }
        let text = self.text();
        if !text.is_empty() {
            write!(f, " {text}")?;
        }
        Ok(())
    }
}

/// Splits `"5.7.1 text"` into the enhanced code and the rest when the text
/// starts with one (RFC 3463 syntax: class.subject.detail).
pub fn split_enhanced(text: &str) -> (Option<&str>, &str) {
    let (head, rest) = match text.split_once(' ') {
        Some((h, r)) => (h, r),
        None => (text, ""),
    };
    let mut parts = head.split('.');
    let ok = matches!(parts.next(), Some("2" | "4" | "5"))
        && parts
            .next()
            .is_some_and(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
        && parts
            .next()
            .is_some_and(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
        && parts.next().is_none();
    if ok { (Some(head), rest) } else { (None, text) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_single_and_multi() {
        let r = Reply::new(550, "5.1.1", "no such user");
        assert_eq!(r.to_wire(), b"550 5.1.1 no such user\r\n");
        assert_eq!(r.to_string(), "550 5.1.1 no such user");
        let r = Reply::new(250, "5.0.0", "a\nb");
        assert_eq!(r.to_wire(), b"250-5.0.0 a\r\n250 5.0.0 b\r\n");
        assert_eq!(r.text(), "a b");
        let r = Reply::new(220, "", "mx ESMTP Correo");
        assert_eq!(r.enhanced, None);
        assert_eq!(r.to_wire(), b"220 mx ESMTP Correo\r\n");
    }

    #[test]
    fn no_reply_injection() {
        let r = Reply::new(250, "2.0.0", "ok\r\n250 fake");
        assert_eq!(r.to_wire(), b"250-2.0.0 ok\r\n250 2.0.0 250 fake\r\n");
        assert_eq!(Reply::new(334, "", "").to_wire(), b"334 \r\n");
    }

    #[test]
    fn classes() {
        assert!(Reply::new(354, "", "go").is_positive());
        assert!(Reply::new(452, "4.5.3", "x").is_transient());
        assert!(Reply::new(554, "5.0.0", "x").is_permanent());
        assert!(!Reply::new(554, "5.0.0", "x").is_positive());
    }

    #[test]
    fn enhanced_split() {
        assert_eq!(split_enhanced("5.7.1 denied"), (Some("5.7.1"), "denied"));
        assert_eq!(split_enhanced("2.0.0"), (Some("2.0.0"), ""));
        assert_eq!(
            split_enhanced("mx.example ESMTP"),
            (None, "mx.example ESMTP")
        );
        assert_eq!(split_enhanced("1.2.3 x"), (None, "1.2.3 x"));
    }
}
