//! JWT providers: keys (static PEM, an HMAC secret from the environment, or a JWKS URL kept
//! fresh), and verification hardened as SECURITY.md asks: the algorithm comes from config and
//! must match the key's family, `kid` is an exact lookup in the cached set, nothing a token
//! names is ever fetched, the size is capped before decoding, `iss`/`aud`/`exp`/`nbf` are always
//! checked with the configured leeway, and duplicate claims are refused.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::file::JwtProviderConfig;

/// Verified claims. Deserialising refuses a duplicated key anywhere at the top level
/// (`{"role":"user","role":"admin"}` is an attack, not a token).
#[derive(Debug, Clone, Default)]
pub struct Claims(pub BTreeMap<String, serde_json::Value>);

impl<'de> Deserialize<'de> for Claims {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Claims;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object of claims")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Claims, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((k, v)) = m.next_entry::<String, serde_json::Value>()? {
                    if out.insert(k.clone(), v).is_some() {
                        return Err(serde::de::Error::custom(format!("duplicate claim `{k}`")));
                    }
                }
                Ok(Claims(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl Claims {
    pub fn get_str(&self, name: &str) -> Option<String> {
        match self.0.get(name)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            serde_json::Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// Scopes from a space-separated `scope` string or an `scp` array.
    pub fn scopes(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        if let Some(serde_json::Value::String(s)) = self.0.get("scope") {
            out.extend(s.split_whitespace().map(str::to_string));
        }
        match self.0.get("scp") {
            Some(serde_json::Value::Array(a)) => {
                out.extend(a.iter().filter_map(|v| v.as_str().map(str::to_string)))
            }
            Some(serde_json::Value::String(s)) => out.extend(s.split_whitespace().map(str::to_string)),
            _ => {}
        }
        out
    }
}

/// Why a token was refused (for the log; the client only learns `invalid_token`).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token is larger than {0} bytes")]
    TooLarge(usize),
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("algorithm {0:?} is not allowed for this provider")]
    Algorithm(Algorithm),
    #[error("no key for this token (kid {0:?})")]
    UnknownKey(Option<String>),
    #[error("the key is not of the token's algorithm family")]
    KeyFamily,
    #[error("rejected: {0}")]
    Invalid(String),
    #[error("the identity provider's keys are unavailable: {0}")]
    KeysUnavailable(String),
}

/// A verification key and a digest of its material. A cached token stays valid only while
/// the key `lookup` would choose for it is still the one that verified it.
#[derive(Clone)]
struct Key {
    key: DecodingKey,
    id: [u8; 32],
}

impl Key {
    fn new(key: DecodingKey, material: &[&[u8]]) -> Self {
        let mut d = Sha256::new();
        for m in material {
            // Length-prefixed, so two different splits of the same bytes differ.
            d.update((m.len() as u64).to_be_bytes());
            d.update(m);
        }
        Self {
            key,
            id: d.finalize().into(),
        }
    }

    fn from_jwk(key: DecodingKey, jwk: &jsonwebtoken::jwk::Jwk) -> Self {
        let json = serde_json::to_vec(jwk).unwrap_or_default();
        Self::new(key, &[b"jwk", &json])
    }
}

/// Keys from config (PEM, JWK file, HMAC secret); replaced on reload when their files change.
struct StaticKeys {
    /// JWK-file keys that carry a `kid`.
    by_kid: HashMap<String, Key>,
    /// Keys without a `kid`: tried for tokens whose `kid` finds nothing else.
    anonymous: Vec<Key>,
    /// A digest of the key material, to tell whether a reload changed it.
    fingerprint: [u8; 32],
}

pub struct JwtProvider {
    pub name: String,
    cfg: JwtProviderConfig,
    algorithms: Vec<Algorithm>,
    static_keys: ArcSwap<StaticKeys>,
    /// The last good JWKS, by `kid`.
    fetched: ArcSwap<HashMap<String, Key>>,
    /// When keys were last fetched (ms since `epoch`), for the unknown-`kid` refetch limit.
    last_fetch_ms: AtomicU64,
    fetch_lock: tokio::sync::Mutex<()>,
    /// Whether the JWKS was ever fetched. Until it is, a token that finds no key means the IdP
    /// is down (503), not that the token is bad (401).
    jwks_loaded: std::sync::atomic::AtomicBool,
    epoch: Instant,
    cache: moka::sync::Cache<[u8; 32], Cached>,
    /// `ficus_jwt_cache_total{result="hit"}` and `{result="miss"}`.
    cache_hits: metrics::Counter,
    cache_misses: metrics::Counter,
    pub(crate) refresher_started: std::sync::atomic::AtomicBool,
    /// Built once: http, or https verified against the webpki roots or `ca_file`.
    client: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Empty<Bytes>,
    >,
}

#[derive(Clone)]
struct Cached {
    claims: Arc<Claims>,
    /// The token's `kid`, to find the key `lookup` would choose for it now.
    kid: Option<String>,
    /// The key that verified the token.
    key: [u8; 32],
    ttl: Duration,
}

struct CacheTtl;

impl moka::Expiry<[u8; 32], Cached> for CacheTtl {
    fn expire_after_create(&self, _k: &[u8; 32], v: &Cached, _now: std::time::Instant) -> Option<Duration> {
        Some(v.ttl)
    }
}

pub fn parse_algorithm(s: &str) -> Result<Algorithm, String> {
    s.parse::<Algorithm>()
        .map_err(|_| format!("`{s}` is not a JWT algorithm (RS256, ES256, HS256, ...)"))
}

impl JwtProvider {
    /// Builds the provider and loads static keys. A JWKS is fetched later, by [`refresh`].
    pub fn new(
        name: &str,
        cfg: &JwtProviderConfig,
        base_dir: &std::path::Path,
        metrics: &crate::telemetry::Metrics,
    ) -> Result<Self, String> {
        let algorithms = cfg
            .algorithms
            .iter()
            .map(|a| parse_algorithm(a))
            .collect::<Result<Vec<_>, _>>()?;
        if algorithms.is_empty() {
            return Err("list at least one algorithm".into());
        }
        let families: Vec<_> = algorithms.iter().map(|a| a.family()).collect();
        let hmac = families.contains(&jsonwebtoken::AlgorithmFamily::Hmac);
        if hmac && families.iter().any(|f| *f != jsonwebtoken::AlgorithmFamily::Hmac) {
            // The classic confusion: a public key used as an HMAC secret.
            return Err("HMAC algorithms cannot share a provider with public-key algorithms".into());
        }
        let static_keys = load_static_keys(cfg, &families, base_dir)?;
        if static_keys.anonymous.is_empty() && static_keys.by_kid.is_empty() && cfg.jwks_url.is_none() {
            return Err("set jwks_url, pem_file, jwk_file or hmac_secret_env".into());
        }
        let connector = crate::upstream::tls::idp_connector(
            cfg.ca_file.as_deref(),
            base_dir,
            cfg.jwks_timeout.min(Duration::from_secs(2)),
        )
        .map_err(|e| format!("ca_file: {e}"))?;
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Self {
            client,
            name: name.to_string(),
            cfg: cfg.clone(),
            algorithms,
            static_keys: ArcSwap::from_pointee(static_keys),
            fetched: ArcSwap::from_pointee(HashMap::new()),
            last_fetch_ms: AtomicU64::new(0),
            fetch_lock: tokio::sync::Mutex::new(()),
            jwks_loaded: Default::default(),
            epoch: Instant::now(),
            cache: moka::sync::Cache::builder()
                .max_capacity(cfg.cache_entries)
                .expire_after(CacheTtl)
                .build(),
            refresher_started: Default::default(),
            cache_hits: metrics.counter(
                crate::telemetry::metrics::JWT_CACHE,
                &[("provider", name), ("result", "hit")],
            ),
            cache_misses: metrics.counter(
                crate::telemetry::metrics::JWT_CACHE,
                &[("provider", name), ("result", "miss")],
            ),
        })
    }

    /// Whether `fresh`, built from the same config, read the same static keys. When a key file
    /// changed, the reload replaces the provider, and its verified-token cache with it.
    pub fn static_keys_match(&self, fresh: &JwtProvider) -> bool {
        self.static_keys.load().fingerprint == fresh.static_keys.load().fingerprint
    }

    /// A reload changed this provider's config but not its JWKS URL: start from the keys the
    /// old one had, so a reload during an IdP outage does not turn every token into a 503.
    pub fn inherit_jwks(&self, old: &JwtProvider) {
        if self.cfg.jwks_url.is_some() && self.cfg.jwks_url == old.cfg.jwks_url && old.jwks_loaded() {
            self.fetched.store(old.fetched.load_full());
            self.jwks_loaded.store(true, Ordering::Release);
        }
    }

    pub fn config(&self) -> &JwtProviderConfig {
        &self.cfg
    }

    /// Fetches the JWKS now (the refresher calls this on schedule). On failure the last good
    /// keys stay. Returns how long the IdP asks the keys to be cached, if it says.
    pub async fn refresh(&self) -> Result<Option<Duration>, String> {
        // One fetch at a time: a request that misses a `kid` waits for a fetch in flight
        // (the start-up one, say) instead of starting another.
        let _one = self.fetch_lock.lock().await;
        self.fetch().await
    }

    async fn fetch(&self) -> Result<Option<Duration>, String> {
        let Some(url) = &self.cfg.jwks_url else {
            return Ok(None);
        };
        self.last_fetch_ms
            .store(self.epoch.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
        let req = http::Request::get(url.as_str())
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        // The whole exchange is bounded, body included: this runs under `fetch_lock`, so an
        // IdP that sends its head and then trickles (or stalls) the body would otherwise
        // hold up every refetch, and every request waiting for one.
        let call = async {
            let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
            if !resp.status().is_success() {
                return Err(format!("JWKS answered {}", resp.status()));
            }
            let max_age = resp
                .headers()
                .get(http::header::CACHE_CONTROL)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    v.split(',')
                        .find_map(|d| d.trim().strip_prefix("max-age=")?.parse::<u64>().ok())
                })
                .map(Duration::from_secs);
            let body = http_body_util::Limited::new(resp.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map_err(|e| format!("JWKS body: {e}"))?
                .to_bytes();
            Ok((max_age, body))
        };
        let call = tokio::time::timeout(self.cfg.jwks_timeout, call);
        let fetched = crate::telemetry::traces::in_current(
            "jwks fetch",
            opentelemetry::trace::SpanKind::Client,
            call,
            |r| match r {
                Err(_) => Some("timeout".into()),
                Ok(Err(_)) => Some("error".into()),
                Ok(Ok(_)) => None,
            },
        );
        let (max_age, body) = fetched
            .await
            .map_err(|_| format!("no complete JWKS within {:?}", self.cfg.jwks_timeout))??;
        let set: JwkSet = serde_json::from_slice(&body).map_err(|e| format!("bad JWKS: {e}"))?;
        let mut by_kid = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = &jwk.common.key_id else { continue };
            // A key whose type does not fit the provider's algorithms is skipped: a JWKS `oct`
            // entry must never turn an RS256 provider into HS256.
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            if self.algorithms.iter().any(|a| a.family() == key.family()) {
                by_kid.insert(kid.clone(), Key::from_jwk(key, jwk));
            }
        }
        self.fetched.store(Arc::new(by_kid));
        self.jwks_loaded.store(true, Ordering::Release);
        Ok(max_age)
    }

    /// An unknown `kid` may mean the IdP rotated: refetch, but at most once per
    /// `unknown_kid_refetch`, however many such tokens arrive.
    async fn refetch_for_unknown_kid(&self) {
        let _one = self.fetch_lock.lock().await;
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.last_fetch_ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < self.cfg.unknown_kid_refetch.as_millis() as u64 {
            return;
        }
        if let Err(e) = self.fetch().await {
            tracing::warn!(provider = %self.name, error = %e, "JWKS refetch failed; keeping the last good keys");
        }
    }

    pub async fn verify(&self, token: &str) -> Result<Arc<Claims>, TokenError> {
        let max = usize::try_from(self.cfg.max_token_bytes.0).unwrap_or(usize::MAX);
        if token.len() > max {
            return Err(TokenError::TooLarge(max));
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(hit) = self.cache.get(&digest) {
            // An entry must not outlive its key: the key this token would be verified with now
            // must be the one that verified it (not removed from the JWKS, not replaced).
            if self.lookup_id(hit.kid.as_deref()) == Some(hit.key) {
                self.cache_hits.increment(1);
                return Ok(hit.claims);
            }
            self.cache.invalidate(&digest);
        }
        self.cache_misses.increment(1);
        let header = jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(TokenError::Algorithm(header.alg));
        }
        let mut found = self.lookup(header.kid.as_deref());
        let jwks = self.cfg.jwks_url.is_some();
        if found.is_none() && jwks && (header.kid.is_some() || !self.jwks_loaded()) {
            self.refetch_for_unknown_kid().await;
            found = self.lookup(header.kid.as_deref());
        }
        let Key { key, id: key_id } = match found {
            Some(k) => k,
            None if jwks && !self.jwks_loaded() => {
                return Err(TokenError::KeysUnavailable(format!(
                    "the JWKS of provider `{}` has never been fetched successfully",
                    self.name
                )))
            }
            None => return Err(TokenError::UnknownKey(header.kid.clone())),
        };
        if key.family() != header.alg.family() {
            return Err(TokenError::KeyFamily);
        }
        let mut v = Validation::new(header.alg);
        v.algorithms = vec![header.alg];
        v.leeway = self.cfg.leeway.as_secs();
        v.validate_nbf = true;
        v.validate_exp = self.cfg.require_exp;
        v.set_issuer(&[&self.cfg.issuer]);
        v.set_audience(&self.cfg.audiences);
        let mut required = vec!["iss", "aud"];
        if self.cfg.require_exp {
            required.push("exp");
        }
        v.set_required_spec_claims(&required);
        let data = jsonwebtoken::decode::<Claims>(token, &key, &v)
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        let claims = Arc::new(data.claims);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        // jsonwebtoken does not look at `iat`: a token issued in the future is refused here.
        match claims.0.get("iat") {
            None => {}
            Some(v) => match v.as_u64() {
                Some(iat) if iat <= now + self.cfg.leeway.as_secs() => {}
                _ => {
                    return Err(TokenError::Invalid(
                        "`iat` is in the future or not a number".into(),
                    ))
                }
            },
        }
        let until_exp = claims
            .0
            .get("exp")
            .and_then(serde_json::Value::as_u64)
            .map_or(self.cfg.cache_ttl, |exp| {
                Duration::from_secs(exp.saturating_sub(now))
            });
        let ttl = until_exp.min(self.cfg.cache_ttl);
        if !ttl.is_zero() {
            self.cache.insert(
                digest,
                Cached {
                    claims: claims.clone(),
                    kid: header.kid,
                    key: key_id,
                    ttl,
                },
            );
        }
        Ok(claims)
    }

    /// True once a JWKS fetch has succeeded (later failures keep the last good keys).
    pub fn jwks_loaded(&self) -> bool {
        self.jwks_loaded.load(Ordering::Acquire)
    }

    /// The key for a token's `kid`: the fetched JWKS, then the static keys by `kid`, then the
    /// first static key without one.
    fn lookup_with<R>(&self, kid: Option<&str>, f: impl FnOnce(&Key) -> R) -> Option<R> {
        let statics = self.static_keys.load();
        let fetched = self.fetched.load();
        let key = match kid {
            // Exact match only: a `kid` is a name, never a path, query or URL.
            Some(k) => fetched
                .get(k)
                .or_else(|| statics.by_kid.get(k))
                .or_else(|| statics.anonymous.first()),
            None => statics.anonymous.first(),
        };
        key.map(f)
    }

    fn lookup(&self, kid: Option<&str>) -> Option<Key> {
        self.lookup_with(kid, Key::clone)
    }

    fn lookup_id(&self, kid: Option<&str>) -> Option<[u8; 32]> {
        self.lookup_with(kid, |k| k.id)
    }
}

