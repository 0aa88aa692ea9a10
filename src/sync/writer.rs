//! The consumer of page plans that stores them: one transaction per page ([`PageTx`]), written
//! slice by slice, plus the pass bookkeeping around it (failures, restart, completion).

use std::collections::HashMap;
use std::time::Duration;

use tracing::warn;

use super::classify::{Change, PagePlan};
use super::pass::STUCK_PASS_FAILURES;
use crate::sink::Payloads;
use crate::store::{
    self, ContactChange, PageConnection, PageProgress, PageTx, PageWrite, Pass, Passes,
    QuarantinedRecord, StoreError,
};

#[derive(Debug, Clone)]
pub struct Writer {
    passes: Passes,
    /// What contacts the pass marks deleted become at the destinations.
    payloads: Payloads,
}

impl Writer {
    pub fn new(passes: Passes, payloads: Payloads) -> Self {
        Self { passes, payloads }
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

    /// The connection every page of a pass is stored through.
    pub async fn connection(&self) -> Result<PageConnection, StoreError> {
        self.passes.page_connection().await
    }

    /// Write the plan of one slice of the page; returns the number of each contact written,
    /// by id.
    pub async fn write(
        &self,
        page: &mut PageTx<'_>,
        plan: &PagePlan<'_>,
    ) -> Result<HashMap<String, i64>, StoreError> {
        let slice = PageWrite {
            contacts: plan
                .contacts
                .iter()
                .map(|c| ContactChange {
                    contact: &c.contact,
                    raw_hash: c.raw_hash,
                    content_hash: c.content_hash,
                    seq: c.seq,
                    content_changed: c.change != Change::RawOnly,
                })
                .collect(),
            sighted: &plan.sighted,
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
                .map(|d| (d.destination, plan.planned(d)))
                .collect(),
            now: store::now_ms(),
        };
        page.write(&slice).await
    }

    /// Move the pass on by `progress` and commit the page.
    pub async fn commit(&self, page: PageTx<'_>, progress: PageProgress) -> Result<(), StoreError> {
        page.commit(&progress).await?;
        crate::metrics::source_page(progress.records, progress.quarantined);
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

    /// Close the pass; returns how many contacts it marked deleted (and planned again where
    /// a deletion changes what a destination should hold).
    pub async fn complete(&self, pass: &Pass) -> Result<u64, StoreError> {
        let now = store::now_ms();
        let deleted = self.passes.complete(pass.id, now, &self.payloads).await?;
        let took = now.saturating_sub(pass.started_at);
        crate::metrics::pass_completed(Duration::from_millis(took.max(0) as u64));
        Ok(deleted)
    }
}
