//! Delivery to OMI and EngageLab through the three stand-ins over loopback HTTP.

use std::time::{Duration, Instant};

use crate::helpers::{BIN, Stack};
use contact_sync::sink::Destination;
use contact_sync::store;
use contact_sync::sync::EngineError;
use contact_sync_sim::dolphins::DolphinsOptions;
use contact_sync_sim::engagelab::{EngagelabOptions, code};
use contact_sync_sim::omi::OmiOptions;
use contact_sync_sim::server::{Fault, FaultConfig};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// A source record with known fields, for exact payload assertions.
fn known_record(id: &str, phone: &str, email: &str) -> Value {
    json!({
        "id": id,
        "contactFirstName": "  Siti ",
        "contactLastName": "Rahayu",
        "contactEmail": [email],
        "phones": [phone, "0857-8212-0717"],
        "vipStatus": "Yes",
        "createdDate": 1720601207431_i64,
    })
}

async fn backfill(stack: &Stack) -> contact_sync::sync::BackfillReport {
    stack
        .engine()
        .backfill(&CancellationToken::new())
        .await
        .expect("backfill")
}

async fn destination_counts(stack: &Stack, destination: Destination) -> store::DestinationCounts {
    store::status(&stack.store, &[Destination::Omi, Destination::Engagelab])
        .await
        .unwrap()
        .destinations[&destination]
        .clone()
}

/// How many source contacts the EngageLab stand-in holds contact info for: its own view,
/// which the product's outbox counts must agree with.
fn held_at_engagelab(stack: &Stack) -> usize {
    stack
        .dolphins
        .ids()
        .iter()
        .filter(|id| stack.engagelab.contact_info(id).is_some())
        .count()
}

fn requests_to(stack: &Stack) -> (u64, u64) {
    (
        stack.omi.server().request_count(),
        stack.engagelab.server().request_count(),
    )
}

#[tokio::test]
async fn backfill_lands_each_contact_exactly_once_in_each_destination() {
    let stack = Stack::with_contacts(2_000).await;
    let report = backfill(&stack).await;
    let ids = stack.dolphins.ids();
    assert_eq!(ids.len(), 2_000);
    assert!(
        stack.omi.duplicates().is_empty(),
        "duplicates: {:?}",
        stack.omi.duplicates()
    );
    for id in &ids {
        assert_eq!(stack.omi.add_count(id), 1, "contact {id} at OMI");
    }
    let omi = destination_counts(&stack, Destination::Omi).await;
    assert_eq!((omi.synced, omi.pending, omi.dead), (2_000, 0, 0));
    let el = destination_counts(&stack, Destination::Engagelab).await;
    assert_eq!(el.synced + el.skipped, 2_000);
    assert_eq!((el.pending, el.dead), (0, 0));
    // The stand-in's side: every contact counted as synced is held there, written once; a
    // skipped one (neither phone nor e-mail, about 1 in 50) was never written.
    assert_eq!(held_at_engagelab(&stack), el.synced as usize);
    assert!(el.skipped < 200, "{el:?}");
    for id in &ids {
        let writes = usize::from(stack.engagelab.contact_info(id).is_some());
        assert_eq!(stack.engagelab.contact_writes(id), writes, "contact {id}");
    }
    let (_, omi_stats) = report
        .pushed
        .iter()
        .find(|(d, _)| d.as_str() == "omi")
        .unwrap();
    assert_eq!(omi_stats.added, 2_000);
    // addMany batches of at most 50, not one request per contact. Pages arrive while the
    // pusher works, so a few batches are partial.
    let adds: Vec<usize> = stack
        .omi
        .server()
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/addMany"))
        .map(|r| r.body_json().unwrap()["data"].as_array().unwrap().len())
        .collect();
    assert!(adds.iter().all(|n| *n <= 50), "{adds:?}");
    assert!(adds.len() <= 80, "{} addMany requests", adds.len());
}

