//! `contact-sync-sim` binary: serve the three stand-ins until Ctrl-C or SIGTERM and print a
//! contact-sync config for them; with `--port 0` on free ports, announced in a `READY` line.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use contact_sync_sim::server::{FaultConfig, RecordedRequest, SimServer};
use contact_sync_sim::stack::{SimStack, SimStackOptions};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::MissedTickBehavior;

/// How often the change watcher looks at the destinations: the resolution of the
/// change-to-destination times it records.
const WATCH_EVERY: Duration = Duration::from_millis(50);

/// Paths of the requests that carry contact data (not auth, not EUID registration).
const OMI_DATA_PATHS: [&str; 3] = [
    "/api/v2/contact/add",
    "/api/v2/contact/addMany",
    "/api/v2/contact/update",
];
const ENGAGELAB_DATA_PATHS: [&str; 1] = ["/v1/user/contact"];

#[derive(Debug, Parser)]
#[command(
    name = "contact-sync-sim",
    version,
    about = "Serve stand-ins of the three APIs until Ctrl-C and print a config that uses them"
)]
struct Args {
    /// Contacts the stand-in source serves.
    #[arg(long, default_value_t = SimStackOptions::default().contacts)]
    contacts: usize,
    /// Records without a usable id, spread through the list (the sync quarantines them).
    #[arg(long, default_value_t = SimStackOptions::default().malformed)]
    malformed: usize,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    ip: IpAddr,
    /// Port of the 3Dolphins stand-in; OMI and EngageLab take the next two. 0 picks three free
    /// ports, announced in the first line printed (`READY dolphins=… omi=… engagelab=… control=…`).
    #[arg(long, default_value_t = 18181)]
    port: u16,
    /// Most records a 3Dolphins page returns, whatever `count` asks for.
    #[arg(long, default_value_t = SimStackOptions::default().page_cap)]
    page_cap: usize,
    /// Delay before OMI and EngageLab handle each request: how far away they are.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// OMI's own limit in requests/second; past it, 429 with Retry-After.
    #[arg(long)]
    omi_rate_limit: Option<f64>,
    /// EngageLab's own limit in requests/second; past it, 429 with Retry-After.
    #[arg(long)]
    engagelab_rate_limit: Option<f64>,
    /// A bearer token the source accepts without a login (for clients that cannot log in).
    #[arg(long)]
    source_token: Option<String>,
    /// Keep every destination request, so `GET /__sim/stats` can give arrival times. Memory
    /// grows with each request: for bounded runs only.
    #[arg(long)]
    record_requests: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // Port 0 means free ports for all three; a port past 65535 becomes 0 rather than an error.
    let ports = if args.port == 0 {
        [0; 3]
    } else {
        [
            args.port,
            args.port.checked_add(1).unwrap_or(0),
            args.port.checked_add(2).unwrap_or(0),
        ]
    };
    let sims = match SimStack::start(SimStackOptions {
        contacts: args.contacts,
        malformed: args.malformed,
        ip: args.ip,
        ports,
        page_cap: args.page_cap,
        source_token: args.source_token,
        omi_rate_limit: args.omi_rate_limit,
        engagelab_rate_limit: args.engagelab_rate_limit,
        record_requests: args.record_requests,
    })
    .await
    {
        Ok(sims) => sims,
        Err(e) => {
            eprintln!("contact-sync-sim: starting the stand-ins: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.latency_ms > 0 {
        let latency = FaultConfig {
            slow: 1.0,
            slow_delay: Duration::from_millis(args.latency_ms),
            ..FaultConfig::default()
        };
        sims.omi.server().faults().set(latency.clone());
        sims.engagelab.server().faults().set(latency);
    }
    let control = Arc::new(Control {
        started: Instant::now(),
        changes: Mutex::new(Changes::default()),
        sims,
    });
    let listener = match tokio::net::TcpListener::bind(SocketAddr::new(args.ip, 0)).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("contact-sync-sim: starting the control endpoint: {e}");
            return ExitCode::FAILURE;
        }
    };
    let control_url = listener
        .local_addr()
        .map(|addr| format!("http://{addr}"))
        .unwrap_or_default();
    let sims = &control.sims;
    println!(
        "READY dolphins={} omi={} engagelab={} control={control_url}",
        sims.dolphins.base_url(),
        sims.omi.base_url(),
        sims.engagelab.base_url()
    );
    println!("# Stand-ins are up; save this as a config file and run contact-sync with it.");
    println!("# Stop them with Ctrl-C.\n");
    println!("{}", sims.config_toml(Path::new("data/contact-sync.db")));
    // Each destination logs its writes from the first look on: one now, before the control
    // endpoint takes a change, so no arrival can come before its log.
    sims.omi.written_mentioning(|_| None);
    sims.engagelab.written_mentioning(|_| None);
    let watcher = tokio::spawn(watch_changes(Arc::clone(&control)));
    let app = Router::new()
        .route("/__sim/stats", get(stats))
        .route("/__sim/changes", get(changes))
        .route("/__sim/change", post(change))
        .with_state(Arc::clone(&control));
    tokio::select! {
        () = shutdown_signal() => {}
        served = axum::serve(listener, app) => {
            if let Err(e) = served {
                eprintln!("contact-sync-sim: control endpoint: {e}");
            }
        }
    }
    watcher.abort();
    let _ = watcher.await;
    if let Ok(control) = Arc::try_unwrap(control) {
        control.sims.shutdown().await;
    }
    ExitCode::SUCCESS
}

