//! One pass over the 3Dolphins contact list: fetch a page, normalize what changed, write the
//! page and the advanced cursor in one transaction, repeat; resumable after a crash.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::domain::{Contact, Region, normalize, raw_hash};
use crate::sink::{Payloads, Target};
use crate::source::dolphins::{DolphinsClient, Page, SourceError, SourceRecord};
use crate::store::{
    self, ContactWrite, DeliveryState, KnownContact, PageProgress, Pass, QuarantineWrite, Store,
    StoreError, Tx,
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
pub const STUCK_PASS_FAILURES: u32 = 3;

/// Pages a pass may read beyond twice what `totalResults` implies: a source whose offsets
/// advance but never reach the end is stopped instead of read forever.
const PAGE_BUDGET_MARGIN: u64 = 10;

/// Records normalized and written at a time within one page's transaction.
const INGEST_SLICE: usize = 500;

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

/// What a dry run would push, per destination.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Preview {
    pub destinations: std::collections::BTreeMap<String, PreviewCounts>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PreviewCounts {
    /// OMI `addMany` records, or EngageLab contacts that need an EUID first.
    pub new: u64,
    /// OMI `update`s, or EngageLab contact writes for a known EUID.
    pub update: u64,
    pub skip: u64,
    /// A few payloads, as the destination would receive them.
    pub examples: Vec<serde_json::Value>,
}

const PREVIEW_EXAMPLES: usize = 3;

/// Pulls the source into the store. `dry_run` computes the same outcome but rolls back every
/// write.
pub struct Puller {
    store: Store,
    client: DolphinsClient,
    page_size: u32,
    page_overlap: u32,
    region: Region,
    payloads: Payloads,
    dry_run: bool,
}

/// Just enough of a record to find its id without parsing the rest into a tree.
#[derive(Deserialize)]
struct IdProbe<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
}

/// A pass in progress, driven page by page.
pub struct PassRun {
    pass: Pass,
    cursor: Cursor,
    outcome: PassOutcome,
    started: Instant,
}

/// Where the next page starts and what the previous page ended with.
struct Cursor {
    next_start: u64,
    /// Raw hashes of the previous page's last `page_overlap` records: a record of the next
    /// page's overlap found here was read already and is skipped.
    tail: Vec<[u8; 32]>,
    /// How many records the previous page had; bounds the overlap so a page always advances.
    last_len: u64,
    /// The next page, fetched while the previous one was being written, and where it starts.
    prefetched: Option<(u64, Result<Page, SourceError>)>,
    /// Records per page as the source serves them (the first non-empty page of this run, at
    /// most `page_size`): with `totalResults`, what bounds the pages of the pass.
    per_page: Option<u64>,
}

impl Cursor {
    /// Where the next request starts, and how many already-read records it re-reads.
    /// Nothing overlaps on a pass's first page, nor on the first page after a restart.
    fn request(&self, page_overlap: u32) -> (u64, u64) {
        let overlap = if self.tail.is_empty() {
            0
        } else {
            u64::from(page_overlap).min(self.last_len / 2)
        };
        (self.next_start.saturating_sub(overlap), overlap)
    }
}

impl Puller {
    /// A puller with its own 3Dolphins client on `http`.
    pub fn new(
        store: Store,
        settings: &crate::config::Settings,
        http: reqwest::Client,
        dry_run: bool,
    ) -> Self {
        let retry = crate::net::RetryPolicy::from(&settings.retry);
        Self {
            store,
            client: DolphinsClient::new(&settings.source, http, retry, settings.http.max_body),
            page_size: settings.source.page_size,
            page_overlap: settings.source.page_overlap,
            region: settings.normalize.default_region,
            payloads: Payloads::new(settings),
            dry_run,
        }
    }

    /// Run the open pass (or a new one) to its end, or until `cancel` fires between pages.
    pub async fn run_pass(&self, cancel: &CancellationToken) -> Result<PassOutcome, SyncError> {
        let mut run = self.begin().await?;
        while !cancel.is_cancelled() && self.step(&mut run).await? {}
        Ok(self.finish(run))
    }

