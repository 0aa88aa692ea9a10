//! OMI HTTP calls: token handling, the response envelope, error classification.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::config::{OmiAuth, OmiSettings, Secret};
use crate::net::{self, Bearer, Gate};
use crate::sink::{Destination, FailureKind, PushError};

const DEST: Destination = Destination::Omi;

/// OMI documents 24 h tokens (the token cache renews a minute early).
const TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// `{"status_code": 9999 | -9999, "payload": …}`: success is judged here, not by HTTP status.
#[derive(Deserialize)]
struct Envelope {
    status_code: i64,
    #[serde(default)]
    payload: Value,
}

const STATUS_OK: i64 = 9999;
const STATUS_FAIL: i64 = -9999;

/// An `_id` shaped like OMI's (a 24-hex object id) that no contact has: the pre-flight probe
/// reads it.
const PROBE_ID: &str = "000000000000000000000000";

pub struct OmiClient {
    http: reqwest::Client,
    base: String,
    /// An API key is traded for a token at `GET /api/auth`.
    token: Bearer<Secret>,
    gate: Gate,
}

impl OmiClient {
    pub fn new(settings: &OmiSettings, http: reqwest::Client, max_body: usize) -> Self {
        Self {
            http,
            base: settings.base_url.as_str().trim_end_matches('/').to_owned(),
            token: match &settings.auth {
                OmiAuth::Token(token) => Bearer::Fixed(token.into()),
                OmiAuth::ApiKey(key) => Bearer::obtained("omi", key.clone()),
            },
            gate: Gate::new(
                "omi",
                settings.requests_per_second,
                settings.max_in_flight,
                max_body,
            ),
        }
    }

    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// `POST /api/v2/contact/addMany`. OMI does not say which record of a failed batch was bad.
    pub async fn add_many(&self, contacts: &[&RawValue]) -> Result<(), PushError> {
        // Borrowed, so a batch's payloads are written into the body without being copied first.
        #[derive(Serialize)]
        struct AddMany<'a> {
            data: &'a [&'a RawValue],
        }
        self.call("/api/v2/contact/addMany", &AddMany { data: contacts })
            .await
            .map(drop)
    }

    /// `POST /api/v2/contact/update`, addressed by the payload's `refId`.
    pub async fn update(&self, contact: &RawValue) -> Result<(), PushError> {
        self.call("/api/v2/contact/update", &contact)
            .await
            .map(drop)
    }

    /// A request that writes nothing, for the pre-flight check: `GET /api/v2/contact/get/:id`
    /// of an id no contact has. With an API key the token is obtained first, which checks the
    /// key; an answer about the id itself (not found, invalid) means the token got through.
    pub async fn probe(&self) -> Result<(), PushError> {
        let url = format!("{}/api/v2/contact/get/{PROBE_ID}", self.base);
        let answer = self
            .authorized(|token| self.http.get(&url).bearer_auth(token.expose_secret()))
            .await;
        match answer {
            Err(e) if !matches!(e.kind, FailureKind::NotFound | FailureKind::Permanent) => Err(e),
            _ => Ok(()),
        }
    }

    /// One authorized POST.
    async fn call(&self, path: &str, body: &impl Serialize) -> Result<Value, PushError> {
        let url = format!("{}{path}", self.base);
        self.authorized(|token| {
            self.http
                .post(&url)
                .bearer_auth(token.expose_secret())
                .json(body)
        })
        .await
    }

    /// Send `request` with the bearer token and classify the answer; a 401 renews an API-key
    /// token once and tries again.
    async fn authorized(
        &self,
        request: impl Fn(SecretString) -> reqwest::RequestBuilder,
    ) -> Result<Value, PushError> {
        let answer = self
            .token
            .send(
                |key| self.fetch_token(key),
                |token| crate::sink::send(DEST, &self.gate, request(token)),
            )
            .await?;
        match answer.status {
            401 | 403 => Err(PushError::new(
                FailureKind::Auth,
                format!(
                    "OMI refused the credentials (HTTP {}): {}",
                    answer.status,
                    net::snippet(&answer.body)
                ),
            )),
            200..=299 => judge(&answer.body),
            // OMI answers an unknown contact with an envelope; a 404 without one is a
            // wrong base_url, and never a success whatever the body says.
            404 => match judge(&answer.body) {
                Err(e) if is_envelope(&answer.body) => Err(e),
                _ => Err(PushError::misconfigured(DEST, 404, &answer.body)),
            },
            status => Err(PushError::http(
                DEST,
                status,
                &answer.body,
                answer.retry_after,
            )),
        }
    }

    /// `GET /api/auth?apiKey=…` → `payload.access_token`, documented to live 24 hours.
    async fn fetch_token(&self, key: &Secret) -> Result<(SecretString, Duration), PushError> {
        let request = self
            .http
            .get(format!("{}/api/auth", self.base))
            .query(&[("apiKey", key.expose_secret())]);
        let answer = crate::sink::send(DEST, &self.gate, request).await?;
        // The auth endpoint either hands out a token or refuses, whatever shape the refusal
        // takes (400, 401, 403, a -9999 envelope, no token, an unreadable page): each pauses
        // OMI instead of failing records one by one into dead letters. Only the transport's
        // own failures are retried, and a 404 or a redirect points at the base URL.
        let refused = |detail: &str| {
            PushError::new(
                FailureKind::Auth,
                format!("OMI refused the API key: {}", net::snippet(detail)),
            )
        };
        match answer.status {
            200..=299 => {}
            status if PushError::status_decides(status) => {
                return Err(PushError::http(
                    DEST,
                    status,
                    &answer.body,
                    answer.retry_after,
                ));
            }
            status => {
                return Err(refused(&format!("HTTP {status}: {}", answer.body)));
            }
        }
        let payload = judge(&answer.body).map_err(|e| refused(&e.message))?;
        let token = payload
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| refused("the answer has no payload.access_token"))?;
        Ok((SecretString::from(token.to_owned()), TOKEN_LIFETIME))
    }
}

