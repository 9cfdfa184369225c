//! The in-process store: one sharded map per policy (no global lock), entries dropped by a
//! background sweep once they carry no information (a full bucket, an expired window).

use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::algorithm::{self, Decision, Limit, Window};

const SWEEP_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
enum State {
    Tat(u64),
    Window(Window),
}

pub struct LocalStore {
    limit: Limit,
    base: Instant,
    entries: DashMap<Box<str>, State>,
    sweeper: OnceLock<()>,
}

impl LocalStore {
    pub fn new(limit: Limit) -> Self {
        Self {
            limit,
            base: Instant::now(),
            entries: DashMap::new(),
            sweeper: OnceLock::new(),
        }
    }

    fn now(&self) -> u64 {
        // Starts at one window so that the first window index is never confused with "no state".
        self.base.elapsed().as_nanos() as u64 + self.span()
    }

    fn span(&self) -> u64 {
        match self.limit {
            Limit::Gcra { interval, burst } => interval.saturating_mul(burst),
            Limit::Sliding { window, .. } => window,
        }
    }

    pub fn decide(self: &Arc<Self>, key: &str, cost: u64) -> Decision {
        self.sweeper.get_or_init(|| self.start_sweeper());
        self.decide_at(key, cost, self.now())
    }

    fn decide_at(&self, key: &str, cost: u64, now: u64) -> Decision {
        let unit = Duration::from_nanos(1);
        // The shard's lock is held only for this arithmetic.
        let mut entry = match self.entries.get_mut(key) {
            Some(e) => e,
            None => self.entries.entry(key.into()).or_insert(match self.limit {
                Limit::Gcra { .. } => State::Tat(0),
                Limit::Sliding { .. } => State::Window(Window::default()),
            }),
        };
        match (self.limit, *entry) {
            (Limit::Gcra { interval, burst }, State::Tat(tat)) => {
                let (tat, d) = algorithm::gcra(tat, now, interval, burst, cost, unit);
                *entry = State::Tat(tat);
                d
            }
            (Limit::Sliding { window, limit }, State::Window(w)) => {
                let (w, d) = algorithm::sliding(w, now, window, limit, cost, unit);
                *entry = State::Window(w);
                d
            }
            // A store is made for one limit; a mismatch cannot happen, and starting afresh is safe.
            (_, _) => {
                drop(entry);
                self.entries.remove(key);
                self.decide_at(key, cost, now)
            }
        }
    }

    fn start_sweeper(self: &Arc<Self>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak: Weak<Self> = Arc::downgrade(self);
        rt.spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(store) = weak.upgrade() else { return };
                store.sweep();
            }
        });
    }

    /// Drops the entries that would decide exactly like a missing one.
    pub fn sweep(&self) {
        self.sweep_at(self.now())
    }

    fn sweep_at(&self, now: u64) {
        self.entries.retain(|_, s| match (*s, self.limit) {
            (State::Tat(tat), _) => tat > now,
            (State::Window(w), Limit::Sliding { window, .. }) => w.index + 1 >= now / window.max(1),
            (State::Window(_), _) => false,
        });
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_limited_independently() {
        let s = Arc::new(LocalStore::new(Limit::Gcra {
            interval: 1_000_000_000,
            burst: 2,
        }));
        assert!(s.decide("a", 1).allowed);
        assert!(s.decide("a", 1).allowed);
        assert!(!s.decide("a", 1).allowed);
        assert!(s.decide("b", 1).allowed);
    }

    #[test]
    fn sweep_forgets_full_buckets_only() {
        let s = LocalStore::new(Limit::Gcra {
            interval: 1_000,
            burst: 2,
        });
        s.decide_at("a", 1, 10_000);
        s.decide_at("b", 2, 10_000);
        s.decide_at("b", 2, 15_000);
        s.sweep_at(15_500);
        assert_eq!(s.len(), 1, "a refilled, b is still draining");
    }
}
