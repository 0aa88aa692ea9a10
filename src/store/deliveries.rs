//! The outbox: one row per contact and destination saying what the destination should hold
//! (`payload_hash`), what it acknowledged (`acked_hash`), and when to try next.

use sqlx::Row;

use super::{Conn, Store, StoreError};
use crate::domain::Contact;

/// Record what `destination` should hold for each contact: the hash of its payload, or
/// `None` when there is nothing to send (skipped). A changed plan is due at once, with a fresh
/// attempt count, even if it was a dead letter: new content may well be accepted.
pub async fn plan_deliveries(
    conn: &mut Conn,
    destination: &str,
    plans: &[(&str, Option<[u8; 32]>)],
    now: i64,
) -> Result<(), StoreError> {
    if plans.is_empty() {
        return Ok(());
    }
    let rows: Vec<serde_json::Value> = plans
        .iter()
        .map(|(id, hash)| serde_json::json!({"id": id, "hash": hash.map(|h| super::contacts::hex(&h))}))
        .collect();
    sqlx::query(
        "INSERT INTO deliveries (contact_id, destination, state, payload_hash, attempts,
                                 next_attempt_at, updated_at)
         SELECT value ->> 'id', ?2,
                CASE WHEN value ->> 'hash' IS NULL THEN 'skipped' ELSE 'pending' END,
                unhex(value ->> 'hash'), 0, ?3, ?3
         FROM json_each(?1) WHERE true
         ON CONFLICT (contact_id, destination) DO UPDATE SET
             state = CASE WHEN excluded.payload_hash IS NULL THEN 'skipped'
                          WHEN deliveries.acked_hash = excluded.payload_hash THEN 'synced'
                          ELSE 'pending' END,
             payload_hash = excluded.payload_hash, attempts = 0,
             next_attempt_at = excluded.next_attempt_at, updated_at = excluded.updated_at
         WHERE deliveries.payload_hash IS NOT excluded.payload_hash",
    )
    .bind(serde_json::Value::Array(rows).to_string())
    .bind(destination)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The delivery row of one contact at one destination, as far as a preview needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryState {
    pub state: String,
    pub add_state: Option<String>,
    pub remote_id: Option<String>,
}

pub async fn delivery_state(
    conn: &mut Conn,
    contact_id: &str,
    destination: &str,
) -> Result<Option<DeliveryState>, StoreError> {
    let row = sqlx::query(
        "SELECT state, add_state, remote_id FROM deliveries
         WHERE contact_id = ?1 AND destination = ?2",
    )
    .bind(contact_id)
    .bind(destination)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|row| DeliveryState {
        state: row.get(0),
        add_state: row.get(1),
        remote_id: row.get(2),
    }))
}

/// A delivery whose time has come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueDelivery {
    pub contact_id: String,
    pub remote_id: Option<String>,
    /// OMI: `None` never sent, `intent` sent with unknown outcome, `added` acknowledged.
    pub add_state: Option<String>,
    pub attempts: u32,
}

/// Up to `limit` pending deliveries due by `now`, oldest first.
pub async fn due_deliveries(
    store: &Store,
    destination: &str,
    now: i64,
    limit: u32,
) -> Result<Vec<DueDelivery>, StoreError> {
    let rows = sqlx::query(
        "SELECT contact_id, remote_id, add_state, attempts FROM deliveries
         WHERE destination = ?1 AND state = 'pending' AND next_attempt_at <= ?2
         ORDER BY next_attempt_at, contact_id LIMIT ?3",
    )
    .bind(destination)
    .bind(now)
    .bind(i64::from(limit))
    .fetch_all(store.pool())
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| DueDelivery {
            contact_id: row.get(0),
            remote_id: row.get(1),
            add_state: row.get(2),
            attempts: row.get::<i64, _>(3).clamp(0, i64::from(u32::MAX)) as u32,
        })
        .collect())
}

/// When the earliest pending delivery of `destination` is due; `None` when none is pending.
pub async fn next_due_at(store: &Store, destination: &str) -> Result<Option<i64>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT MIN(next_attempt_at) FROM deliveries WHERE destination = ?1 AND state = 'pending'",
    )
    .bind(destination)
    .fetch_one(store.pool())
    .await?)
}

