//! The EngageLab MA stand-in over real loopback HTTP: Basic auth, `register` limits and
//! idempotence, `contact` codes, EUID invalidation and scripted business answers.

use contact_sync_sim::engagelab::{EngagelabOptions, EngagelabSim, code};
use contact_sync_sim::server::Fault;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

use crate::helpers::http;

struct Harness {
    sim: EngagelabSim,
    http: Client,
}

impl Harness {
    async fn start() -> Self {
        let sim = EngagelabSim::start(EngagelabOptions::default())
            .await
            .expect("start EngageLab sim");
        Self { sim, http: http() }
    }

    async fn post_as(
        &self,
        credentials: Option<(&str, &str)>,
        path: &str,
        body: &Value,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .post(format!("{}{path}", self.sim.base_url()))
            .json(body);
        if let Some((key, secret)) = credentials {
            request = request.basic_auth(key, Some(secret));
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        (status, response.json().await.expect("JSON body"))
    }

    async fn post(&self, path: &str, body: &Value) -> Value {
        let (status, body) = self
            .post_as(Some(("el-key", "el-secret")), path, body)
            .await;
        // Business failures are HTTP 200 too; only auth gets an HTTP error.
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    async fn register(&self, values: &[&str]) -> Value {
        let body = json!({"identity_name": "user_id", "identity_values": values});
        self.post("/v1/user/register", &body).await
    }

    /// Registers one identity and returns its EUID.
    async fn euid(&self, value: &str) -> u64 {
        let body = self.register(&[value]).await;
        assert_eq!(body["code"], 0, "{body}");
        body["data"][0]["euid"].as_u64().expect("euid")
    }

    async fn set_contact(&self, body: Value) -> i64 {
        let answer = self.post("/v1/user/contact", &body).await;
        answer["code"].as_i64().expect("code")
    }
}

#[tokio::test]
async fn calls_without_the_right_basic_credentials_are_401_code_40050() {
    let h = Harness::start().await;
    let body = json!({"identity_name": "user_id", "identity_values": ["u1"]});
    for credentials in [
        None,
        Some(("el-key", "wrong")),
        Some(("other", "el-secret")),
    ] {
        let (status, answer) = h.post_as(credentials, "/v1/user/register", &body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(answer, json!({"code": 40050, "message": "auth failed"}));
    }
    assert_eq!(h.sim.register_calls(), 0);
    assert_eq!(h.sim.euid("u1"), None);
}

#[tokio::test]
async fn register_issues_stable_euids_in_request_order() {
    let h = Harness::start().await;
    let first = h.register(&["u1", "u2"]).await;
    assert_eq!(first["code"], 0);
    assert_eq!(first["message"], "success");
    let data = first["data"].as_array().unwrap();
    assert_eq!(data[0]["identity_value"], "u1");
    assert_eq!(data[1]["identity_value"], "u2");
    let (u1, u2) = (
        data[0]["euid"].as_u64().unwrap(),
        data[1]["euid"].as_u64().unwrap(),
    );
    assert_ne!(u1, u2);
    assert!(u1 >= 10_362_473);

    let again = h.register(&["u2", "u1"]).await;
    assert_eq!(again["data"][0]["euid"].as_u64(), Some(u2));
    assert_eq!(again["data"][1]["euid"].as_u64(), Some(u1));
    assert_eq!(h.sim.euid("u1"), Some(u1));
    assert_eq!(h.sim.register_calls(), 2);
}

#[tokio::test]
async fn register_enforces_the_documented_limits() {
    let h = Harness::start().await;
    let hundred: Vec<String> = (0..100).map(|i| format!("u{i}")).collect();
    let refs: Vec<&str> = hundred.iter().map(String::as_str).collect();
    assert_eq!(h.register(&refs).await["code"], 0);

    let mut too_many = refs.clone();
    too_many.push("u100");
    assert_eq!(
        h.register(&too_many).await["code"],
        code::TOO_MANY_IDENTITIES
    );

    let longest = "x".repeat(256);
    assert_eq!(h.register(&[&longest]).await["code"], 0);
    let too_long = "x".repeat(257);
    assert_eq!(
        h.register(&["ok", &too_long]).await["code"],
        code::IDENTITY_TOO_LONG
    );
    assert_eq!(h.sim.euid("ok"), None, "a failed batch registers nothing");

    assert_eq!(h.register(&[""]).await["code"], code::EMPTY_IDENTITY_VALUE);
    let unknown_name = json!({"identity_name": "email", "identity_values": ["u1"]});
    let answer = h.post("/v1/user/register", &unknown_name).await;
    assert_eq!(answer["code"], code::UNSUPPORTED_IDENTITY_NAME);
    assert_eq!(answer["message"], "unsupported identity name");
}

#[tokio::test]
async fn contact_info_is_stored_per_euid_replacing_the_given_attributes() {
    let h = Harness::start().await;
    let euid = h.euid("u1").await;
    let full =
        json!({"euid": euid, "contacts": {"mobile_phone": "+6281100000001", "email": "a@x.id"}});
    assert_eq!(h.set_contact(full).await, 0);
    let phone_only = json!({"euid": euid, "contacts": {"mobile_phone": "+6281100000002"}});
    assert_eq!(h.set_contact(phone_only).await, 0);
    assert_eq!(
        h.sim.contact_info("u1"),
        Some(json!({"mobile_phone": "+6281100000002", "email": "a@x.id"}))
    );
    assert_eq!(h.sim.contact_writes("u1"), 2);
}

#[tokio::test]
async fn the_change_watcher_is_told_of_contact_info_written_since_it_last_asked() {
    let h = Harness::start().await;
    let wanted = |value: &str| (value != "u3").then_some("@new.id");
    let (u1, u2, u3) = (h.euid("u1").await, h.euid("u2").await, h.euid("u3").await);
    let set = |euid: u64, email: &str| json!({"euid": euid, "contacts": {"email": email}});
    assert_eq!(h.set_contact(set(u1, "a@new.id")).await, 0);
    assert!(
        h.sim.written_mentioning(wanted).is_empty(),
        "not watched yet"
    );

    for (euid, email) in [(u1, "a@old.id"), (u2, "b@new.id"), (u3, "c@new.id")] {
        assert_eq!(h.set_contact(set(euid, email)).await, 0);
    }
    assert_eq!(
        h.sim.written_mentioning(wanted),
        ["u2"],
        "u1 holds no new address"
    );
    assert!(
        h.sim.written_mentioning(wanted).is_empty(),
        "nothing written since"
    );
}

#[tokio::test]
async fn contact_without_an_euid_is_40007() {
    let h = Harness::start().await;
    let contacts = json!({"email": "a@x.id"});
    assert_eq!(
        h.set_contact(json!({ "contacts": contacts })).await,
        code::EUID_EMPTY
    );
    let null = json!({"euid": null, "contacts": contacts});
    assert_eq!(h.set_contact(null).await, code::EUID_EMPTY);
}

#[tokio::test]
async fn contact_checks_attribute_names_and_values() {
    let h = Harness::start().await;
    let euid = h.euid("u1").await;
    let cases = [
        (json!({}), code::EMPTY_ATTRIBUTE_VALUE),
        (json!({"email": ""}), code::EMPTY_ATTRIBUTE_VALUE),
        (json!({"fax": "123"}), code::INVALID_ATTRIBUTE_NAME),
    ];
    for (contacts, expected) in cases {
        let body = json!({ "euid": euid, "contacts": contacts });
        assert_eq!(h.set_contact(body).await, expected, "{contacts}");
    }
    assert_eq!(h.sim.contact_writes("u1"), 0);
    assert_eq!(h.sim.contact_info("u1"), None);
}

#[tokio::test]
async fn an_invalidated_euid_is_55108_until_the_identity_registers_again() {
    let h = Harness::start().await;
    let unknown = json!({"euid": 42, "contacts": {"email": "a@x.id"}});
    assert_eq!(h.set_contact(unknown).await, code::INVALID_EUID);

    let old = h.euid("u1").await;
    assert!(h.sim.invalidate_euid("u1"));
    let write = |euid: u64| json!({"euid": euid, "contacts": {"email": "a@x.id"}});
    assert_eq!(h.set_contact(write(old)).await, code::INVALID_EUID);
    assert_eq!(h.sim.euid("u1"), None);

    let new = h.euid("u1").await;
    assert_ne!(new, old);
    assert_eq!(h.set_contact(write(new)).await, 0);
    assert_eq!(h.sim.contact_info("u1"), Some(json!({"email": "a@x.id"})));
    assert_eq!(h.sim.contact_writes("u1"), 1);
}

#[tokio::test]
async fn scripted_codes_answer_the_next_contact_calls_in_order() {
    let h = Harness::start().await;
    let euid = h.euid("u1").await;
    h.sim.push_code(code::INTERNAL_ERROR);
    h.sim.push_code(code::CONTACT_EXISTS);
    let body = json!({"euid": euid, "contacts": {"email": "a@x.id"}});

    let answer = h.post("/v1/user/contact", &body).await;
    assert_eq!(
        answer,
        json!({"code": -1, "message": "internal server error"})
    );
    assert_eq!(h.set_contact(body.clone()).await, code::CONTACT_EXISTS);
    assert_eq!(
        h.sim.contact_writes("u1"),
        0,
        "scripted answers apply nothing"
    );
    assert_eq!(h.set_contact(body).await, 0);
    assert_eq!(h.sim.contact_writes("u1"), 1);
}

#[tokio::test]
async fn an_applied_then_dropped_register_still_issues_the_euid() {
    let h = Harness::start().await;
    h.sim.server().faults().push(Fault::AppliedThenDropped);
    let body = json!({"identity_name": "user_id", "identity_values": ["u1"]});
    let sent = h
        .http
        .post(format!("{}/v1/user/register", h.sim.base_url()))
        .basic_auth("el-key", Some("el-secret"))
        .json(&body)
        .send()
        .await;
    assert!(sent.is_err());
    let issued = h
        .sim
        .euid("u1")
        .expect("registered despite the dropped answer");
    // Registration is idempotent, so a retry gets the same EUID.
    assert_eq!(h.euid("u1").await, issued);
}
