//! Write buffering (`buffer_writes`): while a route's upstream cannot be reached, its writes are
//! queued durably in Redis Streams and answered `202 Accepted`; they are replayed, in order per
//! partition key, once the upstream is back.
//!
//! # The request path
//! A buffered method (`methods`) needs an `Idempotency-Key` (400 otherwise, healthy upstream or
//! not, so the contract does not change with the weather). A body that declares a length
//! within `max_body` (and the listener's `max_body_bytes`) is read whole, and the request goes
//! upstream as usual: a healthy request costs no Redis round trip. A larger body, or one of
//! unknown length, is streamed upstream and never queued (an unreachable upstream is then the
//! usual 502/503). Only when the call fails before reaching the upstream (a connect error, or
//! the breaker is open) is the request queued, as the upstream would have got it: method, the
//! normalised path and query, the headers after ficus's own processing (trust boundary, identity,
//! `X-Forwarded-*`, request id), and the body; on a side with a `transform`, translated, so the
//! replay needs nothing but the upstream (its answer is translated back before it is recorded,
//! so that a Fault mapped to a 4xx makes the write done). The client gets 202 with `Location:
//! {status_prefix}/{id}`. If Redis cannot take the write, the client gets 503: nothing is
//! promised that cannot be kept. A second request with the same principal and Idempotency-Key
//! while the first is queued gets the first one's 202 (one `SET NX`), so a retrying client does
//! not queue the write twice; the key keeps a SHA-256 of the method, path and body, and the
//! same key with a different request gets 422. The key is marked pending until the write is in
//! its stream (a request with the same key meanwhile gets 409), and given back if queuing
//! fails, so the retry after a 503 is queued, never answered with an id that was not; a key
//! whose write's status is gone is taken over by the next request.
//!
//! # Partitions and ordering
//! Each route has `queue_store.partitions` streams; a write goes to the one its partition key
//! hashes to (default: the migration's sticky key; without one, every write of the route is in
//! one partition, so the route's writes replay in arrival order). One stream per route with
//! per-key ordering would need a lock per key, taken and checked on every entry, and a key
//! whose head write fails would still block the consumer that read past it; partitions trade
//! that for head-of-line blocking between keys that share a partition, which only delays them.
//!
//! Each partition is replayed by one instance at a time: the instance that holds its lease
//! (`SET NX PX`, renewed in the background every third of `claim_idle`, given up when the
//! partition is empty). The holder takes the partition's oldest unfinished write, every time:
//! the oldest pending entry of the consumer group (`XPENDING`); its own, or another consumer's
//! that has sat idle for `claim_idle` (an instance that died, or lost its lease), taken over
//! with `XAUTOCLAIM`; when nothing is pending, the next entries (`XREADGROUP >`). It sends one
//! write at a time and moves to the next only when that one is done or dead-lettered, so writes
//! of one key never overtake each other, across instances too. A write an instance holds is
//! never sent by another: the other needs the lease, and then still waits `claim_idle`.
//!
//! # Replay
//! An attempt goes through the same endpoint choice, breaker and retry policy as live traffic.
//! It is made only while the upstream may be up: not while its breaker is open (the breaker's
//! half-open probe may be a replay) nor while a configured health check finds no endpoint
//! healthy. A 2xx, 3xx or 4xx answer makes the write done, and its status shows that answer. A
//! 5xx or a timeout counts as a failed attempt; a connect error does not (it says nothing about
//! the write). Both back off exponentially with full jitter (`backoff_base` doubled per try, up
//! to `backoff_max`). After `max_attempts` counted attempts, or `max_age` after it was queued,
//! the write moves to the route's dead-letter stream.
//!
//! Finishing a write is: record the answer in its status, then `XACK` and `XDEL`. An instance
//! that dies between the upstream's answer and the status record leaves the write to be sent
//! again by the next holder, with the same Idempotency-Key, so that the backend can deduplicate
//! it; one that dies after the record leaves an entry the next holder acknowledges unsent.
//!
//! # Visibility
//! `GET {status_prefix}/{id}` answers only the principal that queued the write: the route's
//! identity runs on the status request, and its subject (JWT `sub`, API key id) or client
//! certificate must be the queuing one's. Anyone else gets 404, as for an unknown id, so ids
//! cannot be probed. A write queued without a verified principal (a route without `identity`,
//! or an optional identity and no credentials) is readable by whoever holds its id: a random
//! 128-bit UUID, handed only to the client that sent the write.

