//! OMI's side of pushing: which contacts go out as `addMany` and which as `update`, and how a
//! refused or unanswered batch is reconciled so no contact is ever added twice.

use futures_util::future::BoxFuture;
use futures_util::{StreamExt, stream};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::{OmiClient, tags};
use crate::failpoint::crash_point;
use crate::net::Gate;
use crate::sink::{Ack, Delivery, Destination, FailureKind, PushContext, Sink, payload_json};
use crate::store::{Store, StoreError};

pub(super) struct OmiSink {
    client: OmiClient,
    store: Store,
    tags: Vec<String>,
    /// `omi.deleted_tag` while `on_source_delete = "tag"`.
    deleted_tag: Option<String>,
    batch_size: usize,
}

impl OmiSink {
    pub(super) fn new(
        client: OmiClient,
        store: Store,
        tags: Vec<String>,
        deleted_tag: Option<String>,
        batch_size: usize,
    ) -> Self {
        Self {
            client,
            store,
            tags,
            deleted_tag,
            batch_size: batch_size.max(1),
        }
    }

    /// Whether `item` was planned for a contact deleted at the source: only a deleted
    /// contact's payload carries the deleted tag (config refuses it in `omi.tags`).
    fn deleted(&self, item: &Delivery) -> bool {
        #[derive(Deserialize)]
        struct Tags {
            #[serde(default)]
            tags: Vec<String>,
        }
        self.deleted_tag.as_deref().is_some_and(|tag| {
            serde_json::from_str::<Tags>(item.payload.get())
                .is_ok_and(|payload| payload.tags.iter().any(|t| t == tag))
        })
    }

    /// The tags an `update` of `item` removes: those that left the configuration, and for a
    /// live contact the deleted tag, which it carries if it was deleted before (removing a
    /// tag a contact lacks changes nothing).
    fn tag_removes(&self, item: &Delivery, removed: &[String]) -> Vec<String> {
        let mut removes = removed.to_vec();
        if let Some(tag) = &self.deleted_tag
            && !self.deleted(item)
        {
            removes.push(tag.clone());
        }
        removes
    }
}

impl Sink for OmiSink {
    fn destination(&self) -> Destination {
        Destination::Omi
    }

    fn gate(&self) -> &Gate {
        self.client.gate()
    }

    fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The deleted tag counts as one of ours while it is sent, so a tag that stops being
    /// sent (policy back to "ignore", tag renamed) is removed from contacts updated later.
    fn prepare(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let ours: Vec<String> = self.tags.iter().chain(&self.deleted_tag).cloned().collect();
            tags::remember_removed(&self.store, &ours).await
        })
    }

    fn push<'a>(
        &'a self,
        ctx: &'a dyn PushContext,
        deliveries: Vec<Delivery>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.push_chunk(ctx, deliveries))
    }
}

