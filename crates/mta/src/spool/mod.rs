//! The spool: the truth of the queue, as append-only segment files.
//!
//! ```text
//! <data_dir>/spool/seg/<seq>.seg       records: messages, and removals of them
//! <data_dir>/spool/active/<id>.done    finished recipients, and the delay-warning mark (one JSON line each)
//! ```
//!
//! A message is one record (`spool/record.rs`) appended to the current segment:
//! the spool header (a magic line and one JSON envelope line) followed by
//! the message octets exactly as they will be sent, under a CRC-32. All
//! appends go through one writer thread (`spool/segments.rs`), which takes every
//! request that queued up while it was busy, appends them, calls
//! `fdatasync` once, and only then answers. So when [`Spool::store`]
//! returns Ok the message survives a crash and may be acknowledged, and
//! concurrent sessions share one flush (group commit), as the issue allows:
//! every 250 still follows an fsync that started after its message was
//! written.
//!
//! Why segments and not a file per message: on the benchmark machine's
//! ext4 every new file allocates an inode while holding the directory lock,
//! and with thousands of files deleted per second the allocator walks the
//! recently deleted ones first. That was 40% of the MTA's CPU
//! (docs/BENCHMARKS.md, "Run 4"). A segment is created once per
//! [`SEGMENT_SIZE`] of mail.
//!
//! Removing a message appends a removal record to the message's own
//! segment, so each segment can be read and deleted on its own; a segment
//! whose messages are all removed is deleted (and the directory fsynced).
//! Removals are not flushed one by one, just as an unlink was not: a crash
//! right after a delivery may deliver that message again, never lose it.
//! On start-up every segment is read back; a torn last record (a crash
//! during an append, never acknowledged) is cut off. A damaged record
//! between good ones is skipped and reported, the scan resyncs on the next
//! record whose checksum holds, and that segment is never deleted
//! automatically, so an operator can look at it.
//!
//! A spool of the earlier layout (one file per message in `active/`) is
//! imported into segments on start-up, each file deleted once its record
//! is flushed.

mod record;
mod segments;

use crate::queue_id::QueueId;
use segments::Segments;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// First line of every spool header; the version lets a later format coexist.
const MAGIC: &[u8] = b"CORREO-SPOOL 1\n";

/// A new segment is started when the current one would grow past this.
pub const SEGMENT_SIZE: u64 = 32 << 20;

/// How much of a record is read to find its envelope line before reading
/// all of it (a header with thousands of recipients can be longer).
const HEAD_WINDOW: u64 = 64 << 10;

/// Files of the earlier layout imported per flush.
const IMPORT_BATCH: usize = 1024;

/// Errors of the spool; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: corrupt spool record: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("queue id {0} is not in the spool")]
    Missing(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The envelope line of a spool file: everything needed to rebuild the
/// index without it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolEnvelope {
    pub queue_id: String,
    /// Reverse path; empty for `<>`.
    pub sender: String,
    pub recipients: Vec<String>,
    pub journey_id: String,
    /// Seconds since the Unix epoch when the message was accepted.
    pub received_at: i64,
    /// Who submitted it (gRPC Submit), for logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authenticated_user: Option<String>,
}

/// A finished recipient, as recorded in `<id>.done`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoneRecord {
    pub recipient: String,
    /// "delivered" or "failed".
    pub state: String,
    pub reply: String,
}

/// A spool file read back.
#[derive(Debug, Clone)]
pub struct SpooledMessage {
    pub envelope: SpoolEnvelope,
    pub message: Vec<u8>,
}

/// What [`Spool::inspect`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// Queued messages, sorted.
    pub ids: Vec<QueueId>,
    /// Octets after the last complete record of each segment: an append
    /// in progress, or one a crash tore (cut off at the next start).
    pub torn_bytes: u64,
}

/// The spool of one node.
pub struct Spool {
    segments: Segments,
    /// Where `.done` files live (and, in the earlier layout, messages).
    active: PathBuf,
    /// Messages that may have a `.done` file: found at open, or appended
    /// to since. Most messages never get one (a single recipient delivered
    /// at the first attempt), and [`Spool::remove`] unlinks only these
    /// instead of trying an unlink per message.
    with_done: parking_lot::Mutex<std::collections::HashSet<QueueId>>,
}

