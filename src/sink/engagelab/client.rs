//! EngageLab HTTP calls: Basic auth, `{"code": …}` answers, error classification.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::EngagelabSettings;
use crate::net::{self, Gate};
use crate::sink::{Destination, FailureKind, PushError};

const DEST: Destination = Destination::Engagelab;

/// At most this many identity values per `register` call (55101 beyond it).
pub const REGISTER_BATCH: usize = 100;

#[derive(Deserialize)]
struct Reply {
    code: i64,
    #[serde(default)]
    message: String,
    #[serde(default)]
    data: Value,
}

#[derive(Deserialize)]
struct Registered {
    identity_value: String,
    euid: i64,
}

pub struct EngagelabClient {
    http: reqwest::Client,
    base: String,
    api_key: SecretString,
    api_secret: SecretString,
    identity_name: String,
    gate: Gate,
}

impl EngagelabClient {
    pub fn new(settings: &EngagelabSettings, http: reqwest::Client, max_body: usize) -> Self {
        let missing = || SecretString::from(String::new());
        Self {
            http,
            base: settings.base_url.as_str().trim_end_matches('/').to_owned(),
            api_key: settings.api_key.clone().unwrap_or_else(missing),
            api_secret: settings.api_secret.clone().unwrap_or_else(missing),
            identity_name: settings.identity_name.clone(),
            gate: Gate::new("engagelab", settings.requests_per_second, max_body),
        }
    }

    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// `POST /v1/user/register`: the EUID of each identity value (at most 100).
    pub async fn register(
        &self,
        identity_values: &[&str],
    ) -> Result<Vec<(String, i64)>, PushError> {
        let body = json!({"identity_name": self.identity_name, "identity_values": identity_values});
        let data = self.call("/v1/user/register", &body).await?;
        let registered: Vec<Registered> = serde_json::from_value(data).map_err(|e| PushError {
            maybe_applied: true,
            ..PushError::new(
                FailureKind::Transient,
                format!("EngageLab register answer unreadable: {e}"),
            )
        })?;
        Ok(registered
            .into_iter()
            .map(|r| (r.identity_value, r.euid))
            .collect())
    }

    /// `POST /v1/user/contact`: set the contact information of one EUID.
    pub async fn set_contact(&self, euid: i64, contacts: &Value) -> Result<(), PushError> {
        self.call(
            "/v1/user/contact",
            &json!({"euid": euid, "contacts": contacts}),
        )
        .await
        .map(drop)
    }

    async fn call(&self, path: &str, body: &Value) -> Result<Value, PushError> {
        let request = self
            .http
            .post(format!("{}{path}", self.base))
            .basic_auth(
                self.api_key.expose_secret(),
                Some(self.api_secret.expose_secret()),
            )
            .json(body);
        let answer = crate::sink::send(DEST, &self.gate, request).await?;
        // Rate limits and server failures are the transport's word, whatever the body says.
        if matches!(answer.status, 408 | 429 | 500..=599) {
            return Err(PushError::http(
                DEST,
                answer.status,
                &answer.body,
                answer.retry_after,
            ));
        }
        // Otherwise the business code decides, even on a non-2xx status (401 + 40050).
        if let Ok(parsed) = serde_json::from_str::<Reply>(&answer.body) {
            return judge(parsed.code, &parsed.message).map(|()| parsed.data);
        }
        match answer.status {
            401 | 403 => Err(PushError::new(
                FailureKind::Auth,
                format!(
                    "EngageLab refused the credentials (HTTP {}): {}",
                    answer.status,
                    net::snippet(&answer.body)
                ),
            )),
            200..=299 => Err(PushError {
                maybe_applied: true,
                ..PushError::new(
                    FailureKind::Transient,
                    format!(
                        "EngageLab answer unreadable: {}",
                        net::snippet(&answer.body)
                    ),
                )
            }),
            status => Err(PushError::http(
                DEST,
                status,
                &answer.body,
                answer.retry_after,
            )),
        }
    }
}

/// The codes `apis.md` lists. 0 is success or partial success; 55014 "contact exists" means
/// what we wanted is there.
fn judge(code: i64, message: &str) -> Result<(), PushError> {
    let kind = match code {
        0 | 55014 => return Ok(()),
        40050 | 50031 | 50034 | 50074 => FailureKind::Auth,
        40007 | 55108 => FailureKind::InvalidId,
        -1 => FailureKind::Transient,
        _ => FailureKind::Permanent,
    };
    let mut error = PushError::new(
        kind,
        format!("EngageLab error {code}: {}", net::snippet(message)),
    );
    // An internal error may have happened after the write.
    error.maybe_applied = kind == FailureKind::Transient;
    Err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_classified_as_documented() {
        assert!(judge(0, "success").is_ok());
        assert!(judge(55014, "contact exists").is_ok());
        for (code, kind) in [
            (40050, FailureKind::Auth),
            (50031, FailureKind::Auth),
            (50034, FailureKind::Auth),
            (50074, FailureKind::Auth),
            (40007, FailureKind::InvalidId),
            (55108, FailureKind::InvalidId),
            (-1, FailureKind::Transient),
            (55004, FailureKind::Permanent),
            (55103, FailureKind::Permanent),
            (55101, FailureKind::Permanent),
        ] {
            let err = judge(code, "m").unwrap_err();
            assert_eq!(err.kind, kind, "{code}");
            assert!(err.message.contains(&code.to_string()));
        }
    }
}
