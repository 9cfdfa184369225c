//! The last hour of each route in 10-second steps, per side: requests, 5xx answers, p99 latency,
//! and the shadow comparisons; `GET /admin/history` serves it and the migration page plots it.
//!
//! The request path only touches atomics: it finds its step's slot in a ring of 360, bumps two
//! counters and one bucket of a fixed log-scale latency histogram. The p99 is worked out from
//! that histogram when someone reads the history, never per request. A slot is reused (zeroed)
//! by the first request of a new step that lands on it, which is once per 10 s per route, so
//! old steps expire without a timer. The ring is kept per route name across reloads (see
//! [`Registry`]) and allocated at the route's first request, so idle routes cost a pointer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::context::Side;

/// The width of one point.
pub const STEP_SECS: u64 = 10;
/// One hour of steps.
pub const SLOTS: u64 = 360;

/// Four sub-buckets per power of two: a bucket is at most 25 % wider than its lower bound, so the
/// midpoint reported is within about 11 % of any latency that fell in it.
const SUB_BITS: u32 = 2;
const SUB: u64 = 1 << SUB_BITS;
/// Latencies below this many microseconds have a bucket each.
const LINEAR: u64 = SUB << 1;
/// 2^27 µs is about 134 s: anything slower counts in the last bucket.
const MAX_EXP: u32 = 27;
const LAT_BUCKETS: usize = (LINEAR + (MAX_EXP as u64 - SUB_BITS as u64 - 1) * SUB) as usize;
/// A slot's step while its counters are being zeroed.
const RESETTING: u64 = u64::MAX;

