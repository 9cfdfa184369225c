//! The request pipeline. Its stage order is the architecture, so it is written out once, here,
//! in [`handle`]: header limits, the trust boundary, context, route, identity, rate limits,
//! validation, idempotency, the migration split (with shadow copy and fallback), translation,
//! then the upstream call, then observation.

pub mod body;
pub mod context;
pub mod contract;
pub mod diff;
pub mod drift;
pub mod forward;
pub mod history;
pub mod idempotency;
pub mod key;
pub mod migration;
pub mod noise;
pub mod normalize;
pub mod ratelimit;
pub mod request;
pub mod rollout;
pub mod route;
pub mod shadow;
pub mod translate;
pub mod trust;
pub mod writes;

use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::header::HOST;
use http::{HeaderValue, Request, Response, Version};
use hyper::body::Incoming;

use crate::config::compile::Snapshot;
use crate::error::ProxyError;
use crate::gateway::shared::Shared;
use crate::telemetry::access_log::AccessRecord;
use crate::telemetry::traces;
use body::{InBody, ResponseBody};
use context::X_REQUEST_ID;
use request::{ConnInfo, RequestCtx};
use route::Route;

struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Release);
    }
}

/// Metrics and the access-log line of one request, written exactly once: when the answer is
/// ready, or, if hyper drops the request because the client went away, with status 499.
struct Observation<'a> {
    shared: &'a Shared,
    snap: &'a Snapshot,
    started: Instant,
    method: http::Method,
    log_path: Option<String>,
    ctx: RequestCtx,
    done: bool,
}

