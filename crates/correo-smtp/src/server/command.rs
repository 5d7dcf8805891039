//! Turns one command line into a typed [`Command`]: smtp-proto does the
//! grammar, then Correo's stricter checks run on top (paths, parameters we do
//! not advertise, HELO names).

use smtp_proto::{Error as ProtoError, Request};

use crate::address::{Address, ReversePath};
use crate::reply::Reply;
use crate::server::AuthMechanism;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    Ehlo(String),
    Helo(String),
    Mail(MailCommand),
    Rcpt(Address),
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    StartTls,
    Auth {
        mechanism: Option<AuthMechanism>,
        /// `None`: no initial response; `Some("")`: the empty one (`=`).
        initial: Option<String>,
    },
    /// Recognized, deliberately not offered (EXPN, ETRN, BDAT, ...).
    NotImplemented,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MailCommand {
    pub sender: ReversePath,
    pub size: Option<usize>,
    pub body_8bit: bool,
    /// Any ESMTP parameter was given (only valid after EHLO).
    pub has_params: bool,
}

fn syntax(text: &str) -> Reply {
    Reply::new(501, "5.5.4", format!("syntax: {text}"))
}

fn unsupported_param() -> Reply {
    Reply::new(555, "5.5.4", "parameter not recognized or not implemented")
}

/// Parses `line` (without CRLF). `postmaster_domain` completes a bare
/// `<postmaster>` recipient, which RFC 5321 4.5.1 requires us to accept.
pub(crate) fn parse(line: &str, postmaster_domain: &str) -> Result<Command, Reply> {
    let wire = format!("{line}\r\n");
    let request = match Request::parse(&mut wire.as_bytes().iter()) {
        Ok(r) => r,
        // A SIZE too large for usize is well-formed, just too big (RFC 1870).
        Err(ProtoError::InvalidParameter { param: "SIZE" })
            if size_param(line) == Some(usize::MAX) =>
        {
            return Err(Reply::new(
                552,
                "5.3.4",
                "message size exceeds fixed maximum message size",
            ));
        }
        Err(e) => return Err(proto_error(e)),
    };
    Ok(match request {
        Request::Ehlo { host } => Command::Ehlo(helo_name(&host)?),
        Request::Helo { host } => Command::Helo(helo_name(&host)?),
        Request::Mail { from } => {
            // Only the parameters we advertise: SIZE, BODY=7BIT|8BITMIME and
            // AUTH= (RFC 4954 5; accepted and ignored, we never trust it).
            let allowed = smtp_proto::MAIL_BODY_7BIT | smtp_proto::MAIL_BODY_8BITMIME;
            if from.flags & !allowed != 0
                || from.trans_id.is_some()
                || from.env_id.is_some()
                || from.solicit.is_some()
                || from.mtrk.is_some()
                || from.by != 0
                || from.hold_for != 0
                || from.hold_until != 0
                || from.mt_priority != 0
            {
                return Err(unsupported_param());
            }
            let raw = raw_path(line).ok_or_else(|| syntax("MAIL FROM:<address> [parameters]"))?;
            let sender =
                if raw.is_empty() {
                    ReversePath::Null
                } else {
                    ReversePath::Mailbox(path_address(raw).map_err(|e| {
                        Reply::new(501, "5.1.7", format!("bad sender address: {e}"))
                    })?)
                };
            let params = params_after_path(line);
            Command::Mail(MailCommand {
                sender,
                size: size_param(line),
                body_8bit: from.flags & smtp_proto::MAIL_BODY_8BITMIME != 0,
                has_params: !params.is_empty(),
            })
        }
        Request::Rcpt { to } => {
            // DSN (NOTIFY=, ORCPT=) and friends are not advertised.
            if to.flags != 0
                || to.orcpt.is_some()
                || to.rrvs != 0
                || !params_after_path(line).is_empty()
            {
                return Err(unsupported_param());
            }
            let raw = raw_path(line).ok_or_else(|| syntax("RCPT TO:<address> [parameters]"))?;
            let address = if raw.eq_ignore_ascii_case("postmaster") {
                Address::parse(&format!("postmaster@{postmaster_domain}"))
            } else {
                path_address(raw)
            };
            Command::Rcpt(
                address
                    .map_err(|e| Reply::new(501, "5.1.3", format!("bad recipient address: {e}")))?,
            )
        }
        Request::Data => Command::Data,
        Request::Rset => Command::Rset,
        Request::Noop { .. } => Command::Noop,
        Request::Quit => Command::Quit,
        Request::Vrfy { .. } => Command::Vrfy,
        Request::Help { .. } => Command::Help,
        Request::StartTls => {
            // RFC 3207 4: STARTTLS takes no parameters.
            if line.trim_end().len() != "STARTTLS".len() {
                return Err(syntax("STARTTLS"));
            }
            Command::StartTls
        }
        Request::Auth {
            mechanism,
            initial_response,
        } => Command::Auth {
            mechanism: match mechanism {
                smtp_proto::AUTH_PLAIN => Some(AuthMechanism::Plain),
                smtp_proto::AUTH_LOGIN => Some(AuthMechanism::Login),
                smtp_proto::AUTH_SCRAM_SHA_256 => Some(AuthMechanism::ScramSha256),
                _ => None,
            },
            initial: match initial_response {
                r if r.is_empty() => None,
                r if r == "=" => Some(String::new()),
                r => Some(r.into_owned()),
            },
        },
        Request::Expn { .. }
        | Request::Etrn { .. }
        | Request::Atrn { .. }
        | Request::Burl { .. }
        | Request::Bdat { .. }
        | Request::Lhlo { .. } => Command::NotImplemented,
    })
}

