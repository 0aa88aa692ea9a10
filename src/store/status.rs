//! The read side behind `status`: counts that stay cheap while the daemon writes.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{DeliveryState, Store, StoreError, format_ms};
use crate::domain::Destination;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Status {
    pub contacts: i64,
    pub deleted: i64,
    pub quarantined: i64,
    pub last_pass: Option<PassSummary>,
    pub current_pass: Option<PassSummary>,
    pub destinations: BTreeMap<Destination, DestinationCounts>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
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
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct DestinationCounts {
    pub synced: i64,
    pub pending: i64,
    pub dead: i64,
    pub skipped: i64,
}

/// Counts for `status`; `destinations` lists the enabled destinations even before any delivery.
pub async fn status(store: &Store, destinations: &[Destination]) -> Result<Status, StoreError> {
    let pool = store.pool();
    let (contacts, deleted): (i64, i64) = sqlx::query_as(
        "SELECT COALESCE(SUM(deleted_at IS NULL), 0), COALESCE(SUM(deleted_at IS NOT NULL), 0)
         FROM contact_seen",
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
}

async fn pass_summary(store: &Store, completed: bool) -> Result<Option<PassSummary>, StoreError> {
    let sql = if completed {
        "SELECT id, started_at, completed_at, records, new_contacts, changed, quarantined, deleted,
                next_start
         FROM passes WHERE completed_at IS NOT NULL ORDER BY id DESC LIMIT 1"
    } else {
        "SELECT id, started_at, completed_at, records, new_contacts, changed, quarantined, deleted,
                next_start
         FROM passes WHERE completed_at IS NULL ORDER BY id DESC LIMIT 1"
    };
    let row: Option<PassRow> = sqlx::query_as(sql).fetch_optional(store.pool()).await?;
    Ok(row.map(|row| PassSummary {
        id: row.id,
        started_at: format_ms(row.started_at),
        completed_at: row.completed_at.map(format_ms),
        records: row.records,
        new_contacts: row.new_contacts,
        changed: row.changed,
        quarantined: row.quarantined,
        deleted: row.deleted,
        next_start: row.next_start,
    }))
}
