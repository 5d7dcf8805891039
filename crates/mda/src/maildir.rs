//! Maildir storage: `<data_dir>/mail/<domain>/<user>/Maildir/{tmp,new,cur}`.
//!
//! Delivery follows the Maildir protocol (D. J. Bernstein, "Using maildir
//! format"): the message is written under `tmp/`, is complete and on disk
//! before it has a name in `new/`, then `new/` is fsynced. Every delivery
//! ([`MailStore::deliver_many`], for `Deliver` and `DeliverBatch` alike)
//! writes all the files of a call, makes them durable with one syncfs(2)
//! of the file system, and only then links each into `new/`; a Maildir on
//! another file system (a mount point, a symbolic link) has its file
//! fsynced on its own. Concurrent deliveries share one fsync of `new/` (group commit). A
//! reader therefore never sees a partial message, and once a delivery
//! returns the message survives a crash. A crash before the answer leaves
//! files in `tmp/` (removed by the sweep at start-up once they are 36
//! hours old) or already in `new/`; either way the MTA was never told, and
//! delivers the message again, so a crash can duplicate a message but
//! never lose or truncate one.
//!
//! The syncfs covers the whole file system that holds `<data_dir>`: on one
//! shared with heavy writers, a delivery also waits for their writeback,
//! so the mail store is best on a file system of its own (or
//! `store.batch_sync = "files"`: one fsync per file, one after the other).
//! Before Linux 5.17 syncfs can miss a failure, and the MDA falls back to
//! `"files"` by itself.
//!
//! Unique names are `<secs>.M<micros>P<pid>Q<counter>.<host>,S=<size>`; they
//! double as the message ids of the mailbox API. Every path here is built
//! from a validated [`Address`] and, for ids, from [`validate_id`], so no
//! input can reach outside the user's own Maildir.
//!
//! Everything in this module blocks; callers run it on the blocking pool.

use crate::address::Address;
use std::io::{Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::BatchSync;
use correo_runtime::durable::{FileSystem, sync_filesystem};

/// How the files of one delivery call reach the disk: the file system the
/// call syncs, opened before its first write (so that the sync sees every
/// writeback of the call that failed), and which Maildirs are on it. With
/// `store.batch_sync = "files"` it syncs no file system, and every file is
/// fsynced on its own.
struct Commit {
    batch_sync: BatchSync,
    fs: Option<FileSystem>,
    covered: std::collections::HashMap<PathBuf, bool>,
}

impl Commit {
    fn new(batch_sync: BatchSync) -> Commit {
        Commit {
            batch_sync,
            fs: None,
            covered: Default::default(),
        }
    }

    /// Opens the handle on the mail root's file system, before the
    /// call's first write.
    fn begin(&mut self, root: &Path) -> Result<(), MaildirError> {
        if self.batch_sync == BatchSync::Filesystem && self.fs.is_none() {
            self.fs = Some(FileSystem::of(root).map_err(io_err(root))?);
        }
        Ok(())
    }

    /// Whether the sync of the mail root covers `maildir` (a mount point
    /// or a symbolic link can put it on another file system); never when
    /// files are fsynced one by one.
    fn covers(&mut self, maildir: &Path) -> Result<bool, MaildirError> {
        if let Some(&covered) = self.covered.get(maildir) {
            return Ok(covered);
        }
        let tmp = maildir.join("tmp");
        let covered = match &self.fs {
            Some(fs) => fs.holds(&tmp).map_err(io_err(&tmp))?,
            None => false,
        };
        self.covered.insert(maildir.to_path_buf(), covered);
        Ok(covered)
    }
}

/// A message of a batch written under its `tmp/` name, not yet synced.
struct Staged {
    maildir: PathBuf,
    scratch: PathBuf,
    size: u64,
    /// The delivery prefix and the message's header, for its summary.
    header: Vec<u8>,
}

/// Process-wide, so two stores in one process never pick the same name.
static COUNTER: AtomicU64 = AtomicU64::new(0);
/// How much of a file is read to find its header for a summary.
const HEADER_READ_LIMIT: u64 = 64 * 1024;
/// The three Maildir subdirectories.
const SUBDIRS: [&str; 3] = ["tmp", "new", "cur"];

/// Errors from the Maildir store.
#[derive(Debug, thiserror::Error)]
pub enum MaildirError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid message id")]
    BadId,
}

impl MaildirError {
    /// Whether this is the disk being full (worth a distinct reply code).
    pub fn is_storage_full(&self) -> bool {
        matches!(self, MaildirError::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull)
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> MaildirError + '_ {
    move |source| MaildirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Accepts only ids that name a file directly inside a Maildir folder.
pub fn validate_id(id: &str) -> Result<(), MaildirError> {
    let ok = !id.is_empty()
        && id.len() <= 255
        && !id.starts_with('.')
        && !id.contains("..")
        && !id.contains('/')
        && !id.contains(':')
        && !id.bytes().any(|b| b.is_ascii_control());
    if ok { Ok(()) } else { Err(MaildirError::BadId) }
}

/// What the mailbox API shows of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub id: String,
    pub from: String,
    pub subject: String,
    pub date: String,
    pub size: u64,
    pub delivered_at: i64,
    pub seen: bool,
}

/// A message just written into `new/`.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub path: PathBuf,
    pub summary: Summary,
}

