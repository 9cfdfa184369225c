//! Builds the identity section (JWT providers, API-key sets, introspection endpoints) and each
//! route's `identity`, validating them beside the code that runs them.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::api_keys::ApiKeySet;
use super::introspection::Introspector;
use super::jwt::{JwtProvider, MIN_JWKS_REFRESH};
use super::{RouteIdentity, Verifier};
use crate::config::carry::Carry;
use crate::config::file::{IdentityConfig, IntrospectionConfig, JwtProviderConfig, RouteIdentityConfig};
use crate::config::problems::{Problems, Section};
use crate::telemetry::metrics::Metrics;

/// Identity state that outlives a reload while its config is unchanged: a provider's keys and
/// verified-token cache, an introspection endpoint's answer cache.
#[derive(Default)]
pub struct Kept {
    pub jwt: Carry<JwtProviderConfig, Arc<JwtProvider>>,
    pub introspection: Carry<IntrospectionConfig, Arc<Introspector>>,
}

/// The verifiers the identity section defines, by name.
#[derive(Default)]
pub struct Verifiers {
    pub jwt: BTreeMap<String, Arc<JwtProvider>>,
    pub api_keys: BTreeMap<String, Arc<ApiKeySet>>,
    pub introspection: BTreeMap<String, Arc<Introspector>>,
}

pub fn compile(
    cfg: &IdentityConfig,
    p: &mut Problems<'_>,
    metrics: &Metrics,
    prev: &Kept,
    next: &mut Kept,
) -> Verifiers {
    let mut out = Verifiers::default();
    for (name, pc) in &cfg.jwt {
        if let Some(v) = jwt_provider(
            name,
            pc,
            &mut p.at(format!("identity.jwt.{name}")),
            metrics,
            prev,
            next,
        ) {
            out.jwt.insert(name.clone(), v);
        }
    }
    for (name, k) in &cfg.api_keys {
        let mut sec = p.at(format!("identity.api_keys.{name}"));
        sec.file(&k.keys_file);
        match ApiKeySet::load(name, k, sec.base_dir()) {
            Ok(set) => {
                out.api_keys.insert(name.clone(), Arc::new(set));
            }
            Err(reason) => sec.error("", reason),
        }
    }
    for (name, ic) in &cfg.introspection {
        let mut sec = p.at(format!("identity.introspection.{name}"));
        check_introspection(ic, &mut sec);
        match Introspector::new(name, ic, sec.base_dir(), metrics) {
            Ok(fresh) => {
                let kept = next
                    .introspection
                    .carry_or(&prev.introspection, name, ic, || Arc::new(fresh));
                out.introspection.insert(name.clone(), kept);
            }
            Err(reason) => sec.error("", reason),
        }
    }
    out
}

fn jwt_provider(
    name: &str,
    pc: &JwtProviderConfig,
    sec: &mut Section<'_, '_>,
    metrics: &Metrics,
    prev: &Kept,
    next: &mut Kept,
) -> Option<Arc<JwtProvider>> {
    if pc.issuer.is_empty() || pc.audiences.is_empty() {
        sec.error("", "set `issuer` and at least one audience");
    }
    if pc.jwks_refresh < MIN_JWKS_REFRESH {
        sec.error(
            "jwks_refresh",
            format!(
                "must be at least {MIN_JWKS_REFRESH:?}: a shorter interval hammers the identity provider"
            ),
        );
    }
    if pc.jwks_timeout.is_zero() {
        sec.error("jwks_timeout", "must be greater than zero");
    }
    for file in pc.pem_file.iter().chain(pc.jwk_file.iter()) {
        sec.file(file);
    }
    // Built afresh to validate and to read the key files; the running provider is kept (with its
    // keys and verified-token cache) while its config and its key files are unchanged.
    let fresh = match JwtProvider::new(name, pc, sec.base_dir(), metrics) {
        Ok(f) => f,
        Err(reason) => {
            sec.error("", reason);
            return None;
        }
    };
    let kept = prev.jwt.get(name, pc).filter(|old| old.static_keys_match(&fresh));
    let provider = match kept {
        Some(old) => old,
        None => {
            // Start from the keys the running provider has fetched, so a reload during an IdP
            // outage does not turn every token into a 503.
            if let Some(old) = prev.jwt.any(name) {
                fresh.inherit_jwks(old);
            }
            Arc::new(fresh)
        }
    };
    next.jwt.keep(name, pc, provider.clone());
    Some(provider)
}