pub mod admin;
pub mod compile;
pub mod replay;
pub mod store;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use metrics::{Counter, Gauge};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use super::body::{InBody, ResponseBody};
use super::idempotency::IDEMPOTENCY_KEY;
use super::key::{KeyFacts, RequestKey};
use super::request::{ConnInfo, RequestCtx};
use super::route::Route;
use crate::config::writes::QueueStoreConfig;
use crate::error::ProxyError;
use crate::telemetry::metrics::Metrics;
use store::{Status, Store, Stored, StoredHeader};

/// How much of the final answer's body a write's status keeps.
pub const MAX_KEPT_ANSWER: usize = 64 * 1024;

pub const WRITES_QUEUED: &str = "ficus_writes_queued_total";
pub const WRITES_REPLAYED: &str = "ficus_writes_replayed_total";
pub const WRITES_SUCCEEDED: &str = "ficus_writes_succeeded_total";
pub const WRITES_FAILED: &str = "ficus_writes_failed_total";
pub const WRITES_DEAD_LETTERED: &str = "ficus_writes_dead_lettered_total";
pub const WRITES_QUEUE_DEPTH: &str = "ficus_writes_queue_depth";
pub const WRITES_OLDEST_AGE: &str = "ficus_writes_oldest_age_seconds";

/// A route's `buffer_writes`, compiled.
pub struct RouteWrites {
    pub methods: Vec<Method>,
    pub require_key: bool,
    pub max_attempts: u32,
    pub max_age: Duration,
    pub partition_key: Option<RequestKey>,
    pub max_body: u64,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub metrics: WriteMetrics,
}

/// `ficus_writes_*{route}`.
pub struct WriteMetrics {
    /// Writes queued (answered 202).
    pub queued: Counter,
    /// Attempts to send a queued write.
    pub replayed: Counter,
    /// Writes done: the upstream answered with a final status (2xx, 3xx, 4xx).
    pub succeeded: Counter,
    /// Attempts that failed (5xx, timeout, connect error); the write is tried again.
    pub failed: Counter,
    pub dead_lettered: Counter,
    pub depth: Gauge,
    pub oldest_age: Gauge,
}

impl WriteMetrics {
    pub fn new(m: &Metrics, route: &str) -> Self {
        let l = [("route", route)];
        Self {
            queued: m.counter(WRITES_QUEUED, &l),
            replayed: m.counter(WRITES_REPLAYED, &l),
            succeeded: m.counter(WRITES_SUCCEEDED, &l),
            failed: m.counter(WRITES_FAILED, &l),
            dead_lettered: m.counter(WRITES_DEAD_LETTERED, &l),
            depth: m.gauge(WRITES_QUEUE_DEPTH, &l),
            oldest_age: m.gauge(WRITES_OLDEST_AGE, &l),
        }
    }
}

impl RouteWrites {
    /// The wait before retry number `attempt` (1-based): full jitter over an exponential cap.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let cap = self
            .backoff_base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.backoff_max);
        cap.mul_f64(fastrand::f64()).max(Duration::from_millis(10))
    }
}

/// The queue every buffering route shares: the store, this instance's consumer name, and the
/// routes its replay workers serve (updated on every reload). Kept across reloads while
/// `queue_store` is unchanged.
pub struct WriteQueue {
    pub cfg: QueueStoreConfig,
    pub store: Store,
    /// This instance's consumer name in the consumer groups.
    pub consumer: String,
    routes: ArcSwap<HashMap<String, Arc<Route>>>,
    started: Mutex<HashSet<String>>,
}

