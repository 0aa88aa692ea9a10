//! `contact-sync demo`: the whole pull side against the built-in 3Dolphins stand-in on
//! loopback, into a temporary database. Needs no config, no accounts, no network.

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::app;
use crate::config::Settings;
use crate::sim::dolphins::{DolphinsAuth, DolphinsOptions, DolphinsSim};
use crate::store::{self, Store};

const MALFORMED: usize = 7;

pub async fn run(contacts: usize) -> anyhow::Result<String> {
    let started = Instant::now();
    let sim = DolphinsSim::start(DolphinsOptions {
        contacts,
        malformed: MALFORMED,
        auth: DolphinsAuth::Login {
            username: "demo".into(),
            password: "demo-password".into(),
        },
        ..DolphinsOptions::default()
    })
    .await
    .context("starting the 3Dolphins stand-in")?;
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let settings = demo_settings(&sim.base_url(), &dir.path().join("demo.db"))?;
    let store = Store::open(&settings.database.url).await?;
    let puller = app::puller(&settings, store.clone(), false);
    let cancel = CancellationToken::new();

    let mut out = String::new();
    writeln!(
        out,
        "contact-sync demo: 3Dolphins stand-in at {} serving {contacts} contacts + {MALFORMED} malformed records (page cap {})",
        sim.base_url(),
        sim.page_cap()
    )?;
    let first = puller.run_pass(&cancel).await?;
    let status = store::status(&store, &[]).await?;
    writeln!(out, "\nbackfill: {}", app::summary_line(&first, false))?;
    writeln!(out, "  contacts stored:        {}", status.contacts)?;
    writeln!(out, "  records quarantined:    {}", status.quarantined)?;
    for (reason, n) in store::quarantine_reasons(&store).await? {
        writeln!(out, "      {n} × {reason}")?;
    }
    writeln!(
        out,
        "  phones normalized:      {} rewritten to E.164, {} invalid dropped",
        first.reformatted_phones, first.dropped_phones
    )?;
    writeln!(
        out,
        "  e-mails dropped:        {} invalid",
        first.dropped_emails
    )?;
    writeln!(
        out,
        "  throughput:             {:.0} records/s",
        first.records as f64 / first.elapsed.as_secs_f64().max(1e-9)
    )?;
    writeln!(
        out,
        "  logins to 3Dolphins:    {}",
        puller.client().logins()
    )?;

    let second = puller.run_pass(&cancel).await?;
    writeln!(out, "\nrepeat pass: {}", app::summary_line(&second, false))?;
    writeln!(
        out,
        "\ndone in {:.1}s; the temporary database is removed on exit",
        started.elapsed().as_secs_f64()
    )?;
    store.close().await;
    sim.shutdown().await;
    Ok(out)
}

fn demo_settings(base_url: &str, db: &std::path::Path) -> anyhow::Result<Settings> {
    let toml = format!(
        r#"
        [database]
        url = "sqlite://{db}"
        [source]
        base_url = "{base_url}"
        username = "demo"
        password = "demo-password"
        page_size = 100
        requests_per_second = 1000.0
        [retry]
        initial_backoff = "50ms"
        max_backoff = "1s"
        [admin]
        listen = ""
        "#,
        db = db.display()
    );
    Ok(Settings::from_toml(&toml, None)?)
}
