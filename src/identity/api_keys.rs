//! API keys: a file of SHA-256 hashes (never the keys themselves), each with an id, an owner,
//! scopes and an optional expiry; several keys per client for rotation. A presented key is
//! hashed and compared in constant time against every entry. The file is read when the config
//! is compiled, so it reloads with it (and is watched with it).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

use aws_lc_rs::constant_time::verify_slices_are_equal;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::jwt::Claims;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    keys: Vec<KeyEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    id: String,
    owner: String,
    /// Hex SHA-256 of the key.
    sha256: String,
    #[serde(default)]
    scopes: Vec<String>,
    /// RFC 3339; past it the key is refused.
    #[serde(default)]
    expires: Option<String>,
}

struct Key {
    id: String,
    owner: String,
    hash: [u8; 32],
    scopes: Vec<String>,
    expires: Option<SystemTime>,
}

/// The claim that carries the id of the API key a caller used (rate-limit keys, logs).
pub const KEY_ID_CLAIM: &str = "api_key_id";

pub struct ApiKeySet {
    pub name: String,
    pub header: http::header::HeaderName,
    pub query: Option<String>,
    keys: Vec<Key>,
}

impl ApiKeySet {
    pub fn load(
        name: &str,
        cfg: &crate::config::file::ApiKeysConfig,
        base_dir: &Path,
    ) -> Result<Self, String> {
        let path = base_dir.join(&cfg.keys_file);
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let file: KeysFile =
            serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut keys = Vec::new();
        for k in file.keys {
            let bytes: Vec<u8> = (0..k.sha256.len())
                .step_by(2)
                .map(|i| {
                    k.sha256
                        .get(i..i + 2)
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                })
                .collect::<Option<_>>()
                .ok_or_else(|| format!("{}: key `{}`: sha256 is not hex", path.display(), k.id))?;
            let hash: [u8; 32] = bytes
                .try_into()
                .map_err(|_| format!("{}: key `{}`: sha256 must be 64 hex digits", path.display(), k.id))?;
            let expires = match &k.expires {
                None => None,
                Some(t) => Some(
                    humantime::parse_rfc3339(t)
                        .map_err(|e| format!("{}: key `{}`: expires: {e}", path.display(), k.id))?,
                ),
            };
            keys.push(Key {
                id: k.id,
                owner: k.owner,
                hash,
                scopes: k.scopes,
                expires,
            });
        }
        let header = http::header::HeaderName::from_bytes(cfg.header.as_bytes())
            .map_err(|_| format!("`{}` is not a header name", cfg.header))?;
        Ok(Self {
            name: name.to_string(),
            header,
            query: cfg.query.clone(),
            keys,
        })
    }

    /// The key's identity as claims (`sub` = key id, `owner`, `scope`), or `None`.
    pub fn verify(&self, presented: &str) -> Option<Claims> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Every entry is compared, in constant time, so timing says nothing about which matched.
        let mut found: Option<&Key> = None;
        for k in &self.keys {
            if verify_slices_are_equal(&k.hash, &digest).is_ok() {
                found = Some(k);
            }
        }
        let k = found?;
        if k.expires.is_some_and(|e| e <= SystemTime::now()) {
            return None;
        }
        let mut claims = BTreeMap::new();
        claims.insert("sub".into(), serde_json::Value::from(k.id.clone()));
        claims.insert(KEY_ID_CLAIM.into(), serde_json::Value::from(k.id.clone()));
        claims.insert("owner".into(), serde_json::Value::from(k.owner.clone()));
        claims.insert("scope".into(), serde_json::Value::from(k.scopes.join(" ")));
        Some(Claims(claims))
    }
}
