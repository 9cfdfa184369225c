//! `ficus translate`: one body through a route's transform, without traffic. The config is
//! compiled exactly as `ficus check` and the server compile it, and the same plan runs.

use std::path::Path;

use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, StatusCode};

use super::Direction;
use crate::config::compile::standalone;
use crate::config::ConfigSource;
use crate::pipeline::context::Side;

pub struct Input<'a> {
    pub route: &'a str,
    pub direction: Direction,
    pub side: Side,
    /// The body's media type; the plan's first configured type when absent.
    pub content_type: Option<&'a str>,
    /// The backend's status (responses).
    pub status: u16,
    /// A request path, to show the path rewrite.
    pub path: Option<&'a str>,
    pub body: &'a [u8],
}

pub struct Output {
    pub status: Option<u16>,
    pub headers: HeaderMap,
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
    let ct = input
        .content_type
        .map(str::to_string)
        .or_else(|| plan.content_types.first().cloned())
        .unwrap_or_else(|| "application/json".into());
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_str(&ct).map_err(|_| format!("`{ct}` is not a content type"))?,
    );
    plan.apply_headers(&mut headers);
    let path = match input.path {
        Some(p) => {
            let (path, query) = p.split_once('?').map_or((p, None), |(a, b)| (a, Some(b)));
            let caps = route.path.captures(path);
            plan.rewrite_uri(path, query, &caps)
                .map_err(|e| e.to_string())?
                .map(|pq| pq.to_string())
        }
        None => None,
    };
    let status = match input.direction {
        Direction::Request => None,
        Direction::Response => Some(
            StatusCode::from_u16(input.status).map_err(|_| format!("{} is not a status", input.status))?,
        ),
    };
    if !plan.wants_body(&headers) {
        return Ok(Output {
            status: status.map(|s| s.as_u16()),
            headers,
            path,
            body: bytes::Bytes::copy_from_slice(input.body),
        });
    }
    let out = plan
        .translate(status, &mut headers, input.body)
        .map_err(|e| e.to_string())?;
    Ok(Output {
        status: out.status.map(|s| s.as_u16()),
        headers,
        path,
        body: out.body,
    })
}
