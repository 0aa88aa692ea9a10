//! The real binary: exit codes, `check-config`, `--backfill` + `status --json`, and a
//! `kill -9` in the middle of a backfill.

use std::process::Output;
use std::time::{Duration, Instant};

use crate::helpers::{BIN, TestEnv, first_list_start, stored_ids, text};
use contact_sync::store::{self, Store};
use contact_sync_sim::dolphins::DolphinsOptions;
use contact_sync_sim::server::{Fault, FaultConfig};

async fn run(args: &[&str]) -> Output {
    tokio::process::Command::new(BIN)
        .args(args)
        .env_remove("CONTACT_SYNC_CONFIG")
        .output()
        .await
        .expect("running the binary")
}

#[tokio::test]
async fn backfill_stores_every_well_formed_record_and_status_reports_counts() {
    let env = TestEnv::start(
        DolphinsOptions {
            contacts: 10_000,
            malformed: 9,
            ..DolphinsOptions::default()
        },
        "page_size = 500",
    )
    .await;
    let config = env.config_path();
    let config = config.to_str().unwrap();
    let out = run(&["--config", config, "--backfill"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("complete"),
        "{}",
        text(&out.stdout)
    );

    let out = run(&["--config", config, "status", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["contacts"], 10_000);
    assert_eq!(status["quarantined"], 9);
    assert_eq!(status["last_pass"]["records"], 10_009);
    assert!(status["last_pass"]["completed_at"].is_string());
    assert_eq!(stored_ids(&env.store).await.len(), 10_000);
}

#[tokio::test]
async fn killed_mid_backfill_resumes_and_converges() {
    let env = TestEnv::start(
        DolphinsOptions {
            contacts: 3_000,
            page_cap: 50,
            ..DolphinsOptions::default()
        },
        "page_size = 50",
    )
    .await;
    // The source answers the login and eleven pages, then stops answering: the process is
    // surely mid-pass when it is killed, however slow the machine.
    let faults = env.sim.server().faults();
    faults.push_n(Fault::Slow(Duration::from_millis(20)), 12);
    faults.set(FaultConfig {
        slow: 1.0,
        slow_delay: Duration::from_secs(3600),
        ..FaultConfig::default()
    });
    let config = env.config_path();
    let config = config.to_str().unwrap();
    let mut child = tokio::process::Command::new(BIN)
        .args(["--config", config, "--backfill"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = store::status(&env.store, &[]).await.unwrap();
        if status
            .current_pass
            .as_ref()
            .is_some_and(|p| p.next_start >= 500)
        {
            break;
        }
        assert!(Instant::now() < deadline, "backfill made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.start_kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().await.unwrap();
    let killed_at = store::status(&env.store, &[])
        .await
        .unwrap()
        .current_pass
        .unwrap()
        .next_start;
    assert!(killed_at < 3_000, "killed before the end");

    env.sim.server().faults().clear();
    env.sim.server().clear_requests();
    let out = run(&["--config", config, "--backfill"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let resumed = first_list_start(&env.sim).unwrap();
    assert!(
        resumed + 50 >= killed_at as u64,
        "resumed at {resumed}, killed at {killed_at}"
    );

    let reopened = Store::open(&env.settings.database.url).await.unwrap();
    let status = store::status(&reopened, &[]).await.unwrap();
    assert_eq!(status.contacts, 3_000);
    assert_eq!(
        status.last_pass.unwrap().id,
        1,
        "one pass, resumed, not restarted"
    );
}

#[tokio::test]
async fn config_errors_exit_78_and_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[source]\nbase_url = \"http://127.0.0.1:1\"\ntoken = \"t\"\npage_sise = 3\n",
    )
    .unwrap();
    let out = run(&["--config", path.to_str().unwrap(), "check-config"]).await;
    assert_eq!(out.status.code(), Some(78));
    assert!(
        text(&out.stderr).contains("source.page_sise"),
        "{}",
        text(&out.stderr)
    );

    let out = run(&["--config", "/nonexistent/contact-sync.toml", "--backfill"]).await;
    assert_eq!(out.status.code(), Some(78));
}

#[tokio::test]
async fn usage_errors_exit_2() {
    assert_eq!(run(&["--frobnicate"]).await.status.code(), Some(2));
    assert_eq!(run(&["--backfill", "status"]).await.status.code(), Some(2));
}

#[tokio::test]
async fn check_config_prints_the_config_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("pw");
    std::fs::write(&secret_file, "file-SECRET-value\n").unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!(
            "[source]\nbase_url = \"http://127.0.0.1:1\"\nusername = \"ops\"\npassword_file = {:?}\n[omi]\ntoken = \"omi-SECRET\"\n",
            secret_file.display().to_string()
        ),
    )
    .unwrap();
    let out = tokio::process::Command::new(BIN)
        .args(["--config", path.to_str().unwrap(), "check-config"])
        .env("CONTACT_SYNC__ENGAGELAB__API_KEY", "env-SECRET-key")
        .env("CONTACT_SYNC__ENGAGELAB__API_SECRET", "env-SECRET")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout) + &text(&out.stderr);
    assert!(!printed.contains("SECRET"), "{printed}");
    assert!(printed.contains("username = \"ops\""), "{printed}");
}

#[tokio::test]
async fn status_without_a_database_is_a_runtime_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!(
            "[database]\nurl = \"sqlite://{}/none.db\"\n[source]\nbase_url = \"http://127.0.0.1:1\"\ntoken = \"t\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let out = run(&["--config", path.to_str().unwrap(), "status"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        !dir.path().join("none.db").exists(),
        "status must not create a database"
    );
}

#[tokio::test]
async fn relative_secret_files_are_read_from_the_systemd_credentials_directory() {
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    std::fs::write(credentials.join("source-password"), "pw\n").unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[source]\nbase_url = \"http://127.0.0.1:1\"\nusername = \"ops\"\npassword_file = \"source-password\"\n",
    )
    .unwrap();
    let check = |with_credentials: bool| {
        let mut command = tokio::process::Command::new(BIN);
        command.args(["--config", path.to_str().unwrap(), "check-config"]);
        if with_credentials {
            command.env("CREDENTIALS_DIRECTORY", &credentials);
        } else {
            command.env_remove("CREDENTIALS_DIRECTORY");
        }
        command.output()
    };
    assert!(check(true).await.unwrap().status.success());
    let out = check(false).await.unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(
        text(&out.stderr).contains("source.password_file"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn status_and_dead_letters_need_the_database_not_the_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let url = format!("sqlite://{}", db.display());
    contact_sync::store::Store::open(&url)
        .await
        .unwrap()
        .close()
        .await;
    // Secrets only the service can read (here: files that do not exist at all).
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!(
            "[database]\nurl = \"{url}\"\n[source]\nbase_url = \"http://127.0.0.1:1\"\ntoken_file = \"/nonexistent/source-token\"\n\
             [omi]\ntoken_file = \"/nonexistent/omi-token\"\n"
        ),
    )
    .unwrap();
    let config = path.to_str().unwrap();
    let out = run(&["--config", config, "status", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["destinations"]["omi"]["pending"], 0);
    assert!(
        run(&["--config", config, "dead-letters"])
            .await
            .status
            .success()
    );
    // The daemon itself does need them.
    assert_eq!(
        run(&["--config", config, "--backfill"]).await.status.code(),
        Some(78)
    );
}
