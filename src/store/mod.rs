//! SQLite persistence: the canonical contacts, the pass cursor, quarantine and delivery state.
//! Every function here is one query or one transaction; SQL text lives in `migrations/` and here.

mod contacts;
mod deliveries;
mod passes;
mod quarantine;
mod status;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{SqliteConnection, SqlitePool};

pub use contacts::{
    ContactWrite, KnownContact, known_contacts, mark_missing_deleted, record_sightings, undelete,
    upsert_contacts,
};
pub use deliveries::{
    DeadLetter, DeliveryState, DueDelivery, contacts_after, dead_letters, defer_delivery,
    delivery_state, due_deliveries, get_meta, load_contacts, next_due_at, plan_deliveries,
    record_ack, record_failure, retry_dead_letters, set_add_state, set_meta, set_remote_id,
};
pub use passes::{
    PageProgress, Pass, advance_pass, complete_pass, open_pass, record_pass_failure, restart_pass,
};
pub use quarantine::{QuarantineWrite, prune_quarantine, quarantine_reasons, quarantine_record};
pub use status::{DestinationCounts, PassSummary, Status, delivery_counts, status};

/// A database failure; always a runtime error for the caller (exit code 1).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database url {url:?}: {message}")]
    Url { url: String, message: String },
}

/// A transaction on the store's pool.
pub type Tx = sqlx::Transaction<'static, sqlx::Sqlite>;

#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Open (creating if missing) the database at `url`, in WAL mode, and apply migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Url {
                url: url.to_owned(),
                message: e.to_string(),
            })?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL + NORMAL survives a killed process; only an OS crash can lose the last commit.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            // 8 MiB of page cache per connection (the default is 2 MiB): enough for the hot
            // `contact_seen` pages of a page-sized batch, small enough for the memory budget.
            .pragma("cache_size", "-8192")
            // Fewer, larger checkpoints: a page rewritten several times between two is copied
            // back once.
            .pragma("wal_autocheckpoint", "4000")
            .foreign_keys(true);
        if let Some(dir) = Path::new(options.get_filename()).parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Url {
                url: url.to_owned(),
                message: format!("cannot create {}: {e}", dir.display()),
            })?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self { pool })
    }

    /// Open an existing database without creating it (for `status` and other read commands).
    pub async fn open_existing(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url).map_err(|e| StoreError::Url {
            url: url.to_owned(),
            message: e.to_string(),
        })?;
        if !Path::new(options.get_filename()).exists() {
            return Err(StoreError::Url {
                url: url.to_owned(),
                message: "no database there yet (has the daemon run?)".to_owned(),
            });
        }
        Self::open(url).await
    }

    /// A write transaction. `BEGIN IMMEDIATE` takes the write lock up front: a deferred
    /// transaction that reads first and writes later fails with SQLITE_BUSY instead of
    /// waiting when another connection wrote in between.
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    pub async fn acquire(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Sqlite>, StoreError> {
        Ok(self.pool.acquire().await?)
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Milliseconds since the Unix epoch: the one time unit stored in the database.
pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Render stored epoch milliseconds as RFC 3339 for people and JSON output.
pub fn format_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

type Conn = SqliteConnection;
