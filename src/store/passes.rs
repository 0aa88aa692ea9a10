//! The pass cursor: which pass is running and where in the source list it has got to.

use sqlx::Row;

use super::{Conn, StoreError};

/// The open pass: where the next page starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pass {
    pub id: i64,
    pub next_start: u64,
    pub started_at: i64,
    /// Failures in a row at `next_start` since the pass last advanced.
    pub failures: u32,
}

/// The open pass if one was interrupted, else a new one starting at offset 0.
pub async fn open_pass(conn: &mut Conn, now: i64) -> Result<Pass, StoreError> {
    let open = sqlx::query(
        "SELECT id, next_start, started_at, failures FROM passes
         WHERE completed_at IS NULL ORDER BY id DESC LIMIT 1",
    )
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(row) = open {
        return Ok(Pass {
            id: row.get(0),
            next_start: row.get::<i64, _>(1).max(0) as u64,
            started_at: row.get(2),
            failures: row.get::<i64, _>(3).clamp(0, i64::from(u32::MAX)) as u32,
        });
    }
    let id: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) + 1 FROM passes")
        .fetch_one(&mut *conn)
        .await?;
    sqlx::query("INSERT INTO passes (id, started_at, next_start) VALUES (?1, ?2, 0)")
        .bind(id)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    Ok(Pass {
        id,
        next_start: 0,
        started_at: now,
        failures: 0,
    })
}

/// Count a failed page of the open pass at `offset`: consecutive failures at the same offset
/// add up, a failure elsewhere starts again at one. Returns the count.
pub async fn record_pass_failure(
    conn: &mut Conn,
    pass_id: i64,
    offset: u64,
) -> Result<u32, StoreError> {
    let failures: i64 = sqlx::query_scalar(
        "UPDATE passes SET
             failures = CASE WHEN failed_at = ?2 THEN failures + 1 ELSE 1 END,
             failed_at = ?2
         WHERE id = ?1 RETURNING failures",
    )
    .bind(pass_id)
    .bind(offset as i64)
    .fetch_one(&mut *conn)
    .await?;
    Ok(failures.clamp(0, i64::from(u32::MAX)) as u32)
}

/// Send the open pass back to offset 0, its failure count cleared. Records already read stay
/// sighted by this pass, so nothing is marked deleted for having been read before the restart.
pub async fn restart_pass(conn: &mut Conn, pass_id: i64) -> Result<(), StoreError> {
    sqlx::query("UPDATE passes SET next_start = 0, failures = 0, failed_at = NULL WHERE id = ?1")
        .bind(pass_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// What one committed page adds to its pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageProgress {
    pub next_start: u64,
    pub records: u64,
    pub new_contacts: u64,
    pub changed: u64,
    pub quarantined: u64,
}

pub async fn advance_pass(
    conn: &mut Conn,
    pass_id: i64,
    page: &PageProgress,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE passes SET next_start = ?2, pages = pages + 1, failures = 0, failed_at = NULL,
             records = records + ?3, new_contacts = new_contacts + ?4,
             changed = changed + ?5, quarantined = quarantined + ?6
         WHERE id = ?1",
    )
    .bind(pass_id)
    .bind(page.next_start as i64)
    .bind(page.records as i64)
    .bind(page.new_contacts as i64)
    .bind(page.changed as i64)
    .bind(page.quarantined as i64)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn complete_pass(
    conn: &mut Conn,
    pass_id: i64,
    deleted: u64,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE passes SET completed_at = ?2, deleted = ?3 WHERE id = ?1")
        .bind(pass_id)
        .bind(now)
        .bind(deleted as i64)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
