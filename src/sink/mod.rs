//! The destinations behind one interface: [`SinkConfig`] (what a contact becomes there, no
//! I/O) and [`Sink`] (its protocol); each lives in its own folder. See docs/new-destination.md.

pub mod engagelab;
pub mod omi;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::config::Settings;
use crate::domain::Contact;
use crate::net::Gate;
use crate::store::{AddState, DeletionPlanner, Store, StoreError};

/// Every destination this build can push to, in the order their pushers start: one line
/// each, `None` when it is disabled in `settings`.
fn configured(settings: &Settings) -> Vec<Arc<dyn SinkConfig>> {
    [omi::config(settings), engagelab::config(settings)]
        .into_iter()
        .flatten()
        .collect()
}

pub use crate::domain::Destination;

/// What a contact should be at one destination.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// Send this payload (its hash decides whether it is new to the destination).
    Send(Value),
    /// Nothing to send: EngageLab with neither phone nor e-mail.
    Skip,
}

impl Target {
    /// BLAKE3 of the payload's JSON; `None` for a skip.
    pub fn hash(&self) -> Option<[u8; 32]> {
        match self {
            Self::Send(payload) => Some(payload_hash(payload)),
            Self::Skip => None,
        }
    }
}

pub fn payload_hash(payload: &Value) -> [u8; 32] {
    json_hash(&payload_json(payload))
}

/// A payload as it is sent and held until then: its compact JSON text. A pusher holds up to a
/// few thousand, and as `Value` trees they took about three times the memory
/// (docs/performance.md, "Round 4").
pub fn payload_json(payload: &Value) -> Box<RawValue> {
    serde_json::value::to_raw_value(payload).expect("JSON values serialize")
}

/// BLAKE3 of a payload's JSON text: [`payload_hash`] of the value it was written from.
pub fn json_hash(json: &RawValue) -> [u8; 32] {
    *blake3::hash(json.get().as_bytes()).as_bytes()
}

/// A destination as configured. It has no I/O, so the pass plans with it and a dry run
/// previews with it; [`SinkConfig::build`] makes the [`Sink`] that sends.
pub trait SinkConfig: Send + Sync + std::fmt::Debug {
    fn destination(&self) -> Destination;

    /// What `contact` becomes at this destination.
    fn target(&self, contact: &Contact) -> Target;

    /// Whether a contact deleted at the source becomes something else here (default: no;
    /// EngageLab has no delete). Only then are deleted contacts planned again.
    fn tracks_deletions(&self) -> bool {
        false
    }

    /// What `contact`, deleted at the source, becomes here (default: what it was).
    fn deleted_target(&self, contact: &Contact) -> Target {
        self.target(contact)
    }

    /// The settings that shape payloads, with a version to bump when the payload code
    /// changes: when this changes, every contact's plan is computed again.
    fn payload_settings(&self) -> Value;

    /// The client and protocol that send, on the shared HTTP client.
    fn build(&self, store: &Store, http: reqwest::Client, max_body: usize) -> Arc<dyn Sink>;
}

/// One destination's protocol: its requests, how it batches, what its answers mean, and how
/// it reconciles an answer that leaves the outcome open. The generic pusher (`sync::push`)
/// owns the outbox, chunking, the in-flight bound, retries, pauses and statistics, and hands
/// each chunk to [`Sink::push`] with a [`PushContext`] to record outcomes through.
pub trait Sink: Send + Sync {
    fn destination(&self) -> Destination;

    /// The gate every request to this destination goes through.
    fn gate(&self) -> &Gate;

    /// The most deliveries one request carries; the pusher loads chunks of a few of these.
    fn batch_size(&self) -> usize;

    /// Run once before pushing starts (default: nothing to do).
    fn prepare(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }

    /// Send `deliveries` (all due, each with the payload planned for it) and record each one's
    /// outcome through `ctx`. At most `ctx.in_flight()` requests under way. Only a store
    /// failure is an error; a failed send is an outcome.
    fn push<'a>(
        &'a self,
        ctx: &'a dyn PushContext,
        deliveries: Vec<Delivery>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// A due delivery handed to a destination: the payload planned for one contact, its hash, and
/// what is known of the contact there.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub contact_id: String,
    /// The payload's JSON ([`payload_json`]).
    pub payload: Box<RawValue>,
    pub hash: [u8; 32],
    /// Failed attempts so far (the pusher's backoff reads it).
    pub attempts: u32,
    /// OMI: whether it may already hold the contact.
    pub add_state: Option<AddState>,
    /// The destination's own id of the contact (EngageLab's EUID).
    pub remote_id: Option<String>,
}

