//! The canonical contacts (`contacts`, written on change) and their per-pass bookkeeping
//! (`contact_seen`, written every pass). Page-sized sets of rows go in one statement each,
//! bound as a JSON array: a statement per record would cost more than the work itself.

use std::collections::HashMap;

use sqlx::Row;

use super::{Conn, StoreError};
use crate::domain::Contact;

/// What the store already holds for an id, looked up before normalizing a page.
#[derive(Debug, Clone)]
pub struct KnownContact {
    pub raw_hash: [u8; 32],
    pub content_hash: [u8; 32],
    pub deleted: bool,
}

/// Stored state of the given ids, one query per page.
pub async fn known_contacts(
    conn: &mut Conn,
    ids: &[&str],
) -> Result<HashMap<String, KnownContact>, StoreError> {
    let rows = sqlx::query(
        "SELECT s.id, s.raw_hash, s.content_hash, s.deleted_at IS NOT NULL
         FROM json_each(?1) j JOIN contact_seen s ON s.id = j.value",
    )
    .bind(json_array(ids))
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let hash =
                |i: usize| -> [u8; 32] { row.get::<Vec<u8>, _>(i).try_into().unwrap_or([0; 32]) };
            (
                row.get::<String, _>(0),
                KnownContact {
                    raw_hash: hash(1),
                    content_hash: hash(2),
                    deleted: row.get(3),
                },
            )
        })
        .collect())
}

/// A normalized record ready to be written.
pub struct ContactWrite<'a> {
    pub contact: &'a Contact,
    pub raw: &'a str,
    pub raw_hash: [u8; 32],
    pub content_hash: [u8; 32],
    /// Whether the canonical content differs from what is stored (or is new); when only the
    /// raw record changed, `changed_at` keeps its value.
    pub content_changed: bool,
}

/// Rows per multi-row INSERT: large enough to amortize a statement, small enough to stay far
/// below SQLite's bound-parameter limit. Full chunks reuse one prepared statement.
const ROWS_PER_INSERT: usize = 100;

/// Insert or replace a page of contacts seen in `pass_id` (and no longer deleted).
pub async fn upsert_contacts(
    conn: &mut Conn,
    writes: &[ContactWrite<'_>],
    pass_id: i64,
    now: i64,
) -> Result<(), StoreError> {
    for chunk in writes.chunks(ROWS_PER_INSERT) {
        upsert_contact_rows(conn, chunk, now).await?;
        upsert_seen_rows(conn, chunk).await?;
    }
    let ids: Vec<&str> = writes.iter().map(|w| w.contact.id.as_str()).collect();
    record_sightings(conn, &ids, pass_id).await
}

async fn upsert_contact_rows(
    conn: &mut Conn,
    chunk: &[ContactWrite<'_>],
    now: i64,
) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO contacts (id, first_name, last_name, full_name, emails, phones, vip, fields,
             created_at, modified_at, raw, first_seen_at, changed_at)
         VALUES {}
         ON CONFLICT (id) DO UPDATE SET
             first_name = excluded.first_name, last_name = excluded.last_name,
             full_name = excluded.full_name, emails = excluded.emails, phones = excluded.phones,
             vip = excluded.vip, fields = excluded.fields, created_at = excluded.created_at,
             modified_at = excluded.modified_at, raw = excluded.raw,
             changed_at = CASE WHEN excluded.changed_at = 0 THEN contacts.changed_at
                               ELSE excluded.changed_at END",
        placeholders(chunk.len(), 13)
    );
    let mut query = sqlx::query(&sql);
    for w in chunk {
        let c = w.contact;
        query = query
            .bind(c.id.as_str())
            .bind(&c.first_name)
            .bind(&c.last_name)
            .bind(&c.full_name)
            .bind(serde_json::to_string(&c.emails).expect("strings serialize"))
            .bind(serde_json::to_string(&c.phones).expect("strings serialize"))
            .bind(c.vip)
            .bind(serde_json::to_string(&c.fields).expect("JSON values serialize"))
            .bind(c.created_at)
            .bind(c.modified_at)
            .bind(w.raw)
            .bind(now)
            // 0: keep the stored changed_at (only unused raw fields changed).
            .bind(if w.content_changed { now } else { 0 });
    }
    query.execute(&mut *conn).await?;
    Ok(())
}

async fn upsert_seen_rows(conn: &mut Conn, chunk: &[ContactWrite<'_>]) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO contact_seen (id, raw_hash, content_hash, deleted_at)
         VALUES {}
         ON CONFLICT (id) DO UPDATE SET
             raw_hash = excluded.raw_hash, content_hash = excluded.content_hash, deleted_at = NULL",
        placeholders(chunk.len(), 4)
    );
    let mut query = sqlx::query(&sql);
    for w in chunk {
        query = query
            .bind(w.contact.id.as_str())
            .bind(&w.raw_hash[..])
            .bind(&w.content_hash[..])
            .bind(None::<i64>);
    }
    query.execute(&mut *conn).await?;
    Ok(())
}

/// `(?, ?, …), (?, ?, …), …`: `rows` groups of `columns` placeholders.
fn placeholders(rows: usize, columns: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(", "));
    vec![row; rows].join(", ")
}

/// Record that `pass_id` saw these ids (unchanged ones: nothing else is written for them).
pub async fn record_sightings(
    conn: &mut Conn,
    ids: &[&str],
    pass_id: i64,
) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query("INSERT INTO pass_sightings (pass_id, id) SELECT ?1, value FROM json_each(?2)")
        .bind(pass_id)
        .bind(json_array(ids))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Clear the deleted mark of contacts the source sends again unchanged.
pub async fn undelete(conn: &mut Conn, ids: &[&str]) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE contact_seen SET deleted_at = NULL WHERE id IN (SELECT value FROM json_each(?1))",
    )
    .bind(json_array(ids))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// At the end of pass `pass_id`: mark deleted every live contact that neither it nor the
/// complete pass before it saw, and forget older sightings. Returns how many were marked.
pub async fn mark_missing_deleted(
    conn: &mut Conn,
    pass_id: i64,
    now: i64,
) -> Result<u64, StoreError> {
    let marked = if pass_id >= 2 {
        sqlx::query(
            "UPDATE contact_seen SET deleted_at = ?1
             WHERE deleted_at IS NULL
               AND id NOT IN (SELECT id FROM pass_sightings WHERE pass_id >= ?2)",
        )
        .bind(now)
        .bind(pass_id - 1)
        .execute(&mut *conn)
        .await?
        .rows_affected()
    } else {
        0
    };
    sqlx::query("DELETE FROM pass_sightings WHERE pass_id < ?1")
        .bind(pass_id - 1)
        .execute(&mut *conn)
        .await?;
    Ok(marked)
}

pub(super) fn json_array(ids: &[&str]) -> String {
    serde_json::to_string(ids).expect("strings serialize")
}

/// Lower-case hex, for hashes travelling inside a JSON batch (SQL turns them back with unhex).
pub(super) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}
