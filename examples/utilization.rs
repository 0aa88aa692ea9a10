//! Measures destination utilization: the rate of successful data requests each stand-in saw,
//! by arrival time, as a share of the configured `requests_per_second`, at injected latencies.
//!
//! `cargo run --release --example utilization -- [LATENCY_MS ...]` (default 5 250 1000).
//! `MAX_IN_FLIGHT=n` sets both destinations' `max_in_flight` (unset: the defaults). Each
//! destination runs alone, at 100 requests/s, against a stand-in limited to 120/s that answers
//! every request after the latency: OMI with `addMany` batches of 10 (`OMI_BATCH=n`; the
//! bench sends 1) over 2,000 batches, EngageLab one write per contact over 2,000 contacts
//! (about 20 s each).
//! The utilization column is over the whole run (first to last data request: the backfill's
//! start, while the first pages are read, included); the bench's column counts as
//! `benches/throughput.rs` does, the 12 s after a 2 s warm-up from the first data request.
//! `TIMELINE=1` also prints, every half second of each run, the data requests that arrived in
//! it (as a rate), the adaptive limit and the permits held: where a shortfall comes from.

use std::time::Duration;

use contact_sync::config::Settings;
use contact_sync::store::Store;
use contact_sync::sync::Engine;
use contact_sync_sim::dolphins::{DolphinsOptions, DolphinsSim};
use contact_sync_sim::engagelab::{EngagelabOptions, EngagelabSim};
use contact_sync_sim::omi::{OmiOptions, OmiSim};
use contact_sync_sim::server::{FaultConfig, SimServer};
use tokio_util::sync::CancellationToken;

const RATE: f64 = 100.0;
/// The bench's window: after this much from the first data request...
const WARMUP: Duration = Duration::from_secs(2);
/// ...this long.
const WINDOW: Duration = Duration::from_secs(12);

#[tokio::main]
async fn main() {
    let latencies: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("latencies in whole milliseconds"))
        .collect();
    let latencies = if latencies.is_empty() {
        vec![5, 250, 1_000]
    } else {
        latencies
    };
    let max_in_flight = std::env::var("MAX_IN_FLIGHT")
        .map(|n| format!("max_in_flight = {n}\n"))
        .unwrap_or_default();
    println!(
        "| destination | latency | requests | rate (req/s) | utilization | bench's window | 429s | seconds |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for latency in latencies {
        let latency = Duration::from_millis(latency);
        for destination in ["omi", "engagelab"] {
            let (requests, rate, windowed, limited, took) =
                run(destination, latency, &max_in_flight).await;
            println!(
                "| {destination} | {} ms | {requests} | {rate:.1} | {:.3} | {:.3} | {limited} | {:.1} |",
                latency.as_millis(),
                rate / RATE,
                windowed / RATE,
                took.as_secs_f64()
            );
        }
    }
}

