//! The durable queue: spool files (the truth) plus the sled index (the
//! state), and every operation that changes them.
//!
//! Write order is what makes it crash-safe:
//! - accept: spool file durable → index entry → acknowledge;
//! - a recipient finishes while others remain: `.done` line fsynced →
//!   index entry updated;
//! - the last recipient finishes: spool file removed → index entry removed.
//!
//! So the spool never lacks a message the index has promised, and a lost
//! index (or a lost `.done` line) can only cause a duplicate delivery.

use crate::index::{Index, IndexError, MessageEntry, RecipientEntry, RecipientStatus};
use crate::queue_id::QueueId;
use crate::retry::RetryPolicy;
use crate::spool::{DoneRecord, Spool, SpoolEnvelope, SpoolError, SpooledMessage};
use parking_lot::Mutex;
use std::collections::HashSet;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

/// Errors of the queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Index(#[from] IndexError),
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The result of one delivery attempt for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered(String),
    /// Temporary failure: try again later.
    Deferred(String),
    /// Permanent failure: never retry.
    Failed(String),
}

impl Outcome {
    pub fn reply(&self) -> &str {
        match self {
            Outcome::Delivered(r) | Outcome::Deferred(r) | Outcome::Failed(r) => r,
        }
    }
}

/// What start-up reconciliation found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reconciled {
    /// Spool files that had no index entry (now all recipients pending,
    /// minus those in `.done`).
    pub rebuilt: usize,
    /// Index entries without a spool file (dropped).
    pub dropped: usize,
    /// Messages whose every recipient was already final (cleaned up).
    pub finished: usize,
    /// Messages now in the queue.
    pub queued: usize,
}

/// Spool + index + the scheduler's wake-up.
pub struct Queue {
    spool: Spool,
    index: Index,
    retry: RetryPolicy,
    /// Serialises read-modify-write of index entries and the matching spool
    /// changes; every holder does only short, local work.
    lock: Mutex<()>,
    /// Wakes the scheduler when something became due.
    pub wake: Notify,
}

impl Queue {
    /// Opens the spool and the index under `data_dir` and reconciles them.
    pub fn open(data_dir: &Path, retry: RetryPolicy) -> Result<(Queue, Reconciled), QueueError> {
        let spool = Spool::open(data_dir)?;
        let index = Index::open(&data_dir.join("queue.sled"))?;
        let queue = Queue {
            spool,
            index,
            retry,
            lock: Mutex::new(()),
            wake: Notify::new(),
        };
        let report = queue.reconcile()?;
        Ok((queue, report))
    }

    /// Makes the index agree with the spool: the spool wins.
    fn reconcile(&self) -> Result<Reconciled, QueueError> {
        let _guard = self.lock.lock();
        let mut report = Reconciled::default();
        let spooled: HashSet<String> = self
            .spool
            .list()?
            .into_iter()
            .map(|id| id.to_string())
            .collect();
        for id in self.index.ids()? {
            if !spooled.contains(&id) {
                tracing::info!(queue_id = %id, "index entry without spool file: dropped");
                self.index.remove(&id)?;
                report.dropped += 1;
            }
        }
        for id in self.spool.list()? {
            let mut entry = match self.index.get(id.as_str()) {
                Ok(Some(entry)) => entry,
                Ok(None) | Err(IndexError::Decode { .. }) => match self.entry_from_spool(&id) {
                    Ok(entry) => {
                        report.rebuilt += 1;
                        entry
                    }
                    Err(e) => {
                        // Kept in place for an operator; never deleted.
                        tracing::error!(queue_id = %id, error = %e, "unreadable spool file left in place, not queued");
                        continue;
                    }
                },
                Err(e) => return Err(e.into()),
            };
            // The index may lag the .done file (sled flushes lazily).
            apply_done(&mut entry, &self.spool.read_done(&id)?);
            if entry.is_finished() {
                self.spool.remove(&id)?;
                self.index.remove(id.as_str())?;
                report.finished += 1;
                continue;
            }
            self.index.put(&entry)?;
            report.queued += 1;
        }
        Ok(report)
    }

    fn entry_from_spool(&self, id: &QueueId) -> Result<MessageEntry, SpoolError> {
        let (envelope, size) = self.spool.read_envelope(id)?;
        Ok(new_entry(&envelope, size))
    }

