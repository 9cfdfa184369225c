//! The contract report: the JSON shape each side of a route answers with, as clients see it
//! (after translation), learned from traffic, and the differences between legacy and modern that
//! would break a client written against legacy (`GET /admin/contract?route=NAME`).
//!
//! Bodies come from two places: the shadow comparison, which holds both sides' answers to the
//! same request, and, when the route's `contract.sample_percent` asks for it, a sample of the
//! answers each side serves (copied by [`TeeBody`] as they stream to the client). Learning never
//! happens on the request path: samples go through a bounded channel to one background task per
//! route; when it is full they are dropped and counted. A route with neither a shadow nor contract
//! sampling has no [`Contract`] at all.

pub mod cli;
pub mod compare;
pub mod shape;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, Response};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::body::{ResponseBody, TeeBody};
use super::context::Side;
use crate::config::carry::Carry;
use shape::Learned;

/// Samples waiting to be learned from, per route; past it they are dropped.
const QUEUE: usize = 256;
/// Distinct status codes kept per side.
const MAX_STATUSES: usize = 32;

/// One observed exchange, as the client saw it.
pub struct Sample {
    pub side: Side,
    pub status: u16,
    /// The response body, when it is JSON (or unlabelled) and within the size bound.
    pub response: Option<Bytes>,
    /// The request body, when one was seen.
    pub request: Option<Bytes>,
}

/// What was learned of one side.
#[derive(Default)]
struct SideState {
    /// 2xx answers: the contract clients rely on.
    responses: Learned,
    /// Other answers (errors have their own shape; mixing them in would make every field optional).
    errors: Learned,
    requests: Learned,
    statuses: Vec<u16>,
    /// Answers observed, JSON or not.
    observed: u64,
    /// Bodies that did not parse as JSON.
    not_json: u64,
}

impl SideState {
    fn learn(&mut self, s: &Sample) {
        self.observed += 1;
        if !self.statuses.contains(&s.status) && self.statuses.len() < MAX_STATUSES {
            self.statuses.push(s.status);
            self.statuses.sort_unstable();
        }
        if let Some(b) = s.response.as_ref().filter(|b| !b.is_empty()) {
            match serde_json::from_slice::<Value>(b) {
                Ok(v) if (200..300).contains(&s.status) => self.responses.observe(&v),
                Ok(v) => self.errors.observe(&v),
                Err(_) => self.not_json += 1,
            }
        }
        if let Some(b) = s.request.as_ref().filter(|b| !b.is_empty()) {
            if let Ok(v) = serde_json::from_slice::<Value>(b) {
                self.requests.observe(&v);
            }
        }
    }

    fn report(&self) -> Value {
        json!({
            "response_schema": self.responses.schema(),
            "request_schema": self.requests.schema(),
            "error_schema": self.errors.schema(),
            "statuses": self.statuses,
            "samples": {
                "responses": self.observed,
                "json_2xx": self.responses.samples(),
                "json_other": self.errors.samples(),
                "requests": self.requests.samples(),
                "not_json": self.not_json,
            },
        })
    }
}

#[derive(Default)]
struct State {
    legacy: SideState,
    modern: SideState,
}

impl State {
    fn side(&mut self, s: Side) -> &mut SideState {
        match s {
            Side::Legacy => &mut self.legacy,
            Side::Modern => &mut self.modern,
        }
    }
}

/// What a contract has learned, kept across reloads (see [`Keeping`]).
#[derive(Clone, Default)]
pub struct Memory {
    state: Arc<Mutex<State>>,
    dropped: Arc<AtomicU64>,
}

/// What makes two configs of a route the same contract: the same sides, spoken to the same way.
/// Sampling settings and the shadow may change without losing what was learned.
#[derive(Clone, PartialEq)]
pub struct ContractKey {
    pub legacy: String,
    pub modern: Option<String>,
    pub legacy_transform: Option<String>,
    pub modern_transform: Option<String>,
}

/// The running snapshot's memories, read while a new one is compiled, and the new snapshot's.
pub struct Keeping<'a> {
    prev: &'a Carry<ContractKey, Memory>,
    next: Mutex<Carry<ContractKey, Memory>>,
}

impl<'a> Keeping<'a> {
    pub fn new(prev: &'a Carry<ContractKey, Memory>) -> Self {
        Self {
            prev,
            next: Mutex::new(Carry::default()),
        }
    }

    pub fn memory(&self, route: &str, key: &ContractKey) -> Memory {
        self.next.lock().carry_or(self.prev, route, key, Memory::default)
    }

    pub fn into_next(self) -> Carry<ContractKey, Memory> {
        self.next.into_inner()
    }
}

pub struct Contract {
    route: Arc<str>,
    /// Out of 10 000; 0: only shadow comparisons are observed.
    sample_bp: u32,
    pub max_body: u64,
    state: Arc<Mutex<State>>,
    /// Started with the first sample: a config is also compiled where no runtime runs (`check`).
    queue: OnceLock<mpsc::Sender<Sample>>,
    dropped: Arc<AtomicU64>,
}

