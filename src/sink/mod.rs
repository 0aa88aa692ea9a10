//! The destinations: OMI CRM and EngageLab MA. Each builds the payload a contact becomes
//! there; the outbox compares payload hashes so only real changes are sent.

pub mod engagelab;
pub mod omi;

use std::time::Duration;

use crate::config::Settings;
use crate::domain::Contact;
pub use crate::domain::Destination;

/// What a contact should be at one destination.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// Send this payload (its hash decides whether it is new to the destination).
    Send(serde_json::Value),
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

pub fn payload_hash(payload: &serde_json::Value) -> [u8; 32] {
    *blake3::hash(&serde_json::to_vec(payload).expect("JSON values serialize")).as_bytes()
}

/// Builds every enabled destination's payload for a contact.
#[derive(Debug, Clone)]
pub struct Payloads {
    omi_tags: Option<Vec<String>>,
    engagelab: bool,
}

impl Payloads {
    pub fn new(settings: &Settings) -> Self {
        Self {
            omi_tags: settings.omi.as_ref().map(|omi| omi.tags.clone()),
            engagelab: settings.engagelab.is_some(),
        }
    }

    /// The tags every OMI contact carries; `None` when OMI is off.
    pub fn omi_tags(&self) -> Option<&[String]> {
        self.omi_tags.as_deref()
    }

    pub fn enabled(&self) -> Vec<Destination> {
        let mut out = Vec::new();
        if self.omi_tags.is_some() {
            out.push(Destination::Omi);
        }
        if self.engagelab {
            out.push(Destination::Engagelab);
        }
        out
    }

    /// A digest of the settings that shape `destination`'s payloads: when it changes, every
    /// contact's plan for that destination must be computed again.
    pub fn fingerprint(&self, destination: Destination) -> String {
        let settings = match destination {
            Destination::Omi => serde_json::json!({"v": 1, "tags": self.omi_tags}),
            Destination::Engagelab => serde_json::json!({"v": 1}),
        };
        blake3::hash(settings.to_string().as_bytes())
            .to_hex()
            .to_string()
    }

    pub fn target(&self, destination: Destination, contact: &Contact) -> Target {
        match destination {
            Destination::Omi => Target::Send(omi::payload(
                contact,
                self.omi_tags.as_deref().unwrap_or_default(),
            )),
            Destination::Engagelab => {
                engagelab::contact_payload(contact).map_or(Target::Skip, Target::Send)
            }
        }
    }
}

/// Send through a destination's gate; a transport failure comes back classified.
async fn send(
    destination: Destination,
    gate: &crate::net::Gate,
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
            400..=499 => FailureKind::Permanent,
            // 5xx, and statuses no API should send (1xx, a 2xx passed here, 6xx+): try again.
            _ => FailureKind::Transient,
        };
        Self {
            retry_after,
            // Only a refusal (429, 4xx) is sure not to have been applied.
            maybe_applied: !matches!(status, 400..=499),
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
        /// Every status maps to a failure kind without panicking, and only a refusal (4xx)
        /// is taken as surely not applied.
        #[test]
        fn any_status_maps_to_a_failure(status in 0u16..=999, body in ".{0,300}") {
            let e = PushError::http(Destination::Omi, status, &body, None);
            let expected = match status {
                429 => FailureKind::RateLimited,
                401 | 403 => FailureKind::Auth,
                300..=399 | 404 => FailureKind::Misconfigured,
                400..=499 => FailureKind::Permanent,
                _ => FailureKind::Transient,
            };
            prop_assert_eq!(e.kind, expected);
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