/// "Active" only says the IdP issued the token, possibly for another resource server or
/// client: the answer must be tied to this gateway, unless the operator says not.
fn check_introspection(ic: &IntrospectionConfig, sec: &mut Section<'_, '_>) {
    if ic.allow_any_audience && !ic.audiences.is_empty() {
        sec.error("allow_any_audience", "contradicts `audiences`: keep one of them");
    } else if !ic.allow_any_audience && ic.audiences.is_empty() && ic.allowed_client_ids.is_empty() {
        sec.error(
            "",
            "set `audiences` or `allowed_client_ids` (which tokens are meant for this gateway), \
             or `allow_any_audience: true` to accept any active token of the IdP",
        );
    }
    for (key, list) in [
        ("audiences", &ic.audiences),
        ("allowed_client_ids", &ic.allowed_client_ids),
    ] {
        for (i, v) in list.iter().enumerate() {
            if v.is_empty() {
                sec.error(&format!("{key}[{i}]"), "must not be empty");
            }
        }
    }
    if ic.issuer.as_deref() == Some("") {
        sec.error("issuer", "must not be empty");
    }
}

/// A route's `identity` section. `client_auth_listener` says whether any listener asks callers
/// for a certificate.
pub fn route_identity(
    ic: &RouteIdentityConfig,
    verifiers: &Verifiers,
    sec: &mut Section<'_, '_>,
    client_auth_listener: bool,
) -> Option<RouteIdentity> {
    if let Some(key) = ic
        .upstream_auth
        .as_ref()
        .and_then(|u| u.jwt.as_ref()?.key_file.as_ref())
    {
        sec.file(key);
    }
    let named = |sec: &mut Section<'_, '_>, key: &str, what: &str, found: Option<Verifier>, name: &str| {
        if found.is_none() {
            sec.error(key, format!("no {what} named `{name}`"));
        }
        found
    };
    let verifier = match (&ic.jwt, &ic.api_keys, &ic.introspection) {
        (None, None, Some(name)) => named(
            sec,
            "introspection",
            "introspection endpoint",
            verifiers
                .introspection
                .get(name)
                .cloned()
                .map(Verifier::Introspection),
            name,
        )?,
        (Some(name), None, None) => named(
            sec,
            "jwt",
            "JWT provider",
            verifiers.jwt.get(name).cloned().map(Verifier::Jwt),
            name,
        )?,
        (None, Some(name), None) => named(
            sec,
            "api_keys",
            "API-key set",
            verifiers.api_keys.get(name).cloned().map(Verifier::ApiKeys),
            name,
        )?,
        (None, None, None) if ic.client_cert.is_some() || ic.forward_client_cert.is_some() => {
            return build(ic, None, sec, client_auth_listener);
        }
        _ => {
            sec.error(
                "",
                "set one of `jwt`, `api_keys` or `introspection`, or `client_cert`",
            );
            return None;
        }
    };
    build(ic, Some(verifier), sec, client_auth_listener)
}

fn build(
    ic: &RouteIdentityConfig,
    verifier: Option<Verifier>,
    sec: &mut Section<'_, '_>,
    client_auth_listener: bool,
) -> Option<RouteIdentity> {
    match RouteIdentity::new(ic, verifier, sec.base_dir()) {
        Ok(i) => {
            if ic.client_cert.is_some() && !client_auth_listener {
                sec.warn(
                    "client_cert",
                    "no listener has `tls.client_auth`, so no caller can present a certificate",
                );
            }
            Some(i)
        }
        Err(reason) => {
            sec.error("", reason);
            None
        }
    }
}
