//! EngageLab's side of pushing: contacts without an EUID are registered (at most
//! `REGISTER_BATCH` a call) first, then each contact's information is set by EUID.

use std::collections::HashMap;

use futures_util::future::BoxFuture;
use futures_util::{StreamExt, stream};

use super::EngagelabClient;
use super::client::REGISTER_BATCH;
use crate::failpoint::crash_point;
use crate::net::Gate;
use crate::sink::{Ack, Delivery, Destination, FailureKind, PushContext, PushError, Sink};
use crate::store::StoreError;

pub(super) struct EngagelabSink {
    client: EngagelabClient,
}

impl EngagelabSink {
    pub(super) fn new(client: EngagelabClient) -> Self {
        Self { client }
    }
}

impl Sink for EngagelabSink {
    fn destination(&self) -> Destination {
        Destination::Engagelab
    }

    fn gate(&self) -> &Gate {
        self.client.gate()
    }

    fn batch_size(&self) -> usize {
        REGISTER_BATCH
    }

    fn push<'a>(
        &'a self,
        ctx: &'a dyn PushContext,
        deliveries: Vec<Delivery>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.push_chunk(ctx, deliveries))
    }
}

impl EngagelabSink {
    /// Contacts with an EUID are written at once; each register batch is followed by its own
    /// writes, and batches go out side by side, so no write waits for another batch.
    async fn push_chunk(
        &self,
        ctx: &dyn PushContext,
        items: Vec<Delivery>,
    ) -> Result<(), StoreError> {
        let (ready, unregistered): (Vec<Delivery>, Vec<Delivery>) =
            items.into_iter().partition(|i| i.remote_id.is_some());
        let batches: Vec<Vec<Delivery>> = unregistered
            .chunks(REGISTER_BATCH)
            .map(<[Delivery]>::to_vec)
            .collect();
        let (written, registered) = futures_util::join!(
            self.set_contacts(ctx, ready),
            stream::iter(batches.into_iter().enumerate())
                .map(|(n, batch)| async move {
                    // A refusal holds the whole destination: later batches would meet it too.
                    // The first batch goes whatever: only a success lifts a hold, so a held
                    // destination that never sent again would stay held for good.
                    if n > 0 && ctx.held() {
                        return Ok(());
                    }
                    let ready = self.register(ctx, batch).await?;
                    if ctx.held() {
                        return Ok(());
                    }
                    self.set_contacts(ctx, ready).await
                })
                .buffer_unordered(ctx.in_flight())
                .collect::<Vec<Result<(), StoreError>>>()
        );
        written?;
        registered.into_iter().collect()
    }

    /// Write each item's information, as many at once as the gate lets through.
    async fn set_contacts(
        &self,
        ctx: &dyn PushContext,
        items: Vec<Delivery>,
    ) -> Result<(), StoreError> {
        let results: Vec<Result<(), StoreError>> = stream::iter(items)
            .map(|item| self.set_contact(ctx, item))
            .buffer_unordered(ctx.in_flight())
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Register a batch; returns the items that now have an EUID. A batch refused for a
    /// parameter is split in halves like an `addMany` batch, so one bad identity is the only
    /// dead letter (registering is idempotent, so a resend is harmless).
    fn register<'a>(
        &'a self,
        ctx: &'a dyn PushContext,
        mut batch: Vec<Delivery>,
    ) -> BoxFuture<'a, Result<Vec<Delivery>, StoreError>> {
        Box::pin(async move {
            let ids: Vec<&str> = batch.iter().map(|i| i.contact_id.as_str()).collect();
            let euids: HashMap<String, i64> = match self.client.register(&ids).await {
                Ok(pairs) => pairs.into_iter().collect(),
                Err(e) if e.kind == FailureKind::Permanent && batch.len() > 1 => {
                    let right = batch.split_off(batch.len() / 2);
                    let mut ready = self.register(ctx, batch).await?;
                    ready.extend(self.register(ctx, right).await?);
                    return Ok(ready);
                }
                Err(e) => {
                    ctx.fail(&batch.iter().collect::<Vec<_>>(), &e).await?;
                    return Ok(Vec::new());
                }
            };
            crash_point("engagelab.before_euid_commit");
            let (ready, missing): (Vec<Delivery>, Vec<Delivery>) = batch
                .into_iter()
                .map(|item| Delivery {
                    remote_id: euids.get(&item.contact_id).map(i64::to_string),
                    ..item
                })
                .partition(|i| i.remote_id.is_some());
            let known: Vec<(&str, String)> = ready
                .iter()
                .filter_map(|i| Some((i.contact_id.as_str(), i.remote_id.clone()?)))
                .collect();
            ctx.set_remote_ids(&known).await?;
            if !missing.is_empty() {
                let e = PushError::new(
                    FailureKind::Transient,
                    "EngageLab register answered without this identity's EUID",
                );
                ctx.fail(&missing.iter().collect::<Vec<_>>(), &e).await?;
            }
            Ok(ready)
        })
    }

    /// Set one contact's information; an EUID EngageLab no longer knows is registered again
    /// once, and a second invalid EUID is a dead letter.
    async fn set_contact(
        &self,
        ctx: &dyn PushContext,
        mut item: Delivery,
    ) -> Result<(), StoreError> {
        for renewed in [false, true] {
            let stored = item.remote_id.clone().unwrap_or_default();
            let result = match stored.parse::<i64>() {
                Ok(euid) => self.client.set_contact(euid, &item.payload).await,
                Err(_) => Err(PushError::new(
                    FailureKind::InvalidId,
                    "stored EUID is not a number",
                )),
            };
            match result {
                Ok(()) => return ctx.ack(&[&item], Ack::Written).await,
                Err(e) if e.kind == FailureKind::InvalidId && !renewed => {
                    ctx.forget_remote_id(&item.contact_id, &stored).await?;
                    match self.register(ctx, vec![item]).await?.pop() {
                        Some(registered) => item = registered,
                        None => return Ok(()),
                    }
                }
                Err(mut e) => {
                    if e.kind == FailureKind::InvalidId {
                        e.kind = FailureKind::Permanent;
                    }
                    return ctx.fail(&[&item], &e).await;
                }
            }
        }
        Ok(())
    }
}
