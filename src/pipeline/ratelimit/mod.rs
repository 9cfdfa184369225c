//! Stage 5: rate limits. A route lists named policies; each builds its key from the request,
//! asks its store (in-process, or Redis shared by every instance) and every one must admit the
//! request. A Redis failure never becomes a 500: the policy's fallback decides and is counted.
//!
//! A key is stored as a [`KeyDigest`] (16 bytes of SHA-256 over its length-prefixed parts), in
//! the in-process map and in Redis (`<prefix><policy>:<32 hex digits>`): whatever a client puts
//! in a header or a claim, a key costs the same bounded memory, and its bytes are hashed where
//! they lie, never copied.

pub mod algorithm;
pub mod breaker;
pub mod compile;
pub mod local;
pub mod redis;

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use metrics::Counter;
use sha2::{Digest, Sha256};

use super::key::{KeyFacts, RequestKey};
use crate::config::file::{
    MissingKey, RateLimitAlgorithm, RateLimitFallback, RateLimitPolicyConfig, RateLimitStoreKind,
};
use crate::telemetry::metrics::{Metrics, RATELIMIT_DECISIONS, RATELIMIT_STORE_ERRORS};
use algorithm::{Decision, Limit};
use local::LocalStore;
use redis::RedisStore;

pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// A rate-limit key as stored: a truncated SHA-256, so collisions are out of any client's reach
/// (2^64 work) and the same key is the same digest on every instance.
pub type KeyDigest = [u8; 16];

/// Hashes one key part with its length first, so no choice of bytes in one part can shift the
/// boundary with the next (`a|b` + `c` vs `a` + `b|c`).
fn feed(h: &mut Sha256, part: &[u8]) {
    h.update((part.len() as u64).to_le_bytes());
    h.update(part);
}

fn feed_ip(h: &mut Sha256, ip: IpAddr) {
    match ip {
        IpAddr::V4(a) => feed(h, &a.octets()),
        IpAddr::V6(a) => feed(h, &a.octets()),
    }
}

fn finish(h: Sha256) -> KeyDigest {
    let full = h.finalize();
    let mut d = [0u8; 16];
    d.copy_from_slice(&full[..16]);
    d
}

/// The keys of a policy's own parts and of its `missing_key: client_ip` stand-in never meet.
const DOMAIN_PARTS: u8 = 0;
const DOMAIN_MISSING: u8 = 1;

struct PolicyMetrics {
    allowed: Counter,
    limited: Counter,
    exempt: Counter,
    skipped: Counter,
    fallback_allowed: Counter,
    fallback_limited: Counter,
    /// By [`StoreError::reason`]: unavailable, timeout, error, circuit_open.
    store_errors: [Counter; 4],
}

/// One compiled policy. Its in-process store is kept across reloads while its config is unchanged.
pub struct Policy {
    pub name: Arc<str>,
    key: RequestKey,
    limit: Limit,
    cost: u64,
    missing_key: MissingKey,
    exempt_cidrs: Vec<IpNet>,
    exempt_claims: Vec<(String, String)>,
    headers: bool,
    legacy_headers: bool,
    /// `RateLimit-Policy` item, rendered once, and as a whole header value for the common
    /// route with one policy.
    policy_item: String,
    policy_value: Option<HeaderValue>,
    /// The quoted name that starts this policy's `RateLimit` item.
    quoted_name: String,
    local: Arc<LocalStore>,
    max_keys: usize,
    redis: Option<(Arc<RedisStore>, RateLimitFallback, String)>,
    metrics: PolicyMetrics,
}

/// Parses `100/s`, `6000/m`, `10/30s`, `1000/1h` into (count, period).
pub fn parse_rate(s: &str) -> Result<(u64, Duration), String> {
    let (n, per) = s
        .split_once('/')
        .ok_or_else(|| format!("`{s}` is not a rate such as 100/s or 6000/m"))?;
    let n: u64 = n
        .trim()
        .parse()
        .map_err(|_| format!("`{n}` is not a whole number of requests"))?;
    let per = per.trim();
    let period = match per {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        "d" | "day" => Duration::from_secs(86_400),
        other => humantime::parse_duration(other)
            .map_err(|e| format!("`{other}` is not a period (s, m, h, d or a duration like 30s): {e}"))?,
    };
    if n == 0 || period.is_zero() {
        return Err("a rate needs at least one request per non-zero period".into());
    }
    Ok((n, period))
}

