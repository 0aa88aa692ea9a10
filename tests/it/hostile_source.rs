//! Issue 8, source side: a catalogue of hostile 3Dolphins answers (pages, paging fields,
//! records, bodies, logins), each driven through the real `Puller` over loopback HTTP.

use std::time::Duration;

use crate::helpers::{BIN, TestEnv, stored_ids};
use contact_sync::domain::{NORMALIZER_VERSION, raw_hash, raw_hash_with};
use contact_sync::sync::{PassOutcome, SyncError};
use contact_sync_sim::dolphins::{DolphinsOptions, LoginFault, PageFault};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Long enough for the slowest case (retries of a transient failure) on a loaded machine;
/// reaching it means a pass hung, which is what the catalogue must never see.
const DEADLINE: Duration = Duration::from_secs(120);

/// Contacts the stand-in serves in every case, 50 a page.
const CONTACTS: usize = 100;

/// What a hostile input must lead to.
enum Expect {
    /// The pass completes with this many contacts stored and records quarantined, the
    /// quarantine reasons containing `reason`.
    Stored {
        contacts: usize,
        quarantined: usize,
        reason: &'static str,
    },
    /// The pass fails with an error naming the page's offset and containing `text`.
    Fails { offset: u64, text: &'static str },
}

use Expect::{Fails, Stored};

const ALL: Expect = Stored {
    contacts: CONTACTS,
    quarantined: 0,
    reason: "",
};

struct Case {
    page: Vec<PageFault>,
    login: Option<LoginFault>,
    /// Records added at the end of the list before the pass.
    extra_records: Vec<Value>,
    /// `http.max_body` for this case.
    max_body: Option<usize>,
    source_toml: &'static str,
    expect: Expect,
}

impl Default for Case {
    fn default() -> Self {
        Self {
            page: Vec::new(),
            login: None,
            extra_records: Vec::new(),
            max_body: None,
            source_toml: "page_size = 50\npage_overlap = 0",
            expect: ALL,
        }
    }
}

fn page(faults: Vec<PageFault>, expect: Expect) -> Case {
    Case {
        page: faults,
        expect,
        ..Case::default()
    }
}

fn fields(edits: &[(&str, Value)], expect: Expect) -> Case {
    let edits = edits
        .iter()
        .map(|(name, value)| ((*name).to_owned(), value.clone()))
        .collect();
    page(vec![PageFault::Fields(edits)], expect)
}

fn next_index(literal: &str, expect: Expect) -> Case {
    page(vec![PageFault::NextIndexLiteral(literal.into())], expect)
}

fn login(fault: LoginFault, expect: Expect) -> Case {
    Case {
        login: Some(fault),
        expect,
        ..Case::default()
    }
}

fn records(extra: Vec<Value>, expect: Expect) -> Case {
    Case {
        extra_records: extra,
        expect,
        ..Case::default()
    }
}

fn capped(max_body: usize, faults: Vec<PageFault>, expect: Expect) -> Case {
    Case {
        max_body: Some(max_body),
        ..page(faults, expect)
    }
}

async fn run_case(case: Case) {
    let mut env = TestEnv::start(
        DolphinsOptions {
            contacts: CONTACTS,
            ..DolphinsOptions::default()
        },
        case.source_toml,
    )
    .await;
    if let Some(max_body) = case.max_body {
        env.settings.http.max_body = max_body;
    }
    for record in &case.extra_records {
        env.sim.push(record.clone());
    }
    env.sim.set_page_faults(case.page);
    env.sim.set_login_fault(case.login);
    let result = tokio::time::timeout(DEADLINE, env.puller().run_pass(&CancellationToken::new()))
        .await
        .expect("the pass ends");
    match case.expect {
        Stored {
            contacts,
            quarantined,
            reason,
        } => {
            let outcome: PassOutcome = result.expect("the pass completes");
            assert!(outcome.completed);
            assert_eq!(stored_ids(&env.store).await.len(), contacts, "stored");
            let reasons = quarantine_reasons(&env).await;
            assert_eq!(reasons.len(), quarantined, "quarantined: {reasons:?}");
            assert!(
                reasons.iter().all(|r| r.contains(reason)),
                "reasons {reasons:?} should say {reason:?}"
            );
        }
        Fails { offset, text } => {
            let err = result.expect_err("the pass fails");
            let message = err.to_string();
            assert!(
                matches!(err, SyncError::Page { offset: at, .. } if at == offset),
                "{message}"
            );
            assert!(message.contains(&format!("offset {offset}")), "{message}");
            assert!(message.contains(text), "{message:?} should say {text:?}");
        }
    }
}

async fn quarantine_reasons(env: &TestEnv) -> Vec<String> {
    sqlx::query_scalar("SELECT reason FROM quarantine")
        .fetch_all(env.store.pool())
        .await
        .unwrap()
}

/// One `#[tokio::test]` per catalogue entry, named as in `docs/hostile/source.md`.
macro_rules! catalogue {
    ($($name:ident => $case:expr;)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                run_case($case).await;
            }
        )*

