//! One pass over the 3Dolphins contact list: fetch a page, let the cursor judge it, classify
//! its records into a plan, hand the plan to its consumer (the writer, or a dry run), repeat.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{info, warn};

use super::classify::{Change, Classifier, Normalizations, PagePlan, RawRecord};
use super::cursor::{Decision, PageCursor, PageShape, Request};
use super::normalizer::{self, Normalizing};
use super::preview::{DryRun, Preview};
use super::writer::Writer;
use crate::domain::{RawHash, raw_hash};
use crate::sink::Payloads;
use crate::source::dolphins::{DolphinsClient, Page, SourceError, SourceRecord};
use crate::store::{
    self, KnownContact, PageConnection, PageProgress, PageTx, Pass, Store, StoreError,
};

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// A page could not be read or made no sense; `offset` is where it was asked for.
    #[error("3Dolphins page at offset {offset}: {source}")]
    Page { offset: u64, source: SourceError },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A pass that fails this many times in a row at the same offset is restarted from offset 0
/// when it is next opened, with a warning. Offsets that moved under the pass (records removed
/// or inserted ahead of the cursor) are the usual cause; a fresh read is the cure, and
/// needs no operator. A failure that persists from 0 costs one re-read per three attempts.
pub(super) const STUCK_PASS_FAILURES: u32 = 3;

/// What a pass (or the part of it run by this process) did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PassOutcome {
    pub pass_id: i64,
    /// False when the pass was stopped by shutdown before the source said there was no more.
    pub completed: bool,
    pub resumed_at: u64,
    pub pages: u64,
    pub records: u64,
    pub new_contacts: u64,
    pub changed: u64,
    pub unchanged: u64,
    /// Of `unchanged`, records the page's shadow settled without a lookup (docs/contact.md,
    /// "Unchanged records").
    pub shadowed: u64,
    pub quarantined: u64,
    pub deleted: u64,
    pub dropped_emails: u64,
    pub dropped_phones: u64,
    pub reformatted_phones: u64,
    /// Pages whose overlap did not contain the previous page's last record: offsets shifted
    /// back by more than `page_overlap`, so a record may be missed until the next pass.
    pub shifts_beyond_overlap: u64,
    pub elapsed: Duration,
    /// Dry run only: what would be pushed.
    pub preview: Preview,
}

impl PassOutcome {
    /// Count a classified slice of a page.
    fn add(&mut self, plan: &PagePlan<'_>) {
        self.records += plan.records;
        self.new_contacts += plan.count(Change::New);
        self.changed += plan.count(Change::Changed);
        self.unchanged += plan.unchanged.len() as u64 + plan.count(Change::RawOnly);
        self.quarantined += plan.quarantined.len() as u64;
        self.dropped_emails += plan.dropped_emails;
        self.dropped_phones += plan.dropped_phones;
        self.reformatted_phones += plan.reformatted_phones;
    }

    /// Count a page once it is stored (or previewed): its slices' counts in `page`.
    fn absorb(&mut self, page: &PassOutcome) {
        self.pages += 1;
        self.records += page.records;
        self.new_contacts += page.new_contacts;
        self.changed += page.changed;
        self.unchanged += page.unchanged;
        self.shadowed += page.shadowed;
        self.quarantined += page.quarantined;
        self.dropped_emails += page.dropped_emails;
        self.dropped_phones += page.dropped_phones;
        self.reformatted_phones += page.reformatted_phones;
    }
}

/// Records classified and written at a time: memory follows this, not the page size the
/// server chose to send (a page of 8,500 records is eighteen slices of one transaction).
const SLICE: usize = 500;

/// Who a page plan goes to: the store, or a dry run that only reads.
enum Consumer {
    Write(Writer),
    DryRun(DryRun),
}

/// Where a running pass stands, for progress display (src/progress.rs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassProgress {
    pub pass_id: i64,
    /// The offset this run started reading at (0 unless an interrupted pass was resumed).
    pub resumed_at: u64,
    /// The offset after the last page read: with `total`, how far through the list it is.
    pub position: u64,
    /// The source's `totalResults`, when it sends one.
    pub total: Option<u64>,
    /// Pages and records read by this run.
    pub pages: u64,
    pub records: u64,
    pub completed: bool,
}

