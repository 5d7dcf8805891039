//! What the gRPC services share: the live directory, the authenticator, the
//! Maildir store and the channel that announces new deliveries.

use crate::accounts::Directory;
use crate::address::Address;
use crate::auth::Authenticator;
use crate::maildir::{MailStore, Summary};
use std::sync::Arc;
use tokio::sync::broadcast;

/// Deliveries buffered for slow Watch streams before they start missing some.
const ARRIVALS_CAPACITY: usize = 1024;

/// A message just delivered to `user`'s Maildir.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub user: Address,
    pub summary: Summary,
}

/// Shared by every service of both listeners.
#[derive(Debug)]
pub struct State {
    pub directory: Arc<Directory>,
    pub auth: Arc<Authenticator>,
    pub store: MailStore,
    /// Fed by the delivery path, read by Mailbox.Watch.
    pub arrivals: broadcast::Sender<Arrival>,
}

impl State {
    pub fn new(directory: Arc<Directory>, auth: Arc<Authenticator>, store: MailStore) -> Self {
        let (arrivals, _) = broadcast::channel(ARRIVALS_CAPACITY);
        State {
            directory,
            auth,
            store,
            arrivals,
        }
    }
}
