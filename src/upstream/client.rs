//! The pooled keep-alive client, and one upstream's runtime form.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use metrics::Histogram;
use parking_lot::Mutex;

use super::balance::EndpointSet;
use super::tls::UpstreamTls;
use crate::config::file::{HealthCheckConfig, PoolConfig};
use crate::pipeline::body::RequestBody;

pub type HttpClient = Client<HttpsConnector<HttpConnector>, RequestBody>;

/// Settings that shape a connection pool. Upstreams that share them share one pool (the pool is
/// keyed by authority inside), and a reload that keeps them keeps its warm connections.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub connect_timeout: Duration,
    pub pool: PoolConfig,
    /// [`UpstreamTls::fingerprint`] for upstreams with `https://` endpoints.
    pub tls: Option<[u8; 32]>,
}

#[derive(Default)]
pub struct ClientCache {
    clients: Mutex<HashMap<PoolKey, HttpClient>>,
}

impl ClientCache {
    /// `tls` is the upstream's, whose fingerprint is in `key`: a kept pool has equal settings.
    pub fn get(&self, key: &PoolKey, tls: Option<&UpstreamTls>) -> HttpClient {
        self.clients
            .lock()
            .entry(key.clone())
            .or_insert_with(|| build_client(key, tls))
            .clone()
    }

    /// Drops pools no snapshot uses any more, so many reloads don't accumulate sockets.
    pub fn retain(&self, live: &[PoolKey]) {
        self.clients.lock().retain(|k, _| live.contains(k));
    }
}

fn build_client(key: &PoolKey, tls: Option<&UpstreamTls>) -> HttpClient {
    let connector = super::tls::connector(tls, key.connect_timeout);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(key.pool.idle_timeout)
        .pool_max_idle_per_host(key.pool.max_idle_per_endpoint)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector)
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamCallError {
    #[error("connect failed: {0}")]
    Connect(String),
    #[error("timed out")]
    Timeout(Duration),
    #[error("{0}")]
    Request(String),
    /// The failure came from the client's own request body (too large, stalled).
    #[error("request body: {0}")]
    Body(String),
    /// The upstream's concurrency limit shed the request: it was never sent.
    #[error("over the upstream's concurrency limit ({})", .0.label())]
    Overloaded(super::limit::Shed),
}

pub struct Upstream {
    pub name: Arc<str>,
    pub endpoints: Arc<EndpointSet>,
    /// The consistent-hash key, for `balance: consistent-hash`.
    pub hash_on: Option<crate::pipeline::key::RequestKey>,
    pub health_check: Option<HealthCheckConfig>,
    pub request_timeout: Duration,
    pub pool_key: PoolKey,
    /// Set when an endpoint is `https://`; health checks use it too.
    pub tls: Option<Arc<UpstreamTls>>,
    client: HttpClient,
    duration: Histogram,
    pub breaker: Option<Arc<super::breaker::Breakers>>,
    pub retry: Option<super::retry::RetryPolicy>,
    /// `max_concurrent` and its queue; without it calls go straight to the pool.
    limit: Option<super::limit::Limiter>,
}

impl Upstream {
    pub fn new(
        name: &str,
        endpoints: Arc<EndpointSet>,
        request_timeout: Duration,
        pool_key: PoolKey,
        client: HttpClient,
        duration: Histogram,
    ) -> Self {
        Self {
            name: Arc::from(name),
            endpoints,
            hash_on: None,
            health_check: None,
            request_timeout,
            pool_key,
            tls: None,
            client,
            duration,
            breaker: None,
            retry: None,
            limit: None,
        }
    }

    /// `max_concurrent` and its queue, when the config sets them.
    pub fn with_concurrency_limit(
        mut self,
        cfg: &crate::config::file::UpstreamConfig,
        metrics: &crate::telemetry::metrics::Metrics,
    ) -> Self {
        self.limit = super::limit::Limiter::new(cfg, self.client.clone(), &self.name, metrics);
        self
    }

    pub fn with_retry(mut self, retry: Option<super::retry::RetryPolicy>) -> Self {
        self.retry = retry;
        self
    }

    pub fn with_health_check(mut self, hc: Option<HealthCheckConfig>) -> Self {
        self.health_check = hc;
        self
    }

    pub fn with_tls(mut self, tls: Option<Arc<UpstreamTls>>) -> Self {
        self.tls = tls;
        self
    }

    pub fn with_hash_on(mut self, h: Option<crate::pipeline::key::RequestKey>) -> Self {
        self.hash_on = h;
        self
    }

    pub fn with_breaker(mut self, breaker: Option<Arc<super::breaker::Breakers>>) -> Self {
        self.breaker = breaker;
        self
    }

    /// Sends a request whose URI already names the endpoint; waits for the response head only.
    pub async fn call(&self, req: Request<RequestBody>) -> Result<Response<Incoming>, UpstreamCallError> {
        self.call_within(req, self.request_timeout).await
    }

    /// One try, bounded by `timeout` (a retry's share of the request timeout).
    pub async fn call_within(
        &self,
        req: Request<RequestBody>,
        timeout: Duration,
    ) -> Result<Response<Incoming>, UpstreamCallError> {
        let started = Instant::now();
        let result = match &self.limit {
            None => {
                tokio::time::timeout(timeout, async {
                    self.client.request(req).await.map_err(|e| classify(&e))
                })
                .await
            }
            Some(limit) => tokio::time::timeout(timeout, limit.call(req)).await,
        };
        let result = result.unwrap_or(Err(UpstreamCallError::Timeout(timeout)));
        // A shed request never reached the upstream: its time says nothing about it.
        if !matches!(result, Err(UpstreamCallError::Overloaded(_))) {
            self.duration.record(started.elapsed().as_secs_f64());
        }
        result
    }
}

/// What a failed hyper call means for the proxy.
pub(super) fn classify(e: &hyper_util::client::legacy::Error) -> UpstreamCallError {
    if e.is_connect() {
        return UpstreamCallError::Connect(error_chain(e));
    }
    let chain = error_chain(e);
    if has_source::<crate::pipeline::body::BodyError>(e) {
        UpstreamCallError::Body(chain)
    } else {
        UpstreamCallError::Request(chain)
    }
}

fn has_source<T: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<T>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// hyper's top-level messages are terse ("client error (Connect)"); the causes say what happened.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        out.push_str(": ");
        out.push_str(&err.to_string());
        cur = err.source();
    }
    out
}
