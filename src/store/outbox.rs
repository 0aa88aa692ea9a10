//! The outbox: one row per contact and destination saying what the destination should hold
//! (`payload_hash`), what it acknowledged (`acked_hash`), and when to try next. Every change
//! of a row is one transition function below, and each states its precondition in its SQL.
//! The state machine is drawn in docs/reliability.md.
//!
//! Two rules hold everywhere:
//! - An outcome (ack, failure, deferral) names the payload hash it was for, and changes the
//!   row only while that payload is still the planned one (`payload_hash IS ?`, which is
//!   also true for two NULLs). A late answer for an older plan changes nothing.
//! - Facts about the contact at the destination (OMI may hold it; its EngageLab EUID) are not
//!   outcomes of a payload: they are recorded whatever the plan is by then.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sqlx::sqlite::SqliteRow;
use sqlx::{FromRow, Row};
use tokio::sync::oneshot;

use super::{Conn, Store, StoreError};
use crate::domain::Destination;

/// Where a delivery stands. Stored as lower-case text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(rename_all = "lowercase")]
pub enum DeliveryState {
    /// The planned payload is not acknowledged yet; due at `next_attempt_at`.
    Pending,
    /// The destination acknowledged the planned payload.
    Synced,
    /// Failed permanently or ran out of attempts; waits for `dead-letters retry` or a new plan.
    Dead,
    /// Nothing to send (EngageLab without phone and e-mail), or nothing to be sent for the
    /// planned payload (OMI: a deleted contact it never held, docs/delivery.md#deletions).
    Skipped,
}

/// OMI: whether OMI may already hold the contact. Stored as text, NULL for "never sent".
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(rename_all = "lowercase")]
pub enum AddState {
    /// An add was (durably) about to be sent or was sent with an unknown outcome: OMI may hold
    /// the contact, so it is next sent as `update`, and added only if OMI says it has none.
    Intent,
    /// OMI acknowledged holding the contact.
    Added,
}

/// A delivery whose time has come, with the payload hash it was planned for.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct DueDelivery {
    pub contact_id: String,
    #[sqlx(try_from = "Vec<u8>")]
    pub payload_hash: [u8; 32],
    pub remote_id: Option<String>,
    pub add_state: Option<AddState>,
    #[sqlx(try_from = "i64")]
    pub attempts: u32,
}

/// What a delivery row holds, as far as a preview needs it to tell what a plan would do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryView {
    pub state: DeliveryState,
    pub payload_hash: Option<[u8; 32]>,
    pub add_state: Option<AddState>,
    pub remote_id: Option<String>,
}

/// The rules of [`plan`] in Rust, for a preview that must not write: keep the two in step.
impl DeliveryView {
    /// The row [`plan`] inserts for a contact planned for the first time.
    pub fn planned(hash: Option<[u8; 32]>) -> Self {
        Self {
            state: planned_state(hash),
            payload_hash: hash,
            add_state: None,
            remote_id: None,
        }
    }

    /// The row once [`plan`] has planned `hash` over it.
    pub fn replan(&mut self, hash: Option<[u8; 32]>) {
        if self.payload_hash != hash || (hash.is_none() && self.state != DeliveryState::Skipped) {
            self.state = planned_state(hash);
            self.payload_hash = hash;
        }
    }
}

fn planned_state(hash: Option<[u8; 32]>) -> DeliveryState {
    if hash.is_some() {
        DeliveryState::Pending
    } else {
        DeliveryState::Skipped
    }
}

impl<'r> FromRow<'r, SqliteRow> for DeliveryView {
    fn from_row(row: &'r SqliteRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            state: row.try_get("state")?,
            payload_hash: super::optional_hash(row, "payload_hash")?,
            add_state: row.try_get("add_state")?,
            remote_id: row.try_get("remote_id")?,
        })
    }
}

/// What became of one send. Each names the payload hash it was for.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The destination holds `sent`.
    Ack,
    /// A failed attempt: retried at `retry_at`, or a dead letter when that is `None`.
    Failed {
        error: String,
        retry_at: Option<i64>,
    },
    /// Held until `until` without counting an attempt: the destination paused (429, refused
    /// credentials, misconfiguration), the record itself did not fail.
    Deferred { until: i64 },
    /// Nothing is to be sent for `sent` after all: held as skipped until a new plan.
    Skipped,
}

/// A contact and the hash of the payload a destination should hold for it (`None`: nothing
/// to send).
pub type PlannedPayload<'a> = (&'a str, Option<[u8; 32]>);

