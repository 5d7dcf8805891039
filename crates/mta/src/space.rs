//! Free space on the spool's file system: below `spool.min_free_bytes`
//! new mail is refused at MAIL time (`452 4.3.1`, RFC 3463 "mail system
//! full") rather than accepted and then failing half-way through a write.
//! The probe is a trait so tests can pretend the disk is full.

use parking_lot::Mutex;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Measures free space available to this process.
pub trait SpaceProbe: Send + Sync {
    fn free_bytes(&self, path: &Path) -> io::Result<u64>;
}

/// statvfs(2): blocks available to unprivileged users × fragment size.
pub struct Statvfs;

impl SpaceProbe for Statvfs {
    fn free_bytes(&self, path: &Path) -> io::Result<u64> {
        let stat = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
        Ok((stat.blocks_available() as u64).saturating_mul(stat.fragment_size() as u64))
    }
}

/// Another probe's answers, reused for a while: a full disk is still seen
/// within `ttl`, and a burst of mail asks the file system once per `ttl`
/// instead of once per MAIL.
pub struct Recent<P> {
    inner: P,
    ttl: Duration,
    last: Mutex<Option<(Instant, PathBuf, u64)>>,
}

impl<P: SpaceProbe> Recent<P> {
    pub fn new(inner: P, ttl: Duration) -> Self {
        Recent {
            inner,
            ttl,
            last: Mutex::new(None),
        }
    }
}

impl<P: SpaceProbe> SpaceProbe for Recent<P> {
    fn free_bytes(&self, path: &Path) -> io::Result<u64> {
        if let Some((at, p, free)) = &*self.last.lock()
            && p == path
            && at.elapsed() < self.ttl
        {
            return Ok(*free);
        }
        // Errors are not kept: the next MAIL asks again.
        let free = self.inner.free_bytes(path)?;
        *self.last.lock() = Some((Instant::now(), path.to_path_buf(), free));
        Ok(free)
    }
}

/// A fixed answer (tests).
pub struct FixedSpace(pub std::sync::atomic::AtomicU64);

impl SpaceProbe for FixedSpace {
    fn free_bytes(&self, _path: &Path) -> io::Result<u64> {
        Ok(self.0.load(std::sync::atomic::Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statvfs_reports_something_for_a_real_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Statvfs.free_bytes(dir.path()).unwrap() > 0);
        assert!(Statvfs.free_bytes(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn recent_answers_are_reused_only_within_the_ttl() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let path = Path::new("/spool");
        let fresh = Recent::new(FixedSpace(AtomicU64::new(10)), Duration::from_secs(3600));
        assert_eq!(fresh.free_bytes(path).unwrap(), 10);
        fresh.inner.0.store(5, Ordering::SeqCst);
        assert_eq!(fresh.free_bytes(path).unwrap(), 10, "within the ttl");
        assert_eq!(fresh.free_bytes(Path::new("/other")).unwrap(), 5);
        let stale = Recent::new(FixedSpace(AtomicU64::new(10)), Duration::ZERO);
        assert_eq!(stale.free_bytes(path).unwrap(), 10);
        stale.inner.0.store(5, Ordering::SeqCst);
        assert_eq!(stale.free_bytes(path).unwrap(), 5, "past the ttl");
    }
}
