//! Stage 4: identity. Who is calling, decided before anything reaches a backend, and told to
//! the backend in the form it understands (claims forwarded as headers).
//!
//! Failures follow RFC 6750: 401 with `WWW-Authenticate: Bearer error="invalid_token"` (or a
//! bare `Bearer` challenge when no token was sent), 403 with `insufficient_scope`.

pub mod api_keys;
pub mod client_cert;
pub mod compile;
pub mod internal_jwt;
pub mod introspection;
pub mod jwt;

use std::sync::Arc;

use http::header::{HeaderName, AUTHORIZATION};
use http::{HeaderMap, HeaderValue};

use crate::config::file::{RouteIdentityConfig, UpstreamAuthSide};
use crate::error::ProxyError;
use crate::pipeline::context::Side;
use crate::pipeline::context::{cookie_value, query_value};
use client_cert::{ClientCertRule, ForwardClientCert, PeerCert};
use jwt::{Claims, JwtProvider};

/// How a route verifies its callers.
pub enum Verifier {
    Jwt(Arc<JwtProvider>),
    ApiKeys(Arc<api_keys::ApiKeySet>),
    /// Opaque tokens, checked with the IdP (RFC 7662).
    Introspection(Arc<introspection::Introspector>),
}

/// A route's identity requirements, compiled.
pub struct RouteIdentity {
    /// `None` on a route that only checks the TLS client certificate.
    pub verifier: Option<Verifier>,
    client_cert: Option<ClientCertRule>,
    pub forward_client_cert: Option<ForwardClientCert>,
    optional: bool,
    scopes: Vec<String>,
    claims: Vec<(String, Vec<String>)>,
    forward: Vec<(String, HeaderName)>,
    cookie: Option<String>,
    query: Option<String>,
    /// Headers that replace the caller's credentials towards the upstream.
    upstream_auth: Vec<(HeaderName, HeaderValue)>,
    /// A token ficus signs per caller for the upstream.
    internal_jwt: Option<internal_jwt::InternalJwt>,
    drop_token: bool,
    /// Which migration side gets `upstream_auth`.
    auth_side: UpstreamAuthSide,
}