/// Plan `destination`'s payload for each contact: the hash of what it should hold, or `None`
/// when there is nothing to send.
///
/// Precondition: none; the plan is the truth. A changed hash makes the delivery due at once
/// with a fresh attempt count, even a dead letter (new content may well be accepted), and
/// even when it is the acknowledged payload again: the payload it replaces may be in flight
/// or may have been applied, so only sending it again makes the destination hold it. An
/// unchanged hash changes nothing, so a dead letter stays dead. A `None` plan is always
/// `skipped`, whatever the row was, so no row is ever pending with nothing to send.
/// [`DeliveryView::replan`] mirrors this for the dry run.
pub(super) async fn plan(
    conn: &mut Conn,
    destination: Destination,
    plans: &[(&str, Option<[u8; 32]>)],
    now: i64,
) -> Result<(), StoreError> {
    if plans.is_empty() {
        return Ok(());
    }
    let rows: Vec<serde_json::Value> = plans
        .iter()
        .map(|(id, hash)| serde_json::json!({"id": id, "hash": hash.map(|h| super::hex(&h))}))
        .collect();
    sqlx::query(
        "INSERT INTO deliveries (contact_id, destination, state, payload_hash, attempts,
                                 next_attempt_at, updated_at)
         SELECT value ->> 'id', ?2,
                CASE WHEN value ->> 'hash' IS NULL THEN 'skipped' ELSE 'pending' END,
                unhex(value ->> 'hash'), 0, ?3, ?3
         FROM json_each(?1) WHERE true
         ON CONFLICT (contact_id, destination) DO UPDATE SET
             state = CASE WHEN excluded.payload_hash IS NULL THEN 'skipped' ELSE 'pending' END,
             payload_hash = excluded.payload_hash, attempts = 0, last_error = NULL,
             next_attempt_at = excluded.next_attempt_at, updated_at = excluded.updated_at
         WHERE deliveries.payload_hash IS NOT excluded.payload_hash
            OR (excluded.payload_hash IS NULL AND deliveries.state <> 'skipped')",
    )
    .bind(serde_json::Value::Array(rows).to_string())
    .bind(destination)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A destination's side of the outbox: what is due, and the transitions the pusher makes.
#[derive(Clone, Debug)]
pub struct Outbox {
    store: Store,
    destination: Destination,
    settling: Arc<SettleQueue>,
}

impl Outbox {
    pub fn new(store: Store, destination: Destination) -> Self {
        Self {
            settling: store.settling.of(destination),
            store,
            destination,
        }
    }

    /// Up to `limit` pending deliveries due by `now`, oldest first.
    pub async fn due(&self, now: i64, limit: u32) -> Result<Vec<DueDelivery>, StoreError> {
        let rows = sqlx::query(
            "SELECT contact_id, destination, payload_hash, remote_id, add_state, attempts
             FROM deliveries
             WHERE destination = ?1 AND state = 'pending' AND next_attempt_at <= ?2
             ORDER BY next_attempt_at, contact_id LIMIT ?3",
        )
        .bind(self.destination)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(self.store.pool())
        .await?;
        super::decode_all(&rows, "deliveries", &["contact_id", "destination"])
    }

    /// The delivery rows of these contacts, for a preview of what planning would change.
    pub async fn views(&self, ids: &[&str]) -> Result<HashMap<String, DeliveryView>, StoreError> {
        let rows = sqlx::query(
            "SELECT d.contact_id, d.destination, d.state, d.payload_hash,
                    d.add_state, d.remote_id
             FROM json_each(?1) j JOIN deliveries d ON d.contact_id = j.value
             WHERE d.destination = ?2",
        )
        .bind(super::json_array(ids))
        .bind(self.destination)
        .fetch_all(self.store.pool())
        .await?;
        let views: Vec<DeliveryView> =
            super::decode_all(&rows, "deliveries", &["contact_id", "destination"])?;
        rows.iter()
            .map(|row| row.try_get::<String, _>("contact_id"))
            .zip(views)
            .map(|(id, view)| Ok((id?, view)))
            .collect()
    }

