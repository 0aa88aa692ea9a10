//! The feed's own ceiling: a bare client that logs in and reads the 3Dolphins contact list
//! page after page, parsing only the paging fields; the rate ingest is measured against.
//!
//! `cargo run --release --example feed_ceiling -- http://127.0.0.1:18181/dolphin/apiv1 500`
//! (base URL of a running `contact-sync sim`, page size; login `demo` / `demo-password`).

use std::time::Instant;

use serde::Deserialize;
use serde::de::IgnoredAny;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Page {
    data: Vec<IgnoredAny>,
    has_more: bool,
    next_index: Option<u64>,
}

#[derive(Deserialize)]
struct Login {
    token: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let base = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:18181/dolphin/apiv1".to_owned());
    let count: u64 = args.next().map_or(Ok(500), |a| a.parse())?;
    // The stand-in is plain HTTP, but a client is only built with a TLS provider installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let login: Login = http
        .post(format!("{base}/graph/auth"))
        .json(&serde_json::json!({"username": "demo", "password": "demo-password"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let started = Instant::now();
    let (mut start, mut records, mut pages) = (0u64, 0u64, 0u64);
    loop {
        let body = http
            .get(format!("{base}/graph/contacts/all"))
            .query(&[("start", start), ("count", count)])
            .bearer_auth(&login.token)
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        let page: Page = serde_json::from_slice(&body)?;
        pages += 1;
        records += page.data.len() as u64;
        if !page.has_more || page.data.is_empty() {
            break;
        }
        start = page.next_index.unwrap_or(start + page.data.len() as u64);
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{records} records in {pages} pages, {secs:.2} s: {:.0} records/s",
        records as f64 / secs
    );
    Ok(())
}
