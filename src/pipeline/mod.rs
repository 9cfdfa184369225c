//! The request pipeline. Its stage order is the architecture, so it is written out once, here,
//! in [`handle`]: context, route, (identity, rate limit, validation, idempotency, migration and
//! translation as they land), then the upstream call, then observation.

pub mod body;
pub mod context;
pub mod diff;
pub mod forward;
pub mod idempotency;
pub mod migration;
pub mod normalize;
pub mod ratelimit;
pub mod rollout;
pub mod route;
pub mod shadow;
pub mod translate;

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

use http::header::{HeaderName, HOST};
use http::{HeaderValue, Request, Response, Version};
use hyper::body::Incoming;

use crate::config::compile::Snapshot;
use crate::error::ProxyError;
use crate::gateway::Shared;
use crate::identity::client_cert::PeerCert;
use crate::server::listener::ListenerRuntime;
use crate::telemetry::access_log::AccessRecord;
use body::{InBody, ResponseBody};
use route::Route;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// What the pipeline knows about the connection a request arrived on. The listener settings are
/// those in force when the connection was accepted; routing uses the newest snapshot per request.
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub listener: Arc<ListenerRuntime>,
    /// Requests still being answered; the idle timeout never closes a connection that has some.
    pub in_flight: AtomicUsize,
    /// The verified TLS client certificate, set once right after the handshake.
    pub client_cert: OnceLock<Arc<PeerCert>>,
}

/// Per-request state shared by the stages (Pingora's context struct).
pub struct RequestCtx {
    pub request_id: HeaderValue,
    pub client: IpAddr,
    pub route: Option<Arc<Route>>,
    /// The side of a migration route that served (legacy for routes without one).
    pub side: migration::Side,
    /// The caller's verified claims, when the route checks identity and a token was sent.
    pub claims: Option<Arc<crate::identity::jwt::Claims>>,
    /// The connection's verified TLS client certificate, if it presented one.
    pub client_cert: Option<Arc<PeerCert>>,
}

impl RequestCtx {
    /// The client certificate's principal (first SAN, else subject), for logs and rate-limit keys.
    pub fn client_cert_identity(&self) -> Option<&str> {
        self.client_cert.as_deref().map(|c| &*c.principal)
    }
}

struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Release);
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
    let mut ctx = RequestCtx {
        request_id,
        client: conn.peer.ip(),
        route: None,
        side: migration::Side::Legacy,
        claims: None,
        client_cert: conn.client_cert.get().cloned(),
    };
    let method = req.method().clone();
    let log_path = shared.access_log.as_ref().map(|_| req.uri().path().to_owned());

    let (response, error) = match run(&snap, conn, &mut ctx, req).await {
        Ok(resp) => (resp, None),
        Err(e) => {
            if e.status().is_server_error() {
                tracing::warn!(request_id = ?ctx.request_id, error = %e, "request failed");
            } else {
                tracing::debug!(request_id = ?ctx.request_id, error = %e, "request refused");
            }
            (e.to_response(Some(&ctx.request_id)), Some(e.kind()))
        }
    };

    let elapsed = started.elapsed();
    match &ctx.route {
        Some(r) => {
            r.metrics_for(ctx.side)
                .record(&method, response.status(), elapsed);
            if let Some(m) = &r.migration {
                let failed = response.status().is_server_error();
                match ctx.side {
                    migration::Side::Legacy => m.legacy_stats.record(failed, elapsed),
                    migration::Side::Modern => {
                        m.modern_stats.record(failed, elapsed);
                        if let Some(ro) = &m.rollout {
                            ro.record(failed, elapsed);
                        }
                    }
                }
            }
        }
        None => snap.unmatched.record(&method, response.status(), elapsed),
    }
    if let (Some(log), Some(path)) = (&shared.access_log, log_path) {
        log.log(AccessRecord {
            time: SystemTime::now(),
            request_id: Some(ctx.request_id.clone()),
            client: ctx.client,
            method,
            path,
            route: ctx.route.as_ref().map(|r| r.name.clone()),
            upstream: ctx.route.as_ref().map(|r| r.upstream_for(ctx.side).name.clone()),
            client_cert: ctx.client_cert.as_ref().map(|c| c.principal.clone()),
            user: ctx.claims.as_ref().and_then(|c| c.get_str("sub")),
            status: response.status(),
            duration_us: elapsed.as_micros() as u64,
            error,
        });
    }
    response
}

