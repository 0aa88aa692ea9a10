//! What every remote client shares: one HTTP client builder, one steady pace, one retry
//! policy (exponential backoff with full jitter, `Retry-After` honoured), adaptive concurrency.

mod concurrency;
mod retry;
mod token;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::metrics;

use concurrency::{Concurrency, Signal};
pub use retry::{RetryPolicy, parse_retry_after};
pub use token::{Bearer, Refusal};

/// The HTTP client could not be built, typically because the system has no CA certificates.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the HTTP client (are the system CA certificates installed?): {0}")]
pub struct HttpSetupError(String);

/// The HTTP client every remote API is called with: rustls with the system's CA certificates,
/// a whole-request timeout, our user agent. Redirects are not followed: none of the APIs
/// documents one, and following one could send credentials elsewhere.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, HttpSetupError> {
    // reqwest is built without a default TLS provider so the binary needs no C toolchain
    // beyond what ring uses; install ring once per process. A second install is a no-op.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("contact-sync/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| HttpSetupError(describe_reqwest(e)))
}

/// A steady pace: `per_second` requests a second, no bursts, so a remote limit of 1.2× the
/// configured rate is never tripped. Requests wait in arrival order, one at a time for the
/// next slot; a request that wakes up late, by at most half a period, leaves the next slot a
/// period after its own, so a loaded machine's late timers cost nothing. A limiter that checks
/// again after waking (governor's `until_ready`) lost each wake-up's delay: 2–6 % of the rate
/// here (docs/performance.md). Later than that, the pace slips: a stalled process catches up
/// by at most half a period, never in a burst, and a lull leaves no credit.
struct Pacer {
    period: Duration,
    /// When the next request may leave (a time past: at once).
    next: tokio::sync::Mutex<tokio::time::Instant>,
}

