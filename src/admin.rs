//! The admin server on `admin.listen`: `/metrics` (Prometheus text format), `/healthz`
//! (the process answers), `/readyz` (200 when ready, 503 with the reasons otherwise).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::store::{self, Store};
use crate::sync::Engine;

struct AdminState {
    engine: Arc<Engine>,
    store: Store,
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
        crate::metrics::handle();
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .with_state(Arc::new(AdminState { engine, store }));
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopped.cancelled().await });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "admin server failed");
            }
        });
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

async fn metrics(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    // Delivery counts live in the database: read them now, so a scrape is never stale.
    if let Ok(counts) = store::delivery_counts(&state.store).await {
        for pusher in state.engine.pushers() {
            let name = pusher.destination().as_str();
            let counts = counts.get(name).cloned().unwrap_or_default();
            let paused = pusher.sink().gate().paused_for().is_some();
            crate::metrics::destination_state(name, counts.pending, counts.dead, paused);
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
/// is paused because it refused our credentials.
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
        destinations.insert(
            pusher.destination().as_str().to_owned(),
            json!({"auth_refused": refused, "paused": pusher.sink().gate().paused_for().is_some()}),
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
