//! Stage 3: choose the route.
//!
//! Routes are tried in the order the config lists them and the first whose every condition holds
//! wins, as in Envoy's route table within a virtual host: order is the tie-break, and it is the
//! user's. Matching works on the normalised path only.

use std::sync::Arc;

use http::Method;

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Any,
    Exact(String),
    /// Matches on a segment boundary: `/api` matches `/api` and `/api/x`, not `/apix`.
    Prefix(String),
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(p) => p == path,
            Self::Prefix(p) => {
                path.starts_with(p.as_str())
                    && (p.ends_with('/') || path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
            }
        }
    }
}

pub struct Route {
    pub name: Arc<str>,
    pub hosts: Vec<HostMatch>,
    pub path: PathMatch,
    pub methods: Vec<Method>,
    pub upstream: Arc<Upstream>,
    pub metrics: RouteMetrics,
    pub idempotency: Option<super::idempotency::RouteIdempotency>,
    /// With a migration, `upstream` and `metrics` are the legacy side's.
    pub migration: Option<super::migration::Migration>,
}

impl Route {
    pub fn upstream_for(&self, side: super::migration::Side) -> &Arc<Upstream> {
        match (side, &self.migration) {
            (super::migration::Side::Modern, Some(m)) => &m.modern,
            _ => &self.upstream,
        }
    }

    pub fn metrics_for(&self, side: super::migration::Side) -> &RouteMetrics {
        match (side, &self.migration) {
            (super::migration::Side::Modern, Some(m)) => &m.modern_metrics,
            _ => &self.metrics,
        }
    }
}

impl Route {
    pub fn matches(&self, host: Option<&str>, path: &str, method: &Method) -> bool {
        let host_ok = self.hosts.is_empty() || host.is_some_and(|h| self.hosts.iter().any(|m| m.matches(h)));
        host_ok && self.path.matches(path) && (self.methods.is_empty() || self.methods.contains(method))
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

    /// `host` is the request's host without port.
    pub fn find(&self, host: Option<&str>, path: &str, method: &Method) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| r.matches(host, path, method))
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