impl Contract {
    pub fn new(route: &str, sample_percent: f64, max_body: u64, memory: Memory) -> Self {
        Self {
            route: Arc::from(route),
            sample_bp: (sample_percent * 100.0).round().clamp(0.0, 10_000.0) as u32,
            max_body,
            state: memory.state,
            queue: OnceLock::new(),
            dropped: memory.dropped,
        }
    }

    /// Whether this served request is sampled.
    pub fn sampled(&self) -> bool {
        self.sample_bp > 0 && fastrand::u32(0..10_000) < self.sample_bp
    }

    /// Hands a sample to the learner; never waits.
    pub fn offer(&self, sample: Sample) {
        let tx = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(learn(self.state.clone(), rx));
            tx
        });
        if tx.try_send(sample).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Both answers of a shadow comparison (their bodies already bounded and translated).
    pub fn offer_pair(
        &self,
        primary: Side,
        request: &Bytes,
        answers: [(http::StatusCode, &HeaderMap, &Bytes); 2],
    ) {
        let [p, s] = answers;
        for (side, (status, headers, body)) in [(primary, p), (primary.other(), s)] {
            self.offer(Sample {
                side,
                status: status.as_u16(),
                response: json_body(headers).then(|| body.clone()),
                request: Some(request.clone()),
            });
        }
    }

    /// Copies a served answer (at most `max_body` bytes) for learning, without delaying it.
    pub fn tee(
        self: &Arc<Self>,
        side: Side,
        request: Option<Bytes>,
        resp: Response<ResponseBody>,
    ) -> Response<ResponseBody> {
        let status = resp.status().as_u16();
        if !json_body(resp.headers()) {
            self.offer(Sample {
                side,
                status,
                response: None,
                request,
            });
            return resp;
        }
        let (parts, body) = resp.into_parts();
        let (body, copy) = TeeBody::wrap(body, usize::try_from(self.max_body).unwrap_or(usize::MAX));
        let me = self.clone();
        tokio::spawn(async move {
            // `None`: larger than the bound; an error: the client went away mid-body.
            let response = copy.await.ok().flatten();
            me.offer(Sample {
                side,
                status,
                response,
                request,
            });
        });
        Response::from_parts(parts, body)
    }

    /// `GET /admin/contract?route=NAME`.
    pub fn report(&self) -> Value {
        let st = self.state.lock();
        let mut differences = Vec::new();
        differences.extend(compare::statuses(&st.legacy.statuses, &st.modern.statuses));
        differences.extend(compare::shapes(
            &st.legacy.responses.root,
            &st.modern.responses.root,
        ));
        let breaking = differences.iter().filter(|d| d.breaking).count();
        json!({
            "route": &*self.route,
            "legacy": st.legacy.report(),
            "modern": st.modern.report(),
            "differences": differences,
            "breaking": breaking,
            "compared": st.legacy.observed > 0 && st.modern.observed > 0,
            "dropped_samples": self.dropped.load(Ordering::Relaxed),
            "thresholds": {
                "enum_max_values": shape::ENUM_MAX_VALUES,
                "enum_min_samples": shape::ENUM_MIN_SAMPLES,
                "max_depth": shape::MAX_DEPTH,
                "max_fields": shape::MAX_FIELDS,
            },
        })
    }
}

/// JSON, or unlabelled (it may still parse); anything else is not learned from.
fn json_body(headers: &HeaderMap) -> bool {
    match headers.get(CONTENT_TYPE).map(|v| v.to_str()) {
        None => true,
        Some(Ok(ct)) => ct.to_ascii_lowercase().contains("json"),
        Some(Err(_)) => false,
    }
}

async fn learn(state: Arc<Mutex<State>>, mut rx: mpsc::Receiver<Sample>) {
    while let Some(s) = rx.recv().await {
        state.lock().side(s.side).learn(&s);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample(side: Side, status: u16, body: &str) -> Sample {
        Sample {
            side,
            status,
            response: Some(Bytes::from(body.to_string())),
            request: None,
        }
    }

    #[test]
    fn error_answers_are_learned_apart_from_successes() {
        let mut st = State::default();
        st.side(Side::Legacy)
            .learn(&sample(Side::Legacy, 200, r#"{"id":1}"#));
        st.side(Side::Legacy)
            .learn(&sample(Side::Legacy, 404, r#"{"error":"gone"}"#));
        st.side(Side::Legacy)
            .learn(&sample(Side::Legacy, 200, "not json"));
        let r = st.legacy.report();
        assert_eq!(r["response_schema"]["required"], json!(["id"]));
        assert_eq!(r["error_schema"]["required"], json!(["error"]));
        assert_eq!(r["statuses"], json!([200, 404]));
        assert_eq!(r["samples"]["not_json"], 1);
        assert_eq!(r["request_schema"], Value::Null);
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_samples() {
        let c = Contract::new("r", 0.0, 1024, Memory::default());
        // The learner cannot run before this test yields: the queue fills up.
        for _ in 0..QUEUE + 10 {
            c.offer(sample(Side::Legacy, 200, "{}"));
        }
        assert_eq!(c.dropped.load(Ordering::Relaxed), 10);
        assert_eq!(c.report()["dropped_samples"], 10);
    }
}
