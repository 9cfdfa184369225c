//! The anti-corruption layer: declarative translation between a backend's dialect and the
//! modern API. A [`Transform`] is compiled once per config snapshot from `transforms.<name>`;
//! each direction is a [`DirectionPlan`] whose steps run in order on a buffered body. A request
//! goes through one driver ([`driver::request`]) for live traffic, the shadow copy and the
//! offline `ficus translate` tool; field paths have one syntax ([`path::FieldPath`]).

pub mod charset;
pub mod dates;
pub mod driver;
pub mod form;
pub mod json_ops;
pub mod offline;
pub mod path;
pub mod soap;
pub mod validate;
pub mod xml;

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderName, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::Value;

use crate::config::file::StatusPattern;
use crate::config::transform::{DirectionConfig, OpConfig, SoapVersion, TransformConfig};
use charset::{to_utf8, utf8_content_type};
use json_ops::JsonOp;
use path::FieldPath;

#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    #[error("the {format} body is malformed: {reason}")]
    Malformed { format: &'static str, reason: String },
    #[error("the body could not be translated: {0}")]
    Op(String),
    #[error("the body exceeds the {limit}-byte translation limit")]
    TooLarge { limit: u64 },
    #[error("the rewritten path is not valid: {0}")]
    BadPath(String),
    #[error("the body's charset `{0}` is not supported")]
    UnsupportedCharset(String),
    #[error("the answer is content-encoded (compressed) and cannot be translated")]
    Encoded,
}

/// Which way a plan runs; it decides what a failure means to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Request,
    Response,
}

pub struct Transform {
    pub name: Arc<str>,
    pub request: Option<DirectionPlan>,
    pub response: Option<DirectionPlan>,
    /// Bodies translated and failed, per direction: request ok, request failed, response ok,
    /// response failed.
    counts: [metrics::Counter; 4],
}

#[derive(Debug)]
enum Step {
    XmlToJson(xml::XmlRead),
    JsonToXml(xml::XmlWrite),
    SoapWrap {
        version: SoapVersion,
        action: Option<String>,
        element: String,
        namespace: Option<String>,
        order: Vec<String>,
    },
    SoapUnwrap {
        read: xml::XmlRead,
        keep_operation: bool,
        fault_status: Vec<(String, StatusCode)>,
    },
    FormToJson,
    JsonToForm,
    Json(JsonOp),
}

struct HeaderOps {
    add: Vec<(HeaderName, HeaderValue)>,
    rename: Vec<(HeaderName, HeaderName)>,
    remove: Vec<HeaderName>,
}

struct Condition {
    json_path: Option<FieldPath>,
    equals: Option<Value>,
    body_contains: Option<String>,
    status: Option<StatusPattern>,
}

struct ErrorRule {
    statuses: Vec<StatusPattern>,
    detail: Option<FieldPath>,
    code: Option<FieldPath>,
    type_prefix: String,
}

/// One piece of the rewritten path: literal text or a capture name.
enum Piece {
    Lit(String),
    Capture(String),
}

pub struct DirectionPlan {
    pub content_types: Vec<String>,
    pub max_body: u64,
    steps: Vec<Step>,
    headers: HeaderOps,
    path: Option<Vec<Piece>>,
    query_add: Vec<(String, Vec<Piece>)>,
    query_rename: Vec<(String, String)>,
    query_remove: Vec<String>,
    status: Vec<(Condition, StatusCode)>,
    errors: Option<ErrorRule>,
    pub method: Option<http::Method>,
    body: Option<Value>,
}

/// The outcome of translating one body.
pub struct Translated {
    pub status: Option<StatusCode>,
    pub body: Bytes,
}

impl Transform {
    /// Compiles `transforms.<name>`; problems come back as `(key path under the transform, reason)`.
    pub fn compile(
        name: &str,
        cfg: &TransformConfig,
        m: &crate::telemetry::Metrics,
    ) -> Result<Self, Vec<(String, String)>> {
        let mut errs = Vec::new();
        let request = cfg.request.as_ref().and_then(|d| {
            DirectionPlan::compile(d, Direction::Request)
                .map_err(|e| errs.extend(e.into_iter().map(|(p, r)| (format!("request.{p}"), r))))
                .ok()
        });
        let response = cfg.response.as_ref().and_then(|d| {
            DirectionPlan::compile(d, Direction::Response)
                .map_err(|e| errs.extend(e.into_iter().map(|(p, r)| (format!("response.{p}"), r))))
                .ok()
        });
        if !errs.is_empty() {
            return Err(errs);
        }
        let c = |direction: &str, result: &str| {
            m.counter(
                crate::telemetry::metrics::TRANSLATIONS,
                &[("transform", name), ("direction", direction), ("result", result)],
            )
        };
        Ok(Self {
            name: Arc::from(name),
            request,
            response,
            counts: [
                c("request", "translated"),
                c("request", "failed"),
                c("response", "translated"),
                c("response", "failed"),
            ],
        })
    }

