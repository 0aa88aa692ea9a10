//! The page shadow (docs/contact.md, "Unchanged records") against the per-record lookup it
//! stands in for: random source histories, each pass run once by a store that keeps its
//! shadows and once by a store whose shadows are all dropped first, must leave the same
//! contacts, deletions, quarantine and delivery plans.

use std::time::Duration;

use contact_sync::app;
use contact_sync::config::Settings;
use contact_sync::store::Store;
use contact_sync::sync::PassOutcome;
use contact_sync_sim::dolphins::DolphinsOptions;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::helpers::{TestEnv, config_toml};

/// Small pages with an overlap, both destinations planned, deletions tagged at OMI: every
/// path a record can take through a pass writes something the comparison sees.
const EXTRA: &str = "page_size = 10\npage_overlap = 2\n\
     [engagelab]\nbase_url = \"http://127.0.0.1:1\"\napi_key = \"k\"\napi_secret = \"s\"\n\
     [omi]\nbase_url = \"http://127.0.0.1:1\"\napi_key = \"k\"\non_source_delete = \"tag\"\n";

async fn env(contacts: usize) -> TestEnv {
    TestEnv::start(
        DolphinsOptions {
            contacts,
            ..DolphinsOptions::default()
        },
        EXTRA,
    )
    .await
}

async fn pass(settings: &Settings, store: &Store) -> PassOutcome {
    app::puller(settings, store.clone(), false)
        .unwrap()
        .run_pass(&CancellationToken::new())
        .await
        .expect("pass")
}

/// Everything a pass decides, row by row as text: contacts with their hashes, number and
/// deleted flag; delivery plans; the quarantine.
async fn snapshot(store: &Store) -> Vec<String> {
    let mut rows = Vec::new();
    for sql in [
        "SELECT json_array(c.id, c.first_name, c.last_name, c.full_name, c.emails, c.phones,
                c.vip, c.fields, c.created_at, c.modified_at, hex(c.raw_hash),
                hex(c.content_hash), c.seq, c.deleted_at IS NOT NULL)
         FROM contacts c ORDER BY c.id",
        "SELECT json_array(contact_id, destination, state, hex(payload_hash))
         FROM deliveries ORDER BY contact_id, destination",
        "SELECT json_array(hex(raw_hash), reason, last_seen_pass) FROM quarantine ORDER BY 1",
    ] {
        let part: Vec<String> = sqlx::query_scalar(sql)
            .fetch_all(store.pool())
            .await
            .unwrap();
        rows.extend(part);
    }
    rows
}

/// What both runs of a pass must agree on: all but how it got there.
fn decided(outcome: &PassOutcome) -> PassOutcome {
    PassOutcome {
        shadowed: 0,
        elapsed: Duration::ZERO,
        ..outcome.clone()
    }
}

fn contact(id: &str, name: &str) -> Value {
    json!({"id": id, "contactFirstName": name, "phones": ["6285782120717"]})
}

/// One random edit of the source, as 3Dolphins might make between two passes.
fn edit(env: &TestEnv, rng: &mut fastrand::Rng, removed: &mut Vec<Value>, fresh: &mut u32) {
    let sim = &env.sim;
    let ids = sim.ids();
    let any = |rng: &mut fastrand::Rng| ids[rng.usize(..ids.len())].clone();
    *fresh += 1;
    let name = format!("n{fresh}");
    match rng.u8(..9) {
        0 if !ids.is_empty() => {
            sim.update(&any(rng), |r| r["contactFirstName"] = json!(name));
        }
        // Only a field the contact does not keep: stored, nothing planned.
        1 if !ids.is_empty() => {
            sim.update(&any(rng), |r| r["unusedField"] = json!(name));
        }
        2 => sim.insert_front(contact(&format!("new-{fresh}"), &name)),
        3 if !ids.is_empty() => {
            let id = any(rng);
            removed.extend(sim.get(&id));
            sim.remove(&id);
        }
        4 if !removed.is_empty() => {
            let back = removed.swap_remove(rng.usize(..removed.len()));
            if rng.bool() {
                sim.insert_front(back);
            } else {
                sim.push(back);
            }
        }
        // The same id on another page with other content (a later copy wins).
        5 if !ids.is_empty() => {
            let copy = contact(&any(rng), &name);
            if rng.bool() {
                sim.insert_front(copy);
            } else {
                sim.push(copy);
            }
        }
        6 => sim.insert_front(json!({"id": " ", "contactFirstName": name})),
        7 => {
            sim.replace_malformed(contact(&format!("fixed-{fresh}"), &name));
        }
        _ => sim.push(contact(&format!("end-{fresh}"), &name)),
    }
}

