//! The small `meta` key-value table: facts the daemon keeps between runs, such as the
//! fingerprint of each destination's payload settings.

use super::{Store, StoreError};

#[derive(Clone, Debug)]
pub struct Meta {
    store: Store,
}

impl Meta {
    pub(super) fn new(store: Store) -> Self {
        Self { store }
    }

    pub async fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT value FROM meta WHERE key = ?1")
            .bind(key)
            .fetch_optional(self.store.pool())
            .await?)
    }

    /// Set every `(key, value)` in one transaction: related facts change together.
    pub async fn set(&self, entries: &[(&str, &str)]) -> Result<(), StoreError> {
        let mut tx = self.store.begin().await?;
        for (key, value) in entries {
            sqlx::query(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .bind(key)
            .bind(value)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
