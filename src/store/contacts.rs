//! The canonical contacts table.

use sqlx::Row;

use super::{Conn, StoreError};
use crate::domain::Contact;

/// What the store already holds for an id, looked up before normalizing a page.
#[derive(Debug, Clone)]
pub struct KnownContact {
    pub raw_hash: Vec<u8>,
    pub content_hash: Vec<u8>,
    pub deleted: bool,
}

/// Stored state of the given ids, one query per page (ids bound as one JSON array).
pub async fn known_contacts(
    conn: &mut Conn,
    ids: &[&str],
) -> Result<std::collections::HashMap<String, KnownContact>, StoreError> {
    let ids_json = serde_json::to_string(ids).expect("strings serialize");
    let rows = sqlx::query(
        "SELECT c.id, c.raw_hash, c.content_hash, c.deleted_at IS NOT NULL AS deleted
         FROM contacts c JOIN json_each(?1) j ON c.id = j.value",
    )
    .bind(ids_json)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            (
                row.get::<String, _>(0),
                KnownContact {
                    raw_hash: row.get(1),
                    content_hash: row.get(2),
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
    pub raw_hash: &'a [u8],
    pub content_hash: &'a [u8],
}

/// Insert or replace a contact seen in `pass_id`. `changed_at` moves only when the canonical
/// content changed, not when only unused raw fields did.
pub async fn upsert_contact(
    conn: &mut Conn,
    write: &ContactWrite<'_>,
    pass_id: i64,
    now: i64,
) -> Result<(), StoreError> {
    let c = write.contact;
    sqlx::query(
        "INSERT INTO contacts (id, first_name, last_name, full_name, emails, phones, vip, fields,
             created_at, modified_at, raw, raw_hash, content_hash,
             first_seen_at, last_seen_at, last_seen_pass, changed_at, deleted_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?14, ?15, ?14, NULL)
         ON CONFLICT (id) DO UPDATE SET
             first_name = excluded.first_name, last_name = excluded.last_name,
             full_name = excluded.full_name, emails = excluded.emails, phones = excluded.phones,
             vip = excluded.vip, fields = excluded.fields, created_at = excluded.created_at,
             modified_at = excluded.modified_at, raw = excluded.raw, raw_hash = excluded.raw_hash,
             changed_at = CASE WHEN contacts.content_hash = excluded.content_hash
                               THEN contacts.changed_at ELSE excluded.changed_at END,
             content_hash = excluded.content_hash,
             last_seen_at = excluded.last_seen_at, last_seen_pass = excluded.last_seen_pass,
             deleted_at = NULL",
    )
    .bind(c.id.as_str())
    .bind(&c.first_name)
    .bind(&c.last_name)
    .bind(&c.full_name)
    .bind(serde_json::to_string(&c.emails).expect("strings serialize"))
    .bind(serde_json::to_string(&c.phones).expect("strings serialize"))
    .bind(c.vip)
    .bind(serde_json::to_string(&c.fields).expect("json values serialize"))
    .bind(c.created_at)
    .bind(c.modified_at)
    .bind(write.raw)
    .bind(write.raw_hash)
    .bind(write.content_hash)
    .bind(now)
    .bind(pass_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Mark contacts whose raw record is unchanged as seen in this pass, without rewriting them.
pub async fn touch_seen(
    conn: &mut Conn,
    ids: &[&str],
    pass_id: i64,
    now: i64,
) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE contacts SET last_seen_pass = ?1, last_seen_at = ?2, deleted_at = NULL
         WHERE id IN (SELECT value FROM json_each(?3))",
    )
    .bind(pass_id)
    .bind(now)
    .bind(serde_json::to_string(ids).expect("strings serialize"))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Mark deleted every live contact missing from the two complete passes ending at `pass_id`.
/// Returns how many were marked.
pub async fn mark_missing_deleted(
    conn: &mut Conn,
    pass_id: i64,
    now: i64,
) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "UPDATE contacts SET deleted_at = ?1 WHERE deleted_at IS NULL AND last_seen_pass <= ?2",
    )
    .bind(now)
    .bind(pass_id - 2)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}
