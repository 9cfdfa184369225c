//! Stage 10: hand the request to the upstream and stream its answer back.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST};
use http::uri::{PathAndQuery, Uri};
use http::HeaderMap;
use http::{Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::body::{InBody, RequestBody, ResponseBody};
use super::context::Side;
use super::context::{self, ForwardedInfo};
use super::context::{TRACEPARENT, X_REQUEST_ID};
use super::key::KeyFacts;
use super::request::{ConnInfo, RequestCtx};
use crate::error::ProxyError;
use crate::upstream::balance::Picked;
use crate::upstream::breaker::{Outcome, Permit};
use crate::upstream::retry::{self, ResendCause};
use crate::upstream::Upstream;
use crate::upstream::UpstreamCallError;

/// Sends `req` to the upstream of `ctx.side`. `path` is the path to send when it is not the
/// URI's own: the normalised one (a transform folds its rewrite into the URI instead).
pub async fn forward(
    mut req: Request<InBody>,
    conn: &ConnInfo,
    ctx: &mut RequestCtx,
    path: Option<&str>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let upstream = ctx.upstream().ok_or(ProxyError::NoRoute)?.clone();
    let upstream = &upstream;
    let limits = &conn.listener.limits;
    if let Some(len) = content_length(req.headers()) {
        if len > limits.max_body_bytes.0 {
            return Err(ProxyError::BodyTooLarge {
                limit: limits.max_body_bytes.0,
            });
        }
    }
    let client_upgrade = ctx.upgrade.then(|| hyper::upgrade::on(&mut req));

    let (mut parts, body) = req.into_parts();
    upstream_headers(&mut parts.headers, parts.version, conn, ctx, ctx.side)?;

    let path_and_query = path_and_query(&parts.uri, path)?;
    parts.version = Version::HTTP_11;
    let (body, verdict) = RequestBody::from_client(body, limits.max_body_bytes.0, limits.body_read_timeout);
    let hash = upstream.hash_on.as_ref().and_then(|k| {
        k.hash(&KeyFacts {
            // The path this upstream is sent, a rewrite included.
            path: path_and_query.path(),
            ..KeyFacts::of(ctx, &parts.headers, &parts.uri)
        })
    });
    // Boxed: the call's state is most of a request's future, and every pipeline layer above
    // would otherwise hold (and move, once per layer) a copy of its size.
    let result = Box::pin(send(
        upstream,
        parts,
        body,
        path_and_query,
        hash,
        ctx.trace.as_ref(),
    ))
    .await;
    let mut resp = match result {
        Ok(resp) => resp,
        Err(SendError::Proxy(e)) => return Err(e),
        Err(SendError::Call(e)) => {
            // The client broke its own body: its fault, whatever the upstream call then said.
            if let Some(fault) = verdict.as_ref().and_then(super::body::BodyVerdict::fault) {
                return Err(ProxyError::client_fault(
                    fault,
                    limits.max_body_bytes.0,
                    e.to_string(),
                ));
            }
            return Err(call_error(upstream, e));
        }
    };

    if let (Some(client_upgrade), StatusCode::SWITCHING_PROTOCOLS) = (client_upgrade, resp.status()) {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let request_id = ctx.request_id.clone();
        tokio::spawn(async move {
            match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok((client, upstream)) => {
                    let mut client = TokioIo::new(client);
                    let mut upstream = TokioIo::new(upstream);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
                Err(e) => tracing::debug!(?request_id, error = %e, "upgrade did not complete"),
            }
        });
        context::strip_hop_by_hop(resp.headers_mut(), true);
    } else {
        context::strip_hop_by_hop(resp.headers_mut(), false);
    }
    resp.headers_mut().insert(X_REQUEST_ID, ctx.request_id.clone());
    Ok(resp.map(ResponseBody::Upstream))
}

/// What a failed upstream call means for the client.
fn call_error(upstream: &Upstream, e: UpstreamCallError) -> ProxyError {
    let name = upstream.name.to_string();
    match e {
        UpstreamCallError::Connect(reason) => ProxyError::UpstreamUnreachable {
            upstream: name,
            reason,
        },
        UpstreamCallError::Timeout(t) => ProxyError::UpstreamTimeout {
            upstream: name,
            timeout_ms: t.as_millis(),
        },
        UpstreamCallError::Overloaded(shed) => ProxyError::UpstreamOverloaded {
            upstream: name,
            reason: shed.label(),
        },
        UpstreamCallError::Request(reason) | UpstreamCallError::Body(reason) => ProxyError::UpstreamFailed {
            upstream: name,
            reason,
        },
    }
}

/// Sends a stored request (a queued write's replay; its headers were made by
/// [`upstream_headers`] when it was queued) through the same endpoint choice, breaker and retry
/// policy as live traffic.
pub async fn send_stored(
    upstream: &Upstream,
    mut parts: http::request::Parts,
    body: Bytes,
    path_and_query: PathAndQuery,
) -> Result<Response<Incoming>, ProxyError> {
    parts.version = Version::HTTP_11;
    let body = if body.is_empty() {
        RequestBody::Empty
    } else {
        RequestBody::Full(Some(body))
    };
    match send(upstream, parts, body, path_and_query, None, None).await {
        Ok(r) => Ok(r),
        Err(SendError::Proxy(e)) => Err(e),
        Err(SendError::Call(e)) => Err(call_error(upstream, e)),
    }
}

/// The request's path and query, with `path` (the normalised path or a rewrite) in place of
/// the request's own path when set.
pub fn path_and_query(uri: &Uri, path: Option<&str>) -> Result<PathAndQuery, ProxyError> {
    let Some(p) = path else {
        return Ok(uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")));
    };
    let pq = match uri.query() {
        Some(q) => format!("{p}?{q}"),
        None => p.to_string(),
    };
    PathAndQuery::try_from(pq).map_err(|_| ProxyError::BadPath(super::normalize::PathError::BadEscape))
}

/// The headers an upstream gets for `side`, built by this one function for the served request,
/// a fallback and the shadow copy alike. Hop-by-hop and owned headers were removed at the trust
/// boundary; this adds what ficus vouches for.
pub fn upstream_headers(
    h: &mut HeaderMap,
    version: Version,
    conn: &ConnInfo,
    ctx: &RequestCtx,
    side: Side,
) -> Result<(), ProxyError> {
    // Room for what this adds (the `X-Forwarded-*` four, `traceparent`, `X-Request-Id`) in one
    // step: a map sized for the client's headers would otherwise grow, and rehash, up to twice.
    // Failing to reserve only means growing as before.
    let _ = h.try_reserve(6);
    let info = ForwardedInfo {
        peer: conn.peer.ip(),
        peer_value: &conn.peer_value,
        proto: conn.listener.proto,
        host: ctx.host.as_ref(),
    };
    context::apply_forwarded(h, &info, &conn.listener.trusted_proxies);
    match h.get(TRACEPARENT) {
        Some(v) if context::valid_traceparent(v.as_bytes()) => {}
        _ => {
            h.insert(TRACEPARENT, context::new_traceparent());
        }
    }
    h.insert(X_REQUEST_ID, ctx.request_id.clone());
    if let Some(host) = &ctx.host {
        // HTTP/2 clients send only `:authority`; the upstream speaks HTTP/1.1 and needs `Host`.
        h.entry(HOST).or_insert_with(|| host.clone());
    }
    if version == Version::HTTP_2 {
        // RFC 9113 §8.2.3: HTTP/2 may split cookies into several fields; HTTP/1.1 wants one.
        context::join_cookies(h);
    }
    if let Some(idn) = ctx.route.as_ref().and_then(|r| r.identity.as_ref()) {
        idn.apply_upstream_auth(h, ctx.claims.as_deref(), side)?;
    }
    Ok(())
}

fn content_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// What the breaker learns from one call. A client that broke its own request body says nothing
/// about the upstream.
fn breaker_outcome(
    result: &Result<Response<Incoming>, UpstreamCallError>,
    cfg: &crate::config::file::BreakerConfig,
) -> Outcome {
    match result {
        Ok(resp) if cfg.failure_statuses.contains(&resp.status().as_u16()) => Outcome::Failure,
        Ok(_) => Outcome::Success,
        Err(UpstreamCallError::Connect(_)) if cfg.on_connect_error => Outcome::Failure,
        Err(UpstreamCallError::Timeout(_)) if cfg.on_timeout => Outcome::Failure,
        Err(UpstreamCallError::Connect(_) | UpstreamCallError::Timeout(_)) => Outcome::Success,
        Err(UpstreamCallError::Request(_)) => Outcome::Failure,
        // A request ficus shed (Overloaded) or whose client broke its body says nothing about
        // the upstream.
        Err(UpstreamCallError::Body(_) | UpstreamCallError::Overloaded(_)) => Outcome::Cancelled,
    }
}

/// An endpoint and, with a breaker, the breaker's admission. With per-endpoint breakers an
/// endpoint whose breaker is open is passed over for the next one. `tried` holds the endpoints
/// this request already went to, which a retry avoids. `Err(Some(wait))`: every candidate's
/// breaker is open; `Err(None)`: the upstream has no endpoints.
fn pick_admitted<'u>(
    upstream: &'u Upstream,
    hash: Option<u64>,
    tried: &[usize],
) -> Result<(Picked<'u>, Option<Permit<'u>>), Option<std::time::Duration>> {
    let tries = match &upstream.breaker {
        Some(b) if b.per_endpoint() => upstream.endpoints.states().len().max(1),
        _ => 1,
    };
    let mut avoid = tried.to_vec();
    let mut wait: Option<std::time::Duration> = None;
    for _ in 0..tries {
        let picked = upstream.endpoints.pick_avoiding(hash, &avoid).ok_or(wait)?;
        let Some(breakers) = &upstream.breaker else {
            return Ok((picked, None));
        };
        match breakers.for_endpoint(picked.index()).acquire() {
            Ok(permit) => return Ok((picked, Some(permit))),
            Err(w) => {
                wait = Some(wait.map_or(w, |x| x.min(w)));
                avoid.push(picked.index());
            }
        }
    }
    Err(wait)
}

/// Why a try got no answer, as its span's `error.type`.
fn call_error_kind(e: &UpstreamCallError) -> &'static str {
    match e {
        UpstreamCallError::Connect(_) => "connect",
        UpstreamCallError::Timeout(_) => "timeout",
        UpstreamCallError::Overloaded(_) => "overloaded",
        UpstreamCallError::Request(_) => "request",
        UpstreamCallError::Body(_) => "client-body",
    }
}

