//! Reading canonical contacts back for the pushers and re-planning, and the small `meta`
//! key-value table.

use sqlx::Row;

use super::{Conn, Store, StoreError};
use crate::domain::Contact;

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