impl Policy {
    /// `key` is `cfg.key`, parsed by the caller (which reports its old spellings); `limit` is
    /// [`Policy::limit`] of `cfg`; `local` the in-process store for it (kept across reloads by
    /// the caller); `redis` the shared one.
    pub fn new(
        name: &str,
        cfg: &RateLimitPolicyConfig,
        key: RequestKey,
        limit: Limit,
        local: Arc<LocalStore>,
        redis: Option<(Arc<RedisStore>, RateLimitFallback, String)>,
        metrics: &Metrics,
    ) -> Result<Self, String> {
        if cfg.max_keys == 0 {
            return Err("max_keys: must be at least 1".into());
        }
        let (quota, window) = limit.quota();
        let quoted_name = format!("\"{}\"", name.replace(['"', '\\'], ""));
        let policy_item = format!(
            "{quoted_name};q={quota};w={}",
            window.as_secs_f64().ceil().max(1.0) as u64
        );
        let c = |result: &str| metrics.counter(RATELIMIT_DECISIONS, &[("policy", name), ("result", result)]);
        let e =
            |reason: &str| metrics.counter(RATELIMIT_STORE_ERRORS, &[("policy", name), ("reason", reason)]);
        Ok(Self {
            name: Arc::from(name),
            key,
            limit,
            cost: cfg.cost,
            missing_key: cfg.missing_key,
            exempt_cidrs: cfg.exempt.cidrs.clone(),
            exempt_claims: cfg
                .exempt
                .claims
                .iter()
                .map(|c| (c.name.clone(), c.equals.clone()))
                .collect(),
            headers: cfg.headers,
            legacy_headers: cfg.legacy_headers,
            policy_value: HeaderValue::from_str(&policy_item).ok(),
            policy_item,
            quoted_name,
            local,
            max_keys: cfg.max_keys,
            redis,
            metrics: PolicyMetrics {
                allowed: c("allowed"),
                limited: c("limited"),
                exempt: c("exempt"),
                skipped: c("skipped"),
                fallback_allowed: c("fallback_allowed"),
                fallback_limited: c("fallback_limited"),
                store_errors: redis::StoreError::REASONS.map(e),
            },
        })
    }

    /// The compiled limit of a policy config (also how the caller keys its kept local store).
    pub fn limit(cfg: &RateLimitPolicyConfig) -> Result<Limit, String> {
        let (n, period) = parse_rate(&cfg.rate).map_err(|e| format!("rate: {e}"))?;
        if cfg.cost == 0 {
            return Err("cost: must be at least 1".into());
        }
        let limit = match cfg.algorithm {
            RateLimitAlgorithm::Gcra => {
                let burst = cfg.burst.unwrap_or(n);
                if burst == 0 {
                    return Err("burst: must be at least 1".into());
                }
                let interval = (period.as_nanos() / n as u128) as u64;
                if interval < 1_000 {
                    return Err("rate: more than one million per second cannot be limited".into());
                }
                if cfg.cost > burst {
                    return Err(format!(
                        "cost: {} exceeds the burst of {burst}; no request could pass",
                        cfg.cost
                    ));
                }
                Limit::Gcra { interval, burst }
            }
            RateLimitAlgorithm::SlidingWindow => {
                if cfg.burst.is_some() {
                    return Err(
                        "burst: a sliding window has no burst; its limit is the count in `rate`".into(),
                    );
                }
                if cfg.cost > n {
                    return Err(format!(
                        "cost: {} exceeds the limit of {n}; no request could pass",
                        cfg.cost
                    ));
                }
                Limit::Sliding {
                    window: period.as_nanos().min(u64::MAX as u128) as u64,
                    limit: n,
                }
            }
        };
        Ok(limit)
    }

    pub fn local_store(&self) -> Arc<LocalStore> {
        self.local.clone()
    }

    /// Whether a policy with this config uses Redis, given the store section.
    pub fn uses_redis(cfg: &RateLimitPolicyConfig, redis_configured: bool) -> bool {
        match cfg.store {
            Some(RateLimitStoreKind::Redis) => true,
            Some(RateLimitStoreKind::Local) => false,
            None => redis_configured,
        }
    }

