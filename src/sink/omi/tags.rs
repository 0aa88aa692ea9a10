//! Tags that left `omi.tags`: OMI's `tags` only ever add, so a removed tag must be taken away
//! with `tagRemoves`. They are kept in the store's `meta` until configured again.

use crate::store::{Store, StoreError};

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
    let tags = serde_json::to_string(tags).expect("strings serialize");
    let removes = serde_json::to_string(&removes).expect("strings serialize");
    store
        .meta()
        .set(&[(OMI_TAGS, &tags), (OMI_TAG_REMOVES, &removes)])
        .await
}

/// The tags every OMI `update` removes (see [`remember_removed`]).
pub(super) async fn removes(store: &Store) -> Result<Vec<String>, StoreError> {
    meta_list(store, OMI_TAG_REMOVES).await
}

/// A list of strings kept in `meta` as JSON; empty when absent, [`StoreError::Corrupt`] when
/// it is not such a list.
async fn meta_list(store: &Store, key: &str) -> Result<Vec<String>, StoreError> {
    let Some(text) = store.meta().get(key).await? else {
        return Ok(Vec::new());
    };
    serde_json::from_str(&text).map_err(|_| StoreError::Corrupt {
        table: "meta",
        column: "value".to_owned(),
        key: key.to_owned(),
    })
}
