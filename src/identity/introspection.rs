//! RFC 7662 token introspection, for opaque tokens: ficus asks the IdP whether a token is
//! active, authenticating as a client (HTTP Basic or form fields), and caches the answer by
//! the token's SHA-256 (never the token itself). "Active" is not enough: the answer must also
//! name this resource server (`aud`), the configured issuer and an allowed client, and be
//! within `nbf`..`exp`, or the token is refused like an inactive one. An active answer is
//! cached no later than the token's `exp` and no longer than `cache_max_ttl`; an inactive or
//! refused one for `negative_ttl`. When the IdP cannot answer, the caller gets 503 (the token
//! may well be good), unless a stale answer is allowed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::HeaderValue;
use http_body_util::{BodyExt as _, Full};
use sha2::{Digest, Sha256};

use super::jwt::Claims;
use crate::config::file::{IntrospectionAuth, IntrospectionConfig};

#[derive(Debug, thiserror::Error)]
pub enum IntrospectionError {
    #[error("the token is larger than {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    Refused(Refusal),
    #[error("introspection at `{provider}` failed: {reason}")]
    Unavailable { provider: String, reason: String },
}

/// Why an answer does not vouch for the caller (for the log; the client learns `invalid_token`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the identity provider says the token is not active")]
    Inactive,
    #[error("the token has expired (`exp`)")]
    Expired,
    #[error("the token is not valid yet (`nbf`)")]
    NotYetValid,
    #[error("the token is not for this audience (`aud`)")]
    Audience,
    #[error("the token was issued by another issuer (`iss`)")]
    Issuer,
    #[error("the token was issued to a client that is not allowed (`client_id`)")]
    Client,
}

/// What an active answer must also say, from the config.
#[derive(Debug, Clone, Default)]
struct Policy {
    /// At least one must be in `aud` (a string or an array); empty: not checked.
    audiences: Vec<String>,
    issuer: Option<String>,
    /// `client_id` must be one of these; empty: not checked.
    client_ids: Vec<String>,
}

/// An IdP answer: the claims of an active token this route may trust, or why not.
type Verdict = Result<Arc<Claims>, Refusal>;

#[derive(Clone)]
struct Answer {
    verdict: Verdict,
    fresh_until: Instant,
    /// How long the entry may be served stale (no later than `exp`).
    keep: Duration,
}

struct Keep;

impl moka::Expiry<[u8; 32], Answer> for Keep {
    fn expire_after_create(&self, _k: &[u8; 32], v: &Answer, _now: Instant) -> Option<Duration> {
        Some(v.keep)
    }
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

pub struct Introspector {
    pub name: String,
    cfg: IntrospectionConfig,
    url: http::Uri,
    /// Form fields sent with every request besides the token (`client_id`/`client_secret` for
    /// `post`), already encoded.
    form_suffix: String,
    basic: Option<HeaderValue>,
    client: HttpClient,
    cache: moka::sync::Cache<[u8; 32], Answer>,
    /// Introspections in flight by token hash: concurrent requests with the same new token
    /// (a page firing twenty API calls) share one IdP round trip.
    inflight: parking_lot::Mutex<HashMap<[u8; 32], Flight>>,
    policy: Policy,
    counts: Counts,
}

/// How introspection answers were obtained, by `result`.
struct Counts {
    cached: metrics::Counter,
    active: metrics::Counter,
    inactive: metrics::Counter,
    /// Active, but for another audience, issuer or client, or outside `nbf`..`exp`.
    refused: metrics::Counter,
    error: metrics::Counter,
    stale: metrics::Counter,
}

impl Counts {
    fn new(m: &crate::telemetry::Metrics, provider: &str) -> Self {
        let c = |result| {
            m.counter(
                crate::telemetry::metrics::INTROSPECTIONS,
                &[("provider", provider), ("result", result)],
            )
        };
        Self {
            cached: c("cached"),
            active: c("active"),
            inactive: c("inactive"),
            refused: c("refused"),
            error: c("error"),
            stale: c("stale"),
        }
    }
}

type Flight = Arc<tokio::sync::OnceCell<Result<Verdict, String>>>;

fn form(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Introspector {
    pub fn new(
        name: &str,
        cfg: &IntrospectionConfig,
        base_dir: &std::path::Path,
        metrics: &crate::telemetry::Metrics,
    ) -> Result<Self, String> {
        let url: http::Uri = cfg.url.parse().map_err(|e| format!("url `{}`: {e}", cfg.url))?;
        if !matches!(url.scheme_str(), Some("http" | "https")) || url.authority().is_none() {
            return Err(format!(
                "url `{}` must be an absolute http:// or https:// URL",
                cfg.url
            ));
        }
        let secret = std::env::var(&cfg.client_secret_env)
            .map_err(|_| format!("environment variable {} is not set", cfg.client_secret_env))?;
        let (basic, form_suffix) = match cfg.auth {
            IntrospectionAuth::Basic => {
                // RFC 6749 2.3.1: both parts are form-encoded before going into Basic.
                use base64::Engine as _;
                let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                let creds = format!("{}:{}", enc(&cfg.client_id), enc(&secret));
                let mut v = HeaderValue::from_str(&format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(creds)
                ))
                .map_err(|_| "the client credentials are not a valid header value".to_string())?;
                v.set_sensitive(true);
                (Some(v), String::new())
            }
            IntrospectionAuth::Post => (
                None,
                format!(
                    "&{}",
                    form(&[("client_id", &cfg.client_id), ("client_secret", &secret)])
                ),
            ),
        };
        let connector = crate::upstream::tls::idp_connector(cfg.ca_file.as_deref(), base_dir, cfg.timeout)
            .map_err(|e| format!("ca_file: {e}"))?;
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector);
        let policy = Policy {
            audiences: cfg.audiences.clone(),
            issuer: cfg.issuer.clone(),
            client_ids: cfg.allowed_client_ids.clone(),
        };
        Ok(Self {
            policy,
            name: name.to_string(),
            cfg: cfg.clone(),
            url,
            form_suffix,
            basic,
            client,
            cache: moka::sync::Cache::builder()
                .max_capacity(cfg.cache_entries)
                .expire_after(Keep)
                .build(),
            inflight: Default::default(),
            counts: Counts::new(metrics, name),
        })
    }

