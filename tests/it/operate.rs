//! Operating it: the admin endpoints, graceful shutdown of the real binary, and logs that
//! never carry a secret.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::helpers::{BIN, Stack, http};
use contact_sync::admin::Admin;
use contact_sync::sink::Destination;
use contact_sync::store;
use contact_sync_sim::dolphins::{DolphinsAuth, DolphinsOptions};
use contact_sync_sim::engagelab::EngagelabOptions;
use contact_sync_sim::omi::OmiOptions;
use contact_sync_sim::server::{Fault, FaultConfig};
use tokio_util::sync::CancellationToken;

async fn get(url: String) -> (u16, String) {
    let response = http().get(url).send().await.unwrap();
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

/// Polls `check` every 50 ms until it gives a value, failing the test after a minute.
async fn eventually<T, F: Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of one sample (`name` with its labels, exactly as rendered) in a scrape.
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

#[tokio::test]
async fn admin_endpoints_report_health_readiness_and_metrics() {
    // The daemon in its own process: the metrics recorder is process-wide, so in here every
    // other test's passes would add to the counters whose values this test checks.
    let stack = Stack::with_contacts(200).await;
    // One pass only: the counters then describe exactly that pass.
    let addr = stack.serve_admin("1h");
    // One 503 for the first contact batch (not the token request).
    stack
        .omi
        .server()
        .faults()
        .exclude_path_suffixes(["/api/auth"]);
    stack.omi.server().faults().push(Fault::ServerError(503));
    let mut daemon = stack.spawn_daemon();
    let base = format!("http://{addr}");
    let metrics = eventually("the pass and both deliveries to finish", || async {
        let (status, metrics) = http()
            .get(format!("{base}/metrics"))
            .send()
            .await
            .ok()
            .map(|r| (r.status().as_u16(), r))?;
        let metrics = (status == 200).then_some(metrics.text().await.ok()?)?;
        let done = stack.omi.len() == 200
            && sample(
                &metrics,
                "contact_sync_last_pass_completed_timestamp_seconds",
            )
            .is_some()
            && sample(&metrics, "contact_sync_deliveries_due{destination=\"omi\"}") == Some(0.0)
            && sample(
                &metrics,
                "contact_sync_deliveries_due{destination=\"engagelab\"}",
            ) == Some(0.0);
        done.then_some(metrics)
    })
    .await;

    assert_eq!(get(format!("{base}/healthz")).await.0, 200);
    let (status, body) = get(format!("{base}/readyz")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["ready"],
        true
    );

    // Values, checked against what the stand-ins saw.
    let value = |series: &str| {
        sample(&metrics, series).unwrap_or_else(|| panic!("{series} missing from:\n{metrics}"))
    };
    let list_requests = stack
        .dolphins
        .server()
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/graph/contacts/all") && r.status == Some(200))
        .count();
    assert_eq!(value("contact_sync_source_records_total"), 200.0);
    assert_eq!(
        value("contact_sync_source_pages_total"),
        list_requests as f64
    );
    let omi_answered = |status: u16| {
        stack
            .omi
            .server()
            .requests()
            .iter()
            .filter(|r| r.status == Some(status))
            .count() as f64
    };
    assert!(omi_answered(200) > 0.0);
    assert_eq!(
        value("contact_sync_push_requests_total{destination=\"omi\",outcome=\"ok\"}"),
        omi_answered(200)
    );
    assert_eq!(
        value("contact_sync_push_requests_total{destination=\"omi\",outcome=\"server_error\"}"),
        1.0
    );
    // Retries count deliveries: every contact of the batch that met the 503.
    let refused = stack
        .omi
        .server()
        .requests()
        .into_iter()
        .find(|r| r.status == Some(503))
        .unwrap();
    let batch = refused.body_json().unwrap()["data"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(
        value("contact_sync_push_retries_total{destination=\"omi\"}"),
        batch as f64
    );
    assert_eq!(
        value("contact_sync_token_renewals_total{api=\"omi\"}"),
        stack.omi.token_count() as f64
    );
    assert_eq!(
        value("contact_sync_deliveries_dead{destination=\"omi\"}"),
        0.0
    );
    assert!(value("contact_sync_last_pass_completed_timestamp_seconds") > 1.6e9);
    assert_eq!(value("contact_sync_pass_duration_seconds_count"), 1.0);
    assert!(
        value("contact_sync_push_request_duration_seconds_count{destination=\"omi\"}")
            >= omi_answered(200) + 1.0
    );
    promtool_accepts(&metrics);
    daemon.start_kill().unwrap();
    daemon.wait().await.unwrap();
}

/// `promtool check metrics` (Debian's `prometheus` package, installed by `.ci/run`). Without
/// promtool the test fails, unless `CONTACT_SYNC_SKIP_PROMTOOL=1` says to skip the check.
fn promtool_accepts(scrape: &str) {
    use std::io::Write;
    if std::env::var_os("CONTACT_SYNC_SKIP_PROMTOOL").is_some_and(|v| v == "1") {
        println!("SKIPPED: promtool check, as CONTACT_SYNC_SKIP_PROMTOOL=1 asks");
        return;
    }
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "promtool cannot run ({e}): install it (apt-get install prometheus) \
                 or set CONTACT_SYNC_SKIP_PROMTOOL=1 to skip this check"
            )
        });
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
    // Slow answers at OMI, and a source that answers the login and seven pages (350
    // contacts), then takes 3 s a page: SIGTERM surely lands mid-run with requests in
    // flight, however slow the machine, and the run cannot have reached the end.
    let slow = |delay| FaultConfig {
        slow: 1.0,
        slow_delay: delay,
        ..FaultConfig::default()
    };
    let source = stack.dolphins.server().faults();
    source.push_n(Fault::Slow(Duration::from_millis(40)), 8);
    source.set(slow(Duration::from_secs(3)));
    stack
        .omi
        .server()
        .faults()
        .set(slow(Duration::from_millis(40)));
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

    stack.dolphins.server().faults().clear();
    stack.omi.server().faults().clear();
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
    const SOURCE_PASSWORD: &str = "src-PASS-7c41";
    let stack = Stack::start(
        // Short-lived source tokens force renewals; failures everywhere exercise error paths.
        DolphinsOptions {
            contacts: 300,
            token_ttl: Duration::from_secs(1),
            page_cap: 20,
            auth: DolphinsAuth::Login {
                username: "sync".into(),
                password: SOURCE_PASSWORD.into(),
            },
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
    // A source password no log line could hold by chance, unlike the default "secret".
    stack.edit_config(|toml| {
        toml.replace(
            "password = \"secret\"",
            &format!("password = \"{SOURCE_PASSWORD}\""),
        )
    });
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
        SOURCE_PASSWORD.to_owned(),
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
    // Each secret in any form a log line could carry it: as is in any case, URL-encoded,
    // or escaped in JSON.
    let logs_lower = logs.to_lowercase();
    for secret in &secrets {
        let url_encoded: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        let json_escaped = serde_json::to_string(secret).unwrap();
        let json_escaped = json_escaped.trim_matches('"');
        for form in [secret.as_str(), &url_encoded, json_escaped] {
            assert!(
                !logs_lower.contains(&form.to_lowercase()),
                "a secret reached the logs: {secret}"
            );
        }
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
    // Short reads, so the deadline is checked even while the daemon sends nothing.
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let config = stack.config_path();
    let child = tokio::process::Command::new(BIN)
        .args(["--config", config.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    let messages = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let mut signalled = false;
        loop {
            assert!(
                Instant::now() < deadline,
                "no READY, two watchdog pings and STOPPING within a minute: {seen:?}"
            );
            let n = match socket.recv(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(e) => panic!("reading the notify socket: {e}"),
            };
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
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the daemon exits after STOPPING")
        .unwrap()
        .status;
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
