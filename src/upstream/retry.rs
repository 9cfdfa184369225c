//! Retries: which requests may be retried, on what, how long to wait, and the budget that keeps
//! retries from amplifying an outage (at most `budget` × requests over a window, plus a small
//! floor, as Finagle's and Envoy's budgets do). The budget is tower's [`TpsBudget`], Finagle's
//! design; the retry loop itself stays in `pipeline::forward`, because a retry is decided on the
//! response head, against the breaker and the endpoint choice, which `tower::retry::Retry` does
//! not see.

use std::time::Duration;

use http::{Method, Response};
use hyper::body::Incoming;
use metrics::Counter;
use tower::retry::budget::{Budget as _, TpsBudget};

use super::UpstreamCallError;
use crate::config::file::{RetryCondition, RetryConfig};
use crate::telemetry::metrics::{Metrics, RETRIES_TOTAL, RETRY_BUDGET_EXHAUSTED};

/// What is known about a failed try, as far as sending the request again is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResendCause {
    /// The connection (TCP, or its TLS handshake) was never established: no byte of the
    /// request left ficus.
    ConnectFailed,
    /// A circuit breaker refused before anything was sent.
    BreakerRefused,
    /// The upstream answered with a failure status: it received the request, and may have
    /// acted on it.
    Answered,
    /// The connection reset or the try timed out once the request was (maybe partly) sent.
    Interrupted,
}

impl ResendCause {
    /// The cause behind one try's outcome.
    pub fn of(result: &Result<Response<Incoming>, UpstreamCallError>) -> Self {
        match result {
            Ok(_) => Self::Answered,
            Err(UpstreamCallError::Connect(_)) => Self::ConnectFailed,
            // Shed by the concurrency limit before anything was sent.
            Err(UpstreamCallError::Overloaded(_)) => Self::BreakerRefused,
            // A timeout may have struck while connecting or after the request was written: it
            // proves nothing.
            Err(
                UpstreamCallError::Timeout(_) | UpstreamCallError::Request(_) | UpstreamCallError::Body(_),
            ) => Self::Interrupted,
        }
    }

    fn never_sent(self) -> bool {
        matches!(self, Self::ConnectFailed | Self::BreakerRefused)
    }
}

/// The one rule for sending a request a second time, by a retry or by the migration fallback.
///
/// Idempotent methods (RFC 9110 §9.2.2: GET, HEAD, OPTIONS, TRACE, PUT, DELETE) may always be
/// resent. Any other method only when the request provably never left ficus, unless `opt_in`
/// (the upstream's `retry.non_idempotent`, the route's `migration.fallback_non_idempotent`).
/// An `Idempotency-Key` header is not an opt-in: it is the client's request, and a backend
/// that ignores it would execute the write twice.
pub fn may_resend(method: &Method, cause: ResendCause, opt_in: bool) -> bool {
    method.is_idempotent() || opt_in || cause.never_sent()
}

pub struct RetryPolicy {
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    backoff: Duration,
    max_backoff: Duration,
    on_connect: bool,
    on_reset: bool,
    on_timeout: bool,
    statuses: Vec<u16>,
    /// `retry.non_idempotent`: the upstream dedupes writes, so any method may be resent.
    pub non_idempotent: bool,
    pub max_body_bytes: u64,
    budget: TpsBudget,
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
            non_idempotent: cfg.non_idempotent,
            max_body_bytes: cfg.max_body_bytes.0,
            budget: budget(cfg),
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

    /// Whether a request with this method could be retried at all, so that it is worth keeping
    /// for a second try: a non-idempotent one (without the opt-in) only after a connect error.
    pub fn may_retry(&self, method: &Method) -> bool {
        may_resend(method, ResendCause::Answered, self.non_idempotent) || self.on_connect
    }

