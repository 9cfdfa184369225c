//! Shadow traffic: a copy of the request goes to the side that is not serving, the client waits
//! only for the primary, and the two answers are compared in one shape (status, chosen headers,
//! body). Concurrency and memory are bounded: when the shadow is saturated, the copy is dropped
//! and counted, never queued.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{HeaderName, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt as _;
use metrics::Counter;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use super::body::{RequestBody, ResponseBody, TeeBody};
use super::context::Side;
use super::diff::{diff_bodies, DiffRules, FieldDiff};
use crate::config::file::ShadowConfig;
use crate::telemetry::metrics::{Metrics, SHADOW_COMPARISONS};
use crate::upstream::Upstream;

pub const SHADOW_HEADER: HeaderName = HeaderName::from_static("x-ficus-shadow");
const RESULTS: [&str; 5] = ["match", "mismatch", "error", "timeout", "dropped"];
const RECENT: usize = 50;

pub struct Shadow {
    route: String,
    percent_bp: u32,
    allow_writes: bool,
    compare_headers: Vec<HeaderName>,
    rules: DiffRules,
    /// Headers named here show as `[REDACTED]` in diffs, whatever `record_values` says.
    redact: Arc<crate::telemetry::redact::Redactor>,
    pub timeout: Duration,
    pub max_body: u64,
    slots: Arc<Semaphore>,
    results: Arc<[Counter; 5]>,
    recent: Arc<Mutex<VecDeque<DiffRecord>>>,
    log: Option<Arc<Mutex<std::io::BufWriter<std::fs::File>>>>,
    rollout: Option<Arc<super::rollout::Rollout>>,
    matched: std::sync::atomic::AtomicU64,
    mismatched: std::sync::atomic::AtomicU64,
    history: Option<Arc<super::history::RouteHistory>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiffRecord {
    pub at: String,
    pub route: String,
    pub request_id: String,
    pub method: String,
    pub path: String,
    /// The side that served the client.
    pub primary: &'static str,
    pub primary_status: u16,
    pub shadow_status: u16,
    pub diffs: Vec<FieldDiff>,
}

/// The copy of a request the shadow side gets.
pub struct ShadowRequest {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub request_id: String,
    /// The request's span, which the shadow call's own trace links to.
    pub trace: Option<crate::telemetry::traces::Linked>,
    /// The shadow side's transform: the copy is translated to its dialect and its answer back.
    pub transform: Option<Arc<crate::translate::Transform>>,
    pub captures: Vec<(String, String)>,
}

impl Shadow {
    pub fn new(
        route: &str,
        cfg: &ShadowConfig,
        metrics: &Metrics,
        redact: Arc<crate::telemetry::redact::Redactor>,
    ) -> Result<Self, String> {
        let compare_headers = cfg
            .compare_headers
            .iter()
            .map(|h| HeaderName::from_bytes(h.as_bytes()).map_err(|_| format!("`{h}` is not a header name")))
            .collect::<Result<Vec<_>, _>>()?;
        let ignore = cfg
            .ignore
            .iter()
            .enumerate()
            .map(|(i, p)| {
                super::diff::ignore_rule(p)
                    .map(|(p, _)| p)
                    .map_err(|e| format!("ignore[{i}]: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let log = match &cfg.diff_log {
            None => None,
            Some(p) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| format!("cannot open {}: {e}", p.display()))?;
                Some(Arc::new(Mutex::new(std::io::BufWriter::new(f))))
            }
        };
        Ok(Self {
            route: route.to_string(),
            percent_bp: (cfg.percent * 100.0).round().clamp(0.0, 10_000.0) as u32,
            allow_writes: cfg.allow_writes,
            compare_headers,
            rules: DiffRules {
                ignore,
                numeric_tolerance: cfg.numeric_tolerance,
                ignore_array_order: cfg.ignore_array_order,
                redact_values: !cfg.record_values,
                redact: redact.json_paths.clone(),
            },
            redact,
            timeout: cfg.timeout,
            max_body: cfg.max_body_bytes.0,
            slots: Arc::new(Semaphore::new(cfg.max_concurrent)),
            results: Arc::new(
                RESULTS.map(|r| metrics.counter(SHADOW_COMPARISONS, &[("route", route), ("result", r)])),
            ),
            recent: Arc::new(Mutex::new(VecDeque::with_capacity(RECENT))),
            log,
            rollout: None,
            matched: Default::default(),
            mismatched: Default::default(),
            history: None,
        })
    }

    /// Comparisons feed the rollout's diff-rate guard.
    pub fn with_rollout(mut self, rollout: Option<Arc<super::rollout::Rollout>>) -> Self {
        self.rollout = rollout;
        self
    }

    /// Comparisons are also counted in the route's 10-second history.
    pub fn with_history(mut self, history: Arc<super::history::RouteHistory>) -> Self {
        self.history = Some(history);
        self
    }

    /// Whether this request gets a shadow copy: the sampled share, safe methods only unless
    /// writes are allowed.
    pub fn wanted(&self, method: &Method) -> bool {
        (self.allow_writes || method.is_safe()) && fastrand::u32(0..10_000) < self.percent_bp
    }

    /// A slot for one shadow call, or `None` (counted as dropped) when saturated.
    pub fn slot(&self) -> Option<OwnedSemaphorePermit> {
        let permit = self.slots.clone().try_acquire_owned().ok();
        if permit.is_none() {
            self.count("dropped");
        }
        permit
    }

    pub fn count(&self, result: &str) {
        if let Some(i) = RESULTS.iter().position(|r| *r == result) {
            self.results[i].increment(1);
        }
    }

    /// Comparisons (matched, mismatched) since this shadow started.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.matched.load(std::sync::atomic::Ordering::Relaxed),
            self.mismatched.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    pub fn recent(&self) -> Vec<DiffRecord> {
        self.recent.lock().iter().cloned().collect()
    }

    /// Wraps the primary response so its body is copied for the comparison, and starts the
    /// shadow call in the background. The primary is never delayed by it.
    pub fn launch(
        self: &Arc<Self>,
        slot: OwnedSemaphorePermit,
        req: ShadowRequest,
        upstream: Arc<Upstream>,
        primary_side: Side,
        primary: Response<ResponseBody>,
    ) -> Response<ResponseBody> {
        let (parts, body) = primary.into_parts();
        let (body, copy) = TeeBody::wrap(body, usize::try_from(self.max_body).unwrap_or(usize::MAX));
        let status = parts.status;
        let headers = parts.headers.clone();
        let me = self.clone();
        tokio::spawn(async move {
            let _slot = slot;
            me.compare(req, upstream, primary_side, status, headers, copy)
                .await;
        });
        Response::from_parts(parts, body)
    }

    async fn compare(
        &self,
        req: ShadowRequest,
        upstream: Arc<Upstream>,
        primary_side: Side,
        primary_status: StatusCode,
        primary_headers: HeaderMap,
        primary_body: oneshot::Receiver<Option<Bytes>>,
    ) {
        let (method, path, request_id) = (
            req.method.to_string(),
            req.uri.path().to_string(),
            req.request_id.clone(),
        );
        let mut req = req;
        let span = req.trace.take().map(|l| l.start(&upstream.name, &req.method));
        if let Some(s) = &span {
            req.headers.insert(super::context::TRACEPARENT, s.traceparent());
        }
        let shadow = tokio::time::timeout(self.timeout, call(&upstream, req, self.max_body)).await;
        if let Some(s) = span {
            match &shadow {
                Err(_) => s.finish(None, Some("timeout"), false),
                Ok(Err(_)) => s.finish(None, Some("error"), false),
                Ok(Ok(Some((status, _, _)))) => s.finish(Some(*status), None, false),
                Ok(Ok(None)) => s.finish(None, Some("dropped"), false),
            }
        }
        let (shadow_status, shadow_headers, shadow_body) = match shadow {
            Err(_) => return self.count("timeout"),
            Ok(Err(_)) => return self.count("error"),
            Ok(Ok(Some(s))) => s,
            Ok(Ok(None)) => return self.count("dropped"),
        };
        // The primary body is being streamed to the client; wait for its copy (bounded).
        let primary_body = match tokio::time::timeout(Duration::from_secs(60), primary_body).await {
            Ok(Ok(Some(b))) => b,
            _ => return self.count("dropped"),
        };
        let mut diffs = Vec::new();
        if primary_status != shadow_status {
            diffs.push(FieldDiff {
                path: "status".into(),
                primary: Some(primary_status.as_u16().to_string()),
                shadow: Some(shadow_status.as_u16().to_string()),
            });
        }
        for h in &self.compare_headers {
            let (a, b) = (primary_headers.get(h), shadow_headers.get(h));
            if a != b {
                let redact = self.rules.redact_values;
                let secret = self.redact.header(h.as_str());
                let show = |v: Option<&http::HeaderValue>| {
                    v.map(|v| match (secret, redact) {
                        (true, _) => crate::telemetry::redact::MARKER.to_string(),
                        (false, true) => super::diff::value_size(v.as_bytes()),
                        (false, false) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    })
                };
                diffs.push(FieldDiff {
                    path: format!("header {h}"),
                    primary: show(a),
                    shadow: show(b),
                });
            }
        }
        let ct = primary_headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        diffs.extend(diff_bodies(ct, &primary_body, &shadow_body, &self.rules));
        if let Some(r) = &self.rollout {
            r.record_comparison(!diffs.is_empty());
        }
        if let Some(h) = &self.history {
            h.record_comparison(!diffs.is_empty());
        }
        if diffs.is_empty() {
            self.matched.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return self.count("match");
        }
        self.mismatched.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let record = DiffRecord {
            at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            route: self.route.clone(),
            request_id,
            method,
            path,
            primary: primary_side.label(),
            primary_status: primary_status.as_u16(),
            shadow_status: shadow_status.as_u16(),
            diffs,
        };
        let line = self
            .log
            .as_ref()
            .and_then(|_| serde_json::to_string(&record).ok());
        {
            let mut recent = self.recent.lock();
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(record);
        }
        self.count("mismatch");
        if let (Some(log), Some(line)) = (&self.log, line) {
            let log = log.clone();
            let _ = tokio::task::spawn_blocking(move || {
                use std::io::Write as _;
                let mut w = log.lock();
                let _ = writeln!(w, "{line}");
                let _ = w.flush();
            })
            .await;
        }
    }
}

/// The shadow call: `Ok(None)` when its body is larger than the bound.
async fn call(
    upstream: &Upstream,
    req: ShadowRequest,
    max_body: u64,
) -> Result<Option<(StatusCode, HeaderMap, Bytes)>, String> {
    let mut req = req;
    if let Some(t) = &req.transform {
        let (mut parts, ()) = Request::new(()).into_parts();
        parts.method = std::mem::take(&mut req.method);
        parts.uri = std::mem::take(&mut req.uri);
        parts.headers = std::mem::take(&mut req.headers);
        let body = std::mem::take(&mut req.body);
        req.body = crate::translate::driver::request(t, &mut parts, &req.captures, body)
            .await
            .map_err(|e| e.to_string())?
            .into_bytes();
        (req.method, req.uri, req.headers) = (parts.method, parts.uri, parts.headers);
    }
    let picked = upstream.endpoints.pick(None).ok_or("no endpoints")?;
    let e = picked.endpoint();
    let pq = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let uri: Uri = format!("{}{pq}", e)
        .parse()
        .map_err(|e: http::uri::InvalidUri| e.to_string())?;
    let mut r = Request::new(if req.body.is_empty() {
        RequestBody::Empty
    } else {
        RequestBody::Full(Some(req.body))
    });
    *r.method_mut() = req.method;
    *r.uri_mut() = uri;
    *r.version_mut() = Version::HTTP_11;
    *r.headers_mut() = req.headers;
    let transform = req.transform;
    r.headers_mut()
        .insert(SHADOW_HEADER, http::HeaderValue::from_static("1"));
    let resp = upstream
        .call_within(r, Duration::from_secs(3600))
        .await
        .map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    match http_body_util::Limited::new(body, usize::try_from(max_body).unwrap_or(usize::MAX))
        .collect()
        .await
    {
        Ok(b) => {
            let (mut parts, mut body) = (parts, b.to_bytes());
            if let Some(t) = &transform {
                // Translated back, so that both answers are compared in the modern shape.
                body = crate::translate::driver::response(t, &mut parts, body)
                    .await
                    .map_err(|e| e.to_string())?
                    .into_bytes();
            }
            Ok(Some((parts.status, parts.headers, body)))
        }
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}
