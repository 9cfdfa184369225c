//! The one translation driver: what an upstream receives on a translated route ([`request`]),
//! and what the client gets back ([`response`]). Live traffic (`pipeline::translate`), the
//! shadow copy (`pipeline::shadow`) and `ficus translate` (`offline`) all call these, so the
//! three cannot disagree about the method, the path, the status, the headers or the body.

use std::future::Future;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, ETAG};
use http::request::Parts;
use http::{HeaderValue, StatusCode, Uri};

use super::{DirectionPlan, Transform, TranslateError};

/// A body the driver may need whole. Live traffic streams it and reads it only when the plan
/// translates it; the shadow copy and the offline tool already hold it as bytes.
pub trait Body: Sized {
    type Error;
    /// Known to be empty without reading it: an empty body gets the plan's synthesised one.
    fn is_empty(&self) -> bool;
    /// The whole body, refusing more than `limit` bytes.
    fn read(self, limit: u64) -> impl Future<Output = Result<Bytes, Self::Error>> + Send;
}

impl Body for Bytes {
    type Error = std::convert::Infallible;

    fn is_empty(&self) -> bool {
        Bytes::is_empty(self)
    }

    fn read(self, _limit: u64) -> impl Future<Output = Result<Bytes, Self::Error>> + Send {
        // The plan's own bound is checked by `translate`, with the error it gives everywhere.
        std::future::ready(Ok(self))
    }
}

/// What goes on in place of the body that came in.
pub enum Sent<B> {
    /// The body as it came (streamed, on live traffic): the plan does not translate it.
    Untouched(B),
    /// Read whole but not translated (it was empty).
    Read(Bytes),
    /// Translated, or synthesised from the path captures.
    Translated(Bytes),
}

impl Sent<Bytes> {
    pub fn into_bytes(self) -> Bytes {
        match self {
            Self::Untouched(b) | Self::Read(b) | Self::Translated(b) => b,
        }
    }
}

/// Why the request or answer could not be put in the other side's dialect.
#[derive(Debug, thiserror::Error)]
pub enum Failed<E> {
    #[error(transparent)]
    Translate(#[from] TranslateError),
    /// Reading the body failed (too large, too slow, broken).
    #[error("the body could not be read")]
    Body(E),
}

/// Rewrites `parts` (method, path and query, headers) and the body into exactly what the
/// upstream receives. `parts.uri` holds the path ficus routed on (the normalised one), and
/// `captures` are the route template's bindings in that path. Headers ficus vouches for
/// (forwarding, request id, identity) are added later, by `pipeline::forward`, for every route.
pub async fn request<B: Body>(
    t: &Transform,
    parts: &mut Parts,
    captures: &[(String, String)],
    body: B,
) -> Result<Sent<B>, Failed<B::Error>> {
    if t.response.as_ref().is_some_and(DirectionPlan::has_body_work) {
        // A compressed answer could not be read; ask the backend for an identity one.
        parts.headers.remove(ACCEPT_ENCODING);
    }
    let Some(plan) = &t.request else {
        return Ok(Sent::Untouched(body));
    };
    plan.apply_headers(&mut parts.headers);
    if let Some(pq) = plan.rewrite_uri(parts.uri.path(), parts.uri.query(), captures)? {
        parts.uri = Uri::from(pq);
    }
    if let Some(m) = &plan.method {
        parts.method = m.clone();
    }
    if body.is_empty() {
        if let Some(b) = plan.synthesised_body(captures) {
            parts
                .headers
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            let out = plan.translate(None, &mut parts.headers, &b)?;
            return Ok(Sent::Translated(out.body));
        }
    }
    if !plan.wants_body(&parts.headers) {
        return Ok(Sent::Untouched(body));
    }
    let bytes = body.read(plan.max_body).await.map_err(Failed::Body)?;
    if bytes.is_empty() {
        return Ok(Sent::Read(bytes));
    }
    let out = plan.translate(None, &mut parts.headers, &bytes)?;
    Ok(Sent::Translated(out.body))
}

/// Rewrites the backend's answer (`parts`: status and headers, and the body) into what the
/// client gets: the response plan's header ops, status rules and body translation.
pub async fn response<B: Body>(
    t: &Transform,
    parts: &mut http::response::Parts,
    body: B,
) -> Result<Sent<B>, Failed<B::Error>> {
    let Some(plan) = &t.response else {
        return Ok(Sent::Untouched(body));
    };
    plan.apply_headers(&mut parts.headers);
    let no_body = matches!(parts.status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED)
        || parts.status.is_informational()
        || (body.is_empty() && !parts.headers.contains_key(CONTENT_LENGTH));
    if no_body || !plan.wants_body(&parts.headers) {
        return Ok(Sent::Untouched(body));
    }
    let encoded = parts
        .headers
        .get(CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if encoded {
        return Err(Failed::Translate(TranslateError::Encoded));
    }
    let bytes = body.read(plan.max_body).await.map_err(Failed::Body)?;
    if bytes.is_empty() {
        // HEAD, or an empty answer: nothing to translate (the head keeps its length).
        return Ok(Sent::Read(bytes));
    }
    let out = plan.translate(Some(parts.status), &mut parts.headers, &bytes)?;
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
    Ok(Sent::Translated(out.body))
}

/// [`request`] on a body already in memory, without a runtime (`ficus translate`).
pub fn request_now(
    t: &Transform,
    parts: &mut Parts,
    captures: &[(String, String)],
    body: Bytes,
) -> Result<Bytes, TranslateError> {
    now(request(t, parts, captures, body))
}

/// [`response`] on a body already in memory, without a runtime (`ficus translate`).
pub fn response_now(
    t: &Transform,
    parts: &mut http::response::Parts,
    body: Bytes,
) -> Result<Bytes, TranslateError> {
    now(response(t, parts, body))
}

fn now(
    f: impl Future<Output = Result<Sent<Bytes>, Failed<std::convert::Infallible>>>,
) -> Result<Bytes, TranslateError> {
    let mut f = std::pin::pin!(f);
    // In-memory bytes are read at once, so the driver never waits.
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Ok(sent)) => Ok(sent.into_bytes()),
        Poll::Ready(Err(Failed::Translate(e))) => Err(e),
        Poll::Ready(Err(Failed::Body(never))) => match never {},
        Poll::Pending => Err(TranslateError::Op(
            "internal: the translation waited on an in-memory body".into(),
        )),
    }
}