/// Success is `status_code == 9999` with a payload that says so: not `false`, not null, no
/// `error`, no `"status": "fail"`, no `"success": false`. Anything else is a failure; what
/// cannot be read, or says neither success nor failure, may have been applied.
fn judge(text: &str) -> Result<Value, PushError> {
    let unsure = |why: &str| PushError {
        maybe_applied: true,
        ..PushError::new(
            FailureKind::Transient,
            format!("OMI sent {why}: {}", net::snippet(text)),
        )
    };
    let envelope: Envelope =
        serde_json::from_str(text).map_err(|e| unsure(&format!("an unreadable answer ({e})")))?;
    let payload = envelope.payload;
    match envelope.status_code {
        STATUS_OK if payload.is_null() => Err(unsure("a success code without a payload")),
        STATUS_OK if says_success(&payload) => Ok(payload),
        STATUS_OK | STATUS_FAIL => {
            let (code, message) = failure_detail(&payload);
            let kind = classify(&code);
            Err(PushError {
                // OMI does not say which records of a refused `addMany` were written, nor
                // whether an internal error came before or after the write: only the
                // request-shape refusals below are sure to have written nothing.
                maybe_applied: matches!(kind, FailureKind::Permanent | FailureKind::Transient)
                    && !REJECTED_BEFORE_WRITE.contains(&code.as_str()),
                ..PushError::new(
                    kind,
                    format!("OMI error {code}: {}", net::snippet(&message)),
                )
            })
        }
        other => Err(unsure(&format!(
            "status_code {other}, neither success nor failure"
        ))),
    }
}

/// A 9999 payload that does not contradict the status code.
fn says_success(payload: &Value) -> bool {
    let error = payload.get("error").is_some_and(|e| !e.is_null());
    let failed = payload.get("status").and_then(Value::as_str) == Some("fail");
    let unsuccessful = payload
        .get("success")
        .is_some_and(|s| *s != Value::Bool(true));
    *payload != Value::Bool(false) && !error && !failed && !unsuccessful
}

/// Whether `text` is an OMI envelope at all (it carries a numeric `status_code`).
fn is_envelope(text: &str) -> bool {
    serde_json::from_str::<Envelope>(text).is_ok()
}

