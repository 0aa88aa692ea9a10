//! systemd integration over `$NOTIFY_SOCKET` (a no-op without it): READY=1 once migrations ran
//! and the source answered, STATUS= lines with progress, WATCHDOG=1 pings, STOPPING=1.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::sync::SourceHealth;

/// Runs until `cancel`; then says STOPPING=1.
pub async fn supervise(mut source: watch::Receiver<SourceHealth>, cancel: CancellationToken) {
    // Ping twice per watchdog period, from startup on: startup itself can take a while.
    let period = sd_notify::watchdog_enabled().map(|d| d / 2);
    let mut ticker = tokio::time::interval(period.unwrap_or(Duration::from_secs(3600)));
    let mut ready = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = ticker.tick(), if period.is_some() => notify(&[NotifyState::Watchdog]),
            changed = source.changed() => {
                if changed.is_err() {
                    break;
                }
                let health = source.borrow_and_update().clone();
                let status = match &health.last_error {
                    Some(error) => format!("source failing: {error}"),
                    None => format!("{} pages committed", health.pages),
                };
                if !ready && health.pages > 0 {
                    ready = true;
                    notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
                } else {
                    notify(&[NotifyState::Status(&status)]);
                }
            }
        }
    }
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

fn notify(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        warn!(error = %e, "cannot notify systemd");
    }
}
