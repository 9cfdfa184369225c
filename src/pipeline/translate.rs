//! Stage 9: translation around the upstream call, and stage 6: schema validation. Bodies are
//! buffered only when their media type is configured for translation, up to the plan's bound;
//! every other body streams through untouched.

use std::sync::Arc;

use bytes::Bytes;
use http::uri::Uri;
use http::{Method, Request, Response};
use http_body::Body as _;
use http_body_util::BodyExt as _;

use super::body::{InBody, RequestBody, ResponseBody};
use super::request::{ConnInfo, RequestCtx};
use super::route::Route;
use crate::error::ProxyError;
use crate::telemetry::traces;
use crate::translate::driver::{self, Failed, Sent};
use crate::translate::validate::SchemaCheck;
use crate::translate::{Direction, Transform, TranslateError};
use crate::upstream::Upstream;

/// Forwards to the upstream of `ctx.side`, speaking that side's dialect: its request transform
/// before, its response transform after. Without a transform this is [`super::forward::forward`].
pub async fn forward(
    req: Request<InBody>,
    conn: &ConnInfo,
    ctx: &mut RequestCtx,
) -> Result<Response<ResponseBody>, ProxyError> {
    let Some(route) = ctx.route.clone() else {
        return Err(ProxyError::NoRoute);
    };
    match route.transform_for(ctx.side).cloned() {
        None => {
            let path = ctx.path.clone();
            super::forward::forward(req, conn, ctx, path.as_deref()).await
        }
        // Boxed: the translation's state would otherwise make every request's future larger,
        // and moving it showed up as memmove in profiles of the plain route.
        Some(t) => Box::pin(translated(t, &route, req, conn, ctx)).await,
    }
}

async fn translated(
    t: Arc<Transform>,
    route: &Route,
    req: Request<InBody>,
    conn: &ConnInfo,
    ctx: &mut RequestCtx,
) -> Result<Response<ResponseBody>, ProxyError> {
    let upstream = route.upstream_for(ctx.side).clone();
    let upstream = &upstream;
    let (mut parts, body) = req.into_parts();
    // The driver rewrites the path ficus routed on, so that one goes into the URI first.
    parts.uri = Uri::from(super::forward::path_and_query(&parts.uri, ctx.path.as_deref())?);
    let caps = route.path.captures(parts.uri.path());
    let body = ClientBody {
        body,
        stall: conn.listener.limits.body_read_timeout,
    };
    let translated = driver::request(&t, &mut parts, &caps, body);
    let body = match traces::within(ctx.trace.as_ref(), "translate request", translated, failed).await {
        Ok(Sent::Untouched(b)) => b.body,
        Ok(Sent::Read(bytes)) => InBody::Buffered(bytes),
        Ok(Sent::Translated(bytes)) => {
            t.count(Direction::Request, true);
            InBody::Buffered(bytes)
        }
        Err(Failed::Body(e)) => return Err(e),
        Err(Failed::Translate(e)) => {
            let e = ProxyError::request_translation(e);
            if let ProxyError::RequestTranslation(_) = &e {
                t.count(Direction::Request, false);
            }
            return Err(e);
        }
    };
    let resp = super::forward::forward(Request::from_parts(parts, body), conn, ctx, None).await?;
    let (mut parts, body) = resp.into_parts();
    let answer = Answer {
        body,
        upstream: upstream.clone(),
    };
    let translated = driver::response(&t, &mut parts, answer);
    let body = match traces::within(ctx.trace.as_ref(), "translate response", translated, failed).await {
        Ok(Sent::Untouched(a)) => a.body,
        Ok(Sent::Read(_)) => ResponseBody::empty(),
        Ok(Sent::Translated(bytes)) => {
            t.count(Direction::Response, true);
            ResponseBody::full(bytes)
        }
        Err(Failed::Body(e)) => return Err(response_failed(&t, upstream, e)),
        Err(Failed::Translate(e)) => {
            return Err(response_failed(&t, upstream, ProxyError::response_translation(e)))
        }
    };
    Ok(Response::from_parts(parts, body))
}

