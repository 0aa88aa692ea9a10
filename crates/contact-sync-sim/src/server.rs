//! A loopback HTTP server that wraps any axum `Router` with the misbehaviour of a real SaaS API:
//! a server-side rate limit, scripted or random faults, killed connections, and a request log.

use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Bodies larger than this are refused with 413; no stand-in API takes anything near it.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Status codes a random `server_error` fault picks from.
const SERVER_ERROR_CODES: [u16; 4] = [500, 502, 503, 504];

/// How to start a [`SimServer`].
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Where to listen; port 0 picks a free port.
    pub bind: SocketAddr,
    /// Server-side limit in requests per second (burst of one second's worth); excess requests
    /// are answered 429 with `Retry-After`, as a real SaaS would.
    pub rate_limit: Option<f64>,
    /// Shown in logs, to tell stand-ins apart.
    pub name: &'static str,
    /// Keep a [`RecordedRequest`] per request. Turn off for long benchmarks, where the log
    /// would grow without bound; [`SimServer::request_count`] still counts.
    pub record_requests: bool,
    /// Seed of the random fault draws.
    pub fault_seed: u64,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            rate_limit: None,
            name: "sim",
            record_requests: true,
            fault_seed: 0x5eed_f417,
        }
    }
}

/// One injected misbehaviour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// 429 with `Retry-After` (whole seconds, rounded up); the API never sees the request.
    TooManyRequests { retry_after: Duration },
    /// That status with a small JSON body; the API never sees the request.
    ServerError(u16),
    /// The connection is reset (RST) before the request reaches the API.
    Reset,
    /// The API handles the request (its state changes), then the connection is reset instead
    /// of answering: the client cannot know the request took effect.
    AppliedThenDropped,
    /// Waits this long, then handles the request normally.
    Slow(Duration),
    /// This answer instead of the API's, which never sees the request: a wrong-path 404, a
    /// redirect, a 200 whose body says failure or nothing readable.
    Answer(CannedAnswer),
}

/// A whole answer a test scripts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CannedAnswer {
    pub status: u16,
    pub body: String,
    /// Sent as `Location` (for redirects).
    pub location: Option<String>,
}

impl CannedAnswer {
    pub fn new(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            body: body.into(),
            location: None,
        }
    }

    /// A redirect to `location` with an HTML body, as a load balancer sends one.
    pub fn redirect(status: u16, location: &str) -> Self {
        Self {
            location: Some(location.to_owned()),
            ..Self::new(status, "<html><body>Moved</body></html>")
        }
    }

    fn into_response(self) -> Response<Body> {
        let mut response = Response::new(Body::from(self.body));
        *response.status_mut() =
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if let Some(location) = self.location.and_then(|l| HeaderValue::from_str(&l).ok()) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        response
    }
}

/// Random fault rates: each is the fraction of requests that get that fault. They are drawn
/// independently per request in field order; the first that hits wins.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultConfig {
    pub too_many_requests: f64,
    pub retry_after: Duration,
    pub server_error: f64,
    pub reset: f64,
    pub applied_then_dropped: f64,
    pub slow: f64,
    pub slow_delay: Duration,
}

type PathPredicate = dyn Fn(&str) -> bool + Send + Sync;

/// The fault plan of one server, shared with the test that drives it and adjustable while it
/// runs. Random draws come from a seeded RNG so a failing run can be replayed.
pub struct Faults {
    state: Mutex<FaultState>,
}

struct FaultState {
    config: FaultConfig,
    rng: fastrand::Rng,
    script: VecDeque<Fault>,
    excluded: Option<Arc<PathPredicate>>,
}