/// The tree of every user's Maildir.
#[derive(Debug, Clone)]
pub struct MailStore {
    root: PathBuf,
    host: String,
    /// Maildirs known to exist, so a delivery does not stat three
    /// directories first (forgotten if a delivery finds one gone).
    known: std::sync::Arc<parking_lot::Mutex<std::collections::HashSet<PathBuf>>>,
    batch_sync: BatchSync,
}

impl MailStore {
    /// A store under `<data_dir>/mail`, naming files with `hostname`.
    pub fn new(data_dir: &Path, hostname: &str) -> Self {
        MailStore {
            root: data_dir.join("mail"),
            host: maildir_host(hostname),
            known: Default::default(),
            batch_sync: BatchSync::default(),
        }
    }

    /// The same store, making batches durable the way `batch_sync` says
    /// (`store.batch_sync` in the configuration).
    pub fn with_batch_sync(mut self, batch_sync: BatchSync) -> Self {
        self.batch_sync = batch_sync;
        self
    }

    /// `<root>/<domain>/<local>/Maildir`.
    pub fn maildir(&self, user: &Address) -> PathBuf {
        self.root
            .join(user.domain())
            .join(user.local())
            .join("Maildir")
    }

    /// Creates the user's Maildir if needed, fsyncing every directory made so
    /// a crash cannot lose a mailbox that already acknowledged mail.
    fn ensure_maildir(&self, user: &Address) -> Result<PathBuf, MaildirError> {
        let maildir = self.maildir(user);
        if self.known.lock().contains(&maildir) {
            return Ok(maildir);
        }
        if SUBDIRS.iter().all(|d| maildir.join(d).is_dir()) {
            self.known.lock().insert(maildir.clone());
            return Ok(maildir);
        }
        let chain = [
            self.root.clone(),
            self.root.join(user.domain()),
            self.root.join(user.domain()).join(user.local()),
            maildir.clone(),
        ];
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true).mode(0o700);
        for sub in SUBDIRS {
            let dir = maildir.join(sub);
            builder.create(&dir).map_err(io_err(&dir))?;
        }
        for dir in chain.iter().rev() {
            sync_dir(dir)?;
        }
        if let Some(parent) = self.root.parent() {
            sync_dir(parent)?;
        }
        self.known.lock().insert(maildir.clone());
        Ok(maildir)
    }

    /// Delivers `message` to `user`'s Maildir, prefixed with `Return-Path`
    /// (the envelope sender) and `Delivered-To` (`rcpt`, the final address).
    pub fn deliver(
        &self,
        user: &Address,
        sender: &str,
        rcpt: &Address,
        message: &[u8],
    ) -> Result<Delivered, MaildirError> {
        let written = self.write_batch([(user, sender, rcpt, message)]);
        sync_new_dirs(written)
            .pop()
            .expect("one result per message")
    }

    /// [`MailStore::deliver`] for several messages (user, sender, message;
    /// `Delivered-To` is the user), as one batch commit: every file is
    /// written under its `tmp/` name, one syncfs(2) makes them all durable,
    /// then each is linked into `new/` and each Maildir's `new/` is fsynced
    /// once for all of its messages. A name in `new/` still never points at
    /// octets that are not on disk; the batch pays one syncfs, one fsync of
    /// the mail root and one of each `new/`, instead of one fsync per file.
    /// With `store.batch_sync = "files"` each file is fsynced instead, one
    /// after the other. One result per item, in order; a message counts as
    /// delivered only once its directory fsync succeeded.
    pub fn deliver_many<M: AsRef<[u8]>>(
        &self,
        items: &[(Address, String, M)],
    ) -> Vec<Result<Delivered, MaildirError>> {
        let items = items
            .iter()
            .map(|(user, sender, message)| (user, sender.as_str(), user, message.as_ref()));
        sync_new_dirs(self.write_batch(items))
    }

    /// The files of one delivery call (user, sender, `Delivered-To`,
    /// message), durable and in `new/` (staged, synced, linked), before
    /// the fsync of `new/`.
    fn write_batch<'a>(
        &self,
        items: impl IntoIterator<Item = (&'a Address, &'a str, &'a Address, &'a [u8])>,
    ) -> Vec<Result<Delivered, MaildirError>> {
        let mut commit = Commit::new(self.batch_sync);
        let mut staged: Vec<Result<Staged, MaildirError>> = items
            .into_iter()
            .map(|(user, sender, rcpt, message)| {
                guard_panic(self.maildir(user), || {
                    self.stage(&mut commit, user, sender, rcpt, message)
                })
            })
            .collect();
        if let Some(fs) = &commit.fs
            && let Err(e) = sync_filesystem(fs)
        {
            for result in staged.iter_mut() {
                if let Ok(staged) = result {
                    let _ = std::fs::remove_file(&staged.scratch);
                    *result = Err(MaildirError::Io {
                        path: self.root.clone(),
                        source: std::io::Error::new(e.kind(), e.to_string()),
                    });
                }
            }
        }
        staged
            .into_iter()
            .map(|staged| {
                staged.and_then(|staged| {
                    let (maildir, scratch) = (staged.maildir.clone(), staged.scratch.clone());
                    guard_panic(maildir, || self.publish(staged)).inspect_err(|_| {
                        // Published or not, a failed message leaves no scratch file.
                        let _ = std::fs::remove_file(&scratch);
                    })
                })
            })
            .collect()
    }

    /// The `Return-Path` and `Delivered-To` lines put before a message.
    fn delivery_prefix(sender: &str, rcpt: &Address) -> String {
        format!("Return-Path: <{sender}>\r\nDelivered-To: {rcpt}\r\n")
    }

    /// A fresh unique name for a file of `size` octets, and its time.
    fn unique_name(&self, size: u64) -> (String, std::time::Duration) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let counter = COUNTER.fetch_add(1, Ordering::Relaxed);
        let id = format!(
            "{}.M{}P{}Q{}.{},S={}",
            now.as_secs(),
            now.subsec_micros(),
            process_id(),
            counter,
            self.host,
            size
        );
        (id, now)
    }

    /// The first step of a delivery for one message: its file, complete
    /// under `tmp/`, fsynced only if the call's sync does not cover it.
    /// Opens the call's file system handle before its first write.
    fn stage(
        &self,
        commit: &mut Commit,
        user: &Address,
        sender: &str,
        rcpt: &Address,
        message: &[u8],
    ) -> Result<Staged, MaildirError> {
        // The mail root exists only once a first Maildir was made (its
        // directories are fsynced on their own), so the handle comes second.
        let mut maildir = self.ensure_maildir(user)?;
        commit.begin(&self.root)?;
        let prefix = Self::delivery_prefix(sender, rcpt);
        let size = (prefix.len() + message.len()) as u64;
        let write = |file: &mut std::fs::File| write_prefixed(file, prefix.as_bytes(), message);
        let mut made_again = false;
        let scratch = loop {
            let (id, _) = self.unique_name(size);
            let scratch = maildir.join("tmp").join(&id);
            match correo_runtime::durable::stage(&scratch, 0o600, write) {
                Ok(()) => break scratch,
                // A leftover from another process with a recycled pid.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                // The Maildir was removed since we last saw it: make it again.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !made_again => {
                    made_again = true;
                    self.known.lock().remove(&maildir);
                    maildir = self.ensure_maildir(user)?;
                }
                Err(e) => return Err(io_err(&scratch)(e)),
            }
        };
        // Not covered by the call's sync (another file system, or files
        // fsynced one by one): the file gets its own fsync.
        let covered = commit.covers(&maildir).inspect_err(|_| {
            let _ = std::fs::remove_file(&scratch);
        })?;
        if !covered && let Err(e) = std::fs::File::open(&scratch).and_then(|f| f.sync_all()) {
            let _ = std::fs::remove_file(&scratch);
            return Err(io_err(&scratch)(e));
        }
        let mut header = prefix.into_bytes();
        header.extend_from_slice(header_part(message));
        Ok(Staged {
            maildir,
            scratch,
            size,
            header,
        })
    }

    /// The last step of a delivery for one message: links
    /// its synced file into `new/` under a fresh name.
    fn publish(&self, staged: Staged) -> Result<Delivered, MaildirError> {
        // Parsed before the link, so that nothing after it can fail.
        let mut summary = summarize(&staged.header, String::new(), staged.size, 0, false);
        loop {
            let (id, now) = self.unique_name(staged.size);
            let new = staged.maildir.join("new").join(&id);
            match correo_runtime::durable::publish(&staged.scratch, &new) {
                Ok(()) => {
                    summary.id = id;
                    summary.delivered_at = now.as_secs() as i64;
                    return Ok(Delivered { summary, path: new });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    let _ = std::fs::remove_file(&staged.scratch);
                    return Err(io_err(&new)(e));
                }
            }
        }
    }

    /// Every message in `new/` and `cur/`, oldest first. A user who never
    /// received mail has an empty mailbox, not an error.
    pub fn list(&self, user: &Address) -> Result<Vec<Summary>, MaildirError> {
        let maildir = self.maildir(user);
        let mut out = Vec::new();
        for folder in ["new", "cur"] {
            let dir = maildir.join(folder);
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&dir)(e)),
            };
            for entry in entries {
                let entry = entry.map_err(io_err(&dir))?;
                let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                let (id, flags) = split_flags(&name);
                if validate_id(id).is_err() {
                    continue;
                }
                let path = entry.path();
                let meta = match entry.metadata() {
                    Ok(m) if m.is_file() => m,
                    // Deleted meanwhile, or not a message: skip it.
                    _ => continue,
                };
                let delivered_at = id
                    .split('.')
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| mtime_secs(&meta));
                let header = match read_header(&path) {
                    Ok(h) => h,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err(&path)(e)),
                };
                out.push(summarize(
                    &header,
                    id.to_string(),
                    meta.len(),
                    delivered_at,
                    flags.contains('S'),
                ));
            }
        }
        // Within one second, order by the microseconds field numerically:
        // as text, `M100389` sorts before `M95876`.
        out.sort_by(|a, b| {
            (a.delivered_at, micros(&a.id), &a.id).cmp(&(b.delivered_at, micros(&b.id), &b.id))
        });
        Ok(out)
    }

    /// Removes files older than `max_age` from every Maildir's `tmp/`: the
    /// leftovers of deliveries interrupted by a crash (the Maildir spec
    /// suggests 36 hours). Returns how many were removed; unreadable parts of
    /// the tree are skipped, since this is housekeeping, not delivery.
    pub fn sweep_tmp(&self, max_age: std::time::Duration) -> usize {
        let Some(cutoff) = SystemTime::now().checked_sub(max_age) else {
            return 0;
        };
        let subdirs = |dir: &Path| -> Vec<PathBuf> {
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        };
        let mut removed = 0;
        for domain in subdirs(&self.root) {
            for user in subdirs(&domain) {
                let tmp = user.join("Maildir").join("tmp");
                for entry in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
                    let stale = entry
                        .metadata()
                        .ok()
                        .filter(|m| m.is_file())
                        .and_then(|m| m.modified().ok())
                        .is_some_and(|t| t < cutoff);
                    if stale && std::fs::remove_file(entry.path()).is_ok() {
                        removed += 1;
                    }
                }
            }
        }
        removed
    }

    /// The file holding message `id` of `user`, if there is one.
    pub fn find(&self, user: &Address, id: &str) -> Result<Option<PathBuf>, MaildirError> {
        validate_id(id)?;
        let maildir = self.maildir(user);
        let new = maildir.join("new").join(id);
        if new.is_file() {
            return Ok(Some(new));
        }
        let cur = maildir.join("cur");
        let entries = match std::fs::read_dir(&cur) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&cur)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err(&cur))?;
            if entry
                .file_name()
                .to_str()
                .is_some_and(|n| split_flags(n).0 == id)
            {
                return Ok(Some(entry.path()));
            }
        }
        Ok(None)
    }

    /// Deletes message `id`; `false` if it does not exist. The directory is
    /// fsynced, so a `true` survives a crash.
    pub fn delete(&self, user: &Address, id: &str) -> Result<bool, MaildirError> {
        let Some(path) = self.find(user, id)? else {
            return Ok(false);
        };
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err(&path)(e)),
        }
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
        Ok(true)
    }
}