/// A translation's failure as its span records it.
fn failed<T, E>(r: &Result<T, Failed<E>>) -> Option<std::borrow::Cow<'static, str>> {
    match r {
        Ok(_) => None,
        Err(Failed::Body(_)) => Some("body".into()),
        Err(Failed::Translate(_)) => Some("translation-failed".into()),
    }
}

/// Logs and counts an answer that could not be translated; other errors pass through.
fn response_failed(t: &Transform, upstream: &Upstream, e: ProxyError) -> ProxyError {
    if let ProxyError::TranslationFailed { reason } = &e {
        tracing::warn!(transform = %t.name, upstream = %upstream.name, %reason, "response translation failed");
        t.count(Direction::Response, false);
    }
    e
}

/// A client's body as the request driver sees it: read only when the plan translates it.
struct ClientBody {
    body: InBody,
    stall: std::time::Duration,
}

impl driver::Body for ClientBody {
    type Error = ProxyError;

    fn is_empty(&self) -> bool {
        match &self.body {
            InBody::Stream(s) => s.is_end_stream(),
            InBody::Buffered(b) => b.is_empty(),
        }
    }

    fn read(self, limit: u64) -> impl std::future::Future<Output = Result<Bytes, ProxyError>> + Send {
        read_request(self.body, limit, self.stall)
    }
}

/// Reads a client body whole, refusing more than `limit` bytes with 413.
pub async fn read_request(body: InBody, limit: u64, stall: std::time::Duration) -> Result<Bytes, ProxyError> {
    match body {
        InBody::Buffered(b) if b.len() as u64 > limit => Err(ProxyError::BodyTooLarge { limit }),
        InBody::Buffered(b) => Ok(b),
        InBody::Stream(s) => {
            if s.size_hint().lower() > limit {
                return Err(ProxyError::BodyTooLarge { limit });
            }
            let (guarded, _) = RequestBody::guard(s, limit, stall);
            Ok(guarded.collect().await?.to_bytes())
        }
    }
}

/// A backend's answer as the response driver sees it: read only when the plan translates it,
/// within the upstream's request timeout.
struct Answer {
    body: ResponseBody,
    upstream: Arc<Upstream>,
}

impl driver::Body for Answer {
    type Error = ProxyError;

    fn is_empty(&self) -> bool {
        self.body.is_end_stream()
    }

    fn read(self, limit: u64) -> impl std::future::Future<Output = Result<Bytes, ProxyError>> + Send {
        read_answer(self, limit)
    }
}

async fn read_answer(a: Answer, limit: u64) -> Result<Bytes, ProxyError> {
    let too_large = || ProxyError::response_translation(TranslateError::TooLarge { limit });
    if a.body.size_hint().lower() > limit {
        return Err(too_large());
    }
    let limited = http_body_util::Limited::new(a.body, usize::try_from(limit).unwrap_or(usize::MAX));
    match tokio::time::timeout(a.upstream.request_timeout, limited.collect()).await {
        Err(_) => Err(ProxyError::UpstreamTimeout {
            upstream: a.upstream.name.to_string(),
            timeout_ms: a.upstream.request_timeout.as_millis(),
        }),
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(too_large()),
        Ok(Err(e)) => Err(ProxyError::UpstreamFailed {
            upstream: a.upstream.name.to_string(),
            reason: e.to_string(),
        }),
    }
}

/// Stage 6: the request body against the route's schema. Requests without a body are checked
/// only for methods that carry one.
pub async fn validate(
    check: &SchemaCheck,
    req: Request<InBody>,
    stall: std::time::Duration,
) -> Result<Request<InBody>, ProxyError> {
    let (parts, body) = req.into_parts();
    let bytes = read_request(body, check.max_body, stall).await?;
    let has_body_method = matches!(parts.method, Method::POST | Method::PUT | Method::PATCH);
    if bytes.is_empty() && !has_body_method {
        return Ok(Request::from_parts(parts, InBody::Buffered(bytes)));
    }
    check.check(&bytes).map_err(ProxyError::SchemaViolation)?;
    Ok(Request::from_parts(parts, InBody::Buffered(bytes)))
}
