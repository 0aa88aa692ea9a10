//! Records that could not become a contact, kept with their reason.

use super::{Conn, StoreError};

pub struct QuarantineWrite<'a> {
    pub raw: &'a str,
    pub raw_hash: &'a [u8],
    pub reason: &'a str,
}

pub async fn quarantine_record(
    conn: &mut Conn,
    q: &QuarantineWrite<'_>,
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
    .bind(q.raw_hash)
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
pub async fn prune_quarantine(conn: &mut Conn, pass_id: i64) -> Result<u64, StoreError> {
    let done = sqlx::query("DELETE FROM quarantine WHERE last_seen_pass <= ?1")
        .bind(pass_id - 2)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected())
}

/// How many quarantined records there are for each reason, most frequent first.
pub async fn quarantine_reasons(store: &super::Store) -> Result<Vec<(String, i64)>, StoreError> {
    Ok(
        sqlx::query_as(
            "SELECT reason, COUNT(*) FROM quarantine GROUP BY reason ORDER BY 2 DESC, 1",
        )
        .fetch_all(store.pool())
        .await?,
    )
}
