//! The durable queue: the spool (the truth) plus the sled index (the
//! state), and every operation that changes them.
//!
//! Write order is what makes it crash-safe:
//! - accept: spool record durable → index entry (in memory until the first
//!   attempt: the spool record alone rebuilds it) → acknowledge;
//! - a recipient finishes while others remain: `.done` line fsynced →
//!   index entry updated;
//! - a recipient fails (or is delayed past `retry.delay_warning`): the DSN
//!   is spooled durably first, as a message of its own, then the failure
//!   is recorded — a crash in between costs a duplicate DSN, never a
//!   missing one;
//! - the last recipient finishes: spool removal record → index entry removed.
//!
//! So the spool never lacks a message the index has promised, and a lost
//! index (or a lost `.done` line) can only cause a duplicate delivery.
//!
//! Finding due work: an in-memory schedule ordered by (due time, queue id)
//! mirrors every index write and is rebuilt at start-up, so the scheduler
//! reads only the messages that are due, never the whole index.

use crate::bounce::{self, Kind, ReportRecipient};
use crate::index::{Index, IndexError, MessageEntry, RecipientEntry, RecipientStatus};
use crate::queue_id::QueueId;
use crate::retry::RetryPolicy;
use crate::space::{SpaceProbe, Statvfs};
use crate::spool::{DoneRecord, Spool, SpoolEnvelope, SpoolError, SpooledMessage};
use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// Why new mail is refused before it is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{free} bytes free on the spool's file system, below spool.min_free_bytes = {min}")]
pub struct DiskFull {
    pub free: u64,
    pub min: u64,
}

/// How often [`Queue::flush_if_dirty`] makes spool removals durable.
const REMOVALS_FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Messages up to this size keep a copy of their octets in memory until
/// their first attempt ([`Queue::fresh_body`]).
const FRESH_BODY_MAX: usize = 256 * 1024;
/// At most this many octets of such copies at once; beyond it a message's
/// first attempt reads the spool like any other.
const FRESH_BODIES_BUDGET: usize = 16 * 1024 * 1024;

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// How much of a bounced message's start is read for its header section.
const DSN_HEADER_LIMIT: usize = 256 * 1024;

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
    /// minus those in `.done`). Messages not yet attempted are among them
    /// after any stop: their entries are kept in memory only.
    pub rebuilt: usize,
    /// Index entries without a spool file (dropped).
    pub dropped: usize,
    /// Messages whose every recipient was already final (cleaned up).
    pub finished: usize,
    /// Messages now in the queue.
    pub queued: usize,
    /// The index could not be opened or read and was set aside (renamed
    /// to this path) and rebuilt from the spool.
    pub index_set_aside: Option<PathBuf>,
}

/// Settings of a queue beyond the retry policy.
#[derive(Clone)]
pub struct QueueOptions {
    /// This MTA's name in DSNs (`Reporting-MTA`, `MAILER-DAEMON@…`).
    pub hostname: String,
    /// Refuse new mail below this many free bytes (0 = no check).
    pub min_free_bytes: u64,
    pub probe: Arc<dyn SpaceProbe>,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            hostname: "localhost".into(),
            min_free_bytes: 0,
            probe: Arc::new(Statvfs),
        }
    }
}

/// A due message for the scheduler: its id and open destination domains.
pub type Candidate = (String, Arc<[String]>);

/// Messages by (due time, queue id), and each message's current key and
/// the destination domains of its open recipients (so the scheduler can
/// pass over a message whose destinations are all busy without reading
/// the index).
#[derive(Default)]
struct Schedule {
    by_time: BTreeSet<(i64, String)>,
    by_id: HashMap<String, (i64, Arc<[String]>)>,
    /// The same entries per open destination domain, so the scheduler
    /// looks only at domains that can take a delivery now.
    by_domain: HashMap<String, BTreeSet<(i64, String)>>,
}

impl Schedule {
    fn set(&mut self, id: &str, due: Option<(i64, Arc<[String]>)>) {
        if let Some((old, domains)) = self.by_id.remove(id) {
            let key = (old, id.to_string());
            self.by_time.remove(&key);
            for domain in domains.iter() {
                if let Some(set) = self.by_domain.get_mut(domain) {
                    set.remove(&key);
                    if set.is_empty() {
                        self.by_domain.remove(domain);
                    }
                }
            }
        }
        if let Some((due, domains)) = due {
            let key = (due, id.to_string());
            for domain in domains.iter() {
                self.by_domain
                    .entry(domain.clone())
                    .or_default()
                    .insert(key.clone());
            }
            self.by_time.insert(key);
            self.by_id.insert(id.to_string(), (due, domains));
        }
    }

    /// Due messages by destination: for every domain, up to `room(domain)`
    /// of its earliest due messages for which `blocked(id, domain)` is
    /// false; each message once, earliest first. The work is bounded by
    /// the domains, the blocked messages and the room, not by how many
    /// messages are due. The flag says whether some domain had more due
    /// messages than room.
    fn due_by_domain(
        &self,
        now: i64,
        mut room: impl FnMut(&str) -> usize,
        mut blocked: impl FnMut(&str, &str) -> bool,
    ) -> (Vec<Candidate>, bool) {
        let mut picked: HashMap<&str, i64> = HashMap::new();
        let mut more = false;
        for (domain, set) in &self.by_domain {
            let mut left = room(domain);
            if left == 0 {
                continue;
            }
            for (due, id) in set.range(..(now.saturating_add(1), String::new())) {
                if blocked(id, domain) {
                    continue;
                }
                if left == 0 {
                    more = true;
                    break;
                }
                left -= 1;
                picked.insert(id, *due);
            }
        }
        let mut out: Vec<(i64, String, Arc<[String]>)> = picked
            .into_iter()
            .filter_map(|(id, due)| {
                let (_, domains) = self.by_id.get(id)?;
                Some((due, id.to_string(), domains.clone()))
            })
            .collect();
        out.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        (out.into_iter().map(|(_, id, d)| (id, d)).collect(), more)
    }

    /// Ids due at `now`, earliest first.
    fn due(&self, now: i64) -> Vec<String> {
        self.by_time
            .range(..(now.saturating_add(1), String::new()))
            .map(|(_, id)| id.clone())
            .collect()
    }

