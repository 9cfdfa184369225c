//! Stage 3: choose the route.
//!
//! Routes are tried in the order the config lists them and the first whose every condition holds
//! wins, as in Envoy's route table within a virtual host: order is the tie-break, and it is the
//! user's. Matching works on the normalised path only.

pub mod compile;

use std::sync::Arc;

use http::Method;

use super::context::{cookie_value, query_value};
use crate::telemetry::metrics::RouteMetrics;
use crate::upstream::Upstream;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    Exact(String),
    /// `*.example.com` is stored as `.example.com`; it matches any deeper name, never the apex.
    Suffix(String),
}

impl HostMatch {
    pub fn parse(s: &str) -> Self {
        let s = s.to_ascii_lowercase();
        match s.strip_prefix('*') {
            Some(rest) => Self::Suffix(rest.to_string()),
            None => Self::Exact(s),
        }
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(h) => h.eq_ignore_ascii_case(host),
            Self::Suffix(suffix) => {
                host.len() > suffix.len()
                    && host.is_char_boundary(host.len() - suffix.len())
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        }
    }
}

pub enum PathMatch {
    Any,
    Exact(String),
    /// Matches on a segment boundary: `/api` matches `/api` and `/api/x`, not `/apix`.
    Prefix(String),
    /// `/orders/{id}`: a one-route matchit tree, compiled once per snapshot.
    Template(String, matchit::Router<()>),
    Regex(regex::Regex),
}

impl PathMatch {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(p) => p == path,
            Self::Prefix(p) => {
                path.starts_with(p.as_str())
                    && (p.ends_with('/') || path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
            }
            Self::Template(_, t) => t.at(path).is_ok(),
            Self::Regex(r) => r.is_match(path),
        }
    }

    /// The template's captures for `path` (for rewrites); empty for other matchers.
    pub fn captures(&self, path: &str) -> Vec<(String, String)> {
        match self {
            Self::Template(_, t) => t
                .at(path)
                .map(|m| {
                    m.params
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect()
                })
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    pub fn template(t: &str) -> Result<Self, String> {
        let mut r = matchit::Router::new();
        r.insert(t, ()).map_err(|e| e.to_string())?;
        Ok(Self::Template(t.to_string(), r))
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Any => "any".into(),
            Self::Exact(p) => format!("exact {p}"),
            Self::Prefix(p) => format!("prefix {p}"),
            Self::Template(t, _) => format!("template {t}"),
            Self::Regex(r) => format!("regex {}", r.as_str()),
        }
    }

    /// True when every path `other` matches, `self` matches too (decidable cases only; `false`
    /// when unsure). Used to warn about unreachable routes.
    pub fn covers(&self, other: &PathMatch) -> bool {
        match (self, other) {
            (Self::Any, _) => true,
            (Self::Exact(a), Self::Exact(b)) => a == b,
            (Self::Prefix(_), Self::Exact(b)) => self.matches(b),
            (Self::Prefix(a), Self::Prefix(b)) => {
                self.matches(b) && (!a.ends_with('/') || b.starts_with(a.as_str()))
            }
            _ => false,
        }
    }
}

/// A value condition on a header, query parameter or cookie.
pub enum ValueMatch {
    Present(bool),
    Equals(String),
    Regex(regex::Regex),
}

pub struct Condition {
    pub name: String,
    pub value: ValueMatch,
}

impl Condition {
    fn holds(&self, value: Option<&str>) -> bool {
        match (&self.value, value) {
            (ValueMatch::Present(want), v) => *want == v.is_some(),
            (ValueMatch::Equals(e), Some(v)) => e == v,
            (ValueMatch::Regex(r), Some(v)) => r.is_match(v),
            (_, None) => false,
        }
    }

    pub fn describe(&self) -> String {
        match &self.value {
            ValueMatch::Present(true) => format!("{} present", self.name),
            ValueMatch::Present(false) => format!("{} absent", self.name),
            ValueMatch::Equals(e) => format!("{} = {e}", self.name),
            ValueMatch::Regex(r) => format!("{} ~ {}", self.name, r.as_str()),
        }
    }
}

/// What a route's conditions look at, borrowed from the request.
pub struct RequestView<'a> {
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub method: &'a Method,
    pub headers: &'a http::HeaderMap,
    pub query: Option<&'a str>,
}

pub struct Route {
    pub name: Arc<str>,
    pub hosts: Vec<HostMatch>,
    pub path: PathMatch,
    pub methods: Vec<Method>,
    pub upstream: Arc<Upstream>,
    pub metrics: RouteMetrics,
    pub headers: Vec<Condition>,
    pub query: Vec<Condition>,
    pub cookies: Vec<Condition>,
    pub idempotency: Option<super::idempotency::RouteIdempotency>,
    pub identity: Option<crate::identity::RouteIdentity>,
    pub rate_limits: Option<super::ratelimit::RouteRateLimits>,
    /// With a migration, `upstream` and `metrics` are the legacy side's.
    pub migration: Option<super::migration::Migration>,
    /// How each side is spoken to (the route's `transform` unless the side has its own).
    pub legacy_transform: Option<Arc<crate::translate::Transform>>,
    pub modern_transform: Option<Arc<crate::translate::Transform>>,
    /// Request bodies are checked against this schema (stage 6).
    pub validate: Option<crate::translate::validate::SchemaCheck>,
}

