//! Metric names in one place, and a per-gateway Prometheus recorder.
//!
//! Each gateway owns its recorder (not the process-global one) so several gateways in one test
//! process keep separate numbers. Handles are registered once per config snapshot; the hot path
//! only bumps atomics.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

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
pub const MIGRATION_MODERN_PERCENT: &str = "ficus_migration_modern_percent";
pub const ROLLOUT_STAGE: &str = "ficus_rollout_stage";
pub const ROLLOUT_LAST_GOOD_PERCENT: &str = "ficus_rollout_last_good_percent";
pub const ROLLOUT_EVENTS: &str = "ficus_rollout_events_total";
pub const ROLLOUT_WEBHOOKS: &str = "ficus_rollout_webhooks_total";

/// OpenTelemetry HTTP semantic conventions, under the names the OTel Prometheus exporter gives
/// `http.server.request.duration` and `http.client.request.duration`.
pub const HTTP_SERVER_DURATION: &str = "http_server_request_duration_seconds";
pub const HTTP_CLIENT_DURATION: &str = "http_client_request_duration_seconds";

/// The semantic conventions' advised buckets for both HTTP duration histograms.
pub const OTEL_HTTP_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

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
    /// Per route name, like the series above: a reload keeps the hour already recorded.
    history: crate::pipeline::history::Registry,
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
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(HTTP_SERVER_DURATION.into()), OTEL_HTTP_BUCKETS)
            })
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(HTTP_CLIENT_DURATION.into()), OTEL_HTTP_BUCKETS)
            })
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let panics = recorder.register_counter(&key(PANICS_TOTAL, &[]), &METADATA);
        Self {
            inner: Arc::new(Inner {
                recorder,
                handle,
                panics,
                history: Default::default(),
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

    /// The route's 10-second history (`GET /admin/history`), shared by every snapshot.
    pub fn route_history(&self, route: &str) -> Arc<crate::pipeline::history::RouteHistory> {
        self.inner.history.route(route)
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

/// `http_request_method` values of the semantic conventions: the known methods, anything else
/// `_OTHER`, so a client cannot mint label values.
pub const SEMCONV_METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "_OTHER",
];

pub fn semconv_method_index(m: &http::Method) -> u16 {
    match *m {
        http::Method::GET => 0,
        http::Method::HEAD => 1,
        http::Method::POST => 2,
        http::Method::PUT => 3,
        http::Method::DELETE => 4,
        http::Method::CONNECT => 5,
        http::Method::OPTIONS => 6,
        http::Method::TRACE => 7,
        http::Method::PATCH => 8,
        _ => 9,
    }
}

/// `error_type` of a client call that got no response (semconv `error.type`).
pub const CLIENT_ERROR_TYPES: [&str; 4] = ["connect", "timeout", "request", "body"];

/// What one HTTP duration sample is labelled with besides the fixed labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response with this status (100-999, as `http::StatusCode` allows).
    Status(http::StatusCode),
    /// No response; an index into [`CLIENT_ERROR_TYPES`].
    Error(usize),
}

impl Outcome {
    fn code(self) -> u16 {
        match self {
            Outcome::Status(s) => s.as_u16(),
            Outcome::Error(i) => 1000 + i.min(CLIENT_ERROR_TYPES.len() - 1) as u16,
        }
    }
}

/// A histogram labelled by method and exact status code on top of fixed labels. The handle for
/// each (method, status) pair is registered the first time the pair is seen, not up front: a
/// route sees a handful of pairs out of 10 methods x 900 codes, and every registered histogram
/// is rendered on every scrape. After the first sample of a pair, recording is a lock-free
/// load and a scan of a short list, without allocation.
pub struct StatusHistograms {
    metrics: Metrics,
    name: &'static str,
    fixed: Vec<(&'static str, String)>,
    seen: ArcSwap<Vec<(u32, Histogram)>>,
    adding: parking_lot::Mutex<()>,
}

impl StatusHistograms {
    pub fn new(metrics: &Metrics, name: &'static str, fixed: &[(&'static str, &str)]) -> Self {
        Self {
            metrics: metrics.clone(),
            name,
            fixed: fixed.iter().map(|(k, v)| (*k, (*v).to_string())).collect(),
            seen: ArcSwap::from_pointee(Vec::new()),
            adding: parking_lot::Mutex::new(()),
        }
    }

    pub fn record(&self, method: u16, outcome: Outcome, elapsed: Duration) {
        let key = (u32::from(method) << 16) | u32::from(outcome.code());
        let secs = elapsed.as_secs_f64();
        if let Some((_, h)) = self.seen.load().iter().find(|(k, _)| *k == key) {
            h.record(secs);
            return;
        }
        self.register(key, method, outcome).record(secs);
    }

    #[cold]
    fn register(&self, key: u32, method: u16, outcome: Outcome) -> Histogram {
        let _one = self.adding.lock();
        if let Some((_, h)) = self.seen.load().iter().find(|(k, _)| *k == key) {
            return h.clone();
        }
        let method = SEMCONV_METHODS
            .get(usize::from(method))
            .copied()
            .unwrap_or("_OTHER");
        let code;
        let mut labels: Vec<(&'static str, &str)> =
            self.fixed.iter().map(|(k, v)| (*k, v.as_str())).collect();
        labels.push(("http_request_method", method));
        match outcome {
            Outcome::Status(s) => {
                code = s.as_u16().to_string();
                labels.push(("http_response_status_code", &code));
            }
            Outcome::Error(i) => {
                labels.push((
                    "error_type",
                    CLIENT_ERROR_TYPES[i.min(CLIENT_ERROR_TYPES.len() - 1)],
                ));
            }
        }
        let h = self.metrics.histogram(self.name, &labels);
        let mut next = Vec::clone(&self.seen.load());
        next.push((key, h.clone()));
        self.seen.store(Arc::new(next));
        h
    }
}

/// Pre-registered handles for one route and the upstream serving it (one per migration side).
pub struct RouteMetrics {
    requests: Vec<Counter>,
    pub duration: Histogram,
    server: StatusHistograms,
}

impl RouteMetrics {
    /// `side` is `None` on a route without a migration: its durations are labelled
    /// `side="none"`, so the label takes three values at most per route. `ficus_requests_total`
    /// keeps its label set (dashboards and alerts match on it); errors by side come from
    /// `http_server_request_duration_seconds_count`, which has the side and the status code.
    /// `route` is the configured name (`unmatched` with no upstream for requests no route
    /// took: those carry no `http_route`, as the semantic conventions ask).
    pub fn new(m: &Metrics, route: &str, upstream: &str, side: Option<Side>) -> Self {
        let side = side.map_or("none", Side::label);
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
        let duration = m.histogram(REQUEST_DURATION, &[("route", route), ("side", side)]);
        let server = if route == "unmatched" && upstream.is_empty() {
            StatusHistograms::new(m, HTTP_SERVER_DURATION, &[("side", side)])
        } else {
            StatusHistograms::new(m, HTTP_SERVER_DURATION, &[("http_route", route), ("side", side)])
        };
        Self {
            requests,
            duration,
            server,
        }
    }

    pub fn record(&self, method: &http::Method, status: http::StatusCode, elapsed: Duration) {
        let i = method_index(method) * STATUS_CLASSES.len() + status_class_index(status);
        if let Some(c) = self.requests.get(i) {
            c.increment(1);
        }
        self.duration.record(elapsed.as_secs_f64());
        self.server
            .record(semconv_method_index(method), Outcome::Status(status), elapsed);
    }
}

/// Where a rollout stands, as `ficus_rollout_stage` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutStage {
    Advancing = 0,
    Paused = 1,
    RolledBack = 2,
    Complete = 3,
    AwaitingApproval = 4,
}

/// Why a rollout moved (`ficus_rollout_events_total{reason}`).
pub const ROLLOUT_REASONS: [&str; 13] = [
    "advanced",
    "rollback_error_rate",
    "rollback_p99",
    "rollback_diff_rate",
    "paused",
    "resumed",
    "set",
    "rollback_error_rate_increase",
    "rollback_p99_ratio",
    "rollback_admin",
    "check_failed",
    "approval_needed",
    "approved",
];

/// A migration route's split and its rollout's stage and events.
pub struct RolloutMetrics {
    modern_percent: Gauge,
    stage: Gauge,
    last_good: Gauge,
    events: [Counter; ROLLOUT_REASONS.len()],
}

impl RolloutMetrics {
    pub fn new(m: &Metrics, route: &str) -> Self {
        let labels = [("route", route)];
        Self {
            modern_percent: m.gauge(MIGRATION_MODERN_PERCENT, &labels),
            stage: m.gauge(ROLLOUT_STAGE, &labels),
            last_good: m.gauge(ROLLOUT_LAST_GOOD_PERCENT, &labels),
            events: ROLLOUT_REASONS.map(|r| m.counter(ROLLOUT_EVENTS, &[("route", route), ("reason", r)])),
        }
    }

    pub fn set(&self, percent_bp: u32, last_good_bp: u32, stage: RolloutStage) {
        self.modern_percent.set(f64::from(percent_bp) / 100.0);
        self.last_good.set(f64::from(last_good_bp) / 100.0);
        self.stage.set(stage as u8 as f64);
    }

    /// `reason` is one of [`ROLLOUT_REASONS`].
    pub fn event(&self, reason: &str) {
        if let Some(i) = ROLLOUT_REASONS.iter().position(|r| *r == reason) {
            self.events[i].increment(1);
        }
    }
}

/// The split of a migration route without a rollout (fixed until the next reload).
pub fn set_modern_percent(m: &Metrics, route: &str, percent: f64) {
    m.gauge(MIGRATION_MODERN_PERCENT, &[("route", route)])
        .set(percent);
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

    fn upkeep_and_render(m: &Metrics) -> String {
        m.inner.handle.run_upkeep();
        m.render()
    }

    #[test]
    fn server_duration_has_semconv_labels_and_otel_buckets() {
        let m = Metrics::new();
        let rm = RouteMetrics::new(&m, "orders", "orders-modern", Some(Side::Modern));
        rm.record(
            &http::Method::POST,
            http::StatusCode::CREATED,
            Duration::from_millis(60),
        );
        let text = upkeep_and_render(&m);
        let series = |le: &str| {
            format!(
                r#"http_server_request_duration_seconds_bucket{{http_route="orders",side="modern",http_request_method="POST",http_response_status_code="201",le="{le}"}}"#
            )
        };
        assert!(text.contains(&format!("{} 0", series("0.05"))), "{text}");
        assert!(text.contains(&format!("{} 1", series("0.075"))), "{text}");
        assert!(text.contains(&format!("{} 1", series("10"))), "{text}");
        assert!(
            !text.contains(&series("30")),
            "the OTel buckets stop at 10 s: {text}"
        );
        // The ficus histogram keeps its own buckets.
        assert!(
            text.contains(r#"ficus_request_duration_seconds_bucket{route="orders",side="modern",le="30"} 1"#)
        );
    }

    #[test]
    fn methods_outside_the_known_set_share_one_other_label() {
        let m = Metrics::new();
        let rm = RouteMetrics::new(&m, "orders", "up", None);
        for method in ["PROPFIND", "X-ANYTHING", "BREW"] {
            rm.record(
                &http::Method::from_bytes(method.as_bytes()).unwrap(),
                http::StatusCode::NOT_FOUND,
                Duration::ZERO,
            );
        }
        let text = upkeep_and_render(&m);
        assert!(
            text.contains(r#"http_server_request_duration_seconds_count{http_route="orders",side="none",http_request_method="_OTHER",http_response_status_code="404"} 3"#),
            "{text}"
        );
        for method in ["PROPFIND", "X-ANYTHING", "BREW"] {
            assert!(!text.contains(method), "{method} became a label value: {text}");
        }
    }

    #[test]
    fn status_histograms_register_each_pair_once() {
        let m = Metrics::new();
        let h = StatusHistograms::new(&m, HTTP_CLIENT_DURATION, &[("server_address", "billing")]);
        for _ in 0..5 {
            h.record(0, Outcome::Status(http::StatusCode::OK), Duration::from_millis(1));
        }
        h.record(2, Outcome::Error(1), Duration::from_secs(3));
        assert_eq!(h.seen.load().len(), 2);
        let text = upkeep_and_render(&m);
        assert!(text.contains(
            r#"http_client_request_duration_seconds_count{server_address="billing",http_request_method="GET",http_response_status_code="200"} 5"#
        ), "{text}");
        assert!(text.contains(
            r#"http_client_request_duration_seconds_count{server_address="billing",http_request_method="POST",error_type="timeout"} 1"#
        ), "{text}");
    }

    #[test]
    fn unused_pairs_are_not_rendered() {
        let m = Metrics::new();
        let _rm = RouteMetrics::new(&m, "orders", "up", None);
        let text = upkeep_and_render(&m);
        assert!(!text.contains(HTTP_SERVER_DURATION), "{text}");
    }

    #[test]
    fn rollout_metrics_set_gauges_and_count_known_reasons_only() {
        let m = Metrics::new();
        let rm = RolloutMetrics::new(&m, "orders");
        rm.set(2_500, 1_000, RolloutStage::RolledBack);
        rm.event("rollback_p99");
        rm.event("made-up");
        let text = m.render();
        assert!(
            text.contains(r#"ficus_migration_modern_percent{route="orders"} 25"#),
            "{text}"
        );
        assert!(
            text.contains(r#"ficus_rollout_last_good_percent{route="orders"} 10"#),
            "{text}"
        );
        assert!(
            text.contains(r#"ficus_rollout_stage{route="orders"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"ficus_rollout_events_total{route="orders",reason="rollback_p99"} 1"#));
        assert!(text.contains(r#"ficus_rollout_events_total{route="orders",reason="advanced"} 0"#));
        assert!(!text.contains("made-up"));
    }
}
