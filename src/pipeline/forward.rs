//! Stage 10: hand the request to the upstream and stream its answer back.

use std::sync::Arc;

use http::header::{CONTENT_LENGTH, HOST};
use http::uri::{PathAndQuery, Uri};
use http::{HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::body::{RequestBody, ResponseBody};
use super::context::{self, ForwardedInfo};
use super::route::Route;
use super::{ConnInfo, RequestCtx, TRACEPARENT, X_REQUEST_ID};
use crate::error::ProxyError;
use crate::upstream::breaker::Outcome;
use crate::upstream::UpstreamCallError;

/// `host` is the validated request host; `new_path` is set only when normalisation changed the path.
pub async fn forward(
    mut req: Request<Incoming>,
    route: &Arc<Route>,
    conn: &ConnInfo,
    ctx: &mut RequestCtx,
    host: Option<HeaderValue>,
    new_path: Option<String>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let limits = &conn.listener.limits;
    let upstream = &route.upstream;
    if let Some(len) = content_length(req.headers()) {
        if len > limits.max_body_bytes.0 {
            return Err(ProxyError::BodyTooLarge {
                limit: limits.max_body_bytes.0,
            });
        }
    }
    let upgrade = req.version() == Version::HTTP_11 && context::is_upgrade_request(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

    let (mut parts, body) = req.into_parts();
    // Hop-by-hop removal first, so `Connection: x-forwarded-for` cannot delete what we add next.
    context::strip_hop_by_hop(&mut parts.headers, upgrade);
    let info = ForwardedInfo {
        peer: conn.peer.ip(),
        proto: conn.listener.proto,
        host: host.as_ref().and_then(|h| h.to_str().ok()),
    };
    ctx.client = context::apply_forwarded(&mut parts.headers, &info, &conn.listener.trusted_proxies);
    match parts.headers.get(TRACEPARENT) {
        Some(v) if context::valid_traceparent(v.as_bytes()) => {}
        _ => {
            parts.headers.insert(TRACEPARENT, context::new_traceparent());
        }
    }
    parts.headers.insert(X_REQUEST_ID, ctx.request_id.clone());
    if let Some(h) = host {
        // HTTP/2 clients send only `:authority`; the upstream speaks HTTP/1.1 and needs `Host`.
        parts.headers.entry(HOST).or_insert(h);
    }

    let endpoint = upstream
        .balancer
        .pick()
        .ok_or_else(|| ProxyError::UpstreamUnreachable {
            upstream: upstream.name.to_string(),
            reason: "no endpoints".into(),
        })?;
    let path_and_query = match new_path {
        None => parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
        Some(p) => {
            let pq = match parts.uri.query() {
                Some(q) => format!("{p}?{q}"),
                None => p,
            };
            PathAndQuery::try_from(pq)
                .map_err(|_| ProxyError::BadPath(super::normalize::PathError::BadEscape))?
        }
    };
    parts.uri = Uri::builder()
        .scheme(endpoint.scheme.clone())
        .authority(endpoint.authority.clone())
        .path_and_query(path_and_query)
        .build()
        .map_err(|e| ProxyError::UpstreamFailed {
            upstream: upstream.name.to_string(),
            reason: e.to_string(),
        })?;
    parts.version = Version::HTTP_11;

    let permit = match &upstream.breaker {
        None => None,
        Some(b) => Some(b.acquire().map_err(|wait| ProxyError::CircuitOpen {
            upstream: upstream.name.to_string(),
            retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
        })?),
    };
    let (body, verdict) = RequestBody::guard(body, limits.max_body_bytes.0, limits.body_read_timeout);
    let result = upstream.call(Request::from_parts(parts, body)).await;
    if let (Some(permit), Some(b)) = (permit, &upstream.breaker) {
        permit.record(breaker_outcome(&result, b.config()));
    }
    let mut resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            if let Some(v) = &verdict {
                if v.too_large() {
                    return Err(ProxyError::BodyTooLarge {
                        limit: limits.max_body_bytes.0,
                    });
                }
                if v.timed_out() {
                    return Err(ProxyError::BodyTimeout);
                }
            }
            let name = upstream.name.to_string();
            return Err(match e {
                UpstreamCallError::Connect(reason) => ProxyError::UpstreamUnreachable {
                    upstream: name,
                    reason,
                },
                UpstreamCallError::Timeout(t) => ProxyError::UpstreamTimeout {
                    upstream: name,
                    timeout_ms: t.as_millis(),
                },
                UpstreamCallError::Request(reason) | UpstreamCallError::Body(reason) => {
                    ProxyError::UpstreamFailed {
                        upstream: name,
                        reason,
                    }
                }
            });
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
        Err(UpstreamCallError::Body(_)) => Outcome::Cancelled,
    }
}
