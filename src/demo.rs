//! `contact-sync demo`: the whole daemon against built-in stand-ins of the three APIs on
//! loopback, into a temporary database: a backfill, changes at the source, an incremental
//! pass, and a repeat pass that sends nothing. Needs no config, no accounts, no network.

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::Context;
use contact_sync_sim::dolphins::{DolphinsOptions, generate_contact};
use contact_sync_sim::stack::{SimStack, SimStackOptions};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::domain::{Region, normalize};
use crate::sink::Destination;
use crate::store::{self, Store};
use crate::sync::{BackfillReport, Engine};

const MALFORMED: usize = 7;
/// Changes made at the source between the backfill and the incremental pass.
const RENAMED: usize = 10;
const NEW_EMAIL: usize = 10;
const ADDED: usize = 5;
const REMOVED: usize = 3;

pub async fn run(contacts: usize) -> anyhow::Result<String> {
    let started = Instant::now();
    let contacts = contacts.max(RENAMED + NEW_EMAIL + REMOVED + 1);
    let sims = SimStack::start(SimStackOptions {
        contacts,
        malformed: MALFORMED,
        ..SimStackOptions::default()
    })
    .await
    .context("starting the stand-ins")?;
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let toml = sims.config_toml(&dir.path().join("demo.db"));
    let mut settings = Settings::from_toml(&toml, None)?;
    // The demo shows the behaviour, not the rate limits a real tenant needs.
    settings.source.requests_per_second = 5_000.0;
    if let Some(omi) = &mut settings.omi {
        omi.requests_per_second = 2_000.0;
    }
    if let Some(engagelab) = &mut settings.engagelab {
        engagelab.requests_per_second = 2_000.0;
    }
    settings.admin.listen = None;
    let store = Store::open(&settings.database.url).await?;
    let cancel = CancellationToken::new();
    let mut out = String::new();
    writeln!(
        out,
        "contact-sync demo — stand-ins on loopback:\n  3Dolphins {}  ({contacts} contacts + {MALFORMED} malformed records)\n  OMI       {}\n  EngageLab {}",
        sims.dolphins.base_url(),
        sims.omi.base_url(),
        sims.engagelab.base_url()
    )?;
    let ids = sims.dolphins.ids();
    claim_a_phone_at_omi(&sims, &ids[ids.len() / 2]);

    // 1. Backfill.
    let requests = Requests::now(&sims);
    let report = Engine::new(&settings, store.clone())?
        .backfill(&cancel)
        .await?;
    writeln!(
        out,
        "\n1. backfill\n   {}",
        crate::app::summary_line(&report.pass, false)
    )?;
    for (reason, n) in store.quarantine().reasons().await? {
        writeln!(out, "   quarantined {n} × {reason}")?;
    }
    writeln!(
        out,
        "   phones: {} rewritten to E.164, {} invalid dropped; e-mails: {} invalid dropped",
        report.pass.reformatted_phones, report.pass.dropped_phones, report.pass.dropped_emails
    )?;
    push_lines(&mut out, &store, &report, &requests.since(&sims)).await?;
    for letter in store::dead_letters(&store).await? {
        writeln!(
            out,
            "   dead letter: {} at {}: {}",
            letter.contact_id,
            letter.destination,
            letter.last_error.unwrap_or_default()
        )?;
    }

    // 2. Changes at the source, then an incremental pass.
    for id in &ids[..RENAMED] {
        sims.dolphins
            .update(id, |r| r["contactLastName"] = json!("Kurniawan"));
    }
    for (i, id) in ids[RENAMED..RENAMED + NEW_EMAIL].iter().enumerate() {
        sims.dolphins.update(id, |r| {
            r["contactEmail"] = json!([format!("changed.{i}@example.co.id")])
        });
    }
    for i in 0..ADDED {
        sims.dolphins.push(generate_contact(
            DolphinsOptions::default().seed,
            contacts + MALFORMED + i,
        ));
    }
    for id in &ids[ids.len() - REMOVED..] {
        sims.dolphins.remove(id);
    }
    writeln!(
        out,
        "\n2. at the source: {RENAMED} renamed, {NEW_EMAIL} new e-mails, {ADDED} new contacts, {REMOVED} removed"
    )?;
    let requests = Requests::now(&sims);
    let report = Engine::new(&settings, store.clone())?
        .backfill(&cancel)
        .await?;
    writeln!(out, "   {}", crate::app::summary_line(&report.pass, false))?;
    push_lines(&mut out, &store, &report, &requests.since(&sims)).await?;
    writeln!(
        out,
        "   (renamed contacts went to OMI only: EngageLab's payload has no name)"
    )?;

    // 3. Nothing changed: nothing is sent.
    let requests = Requests::now(&sims);
    let report = Engine::new(&settings, store.clone())?
        .backfill(&cancel)
        .await?;
    let sent = requests.since(&sims);
    writeln!(
        out,
        "\n3. repeat pass\n   {}",
        crate::app::summary_line(&report.pass, false)
    )?;
    writeln!(
        out,
        "   requests: {} to OMI, {} to EngageLab (nothing changed, nothing sent)",
        sent.omi, sent.engagelab
    )?;

    let status = store::status(&store, &[Destination::Omi, Destination::Engagelab]).await?;
    writeln!(out, "\nstatus: {}", serde_json::to_string(&status)?)?;
    writeln!(
        out,
        "OMI holds {} contacts, duplicates: {}",
        sims.omi.len(),
        sims.omi.duplicates().len()
    )?;
    writeln!(
        out,
        "\ndone in {:.1}s; the temporary database is removed on exit",
        started.elapsed().as_secs_f64()
    )?;
    store.close().await;
    sims.shutdown().await;
    Ok(out)
}

