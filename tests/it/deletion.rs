//! Contacts deleted at 3Dolphins, as OMI sees them under `omi.on_source_delete`
//! (docs/delivery.md#deletions): tagged after two complete passes without them, untagged when
//! they return, never created just to be tagged, and left alone under "ignore".

use contact_sync::config::{OnSourceDelete, Settings};
use contact_sync::sink::Destination;
use contact_sync::store;
use contact_sync::sync::{BackfillReport, Engine, PushStats};
use contact_sync_sim::dolphins::{DolphinsOptions, generate_contact};
use contact_sync_sim::engagelab::EngagelabOptions;
use contact_sync_sim::omi::OmiOptions;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::helpers::{BIN, Stack, text};

const CONTACTS: usize = 20;
const DELETED_TAG: &str = "deleted-in-3dolphins";

async fn stack(extra: &str) -> Stack {
    Stack::start(
        DolphinsOptions {
            contacts: CONTACTS,
            ..DolphinsOptions::default()
        },
        OmiOptions::default(),
        EngagelabOptions::default(),
        extra,
    )
    .await
}

/// One backfill (one complete pass, then pushing until nothing is due) under `settings`.
async fn backfill(stack: &Stack, settings: &Settings) -> BackfillReport {
    Engine::new(settings, stack.store.clone())
        .unwrap()
        .backfill(&CancellationToken::new())
        .await
        .expect("backfill")
}

/// `settings` with another deletion policy, as a changed config file would give.
fn with_policy(settings: &Settings, policy: OnSourceDelete) -> Settings {
    let mut settings = settings.clone();
    settings.omi.as_mut().unwrap().on_source_delete = policy;
    settings
}

fn omi_stats(report: &BackfillReport) -> &PushStats {
    report
        .pushed
        .iter()
        .find_map(|(d, stats)| (*d == Destination::Omi).then_some(stats))
        .expect("OMI pushed")
}

fn tags_at_omi(stack: &Stack, id: &str) -> Vec<String> {
    let contact = stack
        .omi
        .contact(id)
        .unwrap_or_else(|| panic!("{id} at OMI"));
    serde_json::from_value(contact["tags"].clone()).unwrap()
}

/// The source record of the stand-in's contact number `index`, to send it back later.
fn record(index: usize) -> Value {
    generate_contact(DolphinsOptions::default().seed, index)
}

async fn omi_delivery(stack: &Stack, id: &str) -> String {
    sqlx::query_scalar("SELECT state FROM deliveries WHERE contact_id = ?1 AND destination = 'omi'")
        .bind(id)
        .fetch_one(stack.store.pool())
        .await
        .unwrap()
}

/// OMI holds no duplicate and exactly `n` contacts.
fn assert_omi_holds(stack: &Stack, n: usize) {
    assert!(
        stack.omi.duplicates().is_empty(),
        "{:?}",
        stack.omi.duplicates()
    );
    assert_eq!(stack.omi.len(), n);
}

