//! The arithmetic of a decision, shared by the in-process store and (as Lua) the Redis one.
//! Times are integers in one unit (nanoseconds here, microseconds in Redis) so that both stores
//! decide alike and a decision never depends on float rounding.

use std::time::Duration;

/// One limit, compiled from a policy's `rate`, `burst` and `algorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// GCRA: one unit every `interval` ns, at most `burst` units at once. Over any span `t` it
    /// admits at most `t / interval + burst` units.
    Gcra { interval: u64, burst: u64 },
    /// At most `limit` units per `window` ns, the previous window weighted by how much of it
    /// still overlaps the sliding one.
    Sliding { window: u64, limit: u64 },
}

impl Limit {
    /// The quota and its window as the `RateLimit-Policy` header states them: a full bucket of
    /// `burst` refills in `burst * interval`.
    pub fn quota(&self) -> (u64, Duration) {
        match *self {
            Limit::Gcra { interval, burst } => (burst, Duration::from_nanos(interval.saturating_mul(burst))),
            Limit::Sliding { window, limit } => (limit, Duration::from_nanos(window)),
        }
    }

    /// The same limit in microseconds, the unit of the Redis scripts.
    pub fn in_micros(&self) -> (u64, u64) {
        match *self {
            Limit::Gcra { interval, burst } => (interval.div_ceil(1000).max(1), burst),
            Limit::Sliding { window, limit } => (window.div_ceil(1000).max(1), limit),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Units still available right after this decision.
    pub remaining: u64,
    /// Until the limit is wholly available again.
    pub reset: Duration,
    /// Until this request would have been admitted (zero when it was).
    pub retry_after: Duration,
}

/// GCRA on the theoretical arrival time `tat`. Returns the new `tat` (unchanged when denied).
pub fn gcra(tat: u64, now: u64, interval: u64, burst: u64, cost: u64, unit: Duration) -> (u64, Decision) {
    let tat = tat.max(now);
    let capacity = interval.saturating_mul(burst);
    let new_tat = tat.saturating_add(interval.saturating_mul(cost));
    let ahead = new_tat - now;
    if ahead <= capacity {
        let d = Decision {
            allowed: true,
            remaining: (capacity - ahead) / interval.max(1),
            reset: scale(ahead, unit),
            retry_after: Duration::ZERO,
        };
        (new_tat, d)
    } else {
        let d = Decision {
            allowed: false,
            remaining: capacity.saturating_sub(tat - now) / interval.max(1),
            reset: scale(tat - now, unit),
            retry_after: scale(ahead - capacity, unit),
        };
        (tat, d)
    }
}

/// The counts of the current and the previous window of a sliding-window limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    pub index: u64,
    pub previous: u64,
    pub current: u64,
}

pub fn sliding(
    state: Window,
    now: u64,
    window: u64,
    limit: u64,
    cost: u64,
    unit: Duration,
) -> (Window, Decision) {
    let window = window.max(1);
    let index = now / window;
    let mut s = state;
    if s.index != index {
        s.previous = if s.index + 1 == index { s.current } else { 0 };
        s.current = 0;
        s.index = index;
    }
    let elapsed = now - index * window;
    // previous * (window - elapsed) / window, in integers (u128: no overflow for any u64 inputs).
    let weighted = ((s.previous as u128 * (window - elapsed) as u128) / window as u128) as u64;
    let used = weighted + s.current;
    let reset = scale(window - elapsed, unit);
    if used + cost <= limit {
        s.current += cost;
        let d = Decision {
            allowed: true,
            remaining: limit - used - cost,
            reset,
            retry_after: Duration::ZERO,
        };
        (s, d)
    } else {
        // When the previous window's weight has decayed enough, or else at the next window.
        let room = limit.saturating_sub(s.current + cost);
        let wait = if s.current + cost <= limit && s.previous > 0 {
            // Need previous * (window - e) / window <= room, i.e. e >= window - room*window/previous.
            let needed = window - (room as u128 * window as u128 / s.previous as u128) as u64;
            needed.saturating_sub(elapsed).max(1)
        } else {
            window - elapsed
        };
        let d = Decision {
            allowed: false,
            remaining: limit.saturating_sub(used),
            reset,
            retry_after: scale(wait, unit),
        };
        (s, d)
    }
}

fn scale(n: u64, unit: Duration) -> Duration {
    Duration::from_nanos(n.saturating_mul(unit.as_nanos() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: Duration = Duration::from_nanos(1);

    #[test]
    fn gcra_admits_a_burst_then_the_rate() {
        // 10 per second, burst 5.
        let (interval, burst) = (100_000_000, 5);
        let mut tat = 0;
        let now = 1_000_000_000;
        let mut admitted = 0;
        for _ in 0..20 {
            let (t, d) = gcra(tat, now, interval, burst, 1, NS);
            tat = t;
            admitted += d.allowed as u32;
        }
        assert_eq!(admitted, 5);
        // 100 ms later exactly one more unit is free.
        let (t, d) = gcra(tat, now + interval, interval, burst, 1, NS);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        let (_, d) = gcra(t, now + interval, interval, burst, 1, NS);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_millis(100));
    }

    #[test]
    fn gcra_never_admits_more_than_rate_times_time_plus_burst() {
        let (interval, burst) = (10_000_000, 20); // 100/s
        let mut tat = 0;
        let mut admitted = 0u64;
        // Offer one request per ms for 3 s.
        for ms in 0..3000u64 {
            let (t, d) = gcra(tat, ms * 1_000_000, interval, burst, 1, NS);
            tat = t;
            admitted += d.allowed as u64;
        }
        assert!(admitted <= 300 + 20, "{admitted}");
        assert!(admitted >= 318, "{admitted}");
    }

    #[test]
    fn gcra_cost_uses_several_units() {
        let (_, d) = gcra(0, 1_000, 10, 10, 4, NS);
        assert!(d.allowed);
        assert_eq!(d.remaining, 6);
        let (_, d) = gcra(0, 1_000, 10, 10, 11, NS);
        assert!(!d.allowed);
    }

    #[test]
    fn sliding_window_weights_the_previous_window() {
        let w = 1_000;
        let (s, d) = sliding(Window::default(), 0, w, 10, 10, NS);
        assert!(d.allowed);
        let (s, d) = sliding(s, 500, w, 10, 1, NS);
        assert!(!d.allowed);
        // Half-way through the next window the previous ten count as five.
        let (s, d) = sliding(s, 1_500, w, 10, 5, NS);
        assert!(d.allowed, "{d:?}");
        let (_, d) = sliding(s, 1_500, w, 10, 1, NS);
        assert!(!d.allowed);
        // Two windows later nothing counts.
        let (_, d) = sliding(
            Window {
                index: 1,
                previous: 0,
                current: 10,
            },
            3_000,
            w,
            10,
            10,
            NS,
        );
        assert!(d.allowed);
    }

    #[test]
    fn quota_describes_the_bucket() {
        let l = Limit::Gcra {
            interval: 10_000_000,
            burst: 200,
        };
        assert_eq!(l.quota(), (200, Duration::from_secs(2)));
    }
}