impl Spool {
    /// Opens (creating) `<data_dir>/spool`: reads every segment back and
    /// imports messages of the earlier one-file-per-message layout.
    pub fn open(data_dir: &Path) -> Result<Spool, SpoolError> {
        Spool::open_with(data_dir, SEGMENT_SIZE)
    }

    /// [`Spool::open`] with another segment size (tests use tiny ones).
    pub fn open_with(data_dir: &Path, segment_size: u64) -> Result<Spool, SpoolError> {
        let root = data_dir.join("spool");
        let seg_dir = root.join("seg");
        let active = root.join("active");
        std::fs::create_dir_all(&active).map_err(io_err(&active))?;
        let segments =
            Segments::open(&seg_dir, segment_size, message_id).map_err(io_err(&seg_dir))?;
        let spool = Spool {
            segments,
            active,
            with_done: Default::default(),
        };
        spool.import_file_layout(&root)?;
        Ok(spool)
    }

    /// The spool under `data_dir`, read without changing anything: safe
    /// while the node runs (a record being appended is not counted yet),
    /// for tests and inspection.
    pub fn inspect(data_dir: &Path) -> Result<Inspection, SpoolError> {
        let seg_dir = data_dir.join("spool").join("seg");
        let (ids, torn_bytes) =
            segments::inspect(&seg_dir, message_id).map_err(io_err(&seg_dir))?;
        Ok(Inspection { ids, torn_bytes })
    }