    /// Queues a message durably; Ok means it may be acknowledged.
    pub async fn enqueue(
        &self,
        envelope: SpoolEnvelope,
        message: impl Into<Vec<u8>>,
    ) -> Result<QueueId, QueueError> {
        let id = QueueId::parse(&envelope.queue_id).ok_or_else(|| SpoolError::Corrupt {
            path: envelope.queue_id.clone().into(),
            reason: "invalid queue id".into(),
        })?;
        let message = message.into();
        let size = message.len() as u64;
        self.spool.store(&envelope, message).await?;
        let entry = new_entry(&envelope, size);
        {
            let _guard = self.lock.lock();
            // An index failure after a durable spool write is not a loss: the
            // next start-up rebuilds the entry. Still acknowledge-worthy.
            if let Err(e) = self.index.put(&entry) {
                tracing::error!(queue_id = %id, error = %e, "spooled but not indexed; restart rebuilds it");
            }
        }
        self.wake.notify_one();
        Ok(id)
    }

    /// Reads a queued message for delivery.
    pub fn read(&self, id: &QueueId) -> Result<SpooledMessage, QueueError> {
        Ok(self.spool.read(id)?)
    }

    /// Drops the index entry of a message whose spool file is gone.
    /// Returns whether it did.
    pub fn forget_if_vanished(&self, id: &QueueId) -> Result<bool, QueueError> {
        let _guard = self.lock.lock();
        if self.spool.exists(id) {
            return Ok(false);
        }
        self.index.remove(id.as_str())?;
        Ok(true)
    }

    /// One pass over the index for the scheduler: the messages that are not
    /// held and have a recipient due at `now`, and the earliest later
    /// attempt of any other deferred, unheld recipient.
    pub fn scan(&self, now: i64) -> Result<(Vec<MessageEntry>, Option<i64>), QueueError> {
        let _guard = self.lock.lock();
        let mut due = Vec::new();
        let mut next: Option<i64> = None;
        for m in self.index.all()?.into_iter().filter(|m| !m.held) {
            for r in m
                .recipients
                .iter()
                .filter(|r| r.status == RecipientStatus::Deferred && r.next_attempt > now)
            {
                next = Some(next.map_or(r.next_attempt, |n| n.min(r.next_attempt)));
            }
            if m.recipients.iter().any(|r| r.is_due(now)) {
                due.push(m);
            }
        }
        Ok((due, next))
    }

    /// Messages that are not held and have a recipient due at `now`.
    pub fn due(&self, now: i64) -> Result<Vec<MessageEntry>, QueueError> {
        let _guard = self.lock.lock();
        Ok(self
            .index
            .all()?
            .into_iter()
            .filter(|m| !m.held && m.recipients.iter().any(|r| r.is_due(now)))
            .collect())
    }

    /// The earliest future next_attempt of a deferred, unheld recipient.
    pub fn next_wakeup(&self) -> Result<Option<i64>, QueueError> {
        let _guard = self.lock.lock();
        Ok(self
            .index
            .all()?
            .iter()
            .filter(|m| !m.held)
            .flat_map(|m| m.recipients.iter())
            .filter(|r| r.status == RecipientStatus::Deferred)
            .map(|r| r.next_attempt)
            .min())
    }