    /// When the earliest pending delivery is due; `None` when none is pending.
    pub async fn next_due_at(&self) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT MIN(next_attempt_at) FROM deliveries WHERE destination = ?1 AND state = 'pending'",
        )
        .bind(self.destination)
        .fetch_one(self.store.pool())
        .await?)
    }

    /// Re-plan contacts whose payload, computed now, differs from the planned one (the
    /// contact is gone, or nothing is left to send). Same rules as `plan` (above).
    pub async fn replan(&self, plans: &[(&str, Option<[u8; 32]>)]) -> Result<(), StoreError> {
        let mut tx = self.store.begin().await?;
        plan(&mut tx, self.destination, plans, super::now_ms()).await?;
        tx.commit().await?;
        Ok(())
    }

    /// OMI: adds are about to be sent. Precondition: OMI was never sent the contact
    /// (`add_state IS NULL`). Committed with `synchronous = FULL`, so the intent is on disk
    /// before the request leaves: after a crash, even a power cut, the contact is sent as an
    /// update first and never added twice.
    pub async fn mark_add_intent(&self, contact_ids: &[&str]) -> Result<(), StoreError> {
        // The turn before the connection: no writer holds one while it waits (`WriteTx`).
        let turn = self.store.turn().await;
        let mut conn = self.store.pool().acquire().await?;
        sqlx::query("PRAGMA synchronous = FULL")
            .execute(&mut *conn)
            .await?;
        let result = async {
            let mut tx = super::WriteTx::begin(&mut conn, turn).await?;
            sqlx::query(
                "UPDATE deliveries SET add_state = 'intent'
                 WHERE destination = ?1 AND add_state IS NULL
                   AND contact_id IN (SELECT value FROM json_each(?2))",
            )
            .bind(self.destination)
            .bind(super::json_array(contact_ids))
            .execute(&mut *tx)
            .await?;
            Ok::<_, StoreError>(tx.commit().await?)
        }
        .await;
        sqlx::query("PRAGMA synchronous = NORMAL")
            .execute(&mut *conn)
            .await?;
        result
    }

    /// OMI: the add surely created nothing (the request never reached OMI, or OMI rejected
    /// the whole request before writing). Precondition: `add_state = 'intent'`.
    pub async fn clear_add_intent(&self, contact_ids: &[&str]) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE deliveries SET add_state = NULL
             WHERE destination = ?1 AND add_state = 'intent'
               AND contact_id IN (SELECT value FROM json_each(?2))",
        )
        .bind(self.destination)
        .bind(super::json_array(contact_ids))
        .execute(self.store.pool())
        .await?;
        Ok(())
    }

    /// EngageLab: remember the EUIDs `register` answered. Precondition: none (an EUID is a
    /// fact about the contact, whatever payload is planned).
    pub async fn set_remote_ids(&self, ids: &[(&str, String)]) -> Result<(), StoreError> {
        let mut tx = self.store.begin().await?;
        for (contact_id, remote_id) in ids {
            sqlx::query(
                "UPDATE deliveries SET remote_id = ?3 WHERE contact_id = ?1 AND destination = ?2",
            )
            .bind(contact_id)
            .bind(self.destination)
            .bind(remote_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// EngageLab: forget an EUID the destination no longer knows. Precondition: the stored
    /// EUID is still `stale` (a newer one is kept).
    pub async fn forget_remote_id(&self, contact_id: &str, stale: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE deliveries SET remote_id = NULL
             WHERE contact_id = ?1 AND destination = ?2 AND remote_id = ?3",
        )
        .bind(contact_id)
        .bind(self.destination)
        .bind(stale)
        .execute(self.store.pool())
        .await?;
        Ok(())
    }

    /// Record what became of sends. `added` marks OMI as holding each contact (a fact,
    /// recorded whatever the plan). Each outcome applies only while the delivery is pending for
    /// the payload `sent` it names; returns how many did.
    ///
    /// Outcomes are written in groups: a call queues its outcomes and waits for the write
    /// lock of this outbox; whoever holds it writes everything queued by then in one
    /// transaction, at most one every [`SETTLE_EVERY`]. While the pass stores pages, each
    /// page's transaction writes what is queued as it commits, and groups wait for it
    /// ([`SETTLE_PATIENCE`]). One ack at a time (EngageLab answers
    /// per contact) was a transaction each, and those transactions queued for SQLite's write
    /// lock (docs/performance.md, "Round 8"). A call returns once its own outcomes are
    /// committed.
    pub async fn settle(
        &self,
        outcomes: &[(&str, [u8; 32], Outcome)],
        added: bool,
    ) -> Result<u64, StoreError> {
        let (done, mut applied) = oneshot::channel();
        self.settling.queue().push(Settling {
            outcomes: (outcomes.iter())
                .map(|(id, sent, outcome)| ((*id).to_owned(), *sent, outcome.clone()))
                .collect(),
            added,
            done,
        });
        // A page of the pass may write these outcomes while this call waits for the lock.
        let written = tokio::select! {
            written = &mut applied => written,
            mut last = self.settling.writer.lock() => {
                // Empty: an earlier holder, or a page, took these outcomes already.
                if !self.settling.queue().is_empty() {
                    self.write_queued(&mut last).await;
                }
                drop(last);
                applied.await
            }
        };
        match written {
            Ok(result) => result.map_err(StoreError::Shared),
            // The call that took these outcomes was dropped before committing them.
            Err(_) => Err(StoreError::Unrecorded),
        }
    }

    /// Write everything queued as one group, no sooner than [`SETTLE_EVERY`] after the `last`
    /// group began, and tell each caller in it its count, or the error; nothing when the pass's
    /// pages took it all meanwhile. The group is taken once its transaction has begun, so that
    /// the outcomes queued while it waited for its turn to write go with it.
    async fn write_queued(&self, last: &mut Option<tokio::time::Instant>) {
        // While the pass stores pages, each page writes what is queued when it commits
        // (`Settlers::write`), a few milliseconds apart: a group in a transaction of its own
        // waits while pages do, up to `SETTLE_PATIENCE`, and ends once nothing is left.
        let patience = tokio::time::Instant::now() + SETTLE_PATIENCE;
        let mut until = last.map(|at| at + SETTLE_EVERY);
        loop {
            if let Some(at) = until {
                tokio::time::sleep_until(at.min(patience)).await;
            }
            if self.settling.queue().is_empty() {
                return;
            }
            match *self.store.settling.paged() {
                Some(paged)
                    if paged.elapsed() < SETTLE_EVERY && tokio::time::Instant::now() < patience =>
                {
                    until = Some(paged + SETTLE_EVERY);
                }
                _ => break,
            }
        }
        let tx = self.store.begin().await;
        *last = Some(tokio::time::Instant::now());
        let group = std::mem::take(&mut *self.settling.queue());
        if group.is_empty() {
            return;
        }
        let written = async {
            let mut tx = tx?;
            let counts = write_group(&mut tx, self.destination, &group).await?;
            tx.commit().await?;
            Ok(counts)
        }
        .await;
        tell(group, written);
    }
}

/// Tell each member of `group` how many of its outcomes applied, or the error.
fn tell(group: Vec<Settling>, written: Result<Vec<u64>, StoreError>) {
    match written {
        Ok(counts) => {
            for (settling, count) in group.into_iter().zip(counts) {
                let _ = settling.done.send(Ok(count));
            }
        }
        Err(e) => {
            let e = Arc::new(e);
            for settling in group {
                let _ = settling.done.send(Err(Arc::clone(&e)));
            }
        }
    }
}

/// Each group member's outcomes at `destination`, inside the transaction of `conn`; how many
/// applied, per member.
///
/// One statement writes a batch of outcomes ([`SETTLE`]): a statement per outcome was a
/// round trip to the connection's thread each, about 0.15 ms, and the pass's pages waited
/// for them (docs/performance.md, "Round 9"). The outcomes of one contact take effect in
/// the order given, as one at a time would: a contact's second outcome in a group starts a
/// new batch, since a statement joining a row to two of them would apply one, either.
async fn write_group(
    conn: &mut Conn,
    destination: Destination,
    group: &[Settling],
) -> Result<Vec<u64>, StoreError> {
    let mut added: Vec<&str> = Vec::new();
    for member in group.iter().filter(|member| member.added) {
        added.extend(member.outcomes.iter().map(|(id, _, _)| id.as_str()));
    }
    if !added.is_empty() {
        sqlx::query(
            "UPDATE deliveries SET add_state = 'added'
             WHERE destination = ?1 AND contact_id IN (SELECT value FROM json_each(?2))",
        )
        .bind(destination)
        .bind(super::json_array(&added))
        .execute(&mut *conn)
        .await?;
    }
    let now = super::now_ms();
    let mut counts = vec![0; group.len()];
    let mut batch: Vec<(usize, &OwnedOutcome)> = Vec::new();
    let mut in_batch: HashSet<&str> = HashSet::new();
    for (member, m) in group.iter().enumerate() {
        for outcome in &m.outcomes {
            if !in_batch.insert(&outcome.0) {
                settle_batch(conn, destination, &batch, now, &mut counts).await?;
                batch.clear();
                in_batch = HashSet::from([outcome.0.as_str()]);
            }
            batch.push((member, outcome));
        }
    }
    settle_batch(conn, destination, &batch, now, &mut counts).await?;
    Ok(counts)
}

/// Write `batch`, outcomes of distinct contacts, each tagged with its group member, and
/// count those that applied in `counts`.
async fn settle_batch(
    conn: &mut Conn,
    destination: Destination,
    batch: &[(usize, &OwnedOutcome)],
    now: i64,
    counts: &mut [u64],
) -> Result<(), StoreError> {
    if batch.is_empty() {
        return Ok(());
    }
    /// One outcome as [`SETTLE`] reads it.
    #[derive(serde::Serialize)]
    struct Row<'a> {
        id: &'a str,
        sent: String,
        kind: &'static str,
        at: Option<i64>,
        error: Option<&'a str>,
    }
    let rows: Vec<Row<'_>> = (batch.iter())
        .map(|(_, (id, sent, outcome))| {
            let (kind, at, error) = match outcome {
                Outcome::Ack => ("ack", None, None),
                Outcome::Failed { error, retry_at } => ("failed", *retry_at, Some(error.as_str())),
                Outcome::Deferred { until } => ("deferred", Some(*until), None),
                Outcome::Skipped => ("skipped", None, None),
            };
            Row {
                id,
                sent: super::hex(sent),
                kind,
                at,
                error,
            }
        })
        .collect();
    let applied: HashSet<String> = sqlx::query_scalar(SETTLE)
        .bind(super::json_array(&rows))
        .bind(now)
        .bind(destination)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .collect();
    for (member, (id, _, _)) in batch {
        counts[*member] += u64::from(applied.contains(id));
    }
    Ok(())
}

