//! The OMI CRM stand-in over real loopback HTTP: auth, the envelope, atomic `addMany`,
//! ownership of phones and emails, `update`, duplicates and an applied-then-dropped batch.

use std::time::Duration;

use contact_sync_sim::omi::{OmiOptions, OmiSim, error_code};
use contact_sync_sim::server::Fault;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

use crate::helpers::http;

async fn start(opts: OmiOptions) -> (OmiSim, Client) {
    (OmiSim::start(opts).await.expect("start OMI sim"), http())
}

async fn token(sim: &OmiSim, http: &Client) -> String {
    let (status, body) = auth(sim, http, Some("omi-api-key")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["payload"]["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

async fn auth(sim: &OmiSim, http: &Client, key: Option<&str>) -> (StatusCode, Value) {
    let mut request = http.get(format!("{}/api/auth", sim.base_url()));
    if let Some(key) = key {
        request = request.query(&[("apiKey", key)]);
    }
    read(request.send().await.expect("auth request")).await
}

async fn call(
    sim: &OmiSim,
    http: &Client,
    token: Option<&str>,
    path: &str,
    body: &Value,
) -> (StatusCode, Value) {
    let mut request = http
        .post(format!("{}/api/v2/contact/{path}", sim.base_url()))
        .json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    read(request.send().await.expect("contact request")).await
}

async fn read(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    (status, response.json().await.expect("JSON body"))
}

fn contact(ref_id: &str, phone: &str, email: &str) -> Value {
    json!({
        "refId": ref_id,
        "refType": "3dolphins",
        "fullName": format!("Contact {ref_id}"),
        "phones": [{"data": phone, "type": "personal", "valueType": "Cá nhân"}],
        "emails": [{"data": email, "type": "personal", "valueType": "Cá nhân"}],
        "tags": ["sync"],
    })
}

fn assert_failure(body: &Value, code: &str) {
    assert_eq!(body["status_code"], -9999, "{body}");
    assert_eq!(body["payload"]["status"], "fail", "{body}");
    assert_eq!(body["payload"]["error"], code, "{body}");
}

fn message(body: &Value) -> &str {
    body["payload"]["message"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn auth_exchanges_the_api_key_for_a_bearer_token() {
    let (sim, http) = start(OmiOptions::default()).await;
    let (status, body) = auth(&sim, &http, Some("omi-api-key")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status_code"], 9999);
    assert_eq!(body["key_enabled"], false);
    assert_eq!(body["payload"]["token_type"], "Bearer");
    assert!(body["payload"]["access_token"].as_str().is_some());
    assert_eq!(sim.token_count(), 1);
}

#[tokio::test]
async fn auth_with_a_wrong_or_missing_key_is_401_with_a_failure_envelope() {
    let (sim, http) = start(OmiOptions::default()).await;
    for key in [Some("wrong"), None] {
        let (status, body) = auth(&sim, &http, key).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_failure(&body, error_code::UNAUTHORIZED);
    }
    assert_eq!(sim.token_count(), 0);
}

#[tokio::test]
async fn contact_calls_without_a_valid_token_are_401() {
    let (sim, http) = start(OmiOptions::default()).await;
    let batch = json!({"data": [contact("r1", "+6281100000001", "a@x.id")]});
    for token in [None, Some("forged")] {
        let (status, body) = call(&sim, &http, token, "addMany", &batch).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_failure(&body, error_code::UNAUTHORIZED);
    }
    assert!(sim.is_empty());
}

#[tokio::test]
async fn expired_tokens_are_refused_until_a_new_exchange() {
    let (sim, http) = start(OmiOptions::default()).await;
    let old = token(&sim, &http).await;
    sim.expire_tokens();
    let batch = json!({"data": [contact("r1", "+6281100000001", "a@x.id")]});
    let (status, body) = call(&sim, &http, Some(&old), "addMany", &batch).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(message(&body).contains("expired"), "{body}");

    let fresh = token(&sim, &http).await;
    let (status, body) = call(&sim, &http, Some(&fresh), "addMany", &batch).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(sim.token_count(), 2);
}

#[tokio::test]
async fn tokens_live_for_token_ttl() {
    let opts = OmiOptions {
        token_ttl: Duration::ZERO,
        ..OmiOptions::default()
    };
    let (sim, http) = start(opts).await;
    let token = token(&sim, &http).await;
    let (status, _) = call(&sim, &http, Some(&token), "update", &json!({"refId": "r"})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_static_token_needs_no_exchange() {
    let opts = OmiOptions {
        static_token: Some("bench".into()),
        ..OmiOptions::default()
    };
    let (sim, http) = start(opts).await;
    sim.expire_tokens();
    let batch = json!({"data": [contact("r1", "+6281100000001", "a@x.id")]});
    let (status, body) = call(&sim, &http, Some("bench"), "addMany", &batch).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["payload"], json!({"success": true}));
    assert_eq!(sim.token_count(), 0);
}

#[tokio::test]
async fn add_many_creates_one_contact_per_record() {
    let (sim, http) = start(OmiOptions::default()).await;
    let token = token(&sim, &http).await;
    let batch = json!({"data": [
        contact("r1", "+6281100000001", "a@x.id"),
        contact("r2", "6281100000002", "b@x.id"),
    ]});
    let (status, body) = call(&sim, &http, Some(&token), "addMany", &batch).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status_code"], 9999);
    assert_eq!(body["payload"], json!({"success": true}));
    assert_eq!(sim.len(), 2);
    let stored = sim.contact("r1").expect("r1 stored");
    assert_eq!(stored["fullName"], "Contact r1");
    assert!(stored["_id"].as_str().is_some());
    assert_eq!(sim.add_count("r1"), 1);
    assert!(sim.duplicates().is_empty());
}

#[tokio::test]
async fn add_many_is_atomic_and_names_the_bad_record() {
    let (sim, http) = start(OmiOptions::default()).await;
    let token = token(&sim, &http).await;
    let mut bad = contact("r2", "+6281100000002", "b@x.id");
    bad["phones"][0]["type"] = json!("mobile");
    let batch = json!({"data": [contact("r1", "+6281100000001", "a@x.id"), bad]});
    let (status, body) = call(&sim, &http, Some(&token), "addMany", &batch).await;
    // Business failures are HTTP 200: clients must judge by status_code.
    assert_eq!(status, StatusCode::OK);
    assert_failure(&body, error_code::VALIDATION_ERROR);
    assert!(message(&body).contains("r2"), "{body}");
    assert!(sim.is_empty());
    assert_eq!(sim.add_count("r1"), 0);
}

#[tokio::test]
async fn add_many_checks_ref_id_phone_and_email_formats() {
    let (sim, http) = start(OmiOptions::default()).await;
    let token = token(&sim, &http).await;
    let mut no_ref = contact("", "+6281100000001", "a@x.id");
    no_ref.as_object_mut().unwrap().remove("refId");
    let bad_phone = contact("r2", "not a phone", "b@x.id");
    let bad_email = contact("r3", "+6281100000003", "nobody");
    let mut bad_value_type = contact("r4", "+6281100000004", "d@x.id");
    bad_value_type["emails"][0]["valueType"] = json!("Mobile");
    for record in [no_ref, bad_phone, bad_email, bad_value_type] {
        let batch = json!({ "data": [record] });
        let (_, body) = call(&sim, &http, Some(&token), "addMany", &batch).await;
        assert_failure(&body, error_code::VALIDATION_ERROR);
    }
    assert!(sim.is_empty());
}

#[tokio::test]
async fn rejected_ref_ids_fail_validation() {
    let (sim, http) = start(OmiOptions::default()).await;
    sim.reject_ref_ids(["poison"]);
    let token = token(&sim, &http).await;
    let batch = json!({"data": [
        contact("fine", "+6281100000001", "a@x.id"),
        contact("poison", "+6281100000002", "b@x.id"),
    ]});
    let (_, body) = call(&sim, &http, Some(&token), "addMany", &batch).await;
    assert_failure(&body, error_code::VALIDATION_ERROR);
    assert!(message(&body).contains("poison"), "{body}");
    assert!(sim.is_empty());
}

#[tokio::test]
async fn a_phone_owned_by_another_contact_fails_the_batch() {
    let (sim, http) = start(OmiOptions::default()).await;
    sim.seed_contact(json!({
        "fullName": "Someone else",
        "phones": [{"data": "+6281100000009", "type": "home", "valueType": "Nhà"}],
    }));
    let token = token(&sim, &http).await;
    let batch = json!({"data": [
        contact("r1", "+6281100000001", "a@x.id"),
        contact("r2", "6281100000009", "b@x.id"),
    ]});
    let (status, body) = call(&sim, &http, Some(&token), "addMany", &batch).await;
    assert_eq!(status, StatusCode::OK);
    assert_failure(&body, error_code::PHONE_OR_EMAIL_TAKEN);
    assert!(message(&body).contains("r2"), "{body}");
    assert_eq!(sim.len(), 1);
}

#[tokio::test]
async fn two_records_of_one_batch_cannot_share_an_email() {
    let (sim, http) = start(OmiOptions::default()).await;
    let token = token(&sim, &http).await;
    let batch = json!({"data": [
        contact("r1", "+6281100000001", "same@x.id"),
        contact("r2", "+6281100000002", "SAME@x.id"),
    ]});
    let (_, body) = call(&sim, &http, Some(&token), "addMany", &batch).await;
    assert_failure(&body, error_code::PHONE_OR_EMAIL_TAKEN);
    assert!(sim.is_empty());
}

#[tokio::test]
async fn batches_over_max_batch_are_refused() {
    let opts = OmiOptions {
        max_batch: 2,
        ..OmiOptions::default()
    };
    let (sim, http) = start(opts).await;
    let token = token(&sim, &http).await;
    let records: Vec<Value> = (0..3)
        .map(|i| {
            contact(
                &format!("r{i}"),
                &format!("+628110000000{i}"),
                &format!("{i}@x.id"),
            )
        })
        .collect();
    let (_, body) = call(
        &sim,
        &http,
        Some(&token),
        "addMany",
        &json!({ "data": records }),
    )
    .await;
    assert_failure(&body, error_code::BATCH_SIZE_EXCEEDED);
    assert!(sim.is_empty());
}

#[tokio::test]
async fn adding_a_ref_id_again_creates_a_visible_duplicate() {
    let (sim, http) = start(OmiOptions::default()).await;
    let token = token(&sim, &http).await;
    let batch = json!({"data": [contact("r1", "+6281100000001", "a@x.id")]});
    for _ in 0..2 {
        let (_, body) = call(&sim, &http, Some(&token), "addMany", &batch).await;
        assert_eq!(body["status_code"], 9999, "{body}");
    }
    assert_eq!(sim.len(), 2);
    assert_eq!(sim.add_count("r1"), 2);
    assert_eq!(sim.duplicates(), vec!["r1".to_owned()]);
}

#[tokio::test]
async fn add_takes_one_contact_and_answers_true() {
    let (sim, http) = start(OmiOptions::default()).await;
    let token = token(&sim, &http).await;
    let record = contact("r1", "+6281100000001", "a@x.id");
    let (_, body) = call(&sim, &http, Some(&token), "add", &record).await;
    assert_eq!(body["status_code"], 9999, "{body}");
    assert_eq!(body["payload"], true);
    assert_eq!(sim.add_count("r1"), 1);
}

#[tokio::test]
async fn update_of_an_unknown_ref_id_is_contact_not_found() {
    let (sim, http) = start(OmiOptions::default()).await;
    let token = token(&sim, &http).await;
    let record = contact("ghost", "+6281100000001", "a@x.id");
    let (status, body) = call(&sim, &http, Some(&token), "update", &record).await;
    assert_eq!(status, StatusCode::OK);
    assert_failure(&body, error_code::CONTACT_NOT_FOUND);
    assert!(sim.is_empty());
    assert_eq!(sim.update_count("ghost"), 0);
}

#[tokio::test]
async fn the_change_watcher_is_told_of_contacts_written_since_it_last_asked() {
    let (sim, http) = start(OmiOptions::default()).await;
    let token = token(&sim, &http).await;
    let wanted = |ref_id: &str| (ref_id != "r3").then_some("@x.id");
    let batch = json!({"data": [contact("r1", "+6281100000001", "a@x.id")]});
    call(&sim, &http, Some(&token), "addMany", &batch).await;
    assert!(sim.written_mentioning(wanted).is_empty(), "not watched yet");

    let batch = json!({"data": [
        contact("r2", "+6281100000002", "b@x.id"),
        contact("r3", "+6281100000003", "c@x.id"),
    ]});
    call(&sim, &http, Some(&token), "addMany", &batch).await;
    let renamed = json!({"refId": "r1", "fullName": "Renamed"});
    call(&sim, &http, Some(&token), "update", &renamed).await;
    let mut written = sim.written_mentioning(wanted);
    written.sort();
    assert_eq!(written, ["r1", "r2"], "r3 is not waited for");
    assert!(
        sim.written_mentioning(wanted).is_empty(),
        "nothing written since"
    );
    assert!(sim.written_mentioning(|_| Some("@elsewhere.id")).is_empty());
}

#[tokio::test]
async fn update_replaces_the_given_fields() {
    let (sim, http) = start(OmiOptions::default()).await;
    let token = token(&sim, &http).await;
    let batch = json!({"data": [contact("r1", "+6281100000001", "a@x.id")]});
    call(&sim, &http, Some(&token), "addMany", &batch).await;

    let changed = json!({
        "refId": "r1",
        "fullName": "Renamed",
        "phones": [{"data": "+6281100000002", "type": "office", "valueType": "Công ty"}],
        "tags": ["vip"],
    });
    let (_, body) = call(&sim, &http, Some(&token), "update", &changed).await;
    assert_eq!(body["status_code"], 9999, "{body}");
    assert_eq!(body["payload"], true);

    let stored = sim.contact("r1").unwrap();
    assert_eq!(stored["fullName"], "Renamed");
    assert_eq!(stored["phones"], changed["phones"]);
    assert_eq!(stored["emails"][0]["data"], "a@x.id");
    // OMI's `tags` on update adds names; `tagRemoves` takes them away.
    assert_eq!(stored["tags"], json!(["sync", "vip"]));
    assert_eq!(sim.update_count("r1"), 1);
    assert_eq!(sim.len(), 1);

    // The phone given up is free for another contact now.
    let other = json!({"data": [contact("r2", "+6281100000001", "b@x.id")]});
    let (_, body) = call(&sim, &http, Some(&token), "addMany", &other).await;
    assert_eq!(body["status_code"], 9999, "{body}");
}

#[tokio::test]
async fn update_to_a_phone_of_another_contact_is_refused() {
    let (sim, http) = start(OmiOptions::default()).await;
    let token = token(&sim, &http).await;
    let batch = json!({"data": [
        contact("r1", "+6281100000001", "a@x.id"),
        contact("r2", "+6281100000002", "b@x.id"),
    ]});
    call(&sim, &http, Some(&token), "addMany", &batch).await;
    let stolen = contact("r1", "+6281100000002", "a@x.id");
    let (_, body) = call(&sim, &http, Some(&token), "update", &stolen).await;
    assert_failure(&body, error_code::PHONE_OR_EMAIL_TAKEN);
    assert_eq!(
        sim.contact("r1").unwrap()["phones"][0]["data"],
        "+6281100000001"
    );
    assert_eq!(sim.update_count("r1"), 0);
}

#[tokio::test]
async fn get_returns_a_contact_by_omi_id() {
    let (sim, http) = start(OmiOptions::default()).await;
    let id = sim.seed_contact(json!({"refId": "r1", "fullName": "Seeded"}));
    let token = token(&sim, &http).await;
    let response = http
        .get(format!("{}/api/v2/contact/get/{id}", sim.base_url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let (_, body) = read(response).await;
    assert_eq!(body["payload"]["fullName"], "Seeded");
    assert_eq!(sim.add_count("r1"), 0);
}

#[tokio::test]
async fn an_applied_then_dropped_batch_is_stored_though_the_client_sees_an_error() {
    let (sim, http) = start(OmiOptions::default()).await;
    let token = token(&sim, &http).await;
    sim.server().faults().push(Fault::AppliedThenDropped);
    let batch = json!({"data": [
        contact("r1", "+6281100000001", "a@x.id"),
        contact("r2", "+6281100000002", "b@x.id"),
    ]});
    let sent = http
        .post(format!("{}/api/v2/contact/addMany", sim.base_url()))
        .bearer_auth(&token)
        .json(&batch)
        .send()
        .await;
    assert!(sent.is_err(), "the client must not get an answer");
    assert_eq!(sim.len(), 2);
    assert_eq!(sim.add_count("r2"), 1);
    let log = sim.server().requests();
    let last = log.last().unwrap();
    assert_eq!(last.fault, Some(Fault::AppliedThenDropped));
    assert_eq!(last.status, None);
}