    fn next_after(&self, now: i64) -> Option<i64> {
        self.by_time
            .range((now.saturating_add(1), String::new())..)
            .next()
            .map(|(t, _)| *t)
    }
}

/// The schedule key of an entry: its due time and open domains.
fn schedule_key(entry: &MessageEntry) -> Option<(i64, Arc<[String]>)> {
    let due = entry.due_at()?;
    let mut domains: Vec<String> = entry
        .recipients
        .iter()
        .filter(|r| !r.status.is_final())
        .map(|r| r.domain())
        .collect();
    domains.sort();
    domains.dedup();
    Some((due, domains.into()))
}

/// Spool + index + the scheduler's wake-up.
pub struct Queue {
    data_dir: PathBuf,
    spool: Spool,
    index: Index,
    retry: RetryPolicy,
    options: QueueOptions,
    /// Serialises read-modify-write of index entries and the matching spool
    /// changes; every holder does only short, local work.
    lock: Mutex<()>,
    schedule: Mutex<Schedule>,
    /// The index has writes not yet flushed to disk.
    dirty: AtomicBool,
    /// When the spool's removal records were last flushed by
    /// [`Queue::flush_if_dirty`].
    removals_flushed: Mutex<std::time::Instant>,
    /// Wakes the scheduler when something became due.
    pub wake: Notify,
    /// The octets of small messages not yet attempted, so that their first
    /// attempt needs no spool read (a blocking-pool hop and a read per
    /// message). A body goes when its entry stops being fresh.
    fresh_bodies: Mutex<FreshBodies>,
}

#[derive(Default)]
struct FreshBodies {
    bodies: HashMap<String, Arc<[u8]>>,
    bytes: usize,
}

impl FreshBodies {
    fn has_room(&self, len: usize) -> bool {
        len <= FRESH_BODY_MAX && self.bytes + len <= FRESH_BODIES_BUDGET
    }

    fn insert(&mut self, id: &str, body: Arc<[u8]>) {
        if self.has_room(body.len()) {
            self.bytes += body.len();
            if let Some(old) = self.bodies.insert(id.to_string(), body) {
                self.bytes -= old.len();
            }
        }
    }

    fn remove(&mut self, id: &str) {
        if let Some(body) = self.bodies.remove(id) {
            self.bytes -= body.len();
        }
    }
}

impl Queue {
    /// Opens the spool and the index under `data_dir` and reconciles them.
    pub fn open(data_dir: &Path, retry: RetryPolicy) -> Result<(Queue, Reconciled), QueueError> {
        Self::open_with(data_dir, retry, QueueOptions::default())
    }

