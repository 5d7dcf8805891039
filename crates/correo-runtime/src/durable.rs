//! Files that appear under their final name only when complete and fsynced.
//!
//! The MDA's Maildir needs this: write a new file, put it on disk, and only
//! then give it its visible name, refusing to replace a file that already
//! has that name. The classic way creates a
//! scratch name in a `tmp/` directory, links (or renames) it into place
//! and unlinks the scratch name: three directory operations, two of them
//! on a `tmp/` directory that every concurrent writer locks in turn.
//!
//! The MDA's Maildir does it for a whole delivery call at once: [`stage`]
//! writes each file under its scratch name in `tmp/`, one
//! [`sync_filesystem`] puts them all on disk (a file outside that file
//! system gets its own fsync), and [`publish`] gives each its name with
//! `link(2)`, which, unlike `rename(2)`, refuses to replace an existing
//! file, then unlinks the scratch name. (The MTA's spool is append-only
//! segments and needs none of this.)
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

/// The first half of a batch commit: creates `scratch` (which must not
/// exist) with the bytes `write` puts into it, and does not fsync it. A
/// batch stages every file, makes them all durable with one
/// [`sync_filesystem`], and only then gives each its name with [`publish`],
/// so a name still never points at a file whose octets are not on disk.
/// A failed write removes the scratch file.
pub fn stage(
    scratch: &Path,
    mode: u32,
    mut write: impl FnMut(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(scratch)
        .and_then(|mut file| write(&mut file));
    if let Err(e) = result {
        if e.kind() != io::ErrorKind::AlreadyExists {
            let _ = std::fs::remove_file(scratch);
        }
        return Err(e);
    }
    Ok(())
}

/// The last half of a batch commit: links a staged file, made durable since
/// by [`sync_filesystem`], at `dest` (refusing to replace a file there, which
/// `rename(2)` would do) and removes the scratch name. The caller
/// still fsyncs the directory of `dest`.
pub fn publish(scratch: &Path, dest: &Path) -> io::Result<()> {
    std::fs::hard_link(scratch, dest)?;
    let _ = std::fs::remove_file(scratch);
    Ok(())
}

/// A handle on one file system for [`sync_filesystem`], opened before the
/// writes it must cover: syncfs(2) reports the writeback errors that
/// happened since its descriptor was opened, so one opened after a failed
/// writeback would not see the failure.
#[derive(Debug)]
pub struct FileSystem {
    dir: File,
    dev: u64,
}

impl FileSystem {
    /// The file system that holds `dir`.
    pub fn of(dir: &Path) -> io::Result<FileSystem> {
        use std::os::unix::fs::MetadataExt;
        let dir = File::open(dir)?;
        let dev = dir.metadata()?.dev();
        Ok(FileSystem { dir, dev })
    }

    /// Whether `path` is on this file system. A mount point or a symbolic
    /// link below the handle's directory can lead to another one, which
    /// a sync of this one does not cover.
    pub fn holds(&self, path: &Path) -> io::Result<bool> {
        use std::os::unix::fs::MetadataExt;
        Ok(std::fs::metadata(path)?.dev() == self.dev)
    }
}

/// syncfs(2), then an fsync of the handle's directory: when it returns
/// `Ok`, everything written on the file system so far, octets and
/// metadata of every file, is on stable storage. One call stands for the
/// fsync of each file of a batch. The fsync is there because syncfs sends
/// the drive its cache flush before its last metadata writes (fs/sync.c:
/// `sync_fs`, then `sync_blockdev`); an fsync ends with one more flush
/// (ext4 without a journal, among others), so no name given afterwards
/// can point at an inode still in the drive's cache.
pub fn sync_filesystem(fs: &FileSystem) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    nix::unistd::syncfs(fs.dir.as_raw_fd()).map_err(io::Error::from)?;
    fs.dir.sync_all()
}

/// Whether syncfs(2) on the running kernel reports every failure: the
/// writeback errors of the file system (Linux 5.8) and those of its own
/// commit and flush (Linux 5.17). Before that it can return success after
/// a failed write, so [`sync_filesystem`] must not be relied on.
pub fn syncfs_reports_errors() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .and_then(|release| kernel_at_least(&release, (5, 17)))
        .unwrap_or(false)
}

/// Whether a kernel release string (`6.18.44-fc`) is at least `min`.
fn kernel_at_least(release: &str, min: (u32, u32)) -> Option<bool> {
    let mut parts = release.trim().split(['.', '-']);
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next()?.parse().ok()?;
    Some((major, minor) >= min)
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
    fn a_staged_file_gets_its_name_only_when_published() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FileSystem::of(dir.path()).unwrap();
        let scratch = dir.path().join("c.tmp");
        let dest = dir.path().join("c");
        stage(&scratch, 0o600, |f| f.write_all(b"staged")).unwrap();
        assert!(!dest.exists());
        let again = stage(&scratch, 0o600, |f| f.write_all(b"other")).unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::AlreadyExists);
        sync_filesystem(&fs).unwrap();
        publish(&scratch, &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"staged");
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!scratch.exists());
        // Publishing never replaces a file.
        stage(&scratch, 0o600, |f| f.write_all(b"second")).unwrap();
        let err = publish(&scratch, &dest).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&dest).unwrap(), b"staged");
        // A failed write leaves no scratch file.
        std::fs::remove_file(&scratch).unwrap();
        let failed = stage(&scratch, 0o600, |_| Err(io::Error::other("disk on fire"))).unwrap_err();
        assert_eq!(failed.to_string(), "disk on fire");
        assert!(!scratch.exists());
        // Nothing is left behind under another name.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn kernel_releases_compare_by_major_and_minor() {
        assert_eq!(kernel_at_least("6.18.44-fc-v857\n", (5, 17)), Some(true));
        assert_eq!(kernel_at_least("5.17.0", (5, 17)), Some(true));
        assert_eq!(kernel_at_least("5.15.0-91-generic", (5, 17)), Some(false));
        assert_eq!(kernel_at_least("4.19.0", (5, 17)), Some(false));
        assert_eq!(kernel_at_least("garbage", (5, 17)), None);
        // A handle holds its own directory; a missing path is an error.
        let dir = tempfile::tempdir().unwrap();
        let fs = FileSystem::of(dir.path()).unwrap();
        assert!(fs.holds(dir.path()).unwrap());
        assert!(fs.holds(&dir.path().join("missing")).is_err());
    }
}
