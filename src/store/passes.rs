//! The pass cursor (which pass is running and where in the source list it has got to), and
//! the one transaction that stores a page, slice by slice, and advances the cursor with it.

use std::collections::HashMap;

use sqlx::pool::PoolConnection;
use sqlx::{Sqlite, SqliteConnection};

use super::id_filter::IdFilter;
use super::outbox::Settlers;
use super::{
    KnownContact, PlannedPayload, ShadowEntry, Store, StoreError, WriteTx, contacts, decode,
    outbox, quarantine,
};
use crate::domain::{Contact, RawHash};
use crate::sink::Destination;

/// Contacts planned again per statement when a pass marks them deleted.
const DELETED_CHUNK: usize = 500;

/// What a contact marked deleted becomes at the destinations a deletion changes something
/// for (OMI under `on_source_delete = "tag"`; docs/delivery.md#deletions).
pub trait DeletionPlanner: Sync {
    /// The destinations to plan again; none: a deletion is only a mark in the database.
    fn destinations(&self) -> Vec<Destination>;

    /// The hash of the payload `contact`, deleted, should have at `destination` (`None`:
    /// nothing to send).
    fn deleted_hash(&self, destination: Destination, contact: &Contact) -> Option<[u8; 32]>;
}

/// The open pass: where the next page starts.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Pass {
    pub id: i64,
    #[sqlx(try_from = "i64")]
    pub next_start: u64,
    pub started_at: i64,
    /// Failures in a row at `next_start` since the pass last advanced.
    #[sqlx(try_from = "i64")]
    pub failures: u32,
}

/// What one committed page adds to its pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageProgress {
    pub next_start: u64,
    pub records: u64,
    pub new_contacts: u64,
    pub changed: u64,
    pub quarantined: u64,
    /// The source's `totalResults` on this page, if it sent one.
    pub total: Option<u64>,
    /// When the page is committed: how `status` computes the pass's rate.
    pub at: i64,
}

/// A new or changed contact of a page, ready to be written. Its raw record is not kept, only
/// its hash (migration 0005; docs/performance.md).
#[derive(Debug)]
pub struct ContactChange<'a> {
    pub contact: &'a Contact,
    pub raw_hash: RawHash,
    pub content_hash: [u8; 32],
    /// Its number, as far as the page's transaction has established it.
    pub seq: Seq,
    /// Whether the canonical content differs from what is stored (or is new); when only the
    /// raw record changed, `changed_at` keeps its value.
    pub content_changed: bool,
}

/// A contact's number (`contacts.seq`) as the page's transaction knows it before writing the
/// contact: what the lookup of the page's ids said. Contacts are keyed by their number, and the
/// id index has two levels (migration 0010): the write gives a new contact the next number and
/// enters its id in the index, so it must know which contacts are new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seq {
    /// Looked up in this transaction and not stored: it takes the next number.
    Next,
    /// Looked up in this transaction: stored under this number, which it keeps.
    Stored(i64),
    /// Not established: its id was not among those looked up (only normalizing the record
    /// could read it), or it is a second copy in the page of a contact planned as new. The
    /// write looks it up.
    Unknown,
}

impl Seq {
    /// What two copies of one contact in a page establish together: a stored number, else
    /// that it is new, else nothing.
    pub fn or(self, other: Seq) -> Seq {
        match (self, other) {
            (Seq::Stored(number), _) | (_, Seq::Stored(number)) => Seq::Stored(number),
            (Seq::Next, _) | (_, Seq::Next) => Seq::Next,
            _ => Seq::Unknown,
        }
    }
}

/// A record that could not become a contact, with why.
#[derive(Debug)]
pub struct QuarantinedRecord<'a> {
    pub raw: &'a str,
    pub raw_hash: RawHash,
    pub reason: &'a str,
}

