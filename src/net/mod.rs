//! What every remote client shares: one HTTP client builder, one rate limiter type, one retry
//! policy (exponential backoff with full jitter, `Retry-After` honoured).

mod retry;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

pub use retry::{FullJitter, RetryPolicy, parse_retry_after};

/// The HTTP client every remote API is called with: rustls, a whole-request timeout, our
/// user agent. Redirects are not followed: none of the APIs documents one, and following
/// one could send credentials elsewhere.
pub fn http_client(timeout: Duration) -> reqwest::Client {
    // reqwest is built without a default TLS provider so the binary needs no C toolchain
    // beyond what ring uses; install ring once per process. A second install is a no-op.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("contact-sync/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("static HTTP client configuration is valid")
}

/// A steady rate limiter: `per_second` requests a second, no bursts, so a remote limit of
/// 1.2× the configured rate is never tripped.
pub type Limiter = Arc<DefaultDirectRateLimiter>;

pub fn limiter(per_second: f64) -> Limiter {
    let period = Duration::from_secs_f64(1.0 / per_second.max(1e-6));
    let quota = Quota::with_period(period)
        .expect("period is positive")
        .allow_burst(NonZeroU32::MIN);
    Arc::new(RateLimiter::direct(quota))
}

/// Cut a remote body down to something safe to put in an error or a log line.
pub fn snippet(body: &str) -> String {
    const MAX: usize = 200;
    let body = body.trim();
    match body.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &body[..cut]),
        None => body.to_owned(),
    }
}
