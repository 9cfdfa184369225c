//! A circuit breaker per upstream: closed → open on a failure (or slow-call) rate over a sliding
//! window, open → half-open after a wait that doubles on every repeated trip, half-open → closed
//! once N probes succeed (or back to open on the first probe that fails).
//!
//! One small mutex per upstream guards the state; a request takes it twice (admit, record), never
//! across an await.
//!
//! Time comes from the gateway's [`Clock`] (the one rollouts read): the system's in production,
//! a manual one in tests, which advance it rather than sleep through `open_for`.

use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge};
use parking_lot::Mutex;
use serde::Serialize;

use crate::config::file::BreakerConfig;
use crate::pipeline::rollout::Clock;
use crate::telemetry::metrics::{Metrics, CIRCUIT_STATE, CIRCUIT_TRANSITIONS};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    fn gauge_value(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::Open => 1.0,
            Self::HalfOpen => 2.0,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half-open",
        }
    }
}

/// How one call through the breaker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    /// The call never finished (the client went away); it counts neither way.
    Cancelled,
}

/// One-second buckets over the window, reused in a ring.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    second: u64,
    total: u32,
    failures: u32,
    slow: u32,
}

struct Inner {
    state: State,
    buckets: Vec<Bucket>,
    /// Consecutive trips without a full recovery; the open time doubles with each.
    trips: u32,
    /// On the clock's time line.
    open_until: Duration,
    probes_admitted: u32,
    probes_succeeded: u32,
}

pub struct Breaker {
    cfg: BreakerConfig,
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
    gauge: Gauge,
    to_open: Counter,
    to_half_open: Counter,
    to_closed: Counter,
}

/// Admission to call the upstream. Dropping it unrecorded counts as [`Outcome::Cancelled`].
pub struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    started: Duration,
    recorded: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct BreakerStatus {
    pub state: State,
    pub window_requests: u32,
    pub window_failures: u32,
    pub window_slow: u32,
    pub trips: u32,
    /// Seconds until an open breaker admits probes.
    pub retry_after_secs: Option<u64>,
}

impl Breaker {
    pub fn new(cfg: BreakerConfig, upstream: &str, metrics: &Metrics, clock: Arc<dyn Clock>) -> Self {
        Self::labelled(cfg, &[("upstream", upstream)], metrics, clock)
    }

