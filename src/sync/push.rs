//! The generic pusher: takes one destination's due deliveries from the outbox in bounded
//! chunks, hands them to its [`Sink`], and records each outcome for the payload it was sent
//! for, with retries, pauses and statistics. The guarantees are listed in docs/reliability.md.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::failpoint::crash_point;
use crate::net::RetryPolicy;
use crate::sink::{
    Ack, Delivery, Destination, FailureKind, Payloads, PushContext, PushError, Sink, Target,
};
use crate::store::{self, DueDelivery, Outbox, Outcome, Store, StoreError};

/// Deliveries in running chunks, in chunk sizes: more are loaded while fewer are under way,
/// so while one chunk drains its last requests, the next fills the slots.
const PIPELINE: usize = 2;

/// Fewest deliveries loaded per chunk: smaller chunks cost more in queries than they save.
const MIN_CHUNK: usize = 100;

/// Most deliveries loaded per chunk. A loaded delivery holds its payload (about 1 KB of JSON
/// values) and, waiting at the gate, its part of a request body, so with [`PIPELINE`] a pusher
/// holds at most 1,000 of them however high the configured rate (docs/performance.md, *Memory
/// is bounded*, "Round 8": with 1,000 a chunk, OMI's two chunks cost an end-to-end backfill
/// about 10 MB of peak RSS once outcomes were settled in groups).
const MAX_CHUNK: usize = 500;

/// While chunks run, a load that found nothing due is tried again this often: a pass storing
/// a backfill commits new plans every few milliseconds, and waiting for a running chunk to end
/// instead left the pipe empty for a round trip (a second at 1 s latency) at the start.
const RELOAD_AFTER: Duration = Duration::from_millis(100);

/// What a pusher has done since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushStats {
    /// Contacts the destination created ([`Ack::Created`]: OMI `addMany`).
    pub added: u64,
    /// Writes to contacts acknowledged (OMI `update`s, EngageLab contact writes).
    pub updated: u64,
    /// Deliveries found to have nothing to send.
    pub skipped: u64,
    /// Deliveries that became dead letters.
    pub dead: u64,
    /// Failed attempts that will be tried again.
    pub retried: u64,
    /// Requests refused with 429.
    pub rate_limited: u64,
    /// Remote ids the destination assigned (EngageLab EUIDs).
    pub registered: u64,
    /// Answers for a payload that was no longer the planned one; they changed nothing.
    pub stale: u64,
}

impl PushStats {
    /// Contacts the destination acknowledged, created or written.
    pub fn sent(&self) -> u64 {
        self.added + self.updated
    }
}

/// Deliveries loaded together and handed to the sink together.
struct Chunk {
    ids: Vec<String>,
    items: Vec<Delivery>,
    /// [`Pusher::progress`] before the chunk was prepared: unchanged once it is pushed means
    /// nothing happened.
    progress_before: u64,
}

/// What a drain waits for: a chunk loaded (`None`: nothing due), or one pushed.
enum Step {
    Loaded(Option<Chunk>),
    Pushed(Chunk),
}

/// Why a whole destination is held: a refusal no single record can cure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    Auth,
    Misconfigured,
}

impl Hold {
    /// The pause reason in metrics.
    fn reason(self) -> &'static str {
        match self {
            Self::Auth => "auth",
            Self::Misconfigured => "misconfigured",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Auth => "destination refused our credentials",
            Self::Misconfigured => "destination answers as if its base_url were wrong",
        }
    }
}

/// Pushes one destination through its [`Sink`], and is the [`PushContext`] it records with.
pub struct Pusher {
    store: Store,
    outbox: Outbox,
    sink: Arc<dyn Sink>,
    payloads: Payloads,
    retry: RetryPolicy,
    stats: Mutex<PushStats>,
    /// Why the whole destination is held until its next success, if it is.
    hold: Mutex<Option<Hold>>,
    /// Delivery rows changed; with the requests sent, a chunk that moves neither is a stall.
    progress: AtomicU64,
}

