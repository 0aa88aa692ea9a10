//! Live progress of a backfill or a dry run (docs/cli.md, "Progress"): bars on stderr when it
//! is a terminal, a `progress` log event every few seconds and at the end of the pass when it
//! is not. Log lines written while bars are drawn go through [`LogWriter`], which lifts the
//! bars, writes the line and draws them again, so the two never mix on one line.

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::domain::Destination;
use crate::store::{self, Backlog, Store};
use crate::sync::{PassProgress, Pusher, SourceHealth};

/// How often a progress event is logged without a terminal.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// How often bars are refreshed on a terminal.
const DRAW_EVERY: Duration = Duration::from_millis(250);

/// How often pending and dead counts are read from the database while bars are drawn.
const BACKLOG_EVERY: Duration = Duration::from_secs(2);

/// Rates are measured over this much recent time: "at the current rate".
const RATE_WINDOW: Duration = Duration::from_secs(30);

/// The bars being drawn, if any: where [`LogWriter`] sends log lines through.
static BARS: Mutex<Option<MultiProgress>> = Mutex::new(None);

/// Shows progress until [`Progress::finish`].
pub struct Progress {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Progress {
    /// Follow the pass through `source` and each of `pushers`; bars when stderr is a
    /// terminal, log events otherwise.
    pub fn start(
        source: watch::Receiver<SourceHealth>,
        pushers: Vec<Arc<Pusher>>,
        store: Store,
    ) -> Self {
        let view = if std::io::stderr().is_terminal() {
            View::bars(&pushers)
        } else {
            View::Log
        };
        // Every count starts at zero now: the first figures logged already have a rate.
        let now = Instant::now();
        let watcher = Watcher {
            source,
            destinations: pushers
                .into_iter()
                .map(|pusher| Tracked {
                    sent: Rate::starting_at(now, pusher.stats().sent()),
                    pusher,
                    backlog: Backlog::default(),
                })
                .collect(),
            store,
            records: Rate::starting_at(now, 0),
            position: Rate::starting_at(now, 0),
            backlog_at: None,
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(watch_progress(watcher, view, stop.clone()));
        Self { stop, task }
    }

    /// Show the final figures and stop drawing.
    pub async fn finish(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn watch_progress(mut watcher: Watcher, view: View, stop: CancellationToken) {
    let every = match view {
        View::Bars { .. } => DRAW_EVERY,
        View::Log => LOG_EVERY,
    };
    // The first figures come one period in: before that no pass has even opened.
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pass_ended = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {}
            changed = watcher.source.changed() => {
                if changed.is_err() {
                    // The pass is gone; the final figures come when we are told to finish.
                    stop.cancelled().await;
                    break;
                }
                // Between ticks only the end of the pass is worth a report.
                if pass_ended || !watcher.source.borrow_and_update().pass.completed {
                    continue;
                }
                pass_ended = true;
            }
        }
        let figures = watcher.sample(matches!(view, View::Log)).await;
        view.show(&figures);
    }
    let figures = watcher.sample(true).await;
    view.show(&figures);
    view.finish();
}

/// What is followed, and the recent history the rates come from.
struct Watcher {
    source: watch::Receiver<SourceHealth>,
    destinations: Vec<Tracked>,
    store: Store,
    records: Rate,
    position: Rate,
    backlog_at: Option<Instant>,
}

struct Tracked {
    pusher: Arc<Pusher>,
    backlog: Backlog,
    sent: Rate,
}

/// One reading of the figures shown (as bars) or logged.
#[derive(Debug, Clone, PartialEq)]
struct Figures {
    pass: PassProgress,
    percent: Option<f64>,
    records_per_sec: Option<f64>,
    eta: Option<Duration>,
    destinations: Vec<DestinationFigures>,
}

#[derive(Debug, Clone, PartialEq)]
struct DestinationFigures {
    destination: Destination,
    sent: u64,
    pending: i64,
    dead: i64,
    per_sec: Option<f64>,
    eta: Option<Duration>,
}

impl Watcher {
    /// Read the figures now; the backlog is read from the database when `fresh` or when the
    /// last read is older than [`BACKLOG_EVERY`].
    async fn sample(&mut self, fresh: bool) -> Figures {
        let now = Instant::now();
        let pass = self.source.borrow().pass;
        let remaining = pass.total.map(|t| t.saturating_sub(pass.position));
        let read = pass.position.saturating_sub(pass.resumed_at);
        let records_per_sec = self.records.sample(now, pass.records);
        let eta = match (remaining, self.position.sample(now, read)) {
            (Some(0), _) => Some(Duration::ZERO),
            (Some(left), Some(speed)) => time_left(left as f64, speed),
            _ => None,
        };
        let due = self
            .backlog_at
            .is_none_or(|at| now.duration_since(at) >= BACKLOG_EVERY);
        if fresh || due {
            self.backlog_at = Some(now);
            for tracked in &mut self.destinations {
                // A failed read keeps the last figures; the pusher reports the store error.
                if let Ok(backlog) = store::backlog(&self.store, tracked.pusher.destination()).await
                {
                    tracked.backlog = backlog;
                }
            }
        }
        let destinations = self
            .destinations
            .iter_mut()
            .map(|t| {
                let stats = t.pusher.stats();
                let sent = stats.sent();
                let per_sec = t.sent.sample(now, sent);
                DestinationFigures {
                    destination: t.pusher.destination(),
                    sent,
                    pending: t.backlog.pending,
                    dead: t.backlog.dead,
                    per_sec,
                    eta: match (t.backlog.pending, per_sec) {
                        (0, _) => Some(Duration::ZERO),
                        (left, Some(speed)) => time_left(left as f64, speed),
                        _ => None,
                    },
                }
            })
            .collect();
        Figures {
            percent: store::percent(pass.position as f64, pass.total.map(|t| t as f64)),
            pass,
            records_per_sec,
            eta,
            destinations,
        }
    }
}

fn time_left(left: f64, per_sec: f64) -> Option<Duration> {
    store::secs_left(left, per_sec).map(Duration::from_secs)
}

/// A count's rate over the last [`RATE_WINDOW`].
struct Rate {
    samples: VecDeque<(Instant, u64)>,
}

impl Rate {
    /// A count that stood at `count` at `at`.
    fn starting_at(at: Instant, count: u64) -> Self {
        Self {
            samples: VecDeque::from([(at, count)]),
        }
    }