impl WriteQueue {
    pub fn new(cfg: &QueueStoreConfig) -> Result<Arc<Self>, String> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Ok(Arc::new(Self {
            store: Store::new(cfg)?,
            cfg: cfg.clone(),
            consumer: format!("ficus-{}-{}", std::process::id(), &id[..8]),
            routes: ArcSwap::from_pointee(HashMap::new()),
            started: Mutex::new(HashSet::new()),
        }))
    }

    /// The id in a status-resource path, if `path` is one.
    pub fn status_id<'a>(&self, path: &'a str) -> Option<&'a str> {
        let id = path
            .strip_prefix(self.cfg.status_prefix.as_str())?
            .strip_prefix('/')?;
        (!id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric())).then_some(id)
    }

    fn location(&self, id: &str) -> String {
        format!("{}/{id}", self.cfg.status_prefix)
    }

    fn route(&self, name: &str) -> Option<Arc<Route>> {
        self.routes.load().get(name).cloned()
    }

    fn status_ttl(&self, w: &RouteWrites) -> Duration {
        w.max_age + self.cfg.status_ttl
    }
}

/// Points the running queue at `snap`'s routes and starts replay for routes new to it.
pub fn start(snap: &crate::config::compile::Snapshot) {
    let Some(q) = &snap.writes else { return };
    let routes: HashMap<String, Arc<Route>> = snap
        .router
        .routes()
        .iter()
        .filter(|r| r.buffer_writes.is_some())
        .map(|r| (r.name.to_string(), r.clone()))
        .collect();
    let names: Vec<String> = routes.keys().cloned().collect();
    q.routes.store(Arc::new(routes));
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let mut started = q.started.lock();
    for name in names {
        if started.insert(name.clone()) {
            replay::spawn(&rt, q, &name);
        }
    }
}

fn valid_key(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 255 && b.iter().all(|c| c.is_ascii_graphic())
}

/// Who queued a write: the verified subject, else the client certificate's principal.
fn principal(ctx: &RequestCtx) -> Option<String> {
    if let Some(sub) = ctx.claims.as_ref().and_then(|c| c.get_str("sub")) {
        return Some(format!("sub:{sub}"));
    }
    ctx.client_cert_identity().map(|p| format!("x509:{p}"))
}

/// Stage 8 for a route with `buffer_writes`: the request goes upstream as usual and is queued
/// only if the upstream could not be reached.
pub async fn dispatch(
    req: Request<InBody>,
    route: &Arc<Route>,
    conn: &ConnInfo,
    ctx: &mut RequestCtx,
    queue: Option<&Arc<WriteQueue>>,
) -> Result<Response<ResponseBody>, ProxyError> {
    match (&route.buffer_writes, queue) {
        (Some(w), Some(queue)) if !ctx.upgrade && w.methods.contains(req.method()) => {
            // Boxed: the queueing path's state would otherwise enlarge every request's future.
            Box::pin(buffered(w, queue, req, route, conn, ctx)).await
        }
        _ => super::observed(req, route, conn, ctx).await,
    }
}

async fn buffered(
    w: &RouteWrites,
    queue: &Arc<WriteQueue>,
    req: Request<InBody>,
    route: &Arc<Route>,
    conn: &ConnInfo,
    ctx: &mut RequestCtx,
) -> Result<Response<ResponseBody>, ProxyError> {
    let key = match req.headers().get(IDEMPOTENCY_KEY) {
        None if w.require_key => return Err(ProxyError::IdempotencyKeyMissing),
        Some(k) if !valid_key(k) => return Err(ProxyError::IdempotencyKeyInvalid),
        k => k.and_then(|k| k.to_str().ok()).map(str::to_string),
    };
    let (parts, body) = req.into_parts();
    // Never past the listener's own limit, whatever `max_body` says.
    let limit = w.max_body.min(conn.listener.limits.max_body_bytes.0);
    let stall = conn.listener.limits.body_read_timeout;
    let bytes = match read_kept(body, limit, stall).await? {
        Ok(b) => b,
        // Too large (or of unknown length) to queue: sent as usual, streamed under the
        // listener's guards; an unreachable upstream is then the usual 502/503.
        Err(body) => return super::observed(Request::from_parts(parts, body), route, conn, ctx).await,
    };
    let kept = super::clone_parts(&parts);
    let fp = fingerprint(&parts, &bytes);
    let result = super::observed(
        Request::from_parts(parts, InBody::Buffered(bytes.clone())),
        route,
        conn,
        ctx,
    )
    .await;
    let reason = match &result {
        Err(e @ (ProxyError::UpstreamUnreachable { .. } | ProxyError::CircuitOpen { .. })) => e.to_string(),
        _ => return result,
    };
    let stored = stored_request(kept, bytes, key, route, w, conn, ctx)?;
    let id = match enqueue(queue, w, stored, &fp).await {
        Ok(Queued::Id(id)) => id,
        Ok(Queued::Reused) => return Err(ProxyError::IdempotencyKeyReused),
        Ok(Queued::InFlight) => return Err(ProxyError::IdempotencyKeyInFlight),
        Err(e) => {
            tracing::warn!(route = %route.name, error = %e, "a write could not be queued");
            return Err(ProxyError::WriteQueueUnavailable(e.to_string()));
        }
    };
    tracing::info!(route = %route.name, id, reason, "upstream unreachable: write queued");
    Ok(crate::error::write_queued(
        &queue.location(&id),
        &id,
        &reason,
        Some(&ctx.request_id),
    ))
}

