//! The read side behind `status`: counts that stay cheap while the daemon writes, and the
//! progress of a running pass and of each destination's backlog (docs/cli.md, "status").

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::{DeliveryState, Store, StoreError, format_ms, now_ms};
use crate::domain::Destination;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Status {
    pub contacts: i64,
    pub deleted: i64,
    pub quarantined: i64,
    pub last_pass: Option<PassSummary>,
    pub current_pass: Option<PassSummary>,
    pub destinations: BTreeMap<Destination, DestinationCounts>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PassSummary {
    pub id: i64,
    pub started_at: String,
    pub completed_at: Option<String>,
    pub records: i64,
    pub new_contacts: i64,
    pub changed: i64,
    pub quarantined: i64,
    pub deleted: i64,
    pub next_start: i64,
    /// The source's `totalResults`, when it sends one.
    pub total_results: Option<i64>,
    /// `next_start` as a share of `total_results`, 0 to 100.
    pub percent: Option<f64>,
    /// Records a second over the run that last read the pass (since it was started or
    /// resumed, up to its last page).
    pub records_per_sec: Option<f64>,
    /// Open pass only: seconds left at that rate, when the total is known.
    pub eta_seconds: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct DestinationCounts {
    pub synced: i64,
    pub pending: i64,
    pub dead: i64,
    pub skipped: i64,
    /// `status` only: deliveries acknowledged a second over the last [`RECENT`] (`None` when
    /// there were none).
    pub deliveries_per_sec: Option<f64>,
    /// `status` only: seconds to send what is pending at that rate; 0 with nothing pending,
    /// `None` when the rate is unknown.
    pub eta_seconds: Option<u64>,
}

/// The window the delivery rate of `status` is measured over.
pub const RECENT: Duration = Duration::from_secs(300);

/// What a destination still has to send, for live progress (src/progress.rs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    pub pending: i64,
    pub dead: i64,
}

/// Counts for `status`; `destinations` lists the enabled destinations even before any delivery.
pub async fn status(store: &Store, destinations: &[Destination]) -> Result<Status, StoreError> {
    let pool = store.pool();
    let (contacts, deleted): (i64, i64) = sqlx::query_as(
        "SELECT COALESCE(SUM(deleted_at IS NULL), 0), COALESCE(SUM(deleted_at IS NOT NULL), 0)
         FROM contacts",
    )
    .fetch_one(pool)
    .await?;
    let quarantined: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM quarantine")
        .fetch_one(pool)
        .await?;
    let last_pass = pass_summary(store, true).await?;
    let current_pass = pass_summary(store, false).await?;

    let mut counts = delivery_counts(store).await?;
    for destination in destinations {
        counts.entry(*destination).or_default();
    }
    let now = now_ms();
    for (destination, c) in &mut counts {
        let rate = delivery_rate(store, *destination, now).await?;
        c.eta_seconds = if c.pending == 0 {
            Some(0)
        } else {
            rate.and_then(|rate| secs_left(c.pending as f64, rate))
        };
        c.deliveries_per_sec = rate.map(tenth);
    }
    Ok(Status {
        contacts,
        deleted,
        quarantined,
        last_pass,
        current_pass,
        destinations: counts,
    })
}

/// Deliveries per destination and state (what `/metrics` needs on every scrape).
pub async fn delivery_counts(
    store: &Store,
) -> Result<BTreeMap<Destination, DestinationCounts>, StoreError> {
    let rows: Vec<(Destination, DeliveryState, i64)> = sqlx::query_as(
        "SELECT destination, state, COUNT(*) FROM deliveries GROUP BY destination, state",
    )
    .fetch_all(store.pool())
    .await?;
    let mut counts: BTreeMap<Destination, DestinationCounts> = BTreeMap::new();
    for (destination, state, n) in rows {
        let entry = counts.entry(destination).or_default();
        match state {
            DeliveryState::Synced => entry.synced += n,
            DeliveryState::Pending => entry.pending += n,
            DeliveryState::Dead => entry.dead += n,
            DeliveryState::Skipped => entry.skipped += n,
        }
    }
    Ok(counts)
}

/// Deliveries acknowledged a second by `destination` over the last [`RECENT`], measured from the
/// first of them to `now`.
async fn delivery_rate(
    store: &Store,
    destination: Destination,
    now: i64,
) -> Result<Option<f64>, StoreError> {
    // An ack sets next_attempt_at to the time of the ack (store/outbox.rs), so the
    // deliveries_due index finds recent acks without reading every synced row.
    let (acked, first): (i64, Option<i64>) = sqlx::query_as(
        "SELECT COUNT(*), MIN(next_attempt_at) FROM deliveries
         WHERE destination = ?1 AND state = 'synced' AND next_attempt_at >= ?2",
    )
    .bind(destination)
    .bind(now - RECENT.as_millis() as i64)
    .fetch_one(store.pool())
    .await?;
    Ok(first.filter(|_| acked > 0).map(|first| {
        // At least a second, so a burst that just began does not read as a huge rate.
        let seconds = ((now - first) as f64 / 1000.0).max(1.0);
        acked as f64 / seconds
    }))
}

/// Rounded to a tenth: more digits would be noise.
pub(crate) fn tenth(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// `done` as a share of `total`, 0 to 100; none without a total.
pub(crate) fn percent(done: f64, total: Option<f64>) -> Option<f64> {
    total
        .filter(|&t| t > 0.0)
        .map(|t| (done * 100.0 / t).min(100.0))
}

/// Whole seconds to do `left` at `per_sec`, rounded up; none without a rate.
pub(crate) fn secs_left(left: f64, per_sec: f64) -> Option<u64> {
    (per_sec > 0.0).then(|| (left / per_sec).ceil() as u64)
}

/// Pending and dead deliveries of one destination, through the deliveries_due index: cheap
/// enough to ask every few seconds during a backfill.
pub async fn backlog(store: &Store, destination: Destination) -> Result<Backlog, StoreError> {
    let (pending, dead): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM deliveries WHERE destination = ?1 AND state = 'pending'),
                (SELECT COUNT(*) FROM deliveries WHERE destination = ?1 AND state = 'dead')",
    )
    .bind(destination)
    .fetch_one(store.pool())
    .await?;
    Ok(Backlog { pending, dead })
}

