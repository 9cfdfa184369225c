//! TLS termination with rustls: several certificates chosen by SNI, TLS 1.2 and 1.3 only,
//! ALPN `h2` and `http/1.1`, optional or required client certificates (mTLS). Certificates are loaded when a snapshot is compiled, so a changed
//! certificate file is picked up by the next reload (the watcher watches these files too).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{
    ClientHello, NoServerSessionStorage, ProducesTickets, ResolvesServerCert, ServerSessionMemoryCache,
    StoresServerSessions, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate {path}: {reason}")]
    Cert { path: PathBuf, reason: String },
    #[error("cannot read private key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("key {key} does not match certificate {cert}: {reason}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("min_version must be \"1.2\" or \"1.3\", not {0:?}")]
    Version(String),
    #[error("cannot use CA bundle {path}: {reason}")]
    CaBundle { path: PathBuf, reason: String },
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

pub struct LoadedCert {
    pub cert_path: PathBuf,
    /// DNS names from the subjectAltName extension (falling back to nothing: CN is obsolete).
    pub names: Vec<String>,
    pub not_after_unix: i64,
    pub key: Arc<CertifiedKey>,
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

pub fn load_cert(cert: &Path, key: &Path) -> Result<LoadedCert, TlsError> {
    let cert_err = |reason: String| TlsError::Cert {
        path: cert.to_path_buf(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    let leaf = chain
        .first()
        .ok_or_else(|| cert_err("no PEM certificate in the file".into()))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf).map_err(|e| cert_err(e.to_string()))?;
    let not_after_unix = parsed.validity().not_after.timestamp();
    let names = match parsed.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(s) => Some(s.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };

    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_path_buf(),
        reason: e.to_string(),
    })?;
    let signing = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| TlsError::Key {
            path: key.to_path_buf(),
            reason: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| TlsError::Mismatch {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(LoadedCert {
        cert_path: cert.to_path_buf(),
        names,
        not_after_unix,
        key: Arc::new(certified),
    })
}

/// Picks a certificate by SNI: exact name first, then `*.parent` wildcard, then the first
/// certificate in the config.
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver")
            .field("exact", &self.exact.keys().collect::<Vec<_>>())
            .field("wildcard", &self.wildcard.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            return Some(self.default.clone());
        };
        let name = name.to_ascii_lowercase();
        if let Some(k) = self.exact.get(&name) {
            return Some(k.clone());
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(k) = self.wildcard.get(parent) {
                return Some(k.clone());
            }
        }
        Some(self.default.clone())
    }
}

/// Every certificate in a PEM bundle, as trust anchors, with the SHA-256 of the file: sessions
/// a client resumes were authenticated against the bundle of their day, so a changed bundle
/// must start a new session store (see [`Sessions`]). An empty bundle is an error: it would
/// trust nothing and fail every handshake.
pub fn load_ca_bundle(path: &Path) -> Result<(RootCertStore, [u8; 32]), TlsError> {
    let err = |reason: String| TlsError::CaBundle {
        path: path.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let roots = ca_bundle_from_pem(&pem).map_err(err)?;
    Ok((roots, Sha256::digest(&pem).into()))
}

pub fn ca_bundle_from_pem(pem: &[u8]) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(pem) {
        let der = der.map_err(|e| e.to_string())?;
        store.add(der).map_err(|e| e.to_string())?;
    }
    if store.is_empty() {
        return Err("no PEM certificate in the file".into());
    }
    Ok(store)
}

/// How a listener asks for client certificates: its trust anchors and whether a client may
/// go without one.
pub struct ClientAuth {
    pub roots: RootCertStore,
    pub optional: bool,
}

/// What lets a returning client skip the full handshake: the ticket keys (TLS 1.3 and 1.2
/// tickets) and the server-side session cache (TLS 1.2 session ids, and TLS 1.3 clients when
/// tickets are off).
///
/// They outlive reloads while the listener's [`SessionKey`] is unchanged; a new ticketer or
/// cache on every reload would turn each reload into a wave of full handshakes. A changed key
/// (another CA bundle or client-auth mode, another protocol floor) starts afresh, so no session
/// authenticated under the old rules resumes under the new ones.
#[derive(Clone)]
pub struct Sessions {
    ticketer: Arc<dyn ProducesTickets>,
    cache: Arc<dyn StoresServerSessions>,
}

/// The settings a session was authenticated under; see [`Sessions`].
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKey {
    pub tickets: bool,
    pub cache_size: usize,
    pub min_version: String,
    pub client_auth: Option<(bool, [u8; 32])>,
}

/// Stands in for the ticketer when tickets are off: rustls's own `enabled()` is false only for
/// its private `NeverProducesTickets`.
#[derive(Debug)]
struct NoTickets;

impl ProducesTickets for NoTickets {
    fn enabled(&self) -> bool {
        false
    }
    fn lifetime(&self) -> u32 {
        0
    }
    fn encrypt(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn decrypt(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

impl Sessions {
    pub fn new(key: &SessionKey) -> Result<Self, TlsError> {
        // aws-lc-rs's ticketer rotates its key every 6 hours and accepts the previous one, so a
        // ticket lives at most 12 hours (RFC 8446 allows 7 days; shorter limits what a stolen
        // ticket key exposes).
        let ticketer: Arc<dyn ProducesTickets> = if key.tickets {
            rustls::crypto::aws_lc_rs::Ticketer::new()?
        } else {
            Arc::new(NoTickets)
        };
        let cache: Arc<dyn StoresServerSessions> = if key.cache_size == 0 {
            Arc::new(NoServerSessionStorage {})
        } else {
            ServerSessionMemoryCache::new(key.cache_size)
        };
        Ok(Self { ticketer, cache })
    }
}

impl fmt::Debug for Sessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sessions")
            .field("tickets", &self.ticketer.enabled())
            .finish()
    }
}

pub fn server_config(
    certs: &[LoadedCert],
    min_version: &str,
    client_auth: Option<ClientAuth>,
    sessions: &Sessions,
) -> Result<Arc<ServerConfig>, TlsError> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match min_version {
        "1.2" => &[&rustls::version::TLS13, &rustls::version::TLS12],
        "1.3" => &[&rustls::version::TLS13],
        other => return Err(TlsError::Version(other.to_string())),
    };
    let default = certs
        .first()
        .map(|c| c.key.clone())
        .ok_or_else(|| TlsError::Rustls(rustls::Error::General("no certificate".into())))?;
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    for c in certs {
        for n in &c.names {
            match n.strip_prefix("*.") {
                Some(parent) => wildcard
                    .entry(parent.to_string())
                    .or_insert_with(|| c.key.clone()),
                None => exact.entry(n.clone()).or_insert_with(|| c.key.clone()),
            };
        }
    }
    let builder = ServerConfig::builder_with_provider(provider()).with_protocol_versions(versions)?;
    let builder = match client_auth {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(ca.roots), provider());
            let verifier = if ca.optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut cfg = builder.with_cert_resolver(Arc::new(SniResolver {
        exact,
        wildcard,
        default,
    }));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    cfg.ticketer = sessions.ticketer.clone();
    cfg.session_storage = sessions.cache.clone();
    // 0-RTT stays off (rustls's default): early data can be replayed, and a legacy backend
    // behind ficus assumes each request arrived once.
    Ok(Arc::new(cfg))
}