impl Faults {
    /// No faults, RNG seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            state: Mutex::new(FaultState {
                config: FaultConfig::default(),
                rng: fastrand::Rng::with_seed(seed),
                script: VecDeque::new(),
                excluded: None,
            }),
        }
    }

    /// Replaces the random fault rates.
    pub fn set(&self, config: FaultConfig) {
        self.lock().config = config;
    }

    /// Queues a fault for the next eligible request; scripted faults go before random ones.
    pub fn push(&self, fault: Fault) {
        self.lock().script.push_back(fault);
    }

    /// Queues the same fault for the next `n` eligible requests.
    pub fn push_n(&self, fault: Fault, n: usize) {
        let mut state = self.lock();
        state.script.extend(std::iter::repeat_n(fault, n));
    }

    /// Scripted faults not consumed yet.
    pub fn pending(&self) -> usize {
        self.lock().script.len()
    }

    /// Clears the script and the random rates (exclusions stay).
    pub fn clear(&self) {
        let mut state = self.lock();
        state.script.clear();
        state.config = FaultConfig::default();
    }

    /// Never faults requests whose path ends with one of `suffixes`. Excluded requests neither
    /// draw random faults nor consume scripted ones, so a script can target one endpoint.
    pub fn exclude_path_suffixes<I, S>(&self, suffixes: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let suffixes: Vec<String> = suffixes.into_iter().map(Into::into).collect();
        self.exclude_when(move |path| suffixes.iter().any(|s| path.ends_with(s.as_str())));
    }

    /// Never faults requests whose path matches `predicate` (replaces any earlier exclusion).
    pub fn exclude_when(&self, predicate: impl Fn(&str) -> bool + Send + Sync + 'static) {
        self.lock().excluded = Some(Arc::new(predicate));
    }

    /// Picks the fault for a request to `path`, if any.
    fn next_for(&self, path: &str) -> Option<Fault> {
        let mut state = self.lock();
        if state
            .excluded
            .as_ref()
            .is_some_and(|excluded| excluded(path))
        {
            return None;
        }
        state.script.pop_front().or_else(|| state.draw())
    }

    fn lock(&self) -> MutexGuard<'_, FaultState> {
        // A panicking test thread must not take every later request down with it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl FaultState {
    fn draw(&mut self) -> Option<Fault> {
        let c = &self.config;
        // Draw every rate on every request so the sequence of random numbers, and with it the
        // replay, does not depend on which fault happened to hit.
        let hits = [
            self.rng.f64() < c.too_many_requests,
            self.rng.f64() < c.server_error,
            self.rng.f64() < c.reset,
            self.rng.f64() < c.applied_then_dropped,
            self.rng.f64() < c.slow,
        ];
        let code = SERVER_ERROR_CODES[self.rng.usize(..SERVER_ERROR_CODES.len())];
        let faults = [
            Fault::TooManyRequests {
                retry_after: c.retry_after,
            },
            Fault::ServerError(code),
            Fault::Reset,
            Fault::AppliedThenDropped,
            Fault::Slow(c.slow_delay),
        ];
        hits.into_iter()
            .zip(faults)
            .find_map(|(hit, fault)| hit.then_some(fault))
    }
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub authorization: Option<String>,
    pub body: Bytes,
    /// The injected fault, if any.
    pub fault: Option<Fault>,
    /// Refused by the server-side rate limit (answered 429).
    pub rate_limited: bool,
    /// The status the client received; `None` when the connection was killed instead.
    pub status: Option<u16>,
    /// When the request arrived, for measuring the rate a client holds.
    pub received_at: std::time::Instant,
}

impl RecordedRequest {
    /// The body parsed as JSON, `None` if it is not JSON.
    pub fn body_json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// State shared by the accept loop, every connection and the [`SimServer`] handle.
struct Shared {
    router: Router,
    name: &'static str,
    faults: Arc<Faults>,
    limiter: Option<DefaultDirectRateLimiter>,
    record: bool,
    log: Mutex<Vec<RecordedRequest>>,
    count: AtomicU64,
    /// Requests being handled now, and the most ever at once.
    concurrent: AtomicU64,
    max_concurrent: AtomicU64,
}

/// A running stand-in server. Dropping it stops the server.
pub struct SimServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    accept: Option<JoinHandle<()>>,
}

