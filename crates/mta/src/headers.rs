//! Just enough RFC 5322 header reading for the MTA: counting trace fields
//! (loop detection) and reading the journey id. The message is never
//! rewritten apart from fields prepended in front of it.

/// The header section of `message`: everything before the first empty line
/// (or the whole message when it has no body).
fn header_section(message: &[u8]) -> &[u8] {
    if message.starts_with(b"\r\n") {
        return &[];
    }
    match message.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => &message[..end + 2],
        None => message,
    }
}

/// Field lines (name, unfolded value) of the header section.
fn fields(message: &[u8]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in header_section(message).split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            if let Some((_, value)) = out.last_mut() {
                value.push(' ');
                value.push_str(String::from_utf8_lossy(line).trim());
            }
            continue;
        }
        if let Some(colon) = line.iter().position(|&b| b == b':') {
            let name = String::from_utf8_lossy(&line[..colon])
                .trim()
                .to_ascii_lowercase();
            let value = String::from_utf8_lossy(&line[colon + 1..])
                .trim()
                .to_string();
            out.push((name, value));
        }
    }
    out
}

/// Number of header fields called `name` (case-insensitive).
pub fn count(message: &[u8], name: &str) -> usize {
    fields(message)
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .count()
}

/// The value of the first header field called `name`.
pub fn first(message: &[u8], name: &str) -> Option<String> {
    fields(message)
        .into_iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// Largest number of Received fields a message may carry; more means a
/// mail loop (RFC 5321 6.3).
pub const MAX_HOPS: usize = 30;

/// A journey id safe for logs, metadata and a header: 1–128 of
/// `[A-Za-z0-9._-]`.
pub fn valid_journey(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A new journey id for a message that arrived without one.
pub fn new_journey() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_the_header_section() {
        let m =
            b"Received: a\r\n  folded\r\nreceived: b\r\nSubject: x\r\n\r\nReceived: in body\r\n";
        assert_eq!(count(m, "Received"), 2);
        assert_eq!(first(m, "received").as_deref(), Some("a folded"));
        assert_eq!(count(b"\r\nReceived: body only\r\n", "received"), 0);
        assert_eq!(count(b"Received: x\r\n", "received"), 1);
    }

    #[test]
    fn journey_ids() {
        let m = b"X-Correo-Journey: 5b1e-22\r\n\r\n";
        assert_eq!(first(m, "x-correo-journey").as_deref(), Some("5b1e-22"));
        assert!(valid_journey("5b1e-22"));
        assert!(!valid_journey("a b"));
        assert!(!valid_journey(""));
        assert!(valid_journey(&new_journey()));
    }
}