impl PassRun {
    pub fn progress(&self) -> PassProgress {
        PassProgress {
            pass_id: self.pass.id,
            resumed_at: self.outcome.resumed_at,
            position: self.cursor.next_start(),
            total: self.total,
            pages: self.outcome.pages,
            records: self.outcome.records,
            completed: self.outcome.completed,
        }
    }
}

/// Pulls the source into the store (or, built with [`Puller::dry_run`], previews it).
pub struct Puller {
    reader: Arc<Reader>,
    page_overlap: u32,
    consumer: Consumer,
}

/// What reading a page needs, shared with the task that reads the next page while the
/// puller stores the one before ([`Reader::read_page`]).
struct Reader {
    client: DolphinsClient,
    page_size: u32,
    store: Store,
    classifier: Arc<Classifier>,
}

/// A page as read from the source, with the work that needs no store under way: each
/// record's raw hash, and the normalization of records its shadow does not list, running on
/// the normalize thread (`super::normalizer`) while the page before is stored and the next
/// one fetched.
struct ReadPage {
    page: Arc<Page>,
    hashes: Vec<RawHash>,
    ready: ReadAhead,
}

/// Normalizations done ahead for a page ([`Reader::read_page`]), possibly still running.
struct ReadAhead {
    task: Option<Normalizing<Normalizations>>,
    done: Normalizations,
}

/// Records of one page normalized ahead at most: what a page holds normalized at once stays
/// bounded whatever page size the server sends (the rest are normalized slice by slice).
const READ_AHEAD: usize = 2 * SLICE;

/// A pass in progress, driven page by page.
pub struct PassRun {
    pass: Pass,
    cursor: PageCursor,
    /// The source's latest `totalResults`, if it sends one.
    total: Option<u64>,
    /// The next page, read while the previous one was being stored, and where it starts.
    prefetched: Option<(u64, Result<ReadPage, SourceError>)>,
    /// The connection the pass's pages are stored through, once the first one is.
    connection: Option<PageConnection>,
    outcome: PassOutcome,
    started: Instant,
}

impl Puller {
    /// A puller that stores what it reads, with its own 3Dolphins client on `http`.
    pub fn new(store: Store, settings: &crate::config::Settings, http: reqwest::Client) -> Self {
        let writer = Writer::new(store.passes(), Payloads::new(settings));
        Self::with(store, settings, http, Consumer::Write(writer))
    }

    /// A puller that reads the whole source and reports what would be stored and pushed,
    /// writing nothing: a preview leaves no pass behind and always reads from offset 0.
    pub fn dry_run(
        store: Store,
        settings: &crate::config::Settings,
        http: reqwest::Client,
    ) -> Self {
        let dry_run = DryRun::new(store.clone(), Payloads::new(settings));
        Self::with(store, settings, http, Consumer::DryRun(dry_run))
    }

    fn with(
        store: Store,
        settings: &crate::config::Settings,
        http: reqwest::Client,
        consumer: Consumer,
    ) -> Self {
        let retry = crate::net::RetryPolicy::from(&settings.retry);
        Self {
            reader: Arc::new(Reader {
                client: DolphinsClient::new(&settings.source, http, retry, settings.http.max_body),
                page_size: settings.source.page_size,
                store,
                classifier: Arc::new(Classifier {
                    region: settings.normalize.default_region,
                    payloads: Payloads::new(settings),
                }),
            }),
            page_overlap: settings.source.page_overlap,
            consumer,
        }
    }

    /// Run the open pass (or a new one) to its end, or until `cancel` fires between pages.
    pub async fn run_pass(&self, cancel: &CancellationToken) -> Result<PassOutcome, SyncError> {
        self.run_pass_reporting(cancel, |_| {}).await
    }

