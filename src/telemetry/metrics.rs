//! Metric names in one place, and a per-gateway Prometheus recorder.
//!
//! Each gateway owns its recorder (not the process-global one) so several gateways in one test
//! process keep separate numbers. Handles are registered once per config snapshot; the hot path
//! only bumps atomics.

use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::pipeline::context::Side;

pub const REQUESTS_TOTAL: &str = "ficus_requests_total";
pub const REQUEST_DURATION: &str = "ficus_request_duration_seconds";
pub const UPSTREAM_REQUEST_DURATION: &str = "ficus_upstream_request_duration_seconds";
pub const OPEN_CONNECTIONS: &str = "ficus_open_connections";
pub const CONNECTIONS_REJECTED: &str = "ficus_connections_rejected_total";
pub const CONFIG_RELOADS_TOTAL: &str = "ficus_config_reloads_total";
pub const CONFIG_LAST_RELOAD_SUCCESS: &str = "ficus_config_last_reload_success";
pub const TLS_CERT_EXPIRY: &str = "ficus_tls_cert_expiry_seconds";
pub const ACCESS_LOG_DROPPED: &str = "ficus_access_log_dropped_total";
pub const RETRIES_TOTAL: &str = "ficus_upstream_retries_total";
pub const RETRY_BUDGET_EXHAUSTED: &str = "ficus_retry_budget_exhausted_total";
pub const UPSTREAM_SHED: &str = "ficus_upstream_shed_total";
pub const UPSTREAM_QUEUED: &str = "ficus_upstream_queued";
pub const ENDPOINT_HEALTHY: &str = "ficus_upstream_endpoint_healthy";
pub const OUTLIER_EJECTIONS: &str = "ficus_outlier_ejections_total";
pub const FALLBACKS_TOTAL: &str = "ficus_fallbacks_total";
pub const SHADOW_COMPARISONS: &str = "ficus_shadow_comparisons_total";
pub const TRANSLATIONS: &str = "ficus_translations_total";
pub const CIRCUIT_STATE: &str = "ficus_circuit_state";
pub const CIRCUIT_TRANSITIONS: &str = "ficus_circuit_transitions_total";
pub const RATELIMIT_DECISIONS: &str = "ficus_ratelimit_decisions_total";
pub const RATELIMIT_STORE_ERRORS: &str = "ficus_ratelimit_store_errors_total";
pub const RATELIMIT_REDIS_DURATION: &str = "ficus_ratelimit_redis_duration_seconds";
pub const RATELIMIT_STORE_BREAKER_STATE: &str = "ficus_ratelimit_store_breaker_state";
pub const RATELIMIT_STORE_BREAKER_TRANSITIONS: &str = "ficus_ratelimit_store_breaker_transitions_total";
pub const INTROSPECTIONS: &str = "ficus_introspection_total";
pub const PANICS_TOTAL: &str = "ficus_panics_total";
pub const JWT_CACHE: &str = "ficus_jwt_cache_total";

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

static METADATA: Metadata<'static> = Metadata::new("ficus", metrics::Level::INFO, Some(module_path!()));

#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// Registered up front so the series reads 0, not absent, until something panics.
    panics: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        // The bucket list is a constant and valid, so this cannot fail; fall back to summaries if it did.
        let builder = PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let panics = recorder.register_counter(&key(PANICS_TOTAL, &[]), &METADATA);
        Self {
            inner: Arc::new(Inner {
                recorder,
                handle,
                panics,
            }),
        }
    }

    /// Requests whose handling panicked (answered 500 `internal-error`).
    pub fn panics(&self) -> &Counter {
        &self.inner.panics
    }

    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        self.inner
            .recorder
            .register_counter(&key(name, labels), &METADATA)
    }

    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        self.inner.recorder.register_gauge(&key(name, labels), &METADATA)
    }

    pub fn histogram(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Histogram {
        self.inner
            .recorder
            .register_histogram(&key(name, labels), &METADATA)
    }

    pub fn render(&self) -> String {
        self.inner.handle.render()
    }

    /// Drains histogram samples into buckets; without it they would pile up between scrapes.
    pub fn spawn_upkeep(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let handle = self.inner.handle.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        })
    }
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    let labels: Vec<Label> = labels
        .iter()
        .map(|(k, v)| Label::new(*k, v.to_string()))
        .collect();
    Key::from_parts(name, labels)
}

/// Method label values; anything else counts as `OTHER` so label cardinality stays bounded.
pub const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "OTHER",
];
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

pub fn method_index(m: &http::Method) -> usize {
    match *m {
        http::Method::GET => 0,
        http::Method::POST => 1,
        http::Method::PUT => 2,
        http::Method::DELETE => 3,
        http::Method::PATCH => 4,
        http::Method::HEAD => 5,
        http::Method::OPTIONS => 6,
        _ => 7,
    }
}

pub fn status_class_index(s: http::StatusCode) -> usize {
    (s.as_u16() / 100).clamp(1, 5) as usize - 1
}

/// Pre-registered handles for one route and the upstream serving it (one per migration side).
pub struct RouteMetrics {
    requests: Vec<Counter>,
    pub duration: Histogram,
}

impl RouteMetrics {
    /// `side` is `None` on a route without a migration: its duration is labelled `side="none"`,
    /// so the label takes three values at most per route.
    pub fn new(m: &Metrics, route: &str, upstream: &str, side: Option<Side>) -> Self {
        let mut requests = Vec::with_capacity(METHODS.len() * STATUS_CLASSES.len());
        for method in METHODS {
            for class in STATUS_CLASSES {
                requests.push(m.counter(
                    REQUESTS_TOTAL,
                    &[
                        ("route", route),
                        ("upstream", upstream),
                        ("method", method),
                        ("status_class", class),
                    ],
                ));
            }
        }
        let side = side.map_or("none", Side::label);
        let duration = m.histogram(REQUEST_DURATION, &[("route", route), ("side", side)]);
        Self { requests, duration }
    }

    pub fn record(&self, method: &http::Method, status: http::StatusCode, elapsed: Duration) {
        let i = method_index(method) * STATUS_CLASSES.len() + status_class_index(status);
        if let Some(c) = self.requests.get(i) {
            c.increment(1);
        }
        self.duration.record(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_metrics_count_by_method_and_status_class() {
        let m = Metrics::new();
        let rm = RouteMetrics::new(&m, "orders", "orders-legacy", Some(Side::Legacy));
        rm.record(&http::Method::GET, http::StatusCode::OK, Duration::from_millis(3));
        rm.record(
            &http::Method::from_bytes(b"PROPFIND").unwrap(),
            http::StatusCode::BAD_GATEWAY,
            Duration::ZERO,
        );
        let text = m.render();
        assert!(text.contains(
            r#"ficus_requests_total{route="orders",upstream="orders-legacy",method="GET",status_class="2xx"} 1"#
        ));
        assert!(text.contains(r#"method="OTHER",status_class="5xx"} 1"#));
        assert!(
            text.contains(r#"ficus_request_duration_seconds_count{route="orders",side="legacy"} 2"#),
            "{text}"
        );
    }
}
