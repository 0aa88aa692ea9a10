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
use crate::store::{Store, StoreError};

/// How long in-flight requests may take to finish once shutdown is asked for.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A pusher with nothing due looks again at least this often (new plans also wake it).
const IDLE_RECHECK: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error("{0} refused our credentials")]
    DestinationAuth(Destination),
    #[error("{0} answered as if its base_url were wrong (404 or a redirect); check {0}.base_url")]
    DestinationMisconfigured(Destination),
    #[error(transparent)]
    Http(#[from] crate::net::HttpSetupError),
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        Self::Sync(SyncError::Store(e))
    }
}

/// How the source side is doing: pages committed since start, whether a pass is running, and
/// the error of the last pass if it failed. The pushers wake on its changes; `/readyz` and
/// systemd report it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceHealth {
    pub pages: u64,
    pub in_pass: bool,
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
        let payloads = Payloads::new(settings);
        let mut pushers = Vec::new();
        if let Some(omi) = &settings.omi {
            let sink = Sink::Omi(OmiClient::new(omi, http.clone(), settings.http.max_body));
            pushers.push(Arc::new(Pusher::new(
                store.clone(),
                sink,
                payloads.clone(),
                retry,
                omi.batch_size as usize,
            )));
        }
        if let Some(engagelab) = &settings.engagelab {
            let sink = Sink::Engagelab(EngagelabClient::new(
                engagelab,
                http.clone(),
                settings.http.max_body,
            ));
            pushers.push(Arc::new(Pusher::new(
                store.clone(),
                sink,
                payloads.clone(),
                retry,
                REGISTER_BATCH,
            )));
        }
        Ok(Self {
            puller: Puller::new(store.clone(), settings, http, false),
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
        // Marked before the pushers start, so none of them takes "no pass running and nothing
        // due" for the end of the backfill.
        self.source.send_modify(|h| h.in_pass = true);
        // Pushers stop on shutdown, and also when the pass fails: the backfill has failed.
        let pushing = cancel.child_token();
        let pull = async {
            let result = self.pull_pass(cancel).await;
            if result.is_err() {
                pushing.cancel();
            }
            result
        };
        let push = futures_util::future::join_all(
            self.pushers
                .iter()
                .map(|pusher| push_loop(pusher, self.source.subscribe(), &pushing, true)),
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
        let pull = async {
            while !cancel.is_cancelled() {
                match self.pull_pass(cancel).await {
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
                .map(|pusher| push_loop(pusher, self.source.subscribe(), cancel, false)),
        );
        tokio::try_join!(pull, push)?;
        Ok(())
    }

    /// One pass, telling the pushers after every committed page. On shutdown the page under
    /// way gets the grace period, then is abandoned (its transaction never commits).
    async fn pull_pass(&self, cancel: &CancellationToken) -> Result<PassOutcome, SyncError> {
        self.source.send_modify(|h| h.in_pass = true);
        let result: Result<PassOutcome, SyncError> = async {
            let mut run = self.puller.begin().await?;
            while !cancel.is_cancelled() {
                let Some(more) = within_grace(self.puller.step(&mut run), cancel, || true).await
                else {
                    break;
                };
                let more = more?;
                self.source.send_modify(|h| {
                    h.pages += 1;
                    h.last_error = None;
                });
                if !more {
                    break;
                }
            }
            Ok(self.puller.finish(run))
        }
        .await;
        let error = result.as_ref().err().map(|e| {
            crate::metrics::pass_failed();
            crate::telemetry::mask_pii(&e.to_string())
        });
        self.source.send_modify(|h| {
            h.in_pass = false;
            if error.is_some() {
                h.last_error = error;
            }
        });
        result
    }
}

/// Run `work`; if shutdown is asked for meanwhile, give it the grace period to finish, unless
/// `worth_waiting` says there is no point. `None` when it was abandoned.
async fn within_grace<F: Future>(
    work: F,
    cancel: &CancellationToken,
    worth_waiting: impl FnOnce() -> bool,
) -> Option<F::Output> {
    tokio::pin!(work);
    tokio::select! {
        done = &mut work => return Some(done),
        _ = cancel.cancelled() => {}
    }
    if !worth_waiting() {
        return None;
    }
    tokio::time::timeout(SHUTDOWN_GRACE, work).await.ok()
}

/// One drain. A destination that is paused (429, refused credentials) is not waited for at
/// shutdown; what is abandoned is retried at the next start.
async fn drain(pusher: &Pusher, cancel: &CancellationToken) -> Result<(), StoreError> {
    let paused = || pusher.sink().gate().paused_for().is_some();
    match within_grace(pusher.drain_once(cancel), cancel, || !paused()).await {
        Some(result) => result.map(drop),
        None => {
            info!(destination = %pusher.destination(), "in-flight deliveries abandoned at shutdown; they are retried at the next start");
            Ok(())
        }
    }
}

/// Drain a pusher whenever something is due. With `until_idle` (backfill) it returns once the
/// pass is over and nothing is pending but dead letters, and fails if credentials are refused.
async fn push_loop(
    pusher: &Pusher,
    mut source: watch::Receiver<SourceHealth>,
    cancel: &CancellationToken,
    until_idle: bool,
) -> Result<(), EngineError> {
    while !cancel.is_cancelled() {
        source.borrow_and_update();
        drain(pusher, cancel).await?;
        // A backfill does not wait out a pause that needs an operator; it says why it stopped.
        if until_idle && pusher.auth_refused() {
            return Err(EngineError::DestinationAuth(pusher.destination()));
        }
        if until_idle && pusher.misconfigured() {
            return Err(EngineError::DestinationMisconfigured(pusher.destination()));
        }
        // Read before the outbox: the last page's plans are committed before `in_pass` goes
        // false, so a pass seen over here means its deliveries are seen below.
        let in_pass = source.borrow().in_pass;
        let wait = match pusher.next_due_at().await? {
            None if until_idle && !in_pass => return Ok(()),
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
            _ = source.changed() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
    info!(destination = %pusher.destination(), "pusher stopped");
    Ok(())
}
