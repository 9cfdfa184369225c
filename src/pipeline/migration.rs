//! Stage 8: the strangler-fig split. A route with a migration has a legacy and a modern side;
//! each request is placed on one of them by a sticky key (consistent hashing into 10 000
//! buckets, so raising `modern_percent` only ever moves keys from legacy to modern), by an
//! allow-list of cohorts, or at random when it carries no key. A failed modern call on a
//! retryable request can fall back to legacy.

pub mod compile;

use std::collections::HashSet;
use std::sync::Arc;

use http::header::HeaderName;
use http::HeaderValue;
use metrics::Counter;

use super::context::Side;
use super::key::fnv1a;
use super::key::{KeyFacts, KeySource, Parsed, RequestKey};
use crate::config::file::MigrationConfig;
use crate::telemetry::metrics::{Metrics, RouteMetrics, FALLBACKS_TOTAL};
use crate::upstream::Upstream;

/// Parses `sticky`, spelled like every request key. `route` is refused: every request of the
/// route would land on one side, which `modern_percent` 0 or 100 says plainly.
pub fn parse_sticky(s: &str) -> Result<Parsed, String> {
    RequestKey::parse(s)?.refuse(
        |k| *k == KeySource::Route,
        "would put every request of the route on one side: use modern_percent 0 or 100 for that",
    )
}

pub struct Migration {
    pub modern: Arc<Upstream>,
    pub modern_metrics: RouteMetrics,
    /// Out of 10 000.
    modern_basis_points: u32,
    sticky: Option<RequestKey>,
    cohorts: HashSet<String>,
    pub fallback: bool,
    pub fallback_max_body: u64,
    /// `fallback_non_idempotent`: any method may be resent to legacy.
    pub fallback_non_idempotent: bool,
    salt: String,
    fallbacks: [Counter; 4],
    pub shadow: Option<Arc<super::shadow::Shadow>>,
    pub rollout: Option<Arc<super::rollout::Rollout>>,
    pub override_header: Option<Override>,
    /// The last minute of traffic per side, for `GET /admin/migration`.
    pub legacy_stats: WindowStats,
    pub modern_stats: WindowStats,
}

/// Requests, 5xx answers and latencies over the last `WINDOW_SECS` seconds, in one-second
/// buckets (latency samples capped per bucket, so memory stays bounded under load).
pub struct WindowStats {
    epoch: std::time::Instant,
    buckets: parking_lot::Mutex<Vec<StatBucket>>,
}

#[derive(Default, Clone)]
struct StatBucket {
    second: u64,
    requests: u64,
    errors: u64,
    latencies_us: Vec<u32>,
}

const WINDOW_SECS: u64 = 60;
const SAMPLES_PER_SECOND: usize = 200;

#[derive(Debug, Clone, serde::Serialize)]
pub struct SideSummary {
    pub requests: u64,
    pub error_rate: f64,
    pub p99_ms: f64,
}

impl Default for WindowStats {
    fn default() -> Self {
        Self {
            epoch: std::time::Instant::now(),
            buckets: parking_lot::Mutex::new(vec![
                StatBucket {
                    second: u64::MAX,
                    ..Default::default()
                };
                WINDOW_SECS as usize
            ]),
        }
    }
}

impl WindowStats {
    pub fn record(&self, server_error: bool, latency: std::time::Duration) {
        let second = self.epoch.elapsed().as_secs();
        let mut g = self.buckets.lock();
        let b = &mut g[(second % WINDOW_SECS) as usize];
        if b.second != second {
            *b = StatBucket {
                second,
                ..Default::default()
            };
        }
        b.requests += 1;
        b.errors += u64::from(server_error);
        if b.latencies_us.len() < SAMPLES_PER_SECOND {
            b.latencies_us
                .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
        }
    }

    pub fn summary(&self) -> SideSummary {
        let now = self.epoch.elapsed().as_secs();
        let g = self.buckets.lock();
        let live = g
            .iter()
            .filter(|b| b.second != u64::MAX && now.saturating_sub(b.second) < WINDOW_SECS);
        let (mut requests, mut errors, mut lat) = (0, 0, Vec::new());
        for b in live {
            requests += b.requests;
            errors += b.errors;
            lat.extend_from_slice(&b.latencies_us);
        }
        lat.sort_unstable();
        let p99_ms = match lat.len() {
            0 => 0.0,
            n => f64::from(lat[((n as f64 * 0.99).ceil() as usize).clamp(1, n) - 1]) / 1000.0,
        };
        SideSummary {
            requests,
            error_rate: if requests == 0 {
                0.0
            } else {
                errors as f64 / requests as f64
            },
            p99_ms,
        }
    }
}

pub const FALLBACK_REASONS: [&str; 4] = ["connect-error", "timeout", "5xx", "circuit-open"];

