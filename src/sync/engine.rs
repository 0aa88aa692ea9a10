//! The engine: the source pass and one pusher per destination running side by side, so a slow
//! or paused destination never stalls the pass or the other destination.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::{PassOutcome, Puller, Pusher, Sink, SyncError, outbox};
use crate::config::Settings;
use crate::net::{self, RetryPolicy};
use crate::sink::engagelab::{EngagelabClient, REGISTER_BATCH};
use crate::sink::omi::OmiClient;
use crate::sink::{Destination, Payloads};
use crate::source::dolphins::DolphinsClient;
use crate::store::{Store, StoreError};

/// How long in-flight requests may take to finish once shutdown is asked for.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A pusher with nothing due looks again at least this often (new plans also wake it).
const IDLE_RECHECK: Duration = Duration::from_secs(30);

/// Pull progress seen by the pushers: committed pages, and whether the pass is over.
#[derive(Debug, Clone, Copy, Default)]
struct PullProgress {
    pages: u64,
    done: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error("{0} refused our credentials")]
    DestinationAuth(Destination),
    #[error(transparent)]
    Http(#[from] crate::net::HttpSetupError),
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        Self::Sync(SyncError::Store(e))
    }
}

/// How the source side is doing, for `/readyz` and systemd: pages committed since start, and
/// the error of the last pass if it failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceHealth {
    pub pages: u64,
    pub last_error: Option<String>,
}

/// What a backfill did.
#[derive(Debug, Clone)]
pub struct BackfillReport {
    pub pass: PassOutcome,
    pub pushed: Vec<(Destination, super::PushStats)>,
}

pub struct Engine {
    store: Store,
    puller: Puller,
    source: watch::Sender<SourceHealth>,
    pushers: Vec<Arc<Pusher>>,
    payloads: Payloads,
    poll_interval: Duration,
}

impl Engine {
    /// Build the source client, the enabled destinations' clients, and their pushers.
    pub fn new(settings: &Settings, store: Store) -> Result<Self, EngineError> {
        let http = net::http_client(settings.http.timeout)?;
        let retry = RetryPolicy::from(&settings.retry);
        let source = DolphinsClient::new(&settings.source, http.clone(), retry);
        let payloads = Payloads::new(settings);
        let mut pushers = Vec::new();
        if settings.omi.enabled {
            let sink = Sink::Omi(OmiClient::new(&settings.omi, http.clone()));
            pushers.push(Arc::new(Pusher::new(
                store.clone(),
                sink,
                payloads.clone(),
                retry,
                settings.omi.batch_size as usize,
            )));
        }
        if settings.engagelab.enabled {
            let sink = Sink::Engagelab(EngagelabClient::new(&settings.engagelab, http));
            pushers.push(Arc::new(Pusher::new(
                store.clone(),
                sink,
                payloads.clone(),
                retry,
                REGISTER_BATCH,
            )));
        }
        Ok(Self {
            puller: Puller::new(store.clone(), source, settings, false),
            source: watch::Sender::new(SourceHealth::default()),
            store,
            pushers,
            payloads,
            poll_interval: settings.source.poll_interval,
        })
    }

    /// Follow the source side's health.
    pub fn source_health(&self) -> watch::Receiver<SourceHealth> {
        self.source.subscribe()
    }

    pub fn pushers(&self) -> &[Arc<Pusher>] {
        &self.pushers
    }

    pub fn pusher(&self, destination: Destination) -> Option<&Pusher> {
        self.pushers
            .iter()
            .map(Arc::as_ref)
            .find(|p| p.destination() == destination)
    }

    /// Bring the outbox in line with the current payload settings. Run before pushing.
    pub async fn prepare(&self) -> Result<(), StoreError> {
        outbox::refresh_plans(&self.store, &self.payloads)
            .await
            .map(drop)
    }

    /// One full pass, pushing while it runs, then until nothing is due but dead letters.
    pub async fn backfill(
        &self,
        cancel: &CancellationToken,
    ) -> Result<BackfillReport, EngineError> {
        self.prepare().await?;
        let (progress, watch) = watch::channel(PullProgress::default());
        // Pushers stop on shutdown, and also when the pass fails: the backfill has failed.
        let pushing = cancel.child_token();
        let pull = async {
            let result = self.pull_pass(cancel, &progress).await;
            if result.is_err() {
                pushing.cancel();
            }
            result
        };
        let push = futures_util::future::join_all(
            self.pushers
                .iter()
                .map(|pusher| push_loop(pusher, watch.clone(), &pushing, true)),
        );
        let (pass, pushed) = tokio::join!(pull, push);
        let pass = pass?;
        for result in pushed {
            result?;
        }
        Ok(BackfillReport {
            pass,
            pushed: self
                .pushers
                .iter()
                .map(|p| (p.destination(), p.stats()))
                .collect(),
        })
    }

