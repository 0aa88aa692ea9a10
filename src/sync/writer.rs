//! The consumer of a page plan that stores it: one transaction per page through
//! [`Passes::commit_page`], plus the pass bookkeeping around it (failures, restart, completion).

use std::time::Duration;

use tracing::warn;

use super::classify::{Change, PagePlan};
use super::pass::STUCK_PASS_FAILURES;
use crate::store::{
    self, ContactChange, PageProgress, PageWrite, Pass, Passes, QuarantinedRecord, SightedRecords,
    StoreError,
};

#[derive(Debug, Clone)]
pub struct Writer {
    passes: Passes,
}

impl Writer {
    pub fn new(passes: Passes) -> Self {
        Self { passes }
    }

    /// The interrupted pass, or a new one; one stuck at an offset starts again from 0.
    pub async fn open(&self) -> Result<Pass, StoreError> {
        let mut pass = self.passes.open(store::now_ms()).await?;
        if pass.failures >= STUCK_PASS_FAILURES {
            warn!(
                pass = pass.id,
                offset = pass.next_start,
                failures = pass.failures,
                "restarting the source pass from offset 0 after failing repeatedly at one offset"
            );
            self.passes.restart(pass.id).await?;
            pass.next_start = 0;
            pass.failures = 0;
        }
        Ok(pass)
    }

    /// Store `plan` and move the pass to `next_start`, in one transaction.
    pub async fn commit(
        &self,
        pass: &Pass,
        plan: &PagePlan<'_>,
        next_start: u64,
    ) -> Result<(), StoreError> {
        let page = PageWrite {
            pass_id: pass.id,
            progress: PageProgress {
                next_start,
                records: plan.records,
                new_contacts: plan.count(Change::New),
                changed: plan.count(Change::Changed),
                quarantined: plan.quarantined.len() as u64,
            },
            contacts: plan
                .contacts
                .iter()
                .map(|c| ContactChange {
                    contact: &c.contact,
                    raw: c.raw,
                    raw_hash: c.raw_hash,
                    content_hash: c.content_hash,
                    content_changed: c.change != Change::RawOnly,
                })
                .collect(),
            sighted: SightedRecords {
                unchanged: plan.unchanged.iter().map(String::as_str).collect(),
                undeleted: plan.undeleted.iter().map(String::as_str).collect(),
            },
            quarantined: plan
                .quarantined
                .iter()
                .map(|q| QuarantinedRecord {
                    raw: q.raw,
                    raw_hash: q.raw_hash,
                    reason: &q.reason,
                })
                .collect(),
            plans: plan
                .deliveries
                .iter()
                .map(|d| {
                    let planned = d
                        .payloads
                        .iter()
                        .map(|(i, hash)| (plan.contacts[*i].contact.id.as_str(), *hash))
                        .collect();
                    (d.destination, planned)
                })
                .collect(),
            now: store::now_ms(),
        };
        self.passes.commit_page(&page).await?;
        crate::metrics::source_page(page.progress.records, page.progress.quarantined);
        Ok(())
    }

    /// Count a failed page against the pass; see [`STUCK_PASS_FAILURES`].
    pub async fn failed(&self, pass: &Pass, offset: u64, error: &str) -> Result<(), StoreError> {
        let failures = self.passes.record_failure(pass.id, offset).await?;
        if failures >= STUCK_PASS_FAILURES {
            warn!(
                pass = pass.id,
                offset,
                failures,
                error = %crate::telemetry::mask_pii(error),
                "source pass stuck at one offset; it restarts from offset 0 next time"
            );
        }
        Ok(())
    }

    /// Close the pass; returns how many contacts it marked deleted.
    pub async fn complete(&self, pass: &Pass) -> Result<u64, StoreError> {
        let now = store::now_ms();
        let deleted = self.passes.complete(pass.id, now).await?;
        let took = now.saturating_sub(pass.started_at);
        crate::metrics::pass_completed(Duration::from_millis(took.max(0) as u64));
        Ok(deleted)
    }
}
