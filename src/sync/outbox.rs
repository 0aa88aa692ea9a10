//! Keeping the outbox's plans in step with the settings that shape payloads.

use crate::sink::Payloads;
use crate::store::{Store, StoreError};

/// Contacts re-planned per transaction while walking the table.
const CHUNK: u32 = 500;

/// Recompute every live contact's plan for each destination whose payload settings changed
/// since the last run (tags edited, destination newly enabled). Returns contacts re-planned.
pub async fn refresh_plans(store: &Store, payloads: &Payloads) -> Result<u64, StoreError> {
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