impl Pusher {
    pub fn new(store: Store, sink: Arc<dyn Sink>, payloads: Payloads, retry: RetryPolicy) -> Self {
        Self {
            outbox: Outbox::new(store.clone(), sink.destination()),
            store,
            sink,
            payloads,
            retry,
            stats: Mutex::new(PushStats::default()),
            hold: Mutex::new(None),
            progress: AtomicU64::new(0),
        }
    }

    pub fn destination(&self) -> Destination {
        self.sink.destination()
    }

    pub fn sink(&self) -> &dyn Sink {
        self.sink.as_ref()
    }

    pub fn stats(&self) -> PushStats {
        self.stats.lock().expect("stats lock").clone()
    }

    /// True while the destination refuses our credentials (cleared by the next success).
    pub fn auth_refused(&self) -> bool {
        self.held_for() == Some(Hold::Auth)
    }

    /// True while the destination answers as if its `base_url` were wrong (cleared by the next
    /// success).
    pub fn misconfigured(&self) -> bool {
        self.held_for() == Some(Hold::Misconfigured)
    }

    fn held_for(&self) -> Option<Hold> {
        *self.hold.lock().expect("hold lock")
    }

    fn count(&self, f: impl FnOnce(&mut PushStats)) {
        f(&mut self.stats.lock().expect("stats lock"));
    }

    fn moved(&self, n: u64) {
        self.progress.fetch_add(n, Ordering::Relaxed);
    }

    /// Rows changed plus requests sent.
    fn progress(&self) -> u64 {
        self.progress.load(Ordering::Relaxed) + self.sink.gate().requests_sent()
    }