    /// [`Queue::open`] with DSN and disk-space settings. An index that
    /// cannot be opened or read (damaged files) is renamed aside and
    /// rebuilt from the spool: the spool is the truth.
    pub fn open_with(
        data_dir: &Path,
        retry: RetryPolicy,
        options: QueueOptions,
    ) -> Result<(Queue, Reconciled), QueueError> {
        let index_path = data_dir.join("queue.sled");
        let mut set_aside = None;
        for attempt in 0..2 {
            let spool = Spool::open(data_dir)?;
            let index = match open_index(&index_path) {
                Ok(index) => index,
                Err(e) if attempt == 0 => {
                    tracing::error!(error = %e, "queue index unusable; rebuilding it from the spool");
                    set_aside = Some(set_index_aside(&index_path)?);
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let queue = Queue {
                data_dir: data_dir.to_path_buf(),
                spool,
                index,
                retry: retry.clone(),
                options: options.clone(),
                lock: Mutex::new(()),
                schedule: Mutex::new(Schedule::default()),
                dirty: AtomicBool::new(false),
                removals_flushed: Mutex::new(std::time::Instant::now()),
                wake: Notify::new(),
                fresh_bodies: Mutex::new(FreshBodies::default()),
            };
            match queue.reconcile() {
                Ok(mut report) => {
                    report.index_set_aside = set_aside;
                    // The reconciled state is the base the next crash falls back to.
                    queue.flush()?;
                    return Ok((queue, report));
                }
                Err(QueueError::Index(e)) if attempt == 0 => {
                    tracing::error!(error = %e, "queue index unreadable; rebuilding it from the spool");
                    drop(queue);
                    set_aside = Some(set_index_aside(&index_path)?);
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the second attempt returns")
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
                self.remove_entry(&id)?;
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
                self.remove_entry(id.as_str())?;
                report.finished += 1;
                continue;
            }
            self.put(&entry)?;
            report.queued += 1;
        }
        Ok(report)
    }

    fn entry_from_spool(&self, id: &QueueId) -> Result<MessageEntry, SpoolError> {
        let (envelope, size) = self.spool.read_envelope(id)?;
        Ok(new_entry(&envelope, size))
    }

    /// Writes an index entry and keeps the schedule in step.
    fn put(&self, entry: &MessageEntry) -> Result<(), IndexError> {
        self.fresh_bodies.lock().remove(&entry.queue_id);
        self.index.put(entry)?;
        self.dirty.store(true, Ordering::SeqCst);
        self.schedule
            .lock()
            .set(&entry.queue_id, schedule_key(entry));
        Ok(())
    }

    /// Indexes a message that was just spooled, in memory until its first
    /// attempt changes it ([`Index::put_fresh`]), and schedules it.
    /// Returns whether the entry is kept in memory.
    fn put_fresh(&self, entry: MessageEntry) -> Result<bool, IndexError> {
        let key = schedule_key(&entry);
        let id = entry.queue_id.clone();
        let kept = self.index.put_fresh(entry)?;
        if !kept {
            self.dirty.store(true, Ordering::SeqCst);
        }
        self.schedule.lock().set(&id, key);
        Ok(kept)
    }

    fn remove_entry(&self, id: &str) -> Result<(), IndexError> {
        self.fresh_bodies.lock().remove(id);
        self.schedule.lock().set(id, None);
        self.index.remove(id)?;
        self.dirty.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Whether there is room for new mail (checked at MAIL time).
    pub fn check_space(&self) -> Result<(), DiskFull> {
        let min = self.options.min_free_bytes;
        if min == 0 {
            return Ok(());
        }
        match self.options.probe.free_bytes(&self.data_dir) {
            Ok(free) if free < min => Err(DiskFull { free, min }),
            Ok(_) => Ok(()),
            Err(e) => {
                // Not knowing is no reason to refuse mail; the write itself
                // still fails safely (451) if the disk really is full.
                tracing::warn!(error = %e, "cannot measure free space of the spool");
                Ok(())
            }
        }
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
        // The budget is checked again at insertion; this check only saves
        // a copy that would be thrown away.
        let keep = self.fresh_bodies.lock().has_room(message.len());
        let body: Option<Arc<[u8]>> = keep.then(|| message[..].into());
        self.spool.store(&envelope, message).await?;
        let entry = new_entry(&envelope, size);
        {
            let _guard = self.lock.lock();
            // An index failure after a durable spool write is not a loss: the
            // next start-up rebuilds the entry. Still acknowledge-worthy.
            match self.put_fresh(entry) {
                Ok(true) => {
                    if let Some(body) = body {
                        self.fresh_bodies.lock().insert(id.as_str(), body);
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(queue_id = %id, error = %e, "spooled but not indexed; restart rebuilds it")
                }
            }
        }
        self.wake.notify_one();
        Ok(id)
    }

    /// The octets of a message not yet attempted, when memory holds them:
    /// the same as [`Queue::read`] gives, without reading the spool.
    pub fn fresh_body(&self, id: &str) -> Option<Arc<[u8]>> {
        self.fresh_bodies.lock().bodies.get(id).cloned()
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
        self.remove_entry(id.as_str())?;
        Ok(true)
    }

    /// The ids of messages due at `now` (not held, a recipient due),
    /// earliest first — from the schedule, without reading the index.
    pub fn due_ids(&self, now: i64) -> Vec<String> {
        self.schedule.lock().due(now)
    }

    /// [`Queue::due_ids`] by destination domain, with work bounded
    /// by `room` rather than by the number of due messages (see
    /// `Schedule::due_by_domain`). Both closures run under the schedule's
    /// lock: they must not call the queue.
    pub fn due_by_domain(
        &self,
        now: i64,
        room: impl FnMut(&str) -> usize,
        blocked: impl FnMut(&str, &str) -> bool,
    ) -> (Vec<Candidate>, bool) {
        self.schedule.lock().due_by_domain(now, room, blocked)
    }

    /// Drops a message from the schedule (its index entry is gone).
    pub fn unschedule(&self, id: &str) {
        self.schedule.lock().set(id, None);
    }

    /// The earliest due time after `now` of any queued, unheld message.
    pub fn next_due_after(&self, now: i64) -> Option<i64> {
        self.schedule.lock().next_after(now)
    }

    /// The messages due at `now` and the earliest later due time.
    pub fn scan(&self, now: i64) -> Result<(Vec<MessageEntry>, Option<i64>), QueueError> {
        Ok((self.due(now)?, self.next_due_after(now)))
    }

    /// Messages that are not held and have a recipient due at `now`.
    pub fn due(&self, now: i64) -> Result<Vec<MessageEntry>, QueueError> {
        let mut due = Vec::new();
        for id in self.due_ids(now) {
            if let Some(entry) = self.show(&id)? {
                due.push(entry);
            }
        }
        Ok(due)
    }

    /// The earliest future next_attempt of a deferred, unheld recipient.
    pub fn next_wakeup(&self) -> Result<Option<i64>, QueueError> {
        Ok(self.next_due_after(0))
    }

    /// Applies the outcomes of one attempt. Returns the recipients that
    /// failed permanently in this call (a DSN for them is already queued).
    pub fn record(
        &self,
        id: &QueueId,
        outcomes: &[(String, Outcome)],
        now: i64,
    ) -> Result<Vec<String>, QueueError> {
        let _guard = self.lock.lock();
        let Some(entry) = self.index.get(id.as_str())? else {
            tracing::info!(queue_id = %id, "results for a message no longer queued (deleted meanwhile)");
            return Ok(Vec::new());
        };
        self.apply_outcomes(entry, outcomes, now)
    }

    /// [`Queue::record`] when it needs no wait for the disk, so an async
    /// caller may run it in place: every outcome is a delivery and together
    /// they finish a fresh message (never attempted before, so in memory
    /// and without a `.done` file), and the queue's lock is free (its other
    /// holders may be waiting for an fsync). Recording is then forgetting
    /// the message (the spool's removal record is written behind,
    /// [`Spool::remove`]). None when the caller must run [`Queue::record`]
    /// on a blocking thread instead.
    pub fn record_if_quick(
        &self,
        id: &QueueId,
        outcomes: &[(String, Outcome)],
        now: i64,
    ) -> Option<Result<Vec<String>, QueueError>> {
        if !outcomes
            .iter()
            .all(|(_, o)| matches!(o, Outcome::Delivered(_)))
        {
            return None;
        }
        let _guard = self.lock.try_lock()?;
        let entry = self.index.get_fresh(id.as_str())?;
        if !finished_by(&entry, outcomes) || self.spool.has_done(id) {
            return None;
        }
        Some(self.apply_outcomes(entry, outcomes, now))
    }

    /// The body of [`Queue::record`], under the lock.
    fn apply_outcomes(
        &self,
        mut entry: MessageEntry,
        outcomes: &[(String, Outcome)],
        now: i64,
    ) -> Result<Vec<String>, QueueError> {
        let mut newly_final = Vec::new();
        let mut failed = Vec::new();
        let mut deferred = Vec::new();
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
                    deferred.push(ReportRecipient::from(&*r));
                }
            }
            if r.status.is_final() {
                newly_final.push(r.clone());
                if r.status == RecipientStatus::Failed {
                    failed.push(r.clone());
                }
            }
        }
        self.warn_if_delayed(&mut entry, &deferred, now)?;
        self.finish_recipients(&entry, &newly_final, &failed, now)?;
        Ok(failed.into_iter().map(|r| r.address).collect())
    }

    /// Defers `recipients` until `until` without an attempt (their
    /// destination is backed off), counting no attempt; past the queue
    /// lifetime they fail instead. Returns the number changed.
    pub fn postpone(
        &self,
        id: &QueueId,
        recipients: &[String],
        until: i64,
        reply: &str,
        now: i64,
    ) -> Result<usize, QueueError> {
        let _guard = self.lock.lock();
        let Some(mut entry) = self.index.get(id.as_str())? else {
            return Ok(0);
        };
        let expired = self.retry.expired(entry.received_at, now);
        let mut changed = 0;
        let mut failed = Vec::new();
        let mut deferred = Vec::new();
        for r in entry.recipients.iter_mut().filter(|r| {
            !r.status.is_final()
                && recipients
                    .iter()
                    .any(|x| x.eq_ignore_ascii_case(&r.address))
        }) {
            changed += 1;
            if expired {
                r.status = RecipientStatus::Failed;
                r.last_reply = format!("{reply} (gave up: queue lifetime exceeded)");
                failed.push(r.clone());
            } else {
                r.status = RecipientStatus::Deferred;
                r.last_reply = reply.to_string();
                r.next_attempt = until;
                deferred.push(ReportRecipient::from(&*r));
            }
        }
        if changed == 0 {
            return Ok(0);
        }
        self.warn_if_delayed(&mut entry, &deferred, now)?;
        self.finish_recipients(&entry, &failed, &failed, now)?;
        Ok(changed)
    }

    /// Sends the one delay warning of a message when it is due.
    fn warn_if_delayed(
        &self,
        entry: &mut MessageEntry,
        deferred: &[ReportRecipient],
        now: i64,
    ) -> Result<(), QueueError> {
        if deferred.is_empty() || entry.warned || !self.retry.warn_delay(entry.received_at, now) {
            return Ok(());
        }
        let until = self.retry.gives_up_at(entry.received_at);
        self.send_report(Kind::Delayed, entry, deferred, now, Some(until))?;
        entry.warned = true;
        // Beside the spool file too, so a rebuilt index does not warn again.
        let id = QueueId::parse(&entry.queue_id).expect("index keys are queue ids");
        self.spool.append_done(
            &id,
            &DoneRecord {
                recipient: String::new(),
                state: DELAY_WARNED.into(),
                reply: String::new(),
            },
        )?;
        Ok(())
    }

    /// Builds and durably queues a DSN about `entry` to its sender —
    /// unless the sender is `<>`.
    fn send_report(
        &self,
        kind: Kind,
        entry: &MessageEntry,
        recipients: &[ReportRecipient],
        now: i64,
        retry_until: Option<i64>,
    ) -> Result<Option<QueueId>, QueueError> {
        if !bounce::should_report(entry) {
            tracing::warn!(
                queue_id = %entry.queue_id,
                journey = %entry.journey_id,
                recipients = recipients.len(),
                ?kind,
                "no DSN: the message is itself a notification (sender <>)"
            );
            return Ok(None);
        }
        let id = QueueId::parse(&entry.queue_id).expect("index keys are queue ids");
        let original = match self.spool.read_prefix(&id, DSN_HEADER_LIMIT) {
            Ok(original) => original,
            Err(e) => {
                tracing::warn!(queue_id = %id, error = %e, "original unreadable; DSN without its headers");
                Vec::new()
            }
        };
        let dsn_id = QueueId::generate();
        let mut message = format!("X-Correo-Journey: {}\r\n", entry.journey_id).into_bytes();
        message.extend_from_slice(&bounce::build(&bounce::Report {
            kind,
            reporting_mta: &self.options.hostname,
            message: entry,
            recipients,
            original: &original,
            now,
            retry_until,
        }));
        let envelope = SpoolEnvelope {
            queue_id: dsn_id.to_string(),
            sender: String::new(),
            recipients: vec![entry.sender.clone()],
            journey_id: entry.journey_id.clone(),
            received_at: now,
            authenticated_user: None,
        };
        self.spool.store_blocking(&envelope, &message)?;
        if let Err(e) = self.put_fresh(new_entry(&envelope, message.len() as u64)) {
            tracing::error!(queue_id = %dsn_id, error = %e, "DSN spooled but not indexed; restart rebuilds it");
        }
        tracing::info!(
            queue_id = %entry.queue_id,
            journey = %entry.journey_id,
            dsn = %dsn_id,
            sender = %entry.sender,
            recipients = recipients.len(),
            ?kind,
            "delivery status notification queued"
        );
        self.wake.notify_one();
        Ok(Some(dsn_id))
    }

    /// Persists `entry` after `newly_final` recipients finished: queues one
    /// DSN for the `failed` ones, then removes the message when nothing
    /// remains, else appends `.done` lines first.
    fn finish_recipients(
        &self,
        entry: &MessageEntry,
        newly_final: &[RecipientEntry],
        failed: &[RecipientEntry],
        now: i64,
    ) -> Result<(), QueueError> {
        let id = QueueId::parse(&entry.queue_id).expect("index keys are queue ids");
        for r in failed {
            tracing::error!(
                queue_id = %entry.queue_id,
                journey = %entry.journey_id,
                sender = %entry.sender,
                recipient = %r.address,
                attempts = r.attempts,
                reply = %r.last_reply,
                "permanent delivery failure"
            );
        }
        if !failed.is_empty() {
            // While this runs the spool file still exists (DSN material).
            let report: Vec<ReportRecipient> = failed.iter().map(ReportRecipient::from).collect();
            self.send_report(Kind::Failed, entry, &report, now, None)?;
        }
        if entry.is_finished() {
            self.spool.remove(&id)?;
            self.remove_entry(&entry.queue_id)?;
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
        self.put(entry)?;
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
                self.put(&entry)?;
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
        self.put(&entry)?;
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
        self.remove_entry(id)?;
        tracing::warn!(queue_id = %id, journey = %entry.journey_id, "deleted by administrator");
        Ok(Some(1))
    }

    /// Fails every remaining recipient (one DSN to the sender) and removes
    /// the message. Returns the number of recipients failed.
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
        self.finish_recipients(&entry, &failed, &failed, now_secs())?;
        Ok(Some(count))
    }

    /// The spool itself, for tests that damage it.
    #[cfg(test)]
    pub(crate) fn spool_for_tests(&self) -> &Spool {
        &self.spool
    }

    /// Flushes the spool's removals and the index to disk (shutdown).
    pub fn flush(&self) -> Result<(), QueueError> {
        self.dirty.store(false, Ordering::SeqCst);
        self.spool.flush()?;
        Ok(self.index.flush()?)
    }

    /// Flushes the index if anything changed since the last flush (the
    /// scheduler calls this every round, so a crash right after a delivery
    /// rarely forgets it — a forgotten delivery is a duplicate).
    pub fn flush_if_dirty(&self) -> Result<bool, QueueError> {
        if self.dirty.swap(false, Ordering::SeqCst) {
            // Removal records too, at most once a second (each is an
            // fdatasync the spool writer makes new mail wait for), so a
            // power loss repeats only the last second's deliveries.
            let due = {
                let mut last = self.removals_flushed.lock();
                let due = last.elapsed() >= REMOVALS_FLUSH_INTERVAL;
                if due {
                    *last = std::time::Instant::now();
                }
                due
            };
            if due {
                self.spool.flush()?;
            } else {
                // Still to do: a later round flushes the removals, even if
                // nothing else changes meanwhile.
                self.dirty.store(true, Ordering::SeqCst);
            }
            self.index.flush()?;
            return Ok(true);
        }
        Ok(false)
    }
}

/// Whether `outcomes` finish every recipient of `entry`, matched as
/// [`Queue::record`] matches them (each outcome to the first unfinished
/// recipient of that address).
fn finished_by(entry: &MessageEntry, outcomes: &[(String, Outcome)]) -> bool {
    let mut open: Vec<&str> = entry
        .recipients
        .iter()
        .filter(|r| !r.status.is_final())
        .map(|r| r.address.as_str())
        .collect();
    for (recipient, _) in outcomes {
        if let Some(at) = open.iter().position(|a| a.eq_ignore_ascii_case(recipient)) {
            open.remove(at);
        }
    }
    open.is_empty()
}

/// Opens sled, turning a panic on damaged files into an error.
fn open_index(path: &Path) -> Result<Index, IndexError> {
    let path = path.to_path_buf();
    match std::panic::catch_unwind(move || Index::open(&path)) {
        Ok(result) => result,
        Err(_) => Err(IndexError::Sled(sled::Error::Unsupported(
            "sled panicked while opening the index".into(),
        ))),
    }
}

/// Renames a damaged index out of the way (kept for inspection).
fn set_index_aside(path: &Path) -> Result<PathBuf, QueueError> {
    let aside = path.with_file_name(format!(
        "queue.sled.broken-{}-{:04x}",
        now_secs(),
        rand::random::<u16>()
    ));
    match std::fs::rename(path, &aside) {
        Ok(()) => Ok(aside),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(aside),
        Err(source) => Err(SpoolError::Io {
            path: path.to_path_buf(),
            source,
        }
        .into()),
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
        warned: false,
        recipients: envelope
            .recipients
            .iter()
            .cloned()
            .map(RecipientEntry::pending)
            .collect(),
    }
}

/// The `.done` record that says the message's delay warning was sent.
const DELAY_WARNED: &str = "delay-warned";

fn apply_done(entry: &mut MessageEntry, done: &[DoneRecord]) {
    for record in done {
        if record.state == DELAY_WARNED {
            entry.warned = true;
            continue;
        }
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
            delay_warning: Duration::ZERO,
        })
    }

