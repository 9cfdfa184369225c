//! A per-upstream concurrency limit with a bounded queue, built from tower's pieces: Envoy's
//! `max_requests` / `max_pending_requests`, Kong's upstream concurrency cap.
//!
//! The stack, outermost first, for one upstream:
//! - [`LoadShed`] answers at once, with an `Overloaded` error, when the layer below is not ready:
//!   no request ever waits for a place in the queue.
//! - a [`ConcurrencyLimit`] of `max_concurrent + max_queue`: the requests in flight plus those
//!   waiting. When it is full, the queue is full, and `LoadShed` sheds.
//! - [`Queued`]: waits for the next layer's permit, at most `queue_timeout`, then calls it.
//! - a [`ConcurrencyLimit`] of `max_concurrent` around the pooled hyper client.
//!
//! `Queued` exists because of hyper's call shape seen through tower's readiness: a
//! `ConcurrencyLimit` waits for its permit in `poll_ready`, and `LoadShed` sheds whenever
//! `poll_ready` is pending. Stacked directly, `LoadShed` would shed as soon as the inner limit
//! is full, whatever `max_queue` says. `Queued` moves the wait for the inner permit from
//! `poll_ready` into the call's future, where a timeout bounds it. tower's own queue, `Buffer`,
//! does not fit: it spawns a worker task per service, and its bound waits rather than sheds.
//!
//! Permits are held until the response head arrives (the call's future), not while the body
//! streams: the limit bounds the requests an upstream is working on before it answers.
//!
//! A reload builds the limit afresh with the upstream: requests still in flight on the old
//! snapshot are not counted against the new one, so for the length of one drain an upstream can
//! see up to twice `max_concurrent`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use metrics::{Counter, Gauge};
use tower::limit::ConcurrencyLimit;
use tower::load_shed::error::Overloaded;
use tower::load_shed::LoadShed;
use tower::{BoxError, Service, ServiceExt as _};

use super::client::{classify, HttpClient, Shed};
use super::UpstreamCallError;
use crate::config::file::UpstreamConfig;
use crate::pipeline::body::RequestBody;
use crate::telemetry::metrics::{Metrics, UPSTREAM_QUEUED, UPSTREAM_SHED};

/// How long a queued request waits for a place when `queue_timeout` is not set.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
#[error("waited {0:?} for a place at the upstream")]
struct QueueTimedOut(Duration);

/// Waits for the inner service's readiness inside the call, bounded by `wait`.
#[derive(Clone)]
pub struct Queued {
    inner: ConcurrencyLimit<HttpClient>,
    wait: Duration,
    /// Requests waiting for a place now.
    queued: Gauge,
}

/// Counts one request in the queue gauge for as long as it waits, however the wait ends
/// (a place, the timeout, or the client going away).
struct Waiting(Gauge);

impl Waiting {
    fn enter(g: &Gauge) -> Self {
        g.increment(1.0);
        Self(g.clone())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

type CallFuture = Pin<Box<dyn Future<Output = Result<Response<Incoming>, BoxError>> + Send>>;

impl Service<Request<RequestBody>> for Queued {
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = CallFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Always ready: the wait happens in the call, under the outer limit's permit.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<RequestBody>) -> Self::Future {
        let mut inner = self.inner.clone();
        let wait = self.wait;
        let queued = self.queued.clone();
        Box::pin(async move {
            let waiting = Waiting::enter(&queued);
            let ready = tokio::time::timeout(wait, inner.ready()).await;
            drop(waiting);
            match ready {
                Err(_) => Err(QueueTimedOut(wait).into()),
                Ok(Err(e)) => Err(e.into()),
                Ok(Ok(svc)) => svc.call(req).await.map_err(Into::into),
            }
        })
    }
}

/// One upstream's limit; cloned (cheaply: semaphores are shared) for each call.
pub struct Limiter {
    stack: LoadShed<ConcurrencyLimit<Queued>>,
    queue_full: Counter,
    queue_timeout: Counter,
}

impl Limiter {
    /// `None` when the upstream sets no `max_concurrent`.
    pub fn new(cfg: &UpstreamConfig, client: HttpClient, upstream: &str, metrics: &Metrics) -> Option<Self> {
        let max = usize::try_from(cfg.max_concurrent?).ok()?.max(1);
        let queue = cfg
            .max_queue
            .map_or(0, |q| usize::try_from(q).unwrap_or(usize::MAX));
        let queued = Queued {
            inner: ConcurrencyLimit::new(client, max),
            wait: cfg.queue_timeout.unwrap_or(DEFAULT_QUEUE_TIMEOUT),
            queued: metrics.gauge(UPSTREAM_QUEUED, &[("upstream", upstream)]),
        };
        let counter =
            |s: Shed| metrics.counter(UPSTREAM_SHED, &[("upstream", upstream), ("reason", s.label())]);
        Some(Self {
            stack: LoadShed::new(ConcurrencyLimit::new(queued, max.saturating_add(queue))),
            queue_full: counter(Shed::QueueFull),
            queue_timeout: counter(Shed::QueueTimeout),
        })
    }

    /// Sends `req` within the limit, or sheds it.
    pub async fn call(&self, req: Request<RequestBody>) -> Result<Response<Incoming>, UpstreamCallError> {
        let e = match self.stack.clone().oneshot(req).await {
            Ok(resp) => return Ok(resp),
            Err(e) => e,
        };
        if e.is::<Overloaded>() {
            self.queue_full.increment(1);
            return Err(UpstreamCallError::Overloaded(Shed::QueueFull));
        }
        if e.is::<QueueTimedOut>() {
            self.queue_timeout.increment(1);
            return Err(UpstreamCallError::Overloaded(Shed::QueueTimeout));
        }
        match e.downcast::<super::pool::PoolError>() {
            Ok(e) => Err(classify(&e)),
            Err(e) => Err(UpstreamCallError::Request(e.to_string())),
        }
    }
}

/// Checks an upstream's limit keys: `(key, reason)`, the key relative to the upstream.
pub fn validate(cfg: &UpstreamConfig) -> Vec<(String, String)> {
    let mut bad = Vec::new();
    if cfg.max_concurrent == Some(0) {
        bad.push((
            "max_concurrent".to_string(),
            "must be at least 1 (omit it for no limit)".to_string(),
        ));
    }
    if cfg.max_concurrent.is_none() {
        for (key, set) in [
            ("max_queue", cfg.max_queue.is_some()),
            ("queue_timeout", cfg.queue_timeout.is_some()),
        ] {
            if set {
                bad.push((key.to_string(), "only with max_concurrent".to_string()));
            }
        }
    }
    if cfg.queue_timeout.is_some_and(|t| t.is_zero()) {
        bad.push((
            "queue_timeout".to_string(),
            "must be greater than zero (max_queue: 0 sheds without waiting)".to_string(),
        ));
    }
    bad
}