impl Migration {
    pub fn new(
        route: &str,
        cfg: &MigrationConfig,
        modern: Arc<Upstream>,
        sticky: Option<RequestKey>,
        shadow: Option<super::shadow::Shadow>,
        rollout: Option<Arc<super::rollout::Rollout>>,
        metrics: &Metrics,
    ) -> Self {
        let fallbacks =
            FALLBACK_REASONS.map(|r| metrics.counter(FALLBACKS_TOTAL, &[("route", route), ("reason", r)]));
        match &rollout {
            Some(ro) => ro.attach_metrics(metrics),
            None => crate::telemetry::metrics::set_modern_percent(metrics, route, cfg.modern_percent),
        }
        Self {
            modern_metrics: RouteMetrics::new(metrics, route, &modern.name, Some(Side::Modern)),
            modern,
            modern_basis_points: (cfg.modern_percent * 100.0).round().clamp(0.0, 10_000.0) as u32,
            sticky,
            cohorts: cfg.cohorts.iter().cloned().collect(),
            fallback: cfg.fallback_to_legacy,
            fallback_max_body: cfg.fallback_max_body_bytes.0,
            fallback_non_idempotent: cfg.fallback_non_idempotent,
            // Per route, so that the same user is not in the first 10% of every route at once.
            salt: route.to_string(),
            fallbacks,
            shadow: shadow.map(|s| {
                Arc::new(
                    s.with_rollout(rollout.clone())
                        .with_history(metrics.route_history(route)),
                )
            }),
            rollout,
            override_header: cfg.override_header.as_ref().and_then(|o| {
                Some(Override {
                    header: HeaderName::from_bytes(o.header.as_bytes()).ok()?,
                    scope: o.require_scope.clone(),
                    claim: o
                        .require_claim
                        .as_ref()
                        .map(|c| (c.name.clone(), c.equals.clone())),
                })
            }),
            legacy_stats: WindowStats::default(),
            modern_stats: WindowStats::default(),
        }
    }

    pub fn modern_percent(&self) -> f64 {
        f64::from(self.basis_points()) / 100.0
    }

    /// The rollout's current stage when there is one, else the configured percent.
    fn basis_points(&self) -> u32 {
        self.rollout
            .as_ref()
            .map_or(self.modern_basis_points, |r| r.percent_bp())
    }

    /// Places one request.
    pub fn choose(&self, facts: &KeyFacts<'_>, overrides: &[(HeaderName, HeaderValue)]) -> Side {
        if let (Some(o), Some(c)) = (&self.override_header, facts.claims) {
            if let Some(side) = o.pick(overrides, c) {
                return side;
            }
        }
        let key = self.sticky.as_ref().and_then(|s| s.text(facts));
        let bucket = match &key {
            Some(k) if self.cohorts.contains(k) => return Side::Modern,
            Some(k) => bucket_of(&self.salt, k),
            None => fastrand::u32(0..10_000),
        };
        if bucket < self.basis_points() {
            Side::Modern
        } else {
            Side::Legacy
        }
    }

    pub fn count_fallback(&self, reason: &str) {
        if let Some(i) = FALLBACK_REASONS.iter().position(|r| *r == reason) {
            self.fallbacks[i].increment(1);
        }
    }
}

/// `X-Ficus-Backend: modern` (or `legacy`), honoured only for callers with the scope or claim.
pub struct Override {
    pub header: HeaderName,
    scope: Option<String>,
    claim: Option<(String, String)>,
}

impl Override {
    /// `overrides` holds the override headers the trust boundary took out of the request.
    fn pick(
        &self,
        overrides: &[(HeaderName, HeaderValue)],
        claims: &crate::identity::jwt::Claims,
    ) -> Option<Side> {
        let value = overrides
            .iter()
            .find(|(n, _)| *n == self.header)
            .map(|(_, v)| v)?;
        let side = match value.to_str().ok()?.trim() {
            v if v.eq_ignore_ascii_case("modern") => Side::Modern,
            v if v.eq_ignore_ascii_case("legacy") => Side::Legacy,
            _ => return None,
        };
        let by_scope = self.scope.as_ref().is_some_and(|s| claims.scopes().contains(s));
        let by_claim = self
            .claim
            .as_ref()
            .is_some_and(|(n, v)| claims.get_str(n).as_deref() == Some(v.as_str()));
        (by_scope || by_claim).then_some(side)
    }
}

/// The key's place in 0..10 000; a key in bucket b is on modern exactly when b < percent × 100,
/// so raising the percent moves keys one way only.
pub fn bucket_of(salt: &str, key: &str) -> u32 {
    let mut bytes = Vec::with_capacity(salt.len() + key.len() + 1);
    bytes.extend_from_slice(salt.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(key.as_bytes());
    (fnv1a(&bytes) % 10_000) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_spread_evenly() {
        let below = (0..10_000)
            .filter(|i| bucket_of("r", &format!("user-{i}")) < 3_000)
            .count();
        assert!((2_700..3_300).contains(&below), "{below} of 10000 keys under 30%");
    }

    #[test]
    fn route_is_no_sticky_key() {
        let err = parse_sticky("route").unwrap_err();
        assert!(err.starts_with("`route` would put every request"), "{err}");
        assert!(parse_sticky("header:x-user").is_ok());
        assert!(parse_sticky("jwt").is_err());
    }
}