    /// Add a reading; the rate since the oldest reading in the window, once a second has
    /// passed (sooner, a burst reads as a huge rate).
    fn sample(&mut self, now: Instant, count: u64) -> Option<f64> {
        self.samples.push_back((now, count));
        while self.samples.len() > 2 && now.duration_since(self.samples[0].0) > RATE_WINDOW {
            self.samples.pop_front();
        }
        let (at, first) = self.samples[0];
        let seconds = now.duration_since(at).as_secs_f64();
        (seconds >= 1.0).then(|| count.saturating_sub(first) as f64 / seconds)
    }
}

/// Where figures go.
enum View {
    Bars {
        pass: ProgressBar,
        destinations: Vec<ProgressBar>,
    },
    Log,
}

impl View {
    fn bars(pushers: &[Arc<Pusher>]) -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let pass = multi.add(ProgressBar::new(0).with_prefix("source"));
        pass.set_style(spinner_style());
        let line = ProgressStyle::with_template("{prefix:>9} {msg}").expect("a valid template");
        let destinations = pushers
            .iter()
            .map(|p| {
                multi.add(
                    ProgressBar::new(0)
                        .with_prefix(p.destination().to_string())
                        .with_style(line.clone()),
                )
            })
            .collect();
        *BARS.lock().expect("bars lock") = Some(multi);
        Self::Bars { pass, destinations }
    }

    fn show(&self, f: &Figures) {
        match self {
            Self::Bars { pass, destinations } => {
                match f.pass.total {
                    Some(total) => {
                        if pass.length() != Some(total) {
                            pass.set_style(bar_style());
                            pass.set_length(total);
                        }
                        pass.set_position(f.pass.position.min(total));
                    }
                    None => pass.tick(),
                }
                pass.set_message(source_line(f));
                for (bar, d) in destinations.iter().zip(&f.destinations) {
                    bar.set_message(destination_line(d));
                }
            }
            Self::Log => {
                info!(
                    pass = f.pass.pass_id,
                    pages = f.pass.pages,
                    records = f.pass.records,
                    offset = f.pass.position,
                    total = f.pass.total,
                    percent = f.percent.map(store::tenth),
                    records_per_sec = f.records_per_sec.map(|r| r.round()),
                    eta_s = f.eta.map(|d| d.as_secs()),
                    completed = f.pass.completed,
                    "progress: {}",
                    source_line(f)
                );
                for d in &f.destinations {
                    info!(
                        destination = %d.destination,
                        sent = d.sent,
                        pending = d.pending,
                        dead = d.dead,
                        per_sec = d.per_sec.map(|r| r.round()),
                        eta_s = d.eta.map(|d| d.as_secs()),
                        "progress: {}: {}",
                        d.destination,
                        destination_line(d)
                    );
                }
            }
        }
    }