/// What the control endpoint (`/__sim/…`, on its own port) reads and changes.
struct Control {
    sims: SimStack,
    /// Zero of the arrival times `stats` reports.
    started: Instant,
    changes: Mutex<Changes>,
}

impl Control {
    fn changes(&self) -> MutexGuard<'_, Changes> {
        self.changes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ms_since_start(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.started).as_secs_f64() * 1000.0
    }

    /// Changes still on their way, and the change-to-arrival times (ms) of those delivered.
    fn changes_json(&self) -> Value {
        let changes = self.changes();
        let latencies: Vec<f64> = changes
            .latencies
            .iter()
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect();
        json!({ "pending": changes.pending.len(), "latencies_ms": latencies })
    }
}

/// Source changes made through `POST /__sim/change` and when each reached the destinations.
#[derive(Default)]
struct Changes {
    rounds: u64,
    /// By contact id.
    pending: HashMap<String, PendingChange>,
    /// Change to arrival at both destinations, per delivered change.
    latencies: Vec<Duration>,
}

impl Changes {
    /// Marks `now` as the arrival at OMI and at EngageLab of the pending changes of these
    /// contacts, unless seen there before; a change seen at both is delivered.
    fn arrived(&mut self, now: Instant, omi: &[String], engagelab: &[String]) {
        let arrivals =
            (omi.iter().map(|id| (id, true))).chain(engagelab.iter().map(|id| (id, false)));
        for (id, at_omi) in arrivals {
            let Some(change) = self.pending.get_mut(id) else {
                continue;
            };
            let seen = match at_omi {
                true => &mut change.omi_at,
                false => &mut change.engagelab_at,
            };
            seen.get_or_insert(now);
            if let (Some(omi), Some(engagelab)) = (change.omi_at, change.engagelab_at) {
                let latency = omi.max(engagelab).saturating_duration_since(change.at);
                self.latencies.push(latency);
                self.pending.remove(id);
            }
        }
    }
}

struct PendingChange {
    /// The new e-mail address: seen in a destination's copy means the change arrived there.
    marker: String,
    at: Instant,
    omi_at: Option<Instant>,
    engagelab_at: Option<Instant>,
}

#[derive(Deserialize)]
struct ChangeParams {
    count: usize,
}

/// `POST /__sim/change?count=N`: gives N random contacts a new e-mail address now.
async fn change(
    State(control): State<Arc<Control>>,
    Query(params): Query<ChangeParams>,
) -> Json<Value> {
    let round = {
        let mut changes = control.changes();
        changes.rounds += 1;
        changes.rounds
    };
    let ids = control.sims.dolphins.ids();
    let mut rng = fastrand::Rng::with_seed(round);
    let count = params.count.min(ids.len());
    let mut chosen = HashSet::with_capacity(count);
    while chosen.len() < count {
        chosen.insert(ids[rng.usize(..ids.len())].clone());
    }
    // The lock is held from the change at the source to its entry as pending, so the watcher
    // never takes a destination's write log between the two and misses an arrival.
    let mut changes = control.changes();
    let mut made = Vec::with_capacity(count);
    control.sims.dolphins.update_many(&chosen, |id, record| {
        let marker = format!("changed{round}.{}@bench.example", made.len());
        record["contactEmail"] = json!([marker]);
        if let Some(fields) = record.as_object_mut() {
            fields.remove("contactEmailString");
        }
        made.push((id.to_owned(), marker));
    });
    let at = Instant::now();
    let changed = made.len();
    changes.pending.extend(made.into_iter().map(|(id, marker)| {
        let change = PendingChange {
            marker,
            at,
            omi_at: None,
            engagelab_at: None,
        };
        (id, change)
    }));
    Json(json!({ "round": round, "changed": changed }))
}

