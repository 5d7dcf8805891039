//! Validated SMTP mailboxes (RFC 5321 4.1.2).
//!
//! Deliberately stricter than the RFC grammar: anything that has been used to
//! trick relays into forwarding (source routes, `%`/`!` hacks, `@` hidden in a
//! quoted local part) or that the rest of Correo cannot route (IP literals,
//! non-ASCII without SMTPUTF8) is refused up front.

use std::fmt;
use std::str::FromStr;

/// RFC 5321 4.5.3.1.3: a path is at most 256 octets including `<>`.
pub const MAX_ADDRESS_LEN: usize = 254;
/// RFC 5321 4.5.3.1.1.
pub const MAX_LOCAL_PART_LEN: usize = 64;
/// RFC 5321 4.5.3.1.2 / RFC 1035.
pub const MAX_DOMAIN_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// A mailbox `local@domain` as used in SMTP paths (RFC 5321 4.1.2), validated.
/// Refuses source routes, `%`/`!` relay hacks, `@` inside quoted local parts,
/// multiple `@`, IP literals, empty parts, control characters, > 254 octets.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address {
    full: String,
    at: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("address is empty")]
    Empty,
    #[error("address is longer than {MAX_ADDRESS_LEN} octets")]
    TooLong,
    #[error("address must contain exactly one @")]
    AtSign,
    #[error("address contains control, space or non-ASCII characters")]
    Characters,
    #[error("invalid local part")]
    LocalPart,
    #[error("local part contains % or ! (relay hack)")]
    RelayHack,
    #[error("IP address literals are not accepted")]
    IpLiteral,
    #[error("invalid domain")]
    Domain,
}

impl Address {
    /// Parses `user@example.test` (no angle brackets).
    pub fn parse(s: &str) -> Result<Address, AddressError> {
        if s.is_empty() {
            return Err(AddressError::Empty);
        }
        if s.len() > MAX_ADDRESS_LEN {
            return Err(AddressError::TooLong);
        }
        // Control characters and non-ASCII anywhere (SMTPUTF8 is not offered).
        if s.bytes().any(|b| !(0x20..0x7f).contains(&b)) {
            return Err(AddressError::Characters);
        }
        // Exactly one `@` in the whole string: this refuses source routes
        // (`@a:b@c`), `@` inside quoted local parts and multiple `@` at once.
        if s.bytes().filter(|&b| b == b'@').count() != 1 {
            return Err(AddressError::AtSign);
        }
        let at = s.find('@').ok_or(AddressError::AtSign)?;
        let (local, domain) = (&s[..at], &s[at + 1..]);
        check_local_part(local)?;
        check_domain(domain)?;
        Ok(Address {
            full: format!("{local}@{}", domain.to_ascii_lowercase()),
            at,
        })
    }

    pub fn local_part(&self) -> &str {
        &self.full[..self.at]
    }

    /// Lowercased ASCII.
    pub fn domain(&self) -> &str {
        &self.full[self.at + 1..]
    }

    /// `local@domain`.
    pub fn as_str(&self) -> &str {
        &self.full
    }
}

fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b)
}

fn check_local_part(local: &str) -> Result<(), AddressError> {
    if local.is_empty() || local.len() > MAX_LOCAL_PART_LEN {
        return Err(AddressError::LocalPart);
    }
    // `%` and `!` route mail through another host on some systems; refuse
    // them even when quoted.
    if local.contains(['%', '!']) {
        return Err(AddressError::RelayHack);
    }
    let bytes = local.as_bytes();
    if bytes[0] == b'"' {
        // Quoted-string (RFC 5321 4.1.2): qtextSMTP or quoted-pairSMTP.
        if bytes.len() < 2 || bytes[bytes.len() - 1] != b'"' {
            return Err(AddressError::LocalPart);
        }
        let inner = &bytes[1..bytes.len() - 1];
        let mut i = 0;
        while i < inner.len() {
            match inner[i] {
                b'\\' => {
                    if i + 1 >= inner.len() {
                        return Err(AddressError::LocalPart);
                    }
                    i += 2;
                }
                b'"' => return Err(AddressError::LocalPart),
                _ => i += 1,
            }
        }
        return Ok(());
    }
    // Dot-string: atoms separated by single dots.
    if local
        .split('.')
        .any(|atom| atom.is_empty() || !atom.bytes().all(is_atext))
    {
        return Err(AddressError::LocalPart);
    }
    Ok(())
}

