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

/// Removes every file in `dir`.
pub fn clear(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
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
