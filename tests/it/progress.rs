//! Progress you can watch (docs/cli.md, "Progress" and "status"): bars under a terminal,
//! figures in JSON log lines without one, and the progress `status` reads from the database.

use std::process::Output;
use std::time::Duration;

use contact_sync::domain::Destination;
use contact_sync::store;
use contact_sync_sim::dolphins::DolphinsOptions;
use contact_sync_sim::server::FaultConfig;

use crate::helpers::{BIN, Stack, TestEnv, text};

/// Every source request this slow: 600 contacts at 50 a page take over a second, so a rate
/// has been measured before the pass ends, however fast the machine.
const SLOW_SOURCE: Duration = Duration::from_millis(100);

async fn slow_stack() -> Stack {
    let stack = Stack::with_contacts(600).await;
    stack.dolphins.server().faults().set(FaultConfig {
        slow: 1.0,
        slow_delay: SLOW_SOURCE,
        ..FaultConfig::default()
    });
    stack
}

/// `N.N%` somewhere in `s`.
fn has_percent(s: &str) -> bool {
    s.match_indices('%').any(|(i, _)| {
        let before = &s[..i];
        let digits = before.rsplit_once('.').map(|(_, d)| d);
        digits.is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// `N/s` with a digit right before it somewhere in `s`.
fn has_rate(s: &str) -> bool {
    s.match_indices("/s")
        .any(|(i, _)| i > 0 && s.as_bytes()[i - 1].is_ascii_digit())
}

#[tokio::test]
async fn backfill_on_a_terminal_draws_percent_and_rate() {
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("skipped: no script(1)");
        return;
    }
    let stack = slow_stack().await;
    let command = format!(
        "{BIN} --config {} --backfill",
        stack.config_path().display()
    );
    // script(1) runs the backfill on a pseudo-terminal and copies what it draws to stdout.
    let out: Output = tokio::process::Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .env_remove("CONTACT_SYNC_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .await
        .expect("running script(1)");
    let screen = text(&out.stdout);
    assert!(out.status.success(), "{screen}{}", text(&out.stderr));
    assert!(screen.contains('\r'), "nothing redrawn: {screen}");
    assert!(has_percent(&screen), "no percentage drawn: {screen}");
    assert!(has_rate(&screen), "no rate drawn: {screen}");
    for destination in ["omi", "engagelab"] {
        assert!(
            screen.contains(&format!("{destination} sent ")),
            "no {destination} line: {screen}"
        );
    }
    assert!(screen.contains("pass 1 complete"), "{screen}");
    stack.assert_each_added_once();
}

#[tokio::test]
async fn backfill_without_a_terminal_draws_nothing_and_logs_the_figures_as_json() {
    let stack = slow_stack().await;
    let out = tokio::process::Command::new(BIN)
        .args([
            "--config",
            stack.config_path().to_str().unwrap(),
            "--backfill",
        ])
        .env_remove("CONTACT_SYNC_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        !log.contains('\r') && !log.contains('\u{1b}'),
        "drawn without a terminal: {log}"
    );
    // No `log.format` in the config: JSON, one object a line, since stderr is no terminal.
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let progress = |f: &dyn Fn(&serde_json::Value) -> bool| {
        events
            .iter()
            .filter(|e| e["target"] == "contact_sync::progress" && f(e))
            .last()
            .cloned()
            .unwrap_or_else(|| panic!("no such progress event in {log}"))
    };
    let pass = progress(&|e| e["completed"] == true);
    assert_eq!(pass["total"], 600);
    assert_eq!(pass["records"], 600);
    assert_eq!(pass["percent"], 100.0);
    assert!(pass["records_per_sec"].as_f64().unwrap() > 0.0, "{pass}");
    assert_eq!(pass["eta_s"], 0);
    for destination in ["omi", "engagelab"] {
        let d = progress(&|e| e["destination"] == destination);
        for field in ["sent", "pending", "dead", "eta_s"] {
            assert!(d[field].is_u64(), "{field} in {d}");
        }
        assert_eq!(d["pending"], 0, "{d}");
        assert!(d["sent"].as_u64().unwrap() > 0, "{d}");
    }
}

#[tokio::test]
async fn status_json_shows_the_progress_of_a_running_pass() {
    let env = TestEnv::start(
        DolphinsOptions {
            contacts: 1_000,
            ..DolphinsOptions::default()
        },
        "page_size = 100",
    )
    .await;
    // Each page takes a while, so the pass's rate is measured over a time that is not zero.
    env.sim.server().faults().set(FaultConfig {
        slow: 1.0,
        slow_delay: Duration::from_millis(20),
        ..FaultConfig::default()
    });
    let puller = env.puller();
    let mut run = puller.begin().await.unwrap();
    for _ in 0..4 {
        assert!(puller.step(&mut run).await.unwrap(), "the pass went on");
    }
    // Read by another process, as an operator would while the daemon runs.
    let out = tokio::process::Command::new(BIN)
        .args([
            "--config",
            env.config_path().to_str().unwrap(),
            "status",
            "--json",
        ])
        .env_remove("CONTACT_SYNC_CONFIG")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pass = &status["current_pass"];
    // Pages re-read a few records (source.page_overlap); those are not counted twice.
    let offset = pass["next_start"].as_u64().unwrap();
    assert!(offset >= 150, "four pages of 50 read: {status}");
    assert_eq!(pass["records"], offset, "{status}");
    assert_eq!(pass["total_results"], 1_000, "{status}");
    assert_eq!(pass["percent"], offset as f64 / 10.0, "{status}");
    assert!(pass["started_at"].is_string(), "{status}");
    let rate = pass["records_per_sec"].as_f64().unwrap();
    assert!(rate > 0.0, "{status}");
    let eta = pass["eta_seconds"].as_u64().unwrap();
    let left = (1_000 - offset) as f64;
    assert!(eta.abs_diff((left / rate).ceil() as u64) <= 1, "{status}");
    // The last complete pass keeps its keys; there is none yet.
    assert!(status["last_pass"].is_null(), "{status}");

    let text_out = tokio::process::Command::new(BIN)
        .args(["--config", env.config_path().to_str().unwrap(), "status"])
        .output()
        .await
        .unwrap();
    let text_out = text(&text_out.stdout);
    let line = format!(
        "at offset {offset} of 1000 ({:.1}%), {offset} records",
        offset as f64 / 10.0
    );
    assert!(text_out.contains(&line), "{text_out}");
}

#[tokio::test]
async fn status_gives_each_destination_an_eta_from_its_recent_delivery_rate() {
    let stack = Stack::with_contacts(300).await;
    stack
        .engine()
        .backfill(&tokio_util::sync::CancellationToken::new())
        .await
        .unwrap();
    let destinations = [Destination::Omi, Destination::Engagelab];
    let status = store::status(&stack.store, &destinations).await.unwrap();
    for d in &destinations {
        let c = &status.destinations[d];
        assert!(c.deliveries_per_sec.unwrap() > 0.0, "{d}: {c:?}");
        assert_eq!(c.eta_seconds, Some(0), "nothing pending: {d}");
    }

    // Forty OMI deliveries become due again: the ETA is what they take at the recent rate.
    sqlx::query(
        "UPDATE deliveries SET state = 'pending' WHERE destination = 'omi' AND rowid IN
             (SELECT rowid FROM deliveries WHERE destination = 'omi' LIMIT 40)",
    )
    .execute(stack.store.pool())
    .await
    .unwrap();
    let status = store::status(&stack.store, &destinations).await.unwrap();
    let omi = &status.destinations[&Destination::Omi];
    let rate = omi.deliveries_per_sec.unwrap();
    let eta = omi.eta_seconds.expect("a rate, so an ETA");
    assert!(eta.abs_diff((40.0 / rate).ceil() as u64) <= 1, "{omi:?}");

    // Nothing acknowledged recently: the rate, and so the ETA, is unknown.
    sqlx::query("UPDATE deliveries SET next_attempt_at = 0, updated_at = 0")
        .execute(stack.store.pool())
        .await
        .unwrap();
    let status = store::status(&stack.store, &destinations).await.unwrap();
    let omi = &status.destinations[&Destination::Omi];
    assert_eq!((omi.deliveries_per_sec, omi.eta_seconds), (None, None));
    assert_eq!(
        status.destinations[&Destination::Engagelab].eta_seconds,
        Some(0)
    );
}
