//! A database written by an earlier version is upgraded in place by `Store::open` and keeps
//! working: its contacts, deliveries and pass history survive, and deletion detection goes on
//! from the passes recorded before the upgrade.

use std::borrow::Cow;

use contact_sync::config::Settings;
use contact_sync::store::{self, Store};
use contact_sync_sim::dolphins::{DolphinsOptions, DolphinsSim};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use tokio_util::sync::CancellationToken;

use crate::helpers::config_toml;

/// The schema as migrations 0001–0004 left it (before raw records were dropped and sightings
/// became contact numbers).
async fn database_at_version_4(path: &std::path::Path) -> sqlx::SqlitePool {
    let all = sqlx::migrate!("./migrations");
    let old = Migrator {
        migrations: Cow::Owned(
            all.migrations
                .iter()
                .filter(|m| m.version <= 4)
                .cloned()
                .collect(),
        ),
        ..all
    };
    let pool = SqlitePoolOptions::new()
        .connect_with(
            SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true),
        )
        .await
        .unwrap();
    old.run(&pool).await.unwrap();
    pool
}

#[tokio::test]
async fn a_version_4_database_is_upgraded_and_deletion_detection_goes_on() {
    let sim = DolphinsSim::start(DolphinsOptions {
        contacts: 3,
        ..DolphinsOptions::default()
    })
    .await
    .unwrap();
    let live = sim.ids();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("old.db");

    // What version 4 wrote: five contacts, two complete passes; `gone` was seen by the first
    // pass only, `late` by the second only, and OMI acknowledged the first live contact.
    let pool = database_at_version_4(&db).await;
    let ids: Vec<&str> = live
        .iter()
        .map(String::as_str)
        .chain(["gone", "late"])
        .collect();
    for (n, id) in ids.iter().enumerate() {
        sqlx::query(
            "INSERT INTO contacts (id, first_name, last_name, full_name, emails, phones, vip,
                                   fields, raw, first_seen_at, changed_at)
             VALUES (?1, 'Old', ?2, 'Old ' || ?2, '[]', '[]', 0, '{}', '{\"id\":\"x\"}', 1, 1)",
        )
        .bind(id)
        .bind(format!("Name{n}"))
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO contact_seen (id, raw_hash, content_hash) VALUES (?1, zeroblob(32), zeroblob(32))",
        )
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    }
    let first: Vec<&str> = ids.iter().copied().filter(|id| *id != "late").collect();
    let second: Vec<&str> = ids.iter().copied().filter(|id| *id != "gone").collect();
    for (pass, seen) in [(1, &first), (2, &second)] {
        sqlx::query(
            "INSERT INTO passes (id, started_at, completed_at, next_start) VALUES (?1, 1, 2, 0)",
        )
        .bind(pass)
        .execute(&pool)
        .await
        .unwrap();
        for id in seen.iter() {
            sqlx::query("INSERT INTO pass_sightings (pass_id, id) VALUES (?1, ?2)")
                .bind(pass)
                .bind(id)
                .execute(&pool)
                .await
                .unwrap();
        }
    }
    sqlx::query(
        "INSERT INTO deliveries (contact_id, destination, state, payload_hash, acked_hash,
                                 add_state, updated_at)
         VALUES (?1, 'omi', 'synced', zeroblob(32), zeroblob(32), 'added', 1)",
    )
    .bind(ids[0])
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    // This version opens it, upgrades it, and reads what was there.
    let toml = config_toml(&sim.base_url(), &db, "");
    let settings = Settings::from_toml(&toml, None).unwrap();
    let store = Store::open(&settings.database.url).await.unwrap();
    let contacts = store.contacts().load(&ids).await.unwrap();
    assert_eq!(contacts.len(), 5);
    assert!(
        contacts
            .iter()
            .all(|c| c.contact.full_name.starts_with("Old Name"))
    );
    assert_eq!(store.contacts().known(&ids).await.unwrap().len(), 5);
    let status = store::status(&store, &[]).await.unwrap();
    assert_eq!(status.contacts, 5);
    let (state, add_state): (String, String) = sqlx::query_as(
        "SELECT state, add_state FROM deliveries WHERE contact_id = ?1 AND destination = 'omi'",
    )
    .bind(ids[0])
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!((state.as_str(), add_state.as_str()), ("synced", "added"));

    // The next pass misses `gone` a second time: it is marked deleted. `late`, seen by the
    // pass before the upgrade, has been missed once only, so it is not.
    let puller = contact_sync::app::puller(&settings, store.clone(), false).unwrap();
    let outcome = puller.run_pass(&CancellationToken::new()).await.unwrap();
    assert!(outcome.completed);
    assert_eq!(outcome.deleted, 1, "{outcome:?}");
    let deleted: Vec<String> =
        sqlx::query_scalar("SELECT id FROM contacts WHERE deleted_at IS NOT NULL")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(deleted, ["gone"]);
    let status = store::status(&store, &[]).await.unwrap();
    assert_eq!((status.contacts, status.deleted), (4, 1));
}