/// The SIZE= value, read here rather than trusted from smtp-proto, whose
/// saturating parser wraps a huge value around to a small one.
/// `Some(usize::MAX)` for a number too large for usize; `None` when absent
/// or not a number.
fn size_param(line: &str) -> Option<usize> {
    params_after_path(line).iter().find_map(|p| {
        let value = p
            .get(..5)
            .filter(|k| k.eq_ignore_ascii_case("SIZE="))
            .map(|_| &p[5..])?;
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(value.parse::<usize>().unwrap_or(usize::MAX))
    })
}

fn proto_error(e: ProtoError) -> Reply {
    match e {
        ProtoError::UnknownCommand => Reply::new(500, "5.5.2", "command not recognized"),
        ProtoError::SyntaxError { syntax: s } => syntax(s),
        ProtoError::InvalidSenderAddress => Reply::new(501, "5.1.7", "bad sender address syntax"),
        ProtoError::InvalidRecipientAddress => {
            Reply::new(501, "5.1.3", "bad recipient address syntax")
        }
        ProtoError::InvalidParameter { param } => {
            Reply::new(501, "5.5.4", format!("invalid {param} parameter"))
        }
        ProtoError::UnsupportedParameter { .. } => unsupported_param(),
        _ => Reply::new(500, "5.5.2", "syntax error"),
    }
}

/// EHLO/HELO argument: a domain or address literal. Anything that could
/// break a Received: header later (parentheses, `;`, quotes) is refused.
fn helo_name(host: &str) -> Result<String, Reply> {
    let ok = !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:[]".contains(&b));
    if ok {
        Ok(host.to_owned())
    } else {
        Err(Reply::new(501, "5.5.4", "invalid domain in EHLO/HELO"))
    }
}

/// The text between `<` and its `>` (quotes respected), taken from the raw
/// line so that source routes and quoting are seen exactly as sent.
fn raw_path(line: &str) -> Option<&str> {
    let (start, end) = path_bounds(line)?;
    Some(&line[start + 1..end])
}

fn path_bounds(line: &str) -> Option<(usize, usize)> {
    let colon = line.find(':')?;
    let start = colon + 1 + line[colon + 1..].find('<')?;
    // Only spaces may sit between `FROM:`/`TO:` and `<`.
    if !line[colon + 1..start].bytes().all(|b| b == b' ') {
        return None;
    }
    let bytes = line.as_bytes();
    let (mut quoted, mut escaped) = (false, false);
    for (i, &b) in bytes.iter().enumerate().skip(start + 1) {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b'>' if !quoted => return Some((start, i)),
            b'<' if !quoted => return None,
            _ => {}
        }
    }
    None
}

/// Space-separated ESMTP parameters after the path.
fn params_after_path(line: &str) -> Vec<&str> {
    match path_bounds(line) {
        Some((_, end)) => line[end + 1..]
            .split(' ')
            .filter(|p| !p.is_empty())
            .collect(),
        None => Vec::new(),
    }
}