/// The latency bucket of `us` microseconds.
fn bucket_of(us: u64) -> usize {
    let v = us.min((1 << MAX_EXP) - 1);
    if v < LINEAR {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros();
    let sub = (v >> (exp - SUB_BITS)) & (SUB - 1);
    (LINEAR + u64::from(exp - SUB_BITS - 1) * SUB + sub) as usize
}

/// The latency a bucket stands for, in microseconds: the middle of its range.
fn bucket_value_us(i: usize) -> f64 {
    let i = i as u64;
    if i < LINEAR {
        return i as f64;
    }
    let exp = (i - LINEAR) / SUB + u64::from(SUB_BITS) + 1;
    let sub = (i - LINEAR) % SUB;
    let low = (SUB + sub) << (exp - u64::from(SUB_BITS));
    let width = 1u64 << (exp - u64::from(SUB_BITS));
    low as f64 + width as f64 / 2.0
}

#[derive(Default)]
struct SideSlot {
    requests: AtomicU64,
    errors: AtomicU64,
    /// Allocated at the side's first request in this slot: a route that never sends to modern
    /// carries no modern histograms.
    latency: OnceLock<Box<[AtomicU32; LAT_BUCKETS]>>,
}

impl SideSlot {
    fn zero(&self) {
        self.requests.store(0, Ordering::Relaxed);
        self.errors.store(0, Ordering::Relaxed);
        if let Some(h) = self.latency.get() {
            for b in h.iter() {
                b.store(0, Ordering::Relaxed);
            }
        }
    }

    fn histogram(&self) -> &[AtomicU32; LAT_BUCKETS] {
        self.latency
            .get_or_init(|| Box::new(std::array::from_fn(|_| AtomicU32::new(0))))
    }

    fn read(&self) -> SidePoint {
        let requests = self.requests.load(Ordering::Relaxed);
        let errors_5xx = self.errors.load(Ordering::Relaxed);
        let p99_ms = self.latency.get().map_or(0.0, |h| {
            let counts: Vec<u64> = h.iter().map(|c| u64::from(c.load(Ordering::Relaxed))).collect();
            let total: u64 = counts.iter().sum();
            if total == 0 {
                return 0.0;
            }
            // The smallest latency at or above 99 % of the requests (nearest rank).
            let rank = (total * 99).div_ceil(100).max(1);
            let mut seen = 0;
            let i = counts
                .iter()
                .position(|c| {
                    seen += c;
                    seen >= rank
                })
                .unwrap_or(LAT_BUCKETS - 1);
            bucket_value_us(i).round() / 1000.0
        });
        SidePoint {
            requests,
            errors_5xx,
            p99_ms,
        }
    }
}

#[derive(Default)]
struct Slot {
    /// Which step (unix seconds / 10) the counters hold.
    step: AtomicU64,
    sides: [SideSlot; 2],
    comparisons: AtomicU64,
    mismatched: AtomicU64,
}

/// One step of a route's history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// The step's start, unix milliseconds.
    pub t: u64,
    pub legacy: SidePoint,
    pub modern: SidePoint,
    pub shadow: ShadowPoint,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SidePoint {
    pub requests: u64,
    pub errors_5xx: u64,
    /// 0 when the side had no request in the step.
    pub p99_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShadowPoint {
    pub comparisons: u64,
    pub mismatched: u64,
}

#[derive(Default)]
pub struct RouteHistory {
    ring: OnceLock<Box<[Slot]>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn side_index(side: Side) -> usize {
    match side {
        Side::Legacy => 0,
        Side::Modern => 1,
    }
}

impl RouteHistory {
    /// One answered request (not one the client gave up on: that says nothing about a side).
    pub fn record(&self, side: Side, server_error: bool, latency: Duration) {
        self.record_at(now_ms(), side, server_error, latency);
    }

    /// One shadow comparison.
    pub fn record_comparison(&self, mismatched: bool) {
        self.record_comparison_at(now_ms(), mismatched);
    }

    /// The steps of the last hour that saw a request or a comparison, oldest first (the current,
    /// still filling step included).
    pub fn points(&self) -> Vec<Point> {
        self.points_at(now_ms())
    }

    pub fn record_at(&self, unix_ms: u64, side: Side, server_error: bool, latency: Duration) {
        let Some(slot) = self.slot_for(unix_ms / 1000 / STEP_SECS) else {
            return;
        };
        let s = &slot.sides[side_index(side)];
        s.requests.fetch_add(1, Ordering::Relaxed);
        if server_error {
            s.errors.fetch_add(1, Ordering::Relaxed);
        }
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        s.histogram()[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_comparison_at(&self, unix_ms: u64, mismatched: bool) {
        let Some(slot) = self.slot_for(unix_ms / 1000 / STEP_SECS) else {
            return;
        };
        slot.comparisons.fetch_add(1, Ordering::Relaxed);
        if mismatched {
            slot.mismatched.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn points_at(&self, unix_ms: u64) -> Vec<Point> {
        let Some(ring) = self.ring.get() else {
            return Vec::new();
        };
        let now = unix_ms / 1000 / STEP_SECS;
        let mut out = Vec::new();
        for step in now.saturating_sub(SLOTS - 1)..=now {
            let slot = &ring[(step % SLOTS) as usize];
            if slot.step.load(Ordering::Acquire) != step {
                continue;
            }
            let p = Point {
                t: step * STEP_SECS * 1000,
                legacy: slot.sides[0].read(),
                modern: slot.sides[1].read(),
                shadow: ShadowPoint {
                    comparisons: slot.comparisons.load(Ordering::Relaxed),
                    mismatched: slot.mismatched.load(Ordering::Relaxed),
                },
            };
            if p.legacy.requests + p.modern.requests + p.shadow.comparisons > 0 {
                out.push(p);
            }
        }
        out
    }

    /// The slot holding `step`, zeroed first if it still holds a step an hour old. `None` for a
    /// late sample whose step was already reused, or when another thread is zeroing the slot
    /// and does not finish within a few spins: one sample lost beats a request held.
    fn slot_for(&self, step: u64) -> Option<&Slot> {
        let ring = self
            .ring
            .get_or_init(|| (0..SLOTS).map(|_| Slot::default()).collect());
        let slot = &ring[(step % SLOTS) as usize];
        let mut seen = slot.step.load(Ordering::Acquire);
        for _ in 0..64 {
            if seen == step {
                return Some(slot);
            }
            if seen == RESETTING {
                std::hint::spin_loop();
                seen = slot.step.load(Ordering::Acquire);
                continue;
            }
            if seen > step {
                return None;
            }
            match slot
                .step
                .compare_exchange(seen, RESETTING, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    for s in &slot.sides {
                        s.zero();
                    }
                    slot.comparisons.store(0, Ordering::Relaxed);
                    slot.mismatched.store(0, Ordering::Relaxed);
                    slot.step.store(step, Ordering::Release);
                    return Some(slot);
                }
                Err(now) => seen = now,
            }
        }
        None
    }
}

/// Each route's history by route name, so that a reload (which rebuilds every route) keeps the
/// hour already seen. Read at compile time only, never per request.
#[derive(Default)]
pub struct Registry {
    routes: parking_lot::Mutex<HashMap<String, Arc<RouteHistory>>>,
}

impl Registry {
    pub fn route(&self, name: &str) -> Arc<RouteHistory> {
        self.routes.lock().entry(name.to_string()).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_764_547_200_000; // a step boundary

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn latency_buckets_are_monotonic_and_their_values_fall_inside_them() {
        let mut last = 0;
        for us in (0..5_000).chain((5_000..200_000_000).step_by(997)) {
            let b = bucket_of(us);
            assert!(b >= last, "{us} µs went back from bucket {last} to {b}");
            assert!(b < LAT_BUCKETS, "{us} µs is past the last bucket");
            last = b;
            if us < 1 << MAX_EXP {
                let v = bucket_value_us(b);
                let err = (v - us as f64).abs() / (us.max(1) as f64);
                assert!(err <= 0.125, "{us} µs reads back as {v} µs");
            }
        }
        assert_eq!(bucket_of(u64::MAX), LAT_BUCKETS - 1);
    }

    #[test]
    fn requests_in_one_step_add_up_per_side() {
        let h = RouteHistory::default();
        for i in 0..100 {
            h.record_at(T0 + i * 50, Side::Legacy, i % 10 == 0, ms(2));
        }
        h.record_at(T0 + 9_999, Side::Modern, false, ms(40));
        h.record_comparison_at(T0 + 1, true);
        h.record_comparison_at(T0 + 2, false);
        let p = h.points_at(T0 + 9_999);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].t, T0);
        assert_eq!((p[0].legacy.requests, p[0].legacy.errors_5xx), (100, 10));
        assert!((p[0].legacy.p99_ms - 2.0).abs() < 0.25, "{}", p[0].legacy.p99_ms);
        assert_eq!(p[0].modern.requests, 1);
        assert!((p[0].modern.p99_ms - 40.0).abs() < 5.0, "{}", p[0].modern.p99_ms);
        assert_eq!(
            p[0].shadow,
            ShadowPoint {
                comparisons: 2,
                mismatched: 1
            }
        );
    }

    #[test]
    fn p99_follows_the_slowest_percent() {
        let h = RouteHistory::default();
        for _ in 0..980 {
            h.record_at(T0, Side::Modern, false, ms(1));
        }
        for _ in 0..20 {
            h.record_at(T0, Side::Modern, false, ms(300));
        }
        let p99 = h.points_at(T0)[0].modern.p99_ms;
        assert!((270.0..=330.0).contains(&p99), "p99 {p99} ms");
    }

    #[test]
    fn a_new_step_starts_a_new_point() {
        let h = RouteHistory::default();
        h.record_at(T0 + 9_999, Side::Legacy, false, ms(1));
        h.record_at(T0 + 10_000, Side::Legacy, true, ms(1));
        h.record_at(T0 + 10_001, Side::Legacy, true, ms(1));
        let p = h.points_at(T0 + 10_001);
        let got: Vec<_> = p
            .iter()
            .map(|p| (p.t, p.legacy.requests, p.legacy.errors_5xx))
            .collect();
        assert_eq!(got, vec![(T0, 1, 0), (T0 + 10_000, 2, 2)]);
    }

    #[test]
    fn steps_older_than_an_hour_expire_and_their_slot_is_reused_from_zero() {
        let h = RouteHistory::default();
        h.record_at(T0, Side::Legacy, true, ms(500));
        h.record_at(T0 + 20_000, Side::Modern, false, ms(1));
        let hour = SLOTS * STEP_SECS * 1000;
        // Still there at the end of the hour, gone one step later even with no new request.
        assert_eq!(h.points_at(T0 + hour - 1).len(), 2);
        assert_eq!(h.points_at(T0 + hour).len(), 1);
        // A request an hour later lands on the first step's slot: the old counts are gone.
        h.record_at(T0 + hour, Side::Legacy, false, ms(1));
        let p = h.points_at(T0 + hour);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].t, T0 + 20_000);
        assert_eq!(p[1].t, T0 + hour);
        assert_eq!((p[1].legacy.requests, p[1].legacy.errors_5xx), (1, 0));
        assert!(
            p[1].legacy.p99_ms < 2.0,
            "old 500 ms sample survived: {}",
            p[1].legacy.p99_ms
        );
        // A late sample for the step that slot held before is dropped, not counted in the new one.
        h.record_at(T0, Side::Legacy, false, ms(1));
        assert_eq!(h.points_at(T0 + hour)[1].legacy.requests, 1);
    }

    #[test]
    fn a_route_without_traffic_has_no_points() {
        let h = RouteHistory::default();
        assert!(h.points_at(T0).is_empty());
        h.record_at(T0, Side::Legacy, false, ms(1));
        assert!(h.points_at(T0 + 3 * 3_600_000).is_empty());
    }

    #[test]
    fn concurrent_requests_are_all_counted() {
        let h = Arc::new(RouteHistory::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let h = h.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000 {
                        h.record_at(T0 + i % 10_000, Side::Modern, false, ms(3));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("recording thread");
        }
        assert_eq!(h.points_at(T0)[0].modern.requests, 40_000);
    }

    #[test]
    fn the_registry_hands_out_one_history_per_route_name() {
        let r = Registry::default();
        assert!(Arc::ptr_eq(&r.route("orders"), &r.route("orders")));
        assert!(!Arc::ptr_eq(&r.route("orders"), &r.route("me")));
    }
}