    /// The outcomes of an attempt that delivered to `rcpt`.
    fn delivered(rcpt: &str) -> Vec<(String, Outcome)> {
        vec![(rcpt.into(), Outcome::Delivered("250 ok".into()))]
    }

    /// The outcomes of an attempt that `rcpt`'s server deferred.
    fn deferred(rcpt: &str) -> Vec<(String, Outcome)> {
        vec![(rcpt.into(), Outcome::Deferred("451 later".into()))]
    }

    fn envelope(rcpts: &[&str]) -> SpoolEnvelope {
        envelope_from("s@remote.test", rcpts)
    }

    fn envelope_from(sender: &str, rcpts: &[&str]) -> SpoolEnvelope {
        SpoolEnvelope {
            queue_id: QueueId::generate().to_string(),
            sender: sender.into(),
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
            q.record(&a, &delivered("x@a.test"), 1001).unwrap();
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
    async fn a_message_not_yet_attempted_skips_sled_and_survives_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let (fresh, later);
        {
            let (q, _) = Queue::open(dir.path(), policy()).unwrap();
            fresh = q.enqueue(envelope(&["x@a.test"]), b"m1\r\n").await.unwrap();
            later = q.enqueue(envelope(&["y@b.test"]), b"m2\r\n").await.unwrap();
            q.record(&later, &deferred("y@b.test"), 1001).unwrap();
            // Both are listed and shown, in arrival order.
            let listed: Vec<String> = q.list().unwrap().into_iter().map(|e| e.queue_id).collect();
            assert_eq!(listed, vec![fresh.to_string(), later.to_string()]);
            assert_eq!(q.show(fresh.as_str()).unwrap().unwrap().size, 4);
            q.flush().unwrap();
            // The crash: the queue is dropped with nothing else written.
        }
        {
            let index = Index::open(&dir.path().join("queue.sled")).unwrap();
            assert!(
                index.get(fresh.as_str()).unwrap().is_none(),
                "fresh entry reached sled"
            );
            let stored = index.get(later.as_str()).unwrap().unwrap();
            assert_eq!(stored.recipients[0].status, RecipientStatus::Deferred);
        }
        let (q, report) = Queue::open(dir.path(), policy()).unwrap();
        assert_eq!((report.rebuilt, report.queued), (1, 2));
        let entry = q.show(fresh.as_str()).unwrap().unwrap();
        assert_eq!(entry.recipients[0].status, RecipientStatus::Pending);
        assert_eq!(q.read(&fresh).unwrap().message, b"m1\r\n");
        assert_eq!(q.due_ids(1002), vec![fresh.to_string()]);
    }

    #[tokio::test]
    async fn a_fresh_message_keeps_its_body_in_memory_until_its_first_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let (q, _) = Queue::open(dir.path(), policy()).unwrap();
        let small = q.enqueue(envelope(&["x@a.test"]), b"m1\r\n").await.unwrap();
        let large_message = vec![b'x'; FRESH_BODY_MAX + 1];
        let large = q
            .enqueue(envelope(&["x@a.test"]), large_message)
            .await
            .unwrap();
        let later = q.enqueue(envelope(&["y@b.test"]), b"m3\r\n").await.unwrap();
        assert_eq!(
            q.fresh_body(small.as_str()).as_deref(),
            Some(&b"m1\r\n"[..])
        );
        assert!(q.fresh_body(large.as_str()).is_none(), "too large to keep");
        q.record(&later, &deferred("y@b.test"), 1001).unwrap();
        assert!(q.fresh_body(later.as_str()).is_none(), "no longer fresh");
        q.record(&small, &delivered("x@a.test"), 1001).unwrap();
        assert!(
            q.fresh_body(small.as_str()).is_none(),
            "gone with the message"
        );
        assert_eq!(q.fresh_bodies.lock().bytes, 0);

        let mut bodies = FreshBodies::default();
        let count = FRESH_BODIES_BUDGET / FRESH_BODY_MAX;
        for i in 0..=count {
            bodies.insert(&i.to_string(), vec![0; FRESH_BODY_MAX].into());
        }
        assert_eq!(
            (bodies.bodies.len(), bodies.bytes),
            (count, FRESH_BODIES_BUDGET),
            "the budget holds"
        );
        bodies.remove("0");
        assert!(bodies.has_room(FRESH_BODY_MAX) && !bodies.has_room(FRESH_BODY_MAX + 1));
    }

