//! SQLite persistence behind small types (`Contacts`, `Passes`, `Quarantine`, `Meta`, `Outbox`)
//! whose methods each own one query or one transaction; the seam a PostgreSQL backend plugs into.

mod contacts;
mod id_filter;
mod meta;
mod outbox;
mod passes;
mod quarantine;
mod status;

use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{FromRow, Row, Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::sink::Destination;

pub use contacts::{Contacts, KnownContact, ShadowEntry, StoredContact};
pub use meta::Meta;
pub use outbox::{
    AddState, DeadLetter, DeliveryState, DeliveryView, DueDelivery, Outbox, Outcome,
    PlannedPayload, dead_letters, retry_dead_letters,
};
pub use passes::{
    ContactChange, DeletionPlanner, PageConnection, PageProgress, PageTx, PageWrite, Pass, Passes,
    QuarantinedRecord, Seq,
};
pub use quarantine::Quarantine;
pub use status::{
    Backlog, DestinationCounts, PassSummary, Status, backlog, delivery_counts, status,
};
pub(crate) use status::{percent, secs_left, tenth};

/// A database failure; always a runtime error for the caller (exit code 1).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database url {url:?}: {message}")]
    Url { url: String, message: String },
    #[error("{0}")]
    Schema(String),
    /// A stored value this version cannot read (a hash of the wrong length, JSON it did not
    /// write, an unknown state): never replaced by a default, which would act on wrong data.
    /// The value itself is left out, as it may be personal data.
    #[error("corrupt value in {table}.{column} of row {key:?}")]
    Corrupt {
        table: &'static str,
        column: String,
        key: String,
    },
    /// An error of a transaction that wrote for several callers, each of which reports it.
    #[error(transparent)]
    Shared(std::sync::Arc<StoreError>),
    /// Outcomes queued to be written with others whose writer was dropped before it committed
    /// them: they stay pending, as after a crash, and are sent again.
    #[error("outcomes were not recorded: their writer stopped")]
    Unrecorded,
}

/// How every write transaction begins: `BEGIN IMMEDIATE` takes the write lock up front, where a
/// deferred transaction that reads first and writes later fails with SQLITE_BUSY instead of
/// waiting when another connection wrote in between.
const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

/// A write transaction on the store's pool.
type Tx = WriteTx<'static>;

#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
    /// The process's turn to write ([`WriteTx`]).
    turn: Arc<Mutex<()>>,
    /// Outcomes waiting to be written, per destination ([`Outbox::settle`]).
    settling: Arc<outbox::Settlers>,
}

/// A write transaction, holding the process's turn to write until it ends.
///
/// SQLite lets one connection write at a time; one that finds the write lock taken sleeps in
/// its busy handler (1, 2, 5, 10, ... up to 100 ms) and tries again, in no order. Beside the
/// pushers' outcomes, written a millisecond at a time, a page of the pass slept there up to
/// 190 ms (docs/performance.md, "Round 9"). Writers now queue for the turn in arrival order
/// (tokio's mutex is fair) and begin as soon as the writer before them ends.
///
/// No writer holds a connection of the pool while it waits for the turn, except the pass,
/// which keeps one across its pages ([`PageConnection`]): whoever holds the turn can always get
/// one of the others.
pub struct WriteTx<'c> {
    tx: sqlx::Transaction<'c, Sqlite>,
    _turn: OwnedMutexGuard<()>,
}

impl<'c> WriteTx<'c> {
    /// A write transaction ([`BEGIN_WRITE`]) on a connection the caller holds, once it has
    /// `turn`.
    async fn begin(
        conn: &'c mut SqliteConnection,
        turn: OwnedMutexGuard<()>,
    ) -> Result<Self, StoreError> {
        Ok(WriteTx {
            tx: sqlx::Connection::begin_with(conn, BEGIN_WRITE).await?,
            _turn: turn,
        })
    }

    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

impl Deref for WriteTx<'_> {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        &self.tx
    }
}

impl DerefMut for WriteTx<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.tx
    }
}

/// The migrations this binary carries; the daemon applies them, read commands only compare.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How a command that must not migrate opens the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `status`, `dead-letters`: nothing is written.
    ReadOnly,
    /// `dead-letters retry`: a small write, still no schema change.
    ReadWrite,
}

