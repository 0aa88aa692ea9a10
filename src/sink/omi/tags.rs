//! Tags that left `omi.tags`: OMI's `tags` only ever add, so a removed tag must be taken away
//! with `tagRemoves`. They are kept in the store's `meta` until configured again.

use crate::store::{self, Store, StoreError};

/// Meta keys: the OMI tags last configured, and the tags that left `omi.tags` since.
const OMI_TAGS: &str = "omi.tags";
const OMI_TAG_REMOVES: &str = "omi.tag_removes";

/// Remember the tags that left `omi.tags` since the last run. The tag change itself changes
/// every payload hash, so every contact is sent one update carrying them.
pub(super) async fn remember_removed(store: &Store, tags: &[String]) -> Result<(), StoreError> {
    let previous = meta_list(store, OMI_TAGS).await?;
    let mut removes = meta_list(store, OMI_TAG_REMOVES).await?;
    let newly_removed: Vec<String> = previous
        .into_iter()
        .filter(|t| !removes.contains(t))
        .collect();
    removes.extend(newly_removed);
    removes.retain(|t| !tags.contains(t));
    let mut tx = store.begin().await?;
    store::set_meta(
        &mut tx,
        OMI_TAGS,
        &serde_json::to_string(tags).expect("strings"),
    )
    .await?;
    store::set_meta(
        &mut tx,
        OMI_TAG_REMOVES,
        &serde_json::to_string(&removes).expect("strings"),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The tags every OMI `update` removes (see [`remember_removed`]).
pub(super) async fn removes(store: &Store) -> Result<Vec<String>, StoreError> {
    meta_list(store, OMI_TAG_REMOVES).await
}

/// A list of strings kept in `meta` as JSON; empty when absent.
async fn meta_list(store: &Store, key: &str) -> Result<Vec<String>, StoreError> {
    Ok(store::get_meta(store, key)
        .await?
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default())
}