    /// Run until `cancel`: a pass every poll interval, pushers always on.
    pub async fn daemon(&self, cancel: &CancellationToken) -> Result<(), EngineError> {
        self.prepare().await?;
        let (progress, watch) = watch::channel(PullProgress::default());
        let pull = async {
            while !cancel.is_cancelled() {
                match self.pull_pass(cancel, &progress).await {
                    Ok(_) => {}
                    // The database is ours: if it fails, stop and let the supervisor restart us.
                    Err(SyncError::Store(e)) => return Err(EngineError::from(e)),
                    // The source may come back; try at the next interval, never in a tight loop.
                    Err(e) => {
                        error!(error = %crate::telemetry::mask_pii(&e.to_string()), "source pass failed; retrying at the next poll")
                    }
                }
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = tokio::time::sleep(self.poll_interval) => {}
                }
            }
            Ok(())
        };
        let push = futures_util::future::try_join_all(
            self.pushers
                .iter()
                .map(|pusher| push_loop(pusher, watch.clone(), cancel, false)),
        );
        tokio::try_join!(pull, push)?;
        Ok(())
    }

    /// One pass, telling the pushers after every committed page. On shutdown the page under
    /// way gets the grace period, then is abandoned (its transaction never commits).
    async fn pull_pass(
        &self,
        cancel: &CancellationToken,
        progress: &watch::Sender<PullProgress>,
    ) -> Result<PassOutcome, SyncError> {
        progress.send_modify(|p| p.done = false);
        let result: Result<PassOutcome, SyncError> = async {
            let mut run = self.puller.begin().await?;
            while !cancel.is_cancelled() {
                let step = self.puller.step(&mut run);
                tokio::pin!(step);
                let more = tokio::select! {
                    more = &mut step => more?,
                    _ = cancel.cancelled() => match tokio::time::timeout(SHUTDOWN_GRACE, step).await {
                        Ok(more) => more?,
                        Err(_) => break,
                    },
                };
                self.source.send_modify(|h| {
                    h.pages += 1;
                    h.last_error = None;
                });
                progress.send_modify(|p| p.pages += 1);
                if !more {
                    break;
                }
            }
            Ok(self.puller.finish(run))
        }
        .await;
        if let Err(e) = &result {
            crate::metrics::pass_failed();
            let text = crate::telemetry::mask_pii(&e.to_string());
            self.source.send_modify(|h| h.last_error = Some(text));
        }
        progress.send_modify(|p| {
            p.pages += 1;
            p.done = true;
        });
        result
    }
}

/// One drain; on shutdown, requests already under way get the grace period to finish, but a
/// destination that is paused (429, refused credentials) is not waited for.
async fn drain(pusher: &Pusher, cancel: &CancellationToken) -> Result<(), StoreError> {
    let drain = pusher.drain_once(cancel);
    tokio::pin!(drain);
    tokio::select! {
        result = &mut drain => return result.map(drop),
        _ = cancel.cancelled() => {}
    }
    if pusher.sink().gate().paused_for().is_some() {
        return Ok(());
    }
    match tokio::time::timeout(SHUTDOWN_GRACE, drain).await {
        Ok(result) => result.map(drop),
        Err(_) => {
            info!(destination = %pusher.destination(), "in-flight deliveries abandoned at shutdown; they are retried at the next start");
            Ok(())
        }
    }
}

/// Drain a pusher whenever something is due. With `until_idle` (backfill) it returns once the
/// pass is over and nothing is pending but dead letters, and fails if credentials are refused.
async fn push_loop(
    pusher: &Pusher,
    mut watch: watch::Receiver<PullProgress>,
    cancel: &CancellationToken,
    until_idle: bool,
) -> Result<(), EngineError> {
    while !cancel.is_cancelled() {
        watch.borrow_and_update();
        drain(pusher, cancel).await?;
        if until_idle && pusher.auth_refused() {
            return Err(EngineError::DestinationAuth(pusher.destination()));
        }
        let wait = match pusher.next_due_at().await? {
            None if until_idle && watch.borrow().done => return Ok(()),
            None => IDLE_RECHECK,
            Some(at) => {
                Duration::from_millis(u64::try_from(at - crate::store::now_ms()).unwrap_or(0))
                    .min(IDLE_RECHECK)
            }
        };
        if wait.is_zero() {
            continue;
        }
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = watch.changed() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
    info!(destination = %pusher.destination(), "pusher stopped");
    Ok(())
}
