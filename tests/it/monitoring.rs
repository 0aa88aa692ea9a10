//! The monitoring pack (`deploy/monitoring/`) against the real daemon: the dashboard and the
//! alert rules name only metrics that a `/metrics` scrape of the binary shows.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::helpers::{Stack, http};
use contact_sync_sim::server::{CannedAnswer, Fault};

const CONTACTS: usize = 60;

/// Metrics created only by an event: the scrape is taken once each has happened.
const EVENT_METRICS: &[&str] = &[
    "contact_sync_source_pass_failures_total",
    "contact_sync_destination_pauses_total",
    "contact_sync_rate_limit_waits_total",
    "contact_sync_push_retries_total",
];

#[tokio::test]
async fn dashboard_and_alert_rules_use_only_metrics_the_daemon_exports() {
    let exported = exported_metrics().await;

    let text = read("deploy/monitoring/dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard.json is JSON");
    assert!(dashboard["schemaVersion"].as_u64() >= Some(36));
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .expect("dashboard variables")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(variables, ["datasource", "job", "instance"]);
    let mut strings = Vec::new();
    json_strings(&dashboard, &mut strings);
    let on_dashboard = metric_names(&strings.join("\n"), &exported);
    let in_rules = metric_names(&read("deploy/monitoring/alerts.yml"), &exported);

    // The extraction finds what the pack is about, so an empty list cannot pass for a match.
    for (what, used) in [("dashboard", &on_dashboard), ("alert rules", &in_rules)] {
        assert!(
            used.contains("contact_sync_deliveries_due"),
            "{what}: {used:?}"
        );
    }
    assert!(on_dashboard.contains("contact_sync_push_request_duration_seconds"));
    assert!(in_rules.contains("contact_sync_destination_pauses_total"));

    let unknown = |used: &BTreeSet<String>| -> Vec<String> {
        used.iter()
            .filter(|name| !exported.contains(*name))
            .cloned()
            .collect()
    };
    assert_eq!(
        unknown(&on_dashboard),
        Vec::<String>::new(),
        "metrics on the dashboard the daemon does not export (it exports {exported:?})"
    );
    assert_eq!(
        unknown(&in_rules),
        Vec::<String>::new(),
        "metrics in alerts.yml the daemon does not export (it exports {exported:?})"
    );
}

/// The metric names of a scrape of the real binary after a pass that failed, one that
/// completed, and deliveries to both destinations through a 429, a 503 and refused
/// credentials: its samples plus its `# HELP` and `# TYPE` lines.
async fn exported_metrics() -> BTreeSet<String> {
    let stack = Stack::with_contacts(CONTACTS).await;
    // The pass after the failed one comes at once.
    let addr = stack.serve_admin("200ms");
    // The first login is refused: that pass fails.
    stack
        .dolphins
        .server()
        .faults()
        .push(Fault::ServerError(400));
    // OMI: a 429 (a pause, and a wait behind it), then a 503 (a retry).
    let omi = stack.omi.server().faults();
    omi.exclude_path_suffixes(["/api/auth"]);
    omi.push(Fault::TooManyRequests {
        retry_after: Duration::from_millis(1),
    });
    omi.push(Fault::ServerError(503));
    // EngageLab refuses the credentials once: a pause for auth.
    stack
        .engagelab
        .server()
        .faults()
        .push(Fault::Answer(CannedAnswer::new(401, "{}")));

    let mut daemon = stack.spawn_daemon();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    let names = loop {
        if let Some(scrape) = scrape(&format!("http://{addr}/metrics")).await {
            let names = scrape_names(&scrape);
            let drained = ["omi", "engagelab"].iter().all(|d| {
                scrape.contains(&format!(
                    "contact_sync_deliveries_due{{destination=\"{d}\"}} 0\n"
                ))
            });
            let done = stack.omi.len() == CONTACTS
                && drained
                && names.contains("contact_sync_last_pass_completed_timestamp_seconds")
                && EVENT_METRICS.iter().all(|m| names.contains(*m))
                && scrape.contains("reason=\"auth\"")
                && scrape.contains("reason=\"rate_limited\"");
            if done {
                break names;
            }
            last = scrape;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for a pass, both deliveries and the faults' metrics; last scrape:\n{last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    daemon.start_kill().unwrap();
    daemon.wait().await.unwrap();
    names
}

async fn scrape(url: &str) -> Option<String> {
    let response = http().get(url).send().await.ok()?;
    if response.status() != 200 {
        return None;
    }
    response.text().await.ok()
}

/// Every metric name in a Prometheus text scrape: samples and `# HELP`/`# TYPE` lines.
fn scrape_names(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter_map(|line| {
            let line = line
                .strip_prefix("# HELP ")
                .or_else(|| line.strip_prefix("# TYPE "))
                .unwrap_or(line);
            let name = line.split(['{', ' ']).next()?;
            (!name.is_empty() && !name.starts_with('#')).then(|| name.to_owned())
        })
        .collect()
}

/// The `contact_sync_*` names in PromQL (or any text), a histogram's `_bucket`, `_sum` and
/// `_count` series under its base name when the daemon exports that base name.
fn metric_names(text: &str, exported: &BTreeSet<String>) -> BTreeSet<String> {
    const PREFIX: &str = "contact_sync_";
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    text.match_indices(PREFIX)
        .filter(|(at, _)| !text[..*at].ends_with(is_name_char))
        .map(|(at, _)| {
            let rest = &text[at..];
            let end = rest.find(|c| !is_name_char(c)).unwrap_or(rest.len());
            let name = &rest[..end];
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    name.strip_suffix(suffix)
                        .filter(|base| exported.contains(*base))
                })
                .unwrap_or(name)
                .to_owned()
        })
        .collect()
}

/// All string values in a JSON document (queries, variables, titles).
fn json_strings<'a>(value: &'a serde_json::Value, out: &mut Vec<&'a str>) {
    match value {
        serde_json::Value::String(s) => out.push(s),
        serde_json::Value::Array(items) => items.iter().for_each(|v| json_strings(v, out)),
        serde_json::Value::Object(map) => map.values().for_each(|v| json_strings(v, out)),
        _ => {}
    }
}

fn read(path: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