    /// Applies the outcomes of one attempt. Returns the recipients that
    /// failed permanently in this call (after
    /// [`crate::bounce::on_permanent_failure`] has seen them).
    pub fn record(
        &self,
        id: &QueueId,
        outcomes: &[(String, Outcome)],
        now: i64,
    ) -> Result<Vec<String>, QueueError> {
        let _guard = self.lock.lock();
        let Some(mut entry) = self.index.get(id.as_str())? else {
            tracing::info!(queue_id = %id, "results for a message no longer queued (deleted meanwhile)");
            return Ok(Vec::new());
        };
        let mut newly_final = Vec::new();
        let mut failed = Vec::new();
        for (recipient, outcome) in outcomes {
            let Some(r) = entry
                .recipients
                .iter_mut()
                .find(|r| !r.status.is_final() && r.address.eq_ignore_ascii_case(recipient))
            else {
                continue;
            };
            r.attempts += 1;
            r.last_reply = outcome.reply().to_string();
            match outcome {
                Outcome::Delivered(_) => r.status = RecipientStatus::Delivered,
                Outcome::Failed(_) => r.status = RecipientStatus::Failed,
                Outcome::Deferred(reply) if self.retry.expired(entry.received_at, now) => {
                    r.status = RecipientStatus::Failed;
                    r.last_reply = format!("{reply} (gave up: queue lifetime exceeded)");
                }
                Outcome::Deferred(_) => {
                    r.status = RecipientStatus::Deferred;
                    r.next_attempt = self.retry.next_attempt(r.attempts, now);
                }
            }
            if r.status.is_final() {
                newly_final.push(r.clone());
                if r.status == RecipientStatus::Failed {
                    failed.push(r.clone());
                }
            }
        }
        self.finish_recipients(&entry, &newly_final, &failed)?;
        Ok(failed.into_iter().map(|r| r.address).collect())
    }

    /// Persists `entry` after `newly_final` recipients finished: removes the
    /// message when nothing remains, else appends `.done` lines first.
    fn finish_recipients(
        &self,
        entry: &MessageEntry,
        newly_final: &[RecipientEntry],
        failed: &[RecipientEntry],
    ) -> Result<(), QueueError> {
        let id = QueueId::parse(&entry.queue_id).expect("index keys are queue ids");
        for r in failed {
            // While this runs the spool file still exists (DSN material).
            crate::bounce::on_permanent_failure(&self.spool, entry, r);
        }
        if entry.is_finished() {
            self.spool.remove(&id)?;
            self.index.remove(&entry.queue_id)?;
            tracing::info!(queue_id = %id, journey = %entry.journey_id, "all recipients done; removed from queue");
            return Ok(());
        }
        for r in newly_final {
            self.spool.append_done(
                &id,
                &DoneRecord {
                    recipient: r.address.clone(),
                    state: r.status.as_str().to_string(),
                    reply: r.last_reply.clone(),
                },
            )?;
        }
        self.index.put(entry)?;
        Ok(())
    }

    // ---- administration (QueueAdmin) ----

    /// A consistent snapshot of every queued message.
    pub fn list(&self) -> Result<Vec<MessageEntry>, QueueError> {
        let _guard = self.lock.lock();
        Ok(self.index.all()?)
    }

    pub fn show(&self, id: &str) -> Result<Option<MessageEntry>, QueueError> {
        let _guard = self.lock.lock();
        Ok(self.index.get(id)?)
    }

    /// Makes deferred recipients due now; `None` = every message. Returns
    /// the number of recipients made due, or None if `id` is not queued.
    pub fn retry_now(&self, id: Option<&str>) -> Result<Option<u64>, QueueError> {
        let _guard = self.lock.lock();
        let entries = match id {
            Some(id) => match self.index.get(id)? {
                Some(entry) => vec![entry],
                None => return Ok(None),
            },
            None => self.index.all()?,
        };
        let mut count = 0;
        for mut entry in entries {
            let mut changed = false;
            for r in entry
                .recipients
                .iter_mut()
                .filter(|r| r.status == RecipientStatus::Deferred)
            {
                r.next_attempt = 0;
                changed = true;
                count += 1;
            }
            if changed {
                self.index.put(&entry)?;
            }
        }
        self.wake.notify_one();
        Ok(Some(count))
    }

    /// Sets or clears the held flag; releasing also makes deferred
    /// recipients due now.
    pub fn set_held(&self, id: &str, held: bool) -> Result<Option<u64>, QueueError> {
        let _guard = self.lock.lock();
        let Some(mut entry) = self.index.get(id)? else {
            return Ok(None);
        };
        let changed = entry.held != held;
        entry.held = held;
        if !held {
            for r in entry
                .recipients
                .iter_mut()
                .filter(|r| r.status == RecipientStatus::Deferred)
            {
                r.next_attempt = 0;
            }
        }
        self.index.put(&entry)?;
        // An operator's hold must survive a crash right after the command.
        self.index.flush()?;
        if !held {
            self.wake.notify_one();
        }
        Ok(Some(changed as u64))
    }

