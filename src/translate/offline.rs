//! `ficus translate`: one request or answer through a route's transform, without traffic. The
//! config is compiled exactly as `ficus check` and the server compile it, and both go through the
//! same driver as live traffic and the shadow copy ([`super::driver`]): a request comes out as
//! the method, path, headers and body the backend would receive, an answer as the status,
//! headers and body the client would.

use std::path::Path;

use http::header::{HeaderName, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};

use super::{Direction, Transform};
use crate::config::compile::standalone;
use crate::config::ConfigSource;
use crate::pipeline::context::Side;
use crate::pipeline::route::Route;

pub struct Input<'a> {
    pub route: &'a str,
    pub direction: Direction,
    pub side: Side,
    /// The body's media type. For a request with a body, the plan's first configured type when
    /// absent; a request without a body has none unless given.
    pub content_type: Option<&'a str>,
    /// The backend's status (responses).
    pub status: u16,
    /// The request's path and query as the client sends it (`/` when absent); normalised as
    /// ficus normalises it before routing. Requests only.
    pub path: Option<&'a str>,
    /// The request's method: GET without a body, POST with one, when absent. Requests only.
    pub method: Option<&'a str>,
    /// Other request headers (`Accept`, a header a `rename` acts on), or response headers.
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

pub struct Output {
    /// The status the client gets (responses).
    pub status: Option<u16>,
    /// The method the backend gets (requests).
    pub method: Option<String>,
    pub headers: HeaderMap,
    /// The path and query the backend gets (requests).
    pub path: Option<String>,
    pub body: bytes::Bytes,
}

pub fn run(config: &Path, input: &Input<'_>) -> Result<Output, String> {
    let source = ConfigSource::File(config.to_path_buf());
    let text = source.read().map_err(|e| e.to_string())?;
    let snap = standalone(&text).map_err(|e| e.to_string())?;
    let route = snap
        .router
        .routes()
        .iter()
        .find(|r| &*r.name == input.route)
        .ok_or_else(|| format!("no route named `{}`", input.route))?;
    let t = route.transform_for(input.side).ok_or_else(|| {
        format!(
            "route `{}` has no transform for the {} side",
            input.route,
            input.side.label()
        )
    })?;
    let plan = t
        .plan(input.direction)
        .ok_or_else(|| format!("transform `{}` has no {:?} part", t.name, input.direction))?;
    let mut headers = HeaderMap::new();
    for (k, v) in input.headers {
        let name =
            HeaderName::from_bytes(k.trim().as_bytes()).map_err(|_| format!("`{k}` is not a header name"))?;
        let value = HeaderValue::from_str(v.trim()).map_err(|_| format!("`{v}` is not a header value"))?;
        headers.append(name, value);
    }
    let ct = match (input.content_type, input.direction) {
        (Some(ct), _) => Some(ct.to_string()),
        (None, Direction::Request) if input.body.is_empty() => None,
        (None, _) => Some(
            plan.content_types
                .first()
                .cloned()
                .unwrap_or_else(|| "application/json".into()),
        ),
    };
    if let Some(ct) = ct {
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_str(&ct).map_err(|_| format!("`{ct}` is not a content type"))?,
        );
    }
    let body = bytes::Bytes::copy_from_slice(input.body);
    match input.direction {
        Direction::Request => {
            // Routed and sent as a listener would: `;params` only where some listener keeps them.
            let keep_params = snap
                .listeners
                .values()
                .any(|l| l.path_params == crate::config::file::PathParamsMode::Keep);
            request(route, t, input, keep_params, headers, body)
        }
        Direction::Response => {
            let mut parts = http::Response::new(()).into_parts().0;
            parts.status = StatusCode::from_u16(input.status)
                .map_err(|_| format!("{} is not a status", input.status))?;
            parts.headers = headers;
            let body = super::driver::response_now(t, &mut parts, body).map_err(|e| e.to_string())?;
            Ok(Output {
                status: Some(parts.status.as_u16()),
                method: None,
                headers: parts.headers,
                path: None,
                body,
            })
        }
    }
}

/// The request through the same driver as live traffic and the shadow copy.
fn request(
    route: &Route,
    t: &Transform,
    input: &Input<'_>,
    keep_params: bool,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Result<Output, String> {
    let method = match input.method {
        Some(m) => Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .map_err(|_| format!("`{m}` is not an HTTP method"))?,
        None if body.is_empty() => Method::GET,
        None => Method::POST,
    };
    let raw = input.path.unwrap_or("/");
    let (path, query) = raw.split_once('?').map_or((raw, None), |(p, q)| (p, Some(q)));
    // The normalised path, as ficus routes it and sends it on.
    let path = crate::pipeline::normalize::normalize_path(path, keep_params)
        .map_err(|e| format!("`{path}` (write `/api/...`): {e}"))?;
    let pq = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.into_owned(),
    };
    let uri: Uri = pq.parse().map_err(|e| format!("`{pq}` is not a path: {e}"))?;
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.headers = headers;
    let caps = route.path.captures(parts.uri.path());
    let body = super::driver::request_now(t, &mut parts, &caps, body).map_err(|e| e.to_string())?;
    Ok(Output {
        status: None,
        method: Some(parts.method.to_string()),
        path: Some(
            parts
                .uri
                .path_and_query()
                .map_or_else(|| "/".to_string(), ToString::to_string),
        ),
        headers: parts.headers,
        body,
    })
}