/// The host part of a unique name, with the characters Maildir readers
/// treat specially (`/`, `:`, and `,` which starts `,S=`) escaped as octal.
fn maildir_host(hostname: &str) -> String {
    let mut out = String::new();
    for c in hostname.chars() {
        match c {
            '/' => out.push_str("\\057"),
            ':' => out.push_str("\\072"),
            ',' => out.push_str("\\054"),
            c if c.is_ascii_graphic() => out.push(c),
            _ => out.push('_'),
        }
    }
    if out.is_empty() {
        "localhost".into()
    } else {
        out
    }
}

/// Splits `unique:2,FLAGS` into the id and the flags.
fn split_flags(name: &str) -> (&str, &str) {
    match name.split_once(":2,") {
        Some((id, flags)) => (id, flags),
        None => (name, ""),
    }
}

fn mtime_secs(meta: &std::fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs() as i64)
}

/// Fsyncs the `new/` of every delivered file once; a file counts as
/// delivered only once its directory fsync succeeded.
fn sync_new_dirs(
    mut written: Vec<Result<Delivered, MaildirError>>,
) -> Vec<Result<Delivered, MaildirError>> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for delivered in written.iter().flatten() {
        let dir = new_dir_of(&delivered.path);
        if !dirs.iter().any(|d| d == dir) {
            dirs.push(dir.to_path_buf());
        }
    }
    for dir in dirs {
        if let Err(e) = sync_new_dir(&dir) {
            // The kind is kept: a full disk must stay a full disk.
            let kind = match &e {
                MaildirError::Io { source, .. } => source.kind(),
                _ => std::io::ErrorKind::Other,
            };
            for result in written.iter_mut() {
                if matches!(result, Ok(d) if new_dir_of(&d.path) == dir) {
                    *result = Err(MaildirError::Io {
                        path: dir.clone(),
                        source: std::io::Error::new(kind, e.to_string()),
                    });
                }
            }
        }
    }
    written
}

