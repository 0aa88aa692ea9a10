//! The pull pass against the 3Dolphins stand-in over loopback HTTP.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::helpers::{TestEnv, first_list_start, stored_ids};
use contact_sync::store;
use contact_sync::sync::{PassOutcome, PassRun, Puller, SyncError};
use contact_sync_sim::dolphins::{DolphinsAuth, DolphinsOptions};
use contact_sync_sim::server::{Fault, FaultConfig};
use tokio_util::sync::CancellationToken;

fn opts(contacts: usize) -> DolphinsOptions {
    DolphinsOptions {
        contacts,
        ..DolphinsOptions::default()
    }
}

/// `contacts` served at most `page_cap` a page.
fn paged(contacts: usize, page_cap: usize) -> DolphinsOptions {
    DolphinsOptions {
        page_cap,
        ..opts(contacts)
    }
}

/// One whole pass by a fresh puller.
async fn pass(env: &TestEnv) -> Result<PassOutcome, SyncError> {
    env.puller().run_pass(&CancellationToken::new()).await
}

async fn quarantined(env: &TestEnv) -> i64 {
    store::status(&env.store, &[]).await.unwrap().quarantined
}

fn sorted(ids: Vec<String>) -> Vec<String> {
    ids.into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

async fn stored_set(env: &TestEnv) -> BTreeSet<String> {
    stored_ids(&env.store).await.into_iter().collect()
}

/// Requests the stand-in refused with 401.
fn unauthorized(env: &TestEnv) -> usize {
    env.sim
        .server()
        .requests()
        .iter()
        .filter(|r| r.status == Some(401))
        .count()
}

/// A pass over 200 records, 20 a page with an overlap of 5, that has read three pages when
/// the first `removed` records it read disappear from the source.
async fn remove_after_three_pages(removed: usize) -> (TestEnv, Puller, PassRun) {
    let env = TestEnv::start(paged(200, 20), "page_size = 20\npage_overlap = 5").await;
    let puller = env.puller();
    let mut run = puller.begin().await.unwrap();
    for _ in 0..3 {
        assert!(puller.step(&mut run).await.unwrap());
    }
    for id in env.sim.ids().into_iter().take(removed) {
        assert!(env.sim.remove(&id));
    }
    (env, puller, run)
}

#[tokio::test]
async fn short_pages_are_followed_by_next_index() {
    let env = TestEnv::start(paged(100, 7), "page_size = 50\npage_overlap = 0").await;
    let outcome = pass(&env).await.unwrap();
    assert!(outcome.completed);
    assert_eq!(outcome.records, 100);
    assert_eq!(outcome.pages, 15, "100 records at 7 a page");
    assert_eq!(stored_ids(&env.store).await, sorted(env.sim.ids()));
}

#[tokio::test]
async fn malformed_records_are_quarantined_without_losing_their_page() {
    let env = TestEnv::start(
        DolphinsOptions {
            malformed: 7,
            ..opts(300)
        },
        "",
    )
    .await;
    let outcome = pass(&env).await.unwrap();
    assert_eq!(outcome.quarantined, 7);
    assert_eq!(quarantined(&env).await, 7);
    assert_eq!(stored_ids(&env.store).await, sorted(env.sim.ids()));
    assert_eq!(outcome.new_contacts as usize, env.sim.ids().len());

    // Seen again, a quarantined record is the same row, not a new one.
    pass(&env).await.unwrap();
    assert_eq!(quarantined(&env).await, 7);
}

#[tokio::test]
async fn unchanged_source_changes_nothing_and_an_edit_is_one_change() {
    let env = TestEnv::start(opts(250), "").await;
    let puller = env.puller();
    let cancel = CancellationToken::new();
    puller.run_pass(&cancel).await.unwrap();
    let changed_at: Vec<i64> = sqlx::query_scalar("SELECT changed_at FROM contacts ORDER BY id")
        .fetch_all(env.store.pool())
        .await
        .unwrap();

    let again = puller.run_pass(&cancel).await.unwrap();
    assert_eq!(
        (again.new_contacts, again.changed, again.unchanged),
        (0, 0, 250)
    );
    let changed_at_again: Vec<i64> =
        sqlx::query_scalar("SELECT changed_at FROM contacts ORDER BY id")
            .fetch_all(env.store.pool())
            .await
            .unwrap();
    assert_eq!(changed_at, changed_at_again);

    let id = env.sim.ids()[17].clone();
    assert!(
        env.sim
            .update(&id, |record| record["contactLastName"] = "Renamed".into())
    );
    let third = puller.run_pass(&cancel).await.unwrap();
    assert_eq!(
        (third.new_contacts, third.changed, third.unchanged),
        (0, 1, 249)
    );
    let last: String = sqlx::query_scalar("SELECT last_name FROM contacts WHERE id = ?1")
        .bind(&id)
        .fetch_one(env.store.pool())
        .await
        .unwrap();
    assert_eq!(last, "Renamed");
}

#[tokio::test]
async fn records_deleted_before_the_cursor_mid_pass_are_not_skipped() {
    // Three records already read disappear: everything after them shifts back by three.
    let (env, puller, mut run) = remove_after_three_pages(3).await;
    while puller.step(&mut run).await.unwrap() {}
    let outcome = puller.finish(run);
    assert_eq!(outcome.shifts_beyond_overlap, 0);
    let stored = stored_set(&env).await;
    for id in env.sim.ids() {
        assert!(stored.contains(&id), "record {id} was skipped");
    }
}

#[tokio::test]
async fn a_shift_beyond_the_overlap_is_detected_and_healed_by_the_next_pass() {
    // Ten records already read disappear: the rest shifts back by twice the overlap, so the
    // next page starts past records never read.
    let (env, puller, mut run) = remove_after_three_pages(10).await;
    while puller.step(&mut run).await.unwrap() {}
    let outcome = puller.finish(run);
    assert!(outcome.completed);
    assert_eq!(outcome.shifts_beyond_overlap, 1, "the detector fired once");
    let stored = stored_set(&env).await;
    let missed: Vec<String> = env
        .sim
        .ids()
        .into_iter()
        .filter(|id| !stored.contains(id))
        .collect();
    assert_eq!(missed.len(), 5, "the shift past the overlap: {missed:?}");

    // As the warning says, the next pass picks them up.
    let next = puller.run_pass(&CancellationToken::new()).await.unwrap();
    assert_eq!(next.shifts_beyond_overlap, 0);
    assert_eq!(next.new_contacts, 5);
    let stored = stored_set(&env).await;
    for id in env.sim.ids() {
        assert!(stored.contains(&id), "record {id} still missing");
    }
}

#[tokio::test]
async fn records_inserted_mid_pass_are_stored_by_the_next_pass() {
    let env = TestEnv::start(paged(200, 25), "page_size = 25").await;
    let puller = env.puller();
    let mut run = puller.begin().await.unwrap();
    assert!(puller.step(&mut run).await.unwrap());
    assert!(puller.step(&mut run).await.unwrap());
    // New records at the front shift everything forward: some records are read twice.
    for i in 0..10 {
        env.sim
            .insert_front(contact_sync_sim::dolphins::generate_contact(99, i));
    }
    while puller.step(&mut run).await.unwrap() {}
    let first = puller.finish(run);
    assert!(first.completed);
    assert_eq!(
        first.new_contacts, 200,
        "a record read twice is stored once"
    );

    puller.run_pass(&CancellationToken::new()).await.unwrap();
    assert_eq!(stored_ids(&env.store).await, sorted(env.sim.ids()));
}

#[tokio::test]
async fn an_interrupted_pass_resumes_where_it_stopped() {
    let env = TestEnv::start(paged(300, 30), "page_size = 30\npage_overlap = 0").await;
    {
        // The first "process" commits four pages, then dies without completing the pass.
        let puller = env.puller();
        let mut run = puller.begin().await.unwrap();
        for _ in 0..4 {
            assert!(puller.step(&mut run).await.unwrap());
        }
    }
    let status = store::status(&env.store, &[]).await.unwrap();
    assert_eq!(
        status.current_pass.as_ref().map(|p| p.next_start),
        Some(120)
    );
    assert!(status.last_pass.is_none());

    env.sim.server().clear_requests();
    let outcome = pass(&env).await.unwrap();
    assert!(outcome.completed);
    assert_eq!(outcome.resumed_at, 120);
    assert_eq!(outcome.pass_id, 1, "the same pass goes on");
    assert_eq!(outcome.records, 180);
    assert_eq!(first_list_start(&env.sim), Some(120));
    assert_eq!(stored_ids(&env.store).await, sorted(env.sim.ids()));
}

#[tokio::test]
async fn contacts_missing_from_two_complete_passes_are_marked_deleted() {
    let env = TestEnv::start(opts(50), "").await;
    let puller = env.puller();
    let cancel = CancellationToken::new();
    puller.run_pass(&cancel).await.unwrap();
    let gone = env.sim.ids()[3].clone();
    env.sim.remove(&gone);

    let one = puller.run_pass(&cancel).await.unwrap();
    assert_eq!(one.deleted, 0, "one missed pass is not enough");
    let two = puller.run_pass(&cancel).await.unwrap();
    assert_eq!(two.deleted, 1);
    let status = store::status(&env.store, &[]).await.unwrap();
    assert_eq!((status.contacts, status.deleted), (49, 1));

    // It is kept, and comes back to life if the source sends it again.
    env.sim.push(contact_sync_sim::dolphins::generate_contact(
        DolphinsOptions::default().seed,
        3,
    ));
    puller.run_pass(&cancel).await.unwrap();
    let status = store::status(&env.store, &[]).await.unwrap();
    assert_eq!((status.contacts, status.deleted), (50, 0));
}

#[tokio::test]
async fn login_then_renewal_after_the_token_is_refused() {
    let auth = DolphinsAuth::Login {
        username: "ops".into(),
        password: "pw".into(),
    };
    let env = TestEnv::start(
        DolphinsOptions {
            auth,
            page_cap: 20,
            ..opts(100)
        },
        "username = \"ops\"\npassword = \"pw\"\npage_size = 20",
    )
    .await;
    let puller = env.puller();
    let mut run = puller.begin().await.unwrap();
    assert!(puller.step(&mut run).await.unwrap());
    assert_eq!(env.sim.login_count(), 1);
    env.sim.expire_tokens();
    while puller.step(&mut run).await.unwrap() {}
    assert!(puller.finish(run).completed);
    assert_eq!(env.sim.login_count(), 2, "one renewal after the 401");
    assert_eq!(unauthorized(&env), 1);
    assert_eq!(stored_ids(&env.store).await.len(), 100);
}

#[tokio::test]
async fn token_is_renewed_before_it_expires() {
    const TTL: Duration = Duration::from_millis(200);
    let auth = DolphinsAuth::Login {
        username: "ops".into(),
        password: "pw".into(),
    };
    let env = TestEnv::start(
        DolphinsOptions {
            auth,
            // The stand-in announces a 200 ms lifetime but honours tokens far longer, so
            // however late the next page goes out, only the client's own clock can make it
            // log in again: a refused token cannot be what triggers the renewal.
            token_ttl: TTL,
            token_grace: Duration::from_secs(3600),
            page_cap: 10,
            ..opts(30)
        },
        "username = \"ops\"\npassword = \"pw\"\npage_size = 10",
    )
    .await;
    let puller = env.puller();
    let mut run = puller.begin().await.unwrap();
    assert!(puller.step(&mut run).await.unwrap());
    assert_eq!(env.sim.login_count(), 1);
    // Let the announced lifetime pass; being late here only makes the renewal more due.
    tokio::time::sleep(TTL).await;
    while puller.step(&mut run).await.unwrap() {}
    assert_eq!(
        env.sim.login_count(),
        2,
        "renewed once, on the announced expiry"
    );
    assert_eq!(unauthorized(&env), 0, "renewed ahead of any refusal");
}

#[tokio::test]
async fn wrong_password_is_an_auth_error_not_a_retry_loop() {
    let auth = DolphinsAuth::Login {
        username: "ops".into(),
        password: "right".into(),
    };
    let env = TestEnv::start(
        DolphinsOptions { auth, ..opts(10) },
        "username = \"ops\"\npassword = \"wrong\"",
    )
    .await;
    let err = pass(&env).await.unwrap_err();
    assert!(err.to_string().contains("refused the credentials"), "{err}");
    assert!(
        !err.to_string().contains("wrong"),
        "no secret in errors: {err}"
    );
    assert_eq!(env.sim.server().request_count(), 1);
}

#[tokio::test]
async fn transient_faults_are_retried_and_nothing_is_lost() {
    let env = TestEnv::start(paged(200, 20), "page_size = 20").await;
    let faults = env.sim.server().faults();
    faults.push(Fault::TooManyRequests {
        retry_after: Duration::from_secs(1),
    });
    faults.push(Fault::ServerError(503));
    faults.push(Fault::Reset);
    faults.push(Fault::Slow(Duration::from_millis(50)));
    faults.push(Fault::AppliedThenDropped);
    let started = std::time::Instant::now();
    let outcome = pass(&env).await.unwrap();
    assert!(outcome.completed);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After was honoured"
    );
    assert_eq!(stored_ids(&env.store).await, sorted(env.sim.ids()));
}

