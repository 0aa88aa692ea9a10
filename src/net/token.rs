//! The one bearer-token mechanism every client uses: a token fixed in the configuration, or
//! one obtained from credentials, cached, renewed ahead of its expiry and once after a 401
//! or 403.

use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;

/// An answer that says whether the server refused the token sent with it.
pub trait Refusal {
    fn status(&self) -> u16;
}

impl Refusal for super::Answer {
    fn status(&self) -> u16 {
        self.status
    }
}

/// How a client authorizes with a bearer token.
pub enum Bearer<C> {
    /// A token from the configuration, sent as is: nothing can renew it, so a 401 is final.
    Fixed(SecretString),
    /// Credentials the API trades for a token; the token is cached and renewed.
    Obtained { credentials: C, cache: TokenCache },
}

impl<C> Bearer<C> {
    /// Credentials for `api` (the name in metrics), traded for a token on first use.
    pub fn obtained(api: &'static str, credentials: C) -> Self {
        Self::Obtained {
            credentials,
            cache: TokenCache::new(api),
        }
    }

    /// Send with the current token (obtained with `obtain` when missing or about to expire).
    /// A 401 or 403 to an obtained token forgets it and sends once more with a fresh one: tokens
    /// die early (server restarts, revocation) and one renewal tells that from refused
    /// credentials (docs/delivery.md#auth-failures).
    /// The last answer comes back whatever it is; the caller classifies it.
    pub async fn send<'a, T, E, O, OFut, S, SFut>(&'a self, obtain: O, send: S) -> Result<T, E>
    where
        T: Refusal,
        O: Fn(&'a C) -> OFut,
        OFut: Future<Output = Result<(SecretString, Duration), E>>,
        S: Fn(SecretString) -> SFut,
        SFut: Future<Output = Result<T, E>>,
    {
        let (credentials, cache) = match self {
            Self::Fixed(token) => return send(token.clone()).await,
            Self::Obtained { credentials, cache } => (credentials, cache),
        };
        let token = cache.get(|| obtain(credentials)).await?;
        let answer = send(token.clone()).await?;
        let status = answer.status();
        if !matches!(status, 401 | 403) {
            return Ok(answer);
        }
        tracing::debug!(api = cache.api, status, "token refused; renewing it once");
        cache.forget(&token).await;
        let token = cache.get(|| obtain(credentials)).await?;
        send(token).await
    }
}

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

    struct Status(u16);

    impl Refusal for Status {
        fn status(&self) -> u16 {
            self.0
        }
    }

    /// A 401 or 403 renews an obtained token once and sends again; a second refusal is the
    /// answer. A fixed token is sent once whatever comes back.
    #[tokio::test]
    async fn a_401_or_403_renews_an_obtained_token_once() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let logins = AtomicU32::new(0);
        let obtain = |_: &()| {
            let n = logins.fetch_add(1, Ordering::Relaxed);
            async move { Ok::<_, ()>((SecretString::from(format!("t{n}")), Duration::from_secs(60))) }
        };
        let sent = std::sync::Mutex::new(Vec::new());
        let answer_with = |status: u16| {
            let sent = &sent;
            move |token: SecretString| {
                sent.lock().unwrap().push(token.expose_secret().to_owned());
                async move { Ok::<_, ()>(Status(status)) }
            }
        };
        let bearer = Bearer::obtained("test", ());
        assert_eq!(bearer.send(obtain, answer_with(200)).await.unwrap().0, 200);
        assert_eq!(bearer.send(obtain, answer_with(401)).await.unwrap().0, 401);
        assert_eq!(*sent.lock().unwrap(), ["t0", "t0", "t1"]);
        assert_eq!(logins.load(Ordering::Relaxed), 2);
        assert_eq!(bearer.send(obtain, answer_with(403)).await.unwrap().0, 403);
        assert_eq!(*sent.lock().unwrap(), ["t0", "t0", "t1", "t1", "t2"]);
        assert_eq!(logins.load(Ordering::Relaxed), 3);

        let fixed: Bearer<()> = Bearer::Fixed(SecretString::from("f"));
        assert_eq!(fixed.send(obtain, answer_with(401)).await.unwrap().0, 401);
        assert_eq!(
            sent.lock().unwrap().len(),
            6,
            "a fixed token is not sent twice"
        );
        assert_eq!(
            logins.load(Ordering::Relaxed),
            3,
            "a fixed token needs no login"
        );
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
