//! Keeping the outbox's plans in step with the settings that shape payloads.

use crate::sink::{Destination, Payloads};
use crate::store::{Store, StoreError};

/// Contacts re-planned per transaction while walking the table.
const CHUNK: u32 = 500;

/// Recompute every live contact's plan for each destination whose payload settings changed
/// since the last run (tags edited, destination newly enabled, deletion policy changed), and
/// every deleted contact's where a deletion changes what the destination holds. Returns
/// contacts re-planned.
pub async fn refresh_plans(store: &Store, payloads: &Payloads) -> Result<u64, StoreError> {
    let mut replanned = 0;
    let tracking = payloads.tracking_deletions();
    for destination in payloads.enabled() {
        let key = format!("payload_settings.{destination}");
        let fingerprint = payloads.fingerprint(destination);
        if store.meta().get(&key).await?.as_deref() == Some(fingerprint.as_str()) {
            continue;
        }
        // Deleted contacts only where a deletion reaches the destination: elsewhere they are
        // left as they were when deleted.
        for deleted in [false, true] {
            if deleted && !tracking.contains(&destination) {
                continue;
            }
            replanned += replan_all(store, payloads, destination, deleted).await?;
        }
        store.meta().set(&[(&key, &fingerprint)]).await?;
        tracing::info!(destination = %destination, "payload settings changed; deliveries re-planned");
    }
    Ok(replanned)
}

/// Re-plan `destination` for every live contact, or every deleted one; returns how many.
async fn replan_all(
    store: &Store,
    payloads: &Payloads,
    destination: Destination,
    deleted: bool,
) -> Result<u64, StoreError> {
    let outbox = store.outbox(destination);
    let mut replanned = 0;
    let mut after = 0;
    loop {
        let contacts = store.contacts().after(after, CHUNK, deleted).await?;
        let Some(&(last, _)) = contacts.last() else {
            break;
        };
        after = last;
        let plans: Vec<(&str, Option<[u8; 32]>)> = contacts
            .iter()
            .map(|(_, c)| {
                let hash = payloads.target(destination, c, deleted).hash();
                (c.id.as_str(), hash)
            })
            .collect();
        outbox.replan(&plans).await?;
        replanned += contacts.len() as u64;
    }
    Ok(replanned)
}
