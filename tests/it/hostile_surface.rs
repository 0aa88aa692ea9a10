//! The hostile-input catalogue for the surface (issue 8): configuration and environment
//! values, CLI arguments, admin requests, and OMI/EngageLab answers. `docs/hostile/surface.md`
//! lists every row with the test that pins it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::helpers::{BIN, Stack, text};
use contact_sync::admin::{Admin, Limits};
use contact_sync::sink::engagelab::EngagelabClient;
use contact_sync::sink::omi::OmiClient;
use contact_sync::sink::{Destination, FailureKind, PushError, payload_json};
use contact_sync::store::{self, Store};
use contact_sync::sync::{Engine, EngineError};
use contact_sync_sim::dolphins::DolphinsOptions;
use contact_sync_sim::engagelab::EngagelabOptions;
use contact_sync_sim::omi::{KeyRefusal, OmiOptions};
use contact_sync_sim::server::{CannedAnswer, Fault, SimServer};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const EX_USAGE: i32 = 2;
const EX_CONFIG: i32 = 78;

/// Long enough for the slowest CI machine, short enough that a hang fails the test.
const DEADLINE: Duration = Duration::from_secs(30);

/// Run the binary with only `env` as its environment.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("running contact-sync")
}

const SOURCE: &str =
    "[source]\nbase_url = \"https://dolphins.example/dolphin/apiv1\"\ntoken = \"t\"\n";

// --- configuration and environment ------------------------------------------------------------

/// One row: its name, the config file, the environment, the outcome.
type ConfigRow = (
    &'static str,
    String,
    Vec<(&'static str, &'static str)>,
    Expect,
);

