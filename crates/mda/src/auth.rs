//! Password hashing and verification against the account directory.
//!
//! Passwords are stored as argon2id PHC strings with the argon2 crate's
//! default parameters (RFC 9106). Verification is done the same way whether
//! or not the user exists — an unknown user is checked against a dummy hash
//! — so the time a failure takes does not tell a caller which part was
//! wrong. argon2 is deliberately slow and CPU-bound, so it runs on the
//! blocking pool.
//!
//! The mailbox API authenticates every call; to keep that from costing one
//! argon2 run per call, successful verifications are remembered for a short
//! time, keyed by a keyed SHA-256 of `address NUL password` (the password
//! itself is never kept). An entry is only honoured while the stored hash is
//! unchanged, so a password change or `user del` takes effect at once.

use crate::accounts::Directory;
use crate::address::Address;
use argon2::Argon2;
use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longer passwords are refused outright (argon2 would happily hash megabytes).
const MAX_PASSWORD: usize = 1024;
/// How long a successful verification is remembered.
const CACHE_TTL: Duration = Duration::from_secs(60);
/// Upper bound on remembered verifications.
const CACHE_MAX: usize = 10_000;

/// A password could not be hashed.
#[derive(Debug, thiserror::Error)]
#[error("cannot hash password: {0}")]
pub struct HashError(String);

/// Hashes a password as an argon2id PHC string with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, HashError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError(e.to_string()))
}

/// A SCRAM-SHA-256 verifier for `password` (fresh salt), for storage.
pub fn scram_verifier(password: &str) -> crate::accounts::ScramVerifier {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let c = correo_smtp::scram::new_credentials(password);
    crate::accounts::ScramVerifier {
        salt: b64.encode(&c.salt),
        iterations: c.iterations,
        stored_key: b64.encode(c.stored_key),
        server_key: b64.encode(c.server_key),
    }
}

/// Checks a password against a PHC string; a malformed hash never matches.
pub fn verify_password(hash: &str, password: &str) -> bool {
    verify_password_in(hash, password, &mut Vec::new())
}

/// [`verify_password`] with argon2's work memory (`m_cost` KiB, 19 MiB with
/// the defaults) in `memory`, which is grown as needed and kept for the
/// next call. The server verifies through a small pool of these buffers:
/// allocating 19 MiB per login on ever-changing blocking threads left the
/// freed blocks in glibc's per-thread arenas, and the MDA's RSS reached
/// 2 GB after 500 logins (docs/BENCHMARKS.md).
pub fn verify_password_in(hash: &str, password: &str, memory: &mut Vec<argon2::Block>) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let Ok(algorithm) = argon2::Algorithm::try_from(parsed.algorithm) else {
        return false;
    };
    let version = match parsed.version.map(argon2::Version::try_from).transpose() {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => return false,
    };
    let Ok(params) = argon2::Params::try_from(&parsed) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let blocks = params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, argon2::Block::default());
    }
    let mut out = vec![0u8; expected.len()];
    let hashed = Argon2::new(algorithm, version, params).hash_password_into_with_memory(
        password.as_bytes(),
        salt,
        &mut out,
        &mut memory[..blocks],
    );
    // Output's equality is constant-time.
    hashed.is_ok()
        && argon2::password_hash::Output::new(&out).is_ok_and(|computed| computed == expected)
}

/// A user whose password was verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// Canonical address of the user (its mailbox).
    pub user: Address,
    /// The user's own address and every alias that leads to it.
    pub addresses: Vec<Address>,
}

#[derive(Debug)]
struct CacheEntry {
    user: Address,
    password_hash: String,
    expires: Instant,
}

/// Verifies credentials against the live directory.
#[derive(Debug)]
pub struct Authenticator {
    directory: Arc<Directory>,
    dummy_hash: String,
    cache_key: [u8; 32],
    cache: Mutex<HashMap<[u8; 32], CacheEntry>>,
    /// Bounds concurrent argon2 runs.
    running: Arc<tokio::sync::Semaphore>,
    /// argon2 work memory, one buffer per permit of `running` at most.
    memory: Mutex<Vec<Vec<argon2::Block>>>,
}

impl Authenticator {
    /// Prepares the dummy hash (one argon2 run) and a random cache key.
    pub fn new(directory: Arc<Directory>) -> Result<Self, HashError> {
        let mut random = [0u8; 32];
        OsRng.fill_bytes(&mut random);
        let dummy_hash = hash_password(&hex(&random))?;
        let mut cache_key = [0u8; 32];
        OsRng.fill_bytes(&mut cache_key);
        Ok(Authenticator {
            directory,
            dummy_hash,
            cache_key,
            cache: Mutex::new(HashMap::new()),
            running: Arc::new(tokio::sync::Semaphore::new(max_concurrent_verifications())),
            memory: Mutex::new(Vec::new()),
        })
    }

    /// The directory this authenticator checks against.
    pub fn directory(&self) -> &Arc<Directory> {
        &self.directory
    }

    /// Verifies `username` (a full address) and `password`, always with one
    /// argon2 run. `None` for a wrong user or password alike.
    pub async fn verify(self: &Arc<Self>, username: &str, password: &str) -> Option<Authenticated> {
        let (user, _hash) = self.verify_on_pool(username, password).await?;
        Some(self.authenticated(user))
    }