    /// Counts one translated (or failed) body.
    pub fn count(&self, d: Direction, ok: bool) {
        let i = match (d, ok) {
            (Direction::Request, true) => 0,
            (Direction::Request, false) => 1,
            (Direction::Response, true) => 2,
            (Direction::Response, false) => 3,
        };
        self.counts[i].increment(1);
    }

    pub fn plan(&self, d: Direction) -> Option<&DirectionPlan> {
        match d {
            Direction::Request => self.request.as_ref(),
            Direction::Response => self.response.as_ref(),
        }
    }
}

fn pieces(t: &str) -> Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            out.push(Piece::Lit(rest[..open].to_string()));
        }
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("`{t}`: a `{{` is not closed"))?;
        let name = &rest[open + 1..open + close];
        let name = name.strip_prefix('*').unwrap_or(name);
        if name.is_empty() {
            return Err(format!("`{t}`: empty capture name"));
        }
        out.push(Piece::Capture(name.to_string()));
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        out.push(Piece::Lit(rest.to_string()));
    }
    Ok(out)
}

fn header_name(s: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(s.to_ascii_lowercase().as_bytes())
        .map_err(|_| format!("`{s}` is not a header name"))
}

fn compile_steps(ops: &[crate::config::transform::OpEntry], errs: &mut Vec<(String, String)>) -> Vec<Step> {
    let mut steps = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let step = match &op.0 {
            OpConfig::XmlToJson(c) => Step::XmlToJson(xml::XmlRead::new(&c.array_paths, c.keep_prefixes)),
            OpConfig::JsonToXml(c) => {
                if let Some(r) = &c.root {
                    if let Err(e) = xml::check_name(r) {
                        errs.push((format!("ops[{i}].json_to_xml.root"), e));
                    }
                }
                Step::JsonToXml(xml::XmlWrite {
                    root: c.root.clone(),
                    namespaces: c.namespaces.iter().map(|(p, u)| (p.clone(), u.clone())).collect(),
                    order: c.order.clone(),
                })
            }
            OpConfig::SoapWrap(c) => {
                if let Err(e) = xml::check_name(&c.body_element) {
                    errs.push((format!("ops[{i}].soap_wrap.body_element"), e));
                }
                if c.action
                    .as_deref()
                    .is_some_and(|a| HeaderValue::from_str(a).is_err() || a.contains('"'))
                {
                    errs.push((
                        format!("ops[{i}].soap_wrap.action"),
                        "not a valid header value".into(),
                    ));
                }
                Step::SoapWrap {
                    version: c.version,
                    action: c.action.clone(),
                    element: c.body_element.clone(),
                    namespace: c.namespace.clone(),
                    order: c.order.clone(),
                }
            }
            OpConfig::SoapUnwrap(c) => {
                let mut fault_status = Vec::new();
                for (code, s) in &c.fault_status {
                    match StatusCode::from_u16(*s) {
                        Ok(st) if (400..=599).contains(s) => fault_status.push((code.clone(), st)),
                        _ => errs.push((
                            format!("ops[{i}].soap_unwrap.fault_status.{code}"),
                            "a fault maps to a 4xx or 5xx status".into(),
                        )),
                    }
                }
                Step::SoapUnwrap {
                    read: soap::reader(&c.array_paths),
                    keep_operation: c.keep_operation,
                    fault_status,
                }
            }
            OpConfig::FormToJson(_) => Step::FormToJson,
            OpConfig::JsonToForm(_) => Step::JsonToForm,
            other => match JsonOp::compile(other) {
                Ok(Some(j)) => Step::Json(j),
                Ok(None) => continue,
                Err(e) => {
                    errs.push((format!("ops[{i}]"), e));
                    continue;
                }
            },
        };
        steps.push(step);
    }
    steps
}

fn compile_headers(
    h: &crate::config::transform::HeaderOpsConfig,
    errs: &mut Vec<(String, String)>,
) -> HeaderOps {
    let mut headers = HeaderOps {
        add: Vec::new(),
        rename: Vec::new(),
        remove: Vec::new(),
    };
    for (k, v) in &h.add {
        match (header_name(k), HeaderValue::from_str(v)) {
            (Ok(n), Ok(v)) => headers.add.push((n, v)),
            (Err(e), _) => errs.push((format!("headers.add.{k}"), e)),
            (_, Err(_)) => errs.push((format!("headers.add.{k}"), "not a valid header value".into())),
        }
    }
    for (k, v) in &h.rename {
        match (header_name(k), header_name(v)) {
            (Ok(a), Ok(b)) => headers.rename.push((a, b)),
            (Err(e), _) | (_, Err(e)) => errs.push((format!("headers.rename.{k}"), e)),
        }
    }
    for (j, k) in h.remove.iter().enumerate() {
        match header_name(k) {
            Ok(n) => headers.remove.push(n),
            Err(e) => errs.push((format!("headers.remove[{j}]"), e)),
        }
    }
    headers
}