/// The body whole when it declares a length within `limit`; otherwise handed back untouched
/// (`Err`), to be streamed. Read under the listener's stall guard.
async fn read_kept(body: InBody, limit: u64, stall: Duration) -> Result<Result<Bytes, InBody>, ProxyError> {
    use http_body_util::BodyExt as _;
    use hyper::body::Body as _;
    match body {
        InBody::Buffered(b) if b.len() as u64 > limit => Ok(Err(InBody::Buffered(b))),
        InBody::Buffered(b) => Ok(Ok(b)),
        InBody::Stream(s) if s.is_end_stream() => Ok(Ok(Bytes::new())),
        InBody::Stream(s) => match s.size_hint().exact() {
            Some(n) if n <= limit => {
                let (guarded, _) = super::body::RequestBody::guard(s, limit, stall);
                Ok(Ok(guarded.collect().await?.to_bytes()))
            }
            _ => Ok(Err(InBody::Stream(s))),
        },
    }
}

/// What the client asked for, as `pipeline::idempotency` fingerprints it: the same key with
/// another request is refused, not answered with the first one's 202.
fn fingerprint(parts: &http::request::Parts, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(parts.method.as_str().as_bytes());
    h.update(b"\n");
    h.update(parts.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    h.update(b"\n");
    h.update(body);
    hex(&h.finalize())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn stored_request(
    mut parts: http::request::Parts,
    body: Bytes,
    key: Option<String>,
    route: &Route,
    w: &RouteWrites,
    conn: &ConnInfo,
    ctx: &RequestCtx,
) -> Result<Stored, ProxyError> {
    let mut path = super::forward::path_and_query(&parts.uri, ctx.path.as_deref())?;
    // Queued as the upstream would have got it: after the side's translation (a JSON write
    // to a SOAP service is queued as its envelope), so the replay needs no route context.
    let transform = route.transform_for(ctx.side);
    let body = match transform {
        None => body,
        Some(t) => {
            parts.uri = http::Uri::from(path);
            let caps = route.path.captures(parts.uri.path());
            let out = crate::translate::driver::request_now(t, &mut parts, &caps, body)
                .map_err(ProxyError::request_translation)?;
            path = super::forward::path_and_query(&parts.uri, None)?;
            out
        }
    };
    super::forward::upstream_headers(&mut parts.headers, parts.version, conn, ctx, ctx.side)?;
    let partition = match &w.partition_key {
        None => 0,
        Some(k) => {
            let facts = KeyFacts::of(ctx, &parts.headers, &parts.uri);
            k.text(&facts).map_or(0, |t| {
                (super::key::fnv1a(t.as_bytes()) % u64::from(PARTITIONS_MAX)) as u32
            })
        }
    };
    let b64 = &base64::engine::general_purpose::STANDARD;
    let headers = parts
        .headers
        .iter()
        .map(|(n, v)| match v.to_str() {
            Ok(s) => StoredHeader {
                n: n.as_str().to_string(),
                v: Some(s.to_string()),
                b: None,
            },
            Err(_) => StoredHeader {
                n: n.as_str().to_string(),
                v: None,
                b: Some(b64.encode(v.as_bytes())),
            },
        })
        .collect();
    Ok(Stored {
        id: uuid::Uuid::new_v4().simple().to_string(),
        route: route.name.to_string(),
        side: ctx.side.label().to_string(),
        method: parts.method.as_str().to_string(),
        path: path.as_str().to_string(),
        headers,
        body: b64.encode(&body),
        idempotency_key: key,
        principal: principal(ctx),
        queued_at: store::now_ms(),
        partition,
        translated: transform.is_some(),
    })
}

/// Partition keys hash into this many buckets, then modulo the configured partitions: the
/// same key keeps its partition's order whatever the count, as long as the count divides it.
const PARTITIONS_MAX: u32 = 1 << 16;

/// What became of a write to be queued.
enum Queued {
    /// Queued as this id: now, or by an earlier request with the same key.
    Id(String),
    /// The key was used for a different request.
    Reused,
    /// A request with the same key is being queued right now.
    InFlight,
}

/// Deletes a key only while it holds the value this instance wrote.
const DEL_IF: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// A dedupe key's value: `{id} {fingerprint}` once the write is queued, `p {id} {fingerprint}`
/// while it is being queued (older records hold the id alone).
struct Dedupe<'a> {
    pending: bool,
    id: &'a str,
    fp: Option<&'a str>,
}

impl<'a> Dedupe<'a> {
    fn parse(v: &'a str) -> Self {
        let (pending, rest) = match v.strip_prefix("p ") {
            Some(rest) => (true, rest),
            None => (false, v),
        };
        let (id, fp) = match rest.split_once(' ') {
            Some((id, fp)) => (id, Some(fp)),
            None => (rest, None),
        };
        Self { pending, id, fp }
    }
}

/// Queues `s` unless its (principal, Idempotency-Key) was queued already. The key is taken
/// first, marked pending, and made final only once the write is in its stream: a request
/// that fails to queue gives its key back, so the client's retry is queued rather than told
/// of a write that never was.
async fn enqueue(
    q: &WriteQueue,
    w: &RouteWrites,
    mut s: Stored,
    fp: &str,
) -> Result<Queued, store::StoreError> {
    s.partition %= q.cfg.partitions.max(1);
    let ttl = q.status_ttl(w);
    let dedupe = match &s.idempotency_key {
        None => None,
        Some(k) => {
            let mut h = Sha256::new();
            h.update(s.principal.as_deref().unwrap_or("").as_bytes());
            h.update(b"\0");
            h.update(k.as_bytes());
            Some(q.store.dedupe_key(&s.route, &hex(&h.finalize())))
        }
    };
    let pending = format!("p {} {fp}", s.id);
    if let Some(dk) = &dedupe {
        // Long enough for the two writes below, each bounded by the timeout; a pending mark
        // left by an instance that died frees the key soon after.
        let pending_ttl = q.cfg.timeout.saturating_mul(4) + Duration::from_secs(1);
        let mut taken = false;
        for _ in 0..2 {
            let set: Option<String> = q
                .store
                .run(
                    redis::cmd("SET")
                        .arg(dk)
                        .arg(&pending)
                        .arg("NX")
                        .arg("GET")
                        .arg("PX")
                        .arg(pending_ttl.as_millis() as u64),
                )
                .await?;
            let Some(existing) = set else {
                taken = true;
                break;
            };
            let d = Dedupe::parse(&existing);
            if d.fp.is_some_and(|other| other != fp) {
                return Ok(Queued::Reused);
            }
            if d.pending {
                return Ok(Queued::InFlight);
            }
            if q.store.status(d.id).await?.is_some() {
                // Queued already: the retry gets the first one's status resource.
                return Ok(Queued::Id(d.id.to_string()));
            }
            // Its status is gone: nothing to point the client at, so the write is queued
            // afresh (the key is given up only if nobody took it over meanwhile).
            q.store
                .script::<i64>(&redis::Script::new(DEL_IF), dk, &[existing.as_str()])
                .await?;
        }
        if !taken {
            return Ok(Queued::InFlight);
        }
    }
    let queued = async {
        q.store.put_status(&s.id, &Status::queued(&s), ttl).await?;
        q.store.enqueue(&s).await
    }
    .await;
    if let Err(e) = queued {
        // Best effort: Redis may be the reason it failed. A key left behind is still pending
        // and expires within seconds.
        if let Some(dk) = &dedupe {
            let _ = q
                .store
                .script::<i64>(&redis::Script::new(DEL_IF), dk, &[pending.as_str()])
                .await;
        }
        let _ = q
            .store
            .run::<i64>(redis::cmd("DEL").arg(q.store.status_key(&s.id)))
            .await;
        return Err(e);
    }
    w.metrics.queued.increment(1);
    if let Some(dk) = &dedupe {
        let done = q
            .store
            .run::<()>(
                redis::cmd("SET")
                    .arg(dk)
                    .arg(format!("{} {fp}", s.id))
                    .arg("PX")
                    .arg(ttl.as_millis().max(1) as u64),
            )
            .await;
        if let Err(e) = done {
            // The write is queued, so the 202 stands; a retry after the pending mark expires
            // is queued again, and the backend deduplicates it by its Idempotency-Key.
            tracing::warn!(route = %s.route, id = %s.id, error = %e, "a queued write's dedupe key could not be kept");
        }
    }
    Ok(Queued::Id(s.id))
}

/// `GET {status_prefix}/{id}`: the write's state, for the principal that queued it only.
pub async fn status(
    queue: &WriteQueue,
    snap: &crate::config::compile::Snapshot,
    ctx: &mut RequestCtx,
    req: Request<hyper::body::Incoming>,
    id: &str,
) -> Result<Response<ResponseBody>, ProxyError> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Err(ProxyError::WriteNotFound);
    }
    let st = queue
        .store
        .status(id)
        .await
        .map_err(|e| ProxyError::WriteQueueUnavailable(e.to_string()))?
        .ok_or(ProxyError::WriteNotFound)?;
    if let Some(owner) = &st.principal {
        let route = snap
            .router
            .routes()
            .iter()
            .find(|r| *r.name == st.route)
            .ok_or(ProxyError::WriteNotFound)?;
        let Some(idn) = &route.identity else {
            return Err(ProxyError::WriteNotFound);
        };
        let (mut parts, _) = req.into_parts();
        // Any failure (no token, a bad one) is the same 404 as a stranger's: nothing to probe.
        idn.check_client_cert(ctx.client_cert.as_deref(), &mut parts.headers)
            .map_err(|_| ProxyError::WriteNotFound)?;
        ctx.claims = idn
            .check(&mut parts)
            .await
            .map_err(|_| ProxyError::WriteNotFound)?;
        if principal(ctx).as_deref() != Some(owner.as_str()) {
            return Err(ProxyError::WriteNotFound);
        }
    }
    let doc = status_document(id, &st);
    let mut resp = Response::new(ResponseBody::full(Bytes::from(doc.to_string())));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(super::context::X_REQUEST_ID, ctx.request_id.clone());
    Ok(resp)
}