/// Outcomes applied to their delivery rows, one statement a batch (`settle_batch`):
/// ?1 a JSON array of `{id, sent (hex), kind, at, error}`, ?2 now, ?3 the destination. Each
/// applies only while its row is pending for the payload `sent` (the module's first rule):
/// - `ack`: pending -> synced, `sent` acknowledged;
/// - `failed`: an attempt counted; pending again at `at` (the retry), or dead without one;
/// - `deferred`: pending until `at`, attempts unchanged;
/// - `skipped`: pending -> skipped, the plan kept so only a new one revives it.
///
/// Returns the contacts whose rows changed. The unary `+` keeps the planner from walking the
/// destination's pending rows (`deliveries_due`) and reading the batch for each: each outcome
/// finds its row by its key (test `settling_finds_each_row_by_its_key`).
const SETTLE: &str = "
    UPDATE deliveries SET
        acked_hash = CASE o.kind WHEN 'ack' THEN o.sent ELSE acked_hash END,
        state = CASE o.kind
            WHEN 'ack' THEN 'synced'
            WHEN 'skipped' THEN 'skipped'
            WHEN 'failed' THEN CASE WHEN o.at IS NULL THEN 'dead' ELSE 'pending' END
            ELSE state END,
        attempts = CASE o.kind
            WHEN 'failed' THEN attempts + 1 WHEN 'deferred' THEN attempts ELSE 0 END,
        next_attempt_at = CASE o.kind
            WHEN 'ack' THEN ?2 WHEN 'skipped' THEN next_attempt_at
            ELSE COALESCE(o.at, next_attempt_at) END,
        last_error = CASE o.kind
            WHEN 'failed' THEN o.error WHEN 'deferred' THEN last_error ELSE NULL END,
        updated_at = CASE o.kind WHEN 'deferred' THEN updated_at ELSE ?2 END
    FROM (SELECT value ->> 'id' AS id, unhex(value ->> 'sent') AS sent, value ->> 'kind' AS kind,
                 value ->> 'at' AS at, value ->> 'error' AS error
          FROM json_each(?1)) AS o
    WHERE deliveries.contact_id = o.id AND +deliveries.destination = ?3
      AND +deliveries.state = 'pending' AND deliveries.payload_hash IS o.sent
    RETURNING deliveries.contact_id";

