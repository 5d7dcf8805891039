//! What happens when a recipient fails for good.
//!
//! Today: an error-level log line with everything an operator needs to
//! tell the sender by hand. Delivery status notifications are a later
//! issue; this is the one place they will hook in.

use crate::index::{MessageEntry, RecipientEntry};
use crate::spool::Spool;

/// Called once per recipient that failed permanently, while the message's
/// spool file still exists and before its index entry changes on disk.
///
/// TODO(dsn): build an RFC 3464 delivery status notification from the
/// spool file (`spool.path(..)`) and enqueue it to `message.sender` —
/// unless the sender is the null path `<>` (RFC 5321 6.1: never bounce a
/// bounce). Until then a failure is logged, never dropped silently.
pub fn on_permanent_failure(spool: &Spool, message: &MessageEntry, recipient: &RecipientEntry) {
    let _ = spool;
    tracing::error!(
        queue_id = %message.queue_id,
        journey = %message.journey_id,
        sender = %message.sender,
        recipient = %recipient.address,
        attempts = recipient.attempts,
        reply = %recipient.last_reply,
        "permanent delivery failure (no DSN sent yet: bounces are not implemented)"
    );
}
