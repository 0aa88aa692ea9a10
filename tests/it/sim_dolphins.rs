//! The stand-in servers over real loopback HTTP, observed from the client side with reqwest:
//! the generic fault-injecting server first, then the 3Dolphins stand-in.

use std::collections::HashSet;
use std::error::Error as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::{get, post};
use contact_sync::domain::{Region, normalize};
use contact_sync_sim::dolphins::{
    DolphinsAuth, DolphinsOptions, DolphinsSim, MALFORMED_KINDS, generate_contact,
    malformed_record, record_id,
};
use contact_sync_sim::server::{Fault, FaultConfig, ServerOptions, SimServer};
use serde_json::{Value, json};

use crate::helpers::http;

/// A server with `GET /ping` and a `POST /apply` that counts how often it ran.
async fn counting_server(opts: ServerOptions) -> (SimServer, Arc<AtomicUsize>) {
    let applied = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&applied);
    let router = Router::new()
        .route("/ping", get(|| async { "pong" }))
        .route(
            "/apply",
            post(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                async { "applied" }
            }),
        );
    (SimServer::start(router, opts).await.unwrap(), applied)
}

fn is_connection_reset(error: &reqwest::Error) -> bool {
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::ConnectionReset;
        }
        source = cause.source();
    }
    false
}

#[tokio::test]
async fn scripted_429_carries_retry_after_rounded_up_to_seconds() {
    let (server, _) = counting_server(ServerOptions::default()).await;
    server.faults().push(Fault::TooManyRequests {
        retry_after: Duration::from_millis(1500),
    });

    let response = http()
        .get(format!("{}/ping", server.base_url()))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "2");
    assert_eq!(server.requests()[0].status, Some(429));
}