impl Observation<'_> {
    fn record(&mut self, status: http::StatusCode, error: Option<&'static str>) {
        self.done = true;
        let ctx = &self.ctx;
        let elapsed = self.started.elapsed();
        let closed = status == crate::error::client_closed();
        match &ctx.route {
            Some(r) => {
                r.metrics_for(ctx.side).record(&self.method, status, elapsed);
                if !closed {
                    r.history.record(ctx.side, status.is_server_error(), elapsed);
                }
                match &r.migration {
                    // A client that hung up says nothing about either side's health or speed.
                    Some(m) if !closed => {
                        let failed = status.is_server_error();
                        match ctx.side {
                            context::Side::Legacy => {
                                m.legacy_stats.record(failed, elapsed);
                                if let Some(ro) = &m.rollout {
                                    ro.record_legacy(failed, elapsed);
                                }
                            }
                            context::Side::Modern => {
                                m.modern_stats.record(failed, elapsed);
                                if let Some(ro) = &m.rollout {
                                    ro.record(failed, elapsed);
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            None => self.snap.unmatched.record(&self.method, status, elapsed),
        }
        if let Some(t) = &ctx.trace {
            let route = ctx.route.as_ref().map(|r| (&*r.name, r.path.route_template()));
            t.finish(&self.method, route, ctx.client, status, error);
        }
        if let (Some(log), Some(path)) = (&self.shared.access_log, self.log_path.take()) {
            log.log(AccessRecord {
                time: SystemTime::now(),
                request_id: Some(ctx.request_id.clone()),
                client: ctx.client,
                method: self.method.clone(),
                path,
                route: ctx.route.as_ref().map(|r| r.name.clone()),
                upstream: ctx.route.as_ref().map(|r| r.upstream_for(ctx.side).name.clone()),
                client_cert: ctx.client_cert.as_ref().map(|c| c.principal.clone()),
                user: ctx.claims.as_ref().and_then(|c| c.get_str("sub")),
                status,
                duration_us: elapsed.as_micros() as u64,
                error,
            });
        }
    }
}

impl Drop for Observation<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Dropped unanswered: hyper gave up on the request because the client went away, or a
        // panic is unwinding (`server::contain` answers it with a 500).
        if std::thread::panicking() {
            self.record(http::StatusCode::INTERNAL_SERVER_ERROR, Some("internal-error"));
        } else {
            self.record(crate::error::client_closed(), Some("client-closed"));
        }
    }
}

pub async fn handle(shared: &Shared, conn: &ConnInfo, req: Request<Incoming>) -> Response<ResponseBody> {
    let started = Instant::now();
    conn.in_flight.fetch_add(1, Ordering::Acquire);
    let _in_flight = InFlight(&conn.in_flight);
    // One load per request: the whole request runs on this snapshot even if a reload swaps it.
    let snap = shared.snapshot.load_full();

    let request_id = match req.headers().get(X_REQUEST_ID) {
        Some(v) if context::valid_request_id(v.as_bytes()) => v.clone(),
        _ => context::new_request_id(),
    };
    let mut obs = Observation {
        shared,
        snap: &snap,
        started,
        method: req.method().clone(),
        // The query too (redacted by the log writer, off this path); still one allocation.
        log_path: shared.access_log.as_ref().map(|_| {
            req.uri()
                .path_and_query()
                .map_or_else(|| req.uri().path().to_owned(), |pq| pq.as_str().to_owned())
        }),
        ctx: RequestCtx::new(request_id, conn),
        done: false,
    };
    if let Some(t) = &shared.traces {
        obs.ctx.trace = Some(t.server_span(&req, conn.peer.ip(), conn.listener.proto));
    }

    let (response, error) = match run(&snap, conn, &mut obs.ctx, req).await {
        Ok(resp) => (resp, None),
        Err(e) => {
            if e.status().is_server_error() {
                tracing::warn!(request_id = ?obs.ctx.request_id, error = %e, "request failed");
            } else {
                tracing::debug!(request_id = ?obs.ctx.request_id, error = %e, "request refused");
            }
            (e.to_response(Some(&obs.ctx.request_id)), Some(e.kind()))
        }
    };
    obs.record(response.status(), error);
    response
}

async fn run(
    snap: &Snapshot,
    conn: &ConnInfo,
    ctx: &mut RequestCtx,
    mut req: Request<Incoming>,
) -> Result<Response<ResponseBody>, ProxyError> {
    // Stage 1 (accept) left these to us: hyper's own header limit is only a backstop.
    check_header_size(&req, conn.listener.limits.max_header_bytes.0)?;
    ctx.host = request_host(&req)?;

    // Stage 2: the trust boundary, before anything reads a header. What ficus sets for
    // upstreams on any route, and what only a trusted proxy may say, the client cannot send.
    ctx.overrides = snap.owned_headers.strip(req.headers_mut());
    let listener = &conn.listener;
    let peer = conn.peer.ip();
    if listener.trusted_proxies.iter().any(|n| n.contains(&peer)) {
        ctx.client = context::client_address(req.headers(), peer, &listener.trusted_proxies);
    } else {
        listener.proxy_only.strip(req.headers_mut());
    }
    ctx.upgrade = req.version() == Version::HTTP_11
        && context::is_allowed_upgrade(req.headers(), &listener.allowed_upgrades);
    // Hop-by-hop headers go before identity adds anything: `Connection: x-user-id` must not be
    // able to delete what identity sets for the upstream.
    context::strip_hop_by_hop(req.headers_mut(), ctx.upgrade);

    // Stage 2: context. Routing and everything after it see only the normalised path.
    let keep_params = listener.path_params == crate::config::file::PathParamsMode::Keep;
    let path = normalize::normalize_path(req.uri().path(), keep_params)?;
    let route_path = if keep_params {
        normalize::without_params(&path)
    } else {
        Cow::Borrowed(&*path)
    };
    let host_name = ctx
        .host
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .map(route::host_without_port);

    // The status resource of a queued write (`buffer_writes`) is no route's.
    if let Some(q) = &snap.writes {
        if let Some(id) = q.status_id(&route_path) {
            let id = id.to_string();
            return Box::pin(writes::status(q, snap, ctx, req, &id)).await;
        }
    }

    // Stage 3: route.
    let view = route::RequestView {
        host: host_name,
        path: &route_path,
        method: req.method(),
        headers: req.headers(),
        query: req.uri().query(),
    };
    let route = snap.router.find(&view).ok_or(ProxyError::NoRoute)?.clone();
    ctx.route = Some(route.clone());
    ctx.path = match path {
        Cow::Borrowed(_) => None,
        Cow::Owned(p) => Some(p),
    };

    // Stage 4: identity.
    if let Some(idn) = &route.identity {
        let (mut parts, body) = req.into_parts();
        let checked = async {
            idn.check_client_cert(ctx.client_cert.as_deref(), &mut parts.headers)?;
            idn.check(&mut parts).await
        };
        // Boxed here and below: a stage's own call (an IdP, Redis) would otherwise make every
        // request's future, which each layer moves, that much larger.
        ctx.claims = Box::pin(traces::within(ctx.trace.as_ref(), "identity", checked, failed)).await?;
        req = Request::from_parts(parts, body);
    }
    // Stage 5: rate limits, keyed by the client address resolved at the trust boundary.
    let mut admitted = None;
    if let Some(limits) = &route.rate_limits {
        let facts = key::KeyFacts::of(ctx, req.headers(), req.uri());
        let checked = limits.check(&facts);
        let refused = |r: &Result<_, ratelimit::Refused>| r.as_ref().err().map(|_| "rate-limited".into());
        match Box::pin(traces::within(ctx.trace.as_ref(), "rate_limit", checked, refused)).await {
            Ok(a) => admitted = Some(a).filter(|a| !a.is_empty()),
            Err(refused) => {
                return Err(ProxyError::RateLimited {
                    policy: refused.policy,
                    retry_after_secs: ratelimit::secs_up(refused.retry_after).max(1),
                    headers: Box::new(refused.headers),
                })
            }
        }
    }
    let mut req = req.map(InBody::Stream);
    // Stage 6: validation, on the client's (modern) body before any translation.
    if let Some(check) = &route.validate {
        req = Box::pin(translate::validate(check, req, listener.limits.body_read_timeout)).await?;
    }
    let result = match &route.idempotency {
        // Stage 7: idempotency keys, around the rest of the pipeline.
        Some(idem) => {
            let store = &snap.idempotency_store;
            let sub = idem.caller(&key::KeyFacts::of(ctx, req.headers(), req.uri()));
            Box::pin(idempotency::handle(
                idem,
                store,
                &route.name,
                sub.as_deref(),
                req,
                |req| writes::dispatch(req, &route, conn, ctx, snap.writes.as_ref()),
            ))
            .await
        }
        // Stages 8-10. A route with nothing for stage 8 skips its three layers, and the others
        // go boxed: each async layer keeps its own copy of the request, and hyper moves the
        // whole future of every request into a box, so the plain route paid for their size.
        None if route.is_direct() => translate::forward(req, conn, ctx).await,
        None => Box::pin(writes::dispatch(req, &route, conn, ctx, snap.writes.as_ref())).await,
    };
    match (result, admitted) {
        (Ok(mut resp), Some(a)) => {
            a.write_headers(resp.headers_mut());
            Ok(resp)
        }
        (result, _) => result,
    }
}

/// A sampled request's bodies, and the answer as the client gets it, feed the route's contract
/// report; the answer is copied as it streams, never held back.
async fn observed(
    req: Request<InBody>,
    route: &Arc<Route>,
    conn: &ConnInfo,
    ctx: &mut RequestCtx,
) -> Result<Response<ResponseBody>, ProxyError> {
    let Some(c) = route.contract.as_ref().filter(|c| !ctx.upgrade && c.sampled()) else {
        return dispatch(req, route, conn, ctx).await;
    };
    let (parts, body) = req.into_parts();
    let (body, seen) = match body::read_bounded(body, c.max_body).await {
        Ok(b) => (InBody::Buffered(b.clone()), Some(b)),
        Err(body::NotRead::Unbounded(b)) => (b, None),
        Err(body::NotRead::Failed(fault, e)) => {
            let limit = conn.listener.limits.max_body_bytes.0;
            return Err(ProxyError::client_fault(fault, limit, e));
        }
    };
    let resp = dispatch(Request::from_parts(parts, body), route, conn, ctx).await?;
    // A body already teed within `dispatch` is the shadow's copy: the comparison learns from
    // both answers, so this one would count twice.
    if matches!(resp.body(), ResponseBody::Tee(_)) {
        return Ok(resp);
    }
    Ok(c.tee(ctx.side, seen, resp))
}

/// Stage 8: the migration split, shadow copy and fallback; stage 9, translation for the side that
/// serves (`translate::forward`), wraps stage 10, the upstream call.
async fn dispatch(
    req: Request<InBody>,
    route: &Arc<Route>,
    conn: &ConnInfo,
    ctx: &mut RequestCtx,
) -> Result<Response<ResponseBody>, ProxyError> {
    match &route.migration {
        None => translate::forward(req, conn, ctx).await,
        // Boxed: the split's shadow copy and fallback would otherwise make every request's
        // future, which each layer above moves, that much larger.
        Some(m) => Box::pin(migrated(m, req, route, conn, ctx)).await,
    }
}

async fn migrated(
    m: &migration::Migration,
    req: Request<InBody>,
    route: &Arc<Route>,
    conn: &ConnInfo,
    ctx: &mut RequestCtx,
) -> Result<Response<ResponseBody>, ProxyError> {
    ctx.side = m.choose(&key::KeyFacts::of(ctx, req.headers(), req.uri()), &ctx.overrides);
    let shadow = m
        .shadow
        .as_ref()
        .filter(|s| !ctx.upgrade && s.wanted(req.method()));
    // Any method may fall back after a connect error, so the request is kept whatever it is;
    // `may_resend` decides once the failure is known.
    let fallback = ctx.side == context::Side::Modern && m.fallback && !ctx.upgrade;
    if shadow.is_none() && !fallback {
        return translate::forward(req, conn, ctx).await;
    }

    // Both the shadow copy and the fallback need the request again: keep it, within bounds.
    let (parts, body) = req.into_parts();
    let limit = shadow
        .map_or(0, |s| s.max_body)
        .max(if fallback { m.fallback_max_body } else { 0 });
    let bytes = match body::read_bounded(body, limit).await {
        Ok(b) => b,
        Err(body::NotRead::Failed(fault, e)) => {
            return Err(ProxyError::client_fault(
                fault,
                conn.listener.limits.max_body_bytes.0,
                e,
            ))
        }
        Err(body::NotRead::Unbounded(body)) => {
            // Too large to keep: served once, by the chosen side, without shadow or fallback.
            if let Some(s) = shadow {
                s.count("dropped");
            }
            return translate::forward(Request::from_parts(parts, body), conn, ctx).await;
        }
    };
    let shadow_copy = match shadow {
        None => None,
        Some(s) => match s.slot() {
            None => None,
            Some(slot) => {
                let copy = shadow_request(&parts, &bytes, route, conn, ctx, ctx.side.other())?;
                // Noise learning: the serving side gets the request a second time, later, in
                // the shadow task. Built here only for the sampled share.
                let again = if s.noise_wanted(&parts.method) {
                    Some((
                        ctx.side,
                        shadow_request(&parts, &bytes, route, conn, ctx, ctx.side)?,
                    ))
                } else {
                    None
                };
                Some((s, slot, copy, again))
            }
        },
    };

    let chosen = ctx.side;
    let again = clone_parts(&parts);
    let mut result = translate::forward(
        Request::from_parts(parts, InBody::Buffered(bytes.clone())),
        conn,
        ctx,
    )
    .await;
    if fallback {
        use crate::upstream::retry::{may_resend, ResendCause};
        let reason = match &result {
            Ok(r) if r.status().is_server_error() => Some(("5xx", ResendCause::Answered)),
            Err(ProxyError::UpstreamUnreachable { .. }) => {
                Some(("connect-error", ResendCause::ConnectFailed))
            }
            Err(ProxyError::UpstreamTimeout { .. }) => Some(("timeout", ResendCause::Interrupted)),
            Err(ProxyError::UpstreamFailed { .. }) => Some(("5xx", ResendCause::Interrupted)),
            Err(ProxyError::CircuitOpen { .. }) => Some(("circuit-open", ResendCause::BreakerRefused)),
            _ => None,
        }
        .filter(|(_, cause)| may_resend(&again.method, *cause, m.fallback_non_idempotent));
        if let Some((reason, _)) = reason {
            m.count_fallback(reason);
            tracing::info!(route = %route.name, reason, "modern failed; served by legacy");
            ctx.side = context::Side::Legacy;
            result = translate::forward(Request::from_parts(again, InBody::Buffered(bytes)), conn, ctx).await;
        }
    }

    match (shadow_copy, result) {
        (None, result) => result,
        (Some((s, _, _, _)), Err(e)) => {
            s.count("error");
            Err(e)
        }
        // After a fallback, legacy served and the copy was made for legacy: its headers and
        // dialect are legacy's, and the other side just failed. Nothing to compare.
        (Some((s, _, _, _)), Ok(resp)) if ctx.side != chosen => {
            s.count("dropped");
            Ok(resp)
        }
        (Some((s, slot, copy, again)), Ok(resp)) => {
            let other = route.upstream_for(ctx.side.other()).clone();
            let again = again.map(|(side, req)| (req, route.upstream_for(side).clone()));
            Ok(s.launch(slot, copy, other, ctx.side, resp, again))
        }
    }
}

/// A copy of the request for `other` (the side that does not serve, or for noise learning the
/// one that does): the normalised path and the headers that side would get, built by the same
/// code as the served request's.
fn shadow_request(
    parts: &http::request::Parts,
    body: &bytes::Bytes,
    route: &Route,
    conn: &ConnInfo,
    ctx: &RequestCtx,
    other: context::Side,
) -> Result<shadow::ShadowRequest, ProxyError> {
    let mut headers = parts.headers.clone();
    forward::upstream_headers(&mut headers, parts.version, conn, ctx, other)?;
    let uri = match &ctx.path {
        None => parts.uri.clone(),
        Some(p) => http::Uri::from(forward::path_and_query(&parts.uri, Some(p))?),
    };
    Ok(shadow::ShadowRequest {
        method: parts.method.clone(),
        captures: route.path.captures(uri.path()),
        uri,
        headers,
        body: body.clone(),
        request_id: ctx.request_id.to_str().unwrap_or_default().to_string(),
        trace: ctx.trace.as_ref().and_then(traces::RequestTrace::link),
        // The copy goes to the other side, so it speaks that side's dialect.
        transform: route.transform_for(other).cloned(),
    })
}

/// A stage's error as its span records it.
fn failed<T>(r: &Result<T, ProxyError>) -> Option<Cow<'static, str>> {
    r.as_ref().err().map(|e| Cow::Borrowed(e.kind()))
}

fn clone_parts(p: &http::request::Parts) -> http::request::Parts {
    let mut r = Request::new(());
    *r.method_mut() = p.method.clone();
    *r.uri_mut() = p.uri.clone();
    *r.version_mut() = p.version;
    *r.headers_mut() = p.headers.clone();
    r.into_parts().0
}

fn check_header_size<B>(req: &Request<B>, limit: u64) -> Result<(), ProxyError> {
    // Counted as on the wire: request line plus `name: value\r\n` per header.
    let mut size =
        req.method().as_str().len() + req.uri().path().len() + req.uri().query().map_or(0, str::len) + 12;
    for (name, value) in req.headers() {
        size += name.as_str().len() + value.len() + 4;
    }
    if size as u64 > limit {
        return Err(ProxyError::HeadersTooLarge { limit });
    }
    Ok(())
}

/// The host the request is for: the URI authority (HTTP/2, or HTTP/1 absolute-form) or the single
/// `Host` header. A missing or doubled Host, or a Host that disagrees with the authority, is refused
/// (RFC 9112 §3.2) because a legacy server might read the other one.
fn request_host<B>(req: &Request<B>) -> Result<Option<HeaderValue>, ProxyError> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::DuplicateHost);
    }
    match (req.uri().authority(), first) {
        (Some(auth), Some(h)) => {
            if !auth.as_str().eq_ignore_ascii_case(h.to_str().unwrap_or("")) {
                return Err(ProxyError::ConflictingHost);
            }
            Ok(Some(h.clone()))
        }
        (Some(auth), None) => HeaderValue::from_str(auth.as_str())
            .map(Some)
            .map_err(|_| ProxyError::MissingHost),
        (None, Some(h)) => Ok(Some(h.clone())),
        (None, None) if req.version() == Version::HTTP_10 => Ok(None),
        (None, None) => Err(ProxyError::MissingHost),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(builder: http::request::Builder) -> Request<()> {
        builder.body(()).unwrap()
    }

    #[test]
    fn host_rules_follow_rfc9112() {
        let r = req(Request::get("/").header(HOST, "a.test"));
        assert_eq!(request_host(&r).unwrap().unwrap(), "a.test");
        let r = req(Request::get("/"));
        assert!(matches!(request_host(&r), Err(ProxyError::MissingHost)));
        let r = req(Request::get("/").version(Version::HTTP_10));
        assert!(request_host(&r).unwrap().is_none());
        let r = req(Request::get("/").header(HOST, "a.test").header(HOST, "b.test"));
        assert!(matches!(request_host(&r), Err(ProxyError::DuplicateHost)));
        let r = req(Request::get("http://a.test/x").header(HOST, "b.test"));
        assert!(matches!(request_host(&r), Err(ProxyError::ConflictingHost)));
        let r = req(Request::get("http://a.test/x").version(Version::HTTP_2));
        assert_eq!(request_host(&r).unwrap().unwrap(), "a.test");
    }

    #[test]
    fn oversized_headers_are_refused() {
        let r = req(Request::get("/").header("x-big", "a".repeat(2000)));
        assert!(check_header_size(&r, 4096).is_ok());
        assert!(matches!(
            check_header_size(&r, 1024),
            Err(ProxyError::HeadersTooLarge { limit: 1024 })
        ));
    }
}
