//! Segment files and the one thread that appends to them.
//!
//! Every write goes through the writer thread, so appends to a segment
//! never interleave and a segment never has a hole. The writer takes all
//! requests that queued up while it was busy, appends them, then calls
//! `fdatasync` once per segment it appended messages to, and only then
//! answers the callers (group commit: one flush for the whole batch, and
//! each caller waits for a flush that started after its own write).
//!
//! The map from queue id to record location lives behind a mutex that
//! readers share with the writer; the writer never does I/O while it holds
//! it except short positional writes of page-cache data.

use super::record::{self, HEADER_LEN, KIND_MESSAGE, KIND_REMOVE};
use crate::queue_id::QueueId;
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use tokio::sync::oneshot;

/// Where a message's record is: segment, offset of the record header, and
/// the record's length including that header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    pub seg: u64,
    pub offset: u64,
    pub len: u64,
}

struct Segment {
    file: Arc<File>,
    /// Where the next record goes.
    end: u64,
    /// Messages in this segment not yet removed.
    live: usize,
    /// A failed write could not be cut off: append nothing more here.
    broken: bool,
    /// Holds records that could not be read (damage, or an envelope this
    /// version does not understand): never deleted, left for an operator.
    pinned: bool,
}

#[derive(Default)]
struct State {
    locs: HashMap<QueueId, Loc>,
    segments: BTreeMap<u64, Segment>,
}

/// How the writer answers a caller.
pub enum Reply {
    Async(oneshot::Sender<io::Result<()>>),
    Blocking(mpsc::SyncSender<io::Result<()>>),
}

impl Reply {
    fn send(self, result: io::Result<()>) {
        match self {
            Reply::Async(tx) => {
                let _ = tx.send(result);
            }
            Reply::Blocking(tx) => {
                let _ = tx.send(result);
            }
        }
    }
}

enum Op {
    Store {
        id: QueueId,
        head: Vec<u8>,
        message: Vec<u8>,
        reply: Reply,
    },
    Remove {
        id: QueueId,
        seg: u64,
    },
    Flush {
        reply: Reply,
    },
}

/// Batches are cut at this many message octets, so one huge burst does not
/// hold every caller back until all of it is written.
const BATCH_BYTES: usize = 8 << 20;
/// Messages up to this size are copied behind their record header and
/// written with it in one call.
const INLINE_WRITE_MAX: usize = 64 * 1024;

/// The segments of one spool.
pub struct Segments {
    dir: PathBuf,
    state: Arc<Mutex<State>>,
    ops: Option<mpsc::Sender<Op>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

fn segment_name(seq: u64) -> String {
    format!("{seq:016x}.seg")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".seg")?;
    (hex.len() == 16)
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
}

fn gone() -> io::Error {
    io::Error::other("the spool writer has stopped")
}