enum SendError {
    /// ficus refused before or between tries (breaker open, body too large while buffering).
    Proxy(ProxyError),
    /// The last try's failure.
    Call(UpstreamCallError),
}

/// Sends the request, retrying per the upstream's policy. A retry happens only before anything
/// has been sent to the client: the decision is taken on the upstream's response head.
async fn send(
    upstream: &Upstream,
    parts: http::request::Parts,
    mut body: RequestBody,
    path_and_query: PathAndQuery,
    hash: Option<u64>,
    trace: Option<&crate::telemetry::traces::RequestTrace>,
) -> Result<Response<Incoming>, SendError> {
    let started = tokio::time::Instant::now();
    // When the first try starts: now, unless the body is read in first (its upload time counts
    // against the request timeout, never against a try's).
    let mut first_try_at = Some(started);
    // A retry needs the request again: the headers, and the body if it is small enough to keep.
    let mut replay: Option<(http::Method, http::HeaderMap, Option<Bytes>)> = None;
    if let Some(policy) = &upstream.retry {
        if policy.may_retry(&parts.method) {
            policy.record_request();
            let keep = match &body {
                RequestBody::Empty => Some(None),
                RequestBody::Full(b) => Some(b.clone()),
                RequestBody::Streaming(s) => match s.size_hint().exact() {
                    Some(n) if n <= policy.max_body_bytes => {
                        let collected = std::mem::replace(&mut body, RequestBody::Empty)
                            .collect()
                            .await
                            .map_err(|e| SendError::Proxy(ProxyError::from(e)))?
                            .to_bytes();
                        body = RequestBody::Full(Some(collected.clone()));
                        first_try_at = None;
                        Some(Some(collected))
                    }
                    // Too large, or of unknown length: streamed once, never retried.
                    _ => None,
                },
            };
            if let Some(b) = keep {
                replay = Some((parts.method.clone(), parts.headers.clone(), b));
            }
        }
    }

    let mut first = Some((parts, body));
    let mut last: Option<Result<Response<Incoming>, UpstreamCallError>> = None;
    let mut retry = 0u32;
    // A retry goes to an endpoint this request has not tried yet, when there is one: with a
    // hash key, the next distinct endpoint clockwise on the ring.
    let mut tried: Vec<usize> = Vec::new();
    loop {
        let (picked, permit) = match pick_admitted(upstream, hash, &tried) {
            Ok(p) => p,
            Err(None) => {
                return Err(SendError::Call(UpstreamCallError::Connect(
                    "the upstream has no endpoints".into(),
                )))
            }
            Err(Some(wait)) => {
                // The breaker opened between tries: the client gets the last real answer.
                if let Some(prev) = last.take() {
                    return prev.map_err(SendError::Call);
                }
                return Err(SendError::Proxy(ProxyError::CircuitOpen {
                    upstream: upstream.name.to_string(),
                    retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
                }));
            }
        };
        let endpoint = picked.endpoint();
        // From its parts, not through `Uri::builder`, whose `Result`-wrapped steps each move
        // the whole URI (memmove showed in profiles of the plain route).
        let mut up = http::uri::Parts::default();
        up.scheme = Some(endpoint.scheme.clone());
        up.authority = Some(endpoint.authority.clone());
        up.path_and_query = Some(path_and_query.clone());
        let uri =
            Uri::from_parts(up).map_err(|e| SendError::Call(UpstreamCallError::Request(e.to_string())))?;
        let mut req = match first.take() {
            Some((mut p, b)) => {
                p.uri = uri;
                Request::from_parts(p, b)
            }
            None => {
                // The loop only comes back for a retry when the request was kept.
                let Some((method, headers, b)) = &replay else {
                    return Err(SendError::Call(UpstreamCallError::Request(
                        "internal: retry without a kept request".into(),
                    )));
                };
                let mut r = Request::new(
                    b.clone()
                        .map_or(RequestBody::Empty, |b| RequestBody::Full(Some(b))),
                );
                *r.method_mut() = method.clone();
                *r.uri_mut() = uri;
                *r.version_mut() = Version::HTTP_11;
                *r.headers_mut() = headers.clone();
                r
            }
        };

        // Each try is a span of its own, and the upstream's parent: a retry shows as a second
        // child of the request, with its own outcome.
        let attempt = trace.map(|t| t.attempt(&upstream.name, req.method(), req.uri(), retry));
        if let Some(a) = &attempt {
            req.headers_mut().insert(TRACEPARENT, a.traceparent());
        }
        let try_started = first_try_at.take().unwrap_or_else(tokio::time::Instant::now);
        let remaining = upstream.request_timeout.saturating_sub(try_started - started);
        let per_try = match upstream.retry.as_ref().and_then(|p| p.per_try_timeout) {
            Some(t) if replay.is_some() => t.min(remaining),
            _ => remaining,
        };
        let result = upstream
            .call_from(req, try_started, per_try.max(std::time::Duration::from_millis(1)))
            .await;
        if let (Some(permit), Some(b)) = (permit, &upstream.breaker) {
            permit.record(breaker_outcome(&result, b.config()));
        }
        match &result {
            Ok(resp) => picked.report(resp.status().is_server_error()),
            // The client's own body failed, or ficus shed the request: nothing learned about
            // the endpoint.
            Err(UpstreamCallError::Body(_) | UpstreamCallError::Overloaded(_)) => {}
            Err(_) => picked.report(true),
        }
        // Only a kept request can be tried again (an allocation per request spared otherwise).
        if replay.is_some() {
            tried.push(picked.index());
        }
        drop(picked);

        let wait = match (&upstream.retry, &replay) {
            (Some(policy), Some((method, _, _))) => {
                let safe = retry::may_resend(method, ResendCause::of(&result), policy.non_idempotent);
                let wait = policy.backoff(retry);
                (retry < policy.attempts
                    && safe
                    && policy.should_retry(&result)
                    && started.elapsed() + wait < upstream.request_timeout
                    && policy.withdraw())
                .then_some(wait)
            }
            _ => None,
        };
        if let Some(a) = attempt {
            let (status, error) = match &result {
                Ok(r) => (Some(r.status()), None),
                Err(e) => (None, Some(call_error_kind(e))),
            };
            a.finish(status, error, wait.is_some());
        }
        let again = match wait {
            Some(wait) => {
                tokio::time::sleep(wait).await;
                true
            }
            None => false,
        };
        if !again {
            // A retry that could not even connect says less than the answer before it, and
            // reporting it would make the request look as if it never reached the upstream
            // (the migration fallback would then send a write that did reach it once more). The
            // same holds for a retry the concurrency limit shed.
            if let (Err(UpstreamCallError::Connect(_) | UpstreamCallError::Overloaded(_)), Some(prev)) =
                (&result, last.take())
            {
                return prev.map_err(SendError::Call);
            }
            return result.map_err(SendError::Call);
        }
        tracing::debug!(upstream = %upstream.name, retry = retry + 1, "retrying");
        last = Some(result);
        retry += 1;
    }
}