/// One `passes` row as `status` reads it; timestamps are formatted on the way out.
#[derive(sqlx::FromRow)]
struct PassRow {
    id: i64,
    started_at: i64,
    completed_at: Option<i64>,
    records: i64,
    new_contacts: i64,
    changed: i64,
    quarantined: i64,
    deleted: i64,
    next_start: i64,
    total_results: Option<i64>,
    resumed_at: Option<i64>,
    resumed_records: i64,
    progress_at: Option<i64>,
}

async fn pass_summary(store: &Store, completed: bool) -> Result<Option<PassSummary>, StoreError> {
    let sql = if completed {
        "SELECT id, started_at, completed_at, records, new_contacts, changed, quarantined, deleted,
                next_start, total_results, resumed_at, resumed_records, progress_at
         FROM passes WHERE completed_at IS NOT NULL ORDER BY id DESC LIMIT 1"
    } else {
        "SELECT id, started_at, completed_at, records, new_contacts, changed, quarantined, deleted,
                next_start, total_results, resumed_at, resumed_records, progress_at
         FROM passes WHERE completed_at IS NULL ORDER BY id DESC LIMIT 1"
    };
    let row: Option<PassRow> = sqlx::query_as(sql).fetch_optional(store.pool()).await?;
    Ok(row.map(|row| {
        let total = row.total_results.map(|t| t as f64);
        let percent = percent(row.next_start as f64, total).map(tenth);
        let records_per_sec = match (row.resumed_at, row.progress_at) {
            (Some(from), Some(to)) if to > from => {
                let records = (row.records - row.resumed_records) as f64;
                Some(tenth(records * 1000.0 / (to - from) as f64))
            }
            _ => None,
        };
        let eta_seconds = match (row.completed_at, row.total_results, records_per_sec) {
            (None, Some(total), Some(rate)) => {
                secs_left((total - row.next_start).max(0) as f64, rate)
            }
            _ => None,
        };
        PassSummary {
            id: row.id,
            started_at: format_ms(row.started_at),
            completed_at: row.completed_at.map(format_ms),
            records: row.records,
            new_contacts: row.new_contacts,
            changed: row.changed,
            quarantined: row.quarantined,
            deleted: row.deleted,
            next_start: row.next_start,
            total_results: row.total_results,
            percent,
            records_per_sec,
            eta_seconds,
        }
    }))
}
