//! The canonical contacts (`contacts`, keyed by their number and written on change, with the
//! hashes and deleted mark a pass reads), the id index in two levels that maps ids to numbers
//! (`contact_ids_recent`, `contact_ids`; migration 0010), and their per-pass bookkeeping
//! (`pass_seen`, and the page shadows in `page_shadow` that let a page read again skip its
//! lookups): reads for the puller and pushers, writes for a page.
//! Page-sized sets of rows go in one statement each, bound as a JSON array or a multi-row
//! INSERT: a statement per record would cost more than the work itself. Ids are sorted
//! before they reach SQLite, so a batch walks the id index in order instead of at random.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use futures_util::TryStreamExt;

use super::{Conn, Store, StoreError, decode_all, json_array};
use crate::domain::{Contact, ContactId, EmailAddress, PhoneNumber, RawHash};
use crate::store::id_filter::IdFilter;
use crate::store::{ContactChange, Seq};

/// What the store already holds for an id, looked up before classifying a page.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct KnownContact {
    #[sqlx(try_from = "Vec<u8>")]
    pub raw_hash: RawHash,
    #[sqlx(try_from = "Vec<u8>")]
    pub content_hash: [u8; 32],
    pub deleted: bool,
    /// The contact's number (`contacts.seq`): a sighting is recorded by it, so an
    /// unchanged record needs no second probe. `None` only for a contact a plan has just
    /// made and not yet stored.
    pub seq: Option<i64>,
    /// The start offset of the page whose shadow may list the contact (`contacts.page`).
    pub page: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct SeenRow {
    id: String,
    #[sqlx(flatten)]
    known: KnownContact,
}

/// A `contacts` row by column name; the JSON columns are what this version writes.
#[derive(sqlx::FromRow)]
struct ContactRow {
    #[sqlx(try_from = "String")]
    id: ContactId,
    first_name: String,
    last_name: String,
    full_name: String,
    #[sqlx(try_from = "String")]
    emails: JsonText<Vec<EmailAddress>>,
    #[sqlx(try_from = "String")]
    phones: JsonText<Vec<PhoneNumber>>,
    vip: bool,
    #[sqlx(try_from = "String")]
    fields: JsonText<BTreeMap<String, serde_json::Value>>,
    created_at: Option<i64>,
    modified_at: Option<i64>,
}

/// A query selecting the columns of a [`ContactRow`] from `contacts c`, then `$from`.
macro_rules! select_contacts {
    ($($from:expr),+) => {
        concat!(
            "SELECT c.id, c.first_name, c.last_name, c.full_name, c.emails, c.phones, c.vip,
                    c.fields, c.created_at, c.modified_at ",
            $($from),+
        )
    };
}

/// The number of the contact whose id is the SQL expression `$id`, or NULL. The id index is
/// two tables (migration 0010): the small `contact_ids_recent`, read first, and `contact_ids`.
macro_rules! number_of {
    ($id:literal) => {
        concat!(
            "COALESCE((SELECT seq FROM contact_ids_recent WHERE id = ",
            $id,
            "), (SELECT seq FROM contact_ids WHERE id = ",
            $id,
            "))"
        )
    };
}

/// A stored contact and whether it is marked deleted, read together: what it becomes at a
/// destination depends on both (docs/delivery.md#deletions).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredContact {
    pub contact: Contact,
    pub deleted: bool,
}

#[derive(sqlx::FromRow)]
struct NumberedRow {
    #[sqlx(flatten)]
    contact: ContactRow,
    seq: i64,
}

#[derive(sqlx::FromRow)]
struct StoredRow {
    #[sqlx(flatten)]
    contact: ContactRow,
    deleted: bool,
}

/// A TEXT column holding JSON; text this version cannot parse is a decode error.
struct JsonText<T>(T);

impl<T: serde::de::DeserializeOwned> TryFrom<String> for JsonText<T> {
    type Error = serde_json::Error;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        serde_json::from_str(&text).map(Self)
    }
}