/// What an acknowledged request did, for the statistics and the facts kept about contacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// The destination created the contacts; it now holds them.
    Created,
    /// The destination changed contacts it says it holds.
    UpdatedHeld,
    /// A write that says nothing about whether the contact was created (keyed by a remote id).
    Written,
}

/// What the pusher offers a destination while it pushes a chunk. Outcomes name the payload
/// hash they were for; facts about contacts (add intent, remote ids) are kept whatever the plan.
pub trait PushContext: Send + Sync {
    /// How many requests to have under way at once (waiting at the gate or sent). The gate
    /// holds those sent to its adaptive limit, so offering this many keeps it busy.
    fn in_flight(&self) -> usize;

    /// True once the destination is held (credentials refused, wrong `base_url`): sending more
    /// would only fail the same way.
    fn held(&self) -> bool;

    /// The destination holds these deliveries' payloads.
    fn ack<'a>(
        &'a self,
        deliveries: &'a [&'a Delivery],
        ack: Ack,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// A failed attempt: deferred, retried after a backoff, or a dead letter, by `error.kind`.
    fn fail<'a>(
        &'a self,
        deliveries: &'a [&'a Delivery],
        error: &'a PushError,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// An add is about to be sent: durable before the request leaves, so after a crash the
    /// contact is looked for before it is added again.
    fn mark_add_intent<'a>(
        &'a self,
        contact_ids: &'a [&'a str],
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Nothing is to be sent for these deliveries' payloads after all (OMI: a deleted
    /// contact it never held is not created just to be tagged).
    fn skip<'a>(&'a self, deliveries: &'a [&'a Delivery]) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The add surely created nothing.
    fn clear_add_intent<'a>(
        &'a self,
        contact_ids: &'a [&'a str],
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Remember the ids the destination assigned (counted as registered).
    fn set_remote_ids<'a>(
        &'a self,
        ids: &'a [(&'a str, String)],
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Forget a remote id the destination no longer knows, if it is still `stale`.
    fn forget_remote_id<'a>(
        &'a self,
        contact_id: &'a str,
        stale: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// Builds every enabled destination's payload for a contact.
#[derive(Debug, Clone)]
pub struct Payloads {
    configs: Vec<Arc<dyn SinkConfig>>,
}

impl Payloads {
    pub fn new(settings: &Settings) -> Self {
        Self {
            configs: configured(settings),
        }
    }

    pub fn enabled(&self) -> Vec<Destination> {
        self.configs.iter().map(|c| c.destination()).collect()
    }

    /// A digest of the settings that shape `destination`'s payloads: when it changes, every
    /// contact's plan for that destination must be computed again.
    pub fn fingerprint(&self, destination: Destination) -> String {
        let settings = self
            .config(destination)
            .map_or(Value::Null, |c| c.payload_settings());
        blake3::hash(settings.to_string().as_bytes())
            .to_hex()
            .to_string()
    }

    /// What `contact` becomes at `destination`, `deleted` at the source or not; nothing is
    /// sent to a disabled one.
    pub fn target(&self, destination: Destination, contact: &Contact, deleted: bool) -> Target {
        self.config(destination).map_or(Target::Skip, |c| {
            if deleted {
                c.deleted_target(contact)
            } else {
                c.target(contact)
            }
        })
    }

    /// The enabled destinations a deletion at the source changes something for.
    pub fn tracking_deletions(&self) -> Vec<Destination> {
        self.configs
            .iter()
            .filter(|c| c.tracks_deletions())
            .map(|c| c.destination())
            .collect()
    }

    /// The sinks of the enabled destinations.
    pub fn sinks(
        &self,
        store: &Store,
        http: &reqwest::Client,
        max_body: usize,
    ) -> Vec<Arc<dyn Sink>> {
        self.configs
            .iter()
            .map(|c| c.build(store, http.clone(), max_body))
            .collect()
    }

    fn config(&self, destination: Destination) -> Option<&dyn SinkConfig> {
        self.configs
            .iter()
            .find(|c| c.destination() == destination)
            .map(Arc::as_ref)
    }
}

/// A pass that marks contacts deleted plans them with their deleted targets.
impl DeletionPlanner for Payloads {
    fn destinations(&self) -> Vec<Destination> {
        self.tracking_deletions()
    }

    fn deleted_hash(&self, destination: Destination, contact: &Contact) -> Option<[u8; 32]> {
        self.target(destination, contact, true).hash()
    }
}

/// Send through a destination's gate; a transport failure comes back classified.
async fn send(
    destination: Destination,
    gate: &Gate,
    request: reqwest::RequestBuilder,
) -> Result<crate::net::Answer, PushError> {
    gate.send(request)
        .await
        .map_err(|e| PushError::transport(destination, e))
}

