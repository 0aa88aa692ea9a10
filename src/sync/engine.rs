//! The engine: the source pass and one pusher per destination, each a task of its own, so a
//! slow or paused destination never stalls the pass or the other destination.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::{PassOutcome, PassProgress, Puller, Pusher, SyncError, outbox};
use crate::config::Settings;
use crate::net::{self, RetryPolicy};
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
    /// A task ended without returning: a bug. The other tasks were stopped.
    #[error("the {task} task {how}; the others were stopped")]
    TaskFailed { task: String, how: &'static str },
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        Self::Sync(SyncError::Store(e))
    }
}

/// How the source side is doing: pages committed since start, whether a pass is running, and
/// the error of the last pass if it failed. The pushers wake on its changes; `/readyz` and
/// systemd report it, and the live progress (src/progress.rs) reads `pass`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceHealth {
    pub pages: u64,
    pub in_pass: bool,
    pub last_error: Option<String>,
    /// Where the current (or last) pass stands.
    pub pass: PassProgress,
}

/// What a backfill did.
#[derive(Debug, Clone)]
pub struct BackfillReport {
    pub pass: PassOutcome,
    pub pushed: Vec<(Destination, super::PushStats)>,
}

pub struct Engine {
    store: Store,
    source: Arc<Source>,
    pushers: Vec<Arc<Pusher>>,
    payloads: Payloads,
}

/// The source side: the puller, its health, and how often a daemon runs a pass.
struct Source {
    puller: Puller,
    health: watch::Sender<SourceHealth>,
    poll_interval: Duration,
}

/// How one of the engine's tasks ended.
enum Done {
    Pass(Result<PassOutcome, SyncError>),
    Pulling(Result<(), EngineError>),
    /// The pusher's index in `Engine::pushers`.
    Pushed(usize, Result<(), EngineError>),
}

impl Engine {
    /// Build the source client, the enabled destinations' sinks, and their pushers.
    pub fn new(settings: &Settings, store: Store) -> Result<Self, EngineError> {
        let http = net::http_client(settings.http.timeout)?;
        let retry = RetryPolicy::from(&settings.retry);
        let payloads = Payloads::new(settings);
        let pushers = payloads
            .sinks(&store, &http, settings.http.max_body)
            .into_iter()
            .map(|sink| Arc::new(Pusher::new(store.clone(), sink, payloads.clone(), retry)))
            .collect();
        Ok(Self {
            source: Arc::new(Source {
                puller: Puller::new(store.clone(), settings, http),
                health: watch::Sender::new(SourceHealth::default()),
                poll_interval: settings.source.poll_interval,
            }),
            store,
            pushers,
            payloads,
        })
    }

