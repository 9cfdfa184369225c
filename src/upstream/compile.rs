//! Builds an [`Upstream`] from its config section. Endpoints, timeouts, TLS, balancing, the
//! breaker, outlier ejection, health checks and retries are validated here, beside the code
//! that runs them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Scheme, Uri};

use super::balance::{parse_hash_on, Endpoint, EndpointSet};
use super::breaker::Breakers;
use super::client::PoolKey;
use super::retry::RetryPolicy;
use super::tls::UpstreamTls;
use super::{ClientCache, Upstream};
use crate::config::carry::Carry;
use crate::config::file::{BalancePolicy, BreakerConfig, HealthCheckConfig, OutlierConfig, UpstreamConfig};
use crate::config::problems::Section;
use crate::pipeline::key::RequestKey;
use crate::pipeline::rollout::Clock;
use crate::telemetry::metrics::{Metrics, UPSTREAM_REQUEST_DURATION};

/// An upstream's state that outlives a reload while its config is unchanged.
#[derive(Clone)]
pub struct Kept {
    pub endpoints: Arc<EndpointSet>,
    pub breakers: Option<Arc<Breakers>>,
}

pub struct Env<'a> {
    pub metrics: &'a Metrics,
    pub clients: &'a ClientCache,
    /// What breakers read the time from.
    pub clock: &'a Arc<dyn Clock>,
    pub prev: &'a Carry<UpstreamConfig, Kept>,
}

/// Builds the upstream even when its section has problems (they are reported and the config is
/// refused), so routes naming it are checked too rather than told it does not exist.
pub fn compile(
    name: &str,
    u: &UpstreamConfig,
    sec: &mut Section<'_, '_>,
    env: &Env<'_>,
    next: &mut Carry<UpstreamConfig, Kept>,
) -> Arc<Upstream> {
    if u.endpoints.is_empty() {
        sec.error("endpoints", "list at least one endpoint");
    }
    let mut endpoints = Vec::new();
    for (i, e) in u.endpoints.iter().enumerate() {
        match parse_endpoint(e) {
            Ok(ep) => endpoints.push(ep),
            Err(reason) => sec.error(&format!("endpoints[{i}]"), reason),
        }
    }
    for (key, t) in [
        ("timeouts.connect", u.timeouts.connect),
        ("timeouts.request", u.timeouts.request),
    ] {
        if t.is_zero() {
            sec.error(key, "must be greater than zero");
        }
    }
    if let Some(b) = &u.circuit_breaker {
        check_breaker(b, &mut sec.at("circuit_breaker"));
    }
    sec.errors(super::limit::validate(u));
    if let Some(r) = &u.retry {
        sec.at("retry").errors(super::retry::validate(r));
    }
    if let Some(o) = &u.outlier {
        check_outlier(o, &mut sec.at("outlier"));
    }
    if let Some(h) = &u.health_check {
        check_health(h, &mut sec.at("health_check"));
    }
    let hash_on = hash_on(u, sec);
    let tls = tls(u, &endpoints, sec);

    let kept = next.carry_or(env.prev, name, u, || Kept {
        endpoints: Arc::new(EndpointSet::new(
            name,
            endpoints,
            u.balance.clone(),
            u.outlier.clone(),
            env.metrics,
        )),
        breakers: u
            .circuit_breaker
            .as_ref()
            .map(|b| Arc::new(Breakers::new(b, name, &u.endpoints, env.metrics, env.clock))),
    });
    let pool_key = PoolKey {
        connect_timeout: u.timeouts.connect,
        pool: u.pool.clone(),
        tls: tls.as_ref().map(|t| t.fingerprint),
    };
    let client = env.clients.get(&pool_key, tls.as_deref());
    let duration = env
        .metrics
        .histogram(UPSTREAM_REQUEST_DURATION, &[("upstream", name)]);
    Arc::new(
        Upstream::new(
            name,
            kept.endpoints,
            u.timeouts.request,
            pool_key,
            client,
            duration,
        )
        .with_hash_on(hash_on)
        .with_tls(tls)
        .with_breaker(kept.breakers)
        .with_health_check(u.health_check.clone())
        .with_retry(u.retry.as_ref().map(|r| RetryPolicy::new(r, name, env.metrics)))
        .with_concurrency_limit(u, env.metrics)
        .with_client_metrics(env.metrics),
    )
}

/// The upstream a route names, or an error at `key` listing the ones defined.
pub fn find(
    upstreams: &BTreeMap<String, Arc<Upstream>>,
    name: &str,
    sec: &mut Section<'_, '_>,
    key: &str,
) -> Option<Arc<Upstream>> {
    let found = upstreams.get(name).cloned();
    if found.is_none() {
        let known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
        sec.error(
            key,
            format!("no upstream named `{name}` (defined: {})", known.join(", ")),
        );
    }
    found
}