/// What the pusher should do about a failed destination call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Try again later (connection trouble, timeouts, 5xx, "internal error").
    Transient,
    /// 429: hold the whole destination for `retry_after`, then send the same again.
    RateLimited,
    /// Credentials refused even after a renewal: pause the destination.
    Auth,
    /// The destination answers as if `base_url` were wrong (404, a redirect): one
    /// configuration problem, not one per record. Pause the destination like `Auth`.
    Misconfigured,
    /// The destination will never accept this record as it is: a dead letter.
    Permanent,
    /// OMI: `update` of a contact it does not have.
    NotFound,
    /// EngageLab: the EUID is empty or no longer valid; register again.
    InvalidId,
}

/// A classified failure of one destination call. The message never holds a secret.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct PushError {
    pub kind: FailureKind,
    pub message: String,
    pub retry_after: Option<Duration>,
    /// Whether the request may have taken effect even though no success came back
    /// (timeout, reset after sending, 5xx). False only when it surely did not.
    pub maybe_applied: bool,
}

impl PushError {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retry_after: None,
            maybe_applied: false,
        }
    }

    /// A transport failure: only a failed connect is sure not to have reached the server.
    /// An answer over `http.max_body` was sent after the request was handled, so it may
    /// have taken effect; it is retried like any unreadable answer.
    pub fn transport(destination: Destination, error: crate::net::BodyError) -> Self {
        let (maybe_applied, text) = match error {
            crate::net::BodyError::Transport(e) => (
                !e.is_connect(),
                format!(
                    "{destination} unreachable: {}",
                    crate::net::describe_reqwest(e)
                ),
            ),
            too_large => (true, format!("{destination} answer refused: {too_large}")),
        };
        Self {
            maybe_applied,
            ..Self::new(FailureKind::Transient, text)
        }
    }

    /// A non-2xx answer, classified by its status alone: callers that can read more from the
    /// body (a business code) do so first.
    pub fn http(
        destination: Destination,
        status: u16,
        body: &str,
        retry_after: Option<Duration>,
    ) -> Self {
        let kind = match status {
            429 => FailureKind::RateLimited,
            401 | 403 => FailureKind::Auth,
            300..=399 | 404 => return Self::misconfigured(destination, status, body),
            // The server gave up waiting for the request: sending it again is the remedy.
            408 => FailureKind::Transient,
            400..=499 => FailureKind::Permanent,
            // 5xx, and statuses no API should send (1xx, a 2xx passed here, 6xx+): try again.
            _ => FailureKind::Transient,
        };
        Self {
            retry_after,
            // Only a refusal (429, 401/403, the other 4xx) is sure not to have been applied;
            // a 408 is counted as possibly applied, which costs at most a lookup.
            maybe_applied: kind == FailureKind::Transient,
            ..Self::new(
                kind,
                format!(
                    "{destination} answered HTTP {status}: {}",
                    crate::net::snippet(body)
                ),
            )
        }
    }

    /// Whether `status` alone says what an answer means, whatever its body: a rate limit, a
    /// server failure, or a wrong `base_url` (404, a redirect). Such answers go to
    /// [`PushError::http`] before any body is read.
    pub fn status_decides(status: u16) -> bool {
        matches!(status, 408 | 429 | 500..=599 | 300..=399 | 404)
    }

    /// A 404 or a redirect where the API documents neither: the URL is wrong, not the record.
    pub fn misconfigured(destination: Destination, status: u16, body: &str) -> Self {
        Self::new(
            FailureKind::Misconfigured,
            format!(
                "{destination} answered HTTP {status} where the API has an endpoint; check \
                 {destination}.base_url: {}",
                crate::net::snippet(body)
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Every status maps to a failure kind without panicking, and only a refusal (4xx
        /// other than 408) is taken as surely not applied.
        #[test]
        fn any_status_maps_to_a_failure(status in 0u16..=999, body in ".{0,300}") {
            let e = PushError::http(Destination::Omi, status, &body, None);
            let expected = match status {
                429 => FailureKind::RateLimited,
                401 | 403 => FailureKind::Auth,
                300..=399 | 404 => FailureKind::Misconfigured,
                408 => FailureKind::Transient,
                400..=499 => FailureKind::Permanent,
                _ => FailureKind::Transient,
            };
            prop_assert_eq!(e.kind, expected);
            prop_assert_eq!(e.maybe_applied, expected == FailureKind::Transient);
            prop_assert!(e.message.chars().count() < 400);
        }
    }

    #[test]
    fn misconfiguration_points_at_the_base_url() {
        for status in [301, 302, 307, 308, 404] {
            let e = PushError::http(Destination::Engagelab, status, "<html>", None);
            assert_eq!(e.kind, FailureKind::Misconfigured, "{status}");
            assert!(e.message.contains("engagelab.base_url"), "{}", e.message);
        }
    }
}