/// Refusals of a request as a whole, on its shape, before any record in it is looked at: the
/// body is not the documented `{"data": [...]}`, or the batch is over OMI's size limit.
/// Every other refusal of an `addMany` is taken to have maybe written some of its records.
const REJECTED_BEFORE_WRITE: [&str; 2] = ["request_invalid", "batch_size_exceeded"];

/// The error code and message of a failure payload: `{"status":"fail","error":"code",
/// "message":"…"}`, or `{"error": {…}}` from addMany.
fn failure_detail(payload: &Value) -> (String, String) {
    let error = payload.get("error");
    let code = match error {
        Some(Value::String(code)) => code.clone(),
        Some(Value::Object(inner)) => inner
            .get("code")
            .or_else(|| inner.get("error"))
            .map(|c| c.as_str().map_or_else(|| c.to_string(), str::to_owned))
            .unwrap_or_else(|| "error".to_owned()),
        _ => "unknown".to_owned(),
    };
    let message = payload
        .get("message")
        .or_else(|| error.and_then(|e| e.get("message")))
        .and_then(Value::as_str)
        .map_or_else(|| payload.to_string(), str::to_owned);
    (code, message)
}

/// OMI documents one business error code; the rest is inferred from the code's words.
fn classify(code: &str) -> FailureKind {
    let code = code.to_ascii_lowercase();
    if code.contains("not_found") || code.contains("not_exist") || code.contains("notfound") {
        FailureKind::NotFound
    } else if code.contains("unauthorized") || code.contains("token") || code.contains("auth") {
        FailureKind::Auth
    } else if code.contains("internal") || code.contains("server_error") || code.contains("timeout")
    {
        FailureKind::Transient
    } else {
        // phone_or_email_assigned_on_other_contact, validation errors, unknown codes.
        FailureKind::Permanent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_needs_status_code_and_a_payload() {
        assert!(judge(r#"{"status_code":9999,"payload":{"success":true}}"#).is_ok());
        assert!(judge(r#"{"status_code":9999,"payload":true}"#).is_ok());
        let kinds = [
            (
                r#"{"status_code":9999,"payload":false}"#,
                FailureKind::Permanent,
            ),
            (
                r#"{"status_code":9999,"payload":{"error":{"code":"bad_phone"}}}"#,
                FailureKind::Permanent,
            ),
            (
                r#"{"status_code":-9999,"payload":{"status":"fail","error":"phone_or_email_assigned_on_other_contact","message":"x"}}"#,
                FailureKind::Permanent,
            ),
            (
                r#"{"status_code":-9999,"payload":{"status":"fail","error":"contact_not_found"}}"#,
                FailureKind::NotFound,
            ),
            (
                r#"{"status_code":-9999,"payload":{"status":"fail","error":"unauthorized"}}"#,
                FailureKind::Auth,
            ),
            (
                r#"{"status_code":-9999,"payload":{"status":"fail","error":"internal_error"}}"#,
                FailureKind::Transient,
            ),
            ("<html>bad gateway</html>", FailureKind::Transient),
        ];
        for (body, kind) in kinds {
            assert_eq!(judge(body).unwrap_err().kind, kind, "{body}");
        }
    }

    #[test]
    fn a_200_that_does_not_say_success_is_not_one() {
        for body in [
            r#"{"payload":{"success":true}}"#,
            r#"{"status_code":"9999","payload":true}"#,
            r#"{"status_code":9999}"#,
            r#"{"status_code":9999,"payload":null}"#,
            r#"{"status_code":0,"payload":{"success":true}}"#,
            r#"{"status_code":200,"payload":true}"#,
            "",
            "null",
            "[]",
        ] {
            let e = judge(body).unwrap_err();
            assert_eq!(e.kind, FailureKind::Transient, "{body}");
            assert!(e.maybe_applied, "{body}");
        }
        for body in [
            r#"{"status_code":9999,"payload":{"success":false}}"#,
            r#"{"status_code":9999,"payload":{"status":"fail","message":"no"}}"#,
            r#"{"status_code":9999,"payload":{"error":"bad_phone"}}"#,
        ] {
            assert_eq!(
                judge(body).unwrap_err().kind,
                FailureKind::Permanent,
                "{body}"
            );
        }
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        /// Changes that each take away what makes an answer a success.
        #[derive(Debug, Clone)]
        enum Spoil {
            NoStatusCode,
            StatusCode(i64),
            StatusCodeAsText,
            PayloadFalse,
            PayloadNull,
            NoPayload,
            Error(String),
            SuccessFalse,
            StatusFail,
        }

        impl Spoil {
            fn apply(&self, v: &mut Value) {
                let envelope = v.as_object_mut().unwrap();
                match self {
                    Self::NoStatusCode => drop(envelope.remove("status_code")),
                    Self::StatusCode(c) => drop(envelope.insert("status_code".into(), (*c).into())),
                    Self::StatusCodeAsText => {
                        drop(envelope.insert("status_code".into(), "9999".into()))
                    }
                    Self::PayloadFalse => drop(envelope.insert("payload".into(), false.into())),
                    Self::PayloadNull => drop(envelope.insert("payload".into(), Value::Null)),
                    Self::NoPayload => drop(envelope.remove("payload")),
                    // Only while the payload is still an object: on `false`/null it stays spoiled.
                    Self::Error(e) => set_in_payload(envelope, "error", e.as_str().into()),
                    Self::SuccessFalse => set_in_payload(envelope, "success", false.into()),
                    Self::StatusFail => set_in_payload(envelope, "status", "fail".into()),
                }
            }
        }

        fn set_in_payload(envelope: &mut serde_json::Map<String, Value>, key: &str, value: Value) {
            if let Some(Value::Object(payload)) = envelope.get_mut("payload") {
                payload.insert(key.into(), value);
            }
        }

        fn spoil() -> impl Strategy<Value = Spoil> {
            prop_oneof![
                Just(Spoil::NoStatusCode),
                any::<i64>()
                    .prop_filter("not success", |c| *c != STATUS_OK)
                    .prop_map(Spoil::StatusCode),
                Just(Spoil::StatusCodeAsText),
                Just(Spoil::PayloadFalse),
                Just(Spoil::PayloadNull),
                Just(Spoil::NoPayload),
                ".{0,20}".prop_map(Spoil::Error),
                Just(Spoil::SuccessFalse),
                Just(Spoil::StatusFail),
            ]
        }

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic_and_success_needs_9999(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
                let text = String::from_utf8_lossy(&bytes);
                if judge(&text).is_ok() {
                    let v: Value = serde_json::from_str(&text).unwrap();
                    prop_assert_eq!(v["status_code"].as_i64(), Some(STATUS_OK));
                }
            }

            #[test]
            fn a_spoiled_success_is_never_a_success(
                spoils in proptest::collection::vec(spoil(), 1..4),
                extra in ".{0,10}",
            ) {
                let mut answer = serde_json::json!({
                    "status_code": STATUS_OK,
                    "instance_id": 1,
                    "payload": {"success": true, "note": extra},
                });
                prop_assert!(judge(&answer.to_string()).is_ok());
                for spoil in &spoils {
                    spoil.apply(&mut answer);
                }
                prop_assert!(judge(&answer.to_string()).is_err(), "{}", answer);
                // Cut anywhere, the answer is unreadable, never a success.
                let text = answer.to_string();
                for cut in 0..text.len() {
                    if text.is_char_boundary(cut) {
                        prop_assert!(judge(&text[..cut]).is_err());
                    }
                }
            }
        }
    }

    #[test]
    fn failure_text_names_the_code() {
        let err = judge(r#"{"status_code":-9999,"payload":{"status":"fail","error":"phone_or_email_assigned_on_other_contact","message":"phone +62 taken"}}"#).unwrap_err();
        assert!(
            err.message
                .contains("phone_or_email_assigned_on_other_contact"),
            "{}",
            err.message
        );
        assert!(err.message.contains("phone +62 taken"), "{}", err.message);
    }
}
