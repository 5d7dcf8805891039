//! Decoding of AUTH PLAIN (RFC 4616) and LOGIN responses (RFC 4954 exchange).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::reply::Reply;

/// LOGIN's prompts, base64 of "Username:" and "Password:".
pub(crate) const LOGIN_USERNAME: &str = "VXNlcm5hbWU6";
pub(crate) const LOGIN_PASSWORD: &str = "UGFzc3dvcmQ6";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SaslError {
    #[error("invalid base64")]
    Base64,
    #[error("malformed PLAIN response")]
    Plain,
    #[error("authorization identity differs from authentication identity")]
    Authzid,
}

impl SaslError {
    pub(crate) fn reply(&self) -> Reply {
        match self {
            SaslError::Base64 | SaslError::Plain => Reply::new(501, "5.5.2", self.to_string()),
            // Acting as another user is not offered.
            SaslError::Authzid => Reply::new(535, "5.7.8", "authentication failed"),
        }
    }
}

/// Base64 to octets.
pub(crate) fn decode_bytes(b64: &str) -> Result<Vec<u8>, SaslError> {
    STANDARD.decode(b64.trim()).map_err(|_| SaslError::Base64)
}

pub(crate) fn encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Base64 to UTF-8 text.
pub(crate) fn decode_text(b64: &str) -> Result<String, SaslError> {
    let bytes = STANDARD.decode(b64.trim()).map_err(|_| SaslError::Base64)?;
    String::from_utf8(bytes).map_err(|_| SaslError::Base64)
}

/// `[authzid] NUL authcid NUL passwd` to (username, password).
pub(crate) fn decode_plain(b64: &str) -> Result<(String, String), SaslError> {
    let text = decode_text(b64)?;
    let mut parts = text.split('\0');
    let (Some(authzid), Some(user), Some(pass), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Plain);
    };
    if user.is_empty() {
        return Err(SaslError::Plain);
    }
    if !authzid.is_empty() && authzid != user {
        return Err(SaslError::Authzid);
    }
    Ok((user.to_owned(), pass.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        STANDARD.encode(s)
    }

    #[test]
    fn plain() {
        assert_eq!(
            decode_plain(&b64("\0alice\0secret")),
            Ok(("alice".into(), "secret".into()))
        );
        assert_eq!(
            decode_plain(&b64("alice\0alice\0pw")),
            Ok(("alice".into(), "pw".into()))
        );
        assert_eq!(
            decode_plain(&b64("bob\0alice\0pw")),
            Err(SaslError::Authzid)
        );
        assert_eq!(decode_plain(&b64("alice\0secret")), Err(SaslError::Plain));
        assert_eq!(decode_plain(&b64("\0\0pw")), Err(SaslError::Plain));
        assert_eq!(decode_plain(&b64("\0a\0b\0c")), Err(SaslError::Plain));
        assert_eq!(decode_plain("!!!"), Err(SaslError::Base64));
        assert_eq!(decode_plain(""), Err(SaslError::Plain));
    }

    #[test]
    fn login_prompts() {
        assert_eq!(decode_text(LOGIN_USERNAME).unwrap(), "Username:");
        assert_eq!(decode_text(LOGIN_PASSWORD).unwrap(), "Password:");
        assert_eq!(
            decode_text(&STANDARD.encode([0xff, 0xfe])),
            Err(SaslError::Base64)
        );
    }
}
