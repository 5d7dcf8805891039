//! The set of MTA addresses a submission can go to.
//!
//! `mta.endpoints` names hosts, not machines: a scaled MTA service is one
//! name with one address per replica. The pool resolves every address of
//! every host, again every `refresh_interval`, keeps one lazily connected
//! tonic channel per address, and hands out addresses round-robin with the
//! healthy ones first. A failed address is set aside for a short, growing
//! back-off; it is still tried last rather than never, so that a restart
//! of the only MTA does not turn into 451s for the whole back-off.

use crate::config::HostPort;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// Longest time a failing address is set aside.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Limit for one name resolution, so a slow resolver cannot stall refreshes.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, Default)]
struct Health {
    failures: u32,
    down_until: Option<Instant>,
}

/// Round-robin order with health, free of I/O so it can be tested alone.
#[derive(Debug, Default)]
pub struct Selector {
    addrs: Vec<SocketAddr>,
    health: HashMap<SocketAddr, Health>,
    cursor: usize,
}

impl Selector {
    /// Replaces the address set (after a resolution); health of addresses
    /// that are still there is kept.
    pub fn set_addresses(&mut self, mut addrs: Vec<SocketAddr>) {
        addrs.sort();
        addrs.dedup();
        let keep: HashSet<_> = addrs.iter().copied().collect();
        self.health.retain(|a, _| keep.contains(a));
        self.addrs = addrs;
    }

    pub fn addresses(&self) -> &[SocketAddr] {
        &self.addrs
    }

    fn is_up(&self, addr: &SocketAddr, now: Instant) -> bool {
        self.health
            .get(addr)
            .and_then(|h| h.down_until)
            .is_none_or(|until| until <= now)
    }

    /// The order in which to try the addresses for one submission: starting
    /// one further than last time, healthy addresses first, then the ones
    /// in back-off (last resort).
    pub fn plan(&mut self, now: Instant) -> Vec<SocketAddr> {
        let n = self.addrs.len();
        if n == 0 {
            return Vec::new();
        }
        let start = self.cursor % n;
        self.cursor = self.cursor.wrapping_add(1);
        let rotated = self.addrs[start..]
            .iter()
            .chain(&self.addrs[..start])
            .copied();
        let (up, down): (Vec<_>, Vec<_>) = rotated.partition(|a| self.is_up(a, now));
        up.into_iter().chain(down).collect()
    }

    pub fn succeeded(&mut self, addr: SocketAddr) {
        self.health.remove(&addr);
    }

    /// Sets `addr` aside for 1 s, 2 s, 4 s … up to 30 s.
    pub fn failed(&mut self, addr: SocketAddr, now: Instant) {
        if !self.addrs.contains(&addr) {
            return;
        }
        let h = self.health.entry(addr).or_default();
        h.failures = h.failures.saturating_add(1);
        let backoff = Duration::from_secs(1u64 << (h.failures - 1).min(5)).min(MAX_BACKOFF);
        h.down_until = Some(now + backoff);
    }
}

/// Settings of the pool (from `[mta]`).
#[derive(Clone)]
pub struct PoolSettings {
    pub endpoints: Vec<HostPort>,
    pub tls: ClientTlsConfig,
    pub connect_timeout: Duration,
    pub submit_timeout: Duration,
    pub refresh_interval: Duration,
}

struct State {
    selector: Selector,
    /// Last good resolution per host; kept when a refresh fails.
    resolved: HashMap<HostPort, Vec<SocketAddr>>,
    channels: HashMap<SocketAddr, Channel>,
}

struct Inner {
    settings: PoolSettings,
    state: Mutex<State>,
}

/// Shared handle to the pool; clones are cheap.
#[derive(Clone)]
pub struct MtaPool {
    inner: Arc<Inner>,
}

