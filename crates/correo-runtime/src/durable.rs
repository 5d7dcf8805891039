//! Files that appear under their final name only when complete and fsynced.
//!
//! Both the MTA's spool and the MDA's Maildir need the same thing: write a
//! new file, fsync it, and only then give it its visible name, refusing to
//! replace a file that already has that name. The classic way creates a
//! scratch name in a `tmp/` directory, links (or renames) it into place
//! and unlinks the scratch name: three directory operations, two of them
//! on a `tmp/` directory that every concurrent writer locks in turn.
//!
//! [`create_new_durable`] does exactly that, in one place for both roles:
//! scratch name in `tmp/`, write, fsync, `link(2)` into place (which, unlike
//! `rename(2)`, refuses to replace an existing file), unlink the scratch
//! name.
//!
//! An `O_TMPFILE` + `linkat` variant (no scratch name, one directory
//! operation) was measured and not kept: the link count it changes is inode
//! metadata that neither fsync before the link nor the directory fsync
//! writes, so it needs a second fsync of the file after the link, and that
//! halved the one-session rate (docs/BENCHMARKS.md, "CPU per message").
//!
//! It does not fsync the destination directory: callers do that
//! through a [`DirSyncer`], which fsyncs each directory once for every
//! batch of requests that arrived while the previous fsyncs ran (group
//! commit): concurrent writers share one directory fsync, and each caller
//! still waits for an fsync that started after its own link.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use tokio::sync::oneshot;

type SyncRequest = (PathBuf, oneshot::Sender<io::Result<()>>);

/// Group commit of directory fsyncs: one thread, one fsync per directory
/// per batch. Dropping the last handle stops the thread.
#[derive(Debug)]
pub struct DirSyncer {
    requests: mpsc::Sender<SyncRequest>,
}

impl DirSyncer {
    /// Starts the syncer thread, named `name` (for `top -H` and profiles).
    pub fn start(name: &str) -> io::Result<DirSyncer> {
        let (tx, rx) = mpsc::channel::<SyncRequest>();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch: HashMap<PathBuf, Vec<oneshot::Sender<io::Result<()>>>> =
                        HashMap::new();
                    for (dir, waiter) in std::iter::once(first).chain(rx.try_iter()) {
                        batch.entry(dir).or_default().push(waiter);
                    }
                    // Every request was sent after its link(2), so one fsync
                    // per directory now covers all of them.
                    for (dir, waiters) in batch {
                        let result = File::open(&dir).and_then(|d| d.sync_all());
                        for waiter in waiters {
                            let reply = match &result {
                                Ok(()) => Ok(()),
                                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                            };
                            let _ = waiter.send(reply);
                        }
                    }
                }
            })?;
        Ok(DirSyncer { requests: tx })
    }

    fn request(&self, dir: &Path) -> io::Result<oneshot::Receiver<io::Result<()>>> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send((dir.to_path_buf(), tx))
            .map_err(|_| gone())?;
        Ok(rx)
    }

    /// Returns once `dir` was fsynced after this call began.
    pub async fn sync(&self, dir: &Path) -> io::Result<()> {
        self.request(dir)?.await.map_err(|_| gone())?
    }

    /// [`DirSyncer::sync`] for a blocking thread (never on an async worker).
    pub fn sync_blocking(&self, dir: &Path) -> io::Result<()> {
        self.request(dir)?.blocking_recv().map_err(|_| gone())?
    }
}

fn gone() -> io::Error {
    io::Error::other("directory syncer stopped")
}

/// Creates `dest` with the bytes `write` puts into the file, fsynced before
/// `dest` exists. Fails with `AlreadyExists` (and leaves the existing file
/// alone) if `dest` exists. `scratch` is the scratch path (on the same file
/// system as `dest`, and unique to this writer); `mode` is the new file's
/// permission bits.
pub fn create_new_durable(
    dest: &Path,
    scratch: &Path,
    mode: u32,
    mut write: impl FnMut(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(scratch)?;
        write(&mut file)?;
        file.sync_all()?;
        drop(file);
        // link(2), unlike rename(2), refuses to replace `dest`.
        std::fs::hard_link(scratch, dest)
    })();
    let _ = std::fs::remove_file(scratch);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn concurrent_directory_syncs_all_return() {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let syncer = std::sync::Arc::new(DirSyncer::start("test-dirsync").unwrap());
        let mut tasks = Vec::new();
        for i in 0..60 {
            let syncer = syncer.clone();
            let dir = dirs[i % 3].path().to_path_buf();
            tasks.push(tokio::spawn(async move { syncer.sync(&dir).await }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let dir = dirs[0].path().to_path_buf();
        let blocking = syncer.clone();
        tokio::task::spawn_blocking(move || blocking.sync_blocking(&dir))
            .await
            .unwrap()
            .unwrap();
        let missing = dirs[0].path().join("missing");
        assert!(syncer.sync(&missing).await.is_err());
    }

    #[test]
    fn creates_complete_files_and_never_replaces_one() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("a");
        let scratch = dir.path().join("a.tmp");
        create_new_durable(&dest, &scratch, 0o600, |f| f.write_all(b"first")).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"first");
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let err =
            create_new_durable(&dest, &scratch, 0o600, |f| f.write_all(b"second")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&dest).unwrap(), b"first");
        // Nothing is left behind under another name.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_failed_write_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("b");
        let scratch = dir.path().join("b.tmp");
        let err = create_new_durable(&dest, &scratch, 0o600, |_| {
            Err(io::Error::other("disk on fire"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "disk on fire");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