impl From<ContactRow> for Contact {
    fn from(row: ContactRow) -> Self {
        Self {
            id: row.id,
            first_name: row.first_name,
            last_name: row.last_name,
            full_name: row.full_name,
            emails: row.emails.0,
            phones: row.phones.0,
            vip: row.vip,
            fields: row.fields.0,
            created_at: row.created_at,
            modified_at: row.modified_at,
        }
    }
}

/// The canonical contacts and what each pass saw of them.
#[derive(Clone, Debug)]
pub struct Contacts {
    store: Store,
}

impl Contacts {
    pub(super) fn new(store: Store) -> Self {
        Self { store }
    }

    /// Stored state of the given ids, one query per page (a dry run's read; a page being
    /// written reads through its own transaction, [`super::PageTx::known`]).
    pub async fn known(&self, ids: &[&str]) -> Result<HashMap<String, KnownContact>, StoreError> {
        let mut conn = self.store.pool().acquire().await?;
        known(&mut conn, ids, None).await
    }

    /// The shadow of the page starting at `start` as last committed (a page being written
    /// reads its own through its transaction, [`super::PageTx::shadow`]).
    pub async fn shadow(&self, start: u64) -> Result<Vec<ShadowEntry>, StoreError> {
        let mut conn = self.store.pool().acquire().await?;
        shadow(&mut conn, start as i64).await
    }

    /// The canonical contacts with these ids (deleted ones included, and marked so), in no
    /// particular order.
    pub async fn load(&self, ids: &[&str]) -> Result<Vec<StoredContact>, StoreError> {
        let mut conn = self.store.pool().acquire().await?;
        load(&mut conn, ids).await
    }

    /// Contacts in number order after the number `after`, live ones or (`deleted`) those
    /// marked deleted, `limit` at a time, each with its number: for walking the whole table in
    /// bounded memory.
    pub async fn after(
        &self,
        after: i64,
        limit: u32,
        deleted: bool,
    ) -> Result<Vec<(i64, Contact)>, StoreError> {
        let rows = sqlx::query(select_contacts!(
            ", c.seq FROM contacts c
             WHERE c.seq > ?1 AND (c.deleted_at IS NOT NULL) = ?3 ORDER BY c.seq LIMIT ?2"
        ))
        .bind(after)
        .bind(i64::from(limit))
        .bind(deleted)
        .fetch_all(self.store.pool())
        .await?;
        Ok(decode_all::<NumberedRow>(&rows, "contacts", &["seq"])?
            .into_iter()
            .map(|row| (row.seq, Contact::from(row.contact)))
            .collect())
    }
}

/// [`Contacts::load`] on `conn`, so a transaction sees what it wrote.
pub(super) async fn load(conn: &mut Conn, ids: &[&str]) -> Result<Vec<StoredContact>, StoreError> {
    let rows = sqlx::query(select_contacts!(
        ", c.deleted_at IS NOT NULL AS deleted
         FROM json_each(?1) j JOIN contacts c ON c.seq = ",
        number_of!("j.value")
    ))
    .bind(json_array(ids))
    .fetch_all(&mut *conn)
    .await?;
    Ok(decode_all::<StoredRow>(&rows, "contacts", &["id"])?
        .into_iter()
        .map(|row| StoredContact {
            contact: Contact::from(row.contact),
            deleted: row.deleted,
        })
        .collect())
}

/// Stored state of the given ids, probed in id order. Ids `filter` says `contact_ids` cannot
/// hold are only looked for in `contact_ids_recent`.
pub(super) async fn known(
    conn: &mut Conn,
    ids: &[&str],
    filter: Option<&IdFilter>,
) -> Result<HashMap<String, KnownContact>, StoreError> {
    let (mut anywhere, mut recent): (Vec<&str>, Vec<&str>) =
        (ids.iter()).partition(|id| filter.is_none_or(|f| f.may_hold(id)));
    anywhere.sort_unstable();
    recent.sort_unstable();
    let rows = sqlx::query(concat!(
        "SELECT c.id, c.content_hash, c.deleted_at IS NOT NULL AS deleted, c.seq, c.page,
                -- A raw hash of another width (BLAKE3, before migration 0009) matches no record.
                CASE WHEN length(c.raw_hash) = 16 THEN c.raw_hash ELSE zeroblob(16) END
                    AS raw_hash
         FROM (SELECT j.value AS id, ",
        number_of!("j.value"),
        " AS seq FROM json_each(?1) j
               UNION ALL
               SELECT j.value, (SELECT seq FROM contact_ids_recent WHERE id = j.value)
               FROM json_each(?2) j) k
         JOIN contacts c ON c.seq = k.seq"
    ))
    .bind(json_array(&anywhere))
    .bind(json_array(&recent))
    .fetch_all(&mut *conn)
    .await?;
    Ok(decode_all::<SeenRow>(&rows, "contacts", &["id"])?
        .into_iter()
        .map(|row| (row.id, row.known))
        .collect())
}

