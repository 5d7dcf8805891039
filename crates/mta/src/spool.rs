//! Spool files: the truth of the queue.
//!
//! ```text
//! <data_dir>/spool/tmp/<id>.<random>   being written, never acknowledged
//! <data_dir>/spool/active/<id>         queued: header + raw message
//! <data_dir>/spool/active/<id>.done    finished recipients, and the delay-warning mark (one JSON line each)
//! ```
//!
//! A spool file is a magic line, one JSON envelope line, then the message
//! octets exactly as they will be sent. It is written so that it has a name
//! only when complete ([`correo_runtime::durable`]): on Linux an anonymous
//! `O_TMPFILE` file in `active/`, fsynced, then linked to its id; elsewhere
//! `tmp/`, fsync, link into `active/`, unlink the tmp name. Link, unlike
//! rename, refuses to replace an existing id. Then `active/` is fsynced.
//! Only after that returns may the caller acknowledge the message.
//!
//! The directory fsync goes through a
//! [`DirSyncer`](correo_runtime::durable::DirSyncer), one thread that
//! fsyncs `active/` once for every batch of requests that arrived while the
//! previous fsync ran (group commit): concurrent messages share one
//! directory fsync, and each caller still waits for an fsync that started
//! after its own link.

use crate::queue_id::QueueId;
use correo_runtime::durable::DirSyncer;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

/// First line of every spool file; the version lets a later format coexist.
const MAGIC: &[u8] = b"CORREO-SPOOL 1\n";

/// Errors of the spool; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: corrupt spool file: {reason}")]
    Corrupt { path: PathBuf, reason: String },
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

/// The spool directories of one node.
pub struct Spool {
    tmp: PathBuf,
    active: PathBuf,
    syncer: DirSyncer,
}

impl Spool {
    /// Opens (creating) `<data_dir>/spool`. Leftovers in `tmp/` were never
    /// acknowledged, so they are removed.
    pub fn open(data_dir: &Path) -> Result<Spool, SpoolError> {
        let root = data_dir.join("spool");
        let tmp = root.join("tmp");
        let active = root.join("active");
        for dir in [&tmp, &active] {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        for entry in std::fs::read_dir(&tmp).map_err(io_err(&tmp))? {
            let path = entry.map_err(io_err(&tmp))?.path();
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove stale tmp spool file");
            }
        }
        let syncer = DirSyncer::start("spool-dirsync").map_err(io_err(&active))?;
        Ok(Spool {
            tmp,
            active,
            syncer,
        })
    }

    /// Path of a message's spool file.
    pub fn path(&self, id: &QueueId) -> PathBuf {
        self.active.join(id.as_str())
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
        let (tmp, final_path, header) = self.prepare(envelope)?;
        let message = message.into();
        let tmp_clone = tmp.clone();
        // File I/O blocks; keep it off the async workers.
        tokio::task::spawn_blocking(move || {
            write_and_link(&tmp_clone, &final_path, &header, &message)
        })
        .await
        .map_err(|e| SpoolError::Io {
            path: tmp.clone(),
            source: io::Error::other(e),
        })??;
        self.syncer
            .sync(&self.active)
            .await
            .map_err(io_err(&self.active))
    }