impl MtaPool {
    /// A pool with nothing resolved yet; call [`MtaPool::refresh`] or
    /// [`MtaPool::start`].
    pub fn new(settings: PoolSettings) -> Self {
        MtaPool {
            inner: Arc::new(Inner {
                settings,
                state: Mutex::new(State {
                    selector: Selector::default(),
                    resolved: HashMap::new(),
                    channels: HashMap::new(),
                }),
            }),
        }
    }

    /// Resolves once now, then keeps refreshing in the background for as
    /// long as the pool is alive.
    pub async fn start(settings: PoolSettings) -> Self {
        let pool = MtaPool::new(settings);
        pool.refresh().await;
        let weak: Weak<Inner> = Arc::downgrade(&pool.inner);
        let every = pool.inner.settings.refresh_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                MtaPool { inner }.refresh().await;
            }
        });
        pool
    }

    /// Resolves every endpoint and updates the address set. A host that
    /// fails to resolve keeps its previous addresses: a DNS hiccup must not
    /// empty the pool.
    pub async fn refresh(&self) {
        let mut results = Vec::new();
        for ep in &self.inner.settings.endpoints {
            let target = ep.lookup_target();
            let result =
                tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(target.clone()))
                    .await;
            match result {
                Ok(Ok(addrs)) => results.push((ep.clone(), Some(addrs.collect::<Vec<_>>()))),
                Ok(Err(e)) => {
                    tracing::warn!(endpoint = %target, error = %e, "cannot resolve MTA endpoint; keeping previous addresses");
                    results.push((ep.clone(), None));
                }
                Err(_) => {
                    tracing::warn!(endpoint = %target, "resolving MTA endpoint timed out; keeping previous addresses");
                    results.push((ep.clone(), None));
                }
            }
        }
        let mut state = self.inner.state.lock().expect("pool lock");
        for (ep, addrs) in results {
            if let Some(addrs) = addrs {
                state.resolved.insert(ep, addrs);
            }
        }
        let all: Vec<SocketAddr> = state.resolved.values().flatten().copied().collect();
        let before: HashSet<SocketAddr> = state.selector.addresses().iter().copied().collect();
        state.selector.set_addresses(all);
        let now: HashSet<SocketAddr> = state.selector.addresses().iter().copied().collect();
        if before != now {
            let mut list: Vec<_> = now.iter().map(ToString::to_string).collect();
            list.sort();
            tracing::info!(addresses = %list.join(","), "MTA addresses changed");
        }
        state.channels.retain(|a, _| now.contains(a));
    }

    /// Addresses to try for one submission, in order.
    pub fn plan(&self) -> Vec<SocketAddr> {
        self.inner
            .state
            .lock()
            .expect("pool lock")
            .selector
            .plan(Instant::now())
    }

    /// Known addresses (sorted).
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.inner
            .state
            .lock()
            .expect("pool lock")
            .selector
            .addresses()
            .to_vec()
    }

    pub fn succeeded(&self, addr: SocketAddr) {
        self.inner
            .state
            .lock()
            .expect("pool lock")
            .selector
            .succeeded(addr);
    }

    pub fn failed(&self, addr: SocketAddr) {
        self.inner
            .state
            .lock()
            .expect("pool lock")
            .selector
            .failed(addr, Instant::now());
    }

    /// The cached channel to `addr`, created (not connected) on first use.
    pub fn channel(&self, addr: SocketAddr) -> Result<Channel, tonic::transport::Error> {
        let mut state = self.inner.state.lock().expect("pool lock");
        if let Some(ch) = state.channels.get(&addr) {
            return Ok(ch.clone());
        }
        let s = &self.inner.settings;
        // SocketAddr's Display brackets IPv6; the certificate is checked
        // against `mta.server_name` (set in the TLS config), not the IP.
        let channel = Endpoint::from_shared(format!("https://{addr}"))?
            .tls_config(s.tls.clone())?
            .connect_timeout(s.connect_timeout)
            .timeout(s.submit_timeout)
            .connect_lazy();
        state.channels.insert(addr, channel.clone());
        Ok(channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(ports: &[u16]) -> Vec<SocketAddr> {
        ports
            .iter()
            .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
            .collect()
    }

    #[test]
    fn round_robin_spreads_first_choices() {
        let mut s = Selector::default();
        s.set_addresses(addrs(&[3, 1, 2, 2]));
        assert_eq!(s.addresses(), addrs(&[1, 2, 3]));
        let now = Instant::now();
        let firsts: Vec<_> = (0..6).map(|_| s.plan(now)[0].port()).collect();
        assert_eq!(firsts, [1, 2, 3, 1, 2, 3]);
        // Every plan holds every address once (failover order).
        let mut plan = s.plan(now);
        plan.sort();
        assert_eq!(plan, addrs(&[1, 2, 3]));
    }

    #[test]
    fn failed_addresses_go_last_then_come_back() {
        let mut s = Selector::default();
        s.set_addresses(addrs(&[1, 2, 3]));
        let now = Instant::now();
        s.failed(addrs(&[1])[0], now);
        for _ in 0..3 {
            let plan = s.plan(now);
            assert_eq!(plan.len(), 3);
            assert_eq!(plan[2].port(), 1, "{plan:?}");
        }
        // After the back-off it is healthy again.
        let later = now + Duration::from_millis(1100);
        assert!(s.plan(later).len() == 3 && s.is_up(&addrs(&[1])[0], later));
        // Back-off grows with consecutive failures and is capped.
        for _ in 0..10 {
            s.failed(addrs(&[2])[0], now);
        }
        assert!(!s.is_up(&addrs(&[2])[0], now + Duration::from_secs(29)));
        assert!(s.is_up(&addrs(&[2])[0], now + MAX_BACKOFF));
        s.succeeded(addrs(&[2])[0]);
        assert!(s.is_up(&addrs(&[2])[0], now));
    }

    #[test]
    fn all_down_still_yields_a_plan() {
        let mut s = Selector::default();
        s.set_addresses(addrs(&[1, 2]));
        let now = Instant::now();
        s.failed(addrs(&[1])[0], now);
        s.failed(addrs(&[2])[0], now);
        assert_eq!(s.plan(now).len(), 2);
        assert!(Selector::default().plan(now).is_empty());
    }

    #[test]
    fn new_resolution_keeps_health_of_remaining_addresses() {
        let mut s = Selector::default();
        s.set_addresses(addrs(&[1, 2]));
        let now = Instant::now();
        s.failed(addrs(&[1])[0], now);
        s.failed(addrs(&[2])[0], now);
        s.set_addresses(addrs(&[2, 3]));
        assert!(!s.is_up(&addrs(&[2])[0], now));
        assert!(s.is_up(&addrs(&[3])[0], now));
        assert_eq!(s.plan(now).last().unwrap().port(), 2);
        // A failure reported for an address no longer resolved is ignored.
        s.failed(addrs(&[1])[0], now);
        assert!(!s.health.contains_key(&addrs(&[1])[0]));
    }

    #[tokio::test]
    async fn refresh_resolves_every_endpoint_and_keeps_last_good() {
        let pool = MtaPool::new(PoolSettings {
            endpoints: vec![
                HostPort::parse("127.0.0.1:7201").unwrap(),
                HostPort::parse("127.0.0.2:7201").unwrap(),
                HostPort::parse("[::1]:7202").unwrap(),
            ],
            tls: ClientTlsConfig::new(),
            connect_timeout: Duration::from_secs(1),
            submit_timeout: Duration::from_secs(1),
            refresh_interval: Duration::from_secs(5),
        });
        pool.refresh().await;
        assert_eq!(pool.addresses().len(), 3);
        let ch1 = pool.channel(pool.addresses()[0]);
        assert!(ch1.is_ok());
        pool.refresh().await;
        assert_eq!(pool.addresses().len(), 3);
    }
}
