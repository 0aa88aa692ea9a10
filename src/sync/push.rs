//! Pushing one destination: take due deliveries from the outbox in bounded chunks, send them
//! (batched where the API allows, a bounded number in flight), and record each outcome for the
//! payload it was sent for. The guarantees and the tests that prove them are listed in
//! docs/reliability.md.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{StreamExt, stream};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::failpoint::crash_point;
use crate::net::{Gate, RetryPolicy};
use crate::sink::engagelab::{EngagelabClient, REGISTER_BATCH};
use crate::sink::omi::OmiClient;
use crate::sink::{Destination, FailureKind, Payloads, PushError, Target};
use crate::store::{self, AddState, DueDelivery, Outbox, Outcome, Store, StoreError};

/// Requests one destination has in flight at most. The rate limiter sets the pace; this only
/// has to cover the latency of a request at that pace.
const IN_FLIGHT: usize = 8;

/// The client of one destination.
pub enum Sink {
    Omi(OmiClient),
    Engagelab(EngagelabClient),
}

impl Sink {
    pub fn destination(&self) -> Destination {
        match self {
            Self::Omi(_) => Destination::Omi,
            Self::Engagelab(_) => Destination::Engagelab,
        }
    }

    pub fn gate(&self) -> &Gate {
        match self {
            Self::Omi(c) => c.gate(),
            Self::Engagelab(c) => c.gate(),
        }
    }
}

/// What a pusher has done since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushStats {
    /// OMI contacts created by `addMany`.
    pub added: u64,
    /// OMI `update`s and EngageLab contact writes acknowledged.
    pub updated: u64,
    /// Deliveries found to have nothing to send.
    pub skipped: u64,
    /// Deliveries that became dead letters.
    pub dead: u64,
    /// Failed attempts that will be tried again.
    pub retried: u64,
    /// Requests refused with 429.
    pub rate_limited: u64,
    /// EUIDs obtained from EngageLab.
    pub registered: u64,
    /// Answers for a payload that was no longer the planned one; they changed nothing.
    pub stale: u64,
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

/// A due delivery with the payload it will carry and the hash it was planned for.
#[derive(Debug, Clone)]
struct Item {
    contact_id: String,
    payload: Value,
    hash: [u8; 32],
    attempts: u32,
    add_state: Option<AddState>,
    remote_id: Option<String>,
}

pub struct Pusher {
    store: Store,
    outbox: Outbox,
    sink: Sink,
    payloads: Payloads,
    retry: RetryPolicy,
    batch_size: usize,
    stats: Mutex<PushStats>,
    /// Why the whole destination is held until its next success, if it is.
    hold: Mutex<Option<Hold>>,
    /// Requests sent plus delivery rows changed: a chunk that moves neither is a stall.
    progress: AtomicU64,
}

impl Pusher {
    pub fn new(
        store: Store,
        sink: Sink,
        payloads: Payloads,
        retry: RetryPolicy,
        batch_size: usize,
    ) -> Self {
        Self {
            outbox: Outbox::new(store.clone(), sink.destination()),
            store,
            sink,
            payloads,
            retry,
            batch_size: batch_size.max(1),
            stats: Mutex::new(PushStats::default()),
            hold: Mutex::new(None),
            progress: AtomicU64::new(0),
        }
    }

    pub fn destination(&self) -> Destination {
        self.sink.destination()
    }

