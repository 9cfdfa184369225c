//! Stage 3: choose the route.
//!
//! Routes are tried in the order the config lists them and the first whose every condition holds
//! wins, as in Envoy's route table within a virtual host: order is the tie-break, and it is the
//! user's. Matching works on the normalised path only.

pub mod compile;

use std::collections::HashMap;
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

    /// The route's path as a low-cardinality template (the trace attribute `http.route`).
    pub fn route_template(&self) -> std::borrow::Cow<'_, str> {
        use std::borrow::Cow;
        match self {
            Self::Any => Cow::Borrowed("/*"),
            Self::Exact(p) => Cow::Borrowed(p),
            Self::Prefix(p) if p.ends_with('/') => Cow::Owned(format!("{p}*")),
            Self::Prefix(p) => Cow::Owned(format!("{p}/*")),
            Self::Template(t, _) => Cow::Borrowed(t),
            Self::Regex(r) => Cow::Borrowed(r.as_str()),
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
    /// Writes queued while the upstream is unreachable (`buffer_writes`).
    pub buffer_writes: Option<super::writes::RouteWrites>,
    /// What each side answers with, learned (`GET /admin/contract`); only with a shadow or
    /// `contract` sampling.
    pub contract: Option<Arc<super::contract::Contract>>,
    /// The last hour in 10-second steps, for `GET /admin/history` (kept across reloads).
    pub history: Arc<super::history::RouteHistory>,
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

    /// Stage 8 has nothing to do: no queued writes, no contract sampling, no migration split,
    /// so the request goes straight to translation and the upstream call.
    pub fn is_direct(&self) -> bool {
        self.buffer_writes.is_none() && self.contract.is_none() && self.migration.is_none()
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
    index: PathIndex,
}

impl Router {
    pub fn new(routes: Vec<Route>) -> Self {
        let index = PathIndex::new(routes.iter().map(|r| &r.path));
        Self {
            routes: routes.into_iter().map(Arc::new).collect(),
            index,
        }
    }

    /// The first route, in config order, whose every condition holds. Only the routes whose
    /// path can match are tested, so the cost does not grow with the length of the table.
    pub fn find(&self, req: &RequestView<'_>) -> Option<&Arc<Route>> {
        let i = self
            .index
            .first(req.path, |i| self.routes.get(i).is_some_and(|r| r.matches(req)))?;
        self.routes.get(i)
    }

    /// What [`Router::find`] must always agree with: every route, in order.
    #[doc(hidden)]
    pub fn find_linear(&self, req: &RequestView<'_>) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| r.matches(req))
    }

    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }
}

/// Route positions by the shape of their path, so that a lookup yields every route whose path
/// can match (and few others) without visiting the rest.
///
/// One combined `matchit` tree cannot do this: it returns a single match and prefers static
/// segments, while the table's answer is the earliest route in file order, and two routes with
/// the same template are a conflict to matchit but legitimate here (they may differ by host or
/// method). So every path shape is reduced to a literal that any matching path must contain at
/// a known place, candidates are gathered from those literals, and the full [`Route::matches`]
/// decides, in ascending position.
#[derive(Default)]
struct PathIndex {
    /// `Exact` paths, and templates without a parameter (matchit matches those literally).
    exact: HashMap<Box<str>, Vec<usize>>,
    /// `Prefix` paths as written, and templates under the literal text before their first
    /// brace, cut after a `/`: a path can only match `/orders/{id}` if it starts with
    /// `/orders/`.
    prefix: HashMap<Box<str>, Vec<usize>>,
    longest_prefix: usize,
    /// `Any`, regexes, and templates with no literal directory before their first brace.
    always: Vec<usize>,
}

