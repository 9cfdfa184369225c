//! The in-process store: one sharded map per policy (no global lock), entries dropped by a
//! background sweep once they carry no information (a full bucket, an expired window).
//!
//! Keys are fixed-size digests ([`KeyDigest`]), never the client's bytes, and a map holds at most
//! `max_keys` of them: rotating header values or IPv6 addresses cost a bounded amount of memory.
//! When a new key finds the map full, the map first drops what a sweep would, then the eighth of
//! its entries that carry the least (nearest to a full bucket, fewest units in the window). A new
//! key is therefore always counted; an evicted client at worst finds its limit refilled early,
//! and the clients that are being limited hardest are the last to be forgotten.

use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use parking_lot::Mutex;

use super::algorithm::{self, Decision, Limit, Window};
use super::KeyDigest;

const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// The default of a policy's `max_keys`.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// The per-key state, in a map of the limit's own kind: a theoretical arrival time (GCRA) or
/// the counts of two windows.
enum Entries {
    Gcra {
        interval: u64,
        burst: u64,
        tats: DashMap<KeyDigest, u64>,
    },
    Sliding {
        window: u64,
        limit: u64,
        windows: DashMap<KeyDigest, Window>,
    },
}

pub struct LocalStore {
    base: Instant,
    entries: Entries,
    sweeper: OnceLock<()>,
    /// Held by the one caller making room; the others insert meanwhile rather than wait, so
    /// the map can exceed `max_keys` by at most one entry per worker thread, briefly.
    evicting: Mutex<()>,
}

/// Applies one decision to a key's state. The shard's lock is held only for this arithmetic;
/// `make_room` runs (without any shard lock) only for a key that is not there yet.
fn update<S: Copy + Default>(
    map: &DashMap<KeyDigest, S>,
    key: &KeyDigest,
    make_room: impl FnOnce(),
    step: impl FnOnce(S) -> (S, Decision),
) -> Decision {
    let mut entry = match map.get_mut(key) {
        Some(e) => e,
        None => {
            make_room();
            map.entry(*key).or_default()
        }
    };
    let (next, d) = step(*entry);
    *entry = next;
    d
}