/// At most one group of outcomes is written per destination in this time: a transaction
/// costs about a millisecond whatever it holds, and the pass's pages wait for it. With 10 ms,
/// groups in a steady state of changes held 10 outcomes instead of 5 (docs/performance.md,
/// "Round 9"). Only the outcomes' own calls wait: a request's slot in flight is given back
/// when its answer arrives, before its outcome is written.
const SETTLE_EVERY: std::time::Duration = std::time::Duration::from_millis(10);

/// How long a group of outcomes waits while the pass's pages write outcomes
/// (`Outbox::write_queued`) before it takes the turn to write itself.
const SETTLE_PATIENCE: std::time::Duration = std::time::Duration::from_millis(50);

/// Outcomes waiting for [`Outbox::settle`] to write them, and the lock whose holder does.
#[derive(Debug, Default)]
struct SettleQueue {
    queue: std::sync::Mutex<Vec<Settling>>,
    /// Held by the caller writing a group; when the last group began.
    writer: tokio::sync::Mutex<Option<tokio::time::Instant>>,
}

impl SettleQueue {
    fn queue(&self) -> std::sync::MutexGuard<'_, Vec<Settling>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Every destination's queue of outcomes, one per destination for all of a store's clones.
/// Besides each queue's group writer, a page of the pass writes what is queued when it commits
/// ([`Settlers::write`]).
#[derive(Debug, Default)]
pub(super) struct Settlers {
    queues: std::sync::Mutex<Vec<(Destination, Arc<SettleQueue>)>>,
    /// When a page of the pass last wrote the queues.
    paged: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl Settlers {
    fn queues(&self) -> std::sync::MutexGuard<'_, Vec<(Destination, Arc<SettleQueue>)>> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn paged(&self) -> std::sync::MutexGuard<'_, Option<tokio::time::Instant>> {
        self.paged.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The queue of `destination`'s outcomes.
    fn of(&self, destination: Destination) -> Arc<SettleQueue> {
        let mut queues = self.queues();
        if let Some((_, queue)) = queues.iter().find(|(d, _)| *d == destination) {
            return Arc::clone(queue);
        }
        let queue = Arc::<SettleQueue>::default();
        queues.push((destination, Arc::clone(&queue)));
        queue
    }

    /// Write every outcome queued, for any destination, inside the transaction of `conn`,
    /// which holds the turn to write: a group in a transaction of its own would wait for that
    /// turn, and the pass's pages for the group's (docs/performance.md, "Round 10"). The
    /// callers are told once the transaction commits ([`Written::committed`]); if it does not,
    /// they learn that their outcomes were not recorded.
    pub(super) async fn write(&self, conn: &mut Conn) -> Result<Written, StoreError> {
        *self.paged() = Some(tokio::time::Instant::now());
        let groups: Vec<(Destination, Vec<Settling>)> = (self.queues().iter())
            .map(|(destination, queue)| (*destination, std::mem::take(&mut *queue.queue())))
            .filter(|(_, group)| !group.is_empty())
            .collect();
        let mut written = Written(Vec::with_capacity(groups.len()));
        for (destination, group) in groups {
            let counts = write_group(conn, destination, &group).await?;
            written.0.push((group, counts));
        }
        Ok(written)
    }
}

/// Outcomes written inside a transaction that has not committed yet ([`Settlers::write`]).
#[must_use = "the callers wait to be told their outcomes committed"]
pub(super) struct Written(Vec<(Vec<Settling>, Vec<u64>)>);

impl Written {
    /// The transaction committed: tell each caller how many of its outcomes applied.
    pub(super) fn committed(self) {
        for (group, counts) in self.0 {
            tell(group, Ok(counts));
        }
    }
}

/// An outcome as [`Outbox::settle`] takes it: the contact, the payload hash sent, the outcome.
type OwnedOutcome = (String, [u8; 32], Outcome);

/// One call's outcomes, and where to say how many applied.
#[derive(Debug)]
struct Settling {
    outcomes: Vec<OwnedOutcome>,
    added: bool,
    done: oneshot::Sender<Result<u64, Arc<StoreError>>>,
}

/// A permanently failed delivery, for `dead-letters`.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct DeadLetter {
    pub contact_id: String,
    pub destination: Destination,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub failed_at: String,
}

pub async fn dead_letters(store: &Store) -> Result<Vec<DeadLetter>, StoreError> {
    let rows = sqlx::query(
        "SELECT contact_id, destination, attempts, last_error, updated_at FROM deliveries
         WHERE state = 'dead' ORDER BY destination, updated_at, contact_id",
    )
    .fetch_all(store.pool())
    .await?;
    rows.into_iter()
        .map(|row| {
            Ok(DeadLetter {
                contact_id: row.try_get("contact_id")?,
                destination: row.try_get("destination")?,
                attempts: row.try_get("attempts")?,
                last_error: row.try_get("last_error")?,
                failed_at: super::format_ms(row.try_get("updated_at")?),
            })
        })
        .collect()
}

/// Make dead letters due again (all, or one destination's, or one contact's). Precondition:
/// `state = 'dead'`. A small write that is safe beside a running daemon.
pub async fn retry_dead_letters(
    store: &Store,
    destination: Option<Destination>,
    contact_id: Option<&str>,
    now: i64,
) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?3, updated_at = ?3
         WHERE state = 'dead' AND (?1 IS NULL OR destination = ?1) AND (?2 IS NULL OR contact_id = ?2)",
    )
    .bind(destination)
    .bind(contact_id)
    .bind(now)
    .execute(store.pool())
    .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A delivery of `id` to OMI, pending for the payload `planned`.
    async fn pending(store: &Store, id: &str, planned: [u8; 32]) {
        sqlx::query(
            "INSERT INTO deliveries (contact_id, destination, state, payload_hash, updated_at)
             VALUES (?1, 'omi', 'pending', ?2, 0)",
        )
        .bind(id)
        .bind(&planned[..])
        .execute(store.pool())
        .await
        .unwrap();
    }