fn status_document(id: &str, st: &Status) -> serde_json::Value {
    let result = st.result.as_ref().map(|r| {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(r.body.as_bytes())
            .unwrap_or_default();
        let body = match String::from_utf8(bytes) {
            Ok(text) => serde_json::json!({ "body": text }),
            Err(e) => serde_json::json!({
                "body_base64": base64::engine::general_purpose::STANDARD.encode(e.as_bytes())
            }),
        };
        let mut doc = serde_json::json!({
            "status": r.status,
            "content_type": r.content_type,
            "truncated": r.truncated,
        });
        if let (Some(d), serde_json::Value::Object(b)) = (doc.as_object_mut(), body) {
            d.extend(b);
        }
        doc
    });
    serde_json::json!({
        "id": id,
        "route": st.route,
        "state": st.state,
        "queued_at": store::rfc3339(st.queued_at),
        "updated_at": store::rfc3339(st.updated_at),
        "attempts": st.attempts,
        "errors": st.errors.iter().map(|e| serde_json::json!({
            "at": store::rfc3339(e.at),
            "attempt": e.attempt,
            "status": e.status,
            "error": e.error,
        })).collect::<Vec<_>>(),
        "result": result,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dedupe_value_reads_as_pending_or_queued_with_its_fingerprint_and_old_ones_without() {
        let d = Dedupe::parse("p abc 0123");
        assert!(d.pending);
        assert_eq!((d.id, d.fp), ("abc", Some("0123")));
        let d = Dedupe::parse("abc 0123");
        assert!(!d.pending);
        assert_eq!((d.id, d.fp), ("abc", Some("0123")));
        let d = Dedupe::parse("abc");
        assert!(!d.pending);
        assert_eq!((d.id, d.fp), ("abc", None));
    }
}