#[tokio::test]
async fn payloads_are_as_the_spec_says() {
    let stack = Stack::with_contacts(3).await;
    stack.dolphins.push(known_record(
        "known-1",
        "6285782120717",
        "Siti.Rahayu@Example.COM",
    ));
    stack
        .dolphins
        .push(json!({"id": "no-contact-info", "contactFirstName": "Budi"}));
    backfill(&stack).await;

    let omi = stack.omi.contact("known-1").expect("at OMI");
    assert_eq!(omi["refId"], "known-1");
    assert_eq!(omi["refType"], "3dolphins");
    assert_eq!(omi["fullName"], "Siti Rahayu");
    assert_eq!(
        omi["phones"],
        json!([{"data": "+6285782120717", "type": "personal", "valueType": "Cá nhân"}])
    );
    assert_eq!(
        omi["emails"],
        json!([{"data": "siti.rahayu@example.com", "type": "personal", "valueType": "Cá nhân"}])
    );
    assert_eq!(omi["tags"], json!(["3dolphins"]));

    assert_eq!(
        stack.engagelab.contact_info("known-1"),
        Some(json!({"mobile_phone": "+6285782120717", "email": "siti.rahayu@example.com"}))
    );
    let register = stack
        .engagelab
        .server()
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with("/register"))
        .unwrap();
    assert_eq!(register.body_json().unwrap()["identity_name"], "user_id");

    // Neither phone nor e-mail: skipped at EngageLab, still a contact at OMI.
    assert!(stack.omi.contact("no-contact-info").is_some());
    assert_eq!(stack.engagelab.euid("no-contact-info"), None);
    assert_eq!(
        destination_counts(&stack, Destination::Engagelab)
            .await
            .skipped,
        1
    );
}

#[tokio::test]
async fn repeat_pass_with_nothing_changed_sends_nothing() {
    let stack = Stack::with_contacts(300).await;
    backfill(&stack).await;
    let before = requests_to(&stack);
    assert!(
        before.0 > 0 && before.1 > 0,
        "the first pass sent: {before:?}"
    );
    let report = backfill(&stack).await;
    assert_eq!(report.pass.unchanged, 300);
    assert_eq!(
        requests_to(&stack),
        before,
        "no request to either destination"
    );
}

