//! Builds the `rate_limits` section: the shared Redis store and each named policy.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::algorithm::Limit;
use super::local::LocalStore;
use super::redis::RedisStore;
use super::Policy;
use crate::config::carry::Carry;
use crate::config::file::{RateLimitStoreConfig, RateLimitsConfig, StoreBreakerConfig};
use crate::config::problems::{Problems, Section};
use crate::pipeline::key::RequestKey;
use crate::telemetry::metrics::Metrics;

/// Rate-limit state that outlives a reload: the Redis store (its connection) while
/// `rate_limits.store` is unchanged, and each policy's in-process counters while its limit is.
#[derive(Default)]
pub struct Kept {
    pub redis: Carry<RateLimitStoreConfig, Arc<RedisStore>>,
    pub local: Carry<Limit, Arc<LocalStore>>,
}

/// Policies by name.
pub fn compile(
    cfg: &RateLimitsConfig,
    p: &mut Problems<'_>,
    metrics: &Metrics,
    prev: &Kept,
    next: &mut Kept,
) -> BTreeMap<String, Arc<Policy>> {
    let store = &cfg.store;
    let redis = redis_store(store, &mut p.at("rate_limits.store"), metrics, prev, next);
    let mut out = BTreeMap::new();
    for (name, pc) in &cfg.policies {
        let mut sec = p.at(format!("rate_limits.policies.{name}"));
        let key = match RequestKey::parse_list(&pc.key) {
            Ok(k) => {
                for (key, reason) in k.old_spellings("key") {
                    sec.warn(&key, reason);
                }
                k.key
            }
            Err(reason) => {
                sec.error("key", reason);
                continue;
            }
        };
        let limit = match Policy::limit(pc) {
            Ok(l) => l,
            Err(reason) => {
                sec.error("", reason);
                continue;
            }
        };
        let shared = if Policy::uses_redis(pc, !store.redis_urls.is_empty()) {
            match &redis {
                Some(r) => Some((r.clone(), store.on_error, format!("{}{name}:", store.key_prefix))),
                None if store.redis_urls.is_empty() => {
                    sec.error("store", "`redis` needs rate_limits.store.redis_urls");
                    continue;
                }
                // The store's own problem is reported already.
                None => continue,
            }
        } else {
            None
        };
        let local = next
            .local
            .carry_or(&prev.local, name, &limit, || Arc::new(LocalStore::new(limit)));
        match Policy::new(name, pc, key, limit, local, shared, metrics) {
            Ok(policy) => {
                out.insert(name.clone(), Arc::new(policy));
            }
            Err(reason) => sec.error("", reason),
        }
    }
    out
}

fn redis_store(
    store: &RateLimitStoreConfig,
    sec: &mut Section<'_, '_>,
    metrics: &Metrics,
    prev: &Kept,
    next: &mut Kept,
) -> Option<Arc<RedisStore>> {
    if store.redis_urls.is_empty() {
        return None;
    }
    if store.timeout.is_zero() {
        sec.error("timeout", "must be more than 0");
        return None;
    }
    if let Some((key, reason)) = breaker_problem(&store.breaker) {
        sec.error(&format!("breaker.{key}"), reason);
        return None;
    }
    let r = match prev.redis.get("", store) {
        Some(r) => r,
        None => match RedisStore::new(store, metrics) {
            Ok(r) => r,
            Err(reason) => {
                sec.error("redis_urls", reason);
                return None;
            }
        },
    };
    next.redis.keep("", store, r.clone());
    Some(r)
}

/// The first invalid setting of the store breaker, if any: a breaker that could never open or
/// never wait would silently bring back the latency it exists to remove.
fn breaker_problem(b: &StoreBreakerConfig) -> Option<(&'static str, &'static str)> {
    if b.failures == 0 {
        Some(("failures", "must be at least 1"))
    } else if b.open_for.is_zero() {
        Some(("open_for", "must be more than 0"))
    } else if b.max_open_for < b.open_for {
        Some(("max_open_for", "must be at least open_for"))
    } else {
        None
    }
}
