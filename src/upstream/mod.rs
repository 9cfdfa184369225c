//! Everything on the far side of the proxy: the pooled client and the endpoint choice.

pub mod balance;
pub mod breaker;
pub mod client;
pub mod compile;
pub mod health;
pub mod limit;
pub mod pool;
pub mod retry;
pub mod tls;

pub use client::{ClientCache, UpstreamCallError};

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use metrics::Histogram;

use crate::config::file::HealthCheckConfig;
use crate::pipeline::body::RequestBody;
use balance::EndpointSet;
use client::{classify, HttpClient, PoolKey};
use tls::UpstreamTls;

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
    /// `http_client_request_duration_seconds`, when a recorder is attached.
    semconv: Option<crate::telemetry::metrics::StatusHistograms>,
    pub breaker: Option<Arc<self::breaker::Breakers>>,
    pub retry: Option<self::retry::RetryPolicy>,
    /// `max_concurrent` and its queue; without it calls go straight to the pool.
    limit: Option<self::limit::Limiter>,
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
            semconv: None,
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
        self.limit = self::limit::Limiter::new(cfg, self.client.clone(), &self.name, metrics);
        self
    }

    /// `http_client_request_duration_seconds{server_address=NAME}`: the configured name, never
    /// anything from the request.
    pub fn with_client_metrics(mut self, metrics: &crate::telemetry::metrics::Metrics) -> Self {
        self.semconv = Some(crate::telemetry::metrics::StatusHistograms::new(
            metrics,
            crate::telemetry::metrics::HTTP_CLIENT_DURATION,
            &[("server_address", &self.name)],
        ));
        self
    }

    pub fn with_retry(mut self, retry: Option<self::retry::RetryPolicy>) -> Self {
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

    pub fn with_breaker(mut self, breaker: Option<Arc<self::breaker::Breakers>>) -> Self {
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
        self.call_from(req, tokio::time::Instant::now(), timeout).await
    }

    /// One try that began at `started` (the caller's clock reading, so a request's first try
    /// reads the clock once for its start, deadline and retry budget: three reads per request
    /// fewer on the plain route), bounded by `timeout` from then.
    pub async fn call_from(
        &self,
        req: Request<RequestBody>,
        started: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<Response<Incoming>, UpstreamCallError> {
        let method = crate::telemetry::metrics::semconv_method_index(req.method());
        let deadline = started + timeout;
        let result = match &self.limit {
            // The pool's future directly, not wrapped in an async block: each layer is one more
            // copy of the request's state to move.
            None => tokio::time::timeout_at(deadline, self.client.request(req))
                .await
                .map(|r| r.map_err(|e| classify(&e))),
            Some(limit) => tokio::time::timeout_at(deadline, limit.call(req)).await,
        };
        let result = result.unwrap_or(Err(UpstreamCallError::Timeout(timeout)));
        // A shed request never reached the upstream: its time says nothing about it.
        if !matches!(result, Err(UpstreamCallError::Overloaded(_))) {
            let elapsed = started.elapsed();
            self.duration.record(elapsed.as_secs_f64());
            if let Some(h) = &self.semconv {
                use crate::telemetry::metrics::Outcome;
                let outcome = match &result {
                    Ok(resp) => Outcome::Status(resp.status()),
                    Err(UpstreamCallError::Connect(_)) => Outcome::Error(0),
                    Err(UpstreamCallError::Timeout(_)) => Outcome::Error(1),
                    Err(UpstreamCallError::Request(_)) => Outcome::Error(2),
                    Err(UpstreamCallError::Body(_) | UpstreamCallError::Overloaded(_)) => Outcome::Error(3),
                };
                h.record(method, outcome, elapsed);
            }
        }
        result
    }
}