/// The path template and query edits (requests only).
struct UriRewrite {
    path: Option<Vec<Piece>>,
    query_add: Vec<(String, Vec<Piece>)>,
    query_rename: Vec<(String, String)>,
    query_remove: Vec<String>,
}

fn compile_uri(d: &DirectionConfig, dir: Direction, errs: &mut Vec<(String, String)>) -> UriRewrite {
    let path = match (&d.path, dir) {
        (None, _) => None,
        (Some(_), Direction::Response) => {
            errs.push(("path".into(), "only a request can rewrite the path".into()));
            None
        }
        (Some(p), Direction::Request) if !p.starts_with('/') => {
            errs.push(("path".into(), "must start with `/`".into()));
            None
        }
        (Some(p), Direction::Request) => match pieces(p) {
            Ok(ps) => Some(ps),
            Err(e) => {
                errs.push(("path".into(), e));
                None
            }
        },
    };
    let mut query_add = Vec::new();
    let (mut query_rename, mut query_remove) = (Vec::new(), Vec::new());
    if let Some(q) = &d.query {
        if dir == Direction::Response {
            errs.push(("query".into(), "only a request has a query".into()));
        }
        for (k, v) in &q.add {
            match pieces(v) {
                Ok(p) => query_add.push((k.clone(), p)),
                Err(e) => errs.push((format!("query.add.{k}"), e)),
            }
        }
        query_rename = q.rename.iter().map(|(a, b)| (a.clone(), b.clone())).collect();
        query_remove = q.remove.clone();
    }
    UriRewrite {
        path,
        query_add,
        query_rename,
        query_remove,
    }
}

fn compile_status(
    d: &DirectionConfig,
    dir: Direction,
    errs: &mut Vec<(String, String)>,
) -> Vec<(Condition, StatusCode)> {
    let mut status = Vec::new();
    if dir == Direction::Request && (!d.status.is_empty() || d.errors.is_some()) {
        errs.push(("status".into(), "`status` and `errors` apply to responses".into()));
    }
    for (j, rule) in d.status.iter().enumerate() {
        let w = &rule.when;
        let json_path = match w.json_path.as_deref().map(FieldPath::parse).transpose() {
            Ok(p) => p,
            Err(e) => {
                errs.push((format!("status[{j}].when.json_path"), e));
                None
            }
        };
        if w.json_path.is_none() && w.body_contains.is_none() && w.status.is_none() {
            errs.push((
                format!("status[{j}].when"),
                "set `json_path`, `body_contains` or `status`".into(),
            ));
        }
        if w.equals.is_some() && w.json_path.is_none() {
            errs.push((
                format!("status[{j}].when.equals"),
                "`equals` needs `json_path`".into(),
            ));
        }
        if w.status.as_ref().is_some_and(|s| !s.valid()) {
            errs.push((
                format!("status[{j}].when.status"),
                "write a status (200) or a class (\"2xx\")".into(),
            ));
        }
        match StatusCode::from_u16(rule.status) {
            Ok(s) if (100..=599).contains(&rule.status) => status.push((
                Condition {
                    json_path,
                    equals: w.equals.clone(),
                    body_contains: w.body_contains.clone(),
                    status: w.status.clone(),
                },
                s,
            )),
            _ => errs.push((format!("status[{j}].status"), "not an HTTP status".into())),
        }
    }
    status
}

