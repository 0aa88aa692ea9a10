//! OMI HTTP calls: token handling, the response envelope, error classification.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;

use crate::config::{OmiAuth, OmiSettings};
use crate::net::{self, Gate, TokenCache};
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

pub struct OmiClient {
    http: reqwest::Client,
    base: String,
    auth: OmiAuth,
    token: TokenCache,
    gate: Gate,
}

impl OmiClient {
    pub fn new(settings: &OmiSettings, http: reqwest::Client, max_body: usize) -> Self {
        Self {
            http,
            base: settings.base_url.as_str().trim_end_matches('/').to_owned(),
            auth: settings
                .auth
                .clone()
                .expect("validated: enabled OMI has credentials"),
            token: TokenCache::new("omi"),
            gate: Gate::new("omi", settings.requests_per_second, max_body),
        }
    }

    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// `POST /api/v2/contact/addMany`. OMI does not say which record of a failed batch was bad.
    pub async fn add_many(&self, contacts: &[Value]) -> Result<(), PushError> {
        let body = serde_json::json!({ "data": contacts });
        self.call("/api/v2/contact/addMany", &body).await.map(drop)
    }

    /// `POST /api/v2/contact/update`, addressed by the payload's `refId`.
    pub async fn update(&self, contact: &Value) -> Result<(), PushError> {
        self.call("/api/v2/contact/update", contact).await.map(drop)
    }

    /// One authorized POST; a 401 renews an API-key token once and tries again.
    async fn call(&self, path: &str, body: &Value) -> Result<Value, PushError> {
        let url = format!("{}{path}", self.base);
        let mut renewed = false;
        loop {
            let token = self.bearer().await?;
            let request = self
                .http
                .post(&url)
                .bearer_auth(token.expose_secret())
                .json(body);
            let answer = crate::sink::send(DEST, &self.gate, request).await?;
            if matches!(answer.status, 401 | 403) {
                if !renewed && matches!(self.auth, OmiAuth::ApiKey(_)) {
                    self.token.forget(&token).await;
                    renewed = true;
                    continue;
                }
                return Err(PushError::new(
                    FailureKind::Auth,
                    format!(
                        "OMI refused the credentials (HTTP {}): {}",
                        answer.status,
                        net::snippet(&answer.body)
                    ),
                ));
            }
            if !(200..300).contains(&answer.status) {
                return Err(PushError::http(
                    DEST,
                    answer.status,
                    &answer.body,
                    answer.retry_after,
                ));
            }
            return judge(&answer.body);
        }
    }

    async fn bearer(&self) -> Result<SecretString, PushError> {
        let key = match &self.auth {
            OmiAuth::Token(token) => return Ok(token.clone()),
            OmiAuth::ApiKey(key) => key,
        };
        self.token.get(|| self.fetch_token(key)).await
    }

    /// `GET /api/auth?apiKey=…` → `payload.access_token`, documented to live 24 hours.
    async fn fetch_token(&self, key: &SecretString) -> Result<(SecretString, Duration), PushError> {
        let request = self
            .http
            .get(format!("{}/api/auth", self.base))
            .query(&[("apiKey", key.expose_secret())]);
        let answer = crate::sink::send(DEST, &self.gate, request).await?;
        let refused = |detail: &str| {
            PushError::new(
                FailureKind::Auth,
                format!("OMI refused the API key: {}", net::snippet(detail)),
            )
        };
        if matches!(answer.status, 401 | 403) {
            return Err(refused(&answer.body));
        }
        if !(200..300).contains(&answer.status) {
            return Err(PushError::http(
                DEST,
                answer.status,
                &answer.body,
                answer.retry_after,
            ));
        }
        let payload = judge(&answer.body).map_err(|e| match e.kind {
            FailureKind::Transient => e,
            _ => refused(&e.message),
        })?;
        let token = payload
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                PushError::new(
                    FailureKind::Transient,
                    "OMI token answer has no payload.access_token",
                )
            })?;
        Ok((SecretString::from(token.to_owned()), TOKEN_LIFETIME))
    }
}

/// Success is `status_code == 9999` with a payload that is not `false` and carries no error.
fn judge(text: &str) -> Result<Value, PushError> {
    let envelope: Envelope = serde_json::from_str(text).map_err(|e| PushError {
        maybe_applied: true,
        ..PushError::new(
            FailureKind::Transient,
            format!(
                "OMI sent an unreadable answer ({e}): {}",
                net::snippet(text)
            ),
        )
    })?;
    let payload = envelope.payload;
    let error = payload.get("error").filter(|e| !e.is_null());
    if envelope.status_code == 9999 && payload != Value::Bool(false) && error.is_none() {
        return Ok(payload);
    }
    let (code, message) = failure_detail(&payload);
    Err(PushError::new(
        classify(&code),
        format!("OMI error {code}: {}", net::snippet(&message)),
    ))
}

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