    /// Outcomes settled by many callers at once are written together (they queue while the
    /// first writes), and each caller learns how many of its own applied.
    #[tokio::test]
    async fn callers_settling_at_once_each_get_their_own_count() {
        let (_dir, store) = crate::store::temp_store().await;
        let (planned, other) = ([1; 32], [2; 32]);
        for n in 0..40 {
            pending(&store, &format!("c{n}"), planned).await;
        }
        let outbox = store.outbox(Destination::Omi);
        // Caller k acks c(2k) for the planned payload and c(2k+1) for another one (stale).
        let ids: Vec<(String, String)> = (0..20)
            .map(|k| (format!("c{}", 2 * k), format!("c{}", 2 * k + 1)))
            .collect();
        let calls = ids.iter().map(|(fresh, stale)| {
            let outbox = outbox.clone();
            async move {
                let outcomes = [
                    (fresh.as_str(), planned, Outcome::Ack),
                    (stale.as_str(), other, Outcome::Ack),
                ];
                outbox.settle(&outcomes, false).await
            }
        });
        let counts = futures_util::future::join_all(calls).await;
        assert!(counts.iter().all(|c| matches!(c, Ok(1))), "{counts:?}");
        let synced: Vec<String> = sqlx::query_scalar(
            "SELECT contact_id FROM deliveries WHERE state = 'synced' ORDER BY contact_id",
        )
        .fetch_all(store.pool())
        .await
        .unwrap();
        let mut expected: Vec<String> = ids.into_iter().map(|(fresh, _)| fresh).collect();
        expected.sort();
        assert_eq!(synced, expected);
    }