/// OMI: the add is about to be sent. Committed before the request, so a crash after it leaves
/// the contact marked as "maybe added" and the next attempt is an `update`.
pub async fn set_add_state(
    conn: &mut Conn,
    destination: &str,
    contact_id: &str,
    add_state: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE deliveries SET add_state = ?3 WHERE contact_id = ?1 AND destination = ?2")
        .bind(contact_id)
        .bind(destination)
        .bind(add_state)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Remember (or forget, with `None`) the destination's own id for a contact.
pub async fn set_remote_id(
    conn: &mut Conn,
    destination: &str,
    contact_id: &str,
    remote_id: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE deliveries SET remote_id = ?3 WHERE contact_id = ?1 AND destination = ?2")
        .bind(contact_id)
        .bind(destination)
        .bind(remote_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The destination acknowledged the payload with hash `sent`. If the plan moved on while the
/// request was in flight, the delivery stays pending for the newer payload.
pub async fn record_ack(
    conn: &mut Conn,
    destination: &str,
    contact_id: &str,
    sent: &[u8],
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE deliveries SET acked_hash = ?3,
             state = CASE WHEN payload_hash = ?3 THEN 'synced' ELSE 'pending' END,
             attempts = 0, next_attempt_at = ?4, last_error = NULL, updated_at = ?4
         WHERE contact_id = ?1 AND destination = ?2",
    )
    .bind(contact_id)
    .bind(destination)
    .bind(sent)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A failed attempt: retried at `retry_at`, or a dead letter when that is `None`.
pub async fn record_failure(
    conn: &mut Conn,
    destination: &str,
    contact_id: &str,
    error: &str,
    retry_at: Option<i64>,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE deliveries SET attempts = attempts + 1, last_error = ?3,
             state = CASE WHEN ?4 IS NULL THEN 'dead' ELSE 'pending' END,
             next_attempt_at = COALESCE(?4, next_attempt_at), updated_at = ?5
         WHERE contact_id = ?1 AND destination = ?2 AND state = 'pending'",
    )
    .bind(contact_id)
    .bind(destination)
    .bind(error)
    .bind(retry_at)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Hold a delivery until `retry_at` without counting an attempt: the destination paused
/// (429, refused credentials), the record itself did not fail.
pub async fn defer_delivery(
    conn: &mut Conn,
    destination: &str,
    contact_id: &str,
    retry_at: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE deliveries SET next_attempt_at = ?3
         WHERE contact_id = ?1 AND destination = ?2 AND state = 'pending'",
    )
    .bind(contact_id)
    .bind(destination)
    .bind(retry_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A permanently failed delivery, for `dead-letters`.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct DeadLetter {
    pub contact_id: String,
    pub destination: String,
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
    Ok(rows
        .into_iter()
        .map(|row| DeadLetter {
            contact_id: row.get(0),
            destination: row.get(1),
            attempts: row.get(2),
            last_error: row.get(3),
            failed_at: super::format_ms(row.get(4)),
        })
        .collect())
}

/// Make dead letters due again (all, or one destination's, or one contact's).
pub async fn retry_dead_letters(
    store: &Store,
    destination: Option<&str>,
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

/// The canonical contacts with these ids (deleted ones included), in no particular order.
pub async fn load_contacts(store: &Store, ids: &[&str]) -> Result<Vec<Contact>, StoreError> {
    let rows = sqlx::query(
        "SELECT c.id, c.first_name, c.last_name, c.full_name, c.emails, c.phones, c.vip, c.fields,
                c.created_at, c.modified_at
         FROM json_each(?1) j JOIN contacts c ON c.id = j.value",
    )
    .bind(super::contacts::json_array(ids))
    .fetch_all(store.pool())
    .await?;
    rows.into_iter().map(contact_from_row).collect()
}

/// Contacts in id order after `after`, `limit` at a time: for walking the whole table in
/// bounded memory.
pub async fn contacts_after(
    store: &Store,
    after: &str,
    limit: u32,
) -> Result<Vec<Contact>, StoreError> {
    let rows = sqlx::query(
        "SELECT c.id, c.first_name, c.last_name, c.full_name, c.emails, c.phones, c.vip, c.fields,
                c.created_at, c.modified_at
         FROM contacts c JOIN contact_seen s ON s.id = c.id
         WHERE c.id > ?1 AND s.deleted_at IS NULL ORDER BY c.id LIMIT ?2",
    )
    .bind(after)
    .bind(i64::from(limit))
    .fetch_all(store.pool())
    .await?;
    rows.into_iter().map(contact_from_row).collect()
}

fn json_column<T: serde::de::DeserializeOwned>(
    column: &str,
    text: String,
) -> Result<T, StoreError> {
    serde_json::from_str(&text).map_err(|e| {
        StoreError::Sqlx(sqlx::Error::Decode(
            format!("contacts.{column} is not the JSON this version writes: {e}").into(),
        ))
    })
}

fn contact_from_row(row: sqlx::sqlite::SqliteRow) -> Result<Contact, StoreError> {
    let id: String = row.get(0);
    Ok(Contact {
        id: crate::domain::ContactId::parse(&id)
            .map_err(|e| StoreError::Sqlx(sqlx::Error::Decode(e.to_string().into())))?,
        first_name: row.get(1),
        last_name: row.get(2),
        full_name: row.get(3),
        emails: json_column("emails", row.get(4))?,
        phones: json_column("phones", row.get(5))?,
        vip: row.get(6),
        fields: json_column("fields", row.get(7))?,
        created_at: row.get(8),
        modified_at: row.get(9),
    })
}

pub async fn get_meta(store: &Store, key: &str) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar("SELECT value FROM meta WHERE key = ?1")
        .bind(key)
        .fetch_optional(store.pool())
        .await?)
}

pub async fn set_meta(conn: &mut Conn, key: &str, value: &str) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(key)
    .bind(value)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