        #[test]
        fn catalogue_holds_at_least_25_hostile_inputs() {
            let names = [$(stringify!($name)),*];
            assert!(names.len() >= 25, "{} entries", names.len());
        }
    };
}

catalogue! {
    // Paging that must end.
    endless_empty_pages_past_total_complete => page(vec![PageFault::EndlessEmptyPages], ALL);
    endless_empty_pages_without_total_complete => page(
        vec![
            PageFault::EndlessEmptyPages,
            PageFault::Fields(vec![("totalResults".into(), Value::Null)]),
        ],
        ALL,
    );
    empty_page_with_has_more_before_total_fails => page(
        vec![
            PageFault::EndlessEmptyPages,
            PageFault::Fields(vec![("totalResults".into(), json!(10_000))]),
        ],
        Fails { offset: 100, text: "empty page with hasMore though totalResults is 10000" },
    );
    endless_repeated_pages_hit_the_page_budget => page(
        vec![PageFault::EndlessRepeatedPages],
        // 100 records at 50 a page imply 2 pages; the budget is 2 × 2 + 10.
        Fails { offset: 700, text: "still hasMore after 15 pages" },
    );
    next_index_that_never_advances_fails => page(
        vec![PageFault::NeverAdvance],
        Fails { offset: 0, text: "did not advance" },
    );
    next_index_that_regresses_fails => page(
        vec![PageFault::Regress(10)],
        Fails { offset: 0, text: "did not advance" },
    );
    next_index_above_i64_max_fails => next_index(
        "9223372036854775808",
        Fails { offset: 0, text: "nextIndex 9223372036854775808 is not an offset" },
    );
    next_index_above_u64_max_fails => next_index(
        "18446744073709551616",
        Fails { offset: 0, text: "nextIndex 18446744073709551616" },
    );
    next_index_as_huge_float_fails => next_index("1e300", Fails { offset: 0, text: "nextIndex 1e300" });
    next_index_negative_fails => next_index("-5", Fails { offset: 0, text: "nextIndex -5" });
    next_index_fractional_fails => next_index("50.5", Fails { offset: 0, text: "nextIndex 50.5" });
    next_index_unreadable_text_fails => next_index(
        r#""fifty""#,
        Fails { offset: 0, text: "nextIndex \"fifty\"" },
    );
    next_index_null_reads_on_by_count => next_index("null", ALL);
    next_index_as_string_is_read => page(vec![PageFault::NextIndexAsString], ALL);
    next_index_as_float_is_read => page(vec![PageFault::NextIndexAsFloat], ALL);

    // Fields the pass does not need, or reads leniently.
    total_results_as_string_is_read => page(vec![PageFault::TotalAsString], ALL);
    total_results_as_float_is_read => page(vec![PageFault::TotalAsFloat], ALL);
    total_results_unreadable_is_ignored => fields(&[("totalResults", json!({"n": [1]}))], ALL);
    total_results_negative_is_ignored => fields(&[("totalResults", json!(-3))], ALL);
    total_results_too_small_still_completes => fields(&[("totalResults", json!(10))], ALL);
    prev_index_unreadable_is_ignored => fields(&[("prevIndex", json!("abc"))], ALL);
    has_more_missing_reads_until_an_empty_page => fields(&[("hasMore", Value::Null)], ALL);
    has_more_as_string_is_read => fields(&[("hasMore", json!("true"))], ALL);
    has_more_unreadable_reads_until_an_empty_page => fields(&[("hasMore", json!({"x": 1}))], ALL);
    status_missing_is_ignored => fields(&[("status", Value::Null)], ALL);
    status_of_another_type_is_ignored => fields(&[("status", json!(200))], ALL);
    status_error_fails => fields(
        &[("status", json!("error"))],
        Fails { offset: 0, text: "contact list status \"error\"" },
    );
    unknown_fields_are_ignored => fields(
        &[("debug", json!({"trace": [1, 2, 3]})), ("data2", json!([{"id": "x"}]))],
        ALL,
    );
    data_missing_fails => fields(
        &[("data", json!("none"))],
        Fails { offset: 0, text: "no data array" },
    );

    // Records.
    invalid_utf8_in_one_record_quarantines_it => page(
        vec![PageFault::InvalidUtf8At(37)],
        Stored { contacts: CONTACTS - 1, quarantined: 1, reason: "not UTF-8" },
    );
    invalid_utf8_in_records_of_two_pages_quarantines_them => page(
        vec![PageFault::InvalidUtf8At(3), PageFault::InvalidUtf8At(77)],
        Stored { contacts: CONTACTS - 2, quarantined: 2, reason: "not UTF-8" },
    );
    records_that_are_not_objects_are_quarantined => records(
        vec![json!(42), json!("text"), Value::Null, json!([1, 2]), json!(true)],
        Stored { contacts: CONTACTS, quarantined: 5, reason: "" },
    );
    record_with_an_id_of_the_wrong_type_is_quarantined => records(
        vec![json!({"id": {"$oid": "5f1"}, "contactFirstName": "A"}), json!({"id": [7]})],
        Stored { contacts: CONTACTS, quarantined: 2, reason: "id" },
    );
    record_with_wrongly_typed_fields_is_stored_without_them => records(
        vec![json!({
            "id": "typed-wrong",
            "contactFirstName": 12,
            "contactEmail": {"a": 1},
            "contactPhone": [true],
            "vipStatus": [],
            "createdDate": "yesterday",
            "customFields": "none",
        })],
        Stored { contacts: CONTACTS + 1, quarantined: 0, reason: "" },
    );
    // Deep nesting where normalization reads quarantines; in a member nothing reads, it is
    // only checked for syntax (docs/contact.md#quarantine).
    record_nested_too_deep_is_quarantined => records(
        vec![
            json!({"id": "deep", "additionalFieldsObject": nested(200)}),
            json!({"id": "deep-unread", "customFields": nested(200)}),
        ],
        Stored { contacts: CONTACTS + 1, quarantined: 1, reason: "recursion limit" },
    );

    // Bodies.
    page_larger_than_asked_is_processed => Case {
        source_toml: "page_size = 10\npage_overlap = 0",
        ..page(vec![PageFault::IgnoreCount(60)], ALL)
    };
    page_larger_than_max_body_is_refused => capped(
        64 << 10,
        vec![PageFault::IgnoreCount(100)],
        Fails { offset: 0, text: "exceeds http.max_body (65536 bytes)" },
    );
    body_announced_over_max_body_is_refused => capped(
        1 << 20,
        vec![PageFault::HugeBody { bytes: (1 << 20) + 1, announce_length: true }],
        Fails { offset: 0, text: "Content-Length 1048577" },
    );
    chunked_body_over_max_body_is_refused => capped(
        1 << 20,
        vec![PageFault::HugeBody { bytes: 8 << 20, announce_length: false }],
        Fails { offset: 0, text: "exceeds http.max_body (1048576 bytes)" },
    );
    page_of_too_many_tiny_records_is_refused => Case {
        extra_records: vec![json!(0); 100_001],
        ..page(
            vec![PageFault::IgnoreCount(200_000)],
            Fails { offset: 0, text: "more than 100000 records in one page" },
        )
    };
    body_not_json_fails => page(vec![PageFault::NotJson], Fails { offset: 0, text: "unreadable" });
    body_truncated_fails => page(vec![PageFault::Truncated], Fails { offset: 0, text: "unreadable" });

    // Source login answers.
    login_without_token_is_refused => login(
        LoginFault::NoToken,
        Fails { offset: 0, text: "refused the credentials: login answered without a token" },
    );
    login_with_empty_token_is_refused => login(
        LoginFault::EmptyToken,
        Fails { offset: 0, text: "without a token" },
    );
    login_with_token_not_a_string_is_refused => login(
        LoginFault::TokenNotString,
        Fails { offset: 0, text: "without a token" },
    );
    login_with_unreadable_expiry_uses_the_fallback => login(LoginFault::ExpireAtGarbage, ALL);
    login_with_numeric_expiry_uses_the_fallback => login(LoginFault::ExpireAtNumber, ALL);
    login_400_is_refused => login(
        LoginFault::Status(400),
        Fails { offset: 0, text: "refused the credentials: login answered HTTP 400" },
    );
    login_403_is_refused => login(
        LoginFault::Status(403),
        Fails { offset: 0, text: "login answered HTTP 403" },
    );
    login_500_fails_after_retries => login(
        LoginFault::Status(500),
        Fails { offset: 0, text: "HTTP 500" },
    );
    login_huge_body_is_refused => login(
        LoginFault::HugeBody(1 << 20),
        Fails { offset: 0, text: "exceeds http.max_body (65536 bytes)" },
    );
    login_not_json_fails => login(LoginFault::NotJson, Fails { offset: 0, text: "login response" });
}