/// What one slice of a page writes, through [`PageTx::write`].
#[derive(Debug)]
pub struct PageWrite<'a> {
    /// New, changed and returning contacts (writing one clears its deleted mark).
    pub contacts: Vec<ContactChange<'a>>,
    /// Numbers of the live contacts the page sent again with an unchanged raw record, as
    /// the lookup returned them (no second probe to mark them seen).
    pub sighted: &'a [i64],
    pub quarantined: Vec<QuarantinedRecord<'a>>,
    /// Per enabled destination, the payload hash each content-changed contact should have
    /// there (`None`: nothing to send).
    pub plans: Vec<(Destination, Vec<PlannedPayload<'a>>)>,
    pub now: i64,
}

/// The passes over the source.
#[derive(Clone, Debug)]
pub struct Passes {
    store: Store,
}

const OPEN_PASS: &str = "SELECT id, next_start, started_at, failures FROM passes
     WHERE completed_at IS NULL ORDER BY id DESC LIMIT 1";

const NEXT_PASS_ID: &str = "SELECT COALESCE(MAX(id), 0) + 1 FROM passes";

impl Passes {
    pub(super) fn new(store: Store) -> Self {
        Self { store }
    }

    /// The open pass if one was interrupted, else a new one starting at offset 0.
    pub async fn open(&self, now: i64) -> Result<Pass, StoreError> {
        let mut tx = self.store.begin().await?;
        if let Some(row) = sqlx::query(OPEN_PASS).fetch_optional(&mut *tx).await? {
            let pass: Pass = decode(&row, "passes", &["id"])?;
            // The rate `status` shows counts from here (migration 0006).
            sqlx::query(
                "UPDATE passes SET resumed_at = ?2, resumed_records = records WHERE id = ?1",
            )
            .bind(pass.id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok(pass);
        }
        let id: i64 = sqlx::query_scalar(NEXT_PASS_ID).fetch_one(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO passes (id, started_at, next_start, resumed_at) VALUES (?1, ?2, 0, ?2)",
        )
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Pass {
            id,
            next_start: 0,
            started_at: now,
            failures: 0,
        })
    }

    /// The pass [`Passes::open`] would return, read from the start and without writing
    /// anything: what a preview walks.
    pub async fn peek(&self, now: i64) -> Result<Pass, StoreError> {
        let pool = self.store.pool();
        let pass = match sqlx::query(OPEN_PASS).fetch_optional(pool).await? {
            Some(row) => decode(&row, "passes", &["id"])?,
            None => Pass {
                id: sqlx::query_scalar(NEXT_PASS_ID).fetch_one(pool).await?,
                next_start: 0,
                started_at: now,
                failures: 0,
            },
        };
        Ok(Pass {
            next_start: 0,
            failures: 0,
            ..pass
        })
    }

    /// Count a failed page of the open pass at `offset`: consecutive failures at the same
    /// offset add up, a failure elsewhere starts again at one. Returns the count.
    pub async fn record_failure(&self, pass_id: i64, offset: u64) -> Result<u32, StoreError> {
        let failures: i64 = sqlx::query_scalar(
            "UPDATE passes SET
                 failures = CASE WHEN failed_at = ?2 THEN failures + 1 ELSE 1 END,
                 failed_at = ?2
             WHERE id = ?1 RETURNING failures",
        )
        .bind(pass_id)
        .bind(offset as i64)
        .fetch_one(self.store.pool())
        .await?;
        Ok(failures.clamp(0, i64::from(u32::MAX)) as u32)
    }

