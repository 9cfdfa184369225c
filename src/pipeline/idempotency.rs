//! Stage 7: idempotency keys (draft-ietf-httpapi-idempotency-key-header), per route.
//!
//! The first request with a key takes a lock on `(route, principal, key)` and goes upstream; its
//! outcome, when configured to be kept, is stored and replayed to later requests with the same
//! key (`Idempotency-Replayed: true`). While it is in flight, the same key gets 409; the same key
//! with a different request (fingerprint) gets 422. The store is in-process (moka) or Redis
//! (`SET NX` plus TTL), so that several ficus instances agree.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::header::{HeaderName, CONTENT_LENGTH, SET_COOKIE};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::body::{InBody, ResponseBody};
use super::key::{KeyFacts, KeySource, Parsed, RequestKey};
use crate::config::file::{IdempotencyConfig, IdempotencyStoreConfig, StatusPattern};
use crate::error::ProxyError;

pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
pub const IDEMPOTENCY_REPLAYED: HeaderName = HeaderName::from_static("idempotency-replayed");

/// Parses `scope`, spelled like every request key. `route` and `path` are refused: neither tells
/// callers apart (and the route is part of every stored key already), so one caller's answer
/// would be replayed to another.
pub fn parse_scope(parts: &[String]) -> Result<Parsed, String> {
    RequestKey::parse_list(parts)?.refuse(
        |k| matches!(k, KeySource::Route | KeySource::Path),
        "does not tell callers apart: one caller's stored answer would be replayed to another",
    )
}

/// A route's idempotency settings, compiled.
pub struct RouteIdempotency {
    pub required: bool,
    /// `scope`: whose keys these are when the caller has no verified identity.
    scope: Option<RequestKey>,
    pub ttl: Duration,
    pub lock_ttl: Duration,
    pub max_request_bytes: u64,
    pub max_response_bytes: u64,
    statuses: Vec<StatusPattern>,
}

impl RouteIdempotency {
    /// A route's `idempotency` section. `has_identity`: whether the route verifies callers.
    pub fn compile(
        cfg: &IdempotencyConfig,
        has_identity: bool,
        sec: &mut crate::config::problems::Section<'_, '_>,
    ) -> Option<Self> {
        let mut scope = None;
        if !cfg.scope.is_empty() {
            match parse_scope(&cfg.scope) {
                Ok(p) => {
                    for (key, reason) in p.old_spellings("scope") {
                        sec.warn(&key, reason);
                    }
                    scope = Some(p.key);
                }
                Err(reason) => sec.error("scope", reason),
            }
        } else if !has_identity {
            sec.warn(
                "",
                "no `identity` and no `scope`: an Idempotency-Key from a caller without a client certificate gets 400",
            );
        }
        if cfg.ttl.is_zero() || cfg.lock_timeout.is_zero() {
            sec.error("ttl", "ttl and lock_timeout must be greater than zero");
        }
        for (j, p) in cfg.store_statuses.iter().enumerate() {
            if !p.valid() {
                sec.error(
                    &format!("store_statuses[{j}]"),
                    "write a status (201) or a class (\"2xx\")",
                );
            }
        }
        Some(Self::new(cfg, scope))
    }

    /// `scope` is `cfg.scope`, parsed by the caller (which reports its errors).
    pub fn new(cfg: &IdempotencyConfig, scope: Option<RequestKey>) -> Self {
        Self {
            required: cfg.required,
            scope,
            ttl: cfg.ttl,
            lock_ttl: cfg.lock_timeout,
            max_request_bytes: cfg.max_request_bytes.0,
            max_response_bytes: cfg.max_response_bytes.0,
            statuses: cfg.store_statuses.clone(),
        }
    }

    /// Who the key belongs to: the verified subject (the token's `sub`, else the client
    /// certificate), else the route's `scope` key. `None` for an anonymous caller on a route
    /// without a scope (or whose request lacks the scope key): sharing one scope among all such
    /// callers would replay one caller's answer, cookies and all, to another.
    pub fn caller(&self, src: &KeyFacts<'_>) -> Option<String> {
        if let Some(sub) = src.claims.and_then(|c| c.get_str("sub")) {
            return Some(format!("sub:{sub}"));
        }
        if let Some(p) = src.client_cert {
            return Some(format!("sub:x509:{p}"));
        }
        self.scope.as_ref()?.text(src).map(|k| format!("scope:{k}"))
    }

