//! The account directory: domains, users (argon2id password hashes) and
//! aliases, kept in `<data_dir>/accounts.json`.
//!
//! The file is the only truth. `mda user …`/`mda alias …` edit it under an
//! exclusive lock (`accounts.json.lock`, flock) and replace it atomically
//! (temporary file, fsync, rename, fsync of the directory), so a reader sees
//! either the old or the new file, never half of one, and two concurrent
//! commands cannot lose each other's change. A running server notices the
//! replacement on its next lookup ([`Directory::snapshot`] compares the
//! file's inode, size and mtime) and reloads.

use crate::address::Address;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Alias chains longer than this are treated as broken (and cannot loop).
const MAX_ALIAS_DEPTH: usize = 8;
/// Version of the file format written by this code.
const FORMAT_VERSION: u32 = 1;

/// Errors reading, changing or writing the account directory.
#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid accounts file: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: unsupported format version {version} (this mda writes {FORMAT_VERSION})")]
    Version { path: PathBuf, version: u32 },
    #[error("user {0} already exists")]
    UserExists(Address),
    #[error("no such user: {0}")]
    NoSuchUser(Address),
    #[error("alias {0} already exists")]
    AliasExists(Address),
    #[error("no such alias: {0}")]
    NoSuchAlias(Address),
    #[error("{0} is a user; an address cannot be both a user and an alias")]
    IsUser(Address),
    #[error("{0} is an alias; an address cannot be both a user and an alias")]
    IsAlias(Address),
    #[error("alias target {0} does not lead to a user here")]
    TargetUnknown(Address),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AccountsError + '_ {
    move |source| AccountsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One user: its password, as an argon2id PHC string, and (accounts
/// created since SCRAM support) its SCRAM-SHA-256 verifier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub password_hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scram: Option<ScramVerifier>,
}

/// RFC 5802 section 3 verifier, base64 fields as in the SCRAM messages.
/// Derived from the password at `user add` time; never the password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScramVerifier {
    pub salt: String,
    pub iterations: u32,
    pub stored_key: String,
    pub server_key: String,
}

/// The whole directory, as stored in `accounts.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Accounts {
    #[serde(default = "format_version")]
    pub version: u32,
    /// Domains served here. Adding a user or alias adds its domain.
    #[serde(default)]
    pub domains: BTreeSet<String>,
    #[serde(default)]
    pub users: BTreeMap<Address, User>,
    /// Alias -> target; the target is a user or another alias.
    #[serde(default)]
    pub aliases: BTreeMap<Address, Address>,
}

fn format_version() -> u32 {
    FORMAT_VERSION
}

impl Default for Accounts {
    fn default() -> Self {
        Accounts {
            version: FORMAT_VERSION,
            domains: BTreeSet::new(),
            users: BTreeMap::new(),
            aliases: BTreeMap::new(),
        }
    }
}

impl Accounts {
    /// Whether mail for `domain` (lowercase) is delivered here.
    pub fn serves_domain(&self, domain: &str) -> bool {
        self.domains.contains(domain)
    }

    /// The user whose mailbox receives mail for `address`, following aliases.
    pub fn resolve(&self, address: &Address) -> Option<&Address> {
        let mut current = address;
        for _ in 0..=MAX_ALIAS_DEPTH {
            if let Some((user, _)) = self.users.get_key_value(current) {
                return Some(user);
            }
            current = self.aliases.get(current)?;
        }
        None
    }

    /// Every alias that leads to `user`, directly or through other aliases.
    pub fn aliases_of(&self, user: &Address) -> Vec<Address> {
        self.aliases
            .keys()
            .filter(|alias| self.resolve(alias) == Some(user))
            .cloned()
            .collect()
    }

    /// Adds a user with an already computed password hash.
    pub fn add_user(
        &mut self,
        address: Address,
        password_hash: String,
    ) -> Result<(), AccountsError> {
        if self.users.contains_key(&address) {
            return Err(AccountsError::UserExists(address));
        }
        if self.aliases.contains_key(&address) {
            return Err(AccountsError::IsAlias(address));
        }
        self.domains.insert(address.domain().to_string());
        self.users.insert(
            address,
            User {
                password_hash,
                scram: None,
            },
        );
        Ok(())
    }

    /// Stores the SCRAM-SHA-256 verifier of an existing user.
    pub fn set_scram(
        &mut self,
        address: &Address,
        verifier: ScramVerifier,
    ) -> Result<(), AccountsError> {
        let user = self
            .users
            .get_mut(address)
            .ok_or_else(|| AccountsError::NoSuchUser(address.clone()))?;
        user.scram = Some(verifier);
        Ok(())
    }

    /// Removes a user. Returns the aliases that led to it and now lead nowhere
    /// (kept, so that re-adding the user restores them).
    pub fn remove_user(&mut self, address: &Address) -> Result<Vec<Address>, AccountsError> {
        let orphans = self.aliases_of(address);
        self.users
            .remove(address)
            .ok_or_else(|| AccountsError::NoSuchUser(address.clone()))?;
        Ok(orphans)
    }