    fn labelled(
        cfg: BreakerConfig,
        labels: &[(&'static str, &str)],
        metrics: &Metrics,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let buckets = vec![Bucket::default(); cfg.window.as_secs().max(1) as usize];
        let gauge = metrics.gauge(CIRCUIT_STATE, labels);
        gauge.set(0.0);
        let transition = |to: &str| {
            let mut l = labels.to_vec();
            l.push(("to", to));
            metrics.counter(CIRCUIT_TRANSITIONS, &l)
        };
        let now = clock.now();
        Self {
            to_open: transition("open"),
            to_half_open: transition("half-open"),
            to_closed: transition("closed"),
            cfg,
            clock,
            inner: Mutex::new(Inner {
                state: State::Closed,
                buckets,
                trips: 0,
                open_until: now,
                probes_admitted: 0,
                probes_succeeded: 0,
            }),
            gauge,
        }
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.cfg
    }

    /// Admits a call, or says how long until the breaker lets calls through again.
    pub fn acquire(&self) -> Result<Permit<'_>, Duration> {
        let now = self.clock.now();
        let mut g = self.inner.lock();
        let probe = match g.state {
            State::Closed => false,
            State::Open => {
                if now < g.open_until {
                    return Err(g.open_until - now);
                }
                self.set_state(&mut g, State::HalfOpen);
                g.probes_admitted = 1;
                true
            }
            State::HalfOpen => {
                if g.probes_admitted >= self.cfg.half_open_probes {
                    // Probes are out; the next decision comes when one of them returns.
                    return Err(Duration::from_secs(1));
                }
                g.probes_admitted += 1;
                true
            }
        };
        Ok(Permit {
            breaker: self,
            probe,
            started: now,
            recorded: false,
        })
    }

    fn record(&self, probe: bool, outcome: Outcome, started: Duration) {
        let now = self.clock.now();
        let elapsed = now.saturating_sub(started);
        let slow = self.cfg.slow_call_duration.is_some_and(|d| elapsed >= d);
        let mut g = self.inner.lock();
        match g.state {
            State::HalfOpen if probe => match outcome {
                Outcome::Cancelled => g.probes_admitted = g.probes_admitted.saturating_sub(1),
                Outcome::Failure => self.trip(&mut g, now),
                Outcome::Success if slow => self.trip(&mut g, now),
                Outcome::Success => {
                    g.probes_succeeded += 1;
                    if g.probes_succeeded >= self.cfg.half_open_probes {
                        g.trips = 0;
                        for b in g.buckets.iter_mut() {
                            *b = Bucket::default();
                        }
                        self.set_state(&mut g, State::Closed);
                    }
                }
            },
            State::Closed if outcome != Outcome::Cancelled => {
                let second = now.as_secs();
                let n = g.buckets.len();
                let b = &mut g.buckets[(second % n as u64) as usize];
                if b.second != second {
                    *b = Bucket {
                        second,
                        ..Bucket::default()
                    };
                }
                b.total += 1;
                b.failures += u32::from(outcome == Outcome::Failure);
                b.slow += u32::from(slow);
                let (total, failures, slow) = window_totals(&g.buckets, second);
                if total >= self.cfg.min_requests {
                    let total = f64::from(total);
                    let failing = f64::from(failures) / total >= self.cfg.failure_rate;
                    let slowing = self.cfg.slow_call_duration.is_some()
                        && f64::from(slow) / total >= self.cfg.slow_call_rate;
                    if failing || slowing {
                        self.trip(&mut g, now);
                    }
                }
            }
            // Calls admitted before a trip, finishing after it, carry no new information.
            _ => {}
        }
    }

    fn trip(&self, g: &mut Inner, now: Duration) {
        let factor = 2u32.saturating_pow(g.trips.min(16));
        let open_for = self
            .cfg
            .open_for
            .saturating_mul(factor)
            .min(self.cfg.max_open_for);
        g.trips = g.trips.saturating_add(1);
        g.open_until = now.saturating_add(open_for);
        g.probes_admitted = 0;
        g.probes_succeeded = 0;
        self.set_state(g, State::Open);
        tracing::warn!(
            open_for_ms = open_for.as_millis() as u64,
            trips = g.trips,
            "circuit opened"
        );
    }

    fn set_state(&self, g: &mut Inner, to: State) {
        if g.state == to {
            return;
        }
        g.state = to;
        self.gauge.set(to.gauge_value());
        match to {
            State::Open => self.to_open.increment(1),
            State::HalfOpen => self.to_half_open.increment(1),
            State::Closed => self.to_closed.increment(1),
        }
        tracing::info!(state = to.label(), "circuit state changed");
    }

    pub fn status(&self) -> BreakerStatus {
        let now = self.clock.now();
        let g = self.inner.lock();
        let (total, failures, slow) = window_totals(&g.buckets, now.as_secs());
        BreakerStatus {
            state: g.state,
            window_requests: total,
            window_failures: failures,
            window_slow: slow,
            trips: g.trips,
            retry_after_secs: (g.state == State::Open)
                .then(|| g.open_until.saturating_sub(now).as_secs_f64().ceil() as u64),
        }
    }
}

/// An upstream's breakers: one for the whole upstream, or one per endpoint.
pub struct Breakers {
    per_endpoint: bool,
    list: Vec<Breaker>,
    endpoints: Vec<String>,
}

impl Breakers {
    pub fn new(
        cfg: &BreakerConfig,
        upstream: &str,
        endpoints: &[String],
        metrics: &Metrics,
        clock: &Arc<dyn Clock>,
    ) -> Self {
        if cfg.per_endpoint {
            let list = endpoints
                .iter()
                .map(|e| {
                    Breaker::labelled(
                        cfg.clone(),
                        &[("upstream", upstream), ("endpoint", e)],
                        metrics,
                        clock.clone(),
                    )
                })
                .collect();
            Self {
                per_endpoint: true,
                list,
                endpoints: endpoints.to_vec(),
            }
        } else {
            Self {
                per_endpoint: false,
                list: vec![Breaker::new(cfg.clone(), upstream, metrics, clock.clone())],
                endpoints: Vec::new(),
            }
        }
    }

    pub fn per_endpoint(&self) -> bool {
        self.per_endpoint
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.list[0].cfg
    }

    pub fn for_endpoint(&self, index: usize) -> &Breaker {
        if self.per_endpoint {
            self.list.get(index).unwrap_or(&self.list[0])
        } else {
            &self.list[0]
        }
    }

    /// For the admin API: the upstream's breaker, or each endpoint's.
    pub fn status(&self) -> serde_json::Value {
        if self.per_endpoint {
            let per: serde_json::Map<String, serde_json::Value> = self
                .endpoints
                .iter()
                .zip(&self.list)
                .map(|(e, b)| (e.clone(), serde_json::to_value(b.status()).unwrap_or_default()))
                .collect();
            serde_json::json!({ "per_endpoint": per })
        } else {
            serde_json::to_value(self.list[0].status()).unwrap_or_default()
        }
    }
}

fn window_totals(buckets: &[Bucket], now_second: u64) -> (u32, u32, u32) {
    let span = buckets.len() as u64;
    buckets
        .iter()
        .filter(|b| b.total > 0 && now_second.saturating_sub(b.second) < span)
        .fold((0, 0, 0), |(t, f, s), b| {
            (t + b.total, f + b.failures, s + b.slow)
        })
}

impl Permit<'_> {
    pub fn record(mut self, outcome: Outcome) {
        self.recorded = true;
        self.breaker.record(self.probe, outcome, self.started);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.recorded {
            self.breaker.record(self.probe, Outcome::Cancelled, self.started);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::rollout::ManualClock;

    /// A breaker on a clock the test moves.
    fn breaker(cfg: BreakerConfig) -> (Breaker, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::default());
        (Breaker::new(cfg, "t", &Metrics::new(), clock.clone()), clock)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            window: Duration::from_secs(10),
            min_requests: 4,
            failure_rate: 0.5,
            slow_call_duration: None,
            slow_call_rate: 1.0,
            open_for: Duration::from_millis(50),
            max_open_for: Duration::from_millis(150),
            half_open_probes: 2,
            failure_statuses: vec![502, 503, 504],
            on_connect_error: true,
            on_timeout: true,
            per_endpoint: false,
        }
    }