#[tokio::test]
async fn random_faults_still_converge() {
    let env = TestEnv::start(paged(500, 25), "page_size = 25").await;
    env.sim.server().faults().set(FaultConfig {
        too_many_requests: 0.1,
        retry_after: Duration::ZERO,
        server_error: 0.1,
        reset: 0.05,
        ..FaultConfig::default()
    });
    let outcome = pass(&env).await.unwrap();
    assert!(outcome.completed);
    assert_eq!(stored_ids(&env.store).await, sorted(env.sim.ids()));
}

#[tokio::test]
async fn source_down_fails_the_pass_after_retries() {
    let env = TestEnv::start(opts(10), "").await;
    env.sim
        .server()
        .faults()
        .push_n(Fault::ServerError(502), 100);
    let err = pass(&env).await.unwrap_err();
    assert!(err.to_string().contains("502"), "{err}");
    assert_eq!(
        env.sim.server().request_count(),
        6,
        "retry.max_attempts in all"
    );
}

#[tokio::test]
async fn dry_run_writes_nothing() {
    let env = TestEnv::start(
        DolphinsOptions {
            malformed: 2,
            ..opts(40)
        },
        "",
    )
    .await;
    let dry = contact_sync::app::puller(&env.settings, env.store.clone(), true).unwrap();
    let outcome = dry.run_pass(&CancellationToken::new()).await.unwrap();
    assert_eq!((outcome.new_contacts, outcome.quarantined), (40, 2));
    let status = store::status(&env.store, &[]).await.unwrap();
    assert_eq!((status.contacts, status.quarantined), (0, 0));
    assert!(status.last_pass.is_none() && status.current_pass.is_none());
}
