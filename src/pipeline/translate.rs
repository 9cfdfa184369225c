//! Stage 9: translation around the upstream call, and stage 6: schema validation. Bodies are
//! buffered only when their media type is configured for translation, up to the plan's bound;
//! every other body streams through untouched.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, ETAG};
use http::uri::Uri;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt as _;

use super::body::{InBody, RequestBody, ResponseBody};
use super::route::Route;
use super::{ConnInfo, RequestCtx};
use crate::error::ProxyError;
use crate::translate::request::{self, Failed, Sent};
use crate::translate::validate::SchemaCheck;
use crate::translate::{Direction, DirectionPlan, Transform};
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
    let upstream = route.upstream_for(ctx.side).clone();
    let path = ctx.path.clone();
    match route.transform_for(ctx.side).cloned() {
        None => super::forward::forward(req, &upstream, conn, ctx, path).await,
        // Boxed: the translation's state would otherwise make every request's future larger,
        // and moving it showed up as memmove in profiles of the plain route.
        Some(t) => Box::pin(translated(t, req, &route, &upstream, conn, ctx, path)).await,
    }
}

async fn translated(
    t: Arc<Transform>,
    req: Request<InBody>,
    route: &Route,
    upstream: &Arc<Upstream>,
    conn: &ConnInfo,
    ctx: &mut RequestCtx,
    path: Option<String>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let (mut parts, body) = req.into_parts();
    // The driver rewrites the path ficus routed on, so that one goes into the URI first.
    parts.uri = Uri::from(super::forward::path_and_query(&parts.uri, path.as_deref())?);
    let caps = route.path.captures(parts.uri.path());
    let body = ClientBody {
        body,
        stall: conn.listener.limits.body_read_timeout,
    };
    let body = match request::request(&t, &mut parts, &caps, body).await {
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
    let resp = super::forward::forward(Request::from_parts(parts, body), upstream, conn, ctx, None).await?;
    match &t.response {
        Some(plan) => translate_response(plan, &t, resp, upstream)
            .await
            .inspect_err(|e| {
                if matches!(e, ProxyError::TranslationFailed { .. }) {
                    t.count(Direction::Response, false);
                }
            }),
        None => Ok(resp),
    }
}

/// Route captures for the path the route matched (the normalised one).
pub fn captures(route: &Route, uri: &Uri, normalised: Option<&str>) -> Vec<(String, String)> {
    route.path.captures(normalised.unwrap_or(uri.path()))
}

/// A client's body as the request driver sees it: read only when the plan translates it.
struct ClientBody {
    body: InBody,
    stall: std::time::Duration,
}

impl request::Body for ClientBody {
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

async fn translate_response(
    plan: &DirectionPlan,
    t: &Transform,
    resp: Response<ResponseBody>,
    upstream: &Upstream,
) -> Result<Response<ResponseBody>, ProxyError> {
    let (mut parts, body) = resp.into_parts();
    plan.apply_headers(&mut parts.headers);
    let no_body = matches!(parts.status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED)
        || parts.status.is_informational()
        || (body.is_end_stream() && !parts.headers.contains_key(CONTENT_LENGTH));
    if no_body || !plan.wants_body(&parts.headers) {
        return Ok(Response::from_parts(parts, body));
    }
    let failed = |reason: String| {
        tracing::warn!(transform = %t.name, upstream = %upstream.name, %reason, "response translation failed");
        ProxyError::TranslationFailed { reason }
    };
    let encoded = parts
        .headers
        .get(CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if encoded {
        return Err(failed(
            "the answer is content-encoded (compressed) and cannot be translated".into(),
        ));
    }
    if body.size_hint().lower() > plan.max_body {
        return Err(failed(format!(
            "the answer exceeds the {}-byte translation limit",
            plan.max_body
        )));
    }
    let limited = http_body_util::Limited::new(body, usize::try_from(plan.max_body).unwrap_or(usize::MAX));
    let bytes = match tokio::time::timeout(upstream.request_timeout, limited.collect()).await {
        Err(_) => {
            return Err(ProxyError::UpstreamTimeout {
                upstream: upstream.name.to_string(),
                timeout_ms: upstream.request_timeout.as_millis(),
            })
        }
        Ok(Ok(c)) => c.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            return Err(failed(format!(
                "the answer exceeds the {}-byte translation limit",
                plan.max_body
            )))
        }
        Ok(Err(e)) => {
            return Err(ProxyError::UpstreamFailed {
                upstream: upstream.name.to_string(),
                reason: e.to_string(),
            })
        }
    };
    if bytes.is_empty() {
        // HEAD, or an empty answer: nothing to translate (the head keeps its length).
        return Ok(Response::from_parts(parts, ResponseBody::empty()));
    }
    let out = plan
        .translate(Some(parts.status), &mut parts.headers, &bytes)
        .map_err(|e| failed(e.to_string()))?;
    t.count(Direction::Response, true);
    if let Some(s) = out.status {
        parts.status = s;
    }
    // The representation changed: a strong validator of the legacy bytes would lie.
    if let Some(tag) = parts.headers.get(ETAG).cloned() {
        if !tag.as_bytes().starts_with(b"W/") {
            let weak = [b"W/".as_slice(), tag.as_bytes()].concat();
            match HeaderValue::from_bytes(&weak) {
                Ok(v) => parts.headers.insert(ETAG, v),
                Err(_) => parts.headers.remove(ETAG),
            };
        }
    }
    Ok(Response::from_parts(parts, ResponseBody::full(out.body)))
}

/// The shadow side's answer, translated back with its transform so that both answers are
/// compared in the modern shape. Errors are reported as text (the shadow counts them).
pub fn shadow_response(
    t: &Transform,
    status: &mut StatusCode,
    headers: &mut HeaderMap,
    body: Bytes,
) -> Result<Bytes, String> {
    let Some(plan) = &t.response else {
        return Ok(body);
    };
    plan.apply_headers(headers);
    if body.is_empty() || !plan.wants_body(headers) {
        return Ok(body);
    }
    let out = plan
        .translate(Some(*status), headers, &body)
        .map_err(|e| e.to_string())?;
    if let Some(s) = out.status {
        *status = s;
    }
    Ok(out.body)
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