impl Store {
    /// Open (creating if missing) the database at `url`, in WAL mode, and apply migrations.
    /// A database file this creates is 0600 (SQLite gives its WAL and SHM files the same
    /// mode), and a directory it creates is 0700: the file holds raw personal data.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = connect_options(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL + NORMAL survives a killed process; only an OS crash can lose the last commit.
            .synchronous(SqliteSynchronous::Normal)
            // 4 MiB of page cache per connection (the default is 2 MiB), up to 4 connections:
            // 8 MiB cost the end-to-end backfill 10 MB of peak RSS for 4 % less first-pass
            // CPU; page shadows spare the unchanged pass its random probes
            // (docs/performance.md, "Memory is bounded").
            .pragma("cache_size", "-4096")
            // Fewer, larger checkpoints: a page rewritten several times between two is copied
            // back once.
            .pragma("wal_autocheckpoint", "16384")
            // A multi-row upsert keeps a statement journal (to undo a half-applied statement):
            // in memory it is a copy of the few pages the statement touches; in a temp file it
            // was 7 % of a first pass in `pwrite` (docs/performance.md, "Ingest profile").
            .pragma("temp_store", "memory")
            // SQLite's heap as a whole, every connection of the process: past 8 MiB it frees
            // the least recently used unpinned pages of any connection's cache (the bundled
            // build has SQLITE_ENABLE_MEMORY_MANAGEMENT: one LRU across connections), so the
            // pushers' connections do not each keep 4 MiB beside the pass's. A 50,000-contact
            // end-to-end backfill peaked 3.5 MB lower (docs/performance.md, "Round 4").
            .pragma("soft_heap_limit", "8388608");
        create_private(url, &options)?;
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            // No ping on every checkout: a local file has no connection to lose, and the
            // round trip to the connection's thread cost about a millisecond a page.
            .test_before_acquire(false)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self::with(pool))
    }

    /// Open an existing database without creating or migrating it (for `status`,
    /// `dead-letters`): a newer CLI must never change the schema under an older daemon. A
    /// schema other than the one this binary knows is an error naming both versions.
    pub async fn open_existing(url: &str, access: Access) -> Result<Self, StoreError> {
        let options = connect_options(url)?.read_only(access == Access::ReadOnly);
        if !Path::new(options.get_filename()).exists() {
            return Err(StoreError::Url {
                url: url.to_owned(),
                message: "no database there yet (has the daemon run?)".to_owned(),
            });
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await?;
        let store = Self::with(pool);
        if let Err(e) = store.check_schema().await {
            store.close().await;
            return Err(e);
        }
        Ok(store)
    }

    /// The applied schema must be exactly the binary's: same newest version, none missing.
    async fn check_schema(&self) -> Result<(), StoreError> {
        let expected = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        let has_table: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations')",
        )
        .fetch_one(&self.pool)
        .await?;
        let applied: Vec<i64> = if has_table {
            sqlx::query_scalar(
                "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
            )
            .fetch_all(&self.pool)
            .await?
        } else {
            Vec::new()
        };
        let found = applied.last().copied().unwrap_or(0);
        let complete = MIGRATOR.iter().all(|m| applied.contains(&m.version));
        if found > expected {
            return Err(StoreError::Schema(format!(
                "the database schema is version {found}, newer than this contact-sync knows \
                 (version {expected}); use the contact-sync that runs the daemon"
            )));
        }
        if found < expected || !complete {
            return Err(StoreError::Schema(format!(
                "the database schema is version {found}, older than this contact-sync expects \
                 (version {expected}); this command does not migrate: let the daemon (or \
                 --backfill) of this version open it first"
            )));
        }
        Ok(())
    }

    fn with(pool: SqlitePool) -> Self {
        Self {
            pool,
            turn: Arc::default(),
            settling: Arc::default(),
        }
    }

    /// A write transaction ([`BEGIN_WRITE`]) on a connection of the pool, taken once this
    /// writer has its turn.
    async fn begin(&self) -> Result<Tx, StoreError> {
        let turn = self.turn().await;
        Ok(WriteTx {
            tx: self.pool.begin_with(BEGIN_WRITE).await?,
            _turn: turn,
        })
    }

    /// The process's turn to write ([`WriteTx`]).
    async fn turn(&self) -> OwnedMutexGuard<()> {
        Arc::clone(&self.turn).lock_owned().await
    }

    /// The pool itself, for a liveness probe and for tests that inspect rows with raw SQL;
    /// the daemon's reads and writes go through the types below.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub fn contacts(&self) -> Contacts {
        Contacts::new(self.clone())
    }

    pub fn passes(&self) -> Passes {
        Passes::new(self.clone())
    }

    pub fn quarantine(&self) -> Quarantine {
        Quarantine::new(self.clone())
    }

    pub fn meta(&self) -> Meta {
        Meta::new(self.clone())
    }

    pub fn outbox(&self, destination: Destination) -> Outbox {
        Outbox::new(self.clone(), destination)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The file behind a `sqlite:` database URL, created as [`Store::open`] would (0600, missing
/// directories 0700), so the writer lock can be taken beside it before anything else touches
/// the database; `None` for an in-memory database.
pub fn prepare_database_file(url: &str) -> Result<Option<std::path::PathBuf>, StoreError> {
    let options = connect_options(url)?;
    Ok(create_private(url, &options)?.map(Path::to_owned))
}

fn connect_options(url: &str) -> Result<SqliteConnectOptions, StoreError> {
    Ok(SqliteConnectOptions::from_str(url)
        .map_err(|e| StoreError::Url {
            url: url.to_owned(),
            message: e.to_string(),
        })?
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true))
}

/// Create the database's missing directories 0700 and a missing database file 0600, whatever
/// the umask, before SQLite opens it. Existing ones are left as the operator set them.
/// Returns the file; `None` for an in-memory database.
fn create_private<'a>(
    url: &str,
    options: &'a SqliteConnectOptions,
) -> Result<Option<&'a Path>, StoreError> {
    let failed = |what: &Path, e: std::io::Error| StoreError::Url {
        url: url.to_owned(),
        message: format!("cannot create {}: {e}", what.display()),
    };
    let file = Path::new(options.get_filename());
    if file.as_os_str().is_empty() || file == Path::new(":memory:") {
        return Ok(None);
    }
    let mut missing = Vec::new();
    let mut dir = file.parent();
    while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        missing.push(d);
        dir = d.parent();
    }
    for d in missing.into_iter().rev() {
        private::create_dir(d).map_err(|e| failed(d, e))?;
    }
    if !file.exists() {
        private::create_file(file).map_err(|e| failed(file, e))?;
    }
    Ok(Some(file))
}

