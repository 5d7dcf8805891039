//! The retry schedule of deferred recipients: `first`, then doubling, capped
//! at `max`, each delay spread by ±10 % jitter so that recipients deferred
//! together (one remote outage) do not all come back in the same second;
//! after `lifetime` in the queue a temporary failure becomes permanent.

use crate::config::RetryConfig;
use std::time::Duration;

/// Spread of the jitter around the nominal delay.
const JITTER: f64 = 0.10;

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    first: Duration,
    max: Duration,
    lifetime: Duration,
    delay_warning: Duration,
}

impl RetryPolicy {
    pub fn new(config: &RetryConfig) -> Self {
        RetryPolicy {
            first: config.first,
            max: config.max,
            lifetime: config.lifetime,
            delay_warning: config.delay_warning,
        }
    }

    /// When a message received at `received_at` gives up (seconds).
    pub fn gives_up_at(&self, received_at: i64) -> i64 {
        received_at.saturating_add(self.lifetime.as_secs() as i64)
    }

    /// Whether a message received at `received_at` is due a delay warning
    /// at `now` (never when `delay_warning` is 0).
    pub fn warn_delay(&self, received_at: i64, now: i64) -> bool {
        !self.delay_warning.is_zero()
            && now.saturating_sub(received_at) >= self.delay_warning.as_secs() as i64
    }

    /// Nominal delay after the `attempts`-th failed attempt (1-based).
    pub fn base_delay(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(32);
        self.first
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// Delay with jitter; `unit` is a number in [0, 1) (random in
    /// production, fixed in tests). Never below one second.
    pub fn delay(&self, attempts: u32, unit: f64) -> Duration {
        let base = self.base_delay(attempts).as_secs_f64();
        let factor = 1.0 - JITTER + 2.0 * JITTER * unit.clamp(0.0, 1.0);
        Duration::from_secs_f64((base * factor).max(1.0))
    }

    /// Seconds since the epoch of the next attempt after a failure at `now`.
    pub fn next_attempt(&self, attempts: u32, now: i64) -> i64 {
        now + self.delay(attempts, rand::random::<f64>()).as_secs() as i64
    }

    /// Whether a message received at `received_at` has outlived its
    /// lifetime at `now`: its temporary failures become permanent.
    pub fn expired(&self, received_at: i64, now: i64) -> bool {
        now.saturating_sub(received_at) >= self.lifetime.as_secs() as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::new(&RetryConfig {
            first: Duration::from_secs(300),
            max: Duration::from_secs(4000),
            lifetime: Duration::from_secs(5 * 86_400),
            delay_warning: Duration::from_secs(4 * 3600),
        })
    }

    #[test]
    fn doubles_from_first_and_caps_at_max() {
        let p = policy();
        let secs: Vec<u64> = (1..=7).map(|a| p.base_delay(a).as_secs()).collect();
        assert_eq!(secs, vec![300, 600, 1200, 2400, 4000, 4000, 4000]);
        assert_eq!(p.base_delay(0).as_secs(), 300);
        assert_eq!(p.base_delay(u32::MAX).as_secs(), 4000);
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let p = policy();
        assert_eq!(p.delay(1, 0.0).as_secs(), 270);
        assert_eq!(p.delay(1, 0.5).as_secs(), 300);
        assert_eq!(p.delay(1, 0.999_999).as_secs(), 329);
        assert_eq!(p.delay(9, 1.0).as_secs(), 4400);
        for _ in 0..1000 {
            let next = p.next_attempt(2, 1000) - 1000;
            assert!((540..=660).contains(&next), "{next}");
        }
    }

    #[test]
    fn lifetime_turns_deferrals_permanent() {
        let p = policy();
        assert!(!p.expired(0, 5 * 86_400 - 1));
        assert!(p.expired(0, 5 * 86_400));
        assert_eq!(p.gives_up_at(10), 10 + 5 * 86_400);
    }

    #[test]
    fn delay_warning_after_its_time_and_never_when_zero() {
        let p = policy();
        assert!(!p.warn_delay(0, 4 * 3600 - 1));
        assert!(p.warn_delay(0, 4 * 3600));
        let off = RetryPolicy::new(&RetryConfig {
            delay_warning: Duration::ZERO,
            ..RetryConfig::default()
        });
        assert!(!off.warn_delay(0, i64::MAX));
    }
}
