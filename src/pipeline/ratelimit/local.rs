//! The in-process store: one sharded map per policy (no global lock), entries dropped by a
//! background sweep once they carry no information (a full bucket, an expired window).

use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::algorithm::{self, Decision, Limit, Window};

const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// The per-key state, in a map of the limit's own kind: a theoretical arrival time (GCRA) or
/// the counts of two windows.
enum Entries {
    Gcra {
        interval: u64,
        burst: u64,
        tats: DashMap<Box<str>, u64>,
    },
    Sliding {
        window: u64,
        limit: u64,
        windows: DashMap<Box<str>, Window>,
    },
}

pub struct LocalStore {
    base: Instant,
    entries: Entries,
    sweeper: OnceLock<()>,
}

/// Applies one decision to a key's state. The shard's lock is held only for this arithmetic, and
/// the key is copied only for a new entry.
fn update<S: Copy + Default>(
    map: &DashMap<Box<str>, S>,
    key: &str,
    step: impl FnOnce(S) -> (S, Decision),
) -> Decision {
    let mut entry = match map.get_mut(key) {
        Some(e) => e,
        None => map.entry(key.into()).or_default(),
    };
    let (next, d) = step(*entry);
    *entry = next;
    d
}

impl LocalStore {
    pub fn new(limit: Limit) -> Self {
        let entries = match limit {
            Limit::Gcra { interval, burst } => Entries::Gcra {
                interval,
                burst,
                tats: DashMap::new(),
            },
            Limit::Sliding { window, limit } => Entries::Sliding {
                window: window.max(1),
                limit,
                windows: DashMap::new(),
            },
        };
        Self {
            base: Instant::now(),
            entries,
            sweeper: OnceLock::new(),
        }
    }

    fn now(&self) -> u64 {
        // Starts at one window so that the first window index is never confused with "no state".
        let span = match &self.entries {
            Entries::Gcra { interval, burst, .. } => interval.saturating_mul(*burst),
            Entries::Sliding { window, .. } => *window,
        };
        self.base.elapsed().as_nanos() as u64 + span
    }

    pub fn decide(self: &Arc<Self>, key: &str, cost: u64) -> Decision {
        self.sweeper.get_or_init(|| self.start_sweeper());
        self.decide_at(key, cost, self.now())
    }

    fn decide_at(&self, key: &str, cost: u64, now: u64) -> Decision {
        let unit = Duration::from_nanos(1);
        match &self.entries {
            Entries::Gcra {
                interval,
                burst,
                tats,
            } => update(tats, key, |tat| {
                algorithm::gcra(tat, now, *interval, *burst, cost, unit)
            }),
            Entries::Sliding {
                window,
                limit,
                windows,
            } => update(windows, key, |w| {
                algorithm::sliding(w, now, *window, *limit, cost, unit)
            }),
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
        match &self.entries {
            Entries::Gcra { tats, .. } => tats.retain(|_, tat| *tat > now),
            Entries::Sliding { window, windows, .. } => windows.retain(|_, w| w.index + 1 >= now / window),
        }
    }

    pub fn len(&self) -> usize {
        match &self.entries {
            Entries::Gcra { tats, .. } => tats.len(),
            Entries::Sliding { windows, .. } => windows.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

    #[test]
    fn sliding_windows_count_per_key_and_are_swept_two_windows_later() {
        let s = LocalStore::new(Limit::Sliding {
            window: 1_000,
            limit: 2,
        });
        assert!(s.decide_at("a", 2, 10_000).allowed);
        assert!(!s.decide_at("a", 1, 10_500).allowed);
        assert!(s.decide_at("b", 1, 10_500).allowed);
        s.sweep_at(11_500);
        assert_eq!(s.len(), 2, "the previous window still weighs");
        s.sweep_at(12_000);
        assert!(s.is_empty());
    }
}
