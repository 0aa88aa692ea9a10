//! Pushing one destination: take due deliveries from the outbox in bounded chunks, send them
//! (batched where the API allows, a bounded number in flight), and record each outcome.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{StreamExt, stream};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::net::{Gate, RetryPolicy};
use crate::sink::engagelab::{EngagelabClient, REGISTER_BATCH};
use crate::sink::omi::OmiClient;
use crate::sink::{Destination, FailureKind, Payloads, PushError, Target, payload_hash};
use crate::store::{self, DueDelivery, Store, StoreError};

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
}

/// A due delivery with the payload it will carry.
#[derive(Debug, Clone)]
struct Item {
    contact_id: String,
    payload: Value,
    hash: [u8; 32],
    attempts: u32,
    add_state: Option<String>,
    remote_id: Option<String>,
}

pub struct Pusher {
    store: Store,
    sink: Sink,
    payloads: Payloads,
    retry: RetryPolicy,
    batch_size: usize,
    stats: Mutex<PushStats>,
    auth_refused: AtomicBool,
    misconfigured: AtomicBool,
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
            store,
            sink,
            payloads,
            retry,
            batch_size: batch_size.max(1),
            stats: Mutex::new(PushStats::default()),
            auth_refused: AtomicBool::new(false),
            misconfigured: AtomicBool::new(false),
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
        self.auth_refused.load(Ordering::Relaxed)
    }

    /// True while the destination answers as if its `base_url` were wrong (cleared by the next
    /// success).
    pub fn misconfigured(&self) -> bool {
        self.misconfigured.load(Ordering::Relaxed)
    }

    /// Either refusal holds the whole destination; sending more would only fail the same way.
    fn held(&self) -> bool {
        self.auth_refused() || self.misconfigured()
    }

    fn count(&self, f: impl FnOnce(&mut PushStats)) {
        f(&mut self.stats.lock().expect("stats lock"));
    }

    /// Send everything due now, chunk by chunk, until nothing is due, the destination refuses
    /// our credentials, or `stop` fires (checked between chunks). Returns how many deliveries
    /// were handled.
    pub async fn drain_once(&self, stop: &CancellationToken) -> Result<usize, StoreError> {
        let chunk = (self.batch_size * IN_FLIGHT).max(REGISTER_BATCH) as u32;
        let mut handled = 0;
        loop {
            let due = store::due_deliveries(
                &self.store,
                self.destination().as_str(),
                store::now_ms(),
                chunk,
            )
            .await?;
            if due.is_empty() {
                break;
            }
            handled += due.len();
            let items = self.prepare(due).await?;
            match &self.sink {
                Sink::Omi(client) => self.push_omi(client, items).await?,
                Sink::Engagelab(client) => self.push_engagelab(client, items).await?,
            }
            if self.held() || stop.is_cancelled() {
                break;
            }
        }
        if handled > 0 {
            let s = self.stats();
            info!(destination = %self.destination(), handled, added = s.added, updated = s.updated, dead = s.dead, retried = s.retried, "push batch");
        }
        Ok(handled)
    }

    /// When the next pending delivery is due (epoch ms), `None` when nothing is pending.
    pub async fn next_due_at(&self) -> Result<Option<i64>, StoreError> {
        store::next_due_at(&self.store, self.destination().as_str()).await
    }

    /// Attach payloads; a contact gone from the database or with nothing to send is settled
    /// here and not sent.
    async fn prepare(&self, due: Vec<DueDelivery>) -> Result<Vec<Item>, StoreError> {
        let ids: Vec<&str> = due.iter().map(|d| d.contact_id.as_str()).collect();
        let contacts: HashMap<String, _> = store::load_contacts(&self.store, &ids)
            .await?
            .into_iter()
            .map(|c| (c.id.as_str().to_owned(), c))
            .collect();
        let mut items = Vec::with_capacity(due.len());
        for d in due {
            let target = contacts
                .get(&d.contact_id)
                .map(|c| self.payloads.target(self.destination(), c));
            match target {
                Some(Target::Send(payload)) => items.push(Item {
                    hash: payload_hash(&payload),
                    payload,
                    contact_id: d.contact_id,
                    attempts: d.attempts,
                    add_state: d.add_state,
                    remote_id: d.remote_id,
                }),
                Some(Target::Skip) => {
                    let mut conn = self.store.acquire().await?;
                    let plan = [(d.contact_id.as_str(), None)];
                    store::plan_deliveries(
                        &mut conn,
                        self.destination().as_str(),
                        &plan,
                        store::now_ms(),
                    )
                    .await?;
                    self.count(|s| s.skipped += 1);
                }
                None => {
                    let mut conn = self.store.acquire().await?;
                    store::record_failure(
                        &mut conn,
                        self.destination().as_str(),
                        &d.contact_id,
                        "contact is no longer in the database",
                        None,
                        store::now_ms(),
                    )
                    .await?;
                    self.count(|s| s.dead += 1);
                }
            }
        }
        Ok(items)
    }

    // --- OMI -----------------------------------------------------------------------------

    /// Contacts OMI never acknowledged go out in `addMany` batches; the rest, including any
    /// whose add may or may not have happened, as `update` — and are added only if OMI says
    /// it does not have them. So no contact is ever added twice.
    async fn push_omi(&self, client: &OmiClient, items: Vec<Item>) -> Result<(), StoreError> {
        let (mut adds, updates): (Vec<Item>, Vec<Item>) =
            items.into_iter().partition(|i| i.add_state.is_none());
        let not_found: Vec<Result<Option<Item>, StoreError>> = stream::iter(updates)
            .map(|item| self.omi_update(client, item))
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        for item in not_found {
            adds.extend(item?);
        }
        let batches: Vec<Vec<Item>> = adds.chunks(self.batch_size).map(<[Item]>::to_vec).collect();
        let results: Vec<Result<(), StoreError>> = stream::iter(batches)
            .map(|batch| self.omi_add(client, batch))
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Returns the item when OMI does not have the contact, so it gets added.
    async fn omi_update(&self, client: &OmiClient, item: Item) -> Result<Option<Item>, StoreError> {
        match client.update(&item.payload).await {
            Ok(()) => {
                self.acknowledge(&[&item], Some("added")).await?;
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

    /// `addMany` one batch; a refused batch is split in halves until the bad records stand
    /// alone and become dead letters.
    fn omi_add<'a>(
        &'a self,
        client: &'a OmiClient,
        mut batch: Vec<Item>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let refs: Vec<&Item> = batch.iter().collect();
            // The intent is committed before the request: after a crash or an unknown outcome
            // the contact is sent as an update first.
            self.set_add_state(&refs, Some("intent")).await?;
            let payloads: Vec<Value> = batch.iter().map(|i| i.payload.clone()).collect();
            match client.add_many(&payloads).await {
                Ok(()) => {
                    self.acknowledge(&refs, Some("added")).await?;
                    self.count(|s| s.added += batch.len() as u64);
                    Ok(())
                }
                Err(e) if e.kind == FailureKind::Permanent => {
                    // A refused batch created nothing.
                    self.set_add_state(&refs, None).await?;
                    if batch.len() == 1 {
                        return self.fail(&refs, &e).await;
                    }
                    let right = batch.split_off(batch.len() / 2);
                    self.omi_add(client, batch).await?;
                    self.omi_add(client, right).await
                }
                Err(e) => {
                    if !e.maybe_applied {
                        self.set_add_state(&refs, None).await?;
                    }
                    self.fail(&refs, &e).await
                }
            }
        })
    }

    async fn set_add_state(&self, items: &[&Item], state: Option<&str>) -> Result<(), StoreError> {
        let mut tx = self.store.begin().await?;
        for item in items {
            store::set_add_state(
                &mut tx,
                self.destination().as_str(),
                &item.contact_id,
                state,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
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
            ready.extend(self.register(client, batch).await?);
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

    /// Register a batch; returns the items that now have an EUID.
    async fn register(
        &self,
        client: &EngagelabClient,
        batch: &[Item],
    ) -> Result<Vec<Item>, StoreError> {
        let ids: Vec<&str> = batch.iter().map(|i| i.contact_id.as_str()).collect();
        let euids: HashMap<String, i64> = match client.register(&ids).await {
            Ok(pairs) => pairs.into_iter().collect(),
            Err(e) => {
                self.fail(&batch.iter().collect::<Vec<_>>(), &e).await?;
                return Ok(Vec::new());
            }
        };
        let mut ready = Vec::with_capacity(batch.len());
        let mut missing = Vec::new();
        let mut tx = self.store.begin().await?;
        for item in batch {
            match euids.get(&item.contact_id) {
                Some(euid) => {
                    let euid = euid.to_string();
                    store::set_remote_id(
                        &mut tx,
                        self.destination().as_str(),
                        &item.contact_id,
                        Some(&euid),
                    )
                    .await?;
                    ready.push(Item {
                        remote_id: Some(euid),
                        ..item.clone()
                    });
                }
                None => missing.push(item),
            }
        }
        tx.commit().await?;
        self.count(|s| s.registered += ready.len() as u64);
        if !missing.is_empty() {
            let e = PushError::new(
                FailureKind::Transient,
                "EngageLab register answered without this identity's EUID",
            );
            self.fail(&missing, &e).await?;
        }
        Ok(ready)
    }

    /// Set one contact's information; an EUID EngageLab no longer knows is registered again
    /// once.
    async fn engagelab_contact(
        &self,
        client: &EngagelabClient,
        item: Item,
    ) -> Result<(), StoreError> {
        let mut item = item;
        for renewed in [false, true] {
            let euid = item
                .remote_id
                .as_deref()
                .and_then(|id| id.parse::<i64>().ok());
            let result = match euid {
                Some(euid) => client.set_contact(euid, &item.payload).await,
                None => Err(PushError::new(
                    FailureKind::InvalidId,
                    "stored EUID is not a number",
                )),
            };
            match result {
                Ok(()) => {
                    self.acknowledge(&[&item], None).await?;
                    self.count(|s| s.updated += 1);
                    return Ok(());
                }
                Err(e) if e.kind == FailureKind::InvalidId && !renewed => {
                    let mut conn = self.store.acquire().await?;
                    store::set_remote_id(
                        &mut conn,
                        self.destination().as_str(),
                        &item.contact_id,
                        None,
                    )
                    .await?;
                    drop(conn);
                    match self
                        .register(client, std::slice::from_ref(&item))
                        .await?
                        .pop()
                    {
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

    async fn acknowledge(
        &self,
        items: &[&Item],
        add_state: Option<&str>,
    ) -> Result<(), StoreError> {
        let now = store::now_ms();
        let mut tx = self.store.begin().await?;
        for item in items {
            if add_state.is_some() {
                store::set_add_state(
                    &mut tx,
                    self.destination().as_str(),
                    &item.contact_id,
                    add_state,
                )
                .await?;
            }
            store::record_ack(
                &mut tx,
                self.destination().as_str(),
                &item.contact_id,
                &item.hash,
                now,
            )
            .await?;
        }
        tx.commit().await?;
        self.auth_refused.store(false, Ordering::Relaxed);
        self.misconfigured.store(false, Ordering::Relaxed);
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
            FailureKind::Auth => {
                let pause = self.retry.max;
                self.sink.gate().pause(pause, "auth");
                self.auth_refused.store(true, Ordering::Relaxed);
                warn!(destination = dest, error = %crate::telemetry::mask_pii(&e.message), pause_s = pause.as_secs(), "destination refused our credentials; pausing it");
                Some(pause)
            }
            FailureKind::Misconfigured => {
                let pause = self.retry.max;
                self.sink.gate().pause(pause, "misconfigured");
                self.misconfigured.store(true, Ordering::Relaxed);
                warn!(destination = dest, error = %crate::telemetry::mask_pii(&e.message), pause_s = pause.as_secs(), "destination answers as if its base_url were wrong; pausing it");
                Some(pause)
            }
            _ => None,
        };
        let mut tx = self.store.begin().await?;
        for item in items {
            match hold {
                Some(pause) => {
                    store::defer_delivery(&mut tx, dest, &item.contact_id, now + millis(pause))
                        .await?;
                }
                None => {
                    let retry_at = self.retry_at(item.attempts, e, now);
                    match retry_at {
                        Some(_) => crate::metrics::push_retry(dest),
                        None => {
                            warn!(destination = dest, contact = %item.contact_id, error = %crate::telemetry::mask_pii(&e.message), "delivery is a dead letter")
                        }
                    }
                    store::record_failure(
                        &mut tx,
                        dest,
                        &item.contact_id,
                        &e.message,
                        retry_at,
                        now,
                    )
                    .await?;
                    self.count(|s| {
                        if retry_at.is_some() {
                            s.retried += 1
                        } else {
                            s.dead += 1
                        }
                    });
                }
            }
        }
        tx.commit().await?;
        Ok(())
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
