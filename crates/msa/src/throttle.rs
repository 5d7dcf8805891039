//! Login throttling: failed AUTH attempts are counted per client address
//! and per account over a sliding window. Once either count reaches its
//! limit, further attempts from that address or for that account are
//! refused with `421 4.7.0` (and the session closed) without asking the
//! directory, until enough old failures have left the window.
//!
//! This bounds password guessing to `max_failures_per_account` tries per
//! window per account however many addresses an attacker uses, and one
//! address to `max_failures_per_client` tries across all accounts. A
//! success does not clear anything: an attacker holding one valid account
//! must not be able to reset the counters of an address.
//!
//! State is in memory, per MSA process, bounded in size.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use correo_smtp::Reply;

/// Above this many tracked keys, expired entries are swept; if that is
/// not enough the oldest half is dropped (a flood of distinct keys must
/// not grow memory without bound).
const MAX_KEYS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
pub struct ThrottleSettings {
    pub window: Duration,
    /// 0 = no limit.
    pub max_failures_per_client: usize,
    /// 0 = no limit.
    pub max_failures_per_account: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Client(IpAddr),
    Account(String),
}

#[derive(Debug)]
pub struct LoginThrottle {
    settings: ThrottleSettings,
    failures: Mutex<HashMap<Key, VecDeque<Instant>>>,
}

/// `421 4.7.0 too many failed logins, try later`.
pub fn throttled_reply() -> Reply {
    Reply::new(421, "4.7.0", "too many failed logins, try later")
}

fn client_key(ip: IpAddr) -> Key {
    // IPv6: one host usually owns a /64.
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            Key::Client(IpAddr::V6(std::net::Ipv6Addr::new(
                s[0], s[1], s[2], s[3], 0, 0, 0, 0,
            )))
        }
        IpAddr::V6(v6) => Key::Client(IpAddr::V4(v6.to_ipv4_mapped().unwrap_or([0; 4].into()))),
        v4 => Key::Client(v4),
    }
}

fn account_key(username: &str) -> Key {
    Key::Account(username.trim().to_ascii_lowercase())
}

impl LoginThrottle {
    pub fn new(settings: ThrottleSettings) -> Self {
        LoginThrottle {
            settings,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn recent(&self, map: &mut HashMap<Key, VecDeque<Instant>>, key: &Key, now: Instant) -> usize {
        let Some(times) = map.get_mut(key) else {
            return 0;
        };
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.settings.window)
        {
            times.pop_front();
        }
        let n = times.len();
        if n == 0 {
            map.remove(key);
        }
        n
    }

    /// Whether an attempt from `client` for `username` may go ahead.
    pub fn allowed(&self, client: IpAddr, username: &str) -> bool {
        self.allowed_at(client, username, Instant::now())
    }

    fn allowed_at(&self, client: IpAddr, username: &str, now: Instant) -> bool {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let s = self.settings;
        let over = |limit: usize, n: usize| limit != 0 && n >= limit;
        let by_client = self.recent(&mut map, &client_key(client), now);
        let by_account = self.recent(&mut map, &account_key(username), now);
        !(over(s.max_failures_per_client, by_client)
            || over(s.max_failures_per_account, by_account))
    }

    /// Records a failed attempt.
    pub fn failed(&self, client: IpAddr, username: &str) {
        self.failed_at(client, username, Instant::now());
    }

    fn failed_at(&self, client: IpAddr, username: &str, now: Instant) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_KEYS {
            let window = self.settings.window;
            map.retain(|_, t| t.back().is_some_and(|t| now.duration_since(*t) < window));
            if map.len() >= MAX_KEYS {
                let mut by_age: Vec<(Key, Instant)> = map
                    .iter()
                    .filter_map(|(k, t)| t.back().map(|t| (k.clone(), *t)))
                    .collect();
                by_age.sort_by_key(|(_, t)| *t);
                for (k, _) in by_age.into_iter().take(MAX_KEYS / 2) {
                    map.remove(&k);
                }
            }
        }
        for key in [client_key(client), account_key(username)] {
            let times = map.entry(key).or_default();
            times.push_back(now);
            // Never more entries than the largest limit needs.
            let keep = self
                .settings
                .max_failures_per_client
                .max(self.settings.max_failures_per_account)
                .max(1);
            while times.len() > keep {
                times.pop_front();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(per_client: usize, per_account: usize) -> LoginThrottle {
        LoginThrottle::new(ThrottleSettings {
            window: Duration::from_secs(300),
            max_failures_per_client: per_client,
            max_failures_per_account: per_account,
        })
    }

    #[test]
    fn per_account_across_addresses() {
        let t = throttle(100, 3);
        let now = Instant::now();
        for i in 1..=3u8 {
            let ip = IpAddr::from([192, 0, 2, i]);
            assert!(t.allowed_at(ip, "alice@example.test", now));
            t.failed_at(ip, "alice@example.test", now);
        }
        // A fourth address, the same account (any case): refused.
        assert!(!t.allowed_at([192, 0, 2, 9].into(), "ALICE@example.test", now));
        // Another account from a fresh address is fine.
        assert!(t.allowed_at([192, 0, 2, 9].into(), "bob@example.test", now));
        // The window slides.
        assert!(t.allowed_at(
            [192, 0, 2, 9].into(),
            "alice@example.test",
            now + Duration::from_secs(301)
        ));
    }

    #[test]
    fn per_client_across_accounts() {
        let t = throttle(2, 100);
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let now = Instant::now();
        t.failed_at(ip, "a@x.test", now);
        t.failed_at(ip, "b@x.test", now);
        // Same /64.
        assert!(!t.allowed_at("2001:db8::2".parse().unwrap(), "c@x.test", now));
        assert!(t.allowed_at("2001:db8:1::1".parse().unwrap(), "c@x.test", now));
        assert_eq!(
            throttled_reply().to_string(),
            "421 4.7.0 too many failed logins, try later"
        );
    }

    #[test]
    fn zero_disables_and_memory_is_bounded() {
        let t = throttle(0, 0);
        let now = Instant::now();
        for i in 0..(MAX_KEYS as u32 + 10) {
            t.failed_at(IpAddr::from(i.to_be_bytes()), &format!("u{i}@x.test"), now);
        }
        assert!(t.allowed_at([10, 0, 0, 1].into(), "u1@x.test", now));
        assert!(t.failures.lock().unwrap().len() <= MAX_KEYS + 2);
    }
}