    /// [`Spool::store`] for callers that are already on a blocking thread
    /// (the queue writing a DSN while it records a failure): the same
    /// write, fsync, link, then its own directory fsync.
    pub fn store_blocking(
        &self,
        envelope: &SpoolEnvelope,
        message: &[u8],
    ) -> Result<(), SpoolError> {
        let (tmp, final_path, header) = self.prepare(envelope)?;
        write_and_link(&tmp, &final_path, &header, message)?;
        File::open(&self.active)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.active))
    }

    /// The scratch path, final path and header lines of a message to store.
    fn prepare(&self, envelope: &SpoolEnvelope) -> Result<(PathBuf, PathBuf, Vec<u8>), SpoolError> {
        let id = QueueId::parse(&envelope.queue_id).ok_or_else(|| SpoolError::Corrupt {
            path: self.active.join(&envelope.queue_id),
            reason: "invalid queue id".into(),
        })?;
        let mut header = Vec::with_capacity(MAGIC.len() + 256);
        header.extend_from_slice(MAGIC);
        serde_json::to_writer(&mut header, envelope).map_err(|e| SpoolError::Corrupt {
            path: self.path(&id),
            reason: e.to_string(),
        })?;
        header.push(b'\n');
        let tmp = self.tmp.join(format!("{id}.{:08x}", rand::random::<u32>()));
        Ok((tmp, self.path(&id), header))
    }

    /// The first `limit` octets of a queued message (its header section,
    /// for a DSN), without reading a large body.
    pub fn read_prefix(&self, id: &QueueId, limit: usize) -> Result<Vec<u8>, SpoolError> {
        let path = self.path(id);
        let file = File::open(&path).map_err(io_err(&path))?;
        let mut reader = BufReader::new(file);
        let mut head = Vec::new();
        for _ in 0..2 {
            reader.read_until(b'\n', &mut head).map_err(io_err(&path))?;
        }
        parse_header(&path, &head)?;
        let mut message = Vec::new();
        reader
            .take(limit as u64)
            .read_to_end(&mut message)
            .map_err(io_err(&path))?;
        Ok(message)
    }

    /// Reads a spool file: envelope and message.
    pub fn read(&self, id: &QueueId) -> Result<SpooledMessage, SpoolError> {
        let path = self.path(id);
        let mut file = File::open(&path).map_err(io_err(&path))?;
        let mut content = Vec::new();
        file.read_to_end(&mut content).map_err(io_err(&path))?;
        let (envelope, offset) = parse_header(&path, &content)?;
        content.drain(..offset);
        Ok(SpooledMessage {
            envelope,
            message: content,
        })
    }

    /// Reads only the envelope of a spool file, and the message size.
    pub fn read_envelope(&self, id: &QueueId) -> Result<(SpoolEnvelope, u64), SpoolError> {
        let path = self.path(id);
        let file = File::open(&path).map_err(io_err(&path))?;
        let total = file.metadata().map_err(io_err(&path))?.len();
        let mut reader = BufReader::new(file);
        let mut head = Vec::new();
        for _ in 0..2 {
            reader.read_until(b'\n', &mut head).map_err(io_err(&path))?;
        }
        let (envelope, offset) = parse_header(&path, &head)?;
        Ok((envelope, total.saturating_sub(offset as u64)))
    }

    /// Every queued id in `active/`.
    pub fn list(&self) -> Result<Vec<QueueId>, SpoolError> {
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(&self.active).map_err(io_err(&self.active))? {
            let entry = entry.map_err(io_err(&self.active))?;
            if let Some(id) = entry.file_name().to_str().and_then(QueueId::parse) {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Records a finished recipient beside the spool file, fsynced, so a
    /// rebuilt index does not deliver it again.
    pub fn append_done(&self, id: &QueueId, record: &DoneRecord) -> Result<(), SpoolError> {
        let path = self.done_path(id);
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

    /// Removes a message: the spool file first (it is the truth), then its
    /// `.done` file. Removing what is already gone is not an error.
    pub fn remove(&self, id: &QueueId) -> Result<(), SpoolError> {
        for path in [self.path(id), self.done_path(id)] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        Ok(())
    }

    /// Whether the spool file of `id` exists.
    pub fn exists(&self, id: &QueueId) -> bool {
        self.path(id).exists()
    }
}

fn write_and_link(
    tmp: &Path,
    final_path: &Path,
    header: &[u8],
    message: &[u8],
) -> Result<(), SpoolError> {
    // An anonymous O_TMPFILE file linked into active/ where the platform
    // allows it, else tmp/ + link; either way refusing to replace an id.
    correo_runtime::durable::create_new_durable(final_path, tmp, 0o600, |file| {
        file.write_all(header)?;
        file.write_all(message)
    })
    .map_err(io_err(final_path))
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
        // tmp/ is empty after a store.
        assert_eq!(
            std::fs::read_dir(dir.path().join("spool/tmp"))
                .unwrap()
                .count(),
            0
        );

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
        // .done files are not listed as messages.
        assert_eq!(spool.list().unwrap().len(), 1);

        spool.remove(&id).unwrap();
        assert!(spool.list().unwrap().is_empty());
        assert!(!spool.done_path(&id).exists());
        spool.remove(&id).unwrap();
    }

    #[tokio::test]
    async fn concurrent_stores_share_directory_fsyncs() {
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
    }

    #[test]
    fn stale_tmp_files_are_cleared_and_corruption_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("spool/tmp")).unwrap();
        std::fs::write(dir.path().join("spool/tmp/0000000000000001.1"), b"half").unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path().join("spool/tmp"))
                .unwrap()
                .count(),
            0
        );
        let id = QueueId::parse("0000000000000002").unwrap();
        std::fs::write(spool.path(&id), b"garbage").unwrap();
        assert!(matches!(spool.read(&id), Err(SpoolError::Corrupt { .. })));
    }
}
