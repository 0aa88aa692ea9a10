//! Measures destination utilization: the rate of successful data requests each stand-in saw,
//! by arrival time, as a share of the configured `requests_per_second`, at injected latencies.
//!
//! `cargo run --release --example utilization -- [LATENCY_MS ...]` (default 5 250 1000).
//! `MAX_IN_FLIGHT=n` sets both destinations' `max_in_flight` (unset: the defaults). Each
//! destination runs alone, at 100 requests/s, against a stand-in limited to 120/s that answers
//! every request after the latency: OMI with `addMany` batches of 10 over 20,000 contacts,
//! EngageLab one write per contact over 2,000 contacts (about 20 s each).

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
    println!("| destination | latency | requests | rate (req/s) | utilization | 429s | seconds |");
    println!("|---|---|---|---|---|---|---|");
    for latency in latencies {
        let latency = Duration::from_millis(latency);
        for destination in ["omi", "engagelab"] {
            let (requests, rate, limited, took) = run(destination, latency, &max_in_flight).await;
            println!(
                "| {destination} | {} ms | {requests} | {rate:.1} | {:.3} | {limited} | {:.1} |",
                latency.as_millis(),
                rate / RATE,
                took.as_secs_f64()
            );
        }
    }
}

/// One backfill to `destination` alone; returns the data requests answered 2xx, their rate
/// by arrival, the 429s, and how long the backfill took.
async fn run(
    destination: &str,
    latency: Duration,
    max_in_flight: &str,
) -> (usize, f64, usize, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let contacts = if destination == "omi" { 20_000 } else { 2_000 };
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
            "[omi]\nbase_url = \"{}\"\napi_key = \"omi-api-key\"\nbatch_size = 10\n",
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
        .filter(|r| !r.path.ends_with("/api/auth"))
        .map(|r| r.received_at)
        .collect();
    arrivals.sort();
    let window = arrivals[arrivals.len() - 1] - arrivals[0];
    let rate = (arrivals.len() - 1) as f64 / window.as_secs_f64();
    (arrivals.len(), rate, limited, took)
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