    /// The digest of the request's key parts; `None` when one is missing. Each part is hashed
    /// where it lies (a header's size is bounded by the listener's `max_header_bytes`; a claim is
    /// copied, as the token holds it, and tokens are size-capped before decoding).
    fn key(&self, f: &KeyFacts<'_>) -> Option<KeyDigest> {
        let mut h = Sha256::new();
        h.update([DOMAIN_PARTS]);
        self.key.feed(f, |part| feed(&mut h, part))?;
        Some(finish(h))
    }

    fn missing_key(client: IpAddr) -> KeyDigest {
        let mut h = Sha256::new();
        h.update([DOMAIN_MISSING]);
        feed_ip(&mut h, client);
        finish(h)
    }

    fn exempt(&self, src: &KeyFacts<'_>) -> bool {
        self.exempt_cidrs.iter().any(|n| n.contains(&src.client))
            || src.claims.is_some_and(|c| {
                self.exempt_claims
                    .iter()
                    .any(|(name, want)| c.get_str(name).as_deref() == Some(want.as_str()))
            })
    }

    /// `None`: the policy does not apply to this request (exempt, or no key and `skip`).
    pub async fn decide(&self, src: &KeyFacts<'_>) -> Option<Decision> {
        if self.exempt(src) {
            self.metrics.exempt.increment(1);
            return None;
        }
        let key = match (self.key(src), self.missing_key) {
            (Some(k), _) => k,
            (None, MissingKey::ClientIp) => Self::missing_key(src.client),
            (None, MissingKey::Skip) => {
                self.metrics.skipped.increment(1);
                return None;
            }
        };
        let Some((store, fallback, prefix)) = &self.redis else {
            let d = self.local.decide(&key, self.cost, self.max_keys);
            self.count(&d, false);
            return Some(d);
        };
        let mut redis_key = String::with_capacity(prefix.len() + 32);
        redis_key.push_str(prefix);
        for b in key {
            let _ = write!(redis_key, "{b:02x}");
        }
        match store.decide(&redis_key, self.limit, self.cost).await {
            Ok(d) => {
                self.count(&d, false);
                Some(d)
            }
            Err(e) => {
                self.metrics.store_errors[e.reason()].increment(1);
                tracing::debug!(policy = %self.name, error = %e, "rate-limit store failed; fallback applies");
                let d = match fallback {
                    RateLimitFallback::Local => self.local.decide(&key, self.cost, self.max_keys),
                    RateLimitFallback::Allow => Decision {
                        allowed: true,
                        remaining: self.limit.quota().0,
                        reset: Duration::ZERO,
                        retry_after: Duration::ZERO,
                    },
                    RateLimitFallback::Deny => Decision {
                        allowed: false,
                        remaining: 0,
                        reset: Duration::from_secs(1),
                        retry_after: Duration::from_secs(1),
                    },
                };
                self.count(&d, true);
                Some(d)
            }
        }
    }

    fn count(&self, d: &Decision, fallback: bool) {
        let c = match (d.allowed, fallback) {
            (true, false) => &self.metrics.allowed,
            (false, false) => &self.metrics.limited,
            (true, true) => &self.metrics.fallback_allowed,
            (false, true) => &self.metrics.fallback_limited,
        };
        c.increment(1);
    }
}

/// The policies of one route.
pub struct RouteRateLimits {
    pub policies: Vec<Arc<Policy>>,
}

/// The decisions that admitted a request, for its response headers.
#[derive(Default)]
pub struct Admitted {
    decisions: Vec<(Arc<Policy>, Decision)>,
}

/// A request refused by a policy.
#[derive(Debug)]
pub struct Refused {
    pub policy: Arc<str>,
    pub retry_after: Duration,
    pub headers: HeaderMap,
}

