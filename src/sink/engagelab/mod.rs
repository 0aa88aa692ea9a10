//! EngageLab MA: EUIDs from `POST /v1/user/register`, then `POST /v1/user/contact` keyed by
//! EUID; HTTP Basic auth.

mod client;
mod payload;
mod sink;

use std::sync::Arc;

use serde_json::{Value, json};

use super::{Destination, Sink, SinkConfig, Target};
use crate::config::{EngagelabSettings, Settings};
use crate::domain::Contact;
use crate::store::Store;

pub use client::EngagelabClient;
pub use payload::contact_payload;

/// EngageLab as configured, when it is enabled.
pub(super) fn config(settings: &Settings) -> Option<Arc<dyn SinkConfig>> {
    let settings = settings.engagelab.clone()?;
    Some(Arc::new(EngagelabConfig { settings }))
}

#[derive(Debug)]
struct EngagelabConfig {
    settings: EngagelabSettings,
}

impl SinkConfig for EngagelabConfig {
    fn destination(&self) -> Destination {
        Destination::Engagelab
    }

    fn target(&self, contact: &Contact) -> Target {
        contact_payload(contact).map_or(Target::Skip, Target::Send)
    }

    fn payload_settings(&self) -> Value {
        json!({"v": 1})
    }

    fn build(&self, _store: &Store, http: reqwest::Client, max_body: usize) -> Arc<dyn Sink> {
        Arc::new(sink::EngagelabSink::new(EngagelabClient::new(
            &self.settings,
            http,
            max_body,
        )))
    }
}