    fn run(b: &Breaker, outcome: Outcome) -> bool {
        match b.acquire() {
            Ok(p) => {
                p.record(outcome);
                true
            }
            Err(_) => false,
        }
    }

    #[test]
    fn trips_on_failure_rate_then_recovers_through_half_open() {
        let (b, clock) = breaker(cfg());
        assert!(run(&b, Outcome::Success));
        assert!(run(&b, Outcome::Failure));
        assert!(run(&b, Outcome::Success));
        assert_eq!(
            b.status().state,
            State::Closed,
            "below min_requests nothing trips"
        );
        assert!(run(&b, Outcome::Failure));
        assert_eq!(b.status().state, State::Open);
        assert!(b.acquire().is_err());
        clock.advance(ms(49));
        assert_eq!(b.acquire().err(), Some(ms(1)), "open until open_for has passed");

        clock.advance(ms(1));
        let p1 = b.acquire().expect("first probe");
        let p2 = b.acquire().expect("second probe");
        assert!(b.acquire().is_err(), "only two probes at once");
        assert_eq!(b.status().state, State::HalfOpen);
        p1.record(Outcome::Success);
        p2.record(Outcome::Success);
        assert_eq!(b.status().state, State::Closed);
    }

    #[test]
    fn a_failed_probe_reopens_for_twice_as_long_up_to_the_cap() {
        let (b, clock) = breaker(cfg());
        for _ in 0..4 {
            run(&b, Outcome::Failure);
        }
        assert_eq!(b.status().state, State::Open);
        clock.advance(ms(50));
        assert!(run(&b, Outcome::Failure));
        let st = b.status();
        assert_eq!((st.state, st.trips), (State::Open, 2));
        // Second trip: 100 ms.
        clock.advance(ms(99));
        assert!(b.acquire().is_err());
        clock.advance(ms(1));
        assert!(run(&b, Outcome::Failure));
        // Third trip would be 200 ms; the cap is 150 ms.
        clock.advance(ms(149));
        assert!(b.acquire().is_err());
        clock.advance(ms(1));
        assert!(b.acquire().is_ok());
    }

    #[test]
    fn cancelled_probe_frees_its_slot() {
        let (b, clock) = breaker(cfg());
        for _ in 0..4 {
            run(&b, Outcome::Failure);
        }
        clock.advance(ms(50));
        let p1 = b.acquire().unwrap();
        let p2 = b.acquire().unwrap();
        drop(p2);
        let p3 = b.acquire().expect("the dropped probe's slot is free again");
        p1.record(Outcome::Success);
        p3.record(Outcome::Success);
        assert_eq!(b.status().state, State::Closed);
    }

    #[test]
    fn slow_calls_trip_when_configured() {
        let mut c = cfg();
        c.slow_call_duration = Some(Duration::from_millis(5));
        c.slow_call_rate = 0.5;
        let (b, clock) = breaker(c);
        for _ in 0..4 {
            let p = b.acquire().unwrap();
            clock.advance(ms(6));
            p.record(Outcome::Success);
        }
        assert_eq!(b.status().state, State::Open);
    }

    #[test]
    fn fast_calls_do_not_count_as_slow() {
        let mut c = cfg();
        c.slow_call_duration = Some(Duration::from_millis(5));
        c.slow_call_rate = 0.5;
        let (b, clock) = breaker(c);
        for _ in 0..8 {
            let p = b.acquire().unwrap();
            clock.advance(ms(4));
            p.record(Outcome::Success);
        }
        let st = b.status();
        assert_eq!((st.state, st.window_slow), (State::Closed, 0));
    }

    #[test]
    fn the_window_forgets_failures_older_than_it() {
        let (b, clock) = breaker(cfg());
        for _ in 0..3 {
            run(&b, Outcome::Failure);
        }
        clock.advance(Duration::from_secs(10));
        assert!(run(&b, Outcome::Failure));
        let st = b.status();
        assert_eq!(
            (st.state, st.window_requests),
            (State::Closed, 1),
            "the first three fell out of the 10 s window"
        );
    }
}
