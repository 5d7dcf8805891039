//! Watching a Maildir `new/`: counting files (throughput) and timing each
//! file's arrival with inotify (latency).

use inotify::{Inotify, WatchMask};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Number of entries in `dir` (0 if it does not exist).
pub fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|e| e.count()).unwrap_or(0)
}

/// Empties `dir` for the next run without deleting its files: `dir` is
/// renamed aside (into its Maildir, which goes with the stack's or the
/// peer's directory at the end) and made again with the same owner and
/// mode.
///
/// Why not delete: on this machine's ext4 (no journal) inode allocation
/// first skips every inode deleted in the last 30 s (`recently_deleted` in
/// the kernel), reading each one's inode table block. Deleting the 2,000
/// files of one run right before the next made both servers' file
/// creations up to several times dearer than in a steady state — a cost
/// of the harness, not of either server.
pub fn clear(dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    static ASIDE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let Ok(meta) = std::fs::metadata(dir) else {
        return;
    };
    let n = ASIDE.fetch_add(1, Ordering::Relaxed);
    let name = format!("bench-aside-{}-{n}", std::process::id());
    let aside = dir.parent().map(|p| p.join(&name));
    let moved = aside.is_some_and(|aside| {
        std::fs::rename(dir, &aside).is_ok()
            && std::fs::create_dir(dir).is_ok()
            && std::fs::set_permissions(dir, meta.permissions()).is_ok()
            && std::os::unix::fs::chown(dir, Some(meta.uid()), Some(meta.gid())).is_ok()
    });
    if !moved && let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Polls until `dir` holds at least `n` entries; returns when that was
/// seen, or None after `timeout`.
///
/// Every 20 ms, not faster: reading a directory of thousands of entries
/// takes its lock shared, which stalls the server's links into it, and the
/// poll itself costs CPU both servers need. A 3 ms poll cost both servers
/// up to half their rate on this 2-core machine; 20 ms bounds the timing
/// error at 20 ms per run (about 1% of a 2,000-message run).
pub fn wait_count(dir: &Path, n: usize, timeout: Duration) -> Option<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        if count(dir) >= n {
            return Some(Instant::now());
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Records the arrival instant of every file linked or renamed into a
/// directory.
pub struct Watcher {
    stop: Arc<AtomicBool>,
    events: Arc<Mutex<Vec<(String, Instant)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    dir: PathBuf,
}

impl Watcher {
    pub fn start(dir: &Path) -> anyhow::Result<Watcher> {
        let mut inotify = Inotify::init()?;
        inotify
            .watches()
            .add(dir, WatchMask::CREATE | WatchMask::MOVED_TO)?;
        let stop = Arc::new(AtomicBool::new(false));
        let events = Arc::new(Mutex::new(Vec::new()));
        let (s, ev) = (stop.clone(), events.clone());
        let thread = std::thread::spawn(move || {
            let mut buffer = [0u8; 64 * 1024];
            while !s.load(Ordering::Relaxed) {
                match inotify.read_events(&mut buffer) {
                    Ok(batch) => {
                        let now = Instant::now();
                        let mut ev = ev.lock().unwrap();
                        for e in batch {
                            if let Some(name) = e.name {
                                ev.push((name.to_string_lossy().into_owned(), now));
                            }
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    Err(_) => break,
                }
            }
        });
        Ok(Watcher {
            stop,
            events,
            thread: Some(thread),
            dir: dir.to_path_buf(),
        })
    }

    pub fn len(&self) -> usize {
        self.events.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops watching; returns (X-Bench-Seq of the file, arrival) pairs.
    pub fn finish(mut self) -> Vec<(u64, Instant)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let events = std::mem::take(&mut *self.events.lock().unwrap());
        events
            .into_iter()
            .filter_map(|(name, at)| Some((bench_seq(&self.dir.join(name))?, at)))
            .collect()
    }
}

/// The `X-Bench-Seq:` header value of a message file.
pub fn bench_seq(path: &Path) -> Option<u64> {
    use std::io::Read;
    let mut head = vec![0u8; 8192];
    let mut file = std::fs::File::open(path).ok()?;
    let n = file.read(&mut head).ok()?;
    let text = String::from_utf8_lossy(&head[..n]);
    text.lines()
        .find_map(|l| l.strip_prefix("X-Bench-Seq:"))
        .and_then(|v| v.trim().parse().ok())
}