    /// Send everything due now, chunk by chunk, until nothing is due, the destination refuses
    /// our credentials, or `stop` fires (checked before each chunk after the first: the first
    /// always goes, its success lifts a hold). Returns how many deliveries were handled.
    ///
    /// Chunks are loaded while they run, until [`PIPELINE`] chunks' worth of deliveries are
    /// under way, so the next chunk's requests fill the slots the current chunk's last
    /// requests leave idle: the pipe stays full at any latency. A contact in a running chunk
    /// is not loaded again until that chunk has recorded its outcome, so no delivery is ever
    /// sent twice at once.
    ///
    /// It cannot spin: a chunk during which nothing sent a request and nothing changed a
    /// delivery ends the drain (once the running chunks are done) with an error in the log.
    pub async fn drain_once(&self, stop: &CancellationToken) -> Result<usize, StoreError> {
        let mut handled = 0;
        // Contacts of running chunks; one writer per database, so memory is the truth here.
        let mut in_flight: HashSet<String> = HashSet::new();
        let mut work: FuturesUnordered<BoxFuture<'_, Result<Step, StoreError>>> =
            FuturesUnordered::new();
        let (mut loading, mut first) = (false, true);
        // When the last load found nothing: ask again once a chunk has finished, or after
        // RELOAD_AFTER while chunks run.
        let mut drained: Option<tokio::time::Instant> = None;
        let mut ending = false;
        loop {
            let can_load = in_flight.len() < PIPELINE * self.chunk_size()
                && !loading
                && !ending
                // The first chunk goes whatever: its success is what lifts a hold.
                && (first || (!self.held() && !stop.is_cancelled()));
            if can_load && drained.is_none_or(|at| at.elapsed() >= RELOAD_AFTER) {
                first = false;
                loading = true;
                // A snapshot: a contact whose chunk finishes meanwhile was settled before
                // the query runs, or is still left out.
                work.push(Box::pin(self.load(in_flight.clone())));
            }
            // Armed only while a load could go and the last one found nothing.
            let reload_at = drained
                .filter(|_| can_load && !loading)
                .map(|at| at + RELOAD_AFTER);
            let step = tokio::select! {
                step = work.next() => step,
                () = async {
                    match reload_at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => continue,
            };
            let Some(step) = step else {
                break;
            };
            match step? {
                Step::Loaded(None) => {
                    loading = false;
                    drained = Some(tokio::time::Instant::now());
                }
                Step::Loaded(Some(chunk)) => {
                    loading = false;
                    drained = None;
                    handled += chunk.ids.len();
                    in_flight.extend(chunk.ids.iter().cloned());
                    work.push(Box::pin(self.push_chunk(chunk)));
                }
                Step::Pushed(chunk) => {
                    drained = None;
                    for id in &chunk.ids {
                        in_flight.remove(id);
                    }
                    if self.progress() == chunk.progress_before && !ending {
                        error!(destination = %self.destination(), "a chunk of due deliveries sent nothing and settled nothing; ending this drain instead of spinning");
                        ending = true;
                    }
                }
            }
        }
        if handled > 0 {
            let s = self.stats();
            info!(destination = %self.destination(), handled, added = s.added, updated = s.updated, dead = s.dead, retried = s.retried, stale = s.stale, "push batch");
        }
        Ok(handled)
    }

    /// Deliveries a chunk holds, counted in requests (`batch_size` deliveries each): the
    /// current concurrency limit (a round trip's worth) plus a second's worth at the configured
    /// rate. Chunks are sent in turn, so the next one starts loading when one is answered, and
    /// the second's worth still to send covers that load (database work, slow while a pass
    /// writes) at any latency. That second is counted at most `max_in_flight` requests, and the
    /// whole at most [`MAX_CHUNK`] deliveries: a high configured rate must not make the pusher
    /// hold thousands of payloads it cannot send at once anyway.
    fn chunk_size(&self) -> usize {
        let gate = self.sink.gate();
        let second = (gate.requests_per_second().ceil() as usize).min(gate.max_in_flight());
        let requests = gate.concurrency_limit() + second;
        self.sink
            .batch_size()
            .max(1)
            .saturating_mul(requests)
            .clamp(MIN_CHUNK, MAX_CHUNK)
    }

    /// Load the next chunk due, leaving out the contacts `running`, with payloads attached.
    async fn load(&self, running: HashSet<String>) -> Result<Step, StoreError> {
        let chunk = self.chunk_size();
        // Running contacts are still pending in the outbox and may come first: ask for that
        // many more, so a full chunk is left once they are set aside.
        let asked = u32::try_from(chunk + running.len()).unwrap_or(u32::MAX);
        let mut due = self.outbox.due(store::now_ms(), asked).await?;
        due.retain(|d| !running.contains(&d.contact_id));
        due.truncate(chunk);
        if due.is_empty() {
            return Ok(Step::Loaded(None));
        }
        let ids = due.iter().map(|d| d.contact_id.clone()).collect();
        let progress_before = self.progress();
        let items = self.prepare(due).await?;
        Ok(Step::Loaded(Some(Chunk {
            ids,
            items,
            progress_before,
        })))
    }

    /// Hand a loaded chunk to the sink; it comes back (without its items) once every
    /// outcome is recorded.
    async fn push_chunk(&self, mut chunk: Chunk) -> Result<Step, StoreError> {
        let items = std::mem::take(&mut chunk.items);
        if !items.is_empty() {
            self.sink.push(self, items).await?;
        }
        Ok(Step::Pushed(chunk))
    }

    /// When the next pending delivery is due (epoch ms), `None` when nothing is pending.
    pub async fn next_due_at(&self) -> Result<Option<i64>, StoreError> {
        self.outbox.next_due_at().await
    }

    /// Attach payloads. A delivery whose payload, computed now, is not the planned one (the
    /// contact is gone, or has nothing left to send) is re-planned or settled here, not sent.
    async fn prepare(&self, due: Vec<DueDelivery>) -> Result<Vec<Delivery>, StoreError> {
        let ids: Vec<&str> = due.iter().map(|d| d.contact_id.as_str()).collect();
        let loaded = self.store.contacts().load(&ids).await?;
        let contacts: HashMap<&str, _> =
            loaded.iter().map(|s| (s.contact.id.as_str(), s)).collect();
        let mut items = Vec::with_capacity(due.len());
        let mut replans: Vec<(&str, Option<[u8; 32]>)> = Vec::new();
        let mut gone = Vec::new();
        for d in &due {
            let Some(stored) = contacts.get(d.contact_id.as_str()) else {
                gone.push(d);
                continue;
            };
            match self
                .payloads
                .target(self.destination(), &stored.contact, stored.deleted)
            {
                Target::Send(payload) => {
                    let payload = crate::sink::payload_json(&payload);
                    let hash = crate::sink::json_hash(&payload);
                    if hash != d.payload_hash {
                        replans.push((&d.contact_id, Some(hash)));
                        continue;
                    }
                    items.push(Delivery {
                        hash,
                        payload,
                        contact_id: d.contact_id.clone(),
                        attempts: d.attempts,
                        add_state: d.add_state,
                        remote_id: d.remote_id.clone(),
                    });
                }
                Target::Skip => {
                    replans.push((&d.contact_id, None));
                    self.count(|s| s.skipped += 1);
                }
            }
        }
        if !replans.is_empty() {
            self.outbox.replan(&replans).await?;
            self.moved(replans.len() as u64);
        }
        if !gone.is_empty() {
            let outcomes: Vec<_> = gone
                .iter()
                .map(|d| {
                    let error = "contact is no longer in the database".to_owned();
                    let dead = Outcome::Failed {
                        error,
                        retry_at: None,
                    };
                    (d.contact_id.as_str(), d.payload_hash, dead)
                })
                .collect();
            self.settle(&outcomes, false).await?;
            self.count(|s| s.dead += gone.len() as u64);
        }
        Ok(items)
    }

    // --- outcomes --------------------------------------------------------------------------

    /// Record outcomes; answers for a payload no longer planned change nothing but are
    /// counted and logged.
    async fn settle(
        &self,
        outcomes: &[(&str, [u8; 32], Outcome)],
        added: bool,
    ) -> Result<(), StoreError> {
        let applied = self.outbox.settle(outcomes, added).await?;
        self.moved(applied);
        let stale = outcomes.len() as u64 - applied;
        if stale > 0 {
            self.count(|s| s.stale += stale);
            info!(destination = %self.destination(), stale, "answers for payloads no longer planned; the newer plans stay due");
        }
        Ok(())
    }

    /// The destination holds these items' payloads.
    async fn acked(&self, items: &[&Delivery], ack: Ack) -> Result<(), StoreError> {
        crash_point("push.before_ack");
        let n = items.len() as u64;
        match ack {
            Ack::Created => self.count(|s| s.added += n),
            Ack::UpdatedHeld | Ack::Written => self.count(|s| s.updated += n),
        }
        let added = matches!(ack, Ack::Created | Ack::UpdatedHeld);
        let outcomes: Vec<_> = items
            .iter()
            .map(|i| (i.contact_id.as_str(), i.hash, Outcome::Ack))
            .collect();
        self.settle(&outcomes, added).await?;
        *self.hold.lock().expect("hold lock") = None;
        Ok(())
    }

    /// Record a failed attempt for each item: a dead letter when permanent or out of attempts,
    /// else a retry after the backoff. A 429 or refused credentials hold the whole destination
    /// and do not count as an attempt.
    async fn failed(&self, items: &[&Delivery], e: &PushError) -> Result<(), StoreError> {
        let now = store::now_ms();
        let dest = self.destination().as_str();
        let hold = match e.kind {
            FailureKind::RateLimited => {
                // The gate paused itself when the 429 came in.
                let pause = self.sink.gate().paused_for().unwrap_or(self.retry.initial);
                self.count(|s| s.rate_limited += 1);
                warn!(
                    destination = dest,
                    pause_ms = pause.as_millis() as u64,
                    "destination rate limited; pausing it"
                );
                Some(pause)
            }
            FailureKind::Auth | FailureKind::Misconfigured => {
                let hold = if e.kind == FailureKind::Auth {
                    Hold::Auth
                } else {
                    Hold::Misconfigured
                };
                let pause = self.retry.max;
                self.sink.gate().pause(pause, hold.reason());
                *self.hold.lock().expect("hold lock") = Some(hold);
                warn!(destination = dest, error = %crate::telemetry::mask_pii(&e.message), pause_s = pause.as_secs(), "{}; pausing it", hold.describe());
                Some(pause)
            }
            _ => None,
        };
        let outcomes: Vec<_> = items
            .iter()
            .map(|item| {
                let outcome = match hold {
                    Some(pause) => Outcome::Deferred {
                        until: now + millis(pause),
                    },
                    None => {
                        let retry_at = self.retry_at(item.attempts, e, now);
                        match retry_at {
                            Some(_) => {
                                crate::metrics::push_retry(self.destination());
                                self.count(|s| s.retried += 1);
                            }
                            None => {
                                self.count(|s| s.dead += 1);
                                warn!(destination = dest, contact = %item.contact_id, error = %crate::telemetry::mask_pii(&e.message), "delivery is a dead letter");
                            }
                        }
                        Outcome::Failed {
                            error: e.message.clone(),
                            retry_at,
                        }
                    }
                };
                (item.contact_id.as_str(), item.hash, outcome)
            })
            .collect();
        self.settle(&outcomes, false).await
    }

    /// When to try again after a transient failure, `None` when it is a dead letter.
    fn retry_at(&self, attempts: u32, e: &PushError, now: i64) -> Option<i64> {
        let transient = matches!(e.kind, FailureKind::Transient);
        if !transient || attempts + 1 >= self.retry.max_attempts {
            return None;
        }
        let delay = self
            .retry
            .delay(attempts)
            .max(e.retry_after.unwrap_or_default());
        Some(now + millis(delay))
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl PushContext for Pusher {
    /// A whole chunk: its requests all queue at the gate at once, and the gate admits them in
    /// order, so running chunks are sent one after the other, not interleaved. Interleaved,
    /// both finished sending together and the pipe sat empty while the next chunk waited for
    /// their last answers (docs/performance.md). The gate holds what is in flight to its limit.
    fn in_flight(&self) -> usize {
        self.chunk_size()
    }

    /// Either refusal holds the whole destination; sending more would only fail the same way.
    fn held(&self) -> bool {
        self.held_for().is_some()
    }

    fn ack<'a>(
        &'a self,
        deliveries: &'a [&'a Delivery],
        ack: Ack,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.acked(deliveries, ack))
    }

    fn fail<'a>(
        &'a self,
        deliveries: &'a [&'a Delivery],
        error: &'a PushError,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.failed(deliveries, error))
    }

    fn mark_add_intent<'a>(
        &'a self,
        contact_ids: &'a [&'a str],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.outbox.mark_add_intent(contact_ids))
    }

    fn skip<'a>(&'a self, deliveries: &'a [&'a Delivery]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let outcomes: Vec<_> = deliveries
                .iter()
                .map(|d| (d.contact_id.as_str(), d.hash, Outcome::Skipped))
                .collect();
            self.count(|s| s.skipped += deliveries.len() as u64);
            self.settle(&outcomes, false).await
        })
    }

    fn clear_add_intent<'a>(
        &'a self,
        contact_ids: &'a [&'a str],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.outbox.clear_add_intent(contact_ids))
    }

    fn set_remote_ids<'a>(
        &'a self,
        ids: &'a [(&'a str, String)],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.outbox.set_remote_ids(ids).await?;
            self.count(|s| s.registered += ids.len() as u64);
            Ok(())
        })
    }

    fn forget_remote_id<'a>(
        &'a self,
        contact_id: &'a str,
        stale: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.outbox.forget_remote_id(contact_id, stale))
    }
}