    /// Send the open pass back to offset 0, its failure count cleared. Records already read
    /// stay sighted by this pass, so nothing is marked deleted for having been read before
    /// the restart.
    pub async fn restart(&self, pass_id: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE passes SET next_start = 0, failures = 0, failed_at = NULL WHERE id = ?1",
        )
        .bind(pass_id)
        .execute(self.store.pool())
        .await?;
        Ok(())
    }

    /// Drop every page shadow, so the next pass probes every record (docs/contact.md,
    /// "Unchanged records").
    pub async fn forget_shadows(&self) -> Result<(), StoreError> {
        let mut conn = self.store.pool().acquire().await?;
        contacts::forget_shadows(&mut conn).await
    }

    /// The connection a pass stores its pages through ([`PageConnection::begin_page`]), held
    /// until the pass's run ends.
    pub async fn page_connection(&self) -> Result<PageConnection, StoreError> {
        Ok(PageConnection {
            store: self.store.clone(),
            conn: self.store.pool().acquire().await?,
            ids: IdLookups::default(),
        })
    }

    /// Close the pass: contacts missing from it and the complete pass before it are marked
    /// deleted and planned again for the destinations `planner` names, in the same
    /// transaction (so a crash never leaves a deletion unplanned), and quarantined records
    /// gone for two passes are forgotten. Returns how many were marked deleted.
    pub async fn complete(
        &self,
        pass_id: i64,
        now: i64,
        planner: &dyn DeletionPlanner,
    ) -> Result<u64, StoreError> {
        let destinations = planner.destinations();
        let mut tx = self.store.begin().await?;
        // The ids are only kept when a destination needs them.
        let mut marked = Vec::new();
        let wanted = (!destinations.is_empty()).then_some(&mut marked);
        let deleted = contacts::mark_missing_deleted(&mut tx, pass_id, now, wanted).await?;
        for chunk in marked.chunks(DELETED_CHUNK) {
            let ids: Vec<&str> = chunk.iter().map(String::as_str).collect();
            let stored = contacts::load(&mut tx, &ids).await?;
            for destination in &destinations {
                let plans: Vec<PlannedPayload<'_>> = stored
                    .iter()
                    .map(|s| {
                        let hash = planner.deleted_hash(*destination, &s.contact);
                        (s.contact.id.as_str(), hash)
                    })
                    .collect();
                outbox::plan(&mut tx, *destination, &plans, now).await?;
            }
        }
        quarantine::prune(&mut tx, pass_id).await?;
        sqlx::query("UPDATE passes SET completed_at = ?2, deleted = ?3 WHERE id = ?1")
            .bind(pass_id)
            .bind(now)
            .bind(deleted as i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(deleted)
    }
}

/// One pooled connection kept for every page of a pass. SQLite drops a connection's page
/// cache whenever another connection has written since it last did, so page transactions
/// taking turns over the pool each began cold and read back, from the WAL and the file, the
/// index pages the page before had just written: 210,000 `pread` calls in a 200,000-contact
/// first pass, 86,000 through one connection (docs/performance.md, "Round 6").
pub struct PageConnection {
    store: Store,
    conn: PoolConnection<Sqlite>,
    ids: IdLookups,
}

/// Ids looked up before [`IdLookups`] considers building its filter, and between two
/// considerations.
const FILTER_CHECK_EVERY: u64 = 20_000;

/// How the pass's lookups skip the large level of the id index: the filter over every id the
/// index holds (`IdFilter`), once built. Built from the index when the lookups the run has made
/// outnumber a quarter of the contacts stored, so a first pass builds it at once, empty, and a
/// quiet pass over many contacts (a few lookups each page) never reads the whole index for it.
/// From then on the writer adds each id it numbers before writing it.
#[derive(Default)]
struct IdLookups {
    filter: Option<IdFilter>,
    looked_up: u64,
    next_check: u64,
}

impl IdLookups {
    /// Count `ids` more lookups and build the filter if it is now worth it.
    async fn count(&mut self, conn: &mut SqliteConnection, ids: usize) -> Result<(), StoreError> {
        self.looked_up += ids as u64;
        if self.filter.as_ref().is_some_and(IdFilter::is_full) {
            self.filter = None;
        }
        if self.filter.is_some() || self.looked_up < self.next_check {
            return Ok(());
        }
        self.next_check = self.looked_up + FILTER_CHECK_EVERY;
        let stored = contacts::last_seq(conn).await?.max(0) as u64;
        if stored <= self.looked_up * 4 {
            let mut filter = IdFilter::with_capacity((stored as usize * 2).max(1 << 20));
            contacts::indexed_ids(conn, &mut filter).await?;
            self.filter = Some(filter);
        }
        Ok(())
    }
}

