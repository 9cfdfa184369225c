//! A short-lived JWT that ficus signs with its own key for a legacy upstream, so the legacy
//! system trusts one issuer (ficus) whatever the caller's IdP was. Chosen caller claims are
//! copied in. Signing (RSA especially) costs far more than a request otherwise does, so a token
//! is reused for callers with the same copied claims during the first half of its lifetime: every
//! token the upstream sees has at least half its TTL left.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{HeaderName, AUTHORIZATION};
use http::HeaderValue;
use jsonwebtoken::{Algorithm, AlgorithmFamily, EncodingKey, Header};
use sha2::{Digest, Sha256};

use super::jwt::Claims;
use crate::config::file::InternalJwtConfig;

#[derive(Debug, thiserror::Error)]
pub enum InternalJwtError {
    #[error("signing the internal token failed: {0}")]
    Sign(String),
    #[error("the internal token is not a valid header value")]
    Header,
}

pub struct InternalJwt {
    alg: Algorithm,
    key: EncodingKey,
    kid: Option<String>,
    issuer: String,
    audience: String,
    ttl: Duration,
    copy: Vec<String>,
    pub header: HeaderName,
    bearer: bool,
    cache: moka::sync::Cache<[u8; 32], HeaderValue>,
}

impl InternalJwt {
    pub fn new(cfg: &InternalJwtConfig, base_dir: &Path) -> Result<Self, String> {
        let alg = super::jwt::parse_algorithm(&cfg.algorithm)?;
        let key = match (alg.family(), &cfg.key_file, &cfg.secret_env) {
            (AlgorithmFamily::Hmac, None, Some(env)) => {
                let secret =
                    std::env::var(env).map_err(|_| format!("environment variable {env} is not set"))?;
                if secret.len() < 32 {
                    return Err(format!("the HMAC secret in {env} must be at least 32 bytes"));
                }
                EncodingKey::from_secret(secret.as_bytes())
            }
            (AlgorithmFamily::Hmac, _, _) => {
                return Err(format!("{:?} signs with `secret_env` (and no `key_file`)", alg))
            }
            (family, Some(file), None) => {
                let path = base_dir.join(file);
                let pem = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let parse = match family {
                    AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem,
                    AlgorithmFamily::Ec => EncodingKey::from_ec_pem,
                    _ => EncodingKey::from_ed_pem,
                };
                parse(&pem).map_err(|e| format!("{}: not a {alg:?} private key: {e}", path.display()))?
            }
            _ => return Err(format!("{alg:?} signs with `key_file` (a private key in PEM)")),
        };
        if cfg.ttl < Duration::from_secs(2) {
            return Err("`ttl` must be at least 2s".into());
        }
        let header = HeaderName::from_bytes(cfg.header.as_bytes())
            .map_err(|_| format!("`{}` is not a header name", cfg.header))?;
        let me = Self {
            alg,
            key,
            kid: cfg.kid.clone(),
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            ttl: cfg.ttl,
            copy: cfg.copy_claims.clone(),
            bearer: header == AUTHORIZATION,
            header,
            cache: moka::sync::Cache::builder()
                .max_capacity(cfg.cache_entries)
                .time_to_live(cfg.ttl / 2)
                .build(),
        };
        // A key that cannot sign (say, an RSA key too short for aws-lc) is a config error now,
        // not a 500 on the first request.
        me.sign(&Claims::default())
            .map_err(|e| format!("cannot sign with this key: {e}"))?;
        Ok(me)
    }

    /// The header value for a caller with these verified claims.
    pub fn token_for(&self, caller: &Claims) -> Result<HeaderValue, InternalJwtError> {
        let mut h = Sha256::new();
        for name in &self.copy {
            // Length-prefixed, so ("ab","c") and ("a","bc") cannot collide.
            let v = caller.0.get(name).map(|v| v.to_string()).unwrap_or_default();
            h.update((v.len() as u64).to_be_bytes());
            h.update(v.as_bytes());
        }
        let key: [u8; 32] = h.finalize().into();
        if let Some(v) = self.cache.get(&key) {
            return Ok(v);
        }
        let v = self.sign(caller)?;
        self.cache.insert(key, v.clone());
        Ok(v)
    }