#[tokio::test]
async fn passes_settled_by_shadows_store_what_lookups_store() {
    let mut shadowed = 0;
    for seed in 0..6u64 {
        let env = env(40).await;
        let plain_toml = config_toml(&env.sim.base_url(), &env.dir.path().join("plain.db"), EXTRA);
        let plain_settings = Settings::from_toml(&plain_toml, None).unwrap();
        let plain = Store::open(&plain_settings.database.url).await.unwrap();
        let mut rng = fastrand::Rng::with_seed(seed);
        let (mut removed, mut fresh) = (Vec::new(), 0);
        for step in 0..8 {
            if step > 0 {
                for _ in 0..rng.usize(..4) {
                    edit(&env, &mut rng, &mut removed, &mut fresh);
                }
            }
            let with = pass(&env.settings, &env.store).await;
            plain.passes().forget_shadows().await.unwrap();
            let without = pass(&plain_settings, &plain).await;
            assert_eq!(without.shadowed, 0, "seed {seed} step {step}");
            assert_eq!(decided(&with), decided(&without), "seed {seed} step {step}");
            assert_eq!(
                snapshot(&env.store).await,
                snapshot(&plain).await,
                "seed {seed} step {step}"
            );
            shadowed += with.shadowed;
        }
    }
    assert!(shadowed > 0, "no record was ever settled by a shadow");
}

#[tokio::test]
async fn a_quiet_pass_is_settled_by_shadows_and_a_change_still_planned() {
    let env = env(50).await;
    let first = pass(&env.settings, &env.store).await;
    assert_eq!((first.new_contacts, first.shadowed), (50, 0));

    let quiet = pass(&env.settings, &env.store).await;
    assert_eq!(quiet.records, 50);
    assert_eq!(quiet.unchanged, 50);
    assert_eq!(quiet.shadowed, 50, "every record settled without a lookup");

    let id = env.sim.ids()[17].clone();
    let planned = |store: Store, id: String| async move {
        sqlx::query_scalar::<_, Vec<u8>>(
            "SELECT payload_hash FROM deliveries WHERE contact_id = ?1 AND destination = 'omi'",
        )
        .bind(id)
        .fetch_one(store.pool())
        .await
        .unwrap()
    };
    let before = planned(env.store.clone(), id.clone()).await;
    env.sim
        .update(&id, |r| r["contactFirstName"] = json!("Renamed"));
    let changed = pass(&env.settings, &env.store).await;
    assert_eq!(changed.changed, 1);
    assert_eq!(
        changed.shadowed, 49,
        "the rest of its page is still settled"
    );
    assert_ne!(planned(env.store.clone(), id).await, before, "re-planned");

    // A record inserted at the front shifts every page by one: all but the record each page
    // gained are still settled.
    env.sim.insert_front(contact("front", "Front"));
    let shifted = pass(&env.settings, &env.store).await;
    assert_eq!(shifted.new_contacts, 1);
    assert!(
        shifted.shadowed >= 50 - 6,
        "settled {} of 51",
        shifted.shadowed
    );
}

#[tokio::test]
async fn contacts_marked_deleted_are_not_settled_by_a_shadow_left_behind() {
    let env = env(30).await;
    // Served as stored records from the start, so the ones put back below are byte for byte
    // what was read first.
    for id in env.sim.ids() {
        env.sim.update(&id, |_| {});
    }
    pass(&env.settings, &env.store).await;
    // The list shrinks below its last pages, whose offsets the next passes do not read: their
    // shadows stay, still listing the contacts that were there.
    let tail: Vec<Value> = env.sim.ids()[18..]
        .iter()
        .map(|id| {
            let record = env.sim.get(id).unwrap();
            assert!(env.sim.remove(id));
            record
        })
        .collect();
    pass(&env.settings, &env.store).await;
    let gone = pass(&env.settings, &env.store).await;
    assert_eq!(gone.deleted, 12);
    // Back at the same offsets, byte for byte.
    for record in tail {
        env.sim.push(record);
    }
    let back = pass(&env.settings, &env.store).await;
    assert_eq!(back.changed, 12, "every returning contact is planned again");
    assert_eq!(back.unchanged, 18);
}
