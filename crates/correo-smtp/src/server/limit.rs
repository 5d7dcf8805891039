//! Connection limits for SMTP listeners: at most `total` sessions at once,
//! and at most `per_client` from one client address (an IPv6 client counts
//! per /64, since one host usually owns a whole /64). A listener asks for a
//! [`ConnectionPermit`] before it starts a session and holds it for the
//! session's life; over a limit it refuses the connection with
//! [`LimitExceeded::reply`] (`421 4.7.0 too many connections`) through
//! [`super::refuse`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::reply::Reply;

/// Shared by every listener of one role (MSA: 587 and 465 together).
#[derive(Debug)]
pub struct ConnectionLimiter {
    total: usize,
    per_client: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    open: usize,
    by_client: HashMap<IpAddr, usize>,
}

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    #[error("too many connections in total")]
    Total,
    #[error("too many connections from this client")]
    PerClient,
}

impl LimitExceeded {
    /// `421 4.7.0 {hostname} too many connections, try again later`.
    pub fn reply(&self, hostname: &str) -> Reply {
        let what = match self {
            LimitExceeded::Total => "too many connections",
            LimitExceeded::PerClient => "too many connections from your address",
        };
        Reply::new(421, "4.7.0", format!("{hostname} {what}, try again later"))
    }
}

/// One admitted connection; released when dropped.
#[derive(Debug)]
pub struct ConnectionPermit {
    limiter: Arc<ConnectionLimiter>,
    client: IpAddr,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut state = self.limiter.lock();
        state.open = state.open.saturating_sub(1);
        if let Some(n) = state.by_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                state.by_client.remove(&self.client);
            }
        }
    }
}

/// The key a client address is counted under.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl ConnectionLimiter {
    /// `total` and `per_client` of 0 mean "no limit".
    pub fn new(total: usize, per_client: usize) -> Arc<Self> {
        let unlimited = |n: usize| if n == 0 { usize::MAX } else { n };
        Arc::new(ConnectionLimiter {
            total: unlimited(total),
            per_client: unlimited(per_client),
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits one more connection from `client`, or says which limit it hits.
    pub fn try_acquire(
        self: &Arc<Self>,
        client: IpAddr,
    ) -> Result<ConnectionPermit, LimitExceeded> {
        let client = client_key(client);
        let mut state = self.lock();
        if state.open >= self.total {
            return Err(LimitExceeded::Total);
        }
        let n = state.by_client.entry(client).or_insert(0);
        if *n >= self.per_client {
            return Err(LimitExceeded::PerClient);
        }
        *n += 1;
        state.open += 1;
        drop(state);
        Ok(ConnectionPermit {
            limiter: Arc::clone(self),
            client,
        })
    }

    /// Connections currently admitted.
    pub fn open(&self) -> usize {
        self.lock().open
    }

    /// Connections currently admitted from `client` (its /64 for IPv6).
    pub fn open_from(&self, client: IpAddr) -> usize {
        self.lock()
            .by_client
            .get(&client_key(client))
            .copied()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_client_and_total() {
        let l = ConnectionLimiter::new(3, 2);
        let a1 = l.try_acquire(ip("192.0.2.1")).unwrap();
        let _a2 = l.try_acquire(ip("192.0.2.1")).unwrap();
        assert_eq!(
            l.try_acquire(ip("192.0.2.1")).unwrap_err(),
            LimitExceeded::PerClient
        );
        let _b1 = l.try_acquire(ip("192.0.2.2")).unwrap();
        assert_eq!(
            l.try_acquire(ip("192.0.2.3")).unwrap_err(),
            LimitExceeded::Total
        );
        drop(a1);
        assert_eq!(l.open(), 2);
        let _a3 = l.try_acquire(ip("192.0.2.1")).unwrap();
        assert_eq!(l.open_from(ip("192.0.2.1")), 2);
        let r = LimitExceeded::Total.reply("mx.example.test");
        assert_eq!((r.code, r.enhanced.as_deref()), (421, Some("4.7.0")));
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let l = ConnectionLimiter::new(0, 1);
        let _a = l.try_acquire(ip("2001:db8::1")).unwrap();
        assert!(l.try_acquire(ip("2001:db8::2")).is_err());
        assert!(l.try_acquire(ip("2001:db8:0:1::1")).is_ok());
        let _v4 = l.try_acquire(ip("192.0.2.7")).unwrap();
        assert!(l.try_acquire(ip("::ffff:192.0.2.7")).is_err());
    }

    #[test]
    fn zero_means_unlimited() {
        let l = ConnectionLimiter::new(0, 0);
        let permits: Vec<_> = (0..1000)
            .map(|_| l.try_acquire(ip("192.0.2.1")).unwrap())
            .collect();
        assert_eq!(l.open(), 1000);
        drop(permits);
        assert_eq!(l.open(), 0);
        assert_eq!(l.open_from(ip("192.0.2.1")), 0);
    }
}