    /// Like [`verify`](Self::verify), but answers from the short-lived cache
    /// of successful verifications when it can.
    pub async fn verify_cached(
        self: &Arc<Self>,
        username: &str,
        password: &str,
    ) -> Option<Authenticated> {
        let key = self.cache_key_for(username, password);
        if let Some(user) = self.cached(&key) {
            return Some(self.authenticated(user));
        }
        let (user, password_hash) = self.verify_on_pool(username, password).await?;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_MAX {
            let now = Instant::now();
            cache.retain(|_, e| e.expires > now);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(
            key,
            CacheEntry {
                user: user.clone(),
                password_hash,
                expires: Instant::now() + CACHE_TTL,
            },
        );
        drop(cache);
        Some(self.authenticated(user))
    }

    /// One argon2 verification on the blocking pool, at most
    /// twice the CPU count at a time: each run takes ~19 MiB, and a flood
    /// of bad logins must not turn into unbounded memory and threads.
    async fn verify_on_pool(
        self: &Arc<Self>,
        username: &str,
        password: &str,
    ) -> Option<(Address, String)> {
        // Owned and moved into the task: a caller that gives up does not
        // free the slot before the work is really done.
        let permit = Arc::clone(&self.running).acquire_owned().await.ok()?;
        let this = Arc::clone(self);
        let (u, p) = (username.to_string(), password.to_string());
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            this.verify_blocking(&u, &p)
        })
        .await
        .ok()?
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Address> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let entry = cache.get(key)?;
        let accounts = self.directory.snapshot();
        let still_valid = entry.expires > Instant::now()
            && accounts
                .users
                .get(&entry.user)
                .is_some_and(|u| u.password_hash == entry.password_hash);
        if still_valid {
            Some(entry.user.clone())
        } else {
            cache.remove(key);
            None
        }
    }

    fn cache_key_for(&self, username: &str, password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.cache_key);
        h.update(username.as_bytes());
        h.update([0u8]);
        h.update(password.as_bytes());
        h.finalize().into()
    }

    /// Returns the user and the hash that matched.
    fn verify_blocking(&self, username: &str, password: &str) -> Option<(Address, String)> {
        if password.len() > MAX_PASSWORD {
            return None;
        }
        let accounts = self.directory.snapshot();
        let found = Address::parse(username)
            .ok()
            .and_then(|a| accounts.users.get_key_value(&a))
            .map(|(a, u)| (a.clone(), u.password_hash.clone()));
        let mut memory = self
            .memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default();
        let result = match found {
            Some((user, hash)) => {
                verify_password_in(&hash, password, &mut memory).then_some((user, hash))
            }
            None => {
                // Same work as for a real user, so timing does not reveal existence.
                let _ = verify_password_in(&self.dummy_hash, password, &mut memory);
                None
            }
        };
        self.memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(memory);
        result
    }

    fn authenticated(&self, user: Address) -> Authenticated {
        let accounts = self.directory.snapshot();
        let mut addresses = vec![user.clone()];
        addresses.extend(accounts.aliases_of(&user));
        Authenticated { user, addresses }
    }
}

/// Twice the CPUs: enough to keep every core busy, little enough to bound memory.
fn max_concurrent_verifications() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()) * 2
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::AccountsFile;

    #[test]
    fn verification_in_reused_memory_agrees_with_argon2() {
        use argon2::password_hash::PasswordVerifier;
        let custom = Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            argon2::Params::new(4096, 2, 1, Some(24)).unwrap(),
        );
        let salt = SaltString::generate(&mut OsRng);
        let hashes = [
            hash_password("s3cret").unwrap(),
            custom.hash_password(b"s3cret", &salt).unwrap().to_string(),
        ];
        let mut memory = Vec::new();
        for hash in &hashes {
            let parsed = PasswordHash::new(hash).unwrap();
            for password in ["s3cret", "S3cret", "", "s3cret "] {
                let reference = Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok();
                assert_eq!(
                    verify_password_in(hash, password, &mut memory),
                    reference,
                    "{hash} {password:?}"
                );
            }
        }
        // The buffer is kept at the largest m_cost seen (19 MiB default).
        assert_eq!(memory.len(), argon2::Params::DEFAULT_M_COST as usize);
        assert!(!verify_password_in(
            "$argon2id$v=19$garbage",
            "s3cret",
            &mut memory
        ));
    }

    #[test]
    fn hashes_are_argon2id_and_verify() {
        let h = hash_password("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password(&h, "s3cret"));
        assert!(!verify_password(&h, "S3cret"));
        assert!(!verify_password("garbage", "s3cret"));
    }

    #[tokio::test]
    async fn verifies_against_the_live_directory_and_cache_follows_changes() {
        let dir = tempfile::tempdir().unwrap();
        let file = AccountsFile::in_dir(dir.path());
        let alice = Address::parse("alice@example.test").unwrap();
        let hash = hash_password("pw").unwrap();
        file.update(|acc| {
            acc.add_user(alice.clone(), hash)?;
            acc.add_alias(Address::parse("al@example.test").unwrap(), alice.clone())
        })
        .unwrap();
        let auth =
            Arc::new(Authenticator::new(Arc::new(Directory::open(file.clone()).unwrap())).unwrap());

        let ok = auth.verify("Alice@Example.test", "pw").await.unwrap();
        assert_eq!(ok.user, alice);
        assert_eq!(ok.addresses.len(), 2);
        assert!(auth.verify("alice@example.test", "nope").await.is_none());
        assert!(auth.verify("bob@example.test", "pw").await.is_none());
        assert!(auth.verify("not an address", "pw").await.is_none());

        assert!(
            auth.verify_cached("alice@example.test", "pw")
                .await
                .is_some()
        );
        assert!(
            auth.verify_cached("alice@example.test", "pw")
                .await
                .is_some()
        );
        assert!(
            auth.verify_cached("alice@example.test", "wrong")
                .await
                .is_none()
        );
        file.update(|acc| acc.remove_user(&alice)).unwrap();
        assert!(
            auth.verify_cached("alice@example.test", "pw")
                .await
                .is_none()
        );
    }
}
