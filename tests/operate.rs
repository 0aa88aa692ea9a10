//! Operating it: the admin endpoints, graceful shutdown of the real binary, and logs that
//! never carry a secret.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Stack;
use contact_sync::admin::Admin;
use contact_sync::sim::dolphins::DolphinsOptions;
use contact_sync::sim::engagelab::EngagelabOptions;
use contact_sync::sim::omi::OmiOptions;
use contact_sync::sim::server::{Fault, FaultConfig};
use contact_sync::sink::Destination;
use contact_sync::store;
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_contact-sync");

async fn get(url: String) -> (u16, String) {
    let response = reqwest::get(url).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn admin_on_any_port(engine: &Arc<contact_sync::sync::Engine>, stack: &Stack) -> Admin {
    Admin::start(
        "127.0.0.1:0".parse().unwrap(),
        Arc::clone(engine),
        stack.store.clone(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn admin_endpoints_report_health_readiness_and_metrics() {
    let stack = Stack::with_contacts(200).await;
    let engine = Arc::new(stack.engine());
    let admin = admin_on_any_port(&engine, &stack).await;
    let base = format!("http://{}", admin.addr());
    stack.omi.server().faults().push(Fault::ServerError(503));
    engine.backfill(&CancellationToken::new()).await.unwrap();

    assert_eq!(get(format!("{base}/healthz")).await.0, 200);
    let (status, body) = get(format!("{base}/readyz")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["ready"],
        true
    );

    let (status, metrics) = get(format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    for name in [
        "contact_sync_source_pages_total",
        "contact_sync_source_records_total",
        "contact_sync_pass_duration_seconds_bucket",
        "contact_sync_last_pass_completed_timestamp_seconds",
        "contact_sync_push_requests_total{destination=\"omi\",outcome=\"ok\"}",
        "contact_sync_push_requests_total{destination=\"omi\",outcome=\"server_error\"}",
        "contact_sync_push_request_duration_seconds_bucket",
        "contact_sync_deliveries_due{destination=\"engagelab\"} 0",
        "contact_sync_deliveries_dead{destination=\"omi\"} 0",
        "contact_sync_push_retries_total{destination=\"omi\"}",
        "contact_sync_token_renewals_total{api=\"omi\"}",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    promtool_accepts(&metrics);
    admin.stop().await;
}

/// `promtool check metrics` (Debian's `prometheus` package, installed by `.ci/run`).
fn promtool_accepts(scrape: &str) {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        println!("SKIPPED promtool check: promtool is not installed (apt-get install prometheus)");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}"
    );
}

#[tokio::test]
async fn readiness_fails_while_a_destination_refuses_credentials() {
    let stack = Stack::with_contacts(20).await;
    let mut settings = stack.settings.clone();
    settings.engagelab.as_mut().unwrap().api_secret = "wrong".to_owned().into();
    let engine = Arc::new(contact_sync::sync::Engine::new(&settings, stack.store.clone()).unwrap());
    let admin = admin_on_any_port(&engine, &stack).await;
    assert!(engine.backfill(&CancellationToken::new()).await.is_err());
    let (status, body) = get(format!("http://{}/readyz", admin.addr())).await;
    assert_eq!(status, 503);
    assert!(body.contains("engagelab: credentials refused"), "{body}");
    admin.stop().await;
}

#[tokio::test]
async fn sigterm_mid_backfill_exits_0_quickly_and_a_restart_converges() {
    let stack = Stack::with_contacts(1_500).await;
    // Slow answers everywhere, so SIGTERM surely lands mid-run with requests in flight.
    let slow = FaultConfig {
        slow: 1.0,
        slow_delay: Duration::from_millis(40),
        ..FaultConfig::default()
    };
    stack.dolphins.server().faults().set(slow.clone());
    stack.omi.server().faults().set(slow);
    let config = stack.config_path();
    let child = tokio::process::Command::new(BIN)
        .args(["--config", config.to_str().unwrap(), "--backfill"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while stack.omi.len() < 100 {
        assert!(Instant::now() < deadline, "the backfill made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let signalled = Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait_with_output().await.unwrap().status;
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "a graceful stop exits 0");
    assert!(
        took < Duration::from_secs(12),
        "stopped in {took:?}, not within the 10 s grace"
    );
    let status = store::status(&stack.store, &[Destination::Omi])
        .await
        .unwrap();
    assert!(
        status.destinations[&Destination::Omi].synced < 1_500,
        "stopped before the end"
    );

    stack.dolphins.server().faults().set(FaultConfig::default());
    stack.omi.server().faults().set(FaultConfig::default());
    let out = tokio::process::Command::new(BIN)
        .args(["--config", config.to_str().unwrap(), "--backfill"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stack.assert_each_added_once();
}

#[tokio::test]
async fn logs_of_a_full_run_never_carry_a_secret() {
    let stack = Stack::start(
        // Short-lived source tokens force renewals; failures everywhere exercise error paths.
        DolphinsOptions {
            contacts: 300,
            token_ttl: Duration::from_secs(1),
            page_cap: 20,
            ..DolphinsOptions::default()
        },
        OmiOptions {
            api_key: "omi-KEY-5c0e7d".into(),
            ..OmiOptions::default()
        },
        EngagelabOptions {
            api_key: "el-KEY-81fa".into(),
            api_secret: "el-SECRET-2b9d".into(),
            ..EngagelabOptions::default()
        },
        "",
    )
    .await;
    let faults = FaultConfig {
        too_many_requests: 0.05,
        server_error: 0.1,
        reset: 0.05,
        slow: 0.2,
        slow_delay: Duration::from_millis(30),
        ..FaultConfig::default()
    };
    for server in [
        stack.dolphins.server(),
        stack.omi.server(),
        stack.engagelab.server(),
    ] {
        server.faults().set(faults.clone());
    }
    stack.omi.server().faults().push(Fault::ServerError(500));
    let config = stack.config_path();
    let out = tokio::process::Command::new(BIN)
        .args(["--config", config.to_str().unwrap(), "--backfill"])
        .env("RUST_LOG", "trace")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let logs =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(logs.lines().count() > 50, "the run logged");
    assert!(
        stack.dolphins.login_count() > 1,
        "the source token was renewed"
    );

    let mut secrets = vec![
        "secret".to_owned(), // the source password of the stand-in's default login
        "omi-KEY-5c0e7d".to_owned(),
        "el-KEY-81fa".to_owned(),
        "el-SECRET-2b9d".to_owned(),
    ];
    // Every token and Basic credential the clients sent.
    for server in [
        stack.dolphins.server(),
        stack.omi.server(),
        stack.engagelab.server(),
    ] {
        for request in server.requests() {
            if let Some(value) = request.authorization {
                let credential = value
                    .split_once(' ')
                    .map_or(value.as_str(), |(_, c)| c)
                    .to_owned();
                secrets.push(credential);
            }
        }
    }
    secrets.sort();
    secrets.dedup();
    assert!(secrets.len() > 5, "tokens were issued: {}", secrets.len());
    for secret in &secrets {
        // The password "secret" is also an ordinary word: look for it as a value only.
        let needle = if secret == "secret" {
            "\"secret\"".to_owned()
        } else {
            secret.clone()
        };
        assert!(
            !logs.contains(&needle),
            "a secret reached the logs: {secret}"
        );
    }
    assert!(
        !logs.to_lowercase().contains("authorization: "),
        "an Authorization header was logged"
    );
}

#[tokio::test]
async fn systemd_is_told_ready_status_watchdog_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let stack = Stack::with_contacts(50).await;
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let config = stack.config_path();
    let child = tokio::process::Command::new(BIN)
        .args(["--config", config.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id().unwrap().to_string();
    let messages = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let mut signalled = false;
        while let Ok(n) = socket.recv(&mut buf) {
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            let stopping = message.contains("STOPPING=1");
            seen.push(message);
            if stopping {
                break;
            }
            let ready = seen.iter().any(|m| m.contains("READY=1"));
            let pings = seen.iter().filter(|m| m.contains("WATCHDOG=1")).count();
            if ready && pings >= 2 && !signalled {
                std::process::Command::new("kill")
                    .args(["-TERM", &pid])
                    .status()
                    .unwrap();
                signalled = true;
            }
        }
        seen
    })
    .await
    .unwrap();
    let status = child.wait_with_output().await.unwrap().status;
    assert_eq!(status.code(), Some(0));
    let ready = messages
        .iter()
        .position(|m| m.contains("READY=1"))
        .expect("READY=1 was sent");
    assert!(messages[ready].contains("STATUS="), "{messages:?}");
    assert!(
        messages.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 2,
        "{messages:?}"
    );
    assert!(
        messages.last().unwrap().contains("STOPPING=1"),
        "{messages:?}"
    );
}
