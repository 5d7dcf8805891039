//! Mail addresses as the MDA accepts them.
//!
//! An address names a directory on disk (`mail/<domain>/<local>/Maildir`),
//! so the rules are deliberately stricter than RFC 5321's `Local-part`: only
//! ASCII letters, digits and `.-_+`, no leading or trailing dot and no `..`.
//! Nothing that passes [`Address::parse`] can be `..`, contain `/`, or start
//! with `.`, so no address can escape the mailbox root or hide as a dotfile.
//!
//! Both parts are folded to lowercase: domains are case-insensitive
//! (RFC 5321 §2.4) and the RFC advises against exploiting case in local
//! parts, so `Alice@Example.TEST` and `alice@example.test` are one mailbox —
//! which also keeps directory names unique on case-insensitive filesystems.

use std::fmt;

/// Longest local part (RFC 5321 §4.5.3.1.1).
const MAX_LOCAL: usize = 64;
/// Longest domain (RFC 5321 §4.5.3.1.2).
const MAX_DOMAIN: usize = 255;
/// Longest DNS label (RFC 1035 §2.3.4).
const MAX_LABEL: usize = 63;

/// Why a string is not an acceptable address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("address `{0}` has no `@`")]
    NoAt(String),
    #[error("address `{0}`: empty local part")]
    EmptyLocal(String),
    #[error("address `{0}`: local part longer than {MAX_LOCAL} characters")]
    LocalTooLong(String),
    #[error("address `{0}`: local part may contain only ASCII letters, digits and `.-_+`")]
    LocalCharacters(String),
    #[error("address `{0}`: local part may not start or end with `.` or contain `..`")]
    LocalDots(String),
    #[error("address `{0}`: invalid domain")]
    Domain(String),
}

/// A validated, lowercased `local@domain`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Address {
    local: String,
    domain: String,
}

impl Address {
    /// Parses and validates an address; the result is lowercased.
    pub fn parse(input: &str) -> Result<Self, AddressError> {
        let owned = || input.to_string();
        // The last `@` splits: the local part may not contain one anyway.
        let (local, domain) = input
            .rsplit_once('@')
            .ok_or_else(|| AddressError::NoAt(owned()))?;
        let local = validate_local(local).map_err(|e| e(owned()))?;
        let domain = validate_domain(domain).ok_or_else(|| AddressError::Domain(owned()))?;
        Ok(Address { local, domain })
    }

    /// The local part, safe to use as a directory name.
    pub fn local(&self) -> &str {
        &self.local
    }

    /// The domain, lowercased and safe to use as a directory name.
    pub fn domain(&self) -> &str {
        &self.domain
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

impl serde::Serialize for Address {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Address {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Address::parse(&s).map_err(serde::de::Error::custom)
    }
}

type LocalError = fn(String) -> AddressError;

fn validate_local(local: &str) -> Result<String, LocalError> {
    if local.is_empty() {
        return Err(AddressError::EmptyLocal);
    }
    if local.len() > MAX_LOCAL {
        return Err(AddressError::LocalTooLong);
    }
    if !local
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'+'))
    {
        return Err(AddressError::LocalCharacters);
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(AddressError::LocalDots);
    }
    Ok(local.to_ascii_lowercase())
}

/// Validates a domain name (LDH labels separated by dots); returns it
/// lowercased. A single trailing dot (the DNS root) is dropped.
pub fn validate_domain(domain: &str) -> Option<String> {
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    if domain.is_empty() || domain.len() > MAX_DOMAIN {
        return None;
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= MAX_LABEL
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    domain
        .split('.')
        .all(label_ok)
        .then(|| domain.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_lowercases() {
        let a = Address::parse("Alice.B+tag_x-y@Example.TEST").unwrap();
        assert_eq!(a.local(), "alice.b+tag_x-y");
        assert_eq!(a.domain(), "example.test");
        assert_eq!(a.to_string(), "alice.b+tag_x-y@example.test");
        assert_eq!(
            Address::parse("bob@localhost.").unwrap().domain(),
            "localhost"
        );
    }

    #[test]
    fn rejects_anything_that_could_escape_the_mailbox_root() {
        for bad in [
            "../../x@example.test",
            "../x@example.test",
            "..@example.test",
            ".@example.test",
            ".hidden@example.test",
            "trailing.@example.test",
            "a..b@example.test",
            "a/b@example.test",
            "a\\b@example.test",
            "a\0b@example.test",
            "a\nb@example.test",
            "a b@example.test",
            "\"quoted\"@example.test",
            "caf\u{e9}@example.test",
            "@example.test",
            "alice@",
            "alice",
            "alice@../../etc",
            "alice@exa/mple.test",
            "alice@example..test",
            "alice@.example.test",
            "alice@-example.test",
            "alice@example_test",
            "alice@exa mple.test",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad:?} was accepted");
        }
        let long = format!("{}@example.test", "a".repeat(65));
        assert!(matches!(
            Address::parse(&long),
            Err(AddressError::LocalTooLong(_))
        ));
    }

    #[test]
    fn errors_quote_the_input() {
        let err = Address::parse("../../x@example.test").unwrap_err();
        assert!(err.to_string().contains("../../x@example.test"), "{err}");
    }
}