#[cfg(unix)]
mod private {
    use std::fs::{self, DirBuilder, OpenOptions, Permissions};
    use std::io;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    use std::path::Path;

    pub fn create_dir(dir: &Path) -> io::Result<()> {
        match DirBuilder::new().mode(0o700).create(dir) {
            // Another process created it meanwhile: theirs to keep as it is.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
            // The umask may have taken bits away; 0700 is what is meant.
            Ok(()) => fs::set_permissions(dir, Permissions::from_mode(0o700)),
        }
    }

    pub fn create_file(file: &Path) -> io::Result<()> {
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(file)
        {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
            Ok(_) => fs::set_permissions(file, Permissions::from_mode(0o600)),
        }
    }
}

#[cfg(not(unix))]
mod private {
    use std::io;
    use std::path::Path;

    pub fn create_dir(dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    pub fn create_file(file: &Path) -> io::Result<()> {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(file)
            .map(drop)
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

/// Decode a row by column name. A value this version cannot read is [`StoreError::Corrupt`],
/// naming the row by its `key` columns; other failures stay database errors.
fn decode<T>(row: &SqliteRow, table: &'static str, key: &[&str]) -> Result<T, StoreError>
where
    T: for<'r> FromRow<'r, SqliteRow>,
{
    T::from_row(row).map_err(|e| match e {
        sqlx::Error::ColumnDecode { index, .. } => StoreError::Corrupt {
            table,
            // sqlx names the column as its index prints: quoted.
            column: index.trim_matches('"').to_owned(),
            key: key
                .iter()
                .map(|column| {
                    row.try_get::<String, _>(*column)
                        .or_else(|_| row.try_get::<i64, _>(*column).map(|v| v.to_string()))
                        .unwrap_or_else(|_| "?".to_owned())
                })
                .collect::<Vec<_>>()
                .join("/"),
        },
        other => StoreError::Sqlx(other),
    })
}

/// Decode every row (see [`decode`]).
fn decode_all<T>(
    rows: &[SqliteRow],
    table: &'static str,
    key: &[&str],
) -> Result<Vec<T>, StoreError>
where
    T: for<'r> FromRow<'r, SqliteRow>,
{
    rows.iter().map(|row| decode(row, table, key)).collect()
}

/// A BLAKE3 digest column that may be NULL; any length but 32 bytes is a decode error.
fn optional_hash(row: &SqliteRow, column: &str) -> Result<Option<[u8; 32]>, sqlx::Error> {
    row.try_get::<Option<Vec<u8>>, _>(column)?
        .map(|bytes| {
            <[u8; 32]>::try_from(bytes).map_err(|b| sqlx::Error::ColumnDecode {
                index: column.to_owned(),
                source: format!("{} bytes, not 32", b.len()).into(),
            })
        })
        .transpose()
}

/// A list of ids or numbers as one JSON array, so a page-sized set binds as one parameter
/// (`json_each`).
fn json_array<T: serde::Serialize>(items: &[T]) -> String {
    serde_json::to_string(items).expect("ids and numbers serialize")
}

/// Lower-case hex, for hashes travelling inside a JSON batch (SQL turns them back with unhex).
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

/// A migrated store in a database file of its own, for tests; the file lives as long as the
/// directory returned with it.
#[cfg(test)]
pub(crate) async fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("test.db").display());
    let store = Store::open(&url).await.unwrap();
    (dir, store)
}

#[cfg(test)]
mod corrupt_tests;