    pub async fn verify(&self, token: &str) -> Result<Arc<Claims>, IntrospectionError> {
        let max = usize::try_from(self.cfg.max_token_bytes.0).unwrap_or(usize::MAX);
        if token.len() > max {
            return Err(IntrospectionError::TooLarge(max));
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let cached = self.cache.get(&digest);
        if let Some(hit) = &cached {
            if Instant::now() < hit.fresh_until {
                self.counts.cached.increment(1);
                return hit.verdict.clone().map_err(IntrospectionError::Refused);
            }
        }
        match self.ask_once(digest, token).await {
            Ok(verdict) => verdict.map_err(IntrospectionError::Refused),
            Err(reason) => {
                // `keep` already bounds a stale entry by `exp` and `allow_stale`.
                if let Some(hit) = cached.filter(|_| self.cfg.allow_stale.is_some()) {
                    self.counts.stale.increment(1);
                    tracing::warn!(provider = %self.name, error = %reason, "introspection failed; serving a stale answer");
                    return hit.verdict.map_err(IntrospectionError::Refused);
                }
                Err(IntrospectionError::Unavailable {
                    provider: self.name.clone(),
                    reason,
                })
            }
        }
    }

    /// One IdP call per token hash at a time; the answer is cached before the flight lands,
    /// so a request arriving just after finds it there.
    async fn ask_once(&self, digest: [u8; 32], token: &str) -> Result<Verdict, String> {
        let flight = self.inflight.lock().entry(digest).or_default().clone();
        let result = flight
            .get_or_init(|| async {
                let answer = self.ask(token).await;
                match &answer {
                    Ok(verdict) => {
                        self.remember(digest, verdict.clone());
                        let c = match verdict {
                            Ok(_) => &self.counts.active,
                            Err(Refusal::Inactive) => &self.counts.inactive,
                            Err(why) => {
                                tracing::debug!(provider = %self.name, reason = %why, "introspection: active token refused");
                                &self.counts.refused
                            }
                        };
                        c.increment(1);
                    }
                    Err(_) => self.counts.error.increment(1),
                }
                answer
            })
            .await
            .clone();
        let mut inflight = self.inflight.lock();
        if inflight.get(&digest).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
            inflight.remove(&digest);
        }
        result
    }

    fn remember(&self, digest: [u8; 32], verdict: Verdict) {
        let stale = self.cfg.allow_stale.unwrap_or_default();
        let (fresh, keep) = match &verdict {
            Err(_) => (self.cfg.negative_ttl, self.cfg.negative_ttl + stale),
            Ok(c) => {
                let until_exp =
                    c.0.get("exp")
                        .and_then(serde_json::Value::as_u64)
                        .map(|exp| Duration::from_secs(exp.saturating_sub(now_secs())));
                let fresh = until_exp.map_or(self.cfg.cache_max_ttl, |e| e.min(self.cfg.cache_max_ttl));
                let keep = until_exp.map_or(fresh + stale, |e| e.min(fresh + stale));
                (fresh, keep)
            }
        };
        if !keep.is_zero() {
            self.cache.insert(
                digest,
                Answer {
                    verdict,
                    fresh_until: Instant::now() + fresh,
                    keep,
                },
            );
        }
    }