    /// Moves messages of the one-file-per-message layout (`active/<id>`,
    /// whose content is exactly a record body) into segments, and notes
    /// which messages have a `.done` file.
    fn import_file_layout(&self, root: &Path) -> Result<(), SpoolError> {
        let tmp = root.join("tmp");
        if tmp.is_dir() {
            // Never acknowledged: the old layout wrote there first.
            std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        let mut imported = 0;
        let mut batch = Vec::new();
        let mut paths = Vec::new();
        let entries = std::fs::read_dir(&self.active).map_err(io_err(&self.active))?;
        for entry in entries {
            let entry = entry.map_err(io_err(&self.active))?;
            let name = entry.file_name();
            let name = name.to_str().unwrap_or_default();
            if let Some(id) = name.strip_suffix(".done").and_then(QueueId::parse) {
                self.with_done.lock().insert(id);
                continue;
            }
            let Some(id) = QueueId::parse(name) else {
                continue;
            };
            let path = entry.path();
            if !self.segments.contains(&id) {
                let content = match std::fs::read(&path) {
                    Ok(content) => content,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err(&path)(e)),
                };
                // A file that is not a whole spool file of its own id stays
                // where it is, for an operator; it was never queued as such.
                match parse_header(&path, &content) {
                    Ok((envelope, _)) if envelope.queue_id == id.as_str() => {
                        batch.push((id, content))
                    }
                    Ok(_) => {
                        tracing::error!(path = %path.display(), "old spool file names another queue id; left in place");
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "unreadable old spool file left in place");
                        continue;
                    }
                }
            }
            paths.push(path);
            if batch.len() >= IMPORT_BATCH {
                imported += self.import_batch(&mut batch, &mut paths)?;
            }
        }
        imported += self.import_batch(&mut batch, &mut paths)?;
        if imported > 0 {
            tracing::info!(
                imported,
                "imported spool files of the earlier layout into segments"
            );
        }
        Ok(())
    }

    /// Stores a batch of imported files, then deletes them.
    fn import_batch(
        &self,
        batch: &mut Vec<(QueueId, Vec<u8>)>,
        paths: &mut Vec<PathBuf>,
    ) -> Result<usize, SpoolError> {
        let count = batch.len();
        self.segments
            .store_many_blocking(std::mem::take(batch))
            .map_err(io_err(self.segments.dir()))?;
        for path in paths.drain(..) {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        Ok(count)
    }

    fn done_path(&self, id: &QueueId) -> PathBuf {
        self.active.join(format!("{id}.done"))
    }

    /// Writes a message durably. When this returns Ok the message survives
    /// a crash; only then may it be acknowledged.
    pub async fn store(
        &self,
        envelope: &SpoolEnvelope,
        message: impl Into<Vec<u8>>,
    ) -> Result<(), SpoolError> {
        let (id, head) = self.prepare(envelope)?;
        self.segments
            .store(id, head, message.into())
            .await
            .map_err(io_err(self.segments.dir()))
    }

    /// [`Spool::store`] for callers that are already on a blocking thread
    /// (the queue writing a DSN while it records a failure).
    pub fn store_blocking(
        &self,
        envelope: &SpoolEnvelope,
        message: &[u8],
    ) -> Result<(), SpoolError> {
        let (id, head) = self.prepare(envelope)?;
        self.segments
            .store_blocking(id, head, message.to_vec())
            .map_err(io_err(self.segments.dir()))
    }

    /// The queue id and header lines of a message to store.
    fn prepare(&self, envelope: &SpoolEnvelope) -> Result<(QueueId, Vec<u8>), SpoolError> {
        let corrupt = |reason: String| SpoolError::Corrupt {
            path: self.segments.dir().join(&envelope.queue_id),
            reason,
        };
        let id =
            QueueId::parse(&envelope.queue_id).ok_or_else(|| corrupt("invalid queue id".into()))?;
        let mut header = Vec::with_capacity(MAGIC.len() + 256);
        header.extend_from_slice(MAGIC);
        serde_json::to_writer(&mut header, envelope).map_err(|e| corrupt(e.to_string()))?;
        header.push(b'\n');
        Ok((id, header))
    }

    /// How errors name a message's record: the segment directory and id.
    fn record_path(&self, id: &QueueId) -> PathBuf {
        self.segments.dir().join(id.as_str())
    }

    /// Reads `want` octets of a message's record body (all of it if
    /// `want` is None), checking the CRC when the whole body is read.
    fn read_body(&self, id: &QueueId, want: Option<u64>) -> Result<Vec<u8>, SpoolError> {
        let (file, loc) = self
            .segments
            .locate(id)
            .ok_or_else(|| SpoolError::Missing(id.to_string()))?;
        let path = self.record_path(id);
        let body_len = loc.len - record::HEADER_LEN as u64;
        let whole = want.is_none_or(|w| w >= body_len);
        let read_len = if whole {
            loc.len
        } else {
            record::HEADER_LEN as u64 + want.unwrap_or(0)
        };
        let mut buf = vec![0u8; read_len as usize];
        file.read_exact_at(&mut buf, loc.offset)
            .map_err(io_err(&path))?;
        let raw: &[u8; record::HEADER_LEN] =
            buf[..record::HEADER_LEN].try_into().expect("header length");
        let header = record::Header::parse(raw).ok_or_else(|| SpoolError::Corrupt {
            path: path.clone(),
            reason: "no record header at its location".into(),
        })?;
        if whole && !header.matches(&buf[record::HEADER_LEN..]) {
            return Err(SpoolError::Corrupt {
                path,
                reason: "checksum mismatch".into(),
            });
        }
        buf.drain(..record::HEADER_LEN);
        Ok(buf)
    }

    /// The envelope and the offset of the message in its record body,
    /// reading no more of a large body than needed.
    fn read_head(&self, id: &QueueId) -> Result<(SpoolEnvelope, usize, Vec<u8>), SpoolError> {
        let path = self.record_path(id);
        let head = self.read_body(id, Some(HEAD_WINDOW))?;
        if let Ok((envelope, offset)) = parse_header(&path, &head) {
            return Ok((envelope, offset, head));
        }
        let body = self.read_body(id, None)?;
        let (envelope, offset) = parse_header(&path, &body)?;
        Ok((envelope, offset, body))
    }

    /// The first `limit` octets of a queued message (its header section,
    /// for a DSN), without reading a large body.
    pub fn read_prefix(&self, id: &QueueId, limit: usize) -> Result<Vec<u8>, SpoolError> {
        let (_, offset, head) = self.read_head(id)?;
        let mut message = if head.len() >= offset + limit {
            head
        } else {
            self.read_body(id, Some((offset + limit) as u64))?
        };
        message.truncate(offset + limit);
        message.drain(..offset);
        Ok(message)
    }

    /// Reads a queued message: envelope and message.
    pub fn read(&self, id: &QueueId) -> Result<SpooledMessage, SpoolError> {
        let mut content = self.read_body(id, None)?;
        let path = self.record_path(id);
        let (envelope, offset) = parse_header(&path, &content)?;
        content.drain(..offset);
        Ok(SpooledMessage {
            envelope,
            message: content,
        })
    }

    /// Reads only the envelope of a queued message, and the message size.
    pub fn read_envelope(&self, id: &QueueId) -> Result<(SpoolEnvelope, u64), SpoolError> {
        let (envelope, offset, _) = self.read_head(id)?;
        let (_, loc) = self
            .segments
            .locate(id)
            .ok_or_else(|| SpoolError::Missing(id.to_string()))?;
        let body_len = loc.len - record::HEADER_LEN as u64;
        Ok((envelope, body_len.saturating_sub(offset as u64)))
    }

    /// Every queued id, sorted.
    pub fn list(&self) -> Result<Vec<QueueId>, SpoolError> {
        Ok(self.segments.ids())
    }

    /// Records a finished recipient beside the spool, fsynced, so a
    /// rebuilt index does not deliver it again.
    pub fn append_done(&self, id: &QueueId, record: &DoneRecord) -> Result<(), SpoolError> {
        let path = self.done_path(id);
        // Before the file exists, so `remove` can never miss it.
        self.with_done.lock().insert(id.clone());
        let mut line = serde_json::to_vec(record).map_err(|e| SpoolError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        line.push(b'\n');
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        file.write_all(&line).map_err(io_err(&path))?;
        file.sync_data().map_err(io_err(&path))
    }

    /// The finished recipients of a message. A torn last line (crash during
    /// append) is ignored: at worst that recipient gets a duplicate.
    pub fn read_done(&self, id: &QueueId) -> Result<Vec<DoneRecord>, SpoolError> {
        let path = self.done_path(id);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let mut records = Vec::new();
        for line in BufReader::new(file).lines() {
            let line = line.map_err(io_err(&path))?;
            match serde_json::from_str::<DoneRecord>(&line) {
                Ok(record) => records.push(record),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring torn .done line")
                }
            }
        }
        Ok(records)
    }

    /// Removes a message: its record first (the spool is the truth), then
    /// its `.done` file. Removing what is already gone is not an error.
    pub fn remove(&self, id: &QueueId) -> Result<(), SpoolError> {
        self.segments.remove(id);
        if !self.with_done.lock().remove(id) {
            return Ok(());
        }
        let path = self.done_path(id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => {
                self.with_done.lock().insert(id.clone());
                Err(io_err(&path)(e))
            }
        }
    }

    /// Whether `id` has a `.done` file (some recipients finished).
    pub fn has_done(&self, id: &QueueId) -> bool {
        self.with_done.lock().contains(id)
    }

    /// Whether `id` is queued.
    pub fn exists(&self, id: &QueueId) -> bool {
        self.segments.contains(id)
    }

    /// Waits until every earlier write, removals included, is on disk (a
    /// clean shutdown then delivers nothing twice).
    pub fn flush(&self) -> Result<(), SpoolError> {
        self.segments.flush().map_err(io_err(self.segments.dir()))
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.segment_count()
    }
}