/// What `check-config` must make of one hostile configuration.
enum Expect {
    /// Exit 78 and a message naming this key.
    ConfigError(&'static str),
    /// Exit 0 and the printed config contains this text.
    Accepted(&'static str),
}

#[test]
fn hostile_configuration_is_refused_naming_its_key_or_kept_verbatim() {
    use Expect::{Accepted, ConfigError};
    let rows: Vec<ConfigRow> = vec![
        (
            "username that looks like a number",
            SOURCE.replace("token = \"t\"\n", "password = \"p\"\n"),
            vec![("CONTACT_SYNC__SOURCE__USERNAME", "007")],
            Accepted("username = \"007\""),
        ),
        (
            "username that looks like a boolean",
            SOURCE.replace("token = \"t\"\n", "password = \"p\"\n"),
            vec![("CONTACT_SYNC__SOURCE__USERNAME", "TRUE")],
            Accepted("username = \"TRUE\""),
        ),
        (
            "tag that looks like a float",
            format!("{SOURCE}[omi]\ntoken = \"o\"\n"),
            vec![("CONTACT_SYNC__OMI__TAGS", "1e3,007")],
            Accepted("tags = [\n    \"1e3\",\n    \"007\",\n]"),
        ),
        (
            "page size from the environment",
            SOURCE.to_owned(),
            vec![("CONTACT_SYNC__SOURCE__PAGE_SIZE", "250")],
            Accepted("page_size = 250"),
        ),
        (
            "page size that is not a number",
            SOURCE.to_owned(),
            vec![("CONTACT_SYNC__SOURCE__PAGE_SIZE", "many")],
            ConfigError("source.page_size"),
        ),
        (
            "negative page size",
            SOURCE.to_owned(),
            vec![("CONTACT_SYNC__SOURCE__PAGE_SIZE", "-5")],
            ConfigError("source.page_size"),
        ),
        (
            "boolean that is not one",
            format!("{SOURCE}[omi]\ntoken = \"o\"\n"),
            vec![("CONTACT_SYNC__OMI__ENABLED", "maybe")],
            ConfigError("omi.enabled"),
        ),
        (
            "misspelt key in the environment",
            SOURCE.to_owned(),
            vec![("CONTACT_SYNC__SOURCE__PAGESIZE", "5")],
            ConfigError("source.pagesize"),
        ),
        (
            "empty secret from the environment",
            SOURCE.to_owned(),
            vec![("CONTACT_SYNC__SOURCE__TOKEN", " ")],
            ConfigError("source.token"),
        ),
        (
            "http:// source on a remote host",
            SOURCE.replace("https://dolphins.example", "http://dolphins.example"),
            vec![],
            ConfigError("source.base_url"),
        ),
        (
            "http:// OMI on a private address",
            format!("{SOURCE}[omi]\ntoken = \"o\"\nbase_url = \"http://10.0.0.8\"\n"),
            vec![],
            ConfigError("omi.base_url"),
        ),
        (
            "http:// EngageLab on an IPv6 host, from the environment",
            format!("{SOURCE}[engagelab]\napi_key = \"k\"\napi_secret = \"s\"\n"),
            vec![(
                "CONTACT_SYNC__ENGAGELAB__BASE_URL",
                "http://[2001:db8::1]:8080",
            )],
            ConfigError("engagelab.base_url"),
        ),
        (
            "http:// to a remote host with allow_insecure",
            format!(
                "{}[http]\nallow_insecure = true\n",
                SOURCE.replace("https://", "http://")
            ),
            vec![],
            Accepted("allow_insecure = true"),
        ),
        (
            "http:// to loopback",
            SOURCE.replace("https://dolphins.example", "http://127.0.0.1:8080"),
            vec![],
            Accepted("base_url = \"http://127.0.0.1:8080/dolphin/apiv1\""),
        ),
        (
            "allow_insecure that is not a boolean",
            format!("{SOURCE}[http]\nallow_insecure = \"yes please\"\n"),
            vec![],
            ConfigError("http.allow_insecure"),
        ),
        (
            "base URL carrying a key in its query",
            SOURCE.replace("apiv1\"", "apiv1?apiKey=leak\""),
            vec![],
            ConfigError("source.base_url"),
        ),
        (
            "base URL with another scheme",
            SOURCE.replace(
                "https://dolphins.example/dolphin/apiv1",
                "javascript:alert(1)",
            ),
            vec![],
            ConfigError("source.base_url"),
        ),
        (
            "zero timeout",
            format!("{SOURCE}[http]\ntimeout = \"0s\"\n"),
            vec![],
            ConfigError("http.timeout"),
        ),
        (
            "admin port out of range",
            format!("{SOURCE}[admin]\nlisten = \"0.0.0.0:99999\"\n"),
            vec![],
            ConfigError("admin.listen"),
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    for (name, toml, env, expect) in rows {
        std::fs::write(&path, &toml).unwrap();
        let out = run(&["--config", path.to_str().unwrap(), "check-config"], &env);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        match expect {
            ConfigError(key) => {
                assert_eq!(
                    out.status.code(),
                    Some(EX_CONFIG),
                    "{name}: {stdout}{stderr}"
                );
                assert!(stderr.contains(&format!("`{key}`")), "{name}: {stderr}");
            }
            Accepted(shown) => {
                assert_eq!(out.status.code(), Some(0), "{name}: {stderr}");
                assert!(stdout.contains(shown), "{name}: {stdout}");
            }
        }
        assert!(
            !stdout.contains("leak") && !stderr.contains("leak"),
            "{name}"
        );
    }
}

// --- command line --------------------------------------------------------------------------------

#[test]
fn hostile_arguments_are_usage_errors() {
    let rows: [(&str, &[&str]); 5] = [
        ("unknown flag", &["--frobnicate"]),
        ("unknown subcommand", &["sync-everything"]),
        (
            "unknown destination",
            &["dead-letters", "retry", "--destination", "bogus"],
        ),
        ("daemon flag on a subcommand", &["--backfill", "status"]),
        (
            "flag without its value",
            &["dead-letters", "retry", "--contact"],
        ),
    ];
    for (name, args) in rows {
        let out = run(args, &[]);
        assert_eq!(
            out.status.code(),
            Some(EX_USAGE),
            "{name}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn missing_config_file_is_a_config_error() {
    let out = run(
        &["--config", "/nonexistent/contact-sync.toml", "status"],
        &[],
    );
    assert_eq!(out.status.code(), Some(EX_CONFIG), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("does not exist"));
}

/// A config whose only use is to say where the database is.
fn store_config(dir: &Path, url: &str) -> std::path::PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(&path, format!("[database]\nurl = \"{url}\"\n{SOURCE}")).unwrap();
    path
}

async fn migration_versions(url: &str) -> Vec<i64> {
    let pool = sqlx::SqlitePool::connect(url).await.unwrap();
    let versions = sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    versions
}

#[tokio::test]
async fn read_commands_never_migrate_and_name_both_schema_versions() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("state.db").display());
    Store::open(&url).await.unwrap().close().await;
    let current = migration_versions(&url).await;
    let newest = *current.last().unwrap();
    let config = store_config(dir.path(), &url);
    let config = config.to_str().unwrap();

    // Newer: a later daemon migrated it.
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (99990001, 'from the future', 1, x'00', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    for args in [
        ["status"].as_slice(),
        &["dead-letters"],
        &["dead-letters", "retry"],
    ] {
        let out = run(&[&["--config", config], args].concat(), &[]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("version 99990001") && stderr.contains(&format!("version {newest}")),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains("newer"), "{stderr}");
    }

    // Older: the last migration is not applied yet; reading must not apply it.
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version >= ?")
        .bind(newest)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let before = migration_versions(&url).await;
    for args in [
        ["status"].as_slice(),
        &["dead-letters"],
        &["dead-letters", "retry"],
    ] {
        let out = run(&[&["--config", config], args].concat(), &[]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("older"), "{stderr}");
        assert!(stderr.contains(&format!("version {newest}")), "{stderr}");
    }
    assert_eq!(
        migration_versions(&url).await,
        before,
        "a read command migrated"
    );
}

#[cfg(unix)]
#[tokio::test]
async fn database_directory_and_files_are_private_when_created() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db_dir = dir.path().join("state").join("nested");
    let url = format!("sqlite://{}", db_dir.join("contact-sync.db").display());
    let store = Store::open(&url).await.unwrap();
    // A write makes SQLite create the WAL and SHM files beside the database.
    store.meta().set(&[("probe", "1")]).await.unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.path().join("state")), 0o700);
    assert_eq!(mode(&db_dir), 0o700);
    for name in [
        "contact-sync.db",
        "contact-sync.db-wal",
        "contact-sync.db-shm",
    ] {
        assert_eq!(mode(&db_dir.join(name)), 0o600, "{name}");
    }
    store.close().await;
}

#[tokio::test]
async fn dead_letters_escape_control_characters_in_ids_and_errors() {
    let hostile = "evil\u{1b}[2J\u{1b}]0;pwned\u{7}\r\u{202e}id";
    let stack = Stack::start(
        DolphinsOptions {
            contacts: 3,
            ..DolphinsOptions::default()
        },
        OmiOptions::default(),
        EngagelabOptions::default(),
        "",
    )
    .await;
    stack.dolphins.push(json!({
        "id": hostile,
        "contactFirstName": "Eve",
        "phones": ["6285782120717"],
    }));
    stack.omi.reject_ref_ids([hostile]);
    stack
        .engine()
        .backfill(&CancellationToken::new())
        .await
        .unwrap();
    let config = stack.config_path();
    let out = run(&["--config", config.to_str().unwrap(), "dead-letters"], &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        stdout.contains(r"evil\x1b[2J\x1b]0;pwned\x07\x0d\u{202e}id"),
        "{stdout}"
    );
    assert!(
        !stdout.contains(['\u{1b}', '\u{7}', '\r', '\u{202e}']),
        "raw control characters reached the terminal: {stdout:?}"
    );
    // JSON stays JSON: the id round-trips exactly.
    let out = run(
        &[
            "--config",
            config.to_str().unwrap(),
            "dead-letters",
            "--json",
        ],
        &[],
    );
    let letters: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        letters.iter().any(|l| l["contact_id"] == hostile),
        "{letters:?}"
    );
}