    /// One introspection request: the verdict on the token, `Err` when the IdP could not give
    /// an answer.
    async fn ask(&self, token: &str) -> Result<Verdict, String> {
        let body = format!(
            "{}{}",
            form(&[("token", token), ("token_type_hint", "access_token")]),
            self.form_suffix
        );
        let mut req = http::Request::post(self.url.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        if let Some(b) = &self.basic {
            req.headers_mut().insert(AUTHORIZATION, b.clone());
        }
        let call = async {
            let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let body = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        let call = tokio::time::timeout(self.cfg.timeout, call);
        let kind = opentelemetry::trace::SpanKind::Client;
        let asked = crate::telemetry::traces::in_current("introspection", kind, call, |r| match r {
            Err(_) => Some("timeout".into()),
            Ok(Err(_)) => Some("error".into()),
            Ok(Ok((s, _))) if !s.is_success() => Some(s.as_str().to_string().into()),
            Ok(Ok(_)) => None,
        });
        let (status, body) = asked
            .await
            .map_err(|_| format!("no answer within {:?}", self.cfg.timeout))??;
        if !status.is_success() {
            // 401 from the IdP means ficus's own credentials are wrong: that is an outage
            // for callers too, not a verdict on their token.
            return Err(format!("the endpoint answered {status}"));
        }
        parse_answer(&body, now_secs(), &self.policy)
    }
}

/// Reads an RFC 7662 answer. Only `"active": true` (the boolean) counts as active; an `exp`
/// already past or an `nbf` still ahead refuses the token whatever `active` says, and so does
/// an answer that does not meet the configured audience, issuer or client. A claim that is
/// present but not of its registered type counts as not meeting the check.
fn parse_answer(body: &[u8], now: u64, policy: &Policy) -> Result<Verdict, String> {
    let claims: Claims =
        serde_json::from_slice(body).map_err(|e| format!("not an introspection answer: {e}"))?;
    Ok(judge(claims, now, policy))
}

fn judge(claims: Claims, now: u64, policy: &Policy) -> Verdict {
    use serde_json::Value;
    let c = &claims.0;
    if c.get("active") != Some(&Value::Bool(true)) {
        return Err(Refusal::Inactive);
    }
    if let Some(exp) = c.get("exp") {
        match exp.as_u64() {
            Some(e) if e > now => {}
            _ => return Err(Refusal::Expired),
        }
    }
    if let Some(nbf) = c.get("nbf") {
        match nbf.as_u64() {
            Some(n) if n <= now => {}
            _ => return Err(Refusal::NotYetValid),
        }
    }
    if !policy.audiences.is_empty() {
        let wanted = |a: &Value| {
            a.as_str()
                .is_some_and(|a| policy.audiences.iter().any(|w| w == a))
        };
        let ok = match c.get("aud") {
            Some(Value::Array(auds)) => auds.iter().any(wanted),
            Some(one) => wanted(one),
            None => false,
        };
        if !ok {
            return Err(Refusal::Audience);
        }
    }
    if let Some(issuer) = &policy.issuer {
        if c.get("iss").and_then(Value::as_str) != Some(issuer.as_str()) {
            return Err(Refusal::Issuer);
        }
    }
    if !policy.client_ids.is_empty() {
        let client = c.get("client_id").and_then(Value::as_str);
        if !client.is_some_and(|id| policy.client_ids.iter().any(|w| w == id)) {
            return Err(Refusal::Client);
        }
    }
    Ok(Arc::new(claims))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any() -> Policy {
        Policy::default()
    }

    fn refusal(body: &[u8], now: u64, policy: &Policy) -> Option<Refusal> {
        parse_answer(body, now, policy).unwrap().err()
    }

    #[test]
    fn only_boolean_true_is_active() {
        assert!(parse_answer(br#"{"active":true,"sub":"a"}"#, 10, &any())
            .unwrap()
            .is_ok());
        for inactive in [&br#"{"active":"true"}"#[..], br#"{"active":false}"#, br#"{}"#] {
            assert_eq!(refusal(inactive, 10, &any()), Some(Refusal::Inactive));
        }
    }

    #[test]
    fn a_past_exp_or_a_future_nbf_is_refused_and_garbage_is_an_error() {
        assert_eq!(
            refusal(br#"{"active":true,"exp":5}"#, 10, &any()),
            Some(Refusal::Expired)
        );
        assert_eq!(
            refusal(br#"{"active":true,"exp":"x"}"#, 10, &any()),
            Some(Refusal::Expired)
        );
        assert_eq!(refusal(br#"{"active":true,"exp":50}"#, 10, &any()), None);
        assert_eq!(
            refusal(br#"{"active":true,"nbf":11}"#, 10, &any()),
            Some(Refusal::NotYetValid)
        );
        assert_eq!(
            refusal(br#"{"active":true,"nbf":"soon"}"#, 10, &any()),
            Some(Refusal::NotYetValid)
        );
        assert_eq!(refusal(br#"{"active":true,"nbf":10}"#, 10, &any()), None);
        assert!(parse_answer(b"<html>", 10, &any()).is_err());
        assert!(parse_answer(br#"{"active":true,"sub":"a","sub":"b"}"#, 10, &any()).is_err());
    }

    #[test]
    fn audience_issuer_and_client_are_checked_when_configured() {
        let p = Policy {
            audiences: vec!["orders".into(), "billing".into()],
            issuer: Some("https://idp/".into()),
            client_ids: vec!["app".into()],
        };
        let ok =
            |aud: &str| format!(r#"{{"active":true,"aud":{aud},"iss":"https://idp/","client_id":"app"}}"#);
        assert_eq!(refusal(ok(r#""orders""#).as_bytes(), 10, &p), None);
        assert_eq!(refusal(ok(r#"["x","billing"]"#).as_bytes(), 10, &p), None);
        for aud in [r#""x""#, r#"["x","y"]"#, "[]", "null", r#"["Orders"]"#, "7"] {
            assert_eq!(
                refusal(ok(aud).as_bytes(), 10, &p),
                Some(Refusal::Audience),
                "{aud}"
            );
        }
        assert_eq!(
            refusal(
                br#"{"active":true,"iss":"https://idp/","client_id":"app"}"#,
                10,
                &p
            ),
            Some(Refusal::Audience)
        );
        assert_eq!(
            refusal(
                br#"{"active":true,"aud":"orders","iss":"https://idp","client_id":"app"}"#,
                10,
                &p
            ),
            Some(Refusal::Issuer)
        );
        assert_eq!(
            refusal(br#"{"active":true,"aud":"orders","client_id":"app"}"#, 10, &p),
            Some(Refusal::Issuer)
        );
        assert_eq!(
            refusal(
                br#"{"active":true,"aud":"orders","iss":"https://idp/","client_id":"other"}"#,
                10,
                &p
            ),
            Some(Refusal::Client)
        );
        assert_eq!(
            refusal(br#"{"active":true,"aud":"orders","iss":"https://idp/"}"#, 10, &p),
            Some(Refusal::Client)
        );
    }

    #[test]
    fn scopes_come_from_the_answer() {
        let c = parse_answer(br#"{"active":true,"scope":"a b"}"#, 10, &any())
            .unwrap()
            .unwrap();
        assert_eq!(c.scopes(), vec!["a".to_string(), "b".to_string()]);
    }

    fn cfg() -> IntrospectionConfig {
        serde_yaml_ng::from_str(
            "{ url: 'http://127.0.0.1:9/introspect', client_id: 'ficus app', client_secret_env: FICUS_UNIT_INTROSPECT, audiences: [api], cache_max_ttl: 60s, negative_ttl: 5s, allow_stale: 30s }",
        )
        .unwrap()
    }

    #[test]
    fn cache_ttl_is_bounded_by_exp_and_the_maximum() {
        std::env::set_var("FICUS_UNIT_INTROSPECT", "s3cret&=");
        let i = Introspector::new(
            "u",
            &cfg(),
            std::path::Path::new("."),
            &crate::telemetry::Metrics::new(),
        )
        .unwrap();
        let basic = i.basic.clone().unwrap();
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(&basic.to_str().unwrap()["Basic ".len()..])
            .unwrap();
        assert_eq!(decoded, b"ficus+app:s3cret%26%3D");
        let exp = now_secs() + 10;
        let c = Claims(
            [("exp".to_string(), serde_json::Value::from(exp))]
                .into_iter()
                .collect(),
        );
        i.remember([1; 32], Ok(Arc::new(c)));
        let a = i.cache.get(&[1; 32]).unwrap();
        assert!(a.keep <= Duration::from_secs(10));
        assert!(a.fresh_until <= Instant::now() + Duration::from_secs(10));
        i.remember([2; 32], Ok(Arc::new(Claims::default())));
        let b = i.cache.get(&[2; 32]).unwrap();
        assert_eq!(b.keep, Duration::from_secs(90));
        i.remember([3; 32], Err(Refusal::Audience));
        assert_eq!(i.cache.get(&[3; 32]).unwrap().keep, Duration::from_secs(35));
    }
}