impl RouteIdentity {
    pub fn new(
        cfg: &RouteIdentityConfig,
        verifier: Option<Verifier>,
        base_dir: &std::path::Path,
    ) -> Result<Self, String> {
        if verifier.is_none()
            && (!cfg.scopes.is_empty() || !cfg.claims.is_empty() || !cfg.forward_claims.is_empty())
        {
            return Err("`scopes`, `claims` and `forward_claims` need `jwt` or `api_keys`".into());
        }
        let client_cert = cfg.client_cert.as_ref().map(ClientCertRule::new).transpose()?;
        let forward_client_cert = cfg
            .forward_client_cert
            .as_ref()
            .map(ForwardClientCert::new)
            .transpose()?;
        let forward = cfg
            .forward_claims
            .iter()
            .map(|(claim, header)| {
                HeaderName::from_bytes(header.as_bytes())
                    .map(|h| (claim.clone(), h))
                    .map_err(|_| format!("`{header}` is not a header name"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let claims = cfg
            .claims
            .iter()
            .map(|(name, rule)| {
                let mut allowed = rule.one_of.clone();
                allowed.extend(rule.equals.clone());
                if allowed.is_empty() {
                    return Err(format!("claim `{name}`: set `equals` or `one_of`"));
                }
                Ok((name.clone(), allowed))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let mut upstream_auth = Vec::new();
        let mut drop_token = false;
        let mut internal = None;
        if let Some(ua) = &cfg.upstream_auth {
            if let Some(j) = &ua.jwt {
                if ua.basic_env.is_some() && j.header.eq_ignore_ascii_case("authorization") {
                    return Err(
                        "upstream_auth: `basic_env` and `jwt` both set Authorization; give `jwt` another `header`"
                            .into(),
                    );
                }
                internal = Some(
                    internal_jwt::InternalJwt::new(j, base_dir)
                        .map_err(|e| format!("upstream_auth.jwt: {e}"))?,
                );
            }
            drop_token = ua.drop_token || ua.basic_env.is_some();
            if let Some(env) = &ua.basic_env {
                let creds =
                    std::env::var(env).map_err(|_| format!("environment variable {env} is not set"))?;
                if !creds.contains(':') {
                    return Err(format!("{env} must hold `user:password`"));
                }
                use base64::Engine as _;
                let v = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(creds)
                );
                let mut v =
                    HeaderValue::from_str(&v).map_err(|_| format!("{env} is not a valid header value"))?;
                v.set_sensitive(true);
                upstream_auth.push((AUTHORIZATION, v));
            }
            if let Some(h) = &ua.header {
                let name = HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|_| format!("`{}` is not a header name", h.name))?;
                let value = std::env::var(&h.value_env)
                    .map_err(|_| format!("environment variable {} is not set", h.value_env))?;
                let mut v = HeaderValue::from_str(&value)
                    .map_err(|_| format!("{} is not a valid header value", h.value_env))?;
                v.set_sensitive(true);
                upstream_auth.push((name, v));
            }
        }
        Ok(Self {
            auth_side: cfg.upstream_auth.as_ref().map(|u| u.apply_to).unwrap_or_default(),
            upstream_auth,
            internal_jwt: internal,
            drop_token,
            verifier,
            client_cert,
            forward_client_cert,
            optional: cfg.optional,
            scopes: cfg.scopes.clone(),
            claims,
            forward,
            cookie: cfg.token_cookie.clone(),
            query: cfg.token_query.clone(),
        })
    }

    /// Every header this route sets for its upstream: forwarded claims, client-certificate
    /// headers, and the credentials that replace the caller's (`Authorization` is filtered out
    /// by the registry). They go into the snapshot's registry of owned headers.
    pub fn owned_header_names(&self) -> impl Iterator<Item = &HeaderName> {
        self.forward
            .iter()
            .map(|(_, h)| h)
            .chain(self.forward_client_cert.iter().flat_map(|f| f.header_names()))
            .chain(self.upstream_auth.iter().map(|(h, _)| h))
            .chain(self.internal_jwt.iter().map(|j| &j.header))
    }

    fn token<'a>(&self, headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
        for v in headers
            .get_all(AUTHORIZATION)
            .iter()
            .filter_map(|v| v.to_str().ok())
        {
            // The scheme is case-insensitive (RFC 7235).
            if v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") {
                return Some(v[7..].trim());
            }
        }
        if let Some(found) = self.cookie.as_ref().and_then(|name| cookie_value(headers, name)) {
            return Some(found);
        }
        // Only when configured: a token in a URL ends up in logs and caches.
        query_value(query, self.query.as_ref()?).filter(|v| !v.is_empty())
    }

    /// The TLS client certificate's part of the identity stage, before any token: the route's
    /// requirement, then its headers towards the upstream (the caller's copies removed first).
    pub fn check_client_cert(
        &self,
        cert: Option<&PeerCert>,
        headers: &mut HeaderMap,
    ) -> Result<(), ProxyError> {
        if let Some(rule) = &self.client_cert {
            rule.check(cert)?;
        }
        if let Some(fwd) = &self.forward_client_cert {
            fwd.apply(cert, headers);
        }
        Ok(())
    }

    /// The bearer token; `None` for an anonymous caller on an optional route.
    fn bearer(&self, headers: &HeaderMap, query: Option<&str>) -> Result<Option<String>, ProxyError> {
        match self.token(headers, query) {
            Some(t) => Ok(Some(t.to_string())),
            None if self.optional => Ok(None),
            None => Err(ProxyError::Unauthenticated {
                reason: "no bearer token".into(),
                invalid: false,
            }),
        }
    }

    /// Checks the request; on success strips the caller's own copies of the forwarded headers,
    /// sets them from the verified claims, and removes a credential read from the query string or
    /// a cookie (it is the caller's, never the upstream's). Returns the claims (none for an
    /// anonymous caller on an optional route).
    pub async fn check(&self, parts: &mut http::request::Parts) -> Result<Option<Arc<Claims>>, ProxyError> {
        let claims = self.verify(&mut parts.headers, parts.uri.query()).await?;
        if let Some(name) = &self.cookie {
            remove_cookie(&mut parts.headers, name);
        }
        let query_names = self.query.iter().chain(match &self.verifier {
            Some(Verifier::ApiKeys(set)) => set.query.as_ref(),
            _ => None,
        });
        for name in query_names {
            if let Some(uri) = without_query_param(&parts.uri, name) {
                parts.uri = uri;
            }
        }
        Ok(claims)
    }

    /// The credentials that replace the caller's towards the upstream, when `side` is the one
    /// they are for: applied at forward time, per side, so legacy credentials never reach modern.
    pub fn apply_upstream_auth(
        &self,
        headers: &mut HeaderMap,
        claims: Option<&Claims>,
        side: Side,
    ) -> Result<(), ProxyError> {
        let applies = match self.auth_side {
            UpstreamAuthSide::Both => true,
            UpstreamAuthSide::Legacy => side == Side::Legacy,
            UpstreamAuthSide::Modern => side == Side::Modern,
        };
        // An anonymous caller on an optional route gets nothing vouched for.
        if !applies || (self.verifier.is_some() && claims.is_none()) {
            return Ok(());
        }
        if self.drop_token {
            headers.remove(AUTHORIZATION);
        }
        for (name, value) in &self.upstream_auth {
            headers.insert(name.clone(), value.clone());
        }
        if let (Some(m), Some(claims)) = (&self.internal_jwt, claims) {
            let v = m
                .token_for(claims)
                .map_err(|e| ProxyError::InternalToken(e.to_string()))?;
            headers.insert(m.header.clone(), v);
        }
        Ok(())
    }

    /// Verifies the caller; on success strips the caller's own copies of the forwarded headers
    /// and sets them from the verified claims. Returns the claims (none for an anonymous caller
    /// on an optional route).
    async fn verify(
        &self,
        headers: &mut HeaderMap,
        query: Option<&str>,
    ) -> Result<Option<Arc<Claims>>, ProxyError> {
        // Strip first, always: a caller must never be able to send `X-User-Id` itself.
        for (_, h) in &self.forward {
            headers.remove(h);
        }
        let Some(verifier) = &self.verifier else {
            // A client-certificate-only route: no token is looked at, none is required.
            return Ok(None);
        };
        let claims = match verifier {
            Verifier::Jwt(provider) => {
                let Some(token) = self.bearer(headers, query)? else {
                    return Ok(None);
                };
                provider.verify(&token).await.map_err(|e| match e {
                    jwt::TokenError::KeysUnavailable(r) => ProxyError::IdentityUnavailable(r),
                    other => ProxyError::Unauthenticated {
                        reason: other.to_string(),
                        invalid: true,
                    },
                })?
            }
            Verifier::Introspection(i) => {
                let Some(token) = self.bearer(headers, query)? else {
                    return Ok(None);
                };
                i.verify(&token).await.map_err(|e| match e {
                    introspection::IntrospectionError::Unavailable { .. } => {
                        ProxyError::IdentityUnavailable(e.to_string())
                    }
                    other => ProxyError::Unauthenticated {
                        reason: other.to_string(),
                        invalid: true,
                    },
                })?
            }
            Verifier::ApiKeys(set) => {
                let from_query = || {
                    query_value(query, set.query.as_ref()?)
                        .filter(|v| !v.is_empty())
                        .map(str::to_string)
                };
                let presented = headers
                    .get(&set.header)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
                    .or_else(from_query);
                let Some(key) = presented else {
                    if self.optional {
                        return Ok(None);
                    }
                    return Err(ProxyError::Unauthenticated {
                        reason: "no API key".into(),
                        invalid: false,
                    });
                };
                // The key itself is never forwarded upstream.
                headers.remove(&set.header);
                let claims = set.verify(&key).ok_or_else(|| ProxyError::Unauthenticated {
                    reason: format!("unknown or expired API key for `{}`", set.name),
                    invalid: true,
                })?;
                Arc::new(claims)
            }
        };
        let have = claims.scopes();
        let missing: Vec<&String> = self.scopes.iter().filter(|s| !have.contains(s)).collect();
        if !missing.is_empty() {
            return Err(ProxyError::InsufficientScope {
                scope: self.scopes.join(" "),
            });
        }
        for (name, allowed) in &self.claims {
            if !claims.get_str(name).is_some_and(|v| allowed.contains(&v)) {
                return Err(ProxyError::Forbidden(format!(
                    "claim `{name}` does not have an allowed value"
                )));
            }
        }
        for (claim, h) in &self.forward {
            if let Some(v) = claims.get_str(claim).and_then(|v| HeaderValue::from_str(&v).ok()) {
                headers.insert(h.clone(), v);
            }
        }
        Ok(Some(claims))
    }
}

/// The URI without every `name=...` pair of its query; `None` when it has none.
fn without_query_param(uri: &http::Uri, name: &str) -> Option<http::Uri> {
    let query = uri.query()?;
    let is_it = |kv: &&str| kv.split_once('=').map_or(*kv, |(k, _)| k) == name;
    if !query.split('&').any(|kv| is_it(&kv)) {
        return None;
    }
    let kept: Vec<&str> = query.split('&').filter(|kv| !is_it(kv)).collect();
    let pq = if kept.is_empty() {
        uri.path().to_string()
    } else {
        format!("{}?{}", uri.path(), kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(http::uri::PathAndQuery::try_from(pq).ok()?);
    http::Uri::from_parts(parts).ok()
}

/// Removes cookie `name` from every `Cookie` header (and a header left empty).
fn remove_cookie(headers: &mut HeaderMap, name: &str) {
    use http::header::COOKIE;
    let has = |v: &str| {
        v.split(';')
            .any(|kv| kv.trim().split_once('=').is_some_and(|(k, _)| k == name))
    };
    if !headers.get_all(COOKIE).iter().any(|v| v.to_str().is_ok_and(has)) {
        return;
    }
    let kept: Vec<String> = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|kv| !kv.is_empty() && kv.split_once('=').is_none_or(|(k, _)| k != name))
        .map(str::to_string)
        .collect();
    headers.remove(COOKIE);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
            headers.insert(COOKIE, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{remove_cookie, without_query_param};
    use http::{HeaderMap, Uri};

    #[test]
    fn a_credential_is_removed_from_the_query_and_the_cookies() {
        let u: Uri = "/a?x=1&access_token=t&y=2&access_token=u".parse().unwrap();
        assert_eq!(without_query_param(&u, "access_token").unwrap(), "/a?x=1&y=2");
        let u: Uri = "/a?access_token=t".parse().unwrap();
        assert_eq!(without_query_param(&u, "access_token").unwrap(), "/a");
        let u: Uri = "/a?x=1".parse().unwrap();
        assert!(without_query_param(&u, "access_token").is_none());

        let mut h = HeaderMap::new();
        h.append("cookie", "a=1; session=tok".parse().unwrap());
        h.append("cookie", "b=2".parse().unwrap());
        remove_cookie(&mut h, "session");
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(h["cookie"], "a=1; b=2");
        let mut h = HeaderMap::new();
        h.insert("cookie", "session=tok".parse().unwrap());
        remove_cookie(&mut h, "session");
        assert!(h.get("cookie").is_none());
    }
}
