//! OMI CRM: `addMany` for contacts it has never acknowledged, `update` by `refId` for the
//! rest, bearer token (static or from `GET /api/auth?apiKey=`).

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

    fn payload_settings(&self) -> Value {
        json!({"v": 1, "tags": self.settings.tags})
    }

    fn build(&self, store: &Store, http: reqwest::Client, max_body: usize) -> Arc<dyn Sink> {
        Arc::new(sink::OmiSink::new(
            OmiClient::new(&self.settings, http, max_body),
            store.clone(),
            self.settings.tags.clone(),
            self.settings.batch_size as usize,
        ))
    }
}