    /// Open the interrupted pass, or a new one. Drive it with [`Puller::step`].
    pub async fn begin(&self) -> Result<PassRun, SyncError> {
        let pass = self.open_pass().await?;
        Ok(PassRun {
            outcome: PassOutcome {
                pass_id: pass.id,
                resumed_at: pass.next_start,
                ..Default::default()
            },
            cursor: Cursor {
                next_start: pass.next_start,
                tail: Vec::new(),
                last_len: u64::from(self.page_size),
                prefetched: None,
                per_page: None,
            },
            pass,
            started: Instant::now(),
        })
    }

    /// Fetch and commit one page; when the source has no more, complete the pass.
    /// Returns whether there is more to do.
    pub async fn step(&self, run: &mut PassRun) -> Result<bool, SyncError> {
        if run.outcome.completed {
            return Ok(false);
        }
        match self
            .run_page(&run.pass, &mut run.cursor, &mut run.outcome)
            .await
        {
            Ok(true) => return Ok(true),
            Ok(false) => {}
            Err(e @ SyncError::Page { .. }) => {
                self.note_failure(&run.pass, run.cursor.next_start, &e)
                    .await?;
                return Err(e);
            }
            Err(e) => return Err(e),
        }
        run.outcome.deleted = self.complete(&run.pass).await?;
        run.outcome.completed = true;
        if !self.dry_run {
            let took = store::now_ms().saturating_sub(run.pass.started_at);
            crate::metrics::pass_completed(Duration::from_millis(took.max(0) as u64));
        }
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
            quarantined = outcome.quarantined,
            deleted = outcome.deleted,
            dry_run = self.dry_run,
            elapsed_ms = outcome.elapsed.as_millis() as u64,
            "source pass"
        );
        outcome
    }

    /// Count a failed page against the pass; see [`STUCK_PASS_FAILURES`].
    async fn note_failure(
        &self,
        pass: &Pass,
        offset: u64,
        error: &SyncError,
    ) -> Result<(), StoreError> {
        if self.dry_run {
            return Ok(());
        }
        let mut tx = self.store.begin().await?;
        let failures = store::record_pass_failure(&mut tx, pass.id, offset).await?;
        tx.commit().await?;
        if failures >= STUCK_PASS_FAILURES {
            warn!(
                pass = pass.id,
                offset,
                failures,
                error = %crate::telemetry::mask_pii(&error.to_string()),
                "source pass stuck at one offset; it restarts from offset 0 next time"
            );
        }
        Ok(())
    }

    async fn open_pass(&self) -> Result<Pass, StoreError> {
        let mut tx = self.store.begin().await?;
        let mut pass = store::open_pass(&mut tx, store::now_ms()).await?;
        if pass.failures >= STUCK_PASS_FAILURES && !self.dry_run {
            warn!(
                pass = pass.id,
                offset = pass.next_start,
                failures = pass.failures,
                "restarting the source pass from offset 0 after failing repeatedly at one offset"
            );
            store::restart_pass(&mut tx, pass.id).await?;
            pass.next_start = 0;
            pass.failures = 0;
        }
        if self.dry_run {
            // A preview always reads everything and leaves no pass behind.
            tx.rollback().await?;
            return Ok(Pass {
                next_start: 0,
                ..pass
            });
        }
        tx.commit().await?;
        Ok(pass)
    }

    /// Fetch and store one page; false once the source has no more.
    async fn run_page(
        &self,
        pass: &Pass,
        cursor: &mut Cursor,
        outcome: &mut PassOutcome,
    ) -> Result<bool, SyncError> {
        let (start, overlap) = cursor.request(self.page_overlap);
        let at = |source| SyncError::Page {
            offset: start,
            source,
        };
        let page = match cursor.prefetched.take() {
            Some((prefetched_at, page)) if prefetched_at == start => page.map_err(at)?,
            _ => self
                .client
                .fetch_page(start, self.page_size)
                .await
                .map_err(at)?,
        };
        let len = page.len() as u64;
        // A nextIndex that does not move past the page is a fault, never nudged forward:
        // reading on from start + 1 would only re-read the same records.
        let next_start = page.next_index.unwrap_or(start.saturating_add(len));
        let mut has_more = page.has_more;
        if has_more && len == 0 && overlap == 0 {
            // An empty page ends the list, whatever hasMore says, unless totalResults says
            // records are still ahead: then completing would mark them deleted.
            if let Some(total) = page.total.filter(|total| start < *total) {
                return Err(at(SourceError::BadPaging(format!(
                    "empty page with hasMore though totalResults is {total}"
                ))));
            }
            warn!(
                offset = start,
                "source sent an empty page with hasMore; taking it as the end of the list"
            );
            has_more = false;
        }
        if has_more && next_start <= cursor.next_start {
            if overlap > 0 {
                // The page was no longer than the overlap: read on from the cursor instead.
                cursor.tail.clear();
                return Ok(true);
            }
            return Err(at(SourceError::BadPaging(format!(
                "contact list did not advance (hasMore with nextIndex {next_start})"
            ))));
        }
        if len > 0 && cursor.per_page.is_none() {
            cursor.per_page = Some(len.min(u64::from(self.page_size)));
        }
        if let (true, Some(total), Some(per_page)) = (has_more, page.total, cursor.per_page) {
            let step = (per_page - u64::from(self.page_overlap).min(per_page / 2)).max(1);
            let expected = total.saturating_sub(outcome.resumed_at).div_ceil(step);
            let budget = expected
                .saturating_mul(2)
                .saturating_add(PAGE_BUDGET_MARGIN);
            if outcome.pages + 1 > budget {
                return Err(at(SourceError::BadPaging(format!(
                    "still hasMore after {} pages from offset {}, where totalResults {total} at {per_page} a page implies {expected}",
                    outcome.pages + 1,
                    outcome.resumed_at
                ))));
            }
        }
        let records: Vec<SourceRecord> = page.records().collect();
        let hashes: Vec<[u8; 32]> = records.iter().map(|r| raw_hash(r.raw)).collect();
        let window = &hashes[..hashes.len().min(overlap as usize + 1)];
        if overlap > 0 && !cursor.tail.last().is_some_and(|last| window.contains(last)) {
            outcome.shifts_beyond_overlap += 1;
            warn!(
                offset = start,
                overlap,
                "source offsets shifted back by more than page_overlap; a record may be missed until the next pass"
            );
        }
        let fresh: Vec<(SourceRecord, [u8; 32])> = records
            .iter()
            .zip(hashes.iter().copied())
            .enumerate()
            .filter(|(i, (_, hash))| (*i as u64) >= overlap || !cursor.tail.contains(hash))
            .map(|(_, (record, hash))| (*record, hash))
            .collect();

        cursor.next_start = next_start;
        cursor.last_len = len;
        let keep = hashes.len().saturating_sub(self.page_overlap as usize);
        cursor.tail = hashes[keep..].to_vec();

        // Fetch the next page while this one is written: the source and SQLite work in
        // parallel instead of taking turns.
        let (next_at, _) = cursor.request(self.page_overlap);
        let prefetch = async {
            if has_more {
                Some((
                    next_at,
                    self.client.fetch_page(next_at, self.page_size).await,
                ))
            } else {
                None
            }
        };
        let (written, prefetched) =
            tokio::join!(self.write_page(pass, &fresh, next_start, outcome), prefetch);
        cursor.prefetched = prefetched;
        written?;
        outcome.pages += 1;
        Ok(has_more)
    }

    /// One page's records and the advanced cursor in one transaction (rolled back in a dry run).
    async fn write_page(
        &self,
        pass: &Pass,
        fresh: &[(SourceRecord<'_>, [u8; 32])],
        next_start: u64,
        outcome: &mut PassOutcome,
    ) -> Result<(), StoreError> {
        let mut tx = self.store.begin().await?;
        let mut progress = PageProgress {
            next_start,
            ..Default::default()
        };
        // A page longer than asked for is ingested a slice at a time in the same transaction,
        // so what normalization holds stays bounded whatever the source sends.
        for slice in fresh.chunks(INGEST_SLICE) {
            let planned = self
                .ingest(&mut tx, pass, slice, &mut progress, outcome)
                .await?;
            if self.dry_run {
                self.preview(&mut tx, &planned, &mut outcome.preview)
                    .await?;
            }
        }
        outcome.records += progress.records;
        outcome.new_contacts += progress.new_contacts;
        outcome.changed += progress.changed;
        outcome.quarantined += progress.quarantined;
        if self.dry_run {
            tx.rollback().await?;
        } else {
            store::advance_pass(&mut tx, pass.id, &progress).await?;
            // A kill here loses the whole page, cursor included: it is read again.
            crate::failpoint::crash_point("pass.inside_page_commit");
            tx.commit().await?;
            crate::metrics::source_page(progress.records, progress.quarantined);
        }
        Ok(())
    }

    /// Write one page's records inside `tx`: unchanged raw records are only marked seen,
    /// the rest are normalized and upserted, records without an id quarantined.
    /// Adds to the page's `progress`; returns the contacts whose deliveries were planned anew.
    async fn ingest(
        &self,
        tx: &mut Tx,
        pass: &Pass,
        records: &[(SourceRecord<'_>, [u8; 32])],
        progress: &mut PageProgress,
        outcome: &mut PassOutcome,
    ) -> Result<Vec<Contact>, StoreError> {
        let now = store::now_ms();
        // A record with bytes that are not UTF-8 is quarantined, not stored with U+FFFD in
        // their place: a silently altered name or address would be pushed to every
        // destination, while the quarantine keeps it visible until the source is fixed.
        let probed: Vec<(Option<String>, &SourceRecord, [u8; 32])> = records
            .iter()
            .map(|(record, hash)| {
                let id = if record.invalid_utf8 {
                    None
                } else {
                    probe_id(record.raw)
                };
                (id, record, *hash)
            })
            .collect();
        let ids: Vec<&str> = probed.iter().filter_map(|(id, ..)| id.as_deref()).collect();
        let mut known: HashMap<String, KnownContact> = store::known_contacts(tx, &ids).await?;

        progress.records += records.len() as u64;
        let mut unchanged = Vec::new();
        let mut undeleted = Vec::new();
        let mut changed = Vec::new();
        for (probe, record, raw_hash) in &probed {
            let raw = record.raw;
            if let Some(id) = probe
                && let Some(k) = known.get(id).filter(|k| k.raw_hash == *raw_hash)
            {
                unchanged.push(id.as_str());
                if k.deleted {
                    undeleted.push(id.as_str());
                }
                continue;
            }
            // A record of a parsed array always parses; quarantine rather than trust that.
            let normalized = if record.invalid_utf8 {
                Err("record holds bytes that are not UTF-8".to_owned())
            } else {
                serde_json::from_str::<serde_json::Value>(raw)
                    .map_err(|e| format!("unparsable record: {e}"))
                    .and_then(|value| normalize(&value, self.region).map_err(|r| r.to_string()))
            };
            let normalized = match normalized {
                Ok(normalized) => normalized,
                Err(reason) => {
                    warn!(reason, "record quarantined");
                    let q = QuarantineWrite {
                        raw,
                        raw_hash,
                        reason: &reason,
                    };
                    store::quarantine_record(tx, &q, pass.id, now).await?;
                    progress.quarantined += 1;
                    continue;
                }
            };
            outcome.dropped_emails += u64::from(normalized.dropped_emails);
            outcome.dropped_phones += u64::from(normalized.dropped_phones);
            outcome.reformatted_phones += u64::from(normalized.reformatted_phones);
            let contact = normalized.contact;
            let content_hash =
                *blake3::hash(&serde_json::to_vec(&contact).expect("contacts serialize"))
                    .as_bytes();
            let id = contact.id.as_str().to_owned();
            let content_changed = match known.get(&id) {
                None => {
                    progress.new_contacts += 1;
                    true
                }
                Some(k) if k.content_hash != content_hash || k.deleted => {
                    progress.changed += 1;
                    true
                }
                Some(_) => {
                    outcome.unchanged += 1;
                    false
                }
            };
            // A second copy of the record later in the same page compares against this one.
            known.insert(
                id,
                KnownContact {
                    raw_hash: *raw_hash,
                    content_hash,
                    deleted: false,
                },
            );
            changed.push((contact, raw, *raw_hash, content_hash, content_changed));
        }
        let writes: Vec<ContactWrite> = changed
            .iter()
            .map(
                |(contact, raw, raw_hash, content_hash, content_changed)| ContactWrite {
                    contact,
                    raw,
                    raw_hash: *raw_hash,
                    content_hash: *content_hash,
                    content_changed: *content_changed,
                },
            )
            .collect();
        store::upsert_contacts(tx, &writes, pass.id, now).await?;
        let planned: Vec<Contact> = changed
            .into_iter()
            .filter(|(.., content_changed)| *content_changed)
            .map(|(contact, ..)| contact)
            .collect();
        self.plan(tx, &planned, now).await?;
        store::record_sightings(tx, &unchanged, pass.id).await?;
        store::undelete(tx, &undeleted).await?;
        outcome.unchanged += unchanged.len() as u64;
        Ok(planned)
    }

    /// Record what every enabled destination should now hold for these changed contacts.
    async fn plan(&self, tx: &mut Tx, contacts: &[Contact], now: i64) -> Result<(), StoreError> {
        for destination in self.payloads.enabled() {
            let plans: Vec<(&str, Option<[u8; 32]>)> = contacts
                .iter()
                .map(|c| (c.id.as_str(), self.payloads.target(destination, c).hash()))
                .collect();
            store::plan(tx, destination, &plans, now).await?;
        }
        Ok(())
    }

    /// Dry run: classify the page's planned deliveries before the page is rolled back.
    async fn preview(
        &self,
        tx: &mut Tx,
        planned: &[Contact],
        preview: &mut Preview,
    ) -> Result<(), StoreError> {
        for destination in self.payloads.enabled() {
            let counts = preview
                .destinations
                .entry(destination.as_str().to_owned())
                .or_default();
            for contact in planned {
                let Some(state) = store::delivery_row(tx, contact.id.as_str(), destination).await?
                else {
                    continue;
                };
                match state.state {
                    DeliveryState::Skipped => counts.skip += 1,
                    DeliveryState::Pending
                        if state.add_state.is_none() && state.remote_id.is_none() =>
                    {
                        counts.new += 1
                    }
                    DeliveryState::Pending => counts.update += 1,
                    DeliveryState::Synced | DeliveryState::Dead => continue,
                }
                if counts.examples.len() < PREVIEW_EXAMPLES
                    && let Target::Send(payload) = self.payloads.target(destination, contact)
                {
                    counts.examples.push(payload);
                }
            }
        }
        Ok(())
    }

    /// Close the pass: contacts missing from it and the one before are marked deleted.
    async fn complete(&self, pass: &Pass) -> Result<u64, StoreError> {
        if self.dry_run {
            return Ok(0);
        }
        let now = store::now_ms();
        let mut tx = self.store.begin().await?;
        let deleted = store::mark_missing_deleted(&mut tx, pass.id, now).await?;
        store::prune_quarantine(&mut tx, pass.id).await?;
        store::complete_pass(&mut tx, pass.id, deleted, now).await?;
        tx.commit().await?;
        Ok(deleted)
    }
}

/// The record's id as the store keys it, or None when only full normalization can say why not.
fn probe_id(raw: &str) -> Option<String> {
    let probe: IdProbe = serde_json::from_str(raw).ok()?;
    let value: serde_json::Value = serde_json::from_str(probe.id?.get()).ok()?;
    crate::domain::ContactId::from_json(Some(&value))
        .ok()
        .map(|id| id.as_str().to_owned())
}