    fn keeps(&self, status: StatusCode) -> bool {
        self.statuses.iter().any(|p| p.matches(status.as_u16()))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
enum Record {
    InFlight { token: String, fp: String },
    Done(Stored),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    fp: String,
    status: u16,
    headers: Vec<(String, String)>,
    /// Base64, so the record is plain JSON in Redis too.
    body: String,
}

enum Begin {
    Acquired { token: String },
    Existing(Record),
}

// ------------------------------------------------------------------------------------- store

pub struct IdempotencyStore {
    kind: StoreKind,
}

enum StoreKind {
    Local(moka::sync::Cache<String, LocalEntry>),
    Redis {
        client: redis::Client,
        conn: tokio::sync::OnceCell<redis::aio::ConnectionManager>,
        prefix: String,
    },
}

#[derive(Clone)]
struct LocalEntry {
    record: Arc<Record>,
    ttl: Duration,
}

struct PerEntryTtl;

impl moka::Expiry<String, LocalEntry> for PerEntryTtl {
    fn expire_after_create(&self, _k: &String, v: &LocalEntry, _now: std::time::Instant) -> Option<Duration> {
        Some(v.ttl)
    }

    fn expire_after_update(
        &self,
        _k: &String,
        v: &LocalEntry,
        _now: std::time::Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.ttl)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the idempotency store failed: {0}")]
pub struct StoreError(String);

/// Deletes the lock only if it is still ours (it may have expired and been taken by another).
const RELEASE: &str = r#"
local v = redis.call('GET', KEYS[1])
if v and string.find(v, ARGV[1], 1, true) then return redis.call('DEL', KEYS[1]) end
return 0
"#;

impl IdempotencyStore {
    pub fn new(cfg: &IdempotencyStoreConfig) -> Result<Self, String> {
        let kind = match &cfg.redis_url {
            None => StoreKind::Local(
                moka::sync::Cache::builder()
                    .max_capacity(cfg.max_entries)
                    .expire_after(PerEntryTtl)
                    .build(),
            ),
            Some(url) => StoreKind::Redis {
                client: redis::Client::open(url.as_str()).map_err(|e| e.to_string())?,
                conn: tokio::sync::OnceCell::new(),
                prefix: cfg.key_prefix.clone(),
            },
        };
        Ok(Self { kind })
    }

    async fn redis(&self) -> Result<(redis::aio::ConnectionManager, &str), StoreError> {
        let StoreKind::Redis { client, conn, prefix } = &self.kind else {
            return Err(StoreError("not a Redis store".into()));
        };
        let c = conn
            .get_or_try_init(|| async {
                tokio::time::timeout(Duration::from_secs(2), client.get_connection_manager())
                    .await
                    .map_err(|_| StoreError("connecting to Redis timed out".into()))?
                    .map_err(|e| StoreError(e.to_string()))
            })
            .await?;
        Ok((c.clone(), prefix))
    }

    async fn begin(&self, key: &str, fp: &str, lock_ttl: Duration) -> Result<Begin, StoreError> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let lock = Record::InFlight {
            token: token.clone(),
            fp: fp.to_string(),
        };
        match &self.kind {
            StoreKind::Local(cache) => {
                let entry = cache.entry(key.to_string()).or_insert_with(|| LocalEntry {
                    record: Arc::new(lock),
                    ttl: lock_ttl,
                });
                if entry.is_fresh() {
                    Ok(Begin::Acquired { token })
                } else {
                    Ok(Begin::Existing((*entry.into_value().record).clone()))
                }
            }
            StoreKind::Redis { .. } => {
                let (mut c, prefix) = self.redis().await?;
                let k = format!("{prefix}{key}");
                let value = serde_json::to_string(&lock).map_err(|e| StoreError(e.to_string()))?;
                // A key that expires between SET NX and GET is simply tried again.
                for _ in 0..3 {
                    let set: Option<String> = redis::cmd("SET")
                        .arg(&k)
                        .arg(&value)
                        .arg("NX")
                        .arg("PX")
                        .arg(lock_ttl.as_millis() as u64)
                        .query_async(&mut c)
                        .await
                        .map_err(|e| StoreError(e.to_string()))?;
                    if set.is_some() {
                        return Ok(Begin::Acquired { token });
                    }
                    let existing: Option<String> = redis::cmd("GET")
                        .arg(&k)
                        .query_async(&mut c)
                        .await
                        .map_err(|e| StoreError(e.to_string()))?;
                    if let Some(v) = existing {
                        let rec =
                            serde_json::from_str(&v).map_err(|e| StoreError(format!("bad record: {e}")))?;
                        return Ok(Begin::Existing(rec));
                    }
                }
                Err(StoreError("the key kept changing".into()))
            }
        }
    }

    async fn complete(&self, key: &str, stored: Stored, ttl: Duration) -> Result<(), StoreError> {
        let rec = Record::Done(stored);
        match &self.kind {
            StoreKind::Local(cache) => {
                cache.insert(
                    key.to_string(),
                    LocalEntry {
                        record: Arc::new(rec),
                        ttl,
                    },
                );
                Ok(())
            }
            StoreKind::Redis { .. } => {
                let (mut c, prefix) = self.redis().await?;
                let value = serde_json::to_string(&rec).map_err(|e| StoreError(e.to_string()))?;
                redis::cmd("SET")
                    .arg(format!("{prefix}{key}"))
                    .arg(value)
                    .arg("PX")
                    .arg(ttl.as_millis() as u64)
                    .query_async::<()>(&mut c)
                    .await
                    .map_err(|e| StoreError(e.to_string()))
            }
        }
    }

    /// Gives the key up (the outcome is not kept), so the client may try again.
    async fn release(&self, key: &str, token: &str) -> Result<(), StoreError> {
        match &self.kind {
            StoreKind::Local(cache) => {
                if let Some(e) = cache.get(key) {
                    if matches!(&*e.record, Record::InFlight { token: t, .. } if t == token) {
                        cache.invalidate(key);
                    }
                }
                Ok(())
            }
            StoreKind::Redis { .. } => {
                let (mut c, prefix) = self.redis().await?;
                redis::Script::new(RELEASE)
                    .key(format!("{prefix}{key}"))
                    .arg(token)
                    .invoke_async::<i64>(&mut c)
                    .await
                    .map(|_| ())
                    .map_err(|e| StoreError(e.to_string()))
            }
        }
    }
}

// ------------------------------------------------------------------------------------- stage

fn valid_key(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 255 && b.iter().all(|c| c.is_ascii_graphic())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Runs `next` (the rest of the pipeline) under the route's idempotency rules. `caller` is
/// [`RouteIdempotency::caller`]: without one, a request that sends a key is refused.
pub async fn handle<F, Fut>(
    cfg: &RouteIdempotency,
    store: &IdempotencyStore,
    route: &str,
    caller: Option<&str>,
    req: Request<InBody>,
    next: F,
) -> Result<Response<ResponseBody>, ProxyError>
where
    F: FnOnce(Request<InBody>) -> Fut,
    Fut: std::future::Future<Output = Result<Response<ResponseBody>, ProxyError>>,
{
    let key = match req.headers().get(IDEMPOTENCY_KEY) {
        None if cfg.required => return Err(ProxyError::IdempotencyKeyMissing),
        None => return next(req).await,
        Some(k) if !valid_key(k) => return Err(ProxyError::IdempotencyKeyInvalid),
        Some(k) => k.clone(),
    };
    // Refused rather than passed on unmanaged: the client asked for at-most-once and would
    // otherwise believe it has it.
    let Some(caller) = caller else {
        return Err(ProxyError::IdempotencyScopeMissing);
    };

    // The fingerprint needs the whole body; it is bounded like every buffered body.
    let (parts, body) = req.into_parts();
    if parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|n| n > cfg.max_request_bytes)
    {
        return Err(ProxyError::BodyTooLarge {
            limit: cfg.max_request_bytes,
        });
    }
    let bytes = match body {
        InBody::Buffered(b) => b,
        InBody::Stream(s) => http_body_util::Limited::new(s, cfg.max_request_bytes as usize)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                    ProxyError::BodyTooLarge {
                        limit: cfg.max_request_bytes,
                    }
                } else {
                    match e.downcast_ref::<hyper::Error>() {
                        Some(h) => ProxyError::client_fault(
                            crate::pipeline::body::ClientFault::of(h),
                            cfg.max_request_bytes,
                            e.to_string(),
                        ),
                        None => ProxyError::ClientBody(e.to_string()),
                    }
                }
            })?
            .to_bytes(),
    };
    let mut h = Sha256::new();
    h.update(parts.method.as_str().as_bytes());
    h.update(b"\n");
    h.update(
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .as_bytes(),
    );
    h.update(b"\n");
    h.update(&bytes);
    let fp = hex(&h.finalize());
    let scope = {
        let mut s = Sha256::new();
        s.update(route.as_bytes());
        s.update(b"\0");
        s.update(caller.as_bytes());
        s.update(b"\0");
        s.update(key.as_bytes());
        hex(&s.finalize())
    };

    let begin = store
        .begin(&scope, &fp, cfg.lock_ttl)
        .await
        .map_err(|e| ProxyError::IdempotencyStore(e.0))?;
    let token = match begin {
        Begin::Existing(Record::InFlight { fp: other, .. }) if other != fp => {
            return Err(ProxyError::IdempotencyKeyReused)
        }
        Begin::Existing(Record::InFlight { .. }) => return Err(ProxyError::IdempotencyKeyInFlight),
        Begin::Existing(Record::Done(s)) if s.fp != fp => return Err(ProxyError::IdempotencyKeyReused),
        Begin::Existing(Record::Done(s)) => return Ok(replay(s)),
        Begin::Acquired { token } => token,
    };

    let started = Instant::now();
    let outcome = next(Request::from_parts(parts, InBody::Buffered(bytes))).await;
    let resp = match outcome {
        Ok(r) => r,
        Err(e) => {
            let _ = store.release(&scope, &token).await;
            return Err(e);
        }
    };
    let length = resp
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let keep = cfg.keeps(resp.status())
        && length.is_some_and(|n| n <= cfg.max_response_bytes)
        && started.elapsed() < cfg.lock_ttl;
    if !keep {
        // Not kept (a status not configured, too large, or of unknown size): the key is freed.
        let _ = store.release(&scope, &token).await;
        return Ok(resp);
    }
    let (rparts, rbody) = resp.into_parts();
    let body = match rbody.collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            let _ = store.release(&scope, &token).await;
            return Err(ProxyError::UpstreamFailed {
                upstream: String::new(),
                reason: e.to_string(),
            });
        }
    };
    let stored = Stored {
        fp,
        status: rparts.status.as_u16(),
        headers: rparts
            .headers
            .iter()
            // A cookie is the first caller's session: a replay must never hand it to anyone.
            .filter(|(n, _)| {
                *n != super::context::X_REQUEST_ID && *n != http::header::DATE && *n != SET_COOKIE
            })
            .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect(),
        body: base64::engine::general_purpose::STANDARD.encode(&body),
    };
    if let Err(e) = store.complete(&scope, stored, cfg.ttl).await {
        tracing::warn!(error = %e, "could not store the idempotent outcome");
    }
    Ok(Response::from_parts(rparts, ResponseBody::full(body)))
}

fn replay(s: Stored) -> Response<ResponseBody> {
    let body = base64::engine::general_purpose::STANDARD
        .decode(s.body.as_bytes())
        .unwrap_or_default();
    let mut resp = Response::new(ResponseBody::full(Bytes::from(body)));
    *resp.status_mut() = StatusCode::from_u16(s.status).unwrap_or(StatusCode::OK);
    for (n, v) in s.headers {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n.as_bytes()), HeaderValue::from_str(&v)) {
            resp.headers_mut().append(n, v);
        }
    }
    resp.headers_mut()
        .insert(IDEMPOTENCY_REPLAYED, HeaderValue::from_static("true"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scope_must_tell_callers_apart() {
        let parts = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(parse_scope(&parts(&["client_ip"])).is_ok());
        assert!(parse_scope(&parts(&["header:x-tenant", "jwt.org"])).is_ok());
        for refused in ["route", "path"] {
            let err = parse_scope(&parts(&["client_ip", refused])).unwrap_err();
            assert!(
                err.starts_with(&format!("`{refused}` does not tell callers apart")),
                "{err}"
            );
        }
    }
}