/// The pushers wake on each page the pass commits, not when the pass ends: a change on the
/// first page reaches both destinations while the pass is held on its third page.
#[tokio::test]
async fn a_change_on_an_early_page_is_delivered_while_the_pass_goes_on() {
    let stack = Stack::with_contacts(500).await;
    backfill(&stack).await;
    let id = stack.dolphins.ids()[0].clone();
    stack.dolphins.update(&id, |r| {
        r["contactEmail"] = json!(["early.page@example.com"]);
        r.as_object_mut().unwrap().remove("contactEmailString");
    });
    // Pages of 100: the first two are served at once; the third is held, and so is each
    // retry of it after the 5 s HTTP timeout, for a minute in all.
    let faults = stack.dolphins.faults();
    faults.exclude_when(|path| !path.ends_with("/graph/contacts/all"));
    for hold in [0, 0].into_iter().chain([600; 12]) {
        faults.push(Fault::Slow(Duration::from_secs(hold)));
    }
    let engine = stack.engine();
    let health = engine.source_health();
    let cancel = CancellationToken::new();
    let daemon = tokio::spawn(async move { engine.daemon(&cancel).await });
    let holds = |copy: Option<Value>| copy.is_some_and(|c| c.to_string().contains("early.page@"));
    // Well below the pushers' idle recheck (30 s), which would find the change without a wake.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(holds(stack.omi.contact(&id)) && holds(stack.engagelab.contact_info(&id))) {
        assert!(
            Instant::now() < deadline,
            "the change never reached both destinations"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let source = health.borrow().clone();
    assert!(
        source.in_pass && source.pages < 5,
        "delivered before the pass ended: {source:?}"
    );
    daemon.abort();
}

#[tokio::test]
async fn a_change_goes_out_as_an_update_never_a_second_add() {
    let stack = Stack::with_contacts(50).await;
    stack
        .dolphins
        .push(known_record("known-1", "6285782120717", "siti@example.com"));
    backfill(&stack).await;

    // A new e-mail reaches both destinations.
    stack.dolphins.update("known-1", |r| {
        r["contactEmail"] = json!(["siti.new@example.com"])
    });
    backfill(&stack).await;
    assert_eq!(stack.omi.add_count("known-1"), 1);
    assert_eq!(stack.omi.update_count("known-1"), 1);
    assert_eq!(
        stack.omi.contact("known-1").unwrap()["emails"][0]["data"],
        "siti.new@example.com"
    );
    assert_eq!(
        stack.engagelab.contact_info("known-1").unwrap()["email"],
        "siti.new@example.com"
    );
    assert_eq!(stack.engagelab.contact_writes("known-1"), 2);

    // A new name is OMI's business only: EngageLab's payload did not change.
    stack
        .dolphins
        .update("known-1", |r| r["contactLastName"] = json!("Wijaya"));
    backfill(&stack).await;
    assert_eq!(stack.omi.update_count("known-1"), 2);
    assert_eq!(
        stack.omi.contact("known-1").unwrap()["fullName"],
        "Siti Wijaya"
    );
    assert_eq!(stack.engagelab.contact_writes("known-1"), 2);
    assert!(stack.omi.duplicates().is_empty());
}

#[tokio::test]
async fn addmany_batch_with_one_bad_record_delivers_the_rest() {
    let stack = Stack::with_contacts(120).await;
    // Another contact at OMI already owns this phone: adding it again is refused for good.
    stack.omi.seed_contact(json!({
        "refId": "crm-native-7",
        "fullName": "Owner",
        "phones": [{"data": "+6281234567890", "type": "personal", "valueType": "Cá nhân"}],
    }));
    stack.dolphins.push(known_record(
        "taken-phone",
        "081234567890",
        "taken@example.com",
    ));
    backfill(&stack).await;

    for id in stack
        .dolphins
        .ids()
        .iter()
        .filter(|id| *id != "taken-phone")
    {
        assert_eq!(stack.omi.add_count(id), 1, "{id}");
    }
    assert_eq!(stack.omi.add_count("taken-phone"), 0);
    let dead = store::dead_letters(&stack.store).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(
        (dead[0].contact_id.as_str(), dead[0].destination.as_str()),
        ("taken-phone", "omi")
    );
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("phone_or_email_assigned_on_other_contact")
    );
    // EngageLab has no such rule: it got the contact.
    assert!(stack.engagelab.contact_info("taken-phone").is_some());
}

#[tokio::test]
async fn dead_letters_can_be_retried() {
    let stack = Stack::with_contacts(10).await;
    let bad = stack.dolphins.ids()[4].clone();
    stack.omi.reject_ref_ids([bad.clone()]);
    backfill(&stack).await;
    assert_eq!(destination_counts(&stack, Destination::Omi).await.dead, 1);

    stack.omi.clear_rejections();
    let n = store::retry_dead_letters(
        &stack.store,
        Some(Destination::Omi),
        Some(&bad),
        store::now_ms(),
    )
    .await
    .unwrap();
    assert_eq!(n, 1);
    backfill(&stack).await;
    assert_eq!(destination_counts(&stack, Destination::Omi).await.dead, 0);
    assert_eq!(stack.omi.add_count(&bad), 1);
}

