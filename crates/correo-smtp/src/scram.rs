//! SCRAM-SHA-256 (RFC 5802, RFC 7677), server side, sans-IO.
//!
//! The server never sees the password: it holds a verifier
//! ([`ScramCredentials`]: salt, iteration count, StoredKey, ServerKey)
//! derived once with [`derive_credentials`] when the account is created.
//! [`ScramServer`] walks the three messages of the exchange; the SMTP
//! driver carries them base64-encoded in `334` challenges (RFC 4954).
//!
//! Deliberate limits: no channel binding (`-PLUS` is not offered; a client
//! that says `p=` is refused, one that says `y` is accepted since we do not
//! offer PLUS), no authorization identity other than the user itself, no
//! SASLprep (usernames are addresses; passwords are used as their UTF-8
//! octets, which is SASLprep for ASCII passwords), no `m=` extension.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::{digest, hmac, pbkdf2, rand::SecureRandom};
use std::num::NonZeroU32;

/// Iterations for new verifiers (RFC 7677 asks for at least 4096).
pub const DEFAULT_ITERATIONS: u32 = 10_000;
/// A client-supplied or stored count above this is refused (CPU bound).
pub const MAX_ITERATIONS: u32 = 1_000_000;
const KEY_LEN: usize = 32;

/// The stored verifier of one user (RFC 5802 section 3).
#[derive(Clone, PartialEq, Eq)]
pub struct ScramCredentials {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: [u8; KEY_LEN],
    pub server_key: [u8; KEY_LEN],
}

impl std::fmt::Debug for ScramCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramCredentials")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; KEY_LEN] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let tag = hmac::sign(&key, data);
    let mut out = [0u8; KEY_LEN];
    out.copy_from_slice(tag.as_ref());
    out
}

fn sha256(data: &[u8]) -> [u8; KEY_LEN] {
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; KEY_LEN];
    out.copy_from_slice(d.as_ref());
    out
}

/// SaltedPassword, ClientKey, StoredKey, ServerKey from a password.
pub fn derive_credentials(password: &str, salt: &[u8], iterations: u32) -> ScramCredentials {
    let iterations = iterations.clamp(1, MAX_ITERATIONS);
    let mut salted = [0u8; KEY_LEN];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        NonZeroU32::new(iterations).unwrap_or(NonZeroU32::MIN),
        salt,
        password.as_bytes(),
        &mut salted,
    );
    let client_key = hmac_sha256(&salted, b"Client Key");
    ScramCredentials {
        salt: salt.to_vec(),
        iterations,
        stored_key: sha256(&client_key),
        server_key: hmac_sha256(&salted, b"Server Key"),
    }
}

/// A verifier with a fresh random 16-octet salt and [`DEFAULT_ITERATIONS`].
pub fn new_credentials(password: &str) -> ScramCredentials {
    let mut salt = [0u8; 16];
    let _ = ring::rand::SystemRandom::new().fill(&mut salt);
    derive_credentials(password, &salt, DEFAULT_ITERATIONS)
}

/// A verifier no password matches, stable per `username` within this
/// process, so an unknown user gets the same kind of server-first message
/// (salt, count) every time and fails only at the proof, like a wrong
/// password (RFC 5802 section 9: do not reveal whether a user exists).
pub fn decoy_credentials(username: &str) -> ScramCredentials {
    static SECRET: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    let secret = SECRET.get_or_init(|| {
        let mut s = [0u8; 32];
        let _ = ring::rand::SystemRandom::new().fill(&mut s);
        s
    });
    let salt = hmac_sha256(secret, username.to_ascii_lowercase().as_bytes());
    let mut stored = [0u8; KEY_LEN];
    let _ = ring::rand::SystemRandom::new().fill(&mut stored);
    ScramCredentials {
        salt: salt[..16].to_vec(),
        iterations: DEFAULT_ITERATIONS,
        stored_key: stored,
        server_key: hmac_sha256(&stored, b"decoy"),
    }
}

/// Why an exchange failed. [`ScramError::Proof`] is "wrong password" (or
/// unknown user); the others are malformed client messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("malformed SCRAM message")]
    Malformed,
    #[error("channel binding is not supported")]
    ChannelBinding,
    #[error("unsupported mandatory extension")]
    Extension,
    #[error("authorization identity differs from authentication identity")]
    Authzid,
    #[error("nonce mismatch")]
    Nonce,
    #[error("invalid proof")]
    Proof,
}

/// The client's first message, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFirst {
    /// The authentication identity (`n=`), `=2C`/`=3D` decoded.
    pub username: String,
    gs2_header: String,
    bare: String,
    nonce: String,
}

/// RFC 5802 `saslname`: `=2C` is `,` and `=3D` is `=`; any other `=` is an error.
fn decode_saslname(s: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(ScramError::Malformed),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    if out.is_empty() {
        return Err(ScramError::Malformed);
    }
    Ok(out)
}