    /// Adds an alias; its target must already lead to a user, so aliases can
    /// neither loop nor forward mail off this system.
    pub fn add_alias(&mut self, alias: Address, target: Address) -> Result<(), AccountsError> {
        if self.users.contains_key(&alias) {
            return Err(AccountsError::IsUser(alias));
        }
        if self.aliases.contains_key(&alias) {
            return Err(AccountsError::AliasExists(alias));
        }
        if self.resolve(&target).is_none() {
            return Err(AccountsError::TargetUnknown(target));
        }
        self.domains.insert(alias.domain().to_string());
        self.aliases.insert(alias, target);
        Ok(())
    }

    /// Removes an alias.
    pub fn remove_alias(&mut self, alias: &Address) -> Result<Address, AccountsError> {
        self.aliases
            .remove(alias)
            .ok_or_else(|| AccountsError::NoSuchAlias(alias.clone()))
    }
}

/// Where the account directory lives on disk, and how to change it safely.
#[derive(Debug, Clone)]
pub struct AccountsFile {
    path: PathBuf,
    lock_path: PathBuf,
    tmp_path: PathBuf,
}

impl AccountsFile {
    /// `<data_dir>/accounts.json` and its lock file.
    pub fn in_dir(data_dir: &Path) -> Self {
        AccountsFile {
            path: data_dir.join("accounts.json"),
            lock_path: data_dir.join("accounts.json.lock"),
            tmp_path: data_dir.join(".accounts.json.tmp"),
        }
    }

    /// Path of `accounts.json`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the directory; a missing file is an empty directory.
    pub fn load(&self) -> Result<Accounts, AccountsError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => self.parse(&bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Accounts::default()),
            Err(e) => Err(io_err(&self.path)(e)),
        }
    }

    fn parse(&self, bytes: &[u8]) -> Result<Accounts, AccountsError> {
        let accounts: Accounts =
            serde_json::from_slice(bytes).map_err(|source| AccountsError::Corrupt {
                path: self.path.clone(),
                source,
            })?;
        if accounts.version != FORMAT_VERSION {
            return Err(AccountsError::Version {
                path: self.path.clone(),
                version: accounts.version,
            });
        }
        Ok(accounts)
    }

    /// Reads, changes and rewrites the directory under the exclusive lock.
    /// Nothing is written when `change` fails.
    pub fn update<R>(
        &self,
        change: impl FnOnce(&mut Accounts) -> Result<R, AccountsError>,
    ) -> Result<R, AccountsError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&self.lock_path)
            .map_err(io_err(&self.lock_path))?;
        // Blocks until any other writer is done; released when `lock` drops.
        lock.lock().map_err(io_err(&self.lock_path))?;
        let mut accounts = self.load()?;
        let result = change(&mut accounts)?;
        self.write(&accounts)?;
        Ok(result)
    }

    fn write(&self, accounts: &Accounts) -> Result<(), AccountsError> {
        let mut json =
            serde_json::to_vec_pretty(accounts).map_err(|source| AccountsError::Corrupt {
                path: self.path.clone(),
                source,
            })?;
        json.push(b'\n');
        let tmp = &self.tmp_path;
        // 0600: the file holds password hashes.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(tmp)
            .map_err(io_err(tmp))?;
        file.write_all(&json).map_err(io_err(tmp))?;
        file.sync_all().map_err(io_err(tmp))?;
        drop(file);
        std::fs::rename(tmp, &self.path).map_err(io_err(&self.path))?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        sync_dir(dir)
    }
}

/// fsyncs a directory, making renames and creations inside it durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), AccountsError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// What identifies one version of the file: a rename changes the inode, an
/// in-place edit the size or mtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        let m = std::fs::metadata(path).ok()?;
        Some(Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
        })
    }
}

/// The server's view of the directory: the last good snapshot, reloaded
/// whenever the file changes.
#[derive(Debug)]
pub struct Directory {
    file: AccountsFile,
    current: Mutex<(Option<Stamp>, Arc<Accounts>)>,
}

impl Directory {
    /// Loads the directory once; a corrupt file is an error at start-up.
    pub fn open(file: AccountsFile) -> Result<Self, AccountsError> {
        let stamp = Stamp::of(file.path());
        let accounts = file.load()?;
        Ok(Directory {
            file,
            current: Mutex::new((stamp, Arc::new(accounts))),
        })
    }

