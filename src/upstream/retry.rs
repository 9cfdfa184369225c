//! Retries: which requests may be retried, on what, how long to wait, and the budget that keeps
//! retries from amplifying an outage (at most `budget` × requests over a window, plus a small
//! floor, as Finagle's and Envoy's budgets do).

use std::time::{Duration, Instant};

use http::{HeaderMap, Method, Response};
use hyper::body::Incoming;
use metrics::Counter;
use parking_lot::Mutex;

use super::UpstreamCallError;
use crate::config::file::{RetryCondition, RetryConfig};
use crate::telemetry::metrics::{Metrics, RETRIES_TOTAL, RETRY_BUDGET_EXHAUSTED};

pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

pub struct RetryPolicy {
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    backoff: Duration,
    max_backoff: Duration,
    on_connect: bool,
    on_reset: bool,
    on_timeout: bool,
    statuses: Vec<u16>,
    pub max_body_bytes: u64,
    budget: RetryBudget,
    retried: Counter,
    exhausted: Counter,
}

impl RetryPolicy {
    pub fn new(cfg: &RetryConfig, upstream: &str, metrics: &Metrics) -> Self {
        let mut p = Self {
            attempts: cfg.attempts,
            per_try_timeout: cfg.per_try_timeout,
            backoff: cfg.backoff,
            max_backoff: cfg.max_backoff,
            on_connect: false,
            on_reset: false,
            on_timeout: false,
            statuses: Vec::new(),
            max_body_bytes: cfg.max_body_bytes.0,
            budget: RetryBudget::new(cfg.budget, cfg.budget_min_per_sec, cfg.budget_window),
            retried: metrics.counter(RETRIES_TOTAL, &[("upstream", upstream)]),
            exhausted: metrics.counter(RETRY_BUDGET_EXHAUSTED, &[("upstream", upstream)]),
        };
        for c in &cfg.on {
            match c {
                RetryCondition::Status(s) => p.statuses.push(*s),
                RetryCondition::Named(n) => match n.as_str() {
                    "connect-error" => p.on_connect = true,
                    "reset" => p.on_reset = true,
                    "timeout" => p.on_timeout = true,
                    // Refused by config validation before a policy is built.
                    _ => {}
                },
            }
        }
        p
    }

    /// Idempotent methods (RFC 9110 §9.2.2), or any request carrying an `Idempotency-Key`.
    pub fn eligible(method: &Method, headers: &HeaderMap) -> bool {
        method.is_idempotent() || headers.contains_key(IDEMPOTENCY_KEY)
    }

    pub fn should_retry(&self, result: &Result<Response<Incoming>, UpstreamCallError>) -> bool {
        match result {
            Ok(resp) => self.statuses.contains(&resp.status().as_u16()),
            Err(UpstreamCallError::Connect(_)) => self.on_connect,
            Err(UpstreamCallError::Timeout(_)) => self.on_timeout,
            Err(UpstreamCallError::Request(_)) => self.on_reset,
            // The client's own body failed: another try cannot help.
            Err(UpstreamCallError::Body(_)) => false,
        }
    }

    /// Counts an original request towards the budget.
    pub fn record_request(&self) {
        self.budget.deposit();
    }

    /// Takes one retry from the budget; `false` (and counted) when it is spent.
    pub fn withdraw(&self) -> bool {
        if self.budget.withdraw() {
            self.retried.increment(1);
            true
        } else {
            self.exhausted.increment(1);
            false
        }
    }

    /// Exponential backoff with full jitter: uniform in [0, min(max, base × 2^retry)].
    pub fn backoff(&self, retry: u32) -> Duration {
        let cap = self
            .backoff
            .saturating_mul(2u32.saturating_pow(retry.min(20)))
            .min(self.max_backoff);
        let ms = u64::try_from(cap.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(fastrand::u64(0..=ms))
    }
}

/// Requests and retries in one-second buckets over a sliding window.
struct RetryBudget {
    ratio: f64,
    floor: f64,
    epoch: Instant,
    buckets: Mutex<Vec<(u64, u32, u32)>>,
}

impl RetryBudget {
    fn new(ratio: f64, min_per_sec: u32, window: Duration) -> Self {
        let secs = window.as_secs().max(1);
        Self {
            ratio,
            floor: f64::from(min_per_sec) * secs as f64,
            epoch: Instant::now(),
            buckets: Mutex::new(vec![(u64::MAX, 0, 0); secs as usize]),
        }
    }

    fn bucket<'a>(&self, buckets: &'a mut [(u64, u32, u32)]) -> &'a mut (u64, u32, u32) {
        let second = self.epoch.elapsed().as_secs();
        let n = buckets.len() as u64;
        let b = &mut buckets[(second % n) as usize];
        if b.0 != second {
            *b = (second, 0, 0);
        }
        b
    }

    fn deposit(&self) {
        let mut g = self.buckets.lock();
        self.bucket(&mut g).1 += 1;
    }

    fn withdraw(&self) -> bool {
        let mut g = self.buckets.lock();
        let now = self.epoch.elapsed().as_secs();
        let span = g.len() as u64;
        let (requests, retries) = g
            .iter()
            .filter(|b| b.0 != u64::MAX && now.saturating_sub(b.0) < span)
            .fold((0u64, 0u64), |(r, t), b| (r + u64::from(b.1), t + u64::from(b.2)));
        if (retries as f64) < self.ratio * requests as f64 + self.floor {
            self.bucket(&mut g).2 += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_allows_ratio_of_requests_plus_floor() {
        let b = RetryBudget::new(0.2, 1, Duration::from_secs(10));
        for _ in 0..100 {
            b.deposit();
        }
        // 0.2 × 100 + 1 × 10 s = 30 retries.
        let granted = (0..100).filter(|_| b.withdraw()).count();
        assert_eq!(granted, 30);
    }

    #[test]
    fn backoff_is_jittered_below_the_exponential_cap() {
        let cfg = RetryConfig {
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            ..RetryConfig::default()
        };
        let p = RetryPolicy::new(&cfg, "t", &Metrics::new());
        for retry in 0..6 {
            let cap = Duration::from_millis((10u64 << retry).min(50));
            for _ in 0..50 {
                assert!(p.backoff(retry) <= cap);
            }
        }
        let spread: std::collections::HashSet<_> = (0..50).map(|_| p.backoff(3)).collect();
        assert!(spread.len() > 10, "full jitter spreads the waits");
    }

    #[test]
    fn only_idempotent_requests_or_those_with_a_key_are_eligible() {
        let mut h = HeaderMap::new();
        assert!(RetryPolicy::eligible(&Method::GET, &h));
        assert!(RetryPolicy::eligible(&Method::PUT, &h));
        assert!(!RetryPolicy::eligible(&Method::POST, &h));
        h.insert(IDEMPOTENCY_KEY, "k1".parse().unwrap());
        assert!(RetryPolicy::eligible(&Method::POST, &h));
    }
}
