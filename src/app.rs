//! Wiring: build the clients and the engine from settings and run the daemon, a backfill or
//! a dry run; the read-only commands.

use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::admin::Admin;
use crate::cli::terminal_safe;
use crate::config::{Settings, StoreSettings};
use crate::lock::WriterLock;
use crate::net;
use crate::progress::Progress;
use crate::sink::Destination;
use crate::store::{self, Access, Store};
use crate::sync::{BackfillReport, Engine, PassOutcome, Puller, SourceHealth};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunMode {
    pub backfill: bool,
    pub dry_run: bool,
}

pub fn puller(
    settings: &Settings,
    store: Store,
    dry_run: bool,
) -> Result<Puller, crate::net::HttpSetupError> {
    let http = net::http_client(settings.http.timeout)?;
    Ok(if dry_run {
        Puller::dry_run(store, settings, http)
    } else {
        Puller::new(store, settings, http)
    })
}

/// Run until `cancel` (daemon), or once (`--backfill`, `--dry-run`). Returns what to print.
pub async fn run(
    settings: &Settings,
    mode: RunMode,
    cancel: CancellationToken,
) -> anyhow::Result<Option<String>> {
    // One writer per database, taken before anything else touches it and held until exit.
    // A dry run writes nothing that stays, so it runs beside a daemon.
    let _lock = match store::prepare_database_file(&settings.database.url)? {
        Some(file) if !mode.dry_run => Some(WriterLock::acquire(&file)?),
        _ => None,
    };
    let store = Store::open(&settings.database.url)
        .await
        .context("opening the database")?;
    let result = run_on(settings, mode, &store, cancel).await;
    store.close().await;
    result
}

async fn run_on(
    settings: &Settings,
    mode: RunMode,
    store: &Store,
    cancel: CancellationToken,
) -> anyhow::Result<Option<String>> {
    if mode.dry_run {
        let outcome = dry_run(settings, store, &cancel).await?;
        return Ok(Some(dry_run_report(&outcome)));
    }
    let engine = Arc::new(Engine::new(settings, store.clone())?);
    let admin = match settings.admin.listen {
        Some(addr) => Some(
            Admin::start(addr, Arc::clone(&engine), store.clone())
                .await
                .with_context(|| format!("starting the admin server on {addr} (admin.listen)"))?,
        ),
        None => None,
    };
    let result = if mode.backfill {
        let progress = Progress::start(
            engine.source_health(),
            engine.pushers().to_vec(),
            store.clone(),
        );
        let report = engine.backfill(&cancel).await;
        progress.finish().await;
        match report {
            Ok(report) => backfill_summary(store, &report).await.map(Some),
            Err(e) => Err(e.into()),
        }
    } else {
        info!(poll_interval = ?settings.source.poll_interval, "contact-sync started");
        let supervisor = tokio::spawn(crate::systemd::supervise(
            engine.source_health(),
            cancel.clone(),
        ));
        let result = engine.daemon(&cancel).await;
        cancel.cancel();
        let _ = supervisor.await;
        info!("contact-sync stopped");
        result.map(|()| None).map_err(anyhow::Error::from)
    };
    if let Some(admin) = admin {
        admin.stop().await;
    }
    result
}

/// A dry run's pass, page by page, with live progress.
async fn dry_run(
    settings: &Settings,
    store: &Store,
    cancel: &CancellationToken,
) -> anyhow::Result<PassOutcome> {
    let puller = puller(settings, store.clone(), true)?;
    let health = tokio::sync::watch::Sender::new(SourceHealth::default());
    let progress = Progress::start(health.subscribe(), Vec::new(), store.clone());
    let result = puller
        .run_pass_reporting(cancel, |p| health.send_modify(|h| h.pass = p))
        .await
        .map_err(anyhow::Error::from);
    progress.finish().await;
    result
}

/// One line a person reads about a pass.
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

