//! When to retry: exponential backoff with full jitter, bounded by the configured delays.
//! Whether to retry is each client's own error classification.

use std::time::Duration;

use backon::BackoffBuilder;

use crate::config::RetrySettings;

/// Delays for attempt n (0-based) are drawn uniformly from
/// `[initial, min(max, initial * 2^(n+1))]`: "full jitter", floored at `initial` so a retry
/// never spins.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
    pub max_attempts: u32,
}

impl From<&RetrySettings> for RetryPolicy {
    fn from(s: &RetrySettings) -> Self {
        Self {
            initial: s.initial_backoff,
            max: s.max_backoff,
            max_attempts: s.max_attempts,
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `attempt` (0 = the first retry).
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self
            .initial
            .saturating_mul(
                1u32.checked_shl(attempt.saturating_add(1).min(31))
                    .unwrap_or(u32::MAX),
            )
            .min(self.max)
            .max(self.initial);
        let span = ceiling.saturating_sub(self.initial);
        self.initial + span.mul_f64(fastrand::f64())
    }
}

/// `RetryPolicy` as a backon backoff: at most `max_attempts` tries in all.
#[derive(Debug, Clone)]
pub struct FullJitter {
    policy: RetryPolicy,
    attempt: u32,
}

impl BackoffBuilder for RetryPolicy {
    type Backoff = FullJitter;
    fn build(self) -> FullJitter {
        FullJitter {
            policy: self,
            attempt: 0,
        }
    }
}

impl Iterator for FullJitter {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        if self.attempt + 1 >= self.policy.max_attempts {
            return None;
        }
        let delay = self.policy.delay(self.attempt);
        self.attempt += 1;
        Some(delay)
    }
}

/// `Retry-After` in seconds (the form every API here uses); HTTP dates are not worth a
/// dependency and fall back to the backoff.
pub fn parse_retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let secs: f64 = value.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3600.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            max_attempts: 6,
        }
    }

    #[test]
    fn delays_stay_between_initial_and_exponential_ceiling() {
        let p = policy();
        for attempt in 0..40 {
            for _ in 0..50 {
                let d = p.delay(attempt);
                let ceiling = (Duration::from_millis(100) * 2u32.pow((attempt + 1).min(20)))
                    .min(Duration::from_secs(2));
                assert!(d >= p.initial && d <= ceiling, "attempt {attempt}: {d:?}");
            }
        }
    }

    #[test]
    fn delays_are_jittered() {
        let p = policy();
        let draws: std::collections::HashSet<_> = (0..20).map(|_| p.delay(4)).collect();
        assert!(draws.len() > 1);
    }

    #[test]
    fn backoff_yields_one_delay_fewer_than_attempts() {
        assert_eq!(policy().build().count(), 5);
    }

    #[test]
    fn retry_after_seconds_are_parsed() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(parse_retry_after(&h), None);
        h.insert(reqwest::header::RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(parse_retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(reqwest::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(parse_retry_after(&h), None);
    }
}
