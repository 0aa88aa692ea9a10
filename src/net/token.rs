//! A bearer token obtained from credentials, cached and renewed ahead of its expiry.

use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;

struct Cached {
    value: SecretString,
    renew_at: Instant,
}

/// One cached token per API client. Concurrent callers share one renewal.
pub struct TokenCache {
    /// The API's name, for metrics.
    api: &'static str,
    slot: Mutex<Option<Cached>>,
}

impl TokenCache {
    pub fn new(api: &'static str) -> Self {
        Self {
            api,
            slot: Mutex::new(None),
        }
    }

    /// The cached token while it is fresh, else a new one from `obtain`, which returns the
    /// token and how long it lives.
    pub async fn get<F, Fut, E>(&self, obtain: F) -> Result<SecretString, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(SecretString, Duration), E>>,
    {
        let mut slot = self.slot.lock().await;
        if let Some(cached) = slot.as_ref().filter(|c| Instant::now() < c.renew_at) {
            return Ok(cached.value.clone());
        }
        let (value, lifetime) = obtain().await?;
        crate::metrics::token_renewed(self.api);
        *slot = Some(Cached {
            value: value.clone(),
            renew_at: Instant::now() + renew_after(lifetime),
        });
        Ok(value)
    }

    /// Drop the cached token if it is still `used` (the server refused it), so the next `get`
    /// obtains a new one; a token another caller already replaced is kept.
    pub async fn forget(&self, used: &SecretString) {
        let mut slot = self.slot.lock().await;
        if slot
            .as_ref()
            .is_some_and(|c| c.value.expose_secret() == used.expose_secret())
        {
            *slot = None;
        }
    }
}

/// Renew a tenth of the lifetime early (at most a minute), so a token never expires in flight.
fn renew_after(lifetime: Duration) -> Duration {
    lifetime.saturating_sub((lifetime / 10).min(Duration::from_secs(60)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_happens_before_expiry() {
        assert_eq!(
            renew_after(Duration::from_secs(3600)),
            Duration::from_secs(3540)
        );
        assert_eq!(
            renew_after(Duration::from_secs(100)),
            Duration::from_secs(90)
        );
        assert_eq!(renew_after(Duration::ZERO), Duration::ZERO);
    }

    #[tokio::test]
    async fn a_fresh_token_is_reused_and_a_refused_one_replaced() {
        let cache = TokenCache::new("test");
        let obtain = |v: &'static str| async move {
            Ok::<_, ()>((SecretString::from(v), Duration::from_secs(60)))
        };
        let first = cache.get(|| obtain("one")).await.unwrap();
        assert_eq!(
            cache.get(|| obtain("two")).await.unwrap().expose_secret(),
            "one"
        );
        cache.forget(&first).await;
        assert_eq!(
            cache.get(|| obtain("two")).await.unwrap().expose_secret(),
            "two"
        );
    }
}