fn check_domain(domain: &str) -> Result<(), AddressError> {
    if domain.starts_with('[') {
        return Err(AddressError::IpLiteral);
    }
    if domain.is_empty() || domain.len() > MAX_DOMAIN_LEN {
        return Err(AddressError::Domain);
    }
    for label in domain.split('.') {
        let ok = !label.is_empty()
            && label.len() <= MAX_LABEL_LEN
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(AddressError::Domain);
        }
    }
    Ok(())
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl FromStr for Address {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Address::parse(s)
    }
}

/// MAIL FROM's reverse path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReversePath {
    /// `<>`: bounces and other notifications (RFC 5321 4.5.5).
    Null,
    Mailbox(Address),
}

impl ReversePath {
    /// `""` for the null path.
    pub fn as_str(&self) -> &str {
        match self {
            ReversePath::Null => "",
            ReversePath::Mailbox(a) => a.as_str(),
        }
    }
}

impl fmt::Display for ReversePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_addresses() {
        let a = Address::parse("Alice.Smith+tag@Example.TEST").unwrap();
        assert_eq!(a.local_part(), "Alice.Smith+tag");
        assert_eq!(a.domain(), "example.test");
        assert_eq!(a.as_str(), "Alice.Smith+tag@example.test");
        assert_eq!(a.to_string(), a.as_str());
        assert!(Address::parse("\"john doe\"@example.test").is_ok());
        assert!(Address::parse("\"a\\\"b\"@example.test").is_ok());
        assert!(Address::parse("postmaster@localhost").is_ok());
        assert_eq!("x@y.z".parse::<Address>().unwrap().domain(), "y.z");
    }

    #[test]
    fn refuses_relay_tricks_and_junk() {
        for bad in [
            "",
            "@example.test",
            "user@",
            "user",
            "@relay.test:user@example.test",
            "user%other@example.test",
            "user!other@example.test",
            "bang!path",
            "\"a@b\"@example.test",
            "a@b@example.test",
            "user@[192.0.2.1]",
            "user@[IPv6:::1]",
            "user @example.test",
            "user\r\n@example.test",
            "us\0er@example.test",
            "us\u{e9}r@example.test",
            ".user@example.test",
            "user.@example.test",
            "us..er@example.test",
            "user@-example.test",
            "user@example-.test",
            "user@example..test",
            "user@example.test.",
            "user@exa_mple.test",
            "\"unterminated@example.test",
            "\"a\"b\"@example.test",
            "<user@example.test>",
        ] {
            assert!(Address::parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn length_limits() {
        let local = "a".repeat(64);
        assert!(Address::parse(&format!("{local}@example.test")).is_ok());
        let local = "a".repeat(65);
        assert_eq!(
            Address::parse(&format!("{local}@example.test")),
            Err(AddressError::LocalPart)
        );
        let label = "b".repeat(63);
        let domain = [label.as_str(); 3].join(".");
        assert!(Address::parse(&format!("a@{domain}")).is_ok());
        assert!(Address::parse(&format!("a@{domain}.{}", "c".repeat(60))).is_ok());
        let long = format!("a@{domain}.{}", "c".repeat(61));
        assert_eq!(Address::parse(&long), Err(AddressError::TooLong));
        assert_eq!(
            Address::parse(&format!("a@{}.test", "d".repeat(64))),
            Err(AddressError::Domain)
        );
    }

    #[test]
    fn reverse_path() {
        assert_eq!(ReversePath::Null.as_str(), "");
        let a = Address::parse("a@b.c").unwrap();
        assert_eq!(ReversePath::Mailbox(a).as_str(), "a@b.c");
    }
}