fn path_address(raw: &str) -> Result<Address, crate::address::AddressError> {
    // A source route (`@relay:user@host`) fails here on its second `@`.
    Address::parse(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(line: &str) -> Result<Command, Reply> {
        parse(line, "mx.example.test")
    }

    fn code(line: &str) -> u16 {
        p(line).unwrap_err().code
    }

    #[test]
    fn basic_verbs() {
        assert_eq!(
            p("EHLO client.example"),
            Ok(Command::Ehlo("client.example".into()))
        );
        assert_eq!(
            p("helo [192.0.2.1]"),
            Ok(Command::Helo("[192.0.2.1]".into()))
        );
        assert_eq!(p("DATA"), Ok(Command::Data));
        assert_eq!(p("rset"), Ok(Command::Rset));
        assert_eq!(p("NOOP hello"), Ok(Command::Noop));
        assert_eq!(p("QUIT"), Ok(Command::Quit));
        assert_eq!(p("VRFY bob"), Ok(Command::Vrfy));
        assert_eq!(p("HELP"), Ok(Command::Help));
        assert_eq!(p("STARTTLS"), Ok(Command::StartTls));
        assert_eq!(p("EXPN list"), Ok(Command::NotImplemented));
        assert_eq!(p("BDAT 10 LAST"), Ok(Command::NotImplemented));
        assert_eq!(code("FOO bar"), 500);
        assert_eq!(code(""), 500);
        assert_eq!(code("EHLO"), 501);
        assert_eq!(code("EHLO a(b)"), 501);
        assert_eq!(code("STARTTLS now"), 501);
    }

    #[test]
    fn mail_from() {
        let Ok(Command::Mail(m)) = p("MAIL FROM:<Alice@Example.test> SIZE=1000 BODY=8BITMIME")
        else {
            panic!()
        };
        assert_eq!(m.sender.as_str(), "Alice@example.test");
        assert_eq!(m.size, Some(1000));
        assert!(m.body_8bit);
        assert!(m.has_params);
        let Ok(Command::Mail(m)) = p("MAIL FROM:<>") else {
            panic!()
        };
        assert_eq!(m.sender, ReversePath::Null);
        assert_eq!((m.size, m.body_8bit, m.has_params), (None, false, false));
        let Ok(Command::Mail(m)) = p("MAIL FROM:<a@b.c> BODY=7BIT AUTH=<>") else {
            panic!()
        };
        assert!(!m.body_8bit);
        assert!(p("mail from: <a@b.c>").is_ok());
    }

    #[test]
    fn mail_from_refusals() {
        assert_eq!(code("MAIL FROM:<a@b.c> SIZE=abc"), 501);
        // Well-formed, just too big: the driver's size check gives 552.
        // (smtp-proto alone would wrap this around to a small number.)
        let Ok(Command::Mail(m)) = p("MAIL FROM:<a@b.c> SIZE=999999999999999999999999999") else {
            panic!()
        };
        assert_eq!(m.size, Some(usize::MAX));
        assert_eq!(code("MAIL FROM:<a@b.c> SIZE=18446744073709551616"), 552);
        assert_eq!(code("MAIL FROM:<a@b.c> BODY=9BIT"), 501);
        assert_eq!(code("MAIL FROM:a@b.c"), 501);
        assert_eq!(code("MAIL FROM:<a@b.c"), 501);
        assert_eq!(code("MAIL TO:<a@b.c>"), 501);
        assert_eq!(code("MAIL FROM:<a@b.c> SMTPUTF8"), 555);
        assert_eq!(code("MAIL FROM:<a@b.c> RET=FULL"), 555);
        assert_eq!(code("MAIL FROM:<a@b.c> BODY=BINARYMIME"), 555);
        assert_eq!(code("MAIL FROM:<a@b.c> FOO=bar"), 555);
        assert_eq!(code("MAIL FROM:<@relay.test:a@b.c>"), 501);
        assert_eq!(code("MAIL FROM:<a%b@c.d>"), 501);
        assert_eq!(code("MAIL FROM:<\"a@b\"@c.d>"), 501);
        assert_eq!(code("MAIL FROM:<a@[192.0.2.1]>"), 501);
    }

    #[test]
    fn rcpt_to() {
        assert_eq!(
            p("RCPT TO:<bob@example.test>"),
            Ok(Command::Rcpt(Address::parse("bob@example.test").unwrap()))
        );
        assert_eq!(
            p("RCPT TO:<Postmaster>"),
            Ok(Command::Rcpt(
                Address::parse("postmaster@mx.example.test").unwrap()
            ))
        );
        assert_eq!(code("RCPT TO:<>"), 501);
        assert_eq!(code("RCPT TO:<bob@example.test> NOTIFY=NEVER"), 555);
        assert_eq!(code("RCPT TO:<@a.test,@b.test:bob@example.test>"), 501);
        assert_eq!(code("RCPT TO:<bob!alice@example.test>"), 501);
        assert_eq!(code("RCPT TO:bob@example.test"), 501);
    }

    #[test]
    fn auth() {
        assert_eq!(
            p("AUTH PLAIN AGEAYg=="),
            Ok(Command::Auth {
                mechanism: Some(AuthMechanism::Plain),
                initial: Some("AGEAYg==".into())
            })
        );
        assert_eq!(
            p("AUTH login"),
            Ok(Command::Auth {
                mechanism: Some(AuthMechanism::Login),
                initial: None
            })
        );
        assert_eq!(
            p("AUTH PLAIN ="),
            Ok(Command::Auth {
                mechanism: Some(AuthMechanism::Plain),
                initial: Some(String::new())
            })
        );
        assert!(matches!(
            p("AUTH CRAM-MD5"),
            Ok(Command::Auth {
                mechanism: None,
                ..
            })
        ));
        assert!(matches!(
            p("AUTH XYZZY"),
            Ok(Command::Auth {
                mechanism: None,
                ..
            }) | Err(_)
        ));
    }

    #[test]
    fn never_panics_on_odd_lines() {
        for line in [
            "MAIL",
            "MAIL FROM",
            "MAIL FROM:",
            "MAIL FROM:<",
            "RCPT TO:<\"",
            "RCPT TO:<\\>",
            "AUTH",
            ":<>",
            "<>:",
            "MAIL FROM:<\"\\\">",
        ] {
            let _ = p(line);
        }
    }
}