impl PageConnection {
    /// Open the transaction that stores one page of pass `pass_id`: the contacts, their
    /// sightings, the quarantine, the outbox plans and the cursor commit together or not at
    /// all, so a crash re-reads the whole page and never skips part of it. A page is written
    /// in slices, so memory follows the slice, not the page the server chose to send. It
    /// begins once the pass has its turn to write ([`WriteTx`]).
    pub async fn begin_page(&mut self, pass_id: i64, start: u64) -> Result<PageTx<'_>, StoreError> {
        let turn = self.store.turn().await;
        Ok(PageTx {
            tx: WriteTx::begin(&mut self.conn, turn).await?,
            settling: &self.store.settling,
            ids: &mut self.ids,
            pass_id,
            start: start as i64,
        })
    }
}

/// A page being stored (see [`PageConnection::begin_page`]); dropped without
/// [`PageTx::commit`], it rolls back.
pub struct PageTx<'c> {
    tx: WriteTx<'c>,
    /// The pushers' outcomes, written with the page ([`PageTx::commit`]).
    settling: &'c Settlers,
    ids: &'c mut IdLookups,
    pass_id: i64,
    /// The offset of the page: the page that claims the contacts it writes.
    start: i64,
}

impl PageTx<'_> {
    /// The start offset of the page this transaction stores.
    pub fn start(&self) -> i64 {
        self.start
    }

    /// Stored state of the given ids, including what earlier slices of this page wrote.
    pub async fn known(
        &mut self,
        ids: &[&str],
    ) -> Result<HashMap<String, KnownContact>, StoreError> {
        self.ids.count(&mut self.tx, ids.len()).await?;
        contacts::known(&mut self.tx, ids, self.ids.filter.as_ref()).await
    }

    /// The shadow of this page: `(raw hash, contact number)` per record, in page order, as
    /// the page was last committed; empty when it has none.
    pub async fn shadow(&mut self) -> Result<Vec<ShadowEntry>, StoreError> {
        contacts::shadow(&mut self.tx, self.start).await
    }

    /// Mark seen, by number, records the page's shadow settled.
    pub async fn sight(&mut self, seqs: &[i64]) -> Result<(), StoreError> {
        contacts::record_sightings(&mut self.tx, seqs, self.pass_id).await
    }

    /// Leave `entries` as this page's shadow (`None`: none; `stored` is what
    /// [`PageTx::shadow`] returned), after claiming for it the contacts `moved` (their numbers
    /// and the page that could list them until now): see `contacts::claim`.
    pub async fn set_shadow(
        &mut self,
        entries: Option<&[ShadowEntry]>,
        stored: &[ShadowEntry],
        moved: &[(i64, Option<i64>)],
    ) -> Result<(), StoreError> {
        contacts::claim(&mut self.tx, self.start, moved).await?;
        contacts::set_shadow(&mut self.tx, self.start, entries, stored).await
    }

    /// Write one slice of the page. Returns the number of each contact written, by id.
    pub async fn write(
        &mut self,
        slice: &PageWrite<'_>,
    ) -> Result<HashMap<String, i64>, StoreError> {
        let tx = &mut self.tx;
        let filter = self.ids.filter.as_mut();
        let written = contacts::upsert(tx, &slice.contacts, slice.now, self.start, filter).await?;
        let mut seen: Vec<i64> = slice.sighted.to_vec();
        seen.extend(written.values());
        contacts::record_sightings(tx, &seen, self.pass_id).await?;
        for q in &slice.quarantined {
            quarantine::record(tx, q, self.pass_id, slice.now).await?;
        }
        for (destination, plans) in &slice.plans {
            outbox::plan(tx, *destination, plans, slice.now).await?;
        }
        Ok(written)
    }

    /// Advance the pass by the page's `progress` and commit everything written.
    pub async fn commit(mut self, progress: &PageProgress) -> Result<(), StoreError> {
        let p = progress;
        sqlx::query(
            "UPDATE passes SET next_start = ?2, pages = pages + 1, failures = 0, failed_at = NULL,
                 records = records + ?3, new_contacts = new_contacts + ?4,
                 changed = changed + ?5, quarantined = quarantined + ?6,
                 total_results = COALESCE(?7, total_results), progress_at = ?8
             WHERE id = ?1",
        )
        .bind(self.pass_id)
        .bind(p.next_start as i64)
        .bind(p.records as i64)
        .bind(p.new_contacts as i64)
        .bind(p.changed as i64)
        .bind(p.quarantined as i64)
        .bind(p.total.map(|t| t as i64))
        .bind(p.at)
        .execute(&mut *self.tx)
        .await?;
        // The outcomes the pushers queued go with the page: it holds the turn to write, which
        // a group of them would otherwise wait for, and the pass's next page for that group.
        let settled = self.settling.write(&mut self.tx).await?;
        // A kill here loses the whole page, cursor included: it is read again.
        crate::failpoint::crash_point("pass.inside_page_commit");
        self.tx.commit().await?;
        settled.committed();
        Ok(())
    }
}

