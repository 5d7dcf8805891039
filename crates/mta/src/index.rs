//! The queue index in sled (`<data_dir>/queue.sled`): per-message and
//! per-recipient delivery state. It is a cache of decisions, not the truth:
//! [`crate::queue::Queue::open`] rebuilds it from the spool, so losing it
//! costs at most duplicate deliveries, never a message.
//!
//! A message not yet attempted is kept in memory only
//! ([`Index::put_fresh`]): its spool file alone restores the same entry
//! after a crash, so the common case — queued, delivered at the first
//! attempt, removed — never touches sled. Its first change of state
//! ([`Index::put`]) writes it to sled. Inserting, reading back and removing
//! every message in sled, JSON-encoded, was 8% of the MTA's CPU at 20
//! inbound sessions (docs/BENCHMARKS.md, run 7).

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// Errors of the index.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("queue index: {0}")]
    Sled(#[from] sled::Error),
    #[error("queue index entry {id}: {source}")]
    Decode {
        id: String,
        source: serde_json::Error,
    },
}

/// Where a recipient stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecipientStatus {
    Pending,
    Deferred,
    Delivered,
    Failed,
}

impl RecipientStatus {
    /// Delivered or failed: nothing more will be attempted.
    pub fn is_final(self) -> bool {
        matches!(self, RecipientStatus::Delivered | RecipientStatus::Failed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RecipientStatus::Pending => "pending",
            RecipientStatus::Deferred => "deferred",
            RecipientStatus::Delivered => "delivered",
            RecipientStatus::Failed => "failed",
        }
    }
}

/// One recipient of a queued message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientEntry {
    pub address: String,
    pub status: RecipientStatus,
    pub attempts: u32,
    pub last_reply: String,
    /// Seconds since the Unix epoch; 0 = as soon as possible.
    pub next_attempt: i64,
}

impl RecipientEntry {
    pub fn pending(address: String) -> Self {
        RecipientEntry {
            address,
            status: RecipientStatus::Pending,
            attempts: 0,
            last_reply: String::new(),
            next_attempt: 0,
        }
    }

    /// Whether the scheduler should attempt it at `now`.
    pub fn is_due(&self, now: i64) -> bool {
        match self.status {
            RecipientStatus::Pending => true,
            RecipientStatus::Deferred => self.next_attempt <= now,
            _ => false,
        }
    }

    /// The domain part (lowercased), used for routing and grouping.
    pub fn domain(&self) -> String {
        self.address
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default()
    }
}

/// One queued message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageEntry {
    pub queue_id: String,
    pub sender: String,
    pub journey_id: String,
    pub received_at: i64,
    pub size: u64,
    pub held: bool,
    /// A delay warning DSN has been sent (at most one per message).
    #[serde(default)]
    pub warned: bool,
    pub recipients: Vec<RecipientEntry>,
}

impl MessageEntry {
    /// Every recipient is delivered or failed.
    pub fn is_finished(&self) -> bool {
        self.recipients.iter().all(|r| r.status.is_final())
    }

    /// When the scheduler should next look at this message: the earliest
    /// attempt time of an unfinished recipient (0 = now); None when held
    /// or finished.
    pub fn due_at(&self) -> Option<i64> {
        if self.held {
            return None;
        }
        self.recipients
            .iter()
            .filter(|r| !r.status.is_final())
            .map(|r| match r.status {
                RecipientStatus::Pending => 0,
                _ => r.next_attempt,
            })
            .min()
    }
}

/// At most this many fresh entries are kept in memory (about 300 bytes
/// each); more go to sled at once.
pub const FRESH_MAX: usize = 100_000;

/// The sled database and its message tree, and the entries of messages
/// not yet attempted (in memory only; see the module docs).
pub struct Index {
    db: sled::Db,
    messages: sled::Tree,
    fresh: Mutex<HashMap<String, MessageEntry>>,
    fresh_max: usize,
}

impl Index {
    pub fn open(path: &Path) -> Result<Index, IndexError> {
        let db = sled::open(path)?;
        let messages = db.open_tree("messages")?;
        Ok(Index {
            db,
            messages,
            fresh: Mutex::new(HashMap::new()),
            fresh_max: FRESH_MAX,
        })
    }

    pub fn get(&self, id: &str) -> Result<Option<MessageEntry>, IndexError> {
        if let Some(entry) = self.fresh.lock().get(id) {
            return Ok(Some(entry.clone()));
        }
        match self.messages.get(id.as_bytes())? {
            Some(bytes) => Ok(Some(decode(id, &bytes)?)),
            None => Ok(None),
        }
    }