impl Route {
    pub fn upstream_for(&self, side: super::context::Side) -> &Arc<Upstream> {
        match (side, &self.migration) {
            (super::context::Side::Modern, Some(m)) => &m.modern,
            _ => &self.upstream,
        }
    }

    pub fn transform_for(&self, side: super::context::Side) -> Option<&Arc<crate::translate::Transform>> {
        match side {
            super::context::Side::Legacy => self.legacy_transform.as_ref(),
            super::context::Side::Modern => self.modern_transform.as_ref(),
        }
    }

    pub fn metrics_for(&self, side: super::context::Side) -> &RouteMetrics {
        match (side, &self.migration) {
            (super::context::Side::Modern, Some(m)) => &m.modern_metrics,
            _ => &self.metrics,
        }
    }
}

impl Route {
    /// Every condition must hold; they are checked cheapest first.
    pub fn matches(&self, r: &RequestView<'_>) -> bool {
        (self.methods.is_empty() || self.methods.contains(r.method))
            && (self.hosts.is_empty() || r.host.is_some_and(|h| self.hosts.iter().any(|m| m.matches(h))))
            && self.path.matches(r.path)
            && self
                .headers
                .iter()
                .all(|c| c.holds(r.headers.get(&c.name).and_then(|v| v.to_str().ok())))
            && self.query.iter().all(|c| c.holds(query_value(r.query, &c.name)))
            && self
                .cookies
                .iter()
                .all(|c| c.holds(cookie_value(r.headers, &c.name)))
    }

    /// True when every request this route matches is matched by `earlier` (decidable cases
    /// only): then this route can never be chosen.
    pub fn shadowed_by(&self, earlier: &Route) -> bool {
        let hosts = earlier.hosts.is_empty()
            || (!self.hosts.is_empty() && self.hosts.iter().all(|h| earlier.hosts.contains(h)));
        let methods = earlier.methods.is_empty()
            || (!self.methods.is_empty() && self.methods.iter().all(|m| earlier.methods.contains(m)));
        let conditions = earlier.headers.is_empty() && earlier.query.is_empty() && earlier.cookies.is_empty();
        hosts && methods && conditions && earlier.path.covers(&self.path)
    }

    /// The compiled route as `GET /admin/routes` shows it.
    pub fn describe(&self, order: usize) -> serde_json::Value {
        let conds = |v: &[Condition]| v.iter().map(Condition::describe).collect::<Vec<_>>();
        serde_json::json!({
            "order": order,
            "name": &*self.name,
            "hosts": self.hosts.iter().map(|h| match h {
                HostMatch::Exact(e) => e.clone(),
                HostMatch::Suffix(s) => format!("*{s}"),
            }).collect::<Vec<_>>(),
            "path": self.path.describe(),
            "methods": self.methods.iter().map(Method::as_str).collect::<Vec<_>>(),
            "headers": conds(&self.headers),
            "query": conds(&self.query),
            "cookies": conds(&self.cookies),
            "upstream": &*self.upstream.name,
            "migration": self.migration.as_ref().map(|m| serde_json::json!({
                "legacy": &*self.upstream.name,
                "modern": &*m.modern.name,
                "modern_percent": m.modern_percent(),
            })),
            "idempotency": self.idempotency.is_some(),
        })
    }
}

#[derive(Default)]
pub struct Router {
    routes: Vec<Arc<Route>>,
}

impl Router {
    pub fn new(routes: Vec<Route>) -> Self {
        Self {
            routes: routes.into_iter().map(Arc::new).collect(),
        }
    }

    /// The first route, in config order, whose every condition holds.
    pub fn find(&self, req: &RequestView<'_>) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| r.matches(req))
    }

    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }
}

/// Strips the port from a Host value: `example.com:8080` -> `example.com`, `[::1]:80` -> `[::1]`.
pub fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rfind(':') {
        Some(i) => &host[..i],
        None => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_matches_on_segment_boundaries_only() {
        let p = PathMatch::Prefix("/api".into());
        assert!(p.matches("/api"));
        assert!(p.matches("/api/orders"));
        assert!(!p.matches("/apix"));
        let p = PathMatch::Prefix("/api/".into());
        assert!(p.matches("/api/x"));
        assert!(!p.matches("/api"));
    }

    #[test]
    fn wildcard_hosts_match_subdomains_but_not_the_apex() {
        let h = HostMatch::parse("*.Example.com");
        assert!(h.matches("a.example.com"));
        assert!(h.matches("A.B.EXAMPLE.COM"));
        assert!(!h.matches("example.com"));
        assert!(!h.matches("badexample.com"));
        assert!(HostMatch::parse("api.example.com").matches("API.example.com"));
    }

    #[test]
    fn ports_are_stripped_from_hosts() {
        assert_eq!(host_without_port("example.com:8080"), "example.com");
        assert_eq!(host_without_port("example.com"), "example.com");
        assert_eq!(host_without_port("[::1]:80"), "[::1]");
        assert_eq!(host_without_port("[::1]"), "[::1]");
    }
}
