//! Wiring: build the clients and the engine from settings and run the daemon, a backfill or
//! a dry run; the read-only commands.

use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::Settings;
use crate::net::{self, RetryPolicy};
use crate::source::dolphins::DolphinsClient;
use crate::store::{self, Store};
use crate::sync::{PassOutcome, Puller, SyncError};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunMode {
    pub backfill: bool,
    pub dry_run: bool,
}

/// The names `status` reports destinations under.
pub fn enabled_destinations(settings: &Settings) -> Vec<&'static str> {
    let mut names = Vec::new();
    if settings.omi.enabled {
        names.push("omi");
    }
    if settings.engagelab.enabled {
        names.push("engagelab");
    }
    names
}

pub fn puller(settings: &Settings, store: Store, dry_run: bool) -> Puller {
    let client = DolphinsClient::new(
        &settings.source,
        net::http_client(settings.http.timeout),
        RetryPolicy::from(&settings.retry),
    );
    Puller::new(store, client, settings, dry_run)
}

/// Run until `cancel` (daemon), or one pass (`--backfill`, `--dry-run`). Returns the last
/// pass's outcome.
pub async fn run(
    settings: &Settings,
    mode: RunMode,
    cancel: CancellationToken,
) -> anyhow::Result<Option<PassOutcome>> {
    let store = Store::open(&settings.database.url)
        .await
        .context("opening the database")?;
    let puller = puller(settings, store.clone(), mode.dry_run);
    let result = if mode.backfill || mode.dry_run {
        puller
            .run_pass(&cancel)
            .await
            .map(Some)
            .map_err(anyhow::Error::from)
    } else {
        daemon(settings, &puller, &cancel).await
    };
    store.close().await;
    result
}

async fn daemon(
    settings: &Settings,
    puller: &Puller,
    cancel: &CancellationToken,
) -> anyhow::Result<Option<PassOutcome>> {
    info!(poll_interval = ?settings.source.poll_interval, "contact-sync started");
    let mut last = None;
    while !cancel.is_cancelled() {
        match puller.run_pass(cancel).await {
            Ok(outcome) => last = Some(outcome),
            // The database is ours: if it fails, stop and let the supervisor restart us.
            Err(SyncError::Store(e)) => return Err(e).context("database failure"),
            // The source may come back; try again at the next interval, never in a tight loop.
            Err(e) => error!(error = %e, "source pass failed; retrying at the next poll"),
        }
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = tokio::time::sleep(settings.source.poll_interval) => {}
        }
    }
    info!("contact-sync stopped");
    Ok(last)
}

/// One line a person reads at the end of a backfill or dry run.
pub fn summary_line(o: &PassOutcome, dry_run: bool) -> String {
    format!(
        "{}pass {} {}: {} records in {} pages, {} new, {} changed, {} unchanged, {} quarantined, {} marked deleted, {:.1}s",
        if dry_run { "dry run: " } else { "" },
        o.pass_id,
        if o.completed {
            "complete"
        } else {
            "interrupted"
        },
        o.records,
        o.pages,
        o.new_contacts,
        o.changed,
        o.unchanged,
        o.quarantined,
        o.deleted,
        o.elapsed.as_secs_f64(),
    )
}

/// `status`: JSON for machines, a few lines for people.
pub async fn status(settings: &Settings, json: bool) -> anyhow::Result<String> {
    let store = Store::open_existing(&settings.database.url).await?;
    let status = store::status(&store, &enabled_destinations(settings)).await?;
    store.close().await;
    if json {
        return Ok(serde_json::to_string_pretty(&status)?);
    }
    let mut out = format!(
        "contacts: {} (deleted: {})\nquarantined: {}\n",
        status.contacts, status.deleted, status.quarantined
    );
    match &status.last_pass {
        Some(p) => {
            out += &format!(
                "last pass: #{} {} → {}, {} records\n",
                p.id,
                p.started_at,
                p.completed_at.as_deref().unwrap_or("?"),
                p.records
            )
        }
        None => out += "last pass: none completed yet\n",
    }
    if let Some(p) = &status.current_pass {
        out += &format!(
            "current pass: #{} since {}, at offset {}\n",
            p.id, p.started_at, p.next_start
        );
    }
    for (name, c) in &status.destinations {
        out += &format!(
            "{name}: synced {}, pending {}, dead {}, skipped {}\n",
            c.synced, c.pending, c.dead, c.skipped
        );
    }
    Ok(out)
}

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn shutdown_signal() {
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

/// The grace period shutdown allows in-flight work.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