/// Removes the `n` entries of least `weight` (exactly `n`, however many share the cut-off).
fn evict_least<S>(map: &DashMap<KeyDigest, S>, n: usize, weight: impl Fn(&S) -> u64) {
    let mut weights: Vec<u64> = map.iter().map(|e| weight(e.value())).collect();
    if n == 0 || weights.is_empty() {
        return;
    }
    let n = n.min(weights.len());
    let (below, cut, _) = weights.select_nth_unstable(n - 1);
    let cut = *cut;
    let mut ties = n - below.iter().filter(|w| **w < cut).count();
    map.retain(|_, s| {
        let w = weight(s);
        if w < cut {
            false
        } else if w == cut && ties > 0 {
            ties -= 1;
            false
        } else {
            true
        }
    });
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
            evicting: Mutex::new(()),
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

    /// `max_keys` comes from the policy, not the store: the store is kept across reloads while
    /// the limit is unchanged, whatever the cap, and a config that fails to compile must not
    /// change the live one's.
    pub fn decide(self: &Arc<Self>, key: &KeyDigest, cost: u64, max_keys: usize) -> Decision {
        self.sweeper.get_or_init(|| self.start_sweeper());
        self.decide_at(key, cost, self.now(), max_keys)
    }

    fn decide_at(&self, key: &KeyDigest, cost: u64, now: u64, max_keys: usize) -> Decision {
        let unit = Duration::from_nanos(1);
        let make_room = || self.make_room(now, max_keys.max(1));
        match &self.entries {
            Entries::Gcra {
                interval,
                burst,
                tats,
            } => update(tats, key, make_room, |tat| {
                algorithm::gcra(tat, now, *interval, *burst, cost, unit)
            }),
            Entries::Sliding {
                window,
                limit,
                windows,
            } => update(windows, key, make_room, |w| {
                algorithm::sliding(w, now, *window, *limit, cost, unit)
            }),
        }
    }

    /// Called before a new key goes in: when the map is full, drops what a sweep would, then
    /// the eighth that carries the least. One O(n) pass per n/8 new keys.
    fn make_room(&self, now: u64, max: usize) {
        if self.len() < max {
            return;
        }
        let Some(_only_one) = self.evicting.try_lock() else {
            return;
        };
        self.sweep_at(now);
        let len = self.len();
        if len < max {
            return;
        }
        let n = len + 1 - max + max / 8;
        match &self.entries {
            // A later theoretical arrival time is more debt still to pay off.
            Entries::Gcra { tats, .. } => evict_least(tats, n, |tat| *tat),
            Entries::Sliding { window, windows, .. } => {
                let index = now / window;
                evict_least(windows, n, |w| {
                    if w.index == index {
                        w.previous.saturating_add(w.current)
                    } else if w.index + 1 == index {
                        w.current
                    } else {
                        0
                    }
                })
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

    /// A test key: distinct names give distinct digests.
    fn k(name: &str) -> KeyDigest {
        let mut d = [0u8; 16];
        let b = name.as_bytes();
        d[..b.len().min(16)].copy_from_slice(&b[..b.len().min(16)]);
        d
    }

    #[test]
    fn keys_are_limited_independently() {
        let s = Arc::new(LocalStore::new(Limit::Gcra {
            interval: 1_000_000_000,
            burst: 2,
        }));
        assert!(s.decide(&k("a"), 1, DEFAULT_MAX_KEYS).allowed);
        assert!(s.decide(&k("a"), 1, DEFAULT_MAX_KEYS).allowed);
        assert!(!s.decide(&k("a"), 1, DEFAULT_MAX_KEYS).allowed);
        assert!(s.decide(&k("b"), 1, DEFAULT_MAX_KEYS).allowed);
    }

    #[test]
    fn more_distinct_keys_than_max_keys_never_grow_the_map_past_it() {
        let s = LocalStore::new(Limit::Gcra {
            interval: 1_000_000_000,
            burst: 10,
        });
        // Every key still limits someone (nothing for a sweep to drop).
        for i in 0..5_000u32 {
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&i.to_le_bytes());
            s.decide_at(&key, 1, 10_000_000_000, 1_000);
            assert!(s.len() <= 1_000, "{} keys after {i}", s.len());
        }
    }

    #[test]
    fn a_full_map_forgets_the_least_limited_keys_first() {
        let s = LocalStore::new(Limit::Gcra {
            interval: 1_000_000_000,
            burst: 10,
        });
        let now = 10_000_000_000;
        // One client has spent its whole burst; the rest one unit each.
        for _ in 0..10 {
            s.decide_at(&k("heavy"), 1, now, 100);
        }
        assert!(!s.decide_at(&k("heavy"), 1, now, 100).allowed);
        for i in 0..1_000u32 {
            let mut key = [0xff; 16];
            key[..4].copy_from_slice(&i.to_le_bytes());
            s.decide_at(&key, 1, now, 100);
        }
        assert!(s.len() <= 100);
        assert!(
            !s.decide_at(&k("heavy"), 1, now, 100).allowed,
            "rotating keys must not reset the client being limited"
        );
    }

    #[test]
    fn a_full_map_drops_expired_entries_before_live_ones() {
        let s = LocalStore::new(Limit::Sliding {
            window: 1_000,
            limit: 5,
        });
        s.decide_at(&k("old"), 1, 10_000, 2);
        s.decide_at(&k("live"), 5, 13_000, 2);
        // "old" is two windows back: a sweep drops it, so "live" keeps its count.
        s.decide_at(&k("new"), 1, 13_100, 2);
        assert_eq!(s.len(), 2);
        assert!(!s.decide_at(&k("live"), 1, 13_200, 2).allowed);
    }

    #[test]
    fn sweep_forgets_full_buckets_only() {
        let s = LocalStore::new(Limit::Gcra {
            interval: 1_000,
            burst: 2,
        });
        s.decide_at(&k("a"), 1, 10_000, DEFAULT_MAX_KEYS);
        s.decide_at(&k("b"), 2, 10_000, DEFAULT_MAX_KEYS);
        s.decide_at(&k("b"), 2, 15_000, DEFAULT_MAX_KEYS);
        s.sweep_at(15_500);
        assert_eq!(s.len(), 1, "a refilled, b is still draining");
    }

    #[test]
    fn sliding_windows_count_per_key_and_are_swept_two_windows_later() {
        let s = LocalStore::new(Limit::Sliding {
            window: 1_000,
            limit: 2,
        });
        assert!(s.decide_at(&k("a"), 2, 10_000, DEFAULT_MAX_KEYS).allowed);
        assert!(!s.decide_at(&k("a"), 1, 10_500, DEFAULT_MAX_KEYS).allowed);
        assert!(s.decide_at(&k("b"), 1, 10_500, DEFAULT_MAX_KEYS).allowed);
        s.sweep_at(11_500);
        assert_eq!(s.len(), 2, "the previous window still weighs");
        s.sweep_at(12_000);
        assert!(s.is_empty());
    }
}