    fn sign(&self, caller: &Claims) -> Result<HeaderValue, InternalJwtError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut claims = serde_json::Map::new();
        for name in &self.copy {
            if let Some(v) = caller.0.get(name) {
                claims.insert(name.clone(), v.clone());
            }
        }
        // Set last: a caller's claim can never override who issued this token or for whom.
        claims.insert("iss".into(), self.issuer.clone().into());
        claims.insert("aud".into(), self.audience.clone().into());
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), (now + self.ttl.as_secs()).into());
        let mut header = Header::new(self.alg);
        header.kid = self.kid.clone();
        let token = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| InternalJwtError::Sign(e.to_string()))?;
        let value = if self.bearer {
            format!("Bearer {token}")
        } else {
            token
        };
        let mut v = HeaderValue::from_str(&value).map_err(|_| InternalJwtError::Header)?;
        v.set_sensitive(true);
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(yaml: &str) -> InternalJwtConfig {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn claims(json: serde_json::Value) -> Claims {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn hs256_token_carries_copied_claims_and_issuer_fields_callers_cannot_override() {
        std::env::set_var("FICUS_UNIT_INTERNAL", "0123456789abcdef0123456789abcdef");
        let m = InternalJwt::new(
            &cfg("{ algorithm: HS256, secret_env: FICUS_UNIT_INTERNAL, issuer: ficus, audience: legacy, ttl: 60s, copy_claims: [sub, scope, iss] }"),
            Path::new("."),
        )
        .unwrap();
        let caller =
            claims(serde_json::json!({ "sub": "alice", "scope": "a b", "iss": "evil", "role": "x" }));
        let v = m.token_for(&caller).unwrap();
        let token = v.to_str().unwrap().strip_prefix("Bearer ").unwrap();
        let mut val = jsonwebtoken::Validation::new(Algorithm::HS256);
        val.set_audience(&["legacy"]);
        val.set_issuer(&["ficus"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(
            token,
            &jsonwebtoken::DecodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
            &val,
        )
        .unwrap();
        assert_eq!(data.claims["sub"], "alice");
        assert_eq!(data.claims["scope"], "a b");
        assert_eq!(data.claims["iss"], "ficus");
        assert!(data.claims.get("role").is_none());
        assert_eq!(
            data.claims["exp"].as_u64().unwrap() - data.claims["iat"].as_u64().unwrap(),
            60
        );
        // Same copied claims: the cached token; another caller: another token.
        assert_eq!(m.token_for(&caller).unwrap(), v);
        let bob = claims(serde_json::json!({ "sub": "bob", "scope": "a b" }));
        assert_ne!(m.token_for(&bob).unwrap(), v);
    }

    #[test]
    fn key_kinds_must_fit_the_algorithm() {
        std::env::set_var("FICUS_UNIT_INTERNAL_SHORT", "short");
        let e = |y: &str| InternalJwt::new(&cfg(y), Path::new(".")).err().unwrap();
        assert!(
            e("{ algorithm: HS256, secret_env: FICUS_UNIT_INTERNAL_SHORT, issuer: f, audience: l }")
                .contains("32 bytes")
        );
        assert!(
            e("{ algorithm: ES256, secret_env: FICUS_UNIT_INTERNAL_SHORT, issuer: f, audience: l }")
                .contains("key_file")
        );
        assert!(
            e("{ algorithm: ES256, key_file: /nonexistent.pem, issuer: f, audience: l }")
                .contains("cannot read")
        );
        assert!(e("{ algorithm: none, key_file: x, issuer: f, audience: l }").contains("not a JWT algorithm"));
    }
}