impl DirectionPlan {
    pub fn compile(d: &DirectionConfig, dir: Direction) -> Result<Self, Vec<(String, String)>> {
        let mut errs: Vec<(String, String)> = Vec::new();
        let steps = compile_steps(&d.ops, &mut errs);
        let headers = compile_headers(&d.headers, &mut errs);
        let UriRewrite {
            path,
            query_add,
            query_rename,
            query_remove,
        } = compile_uri(d, dir, &mut errs);
        let status = compile_status(d, dir, &mut errs);
        let errors = d.errors.as_ref().map(|e| {
            let mut p = |key: &str, v: &Option<String>| match v.as_deref().map(FieldPath::parse).transpose() {
                Ok(p) => p,
                Err(r) => {
                    errs.push((format!("errors.{key}"), r));
                    None
                }
            };
            ErrorRule {
                statuses: e.statuses.clone(),
                detail: p("detail", &e.detail),
                code: p("code", &e.code),
                type_prefix: e.type_prefix.clone(),
            }
        });
        let method = match (&d.method, dir) {
            (None, _) => None,
            (Some(_), Direction::Response) => {
                errs.push(("method".into(), "only a request has a method".into()));
                None
            }
            (Some(m), Direction::Request) => {
                match http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                    Ok(m) => Some(m),
                    Err(_) => {
                        errs.push(("method".into(), format!("`{m}` is not an HTTP method")));
                        None
                    }
                }
            }
        };
        if d.body.is_some() && dir == Direction::Response {
            errs.push(("body".into(), "only a request body can be synthesised".into()));
        }
        if d.content_types.is_empty() && !steps.is_empty() {
            errs.push((
                "content_types".into(),
                "list the media types the ops apply to".into(),
            ));
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(Self {
            content_types: d
                .content_types
                .iter()
                .map(|c| c.trim().to_ascii_lowercase())
                .collect(),
            max_body: d.max_body.0,
            steps,
            headers,
            path,
            query_add,
            query_rename,
            query_remove,
            status,
            errors,
            method,
            body: d.body.clone(),
        })
    }

