//! Adaptive concurrency for one destination: how many of its requests may be in flight, set
//! from measured latency so that its pace (the gate's steady rate), not the in-flight bound,
//! sets the rate.
//!
//! The law: Little's law gives what the configured rate needs in flight (rate × smoothed
//! latency, plus headroom and a few spare); an AIMD ceiling, as in Vector's adaptive request
//! concurrency, cuts that in half on trouble (a 429, a 5xx, a timeout or reset, a window whose
//! mean latency leaves the normal band around the baseline) at most once per window, and
//! grows back a quarter per calm window. The result stays within 1..=`max_in_flight`. It
//! starts at `max_in_flight` and takes Little's law as soon as the first window of answers
//! closes, so there is no additive ramp. Latency is measured from when a request leaves,
//! after the pace and any pause, so waiting for our own pace never looks like a slow
//! destination.
//!
//! The normal band is twice the baseline plus [`SPIKE_FLOOR`]: on a busy machine answers
//! from an API a few milliseconds away come back tens of milliseconds late without the API
//! being in trouble, and a band of twice the baseline alone read that as a spike and cut the
//! limit to 1 (docs/performance.md, "Destination utilization").
//!
//! Hand-rolled rather than a crate: `congestion-limiter` (0.1.0, the only maintained
//! candidate; tower has nothing adaptive) searches for a server's capacity without knowing our
//! rate, so under a rate limiter every token looks busy and its limit climbs to the ceiling;
//! its latency runs from token acquisition (it would count our pacing waits) unless a
//! test-only setter is used, and its samples cannot be built outside the crate, so the law
//! could not be tested on synthetic latencies.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::metrics;

/// What the rate needs in flight is multiplied by this, so a little latency jitter never
/// starves the pace.
const HEADROOM: f64 = 1.25;
/// Added on top: requests waiting for their slot of the pace, and cover for answers a busy
/// machine delays. At a few milliseconds of latency this is nearly all of the limit; two
/// spare held 0.9 of the rate at 5 ms on a loaded machine.
const SPARE: usize = 6;
/// The ceiling after trouble, as a share of the limit then.
const DECREASE: f64 = 0.5;
/// A calm window raises the ceiling by this share of itself (at least 1).
const INCREASE_DIVISOR: usize = 4;
/// A window whose mean latency exceeds the baseline this many times, plus [`SPIKE_FLOOR`], is
/// a sharp rise.
const SPIKE: f64 = 2.0;
/// Rises smaller than this are never a spike: scheduling on a loaded machine alone moves
/// answers this much.
const SPIKE_FLOOR: Duration = Duration::from_millis(50);
/// Weight of the latest window in the latency baseline (Vector's default EWMA weight).
const EWMA_ALPHA: f64 = 0.4;
/// Windows last one baseline latency, but never less than this, so a fast API still averages
/// several answers per window.
const MIN_WINDOW: Duration = Duration::from_millis(50);

/// What a finished request says about the destination's load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// An answer: a 2xx, or a 4xx about the request itself.
    Answered,
    /// A 5xx, a timeout or a reset: the destination may be struggling.
    Failed,
    /// 429: the destination says we send too much (the gate also pauses it).
    RateLimited,
}

/// The control law alone, with time passed in, so it is tested on synthetic latencies.
#[derive(Debug, Clone)]
pub struct Controller {
    rate: f64,
    max: usize,
    limit: usize,
    /// The AIMD bound: halved on trouble, raised by a quarter per calm window.
    ceiling: usize,
    /// Smoothed mean latency of past windows, in seconds; `None` before the first window.
    baseline: Option<f64>,
    window: Window,
}

/// One observation window: about one round trip of answers.
#[derive(Debug, Clone, Default)]
struct Window {
    start: Option<Instant>,
    latency_sum: f64,
    answers: u32,
    /// The limit was already cut in this window: one cut per round trip, as TCP does, so a
    /// burst of failures from requests sent together counts once.
    cut: bool,
}