fn printable_nonce(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// Parses `gs2-header client-first-message-bare`.
pub fn parse_client_first(message: &[u8]) -> Result<ClientFirst, ScramError> {
    let text = std::str::from_utf8(message).map_err(|_| ScramError::Malformed)?;
    if text.contains('\0') {
        return Err(ScramError::Malformed);
    }
    let mut parts = text.splitn(3, ',');
    let (Some(cbind), Some(authzid), Some(bare)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(ScramError::Malformed);
    };
    match cbind {
        "n" | "y" => {}
        c if c.starts_with("p=") => return Err(ScramError::ChannelBinding),
        _ => return Err(ScramError::Malformed),
    }
    let authzid = match authzid {
        "" => None,
        a => Some(decode_saslname(
            a.strip_prefix("a=").ok_or(ScramError::Malformed)?,
        )?),
    };
    let mut fields = bare.split(',');
    if bare.starts_with("m=") {
        return Err(ScramError::Extension);
    }
    let username = fields
        .next()
        .and_then(|f| f.strip_prefix("n="))
        .ok_or(ScramError::Malformed)
        .and_then(decode_saslname)?;
    let nonce = fields
        .next()
        .and_then(|f| f.strip_prefix("r="))
        .filter(|n| printable_nonce(n))
        .ok_or(ScramError::Malformed)?;
    // Optional extensions after the nonce are ignored (RFC 5802 5.1).
    if let Some(a) = authzid
        && a != username
    {
        return Err(ScramError::Authzid);
    }
    Ok(ClientFirst {
        username,
        gs2_header: format!("{cbind},{},", parts_authzid(text)),
        bare: bare.to_owned(),
        nonce: nonce.to_owned(),
    })
}

/// The authzid field exactly as sent (for the channel-binding check).
fn parts_authzid(text: &str) -> &str {
    text.split(',').nth(1).unwrap_or("")
}

/// Waiting for the client's final message.
#[derive(Debug)]
pub struct ScramServer {
    first: ClientFirst,
    server_first: String,
    nonce: String,
    credentials: ScramCredentials,
}

/// A fresh random server nonce part (24 octets, base64).
pub fn random_nonce() -> String {
    let mut n = [0u8; 24];
    let _ = ring::rand::SystemRandom::new().fill(&mut n);
    B64.encode(n)
}

impl ScramServer {
    /// Builds the server-first message for `first` with `credentials`
    /// (real or [`decoy_credentials`]) and the server's nonce part.
    pub fn new(
        first: ClientFirst,
        credentials: ScramCredentials,
        server_nonce: &str,
    ) -> (ScramServer, String) {
        let nonce = format!("{}{}", first.nonce, server_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&credentials.salt),
            credentials.iterations
        );
        (
            ScramServer {
                first,
                server_first: server_first.clone(),
                nonce,
                credentials,
            },
            server_first,
        )
    }

    pub fn username(&self) -> &str {
        &self.first.username
    }

    /// Checks the client-final message; on success returns the
    /// server-final message (`v=ServerSignature`).
    pub fn finish(self, message: &[u8]) -> Result<String, ScramError> {
        let text = std::str::from_utf8(message).map_err(|_| ScramError::Malformed)?;
        let (without_proof, proof) = text.rsplit_once(",p=").ok_or(ScramError::Malformed)?;
        let mut fields = without_proof.split(',');
        let cbind = fields
            .next()
            .and_then(|f| f.strip_prefix("c="))
            .ok_or(ScramError::Malformed)?;
        let cbind = B64.decode(cbind).map_err(|_| ScramError::Malformed)?;
        if cbind != self.first.gs2_header.as_bytes() {
            return Err(ScramError::ChannelBinding);
        }
        let nonce = fields
            .next()
            .and_then(|f| f.strip_prefix("r="))
            .ok_or(ScramError::Malformed)?;
        if nonce != self.nonce {
            return Err(ScramError::Nonce);
        }
        let proof = B64.decode(proof).map_err(|_| ScramError::Malformed)?;
        if proof.len() != KEY_LEN {
            return Err(ScramError::Malformed);
        }
        let auth_message = format!(
            "{},{},{}",
            self.first.bare, self.server_first, without_proof
        );
        let client_signature = hmac_sha256(&self.credentials.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; KEY_LEN];
        for (i, k) in client_key.iter_mut().enumerate() {
            *k = proof[i] ^ client_signature[i];
        }
        let computed = sha256(&client_key);
        let diff = computed
            .iter()
            .zip(&self.credentials.stored_key)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return Err(ScramError::Proof);
        }
        let server_signature = hmac_sha256(&self.credentials.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

/// The client side, for tests and tools (the MUA speaks PLAIN).
pub mod client {
    use super::*;

    /// Computes the client-final message for `password`, given the
    /// client-first-bare and server-first messages; also returns the
    /// expected server-final message.
    pub fn client_final(
        password: &str,
        client_first_bare: &str,
        server_first: &str,
        gs2_header: &str,
    ) -> Option<(String, String)> {
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for f in server_first.split(',') {
            if let Some(v) = f.strip_prefix("r=") {
                nonce = Some(v);
            } else if let Some(v) = f.strip_prefix("s=") {
                salt = B64.decode(v).ok();
            } else if let Some(v) = f.strip_prefix("i=") {
                iterations = v.parse::<u32>().ok();
            }
        }
        let (nonce, salt, iterations) = (nonce?, salt?, iterations?);
        if iterations > MAX_ITERATIONS {
            return None;
        }
        let mut salted = [0u8; KEY_LEN];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            NonZeroU32::new(iterations)?,
            &salt,
            password.as_bytes(),
            &mut salted,
        );
        let client_key = hmac_sha256(&salted, b"Client Key");
        let stored_key = sha256(&client_key);
        let without_proof = format!("c={},r={nonce}", B64.encode(gs2_header));
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let signature = hmac_sha256(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = hmac_sha256(&salted, b"Server Key");
        let server_signature = hmac_sha256(&server_key, auth_message.as_bytes());
        Some((
            format!("{without_proof},p={}", B64.encode(proof)),
            format!("v={}", B64.encode(server_signature)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 section 3.
    #[test]
    fn rfc7677_test_vector() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let creds = derive_credentials("pencil", &salt, 4096);
        let first = parse_client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO").unwrap();
        assert_eq!(first.username, "user");
        let (server, server_first) =
            ScramServer::new(first, creds.clone(), "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0");
        assert_eq!(
            server_first,
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let client_final = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        assert_eq!(
            server.finish(client_final.as_bytes()).unwrap(),
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        // The client helper computes the same messages.
        let (cf, sf) = client::client_final(
            "pencil",
            "n=user,r=rOprNGfwEbeRWgbNEkqO",
            &server_first,
            "n,,",
        )
        .unwrap();
        assert_eq!(cf, client_final);
        assert_eq!(sf, "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
    }

    #[test]
    fn wrong_password_nonce_and_binding_fail() {
        let creds = new_credentials("right");
        let run = |password: &str, tamper: &dyn Fn(String) -> String| {
            let first = parse_client_first(b"n,,n=alice@example.test,r=abcdef").unwrap();
            let (server, sf) = ScramServer::new(first, creds.clone(), &random_nonce());
            let (cf, _) =
                client::client_final(password, "n=alice@example.test,r=abcdef", &sf, "n,,")
                    .unwrap();
            server.finish(tamper(cf).as_bytes())
        };
        assert!(run("right", &|s| s).is_ok());
        assert_eq!(run("wrong", &|s| s), Err(ScramError::Proof));
        assert_eq!(
            run("right", &|s| s.replacen("r=abcdef", "r=abcdeX", 1)),
            Err(ScramError::Nonce)
        );
        assert_eq!(
            run("right", &|s| s.replacen("c=biws", "c=eSws", 1)),
            Err(ScramError::ChannelBinding)
        );
        assert_eq!(
            run("right", &|s| s.replacen(",p=", ",x=", 1)),
            Err(ScramError::Malformed)
        );
        // Decoys never match, and look like real verifiers.
        let decoy = decoy_credentials("nobody@example.test");
        assert_eq!(decoy.salt, decoy_credentials("NOBODY@example.test").salt);
        assert_eq!(decoy.iterations, DEFAULT_ITERATIONS);
    }

    #[test]
    fn client_first_forms() {
        assert_eq!(
            parse_client_first(b"n,,n=a=2Cb=3Dc,r=x").unwrap().username,
            "a,b=c"
        );
        assert!(parse_client_first(b"y,,n=u,r=x").is_ok());
        assert!(parse_client_first(b"n,a=u,n=u,r=x").is_ok());
        assert_eq!(
            parse_client_first(b"n,a=v,n=u,r=x"),
            Err(ScramError::Authzid)
        );
        assert_eq!(
            parse_client_first(b"p=tls-unique,,n=u,r=x"),
            Err(ScramError::ChannelBinding)
        );
        assert_eq!(
            parse_client_first(b"n,,m=ext,n=u,r=x"),
            Err(ScramError::Extension)
        );
        for bad in [
            &b""[..],
            b"n",
            b"n,,",
            b"n,,n=u",
            b"n,,n=,r=x",
            b"n,,n=u,r=",
            b"n,,n=a=2,r=x",
            b"x,,n=u,r=x",
            b"n,,r=x,n=u",
            b"n,,n=u\0,r=x",
            b"n,,n=u,r=a\x7fb",
            b"\xff",
        ] {
            assert!(parse_client_first(bad).is_err(), "{bad:?}");
        }
    }
}