/// Every id of the index, both levels, in no order: what an [`IdFilter`] is built from.
pub(super) async fn indexed_ids(conn: &mut Conn, filter: &mut IdFilter) -> Result<(), StoreError> {
    let mut rows = sqlx::query_scalar::<_, String>(
        "SELECT id FROM contact_ids UNION ALL SELECT id FROM contact_ids_recent",
    )
    .fetch(&mut *conn);
    while let Some(id) = rows.try_next().await? {
        filter.insert(&id);
    }
    Ok(())
}

/// Rows per multi-row INSERT: large enough to amortize a statement, small enough to stay far
/// below SQLite's bound-parameter limit. Full chunks reuse one prepared statement.
const ROWS_PER_INSERT: usize = 100;

/// Contacts numbered since the last merge that make `contact_ids_recent` merge into
/// `contact_ids` (migration 0010). A page of new contacts writes about one page of the small
/// table per contact, within a B-tree of about this many entries; a merge writes each page of
/// the large one once, in id order.
const RECENT_IDS: i64 = 20_000;

/// One contact a page writes: the last of its copies in the page, with what all of them add up
/// to.
struct Row<'r> {
    change: &'r ContactChange<'r>,
    seq: Seq,
    /// Whether any copy changed the canonical content.
    content_changed: bool,
}

