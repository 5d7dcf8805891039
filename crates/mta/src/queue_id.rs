//! Queue ids: 16 hex digits, unique on this node and very likely unique
//! across nodes.
//!
//! Layout (64 bits): 36 bits of seconds since the Unix epoch (sortable by
//! arrival until the year 4147), 12 bits of a per-process counter (4096 ids
//! per second before it wraps into the next field), 16 random bits (so two
//! nodes or two restarts within one second rarely collide). The spool's
//! `create_new` rename check turns the remaining chance into a retry, never
//! an overwrite.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A queue id such as `0193a1b2c3d4e5f6`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(String);

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl QueueId {
    /// A fresh id.
    pub fn generate() -> QueueId {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let count = COUNTER.fetch_add(1, Ordering::Relaxed);
        let random: u64 = rand::random::<u16>() as u64;
        let value = ((secs & 0xF_FFFF_FFFF) << 28) | ((count & 0xFFF) << 16) | random;
        QueueId(format!("{value:016x}"))
    }

    /// Parses an id: exactly 16 lowercase hex digits (so it is safe as a
    /// file name).
    pub fn parse(s: &str) -> Option<QueueId> {
        (s.len() == 16
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| QueueId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_16_hex_and_unique() {
        let ids: HashSet<_> = (0..4000).map(|_| QueueId::generate()).collect();
        assert_eq!(ids.len(), 4000);
        for id in &ids {
            assert!(QueueId::parse(id.as_str()).is_some(), "{id}");
        }
    }

    #[test]
    fn parse_refuses_paths_and_wrong_lengths() {
        assert!(QueueId::parse("../../etc/passwd").is_none());
        assert!(QueueId::parse("0123456789abcdef0").is_none());
        assert!(QueueId::parse("0123456789ABCDEF").is_none());
        assert!(QueueId::parse("0123456789abcdef").is_some());
    }
}