/// `{"a":{"a":…}}` `depth` levels deep.
fn nested(depth: usize) -> Value {
    (0..depth).fold(json!(1), |inner, _| json!({ "a": inner }))
}

/// 200 contacts read 50 a page without overlap, so page offsets are 0, 50, 100, 150.
async fn two_hundred_in_pages_of_50() -> TestEnv {
    TestEnv::start(
        DolphinsOptions {
            contacts: 200,
            ..DolphinsOptions::default()
        },
        "page_size = 50\npage_overlap = 0",
    )
    .await
}

#[tokio::test]
async fn stuck_pass_restarts_from_zero_after_three_failures_at_one_offset() {
    let env = two_hundred_in_pages_of_50().await;
    let puller = env.puller();
    let mut run = puller.begin().await.unwrap();
    assert!(puller.step(&mut run).await.unwrap(), "first page read");
    drop(run);
    env.sim.set_page_faults(vec![PageFault::NeverAdvance]);
    for attempt in 1..=3 {
        let mut run = puller.begin().await.unwrap();
        assert_eq!(
            run_resumed_at(&puller, &mut run).await,
            50,
            "attempt {attempt}"
        );
    }
    // The source recovers; the pass starts over rather than resuming where it stuck.
    env.sim.set_page_faults(Vec::new());
    let outcome = puller.run_pass(&CancellationToken::new()).await.unwrap();
    assert!(outcome.completed);
    assert_eq!(outcome.resumed_at, 0);
    assert_eq!(outcome.records, 200);
    assert_eq!(stored_ids(&env.store).await.len(), 200);
}

