//! Received: trace header fields (RFC 5321 4.4, RFC 5322 3.6.7) with the
//! protocol names of RFC 3848, and counting them for loop detection.

use crate::server::SessionInfo;

/// Fold before a clause that would pass this column (RFC 5322 2.1.1
/// recommends 78).
const FOLD_AT: usize = 78;

/// `Received: from HELO ([PEER_IP]) by HOST with PROTO id ID for <RCPT>; DATE\r\n`,
/// folded at ~78 columns. The peer is an RFC 5321 address literal; every
/// client-supplied part is reduced to safe characters so it cannot break
/// or extend the header.
pub fn received_header(
    info: &SessionInfo,
    by_host: &str,
    id: &str,
    for_recipient: Option<&str>,
) -> String {
    received_header_at(
        info,
        by_host,
        id,
        for_recipient,
        chrono::Local::now().fixed_offset(),
    )
}

fn received_header_at(
    info: &SessionInfo,
    by_host: &str,
    id: &str,
    for_recipient: Option<&str>,
    date: chrono::DateTime<chrono::FixedOffset>,
) -> String {
    let helo = info
        .helo
        .as_deref()
        .map(sanitize)
        .unwrap_or_else(|| "unknown".to_owned());
    let ip = match info.peer.ip().to_canonical() {
        std::net::IpAddr::V4(v4) => format!("[{v4}]"),
        std::net::IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
    };
    let mut clauses = vec![
        format!("from {helo} ({ip})"),
        format!("by {}", sanitize(by_host)),
        format!("with {}", with_protocol(info)),
        format!("id {}", sanitize(id)),
    ];
    let recipient = for_recipient.filter(|r| {
        !r.is_empty()
            && r.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'<' && b != b'>' && b != b';')
    });
    if let Some(r) = recipient {
        clauses.push(format!("for <{r}>"));
    }
    if let Some(last) = clauses.last_mut() {
        last.push(';');
    }
    clauses.push(date.to_rfc2822());

    let mut out = String::from("Received:");
    let mut column = out.len();
    for clause in clauses {
        if column + 1 + clause.len() > FOLD_AT && column > "Received:".len() {
            out.push_str("\r\n\t");
            column = 1;
        } else {
            out.push(' ');
            column += 1;
        }
        out.push_str(&clause);
        column += clause.len();
    }
    out.push_str("\r\n");
    out
}

/// Keeps what a domain, address literal or queue id can contain.
fn sanitize(s: &str) -> String {
    let clean: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".-_:[]".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(255)
        .collect();
    if clean.is_empty() {
        "unknown".to_owned()
    } else {
        clean
    }
}

/// RFC 3848: "ESMTP", "ESMTPS" (TLS), "ESMTPA" (AUTH), "ESMTPSA" (both);
/// "SMTP" for a plain HELO session.
pub fn with_protocol(info: &SessionInfo) -> &'static str {
    match (info.esmtp, info.tls.is_some(), info.authenticated.is_some()) {
        (_, true, true) => "ESMTPSA",
        (_, true, false) => "ESMTPS",
        (_, false, true) => "ESMTPA",
        (true, false, false) => "ESMTP",
        (false, false, false) => "SMTP",
    }
}

/// Number of Received: header fields in the header section of `message` (loop detection).
pub fn count_received(message: &[u8]) -> usize {
    let mut count = 0;
    for line in message.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break; // end of the header section
        }
        let Some(name) = line.get(..8) else { continue };
        if name.eq_ignore_ascii_case(b"received") {
            let rest = &line[8..];
            let rest = &rest[rest
                .iter()
                .take_while(|&&b| b == b' ' || b == b'\t')
                .count()..];
            if rest.first() == Some(&b':') {
                count += 1;
            }
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(helo: Option<&str>, tls: bool, auth: bool) -> SessionInfo {
        SessionInfo {
            peer: "192.0.2.7:40000".parse().unwrap(),
            local: "192.0.2.1:25".parse().unwrap(),
            helo: helo.map(str::to_owned),
            esmtp: true,
            tls: tls.then(|| "TLSv1.3:TLS13_AES_256_GCM_SHA384".to_owned()),
            authenticated: auth.then(|| "alice@example.test".to_owned()),
        }
    }

    fn date() -> chrono::DateTime<chrono::FixedOffset> {
        chrono::DateTime::parse_from_rfc2822("Tue, 1 Dec 2026 08:00:57 +0000").unwrap()
    }

    #[test]
    fn protocols() {
        assert_eq!(with_protocol(&info(None, false, false)), "ESMTP");
        assert_eq!(with_protocol(&info(None, true, false)), "ESMTPS");
        assert_eq!(with_protocol(&info(None, false, true)), "ESMTPA");
        assert_eq!(with_protocol(&info(None, true, true)), "ESMTPSA");
        let mut helo = info(None, false, false);
        helo.esmtp = false;
        assert_eq!(with_protocol(&helo), "SMTP");
    }

    #[test]
    fn header_layout() {
        let h = received_header_at(
            &info(Some("client.example"), true, false),
            "mx.example.test",
            "0123456789abcdef",
            Some("bob@example.test"),
            date(),
        );
        assert_eq!(
            h,
            "Received: from client.example ([192.0.2.7]) by mx.example.test with ESMTPS\r\n\
             \tid 0123456789abcdef for <bob@example.test>; Tue, 1 Dec 2026 08:00:57 +0000\r\n"
        );
        for line in h.split("\r\n") {
            assert!(line.len() <= FOLD_AT, "{line:?}");
        }
        assert_eq!(count_received(h.as_bytes()), 1);
    }

    #[test]
    fn hostile_parts_are_neutralized() {
        let h = received_header_at(
            &info(Some("evil\r\nBcc: x (y); z"), false, false),
            "mx",
            "id",
            Some("a@b>\r\nX: y"),
            date(),
        );
        assert_eq!(h.matches("\r\n").count(), h.matches("\r\n\t").count() + 1);
        assert!(!h.contains("for <"));
        assert!(h.starts_with("Received: from evil__Bcc:_x__y___z ([192.0.2.7])"));
        let mut v6 = info(None, false, false);
        v6.peer = "[2001:db8::1]:25".parse().unwrap();
        let h = received_header_at(&v6, "mx", "id", None, date());
        assert!(
            h.contains("from unknown ([IPv6:2001:db8::1]) by mx with ESMTP id id;"),
            "{h}"
        );
    }

    #[test]
    fn counting() {
        let msg = b"Received: a\r\n\tcontinued\r\nRECEIVED : b\r\nReceived-SPF: pass\r\nX-Received: c\r\nSubject: s\r\n\r\nReceived: in body\r\n";
        assert_eq!(count_received(msg), 2);
        assert_eq!(count_received(b""), 0);
        assert_eq!(count_received(b"Received: x\nreceived:y\n\nReceived: z"), 2);
    }
}