/// Insert or replace a page of new and changed contacts (no longer deleted).
/// Write `changes` as the page starting at `page` read them: that page claims each of them
/// (`contacts.page`; see [`claim`] for contacts that only moved). Two copies of one id are one
/// row, the later winning. Returns each written contact's number, by id: a number not
/// established before ([`Seq::Unknown`]) is looked up here, in the page's transaction, so an
/// id never takes a second number.
pub(super) async fn upsert(
    conn: &mut Conn,
    changes: &[ContactChange<'_>],
    now: i64,
    page: i64,
    mut filter: Option<&mut IdFilter>,
) -> Result<HashMap<String, i64>, StoreError> {
    let rows = one_per_id(changes);
    let unknown: Vec<&str> = (rows.iter())
        .filter(|r| r.seq == Seq::Unknown)
        .map(|r| r.change.contact.id.as_str())
        .collect();
    let stored = numbers(conn, &unknown).await?;
    let mut last_seq = if rows.iter().any(|r| stored_number(r, &stored).is_none()) {
        last_seq(conn).await?
    } else {
        0
    };
    let mut new = Vec::new();
    let mut written = HashMap::with_capacity(rows.len());
    let numbered: Vec<(&Row<'_>, i64)> = (rows.iter())
        .map(|row| {
            let id = row.change.contact.id.as_str();
            let number = match stored_number(row, &stored) {
                Some(number) => number,
                None => {
                    last_seq += 1;
                    if let Some(filter) = filter.as_deref_mut() {
                        filter.insert(id);
                    }
                    new.push((id, last_seq));
                    last_seq
                }
            };
            written.insert(id.to_owned(), number);
            (row, number)
        })
        .collect();
    for chunk in numbered.chunks(ROWS_PER_INSERT) {
        upsert_rows(conn, chunk, now, page).await?;
    }
    index_new_ids(conn, &new).await?;
    Ok(written)
}

/// The number `row`'s contact already has: the one it is stored under, or the one the lookup
/// of ids not established found. `None`: it is new.
fn stored_number(row: &Row<'_>, stored: &HashMap<String, i64>) -> Option<i64> {
    match row.seq {
        Seq::Stored(number) => Some(number),
        Seq::Unknown => stored.get(row.change.contact.id.as_str()).copied(),
        Seq::Next => None,
    }
}

/// The contacts of a page, sorted by id, the copies of one id made one [`Row`].
fn one_per_id<'r>(changes: &'r [ContactChange<'r>]) -> Vec<Row<'r>> {
    let mut sorted: Vec<&ContactChange<'_>> = changes.iter().collect();
    // Stable: the copies of one id stay in page order.
    sorted.sort_by(|a, b| a.contact.id.as_str().cmp(b.contact.id.as_str()));
    let mut rows: Vec<Row<'_>> = Vec::with_capacity(sorted.len());
    for change in sorted {
        match rows.last_mut() {
            Some(row) if row.change.contact.id == change.contact.id => {
                row.seq = row.seq.or(change.seq);
                row.content_changed |= change.content_changed;
                row.change = change;
            }
            _ => rows.push(Row {
                change,
                seq: change.seq,
                content_changed: change.content_changed,
            }),
        }
    }
    rows
}

/// Enter newly numbered contacts (numbered in order, consecutively) in the small level of the
/// id index, and merge it into the large one when their numbers cross a multiple of
/// [`RECENT_IDS`]: the small level holds exactly the contacts numbered since the last merge,
/// so the numbers say when it is due without counting it.
async fn index_new_ids(conn: &mut Conn, new: &[(&str, i64)]) -> Result<(), StoreError> {
    let (Some(&(_, first)), Some(&(_, last))) = (new.first(), new.last()) else {
        return Ok(());
    };
    for chunk in new.chunks(ROWS_PER_INSERT) {
        let sql = format!(
            "INSERT INTO contact_ids_recent (id, seq) VALUES {}",
            placeholders(chunk.len(), 2)
        );
        let mut query = sqlx::query(&sql);
        for (id, seq) in chunk {
            query = query.bind(*id).bind(*seq);
        }
        query.execute(&mut *conn).await?;
    }
    if (first - 1) / RECENT_IDS != last / RECENT_IDS {
        merge_ids(conn).await?;
    }
    Ok(())
}

/// Merge `contact_ids_recent` into `contact_ids`, in one statement. `OR ROLLBACK`: a statement
/// that may fail halfway inside a transaction keeps the pages it changes in a statement journal
/// (in memory, `temp_store`) to undo just itself, and a merge changes most of the large table's
/// pages (peak RSS 37 → 73 MB in a first pass of 1,000,000 contacts). An id in both tables,
/// which the writer never makes, fails the whole page's transaction instead.
pub(super) async fn merge_ids(conn: &mut Conn) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT OR ROLLBACK INTO contact_ids (id, seq)
         SELECT id, seq FROM contact_ids_recent ORDER BY id",
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM contact_ids_recent")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The numbers of those of `ids` that are stored, by id.
async fn numbers(conn: &mut Conn, ids: &[&str]) -> Result<HashMap<String, i64>, StoreError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(String, i64)> = sqlx::query_as(concat!(
        "SELECT id, seq FROM (SELECT j.value AS id, ",
        number_of!("j.value"),
        " AS seq FROM json_each(?1) j) WHERE seq IS NOT NULL"
    ))
    .bind(json_array(ids))
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Write `rows`, each under its number.
async fn upsert_rows(
    conn: &mut Conn,
    rows: &[(&Row<'_>, i64)],
    now: i64,
    page: i64,
) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO contacts (seq, id, first_name, last_name, full_name, emails, phones, vip,
             fields, created_at, modified_at, first_seen_at, changed_at, raw_hash, content_hash,
             deleted_at, page)
         VALUES {}
         ON CONFLICT (seq) DO UPDATE SET
             first_name = excluded.first_name, last_name = excluded.last_name,
             full_name = excluded.full_name, emails = excluded.emails, phones = excluded.phones,
             vip = excluded.vip, fields = excluded.fields, created_at = excluded.created_at,
             modified_at = excluded.modified_at,
             changed_at = CASE WHEN excluded.changed_at = 0 THEN contacts.changed_at
                               ELSE excluded.changed_at END,
             raw_hash = excluded.raw_hash, content_hash = excluded.content_hash, deleted_at = NULL,
             page = excluded.page",
        placeholders(rows.len(), 17),
    );
    let mut query = sqlx::query(&sql);
    for (row, seq) in rows {
        let w = row.change;
        let c = w.contact;
        query = query
            .bind(seq)
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
            .bind(now)
            // 0: keep the stored changed_at (only unused raw fields changed).
            .bind(if row.content_changed { now } else { 0 })
            .bind(&w.raw_hash[..])
            .bind(&w.content_hash[..])
            .bind(None::<i64>)
            .bind(page);
    }
    query.execute(&mut *conn).await?;
    Ok(())
}

/// `(?, ?, …), (?, ?, …), …`: `rows` groups of `columns` placeholders.
fn placeholders(rows: usize, columns: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(", "));
    vec![row; rows].join(", ")
}

/// Record that `pass_id` saw these contacts, by number: one row for the whole set.
pub(super) async fn record_sightings(
    conn: &mut Conn,
    seqs: &[i64],
    pass_id: i64,
) -> Result<(), StoreError> {
    if seqs.is_empty() {
        return Ok(());
    }
    sqlx::query("INSERT INTO pass_seen (pass_id, seqs) VALUES (?1, ?2)")
        .bind(pass_id)
        .bind(json_array(seqs))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// At the end of pass `pass_id`: mark deleted every live contact that neither it nor the
/// complete pass before it saw, and forget older sightings. Returns how many were marked;
/// their ids go to `ids` when given. The two passes' sightings become a byte per contact
/// number (1 MB per million contacts), and one scan of the `contacts_live` index marks the
/// contacts whose byte is not set. The shadow that may list a marked contact is dropped: it
/// claims the contact is live.
pub(super) async fn mark_missing_deleted(
    conn: &mut Conn,
    pass_id: i64,
    now: i64,
    mut ids: Option<&mut Vec<String>>,
) -> Result<u64, StoreError> {
    let mut marked = 0;
    let mut pages = BTreeSet::new();
    if pass_id >= 2 {
        let seen = seen_since(conn, pass_id - 1).await?;
        let mut rows = sqlx::query_as::<_, (String, Option<i64>)>(
            "UPDATE contacts SET deleted_at = ?1
             WHERE deleted_at IS NULL AND substr(?2, seq + 1, 1) IS NOT x'01'
             RETURNING id, page",
        )
        .bind(now)
        .bind(seen)
        .fetch(&mut *conn);
        while let Some((id, page)) = rows.try_next().await? {
            marked += 1;
            pages.extend(page);
            if let Some(ids) = ids.as_deref_mut() {
                ids.push(id);
            }
        }
    }
    let pages: Vec<i64> = pages.into_iter().collect();
    if !pages.is_empty() {
        sqlx::query(
            "DELETE FROM page_shadow WHERE page_start IN (SELECT value FROM json_each(?1))",
        )
        .bind(json_array(&pages))
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query("DELETE FROM pass_seen WHERE pass_id < ?1")
        .bind(pass_id - 1)
        .execute(&mut *conn)
        .await?;
    Ok(marked)
}

/// The highest contact number given so far (0 for none).
pub(super) async fn last_seq(conn: &mut Conn) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM contacts")
            .fetch_one(&mut *conn)
            .await?,
    )
}

/// Byte `n` is 1 when the contact numbered `n` was seen by pass `first` or a later one.
async fn seen_since(conn: &mut Conn, first: i64) -> Result<Vec<u8>, StoreError> {
    let max = last_seq(conn).await?;
    let mut seen = vec![0u8; usize::try_from(max).unwrap_or(0) + 1];
    // Row by row: two passes' sightings are never all in memory at once.
    let mut rows =
        sqlx::query_scalar::<_, String>("SELECT seqs FROM pass_seen WHERE pass_id >= ?1")
            .bind(first)
            .fetch(&mut *conn);
    while let Some(seqs) = rows.try_next().await? {
        let seqs: Vec<i64> = serde_json::from_str(&seqs).map_err(|_| StoreError::Corrupt {
            table: "pass_seen",
            column: "seqs".to_owned(),
            key: first.to_string(),
        })?;
        for seq in seqs {
            if let Some(byte) = usize::try_from(seq).ok().and_then(|n| seen.get_mut(n)) {
                *byte = 1;
            }
        }
    }
    Ok(seen)
}

/// One record of a page shadow: its raw hash and its contact number.
pub type ShadowEntry = (RawHash, i64);

/// Bytes of one [`ShadowEntry`] in `page_shadow.entries`.
const SHADOW_ENTRY: usize = 24;

/// The shadow of the page starting at `start`, as stored ([`ShadowEntry`]s in page order);
/// empty when there is none.
pub(super) async fn shadow(conn: &mut Conn, start: i64) -> Result<Vec<ShadowEntry>, StoreError> {
    let blob: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT entries FROM page_shadow WHERE page_start = ?1")
            .bind(start)
            .fetch_optional(&mut *conn)
            .await?;
    let blob = blob.unwrap_or_default();
    if !blob.len().is_multiple_of(SHADOW_ENTRY) {
        return Err(StoreError::Corrupt {
            table: "page_shadow",
            column: "entries".to_owned(),
            key: start.to_string(),
        });
    }
    Ok(blob
        .chunks_exact(SHADOW_ENTRY)
        .map(|e| {
            let (hash, seq) = e.split_at(16);
            (
                hash.try_into().expect("16 bytes"),
                i64::from_le_bytes(seq.try_into().expect("8 bytes")),
            )
        })
        .collect())
}

/// Store `entries` as the shadow of the page starting at `start` (`None`: the page has
/// none), unless that is what is stored already: a quiet pass writes no shadow.
pub(super) async fn set_shadow(
    conn: &mut Conn,
    start: i64,
    entries: Option<&[ShadowEntry]>,
    stored: &[ShadowEntry],
) -> Result<(), StoreError> {
    match entries {
        Some(entries) if entries == stored => {}
        Some(entries) => {
            let mut blob = Vec::with_capacity(entries.len() * SHADOW_ENTRY);
            for (hash, seq) in entries {
                blob.extend_from_slice(hash);
                blob.extend_from_slice(&seq.to_le_bytes());
            }
            sqlx::query(
                "INSERT INTO page_shadow (page_start, entries) VALUES (?1, ?2)
                 ON CONFLICT (page_start) DO UPDATE SET entries = excluded.entries",
            )
            .bind(start)
            .bind(blob)
            .execute(&mut *conn)
            .await?;
        }
        None if stored.is_empty() => {}
        None => {
            sqlx::query("DELETE FROM page_shadow WHERE page_start = ?1")
                .bind(start)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

/// Make the page starting at `start` the one whose shadow may list the contacts `moved`
/// (their numbers, and the page that could list them until now): each is taken out of that
/// page's shadow, which would otherwise keep claiming a state the contact may lose.
pub(super) async fn claim(
    conn: &mut Conn,
    start: i64,
    moved: &[(i64, Option<i64>)],
) -> Result<(), StoreError> {
    if moved.is_empty() {
        return Ok(());
    }
    let seqs: Vec<i64> = moved.iter().map(|(seq, _)| *seq).collect();
    sqlx::query("UPDATE contacts SET page = ?1 WHERE seq IN (SELECT value FROM json_each(?2))")
        .bind(start)
        .bind(json_array(&seqs))
        .execute(&mut *conn)
        .await?;
    let mut by_page: BTreeMap<i64, HashSet<i64>> = BTreeMap::new();
    for (seq, page) in moved {
        if let Some(page) = page.filter(|&p| p != start) {
            by_page.entry(page).or_default().insert(*seq);
        }
    }
    for (page, seqs) in by_page {
        let stored = shadow(conn, page).await?;
        let kept: Vec<ShadowEntry> = stored
            .iter()
            .filter(|(_, seq)| !seqs.contains(seq))
            .copied()
            .collect();
        set_shadow(conn, page, (!kept.is_empty()).then_some(&kept[..]), &stored).await?;
    }
    Ok(())
}

/// Drop every page shadow: the next pass probes each record as if it had never read a page.
pub(super) async fn forget_shadows(conn: &mut Conn) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM page_shadow")
        .execute(&mut *conn)
        .await?;
    Ok(())
}