#[tokio::test]
async fn scripted_server_error_answers_that_status_without_reaching_the_api() {
    let (server, applied) = counting_server(ServerOptions::default()).await;
    server.faults().push(Fault::ServerError(503));

    let response = http()
        .post(format!("{}/apply", server.base_url()))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 503);
    assert_eq!(applied.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn reset_kills_the_connection_before_the_api_sees_the_request() {
    let (server, applied) = counting_server(ServerOptions::default()).await;
    server.faults().push(Fault::Reset);

    let error = http()
        .post(format!("{}/apply", server.base_url()))
        .send()
        .await
        .unwrap_err();

    assert!(is_connection_reset(&error), "{error:?}");
    assert_eq!(applied.load(Ordering::SeqCst), 0);
    let logged = &server.requests()[0];
    assert_eq!(
        (logged.fault.clone(), logged.status),
        (Some(Fault::Reset), None)
    );
}

#[tokio::test]
async fn applied_then_dropped_changes_state_but_the_client_sees_an_error() {
    let (server, applied) = counting_server(ServerOptions::default()).await;
    server.faults().push(Fault::AppliedThenDropped);
    let c = http();

    let error = c
        .post(format!("{}/apply", server.base_url()))
        .send()
        .await
        .unwrap_err();

    assert!(is_connection_reset(&error), "{error:?}");
    assert_eq!(applied.load(Ordering::SeqCst), 1);
    // The next request, on a fresh connection, is served normally.
    let response = c
        .post(format!("{}/apply", server.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(applied.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn slow_fault_delays_then_answers() {
    let (server, _) = counting_server(ServerOptions::default()).await;
    server.faults().push(Fault::Slow(Duration::from_millis(60)));

    let began = Instant::now();
    let response = http()
        .get(format!("{}/ping", server.base_url()))
        .send()
        .await
        .unwrap();

    assert_eq!(response.text().await.unwrap(), "pong");
    assert!(began.elapsed() >= Duration::from_millis(60));
}

#[tokio::test]
async fn excluded_paths_neither_draw_nor_consume_faults() {
    let (server, applied) = counting_server(ServerOptions::default()).await;
    server.faults().exclude_path_suffixes(["/ping"]);
    server.faults().push(Fault::ServerError(500));
    server.faults().set(FaultConfig {
        server_error: 1.0,
        ..FaultConfig::default()
    });
    let c = http();

    let ping = c
        .get(format!("{}/ping", server.base_url()))
        .send()
        .await
        .unwrap();
    let apply = c
        .post(format!("{}/apply", server.base_url()))
        .send()
        .await
        .unwrap();

    assert_eq!(ping.status(), 200);
    assert_eq!(apply.status(), 500);
    assert_eq!(applied.load(Ordering::SeqCst), 0);
    assert_eq!(server.faults().pending(), 0);
}

/// Outcome of each of `n` requests: the status, or 0 for a killed connection.
async fn outcomes(server: &SimServer, n: usize) -> Vec<u16> {
    let c = http();
    let mut seen = Vec::new();
    for _ in 0..n {
        let sent = c.get(format!("{}/ping", server.base_url())).send().await;
        seen.push(sent.map_or(0, |r| r.status().as_u16()));
    }
    seen
}

#[tokio::test]
async fn random_faults_replay_exactly_with_the_same_seed() {
    let config = FaultConfig {
        too_many_requests: 0.2,
        server_error: 0.2,
        reset: 0.2,
        ..FaultConfig::default()
    };
    let mut runs = Vec::new();
    for _ in 0..2 {
        let opts = ServerOptions {
            fault_seed: 42,
            ..ServerOptions::default()
        };
        let (server, _) = counting_server(opts).await;
        server.faults().set(config.clone());
        runs.push(outcomes(&server, 40).await);
    }

    assert_eq!(runs[0], runs[1]);
    for status in [0, 200, 429] {
        assert!(
            runs[0].contains(&status),
            "{status} never seen in {:?}",
            runs[0]
        );
    }
    assert!(runs[0].iter().any(|s| (500..=504).contains(s)));
}

#[tokio::test]
async fn server_rate_limit_answers_429_past_the_limit() {
    let opts = ServerOptions {
        rate_limit: Some(5.0),
        ..ServerOptions::default()
    };
    let (server, _) = counting_server(opts).await;
    let c = http();

    let mut limited = None;
    for _ in 0..10 {
        let response = c
            .get(format!("{}/ping", server.base_url()))
            .send()
            .await
            .unwrap();
        if response.status() == 429 {
            limited = Some(response);
            break;
        }
    }

    let limited = limited.expect("ten immediate requests exceed 5/s with a burst of 5");
    assert!(
        limited.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert!(server.requests().iter().any(|r| r.rate_limited));
}

#[tokio::test]
async fn shutdown_stops_accepting_connections() {
    let (server, _) = counting_server(ServerOptions::default()).await;
    let url = format!("{}/ping", server.base_url());

    server.shutdown().await;

    assert!(http().get(url).send().await.is_err());
}

// ---- 3Dolphins ----

const USER: &str = "sync";
const PASS: &str = "secret";

async fn dolphins(contacts: usize, malformed: usize) -> DolphinsSim {
    let opts = DolphinsOptions {
        contacts,
        malformed,
        seed: 7,
        ..DolphinsOptions::default()
    };
    DolphinsSim::start(opts).await.unwrap()
}

async fn login(c: &reqwest::Client, sim: &DolphinsSim) -> reqwest::Response {
    let body = json!({ "username": USER, "password": PASS });
    c.post(format!("{}/graph/auth", sim.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn fetch_token(c: &reqwest::Client, sim: &DolphinsSim) -> String {
    let body: Value = login(c, sim).await.json().await.unwrap();
    body["token"].as_str().unwrap().to_owned()
}

async fn list(
    c: &reqwest::Client,
    sim: &DolphinsSim,
    token: &str,
    query: &str,
) -> reqwest::Response {
    let url = format!("{}/graph/contacts/all?{query}", sim.base_url());
    c.get(url).bearer_auth(token).send().await.unwrap()
}

async fn page(c: &reqwest::Client, sim: &DolphinsSim, token: &str, start: usize) -> Value {
    let response = list(c, sim, token, &format!("start={start}&count=100")).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Every list element, following `nextIndex` until `hasMore` is false.
async fn read_all(c: &reqwest::Client, sim: &DolphinsSim, token: &str) -> Vec<Value> {
    let (mut start, mut all) = (0, Vec::new());
    loop {
        let body = page(c, sim, token, start).await;
        all.extend(body["data"].as_array().unwrap().iter().cloned());
        if !body["hasMore"].as_bool().unwrap() {
            return all;
        }
        start = body["nextIndex"].as_u64().unwrap() as usize;
    }
}

#[tokio::test]
async fn base_url_carries_the_production_path_prefix() {
    let sim = dolphins(1, 0).await;
    assert!(sim.base_url().ends_with("/dolphin/apiv1"));
}

#[tokio::test]
async fn list_honours_the_page_cap_and_reports_next_index() {
    let sim = dolphins(120, 0).await;
    let c = http();
    let token = fetch_token(&c, &sim).await;

    let first = page(&c, &sim, &token, 0).await;
    let last = page(&c, &sim, &token, 100).await;
    let beyond = page(&c, &sim, &token, 500).await;

    assert_eq!(first["status"], "success");
    assert_eq!(first["data"].as_array().unwrap().len(), 50);
    assert_eq!(
        (first["hasMore"].clone(), first["nextIndex"].clone()),
        (json!(true), json!(50))
    );
    assert_eq!(
        (first["prevIndex"].clone(), first["totalResults"].clone()),
        (json!(0), json!(120))
    );
    assert_eq!(last["data"].as_array().unwrap().len(), 20);
    assert_eq!(
        (last["hasMore"].clone(), last["nextIndex"].clone()),
        (json!(false), json!(120))
    );
    assert_eq!(beyond["data"], json!([]));
    assert_eq!(beyond["hasMore"], false);
}

#[tokio::test]
async fn reading_every_page_yields_every_id_once() {
    let sim = dolphins(230, 0).await;
    let c = http();
    let token = fetch_token(&c, &sim).await;

    let ids: Vec<String> = read_all(&c, &sim, &token)
        .await
        .iter()
        .filter_map(record_id)
        .collect();

    assert_eq!(ids, sim.ids());
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 230);
}

#[tokio::test]
async fn list_parameters_default_when_absent_and_are_refused_when_garbage() {
    let sim = dolphins(30, 0).await;
    let c = http();
    let token = fetch_token(&c, &sim).await;

    let defaults: Value = list(&c, &sim, &token, "").await.json().await.unwrap();
    assert_eq!(defaults["data"].as_array().unwrap().len(), 10);
    for query in [
        "start=abc&count=5",
        "start=-1&count=5",
        "start=0&count=0",
        "count=1.5",
    ] {
        let response = list(&c, &sim, &token, query).await;
        assert_eq!(response.status(), 400, "{query}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], "failed");
    }
}

#[tokio::test]
async fn login_returns_a_token_with_a_java_zoned_expiry() {
    let sim = dolphins(1, 0).await;
    let c = http();

    let body: Value = login(&c, &sim).await.json().await.unwrap();

    let expire_at = body["expireAt"].as_str().unwrap();
    let rfc3339 = expire_at
        .strip_suffix("[Asia/Jakarta]")
        .expect("zone suffix");
    assert!(rfc3339.ends_with("+07:00"), "{expire_at}");
    let parsed =
        time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339);
    let remaining = parsed.unwrap() - time::OffsetDateTime::now_utc();
    assert!(remaining > time::Duration::minutes(59) && remaining <= time::Duration::hours(1));
    assert_eq!(sim.login_count(), 1);
}

#[tokio::test]
async fn bad_credentials_are_refused() {
    let sim = dolphins(1, 0).await;
    let url = format!("{}/graph/auth", sim.base_url());

    let body = json!({ "username": USER, "password": "wrong" });
    let response = http().post(url).json(&body).send().await.unwrap();

    assert_eq!(response.status(), 401);
    assert_eq!(sim.login_count(), 0);
}

#[tokio::test]
async fn list_needs_a_live_token() {
    let sim = dolphins(5, 0).await;
    let c = http();
    let url = format!("{}/graph/contacts/all?start=0&count=5", sim.base_url());

    let anonymous = c.get(&url).send().await.unwrap();
    let unknown = list(&c, &sim, "not-a-token", "start=0&count=5").await;
    let token = fetch_token(&c, &sim).await;
    let live = list(&c, &sim, &token, "start=0&count=5").await;
    sim.expire_tokens();
    let expired = list(&c, &sim, &token, "start=0&count=5").await;

    assert_eq!(anonymous.status(), 401);
    assert_eq!(anonymous.json::<Value>().await.unwrap()["status"], "failed");
    assert_eq!(unknown.status(), 401);
    assert_eq!(live.status(), 200);
    assert_eq!(expired.status(), 401);
    let renewed = fetch_token(&c, &sim).await;
    assert_eq!(
        list(&c, &sim, &renewed, "start=0&count=5").await.status(),
        200
    );
    assert_eq!(sim.login_count(), 2);
}

#[tokio::test]
async fn tokens_expire_after_their_ttl() {
    let opts = DolphinsOptions {
        token_ttl: Duration::ZERO,
        ..DolphinsOptions::default()
    };
    let sim = DolphinsSim::start(opts).await.unwrap();
    let c = http();

    let token = fetch_token(&c, &sim).await;

    // A zero lifetime is over by the time the client can use the token.
    assert_eq!(list(&c, &sim, &token, "").await.status(), 401);
}

#[tokio::test]
async fn static_token_is_accepted_without_login() {
    let auth = DolphinsAuth::Static("fixed-token".into());
    let sim = DolphinsSim::start(DolphinsOptions {
        auth,
        ..DolphinsOptions::default()
    })
    .await;
    let sim = sim.unwrap();
    let c = http();

    assert_eq!(list(&c, &sim, "fixed-token", "").await.status(), 200);
    assert_eq!(login(&c, &sim).await.status(), 401);
    sim.expire_tokens();
    assert_eq!(list(&c, &sim, "fixed-token", "").await.status(), 200);
}

#[tokio::test]
async fn login_applied_then_dropped_issues_a_token_the_client_never_sees() {
    let sim = dolphins(5, 0).await;
    sim.faults().push(Fault::AppliedThenDropped);
    let body = json!({ "username": USER, "password": PASS });

    let sent = http()
        .post(format!("{}/graph/auth", sim.base_url()))
        .json(&body)
        .send()
        .await;

    assert!(sent.is_err());
    assert_eq!(sim.login_count(), 1);
}

#[tokio::test]
async fn faults_can_target_the_list_endpoint_only() {
    let sim = dolphins(5, 0).await;
    sim.faults()
        .exclude_when(|path| !path.ends_with("/graph/contacts/all"));
    sim.faults().push(Fault::Reset);
    let c = http();

    let token = fetch_token(&c, &sim).await;
    let url = format!("{}/graph/contacts/all", sim.base_url());
    let reset = c.get(&url).bearer_auth(&token).send().await.unwrap_err();

    assert!(is_connection_reset(&reset), "{reset:?}");
    assert_eq!(list(&c, &sim, &token, "").await.status(), 200);
    let paths: Vec<String> = sim
        .server()
        .requests()
        .into_iter()
        .map(|r| r.path)
        .collect();
    assert!(
        paths.iter().all(|p| p.starts_with("/dolphin/apiv1/graph/")),
        "{paths:?}"
    );
}

#[test]
fn generator_is_deterministic_per_seed_and_index() {
    for index in [0, 1, 999, 123_456] {
        assert_eq!(generate_contact(3, index), generate_contact(3, index));
        assert_ne!(
            generate_contact(3, index)["id"],
            generate_contact(4, index)["id"]
        );
    }
    assert_ne!(generate_contact(3, 0)["id"], generate_contact(3, 1)["id"]);
}

#[tokio::test]
async fn served_records_are_the_generated_ones() {
    let sim = dolphins(60, 0).await;
    let c = http();
    let token = fetch_token(&c, &sim).await;

    let first = page(&c, &sim, &token, 0).await;
    let again = page(&c, &sim, &token, 0).await;

    assert_eq!(first["data"][7], generate_contact(7, 7));
    assert_eq!(
        again["data"], first["data"],
        "records kept after first serving are unchanged"
    );
}

#[tokio::test]
async fn malformed_records_are_spread_through_the_list_and_counted_exactly() {
    let sim = dolphins(100, 16).await;
    let c = http();
    let token = fetch_token(&c, &sim).await;

    let all = read_all(&c, &sim, &token).await;

    // Malformed as the sync's own normalizer judges it, not as the stand-in labels it.
    let malformed: Vec<usize> = (0..all.len())
        .filter(|&i| normalize(&all[i], Region::ID).is_err())
        .collect();
    assert_eq!(all.len(), 116);
    assert_eq!(malformed.len(), 16);
    assert_eq!(sim.malformed_count(), 16);
    assert_eq!(sim.ids().len(), 100);
    assert!(malformed[0] < 10 && malformed[15] > 105, "{malformed:?}");
}

/// What is wrong with a list element, read from its JSON alone.
fn flaw(element: &Value) -> &'static str {
    let Some(record) = element.as_object() else {
        return if element.is_string() {
            "a string element"
        } else {
            "a non-object element"
        };
    };
    match record.get("id") {
        None => "no id",
        Some(Value::Null) => "null id",
        Some(Value::Object(_)) => "object id",
        Some(Value::Number(n)) if n.is_f64() => "fractional id",
        Some(Value::String(s)) if s.trim().is_empty() => "blank id",
        Some(Value::String(s)) if s.chars().count() > 256 => "overlong id",
        Some(_) => "well-formed",
    }
}

#[test]
fn malformed_records_take_each_flaw_in_turn_and_the_normalizer_refuses_each() {
    let flaws: Vec<&str> = (0..MALFORMED_KINDS.len() * 2)
        .map(|k| flaw(&malformed_record(7, k)))
        .collect();
    let kinds = MALFORMED_KINDS.len();
    let distinct: HashSet<&str> = flaws[..kinds].iter().copied().collect();
    assert_eq!(distinct.len(), kinds, "one of each flaw: {flaws:?}");
    assert!(!distinct.contains("well-formed"), "{flaws:?}");
    assert_eq!(flaws[..kinds], flaws[kinds..], "the flaws take turns");
    for (k, flaw) in flaws[..kinds].iter().enumerate() {
        let record = malformed_record(7, k);
        assert!(
            normalize(&record, Region::ID).is_err(),
            "{flaw} was accepted: {record}"
        );
    }
    // The control: the same generator's well-formed records pass.
    assert!(normalize(&generate_contact(7, 0), Region::ID).is_ok());
}

/// Generated records from index 0 up, parsed back from JSON.
fn sample(n: usize) -> Vec<Value> {
    (0..n).map(|i| generate_contact(11, i)).collect()
}

fn strings(record: &Value, field: &str) -> Vec<String> {
    let items = record[field].as_array().cloned().unwrap_or_default();
    items
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

#[test]
fn generated_phones_use_all_three_spellings_of_valid_numbers() {
    let phones: Vec<String> = sample(2000)
        .iter()
        .flat_map(|r| {
            r["phonesString"]
                .as_str()
                .unwrap()
                .split(',')
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|p| !p.is_empty())
        .collect();
    let country = phones.iter().filter(|p| p.starts_with("628")).count();
    let national = phones.iter().filter(|p| p.starts_with("08")).count();
    let formatted = phones.iter().filter(|p| p.starts_with("+62 8")).count();
    assert!(
        country > national && national > 0 && formatted > 0,
        "{country} {national} {formatted}"
    );

    let valid = phones
        .iter()
        .filter_map(|p| phonenumber::parse(Some(phonenumber::country::Id::ID), p).ok())
        .filter(phonenumber::is_valid)
        .count();
    let invalid = phones.len() - valid;
    assert!(
        invalid > 0 && invalid < phones.len() / 50,
        "{invalid} of {}",
        phones.len()
    );
}

#[test]
fn generated_records_vary_like_real_data() {
    let records = sample(3000);
    let count = |pred: &dyn Fn(&Value) -> bool| records.iter().filter(|r| pred(r)).count();

    assert!(count(&|r| r["contactEmailString"] == "") > 100);
    assert!(count(&|r| r["phonesString"] == "") > 100);
    assert!(count(&|r| strings(r, "contactEmail").len() == 2) > 100);
    assert!(count(&|r| strings(r, "phones").len() == 2) > 100);
    assert!(count(&|r| r.get("phones").is_none() && r.get("contactEmail").is_none()) > 50);
    assert!(count(&|r| r.get("contactLastName").is_none()) > 100);
    assert!(count(&|r| r["contactFirstName"] == "" && r["username"] != "") > 20);
    assert!(
        count(&|r| strings(r, "contactEmail")
            .iter()
            .any(|e| e.contains("GMAIL")))
            > 5
    );
    assert!(
        count(&|r| strings(r, "contactEmail")
            .iter()
            .any(|e| !e.contains('@') || e.ends_with('@')))
            > 5
    );
    assert!(count(&|r| r["vipStatus"] == "Yes") > 100);
    assert!(count(&|r| r["id"].is_u64()) >= 1);
    let nulls = |r: &Value| {
        r["additionalFieldsObject"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f["value"].is_null()))
    };
    assert!(count(&nulls) > 1000);

    let ids: HashSet<String> = records.iter().filter_map(record_id).collect();
    assert_eq!(ids.len(), records.len());
    let emails: Vec<String> = records
        .iter()
        .flat_map(|r| strings(r, "contactEmail"))
        .map(|e| e.to_lowercase())
        .collect();
    assert_eq!(emails.iter().collect::<HashSet<_>>().len(), emails.len());
}

#[tokio::test]
async fn inserting_at_the_front_shifts_later_offsets() {
    let sim = dolphins(120, 0).await;
    let c = http();
    let token = fetch_token(&c, &sim).await;
    let before = page(&c, &sim, &token, 0).await;

    sim.insert_front(json!({ "id": "new-front", "contactFirstName": "Baru" }));
    let after = page(&c, &sim, &token, 50).await;

    assert_eq!(after["data"][0], before["data"][49]);
    assert_eq!(after["totalResults"], 121);
    assert_eq!(sim.ids()[0], "new-front");
}

#[tokio::test]
async fn records_can_be_pushed_updated_and_removed_while_serving() {
    let sim = dolphins(10, 0).await;
    let id = sim.ids()[3].clone();

    sim.push(json!({ "id": "tail", "contactFirstName": "Akhir" }));
    assert!(sim.update(&id, |r| r["contactFirstName"] = json!("Diubah")));
    assert!(sim.remove(&sim.ids()[0].clone()));
    assert!(!sim.remove("no-such-id"));

    assert_eq!(sim.len(), 10);
    assert_eq!(sim.ids()[9], "tail");
    assert_eq!(sim.get(&id).unwrap()["contactFirstName"], "Diubah");
    let c = http();
    let token = fetch_token(&c, &sim).await;
    let url = format!(
        "{}/graph/contacts/contactById?contactId={id}",
        sim.base_url()
    );
    let by_id: Value = c
        .get(url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(by_id["contactFirstName"], "Diubah");
}

#[tokio::test]
async fn set_page_cap_applies_to_the_next_page() {
    let sim = dolphins(100, 0).await;
    let c = http();
    let token = fetch_token(&c, &sim).await;

    sim.set_page_cap(7);

    assert_eq!(
        page(&c, &sim, &token, 0).await["data"]
            .as_array()
            .unwrap()
            .len(),
        7
    );
}