/// Step a pass that must fail at once; where it had resumed.
async fn run_resumed_at(
    puller: &contact_sync::sync::Puller,
    run: &mut contact_sync::sync::PassRun,
) -> u64 {
    let err = puller.step(run).await.unwrap_err();
    match err {
        SyncError::Page { offset, .. } => offset,
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn failures_at_different_offsets_do_not_restart_the_pass() {
    let env = two_hundred_in_pages_of_50().await;
    let puller = env.puller();
    let mut run = puller.begin().await.unwrap();
    assert!(puller.step(&mut run).await.unwrap());
    // Two failures at 50, then a page read, then two at 100: never three in a row at one offset.
    for offset in [50, 50] {
        env.sim.set_page_faults(vec![PageFault::NeverAdvance]);
        let mut run = puller.begin().await.unwrap();
        assert_eq!(run_resumed_at(&puller, &mut run).await, offset);
    }
    env.sim.set_page_faults(Vec::new());
    let mut run = puller.begin().await.unwrap();
    assert!(puller.step(&mut run).await.unwrap());
    env.sim.set_page_faults(vec![PageFault::NeverAdvance]);
    for _ in 0..2 {
        let mut run = puller.begin().await.unwrap();
        assert_eq!(run_resumed_at(&puller, &mut run).await, 100);
    }
    env.sim.set_page_faults(Vec::new());
    let outcome = puller.run_pass(&CancellationToken::new()).await.unwrap();
    assert_eq!(outcome.resumed_at, 100);
    assert!(outcome.completed);
}

#[tokio::test]
async fn a_new_normalizer_version_reaches_unchanged_records() {
    let env = TestEnv::start(
        DolphinsOptions {
            contacts: 20,
            ..DolphinsOptions::default()
        },
        "",
    )
    .await;
    let puller = env.puller();
    let cancel = CancellationToken::new();
    let id = env.sim.ids()[3].clone();
    // The store keeps no raw record (migration 0005): an edit that changes nothing makes the
    // stand-in serve the record as its JSON value serializes, so the test knows the bytes.
    assert!(env.sim.update(&id, |_| {}));
    let raw = serde_json::to_string(&env.sim.get(&id).unwrap()).unwrap();
    puller.run_pass(&cancel).await.unwrap();
    assert_eq!(
        raw_hash(&raw),
        raw_hash_with(NORMALIZER_VERSION, &raw),
        "the hash is the current version's"
    );
    // What an older normalizer left: a different canonical name, under its version's hash.
    let stale = async |version: u32| {
        sqlx::query("UPDATE contacts SET full_name = 'stale' WHERE id = ?1")
            .bind(&id)
            .execute(env.store.pool())
            .await
            .unwrap();
        sqlx::query("UPDATE contacts SET raw_hash = ?2, content_hash = zeroblob(32) WHERE id = ?1")
            .bind(&id)
            .bind(raw_hash_with(version, &raw).to_vec())
            .execute(env.store.pool())
            .await
            .unwrap();
        // Page shadows list raw hashes too: what it left there matched none of this version's.
        env.store.passes().forget_shadows().await.unwrap();
    };
    let full_name = async || -> String {
        sqlx::query_scalar("SELECT full_name FROM contacts WHERE id = ?1")
            .bind(&id)
            .fetch_one(env.store.pool())
            .await
            .unwrap()
    };
    // Same version: the unchanged record is skipped, so the stale row stays (the skip works).
    stale(NORMALIZER_VERSION).await;
    let outcome = puller.run_pass(&cancel).await.unwrap();
    assert_eq!(outcome.changed, 0);
    assert_eq!(full_name().await, "stale");
    // An older version: the same raw record is normalized again and the row repaired.
    stale(NORMALIZER_VERSION - 1).await;
    let outcome = puller.run_pass(&cancel).await.unwrap();
    assert_eq!(outcome.changed, 1);
    assert_ne!(full_name().await, "stale");
}

/// Peak resident memory of a running process, from `/proc` (kB), if it can still be read.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The real binary, `--backfill`, against a source that ignores `count`: one page of 8,500
/// records (about 13 MiB, under the 16 MiB default cap) is stored; one of 100,000 (about
/// 160 MiB) is refused. Either way the peak RSS stays far below a 192 MiB container limit.
/// The peak is sampled while the process runs, so it can only under-read by what is
/// allocated in the last moments before exit.
#[tokio::test(flavor = "multi_thread")]
async fn real_binary_memory_stays_bounded_when_pages_ignore_count() {
    const LIMIT_KIB: u64 = 192 << 10;
    for (records, stored) in [(100, 100), (8_500, 8_500), (100_000, 0)] {
        let env = TestEnv::start(
            DolphinsOptions {
                contacts: records,
                render_cache_bytes: 0,
                ..DolphinsOptions::default()
            },
            "page_size = 100\npage_overlap = 0",
        )
        .await;
        env.sim
            .set_page_faults(vec![PageFault::IgnoreCount(records)]);
        let mut child = tokio::process::Command::new(BIN)
            .arg("--config")
            .arg(env.config_path())
            .arg("--backfill")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        // Read the logs as they come, so a full pipe can never block the binary.
        let logs = tokio::spawn(async move {
            let mut text = String::new();
            tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text)
                .await
                .map(|_| text)
        });
        let mut peak = 0;
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let status = loop {
            if let Some(kib) = peak_rss_kib(pid) {
                peak = peak.max(kib);
            }
            tokio::select! {
                status = child.wait() => break status.unwrap(),
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                _ = tokio::time::sleep_until(deadline) => panic!("the backfill did not end"),
            }
        };
        eprintln!(
            "{records} records in one page: peak RSS {} MiB",
            peak / 1024
        );
        let expected_exit = if stored > 0 { 0 } else { 1 };
        assert_eq!(status.code(), Some(expected_exit), "exit {status}");
        assert_eq!(stored_ids(&env.store).await.len(), stored);
        assert!(peak > 0, "the peak was sampled");
        assert!(peak < LIMIT_KIB / 2, "peak RSS {peak} KiB");
        let logs = logs.await.unwrap().unwrap();
        if stored == 0 {
            assert!(logs.contains("exceeds http.max_body"), "{logs}");
        }
    }
}