    /// The current accounts. Costs one `stat`; reloads if the file changed.
    /// A file that fails to parse is logged and the previous snapshot kept,
    /// so a bad hand edit does not take every mailbox offline.
    pub fn snapshot(&self) -> Arc<Accounts> {
        let stamp = Stamp::of(self.file.path());
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.0 != stamp {
            // Remember the stamp even on failure: log a bad file once, not per lookup.
            current.0 = stamp;
            match self.file.load() {
                Ok(accounts) => {
                    tracing::info!(
                        path = %self.file.path().display(),
                        users = accounts.users.len(),
                        aliases = accounts.aliases.len(),
                        "account directory reloaded"
                    );
                    current.1 = Arc::new(accounts);
                }
                Err(e) => {
                    tracing::error!(error = %e, "account directory not reloaded; keeping the previous one")
                }
            }
        }
        Arc::clone(&current.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Address {
        Address::parse(s).unwrap()
    }

    #[test]
    fn round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = AccountsFile::in_dir(dir.path());
        assert_eq!(file.load().unwrap(), Accounts::default());
        file.update(|acc| acc.add_user(a("alice@example.test"), "$argon2id$x".into()))
            .unwrap();
        file.update(|acc| acc.add_alias(a("postmaster@example.test"), a("alice@example.test")))
            .unwrap();
        file.update(|acc| acc.add_alias(a("pm@other.test"), a("postmaster@example.test")))
            .unwrap();
        let acc = file.load().unwrap();
        assert_eq!(
            acc.users[&a("alice@example.test")].password_hash,
            "$argon2id$x"
        );
        assert_eq!(
            acc.resolve(&a("pm@other.test")),
            Some(&a("alice@example.test"))
        );
        assert_eq!(
            acc.aliases_of(&a("alice@example.test")),
            vec![a("pm@other.test"), a("postmaster@example.test")]
        );
        assert!(acc.serves_domain("other.test") && acc.serves_domain("example.test"));
        let mode = std::fs::metadata(file.path()).unwrap().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!dir.path().join(".accounts.json.tmp").exists());
    }

    #[test]
    fn refuses_conflicting_changes_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = AccountsFile::in_dir(dir.path());
        file.update(|acc| acc.add_user(a("alice@example.test"), "h".into()))
            .unwrap();
        let before = std::fs::read(file.path()).unwrap();
        let err = file
            .update(|acc| acc.add_user(a("ALICE@example.test"), "h2".into()))
            .unwrap_err();
        assert!(matches!(err, AccountsError::UserExists(_)), "{err}");
        let err = file
            .update(|acc| acc.add_alias(a("alice@example.test"), a("alice@example.test")))
            .unwrap_err();
        assert!(matches!(err, AccountsError::IsUser(_)), "{err}");
        let err = file
            .update(|acc| acc.add_alias(a("x@example.test"), a("nobody@example.test")))
            .unwrap_err();
        assert!(matches!(err, AccountsError::TargetUnknown(_)), "{err}");
        assert_eq!(std::fs::read(file.path()).unwrap(), before);
    }

    #[test]
    fn removing_a_user_reports_orphaned_aliases() {
        let mut acc = Accounts::default();
        acc.add_user(a("alice@example.test"), "h".into()).unwrap();
        acc.add_alias(a("al@example.test"), a("alice@example.test"))
            .unwrap();
        assert_eq!(
            acc.remove_user(&a("alice@example.test")).unwrap(),
            vec![a("al@example.test")]
        );
        assert_eq!(acc.resolve(&a("al@example.test")), None);
        assert!(matches!(
            acc.remove_user(&a("alice@example.test")),
            Err(AccountsError::NoSuchUser(_))
        ));
    }

    #[test]
    fn alias_loops_in_a_hand_edited_file_resolve_to_nothing() {
        let mut acc = Accounts::default();
        acc.aliases.insert(a("x@example.test"), a("y@example.test"));
        acc.aliases.insert(a("y@example.test"), a("x@example.test"));
        assert_eq!(acc.resolve(&a("x@example.test")), None);
    }

    #[test]
    fn concurrent_rewrites_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let file = AccountsFile::in_dir(dir.path());
                std::thread::spawn(move || {
                    for i in 0..10 {
                        file.update(|acc| {
                            acc.add_user(a(&format!("u{t}-{i}@example.test")), "h".into())
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let acc = AccountsFile::in_dir(dir.path()).load().unwrap();
        assert_eq!(acc.users.len(), 80);
    }

    #[test]
    fn corrupt_or_unknown_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = AccountsFile::in_dir(dir.path());
        std::fs::write(
            file.path(),
            "{\"users\": {\"../x@example.test\": {\"password_hash\": \"h\"}}}",
        )
        .unwrap();
        assert!(matches!(file.load(), Err(AccountsError::Corrupt { .. })));
        std::fs::write(file.path(), "{\"version\": 1, \"bogus\": 1}").unwrap();
        assert!(matches!(file.load(), Err(AccountsError::Corrupt { .. })));
        std::fs::write(file.path(), "{\"version\": 9}").unwrap();
        assert!(matches!(
            file.load(),
            Err(AccountsError::Version { version: 9, .. })
        ));
    }

    #[test]
    fn directory_notices_rewrites_and_survives_bad_edits() {
        let dir = tempfile::tempdir().unwrap();
        let file = AccountsFile::in_dir(dir.path());
        let directory = Directory::open(file.clone()).unwrap();
        assert!(directory.snapshot().users.is_empty());
        file.update(|acc| acc.add_user(a("alice@example.test"), "h".into()))
            .unwrap();
        assert_eq!(directory.snapshot().users.len(), 1);
        std::fs::write(file.path(), "not json at all").unwrap();
        assert_eq!(directory.snapshot().users.len(), 1);
        std::fs::remove_file(file.path()).unwrap();
        assert!(directory.snapshot().users.is_empty());
    }
}
