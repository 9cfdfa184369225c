//! Redaction: values that never reach the access log or a stored shadow diff in clear.
//!
//! By default the headers `Authorization`, `Proxy-Authorization`, `Cookie` and `Set-Cookie` and
//! the query parameters `token`, `access_token`, `api_key`, `key` and `password` (names compared
//! case-insensitively) have their values replaced by [`MARKER`]. The `redact` config section adds
//! names to these lists (it never removes a default) and names JSON fields of diffed bodies.
//! Compiled once per config version; nothing allocates when nothing needs redacting.

use std::borrow::Cow;

use crate::config::file::RedactConfig;
use crate::config::problems::Section;
use crate::translate::path::FieldPath;

/// What a redacted value is replaced by.
pub const MARKER: &str = "[REDACTED]";

pub const DEFAULT_HEADERS: &[&str] = &["authorization", "proxy-authorization", "cookie", "set-cookie"];
pub const DEFAULT_QUERY_PARAMS: &[&str] = &["token", "access_token", "api_key", "key", "password"];

#[derive(Debug, Clone)]
pub struct Redactor {
    /// Lowercase names.
    headers: Vec<String>,
    /// Lowercase names.
    query_params: Vec<String>,
    /// Fields of JSON (and XML) bodies in shadow diffs, with everything below them.
    pub json_paths: Vec<FieldPath>,
}

impl Default for Redactor {
    fn default() -> Self {
        Self {
            headers: DEFAULT_HEADERS.iter().map(|s| (*s).to_string()).collect(),
            query_params: DEFAULT_QUERY_PARAMS.iter().map(|s| (*s).to_string()).collect(),
            json_paths: Vec::new(),
        }
    }
}

impl Redactor {
    /// The defaults plus the configured names and paths; a path that does not parse is an error
    /// of `sec` (the `redact` section).
    pub fn compile(cfg: &RedactConfig, sec: &mut Section<'_, '_>) -> Self {
        let mut r = Self::default();
        for h in &cfg.headers {
            let h = h.to_ascii_lowercase();
            if !r.headers.contains(&h) {
                r.headers.push(h);
            }
        }
        for q in &cfg.query_params {
            let q = q.to_ascii_lowercase();
            if !r.query_params.contains(&q) {
                r.query_params.push(q);
            }
        }
        for (i, p) in cfg.json_paths.iter().enumerate() {
            match FieldPath::parse(p) {
                Ok(path) if path.0.is_empty() => {
                    sec.error(&format!("json_paths[{i}]"), "names the whole body; name a field")
                }
                Ok(path) => r.json_paths.push(path),
                Err(e) => sec.error(&format!("json_paths[{i}]"), e),
            }
        }
        r
    }

    /// Whether the value of header `name` is redacted.
    pub fn header(&self, name: &str) -> bool {
        self.headers.iter().any(|h| h.eq_ignore_ascii_case(name))
    }

    /// Whether the value of query parameter `name` (raw, as in the URL) is redacted. A name
    /// spelled with percent-escapes (`%74oken`) is decoded first, as the backend would read it.
    pub fn query_param(&self, name: &str) -> bool {
        if name.contains(['%', '+']) {
            let decoded: String = form_urlencoded::parse(name.as_bytes())
                .next()
                .map(|(k, _)| k.into_owned())
                .unwrap_or_default();
            return self.query_params.iter().any(|q| q.eq_ignore_ascii_case(&decoded));
        }
        self.query_params.iter().any(|q| q.eq_ignore_ascii_case(name))
    }

    /// `query` (without the `?`) with the value of each redacted parameter replaced by
    /// [`MARKER`]; borrowed, without allocating, when there is none.
    pub fn query<'a>(&self, query: &'a str) -> Cow<'a, str> {
        let name = |kv: &'a str| kv.split_once('=').map_or(kv, |(n, _)| n);
        if !query.split('&').any(|kv| self.query_param(name(kv))) {
            return Cow::Borrowed(query);
        }
        let mut out = String::with_capacity(query.len());
        for (i, kv) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            let n = name(kv);
            if self.query_param(n) {
                out.push_str(n);
                out.push('=');
                out.push_str(MARKER);
            } else {
                out.push_str(kv);
            }
        }
        Cow::Owned(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_query_parameters_are_redacted_by_default_and_others_kept() {
        let r = Redactor::default();
        assert_eq!(
            r.query("token=secret&x=1&API_KEY=k2&password=p&key=abc&access_token=t"),
            "token=[REDACTED]&x=1&API_KEY=[REDACTED]&password=[REDACTED]&key=[REDACTED]&access_token=[REDACTED]"
        );
        assert_eq!(r.query("%74oken=secret&x=1"), "%74oken=[REDACTED]&x=1");
        assert_eq!(r.query("token&x=1"), "token=[REDACTED]&x=1");
    }

    #[test]
    fn a_query_without_credentials_is_borrowed_unchanged() {
        let r = Redactor::default();
        let q = "page=2&sort=name&tokens=3";
        assert!(matches!(r.query(q), Cow::Borrowed(s) if s == q));
    }

    #[test]
    fn configured_names_extend_the_defaults_and_a_bad_json_path_is_a_config_error() {
        let src = crate::config::ConfigSource::Embedded {
            name: "t.yaml".into(),
            text: "redact:\n  headers: [X-Session]\n  query_params: [SIG]\n  json_paths: [a..b, card.pan]\n",
            base_dir: ".".into(),
        }
        .read()
        .unwrap();
        let cfg = src.parse().unwrap();
        let mut p = crate::config::problems::Problems::new(&src);
        let r = Redactor::compile(&cfg.redact, &mut p.at("redact"));
        assert!(r.header("x-session") && r.header("authorization"));
        assert_eq!(
            r.query("sig=1&token=2&a=3"),
            "sig=[REDACTED]&token=[REDACTED]&a=3"
        );
        assert_eq!(r.json_paths, [FieldPath::parse("card.pan").unwrap()]);
        let err = p.finish().err().unwrap();
        assert_eq!(err.0.len(), 1, "{err}");
        assert_eq!(err.0[0].path, "redact.json_paths[0]", "{err}");
    }

    #[test]
    fn default_headers_are_redacted_case_insensitively() {
        let r = Redactor::default();
        for h in ["Authorization", "cookie", "Set-Cookie", "proxy-authorization"] {
            assert!(r.header(h), "{h}");
        }
        assert!(!r.header("content-type"));
    }
}