#[tokio::test]
async fn a_deletion_reaches_omi_as_a_tag_after_two_passes_and_is_undone_on_return() {
    let stack = stack("on_source_delete = \"tag\"\n").await;
    let settings = stack.settings.clone();
    // Two contacts go: one comes back byte for byte, the other rewritten.
    let same =
        json!({"id": "same-1", "contactFirstName": "Ann", "contactEmail": ["ann@example.com"]});
    stack.dolphins.push(same.clone());
    let total = CONTACTS + 1;
    backfill(&stack, &settings).await;
    let rewritten = stack.dolphins.ids()[3].clone();
    let gone = ["same-1", rewritten.as_str()];
    for id in gone {
        assert_eq!(tags_at_omi(&stack, id), vec!["3dolphins"]);
        assert!(stack.dolphins.remove(id));
    }

    let one = backfill(&stack, &settings).await;
    assert_eq!(one.pass.deleted, 0, "one missed pass is not enough");
    for id in gone {
        assert_eq!(tags_at_omi(&stack, id), vec!["3dolphins"]);
        assert_eq!(stack.omi.update_count(id), 0);
    }

    let two = backfill(&stack, &settings).await;
    assert_eq!(two.pass.deleted, 2);
    assert_eq!(omi_stats(&two).updated, 2, "{two:?}");
    for id in gone {
        assert_eq!(tags_at_omi(&stack, id), vec!["3dolphins", DELETED_TAG]);
        assert_eq!(stack.omi.update_count(id), 1, "one update carries the tag");
        assert_eq!(omi_delivery(&stack, id).await, "synced");
    }
    assert_omi_holds(&stack, total);

    // `status` counts them, in its JSON.
    let config = stack.config_path();
    let out = tokio::process::Command::new(BIN)
        .args(["--config", config.to_str().unwrap(), "status", "--json"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&status["contacts"], &status["deleted"]),
        (&json!(total - 2), &json!(2))
    );

    // A pass that finds them still gone sends nothing again.
    let still = backfill(&stack, &settings).await;
    assert_eq!(omi_stats(&still).updated, 0, "{still:?}");

    // Back at the source: the tag is removed, the ordinary tags stay.
    stack.dolphins.push(same);
    stack.dolphins.push(record(3));
    let back = backfill(&stack, &settings).await;
    assert_eq!(back.pass.deleted, 0);
    for id in gone {
        assert_eq!(tags_at_omi(&stack, id), vec!["3dolphins"], "{id}");
        assert_eq!(stack.omi.update_count(id), 2, "{id}");
    }
    assert_omi_holds(&stack, total);
    stack.assert_each_added_once();
    let status = store::status(&stack.store, &[]).await.unwrap();
    assert_eq!((status.contacts, status.deleted), (total as i64, 0));
}

#[tokio::test]
async fn a_deleted_contact_omi_never_held_is_not_created_to_be_tagged() {
    let stack = stack("on_source_delete = \"tag\"\n").await;
    let settings = stack.settings.clone();
    let never = stack.dolphins.ids()[5].clone();
    // OMI refuses it: a dead letter, OMI holds nothing for it.
    stack.omi.reject_ref_ids([never.clone()]);
    backfill(&stack, &settings).await;
    assert_eq!(omi_delivery(&stack, &never).await, "dead");
    assert!(stack.omi.contact(&never).is_none());
    stack.omi.clear_rejections();

    assert!(stack.dolphins.remove(&never));
    backfill(&stack, &settings).await;
    let report = backfill(&stack, &settings).await;
    assert_eq!(report.pass.deleted, 1);
    assert_eq!(omi_stats(&report).skipped, 1, "{report:?}");
    assert!(stack.omi.contact(&never).is_none(), "created to be tagged");
    assert_eq!(stack.omi.add_count(&never), 0);
    assert_eq!(omi_delivery(&stack, &never).await, "skipped");
    assert_omi_holds(&stack, CONTACTS - 1);

    // When it returns it is added, once, without the tag.
    stack.dolphins.push(record(5));
    backfill(&stack, &settings).await;
    assert_eq!(tags_at_omi(&stack, &never), vec!["3dolphins"]);
    stack.assert_each_added_once();
    assert_omi_holds(&stack, CONTACTS);
}

#[tokio::test]
async fn under_ignore_a_deletion_sends_nothing_until_the_policy_becomes_tag() {
    let stack = stack("").await;
    let ignore = stack.settings.clone();
    assert_eq!(
        ignore.omi.as_ref().unwrap().on_source_delete,
        OnSourceDelete::Ignore
    );
    backfill(&stack, &ignore).await;
    let gone = stack.dolphins.ids()[7].clone();
    assert!(stack.dolphins.remove(&gone));
    backfill(&stack, &ignore).await;
    let requests_before = stack.omi.server().request_count();
    let two = backfill(&stack, &ignore).await;
    assert_eq!(two.pass.deleted, 1);
    assert_eq!(
        stack.omi.server().request_count(),
        requests_before,
        "nothing reaches OMI for a deletion under \"ignore\""
    );
    assert_eq!(tags_at_omi(&stack, &gone), vec!["3dolphins"]);

    // The policy changes between runs: the contact deleted earlier is planned again and
    // tagged, and only it.
    let tag = with_policy(&ignore, OnSourceDelete::Tag);
    let report = backfill(&stack, &tag).await;
    assert_eq!(tags_at_omi(&stack, &gone), vec!["3dolphins", DELETED_TAG]);
    assert_eq!(omi_stats(&report).updated, 1, "{report:?}");
    assert_omi_holds(&stack, CONTACTS);
    stack.assert_each_added_once();
}