/// Runs one message's write so that a bug it trips fails it alone, not
/// its batch.
fn guard_panic<T>(
    maildir: PathBuf,
    write: impl FnOnce() -> Result<T, MaildirError>,
) -> Result<T, MaildirError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(write)).unwrap_or_else(|_| {
        Err(MaildirError::Io {
            path: maildir,
            source: std::io::Error::other("delivery panicked"),
        })
    })
}

/// Writes `prefix` then `message` into `file`: in one write(2) for a
/// message up to 64 KiB (copying it is cheaper than a second system call),
/// in two for a larger one.
fn write_prefixed(file: &mut std::fs::File, prefix: &[u8], message: &[u8]) -> std::io::Result<()> {
    const JOIN_MAX: usize = 64 * 1024;
    if message.len() <= JOIN_MAX {
        let mut joined = Vec::with_capacity(prefix.len() + message.len());
        joined.extend_from_slice(prefix);
        joined.extend_from_slice(message);
        file.write_all(&joined)
    } else {
        file.write_all(prefix)?;
        file.write_all(message)
    }
}

/// This process's id, asked of the kernel once (it goes into every name).
fn process_id() -> u32 {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *PID.get_or_init(std::process::id)
}

/// The `new/` directory a delivered file is in.
fn new_dir_of(file: &Path) -> &Path {
    file.parent().expect("delivered files are inside new/")
}