impl Pacer {
    fn new(per_second: f64) -> Self {
        Self {
            period: Duration::from_secs_f64(1.0 / per_second.max(1e-6)),
            next: tokio::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Wait for this request's slot; true when that meant waiting.
    async fn wait(&self) -> bool {
        let mut next = self.next.lock().await;
        let now = tokio::time::Instant::now();
        let slot = (*next).max(now);
        if slot > now {
            tokio::time::sleep_until(slot).await;
        }
        *next = self.after(slot, tokio::time::Instant::now());
        slot > now
    }

    /// The slot after one due at `slot` whose request left at `left`.
    fn after(
        &self,
        slot: tokio::time::Instant,
        left: tokio::time::Instant,
    ) -> tokio::time::Instant {
        slot.max(left - self.period / 2) + self.period
    }
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

/// How long a 429 without `Retry-After` holds a destination.
const DEFAULT_RATE_LIMIT_PAUSE: Duration = Duration::from_secs(1);

/// Why an answer's body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("{0}")]
    Transport(reqwest::Error),
    /// The server sent (or announced) more than `http.max_body`; reading stopped there.
    #[error("answer body exceeds http.max_body ({limit} bytes){}", .announced.map(|n| format!(": Content-Length {n}")).unwrap_or_default())]
    TooLarge {
        limit: usize,
        announced: Option<u64>,
    },
}

impl BodyError {
    /// A human cause without the URL (some APIs carry keys in the query).
    pub fn describe(self) -> String {
        match self {
            Self::Transport(e) => describe_reqwest(e),
            too_large => too_large.to_string(),
        }
    }
}

/// Read a body chunk by chunk, refusing it once it exceeds `max` bytes (at once when
/// `Content-Length` already says so), so memory never follows what a server chooses to send.
pub async fn read_body(mut response: reqwest::Response, max: usize) -> Result<Vec<u8>, BodyError> {
    let announced = response.content_length();
    if announced.is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge {
            limit: max,
            announced,
        });
    }
    // Trust a small announced length for the first allocation only; chunks decide the rest.
    let mut body = Vec::with_capacity(announced.map_or(0, |n| n as usize).min(max));
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Transport)? {
        if body.len() + chunk.len() > max {
            return Err(BodyError::TooLarge {
                limit: max,
                announced,
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A whole HTTP answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub body: String,
}

/// An API's admission control: its steady pace plus a pause every request honours, so one
/// 429 holds back the whole API, not just the request that got it; for a destination also an
/// adaptive bound on requests in flight. Every request to a remote API goes through one, and
/// is counted in the metrics.
pub struct Gate {
    /// The API's name, for metrics.
    name: &'static str,
    pacer: Pacer,
    per_second: f64,
    /// Destinations only (the source reads one page at a time): what tells a destination's
    /// gate from the source's, for the metrics its requests count in.
    concurrency: Option<Concurrency>,
    paused_until: std::sync::Mutex<Option<tokio::time::Instant>>,
    /// `http.max_body`: the most of an answer this API may make us hold.
    max_body: usize,
    /// Requests sent since start: the pusher's proof that a chunk did something.
    sent: AtomicU64,
}

impl Gate {
    /// The gate of a destination: at most `max_in_flight` requests in flight, fewer when its
    /// latency says fewer cover `per_second` (see [`Concurrency`]).
    pub fn new(name: &'static str, per_second: f64, max_in_flight: u32, max_body: usize) -> Self {
        Self {
            concurrency: Some(Concurrency::new(name, per_second, max_in_flight as usize)),
            ..Self::source(name, per_second, max_body)
        }
    }

    fn is_destination(&self) -> bool {
        self.concurrency.is_some()
    }

    /// The gate of the source.
    pub fn source(name: &'static str, per_second: f64, max_body: usize) -> Self {
        Self {
            name,
            max_body,
            pacer: Pacer::new(per_second),
            per_second,
            concurrency: None,
            paused_until: std::sync::Mutex::new(None),
            sent: AtomicU64::new(0),
        }
    }

    /// Wait out any pause, then for a slot of the pace; a pause that began while waiting for
    /// the slot is waited out too (the slot is given up).
    pub async fn ready(&self) {
        let mut waited = false;
        loop {
            while let Some(until) = self.paused_until() {
                waited = true;
                tokio::time::sleep_until(until).await;
            }
            waited |= self.pacer.wait().await;
            if self.paused_until().is_none() {
                break;
            }
        }
        if waited {
            metrics::rate_limit_wait(self.name);
        }
    }

    /// The end of a pause still running.
    fn paused_until(&self) -> Option<tokio::time::Instant> {
        let until = (*self.paused_until.lock().expect("pause lock"))?;
        (until > tokio::time::Instant::now()).then_some(until)
    }

    /// Hold every request for `duration` from now (a longer pause already set wins).
    pub fn pause(&self, duration: Duration, reason: &'static str) {
        if self.is_destination() {
            metrics::destination_paused(self.name, reason);
        }
        let until = tokio::time::Instant::now() + duration;
        let mut slot = self.paused_until.lock().expect("pause lock");
        if slot.is_none_or(|current| current < until) {
            *slot = Some(until);
        }
    }

    /// Wait for admission, send, and read the whole answer (at most `http.max_body`).
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Result<Answer, BodyError> {
        let max = self.max_body;
        self.send_with(request, |response| async move {
            let status = response.status().as_u16();
            let retry_after = parse_retry_after(response.headers());
            let body = read_body(response, max).await?;
            Ok(Answer {
                status,
                retry_after,
                body: String::from_utf8_lossy(&body).into_owned(),
            })
        })
        .await
    }

    /// Wait for admission, send, and read the answer with `read`, for a client that reads
    /// answers its own way. A 429 pauses the gate at once, so requests queued behind this one
    /// wait too. Room in flight is taken before the pace, so requests leave at its
    /// pace, never in a burst when room frees up; latency is measured from when it lets the
    /// request go.
    pub async fn send_with<T, F, Fut>(
        &self,
        request: reqwest::RequestBuilder,
        read: F,
    ) -> Result<T, BodyError>
    where
        F: FnOnce(reqwest::Response) -> Fut,
        Fut: Future<Output = Result<T, BodyError>>,
    {
        let permit = match &self.concurrency {
            Some(concurrency) => Some(concurrency.acquire().await),
            None => None,
        };
        self.ready().await;
        self.sent.fetch_add(1, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let (status, answer) = match request.send().await {
            Err(e) => (None, Err(BodyError::Transport(e))),
            Ok(response) => {
                let status = response.status().as_u16();
                if status == 429 {
                    let retry_after = parse_retry_after(response.headers());
                    self.pause(
                        retry_after.unwrap_or(DEFAULT_RATE_LIMIT_PAUSE),
                        "rate_limited",
                    );
                }
                (Some(status), read(response).await)
            }
        };
        let outcome = match (&answer, status) {
            (Err(BodyError::TooLarge { .. }), _) => "body_too_large",
            (Err(BodyError::Transport(_)), _) | (_, None) => "transport_error",
            (Ok(_), Some(429)) => "rate_limited",
            (Ok(_), Some(500..)) => "server_error",
            (Ok(_), Some(400..)) => "client_error",
            (Ok(_), Some(_)) => "ok",
        };
        let latency = started.elapsed();
        if self.is_destination() {
            metrics::push_request(self.name, outcome, latency);
        } else {
            metrics::source_request(outcome, latency);
        }
        if let Some(permit) = permit {
            let signal = match outcome {
                "rate_limited" => Signal::RateLimited,
                "server_error" | "transport_error" => Signal::Failed,
                _ => Signal::Answered,
            };
            permit.finish(latency, signal);
        }
        answer
    }

    /// Requests sent through this gate since it was made.
    pub fn requests_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// The configured rate the pace holds.
    pub fn requests_per_second(&self) -> f64 {
        self.per_second
    }

    /// Requests this destination may have in flight now; 1 for the source.
    pub fn concurrency_limit(&self) -> usize {
        self.concurrency.as_ref().map_or(1, Concurrency::limit)
    }

    /// The most requests it may ever have in flight (`max_in_flight`); 1 for the source.
    pub fn max_in_flight(&self) -> usize {
        self.concurrency.as_ref().map_or(1, Concurrency::max)
    }

    /// How long requests are still held, if at all.
    pub fn paused_for(&self) -> Option<Duration> {
        self.paused_until()?
            .checked_duration_since(tokio::time::Instant::now())
            .filter(|d| !d.is_zero())
    }
}

/// reqwest's Display hides the cause ("error sending request"); the chain says what happened.
/// The URL is dropped first: some APIs carry keys in the query.
pub fn describe_reqwest(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use contact_sync_sim::server::{ServerOptions, SimServer};

    /// Late wake-ups up to half a period keep the schedule; later ones slip it, catching up
    /// by half a period at most.
    #[test]
    fn pacer_absorbs_late_wake_ups_without_bursts() {
        let pacer = Pacer::new(100.0);
        let period = Duration::from_millis(10);
        let slot = tokio::time::Instant::now();
        assert_eq!(pacer.after(slot, slot), slot + period);
        let late = slot + Duration::from_millis(4);
        assert_eq!(
            pacer.after(slot, late),
            slot + period,
            "4 ms late costs nothing"
        );
        let stalled = slot + Duration::from_millis(200);
        assert_eq!(
            pacer.after(slot, stalled),
            stalled + period / 2,
            "after a stall, half a period of catching up, not twenty slots at once"
        );
    }

    /// A destination answer over the cap is refused, announced or streamed; one under it reads.
    #[tokio::test]
    async fn gate_refuses_answers_over_max_body() {
        let router = axum::Router::new()
            .route("/small", axum::routing::get(|| async { "x".repeat(1_000) }))
            .route("/large", axum::routing::get(|| async { "x".repeat(5_000) }))
            .route(
                "/streamed",
                axum::routing::get(|| async {
                    let chunks = (0..5).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 1_000]));
                    axum::body::Body::from_stream(futures_util::stream::iter(chunks))
                }),
            );
        let server = SimServer::start(router, ServerOptions::default())
            .await
            .unwrap();
        let http = http_client(Duration::from_secs(5)).unwrap();
        let gate = Gate::new("test", 1_000.0, 8, 4_096);
        let get = |path: &str| http.get(format!("{}{path}", server.base_url()));
        assert_eq!(gate.send(get("/small")).await.unwrap().body.len(), 1_000);
        let announced = gate.send(get("/large")).await.unwrap_err();
        assert!(
            matches!(
                announced,
                BodyError::TooLarge {
                    limit: 4_096,
                    announced: Some(5_000)
                }
            ),
            "{announced}"
        );
        let streamed = gate.send(get("/streamed")).await.unwrap_err();
        assert!(
            matches!(
                streamed,
                BodyError::TooLarge {
                    announced: None,
                    ..
                }
            ),
            "{streamed}"
        );
        assert!(streamed.to_string().contains("http.max_body"));
    }
}
