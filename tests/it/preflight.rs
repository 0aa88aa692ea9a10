//! `check-config --online` run as the real binary against the stand-ins: all green, each
//! credential wrong in turn, the database held by another writer, and never a secret printed.

use std::process::Output;
use std::time::{Duration, Instant};

use crate::helpers::{BIN, Stack};
use contact_sync::lock::WriterLock;
use contact_sync_sim::dolphins::{DolphinsAuth, DolphinsOptions};
use contact_sync_sim::engagelab::EngagelabOptions;
use contact_sync_sim::omi::OmiOptions;
use contact_sync_sim::server::{CannedAnswer, Fault, FaultConfig};

// Distinctive credentials, so a grep of the output for them cannot hit an ordinary word.
const SOURCE_PASSWORD: &str = "pw-src-7Hq2vX";
const OMI_KEY: &str = "omi-key-Zr81pQ";
const OMI_TOKEN: &str = "omi-static-Lk3w9D";
const EL_KEY: &str = "el-key-Wm5t2B";
const EL_SECRET: &str = "el-secret-Pn6c4J";

/// The five checks, in their printed order.
const CHECKS: [&str; 5] = ["config", "database", "3Dolphins", "OMI", "EngageLab"];

async fn stack() -> Stack {
    let stack = Stack::start(
        DolphinsOptions {
            auth: DolphinsAuth::Login {
                username: "sync".into(),
                password: SOURCE_PASSWORD.into(),
            },
            contacts: 42,
            ..DolphinsOptions::default()
        },
        OmiOptions {
            api_key: OMI_KEY.into(),
            static_token: Some(OMI_TOKEN.into()),
            ..OmiOptions::default()
        },
        EngagelabOptions {
            api_key: EL_KEY.into(),
            api_secret: EL_SECRET.into(),
            ..EngagelabOptions::default()
        },
        "",
    )
    .await;
    // The generated config carries the helpers' default source password.
    stack.edit_config(|toml| {
        toml.replace(
            "password = \"secret\"",
            &format!("password = \"{SOURCE_PASSWORD}\""),
        )
    });
    stack
}

/// Run the check; stdout is not a terminal here, so lines are marked `[ok]`/`[FAIL]`.
async fn preflight(stack: &Stack) -> Output {
    tokio::process::Command::new(BIN)
        .arg("--config")
        .arg(stack.config_path())
        .args(["check-config", "--online"])
        .env_remove("CONTACT_SYNC_CONFIG")
        .output()
        .await
        .expect("running the binary")
}

/// The line of check `name` and the line after it (a failure's fix).
fn line_of<'a>(stdout: &'a str, name: &str) -> (&'a str, &'a str) {
    let lines: Vec<&str> = stdout.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.contains(&format!(" {name}: ")))
        .unwrap_or_else(|| panic!("no {name} line in:\n{stdout}"));
    (lines[at], lines.get(at + 1).copied().unwrap_or(""))
}

/// Every check passes but `failing`, whose line fails with a fix naming `fix_key`; exit 1
/// when one fails, 0 otherwise. No credential the config may hold is printed.
fn assert_checklist(out: &Output, failing: Option<(&str, &str)>, secrets: &[&str]) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    for name in CHECKS {
        let (line, next) = line_of(&stdout, name);
        match failing {
            Some((failing, fix_key)) if failing == name => {
                assert!(line.starts_with("[FAIL] "), "{stdout}");
                assert!(
                    next.trim_start().starts_with("fix: ") && next.contains(fix_key),
                    "{stdout}"
                );
            }
            _ => assert!(line.starts_with("[ok] "), "{stdout}"),
        }
    }
    let code = if failing.is_some() { 1 } else { 0 };
    assert_eq!(out.status.code(), Some(code), "{stdout}\n{stderr}");
    for secret in secrets {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret} printed:\n{stdout}\n{stderr}"
        );
    }
    stdout
}

#[tokio::test]
async fn all_green_against_the_stand_ins_and_nothing_is_written() {
    let stack = stack().await;
    let out = preflight(&stack).await;
    let secrets = [SOURCE_PASSWORD, OMI_KEY, EL_KEY, EL_SECRET];
    let stdout = assert_checklist(&out, None, &secrets);
    assert!(stdout.ends_with("all checks passed\n"), "{stdout}");
    let (source, _) = line_of(&stdout, "3Dolphins");
    assert!(source.contains("totalResults 42"), "{source}");
    // The probes wrote nothing: no contact at OMI, and EngageLab's one `register` got past
    // authentication with an empty list.
    assert!(stack.omi.is_empty());
    assert_eq!(stack.engagelab.register_calls(), 1);
}

