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
use super::diff::{diff_bodies, DiffKind, DiffRules, FieldDiff};
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
    /// Both answers of each comparison also feed the route's contract report.
    contract: std::sync::OnceLock<Arc<super::contract::Contract>>,
    /// `shadow.noise.sample` in basis points (0: no noise learning), and as configured.
    noise_bp: u32,
    noise_percent: f64,
    learning: Arc<Learning>,
    history: Option<Arc<super::history::RouteHistory>>,
}

/// What a shadowed route learns from its comparisons: the noise fields and the drift window.
/// Kept across a reload that leaves the route's shadow and its sides unchanged.
#[derive(Default)]
pub struct Learning {
    pub noise: super::noise::Learned,
    pub drift: super::drift::Drift,
}

/// A second copy of the request for the serving side (noise learning), and that side.
pub type Again = (ShadowRequest, Arc<Upstream>);

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
            contract: Default::default(),
            noise_bp: cfg
                .noise
                .as_ref()
                .map_or(0, |n| super::noise::basis_points(n.sample)),
            noise_percent: cfg.noise.as_ref().map_or(0.0, |n| n.sample),
            learning: Arc::new(Learning::default()),
            history: None,
        })
    }

    /// Noise and drift state carried from the previous config.
    pub fn with_learning(mut self, learning: Arc<Learning>) -> Self {
        self.learning = learning;
        self
    }

    pub fn route(&self) -> &str {
        &self.route
    }

    /// Whether this shadowed request also goes to the serving side a second time, to learn
    /// noise: the sampled share of `shadow.noise.sample`, safe methods unless writes are allowed.
    pub fn noise_wanted(&self, method: &Method) -> bool {
        (self.allow_writes || method.is_safe()) && super::noise::sampled(self.noise_bp)
    }

    /// `GET /admin/noise`.
    pub fn noise_report(&self) -> super::noise::Report {
        self.learning.noise.report(&self.route, self.noise_percent)
    }

    /// `GET /admin/drift`.
    pub fn drift_report(&self) -> super::drift::Report {
        self.learning.drift.report(&self.route)
    }

    pub fn drift(&self) -> &super::drift::Drift {
        &self.learning.drift
    }

    /// Comparisons feed the rollout's diff-rate guard.
    pub fn with_rollout(mut self, rollout: Option<Arc<super::rollout::Rollout>>) -> Self {
        self.rollout = rollout;
        self
    }

    pub fn set_contract(&self, c: Arc<super::contract::Contract>) {
        let _ = self.contract.set(c);
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
    /// shadow call in the background. The primary is never delayed by it. `again`, when noise
    /// learning sampled this request, goes to the serving side in the same task, within the
    /// same concurrency bound: without a free slot it is dropped (and counted).
    pub fn launch(
        self: &Arc<Self>,
        slot: OwnedSemaphorePermit,
        req: ShadowRequest,
        upstream: Arc<Upstream>,
        primary_side: Side,
        primary: Response<ResponseBody>,
        again: Option<Again>,
    ) -> Response<ResponseBody> {
        let (parts, body) = primary.into_parts();
        let (body, copy) = TeeBody::wrap(body, usize::try_from(self.max_body).unwrap_or(usize::MAX));
        let status = parts.status;
        let headers = parts.headers.clone();
        let again = again.and_then(|(req, up)| match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Some((req, up, permit)),
            Err(_) => {
                self.learning.noise.dropped();
                None
            }
        });
        let me = self.clone();
        tokio::spawn(async move {
            let _slot = slot;
            me.compare(req, upstream, primary_side, status, headers, copy, again)
                .await;
        });
        Response::from_parts(parts, body)
    }

    /// Where two answers differ in the compared headers and the body (not the status).
    fn field_diffs(
        &self,
        a_headers: &HeaderMap,
        a_body: &[u8],
        b_headers: &HeaderMap,
        b_body: &[u8],
    ) -> Vec<FieldDiff> {
        let mut diffs = Vec::new();
        for h in &self.compare_headers {
            let (a, b) = (a_headers.get(h), b_headers.get(h));
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
                    kind: DiffKind::of_presence(a.is_some(), b.is_some()),
                });
            }
        }
        let ct = a_headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        diffs.extend(diff_bodies(ct, a_body, b_body, &self.rules));
        diffs
    }

    #[allow(clippy::too_many_arguments)]
    async fn compare(
        &self,
        req: ShadowRequest,
        upstream: Arc<Upstream>,
        primary_side: Side,
        primary_status: StatusCode,
        primary_headers: HeaderMap,
        primary_body: oneshot::Receiver<Option<Bytes>>,
        again: Option<(ShadowRequest, Arc<Upstream>, OwnedSemaphorePermit)>,
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
        let request_body = self.contract.get().map(|_| req.body.clone());
        // The serving side's second answer, asked for at the same time as the shadow's.
        let second = async {
            let (req, up, slot) = again?;
            let answer = tokio::time::timeout(self.timeout, call(&up, req, self.max_body)).await;
            drop(slot);
            Some(answer)
        };
        let (shadow, second) = tokio::join!(
            tokio::time::timeout(self.timeout, call(&upstream, req, self.max_body)),
            second
        );
        let second = match second {
            None => None,
            Some(Ok(Ok(Some(answer)))) => Some(answer),
            Some(_) => {
                self.learning.noise.failed();
                None
            }
        };
        if let Some(s) = span {
            match &shadow {
                Err(_) => s.finish(None, Some("timeout"), false),
                Ok(Err(_)) => s.finish(None, Some("error"), false),
                Ok(Ok(Some((status, _, _)))) => s.finish(Some(*status), None, false),
                Ok(Ok(None)) => s.finish(None, Some("dropped"), false),
            }
        }
        let shadow = match shadow {
            Err(_) => Err("timeout"),
            Ok(Err(_)) => Err("error"),
            Ok(Ok(Some(s))) => Ok(s),
            Ok(Ok(None)) => Err("dropped"),
        };
        if let (Err(result), None) = (&shadow, &second) {
            return self.count(result);
        }
        // The primary body is being streamed to the client; wait for its copy (bounded).
        let primary_body = match tokio::time::timeout(Duration::from_secs(60), primary_body).await {
            Ok(Ok(Some(b))) => b,
            _ => {
                if second.is_some() {
                    self.learning.noise.failed();
                }
                return self.count(shadow.err().unwrap_or("dropped"));
            }
        };
        // Noise first, so that this very comparison already leaves out what the pair shows.
        if let Some((status, headers, body)) = &second {
            if *status == primary_status {
                let pair = self.field_diffs(&primary_headers, &primary_body, headers, body);
                self.learning.noise.learn(&pair);
            } else {
                self.learning.noise.status_differed();
            }
        }
        let (shadow_status, shadow_headers, shadow_body) = match shadow {
            Err(result) => return self.count(result),
            Ok(s) => s,
        };
        if let (Some(c), Some(rb)) = (self.contract.get(), &request_body) {
            let answers = [
                (primary_status, &primary_headers, &primary_body),
                (shadow_status, &shadow_headers, &shadow_body),
            ];
            c.offer_pair(primary_side, rb, answers);
        }
        let (mut diffs, _) = self.learning.noise.filter(self.field_diffs(
            &primary_headers,
            &primary_body,
            &shadow_headers,
            &shadow_body,
        ));
        if primary_status != shadow_status {
            diffs.insert(
                0,
                FieldDiff {
                    path: "status".into(),
                    primary: Some(primary_status.as_u16().to_string()),
                    shadow: Some(shadow_status.as_u16().to_string()),
                    kind: DiffKind::ValueDiffers,
                },
            );
        }
        self.learning.drift.record(&diffs);
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