/// Fsyncs a Maildir's `new/` through the process's group-commit syncer, so
/// that concurrent deliveries share one directory fsync; directly if the
/// syncer thread could not be started.
fn sync_new_dir(dir: &Path) -> Result<(), MaildirError> {
    static SYNCER: std::sync::OnceLock<Option<correo_runtime::durable::DirSyncer>> =
        std::sync::OnceLock::new();
    let syncer = SYNCER.get_or_init(|| {
        correo_runtime::durable::DirSyncer::start("maildir-dirsync")
            .inspect_err(
                |e| tracing::warn!(error = %e, "no group-commit syncer; fsyncing new/ per message"),
            )
            .ok()
    });
    match syncer {
        Some(syncer) => syncer.sync_blocking(dir).map_err(io_err(dir)),
        None => sync_dir(dir),
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), MaildirError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Reads the start of a file, up to the end of its header.
fn read_header(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::fs::File::open(path)?
        .take(HEADER_READ_LIMIT)
        .read_to_end(&mut buf)?;
    let end = header_part(&buf).len();
    buf.truncate(end);
    Ok(buf)
}

/// The header of a message, including the blank line that ends it (or all of
/// it when there is no body).
fn header_part(message: &[u8]) -> &[u8] {
    let limit = message.len().min(HEADER_READ_LIMIT as usize);
    let head = &message[..limit];
    // The header ends with the first empty line (CRLF, or a bare LF). Line
    // by line, so a header is found without reading the body after it.
    let mut start = 0;
    while let Some(lf) = memchr::memchr(b'\n', &head[start..]) {
        let end = start + lf + 1;
        if matches!(&head[start..end], b"\n" | b"\r\n") {
            return &head[..end];
        }
        start = end;
    }
    head
}

/// The fields a [`Summary`] shows (From, Subject, Date), each with its
/// folded continuation lines, out of a whole header. Parsing only these
/// keeps the cost of a summary independent of the trace fields above them:
/// mail_parser's structured parse of every `Received:` was 4.5% of the
/// MDA's CPU per delivery (docs/BENCHMARKS.md, run 7).
fn summary_fields(header: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let mut keep = false;
    for line in header.split_inclusive(|&b| b == b'\n') {
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        if !continuation {
            let name = line
                .iter()
                .position(|&b| b == b':')
                .map(|colon| line[..colon].trim_ascii_end());
            keep = name.is_some_and(|name| {
                [&b"from"[..], b"subject", b"date"]
                    .iter()
                    .any(|wanted| name.eq_ignore_ascii_case(wanted))
            });
        }
        if keep {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The `M<micros>` part of a name this MDA generated (`SECS.MuuuPpidQn.host`);
/// 0 for names from elsewhere.
fn micros(id: &str) -> u64 {
    let Some(rest) = id.split('.').nth(1).and_then(|u| u.strip_prefix('M')) else {
        return 0;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    rest[..digits].parse().unwrap_or(0)
}

/// Builds a summary from a message header.
pub fn summarize(header: &[u8], id: String, size: u64, delivered_at: i64, seen: bool) -> Summary {
    let fields = summary_fields(header);
    let parsed = mail_parser::MessageParser::new().parse_headers(&fields);
    let (from, subject, date) = match &parsed {
        Some(msg) => {
            let from = msg
                .from()
                .and_then(|a| a.first())
                .map(|addr| match (addr.name(), addr.address()) {
                    (Some(name), Some(address)) => format!("{name} <{address}>"),
                    (None, Some(address)) => address.to_string(),
                    (Some(name), None) => name.to_string(),
                    (None, None) => String::new(),
                })
                .unwrap_or_default();
            let subject = msg.subject().unwrap_or_default().to_string();
            // As written by the sender: the raw value, unfolded and trimmed.
            let date = msg
                .header_raw("Date")
                .map(|d| d.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap_or_default();
            (from, subject, date)
        }
        None => Default::default(),
    };
    Summary {
        id,
        from,
        subject,
        date,
        size,
        delivered_at,
        seen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"From: Bob Example <bob@example.test>\r\nTo: alice@example.test\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\nDate: Tue, 1 Dec 2026 08:00:00\r\n +0000\r\n\r\nHello\r\n\r\nAlice\r\n";

    fn alice() -> Address {
        Address::parse("alice@example.test").unwrap()
    }

    #[test]
    fn delivers_the_maildir_way() {
        let dir = tempfile::tempdir().unwrap();
        let store = MailStore::new(dir.path(), "mda.example.test");
        let d = store
            .deliver(&alice(), "bob@example.test", &alice(), MSG)
            .unwrap();
        let maildir = dir.path().join("mail/example.test/alice/Maildir");
        assert_eq!(d.path.parent().unwrap(), maildir.join("new"));
        for sub in SUBDIRS {
            assert!(maildir.join(sub).is_dir());
        }
        assert_eq!(std::fs::read_dir(maildir.join("tmp")).unwrap().count(), 0);
        let body = std::fs::read(&d.path).unwrap();
        assert!(body.starts_with(
            b"Return-Path: <bob@example.test>\r\nDelivered-To: alice@example.test\r\nFrom: Bob"
        ));
        assert!(body.ends_with(MSG));

        let id = &d.summary.id;
        let pattern = format!("P{}Q", std::process::id());
        assert!(
            id.contains(".M") && id.contains(&pattern) && id.contains(".mda.example.test,S="),
            "{id}"
        );
        assert!(id.ends_with(&format!(",S={}", body.len())), "{id}");
        assert_eq!(d.summary.size, body.len() as u64);
        assert_eq!(d.summary.from, "Bob Example <bob@example.test>");
        assert_eq!(d.summary.subject, "café");
        assert_eq!(d.summary.date, "Tue, 1 Dec 2026 08:00:00 +0000");

        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&d.path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_maildir_on_another_file_system_gets_its_own_fsync() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        // /dev/shm is a tmpfs on Linux: another device than the temp dir.
        let Ok(elsewhere) = tempfile::tempdir_in("/dev/shm") else {
            eprintln!("no /dev/shm: nothing to test here");
            return;
        };
        let dev = |p: &Path| std::fs::metadata(p).unwrap().dev();
        if dev(dir.path()) == dev(elsewhere.path()) {
            eprintln!("/dev/shm is on the same file system: nothing to test here");
            return;
        }
        std::fs::create_dir_all(dir.path().join("mail")).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), dir.path().join("mail/other.test")).unwrap();
        let bob = Address::parse("bob@other.test").unwrap();
        let store = MailStore::new(dir.path(), "mda.example.test");
        let mut commit = Commit::new(BatchSync::Filesystem);
        commit.begin(&store.root).unwrap();
        assert!(
            commit
                .covers(&store.ensure_maildir(&alice()).unwrap())
                .unwrap()
        );
        assert!(!commit.covers(&store.ensure_maildir(&bob).unwrap()).unwrap());
        let items = [
            (alice(), String::new(), &b"Subject: here\r\n\r\n1\r\n"[..]),
            (
                bob.clone(),
                String::new(),
                &b"Subject: there\r\n\r\n2\r\n"[..],
            ),
        ];
        let results = store.deliver_many(&items);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(store.list(&bob).unwrap()[0].subject, "there");
        let bob_new = elsewhere.path().join("bob/Maildir/new");
        assert_eq!(std::fs::read_dir(bob_new).unwrap().count(), 1);
    }

    #[test]
    fn the_header_ends_at_the_first_empty_line() {
        assert_eq!(
            header_part(b"A: 1\r\nB: 2\r\n\r\nbody\n\nmore"),
            b"A: 1\r\nB: 2\r\n\r\n"
        );
        assert_eq!(
            header_part(b"A: 1\nB: 2\n\nbody\r\n\r\n"),
            b"A: 1\nB: 2\n\n"
        );
        assert_eq!(header_part(b"\r\nbody"), b"\r\n");
        assert_eq!(header_part(b"A: 1\r\nno end"), b"A: 1\r\nno end");
        let long = [b"X: y\r\n".repeat(20_000), b"\r\nbody".to_vec()].concat();
        assert_eq!(header_part(&long).len(), HEADER_READ_LIMIT as usize);
    }

    #[test]
    fn a_summary_reads_only_its_fields_whatever_comes_around_them() {
        let header = b"Received: from a.test by b.test; Tue, 1 Dec 2026 07:59:00 +0000\r\n\
            Received: from c.test\r\n\tby d.test; Tue, 1 Dec 2026 07:58:00 +0000\r\n\
            SUBJECT : folded\r\n  subject\r\n\
            X-From: not@this.test\r\n\
            from: Carol <carol@example.test>\r\n\
            Date: Tue, 1 Dec 2026 08:00:00 +0000\r\n\
            To: alice@example.test\r\n\r\n";
        let fields = String::from_utf8(summary_fields(header)).unwrap();
        assert_eq!(
            fields,
            "SUBJECT : folded\r\n  subject\r\nfrom: Carol <carol@example.test>\r\nDate: Tue, 1 Dec 2026 08:00:00 +0000\r\n\r\n"
        );
        let s = summarize(header, "x".into(), 1, 0, false);
        assert_eq!(s.from, "Carol <carol@example.test>");
        assert_eq!(s.subject, "folded subject");
        assert_eq!(s.date, "Tue, 1 Dec 2026 08:00:00 +0000");
        let bare = summarize(b"Received: from a.test\n\nbody", "y".into(), 1, 0, false);
        assert_eq!((bare.from.as_str(), bare.subject.as_str()), ("", ""));
    }

    #[test]
    fn deliver_many_writes_every_message_and_keeps_their_order() {
        for mode in [BatchSync::Filesystem, BatchSync::Files] {
            let dir = tempfile::tempdir().unwrap();
            let store = MailStore::new(dir.path(), "mda.example.test").with_batch_sync(mode);
            let bob = Address::parse("bob@example.test").unwrap();
            let items = [
                (
                    alice(),
                    "x@remote.test".to_string(),
                    &b"Subject: 1\r\n\r\none\r\n"[..],
                ),
                (
                    bob.clone(),
                    String::new(),
                    &b"Subject: 2\r\n\r\ntwo\r\n"[..],
                ),
                (
                    alice(),
                    "y@remote.test".to_string(),
                    &b"Subject: 3\r\n\r\nthree\r\n"[..],
                ),
            ];
            let results = store.deliver_many(&items);
            assert_eq!(results.len(), 3);
            for ((user, sender, message), result) in items.iter().zip(&results) {
                let delivered = result.as_ref().unwrap();
                assert_eq!(
                    delivered.path.parent().unwrap(),
                    store.maildir(user).join("new")
                );
                let body = std::fs::read(&delivered.path).unwrap();
                let head = format!("Return-Path: <{sender}>\r\nDelivered-To: {user}\r\n");
                assert!(body.starts_with(head.as_bytes()) && body.ends_with(message));
            }
            assert_eq!(store.list(&alice()).unwrap().len(), 2);
            assert_eq!(store.list(&bob).unwrap().len(), 1);
            assert!(store.deliver_many::<&[u8]>(&[]).is_empty());
        }
    }

    #[test]
    fn a_batch_commit_leaves_nothing_in_tmp_and_a_bad_mailbox_fails_alone() {
        for mode in [BatchSync::Filesystem, BatchSync::Files] {
            let dir = tempfile::tempdir().unwrap();
            let store = MailStore::new(dir.path(), "mda.example.test").with_batch_sync(mode);
            // A file where carol's domain directory should be: her Maildir
            // cannot be made, whoever runs the test.
            let broken = Address::parse("carol@broken.test").unwrap();
            std::fs::create_dir_all(dir.path().join("mail")).unwrap();
            std::fs::write(dir.path().join("mail/broken.test"), b"not a directory").unwrap();
            let items = [
                (alice(), String::new(), &b"Subject: 1\r\n\r\none\r\n"[..]),
                (broken, String::new(), &b"Subject: 2\r\n\r\ntwo\r\n"[..]),
                (alice(), String::new(), &b"Subject: 3\r\n\r\nthree\r\n"[..]),
            ];
            let results = store.deliver_many(&items);
            assert!(results[0].is_ok() && results[2].is_ok());
            assert!(matches!(results[1], Err(MaildirError::Io { .. })));
            let maildir = store.maildir(&alice());
            assert_eq!(std::fs::read_dir(maildir.join("tmp")).unwrap().count(), 0);
            assert_eq!(std::fs::read_dir(maildir.join("new")).unwrap().count(), 2);
            let subjects: Vec<String> = store
                .list(&alice())
                .unwrap()
                .into_iter()
                .map(|s| s.subject)
                .collect();
            assert_eq!(subjects, ["1", "3"]);
            // A Maildir removed behind the store's back is made again.
            std::fs::remove_dir_all(&maildir).unwrap();
            let again = store.deliver_many(&items[..1]);
            assert!(again[0].is_ok(), "{:?}", again[0]);
            assert_eq!(std::fs::read_dir(maildir.join("new")).unwrap().count(), 1);
        }
    }

    #[test]
    fn null_sender_and_unique_names() {
        let dir = tempfile::tempdir().unwrap();
        let store = MailStore::new(dir.path(), "h/o:s,t");
        let a = store
            .deliver(&alice(), "", &alice(), b"Subject: x\r\n\r\n")
            .unwrap();
        let b = store
            .deliver(&alice(), "", &alice(), b"Subject: x\r\n\r\n")
            .unwrap();
        assert_ne!(a.summary.id, b.summary.id);
        assert!(
            a.summary.id.contains(".h\\057o\\072s\\054t,S="),
            "{}",
            a.summary.id
        );
        validate_id(&a.summary.id).unwrap();
        assert!(
            std::fs::read(&a.path)
                .unwrap()
                .starts_with(b"Return-Path: <>\r\n")
        );
    }

    /// Found by the issue-4 test runs: `list_find_delete` failed whenever
    /// the two deliveries straddled a change in the number of digits of
    /// the microseconds (`M95876` then `M100389`), because names were
    /// compared as text.
    #[test]
    fn regression_list_orders_by_microseconds_not_text() {
        assert_eq!(micros("1796116397.M95876P28950Q1.h,S=211"), 95876);
        assert_eq!(micros("1796116397.M100389P28950Q2.h,S=75"), 100389);
        assert_eq!(micros("1796116397.other.h"), 0);
        let dir = tempfile::tempdir().unwrap();
        let store = MailStore::new(dir.path(), "h");
        let new = store.maildir(&alice()).join("new");
        store.deliver(&alice(), "b@x.test", &alice(), MSG).unwrap();
        for entry in std::fs::read_dir(&new).unwrap() {
            std::fs::remove_file(entry.unwrap().path()).unwrap();
        }
        for name in [
            "1796116397.M100389P1Q2.h,S=5",
            "1796116397.M95876P1Q1.h,S=5",
            "1796116396.M999999P1Q0.h,S=5",
        ] {
            std::fs::write(new.join(name), "Subject: x\r\n\r\n").unwrap();
        }
        let ids: Vec<String> = store
            .list(&alice())
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(
            ids,
            [
                "1796116396.M999999P1Q0.h,S=5",
                "1796116397.M95876P1Q1.h,S=5",
                "1796116397.M100389P1Q2.h,S=5"
            ]
        );
    }

    #[test]
    fn list_find_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = MailStore::new(dir.path(), "h");
        assert!(store.list(&alice()).unwrap().is_empty());
        let first = store.deliver(&alice(), "b@x.test", &alice(), MSG).unwrap();
        let second = store
            .deliver(&alice(), "b@x.test", &alice(), b"Subject: two\r\n\r\n")
            .unwrap();
        // A reader marked the first one seen and moved it to cur/.
        let cur = store
            .maildir(&alice())
            .join("cur")
            .join(format!("{}:2,S", first.summary.id));
        std::fs::rename(&first.path, &cur).unwrap();

        let list = store.list(&alice()).unwrap();
        assert_eq!(list.len(), 2);
        let ids: Vec<_> = list.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, [first.summary.id.as_str(), second.summary.id.as_str()]);
        assert!(list[0].seen && !list[1].seen);
        assert_eq!(list[1].subject, "two");

        assert_eq!(store.find(&alice(), &first.summary.id).unwrap(), Some(cur));
        assert!(store.delete(&alice(), &first.summary.id).unwrap());
        assert!(!store.delete(&alice(), &first.summary.id).unwrap());
        assert_eq!(store.list(&alice()).unwrap().len(), 1);
    }

    #[test]
    fn sweeps_only_stale_tmp_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = MailStore::new(dir.path(), "h");
        let delivered = store.deliver(&alice(), "", &alice(), MSG).unwrap();
        let tmp = store.maildir(&alice()).join("tmp");
        let (old, fresh) = (tmp.join("old"), tmp.join("fresh"));
        std::fs::write(&old, "x").unwrap();
        std::fs::write(&fresh, "x").unwrap();
        let long_ago = SystemTime::now() - std::time::Duration::from_secs(40 * 3600);
        std::fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        assert_eq!(
            store.sweep_tmp(std::time::Duration::from_secs(36 * 3600)),
            1
        );
        assert!(!old.exists() && fresh.exists() && delivered.path.exists());
    }

    #[test]
    fn ids_cannot_escape_the_maildir() {
        let dir = tempfile::tempdir().unwrap();
        let store = MailStore::new(dir.path(), "h");
        for bad in [
            "",
            "..",
            "../x",
            "../../cur/x",
            "a/b",
            ".hidden",
            "x:2,S",
            "a\0b",
            "a\nb",
        ] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
            assert!(
                matches!(store.find(&alice(), bad), Err(MaildirError::BadId)),
                "{bad:?}"
            );
            assert!(store.delete(&alice(), bad).is_err(), "{bad:?}");
        }
    }
}
