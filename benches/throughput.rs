//! Benchmarks for the performance envelope (spec §8), printed as a table:
//! - ingest (first pass) and unchanged-pass throughput, and the daemon's peak RSS, with the
//!   real binary as one process and the stand-ins (`contact_sync_sim`) in the bench's own;
//! - destination utilization: the rate each destination stand-in saw against the configured
//!   one, with the stand-in limited at 1.2× that rate (it answers 429 past it).
//!
//! `cargo bench --bench throughput`; `BENCH_CONTACTS=1000000` for the full-size run (default
//! 200,000). Linux only (peak RSS is read from /proc).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use contact_sync::config::Settings;
use contact_sync::store::Store;
use contact_sync::sync::Engine;
use contact_sync_sim::dolphins::{DolphinsOptions, DolphinsSim};
use contact_sync_sim::engagelab::{EngagelabOptions, EngagelabSim};
use contact_sync_sim::omi::{OmiOptions, OmiSim};
use contact_sync_sim::server::SimServer;
use contact_sync_sim::stack::{SOURCE_PASSWORD, SOURCE_USERNAME, SimStack, SimStackOptions};
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_contact-sync");

fn main() {
    let contacts: usize = std::env::var("BENCH_CONTACTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let dir = tempfile::tempdir().expect("temporary directory");
    println!(
        "contact-sync benchmarks — {contacts} contacts, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("{:<44} {:>14} {:>12}", "measure", "value", "target");

    // The stand-ins run on this runtime's worker threads while the main thread drives the
    // daemon's processes: the daemon is measured alone in its own process.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let sims = runtime
        .block_on(SimStack::start(SimStackOptions {
            contacts,
            page_cap: 500,
            ..SimStackOptions::default()
        }))
        .expect("starting the stand-ins");
    let config = dir.path().join("bench.toml");
    std::fs::write(
        &config,
        pull_config(&dir.path().join("bench.db"), &sims.dolphins.base_url()),
    )
    .unwrap();
    let first = backfill(&config);
    report(
        "ingest, first pass (contacts/s)",
        first.rate(contacts),
        "≥ 30000",
    );
    report("peak RSS, first pass (MB)", first.peak_rss_mb, "≤ 64");
    let again = backfill(&config);
    report(
        "unchanged pass (contacts/s)",
        again.rate(contacts),
        "≥ 100000",
    );
    report("peak RSS, unchanged pass (MB)", again.peak_rss_mb, "≤ 64");
    runtime.block_on(sims.shutdown());

    let (omi, engagelab) = runtime.block_on(utilization(dir.path()));
    report("OMI utilization at 50 req/s (share)", omi.0, "≥ 0.95");
    report("OMI 429 answers", omi.1 as f64, "0");
    report(
        "EngageLab utilization at 50 req/s (share)",
        engagelab.0,
        "≥ 0.95",
    );
    report("EngageLab 429 answers", engagelab.1 as f64, "0");
}

fn report(measure: &str, value: f64, target: &str) {
    let shown = if value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.3}")
    };
    println!("{measure:<44} {shown:>14} {target:>12}");
}

fn pull_config(db: &Path, source: &str) -> String {
    format!(
        "[database]\nurl = \"sqlite://{}\"\n\
         [source]\nbase_url = \"{source}\"\nusername = \"{SOURCE_USERNAME}\"\npassword = \"{SOURCE_PASSWORD}\"\n\
         page_size = 500\nrequests_per_second = 100000.0\n\
         [admin]\nlisten = \"\"\n[log]\nlevel = \"error\"\n",
        db.display()
    )
}

struct Run {
    elapsed: Duration,
    peak_rss_mb: f64,
}

impl Run {
    fn rate(&self, contacts: usize) -> f64 {
        contacts as f64 / self.elapsed.as_secs_f64()
    }
}

/// Run `--backfill` as a child process, sampling its peak RSS (VmHWM) until it exits.
fn backfill(config: &Path) -> Run {
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .args(["--config", config.to_str().unwrap(), "--backfill"])
        .stdout(Stdio::null())
        .spawn()
        .expect("starting the backfill");
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kb = 0u64;
    loop {
        if let Some(kb) = std::fs::read_to_string(&status_file)
            .ok()
            .and_then(|s| vm_hwm_kb(&s))
        {
            peak_kb = peak_kb.max(kb);
        }
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "backfill failed: {status}");
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Run {
        elapsed: started.elapsed(),
        peak_rss_mb: peak_kb as f64 / 1024.0,
    }
}

fn vm_hwm_kb(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The rate each destination stand-in saw, as a share of the configured 50 requests/s, with
/// the stand-ins limited at 60/s; and how many 429s they answered.
async fn utilization(dir: &Path) -> ((f64, usize), (f64, usize)) {
    const RATE: f64 = 50.0;
    const CONTACTS: usize = 500;
    let dolphins = DolphinsSim::start(DolphinsOptions {
        contacts: CONTACTS,
        ..DolphinsOptions::default()
    })
    .await
    .unwrap();
    let omi = OmiSim::start(OmiOptions {
        rate_limit: Some(RATE * 1.2),
        record_requests: true,
        ..OmiOptions::default()
    })
    .await
    .unwrap();
    let engagelab = EngagelabSim::start(EngagelabOptions {
        rate_limit: Some(RATE * 1.2),
        ..EngagelabOptions::default()
    })
    .await
    .unwrap();
    let toml = format!(
        "[database]\nurl = \"sqlite://{}\"\n\
         [source]\nbase_url = \"{}\"\nusername = \"sync\"\npassword = \"secret\"\nrequests_per_second = 10000.0\n\
         [omi]\nbase_url = \"{}\"\napi_key = \"omi-api-key\"\nbatch_size = 1\nrequests_per_second = {RATE}\n\
         [engagelab]\nbase_url = \"{}\"\napi_key = \"el-key\"\napi_secret = \"el-secret\"\nrequests_per_second = {RATE}\n\
         [admin]\nlisten = \"\"\n",
        dir.join("utilization.db").display(),
        dolphins.base_url(),
        omi.base_url(),
        engagelab.base_url()
    );
    let settings = Settings::from_toml(&toml, None).unwrap();
    let store = Store::open(&settings.database.url).await.unwrap();
    Engine::new(&settings, store)
        .unwrap()
        .backfill(&CancellationToken::new())
        .await
        .unwrap();
    (
        observed(omi.server(), RATE),
        observed(engagelab.server(), RATE),
    )
}

fn observed(server: &SimServer, rate: f64) -> (f64, usize) {
    let requests = server.requests();
    let limited = requests.iter().filter(|r| r.status == Some(429)).count();
    let window = requests.last().unwrap().received_at - requests[0].received_at;
    let seen = (requests.len() - 1) as f64 / window.as_secs_f64();
    (seen / rate, limited)
}