/// Give an OMI contact of another system the first phone of `id`, so adding `id` is refused
/// for good: the demo shows a dead letter.
fn claim_a_phone_at_omi(sims: &SimStack, id: &str) -> Option<()> {
    let record = sims.dolphins.get(id)?;
    let phone = normalize(&record, Region::ID)
        .ok()?
        .contact
        .phones
        .first()?
        .as_str()
        .to_owned();
    sims.omi.seed_contact(json!({
        "refId": "other-system-1",
        "fullName": "Owned elsewhere",
        "phones": [{"data": phone, "type": "personal", "valueType": "Cá nhân"}],
    }));
    Some(())
}

async fn push_lines(
    out: &mut String,
    store: &Store,
    report: &BackfillReport,
    sent: &Requests,
) -> anyhow::Result<()> {
    let counts = store::delivery_counts(store).await?;
    for (destination, s) in &report.pushed {
        let skipped = counts.get(destination).map_or(0, |d| d.skipped);
        let line = match destination {
            Destination::Omi => format!(
                "{} added (addMany), {} updated, {} dead letters, {} retried — {} requests",
                s.added, s.updated, s.dead, s.retried, sent.omi
            ),
            Destination::Engagelab => format!(
                "{} EUIDs registered, {} contact writes, {skipped} skipped in all (no phone or e-mail), {} dead letters, {} retried — {} requests",
                s.registered, s.updated, s.dead, s.retried, sent.engagelab
            ),
        };
        writeln!(out, "   {destination}: {line}")?;
    }
    Ok(())
}

/// Requests each destination stand-in has received.
struct Requests {
    omi: u64,
    engagelab: u64,
}

impl Requests {
    fn now(sims: &SimStack) -> Self {
        Self {
            omi: sims.omi.server().request_count(),
            engagelab: sims.engagelab.server().request_count(),
        }
    }

    fn since(&self, sims: &SimStack) -> Self {
        let now = Self::now(sims);
        Self {
            omi: now.omi - self.omi,
            engagelab: now.engagelab - self.engagelab,
        }
    }
}
