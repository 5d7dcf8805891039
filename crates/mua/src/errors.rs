//! Finding, in a chain of library errors, the cause a user can act on.
//!
//! tonic wraps the I/O or TLS failure several layers deep behind generic
//! "transport error" messages, and tokio-rustls reports a failed handshake
//! as an I/O error carrying the rustls error; the useful part ("connection
//! refused", "invalid peer certificate: UnknownIssuer") is at the bottom.

use std::error::Error;

/// What went wrong on the network, as far as a user cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetCause {
    /// Nothing listening, host unreachable, name not resolved.
    Unreachable(String),
    /// The TLS handshake failed (wrong CA, wrong server name, not TLS).
    Tls(String),
    /// A connect or read timed out.
    Timeout,
    /// Something else; the caller shows the error itself.
    Other,
}

/// Walks the `source()` chain of `err` looking for an I/O or rustls error;
/// the deepest recognisable cause wins, since wrappers only repeat it.
pub fn classify(err: &(dyn Error + 'static)) -> NetCause {
    let mut found = NetCause::Other;
    let mut current: Option<&(dyn Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(cause) = classify_one(e) {
            found = cause;
        }
        current = e.source();
    }
    found
}

fn classify_one(e: &(dyn Error + 'static)) -> Option<NetCause> {
    if let Some(tls) = e.downcast_ref::<rustls::Error>() {
        return Some(NetCause::Tls(tls.to_string()));
    }
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        // tokio-rustls reports handshake failures as I/O errors that carry
        // the rustls error inside.
        if let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            return Some(NetCause::Tls(tls.to_string()));
        }
        use std::io::ErrorKind::*;
        match io.kind() {
            ConnectionRefused | ConnectionReset | ConnectionAborted | NotConnected
            | AddrNotAvailable | HostUnreachable | NetworkUnreachable | NotFound => {
                return Some(NetCause::Unreachable(io.to_string()));
            }
            TimedOut => return Some(NetCause::Timeout),
            _ => {}
        }
    }
    let text = e.to_string();
    // Some layers keep only the text of the cause, so match on it too,
    // stripping the generic prefixes those layers add.
    let bare = || {
        let mut t = text.as_str();
        while let Some(rest) = t.strip_prefix("Connection error: ") {
            t = rest;
        }
        t.to_string()
    };
    if text.contains("failed to lookup address") || text.contains("Name or service not known") {
        return Some(NetCause::Unreachable(bare()));
    }
    if text.contains("invalid peer certificate") || text.contains("corrupt message") {
        return Some(NetCause::Tls(bare()));
    }
    None
}

/// The whole chain as one line, for "other" errors that need all of it.
pub fn chain(err: &(dyn Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut current = err.source();
    while let Some(e) = current {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        current = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrap(Box<dyn Error + Send + Sync>);
    impl std::fmt::Display for Wrap {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("transport error")
        }
    }
    impl Error for Wrap {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn finds_the_cause_below_wrappers() {
        let refused = Wrap(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        assert!(matches!(classify(&refused), NetCause::Unreachable(_)));
        let tls = Wrap(Box::new(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::General("bad".into()),
        )));
        assert!(matches!(classify(&tls), NetCause::Tls(_)));
        let other = Wrap(Box::new(std::io::Error::other("boom")));
        assert_eq!(classify(&other), NetCause::Other);
        assert_eq!(chain(&other), "transport error: boom");
    }
}