/// One backfill to `destination` alone; returns the data requests answered 2xx, their rate
/// by arrival over the run and over the bench's window, the 429s, and how long it took.
async fn run(
    destination: &str,
    latency: Duration,
    max_in_flight: &str,
) -> (usize, f64, f64, usize, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let omi_batch: usize =
        std::env::var("OMI_BATCH").map_or(10, |n| n.parse().expect("a batch size"));
    let contacts = if destination == "omi" {
        2_000 * omi_batch
    } else {
        2_000
    };
    let dolphins = DolphinsSim::start(DolphinsOptions {
        contacts,
        ..DolphinsOptions::default()
    })
    .await
    .unwrap();
    let slow = FaultConfig {
        slow: 1.0,
        slow_delay: latency,
        ..FaultConfig::default()
    };
    let limit = Some(RATE * 1.2);
    let (stand_in, section) = if destination == "omi" {
        let omi = OmiSim::start(OmiOptions {
            rate_limit: limit,
            ..OmiOptions::default()
        })
        .await
        .unwrap();
        let section = format!(
            "[omi]\nbase_url = \"{}\"\napi_key = \"omi-api-key\"\nbatch_size = {omi_batch}\n",
            omi.base_url()
        );
        (StandIn::Omi(omi), section)
    } else {
        let engagelab = EngagelabSim::start(EngagelabOptions {
            rate_limit: limit,
            ..EngagelabOptions::default()
        })
        .await
        .unwrap();
        let section = format!(
            "[engagelab]\nbase_url = \"{}\"\napi_key = \"el-key\"\napi_secret = \"el-secret\"\n",
            engagelab.base_url()
        );
        (StandIn::Engagelab(engagelab), section)
    };
    let server = stand_in.server();
    server.faults().set(slow);
    let toml = format!(
        "[database]\nurl = \"sqlite://{}\"\n\
         [source]\nbase_url = \"{}\"\nusername = \"sync\"\npassword = \"secret\"\nrequests_per_second = 10000.0\npage_size = 500\n\
         {section}requests_per_second = {RATE}\n{max_in_flight}\
         [http]\ntimeout = \"10s\"\n[admin]\nlisten = \"\"\n",
        dir.path().join("utilization.db").display(),
        dolphins.base_url(),
    );
    let settings = Settings::from_toml(&toml, None).unwrap();
    let store = Store::open(&settings.database.url).await.unwrap();
    let started = std::time::Instant::now();
    let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sampler = std::env::var_os("TIMELINE").map(|_| {
        let (samples, destination) = (samples.clone(), destination.to_owned());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(BUCKET);
            loop {
                tick.tick().await;
                let gauges = gauges(&destination);
                samples.lock().unwrap().push(gauges);
            }
        })
    });
    Engine::new(&settings, store)
        .unwrap()
        .backfill(&CancellationToken::new())
        .await
        .unwrap();
    let took = started.elapsed();
    let requests = server.requests();
    let limited = requests.iter().filter(|r| r.status == Some(429)).count();
    let mut arrivals: Vec<_> = requests
        .iter()
        .filter(|r| r.status.is_some_and(|s| (200..300).contains(&s)))
        .filter(|r| is_data(&r.path))
        .map(|r| r.received_at)
        .collect();
    arrivals.sort();
    if let Some(sampler) = sampler {
        sampler.abort();
        print_timeline(
            destination,
            latency,
            started,
            &arrivals,
            &samples.lock().unwrap(),
        );
    }
    let window = arrivals[arrivals.len() - 1] - arrivals[0];
    let rate = (arrivals.len() - 1) as f64 / window.as_secs_f64();
    let from = arrivals[0] + WARMUP;
    let in_window = arrivals
        .iter()
        .filter(|t| (from..from + WINDOW).contains(*t))
        .count();
    let windowed = in_window as f64 / WINDOW.as_secs_f64();
    (arrivals.len(), rate, windowed, limited, took)
}

/// Requests that carry contacts: not OMI's token request, not EngageLab's `register`.
fn is_data(path: &str) -> bool {
    !path.ends_with("/api/auth") && !path.ends_with("/register")
}

/// Sampling period of the timeline.
const BUCKET: Duration = Duration::from_millis(500);

/// The destination's adaptive limit, permits held, and the sum and count of its request
/// latencies so far, from the process's metrics.
fn gauges(destination: &str) -> [f64; 4] {
    let text = contact_sync::metrics::handle().render();
    let read = |name: &str| {
        let key = format!("{name}{{destination=\"{destination}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(f64::NAN)
    };
    [
        read("contact_sync_destination_concurrency_limit"),
        read("contact_sync_destination_in_flight"),
        read("contact_sync_push_request_duration_seconds_sum"),
        read("contact_sync_push_request_duration_seconds_count"),
    ]
}

/// Per half second: data requests arrived (as a rate), the limit and permits held at its
/// start, and the mean latency of the requests answered in it.
fn print_timeline(
    destination: &str,
    latency: Duration,
    started: std::time::Instant,
    arrivals: &[std::time::Instant],
    samples: &[[f64; 4]],
) {
    println!(
        "timeline {destination} {} ms: t(s) req/s limit held latency(ms)",
        latency.as_millis()
    );
    let mut counts = vec![0usize; samples.len() + 1];
    for a in arrivals {
        let n = (a.duration_since(started).as_secs_f64() / BUCKET.as_secs_f64()) as usize;
        if let Some(c) = counts.get_mut(n) {
            *c += 1;
        }
    }
    for (n, pair) in samples.windows(2).enumerate() {
        let [limit, held, sum, count] = pair[0];
        let [_, _, next_sum, next_count] = pair[1];
        let rate = counts[n] as f64 / BUCKET.as_secs_f64();
        let mean = (next_sum - sum) / (next_count - count) * 1000.0;
        let t = n as f64 * BUCKET.as_secs_f64();
        println!("  {t:5.1} {rate:6.0} {limit:4} {held:4} {mean:6.0}");
    }
}

/// The destination stand-in of one run, kept alive for its duration.
enum StandIn {
    Omi(OmiSim),
    Engagelab(EngagelabSim),
}

impl StandIn {
    fn server(&self) -> &SimServer {
        match self {
            Self::Omi(omi) => omi.server(),
            Self::Engagelab(engagelab) => engagelab.server(),
        }
    }
}