    /// Follow the source side's health.
    pub fn source_health(&self) -> watch::Receiver<SourceHealth> {
        self.source.health.subscribe()
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

    /// Let each destination keep what it needs across runs, then bring the outbox in line
    /// with the current payload settings. Run before pushing.
    pub async fn prepare(&self) -> Result<(), StoreError> {
        for pusher in &self.pushers {
            pusher.sink().prepare().await?;
        }
        outbox::refresh_plans(&self.store, &self.payloads)
            .await
            .map(drop)
    }

    /// Start a task per pusher; `until_idle` as for [`push_loop`].
    fn spawn_pushers(&self, tasks: &mut Tasks, cancel: &CancellationToken, until_idle: bool) {
        for (index, pusher) in self.pushers.iter().enumerate() {
            let pusher = Arc::clone(pusher);
            let health = self.source.health.subscribe();
            let cancel = cancel.clone();
            tasks.spawn(format!("{} pusher", pusher.destination()), async move {
                Done::Pushed(index, push_loop(&pusher, health, &cancel, until_idle).await)
            });
        }
    }

    /// One full pass, pushing while it runs, then until nothing is due but dead letters.
    pub async fn backfill(
        &self,
        cancel: &CancellationToken,
    ) -> Result<BackfillReport, EngineError> {
        self.prepare().await?;
        // Marked before the pushers start, so none of them takes "no pass running and nothing
        // due" for the end of the backfill.
        self.source.health.send_modify(|h| h.in_pass = true);
        let mut tasks = Tasks::new(cancel.child_token());
        // Pushers stop on shutdown, and also when the pass fails: the backfill has failed.
        let pushing = tasks.stop.child_token();
        let (source, stop, on_failure) = (
            Arc::clone(&self.source),
            tasks.stop.clone(),
            pushing.clone(),
        );
        tasks.spawn("source pass".to_owned(), async move {
            let result = source.pull_pass(&stop).await;
            if result.is_err() {
                on_failure.cancel();
            }
            Done::Pass(result)
        });
        self.spawn_pushers(&mut tasks, &pushing, true);
        let mut pass = None;
        let mut pushed: Vec<Option<EngineError>> = self.pushers.iter().map(|_| None).collect();
        let mut failed = None;
        while let Some(done) = tasks.next().await {
            match done {
                Ok(Done::Pass(result)) => pass = Some(result),
                Ok(Done::Pushed(index, result)) => pushed[index] = result.err(),
                Ok(Done::Pulling(_)) => unreachable!("a backfill runs one pass"),
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        let pass = pass.expect("the pass task ended")?;
        if let Some(e) = pushed.into_iter().flatten().next() {
            return Err(e);
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

    /// Run until `cancel`: a pass every poll interval (start to start), pushers always on. The
    /// first task to fail stops the others.
    pub async fn daemon(&self, cancel: &CancellationToken) -> Result<(), EngineError> {
        self.prepare().await?;
        let mut tasks = Tasks::new(cancel.child_token());
        let (source, stop) = (Arc::clone(&self.source), tasks.stop.clone());
        tasks.spawn("source".to_owned(), async move {
            Done::Pulling(source.pull_loop(&stop).await)
        });
        let stop = tasks.stop.clone();
        self.spawn_pushers(&mut tasks, &stop, false);
        let mut failed = None;
        while let Some(done) = tasks.next().await {
            let result = match done {
                Ok(Done::Pulling(result) | Done::Pushed(_, result)) => result,
                Ok(Done::Pass(_)) => unreachable!("a daemon runs the pull loop"),
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                stop.cancel();
                failed = failed.or(Some(e));
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

impl Source {
    /// A pass every poll interval, start to start, until `cancel` (see [`every_poll`]).
    async fn pull_loop(&self, cancel: &CancellationToken) -> Result<(), EngineError> {
        every_poll(self.poll_interval, cancel, || async {
            match self.pull_pass(cancel).await {
                Ok(_) => Ok(Next::OnSchedule),
                // The database is ours: if it fails, stop and let the supervisor restart us.
                Err(SyncError::Store(e)) => Err(EngineError::from(e)),
                // The source may come back; try a poll interval from now, never in a tight loop.
                Err(e) => {
                    error!(error = %crate::telemetry::mask_pii(&e.to_string()), "source pass failed; retrying at the next poll");
                    Ok(Next::AfterInterval)
                }
            }
        })
        .await
    }

    /// One pass, telling the pushers after every committed page. On shutdown the page under
    /// way gets the grace period, then is abandoned (its transaction never commits).
    async fn pull_pass(&self, cancel: &CancellationToken) -> Result<PassOutcome, SyncError> {
        self.health.send_modify(|h| h.in_pass = true);
        let result: Result<PassOutcome, SyncError> = async {
            let mut run = self.puller.begin().await?;
            self.health.send_modify(|h| h.pass = run.progress());
            while !cancel.is_cancelled() {
                let Some(more) = within_grace(self.puller.step(&mut run), cancel, || true).await
                else {
                    break;
                };
                let more = more?;
                self.health.send_modify(|h| {
                    h.pages += 1;
                    h.last_error = None;
                    h.pass = run.progress();
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
        self.health.send_modify(|h| {
            h.in_pass = false;
            if error.is_some() {
                h.last_error = error;
            }
        });
        result
    }
}

/// When the pass after this one starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// A poll interval after this one started, or at once if this one took longer.
    OnSchedule,
    /// A full poll interval from now: the source failed, give it time.
    AfterInterval,
}

/// Run `pass` every `poll`, start to start, until `cancel` or an error. A change at the
/// source waits at most one interval for the next pass to start, whatever a pass takes; a
/// pass that overruns the interval is followed at once by the next (never two at a time).
/// docs/reliability.md, *Polling*.
async fn every_poll<F, Fut>(
    poll: Duration,
    cancel: &CancellationToken,
    mut pass: F,
) -> Result<(), EngineError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Next, EngineError>>,
{
    while !cancel.is_cancelled() {
        let started = tokio::time::Instant::now();
        let next = match pass().await? {
            Next::OnSchedule => started + poll,
            Next::AfterInterval => tokio::time::Instant::now() + poll,
        };
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = tokio::time::sleep_until(next) => {}
        }
    }
    Ok(())
}

/// The engine's tasks, spawned on the runtime under one `JoinSet`, each named for the log.
/// Dropping it aborts whatever still runs.
struct Tasks {
    set: JoinSet<Done>,
    names: HashMap<tokio::task::Id, String>,
    /// Cancelled when a task panics, so the others stop (with the usual grace period).
    stop: CancellationToken,
}

impl Tasks {
    fn new(stop: CancellationToken) -> Self {
        Self {
            set: JoinSet::new(),
            names: HashMap::new(),
            stop,
        }
    }

    fn spawn(&mut self, name: String, task: impl Future<Output = Done> + Send + 'static) {
        let id = self.set.spawn(task).id();
        self.names.insert(id, name);
    }

    /// The next task to end. One that panicked is logged by name, stops the others, and
    /// comes back as an error naming it.
    async fn next(&mut self) -> Option<Result<Done, EngineError>> {
        Some(match self.set.join_next_with_id().await? {
            Ok((id, done)) => {
                self.names.remove(&id);
                Ok(done)
            }
            Err(e) => {
                let task = self.names.remove(&e.id()).unwrap_or_default();
                let how = if e.is_panic() {
                    "panicked"
                } else {
                    "was cancelled"
                };
                let cause = e
                    .try_into_panic()
                    .ok()
                    .and_then(|p| {
                        p.downcast_ref::<&str>()
                            .map(|s| (*s).to_owned())
                            .or_else(|| p.downcast_ref::<String>().cloned())
                    })
                    .unwrap_or_default();
                error!(task = %task, cause = %crate::telemetry::mask_pii(&cause), "task {how}; stopping the others");
                self.stop.cancel();
                Err(EngineError::TaskFailed { task, how })
            }
        })
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::time::Instant;
    use tokio_util::sync::CancellationToken;

    use super::{Next, every_poll};

    /// Runs passes that take `took[i]` (in paused time) and end as `next[i]` says; returns
    /// when each started, in seconds from the first.
    async fn starts(took: &[u64], next: &[Next]) -> Vec<u64> {
        let cancel = CancellationToken::new();
        let origin = Instant::now();
        let started = Arc::new(Mutex::new(Vec::new()));
        let (mut n, passes) = (0, took.len());
        every_poll(Duration::from_secs(5), &cancel, || {
            let (i, started, cancel) = (n, Arc::clone(&started), cancel.clone());
            n += 1;
            let (secs, next) = (took[i], next[i]);
            async move {
                let count = {
                    let mut started = started.lock().expect("lock");
                    started.push(origin.elapsed().as_secs());
                    started.len()
                };
                if count == passes {
                    cancel.cancel();
                }
                tokio::time::sleep(Duration::from_secs(secs)).await;
                Ok(next)
            }
        })
        .await
        .expect("passes succeed");
        Arc::try_unwrap(started)
            .expect("one owner")
            .into_inner()
            .expect("lock")
    }

    #[tokio::test(start_paused = true)]
    async fn passes_start_a_poll_interval_apart_start_to_start_and_an_overrun_is_followed_at_once()
    {
        // 3 s, then 7 s (overruns the 5 s interval), then 1 s.
        let on = Next::OnSchedule;
        assert_eq!(starts(&[3, 7, 1, 0], &[on; 4]).await, [0, 5, 12, 17]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_pass_is_retried_a_full_interval_after_it_ended() {
        let (on, after) = (Next::OnSchedule, Next::AfterInterval);
        assert_eq!(starts(&[2, 1, 0], &[after, on, on]).await, [0, 7, 12]);
    }
}