fn hash_on(u: &UpstreamConfig, sec: &mut Section<'_, '_>) -> Option<RequestKey> {
    let hashing = u.balance == BalancePolicy::ConsistentHash;
    match (&u.hash_on, hashing) {
        (Some(h), true) => match parse_hash_on(h) {
            Ok(p) => {
                for (key, reason) in p.old_spellings("hash_on") {
                    sec.warn(&key, reason);
                }
                Some(p.key)
            }
            Err(reason) => {
                sec.error("hash_on", reason);
                None
            }
        },
        (None, true) => {
            sec.error(
                "hash_on",
                "consistent-hash needs hash_on (client_ip, path, header:<name>...)",
            );
            None
        }
        (Some(_), false) => {
            sec.error("hash_on", "only used with balance: consistent-hash");
            None
        }
        (None, false) => None,
    }
}

fn tls(u: &UpstreamConfig, endpoints: &[Endpoint], sec: &mut Section<'_, '_>) -> Option<Arc<UpstreamTls>> {
    let https = endpoints.iter().any(|e| e.scheme == Scheme::HTTPS);
    if let Some(t) = &u.tls {
        if !https {
            sec.error("tls", "applies to https:// endpoints only, and none is listed");
        }
        if t.insecure_skip_verify {
            sec.warn(
                "tls.insecure_skip_verify",
                "the upstream's certificate is not verified: anyone on the path can impersonate it",
            );
        }
        for f in [&t.ca_file, &t.client_cert, &t.client_key].into_iter().flatten() {
            sec.file(f);
        }
    }
    if !https {
        return None;
    }
    match UpstreamTls::build(&u.tls.clone().unwrap_or_default(), sec.base_dir()) {
        Ok(t) => Some(Arc::new(t)),
        Err(e) => {
            sec.error("tls", e.to_string());
            None
        }
    }
}

fn check_breaker(b: &BreakerConfig, sec: &mut Section<'_, '_>) {
    for (key, rate) in [
        ("failure_rate", b.failure_rate),
        ("slow_call_rate", b.slow_call_rate),
    ] {
        if !(rate > 0.0 && rate <= 1.0) {
            sec.error(key, "must be above 0 and at most 1");
        }
    }
    if b.window < Duration::from_secs(1) {
        sec.error("window", "must be at least 1s");
    }
    if b.min_requests == 0 {
        sec.error("min_requests", "must be at least 1");
    }
    if b.half_open_probes == 0 {
        sec.error("half_open_probes", "must be at least 1");
    }
    if b.open_for.is_zero() {
        sec.error("open_for", "must be greater than zero");
    }
    if b.max_open_for < b.open_for {
        sec.error("max_open_for", "must be at least open_for");
    }
    for (j, st) in b.failure_statuses.iter().enumerate() {
        if !(100..=599).contains(st) {
            sec.error(
                &format!("failure_statuses[{j}]"),
                format!("{st} is not an HTTP status"),
            );
        }
    }
}

fn check_outlier(o: &OutlierConfig, sec: &mut Section<'_, '_>) {
    if o.consecutive_failures == 0 {
        sec.error("consecutive_failures", "must be at least 1");
    }
    if o.base_ejection.is_zero() || o.max_ejection < o.base_ejection {
        sec.error("max_ejection", "must be at least base_ejection (> 0)");
    }
    if o.max_ejected_percent > 100 {
        sec.error("max_ejected_percent", "at most 100");
    }
}

fn check_health(h: &HealthCheckConfig, sec: &mut Section<'_, '_>) {
    if !h.path.starts_with('/') {
        sec.error("path", "must start with '/'");
    }
    if h.interval.is_zero() || h.timeout.is_zero() {
        sec.error("interval", "interval and timeout must be greater than zero");
    }
    if h.healthy_threshold == 0 || h.unhealthy_threshold == 0 {
        sec.error("healthy_threshold", "thresholds must be at least 1");
    }
    if h.expected_statuses.is_empty() {
        sec.error("expected_statuses", "list at least one status");
    }
}

fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    let uri: Uri = s.parse().map_err(|e| format!("`{s}` is not a URL: {e}"))?;
    let scheme = match uri.scheme() {
        Some(sc) if *sc == Scheme::HTTP || *sc == Scheme::HTTPS => sc.clone(),
        Some(sc) => {
            return Err(format!(
                "scheme `{sc}` is not supported; use http://host:port or https://host:port"
            ))
        }
        None => return Err(format!("`{s}` needs a scheme: http://host:port")),
    };
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("`{s}` has no host"))?;
    if authority.host().is_empty() {
        return Err(format!("`{s}` has no host"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "`{s}`: an endpoint is scheme://host:port only, without a path"
        ));
    }
    Ok(Endpoint { scheme, authority })
}
