//! OMI CRM: `addMany` for contacts it has never acknowledged, `update` by `refId` for the
//! rest, bearer token (static or from `GET /api/auth?apiKey=`). Under
//! `on_source_delete = "tag"` a deleted contact's payload carries `deleted_tag`.

mod client;
mod payload;
mod sink;
mod tags;

use std::sync::Arc;

use serde_json::{Value, json};

use super::{Destination, Sink, SinkConfig, Target};
use crate::config::{OmiSettings, Settings};
use crate::domain::Contact;
use crate::store::Store;

pub use client::OmiClient;
pub use payload::payload;

/// OMI as configured, when it is enabled.
pub(super) fn config(settings: &Settings) -> Option<Arc<dyn SinkConfig>> {
    let settings = settings.omi.clone()?;
    Some(Arc::new(OmiConfig { settings }))
}

#[derive(Debug)]
struct OmiConfig {
    settings: OmiSettings,
}

impl SinkConfig for OmiConfig {
    fn destination(&self) -> Destination {
        Destination::Omi
    }

    fn target(&self, contact: &Contact) -> Target {
        Target::Send(payload(contact, &self.settings.tags))
    }

    fn tracks_deletions(&self) -> bool {
        self.settings.deletion_tag().is_some()
    }

    /// The ordinary payload with `deleted_tag` among its tags: a new hash, so the deletion
    /// travels through the outbox like any change (docs/delivery.md#deletions).
    fn deleted_target(&self, contact: &Contact) -> Target {
        let Some(deleted_tag) = self.settings.deletion_tag() else {
            return self.target(contact);
        };
        let mut tags = self.settings.tags.clone();
        tags.push(deleted_tag.to_owned());
        Target::Send(payload(contact, &tags))
    }

    /// Under `on_source_delete = "ignore"` exactly what it always was, so upgrading re-plans
    /// nothing; the deleted tag takes part only while it is sent.
    fn payload_settings(&self) -> Value {
        match self.settings.deletion_tag() {
            None => json!({"v": 1, "tags": self.settings.tags}),
            Some(deleted_tag) => {
                json!({"v": 1, "tags": self.settings.tags, "deleted_tag": deleted_tag})
            }
        }
    }

    fn build(&self, store: &Store, http: reqwest::Client, max_body: usize) -> Arc<dyn Sink> {
        Arc::new(sink::OmiSink::new(
            OmiClient::new(&self.settings, http, max_body),
            store.clone(),
            self.settings.tags.clone(),
            self.settings.deletion_tag().map(str::to_owned),
            self.settings.batch_size as usize,
        ))
    }
}
