//! Free space on the spool's file system: below `spool.min_free_bytes`
//! new mail is refused at MAIL time (`452 4.3.1`, RFC 3463 "mail system
//! full") rather than accepted and then failing half-way through a write.
//! The probe is a trait so tests can pretend the disk is full.

use std::io;
use std::path::Path;

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
}