impl PathIndex {
    fn new<'a>(paths: impl IntoIterator<Item = &'a PathMatch>) -> Self {
        let mut index = Self::default();
        for (i, path) in paths.into_iter().enumerate() {
            match path {
                PathMatch::Exact(p) => index.exact.entry(p.as_str().into()).or_default().push(i),
                PathMatch::Prefix(p) => index.add_prefix(p, i),
                PathMatch::Template(t, _) => match t.find(['{', '}']) {
                    None => index.exact.entry(t.as_str().into()).or_default().push(i),
                    Some(brace) => match t[..brace].rfind('/') {
                        Some(slash) => index.add_prefix(&t[..=slash], i),
                        None => index.always.push(i),
                    },
                },
                PathMatch::Any | PathMatch::Regex(_) => index.always.push(i),
            }
        }
        index
    }

    fn add_prefix(&mut self, p: &str, i: usize) {
        self.longest_prefix = self.longest_prefix.max(p.len());
        self.prefix.entry(p.into()).or_default().push(i);
    }

    /// The smallest position among the candidates for `path` that `accept` takes. Each
    /// candidate list is ascending, so a list is left at its first accepted position or as soon
    /// as it passes the best one found so far.
    fn first(&self, path: &str, mut accept: impl FnMut(usize) -> bool) -> Option<usize> {
        let mut best = usize::MAX;
        let mut scan = |list: &[usize]| {
            for &i in list {
                if i >= best {
                    break;
                }
                if accept(i) {
                    best = i;
                    break;
                }
            }
        };
        scan(&self.always);
        if let Some(list) = self.exact.get(path) {
            scan(list);
        }
        if !self.prefix.is_empty() {
            // A prefix without a trailing `/` matches up to a `/` or the end; one with a
            // trailing `/` matches up to any point just after a `/`.
            let b = path.as_bytes();
            for k in 0..=b.len().min(self.longest_prefix) {
                let boundary = k == b.len() || b[k] == b'/' || (k > 0 && b[k - 1] == b'/');
                if !boundary {
                    continue;
                }
                if let Some(list) = path.get(..k).and_then(|key| self.prefix.get(key)) {
                    scan(list);
                }
            }
        }
        (best != usize::MAX).then_some(best)
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

    fn template(t: &str) -> PathMatch {
        PathMatch::template(t).unwrap()
    }

    /// The index's answer when `accept` stands for a route's other conditions, checked
    /// against the plain scan of the same table.
    fn first_both_ways(paths: &[PathMatch], path: &str, accept: impl Fn(usize) -> bool) -> Option<usize> {
        let linear = paths
            .iter()
            .enumerate()
            .position(|(i, p)| p.matches(path) && accept(i));
        let indexed = PathIndex::new(paths).first(path, |i| paths[i].matches(path) && accept(i));
        assert_eq!(indexed, linear, "index and scan disagree on {path}");
        indexed
    }

    fn first(paths: &[PathMatch], path: &str) -> Option<usize> {
        first_both_ways(paths, path, |_| true)
    }

    #[test]
    fn a_prefix_listed_before_an_exact_path_wins_for_that_path() {
        let paths = [PathMatch::Prefix("/api".into()), PathMatch::Exact("/api".into())];
        assert_eq!(first(&paths, "/api"), Some(0));
        assert_eq!(first(&paths, "/api/x"), Some(0));
        let paths = [PathMatch::Exact("/api".into()), PathMatch::Prefix("/api".into())];
        assert_eq!(first(&paths, "/api"), Some(0));
        assert_eq!(first(&paths, "/api/x"), Some(1));
        assert_eq!(first(&paths, "/apix"), None);
    }

    #[test]
    fn templates_matchit_would_refuse_together_all_stay_candidates() {
        // One matchit tree refuses `{id}` beside `{key}` and prefers `new` to `{id}`; here the
        // earlier route wins, and a later one is reached when the earlier one's other
        // conditions fail.
        let paths = [
            template("/orders/{id}"),
            template("/orders/{key}"),
            template("/orders/{id}"),
            template("/orders/new"),
            template("/orders/{*rest}"),
        ];
        assert_eq!(first(&paths, "/orders/new"), Some(0));
        assert_eq!(first_both_ways(&paths, "/orders/7", |i| i > 0), Some(1));
        assert_eq!(first_both_ways(&paths, "/orders/7", |i| i > 1), Some(2));
        assert_eq!(first_both_ways(&paths, "/orders/new", |i| i > 2), Some(3));
        assert_eq!(first_both_ways(&paths, "/orders/new", |i| i > 3), Some(4));
        assert_eq!(first(&paths, "/orders/7/lines"), Some(4));
        assert_eq!(first(&paths, "/orders"), None);
    }

    #[test]
    fn templates_with_a_parameter_inside_a_segment_or_at_the_root_are_found() {
        let paths = [
            template("/img/i{id}.png"),
            template("/{tenant}/orders"),
            template("/{*all}"),
        ];
        assert_eq!(first(&paths, "/img/i1.png"), Some(0));
        assert_eq!(first(&paths, "/img/orders"), Some(1));
        assert_eq!(first(&paths, "/img/x.png"), Some(2));
        assert_eq!(first(&paths, "/"), None);
    }

    #[test]
    fn a_root_prefix_and_any_match_every_path_in_table_order() {
        let paths = [
            PathMatch::Exact("/a".into()),
            PathMatch::Prefix("/".into()),
            PathMatch::Any,
        ];
        assert_eq!(first(&paths, "/"), Some(1));
        assert_eq!(first(&paths, "/a"), Some(0));
        assert_eq!(first(&paths, "/a/b/"), Some(1));
        assert_eq!(first_both_ways(&paths, "/a/b", |i| i != 1), Some(2));
        assert_eq!(first(&paths, ""), Some(2));
    }

    #[test]
    fn trailing_slashes_are_part_of_the_path() {
        let paths = [
            PathMatch::Exact("/a/".into()),
            PathMatch::Prefix("/b/".into()),
            template("/c/{id}/"),
            PathMatch::Prefix("/d".into()),
            PathMatch::Exact("/e".into()),
        ];
        assert_eq!(first(&paths, "/a/"), Some(0));
        assert_eq!(first(&paths, "/a"), None);
        assert_eq!(first(&paths, "/b"), None);
        assert_eq!(first(&paths, "/b/"), Some(1));
        assert_eq!(first(&paths, "/b/x/"), Some(1));
        assert_eq!(first(&paths, "/c/1/"), Some(2));
        assert_eq!(first(&paths, "/c/1"), None);
        assert_eq!(first(&paths, "/d/"), Some(3));
        assert_eq!(first(&paths, "/e/"), None);
    }

    #[test]
    fn every_small_table_agrees_with_the_scan_on_every_path() {
        let shapes = || {
            vec![
                PathMatch::Exact("/a".into()),
                PathMatch::Exact("/a/b".into()),
                PathMatch::Prefix("/a".into()),
                PathMatch::Prefix("/a/".into()),
                template("/a/{x}"),
                template("/{x}/b"),
                template("/a/{*r}"),
                template("/a/b"),
                PathMatch::Regex(regex::Regex::new("^(?:/a/.*)$").unwrap()),
                PathMatch::Any,
            ]
        };
        let requests = [
            "", "/", "/a", "/a/", "/a/b", "/a/b/", "/a/c", "/ab", "/c/b", "/a/b/c", "a",
        ];
        let n = shapes().len();
        // Every rotation and its reverse, each with every one route's other conditions failing.
        for start in 0..n {
            for reverse in [false, true] {
                let mut paths = shapes();
                paths.rotate_left(start);
                if reverse {
                    paths.reverse();
                }
                for path in requests {
                    for refused in 0..=n {
                        first_both_ways(&paths, path, |i| i != refused);
                    }
                }
            }
        }
    }

    #[test]
    fn ports_are_stripped_from_hosts() {
        assert_eq!(host_without_port("example.com:8080"), "example.com");
        assert_eq!(host_without_port("example.com"), "example.com");
        assert_eq!(host_without_port("[::1]:80"), "[::1]");
        assert_eq!(host_without_port("[::1]"), "[::1]");
    }
}