async fn run(
    snap: &Snapshot,
    conn: &ConnInfo,
    ctx: &mut RequestCtx,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, ProxyError> {
    // Stage 1 (accept) left these to us: hyper's own header limit is only a backstop.
    check_header_size(&req, conn.listener.limits.max_header_bytes.0)?;
    let host = request_host(&req)?;

    // Stage 2: context. Routing and everything after it see only the normalised path.
    let path = normalize::normalize_path(req.uri().path())?;
    let host_name = host
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .map(route::host_without_port);

    // Stage 3: route.
    let view = route::RequestView {
        host: host_name,
        path: &path,
        method: req.method(),
        headers: req.headers(),
        query: req.uri().query(),
    };
    let route = snap.router.find(&view).ok_or(ProxyError::NoRoute)?.clone();
    ctx.route = Some(route.clone());

    let path = match path {
        Cow::Borrowed(_) => None,
        Cow::Owned(p) => Some(p),
    };
    // Stage 4: identity.
    let mut req = req;
    if req.headers().contains_key(http::header::CONNECTION) {
        // Before identity adds anything: forward strips the headers `Connection` names, and
        // `Connection: x-client-subject` (or `x-user-id`, `authorization`) must not be able to
        // delete what identity sets for the upstream.
        let upgrade = req.version() == Version::HTTP_11 && context::is_upgrade_request(req.headers());
        context::strip_hop_by_hop(req.headers_mut(), upgrade);
    }
    // On every route, not only those that set them: a route without `forward_client_cert` to
    // the same upstream would otherwise let a caller spoof them (Envoy's XFCC lesson).
    for h in &snap.client_cert_headers {
        req.headers_mut().remove(h);
    }
    if let Some(idn) = &route.identity {
        idn.check_client_cert(ctx.client_cert.as_deref(), req.headers_mut())?;
        let query = req.uri().query().map(str::to_string);
        ctx.claims = idn.check(req.headers_mut(), query.as_deref()).await?;
    }
    // Stage 5: rate limits, keyed by the client address our trusted proxies vouch for.
    let mut admitted = None;
    if let Some(limits) = &route.rate_limits {
        let trusted = &conn.listener.trusted_proxies;
        if !trusted.is_empty() {
            ctx.client = context::client_address(req.headers(), conn.peer.ip(), trusted);
        }
        let src = ratelimit::KeySource {
            client: ctx.client,
            route: &route.name,
            headers: req.headers(),
            claims: ctx.claims.as_deref(),
            client_cert: ctx.client_cert_identity(),
        };
        match limits.check(&src).await {
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
        req = translate::validate(check, req, conn.listener.limits.body_read_timeout).await?;
    }
    let result = match &route.idempotency {
        // Stage 7: idempotency keys, around the rest of the pipeline.
        Some(idem) => {
            let store = &snap.idempotency_store;
            let sub = idem.caller(&ratelimit::KeySource {
                client: ctx.client,
                route: &route.name,
                headers: req.headers(),
                claims: ctx.claims.as_deref(),
                client_cert: ctx.client_cert_identity(),
            });
            idempotency::handle(idem, store, &route.name, sub.as_deref(), req, |req| {
                dispatch(req, &route, conn, ctx, host, path)
            })
            .await
        }
        None => dispatch(req, &route, conn, ctx, host, path).await,
    };
    match (result, admitted) {
        (Ok(mut resp), Some(a)) => {
            a.write_headers(resp.headers_mut());
            Ok(resp)
        }
        (result, _) => result,
    }
}

/// Stage 8: the migration split, shadow copy and fallback; stage 9, translation for the side that
/// serves (`translate::forward`), wraps stage 10, the upstream call.
async fn dispatch(
    req: Request<InBody>,
    route: &Arc<Route>,
    conn: &ConnInfo,
    ctx: &mut RequestCtx,
    host: Option<HeaderValue>,
    path: Option<String>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let Some(m) = &route.migration else {
        return translate::forward(req, route, ctx.side, &route.upstream, conn, ctx, host, path).await;
    };
    ctx.side = m.choose(
        ctx.client,
        req.uri().query(),
        req.headers(),
        ctx.claims.as_deref(),
    );
    let mut req = req;
    if let Some(o) = &m.override_header {
        // Internal to ficus: the backend never sees it.
        req.headers_mut().remove(&o.header);
    }
    let upgrade = context::is_upgrade_request(req.headers());
    let shadow = m.shadow.as_ref().filter(|s| !upgrade && s.wanted(req.method()));
    // Any method may fall back after a connect error, so the request is kept whatever it is;
    // `may_resend` decides once the failure is known.
    let fallback = ctx.side == migration::Side::Modern && m.fallback && !upgrade;
    if shadow.is_none() && !fallback {
        let upstream = route.upstream_for(ctx.side).clone();
        return translate::forward(req, route, ctx.side, &upstream, conn, ctx, host, path).await;
    }

    // Both the shadow copy and the fallback need the request again: keep it, within bounds.
    let (parts, body) = req.into_parts();
    let limit = shadow
        .map_or(0, |s| s.max_body)
        .max(if fallback { m.fallback_max_body } else { 0 });
    let bytes = match body::read_bounded(body, limit).await {
        Ok(b) => b,
        Err(body::NotRead::Failed(e)) => return Err(ProxyError::ClientBody(e)),
        Err(body::NotRead::Unbounded(body)) => {
            // Too large to keep: served once, by the chosen side, without shadow or fallback.
            if let Some(s) = shadow {
                s.count("dropped");
            }
            let upstream = route.upstream_for(ctx.side).clone();
            let req = Request::from_parts(parts, body);
            return translate::forward(req, route, ctx.side, &upstream, conn, ctx, host, path).await;
        }
    };
    let shadow_copy = shadow.and_then(|s| {
        let slot = s.slot()?;
        let mut headers = parts.headers.clone();
        context::strip_hop_by_hop(&mut headers, false);
        headers.insert(X_REQUEST_ID, ctx.request_id.clone());
        let other = match ctx.side {
            migration::Side::Legacy => migration::Side::Modern,
            migration::Side::Modern => migration::Side::Legacy,
        };
        let copy = shadow::ShadowRequest {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            headers,
            body: bytes.clone(),
            request_id: ctx.request_id.to_str().unwrap_or_default().to_string(),
            // The copy goes to the other side, so it speaks that side's dialect.
            transform: route.transform_for(other).cloned(),
            captures: translate::captures(route, &parts.uri, path.as_deref()),
        };
        Some((s, slot, copy))
    });

    let again = clone_parts(&parts);
    let upstream = route.upstream_for(ctx.side).clone();
    let mut result = translate::forward(
        Request::from_parts(parts, InBody::Buffered(bytes.clone())),
        route,
        ctx.side,
        &upstream,
        conn,
        ctx,
        host.clone(),
        path.clone(),
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
            ctx.side = migration::Side::Legacy;
            result = translate::forward(
                Request::from_parts(again, InBody::Buffered(bytes)),
                route,
                migration::Side::Legacy,
                &route.upstream,
                conn,
                ctx,
                host,
                path,
            )
            .await;
        }
    }

    match (shadow_copy, result) {
        (None, result) => result,
        (Some((s, _, _)), Err(e)) => {
            s.count("error");
            Err(e)
        }
        (Some((s, slot, copy)), Ok(resp)) => {
            let other = match ctx.side {
                migration::Side::Legacy => m.modern.clone(),
                migration::Side::Modern => route.upstream.clone(),
            };
            Ok(s.launch(slot, copy, other, ctx.side, resp))
        }
    }
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