impl Controller {
    /// Starts at `max`: until a latency is measured nothing says less is enough, and the rate
    /// limiter keeps the pace whatever the bound.
    pub fn new(requests_per_second: f64, max_in_flight: usize) -> Self {
        let max = max_in_flight.max(1);
        Self {
            rate: requests_per_second.max(0.0),
            max,
            limit: max,
            ceiling: max,
            baseline: None,
            window: Window::default(),
        }
    }

    /// Requests that may be in flight now.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Take in one finished request: `latency` from when it left, `signal` from its answer.
    /// Returns the new limit.
    pub fn record(&mut self, now: Instant, latency: Duration, signal: Signal) -> usize {
        let start = *self.window.start.get_or_insert(now);
        match signal {
            Signal::Answered => {
                self.window.latency_sum += latency.as_secs_f64();
                self.window.answers += 1;
            }
            Signal::Failed | Signal::RateLimited => self.cut(),
        }
        let length = self
            .baseline
            .map_or(MIN_WINDOW, |b| Duration::from_secs_f64(b).max(MIN_WINDOW));
        if now.saturating_duration_since(start) >= length {
            self.close_window();
        }
        self.limit
    }

    fn cut(&mut self) {
        if self.window.cut {
            return;
        }
        self.window.cut = true;
        self.ceiling = ((self.limit as f64 * DECREASE) as usize).max(1);
        self.limit = self.limit.min(self.ceiling);
    }

    fn close_window(&mut self) {
        if self.window.answers > 0 {
            let mean = self.window.latency_sum / f64::from(self.window.answers);
            if self
                .baseline
                .is_some_and(|b| mean > b * SPIKE + SPIKE_FLOOR.as_secs_f64())
            {
                self.cut();
            } else if !self.window.cut {
                self.ceiling =
                    (self.ceiling + (self.ceiling / INCREASE_DIVISOR).max(1)).min(self.max);
            }
            let baseline = self.baseline.map_or(mean, |b| b + EWMA_ALPHA * (mean - b));
            self.baseline = Some(baseline);
            // Little's law: in flight = arrival rate × time in the system.
            let needed = (self.rate * baseline * HEADROOM).ceil() as usize + SPARE;
            self.limit = needed.min(self.ceiling).clamp(1, self.max);
        }
        self.window = Window::default();
    }
}

/// A destination's in-flight bound, resized by its [`Controller`] as answers come in.
pub struct Concurrency {
    name: &'static str,
    semaphore: Semaphore,
    state: Mutex<State>,
}

struct State {
    controller: Controller,
    /// Permits in existence: free in the semaphore or held. Above the limit after a cut;
    /// the excess is forgotten as permits come back.
    issued: usize,
    in_flight: usize,
}

/// Leave to send one request; returned when dropped, with a sample when [`Permit::finish`]ed.
pub struct Permit<'a> {
    owner: &'a Concurrency,
}

impl Concurrency {
    pub fn new(name: &'static str, requests_per_second: f64, max_in_flight: usize) -> Self {
        let controller = Controller::new(requests_per_second, max_in_flight);
        let limit = controller.limit();
        metrics::concurrency(name, limit, 0);
        Self {
            name,
            semaphore: Semaphore::new(limit),
            state: Mutex::new(State {
                controller,
                issued: limit,
                in_flight: 0,
            }),
        }
    }

    /// Wait for room under the current limit.
    pub async fn acquire(&self) -> Permit<'_> {
        self.semaphore
            .acquire()
            .await
            .expect("the semaphore is never closed")
            .forget();
        let mut state = self.lock();
        state.in_flight += 1;
        metrics::concurrency(self.name, state.controller.limit(), state.in_flight);
        Permit { owner: self }
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.lock().controller.limit()
    }

    /// `max_in_flight`: the limit never goes above it.
    pub fn max(&self) -> usize {
        self.lock().controller.max
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("concurrency lock")
    }
}