/// The one line a backfill ends with: per destination what this run did, plus what is left
/// dead or skipped in all.
pub async fn backfill_summary(store: &Store, report: &BackfillReport) -> anyhow::Result<String> {
    let counts = store::delivery_counts(store).await?;
    let mut line = summary_line(&report.pass, false);
    for (destination, stats) in &report.pushed {
        let totals = counts.get(destination).cloned().unwrap_or_default();
        let sent = match destination {
            Destination::Omi => format!("{} added, {} updated", stats.added, stats.updated),
            Destination::Engagelab => format!(
                "{} registered, {} contact writes",
                stats.registered, stats.updated
            ),
        };
        line += &format!(
            "; {destination}: {sent}, {} skipped, {} dead letters",
            totals.skipped, totals.dead
        );
    }
    Ok(line)
}

/// What a dry run found: the pass, then per destination the would-be operations and a few
/// example payloads.
pub fn dry_run_report(outcome: &PassOutcome) -> String {
    let mut out = summary_line(outcome, true);
    for (destination, counts) in &outcome.preview.destinations {
        let (new, update) = match destination {
            Destination::Omi => ("addMany records", "updates"),
            Destination::Engagelab => ("register + contact", "contact writes"),
        };
        out += &format!(
            "\n{destination}: {} {new}, {} {update}, {} skipped",
            counts.new, counts.update, counts.skip
        );
        for example in &counts.examples {
            out += &format!("\n  e.g. {example}");
        }
    }
    out
}

/// `status`: JSON for machines, a few lines for people.
pub async fn status(settings: &StoreSettings, json: bool) -> anyhow::Result<String> {
    let store = Store::open_existing(&settings.database_url, Access::ReadOnly).await?;
    let status = store::status(&store, &settings.destinations).await?;
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
            "current pass: #{} since {}, at offset {}",
            p.id, p.started_at, p.next_start
        );
        if let (Some(total), Some(percent)) = (p.total_results, p.percent) {
            out += &format!(" of {total} ({percent:.1}%)");
        }
        out += &format!(", {} records", p.records);
        if let Some(rate) = p.records_per_sec {
            out += &format!(", {rate:.0}/s");
        }
        if let Some(eta) = p.eta_seconds {
            out += &format!(", ETA {eta}s");
        }
        out += "\n";
    }
    for (destination, c) in &status.destinations {
        out += &format!(
            "{destination}: synced {}, pending {}, dead {}, skipped {}",
            c.synced, c.pending, c.dead, c.skipped
        );
        if let Some(rate) = c.deliveries_per_sec {
            out += &format!(", {rate:.1}/s");
        }
        if c.pending > 0 {
            match c.eta_seconds {
                Some(eta) => out += &format!(", ETA {eta}s"),
                None => out += ", ETA unknown",
            }
        }
        out += "\n";
    }
    Ok(out)
}

/// `dead-letters`: the list, as JSON or one line each.
pub async fn dead_letters(settings: &StoreSettings, json: bool) -> anyhow::Result<String> {
    let store = Store::open_existing(&settings.database_url, Access::ReadOnly).await?;
    let letters = store::dead_letters(&store).await?;
    store.close().await;
    if json {
        return Ok(serde_json::to_string_pretty(&letters)?);
    }
    if letters.is_empty() {
        return Ok("no dead letters".to_owned());
    }
    let lines: Vec<String> = letters
        .iter()
        .map(|l| {
            format!(
                "{}\t{}\t{} attempts\t{}\t{}",
                l.destination,
                terminal_safe(&l.contact_id),
                l.attempts,
                l.failed_at,
                terminal_safe(l.last_error.as_deref().unwrap_or(""))
            )
        })
        .collect();
    Ok(format!(
        "destination\tcontact\tattempts\tfailed at\tlast error\n{}",
        lines.join("\n")
    ))
}

/// `dead-letters retry`: make them due again; the daemon (or the next backfill) sends them.
pub async fn retry_dead_letters(
    settings: &StoreSettings,
    destination: Option<Destination>,
    contact: Option<&str>,
) -> anyhow::Result<String> {
    let store = Store::open_existing(&settings.database_url, Access::ReadWrite).await?;
    let n = store::retry_dead_letters(&store, destination, contact, store::now_ms()).await?;
    store.close().await;
    Ok(format!("{n} dead letters are due again"))
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