/// Records when each pending change shows in each destination's copy of the contact: each
/// look asks each destination once which of the contacts it wrote since the last look now
/// hold their change (docs/performance.md, round 11: asking about every pending change at
/// every look took 0.6 of a core from serving while 10,000 waited).
async fn watch_changes(control: Arc<Control>) {
    let sims = &control.sims;
    let mut tick = tokio::time::interval(WATCH_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut changes = control.changes();
        let now = Instant::now();
        let pending = &changes.pending;
        let omi = sims
            .omi
            .written_mentioning(|id| awaited(pending, id, |c| c.omi_at));
        let engagelab =
            (sims.engagelab).written_mentioning(|id| awaited(pending, id, |c| c.engagelab_at));
        changes.arrived(now, &omi, &engagelab);
    }
}

/// The marker of `id`'s pending change if it has not been seen at a destination (`seen`).
fn awaited<'p>(
    pending: &'p HashMap<String, PendingChange>,
    id: &str,
    seen: impl Fn(&PendingChange) -> Option<Instant>,
) -> Option<&'p str> {
    (pending.get(id))
        .filter(|change| seen(change).is_none())
        .map(|change| change.marker.as_str())
}

/// `GET /__sim/stats`: what the source serves, what the destinations hold, the arrival times
/// of successful data requests (with `--record-requests`), and the change latencies.
async fn stats(State(control): State<Arc<Control>>) -> Json<Value> {
    let sims = &control.sims;
    let traffic = |server: &SimServer, paths: &[&str]| {
        let requests = server.requests();
        let is_data = |r: &RecordedRequest| paths.contains(&r.path.as_str());
        let arrivals: Vec<f64> = requests
            .iter()
            .filter(|r| is_data(r) && r.status == Some(200))
            .map(|r| control.ms_since_start(r.received_at))
            .collect();
        json!({
            "data_ok_ms": arrivals,
            "rate_limited": requests.iter().filter(|r| r.rate_limited).count(),
            "requests": server.request_count(),
        })
    };
    let mut omi = traffic(sims.omi.server(), &OMI_DATA_PATHS);
    omi["held"] = json!(sims.omi.len());
    omi["duplicates"] = json!(sims.omi.duplicates().len());
    let mut engagelab = traffic(sims.engagelab.server(), &ENGAGELAB_DATA_PATHS);
    engagelab["held"] = json!(sims.engagelab.held());
    Json(json!({
        "served": sims.dolphins.ids().len(),
        "listed": sims.dolphins.len(),
        "omi": omi,
        "engagelab": engagelab,
        "changes": control.changes_json(),
    }))
}

/// `GET /__sim/changes`: only the `changes` part of `stats`, cheap enough to poll while the
/// daemon works (`stats` lists every id and every recorded request).
async fn changes(State(control): State<Arc<Control>>) -> Json<Value> {
    Json(control.changes_json())
}

/// Resolves when SIGTERM or SIGINT arrives.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(ids: &[&str], at: Instant) -> Changes {
        let change = |id: &str| PendingChange {
            marker: format!("new-{id}@example.com"),
            at,
            omi_at: None,
            engagelab_at: None,
        };
        Changes {
            pending: ids.iter().map(|id| (id.to_string(), change(id))).collect(),
            ..Changes::default()
        }
    }

    #[test]
    fn a_change_is_delivered_when_seen_at_both_destinations_first_sightings_kept() {
        let start = Instant::now();
        let mut changes = pending(&["a", "b"], start);
        let ids = |ids: &[&str]| ids.iter().map(|id| id.to_string()).collect::<Vec<_>>();
        let second = |n| start + Duration::from_secs(n);
        changes.arrived(second(1), &ids(&["a", "unknown"]), &[]);
        changes.arrived(second(2), &ids(&["a"]), &ids(&["b"]));
        assert!(
            changes.latencies.is_empty(),
            "each seen at one destination only"
        );
        changes.arrived(second(3), &[], &ids(&["a", "a"]));
        assert_eq!(changes.latencies, [Duration::from_secs(3)]);
        assert_eq!(changes.pending.keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(changes.pending["b"].omi_at, None);
        assert_eq!(changes.pending["b"].engagelab_at, Some(second(2)));
    }
}
