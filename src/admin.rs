//! The admin server on `admin.listen`: `/metrics` (Prometheus text format), `/healthz`
//! (the process answers), `/readyz` (200 when ready, 503 with the reasons otherwise).
//! It is reachable by whoever can reach the port, so it bounds what a client can hold.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::store::{self, Store};
use crate::sync::Engine;

struct AdminState {
    engine: Arc<Engine>,
    store: Store,
}

/// What one client may hold of the admin server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A client that has not sent a whole request head by then is disconnected (slowloris).
    pub header_read_timeout: Duration,
    /// Connections served at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Largest request head read; a larger one is answered 431.
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 64,
            // hyper's smallest allowed buffer is 8 KiB; a scraper's request is a few hundred bytes.
            max_header_bytes: 16 * 1024,
        }
    }
}

/// A running admin server; `stop` ends it.
pub struct Admin {
    addr: SocketAddr,
    task: JoinHandle<()>,
    stop: CancellationToken,
}

impl Admin {
    /// Bind `listen` (an error if the address is taken) and serve in the background.
    pub async fn start(
        listen: SocketAddr,
        engine: Arc<Engine>,
        store: Store,
    ) -> std::io::Result<Self> {
        Self::start_with(listen, engine, store, Limits::default()).await
    }

    /// [`Admin::start`] with other limits (tests use short timeouts and small caps).
    pub async fn start_with(
        listen: SocketAddr,
        engine: Arc<Engine>,
        store: Store,
        limits: Limits,
    ) -> std::io::Result<Self> {
        crate::metrics::handle();
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .layer(middleware::from_fn(read_only_methods))
            .with_state(Arc::new(AdminState { engine, store }));
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(listener, app, limits, stop.clone()));
        Ok(Self { addr, task, stop })
    }

    /// The bound address (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Accept connections up to the cap and serve each with the header timeout and size limit.
async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: Limits,
    stop: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Usually EMFILE: wait a little instead of spinning on the error.
                tracing::warn!(error = %e, "admin server cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Over the cap the connection is dropped at once: closing costs nothing, queueing
        // would let idle clients hold memory and file descriptors.
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            crate::metrics::admin_connection_refused();
            drop(stream);
            continue;
        };
        let app = app.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    app.clone().oneshot(request.map(axum::body::Body::new))
                });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(limits.max_header_bytes)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                () = stop.cancelled() => {}
                // A client that goes away or times out is not worth a log line.
                _ = connection => {}
            }
            drop(permit);
        });
    }
    connections.close();
    connections.wait().await;
}

/// The admin endpoints only report: anything but GET and HEAD is 405, on every path.
async fn read_only_methods(request: Request, next: Next) -> Response {
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        next.run(request).await
    } else {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "GET, HEAD")],
            "only GET and HEAD\n",
        )
            .into_response()
    }
}

async fn metrics(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    // Delivery counts live in the database: read them now, so a scrape is never stale.
    if let Ok(counts) = store::delivery_counts(&state.store).await {
        for pusher in state.engine.pushers() {
            let destination = pusher.destination();
            let counts = counts.get(&destination).cloned().unwrap_or_default();
            let paused = pusher.sink().gate().paused_for().is_some();
            crate::metrics::destination_state(destination, counts.pending, counts.dead, paused);
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::handle().render(),
    )
}

/// Ready when the database answers, the last source pass is not failing, and no destination
/// is paused because it refused our credentials or answers as if misconfigured.
async fn readyz(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    let mut reasons = Vec::new();
    if let Err(e) = sqlx::query("SELECT 1").execute(state.store.pool()).await {
        reasons.push(format!("database: {e}"));
    }
    let source = state.engine.source_health().borrow().clone();
    if let Some(error) = &source.last_error {
        reasons.push(format!("source: {error}"));
    }
    let mut destinations = serde_json::Map::new();
    for pusher in state.engine.pushers() {
        let refused = pusher.auth_refused();
        if refused {
            reasons.push(format!("{}: credentials refused", pusher.destination()));
        }
        let misconfigured = pusher.misconfigured();
        if misconfigured {
            reasons.push(format!(
                "{0}: answers as if {0}.base_url were wrong",
                pusher.destination()
            ));
        }
        destinations.insert(
            pusher.destination().as_str().to_owned(),
            json!({
                "auth_refused": refused,
                "misconfigured": misconfigured,
                "paused": pusher.sink().gate().paused_for().is_some(),
            }),
        );
    }
    let ready = reasons.is_empty();
    let body = json!({
        "ready": ready,
        "reasons": reasons,
        "source": {"pages_committed": source.pages, "last_error": source.last_error},
        "destinations": destinations,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}