    /// Leave the last figures on screen and send log lines straight to stderr again.
    fn finish(&self) {
        if let Self::Bars { pass, destinations } = self {
            pass.finish();
            destinations.iter().for_each(ProgressBar::finish);
            *BARS.lock().expect("bars lock") = None;
            // The cursor stays at the end of the last bar: what is printed next starts below.
            let _ = writeln!(std::io::stderr());
        }
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:>9} {spinner} {msg}").expect("a valid template")
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:>9} [{bar:20}] {msg}")
        .expect("a valid template")
        .progress_chars("=> ")
}

/// `42.5% 4250/10000 records, 850/s, ETA 6s` or, without a total,
/// `page 12, 600 records, 850/s`.
fn source_line(f: &Figures) -> String {
    let rate = per_sec(f.records_per_sec);
    let done = if f.pass.completed { ", done" } else { "" };
    match (f.percent, f.pass.total) {
        (Some(percent), Some(total)) => format!(
            "{percent:.1}% {}/{total} records, {rate}, ETA {}{done}",
            f.pass.position,
            eta_text(f.eta)
        ),
        _ => format!(
            "page {}, {} records, {rate}{done}",
            f.pass.pages, f.pass.records
        ),
    }
}

/// `sent 1200, pending 3400, dead 2, 150/s, ETA 23s`.
fn destination_line(d: &DestinationFigures) -> String {
    format!(
        "sent {}, pending {}, dead {}, {}, ETA {}",
        d.sent,
        d.pending,
        d.dead,
        per_sec(d.per_sec),
        eta_text(d.eta)
    )
}

fn per_sec(rate: Option<f64>) -> String {
    rate.map_or_else(|| "-/s".to_owned(), |r| format!("{r:.0}/s"))
}

/// `1h02m`, `3m05s`, `12s`, or `?` when unknown.
fn eta_text(eta: Option<Duration>) -> String {
    let Some(eta) = eta else {
        return "?".to_owned();
    };
    let s = eta.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// A `tracing` writer for stderr that lifts the bars, if any are drawn, while a log line is
/// written (src/telemetry.rs installs it).
pub struct LogWriter;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        LogLine(Vec::new())
    }
}

/// One log event, written out whole when dropped.
pub struct LogLine(Vec<u8>);

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let bars = BARS.lock().map(|b| b.clone()).unwrap_or(None);
        let write = || {
            let _ = std::io::stderr().write_all(&self.0);
        };
        match bars {
            Some(multi) => multi.suspend(write),
            None => write(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_waits_a_second_then_follows_the_window() {
        let start = Instant::now();
        let mut rate = Rate::starting_at(start, 0);
        assert_eq!(rate.sample(start + Duration::from_millis(500), 50), None);
        assert_eq!(
            rate.sample(start + Duration::from_secs(2), 200),
            Some(100.0)
        );
        // Old readings leave the window: the rate is the recent one.
        rate.sample(start + Duration::from_secs(40), 200);
        assert_eq!(
            rate.sample(start + Duration::from_secs(50), 1_200),
            Some(100.0)
        );
    }

    #[test]
    fn lines_carry_percent_rate_and_eta() {
        let figures = Figures {
            pass: PassProgress {
                pass_id: 1,
                position: 4_250,
                total: Some(10_000),
                pages: 85,
                records: 4_250,
                ..PassProgress::default()
            },
            percent: Some(42.5),
            records_per_sec: Some(850.0),
            eta: Some(Duration::from_secs(3_725)),
            destinations: vec![],
        };
        assert_eq!(
            source_line(&figures),
            "42.5% 4250/10000 records, 850/s, ETA 1h02m"
        );
        let unknown = Figures {
            percent: None,
            pass: PassProgress {
                total: None,
                ..figures.pass
            },
            ..figures
        };
        assert_eq!(source_line(&unknown), "page 85, 4250 records, 850/s");
        let d = DestinationFigures {
            destination: Destination::Omi,
            sent: 1_200,
            pending: 3_400,
            dead: 2,
            per_sec: Some(150.0),
            eta: Some(Duration::from_secs(185)),
        };
        assert_eq!(
            destination_line(&d),
            "sent 1200, pending 3400, dead 2, 150/s, ETA 3m05s"
        );
    }
}