    #[tokio::test]
    async fn only_a_delivery_that_finishes_a_message_is_recorded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let (q, _) = Queue::open(dir.path(), policy()).unwrap();
        let one = q.enqueue(envelope(&["x@a.test"]), b"m\r\n").await.unwrap();
        assert!(
            q.record_if_quick(&one, &deferred("x@a.test"), 1001)
                .is_none(),
            "a deferral waits for disk"
        );
        assert!(
            q.record_if_quick(&one, &delivered("X@A.TEST"), 1001)
                .unwrap()
                .is_ok()
        );
        assert!(
            q.show(one.as_str()).unwrap().is_none(),
            "finished and removed"
        );

        let two = q
            .enqueue(envelope(&["x@a.test", "y@b.test"]), b"m\r\n")
            .await
            .unwrap();
        // One of two recipients: the .done line must be written (fsync).
        assert!(
            q.record_if_quick(&two, &delivered("x@a.test"), 1001)
                .is_none()
        );
        q.record(&two, &delivered("x@a.test"), 1001).unwrap();
        // The last one, but a .done file is there to unlink.
        assert!(
            q.record_if_quick(&two, &delivered("y@b.test"), 1001)
                .is_none()
        );
        q.record(&two, &delivered("y@b.test"), 1001).unwrap();
        assert!(q.show(two.as_str()).unwrap().is_none());
        assert!(
            q.record_if_quick(&two, &delivered("y@b.test"), 1001)
                .is_none(),
            "gone"
        );

