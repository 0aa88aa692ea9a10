//! Records that could not become a contact, kept with their reason until the source stops
//! sending them.

use super::{Conn, Store, StoreError, decode_all};
use crate::store::QuarantinedRecord;

/// The quarantine, as `status` and the demo report it.
#[derive(Clone, Debug)]
pub struct Quarantine {
    store: Store,
}

#[derive(sqlx::FromRow)]
struct ReasonCount {
    reason: String,
    records: i64,
}

impl Quarantine {
    pub(super) fn new(store: Store) -> Self {
        Self { store }
    }

    /// How many quarantined records there are for each reason, most frequent first.
    pub async fn reasons(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT reason, COUNT(*) AS records FROM quarantine
             GROUP BY reason ORDER BY records DESC, reason",
        )
        .fetch_all(self.store.pool())
        .await?;
        Ok(decode_all::<ReasonCount>(&rows, "quarantine", &["reason"])?
            .into_iter()
            .map(|r| (r.reason, r.records))
            .collect())
    }
}

/// Keep `q` as seen by `pass_id`: one row per distinct raw record, however often it is sent.
pub(super) async fn record(
    conn: &mut Conn,
    q: &QuarantinedRecord<'_>,
    pass_id: i64,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO quarantine (raw_hash, raw, reason, first_seen_at, last_seen_at, last_seen_pass)
         VALUES (?1, ?2, ?3, ?4, ?4, ?5)
         ON CONFLICT (raw_hash) DO UPDATE SET
             reason = excluded.reason, last_seen_at = excluded.last_seen_at,
             last_seen_pass = excluded.last_seen_pass",
    )
    .bind(&q.raw_hash[..])
    .bind(q.raw)
    .bind(q.reason)
    .bind(now)
    .bind(pass_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Forget quarantined records the source stopped sending two complete passes ago (fixed at
/// the source, or deleted there), so the count reflects what is still wrong now.
pub(super) async fn prune(conn: &mut Conn, pass_id: i64) -> Result<u64, StoreError> {
    let done = sqlx::query("DELETE FROM quarantine WHERE last_seen_pass <= ?1")
        .bind(pass_id - 2)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected())
}