    /// Removes a message without notice. Returns None if not queued.
    pub fn delete(&self, id: &str) -> Result<Option<u64>, QueueError> {
        let _guard = self.lock.lock();
        let Some(entry) = self.index.get(id)? else {
            return Ok(None);
        };
        let qid = QueueId::parse(&entry.queue_id).expect("index keys are queue ids");
        self.spool.remove(&qid)?;
        self.index.remove(id)?;
        tracing::warn!(queue_id = %id, journey = %entry.journey_id, "deleted by administrator");
        Ok(Some(1))
    }

    /// Fails every remaining recipient (they go to the bounce hook) and
    /// removes the message. Returns the number of recipients failed.
    pub fn bounce(&self, id: &str) -> Result<Option<u64>, QueueError> {
        let _guard = self.lock.lock();
        let Some(mut entry) = self.index.get(id)? else {
            return Ok(None);
        };
        let mut failed = Vec::new();
        for r in entry.recipients.iter_mut().filter(|r| !r.status.is_final()) {
            r.status = RecipientStatus::Failed;
            r.last_reply = "554 5.0.0 bounced by the queue administrator".into();
            failed.push(r.clone());
        }
        let count = failed.len() as u64;
        self.finish_recipients(&entry, &failed, &failed)?;
        Ok(Some(count))
    }

    /// Flushes the index to disk (shutdown).
    pub fn flush(&self) -> Result<(), QueueError> {
        Ok(self.index.flush()?)
    }
}

fn new_entry(envelope: &SpoolEnvelope, size: u64) -> MessageEntry {
    MessageEntry {
        queue_id: envelope.queue_id.clone(),
        sender: envelope.sender.clone(),
        journey_id: envelope.journey_id.clone(),
        received_at: envelope.received_at,
        size,
        held: false,
        recipients: envelope
            .recipients
            .iter()
            .cloned()
            .map(RecipientEntry::pending)
            .collect(),
    }
}

