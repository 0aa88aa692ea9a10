//! EngageLab HTTP calls: Basic auth, `{"code": …}` answers, error classification.

use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::config::{EngagelabSettings, IdentityName, Secret};
use crate::net::{self, Gate};
use crate::sink::{Destination, FailureKind, PushError};

const DEST: Destination = Destination::Engagelab;

/// At most this many identity values per `register` call (55101 beyond it).
pub(super) const REGISTER_BATCH: usize = 100;

/// `{"code": 0, "message": "success", "data": …}`. `code` must be an integer: an answer
/// without one says nothing, however it is shaped.
#[derive(Deserialize)]
struct Reply {
    code: i64,
    #[serde(default)]
    message: Value,
    #[serde(default)]
    data: Value,
}

impl Reply {
    fn message(&self) -> String {
        match &self.message {
            Value::String(text) => text.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        }
    }
}

pub struct EngagelabClient {
    http: reqwest::Client,
    base: String,
    api_key: Secret,
    api_secret: Secret,
    identity_name: IdentityName,
    gate: Gate,
}

impl EngagelabClient {
    pub fn new(settings: &EngagelabSettings, http: reqwest::Client, max_body: usize) -> Self {
        Self {
            http,
            base: settings.base_url.as_str().trim_end_matches('/').to_owned(),
            api_key: settings.api_key.clone(),
            api_secret: settings.api_secret.clone(),
            identity_name: settings.identity_name,
            gate: Gate::new(
                "engagelab",
                settings.requests_per_second,
                settings.max_in_flight,
                max_body,
            ),
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
        registered(&data)
    }

    /// `POST /v1/user/contact`: set the contact information of one EUID.
    pub async fn set_contact(&self, euid: i64, contacts: &RawValue) -> Result<(), PushError> {
        // Borrowed, so each contact's payload is written into the body without being copied.
        #[derive(Serialize)]
        struct SetContact<'a> {
            contacts: &'a RawValue,
            euid: i64,
        }
        self.call("/v1/user/contact", &SetContact { contacts, euid })
            .await
            .map(drop)
    }

    /// A request that writes nothing, for the pre-flight check: `register` with no identity.
    /// EngageLab checks the credentials before the parameters, so a refusal of the empty list
    /// (55107) means they were accepted.
    pub async fn probe(&self) -> Result<(), PushError> {
        let body = json!({"identity_name": self.identity_name, "identity_values": []});
        match self.call("/v1/user/register", &body).await {
            Err(e) if e.kind != FailureKind::Permanent => Err(e),
            _ => Ok(()),
        }
    }

    async fn call(&self, path: &str, body: &impl Serialize) -> Result<Value, PushError> {
        let request = self
            .http
            .post(format!("{}{path}", self.base))
            .basic_auth(
                self.api_key.expose_secret(),
                Some(self.api_secret.expose_secret()),
            )
            .json(body);
        let answer = crate::sink::send(DEST, &self.gate, request).await?;
        classify_answer(answer.status, &answer.body, answer.retry_after)
    }
}

/// What one EngageLab answer means. Rate limits, server failures, 404s and redirects are the
/// transport's word, and 401/403 a refusal, whatever the body says; otherwise the business
/// code decides (400 + 55105 is that identity's fault). Only a 2xx can be a success.
fn classify_answer(
    status: u16,
    body: &str,
    retry_after: Option<std::time::Duration>,
) -> Result<Value, PushError> {
    let transport = || PushError::http(DEST, status, body, retry_after);
    match status {
        status if PushError::status_decides(status) => return Err(transport()),
        401 | 403 => {
            return Err(PushError::new(
                FailureKind::Auth,
                format!(
                    "EngageLab refused the credentials (HTTP {status}): {}",
                    net::snippet(body)
                ),
            ));
        }
        _ => {}
    }
    let success = (200..300).contains(&status);
    match serde_json::from_str::<Reply>(body) {
        Ok(reply) => match judge(reply.code, &reply.message()) {
            Ok(()) if success => Ok(reply.data),
            // "code 0" on an error status is not a success.
            Ok(()) => Err(transport()),
            Err(e) => Err(e),
        },
        Err(_) if success => Err(PushError {
            maybe_applied: true,
            ..PushError::new(
                FailureKind::Transient,
                format!(
                    "EngageLab answer without a numeric code: {}",
                    net::snippet(body)
                ),
            )
        }),
        Err(_) => Err(transport()),
    }
}