    pub fn should_retry(&self, result: &Result<Response<Incoming>, UpstreamCallError>) -> bool {
        match result {
            Ok(resp) => self.statuses.contains(&resp.status().as_u16()),
            Err(UpstreamCallError::Connect(_)) => self.on_connect,
            Err(UpstreamCallError::Timeout(_)) => self.on_timeout,
            Err(UpstreamCallError::Request(_)) => self.on_reset,
            // The client's own body failed: another try cannot help.
            Err(UpstreamCallError::Body(_)) => false,
            // Another try into a full upstream is the amplification the limit exists to stop.
            Err(UpstreamCallError::Overloaded(_)) => false,
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

/// The bounds [`TpsBudget::new`] asserts (it panics outside them); [`validate`] refuses a
/// config outside them, so the clamps only guard a policy built from an unchecked config.
const BUDGET_WINDOW: std::ops::RangeInclusive<Duration> = Duration::from_secs(1)..=Duration::from_secs(60);

fn budget(cfg: &RetryConfig) -> TpsBudget {
    let window = cfg
        .budget_window
        .clamp(*BUDGET_WINDOW.start(), *BUDGET_WINDOW.end());
    let min_per_sec = cfg.budget_min_per_sec.min(i32::MAX as u32 - 1);
    // `budget` is at most 1 after validation; tower takes the ratio as an f32 "percent" (0.2 is
    // 20 %) and spends 1/ratio, rounded down, deposits per retry.
    let ratio = cfg.budget.clamp(0.0, 1.0) as f32;
    TpsBudget::new(window, min_per_sec, ratio)
}

/// Checks an upstream's `retry` section: `(key, reason)`, the key relative to `retry`. The
/// budget's bounds are tower's, which panics outside them.
pub fn validate(cfg: &RetryConfig) -> Vec<(String, String)> {
    let mut bad = Vec::new();
    let mut add = |key: &str, reason: String| bad.push((key.to_string(), reason));
    if cfg.attempts > 10 {
        add("attempts", "at most 10".into());
    }
    if !(0.0..=1.0).contains(&cfg.budget) {
        add("budget", "must be between 0 and 1".into());
    }
    if cfg.per_try_timeout.is_some_and(|t| t.is_zero()) {
        add("per_try_timeout", "must be greater than zero".into());
    }
    if cfg.max_backoff < cfg.backoff {
        add("max_backoff", "must be at least backoff".into());
    }
    if cfg.budget_window < *BUDGET_WINDOW.start() {
        add("budget_window", "must be at least 1s".into());
    }
    for (j, c) in cfg.on.iter().enumerate() {
        match c {
            RetryCondition::Status(st) if !(100..=599).contains(st) => {
                add(&format!("on[{j}]"), format!("{st} is not an HTTP status"));
            }
            RetryCondition::Named(n) if !matches!(n.as_str(), "connect-error" | "reset" | "timeout") => add(
                &format!("on[{j}]"),
                format!("`{n}` is not a retry condition: use connect-error, reset, timeout or a status"),
            ),
            _ => {}
        }
    }
    if cfg.budget_window > *BUDGET_WINDOW.end() {
        add("budget_window", "must be at most 60s".into());
    }
    if cfg.budget_min_per_sec >= i32::MAX as u32 {
        add("budget_min_per_sec", format!("must be below {}", i32::MAX));
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_allows_ratio_of_requests_plus_floor() {
        let cfg = RetryConfig {
            budget: 0.2,
            budget_min_per_sec: 1,
            budget_window: Duration::from_secs(10),
            ..RetryConfig::default()
        };
        let p = RetryPolicy::new(&cfg, "t", &Metrics::new());
        for _ in 0..100 {
            p.record_request();
        }
        // 0.2 × 100 + 1 × 10 s = 30 retries.
        let granted = (0..100).filter(|_| p.withdraw()).count();
        assert_eq!(granted, 30);
    }

    #[test]
    fn a_budget_window_tower_would_refuse_is_a_config_error() {
        let cfg = RetryConfig {
            budget_window: Duration::from_secs(61),
            ..RetryConfig::default()
        };
        assert_eq!(
            validate(&cfg),
            vec![("budget_window".to_string(), "must be at most 60s".to_string())]
        );
        // Built anyway (unchecked), the policy clamps rather than panics.
        let _ = RetryPolicy::new(&cfg, "t", &Metrics::new());
        assert!(validate(&RetryConfig::default()).is_empty());
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
    fn non_idempotent_requests_are_resent_only_when_never_sent_or_opted_in() {
        for m in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::TRACE,
            Method::PUT,
            Method::DELETE,
        ] {
            assert!(may_resend(&m, ResendCause::Answered, false), "{m}");
            assert!(may_resend(&m, ResendCause::Interrupted, false), "{m}");
        }
        for m in [
            Method::POST,
            Method::PATCH,
            Method::CONNECT,
            Method::from_bytes(b"LOCK").unwrap(),
        ] {
            assert!(!may_resend(&m, ResendCause::Answered, false), "{m}");
            assert!(!may_resend(&m, ResendCause::Interrupted, false), "{m}");
            assert!(may_resend(&m, ResendCause::ConnectFailed, false), "{m}");
            assert!(may_resend(&m, ResendCause::BreakerRefused, false), "{m}");
            assert!(may_resend(&m, ResendCause::Answered, true), "{m}");
        }
    }
}