impl Permit<'_> {
    /// The request's answer came back after `latency` (from when it left) with `signal`.
    pub fn finish(self, latency: Duration, signal: Signal) {
        self.finish_at(Instant::now(), latency, signal);
    }

    fn finish_at(self, now: Instant, latency: Duration, signal: Signal) {
        let owner = self.owner;
        let mut state = owner.lock();
        let limit = state.controller.record(now, latency, signal);
        if limit > state.issued {
            owner.semaphore.add_permits(limit - state.issued);
            state.issued = limit;
        } else if limit < state.issued {
            let forgotten = owner.semaphore.forget_permits(state.issued - limit);
            state.issued -= forgotten;
        }
        // The permit itself comes back in `drop`.
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let owner = self.owner;
        let mut state = owner.lock();
        state.in_flight -= 1;
        if state.issued > state.controller.limit() {
            state.issued -= 1;
        } else {
            owner.semaphore.add_permits(1);
        }
        metrics::concurrency(owner.name, state.controller.limit(), state.in_flight);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Feeds `n` answers of `latency`, one every `gap`, from `*now` on.
    fn answers(c: &mut Controller, now: &mut Instant, n: usize, latency: Duration, gap: Duration) {
        for _ in 0..n {
            *now += gap;
            c.record(*now, latency, Signal::Answered);
        }
    }

    /// Little's law with headroom: what `rate` needs at `latency`.
    fn needed(rate: f64, latency: Duration) -> usize {
        (rate * latency.as_secs_f64() * HEADROOM).ceil() as usize + SPARE
    }

    #[test]
    fn settles_on_rate_times_latency() {
        for (rate, latency) in [(100.0, 5 * MS), (100.0, 250 * MS), (100.0, 1_000 * MS)] {
            let mut c = Controller::new(rate, 1_024);
            let mut now = Instant::now();
            answers(&mut c, &mut now, 2_000, latency, MS * 10);
            let want = needed(rate, latency);
            assert_eq!(c.limit(), want, "{rate}/s at {latency:?}");
            assert!(
                c.limit() as f64 >= rate * latency.as_secs_f64(),
                "covers the rate"
            );
        }
    }

    #[test]
    fn starts_from_littles_law_after_the_first_answers() {
        let mut c = Controller::new(100.0, 256);
        assert_eq!(c.limit(), 256, "nothing measured yet");
        let mut now = Instant::now();
        // The first window (no baseline yet: MIN_WINDOW long) of 250 ms answers.
        let mut answered = 0;
        while c.limit() == 256 {
            answers(&mut c, &mut now, 1, 250 * MS, MS * 10);
            answered += 1;
            assert!(answered <= 6, "the first window closes after 50 ms");
        }
        assert_eq!(c.limit(), needed(100.0, 250 * MS), "no additive ramp");
    }

    /// Windows whose mean latency moves within twice the baseline plus the floor: what a busy
    /// machine does to answers from a near API, or normal jitter of a far one.
    #[test]
    fn no_cut_while_latency_stays_within_the_normal_band() {
        for (base, worst) in [(5 * MS, 50 * MS), (250 * MS, 500 * MS)] {
            let mut c = Controller::new(100.0, 256);
            let mut rng = fastrand::Rng::with_seed(9);
            let mut now = Instant::now();
            answers(&mut c, &mut now, 100, base, MS * 10);
            for _ in 0..3_000 {
                let spread = worst.saturating_sub(base).as_micros() as u64;
                let latency = base + Duration::from_micros(rng.u64(0..=spread));
                answers(&mut c, &mut now, 1, latency, MS * 10);
                assert_eq!(c.ceiling, 256, "{base:?}: cut at {latency:?}");
                assert!(c.limit() >= needed(100.0, base), "{base:?}: {}", c.limit());
            }
        }
    }

    /// Whatever comes back, the limit stays within 1..=max_in_flight.
    #[test]
    fn never_above_max_in_flight_nor_below_one() {
        let mut rng = fastrand::Rng::with_seed(3);
        for max in [1, 8, 32, 256] {
            let mut c = Controller::new(100.0, max);
            let mut now = Instant::now();
            for _ in 0..5_000 {
                now += Duration::from_millis(rng.u64(0..50));
                let latency = Duration::from_millis(rng.u64(1..3_000));
                let signal = match rng.u8(0..20) {
                    0 => Signal::Failed,
                    1 => Signal::RateLimited,
                    _ => Signal::Answered,
                };
                let limit = c.record(now, latency, signal);
                assert!((1..=max).contains(&limit), "{limit} of {max}");
            }
        }
    }

    #[test]
    fn grows_back_toward_rate_times_latency_after_a_cut() {
        let mut c = Controller::new(100.0, 256);
        let mut now = Instant::now();
        let latency = 250 * MS;
        answers(&mut c, &mut now, 100, latency, MS * 10);
        let settled = c.limit();
        now += MS;
        c.record(now, latency, Signal::Failed);
        assert_eq!(c.limit(), settled / 2);
        let mut last = c.limit();
        let mut grew = false;
        for _ in 0..20 {
            answers(&mut c, &mut now, 30, latency, MS * 10);
            assert!(c.limit() >= last, "never shrinks while calm");
            grew |= c.limit() > last;
            last = c.limit();
        }
        assert!(grew);
        assert_eq!(
            c.limit(),
            settled,
            "back to what the rate needs, not beyond"
        );
    }

    #[test]
    fn a_latency_spike_cuts_the_limit() {
        let mut c = Controller::new(100.0, 256);
        let mut now = Instant::now();
        answers(&mut c, &mut now, 200, 100 * MS, MS * 10);
        let before = c.limit();
        // Latency jumps tenfold; Little's law alone would raise the limit.
        answers(&mut c, &mut now, 20, 1_000 * MS, MS * 10);
        assert!(c.limit() < before, "{} < {before}", c.limit());
    }

    #[test]
    fn server_errors_and_429_cut_once_per_window() {
        for signal in [Signal::Failed, Signal::RateLimited] {
            let mut c = Controller::new(100.0, 64);
            let mut now = Instant::now();
            answers(&mut c, &mut now, 200, 500 * MS, MS * 10);
            let before = c.limit();
            // A burst of failures sent together: one cut.
            for _ in 0..10 {
                c.record(now, 500 * MS, signal);
            }
            assert_eq!(c.limit(), before / 2, "{signal:?}");
            // Failures that go on: a cut every window, down to 1 and never below.
            for _ in 0..40 {
                now += 600 * MS;
                c.record(now, 500 * MS, signal);
            }
            assert_eq!(c.limit(), 1, "{signal:?}");
        }
    }

    #[test]
    fn bounded_by_max_in_flight_and_one() {
        let mut c = Controller::new(1_000.0, 16);
        let mut now = Instant::now();
        assert_eq!(c.limit(), 16, "starts at the ceiling");
        answers(&mut c, &mut now, 500, 2_000 * MS, MS * 10);
        assert_eq!(c.limit(), 16, "1,000/s at 2 s would need 2,500");
        let mut slow = Controller::new(0.5, 16);
        answers(&mut slow, &mut now, 500, MS, MS * 10);
        assert_eq!(
            slow.limit(),
            1 + SPARE,
            "a trickle needs one, plus the spare"
        );
        let mut one = Controller::new(100.0, 1);
        one.record(now, MS, Signal::Failed);
        answers(&mut one, &mut now, 100, 500 * MS, MS * 10);
        assert_eq!(one.limit(), 1);
    }

    #[tokio::test]
    async fn the_semaphore_follows_the_limit() {
        let c = Concurrency::new("test", 10.0, 8);
        let permits: Vec<_> = futures_util::future::join_all((0..8).map(|_| c.acquire())).await;
        assert!(c.semaphore.try_acquire().is_err(), "8 in flight at most");
        // Answers in 10 ms at 10/s: Little's law needs 7 (0.1 × 1.25, rounded up, + 6).
        let mut permits = permits.into_iter();
        let mut now = Instant::now();
        for permit in permits.by_ref().take(7) {
            now += 10 * MS;
            permit.finish_at(now, 10 * MS, Signal::Answered);
        }
        assert_eq!(c.limit(), 1 + SPARE);
        // One still held: the rest are free.
        assert_eq!(c.semaphore.available_permits(), SPARE);
        drop(permits);
        assert_eq!(c.semaphore.available_permits(), 1 + SPARE);
    }
}