    /// [`Puller::run_pass`], handing `on_page` the pass's progress once it is open and after
    /// each page.
    pub async fn run_pass_reporting(
        &self,
        cancel: &CancellationToken,
        mut on_page: impl FnMut(PassProgress),
    ) -> Result<PassOutcome, SyncError> {
        let mut run = self.begin().await?;
        on_page(run.progress());
        while !cancel.is_cancelled() {
            let more = self.step(&mut run).await?;
            on_page(run.progress());
            if !more {
                break;
            }
        }
        Ok(self.finish(run))
    }

    /// Open the interrupted pass, or a new one. Drive it with [`Puller::step`].
    pub async fn begin(&self) -> Result<PassRun, SyncError> {
        let pass = match &self.consumer {
            Consumer::Write(writer) => writer.open().await?,
            Consumer::DryRun(_) => self.reader.store.passes().peek(store::now_ms()).await?,
        };
        Ok(PassRun {
            outcome: PassOutcome {
                pass_id: pass.id,
                resumed_at: pass.next_start,
                ..Default::default()
            },
            cursor: PageCursor::new(pass.next_start, self.reader.page_size, self.page_overlap),
            total: None,
            prefetched: None,
            connection: None,
            pass,
            started: Instant::now(),
        })
    }

    /// Fetch and consume one page; when the source has no more, complete the pass.
    /// Returns whether there is more to do.
    pub async fn step(&self, run: &mut PassRun) -> Result<bool, SyncError> {
        if run.outcome.completed {
            return Ok(false);
        }
        match self.run_page(run).await {
            Ok(true) => return Ok(true),
            Ok(false) => {}
            Err(e @ SyncError::Page { .. }) => {
                if let Consumer::Write(writer) = &self.consumer {
                    writer
                        .failed(&run.pass, run.cursor.next_start(), &e.to_string())
                        .await?;
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        }
        run.outcome.deleted = match &self.consumer {
            Consumer::Write(writer) => writer.complete(&run.pass).await?,
            Consumer::DryRun(_) => 0,
        };
        run.outcome.completed = true;
        Ok(false)
    }

    /// End this process's part of the pass (complete or not) and report it.
    pub fn finish(&self, run: PassRun) -> PassOutcome {
        let mut outcome = run.outcome;
        outcome.elapsed = run.started.elapsed();
        info!(
            pass = outcome.pass_id,
            completed = outcome.completed,
            pages = outcome.pages,
            records = outcome.records,
            new = outcome.new_contacts,
            changed = outcome.changed,
            unchanged = outcome.unchanged,
            shadowed = outcome.shadowed,
            quarantined = outcome.quarantined,
            deleted = outcome.deleted,
            dry_run = matches!(self.consumer, Consumer::DryRun(_)),
            elapsed_ms = outcome.elapsed.as_millis() as u64,
            "source pass"
        );
        outcome
    }

    /// Fetch and consume one page; false once the source has no more.
    async fn run_page(&self, run: &mut PassRun) -> Result<bool, SyncError> {
        let request = run.cursor.request();
        let at = |source| SyncError::Page {
            offset: request.start,
            source,
        };
        let ReadPage {
            page,
            hashes,
            ready: mut ahead,
        } = match run.prefetched.take() {
            Some((prefetched_at, page)) if prefetched_at == request.start => page.map_err(at)?,
            _ => self.reader.read_page(request).await.map_err(at)?,
        };
        let records: Vec<SourceRecord> = page.records().collect();
        let shape = PageShape {
            len: page.len() as u64,
            has_more: page.has_more,
            next_index: page.next_index,
            total: page.total,
        };
        run.total = page.total.or(run.total);
        let accepted = match run
            .cursor
            .accept(request, shape, &hashes)
            .map_err(|reason| at(SourceError::BadPaging(reason)))?
        {
            Decision::ReadOn => return Ok(true),
            Decision::Store(accepted) => accepted,
        };
        if accepted.ended_on_empty_page {
            warn!(
                offset = request.start,
                "source sent an empty page with hasMore; taking it as the end of the list"
            );
        }
        if accepted.shifted_beyond_overlap {
            run.outcome.shifts_beyond_overlap += 1;
            warn!(
                offset = request.start,
                overlap = request.overlap,
                "source offsets shifted back by more than page_overlap; a record may be missed until the next pass"
            );
        }
        let fresh: Vec<RawRecord> = accepted
            .fresh
            .iter()
            .map(|&i| RawRecord {
                record: records[i],
                raw_hash: hashes[i],
            })
            .collect();

        // Read the next page while this one is stored, in a task of its own: the source,
        // parsing, normalization and SQLite work in parallel instead of taking turns.
        let next = run.cursor.request();
        let task = accepted.has_more.then(|| {
            let reader = Arc::clone(&self.reader);
            AbortOnDropHandle::new(tokio::spawn(async move { reader.read_page(next).await }))
        });
        let prefetch = async { Some((next.start, joined(task?.await))) };
        let (consumed, prefetched) = tokio::join!(
            self.consume(
                run,
                request.start,
                &fresh,
                &mut ahead,
                PageProgress {
                    next_start: accepted.next_start,
                    total: run.total,
                    ..PageProgress::default()
                },
            ),
            prefetch
        );
        run.prefetched = prefetched;
        consumed?;
        // A normalization ahead the page turned out not to need is still queued on the
        // normalize thread, holding the page: waited for here, so at most this page's and the
        // next one's are, whatever the thread's backlog (docs/performance.md, "Round 11").
        ahead.finish().await;
        Ok(accepted.has_more)
    }

    /// Classify the page's fresh records, slice by slice, against what the store knows of
    /// them and hand each plan to the consumer; the outcome counts the page once that
    /// succeeded. A page being stored first settles what its shadow vouches for, and commits
    /// with `progress` (where the pass goes next) plus the page's counts.
    async fn consume(
        &self,
        run: &mut PassRun,
        start: u64,
        fresh: &[RawRecord<'_>],
        ahead: &mut ReadAhead,
        progress: PageProgress,
    ) -> Result<(), StoreError> {
        let mut page = PassOutcome::default();
        match &self.consumer {
            Consumer::Write(writer) => {
                let connection = match &mut run.connection {
                    Some(connection) => connection,
                    None => run.connection.insert(writer.connection().await?),
                };
                let mut tx = connection.begin_page(run.pass.id, start).await?;
                self.store_page(&mut tx, writer, fresh, ahead, &mut page)
                    .await?;
                let progress = PageProgress {
                    records: page.records,
                    new_contacts: page.new_contacts,
                    changed: page.changed,
                    quarantined: page.quarantined,
                    at: store::now_ms(),
                    ..progress
                };
                writer.commit(tx, progress).await?;
            }
            Consumer::DryRun(dry_run) => {
                for slice in fresh.chunks(SLICE) {
                    let ids = self.reader.classifier.ids(slice);
                    let known = self.reader.store.contacts().known(&lookup(&ids)).await?;
                    let plan = self.plan(slice, &ids, known, ahead).await;
                    dry_run.preview(&plan, &mut run.outcome.preview).await?;
                    page.add(&plan);
                }
            }
        }
        run.outcome.absorb(&page);
        Ok(())
    }

    /// Classify a slice once every record it needs normalized is: those the page's read
    /// did not normalize ahead are normalized now, on the normalize thread too.
    async fn plan<'p>(
        &self,
        slice: &[RawRecord<'p>],
        ids: &[Option<String>],
        known: HashMap<String, KnownContact>,
        ahead: &mut ReadAhead,
    ) -> PagePlan<'p> {
        let classifier = &self.reader.classifier;
        let ready = ahead.get().await;
        let unready = classifier.unready(slice, ids, &known, ready);
        if !unready.is_empty() {
            let records: Vec<(RawHash, String, bool)> = (unready.into_iter())
                .map(|i| {
                    let r = &slice[i];
                    (r.raw_hash, r.record.raw.to_owned(), r.record.invalid_utf8)
                })
                .collect();
            let classifier = Arc::clone(classifier);
            ready.extend(
                normalizer::spawn(move || {
                    (records.into_iter())
                        .map(|(hash, raw, invalid_utf8)| {
                            let record = SourceRecord {
                                raw: &raw,
                                invalid_utf8,
                            };
                            (hash, classifier.normalize(&record))
                        })
                        .collect::<Vec<_>>()
                })
                .await,
            );
        }
        let plan = classifier.plan(slice, ids, known, ready);
        for q in &plan.quarantined {
            warn!(reason = q.reason, "record quarantined");
        }
        plan
    }

    /// Store the page `tx` was opened for, counting it in `page`.
    ///
    /// The page's shadow (what the store made of it when last committed) settles every
    /// record whose raw hash it lists: the contact it names holds that raw record and is
    /// live, which is all a lookup would establish, so the record is only sighted. The rest
    /// are looked up and classified slice by slice. Then the page claims its contacts (the
    /// shadow of the page that could list one before drops it) and its new shadow is left:
    /// every record but the quarantined ones, or none where it cannot vouch for one
    /// (docs/contact.md, "Unchanged records").
    async fn store_page(
        &self,
        tx: &mut PageTx<'_>,
        writer: &Writer,
        fresh: &[RawRecord<'_>],
        ahead: &mut ReadAhead,
        page: &mut PassOutcome,
    ) -> Result<(), StoreError> {
        let stored = tx.shadow().await?;
        let ids = self.reader.classifier.ids(fresh);
        // Two copies of one contact with different records would each rewrite it: a copy the
        // shadow settled would hide that an earlier one changed the contact.
        let trusted = !conflicting_copies(fresh, &ids);
        let vouched: HashMap<RawHash, i64> = if trusted {
            stored.iter().copied().collect()
        } else {
            HashMap::new()
        };
        let settled: Vec<Option<i64>> = fresh
            .iter()
            .map(|r| vouched.get(&r.raw_hash).copied())
            .collect();
        let sighted: Vec<i64> = settled.iter().flatten().copied().collect();
        if !sighted.is_empty() {
            tx.sight(&sighted).await?;
            let n = sighted.len() as u64;
            page.records += n;
            page.unchanged += n;
            page.shadowed += n;
        }
        let rest: Vec<usize> = (0..fresh.len()).filter(|&i| settled[i].is_none()).collect();
        let mut quarantined = HashSet::new();
        // Contacts this page reads that another page could list until now (or none, for rows
        // older than page shadows), by number, with that page: `claim` makes them this page's
        // and takes them out of the other page's shadow.
        let mut moved: BTreeMap<i64, Option<i64>> = BTreeMap::new();
        // What the store holds, once the page is written, for the ids the slices looked up:
        // raw hash and number of each live contact (no second lookup once written).
        let mut held: HashMap<String, (RawHash, i64)> = HashMap::new();
        for chunk in rest.chunks(SLICE) {
            let slice: Vec<RawRecord<'_>> = chunk.iter().map(|&i| fresh[i]).collect();
            let slice_ids: Vec<Option<String>> = chunk.iter().map(|&i| ids[i].clone()).collect();
            // Read inside the page's transaction: a record repeated in a later slice
            // compares with what an earlier one wrote.
            let known = tx.known(&lookup(&slice_ids)).await?;
            moved.extend(
                known
                    .values()
                    .filter(|k| k.page != Some(tx.start()))
                    .filter_map(|k| Some((k.seq?, k.page))),
            );
            held.extend(
                known
                    .iter()
                    .filter(|(_, k)| !k.deleted)
                    .filter_map(|(id, k)| Some((id.clone(), (k.raw_hash, k.seq?)))),
            );
            let plan = self.plan(&slice, &slice_ids, known, ahead).await;
            let written = writer.write(tx, &plan).await?;
            for c in &plan.contacts {
                if let Some(&seq) = written.get(c.contact.id.as_str()) {
                    held.insert(c.contact.id.as_str().to_owned(), (c.raw_hash, seq));
                }
            }
            quarantined.extend(plan.quarantined.iter().map(|q| q.raw_hash));
            page.add(&plan);
        }

        let moved: Vec<(i64, Option<i64>)> = moved.into_iter().collect();
        // A quarantined record is left out: it is classified again each pass, which keeps
        // its quarantine row fresh. Any other record the store does not hold as read leaves
        // the page without a shadow.
        let mut entries = (trusted && !fresh.is_empty()).then(Vec::new);
        for ((r, id), settled) in fresh.iter().zip(&ids).zip(&settled) {
            let Some(list) = entries.as_mut() else { break };
            if quarantined.contains(&r.raw_hash) {
                continue;
            }
            let seq = settled.or_else(|| {
                held.get(id.as_deref()?)
                    .filter(|(raw_hash, _)| *raw_hash == r.raw_hash)
                    .map(|&(_, seq)| seq)
            });
            match seq {
                Some(seq) => list.push((r.raw_hash, seq)),
                None => entries = None,
            }
        }
        tx.set_shadow(entries.as_deref(), &stored, &moved).await
    }
}

impl Reader {
    /// Fetch the page `request` asks for and do what needs no store: hash each record and
    /// normalize, on the normalize thread, those (at most [`READ_AHEAD`]) that the page's
    /// shadow as last committed does not list, since they are most likely new or changed;
    /// not the records the page re-reads from the one before (`overlap`), which that page's
    /// shadow lists. Only work depends on that guess: the page's own transaction reads the
    /// shadow again and decides, and normalizes any record it needs that was not done here.
    /// So a shadow that cannot be read here only means nothing is done ahead.
    async fn read_page(&self, request: Request) -> Result<ReadPage, SourceError> {
        let start = request.start;
        let page = Arc::new(self.client.fetch_page(start, self.page_size).await?);
        let hashes: Vec<RawHash> = page.records().map(|r| raw_hash(r.raw)).collect();
        let todo: Vec<(usize, RawHash)> = match self.store.contacts().shadow(start).await {
            Ok(shadow) => {
                let listed: HashSet<RawHash> = shadow.into_iter().map(|(hash, _)| hash).collect();
                let overlap = usize::try_from(request.overlap).unwrap_or(usize::MAX);
                (hashes.iter().copied().enumerate().skip(overlap))
                    .filter(|(_, hash)| !listed.contains(hash))
                    .take(READ_AHEAD)
                    .collect()
            }
            Err(_) => Vec::new(),
        };
        let task = (!todo.is_empty()).then(|| {
            let (page, classifier) = (Arc::clone(&page), Arc::clone(&self.classifier));
            normalizer::spawn(move || {
                let records: Vec<SourceRecord> = page.records().collect();
                (todo.into_iter())
                    .map(|(i, hash)| (hash, classifier.normalize(&records[i])))
                    .collect()
            })
        });
        Ok(ReadPage {
            page,
            hashes,
            ready: ReadAhead {
                task,
                done: Normalizations::new(),
            },
        })
    }
}

/// Whether the page holds two records of one id whose raw records differ.
fn conflicting_copies(records: &[RawRecord<'_>], ids: &[Option<String>]) -> bool {
    let mut seen: HashMap<&str, &RawHash> = HashMap::with_capacity(records.len());
    records.iter().zip(ids).any(|(r, id)| {
        id.as_deref()
            .is_some_and(|id| **seen.entry(id).or_insert(&r.raw_hash) != r.raw_hash)
    })
}

/// The ids to look up for a slice: those that could be read without normalizing.
fn lookup(ids: &[Option<String>]) -> Vec<&str> {
    ids.iter().flatten().map(String::as_str).collect()
}

impl ReadAhead {
    /// The normalizations, once the task doing them has finished.
    async fn get(&mut self) -> &mut Normalizations {
        if let Some(task) = self.task.take() {
            self.done = task.await;
        }
        &mut self.done
    }

    /// Wait for the task if the page never asked for its normalizations: the page is stored
    /// without them, so a panic in it only loses work.
    async fn finish(&mut self) {
        if let Some(task) = self.task.take() {
            task.finished().await;
        }
    }
}

/// What a task this pass spawned returned; its panic goes on in the pass. Such a task is only
/// ever awaited, never aborted while awaited, so it ends by returning or panicking.
fn joined<T>(result: Result<T, tokio::task::JoinError>) -> T {
    result.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}