/// Reads the configured static keys. Only keys of the provider's algorithm families are kept,
/// so a JWK file's `oct` entry can never turn an RS256 provider into HS256.
fn load_static_keys(
    cfg: &JwtProviderConfig,
    families: &[jsonwebtoken::AlgorithmFamily],
    base_dir: &std::path::Path,
) -> Result<StaticKeys, String> {
    use jsonwebtoken::AlgorithmFamily as F;
    let mut digest = Sha256::new();
    let mut anonymous = Vec::new();
    let mut by_kid = HashMap::new();
    let read = |file: &std::path::Path| {
        let path = base_dir.join(file);
        std::fs::read(&path)
            .map(|b| (path.clone(), b))
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    if let Some(pem) = &cfg.pem_file {
        let (path, bytes) = read(pem)?;
        digest.update(&bytes);
        let key = families
            .iter()
            .find_map(|f| match f {
                F::Rsa => DecodingKey::from_rsa_pem(&bytes).ok(),
                F::Ec => DecodingKey::from_ec_pem(&bytes).ok(),
                F::Ed => DecodingKey::from_ed_pem(&bytes).ok(),
                F::Hmac => None,
            })
            .ok_or_else(|| format!("{}: not a public key for {:?}", path.display(), cfg.algorithms))?;
        anonymous.push(Key::new(key, &[b"pem", &bytes]));
    }
    if let Some(file) = &cfg.jwk_file {
        let (path, bytes) = read(file)?;
        digest.update(&bytes);
        let keys = parse_jwk_file(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut usable = 0;
        for jwk in &keys {
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("{}: {e}", path.display()))?;
            if !families.contains(&key.family()) {
                continue;
            }
            usable += 1;
            let key = Key::from_jwk(key, jwk);
            match &jwk.common.key_id {
                Some(kid) => {
                    by_kid.insert(kid.clone(), key);
                }
                None => anonymous.push(key),
            }
        }
        if usable == 0 {
            return Err(format!(
                "{}: no key for the algorithms {:?}",
                path.display(),
                cfg.algorithms
            ));
        }
    }
    if let Some(env) = &cfg.hmac_secret_env {
        let secret = std::env::var(env).map_err(|_| format!("environment variable {env} is not set"))?;
        if secret.len() < 32 {
            return Err(format!("the HMAC secret in {env} must be at least 32 bytes"));
        }
        digest.update(secret.as_bytes());
        anonymous.push(Key::new(
            DecodingKey::from_secret(secret.as_bytes()),
            &[b"hmac", secret.as_bytes()],
        ));
    }
    Ok(StaticKeys {
        by_kid,
        anonymous,
        fingerprint: digest.finalize().into(),
    })
}

/// A JWK file holds one JWK or a JWK Set (`{"keys": [...]}`).
fn parse_jwk_file(bytes: &[u8]) -> Result<Vec<jsonwebtoken::jwk::Jwk>, String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    if v.get("keys").is_some() {
        let set: JwkSet = serde_json::from_value(v).map_err(|e| format!("not a JWK Set: {e}"))?;
        Ok(set.keys)
    } else {
        let jwk = serde_json::from_value(v).map_err(|e| format!("not a JWK: {e}"))?;
        Ok(vec![jwk])
    }
}