// --- admin server --------------------------------------------------------------------------------

/// An admin server over an engine on the stand-ins, with `limits`.
async fn admin(stack: &Stack, limits: Limits) -> (Admin, Arc<Engine>) {
    let engine = Arc::new(stack.engine());
    let admin = Admin::start_with(
        "127.0.0.1:0".parse().unwrap(),
        Arc::clone(&engine),
        stack.store.clone(),
        limits,
    )
    .await
    .unwrap();
    (admin, engine)
}

/// Send raw bytes and read until the server closes or a whole answer's head has arrived.
fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
        if answer.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    text(&answer)
}

/// Whether the server closed `stream` (EOF or reset) before `DEADLINE`.
fn closed_by_server(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_requests_other_than_get_are_refused() {
    let stack = Stack::with_contacts(1).await;
    let (admin, _engine) = admin(&stack, Limits::default()).await;
    let addr = admin.addr();
    let rows: [(&str, &[u8], &str); 6] = [
        (
            "POST to /metrics",
            b"POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 405",
        ),
        (
            "DELETE /readyz",
            b"DELETE /readyz HTTP/1.1\r\nHost: a\r\n\r\n",
            "HTTP/1.1 405",
        ),
        (
            "PUT to an unknown path",
            b"PUT /admin/shutdown HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 405",
        ),
        (
            "HEAD /healthz",
            b"HEAD /healthz HTTP/1.1\r\nHost: a\r\n\r\n",
            "HTTP/1.1 200",
        ),
        (
            "a request line that is not HTTP",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            "a 64 KiB header",
            &[
                b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Junk: ".as_slice(),
                &[b'a'; 64 * 1024],
                b"\r\n\r\n",
            ]
            .concat(),
            "HTTP/1.1 431",
        ),
    ];
    for (name, request, expected) in rows {
        let request = request.to_vec();
        let answer = tokio::task::spawn_blocking(move || exchange(addr, &request))
            .await
            .unwrap();
        assert!(answer.starts_with(expected), "{name}: {answer:?}");
    }
    admin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_drops_a_client_that_never_finishes_its_headers() {
    let stack = Stack::with_contacts(1).await;
    let limits = Limits {
        header_read_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let (admin, _engine) = admin(&stack, limits).await;
    let addr = admin.addr();
    let dropped = tokio::task::spawn_blocking(move || {
        let mut slow = TcpStream::connect(addr).unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-A: ")
            .unwrap();
        let started = Instant::now();
        (closed_by_server(&mut slow), started.elapsed())
    })
    .await
    .unwrap();
    assert!(dropped.0, "slowloris client was not dropped");
    assert!(dropped.1 < DEADLINE);
    admin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_refuses_connections_over_the_cap() {
    let stack = Stack::with_contacts(1).await;
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let (admin, _engine) = admin(&stack, limits).await;
    let addr = admin.addr();
    tokio::task::spawn_blocking(move || {
        // Two idle clients hold both slots (the server has accepted them once a request on
        // each is answered).
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
                .unwrap();
            let mut buf = [0u8; 512];
            assert!(s.read(&mut buf).unwrap() > 0);
            held.push(s);
        }
        let mut extra = TcpStream::connect(addr).unwrap();
        let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(
            closed_by_server(&mut extra),
            "a third connection was served"
        );
        // A freed slot serves again.
        drop(held.pop());
        let deadline = Instant::now() + DEADLINE;
        loop {
            let answer = exchange(addr, b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n");
            if answer.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(Instant::now() < deadline, "the slot never came back");
            std::thread::yield_now();
        }
    })
    .await
    .unwrap();
    admin.stop().await;
}

// --- destination answers -------------------------------------------------------------------------

async fn dead_count(stack: &Stack, destination: Destination) -> i64 {
    store::status(&stack.store, &[Destination::Omi, Destination::Engagelab])
        .await
        .unwrap()
        .destinations[&destination]
        .dead
}

fn stack_with_wrong_omi_key(stack: &Stack) -> contact_sync::config::Settings {
    let mut settings = stack.settings.clone();
    settings.omi.as_mut().unwrap().auth =
        contact_sync::config::OmiAuth::ApiKey("a-wrong-key".to_owned().into());
    settings
}

#[tokio::test]
async fn omi_auth_answering_400_pauses_it_and_a_fixed_key_delivers_all() {
    let stack = Stack::start(
        DolphinsOptions {
            contacts: 300,
            ..DolphinsOptions::default()
        },
        OmiOptions {
            key_refusal: KeyRefusal::BadRequest,
            ..OmiOptions::default()
        },
        EngagelabOptions::default(),
        "",
    )
    .await;
    let engine = Engine::new(&stack_with_wrong_omi_key(&stack), stack.store.clone()).unwrap();
    let err = engine
        .backfill(&CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, EngineError::DestinationAuth(Destination::Omi)),
        "{err}"
    );
    assert!(engine.pusher(Destination::Omi).unwrap().auth_refused());
    assert_eq!(dead_count(&stack, Destination::Omi).await, 0);
    assert!(stack.omi.is_empty());

    // The operator fixes the key and restarts.
    stack
        .engine()
        .backfill(&CancellationToken::new())
        .await
        .unwrap();
    let omi = store::status(&stack.store, &[Destination::Omi])
        .await
        .unwrap()
        .destinations[&Destination::Omi]
        .clone();
    assert_eq!((omi.synced, omi.dead, omi.pending), (300, 0, 0));
    assert_eq!(stack.omi.len(), 300);
    assert!(stack.omi.duplicates().is_empty());
}

#[tokio::test]
async fn omi_auth_refusals_of_every_shape_pause_it_without_dead_letters() {
    for refusal in [
        KeyRefusal::Unauthorized,
        KeyRefusal::Forbidden,
        KeyRefusal::FailEnvelope,
        KeyRefusal::NoToken,
        KeyRefusal::Garbage,
    ] {
        let stack = Stack::start(
            DolphinsOptions {
                contacts: 20,
                ..DolphinsOptions::default()
            },
            OmiOptions {
                key_refusal: refusal,
                ..OmiOptions::default()
            },
            EngagelabOptions::default(),
            "",
        )
        .await;
        let engine = Engine::new(&stack_with_wrong_omi_key(&stack), stack.store.clone()).unwrap();
        let err = engine
            .backfill(&CancellationToken::new())
            .await
            .unwrap_err();
        assert!(
            matches!(err, EngineError::DestinationAuth(Destination::Omi)),
            "{refusal:?}: {err}"
        );
        assert_eq!(dead_count(&stack, Destination::Omi).await, 0, "{refusal:?}");
        assert!(!format!("{err:?}").contains("a-wrong-key"));
    }
}

/// Pull once, then drain `destination` once, as the daemon would.
async fn pull_and_drain(stack: &Stack, engine: &Engine, destination: Destination) {
    let cancel = CancellationToken::new();
    contact_sync::app::puller(&stack.settings, stack.store.clone(), false)
        .unwrap()
        .run_pass(&cancel)
        .await
        .unwrap();
    engine.prepare().await.unwrap();
    engine
        .pusher(destination)
        .unwrap()
        .drain_once(&cancel)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_wrong_base_url_pauses_the_destination_and_fails_readiness() {
    let rows = [
        (
            Destination::Omi,
            CannedAnswer::new(404, "<html>Not Found</html>"),
        ),
        (
            Destination::Omi,
            CannedAnswer::redirect(302, "https://login.example/"),
        ),
        (
            Destination::Engagelab,
            CannedAnswer::new(404, r#"{"code":404,"message":"no route"}"#),
        ),
        (
            Destination::Engagelab,
            CannedAnswer::redirect(301, "https://ma-api.engagelab.com/"),
        ),
    ];
    for (destination, answer) in rows {
        let stack = Stack::with_contacts(30).await;
        let server: &SimServer = match destination {
            Destination::Omi => stack.omi.server(),
            Destination::Engagelab => stack.engagelab.server(),
        };
        server.faults().exclude_path_suffixes(["/api/auth"]);
        server.faults().push_n(Fault::Answer(answer.clone()), 1_000);
        let (admin, engine) = admin(&stack, Limits::default()).await;
        pull_and_drain(&stack, &engine, destination).await;
        let pusher = engine.pusher(destination).unwrap();
        // The hold, not the gate's pause, is what to check: the pause lasts the tests'
        // `max_backoff` (100 ms) and may be over by now on a loaded machine.
        assert!(pusher.misconfigured(), "{destination} {answer:?}");
        assert_eq!(dead_count(&stack, destination).await, 0, "{answer:?}");
        let readyz = reqwest::get(format!("http://{}/readyz", admin.addr()))
            .await
            .unwrap();
        assert_eq!(readyz.status().as_u16(), 503);
        let body = readyz.text().await.unwrap();
        assert!(body.contains(&format!("{destination}.base_url")), "{body}");
        admin.stop().await;
    }
}

/// One OMI `addMany` (or `update`) against a stand-in scripted to answer `answer`.
async fn omi_answer(stack: &Stack, answer: CannedAnswer, update: bool) -> Result<(), PushError> {
    let http = contact_sync::net::http_client(Duration::from_secs(5)).unwrap();
    let client = OmiClient::new(
        stack.settings.omi.as_ref().unwrap(),
        http,
        stack.settings.http.max_body,
    );
    stack
        .omi
        .server()
        .faults()
        .exclude_path_suffixes(["/api/auth"]);
    stack.omi.server().faults().push(Fault::Answer(answer));
    let contact = payload_json(&json!({"refId": "c-1", "refType": "3dolphins", "fullName": "A"}));
    if update {
        client.update(&contact).await
    } else {
        client.add_many(&[&contact]).await
    }
}

#[tokio::test]
async fn omi_answers_are_classified_by_what_they_say() {
    let stack = Stack::with_contacts(0).await;
    let rows: [(&str, u16, &str, bool, FailureKind, bool); 10] = [
        (
            "200 without status_code",
            200,
            r#"{"payload":{"success":true}}"#,
            false,
            FailureKind::Transient,
            true,
        ),
        (
            "200 with payload false",
            200,
            r#"{"status_code":9999,"payload":false}"#,
            false,
            // OMI does not say a refused batch wrote nothing: reconciled by update.
            FailureKind::Permanent,
            true,
        ),
        (
            "200 with payload null",
            200,
            r#"{"status_code":9999,"payload":null}"#,
            false,
            FailureKind::Transient,
            true,
        ),
        (
            "200 with a payload error",
            200,
            r#"{"status_code":9999,"payload":{"error":{"code":"bad_phone"}}}"#,
            false,
            // OMI does not say a refused batch wrote nothing: reconciled by update.
            FailureKind::Permanent,
            true,
        ),
        (
            "200 with success false",
            200,
            r#"{"status_code":9999,"payload":{"success":false}}"#,
            false,
            // OMI does not say a refused batch wrote nothing: reconciled by update.
            FailureKind::Permanent,
            true,
        ),
        (
            "200 with an empty body",
            200,
            "",
            false,
            FailureKind::Transient,
            true,
        ),
        (
            "200 with HTML",
            200,
            "<html>maintenance</html>",
            false,
            FailureKind::Transient,
            true,
        ),
        (
            "200 with status_code as text",
            200,
            r#"{"status_code":"9999","payload":true}"#,
            false,
            FailureKind::Transient,
            true,
        ),
        (
            "404 with OMI's not-found envelope",
            404,
            r#"{"status_code":-9999,"payload":{"status":"fail","error":"contact_not_found"}}"#,
            true,
            FailureKind::NotFound,
            false,
        ),
        (
            "502 from a proxy",
            502,
            "<html>Bad Gateway</html>",
            false,
            FailureKind::Transient,
            true,
        ),
    ];
    for (name, status, body, update, kind, maybe_applied) in rows {
        let e = omi_answer(&stack, CannedAnswer::new(status, body), update)
            .await
            .unwrap_err();
        assert_eq!(
            (e.kind, e.maybe_applied),
            (kind, maybe_applied),
            "{name}: {e}"
        );
    }
}

/// An EngageLab client on the stack's stand-in, with the stack's credentials.
fn engagelab_client(stack: &Stack) -> EngagelabClient {
    let http = contact_sync::net::http_client(Duration::from_secs(5)).unwrap();
    EngagelabClient::new(
        stack.settings.engagelab.as_ref().unwrap(),
        http,
        stack.settings.http.max_body,
    )
}

#[tokio::test]
async fn engagelab_answers_are_classified_by_what_they_say() {
    let stack = Stack::with_contacts(0).await;
    let client = engagelab_client(&stack);
    let rows: [(&str, u16, &str, FailureKind); 7] = [
        (
            "200 without code",
            200,
            r#"{"message":"success","data":[]}"#,
            FailureKind::Transient,
        ),
        (
            "200 with code as text",
            200,
            r#"{"code":"0","message":"success"}"#,
            FailureKind::Transient,
        ),
        (
            "200 with register data not a list",
            200,
            r#"{"code":0,"data":{"euid":1}}"#,
            FailureKind::Transient,
        ),
        (
            "401 with 40050",
            401,
            r#"{"code":40050,"message":"auth failed"}"#,
            FailureKind::Auth,
        ),
        (
            "200 with 50034 (project gone)",
            200,
            r#"{"code":50034,"message":"no project"}"#,
            FailureKind::Auth,
        ),
        (
            "400 with code 0",
            400,
            r#"{"code":0,"message":"success"}"#,
            FailureKind::Permanent,
        ),
        (
            "429 with code 0",
            429,
            r#"{"code":0}"#,
            FailureKind::RateLimited,
        ),
    ];
    for (name, status, body, kind) in rows {
        stack
            .engagelab
            .server()
            .faults()
            .push(Fault::Answer(CannedAnswer::new(status, body)));
        let e = client.register(&["c-1"]).await.unwrap_err();
        assert_eq!(e.kind, kind, "{name}: {e}");
    }

    // A register answer that lacks an identity's EUID gives only the others.
    stack
        .engagelab
        .server()
        .faults()
        .push(Fault::Answer(CannedAnswer::new(
            200,
            r#"{"code":0,"data":[{"identity_value":"a","euid":7},{"identity_value":"b"}]}"#,
        )));
    assert_eq!(
        client.register(&["a", "b"]).await.unwrap(),
        vec![("a".to_owned(), 7)]
    );

    // The real stand-in: an identity over 256 characters is 55105, that batch's fault.
    let long = "x".repeat(300);
    let e = client.register(&[long.as_str()]).await.unwrap_err();
    assert_eq!(e.kind, FailureKind::Permanent, "{e}");
    assert!(e.message.contains("55105"), "{e}");

    // Wrong secret against the real stand-in.
    let mut settings = stack.settings.engagelab.clone().unwrap();
    settings.api_secret = "wrong".to_owned().into();
    let http = contact_sync::net::http_client(Duration::from_secs(5)).unwrap();
    let e = EngagelabClient::new(&settings, http, stack.settings.http.max_body)
        .register(&["c-1"])
        .await
        .unwrap_err();
    assert_eq!(e.kind, FailureKind::Auth, "{e}");
}