    /// Keeps the entry of a message that was just spooled and never
    /// attempted: exactly what the spool file rebuilds, so it need not
    /// reach disk. Past [`FRESH_MAX`] entries in memory it goes to sled
    /// like any other, so a long wait for first attempts costs no more
    /// memory than before.
    /// Returns whether the entry was kept in memory.
    pub fn put_fresh(&self, entry: MessageEntry) -> Result<bool, IndexError> {
        let mut fresh = self.fresh.lock();
        if fresh.len() >= self.fresh_max {
            drop(fresh);
            return self.put(&entry).map(|()| false);
        }
        fresh.insert(entry.queue_id.clone(), entry);
        Ok(true)
    }

    /// The entry of `id` if it is fresh (never attempted, memory only).
    pub fn get_fresh(&self, id: &str) -> Option<MessageEntry> {
        self.fresh.lock().get(id).cloned()
    }

    /// Writes an entry to sled (it is no longer fresh).
    pub fn put(&self, entry: &MessageEntry) -> Result<(), IndexError> {
        let bytes = serde_json::to_vec(entry).map_err(|source| IndexError::Decode {
            id: entry.queue_id.clone(),
            source,
        })?;
        self.messages.insert(entry.queue_id.as_bytes(), bytes)?;
        self.fresh.lock().remove(&entry.queue_id);
        Ok(())
    }

    pub fn remove(&self, id: &str) -> Result<(), IndexError> {
        if self.fresh.lock().remove(id).is_none() {
            self.messages.remove(id.as_bytes())?;
        }
        Ok(())
    }

    /// Every entry, in queue id order (arrival order). An undecodable entry
    /// is skipped with a warning; the spool rebuild recreates it. The
    /// caller keeps writers out meanwhile (`Queue`'s lock): an entry that
    /// moved from memory to sled during the listing would be listed twice.
    pub fn all(&self) -> Result<Vec<MessageEntry>, IndexError> {
        let mut entries: Vec<MessageEntry> = self.fresh.lock().values().cloned().collect();
        for item in self.messages.iter() {
            let (key, value) = item?;
            let id = String::from_utf8_lossy(&key).into_owned();
            match decode(&id, &value) {
                Ok(entry) => entries.push(entry),
                Err(e) => {
                    tracing::warn!(queue_id = %id, error = %e, "skipping undecodable index entry")
                }
            }
        }
        entries.sort_by(|a, b| a.queue_id.cmp(&b.queue_id));
        Ok(entries)
    }

    /// Every key, including undecodable entries, in queue id order (same
    /// condition as [`Index::all`]).
    pub fn ids(&self) -> Result<Vec<String>, IndexError> {
        let mut ids: Vec<String> = self.fresh.lock().keys().cloned().collect();
        for key in self.messages.iter().keys() {
            ids.push(String::from_utf8_lossy(&key?).into_owned());
        }
        ids.sort();
        Ok(ids)
    }

    /// Writes everything to disk (shutdown).
    pub fn flush(&self) -> Result<(), IndexError> {
        self.db.flush()?;
        Ok(())
    }
}

fn decode(id: &str, bytes: &[u8]) -> Result<MessageEntry, IndexError> {
    serde_json::from_slice(bytes).map_err(|source| IndexError::Decode {
        id: id.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> MessageEntry {
        MessageEntry {
            queue_id: id.into(),
            sender: "a@x.test".into(),
            journey_id: "j".into(),
            received_at: 1,
            size: 1,
            held: false,
            warned: false,
            recipients: vec![RecipientEntry::pending("b@y.test".into())],
        }
    }

    #[test]
    fn fresh_entries_live_in_memory_up_to_a_limit_and_move_to_sled_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.sled");
        {
            let mut index = Index::open(&path).unwrap();
            index.fresh_max = 2;
            assert!(index.put_fresh(entry("03")).unwrap());
            assert!(index.put_fresh(entry("01")).unwrap());
            assert!(
                !index.put_fresh(entry("02")).unwrap(),
                "over the limit: sled"
            );
            assert_eq!(index.ids().unwrap(), ["01", "02", "03"]);
            let all: Vec<String> = index
                .all()
                .unwrap()
                .into_iter()
                .map(|e| e.queue_id)
                .collect();
            assert_eq!(all, ["01", "02", "03"]);
            assert!(index.get_fresh("01").is_some() && index.get_fresh("02").is_none());
            let mut changed = index.get("01").unwrap().unwrap();
            changed.held = true;
            index.put(&changed).unwrap();
            assert!(index.get_fresh("01").is_none());
            assert!(index.get("01").unwrap().unwrap().held);
            index.remove("03").unwrap();
            assert!(index.get("03").unwrap().is_none());
            index.flush().unwrap();
        }
        // After a stop only what reached sled is there.
        let index = Index::open(&path).unwrap();
        assert_eq!(index.ids().unwrap(), ["01", "02"]);
    }
}
