//! Metrics, named `contact_sync_*` with units in the names, rendered in the Prometheus text
//! format by the admin server. Each function here records one event; call sites stay short.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::domain::Destination;

/// Latency buckets for remote calls, in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const PASS_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// The process-wide recorder, installed on first use.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Suffix("_request_duration_seconds".into()),
                LATENCY_BUCKETS,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("contact_sync_pass_duration_seconds".into()),
                    PASS_BUCKETS,
                )
            })
            .expect("static bucket lists are valid")
            .build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first, which this crate never does.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        handle
    })
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "contact_sync_admin_connections_refused_total",
        "Admin server connections closed at once because the connection cap was reached."
    );
    describe_counter!(
        "contact_sync_source_pages_total",
        "Pages of the 3Dolphins contact list committed."
    );
    describe_counter!(
        "contact_sync_source_records_total",
        "Records read from 3Dolphins (overlap re-reads excluded)."
    );
    describe_counter!(
        "contact_sync_source_quarantined_total",
        "Records quarantined because they cannot yield a contact id."
    );
    describe_histogram!(
        "contact_sync_pass_duration_seconds",
        Unit::Seconds,
        "Duration of complete source passes."
    );
    describe_gauge!(
        "contact_sync_last_pass_completed_timestamp_seconds",
        Unit::Seconds,
        "Unix time the last source pass completed."
    );
    describe_counter!(
        "contact_sync_source_pass_failures_total",
        "Source passes that failed after retries."
    );
    describe_counter!(
        "contact_sync_source_requests_total",
        "Requests to 3Dolphins, by HTTP outcome."
    );
    describe_histogram!(
        "contact_sync_source_request_duration_seconds",
        Unit::Seconds,
        "Latency of 3Dolphins requests."
    );
    describe_counter!(
        "contact_sync_push_requests_total",
        "Requests to a destination, by HTTP outcome."
    );
    describe_histogram!(
        "contact_sync_push_request_duration_seconds",
        Unit::Seconds,
        "Latency of destination requests."
    );
    describe_gauge!(
        "contact_sync_deliveries_due",
        "Pending deliveries per destination."
    );
    describe_gauge!(
        "contact_sync_deliveries_dead",
        "Dead letters per destination."
    );
    describe_counter!(
        "contact_sync_push_retries_total",
        "Failed delivery attempts scheduled for a retry."
    );
    describe_counter!(
        "contact_sync_rate_limit_waits_total",
        "Requests that waited for a rate limiter or a pause."
    );
    describe_counter!(
        "contact_sync_destination_pauses_total",
        "Times a destination was paused, by reason."
    );
    describe_gauge!(
        "contact_sync_destination_paused",
        "1 while a destination is paused."
    );
    describe_gauge!(
        "contact_sync_destination_concurrency_limit",
        "Requests a destination may have in flight now (adaptive, at most max_in_flight)."
    );
    describe_gauge!(
        "contact_sync_destination_in_flight",
        "Requests holding a destination's concurrency permit: sending, or queued at its rate limiter."
    );
    describe_counter!(
        "contact_sync_token_renewals_total",
        "Tokens obtained from an API's auth endpoint."
    );
}

pub fn source_page(records: u64, quarantined: u64) {
    counter!("contact_sync_source_pages_total").increment(1);
    counter!("contact_sync_source_records_total").increment(records);
    counter!("contact_sync_source_quarantined_total").increment(quarantined);
}

pub fn pass_completed(duration: Duration) {
    histogram!("contact_sync_pass_duration_seconds").record(duration.as_secs_f64());
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    gauge!("contact_sync_last_pass_completed_timestamp_seconds").set(now as f64);
}

pub fn pass_failed() {
    counter!("contact_sync_source_pass_failures_total").increment(1);
}

/// One destination request: `outcome` is `ok`, `rate_limited`, `client_error`,
/// `server_error` or `transport_error`.
pub fn push_request(destination: &'static str, outcome: &'static str, latency: Duration) {
    counter!("contact_sync_push_requests_total", "destination" => destination, "outcome" => outcome).increment(1);
    histogram!("contact_sync_push_request_duration_seconds", "destination" => destination)
        .record(latency.as_secs_f64());
}

/// One 3Dolphins request; `outcome` as for [`push_request`].
pub fn source_request(outcome: &'static str, latency: Duration) {
    counter!("contact_sync_source_requests_total", "outcome" => outcome).increment(1);
    histogram!("contact_sync_source_request_duration_seconds").record(latency.as_secs_f64());
}

pub fn push_retry(destination: Destination) {
    counter!("contact_sync_push_retries_total", "destination" => destination.as_str()).increment(1);
}

pub fn rate_limit_wait(name: &'static str) {
    counter!("contact_sync_rate_limit_waits_total", "api" => name).increment(1);
}

pub fn destination_paused(destination: &'static str, reason: &'static str) {
    counter!("contact_sync_destination_pauses_total", "destination" => destination, "reason" => reason).increment(1);
}

/// A destination's adaptive concurrency limit and the permits held under it.
pub fn concurrency(destination: &'static str, limit: usize, in_flight: usize) {
    gauge!("contact_sync_destination_concurrency_limit", "destination" => destination)
        .set(limit as f64);
    gauge!("contact_sync_destination_in_flight", "destination" => destination)
        .set(in_flight as f64);
}

pub fn admin_connection_refused() {
    counter!("contact_sync_admin_connections_refused_total").increment(1);
}

pub fn token_renewed(api: &'static str) {
    counter!("contact_sync_token_renewals_total", "api" => api).increment(1);
}

/// Gauges read from the database and the gates at scrape time.
pub fn destination_state(destination: Destination, due: i64, dead: i64, paused: bool) {
    let destination = destination.as_str();
    gauge!("contact_sync_deliveries_due", "destination" => destination).set(due as f64);
    gauge!("contact_sync_deliveries_dead", "destination" => destination).set(dead as f64);
    gauge!("contact_sync_destination_paused", "destination" => destination)
        .set(f64::from(u8::from(paused)));
}