#[cfg(test)]
impl PageTx<'_> {
    /// A commit that fails once the queued outcomes are written: they roll back with the page.
    pub(super) async fn fail_after_writing_outcomes(mut self) {
        let written = self.settling.write(&mut self.tx).await.unwrap();
        drop(written);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ContactId;
    use crate::store::now_ms;

    fn contact(id: &str) -> Contact {
        Contact {
            id: ContactId::parse(id).unwrap(),
            first_name: id.to_owned(),
            last_name: String::new(),
            full_name: id.to_owned(),
            emails: Vec::new(),
            phones: Vec::new(),
            vip: false,
            fields: Default::default(),
            created_at: None,
            modified_at: None,
        }
    }

    /// A slice writing `contacts` (content changed) with their numbers as planned.
    fn slice<'a>(contacts: &[(&'a Contact, Seq)]) -> PageWrite<'a> {
        PageWrite {
            contacts: (contacts.iter())
                .map(|&(contact, seq)| ContactChange {
                    contact,
                    raw_hash: [0; 16],
                    content_hash: [0; 32],
                    seq,
                    content_changed: true,
                })
                .collect(),
            sighted: &[],
            quarantined: Vec::new(),
            plans: Vec::new(),
            now: now_ms(),
        }
    }

    /// Write `contacts` with their numbers as planned as the page at `start`; returns the
    /// numbers the write reported and those the rows hold.
    async fn write(
        store: &Store,
        start: u64,
        contacts: &[(&Contact, Seq)],
    ) -> (HashMap<String, i64>, HashMap<String, i64>) {
        let passes = store.passes();
        let pass = passes.open(now_ms()).await.unwrap();
        let mut connection = passes.page_connection().await.unwrap();
        let mut page = connection.begin_page(pass.id, start).await.unwrap();
        let reported = page.write(&slice(contacts)).await.unwrap();
        page.commit(&PageProgress::default()).await.unwrap();
        let held: Vec<(String, i64)> = sqlx::query_as("SELECT id, seq FROM contacts")
            .fetch_all(store.pool())
            .await
            .unwrap();
        (reported, held.into_iter().collect())
    }

    #[tokio::test]
    async fn a_write_reports_the_number_each_row_holds() {
        let (_dir, store) = crate::store::temp_store().await;
        let (a, b, c) = (contact("a"), contact("b"), contact("c"));

        let (reported, held) = write(&store, 0, &[(&a, Seq::Next), (&b, Seq::Next)]).await;
        assert_eq!(reported, held);
        assert_eq!(held.len(), 2);

        // `a` as if its id had not been looked up: the write asks the store, and `a` keeps
        // its number; `c` is new; `b` is stored.
        let (reported, held) = write(
            &store,
            500,
            &[
                (&a, Seq::Unknown),
                (&b, Seq::Stored(held["b"])),
                (&c, Seq::Next),
            ],
        )
        .await;
        assert_eq!(reported, held);
        assert_eq!(held.len(), 3);
    }

    /// One copy of a contact in a slice: its id (from a small set, so ids repeat within a
    /// page and across pages), and whether the slice looked it up before writing.
    type Copy = (u8, bool);

    /// A page: its slices, and whether the id index merges once the page is written.
    type Page = (Vec<Vec<Copy>>, bool);

    /// What a slice knows of a copy's number, as the classifier plans it: a looked-up id is
    /// stored or new, except a second copy of a contact the page writes as new; an id not
    /// looked up is not established.
    fn planned(copies: &[Copy], stored: &HashMap<String, i64>) -> Vec<(String, Seq)> {
        let mut first_new = std::collections::HashSet::new();
        (copies.iter())
            .map(|&(id, looked_up)| {
                let id = format!("c{id}");
                let seq = match stored.get(&id) {
                    Some(&number) if looked_up => Seq::Stored(number),
                    None if looked_up && first_new.insert(id.clone()) => Seq::Next,
                    _ => Seq::Unknown,
                };
                (id, seq)
            })
            .collect()
    }

    /// Every id written so far is one contact, with the number it was first given, and sits
    /// in exactly one level of the id index under that number.
    async fn check_index(store: &Store, numbers: &HashMap<String, i64>) {
        let rows: Vec<(String, i64)> = sqlx::query_as("SELECT id, seq FROM contacts")
            .fetch_all(store.pool())
            .await
            .unwrap();
        let indexed: Vec<(String, i64)> = sqlx::query_as(
            "SELECT id, seq FROM contact_ids UNION ALL SELECT id, seq FROM contact_ids_recent",
        )
        .fetch_all(store.pool())
        .await
        .unwrap();
        for held in [rows, indexed] {
            assert_eq!(held.len(), numbers.len(), "{held:?}");
            assert_eq!(&held.into_iter().collect::<HashMap<_, _>>(), numbers);
        }
    }

    async fn run_pages(pages: Vec<Page>) {
        let (_dir, store) = crate::store::temp_store().await;
        let passes = store.passes();
        let pass = passes.open(now_ms()).await.unwrap();
        let mut connection = passes.page_connection().await.unwrap();
        // The numbers as committed, and as the page being written has them.
        let mut numbers: HashMap<String, i64> = HashMap::new();
        for (start, (slices, merge)) in pages.into_iter().enumerate() {
            let mut page = connection.begin_page(pass.id, start as u64).await.unwrap();
            let mut written = numbers.clone();
            for copies in slices {
                // The lookup (through the id filter, once built) agrees with the model.
                let looked_up: Vec<String> = (copies.iter())
                    .filter(|(_, looked_up)| *looked_up)
                    .map(|(id, _)| format!("c{id}"))
                    .collect();
                let ids: Vec<&str> = looked_up.iter().map(String::as_str).collect();
                let known = page.known(&ids).await.unwrap();
                for id in &ids {
                    assert_eq!(
                        known.get(*id).and_then(|k| k.seq),
                        written.get(*id).copied()
                    );
                }
                let plan = planned(&copies, &written);
                let contacts: Vec<Contact> = plan.iter().map(|(id, _)| contact(id)).collect();
                let planned: Vec<(&Contact, Seq)> = (contacts.iter().zip(&plan))
                    .map(|(c, &(_, seq))| (c, seq))
                    .collect();
                for (id, number) in page.write(&slice(&planned)).await.unwrap() {
                    // A stored contact keeps its number; a new one takes one no other has.
                    match written.get(&id) {
                        Some(&kept) => assert_eq!(number, kept, "{id}"),
                        None => assert!(!written.values().any(|&n| n == number), "{id}"),
                    }
                    written.insert(id, number);
                }
            }
            if merge {
                contacts::merge_ids(&mut page.tx).await.unwrap();
            }
            page.commit(&PageProgress::default()).await.unwrap();
            numbers = written;
            check_index(&store, &numbers).await;
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 48, failure_persistence: None, ..Default::default()
        })]

        /// Whatever a page's slices know of their contacts' numbers, and wherever the id
        /// index merges, an id is written once, keeps its number, is indexed once, and is
        /// found by a lookup.
        #[test]
        fn an_id_keeps_one_number_through_merges(pages in proptest::collection::vec(
            (proptest::collection::vec(
                proptest::collection::vec((0u8..8, proptest::bool::ANY), 0..6),
                1..3,
            ), proptest::bool::ANY),
            1..8,
        )) {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(run_pages(pages));
        }
    }
}