    /// Outcomes queued while a page of the pass holds the turn to write go with the page: its
    /// commit writes them and tells the callers, and the group writer waiting for the turn
    /// finds nothing left to write. A page rolled back instead leaves them unwritten, and its
    /// callers are told so rather than left waiting.
    #[tokio::test]
    async fn a_page_of_the_pass_writes_the_outcomes_queued_while_it_holds_the_turn() {
        let (_dir, store) = crate::store::temp_store().await;
        let planned = [1; 32];
        for id in ["kept", "dropped"] {
            pending(&store, id, planned).await;
        }
        let outbox = store.outbox(Destination::Omi);
        let queued = || !outbox.settling.queue().is_empty();
        let mut connection = store.passes().page_connection().await.unwrap();
        let state = |id: &'static str| {
            let pool = store.pool().clone();
            async move {
                sqlx::query_scalar::<_, String>(
                    "SELECT state FROM deliveries WHERE contact_id = ?1",
                )
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
            }
        };

        for (id, commit) in [("kept", true), ("dropped", false)] {
            // Held here, the group writer's lock leaves the page the only writer of outcomes.
            let group_writer = outbox.settling.writer.lock().await;
            let page = connection.begin_page(1, 0).await.unwrap();
            let settling = tokio::spawn({
                let outbox = outbox.clone();
                async move { outbox.settle(&[(id, planned, Outcome::Ack)], false).await }
            });
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while !queued() {
                assert!(std::time::Instant::now() < deadline, "{id}: never queued");
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            if commit {
                page.commit(&crate::store::PageProgress::default())
                    .await
                    .unwrap();
                assert_eq!(state(id).await, "synced");
                drop(group_writer);
                assert_eq!(settling.await.unwrap().unwrap(), 1);
            } else {
                page.fail_after_writing_outcomes().await;
                drop(group_writer);
                assert!(matches!(
                    settling.await.unwrap(),
                    Err(StoreError::Unrecorded)
                ));
                assert_eq!(state(id).await, "pending");
            }
            assert!(!queued());
        }
    }

    /// The settle statement reads its outcomes in turn and finds each row by its key. Left to
    /// itself, SQLite's planner walked the destination's pending rows (`deliveries_due`) and
    /// read the whole batch for each one: a 200,000-contact backfill ran for minutes instead
    /// of a second of settling.
    #[tokio::test]
    async fn settling_finds_each_row_by_its_key() {
        let (_dir, store) = crate::store::temp_store().await;
        let plan: Vec<String> = sqlx::query(&format!("EXPLAIN QUERY PLAN {SETTLE}"))
            .bind("[]")
            .bind(0)
            .bind(Destination::Omi)
            .fetch_all(store.pool())
            .await
            .unwrap()
            .iter()
            .map(|row| row.get("detail"))
            .collect();
        assert!(plan.len() == 2, "{plan:?}");
        assert!(plan[0].starts_with("SCAN json_each"), "{plan:?}");
        assert!(
            plan[1].starts_with(
                "SEARCH deliveries USING INDEX sqlite_autoindex_deliveries_1 (contact_id=?"
            ),
            "{plan:?}"
        );
    }

    /// A delivery row as the settle statement reads and writes it: state, payload hash,
    /// acknowledged hash, attempts, next attempt, last error, updated at, add state.
    type DeliveryRow = (
        String,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        i64,
        i64,
        Option<String>,
        i64,
        Option<String>,
    );

    /// What one outcome does to `row`, one at a time, as the module's rules say; whether it
    /// applied.
    fn apply(row: &mut DeliveryRow, sent: &[u8; 32], outcome: &Outcome, now: i64) -> bool {
        if row.0 != "pending" || row.1.as_deref() != Some(&sent[..]) {
            return false;
        }
        match outcome {
            Outcome::Ack => {
                (row.0, row.2, row.3, row.4, row.5, row.6) =
                    ("synced".into(), Some(sent.to_vec()), 0, now, None, now);
            }
            Outcome::Failed { error, retry_at } => {
                row.0 = if retry_at.is_some() {
                    "pending"
                } else {
                    "dead"
                }
                .into();
                (row.3, row.5, row.6) = (row.3 + 1, Some(error.clone()), now);
                row.4 = retry_at.unwrap_or(row.4);
            }
            Outcome::Deferred { until } => row.4 = *until,
            Outcome::Skipped => {
                (row.0, row.3, row.5, row.6) = ("skipped".into(), 0, None, now);
            }
        }
        true
    }