    pub fn sink(&self) -> &Sink {
        &self.sink
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

    /// Either refusal holds the whole destination; sending more would only fail the same way.
    fn held(&self) -> bool {
        self.held_for().is_some()
    }

    fn count(&self, f: impl FnOnce(&mut PushStats)) {
        f(&mut self.stats.lock().expect("stats lock"));
    }

    fn moved(&self, n: u64) {
        self.progress.fetch_add(n, Ordering::Relaxed);
    }

    /// Send everything due now, chunk by chunk, until nothing is due, the destination refuses
    /// our credentials, or `stop` fires (checked between chunks). Returns how many deliveries
    /// were handled. It cannot spin: a chunk that neither sends a request nor changes a
    /// delivery ends the drain with an error in the log.
    pub async fn drain_once(&self, stop: &CancellationToken) -> Result<usize, StoreError> {
        let chunk = (self.batch_size * IN_FLIGHT).max(REGISTER_BATCH) as u32;
        let mut handled = 0;
        loop {
            let due = self.outbox.due(store::now_ms(), chunk).await?;
            if due.is_empty() {
                break;
            }
            handled += due.len();
            let before = self.progress.load(Ordering::Relaxed);
            let items = self.prepare(due).await?;
            match &self.sink {
                Sink::Omi(client) => self.push_omi(client, items).await?,
                Sink::Engagelab(client) => self.push_engagelab(client, items).await?,
            }
            if self.progress.load(Ordering::Relaxed) == before {
                error!(destination = %self.destination(), "a chunk of due deliveries sent nothing and settled nothing; ending this drain instead of spinning");
                break;
            }
            if self.held() || stop.is_cancelled() {
                break;
            }
        }
        if handled > 0 {
            let s = self.stats();
            info!(destination = %self.destination(), handled, added = s.added, updated = s.updated, dead = s.dead, retried = s.retried, stale = s.stale, "push batch");
        }
        Ok(handled)
    }

    /// When the next pending delivery is due (epoch ms), `None` when nothing is pending.
    pub async fn next_due_at(&self) -> Result<Option<i64>, StoreError> {
        self.outbox.next_due_at().await
    }

    /// Attach payloads. A delivery whose payload, computed now, is not the planned one (the
    /// contact is gone, or has nothing left to send) is re-planned or settled here, not sent.
    async fn prepare(&self, due: Vec<DueDelivery>) -> Result<Vec<Item>, StoreError> {
        let ids: Vec<&str> = due.iter().map(|d| d.contact_id.as_str()).collect();
        let contacts: HashMap<String, _> = store::load_contacts(&self.store, &ids)
            .await?
            .into_iter()
            .map(|c| (c.id.as_str().to_owned(), c))
            .collect();
        let mut items = Vec::with_capacity(due.len());
        let mut replans: Vec<(&str, Option<[u8; 32]>)> = Vec::new();
        let mut gone = Vec::new();
        for d in &due {
            let Some(contact) = contacts.get(&d.contact_id) else {
                gone.push(d);
                continue;
            };
            match self.payloads.target(self.destination(), contact) {
                Target::Send(payload) => {
                    let hash = crate::sink::payload_hash(&payload);
                    if hash != d.payload_hash {
                        replans.push((&d.contact_id, Some(hash)));
                        continue;
                    }
                    items.push(Item {
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

    // --- OMI -----------------------------------------------------------------------------

    /// Contacts OMI was never sent go out in `addMany` batches; the rest, including any whose
    /// add may or may not have happened, as `update`, and are added only if OMI says it does
    /// not have them. So no contact is ever added twice.
    async fn push_omi(&self, client: &OmiClient, items: Vec<Item>) -> Result<(), StoreError> {
        let tag_removes = super::outbox::omi_tag_removes(&self.store).await?;
        let (mut adds, updates): (Vec<Item>, Vec<Item>) =
            items.into_iter().partition(|i| i.add_state.is_none());
        adds.extend(self.omi_updates(client, updates, &tag_removes).await?);
        let batches: Vec<Vec<Item>> = adds.chunks(self.batch_size).map(<[Item]>::to_vec).collect();
        let results: Vec<Result<(), StoreError>> = stream::iter(batches)
            .map(|batch| self.omi_add(client, batch, &tag_removes))
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// `update` each item; returns the items OMI does not have, to be added.
    async fn omi_updates(
        &self,
        client: &OmiClient,
        items: Vec<Item>,
        tag_removes: &[String],
    ) -> Result<Vec<Item>, StoreError> {
        let results: Vec<Result<Option<Item>, StoreError>> = stream::iter(items)
            .map(|item| self.omi_update(client, item, tag_removes))
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        let mut not_found = Vec::new();
        for result in results {
            not_found.extend(result?);
        }
        Ok(not_found)
    }

    /// Returns the item when OMI does not have the contact, so it gets added.
    async fn omi_update(
        &self,
        client: &OmiClient,
        item: Item,
        tag_removes: &[String],
    ) -> Result<Option<Item>, StoreError> {
        self.moved(1);
        let mut payload = item.payload.clone();
        if !tag_removes.is_empty() {
            payload["tagRemoves"] = serde_json::json!(tag_removes);
        }
        match client.update(&payload).await {
            Ok(()) => {
                self.ack(&[&item], true).await?;
                self.count(|s| s.updated += 1);
                Ok(None)
            }
            Err(e) if e.kind == FailureKind::NotFound => Ok(Some(item)),
            Err(e) => {
                self.fail(&[&item], &e).await?;
                Ok(None)
            }
        }
    }

    /// `addMany` one batch. The intent is on disk before the request leaves. A refused batch
    /// is never assumed to have created nothing: unless OMI refused the request as a whole
    /// before writing (see `omi::client`), each record is first looked for with `update`, and
    /// only those OMI does not have are added again, in halves, until a bad record stands
    /// alone and becomes a dead letter.
    fn omi_add<'a>(
        &'a self,
        client: &'a OmiClient,
        mut batch: Vec<Item>,
        tag_removes: &'a [String],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let refs: Vec<&Item> = batch.iter().collect();
            let ids: Vec<&str> = batch.iter().map(|i| i.contact_id.as_str()).collect();
            self.outbox.mark_add_intent(&ids).await?;
            crash_point("omi.after_intent");
            let payloads: Vec<Value> = batch.iter().map(|i| i.payload.clone()).collect();
            self.moved(1);
            match client.add_many(&payloads).await {
                Ok(()) => {
                    self.ack(&refs, true).await?;
                    self.count(|s| s.added += batch.len() as u64);
                    Ok(())
                }
                Err(e) if e.kind == FailureKind::Permanent => {
                    if e.maybe_applied {
                        batch = self.omi_updates(client, batch, tag_removes).await?;
                        if batch.is_empty() {
                            return Ok(());
                        }
                    }
                    let ids: Vec<&str> = batch.iter().map(|i| i.contact_id.as_str()).collect();
                    self.outbox.clear_add_intent(&ids).await?;
                    if batch.len() == 1 {
                        return self.fail(&[&batch[0]], &e).await;
                    }
                    let right = batch.split_off(batch.len() / 2);
                    self.omi_add(client, batch, tag_removes).await?;
                    self.omi_add(client, right, tag_removes).await
                }
                Err(e) => {
                    if !e.maybe_applied {
                        self.outbox.clear_add_intent(&ids).await?;
                    }
                    self.fail(&refs, &e).await
                }
            }
        })
    }

    // --- EngageLab -----------------------------------------------------------------------

    /// Contacts without an EUID are registered (≤ 100 a call) first; then each contact's
    /// information is set by EUID.
    async fn push_engagelab(
        &self,
        client: &EngagelabClient,
        items: Vec<Item>,
    ) -> Result<(), StoreError> {
        let (mut ready, unregistered): (Vec<Item>, Vec<Item>) =
            items.into_iter().partition(|i| i.remote_id.is_some());
        for batch in unregistered.chunks(REGISTER_BATCH) {
            ready.extend(self.register(client, batch.to_vec()).await?);
            if self.held() {
                return Ok(());
            }
        }
        let results: Vec<Result<(), StoreError>> = stream::iter(ready)
            .map(|item| self.engagelab_contact(client, item))
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Register a batch; returns the items that now have an EUID. A batch refused for a
    /// parameter is split in halves like an `addMany` batch, so one bad identity is the only
    /// dead letter (registering is idempotent, so a resend is harmless).
    fn register<'a>(
        &'a self,
        client: &'a EngagelabClient,
        mut batch: Vec<Item>,
    ) -> BoxFuture<'a, Result<Vec<Item>, StoreError>> {
        Box::pin(async move {
            let ids: Vec<&str> = batch.iter().map(|i| i.contact_id.as_str()).collect();
            self.moved(1);
            let euids: HashMap<String, i64> = match client.register(&ids).await {
                Ok(pairs) => pairs.into_iter().collect(),
                Err(e) if e.kind == FailureKind::Permanent && batch.len() > 1 => {
                    let right = batch.split_off(batch.len() / 2);
                    let mut ready = self.register(client, batch).await?;
                    ready.extend(self.register(client, right).await?);
                    return Ok(ready);
                }
                Err(e) => {
                    self.fail(&batch.iter().collect::<Vec<_>>(), &e).await?;
                    return Ok(Vec::new());
                }
            };
            crash_point("engagelab.before_euid_commit");
            let (ready, missing): (Vec<Item>, Vec<Item>) = batch
                .into_iter()
                .map(|item| Item {
                    remote_id: euids.get(&item.contact_id).map(i64::to_string),
                    ..item
                })
                .partition(|i| i.remote_id.is_some());
            let known: Vec<(&str, String)> = ready
                .iter()
                .filter_map(|i| Some((i.contact_id.as_str(), i.remote_id.clone()?)))
                .collect();
            self.outbox.set_remote_ids(&known).await?;
            self.count(|s| s.registered += ready.len() as u64);
            if !missing.is_empty() {
                let e = PushError::new(
                    FailureKind::Transient,
                    "EngageLab register answered without this identity's EUID",
                );
                self.fail(&missing.iter().collect::<Vec<_>>(), &e).await?;
            }
            Ok(ready)
        })
    }

    /// Set one contact's information; an EUID EngageLab no longer knows is registered again
    /// once, and a second invalid EUID is a dead letter.
    async fn engagelab_contact(
        &self,
        client: &EngagelabClient,
        mut item: Item,
    ) -> Result<(), StoreError> {
        for renewed in [false, true] {
            let stored = item.remote_id.clone().unwrap_or_default();
            let result = match stored.parse::<i64>() {
                Ok(euid) => {
                    self.moved(1);
                    client.set_contact(euid, &item.payload).await
                }
                Err(_) => Err(PushError::new(
                    FailureKind::InvalidId,
                    "stored EUID is not a number",
                )),
            };
            match result {
                Ok(()) => {
                    self.ack(&[&item], false).await?;
                    self.count(|s| s.updated += 1);
                    return Ok(());
                }
                Err(e) if e.kind == FailureKind::InvalidId && !renewed => {
                    self.outbox
                        .forget_remote_id(&item.contact_id, &stored)
                        .await?;
                    match self.register(client, vec![item]).await?.pop() {
                        Some(registered) => item = registered,
                        None => return Ok(()),
                    }
                }
                Err(mut e) => {
                    if e.kind == FailureKind::InvalidId {
                        e.kind = FailureKind::Permanent;
                    }
                    return self.fail(&[&item], &e).await;
                }
            }
        }
        Ok(())
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

    /// The destination holds these items' payloads (and, for OMI, the contacts).
    async fn ack(&self, items: &[&Item], added: bool) -> Result<(), StoreError> {
        crash_point("push.before_ack");
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
    async fn fail(&self, items: &[&Item], e: &PushError) -> Result<(), StoreError> {
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
