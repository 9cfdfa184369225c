//! The trust boundary, applied to every request before the first stage: the headers ficus owns
//! and the headers only a trusted proxy may set are removed from what the client sent.
//!
//! A legacy backend believes the headers it receives. A header that ficus sets on one route
//! (a forwarded claim, a client-certificate header, a legacy credential) is exactly the header a
//! client will send on another route to the same backend, so the registry is built from the whole
//! config and applied on every route.

use http::header::{HeaderName, AUTHORIZATION};
use http::{HeaderMap, HeaderValue};

/// Headers ficus alone may send upstream; compiled once per snapshot from the whole config.
#[derive(Debug, Default)]
pub struct OwnedHeaders {
    names: Vec<HeaderName>,
    /// Migration override headers: owned (never forwarded), but their value is read by the
    /// migration stage, so it is moved into the request context instead of being dropped.
    overrides: Vec<HeaderName>,
}

/// Every header whose name starts with this is ficus's own (`X-Ficus-Shadow`, `X-Ficus-Backend`).
pub const OWNED_PREFIX: &str = "x-ficus-";

impl OwnedHeaders {
    /// `Authorization` is never listed: it is the caller's credential on most routes, and the
    /// routes that replace it (`upstream_auth`) overwrite it rather than add to it.
    pub fn new(
        names: impl IntoIterator<Item = HeaderName>,
        overrides: impl IntoIterator<Item = HeaderName>,
    ) -> Self {
        let mut out = Self::default();
        for n in names {
            if n != AUTHORIZATION && !n.as_str().starts_with(OWNED_PREFIX) && !out.names.contains(&n) {
                out.names.push(n);
            }
        }
        for n in overrides {
            if !out.overrides.contains(&n) {
                out.overrides.push(n);
            }
        }
        out
    }

    pub fn names(&self) -> impl Iterator<Item = &HeaderName> {
        self.names.iter().chain(self.overrides.iter())
    }

    /// Removes every owned header; the values of override headers are returned for the
    /// migration stage (almost always none, and then nothing is allocated).
    pub fn strip(&self, h: &mut HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
        let mut kept = Vec::new();
        // Look before removing: a remove hashes its name even when the header is absent, and
        // almost every request carries none of these.
        let owned = |k: &HeaderName| {
            self.names.contains(k) || self.overrides.contains(k) || k.as_str().starts_with(OWNED_PREFIX)
        };
        if !h.keys().any(owned) {
            return kept;
        }
        for n in &self.overrides {
            if let Some(v) = h.remove(n) {
                kept.push((n.clone(), v));
            }
        }
        for n in &self.names {
            h.remove(n);
        }
        remove_prefixed(h, OWNED_PREFIX);
        kept
    }
}

/// Headers that only a trusted proxy may set (`X-Forwarded-*`, `Forwarded`, `X-Real-IP`, ...),
/// compiled per listener from `proxy_only_headers`. An entry ending in `*` is a prefix.
#[derive(Debug, Clone, Default)]
pub struct ProxyOnlyHeaders {
    names: Vec<HeaderName>,
    prefixes: Vec<String>,
}

pub const DEFAULT_PROXY_ONLY_HEADERS: [&str; 8] = [
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
    "x-original-url",
    "x-rewrite-url",
    "x-forwarded-*",
    "forwarded",
    "x-forwarded",
];

impl ProxyOnlyHeaders {
    pub fn compile(entries: &[String]) -> Result<Self, String> {
        let mut out = Self::default();
        for e in entries {
            let lower = e.to_ascii_lowercase();
            match lower.strip_suffix('*') {
                Some(prefix) => {
                    if prefix.is_empty()
                        || HeaderName::from_bytes(prefix.trim_end_matches('-').as_bytes()).is_err()
                    {
                        return Err(format!("`{e}` is not a header name or a `prefix-*` pattern"));
                    }
                    out.prefixes.push(prefix.to_string());
                }
                None => {
                    let n = HeaderName::from_bytes(lower.as_bytes())
                        .map_err(|_| format!("`{e}` is not a header name"))?;
                    out.names.push(n);
                }
            }
        }
        Ok(out)
    }

    /// Removes them: called only when the peer is not a trusted proxy.
    pub fn strip(&self, h: &mut HeaderMap) {
        let listed = |k: &HeaderName| {
            self.names.contains(k) || self.prefixes.iter().any(|p| k.as_str().starts_with(p.as_str()))
        };
        if !h.keys().any(listed) {
            return;
        }
        for n in &self.names {
            h.remove(n);
        }
        for p in &self.prefixes {
            remove_prefixed(h, p);
        }
    }
}

fn remove_prefixed(h: &mut HeaderMap, prefix: &str) {
    // The common case has none: look before allocating.
    if !h.keys().any(|k| k.as_str().starts_with(prefix)) {
        return;
    }
    let doomed: Vec<HeaderName> = h
        .keys()
        .filter(|k| k.as_str().starts_with(prefix))
        .cloned()
        .collect();
    for k in doomed {
        h.remove(k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn owned_headers_and_the_ficus_prefix_are_removed_and_overrides_kept_aside() {
        let owned = OwnedHeaders::new(
            [
                HeaderName::from_static("x-user-id"),
                AUTHORIZATION,
                HeaderName::from_static("x-user-id"),
            ],
            [HeaderName::from_static("x-ficus-backend")],
        );
        assert_eq!(
            owned.names().count(),
            2,
            "Authorization is never owned; duplicates once"
        );
        let mut h = map(&[
            ("x-user-id", "admin"),
            ("x-user-id", "root"),
            ("x-ficus-shadow", "1"),
            ("x-ficus-backend", "modern"),
            ("authorization", "Bearer t"),
            ("x-kept", "1"),
        ]);
        let kept = owned.strip(&mut h);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].1, "modern");
        let mut names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["authorization", "x-kept"]);
    }

    #[test]
    fn proxy_only_headers_are_names_and_prefixes() {
        let p = ProxyOnlyHeaders::compile(&DEFAULT_PROXY_ONLY_HEADERS.map(String::from)).unwrap();
        let mut h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-host", "evil"),
            ("forwarded", "for=1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
            ("true-client-ip", "1.2.3.4"),
            ("x-client-ip", "1.2.3.4"),
            ("x-original-url", "/admin"),
            ("x-rewrite-url", "/admin"),
            ("x-forwardedness", "kept: not the x-forwarded- prefix"),
            ("accept", "*/*"),
        ]);
        p.strip(&mut h);
        let mut names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["accept", "x-forwardedness"]);
        assert!(ProxyOnlyHeaders::compile(&["bad header".into()]).is_err());
        assert!(ProxyOnlyHeaders::compile(&["*".into()]).is_err());
    }
}