    /// Rows to start from: state, planned payload (a hash of that byte), attempts.
    type Rows = Vec<(String, Option<u8>, i64)>;
    /// Callers: outcomes (contact number, payload byte, outcome), and whether OMI added them.
    type Members = Vec<(Vec<(u8, u8, Outcome)>, bool)>;

    fn outcome() -> impl proptest::strategy::Strategy<Value = Outcome> {
        use proptest::prelude::*;
        prop_oneof![
            Just(Outcome::Ack),
            (proptest::option::of(1_000i64..2_000), "[a-z']{0,6}")
                .prop_map(|(retry_at, error)| Outcome::Failed { error, retry_at }),
            (1_000i64..2_000).prop_map(|until| Outcome::Deferred { until }),
            Just(Outcome::Skipped),
        ]
    }

    /// Rows of contacts c0..c3 in any state, and callers settling any outcomes of them, some
    /// for the planned payload and some for another, the same contact more than once.
    fn settle_case() -> impl proptest::strategy::Strategy<Value = (Rows, Members)> {
        use proptest::prelude::*;
        let states = prop_oneof![
            Just("pending"),
            Just("pending"),
            Just("synced"),
            Just("dead"),
            Just("skipped"),
        ];
        let rows = proptest::collection::vec(
            (
                states.prop_map(str::to_owned),
                proptest::option::of(1u8..3),
                0i64..3,
            ),
            4,
        );
        let member = (
            proptest::collection::vec((0u8..4, 1u8..3, outcome()), 0..5),
            any::<bool>(),
        );
        (rows, proptest::collection::vec(member, 1..5))
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 64, failure_persistence: None, ..Default::default()
        })]

        /// A group of outcomes, written a batch a statement, leaves every row as the outcomes
        /// applied one at a time in order would, and counts for each caller the outcomes of its
        /// own that applied.
        #[test]
        fn a_group_settles_as_its_outcomes_one_at_a_time((rows, members) in settle_case()) {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(settle_as_one_at_a_time(rows, members));
        }
    }

    async fn settle_as_one_at_a_time(rows: Rows, members: Members) {
        let (_dir, store) = crate::store::temp_store().await;
        let mut model: HashMap<String, DeliveryRow> = HashMap::new();
        for (n, (state, planned, attempts)) in rows.into_iter().enumerate() {
            let row: DeliveryRow = (
                state,
                planned.map(|h| vec![h; 32]),
                Some(vec![9; 32]),
                attempts,
                500,
                Some("before".into()),
                100,
                None,
            );
            sqlx::query(
                "INSERT INTO deliveries (contact_id, destination, state, payload_hash, acked_hash,
                     attempts, next_attempt_at, last_error, updated_at)
                 VALUES (?1, 'omi', ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .bind(format!("c{n}"))
            .bind(&row.0)
            .bind(&row.1)
            .bind(&row.2)
            .bind(row.3)
            .bind(row.4)
            .bind(&row.5)
            .bind(row.6)
            .execute(store.pool())
            .await
            .unwrap();
            model.insert(format!("c{n}"), row);
        }
        let group: Vec<Settling> = (members.iter())
            .map(|(outcomes, added)| Settling {
                outcomes: (outcomes.iter())
                    .map(|(c, h, o)| (format!("c{c}"), [*h; 32], o.clone()))
                    .collect(),
                added: *added,
                done: oneshot::channel().0,
            })
            .collect();
        let mut tx = store.begin().await.unwrap();
        let counts = write_group(&mut tx, Destination::Omi, &group)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        // The time the group wrote (any row it stamped has the latest `updated_at`).
        let now: i64 = sqlx::query_scalar("SELECT MAX(updated_at) FROM deliveries")
            .fetch_one(store.pool())
            .await
            .unwrap();
        let mut expected = Vec::new();
        for member in &group {
            let mut applied = 0;
            for (id, sent, outcome) in &member.outcomes {
                applied += u64::from(apply(model.get_mut(id).unwrap(), sent, outcome, now));
                if member.added {
                    model.get_mut(id).unwrap().7 = Some("added".into());
                }
            }
            expected.push(applied);
        }
        assert_eq!(counts, expected);
        let stored: HashMap<String, DeliveryRow> = sqlx::query(
            "SELECT contact_id, state, payload_hash, acked_hash, attempts, next_attempt_at,
                 last_error, updated_at, add_state FROM deliveries",
        )
        .fetch_all(store.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let row = (r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6));
            (
                r.get(0),
                (row.0, row.1, row.2, row.3, row.4, row.5, r.get(7), r.get(8)),
            )
        })
        .collect();
        assert_eq!(stored, model);
    }
}