impl RouteRateLimits {
    /// Policies are asked in order; the first refusal ends the check (units that earlier
    /// policies granted stay used, as in Envoy).
    pub async fn check(&self, src: &KeyFacts<'_>) -> Result<Admitted, Refused> {
        let mut admitted = Admitted::default();
        for p in &self.policies {
            let Some(d) = p.decide(src).await else { continue };
            admitted.decisions.push((p.clone(), d));
            if !d.allowed {
                let mut headers = HeaderMap::new();
                admitted.write_headers(&mut headers);
                return Err(Refused {
                    policy: p.name.clone(),
                    retry_after: d.retry_after,
                    headers,
                });
            }
        }
        Ok(admitted)
    }
}

impl Admitted {
    pub fn is_empty(&self) -> bool {
        self.decisions.is_empty()
    }

    /// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers), one list item
    /// per policy, and optionally the legacy `X-RateLimit-*` of the tightest policy.
    pub fn write_headers(&self, h: &mut HeaderMap) {
        let mut policy: Option<HeaderValue> = None;
        // Only a second policy needs the items joined.
        let mut first_item = "";
        let mut joined: Option<String> = None;
        let mut state = String::new();
        let mut tightest: Option<&(Arc<Policy>, Decision)> = None;
        for entry in &self.decisions {
            let (p, d) = entry;
            if p.headers {
                if state.is_empty() {
                    // One policy, the usual case: its value was rendered with the config.
                    policy = p.policy_value.clone();
                    first_item = &p.policy_item;
                } else {
                    let joined = joined.get_or_insert_with(|| first_item.to_owned());
                    joined.push_str(", ");
                    joined.push_str(&p.policy_item);
                    state.push_str(", ");
                }
                // Written with `itoa`: through `fmt`, the two numbers cost about 750
                // instructions per request.
                let (mut r, mut t) = (itoa::Buffer::new(), itoa::Buffer::new());
                let (r, t) = (r.format(d.remaining), t.format(secs_up(d.reset)));
                state.reserve(p.quoted_name.len() + r.len() + t.len() + 6);
                state.push_str(&p.quoted_name);
                state.push_str(";r=");
                state.push_str(r);
                state.push_str(";t=");
                state.push_str(t);
            }
            if p.legacy_headers && tightest.is_none_or(|(_, t)| d.remaining < t.remaining) {
                tightest = Some(entry);
            }
        }
        if let Some(j) = joined {
            policy = HeaderValue::from_str(&j).ok();
        }
        // The value takes the string's buffer over (no copy); the names and numbers in it are
        // valid header text.
        if let (Some(p), Ok(s)) = (policy, HeaderValue::from_maybe_shared(bytes::Bytes::from(state))) {
            h.insert(RATELIMIT_POLICY, p);
            h.insert(RATELIMIT, s);
        }
        if let Some((p, d)) = tightest {
            h.insert(X_LIMIT, HeaderValue::from(p.limit.quota().0));
            h.insert(X_REMAINING, HeaderValue::from(d.remaining));
            h.insert(X_RESET, HeaderValue::from(secs_up(d.reset)));
        }
    }
}

/// Whole seconds, rounded up: a client that waits this long is never early.
pub fn secs_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_units_and_durations() {
        assert_eq!(parse_rate("100/s").unwrap(), (100, Duration::from_secs(1)));
        assert_eq!(parse_rate("6000/m").unwrap(), (6000, Duration::from_secs(60)));
        assert_eq!(parse_rate("10/30s").unwrap(), (10, Duration::from_secs(30)));
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("ten/s").is_err());
        assert!(parse_rate("10").is_err());
        assert!(parse_rate("10/fortnight").is_err());
    }

    #[test]
    fn key_parts_cannot_shift_into_each_other_and_missing_keys_are_apart() {
        let mut a = Sha256::new();
        feed(&mut a, b"a|b");
        feed(&mut a, b"c");
        let mut b = Sha256::new();
        feed(&mut b, b"a");
        feed(&mut b, b"b|c");
        assert_ne!(finish(a), finish(b));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut own = Sha256::new();
        own.update([DOMAIN_PARTS]);
        feed_ip(&mut own, ip);
        assert_ne!(finish(own), Policy::missing_key(ip));
    }

    #[test]
    fn seconds_round_up() {
        assert_eq!(secs_up(Duration::from_millis(1)), 1);
        assert_eq!(secs_up(Duration::from_secs(2)), 2);
        assert_eq!(secs_up(Duration::ZERO), 0);
    }
}
