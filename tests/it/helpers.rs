//! Shared test setup: a 3Dolphins stand-in on loopback, a fresh database in a temporary
//! directory, and settings pointing the one at the other.

use std::path::{Path, PathBuf};

use contact_sync::app;
use contact_sync::config::Settings;
use contact_sync::store::Store;
use contact_sync::sync::Engine;
use contact_sync::sync::Puller;
use contact_sync_sim::dolphins::{DolphinsOptions, DolphinsSim};
use contact_sync_sim::engagelab::{EngagelabOptions, EngagelabSim};
use contact_sync_sim::omi::{OmiOptions, OmiSim};

/// The contact-sync binary Cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_contact-sync");

/// A child's output as text, for assertions and failure messages.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

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
        app::puller(&self.settings, self.store.clone(), false).unwrap()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }
}

/// The stand-in's default credentials.
pub const SOURCE_LOGIN: &str = "username = \"sync\"\npassword = \"secret\"\n";

/// Config for tests: the source at `base_url` with the stand-in's default login unless
/// `extra` says otherwise, retries in milliseconds.
pub fn config_toml(base_url: &str, db: &Path, extra: &str) -> String {
    let auth = if extra.contains("username") {
        ""
    } else {
        SOURCE_LOGIN
    };
    format!(
        "[source]\nbase_url = \"{base_url}\"\n{auth}requests_per_second = 10000.0\n{extra}\n\
         [database]\nurl = \"sqlite://{}\"\n\
         [retry]\ninitial_backoff = \"10ms\"\nmax_backoff = \"50ms\"\nmax_attempts = 6\n\
         [http]\ntimeout = \"5s\"\n[admin]\nlisten = \"\"\n",
        db.display()
    )
}

/// A plain HTTP client for talking to the stand-ins and the admin server.
pub fn http() -> reqwest::Client {
    // reqwest is built without a bundled crypto provider; plain HTTP still needs one set.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .unwrap()
}

pub async fn stored_ids(store: &Store) -> Vec<String> {
    sqlx::query_scalar("SELECT id FROM contacts WHERE deleted_at IS NULL ORDER BY id")
        .fetch_all(store.pool())
        .await
        .unwrap()
}

/// All three stand-ins, a fresh database, and settings with both destinations enabled.
pub struct Stack {
    pub dolphins: DolphinsSim,
    pub omi: OmiSim,
    pub engagelab: EngagelabSim,
    pub dir: tempfile::TempDir,
    pub settings: Settings,
    pub store: Store,
}

impl Stack {
    /// `extra` is appended to the generated config and may add keys to `[omi]` (it continues
    /// that section) and further sections.
    pub async fn start(
        source: DolphinsOptions,
        omi: OmiOptions,
        engagelab: EngagelabOptions,
        extra: &str,
    ) -> Self {
        let dolphins = DolphinsSim::start(source).await.unwrap();
        let omi_key = omi.api_key.clone();
        let el_key = engagelab.api_key.clone();
        let el_secret = engagelab.api_secret.clone();
        let omi = OmiSim::start(omi).await.unwrap();
        let engagelab = EngagelabSim::start(engagelab).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let toml = stack_toml(
            &dolphins.base_url(),
            &omi.base_url(),
            &omi_key,
            &engagelab.base_url(),
            &el_key,
            &el_secret,
            &dir.path().join("test.db"),
            extra,
        );
        std::fs::write(dir.path().join("config.toml"), &toml).unwrap();
        let settings = Settings::from_toml(&toml, None).expect("test config is valid");
        let store = Store::open(&settings.database.url).await.unwrap();
        Self {
            dolphins,
            omi,
            engagelab,
            dir,
            settings,
            store,
        }
    }

    pub async fn with_contacts(contacts: usize) -> Self {
        Self::start(
            DolphinsOptions {
                contacts,
                ..DolphinsOptions::default()
            },
            OmiOptions::default(),
            EngagelabOptions::default(),
            "",
        )
        .await
    }

    pub fn engine(&self) -> Engine {
        Engine::new(&self.settings, self.store.clone()).unwrap()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// Rewrites the config file the binary reads (`settings` stay as generated).
    pub fn edit_config(&self, edit: impl FnOnce(String) -> String) {
        let path = self.config_path();
        let toml = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, edit(toml)).unwrap();
    }

    /// Let the binary serve `/metrics` and its probes on a free loopback address, polling every
    /// `poll_interval`; returns the address.
    pub fn serve_admin(&self, poll_interval: &str) -> std::net::SocketAddr {
        let addr = free_loopback_addr();
        self.edit_config(|toml| {
            toml.replace("listen = \"\"", &format!("listen = \"{addr}\""))
                .replace(
                    "[source]\n",
                    &format!("[source]\npoll_interval = \"{poll_interval}\"\n"),
                )
        });
        addr
    }

    /// The daemon as a child process on this stack's config, its output discarded, killed
    /// when dropped.
    pub fn spawn_daemon(&self) -> tokio::process::Child {
        tokio::process::Command::new(BIN)
            .args(["--config", self.config_path().to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    /// OMI holds no duplicate, and every contact the source serves was added exactly once.
    pub fn assert_each_added_once(&self) {
        assert!(
            self.omi.duplicates().is_empty(),
            "duplicates at OMI: {:?}",
            self.omi.duplicates()
        );
        for id in self.dolphins.ids() {
            assert_eq!(self.omi.add_count(&id), 1, "{id}");
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn stack_toml(
    source: &str,
    omi: &str,
    omi_key: &str,
    engagelab: &str,
    el_key: &str,
    el_secret: &str,
    db: &Path,
    extra: &str,
) -> String {
    format!(
        "[source]\nbase_url = \"{source}\"\n{SOURCE_LOGIN}requests_per_second = 10000.0\npage_size = 100\n\
         [database]\nurl = \"sqlite://{db}\"\n\
         [retry]\ninitial_backoff = \"10ms\"\nmax_backoff = \"100ms\"\nmax_attempts = 30\n\
         [http]\ntimeout = \"5s\"\n[admin]\nlisten = \"\"\n\
         [engagelab]\nbase_url = \"{engagelab}\"\napi_key = \"{el_key}\"\napi_secret = \"{el_secret}\"\nrequests_per_second = 10000.0\n\
         [omi]\nbase_url = \"{omi}\"\napi_key = \"{omi_key}\"\nrequests_per_second = 10000.0\ntags = [\"3dolphins\"]\n{extra}\n",
        db = db.display()
    )
}

/// The `start` of the first contact-list request the stand-in received.
pub fn first_list_start(sim: &DolphinsSim) -> Option<u64> {
    let query = sim
        .server()
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with("/graph/contacts/all"))?
        .query?;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("start="))?
        .parse()
        .ok()
}

/// An address on loopback no one listens on now, for a child process's admin server.
pub fn free_loopback_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}