        // The same address twice needs two outcomes, as in `record`.
        let twice = q
            .enqueue(envelope(&["x@a.test", "x@a.test"]), b"m\r\n")
            .await
            .unwrap();
        assert!(
            q.record_if_quick(&twice, &delivered("x@a.test"), 1001)
                .is_none()
        );
        // A busy queue lock (its holder may wait for an fsync) is not waited for.
        let both: Vec<_> = [delivered("x@a.test"), delivered("x@a.test")].concat();
        {
            let _held = q.lock.lock();
            assert!(q.record_if_quick(&twice, &both, 1001).is_none());
        }
        assert!(q.record_if_quick(&twice, &both, 1001).unwrap().is_ok());
        assert!(q.show(twice.as_str()).unwrap().is_none());
    }

    #[tokio::test]
    async fn index_entry_without_spool_file_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let id;
        {
            let (q, _) = Queue::open(dir.path(), policy()).unwrap();
            id = q.enqueue(envelope(&["x@a.test"]), b"m\r\n").await.unwrap();
            // Deferred once, so its entry is in sled, not only in memory.
            q.record(&id, &deferred("x@a.test"), 1001).unwrap();
            q.flush().unwrap();
        }
        // The spool (the truth) loses the message; the index still has it.
        std::fs::remove_dir_all(dir.path().join("spool/seg")).unwrap();
        let (q, report) = Queue::open(dir.path(), policy()).unwrap();
        assert_eq!(report.dropped, 1);
        assert!(q.show(id.as_str()).unwrap().is_none());
    }

    #[tokio::test]
    async fn outcomes_defer_then_finish_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let (q, _) = Queue::open(dir.path(), policy()).unwrap();
        let id = q
            .enqueue(envelope_from("", &["x@a.test", "y@a.test"]), b"m\r\n")
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
        let failed = q.record(&id, &deferred("x@a.test"), 1000 + 3600).unwrap();
        assert_eq!(failed, vec!["x@a.test"]);
        assert!(q.show(id.as_str()).unwrap().is_none());
        assert!(!q.spool_for_tests().exists(&id));
    }

    #[tokio::test]
    async fn admin_delete_and_bounce() {
        let dir = tempfile::tempdir().unwrap();
        let (q, _) = Queue::open(dir.path(), policy()).unwrap();
        let a = q.enqueue(envelope(&["x@a.test"]), b"m\r\n").await.unwrap();
        let b = q
            .enqueue(envelope_from("", &["x@a.test", "y@a.test"]), b"m\r\n")
            .await
            .unwrap();
        assert_eq!(q.list().unwrap().len(), 2);
        assert_eq!(q.delete(a.as_str()).unwrap(), Some(1));
        assert_eq!(q.delete(a.as_str()).unwrap(), None);
        assert_eq!(q.bounce(b.as_str()).unwrap(), Some(2));
        assert!(q.list().unwrap().is_empty());
        // On disk too, once the removal records are flushed.
        q.flush().unwrap();
        assert!(Spool::inspect(dir.path()).unwrap().ids.is_empty());
        assert_eq!(q.retry_now(Some("0000000000000000")).unwrap(), None);
    }

    /// The queued DSNs (sender `<>`): (id, recipients, message text).
    fn dsns(q: &Queue) -> Vec<(String, Vec<String>, String)> {
        q.list()
            .unwrap()
            .into_iter()
            .filter(|m| m.sender.is_empty())
            .map(|m| {
                let id = QueueId::parse(&m.queue_id).unwrap();
                let text = String::from_utf8(q.read(&id).unwrap().message).unwrap();
                let rcpts = m.recipients.iter().map(|r| r.address.clone()).collect();
                (m.queue_id, rcpts, text)
            })
            .collect()
    }

    #[tokio::test]
    async fn permanent_failures_queue_one_dsn_per_batch_to_the_sender() {
        let dir = tempfile::tempdir().unwrap();
        let options = QueueOptions {
            hostname: "mx.example.test".into(),
            ..QueueOptions::default()
        };
        let (q, _) = Queue::open_with(dir.path(), policy(), options.clone()).unwrap();
        let id = q
            .enqueue(
                envelope_from("alice@example.test", &["x@a.test", "y@a.test", "z@a.test"]),
                b"Subject: original\r\nFrom: alice@example.test\r\n\r\nsecret body\r\n".to_vec(),
            )
            .await
            .unwrap();
        q.record(
            &id,
            &[
                (
                    "x@a.test".into(),
                    Outcome::Failed("550 5.1.1 no such user".into()),
                ),
                (
                    "y@a.test".into(),
                    Outcome::Failed("552 5.2.2 mailbox full".into()),
                ),
                (
                    "z@a.test".into(),
                    Outcome::Deferred("451 4.2.0 later".into()),
                ),
            ],
            1100,
        )
        .unwrap();
        let d = dsns(&q);
        assert_eq!(d.len(), 1, "one DSN for the batch");
        assert_eq!(d[0].1, vec!["alice@example.test"]);
        let text = &d[0].2;
        assert!(
            text.contains("Final-Recipient: rfc822; x@a.test\r\nAction: failed\r\nStatus: 5.1.1")
        );
        assert!(
            text.contains("Final-Recipient: rfc822; y@a.test\r\nAction: failed\r\nStatus: 5.2.2")
        );
        assert!(!text.contains("z@a.test"));
        assert!(text.contains("Subject: original"));
        assert!(!text.contains("secret body"));
        assert!(text.contains("Reporting-MTA: dns; mx.example.test"));
        // The DSN is due at once, like any new message, and durable: it
        // survives losing the index.
        assert!(q.due_ids(1100).contains(&d[0].0));
        drop(q);
        std::fs::remove_dir_all(dir.path().join("queue.sled")).unwrap();
        let (q, report) = Queue::open_with(dir.path(), policy(), options).unwrap();
        assert_eq!(report.rebuilt, 2);
        assert_eq!(dsns(&q).len(), 1);

        // A DSN that fails is not bounced again (sender <>).
        let dsn = QueueId::parse(&dsns(&q)[0].0).unwrap();
        q.record(
            &dsn,
            &[(
                "alice@example.test".into(),
                Outcome::Failed("550 5.1.1 gone".into()),
            )],
            1200,
        )
        .unwrap();
        assert!(dsns(&q).is_empty());
        assert!(q.show(dsn.as_str()).unwrap().is_none());
    }

    #[tokio::test]
    async fn admin_bounce_and_expiry_send_dsns_and_null_senders_get_none() {
        let dir = tempfile::tempdir().unwrap();
        let (q, _) = Queue::open(dir.path(), policy()).unwrap();
        let a = q
            .enqueue(
                envelope_from("s@remote.test", &["x@a.test", "y@b.test"]),
                b"S: 1\r\n\r\nm\r\n".to_vec(),
            )
            .await
            .unwrap();
        assert_eq!(q.bounce(a.as_str()).unwrap(), Some(2));
        let d = dsns(&q);
        assert_eq!(d.len(), 1);
        assert!(d[0].2.contains("bounced by the queue administrator"));
        assert_eq!(d[0].2.matches("Action: failed").count(), 2);
        // Expiry (received at 1000, lifetime 3600).
        let b = q
            .enqueue(
                envelope_from("s@remote.test", &["x@a.test"]),
                b"m\r\n".to_vec(),
            )
            .await
            .unwrap();
        q.record(
            &b,
            &[(
                "x@a.test".into(),
                Outcome::Deferred("451 4.4.1 refused".into()),
            )],
            5000,
        )
        .unwrap();
        let d = dsns(&q);
        assert_eq!(d.len(), 2);
        assert!(
            d.iter()
                .any(|(_, _, t)| t.contains("gave up: queue lifetime exceeded"))
        );
        // Never a DSN about a DSN.
        let c = q
            .enqueue(envelope_from("", &["x@a.test"]), b"m\r\n".to_vec())
            .await
            .unwrap();
        q.bounce(c.as_str()).unwrap();
        assert_eq!(dsns(&q).len(), 2);
    }

    #[tokio::test]
    async fn one_delay_warning_per_message_after_delay_warning() {
        let dir = tempfile::tempdir().unwrap();
        let policy = RetryPolicy::new(&RetryConfig {
            first: Duration::from_secs(60),
            max: Duration::from_secs(600),
            lifetime: Duration::from_secs(36_000),
            delay_warning: Duration::from_secs(3600),
        });
        let (q, _) = Queue::open(dir.path(), policy.clone()).unwrap();
        let id = q
            .enqueue(envelope(&["x@a.test"]), b"m\r\n".to_vec())
            .await
            .unwrap();
        let later = (
            "x@a.test".to_string(),
            Outcome::Deferred("451 4.4.1 refused".into()),
        );
        q.record(&id, std::slice::from_ref(&later), 1000 + 60)
            .unwrap();
        assert!(dsns(&q).is_empty(), "too early for a warning");
        q.record(&id, std::slice::from_ref(&later), 1000 + 3600)
            .unwrap();
        let d = dsns(&q);
        assert_eq!(d.len(), 1);
        assert!(d[0].2.contains("Action: delayed\r\nStatus: 4.4.1"));
        assert!(d[0].2.contains("Will-Retry-Until:"));
        assert!(q.show(id.as_str()).unwrap().unwrap().warned);
        q.record(&id, std::slice::from_ref(&later), 1000 + 7200)
            .unwrap();
        assert_eq!(dsns(&q).len(), 1, "only once");

        // A rebuilt index remembers the warning (it is in the .done file).
        drop(q);
        std::fs::remove_dir_all(dir.path().join("queue.sled")).unwrap();
        let (q, _) = Queue::open(dir.path(), policy).unwrap();
        let entry = q.show(id.as_str()).unwrap().unwrap();
        assert!(entry.warned, "warned flag rebuilt from the spool");
        assert!(!entry.recipients[0].status.is_final());
        q.record(&id, std::slice::from_ref(&later), 1000 + 10_800)
            .unwrap();
        assert_eq!(dsns(&q).len(), 1, "still only once after a rebuild");
    }

    #[test]
    fn due_by_domain_takes_only_the_room_of_each_domain() {
        let mut schedule = Schedule::default();
        let domains = |list: &[&str]| -> Arc<[String]> {
            list.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .into()
        };
        for i in 0..50 {
            schedule.set(&format!("a{i:02}"), Some((100 + i, domains(&["a.test"]))));
        }
        schedule.set("both", Some((90, domains(&["a.test", "b.test"]))));
        schedule.set("b-late", Some((500, domains(&["b.test"]))));
        let ids = |picked: &[(String, Arc<[String]>)]| -> Vec<String> {
            picked.iter().map(|(id, _)| id.clone()).collect()
        };

        // Room for 3 at a.test, none at b.test; "a00" is in flight.
        let (picked, more) = schedule.due_by_domain(
            200,
            |d| if d == "a.test" { 3 } else { 0 },
            |id, _| id == "a00",
        );
        assert_eq!(ids(&picked), ["both", "a01", "a02"]);
        assert!(more);
        // b.test alone: "both" once, "b-late" is not due yet.
        let (picked, more) =
            schedule.due_by_domain(200, |d| usize::from(d == "b.test") * 5, |_, _| false);
        assert_eq!(ids(&picked), ["both"]);
        assert!(!more);
        // Re-keyed and removed entries leave every per-domain set.
        schedule.set("both", None);
        for i in 0..50 {
            schedule.set(&format!("a{i:02}"), None);
        }
        assert_eq!(schedule.by_domain.len(), 1);
        assert!(
            schedule.by_domain["b.test"]
                .iter()
                .all(|(_, id)| id == "b-late")
        );
    }

    #[tokio::test]
    async fn schedule_finds_due_work_in_time_order_without_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let (q, _) = Queue::open(dir.path(), policy()).unwrap();
        let mut ids = Vec::new();
        for _ in 0..5 {
            ids.push(
                q.enqueue(envelope_from("", &["x@a.test"]), b"m\r\n".to_vec())
                    .await
                    .unwrap(),
            );
        }
        // Defer all but the last to different times.
        for (i, id) in ids.iter().take(4).enumerate() {
            q.postpone(
                id,
                &["x@a.test".into()],
                2000 + i as i64 * 100,
                "451 4.4.1 backed off",
                1100,
            )
            .unwrap();
        }
        assert_eq!(q.due_ids(1100), vec![ids[4].to_string()]);
        assert_eq!(q.next_due_after(1100), Some(2000));
        assert_eq!(
            q.due_ids(2150),
            vec![ids[4].to_string(), ids[0].to_string(), ids[1].to_string()]
        );
        // Postponing counts no attempt.
        assert_eq!(
            q.show(ids[0].as_str()).unwrap().unwrap().recipients[0].attempts,
            0
        );
        // Held messages are not scheduled; released ones are due now.
        q.set_held(ids[3].as_str(), true).unwrap();
        assert!(!q.due_ids(9999).contains(&ids[3].to_string()));
        q.set_held(ids[3].as_str(), false).unwrap();
        assert!(q.due_ids(1100).contains(&ids[3].to_string()));
        // Finished messages leave it.
        q.record(&ids[4], &delivered("x@a.test"), 1100).unwrap();
        assert!(!q.due_ids(9999).contains(&ids[4].to_string()));
        // The schedule is rebuilt at start-up.
        drop(q);
        let (q, _) = Queue::open(dir.path(), policy()).unwrap();
        assert_eq!(q.due_ids(2150).len(), 3);
        assert_eq!(q.next_due_after(1100), Some(2000));
    }

    #[tokio::test]
    async fn damaged_index_is_set_aside_and_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let id;
        {
            let (q, _) = Queue::open(dir.path(), policy()).unwrap();
            id = q
                .enqueue(envelope(&["x@a.test"]), b"m\r\n".to_vec())
                .await
                .unwrap();
            q.flush().unwrap();
        }
        // Garbage over every file of the index.
        let sled_dir = dir.path().join("queue.sled");
        for entry in std::fs::read_dir(&sled_dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                std::fs::write(&path, b"\x00garbage\xff").unwrap();
            }
        }
        let (q, report) = Queue::open(dir.path(), policy()).unwrap();
        assert_eq!(report.queued, 1);
        assert!(q.show(id.as_str()).unwrap().is_some());
        // A file instead of the directory: also set aside.
        drop(q);
        std::fs::remove_dir_all(&sled_dir).unwrap();
        std::fs::write(&sled_dir, b"not a directory").unwrap();
        let (q, report) = Queue::open(dir.path(), policy()).unwrap();
        assert!(report.index_set_aside.is_some());
        assert_eq!(report.rebuilt, 1);
        assert!(q.show(id.as_str()).unwrap().is_some());
    }

    #[tokio::test]
    async fn free_space_probe_decides() {
        use crate::space::FixedSpace;
        use std::sync::atomic::AtomicU64;
        let dir = tempfile::tempdir().unwrap();
        let probe = Arc::new(FixedSpace(AtomicU64::new(10_000)));
        let options = QueueOptions {
            min_free_bytes: 5_000,
            probe: probe.clone(),
            ..QueueOptions::default()
        };
        let (q, _) = Queue::open_with(dir.path(), policy(), options).unwrap();
        assert!(q.check_space().is_ok());
        probe.0.store(4_999, Ordering::SeqCst);
        assert_eq!(
            q.check_space(),
            Err(DiskFull {
                free: 4_999,
                min: 5_000
            })
        );
    }
}