fn copy_error(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

impl Segments {
    /// Opens `dir`, reads every segment back (cutting off torn tails),
    /// deletes segments with nothing live, and starts the writer.
    /// `message_id` extracts the queue id from a message record's body.
    pub fn open(
        dir: &Path,
        target_size: u64,
        message_id: impl Fn(&[u8]) -> Option<QueueId>,
    ) -> io::Result<Segments> {
        std::fs::create_dir_all(dir)?;
        let (state, seqs, _) = replay(dir, true, message_id)?;
        let mut writer = Writer {
            dir: dir.to_path_buf(),
            state: Arc::new(Mutex::new(state)),
            active: None,
            next_seq: seqs.last().map_or(1, |s| s + 1),
            target_size,
            unsynced: BTreeSet::new(),
        };
        writer.collect_garbage();
        let state = writer.state.clone();
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer.run(rx))?;
        Ok(Segments {
            dir: dir.to_path_buf(),
            state,
            ops: Some(tx),
            writer: Some(thread),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn send(&self, op: Op) -> io::Result<()> {
        self.ops
            .as_ref()
            .ok_or_else(gone)?
            .send(op)
            .map_err(|_| gone())
    }

    /// Appends a message record (body = `head` + `message`) durably.
    pub async fn store(&self, id: QueueId, head: Vec<u8>, message: Vec<u8>) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.send(Op::Store {
            id,
            head,
            message,
            reply: Reply::Async(tx),
        })?;
        rx.await.map_err(|_| gone())?
    }

    /// [`Segments::store`] for a caller on a blocking thread.
    pub fn store_blocking(&self, id: QueueId, head: Vec<u8>, message: Vec<u8>) -> io::Result<()> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Op::Store {
            id,
            head,
            message,
            reply: Reply::Blocking(tx),
        })?;
        rx.recv().map_err(|_| gone())?
    }

    /// Stores many messages (id, whole record body) with blocking waits,
    /// all sent before the first wait so they share flushes.
    pub fn store_many_blocking(&self, messages: Vec<(QueueId, Vec<u8>)>) -> io::Result<()> {
        let mut waits = Vec::with_capacity(messages.len());
        for (id, body) in messages {
            let (tx, rx) = mpsc::sync_channel(1);
            self.send(Op::Store {
                id,
                head: body,
                message: Vec::new(),
                reply: Reply::Blocking(tx),
            })?;
            waits.push(rx);
        }
        for rx in waits {
            rx.recv().map_err(|_| gone())??;
        }
        Ok(())
    }

    /// Forgets `id` at once and has the writer append its removal record.
    /// Like unlinking a file, the removal is not flushed by itself; a
    /// crash before the next flush delivers the message again.
    pub fn remove(&self, id: &QueueId) {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        let Some(loc) = state.locs.remove(id) else {
            return;
        };
        if let Some(s) = state.segments.get_mut(&loc.seg) {
            s.live = s.live.saturating_sub(1);
        }
        // Sent under the lock, so a store of the same id cannot come
        // between the forgetting and the removal record.
        let sent = self.send(Op::Remove {
            id: id.clone(),
            seg: loc.seg,
        });
        drop(guard);
        if sent.is_err() {
            tracing::warn!(queue_id = %id, "spool writer stopped; removal not recorded");
        }
    }

    /// Waits until every earlier write, removals included, is flushed.
    pub fn flush(&self) -> io::Result<()> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Op::Flush {
            reply: Reply::Blocking(tx),
        })?;
        rx.recv().map_err(|_| gone())?
    }

    /// The file and location of a message's record.
    pub fn locate(&self, id: &QueueId) -> Option<(Arc<File>, Loc)> {
        let state = self.state.lock();
        let loc = *state.locs.get(id)?;
        Some((state.segments.get(&loc.seg)?.file.clone(), loc))
    }

    pub fn contains(&self, id: &QueueId) -> bool {
        self.state.lock().locs.contains_key(id)
    }

    pub fn ids(&self) -> Vec<QueueId> {
        let mut ids: Vec<QueueId> = self.state.lock().locs.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Number of segment files (for tests and metrics).
    pub fn segment_count(&self) -> usize {
        self.state.lock().segments.len()
    }
}

impl Drop for Segments {
    /// Lets the writer finish what was asked of it (removals too), so a
    /// clean stop delivers nothing twice and a reopen sees every write.
    fn drop(&mut self) {
        self.ops.take();
        if let Some(thread) = self.writer.take() {
            let _ = thread.join();
        }
    }
}

/// The sequence numbers of the segment files in `dir`, oldest first.
fn segment_seqs(dir: &Path) -> io::Result<Vec<u64>> {
    let mut seqs: Vec<u64> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(parse_segment_name))
        .collect();
    seqs.sort_unstable();
    Ok(seqs)
}

