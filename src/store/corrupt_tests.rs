//! A stored value this version cannot read is a `Corrupt` error naming table, column and row,
//! never a default: each test damages one row with raw SQL and reads it back.

use super::{Store, StoreError};
use crate::sink::Destination;

async fn exec(store: &Store, sql: &str) {
    sqlx::query(sql).execute(store.pool()).await.unwrap();
}

/// One contact `1` with a delivery to OMI, all well-formed.
async fn one_contact(store: &Store) {
    exec(
        store,
        "INSERT INTO contacts (id, first_name, last_name, full_name, emails, phones, vip, fields,
             created_at, modified_at, first_seen_at, changed_at, raw_hash, content_hash, seq)
         VALUES ('1', 'Ann', '', 'Ann', '[\"ann@example.com\"]', '[]', 0, '{}', NULL, NULL, 1, 1,
                 zeroblob(16), zeroblob(32), 1)",
    )
    .await;
    exec(store, "INSERT INTO contact_ids (id, seq) VALUES ('1', 1)").await;
    exec(
        store,
        "INSERT INTO deliveries (contact_id, destination, state, payload_hash, updated_at)
         VALUES ('1', 'omi', 'pending', zeroblob(32), 0)",
    )
    .await;
}

/// [`one_contact`], then damaged by `sql`.
async fn damaged(sql: &str) -> (tempfile::TempDir, Store) {
    let (dir, store) = crate::store::temp_store().await;
    one_contact(&store).await;
    exec(&store, sql).await;
    (dir, store)
}

fn assert_corrupt(err: StoreError, table: &str, column: &str, key: &str) {
    match &err {
        StoreError::Corrupt {
            table: t,
            column: c,
            key: k,
        } => assert_eq!((*t, c.as_str(), k.as_str()), (table, column, key), "{err}"),
        other => panic!("expected Corrupt, got {other}"),
    }
}

#[tokio::test]
async fn well_formed_rows_read_back() {
    let (_dir, store) = crate::store::temp_store().await;
    one_contact(&store).await;
    let known = store.contacts().known(&["1"]).await.unwrap();
    assert_eq!(known["1"].raw_hash, [0; 16]);
    let contacts = store.contacts().load(&["1"]).await.unwrap();
    assert_eq!(contacts[0].contact.emails.len(), 1);
    let due = store.outbox(Destination::Omi).due(0, 10).await.unwrap();
    assert_eq!(due.len(), 1);
}

#[tokio::test]
async fn a_raw_hash_of_the_old_width_is_no_match_not_corrupt() {
    // What a version before migration 0009 stored: a 32-byte BLAKE3 hash.
    let (_dir, store) =
        damaged("UPDATE contacts SET raw_hash = randomblob(32) WHERE id = '1'").await;
    let known = store.contacts().known(&["1"]).await.unwrap();
    assert_eq!(known["1"].raw_hash, [0; 16]);
}

#[tokio::test]
async fn a_stored_hash_of_the_wrong_length_is_corrupt_not_zeros() {
    let (_dir, store) = damaged("UPDATE contacts SET content_hash = x'0102' WHERE id = '1'").await;
    let err = store.contacts().known(&["1"]).await.unwrap_err();
    assert_corrupt(err, "contacts", "content_hash", "1");
}

#[tokio::test]
async fn bad_json_in_a_contact_column_is_corrupt() {
    let (_dir, store) = damaged("UPDATE contacts SET phones = '[\"+62' WHERE id = '1'").await;
    let err = store.contacts().load(&["1"]).await.unwrap_err();
    assert_corrupt(err, "contacts", "phones", "1");
    let err = store.contacts().after(0, 10, false).await.unwrap_err();
    assert_corrupt(err, "contacts", "phones", "1");
}

#[tokio::test]
async fn an_unknown_delivery_state_is_corrupt() {
    let (_dir, store) = damaged("UPDATE deliveries SET state = 'limbo'").await;
    let err = store
        .outbox(Destination::Omi)
        .views(&["1"])
        .await
        .unwrap_err();
    assert_corrupt(err, "deliveries", "state", "1/omi");
}

#[tokio::test]
async fn an_unknown_add_state_or_short_payload_hash_of_a_due_delivery_is_corrupt() {
    let (_dir, store) = damaged("UPDATE deliveries SET add_state = 'maybe'").await;
    let outbox = store.outbox(Destination::Omi);
    assert_corrupt(
        outbox.due(0, 10).await.unwrap_err(),
        "deliveries",
        "add_state",
        "1/omi",
    );
    exec(
        &store,
        "UPDATE deliveries SET add_state = NULL, payload_hash = zeroblob(31)",
    )
    .await;
    assert_corrupt(
        outbox.due(0, 10).await.unwrap_err(),
        "deliveries",
        "payload_hash",
        "1/omi",
    );
}

#[tokio::test]
async fn a_negative_pass_offset_is_corrupt() {
    let (_dir, store) = crate::store::temp_store().await;
    let pass = store.passes().open(1).await.unwrap();
    exec(&store, "UPDATE passes SET next_start = -5").await;
    let err = store.passes().open(2).await.unwrap_err();
    assert_corrupt(err, "passes", "next_start", &pass.id.to_string());
}

#[test]
fn a_corrupt_error_names_the_place_but_not_the_value() {
    let err = StoreError::Corrupt {
        table: "contacts",
        column: "emails".to_owned(),
        key: "42".to_owned(),
    };
    assert_eq!(
        err.to_string(),
        "corrupt value in contacts.emails of row \"42\""
    );
}