impl OmiSink {
    /// Contacts OMI was never sent go out in `addMany` batches; the rest, including any whose
    /// add may or may not have happened, as `update`, and are added only if OMI says it does
    /// not have them. So no contact is ever added twice. A deleted contact OMI never held is
    /// skipped, not created just to carry the deleted tag.
    async fn push_chunk(
        &self,
        ctx: &dyn PushContext,
        items: Vec<Delivery>,
    ) -> Result<(), StoreError> {
        let tag_removes = tags::removes(&self.store).await?;
        let (new, updates): (Vec<Delivery>, Vec<Delivery>) =
            items.into_iter().partition(|i| i.add_state.is_none());
        let (never_held, mut adds): (Vec<Delivery>, Vec<Delivery>) =
            new.into_iter().partition(|i| self.deleted(i));
        if !never_held.is_empty() {
            ctx.skip(&never_held.iter().collect::<Vec<_>>()).await?;
        }
        adds.extend(self.updates(ctx, updates, &tag_removes).await?);
        // One durable intent for the whole chunk's adds before the first leaves, not one per
        // batch: each is a synchronous commit, and with small batches they were two hundred a
        // second, queued ahead of the next chunk's load (docs/performance.md, "Round 6").
        // A crash before some are sent costs those one `update` each, never a second add.
        if !adds.is_empty() {
            let ids: Vec<&str> = adds.iter().map(|i| i.contact_id.as_str()).collect();
            ctx.mark_add_intent(&ids).await?;
            crash_point("omi.after_intent");
        }
        let batches: Vec<Vec<Delivery>> = adds
            .chunks(self.batch_size)
            .map(<[Delivery]>::to_vec)
            .collect();
        let results: Vec<Result<(), StoreError>> = stream::iter(batches)
            .map(|batch| self.add(ctx, batch, &tag_removes))
            .buffer_unordered(ctx.in_flight())
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// `update` each item; returns the items OMI does not have, to be added.
    async fn updates(
        &self,
        ctx: &dyn PushContext,
        items: Vec<Delivery>,
        tag_removes: &[String],
    ) -> Result<Vec<Delivery>, StoreError> {
        let results: Vec<Result<Option<Delivery>, StoreError>> = stream::iter(items)
            .map(|item| self.update(ctx, item, tag_removes))
            .buffer_unordered(ctx.in_flight())
            .collect()
            .await;
        let mut not_found = Vec::new();
        for result in results {
            not_found.extend(result?);
        }
        Ok(not_found)
    }

    /// Returns the item when OMI does not have the contact, so it gets added (unless it is
    /// deleted at the source: then it is skipped).
    async fn update(
        &self,
        ctx: &dyn PushContext,
        item: Delivery,
        removed: &[String],
    ) -> Result<Option<Delivery>, StoreError> {
        let tag_removes = self.tag_removes(&item, removed);
        // Only an update that removes tags needs a payload of its own.
        let sent = if tag_removes.is_empty() {
            self.client.update(&item.payload).await
        } else {
            let mut payload: Value = serde_json::from_str(item.payload.get())
                .expect("a payload this process wrote parses");
            payload["tagRemoves"] = serde_json::json!(tag_removes);
            self.client.update(&payload_json(&payload)).await
        };
        match sent {
            Ok(()) => {
                ctx.ack(&[&item], Ack::UpdatedHeld).await?;
                Ok(None)
            }
            Err(e) if e.kind == FailureKind::NotFound && self.deleted(&item) => {
                let id = [item.contact_id.as_str()];
                ctx.clear_add_intent(&id).await?;
                ctx.skip(&[&item]).await?;
                Ok(None)
            }
            Err(e) if e.kind == FailureKind::NotFound => Ok(Some(item)),
            Err(e) => {
                ctx.fail(&[&item], &e).await?;
                Ok(None)
            }
        }
    }

    /// `addMany` one batch whose intent is on disk ([`OmiSink::push_chunk`]). A refused batch
    /// is never assumed to have created nothing: unless OMI refused the request as a whole
    /// before writing (see `client`), each record is first looked for with `update`, and
    /// only those OMI does not have are added again, in halves (their intent kept), until a
    /// bad record stands alone and becomes a dead letter.
    fn add<'a>(
        &'a self,
        ctx: &'a dyn PushContext,
        mut batch: Vec<Delivery>,
        tag_removes: &'a [String],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let refs: Vec<&Delivery> = batch.iter().collect();
            let payloads: Vec<&RawValue> = batch.iter().map(|i| &*i.payload).collect();
            match self.client.add_many(&payloads).await {
                Ok(()) => ctx.ack(&refs, Ack::Created).await,
                Err(e) if e.kind == FailureKind::Permanent => {
                    if e.maybe_applied {
                        batch = self.updates(ctx, batch, tag_removes).await?;
                        if batch.is_empty() {
                            return Ok(());
                        }
                    }
                    if batch.len() == 1 {
                        ctx.clear_add_intent(&[batch[0].contact_id.as_str()])
                            .await?;
                        return ctx.fail(&[&batch[0]], &e).await;
                    }
                    let right = batch.split_off(batch.len() / 2);
                    self.add(ctx, batch, tag_removes).await?;
                    self.add(ctx, right, tag_removes).await
                }
                Err(e) => {
                    if !e.maybe_applied {
                        let ids: Vec<&str> = batch.iter().map(|i| i.contact_id.as_str()).collect();
                        ctx.clear_add_intent(&ids).await?;
                    }
                    ctx.fail(&refs, &e).await
                }
            }
        })
    }
}