    /// The body to start from when the client sent none, with captures filled in.
    pub fn synthesised_body(&self, captures: &[(String, String)]) -> Option<Bytes> {
        fn fill(v: &mut Value, caps: &[(String, String)]) {
            match v {
                Value::String(s) => {
                    if let Some(name) = s.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
                        if let Some((_, val)) = caps.iter().find(|(k, _)| k == name) {
                            *s = val.clone();
                        }
                    }
                }
                Value::Array(a) => a.iter_mut().for_each(|x| fill(x, caps)),
                Value::Object(m) => m.values_mut().for_each(|x| fill(x, caps)),
                _ => {}
            }
        }
        let mut v = self.body.clone()?;
        fill(&mut v, captures);
        serde_json::to_vec(&v).ok().map(Bytes::from)
    }

    /// Capture names the path and query templates use (checked against the route's template).
    pub fn capture_names(&self) -> Vec<&str> {
        let all = self
            .path
            .iter()
            .flatten()
            .chain(self.query_add.iter().flat_map(|(_, p)| p));
        all.filter_map(|p| match p {
            Piece::Capture(c) => Some(c.as_str()),
            Piece::Lit(_) => None,
        })
        .collect()
    }

    pub fn rewrites_uri(&self) -> bool {
        self.path.is_some()
            || !self.query_add.is_empty()
            || !self.query_rename.is_empty()
            || !self.query_remove.is_empty()
    }

    /// Whether this plan ever reads a body.
    pub fn has_body_work(&self) -> bool {
        !(self.steps.is_empty() && self.status.is_empty() && self.errors.is_none())
    }

    /// Whether this body is translated: its media type is configured and there is body work.
    pub fn wants_body(&self, headers: &HeaderMap) -> bool {
        if !self.has_body_work() {
            return false;
        }
        let ct = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        self.content_types.iter().any(|c| *c == ct || c == "*/*")
    }

    pub fn apply_headers(&self, h: &mut HeaderMap) {
        for (from, to) in &self.headers.rename {
            let values: Vec<HeaderValue> = h.get_all(from).iter().cloned().collect();
            if !values.is_empty() {
                h.remove(from);
                for v in values {
                    h.append(to.clone(), v);
                }
            }
        }
        for n in &self.headers.remove {
            h.remove(n);
        }
        for (n, v) in &self.headers.add {
            h.insert(n.clone(), v.clone());
        }
    }

    /// The new path and query, or `None` when this plan leaves the URI alone.
    pub fn rewrite_uri(
        &self,
        path: &str,
        query: Option<&str>,
        captures: &[(String, String)],
    ) -> Result<Option<PathAndQuery>, TranslateError> {
        if !self.rewrites_uri() {
            return Ok(None);
        }
        let fill = |ps: &[Piece], encode: bool| -> String {
            let mut s = String::new();
            for p in ps {
                match p {
                    Piece::Lit(l) => s.push_str(l),
                    Piece::Capture(c) => {
                        let v = captures
                            .iter()
                            .find(|(k, _)| k == c)
                            .map_or("", |(_, v)| v.as_str());
                        if encode {
                            s.extend(form_urlencoded::byte_serialize(v.as_bytes()));
                        } else {
                            s.push_str(v);
                        }
                    }
                }
            }
            s
        };
        let (new_path, template_query) = match &self.path {
            Some(ps) => {
                let full = fill(ps, false);
                match full.split_once('?') {
                    Some((p, q)) => (p.to_string(), Some(q.to_string())),
                    None => (full, None),
                }
            }
            None => (path.to_string(), None),
        };
        // The client's parameters, then the template's, then the edits.
        let mut params: Vec<(String, String)> = Vec::new();
        for q in [query.map(str::to_string), template_query].into_iter().flatten() {
            for pair in q.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                params.push((k.to_string(), v.to_string()));
            }
        }
        for (from, to) in &self.query_rename {
            for p in params.iter_mut().filter(|(k, _)| k == from) {
                p.0 = to.clone();
            }
        }
        params.retain(|(k, _)| !self.query_remove.contains(k));
        for (k, v) in &self.query_add {
            params.retain(|(x, _)| x != k);
            params.push((k.clone(), fill(v, true)));
        }
        let mut pq = new_path;
        if !params.is_empty() {
            pq.push('?');
            let joined: Vec<String> = params
                .iter()
                .map(|(k, v)| {
                    if v.is_empty() {
                        k.clone()
                    } else {
                        format!("{k}={v}")
                    }
                })
                .collect();
            pq.push_str(&joined.join("&"));
        }
        PathAndQuery::try_from(pq.as_str())
            .map(Some)
            .map_err(|e| TranslateError::BadPath(format!("`{pq}`: {e}")))
    }

    /// Translates a buffered body. `status` is the backend's (responses only). Content-Type and
    /// Content-Length are set for the new body; Transfer-Encoding is dropped.
    pub fn translate(
        &self,
        status: Option<StatusCode>,
        headers: &mut HeaderMap,
        body: &[u8],
    ) -> Result<Translated, TranslateError> {
        if body.len() as u64 > self.max_body {
            return Err(TranslateError::TooLarge { limit: self.max_body });
        }
        let in_ct = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let text = to_utf8(body, &in_ct)?;
        let mut doc = Doc::Text(Cow::Borrowed(&text));
        let mut out_ct: Option<HeaderValue> = None;
        let mut status = status;
        let mut checked = false;
        for step in &self.steps {
            if matches!(step, Step::Json(_)) && !checked {
                checked = true;
                if let Some(t) = self.check_legacy(&mut status, &mut doc, &text)? {
                    return Ok(finish(headers, t));
                }
            }
            match step {
                Step::XmlToJson(o) => {
                    let t = doc.text()?;
                    let (_, v) = xml::xml_to_json(t, o).map_err(|reason| TranslateError::Malformed {
                        format: "XML",
                        reason,
                    })?;
                    doc = Doc::Json(v);
                }
                Step::SoapUnwrap {
                    read,
                    keep_operation,
                    fault_status,
                } => {
                    let t = doc.text()?;
                    match soap::unwrap_with(t, read, *keep_operation).map_err(|reason| {
                        TranslateError::Malformed {
                            format: "SOAP",
                            reason,
                        }
                    })? {
                        soap::Unwrapped::Body(v) => doc = Doc::Json(v),
                        soap::Unwrapped::Fault(f) => {
                            return Ok(finish(headers, fault_problem(&f, fault_status)))
                        }
                    }
                }
                Step::FormToJson => {
                    let t = doc.text()?;
                    doc = Doc::Json(form::form_to_json(t.as_bytes()));
                }
                Step::JsonToXml(o) => {
                    let x = xml::json_to_xml(doc.json()?, o).map_err(TranslateError::Op)?;
                    out_ct = Some(HeaderValue::from_static("application/xml; charset=utf-8"));
                    doc = Doc::Text(Cow::Owned(x));
                }
                Step::SoapWrap {
                    version,
                    action,
                    element,
                    namespace,
                    order,
                } => {
                    let x = soap::wrap(doc.json()?, *version, element, namespace.as_deref(), order)
                        .map_err(TranslateError::Op)?;
                    let soap_action = HeaderName::from_static("soapaction");
                    headers.remove(&soap_action);
                    out_ct = Some(match (version, action) {
                        (SoapVersion::V11, a) => {
                            let quoted = format!("\"{}\"", a.as_deref().unwrap_or(""));
                            if let Ok(v) = HeaderValue::from_str(&quoted) {
                                headers.insert(soap_action, v);
                            }
                            HeaderValue::from_static("text/xml; charset=utf-8")
                        }
                        (SoapVersion::V12, Some(a)) => HeaderValue::from_str(&format!(
                            "application/soap+xml; charset=utf-8; action=\"{a}\""
                        ))
                        .unwrap_or(HeaderValue::from_static("application/soap+xml; charset=utf-8")),
                        (SoapVersion::V12, None) => {
                            HeaderValue::from_static("application/soap+xml; charset=utf-8")
                        }
                    });
                    doc = Doc::Text(Cow::Owned(x));
                }
                Step::JsonToForm => {
                    let f = form::json_to_form(doc.json()?).map_err(TranslateError::Op)?;
                    out_ct = Some(HeaderValue::from_static("application/x-www-form-urlencoded"));
                    doc = Doc::Text(Cow::Owned(f));
                }
                Step::Json(op) => op.apply(doc.json()?).map_err(TranslateError::Op)?,
            }
        }
        if !checked {
            if let Some(t) = self.check_legacy(&mut status, &mut doc, &text)? {
                return Ok(finish(headers, t));
            }
        }
        let (bytes, ct) = match doc {
            Doc::Json(v) => (
                Bytes::from(serde_json::to_vec(&v).map_err(|e| TranslateError::Op(e.to_string()))?),
                HeaderValue::from_static("application/json"),
            ),
            Doc::Text(t) => (
                Bytes::from(t.into_owned()),
                // Only the charset changed (latin-1 is now UTF-8): say so.
                out_ct.unwrap_or_else(|| utf8_content_type(&in_ct)),
            ),
        };
        let t = Translated { status, body: bytes };
        set_framing(headers, ct, t.body.len());
        Ok(t)
    }

    /// Status rules and error normalisation on the legacy document (after the format
    /// conversion, before field operations). `Some` when the answer is a problem document.
    fn check_legacy(
        &self,
        status: &mut Option<StatusCode>,
        doc: &mut Doc<'_>,
        raw: &str,
    ) -> Result<Option<(StatusCode, HeaderValue, Bytes)>, TranslateError> {
        let Some(st) = *status else {
            return Ok(None);
        };
        if self.status.is_empty() && self.errors.is_none() {
            return Ok(None);
        }
        // A legacy body that is not JSON can still be matched by `body_contains`.
        let json = match doc {
            Doc::Json(v) => Some(&*v),
            Doc::Text(t) => {
                if let Ok(v) = serde_json::from_str::<Value>(t) {
                    *doc = Doc::Json(v);
                }
                match doc {
                    Doc::Json(v) => Some(&*v),
                    Doc::Text(_) => None,
                }
            }
        };
        let mut new_status = st;
        for (c, to) in &self.status {
            let holds = c.status.as_ref().is_none_or(|s| s.matches(st.as_u16()))
                && c.body_contains.as_deref().is_none_or(|s| raw.contains(s))
                && c.json_path.as_ref().is_none_or(|p| {
                    let found = json.and_then(|j| p.get(j));
                    match (&c.equals, found) {
                        (_, None) => false,
                        (None, Some(_)) => true,
                        (Some(want), Some(got)) => loose_eq(want, got),
                    }
                });
            if holds {
                new_status = *to;
                break;
            }
        }
        *status = Some(new_status);
        let Some(rule) = &self.errors else {
            return Ok(None);
        };
        if !rule.statuses.iter().any(|p| p.matches(new_status.as_u16())) {
            return Ok(None);
        }
        let pick = |p: &Option<FieldPath>| -> Option<String> {
            let v = p.as_ref().and_then(|p| json.and_then(|j| p.get(j)))?;
            Some(match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
        };
        let code = pick(&rule.code);
        let detail = pick(&rule.detail).unwrap_or_else(|| {
            let t = raw.trim();
            t.chars().take(512).collect()
        });
        let kind = match &code {
            Some(c) => format!("{}:{}", rule.type_prefix, slug(c)),
            None => rule.type_prefix.clone(),
        };
        let mut p = serde_json::json!({
            "type": kind,
            "title": new_status.canonical_reason().unwrap_or("Error"),
            "status": new_status.as_u16(),
            "detail": detail,
        });
        if let Some(c) = code {
            p["code"] = Value::from(c);
        }
        Ok(Some((
            new_status,
            HeaderValue::from_static("application/problem+json"),
            Bytes::from(p.to_string()),
        )))
    }
}

fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// `equals: 0` matches `"0"` too: legacy XML has only strings.
fn loose_eq(want: &Value, got: &Value) -> bool {
    want == got
        || match (want, got) {
            (Value::String(a), b) | (b, Value::String(a)) if !b.is_string() => {
                let shown = b.to_string();
                shown == a.as_str()
            }
            _ => false,
        }
}

fn fault_problem(f: &soap::Fault, map: &[(String, StatusCode)]) -> (StatusCode, HeaderValue, Bytes) {
    let status =
        map.iter()
            .find(|(c, _)| *c == f.code)
            .map(|(_, s)| *s)
            .unwrap_or(match f.code.split('.').next() {
                Some("Client" | "Sender") => StatusCode::BAD_REQUEST,
                _ => StatusCode::BAD_GATEWAY,
            });
    let mut p = serde_json::json!({
        "type": "urn:ficus:problem:soap-fault",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": f.reason,
        "fault_code": f.code,
    });
    if let Some(d) = &f.detail {
        p["fault_detail"] = d.clone();
    }
    (
        status,
        HeaderValue::from_static("application/problem+json"),
        Bytes::from(p.to_string()),
    )
}

fn finish(headers: &mut HeaderMap, (status, ct, body): (StatusCode, HeaderValue, Bytes)) -> Translated {
    set_framing(headers, ct, body.len());
    Translated {
        status: Some(status),
        body,
    }
}

