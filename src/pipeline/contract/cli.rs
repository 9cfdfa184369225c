//! `ficus contract`: fetches a route's contract report from the admin API and sums it up for CI.

use bytes::Bytes;
use http_body_util::BodyExt as _;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("`{0}` is not an admin URL (write http://HOST:PORT; the admin API is plain HTTP)")]
    BadUrl(String),
    #[error("cannot reach the admin API at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the admin API answered {status}: {detail}")]
    Refused { status: u16, detail: String },
    #[error("the admin API's answer is not a contract report: {0}")]
    NotAReport(String),
}

/// The report of `route` from the admin API at `admin` (`http://127.0.0.1:9901`).
pub async fn fetch(admin: &str, route: &str) -> Result<Value, FetchError> {
    let base = admin.trim_end_matches('/');
    let base = if base.contains("://") {
        base.to_string()
    } else {
        format!("http://{base}")
    };
    if !base.starts_with("http://") {
        return Err(FetchError::BadUrl(admin.to_string()));
    }
    let encoded: String = form_urlencoded::byte_serialize(route.as_bytes()).collect();
    let url = format!("{base}/admin/contract?route={encoded}");
    let uri: http::Uri = url.parse().map_err(|_| FetchError::BadUrl(admin.to_string()))?;
    if uri.host().is_none() {
        return Err(FetchError::BadUrl(admin.to_string()));
    }
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    let req = http::Request::get(uri)
        .header(http::header::ACCEPT, "application/json")
        .body(http_body_util::Empty::new())
        .map_err(|_| FetchError::BadUrl(admin.to_string()))?;
    let unreachable = |reason: String| FetchError::Unreachable {
        url: base.clone(),
        reason,
    };
    let resp = tokio::time::timeout(std::time::Duration::from_secs(30), client.request(req))
        .await
        .map_err(|_| unreachable("no answer within 30 s".into()))?
        .map_err(|e| unreachable(error_chain(&e)))?;
    let status = resp.status();
    let body = http_body_util::Limited::new(resp.into_body(), 16 * 1024 * 1024)
        .collect()
        .await
        .map_err(|e| unreachable(e.to_string()))?
        .to_bytes();
    let doc: Option<Value> = serde_json::from_slice(&body).ok();
    if !status.is_success() {
        let detail = doc
            .as_ref()
            .and_then(|d| d["detail"].as_str())
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect());
        return Err(FetchError::Refused {
            status: status.as_u16(),
            detail,
        });
    }
    match doc {
        Some(d) if d["differences"].is_array() => Ok(d),
        _ => Err(FetchError::NotAReport(
            String::from_utf8_lossy(&body).chars().take(200).collect(),
        )),
    }
}

/// hyper's client error says "client error (Connect)"; the cause ("Connection refused") is
/// further down the chain.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// How many of the report's differences are breaking.
pub fn breaking(report: &Value) -> usize {
    report["differences"].as_array().map_or(0, |d| {
        d.iter().filter(|d| d["breaking"] == Value::Bool(true)).count()
    })
}

/// A readable summary: samples and statuses per side, then each difference.
pub fn summary(report: &Value) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let route = report["route"].as_str().unwrap_or("?");
    let _ = writeln!(s, "contract of route `{route}`");
    for side in ["legacy", "modern"] {
        let r = &report[side];
        let statuses: Vec<String> = r["statuses"]
            .as_array()
            .map(|a| a.iter().map(ToString::to_string).collect())
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "  {side}: {} answers observed ({} JSON 2xx bodies), statuses [{}]",
            r["samples"]["responses"],
            r["samples"]["json_2xx"],
            statuses.join(", ")
        );
    }
    if report["compared"] == Value::Bool(false) {
        let _ = writeln!(
            s,
            "  warning: one side has no observed answers yet; nothing could be compared"
        );
    }
    let diffs = report["differences"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let n = breaking(report);
    if diffs.is_empty() {
        let _ = writeln!(s, "no differences");
        return s;
    }
    let _ = writeln!(s, "{} difference(s), {n} breaking:", diffs.len());
    for d in diffs {
        let mark = if d["breaking"] == Value::Bool(true) {
            "BREAKING"
        } else {
            "ok      "
        };
        let _ = writeln!(
            s,
            "  {mark} {:<20} {:<24} legacy: {}  modern: {}",
            d["kind"].as_str().unwrap_or("?"),
            d["path"].as_str().unwrap_or("?"),
            d["legacy"],
            d["modern"]
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_summary_marks_breaking_differences() {
        let report = json!({
            "route": "orders",
            "legacy": {"statuses": [200], "samples": {"responses": 20, "json_2xx": 20}},
            "modern": {"statuses": [200], "samples": {"responses": 20, "json_2xx": 20}},
            "compared": true,
            "differences": [
                {"kind": "missing_on_modern", "path": "currency", "legacy": "required", "modern": "absent", "breaking": true},
                {"kind": "new_field_on_modern", "path": "links", "legacy": "absent", "modern": "optional", "breaking": false},
            ],
        });
        assert_eq!(breaking(&report), 1);
        let s = summary(&report);
        assert!(s.contains("2 difference(s), 1 breaking"), "{s}");
        assert!(s.contains("BREAKING missing_on_modern"), "{s}");
        assert!(s.contains("legacy: 20 answers observed"), "{s}");
    }

    #[tokio::test]
    async fn a_url_that_is_not_plain_http_is_refused_before_connecting() {
        assert!(matches!(
            fetch("https://127.0.0.1:1", "r").await,
            Err(FetchError::BadUrl(_))
        ));
    }
}