fn apply_done(entry: &mut MessageEntry, done: &[DoneRecord]) {
    for record in done {
        if let Some(r) = entry
            .recipients
            .iter_mut()
            .find(|r| !r.status.is_final() && r.address.eq_ignore_ascii_case(&record.recipient))
        {
            r.status = if record.state == "failed" {
                RecipientStatus::Failed
            } else {
                RecipientStatus::Delivered
            };
            r.last_reply = record.reply.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RetryConfig;
    use std::time::Duration;

    fn policy() -> RetryPolicy {
        RetryPolicy::new(&RetryConfig {
            first: Duration::from_secs(60),
            max: Duration::from_secs(600),
            lifetime: Duration::from_secs(3600),
        })
    }

    fn envelope(rcpts: &[&str]) -> SpoolEnvelope {
        SpoolEnvelope {
            queue_id: QueueId::generate().to_string(),
            sender: "s@remote.test".into(),
            recipients: rcpts.iter().map(|s| s.to_string()).collect(),
            journey_id: "j".into(),
            received_at: 1000,
            authenticated_user: None,
        }
    }

    #[tokio::test]
    async fn deleting_the_index_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b);
        {
            let (q, report) = Queue::open(dir.path(), policy()).unwrap();
            assert_eq!(report, Reconciled::default());
            a = q
                .enqueue(envelope(&["x@a.test", "y@b.test"]), b"m1\r\n")
                .await
                .unwrap();
            b = q.enqueue(envelope(&["z@c.test"]), b"m2\r\n").await.unwrap();
            // x delivered, y remains: the .done file remembers x.
            q.record(
                &a,
                &[("x@a.test".into(), Outcome::Delivered("250 ok".into()))],
                1001,
            )
            .unwrap();
            q.flush().unwrap();
        }
        std::fs::remove_dir_all(dir.path().join("queue.sled")).unwrap();
        let (q, report) = Queue::open(dir.path(), policy()).unwrap();
        assert_eq!(report.rebuilt, 2);
        assert_eq!(report.queued, 2);
        let ea = q.show(a.as_str()).unwrap().unwrap();
        assert_eq!(ea.recipients[0].status, RecipientStatus::Delivered);
        assert_eq!(ea.recipients[1].status, RecipientStatus::Pending);
        assert_eq!(ea.size, 4);
        let eb = q.show(b.as_str()).unwrap().unwrap();
        assert_eq!(eb.recipients[0].status, RecipientStatus::Pending);
        assert_eq!(q.read(&b).unwrap().message, b"m2\r\n");
        // Only y and z are due.
        let due: Vec<_> = q
            .due(2000)
            .unwrap()
            .into_iter()
            .flat_map(|m| {
                m.recipients
                    .into_iter()
                    .filter(|r| r.is_due(2000))
                    .map(|r| r.address)
            })
            .collect();
        assert_eq!(due, vec!["y@b.test", "z@c.test"]);
    }

    #[tokio::test]
    async fn index_entry_without_spool_file_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let id;
        {
            let (q, _) = Queue::open(dir.path(), policy()).unwrap();
            id = q.enqueue(envelope(&["x@a.test"]), b"m\r\n").await.unwrap();
            q.flush().unwrap();
        }
        std::fs::remove_file(dir.path().join("spool/active").join(id.as_str())).unwrap();
        let (q, report) = Queue::open(dir.path(), policy()).unwrap();
        assert_eq!(report.dropped, 1);
        assert!(q.show(id.as_str()).unwrap().is_none());
    }

    #[tokio::test]
    async fn outcomes_defer_then_finish_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let (q, _) = Queue::open(dir.path(), policy()).unwrap();
        let id = q
            .enqueue(envelope(&["x@a.test", "y@a.test"]), b"m\r\n")
            .await
            .unwrap();
        let failed = q
            .record(
                &id,
                &[
                    ("x@a.test".into(), Outcome::Deferred("451 later".into())),
                    ("y@a.test".into(), Outcome::Failed("550 no".into())),
                ],
                1100,
            )
            .unwrap();
        assert_eq!(failed, vec!["y@a.test"]);
        let e = q.show(id.as_str()).unwrap().unwrap();
        assert_eq!(e.recipients[0].status, RecipientStatus::Deferred);
        assert!((1154..=1166).contains(&e.recipients[0].next_attempt));
        assert!(q.due(1100).unwrap().is_empty());
        assert_eq!(q.next_wakeup().unwrap(), Some(e.recipients[0].next_attempt));
        let (due, next) = q.scan(1100).unwrap();
        assert!(due.is_empty());
        assert_eq!(next, Some(e.recipients[0].next_attempt));
        // retry makes it due now.
        assert_eq!(q.retry_now(Some(id.as_str())).unwrap(), Some(1));
        assert_eq!(q.due(1100).unwrap().len(), 1);
        // hold hides it from the scheduler; release brings it back.
        q.set_held(id.as_str(), true).unwrap();
        assert!(q.due(1100).unwrap().is_empty());
        q.set_held(id.as_str(), false).unwrap();
        assert_eq!(q.due(1100).unwrap().len(), 1);
        // Past the lifetime a deferral is a failure; the message leaves.
        let failed = q
            .record(
                &id,
                &[("x@a.test".into(), Outcome::Deferred("451 later".into()))],
                1000 + 3600,
            )
            .unwrap();
        assert_eq!(failed, vec!["x@a.test"]);
        assert!(q.show(id.as_str()).unwrap().is_none());
        assert!(!dir.path().join("spool/active").join(id.as_str()).exists());
    }

    #[tokio::test]
    async fn admin_delete_and_bounce() {
        let dir = tempfile::tempdir().unwrap();
        let (q, _) = Queue::open(dir.path(), policy()).unwrap();
        let a = q.enqueue(envelope(&["x@a.test"]), b"m\r\n").await.unwrap();
        let b = q
            .enqueue(envelope(&["x@a.test", "y@a.test"]), b"m\r\n")
            .await
            .unwrap();
        assert_eq!(q.list().unwrap().len(), 2);
        assert_eq!(q.delete(a.as_str()).unwrap(), Some(1));
        assert_eq!(q.delete(a.as_str()).unwrap(), None);
        assert_eq!(q.bounce(b.as_str()).unwrap(), Some(2));
        assert!(q.list().unwrap().is_empty());
        assert!(Spool::open(dir.path()).unwrap().list().unwrap().is_empty());
        assert_eq!(q.retry_now(Some("0000000000000000")).unwrap(), None);
    }
}