impl SimServer {
    /// Binds and starts serving `router` with the given options.
    pub async fn start(router: Router, opts: ServerOptions) -> io::Result<SimServer> {
        let listener = TcpListener::bind(opts.bind).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            router,
            name: opts.name,
            faults: Arc::new(Faults::new(opts.fault_seed)),
            limiter: opts.rate_limit.map(rate_limiter).transpose()?,
            record: opts.record_requests,
            log: Mutex::new(Vec::new()),
            count: AtomicU64::new(0),
            concurrent: AtomicU64::new(0),
            max_concurrent: AtomicU64::new(0),
        });
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let accept = tokio::spawn(accept_loop(
            listener,
            Arc::clone(&shared),
            cancel.clone(),
            tracker.clone(),
        ));
        tracing::debug!(server = opts.name, %addr, "sim server started");
        Ok(SimServer {
            addr,
            shared,
            cancel,
            tracker,
            accept: Some(accept),
        })
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The fault plan, to change while the server runs.
    pub fn faults(&self) -> &Arc<Faults> {
        &self.shared.faults
    }

    /// Requests answered or killed so far, in completion order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.log().clone()
    }

    pub fn clear_requests(&self) {
        self.shared.log().clear();
    }

    /// Every request received since start, recorded or not.
    pub fn request_count(&self) -> u64 {
        self.shared.count.load(Ordering::Relaxed)
    }

    /// The most requests this server was handling at once since start: what a client keeps
    /// in flight, as the server sees it.
    pub fn max_concurrency(&self) -> u64 {
        self.shared.max_concurrent.load(Ordering::Relaxed)
    }

    /// Stops accepting, ends open connections and waits until every task is gone.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(accept) = self.accept.take() {
            let _ = accept.await;
        }
        self.tracker.close();
        self.tracker.wait().await;
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        // Every task watches the token, so nothing outlives the handle.
        self.cancel.cancel();
    }
}

fn rate_limiter(per_second: f64) -> io::Result<DefaultDirectRateLimiter> {
    let invalid = || io::Error::new(io::ErrorKind::InvalidInput, "rate_limit must be > 0");
    if !per_second.is_finite() || per_second <= 0.0 {
        return Err(invalid());
    }
    let period = Duration::from_secs_f64(1.0 / per_second);
    let burst =
        NonZeroU32::new(per_second.ceil().min(f64::from(u32::MAX)) as u32).ok_or_else(invalid)?;
    let quota = Quota::with_period(period)
        .ok_or_else(invalid)?
        .allow_burst(burst);
    Ok(RateLimiter::direct(quota))
}

impl Shared {
    fn log(&self) -> MutexGuard<'_, Vec<RecordedRequest>> {
        self.log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn record(&self, entry: RecordedRequest) {
        if self.record {
            self.log().push(entry);
        }
    }