/// The `data` of a successful `register`: each identity value with its EUID. Entries without
/// a usable EUID are left out (the pusher retries those identities); `data` that is not a list
/// cannot be read at all.
fn registered(data: &Value) -> Result<Vec<(String, i64)>, PushError> {
    let Some(entries) = data.as_array() else {
        return Err(PushError {
            maybe_applied: true,
            ..PushError::new(
                FailureKind::Transient,
                format!(
                    "EngageLab register answer has no list of EUIDs: {}",
                    net::snippet(&data.to_string())
                ),
            )
        });
    };
    Ok(entries
        .iter()
        .filter_map(|entry| {
            let value = entry.get("identity_value")?.as_str()?;
            let euid = match entry.get("euid")? {
                Value::Number(n) => n.as_i64()?,
                Value::String(s) => s.trim().parse().ok()?,
                _ => return None,
            };
            (euid > 0).then(|| (value.to_owned(), euid))
        })
        .collect())
}

/// The codes EngageLab documents (docs/apis/engagelab.md#how-answers-are-classified). 0 is success
/// or partial success; 55014 "contact exists" means what we wanted is there.
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

    fn kind_of(status: u16, body: &str) -> FailureKind {
        classify_answer(status, body, None).unwrap_err().kind
    }

    #[test]
    fn answers_are_classified_by_what_they_mean() {
        assert_eq!(
            classify_answer(200, r#"{"code":0,"message":"success","data":[1]}"#, None).unwrap(),
            json!([1])
        );
        for (status, body, kind) in [
            (200, r#"{"message":"success"}"#, FailureKind::Transient),
            (
                200,
                r#"{"code":"0","message":"success"}"#,
                FailureKind::Transient,
            ),
            (200, "", FailureKind::Transient),
            (200, "<html>ok</html>", FailureKind::Transient),
            (200, r#"{"code":-1}"#, FailureKind::Transient),
            (
                200,
                r#"{"code":55105,"message":"too long"}"#,
                FailureKind::Permanent,
            ),
            (
                400,
                r#"{"code":55105,"message":"too long"}"#,
                FailureKind::Permanent,
            ),
            (
                400,
                r#"{"code":0,"message":"success"}"#,
                FailureKind::Permanent,
            ),
            (401, r#"{"code":40050}"#, FailureKind::Auth),
            (403, r#"{"code":0}"#, FailureKind::Auth),
            (401, "", FailureKind::Auth),
            (200, r#"{"code":50034}"#, FailureKind::Auth),
            (404, r#"{"code":0}"#, FailureKind::Misconfigured),
            (302, "", FailureKind::Misconfigured),
            (429, r#"{"code":0}"#, FailureKind::RateLimited),
            (503, r#"{"code":0}"#, FailureKind::Transient),
        ] {
            assert_eq!(kind_of(status, body), kind, "{status} {body}");
        }
        let unreadable = classify_answer(200, r#"{"code":"0"}"#, None).unwrap_err();
        assert!(unreadable.maybe_applied);
    }

    #[test]
    fn register_keeps_only_identities_with_a_usable_euid() {
        let data = json!([
            {"identity_value": "a", "euid": 10},
            {"identity_value": "b"},
            {"identity_value": "c", "euid": "12"},
            {"identity_value": "d", "euid": null},
            {"identity_value": "e", "euid": 0},
            {"euid": 14},
            "f",
        ]);
        assert_eq!(
            registered(&data).unwrap(),
            vec![("a".to_owned(), 10), ("c".to_owned(), 12)]
        );
        for data in [json!(null), json!({"a": 1}), json!("x")] {
            let e = registered(&data).unwrap_err();
            assert!(
                e.maybe_applied && e.kind == FailureKind::Transient,
                "{data}"
            );
        }
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever the status and bytes, nothing panics and only a 2xx whose body has an
            /// integer code of 0 or 55014 is a success.
            #[test]
            fn only_a_2xx_with_a_success_code_is_a_success(
                status in 100u16..=999,
                bytes in proptest::collection::vec(any::<u8>(), 0..300),
            ) {
                let text = String::from_utf8_lossy(&bytes);
                if classify_answer(status, &text, None).is_ok() {
                    prop_assert!((200..300).contains(&status));
                    let code = serde_json::from_str::<Value>(&text).unwrap()["code"].as_i64();
                    prop_assert!(matches!(code, Some(0 | 55014)));
                }
            }

            #[test]
            fn a_spoiled_success_is_never_a_success(
                status in 200u16..300,
                code in any::<i64>().prop_filter("not success", |c| !matches!(*c, 0 | 55014)),
                which in 0usize..4,
            ) {
                let mut answer = json!({"code": 0, "message": "success", "data": []});
                match which {
                    0 => answer["code"] = code.into(),
                    1 => answer["code"] = "0".into(),
                    2 => { answer.as_object_mut().unwrap().remove("code"); }
                    _ => answer["code"] = Value::Null,
                }
                prop_assert!(classify_answer(status, &answer.to_string(), None).is_err());
            }

            #[test]
            fn register_data_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
                if let Ok(data) = serde_json::from_slice::<Value>(&bytes)
                    && let Ok(pairs) = registered(&data)
                {
                    prop_assert!(pairs.iter().all(|(_, euid)| *euid > 0));
                }
            }
        }
    }
}