pub fn set_framing(headers: &mut HeaderMap, ct: HeaderValue, len: usize) {
    headers.remove(TRANSFER_ENCODING);
    headers.insert(CONTENT_TYPE, ct);
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
}

enum Doc<'a> {
    Text(Cow<'a, str>),
    Json(Value),
}

impl Doc<'_> {
    fn text(&self) -> Result<&str, TranslateError> {
        match self {
            Self::Text(t) => Ok(t),
            Self::Json(_) => Err(TranslateError::Op(
                "this step reads text but the body is already JSON".into(),
            )),
        }
    }

    /// JSON steps on a text body parse it first.
    fn json(&mut self) -> Result<&mut Value, TranslateError> {
        if let Self::Text(t) = self {
            let v: Value = serde_json::from_str(t).map_err(|e| TranslateError::Malformed {
                format: "JSON",
                reason: e.to_string(),
            })?;
            *self = Self::Json(v);
        }
        match self {
            Self::Json(v) => Ok(v),
            Self::Text(_) => Err(TranslateError::Op("internal: not JSON".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::transform::DirectionConfig;

    fn plan(yaml: &str, dir: Direction) -> DirectionPlan {
        let d: DirectionConfig = serde_yaml_ng::from_str(yaml).unwrap();
        DirectionPlan::compile(&d, dir)
            .map_err(|e| format!("{e:?}"))
            .unwrap()
    }

    fn headers(ct: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h
    }

    #[test]
    fn xml_response_becomes_json_with_framing_recomputed() {
        let p = plan(
            "content_types: [text/xml]\nops:\n  - xml_to_json: {}\n  - rename: {path: CUST_NO, to: customer}",
            Direction::Response,
        );
        let mut h = headers("text/xml; charset=ISO-8859-1");
        assert!(p.wants_body(&h));
        let body = b"<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><r><CUST_NO>J\xe9r\xf4me</CUST_NO></r>";
        let t = p.translate(Some(StatusCode::OK), &mut h, body).unwrap();
        assert_eq!(&t.body[..], "{\"customer\":\"Jérôme\"}".as_bytes());
        assert_eq!(h[CONTENT_TYPE], "application/json");
        assert_eq!(h[CONTENT_LENGTH], t.body.len().to_string().as_str());
        assert!(h.get(TRANSFER_ENCODING).is_none());
    }

    #[test]
    fn other_content_types_are_not_translated() {
        let p = plan("ops: [{rename: {path: a, to: b}}]", Direction::Response);
        assert!(p.wants_body(&headers("application/json; charset=utf-8")));
        assert!(!p.wants_body(&headers("image/png")));
    }

    #[test]
    fn legacy_200_with_err_body_becomes_a_404_problem() {
        let p = plan(
            "status:\n  - when: {json_path: result, equals: ERR}\n    status: 404\n\
             errors: {detail: message, code: code}\nops: [{rename: {path: a, to: b}}]",
            Direction::Response,
        );
        let mut h = headers("application/json");
        let t = p
            .translate(
                Some(StatusCode::OK),
                &mut h,
                br#"{"result":"ERR","message":"no such order","code":"E42"}"#,
            )
            .unwrap();
        assert_eq!(t.status, Some(StatusCode::NOT_FOUND));
        let v: Value = serde_json::from_slice(&t.body).unwrap();
        assert_eq!(v["type"], "urn:ficus:problem:upstream-error:e42");
        assert_eq!(v["detail"], "no such order");
        assert_eq!(v["status"], 404);
        assert_eq!(h[CONTENT_TYPE], "application/problem+json");
        let mut h = headers("application/json");
        let t = p
            .translate(Some(StatusCode::OK), &mut h, br#"{"result":"OK","a":1}"#)
            .unwrap();
        assert_eq!(t.status, Some(StatusCode::OK));
        assert_eq!(&t.body[..], br#"{"b":1,"result":"OK"}"#);
    }

    #[test]
    fn soap_fault_becomes_problem_json_with_mapped_status() {
        let p = plan(
            "content_types: [text/xml]\nops:\n  - soap_unwrap: {fault_status: {Client.NotFound: 404}}",
            Direction::Response,
        );
        let fault = r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body><s:Fault>
            <s:Code><s:Value>s:Sender</s:Value><s:Subcode><s:Value>x:NotFound</s:Value></s:Subcode></s:Code>
            <s:Reason><s:Text>gone</s:Text></s:Reason></s:Fault></s:Body></s:Envelope>"#;
        let mut h = headers("text/xml");
        let t = p
            .translate(Some(StatusCode::INTERNAL_SERVER_ERROR), &mut h, fault.as_bytes())
            .unwrap();
        assert_eq!(
            t.status,
            Some(StatusCode::BAD_REQUEST),
            "Sender.NotFound is not Client.NotFound"
        );
        let v: Value = serde_json::from_slice(&t.body).unwrap();
        assert_eq!(v["type"], "urn:ficus:problem:soap-fault");
        assert_eq!(v["fault_code"], "Sender.NotFound");
        assert_eq!(v["detail"], "gone");
    }

    #[test]
    fn json_request_becomes_a_soap_envelope_with_soapaction() {
        let p = plan(
            "ops:\n  - rename: {path: id, to: OrderId}\n  - soap_wrap: {action: 'urn:GetOrder', body_element: GetOrder, namespace: 'urn:orders'}",
            Direction::Request,
        );
        let mut h = headers("application/json");
        let t = p.translate(None, &mut h, br#"{"id":"7"}"#).unwrap();
        let s = std::str::from_utf8(&t.body).unwrap();
        assert!(
            s.contains(r#"<GetOrder xmlns="urn:orders"><OrderId>7</OrderId></GetOrder>"#),
            "{s}"
        );
        assert_eq!(h["soapaction"], "\"urn:GetOrder\"");
        assert_eq!(h[CONTENT_TYPE], "text/xml; charset=utf-8");
    }

    #[test]
    fn malformed_bodies_are_errors() {
        let p = plan(
            "content_types: [text/xml]\nops: [{xml_to_json: {}}]",
            Direction::Response,
        );
        let mut h = headers("text/xml");
        let e = p
            .translate(Some(StatusCode::OK), &mut h, b"<a><b></a>")
            .err()
            .unwrap();
        assert!(matches!(e, TranslateError::Malformed { format: "XML", .. }));
        let p = plan("ops: [{rename: {path: a, to: b}}]", Direction::Response);
        assert!(p.translate(Some(StatusCode::OK), &mut h, b"{nope").is_err());
        let p = plan(
            "max_body: 4\nops: [{rename: {path: a, to: b}}]",
            Direction::Response,
        );
        assert!(matches!(
            p.translate(Some(StatusCode::OK), &mut h, b"{\"a\": 1}"),
            Err(TranslateError::TooLarge { limit: 4 })
        ));
    }

    #[test]
    fn path_and_query_are_rewritten_from_captures() {
        let p = plan(
            "path: '/cgi-bin/orders.pl?id={id}'\nquery: {add: {fmt: xml}, rename: {expand: full}, remove: [debug]}",
            Direction::Request,
        );
        let caps = vec![("id".to_string(), "42".to_string())];
        let pq = p
            .rewrite_uri("/api/v2/orders/42", Some("expand=1&debug=1"), &caps)
            .unwrap()
            .unwrap();
        assert_eq!(pq.as_str(), "/cgi-bin/orders.pl?full=1&id=42&fmt=xml");
        assert_eq!(p.capture_names(), vec!["id"]);
    }

    #[test]
    fn header_ops_rename_remove_and_add() {
        let p = plan(
            "headers: {add: {x-api-version: '2'}, rename: {x-legacy-id: x-request-ref}, remove: [x-powered-by]}",
            Direction::Response,
        );
        let mut h = HeaderMap::new();
        h.insert("x-legacy-id", HeaderValue::from_static("a"));
        h.insert("x-powered-by", HeaderValue::from_static("cgi"));
        p.apply_headers(&mut h);
        assert_eq!(h["x-request-ref"], "a");
        assert_eq!(h["x-api-version"], "2");
        assert!(h.get("x-powered-by").is_none() && h.get("x-legacy-id").is_none());
    }

    #[test]
    fn bad_config_is_reported_per_key() {
        let d: DirectionConfig = serde_yaml_ng::from_str(
            "path: '/x/{id'\nops: [{date: {path: d, from: 'dd/MM/yy', to: rfc3339}}]\nheaders: {remove: ['bad header']}",
        )
        .unwrap();
        let errs = DirectionPlan::compile(&d, Direction::Request).err().unwrap();
        let keys: Vec<&str> = errs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, vec!["ops[0]", "headers.remove[0]", "path"]);
    }
}