/// A JWKS larger than this is refused (real ones are a few KiB).
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// The shortest wait between two scheduled JWKS fetches, whatever the config or the IdP say
/// (the config compiler refuses a shorter `jwks_refresh`; this guards the loop anyway).
pub const MIN_JWKS_REFRESH: Duration = Duration::from_secs(1);

/// Keeps every provider's JWKS fresh: at start, then every `jwks_refresh` (or sooner when the
/// IdP's `Cache-Control: max-age` says so). The task ends when the provider is dropped.
pub fn start_refreshers(providers: &[Arc<JwtProvider>]) {
    for p in providers {
        if p.cfg.jwks_url.is_none() || p.refresher_started.swap(true, Ordering::AcqRel) {
            continue;
        }
        let weak = Arc::downgrade(p);
        tokio::spawn(async move {
            loop {
                let Some(p) = weak.upgrade() else { return };
                let fetched = p.refresh().await;
                if let Err(e) = &fetched {
                    tracing::warn!(provider = %p.name, error = %e, "JWKS fetch failed; keeping the last good keys");
                }
                let wait = next_fetch_in(&fetched, p.cfg.jwks_refresh);
                drop(p);
                tokio::time::sleep(wait).await;
            }
        });
    }
}

/// How long the refresher waits after a fetch: `jwks_refresh`, or sooner when the IdP's
/// `max-age` says so; after a failure, a short retry.
fn next_fetch_in(fetched: &Result<Option<Duration>, String>, every: Duration) -> Duration {
    let every = every.max(MIN_JWKS_REFRESH);
    let wait = match fetched {
        // `max-age` may bring the next fetch forward, never below 10 s (nor past `every`,
        // so an interval shorter than 10 s stays what it is).
        Ok(max_age) => max_age.map_or(every, |m| m.max(Duration::from_secs(10)).min(every)),
        Err(_) => Duration::from_secs(5).min(every),
    };
    wait.max(MIN_JWKS_REFRESH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refresh_delay_never_panics_and_never_spins() {
        let s = Duration::from_secs;
        // The IdP's max-age shortens the interval, down to a floor of 10 s.
        assert_eq!(next_fetch_in(&Ok(Some(s(60))), s(300)), s(60));
        assert_eq!(next_fetch_in(&Ok(Some(s(1))), s(300)), s(10));
        assert_eq!(next_fetch_in(&Ok(Some(s(900))), s(300)), s(300));
        assert_eq!(next_fetch_in(&Ok(None), s(300)), s(300));
        assert_eq!(next_fetch_in(&Err("down".into()), s(300)), s(5));
        // An interval under the 10 s floor (the clamp's bounds were inverted: a panic).
        assert_eq!(next_fetch_in(&Ok(Some(s(1))), s(5)), s(5));
        assert_eq!(next_fetch_in(&Ok(Some(s(0))), s(5)), s(5));
        assert_eq!(next_fetch_in(&Ok(Some(s(60))), s(5)), s(5));
        assert_eq!(next_fetch_in(&Err("down".into()), s(2)), s(2));
        // Whatever the config says, never a tight loop.
        for every in [
            Duration::ZERO,
            Duration::from_millis(1),
            Duration::from_millis(999),
        ] {
            for fetched in [
                Ok(None),
                Ok(Some(Duration::ZERO)),
                Ok(Some(s(1))),
                Err(String::new()),
            ] {
                assert!(next_fetch_in(&fetched, every) >= MIN_JWKS_REFRESH, "{every:?}");
            }
        }
    }

    const EC_JWK: &str = r#"{"kty":"EC","crv":"P-256","kid":"a","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;

    #[test]
    fn a_jwk_file_is_one_jwk_or_a_set() {
        assert_eq!(parse_jwk_file(EC_JWK.as_bytes()).unwrap().len(), 1);
        let set = format!(r#"{{"keys":[{EC_JWK},{EC_JWK}]}}"#);
        assert_eq!(parse_jwk_file(set.as_bytes()).unwrap().len(), 2);
        assert!(parse_jwk_file(b"-----BEGIN PUBLIC KEY-----").is_err());
        assert!(parse_jwk_file(br#"{"keys":"no"}"#).is_err());
    }

    #[test]
    fn jwk_keys_of_another_family_are_not_loaded() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k.json"), EC_JWK).unwrap();
        let cfg: JwtProviderConfig =
            serde_yaml_ng::from_str("{ issuer: i, audiences: [a], algorithms: [ES256], jwk_file: k.json }")
                .unwrap();
        let p = JwtProvider::new("p", &cfg, dir.path(), &crate::telemetry::Metrics::new()).unwrap();
        assert!(p.lookup(Some("a")).is_some());
        let rsa_only = JwtProviderConfig {
            algorithms: vec!["RS256".into()],
            ..cfg
        };
        let err = JwtProvider::new("p", &rsa_only, dir.path(), &crate::telemetry::Metrics::new())
            .err()
            .unwrap();
        assert!(err.contains("no key for the algorithms"), "{err}");
    }
}