#[tokio::test]
async fn an_add_whose_answer_was_lost_is_confirmed_by_update() {
    let stack = Stack::with_contacts(40).await;
    // The first addMany is applied, then the connection drops: the outcome is unknown.
    stack.omi.server().faults().push(Fault::AppliedThenDropped);
    backfill(&stack).await;
    assert!(stack.omi.duplicates().is_empty());
    for id in stack.dolphins.ids() {
        assert_eq!(stack.omi.add_count(&id), 1, "{id}");
    }
    // Those 40 were confirmed with an update each, not added again.
    let updates = stack
        .omi
        .server()
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/update"))
        .count();
    assert_eq!(updates, 40);
}

#[tokio::test]
async fn faults_at_every_service_converge_without_duplicates_or_losses() {
    let stack = Stack::with_contacts(2_000).await;
    let faults = FaultConfig {
        too_many_requests: 0.10,
        retry_after: Duration::ZERO,
        server_error: 0.10,
        reset: 0.05,
        applied_then_dropped: 0.10,
        ..FaultConfig::default()
    };
    stack.dolphins.server().faults().set(faults.clone());
    stack.omi.server().faults().set(faults.clone());
    stack.engagelab.server().faults().set(faults);
    backfill(&stack).await;

    assert!(
        stack.omi.duplicates().is_empty(),
        "duplicates: {:?}",
        stack.omi.duplicates()
    );
    let ids = stack.dolphins.ids();
    assert_eq!(ids.len(), 2_000);
    for id in &ids {
        assert_eq!(stack.omi.add_count(id), 1, "{id}");
    }
    let dead = store::dead_letters(&stack.store).await.unwrap();
    assert!(
        dead.is_empty(),
        "{} dead letters, first: {:?}",
        dead.len(),
        dead.first()
    );
    let omi = destination_counts(&stack, Destination::Omi).await;
    assert_eq!((omi.synced, omi.pending, omi.dead), (2_000, 0, 0));
    let el = destination_counts(&stack, Destination::Engagelab).await;
    assert_eq!((el.synced + el.skipped, el.pending, el.dead), (2_000, 0, 0));
    assert!(el.skipped < 200, "{el:?}");
    assert_eq!(held_at_engagelab(&stack), el.synced as usize);
    let injected = stack
        .omi
        .server()
        .requests()
        .iter()
        .filter(|r| r.fault.is_some())
        .count();
    assert!(injected > 10, "faults were injected ({injected})");
}