/// The queue id in a message record's body.
fn message_id(body: &[u8]) -> Option<QueueId> {
    let (envelope, _) = parse_header(Path::new("segment"), body).ok()?;
    QueueId::parse(&envelope.queue_id)
}

fn parse_header(path: &Path, content: &[u8]) -> Result<(SpoolEnvelope, usize), SpoolError> {
    let corrupt = |reason: &str| SpoolError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    if !content.starts_with(MAGIC) {
        return Err(corrupt("missing magic line"));
    }
    let rest = &content[MAGIC.len()..];
    let end = rest
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| corrupt("unterminated envelope line"))?;
    let envelope: SpoolEnvelope =
        serde_json::from_slice(&rest[..end]).map_err(|e| corrupt(&format!("envelope: {e}")))?;
    Ok((envelope, MAGIC.len() + end + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(id: &QueueId) -> SpoolEnvelope {
        SpoolEnvelope {
            queue_id: id.to_string(),
            sender: "a@remote.test".into(),
            recipients: vec!["b@example.test".into(), "c@example.test".into()],
            journey_id: "j-1".into(),
            received_at: 1_700_000_000,
            authenticated_user: None,
        }
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("spool/seg"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
    }

    #[tokio::test]
    async fn store_read_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = QueueId::generate();
        let message = b"Subject: hi\r\n\r\nbody\r\n\x00\xff binary ok\r\n";
        spool.store(&envelope(&id), &message[..]).await.unwrap();
        assert_eq!(spool.list().unwrap(), vec![id.clone()]);
        let read = spool.read(&id).unwrap();
        assert_eq!(read.envelope, envelope(&id));
        assert_eq!(read.message, message);
        let (env, size) = spool.read_envelope(&id).unwrap();
        assert_eq!(env, envelope(&id));
        assert_eq!(size, message.len() as u64);
        assert_eq!(spool.read_prefix(&id, 11).unwrap(), b"Subject: hi");
        assert_eq!(spool.read_prefix(&id, 10_000).unwrap(), message);

        // Storing the same id again never replaces the first message.
        assert!(spool.store(&envelope(&id), b"other").await.is_err());
        assert_eq!(spool.read(&id).unwrap().message, message);

        let done = DoneRecord {
            recipient: "b@example.test".into(),
            state: "delivered".into(),
            reply: "250 ok".into(),
        };
        spool.append_done(&id, &done).unwrap();
        // A torn line is ignored.
        let mut f = OpenOptions::new()
            .append(true)
            .open(spool.done_path(&id))
            .unwrap();
        f.write_all(b"{\"recipient\":\"c@exa").unwrap();
        assert_eq!(spool.read_done(&id).unwrap(), vec![done]);
        assert_eq!(spool.list().unwrap().len(), 1);

        spool.remove(&id).unwrap();
        assert!(spool.list().unwrap().is_empty());
        assert!(!spool.exists(&id));
        assert!(matches!(spool.read(&id), Err(SpoolError::Missing(_))));
        assert!(!spool.done_path(&id).exists());
        spool.remove(&id).unwrap();
    }

    #[tokio::test]
    async fn a_done_file_found_at_open_is_removed_with_its_message() {
        let dir = tempfile::tempdir().unwrap();
        let id = QueueId::generate();
        let done_path = {
            let spool = Spool::open(dir.path()).unwrap();
            spool.store(&envelope(&id), &b"m"[..]).await.unwrap();
            let done = DoneRecord {
                recipient: "b@example.test".into(),
                state: "delivered".into(),
                reply: "250 ok".into(),
            };
            spool.append_done(&id, &done).unwrap();
            spool.done_path(&id)
        };
        let spool = Spool::open(dir.path()).unwrap();
        assert!(done_path.exists());
        spool.remove(&id).unwrap();
        assert!(
            !done_path.exists(),
            "the reopened spool knew of the .done file"
        );
    }

    #[tokio::test]
    async fn a_reopened_spool_has_what_was_stored_and_not_what_was_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut kept = Vec::new();
        {
            // Tiny segments, so the messages spread over several.
            let spool = Spool::open_with(dir.path(), 300).unwrap();
            for i in 0..12 {
                let id = QueueId::generate();
                let body = format!("message {i}\r\n").repeat(10);
                spool.store(&envelope(&id), body.clone()).await.unwrap();
                if i % 3 == 0 {
                    kept.push((id, body));
                } else {
                    spool.remove(&id).unwrap();
                }
            }
            assert!(spool.segment_count() > 2);
        }
        let spool = Spool::open_with(dir.path(), 300).unwrap();
        let mut want: Vec<QueueId> = kept.iter().map(|(id, _)| id.clone()).collect();
        want.sort();
        assert_eq!(spool.list().unwrap(), want);
        for (id, body) in &kept {
            assert_eq!(spool.read(id).unwrap().message, body.as_bytes());
        }
        // Segments with nothing live are gone; each left holds a kept one.
        assert!(segment_files(dir.path()).len() <= kept.len() + 1);
        for (id, _) in &kept {
            spool.remove(id).unwrap();
        }
        drop(spool);
        let spool = Spool::open_with(dir.path(), 300).unwrap();
        assert!(spool.list().unwrap().is_empty());
        assert!(segment_files(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn concurrent_stores_share_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let spool = std::sync::Arc::new(Spool::open(dir.path()).unwrap());
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let spool = spool.clone();
            tasks.push(tokio::spawn(async move {
                let id = QueueId::generate();
                spool.store(&envelope(&id), b"x\r\n").await.unwrap();
                id
            }));
        }
        for t in tasks {
            let id = t.await.unwrap();
            assert!(spool.exists(&id));
        }
        assert_eq!(spool.list().unwrap().len(), 50);
        assert_eq!(spool.segment_count(), 1);
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_off_and_damage_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (first, second) = (QueueId::generate(), QueueId::generate());
        {
            let spool = Spool::open(dir.path()).unwrap();
            spool.store(&envelope(&first), b"one\r\n").await.unwrap();
            spool.store(&envelope(&second), b"two\r\n").await.unwrap();
        }
        let segment = segment_files(dir.path()).pop().unwrap();
        let complete = std::fs::metadata(&segment).unwrap().len();
        // A crash in the middle of a third append.
        let mut f = OpenOptions::new().append(true).open(&segment).unwrap();
        f.write_all(b"CSR1M\xff\x00\x00\x00half").unwrap();
        drop(f);
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.list().unwrap().len(), 2);
        assert_eq!(std::fs::metadata(&segment).unwrap().len(), complete);
        // New mail goes on in a new segment after the cut.
        let third = QueueId::generate();
        spool.store(&envelope(&third), b"three\r\n").await.unwrap();
        assert_eq!(spool.list().unwrap().len(), 3);

        // A damaged octet inside a record is reported when it is read.
        let bytes = std::fs::read(&segment).unwrap();
        let at = bytes.windows(5).position(|w| w == b"one\r\n").unwrap();
        let mut damaged = bytes.clone();
        damaged[at] = b'O';
        std::fs::write(&segment, &damaged).unwrap();
        assert!(matches!(
            spool.read(&first),
            Err(SpoolError::Corrupt { .. })
        ));
        assert_eq!(spool.read(&second).unwrap().message, b"two\r\n");

        // Reopened, the damaged record is skipped but the one after it is
        // not lost (a damaged last record looks like a torn append and is
        // cut off), and the segment is kept for an operator even when
        // nothing in it is live any more.
        drop(spool);
        let spool = Spool::open(dir.path()).unwrap();
        let mut want = vec![second.clone(), third.clone()];
        want.sort();
        assert_eq!(spool.list().unwrap(), want);
        assert!(std::fs::read(&segment).unwrap().starts_with(&damaged));
        spool.remove(&second).unwrap();
        drop(spool);
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.list().unwrap(), vec![third.clone()]);
        assert!(
            segment.exists(),
            "a segment with a damaged record was deleted"
        );
    }

    #[tokio::test]
    async fn the_file_per_message_layout_is_imported() {
        let dir = tempfile::tempdir().unwrap();
        let active = dir.path().join("spool/active");
        std::fs::create_dir_all(&active).unwrap();
        std::fs::create_dir_all(dir.path().join("spool/tmp")).unwrap();
        std::fs::write(dir.path().join("spool/tmp/0000000000000001.1"), b"half").unwrap();
        let id = QueueId::generate();
        let mut content = MAGIC.to_vec();
        content.extend_from_slice(&serde_json::to_vec(&envelope(&id)).unwrap());
        content.extend_from_slice(b"\nSubject: old\r\n\r\nbody\r\n");
        std::fs::write(active.join(id.as_str()), &content).unwrap();
        std::fs::write(active.join(format!("{id}.done")), b"").unwrap();

        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.list().unwrap(), vec![id.clone()]);
        assert_eq!(
            spool.read(&id).unwrap().message,
            b"Subject: old\r\n\r\nbody\r\n"
        );
        assert!(!active.join(id.as_str()).exists());
        assert!(active.join(format!("{id}.done")).exists());
        assert!(!dir.path().join("spool/tmp").exists());
    }
}
