//! A circuit breaker on the shared store, so that a Redis outage costs requests no latency.
//!
//! Closed: every decision goes to Redis. After `failures` consecutive failures (timeouts,
//! errors), or at once on a connection error (the connection is known down, and the connection
//! manager would make the next callers wait for its reconnect), it opens: decisions go straight
//! to the policy's fallback without touching Redis. When the open time has passed, the next
//! decision starts ONE probe (half-open) in the background and still takes the fallback itself:
//! no request ever waits on a store that is known to be down. A probe that succeeds closes the
//! breaker; one that fails opens it again for twice as long, up to `max_open_for`.
//!
//! A closed breaker costs a decision one atomic load (and a store on the first success after a
//! failure); the mutex is taken only on transitions and while open.

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::time::Instant;

use metrics::{Counter, Gauge};
use parking_lot::Mutex;

use crate::config::file::StoreBreakerConfig;
use crate::telemetry::metrics::{
    Metrics, RATELIMIT_STORE_BREAKER_STATE, RATELIMIT_STORE_BREAKER_TRANSITIONS,
};

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// What a decision may do with the store right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Closed: ask the store.
    Call,
    /// The open time is over and this decision drew the probe: start it, take the fallback.
    Probe,
    /// Open, or a probe is out: take the fallback.
    Skip,
}

struct Inner {
    /// Trips since the breaker last closed; the open time doubles with each.
    trips: u32,
    open_until: Instant,
}

pub struct StoreBreaker {
    cfg: StoreBreakerConfig,
    state: AtomicU8,
    consecutive: AtomicU32,
    inner: Mutex<Inner>,
    gauge: Gauge,
    to_open: Counter,
    to_half_open: Counter,
    to_closed: Counter,
}

impl StoreBreaker {
    pub fn new(cfg: StoreBreakerConfig, store: &str, metrics: &Metrics) -> Self {
        let labels = [("store", store)];
        let gauge = metrics.gauge(RATELIMIT_STORE_BREAKER_STATE, &labels);
        gauge.set(f64::from(CLOSED));
        let transition = |to: &str| {
            metrics.counter(
                RATELIMIT_STORE_BREAKER_TRANSITIONS,
                &[("store", store), ("to", to)],
            )
        };
        Self {
            cfg,
            state: AtomicU8::new(CLOSED),
            consecutive: AtomicU32::new(0),
            inner: Mutex::new(Inner {
                trips: 0,
                open_until: Instant::now(),
            }),
            gauge,
            to_open: transition("open"),
            to_half_open: transition("half-open"),
            to_closed: transition("closed"),
        }
    }

    pub fn admit(&self) -> Admit {
        if self.state.load(Ordering::Acquire) == CLOSED {
            return Admit::Call;
        }
        let g = self.inner.lock();
        match self.state.load(Ordering::Acquire) {
            CLOSED => Admit::Call,
            OPEN if Instant::now() >= g.open_until => {
                self.set(HALF_OPEN);
                Admit::Probe
            }
            _ => Admit::Skip,
        }
    }

    /// A call admitted while closed answered.
    pub fn success(&self) {
        // Only written when it changes: the common case stays a shared read.
        if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
    }

    /// A call admitted while closed failed; `connection_down` when the connection itself is
    /// known to be gone (refused, reset, closed), which opens the breaker at once.
    pub fn failure(&self, connection_down: bool) {
        let n = self.consecutive.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if connection_down || n >= self.cfg.failures {
            let mut g = self.inner.lock();
            // Calls that were already out when it opened fail too; they do not trip it again.
            if self.state.load(Ordering::Acquire) == CLOSED {
                self.open(&mut g);
            }
        }
    }

    /// The probe's outcome: closes the breaker, or opens it again for longer.
    pub fn probe_done(&self, ok: bool) {
        let mut g = self.inner.lock();
        if self.state.load(Ordering::Acquire) != HALF_OPEN {
            return;
        }
        if ok {
            g.trips = 0;
            self.consecutive.store(0, Ordering::Relaxed);
            self.set(CLOSED);
        } else {
            self.open(&mut g);
        }
    }

    fn open(&self, g: &mut Inner) {
        g.trips = g.trips.saturating_add(1);
        let factor = 1u32 << (g.trips - 1).min(20);
        let wait = self
            .cfg
            .open_for
            .saturating_mul(factor)
            .min(self.cfg.max_open_for);
        g.open_until = Instant::now() + wait;
        self.set(OPEN);
    }

    fn set(&self, to: u8) {
        self.state.store(to, Ordering::Release);
        self.gauge.set(f64::from(to));
        match to {
            OPEN => self.to_open.increment(1),
            HALF_OPEN => self.to_half_open.increment(1),
            _ => self.to_closed.increment(1),
        }
    }

    /// How long the breaker stays open after its current trip (for tests and status).
    #[cfg(test)]
    fn open_for(&self) -> std::time::Duration {
        self.inner
            .lock()
            .open_until
            .saturating_duration_since(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn breaker(open_for: Duration) -> StoreBreaker {
        StoreBreaker::new(
            StoreBreakerConfig {
                failures: 3,
                open_for,
                max_open_for: open_for * 4,
            },
            "test",
            &Metrics::new(),
        )
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let b = breaker(Duration::from_secs(60));
        b.failure(false);
        b.failure(false);
        b.success();
        b.failure(false);
        b.failure(false);
        assert_eq!(
            b.admit(),
            Admit::Call,
            "a success in between starts the count again"
        );
        b.failure(false);
        assert_eq!(b.admit(), Admit::Skip);
    }

    #[test]
    fn a_connection_error_opens_at_once() {
        let b = breaker(Duration::from_secs(60));
        b.failure(true);
        assert_eq!(b.admit(), Admit::Skip);
    }

    #[test]
    fn one_probe_after_the_open_time_and_its_outcome_decides() {
        let b = breaker(Duration::ZERO);
        b.failure(true);
        assert_eq!(b.admit(), Admit::Probe);
        assert_eq!(b.admit(), Admit::Skip, "only one probe at a time");
        b.probe_done(true);
        assert_eq!(b.admit(), Admit::Call);
    }

    #[test]
    fn a_failed_probe_doubles_the_open_time_up_to_the_max() {
        let b = breaker(Duration::from_secs(10));
        b.failure(true);
        assert!(b.open_for() > Duration::from_secs(9));
        for want in [20, 40, 40] {
            // Pretend the open time is over.
            b.inner.lock().open_until = Instant::now();
            assert_eq!(b.admit(), Admit::Probe);
            b.probe_done(false);
            let left = b.open_for();
            assert!(
                left > Duration::from_secs(want - 1) && left <= Duration::from_secs(want),
                "{left:?}, want {want}s"
            );
        }
        b.inner.lock().open_until = Instant::now();
        assert_eq!(b.admit(), Admit::Probe);
        b.probe_done(true);
        b.failure(true);
        assert!(
            b.open_for() <= Duration::from_secs(10),
            "closing forgets the trips"
        );
    }
}
