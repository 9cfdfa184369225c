//! Builds a route's `buffer_writes` and checks the top-level `queue_store`.

use http::Method;

use super::{RouteWrites, WriteMetrics};
use crate::config::file::RouteConfig;
use crate::config::problems::Section;
use crate::config::writes::{BufferWritesConfig, QueueStoreConfig};
use crate::pipeline::key::{KeySource, RequestKey};
use crate::telemetry::metrics::Metrics;

/// The route's `buffer_writes` section (`sec` is at it). `queue_store` is the top-level one:
/// without it there is nowhere to queue.
pub fn route(
    r: &RouteConfig,
    cfg: &BufferWritesConfig,
    queue_store: Option<&QueueStoreConfig>,
    sec: &mut Section<'_, '_>,
    metrics: &Metrics,
) -> Option<RouteWrites> {
    if queue_store.is_none() {
        sec.error(
            "",
            "needs the top-level `queue_store` (redis_urls): that is where the writes are queued",
        );
    }
    let mut methods = Vec::new();
    for (j, m) in cfg.methods.iter().enumerate() {
        match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
            Ok(m) if m.is_safe() => sec.error(
                &format!("methods[{j}]"),
                format!("`{m}` is a read: its answer cannot be given later"),
            ),
            Ok(m) => methods.push(m),
            Err(_) => sec.error(&format!("methods[{j}]"), format!("`{m}` is not a method")),
        }
    }
    if cfg.methods.is_empty() {
        sec.error("methods", "list at least one method (POST, PUT, PATCH, DELETE)");
    }
    if cfg.max_attempts == 0 {
        sec.error("max_attempts", "must be at least 1");
    }
    if cfg.max_age.is_zero() {
        sec.error("max_age", "must be greater than zero");
    }
    if cfg.backoff_base.is_zero() || cfg.backoff_max < cfg.backoff_base {
        sec.error(
            "backoff_base",
            "must be greater than zero and at most `backoff_max`",
        );
    }
    if cfg.max_body.0 == 0 {
        sec.error("max_body", "must be greater than zero");
    }
    if r.identity
        .as_ref()
        .and_then(|i| i.upstream_auth.as_ref())
        .is_some_and(|a| a.jwt.is_some())
    {
        sec.warn(
            "",
            "the internal JWT is queued with the write and may have expired when it is replayed",
        );
    }
    let key_text = cfg
        .partition_key
        .as_deref()
        .or_else(|| r.migration.as_ref().and_then(|m| m.sticky.as_deref()));
    let partition_key = match key_text.map(RequestKey::parse) {
        None => None,
        Some(Ok(p)) => {
            let k = p.key;
            if k.needs_identity() && r.identity.is_none() {
                sec.error(
                    "partition_key",
                    "a `jwt.` or `api_key` key needs the route's `identity`",
                );
            }
            // Every write of a route would land in one partition anyway.
            (!k.parts().iter().all(|s| *s == KeySource::Route)).then_some(k)
        }
        Some(Err(reason)) => {
            sec.error("partition_key", reason);
            None
        }
    };
    Some(RouteWrites {
        methods,
        require_key: cfg.require_idempotency_key,
        max_attempts: cfg.max_attempts,
        max_age: cfg.max_age,
        partition_key,
        max_body: cfg.max_body.0,
        backoff_base: cfg.backoff_base,
        backoff_max: cfg.backoff_max,
        metrics: WriteMetrics::new(metrics, &r.name),
    })
}

/// The top-level `queue_store` (`sec` is at it).
pub fn queue_store(cfg: &QueueStoreConfig, sec: &mut Section<'_, '_>) {
    if cfg.redis_urls.is_empty() {
        sec.error(
            "redis_urls",
            "list one Redis URL, or the seed nodes of a Redis Cluster",
        );
    }
    for (i, u) in cfg.redis_urls.iter().enumerate() {
        if let Err(e) = redis::Client::open(u.as_str()) {
            sec.error(&format!("redis_urls[{i}]"), e.to_string());
        }
    }
    if !(1..=1024).contains(&cfg.partitions) {
        sec.error("partitions", "must be from 1 to 1024");
    }
    if cfg.timeout.is_zero() || cfg.claim_idle.is_zero() || cfg.poll_interval.is_zero() {
        sec.error(
            "timeout",
            "timeout, claim_idle and poll_interval must be greater than zero",
        );
    }
    let p = &cfg.status_prefix;
    if !p.starts_with('/') || p.ends_with('/') || p.len() < 2 {
        sec.error(
            "status_prefix",
            "a path that starts with `/` and does not end with one (`/ficus/writes`)",
        );
    } else if crate::pipeline::normalize::normalize_path(p, false).map_or(true, |n| n != p.as_str()) {
        sec.error(
            "status_prefix",
            "must be a normalised path (no `.`, `..`, `//` or escapes)",
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::config::compile::{Carried, Compiler};
    use crate::config::ConfigSource;

    fn errors(text: &'static str) -> Vec<String> {
        let src = ConfigSource::Embedded {
            name: "t.yaml".into(),
            text,
            base_dir: ".".into(),
        };
        match Compiler::default().compile(&src.read().unwrap(), 1, &Carried::default()) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    const BASE: &str = "listeners: [{ name: main, bind: '127.0.0.1:0' }]\nupstreams:\n  app: { endpoints: ['http://127.0.0.1:9'] }\nroutes:\n  - name: orders\n    upstream: app\n";

    #[test]
    fn buffer_writes_without_a_queue_store_is_an_error_at_its_line() {
        let text = format!("{BASE}    buffer_writes: {{ max_attempts: 3 }}\n");
        let errs = errors(Box::leak(text.into_boxed_str()));
        assert!(
            errs.iter().any(
                |e| e.starts_with("t.yaml:7: routes[0].buffer_writes: needs the top-level `queue_store`")
            ),
            "{errs:?}"
        );
    }

    #[test]
    fn reads_zero_attempts_and_a_bad_status_prefix_are_refused() {
        let text = format!(
            "{BASE}    buffer_writes: {{ max_attempts: 0, methods: [GET, POST] }}\nqueue_store: {{ redis_urls: ['redis://127.0.0.1:9'], status_prefix: '/a/../b' }}\n"
        );
        let errs = errors(Box::leak(text.into_boxed_str()));
        for want in [
            "routes[0].buffer_writes.methods[0]: `GET` is a read",
            "routes[0].buffer_writes.max_attempts: must be at least 1",
            "queue_store.status_prefix: must be a normalised path",
        ] {
            assert!(errs.iter().any(|e| e.contains(want)), "no `{want}` in {errs:?}");
        }
    }
}