#[tokio::test]
async fn each_wrong_credential_fails_its_own_check_with_its_fix() {
    let stack = stack().await;
    let original = std::fs::read_to_string(stack.config_path()).unwrap();
    let omi_key_line = format!("api_key = \"{OMI_KEY}\"");
    let cases = [
        (
            format!("password = \"{SOURCE_PASSWORD}\""),
            "password = \"pw-wrong-Tg4s1\"".to_owned(),
            Some(("3Dolphins", "source.password")),
            "pw-wrong-Tg4s1",
        ),
        (
            omi_key_line.clone(),
            "api_key = \"omi-wrong-Jd7e3\"".to_owned(),
            Some(("OMI", "omi.api_key")),
            "omi-wrong-Jd7e3",
        ),
        (
            omi_key_line.clone(),
            "token = \"omi-wrong-Ub2y8\"".to_owned(),
            Some(("OMI", "omi.token")),
            "omi-wrong-Ub2y8",
        ),
        // The right static token passes: the token path itself works.
        (
            omi_key_line,
            format!("token = \"{OMI_TOKEN}\""),
            None,
            OMI_TOKEN,
        ),
        (
            format!("api_secret = \"{EL_SECRET}\""),
            "api_secret = \"el-wrong-Fv9k5\"".to_owned(),
            Some(("EngageLab", "engagelab.api_secret")),
            "el-wrong-Fv9k5",
        ),
    ];
    for (right, wrong, failing, wrong_secret) in cases {
        assert!(original.contains(&right), "{right}");
        std::fs::write(stack.config_path(), original.replace(&right, &wrong)).unwrap();
        let out = preflight(&stack).await;
        let secrets = [SOURCE_PASSWORD, OMI_KEY, EL_KEY, EL_SECRET, wrong_secret];
        assert_checklist(&out, failing, &secrets);
    }
    assert!(stack.omi.is_empty());
}

#[tokio::test]
async fn a_database_held_by_another_writer_fails_naming_its_pid() {
    let stack = stack().await;
    // This test process is the other writer: the binary's lock attempt is refused.
    let held = WriterLock::acquire(&stack.dir.path().join("test.db")).unwrap();
    let out = preflight(&stack).await;
    let secrets = [SOURCE_PASSWORD, OMI_KEY, EL_KEY, EL_SECRET];
    let stdout = assert_checklist(&out, Some(("database", "contact-sync")), &secrets);
    let (line, _) = line_of(&stdout, "database");
    assert!(
        line.contains(&format!("pid {}", std::process::id())),
        "{line}"
    );
    drop(held);
    let out = preflight(&stack).await;
    assert_checklist(&out, None, &secrets);
}

#[tokio::test]
async fn disabled_destinations_are_skipped_and_a_missing_database_is_not_created() {
    let stack = stack().await;
    let db = stack.dir.path().join("new/state.db");
    stack.edit_config(|toml| {
        toml.replace("[engagelab]\n", "[engagelab]\nenabled = false\n")
            .replace("[omi]\n", "[omi]\nenabled = false\n")
            .replace(
                &format!("{}", stack.dir.path().join("test.db").display()),
                &format!("{}", db.display()),
            )
    });
    let out = preflight(&stack).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    for name in ["OMI", "EngageLab"] {
        let (line, _) = line_of(&stdout, name);
        assert_eq!(line, format!("[skip] {name}: skipped (disabled)"));
    }
    let (line, _) = line_of(&stdout, "database");
    assert!(
        line.starts_with("[ok] ") && line.contains("does not exist yet"),
        "{line}"
    );
    assert!(!db.exists() && !db.parent().unwrap().exists());
}

#[tokio::test]
async fn failing_apis_fail_quickly_with_a_fix_and_one_retry_at_most() {
    let stack = stack().await;
    stack.edit_config(|toml| toml.replace("timeout = \"5s\"", "timeout = \"500ms\""));
    stack.dolphins.server().faults().set(FaultConfig {
        server_error: 1.0,
        ..FaultConfig::default()
    });
    stack
        .omi
        .server()
        .faults()
        .push(Fault::Answer(CannedAnswer::new(404, "<html>no</html>")));
    stack.engagelab.server().faults().set(FaultConfig {
        slow: 1.0,
        slow_delay: Duration::from_secs(3600),
        ..FaultConfig::default()
    });
    let started = Instant::now();
    let out = preflight(&stack).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    for (name, fix) in [
        ("3Dolphins", "try again later"),
        ("OMI", "omi.base_url"),
        ("EngageLab", "engagelab.base_url"),
    ] {
        let (line, next) = line_of(&stdout, name);
        assert!(
            line.starts_with("[FAIL] ") && next.contains(fix),
            "{stdout}"
        );
    }
    // Bounded by http.timeout, not by the hour the EngageLab stand-in would take.
    assert!(started.elapsed() < Duration::from_secs(30), "{stdout}");
    // The 503 to the login was tried once more, no more.
    assert_eq!(stack.dolphins.server().requests().len(), 2, "{stdout}");
}