#[tokio::test]
async fn configured_rate_is_held_below_the_destination_limit() {
    const RATE: f64 = 40.0;
    let stack = Stack::start(
        DolphinsOptions {
            contacts: 160,
            ..DolphinsOptions::default()
        },
        OmiOptions {
            rate_limit: Some(RATE * 1.2),
            ..OmiOptions::default()
        },
        EngagelabOptions::default(),
        // One record per addMany, so every contact is one request.
        "batch_size = 1",
    )
    .await;
    let settings = {
        let mut s = stack.settings.clone();
        s.omi.as_mut().unwrap().requests_per_second = RATE;
        s
    };
    let engine = contact_sync::sync::Engine::new(&settings, stack.store.clone()).unwrap();
    engine.backfill(&CancellationToken::new()).await.unwrap();
    let requests = stack.omi.server().requests();
    assert!(requests.len() > 160, "{} requests", requests.len());
    assert!(
        requests.iter().all(|r| r.status != Some(429)),
        "the destination limit was never hit"
    );
    // Never above the configured rate, however fast or slow the machine: the limiter allows
    // no burst, so no second of arrivals holds more than RATE requests, plus one for the
    // token request and those whose arrival scheduling delayed into the window: on a machine
    // loaded by the rest of the suite, up to about 100 ms of them (43 once, with +2 allowed).
    let mut arrivals: Vec<Instant> = requests.iter().map(|r| r.received_at).collect();
    arrivals.sort();
    let busiest_second = (0..arrivals.len())
        .map(|i| {
            arrivals[i..]
                .iter()
                .take_while(|t| t.duration_since(arrivals[i]) < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap();
    assert!(
        busiest_second as f64 <= RATE * 1.1 + 1.0,
        "{busiest_second} requests within one second, above the configured {RATE}/s"
    );
    // Only a loose lower bound: a slow machine may send slower, never faster.
    let span = arrivals[arrivals.len() - 1] - arrivals[0];
    let rate = (arrivals.len() - 1) as f64 / span.as_secs_f64();
    assert!(rate >= RATE / 4.0, "rate {rate:.1}/s, far below {RATE}/s");
}

/// A far-away EngageLab: every answer takes 500 ms. At 40 requests/s that needs about 20 in
/// flight, more than the fixed 8 there used to be; the pusher must follow the latency and
/// keep loading while requests are out. A slow machine only adds latency, so it can only
/// raise what the stand-in sees at once.
#[tokio::test]
async fn concurrency_follows_latency_to_hold_the_rate() {
    const RATE: f64 = 40.0;
    let stack = Stack::start(
        DolphinsOptions {
            contacts: 200,
            ..DolphinsOptions::default()
        },
        OmiOptions::default(),
        EngagelabOptions {
            rate_limit: Some(RATE * 1.2),
            ..EngagelabOptions::default()
        },
        "",
    )
    .await;
    stack.engagelab.server().faults().set(FaultConfig {
        slow: 1.0,
        slow_delay: Duration::from_millis(500),
        ..FaultConfig::default()
    });
    let settings = {
        let mut s = stack.settings.clone();
        let engagelab = s.engagelab.as_mut().unwrap();
        engagelab.requests_per_second = RATE;
        engagelab.max_in_flight = 64;
        s
    };
    let engine = contact_sync::sync::Engine::new(&settings, stack.store.clone()).unwrap();
    engine.backfill(&CancellationToken::new()).await.unwrap();
    let el = destination_counts(&stack, Destination::Engagelab).await;
    assert_eq!((el.synced + el.skipped, el.pending, el.dead), (200, 0, 0));
    assert_eq!(held_at_engagelab(&stack), el.synced as usize);
    let requests = stack.engagelab.server().requests();
    assert!(
        requests.iter().all(|r| r.status != Some(429)),
        "the destination limit was never hit"
    );
    let most = stack.engagelab.server().max_concurrency();
    assert!(most > 8, "at most {most} requests at once at EngageLab");
}

#[tokio::test]
async fn a_429_pauses_the_whole_destination_for_its_retry_after() {
    let stack = Stack::with_contacts(30).await;
    stack.omi.server().faults().push(Fault::TooManyRequests {
        retry_after: Duration::from_secs(1),
    });
    let started = Instant::now();
    backfill(&stack).await;
    assert!(started.elapsed() >= Duration::from_secs(1));
    let omi = destination_counts(&stack, Destination::Omi).await;
    assert_eq!((omi.synced, omi.dead), (30, 0));
    stack.assert_each_added_once();
}

#[tokio::test]
async fn a_paused_destination_does_not_stall_the_other() {
    let stack = Stack::with_contacts(200).await;
    // OMI answers 429 with a long Retry-After: it is paused for the whole test.
    stack.omi.server().faults().push(Fault::TooManyRequests {
        retry_after: Duration::from_secs(120),
    });
    let engine = stack.engine();
    let cancel = CancellationToken::new();
    let run = engine.backfill(&cancel);
    let watch = async {
        let deadline = Instant::now() + Duration::from_secs(60);
        let el = loop {
            let el = destination_counts(&stack, Destination::Engagelab).await;
            if el.synced + el.skipped == 200 {
                break el;
            }
            assert!(Instant::now() < deadline, "EngageLab stalled: {el:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(el.skipped < 20, "{el:?}");
        assert_eq!(held_at_engagelab(&stack), el.synced as usize);
        let omi = destination_counts(&stack, Destination::Omi).await;
        assert_eq!(omi.synced, 0, "OMI is still paused");
        cancel.cancel();
    };
    let (result, ()) = tokio::join!(run, watch);
    result.unwrap();
    let seen: Vec<(String, Option<u16>)> = stack
        .omi
        .server()
        .requests()
        .into_iter()
        .map(|r| (r.path, r.status))
        .collect();
    assert_eq!(seen.len(), 1, "{seen:?}");
}

#[tokio::test]
async fn refused_credentials_fail_the_backfill_but_not_the_other_destination() {
    let stack = Stack::start(
        DolphinsOptions {
            contacts: 60,
            ..DolphinsOptions::default()
        },
        OmiOptions {
            api_key: "the-real-key".into(),
            ..OmiOptions::default()
        },
        EngagelabOptions::default(),
        "",
    )
    .await;
    let mut settings = stack.settings.clone();
    settings.omi.as_mut().unwrap().auth =
        contact_sync::config::OmiAuth::ApiKey("a-wrong-key".to_owned().into());
    let engine = contact_sync::sync::Engine::new(&settings, stack.store.clone()).unwrap();
    let err = engine
        .backfill(&CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, EngineError::DestinationAuth(d) if d.as_str() == "omi"),
        "{err}"
    );
    assert!(!format!("{err:?}").contains("a-wrong-key"));
    let el = destination_counts(&stack, Destination::Engagelab).await;
    assert_eq!(el.synced + el.skipped, 60);
    assert!(el.skipped < 10, "{el:?}");
    assert_eq!(held_at_engagelab(&stack), el.synced as usize);
    assert!(
        engine
            .pusher(contact_sync::sink::Destination::Omi)
            .unwrap()
            .auth_refused()
    );
}

#[tokio::test]
async fn omi_token_is_renewed_after_a_401() {
    let stack = Stack::with_contacts(20).await;
    backfill(&stack).await;
    assert_eq!(stack.omi.token_count(), 1);
    stack.omi.expire_tokens();
    let changed: Vec<String> = stack.dolphins.ids().into_iter().take(5).collect();
    for id in &changed {
        stack
            .dolphins
            .update(id, |r| r["contactLastName"] = json!("Changed"));
    }
    backfill(&stack).await;
    assert_eq!(stack.omi.token_count(), 2);
    assert_eq!(
        destination_counts(&stack, Destination::Omi).await.synced,
        20
    );
    // The changes reached OMI with the new token, once each.
    for id in stack.dolphins.ids() {
        let expected = usize::from(changed.contains(&id));
        assert_eq!(stack.omi.update_count(&id), expected, "{id}");
    }
}

#[tokio::test]
async fn engagelab_invalid_euid_is_registered_again() {
    let stack = Stack::with_contacts(5).await;
    stack
        .dolphins
        .push(known_record("known-1", "6285782120717", "siti@example.com"));
    backfill(&stack).await;
    let first = stack.engagelab.euid("known-1").unwrap();
    assert!(stack.engagelab.invalidate_euid("known-1"));
    stack.dolphins.update("known-1", |r| {
        r["contactEmail"] = json!(["siti.new@example.com"])
    });
    backfill(&stack).await;
    let second = stack.engagelab.euid("known-1").unwrap();
    assert_ne!(first, second);
    assert_eq!(
        stack.engagelab.contact_info("known-1").unwrap()["email"],
        "siti.new@example.com"
    );
    assert_eq!(
        destination_counts(&stack, Destination::Engagelab)
            .await
            .dead,
        0
    );
}

#[tokio::test]
async fn engagelab_codes_are_handled_as_documented() {
    let stack = Stack::start(
        DolphinsOptions {
            contacts: 0,
            ..DolphinsOptions::default()
        },
        OmiOptions::default(),
        EngagelabOptions::default(),
        "",
    )
    .await;
    for i in 0..3 {
        stack.dolphins.push(known_record(
            &format!("c{i}"),
            "6285782120717",
            &format!("c{i}@example.com"),
        ));
    }
    // In send order: internal error (retried), "contact exists" (success), parameter error (dead).
    stack.engagelab.push_code(code::INTERNAL_ERROR);
    stack.engagelab.push_code(code::CONTACT_EXISTS);
    stack.engagelab.push_code(code::INVALID_PARAMETER);
    backfill(&stack).await;
    let el = destination_counts(&stack, Destination::Engagelab).await;
    assert_eq!((el.synced, el.dead, el.pending), (2, 1, 0));
    let dead = store::dead_letters(&stack.store).await.unwrap();
    assert!(dead[0].last_error.as_deref().unwrap().contains("55004"));
    // At the stand-in: the retried contact is held; "contact exists" and the refused one
    // were answered without being applied; four contact writes were sent (one a retry).
    assert_eq!(held_at_engagelab(&stack), 1);
    let writes = stack
        .engagelab
        .server()
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/v1/user/contact"))
        .count();
    assert_eq!(writes, 4);
}

#[tokio::test]
async fn dry_run_counts_what_would_be_sent_and_sends_nothing() {
    let stack = Stack::with_contacts(100).await;
    let puller = contact_sync::app::puller(&stack.settings, stack.store.clone(), true).unwrap();
    let outcome = puller.run_pass(&CancellationToken::new()).await.unwrap();
    let omi = &outcome.preview.destinations[&Destination::Omi];
    assert_eq!((omi.new, omi.update), (100, 0));
    assert_eq!(omi.examples.len(), 3);
    assert_eq!(omi.examples[0]["refType"], "3dolphins");
    let el = &outcome.preview.destinations[&Destination::Engagelab];
    assert_eq!(el.new + el.skip, 100);
    assert_eq!(requests_to(&stack), (0, 0));
    let status = store::status(&stack.store, &[Destination::Omi])
        .await
        .unwrap();
    assert_eq!(
        (
            status.contacts,
            status.destinations[&Destination::Omi].pending
        ),
        (0, 0)
    );
}

#[tokio::test]
async fn enabling_a_destination_later_delivers_existing_contacts() {
    let stack = Stack::with_contacts(25).await;
    let mut omi_only = stack.settings.clone();
    omi_only.engagelab = None;
    contact_sync::sync::Engine::new(&omi_only, stack.store.clone())
        .unwrap()
        .backfill(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(stack.engagelab.server().request_count(), 0);
    // Same source, nothing changed there; EngageLab is now on.
    backfill(&stack).await;
    let el = destination_counts(&stack, Destination::Engagelab).await;
    assert_eq!(el.synced + el.skipped, 25);
    assert!(el.skipped < 5, "{el:?}");
    assert_eq!(held_at_engagelab(&stack), el.synced as usize);
}

#[tokio::test]
async fn dead_letters_command_lists_and_retries() {
    let stack = Stack::with_contacts(10).await;
    let bad = stack.dolphins.ids()[2].clone();
    stack.omi.reject_ref_ids([bad.clone()]);
    backfill(&stack).await;
    let config = stack.config_path();
    let run = |args: &'static [&'static str]| {
        let config = config.clone();
        async move {
            let out = tokio::process::Command::new(BIN)
                .arg("--config")
                .arg(&config)
                .args(args)
                .output()
                .await
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        }
    };
    let letters: Value = serde_json::from_str(&run(&["dead-letters", "--json"]).await).unwrap();
    assert_eq!(letters.as_array().unwrap().len(), 1);
    assert_eq!(letters[0]["contact_id"], bad.as_str());
    assert_eq!(letters[0]["destination"], "omi");
    assert_eq!(letters[0]["attempts"], 1);
    assert!(
        letters[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("validation_error")
    );
    assert!(run(&["dead-letters"]).await.contains(&bad));

    let said = run(&["dead-letters", "retry", "--destination", "omi"]).await;
    assert!(said.contains("1 dead letters are due again"), "{said}");
    let omi = destination_counts(&stack, Destination::Omi).await;
    assert_eq!((omi.dead, omi.pending), (0, 1));
}