    /// `Some(wait)` when the rate limit refuses a request now.
    fn rate_limited(&self) -> Option<Duration> {
        let limiter = self.limiter.as_ref()?;
        let not_until = limiter.check().err()?;
        Some(not_until.wait_time_from(DefaultClock::default().now()))
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tracker.spawn(serve_connection(
                    stream,
                    Arc::clone(&shared),
                    cancel.clone(),
                ));
            }
            Err(error) => {
                // Usually EMFILE under load; back off instead of spinning.
                tracing::warn!(server = shared.name, %error, "sim accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// The error a service returns to make hyper drop the connection without answering.
#[derive(Debug, thiserror::Error)]
#[error("connection killed by an injected fault")]
struct Killed;

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>, cancel: CancellationToken) {
    let io = KillableStream {
        stream,
        kill: Arc::new(AtomicBool::new(false)),
    };
    let kill = Arc::clone(&io.kill);
    let service = service_fn(move |request| {
        let shared = Arc::clone(&shared);
        let kill = Arc::clone(&kill);
        async move {
            let response = handle(&shared, request).await;
            if response.is_none() {
                kill.store(true, Ordering::Relaxed);
            }
            response.ok_or(Killed)
        }
    });
    let connection = http1::Builder::new().serve_connection(TokioIo::new(io), service);
    tokio::select! {
        () = cancel.cancelled() => {}
        // Errors here are the client's or our own injected kills; nothing to report.
        _ = connection => {}
    }
}

/// Runs one request through rate limit, faults and router; `None` means kill the connection.
async fn handle(shared: &Shared, request: Request<Incoming>) -> Option<Response<Body>> {
    shared.count.fetch_add(1, Ordering::Relaxed);
    let _handling = Handling::start(shared);
    let (parts, body) = request.into_parts();
    let mut entry = RecordedRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        authorization: parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body: Bytes::new(),
        fault: None,
        rate_limited: false,
        status: None,
        received_at: std::time::Instant::now(),
    };
    let response = match axum::body::to_bytes(Body::new(body), MAX_BODY_BYTES).await {
        Ok(bytes) => {
            entry.body = bytes.clone();
            respond(
                shared,
                &mut entry,
                Request::from_parts(parts, Body::from(bytes)),
            )
            .await
        }
        Err(_) => Some(plain_error(StatusCode::PAYLOAD_TOO_LARGE)),
    };
    entry.status = response.as_ref().map(|r| r.status().as_u16());
    shared.record(entry);
    response
}

/// Counts a request as being handled until dropped, however handling ends.
struct Handling<'a>(&'a Shared);

impl<'a> Handling<'a> {
    fn start(shared: &'a Shared) -> Self {
        let now = shared.concurrent.fetch_add(1, Ordering::Relaxed) + 1;
        shared.max_concurrent.fetch_max(now, Ordering::Relaxed);
        Self(shared)
    }
}

impl Drop for Handling<'_> {
    fn drop(&mut self) {
        self.0.concurrent.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn respond(
    shared: &Shared,
    entry: &mut RecordedRequest,
    request: Request<Body>,
) -> Option<Response<Body>> {
    if let Some(wait) = shared.rate_limited() {
        entry.rate_limited = true;
        return Some(too_many_requests(wait));
    }
    entry.fault = shared.faults.next_for(&entry.path);
    match entry.fault.clone() {
        None => Some(route(shared, request).await),
        Some(Fault::TooManyRequests { retry_after }) => Some(too_many_requests(retry_after)),
        Some(Fault::ServerError(code)) => Some(server_error(code)),
        Some(Fault::Reset) => None,
        Some(Fault::AppliedThenDropped) => {
            let _discarded = route(shared, request).await;
            None
        }
        Some(Fault::Slow(delay)) => {
            tokio::time::sleep(delay).await;
            Some(route(shared, request).await)
        }
        Some(Fault::Answer(answer)) => Some(answer.into_response()),
    }
}

async fn route(shared: &Shared, request: Request<Body>) -> Response<Body> {
    match shared.router.clone().oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

fn too_many_requests(retry_after: Duration) -> Response<Body> {
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    let mut response = json_error(StatusCode::TOO_MANY_REQUESTS, "too many requests");
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    response
}

fn server_error(code: u16) -> Response<Body> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_error(status, "injected server error")
}

fn plain_error(status: StatusCode) -> Response<Body> {
    json_error(status, status.canonical_reason().unwrap_or("error"))
}

fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    let body =
        serde_json::json!({ "status": "error", "code": status.as_u16(), "message": message });
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A TCP stream that, when flagged, is closed with RST instead of FIN: `SO_LINGER` 0 is set
/// just before the socket is dropped, which happens once hyper gives up on the connection.
struct KillableStream {
    stream: TcpStream,
    kill: Arc<AtomicBool>,
}

impl Drop for KillableStream {
    fn drop(&mut self) {
        if self.kill.load(Ordering::Relaxed) {
            let _ = self.stream.set_zero_linger();
        }
    }
}

impl AsyncRead for KillableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
