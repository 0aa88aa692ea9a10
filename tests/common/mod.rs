//! Shared test setup: a 3Dolphins stand-in on loopback, a fresh database in a temporary
//! directory, and settings pointing the one at the other.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use contact_sync::app;
use contact_sync::config::Settings;
use contact_sync::sim::dolphins::{DolphinsOptions, DolphinsSim};
use contact_sync::store::Store;
use contact_sync::sync::Puller;

pub struct TestEnv {
    pub sim: DolphinsSim,
    pub dir: tempfile::TempDir,
    pub settings: Settings,
    pub store: Store,
}

impl TestEnv {
    /// A stand-in with `opts`, and settings with fast retries plus `extra` TOML appended
    /// (keys under `[source]` may be given first, as the text continues that section).
    pub async fn start(opts: DolphinsOptions, extra: &str) -> Self {
        let sim = DolphinsSim::start(opts)
            .await
            .expect("starting the stand-in");
        let dir = tempfile::tempdir().unwrap();
        let toml = config_toml(&sim.base_url(), &dir.path().join("test.db"), extra);
        std::fs::write(dir.path().join("config.toml"), &toml).unwrap();
        let settings = Settings::from_toml(&toml, None).expect("test config is valid");
        let store = Store::open(&settings.database.url).await.unwrap();
        Self {
            sim,
            dir,
            settings,
            store,
        }
    }

    pub fn puller(&self) -> Puller {
        app::puller(&self.settings, self.store.clone(), false)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }
}

/// Config for tests: the source at `base_url`, static token `test-token` unless `extra`
/// says otherwise, retries in milliseconds.
pub fn config_toml(base_url: &str, db: &Path, extra: &str) -> String {
    let auth = if extra.contains("username") {
        ""
    } else {
        "token = \"test-token\"\n"
    };
    format!(
        "[source]\nbase_url = \"{base_url}\"\n{auth}requests_per_second = 10000.0\n{extra}\n\
         [database]\nurl = \"sqlite://{}\"\n\
         [retry]\ninitial_backoff = \"10ms\"\nmax_backoff = \"50ms\"\nmax_attempts = 6\n\
         [http]\ntimeout = \"5s\"\n[admin]\nlisten = \"\"\n",
        db.display()
    )
}

/// Ids of every well-formed record the stand-in serves now.
pub fn served_ids(sim: &DolphinsSim) -> Vec<String> {
    sim.ids()
}

pub async fn stored_ids(store: &Store) -> Vec<String> {
    sqlx::query_scalar("SELECT id FROM contacts WHERE deleted_at IS NULL ORDER BY id")
        .fetch_all(store.pool())
        .await
        .unwrap()
}