/// Reads every segment of `dir` back into the id map. With `repair`, a
/// torn or damaged tail is cut off (only the spool's owner may do that);
/// without, the files are only read, so a running node can be inspected.
fn replay(
    dir: &Path,
    repair: bool,
    message_id: impl Fn(&[u8]) -> Option<QueueId>,
) -> io::Result<(State, Vec<u64>, u64)> {
    let seqs = segment_seqs(dir)?;
    let mut state = State::default();
    let mut torn = 0;
    for &seq in &seqs {
        let path = dir.join(segment_name(seq));
        let file = match OpenOptions::new().read(true).write(repair).open(&path) {
            Ok(file) => file,
            // Deleted by the running node's writer since the listing.
            Err(e) if !repair && e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        state.segments.insert(
            seq,
            Segment {
                file: Arc::new(file.try_clone()?),
                end: 0,
                live: 0,
                broken: false,
                pinned: false,
            },
        );
        let mut unreadable = false;
        let scan = record::scan(&file, |found| {
            let loc = Loc {
                seg: seq,
                offset: found.body_offset - HEADER_LEN as u64,
                len: HEADER_LEN as u64 + found.body.len() as u64,
            };
            match found.kind {
                KIND_MESSAGE => match message_id(found.body) {
                    Some(id) => {
                        if let Some(old) = state.locs.insert(id, loc) {
                            // A second copy (a crash during an import):
                            // the later one counts.
                            if let Some(s) = state.segments.get_mut(&old.seg) {
                                s.live = s.live.saturating_sub(1);
                            }
                        }
                        state.segments.get_mut(&seq).expect("inserted").live += 1;
                    }
                    None => {
                        unreadable = true;
                        tracing::error!(
                            segment = %path.display(),
                            offset = loc.offset,
                            "spool record without a readable envelope; skipped, segment kept"
                        )
                    }
                },
                _ => {
                    let id = std::str::from_utf8(found.body)
                        .ok()
                        .and_then(QueueId::parse);
                    if let Some(id) = id
                        && state.locs.get(&id).is_some_and(|l| l.seg == seq)
                    {
                        state.locs.remove(&id);
                        let s = state.segments.get_mut(&seq).expect("inserted");
                        s.live = s.live.saturating_sub(1);
                    }
                }
            }
        })?;
        if scan.skipped > 0 {
            unreadable = true;
            tracing::error!(
                segment = %path.display(),
                damaged = scan.skipped,
                "damaged spool records skipped (the records around them are kept); segment kept"
            );
        }
        let end = scan.end;
        let len = file.metadata()?.len();
        torn += len - end;
        if repair && end < len {
            // No complete record follows: an append that never finished,
            // so was never acknowledged.
            tracing::warn!(
                segment = %path.display(),
                offset = end,
                dropped = len - end,
                "cutting off a torn segment tail"
            );
            file.set_len(end)?;
            file.sync_all()?;
        }
        let segment = state.segments.get_mut(&seq).expect("inserted");
        segment.end = end;
        segment.pinned = unreadable;
    }
    Ok((state, seqs, torn))
}

/// The queued ids in the segments of `dir`, sorted, and the octets after
/// the last complete record of each segment (a torn append), read without
/// changing anything.
pub fn inspect(
    dir: &Path,
    message_id: impl Fn(&[u8]) -> Option<QueueId>,
) -> io::Result<(Vec<QueueId>, u64)> {
    if !dir.is_dir() {
        return Ok((Vec::new(), 0));
    }
    let (state, _, torn) = replay(dir, false, message_id)?;
    let mut ids: Vec<QueueId> = state.locs.into_keys().collect();
    ids.sort();
    Ok((ids, torn))
}

struct Writer {
    dir: PathBuf,
    state: Arc<Mutex<State>>,
    /// The segment new messages go to; always one this process created.
    active: Option<u64>,
    next_seq: u64,
    target_size: u64,
    /// Segments with removals appended since their last flush.
    unsynced: BTreeSet<u64>,
}

impl Writer {
    fn run(mut self, ops: mpsc::Receiver<Op>) {
        while let Ok(first) = ops.recv() {
            let mut batch = vec![first];
            let mut bytes = 0;
            while bytes < BATCH_BYTES {
                match ops.try_recv() {
                    Ok(op) => {
                        if let Op::Store { message, .. } = &op {
                            bytes += message.len();
                        }
                        batch.push(op);
                    }
                    Err(_) => break,
                }
            }
            self.handle(batch);
        }
        // The channel is closed: make the last removals durable too.
        if let Err(e) = self.flush_removals() {
            tracing::warn!(error = %e, "cannot flush the last spool removals");
        }
    }

    fn handle(&mut self, batch: Vec<Op>) {
        let mut written: Vec<(QueueId, Loc, Reply)> = Vec::new();
        let mut flushes = Vec::new();
        let mut batch_ids = HashSet::new();
        for op in batch {
            match op {
                Op::Store {
                    id,
                    head,
                    message,
                    reply,
                } => {
                    if batch_ids.contains(&id) || self.state.lock().locs.contains_key(&id) {
                        reply.send(Err(io::Error::new(
                            io::ErrorKind::AlreadyExists,
                            format!("queue id {id} is already spooled"),
                        )));
                        continue;
                    }
                    match self.append_message(&head, &message) {
                        Ok(loc) => {
                            batch_ids.insert(id.clone());
                            written.push((id, loc, reply));
                        }
                        Err(e) => reply.send(Err(e)),
                    }
                }
                Op::Remove { id, seg } => self.append_removal(&id, seg),
                Op::Flush { reply } => flushes.push(reply),
            }
        }
        // The group commit: one fdatasync per segment written.
        let segments: BTreeSet<u64> = written.iter().map(|(_, loc, _)| loc.seg).collect();
        let mut failed: HashMap<u64, io::Error> = HashMap::new();
        for seg in segments {
            let Some(file) = self.file(seg) else { continue };
            match file.sync_data() {
                Ok(()) => {
                    self.unsynced.remove(&seg);
                }
                Err(e) => {
                    tracing::error!(segment = seg, error = %e, "spool fdatasync failed; the batch is refused");
                    // What reached the disk is unknown: never append here again.
                    self.seal(seg);
                    failed.insert(seg, e);
                }
            }
        }
        let mut replies = Vec::with_capacity(written.len());
        {
            let mut state = self.state.lock();
            for (id, loc, reply) in written {
                if let Some(e) = failed.get(&loc.seg) {
                    replies.push((reply, Err(copy_error(e))));
                    continue;
                }
                if let Some(s) = state.segments.get_mut(&loc.seg) {
                    s.live += 1;
                }
                state.locs.insert(id, loc);
                replies.push((reply, Ok(())));
            }
        }
        for (reply, result) in replies {
            reply.send(result);
        }
        if !flushes.is_empty() {
            let result = self.flush_removals();
            for reply in flushes {
                reply.send(result.as_ref().map(|_| ()).map_err(copy_error));
            }
        }
        self.collect_garbage();
    }

    fn file(&self, seg: u64) -> Option<Arc<File>> {
        Some(self.state.lock().segments.get(&seg)?.file.clone())
    }

    fn seal(&mut self, seg: u64) {
        if self.active == Some(seg) {
            self.active = None;
        }
        if let Some(s) = self.state.lock().segments.get_mut(&seg) {
            s.broken = true;
        }
    }

    /// The active segment, or a new one when a record of `len` octets would
    /// take the active one past the target size.
    fn active_for(&mut self, len: u64) -> io::Result<(u64, Arc<File>, u64)> {
        if let Some(seg) = self.active {
            let state = self.state.lock();
            if let Some(s) = state.segments.get(&seg)
                && (s.end == 0 || s.end + len <= self.target_size)
            {
                return Ok((seg, s.file.clone(), s.end));
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let path = self.dir.join(segment_name(seq));
        let file = Arc::new(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)?,
        );
        // The new name must be durable before a record in it is acknowledged.
        File::open(&self.dir)?.sync_all()?;
        self.state.lock().segments.insert(
            seq,
            Segment {
                file: file.clone(),
                end: 0,
                live: 0,
                broken: false,
                pinned: false,
            },
        );
        self.active = Some(seq);
        Ok((seq, file, 0))
    }

    fn append_message(&mut self, head: &[u8], message: &[u8]) -> io::Result<Loc> {
        let body_len = head.len() + message.len();
        if body_len > u32::MAX as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "message too large for one spool record",
            ));
        }
        let len = (HEADER_LEN + body_len) as u64;
        let (seg, file, end) = self.active_for(len)?;
        // A small message goes into the same buffer: one write(2) per
        // record instead of two. A large one is not copied.
        let inline = message.len() <= INLINE_WRITE_MAX;
        let mut first =
            Vec::with_capacity(HEADER_LEN + head.len() + if inline { message.len() } else { 0 });
        first.extend_from_slice(&record::header(KIND_MESSAGE, &[head, message]));
        first.extend_from_slice(head);
        let result = if inline {
            first.extend_from_slice(message);
            file.write_all_at(&first, end)
        } else {
            file.write_all_at(&first, end)
                .and_then(|()| file.write_all_at(message, end + first.len() as u64))
        };
        if let Err(e) = result {
            self.cut_back(seg, &file, end);
            return Err(e);
        }
        if let Some(s) = self.state.lock().segments.get_mut(&seg) {
            s.end = end + len;
        }
        Ok(Loc {
            seg,
            offset: end,
            len,
        })
    }

    /// After a failed write: cut the partial record off so later records
    /// stay readable, or, if that fails too, seal the segment.
    fn cut_back(&mut self, seg: u64, file: &File, end: u64) {
        if let Err(e) = file.set_len(end) {
            tracing::error!(segment = seg, error = %e, "cannot cut off a failed spool write; segment sealed");
            self.seal(seg);
        }
    }

    fn append_removal(&mut self, id: &QueueId, seg: u64) {
        let target = {
            let state = self.state.lock();
            state
                .segments
                .get(&seg)
                .filter(|s| !s.broken)
                .map(|s| (s.file.clone(), s.end))
        };
        // A segment already deleted holds nothing to remove.
        let Some((file, end)) = target else { return };
        let body = id.as_str().as_bytes();
        let mut bytes = Vec::with_capacity(HEADER_LEN + body.len());
        bytes.extend_from_slice(&record::header(KIND_REMOVE, &[body]));
        bytes.extend_from_slice(body);
        match file.write_all_at(&bytes, end) {
            Ok(()) => {
                if let Some(s) = self.state.lock().segments.get_mut(&seg) {
                    s.end = end + bytes.len() as u64;
                }
                self.unsynced.insert(seg);
            }
            Err(e) => {
                // The message may come back after a restart: a duplicate.
                tracing::warn!(queue_id = %id, segment = seg, error = %e, "cannot record a spool removal");
                self.cut_back(seg, &file, end);
            }
        }
    }

    fn flush_removals(&mut self) -> io::Result<()> {
        let mut result = Ok(());
        for seg in std::mem::take(&mut self.unsynced) {
            if let Some(file) = self.file(seg)
                && let Err(e) = file.sync_data()
            {
                // What reached the disk is unknown: append nothing more here.
                self.seal(seg);
                result = Err(e);
            }
        }
        result
    }

    /// Deletes every segment, except the active one, with nothing live.
    fn collect_garbage(&mut self) {
        let dead: Vec<u64> = {
            let state = self.state.lock();
            state
                .segments
                .iter()
                .filter(|(seq, s)| Some(**seq) != self.active && s.live == 0 && !s.pinned)
                .map(|(seq, _)| *seq)
                .collect()
        };
        if dead.is_empty() {
            return;
        }
        for seq in dead {
            self.state.lock().segments.remove(&seq);
            self.unsynced.remove(&seq);
            let path = self.dir.join(segment_name(seq));
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(segment = %path.display(), error = %e, "cannot delete a finished spool segment");
            }
        }
        // Deletions are made durable so a finished segment never returns.
        if let Err(e) = File::open(&self.dir).and_then(|d| d.sync_all()) {
            tracing::warn!(error = %e, "cannot fsync the spool segment directory");
        }
    }
}
