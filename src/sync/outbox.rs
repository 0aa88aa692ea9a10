//! Keeping the outbox's plans in step with the settings that shape payloads.

use crate::sink::Payloads;
use crate::store::{Store, StoreError};

/// Contacts re-planned per transaction while walking the table.
const CHUNK: u32 = 500;

/// Meta keys: the OMI tags last configured, and the tags that left `omi.tags` since.
const OMI_TAGS: &str = "omi.tags";
const OMI_TAG_REMOVES: &str = "omi.tag_removes";

/// Recompute every live contact's plan for each destination whose payload settings changed
/// since the last run (tags edited, destination newly enabled). Returns contacts re-planned.
pub async fn refresh_plans(store: &Store, payloads: &Payloads) -> Result<u64, StoreError> {
    if let Some(tags) = payloads.omi_tags() {
        remember_removed_tags(store, tags).await?;
    }
    let mut replanned = 0;
    for destination in payloads.enabled() {
        let key = format!("payload_settings.{destination}");
        let fingerprint = payloads.fingerprint(destination);
        if store.meta().get(&key).await?.as_deref() == Some(fingerprint.as_str()) {
            continue;
        }
        let outbox = store.outbox(destination);
        let mut after = String::new();
        loop {
            let contacts = store.contacts().after(&after, CHUNK).await?;
            let Some(last) = contacts.last() else { break };
            after = last.id.as_str().to_owned();
            let plans: Vec<(&str, Option<[u8; 32]>)> = contacts
                .iter()
                .map(|c| (c.id.as_str(), payloads.target(destination, c).hash()))
                .collect();
            outbox.replan(&plans).await?;
            replanned += contacts.len() as u64;
        }
        store.meta().set(&[(&key, &fingerprint)]).await?;
        tracing::info!(destination = %destination, "payload settings changed; deliveries re-planned");
    }
    Ok(replanned)
}

/// OMI's `tags` only ever add, so a tag that leaves `omi.tags` must be taken away with
/// `tagRemoves`. Those tags are kept here until they are configured again; the tag change
/// itself changes every payload hash, so every contact is sent one update carrying them.
async fn remember_removed_tags(store: &Store, tags: &[String]) -> Result<(), StoreError> {
    let previous = meta_list(store, OMI_TAGS).await?;
    let mut removes = meta_list(store, OMI_TAG_REMOVES).await?;
    let newly_removed: Vec<String> = previous
        .into_iter()
        .filter(|t| !removes.contains(t))
        .collect();
    removes.extend(newly_removed);
    removes.retain(|t| !tags.contains(t));
    let tags = serde_json::to_string(tags).expect("strings");
    let removes = serde_json::to_string(&removes).expect("strings");
    store
        .meta()
        .set(&[(OMI_TAGS, &tags), (OMI_TAG_REMOVES, &removes)])
        .await
}

/// The tags every OMI `update` removes (see [`remember_removed_tags`]).
pub async fn omi_tag_removes(store: &Store) -> Result<Vec<String>, StoreError> {
    meta_list(store, OMI_TAG_REMOVES).await
}

/// A list of strings kept in `meta` as JSON; empty when absent.
async fn meta_list(store: &Store, key: &str) -> Result<Vec<String>, StoreError> {
    Ok(store
        .meta()
        .get(key)
        .await?
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default())
}
