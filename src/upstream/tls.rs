//! TLS towards upstreams: `https://` endpoints verified against the webpki roots or a custom
//! CA, an SNI override, and a client certificate for upstreams that want mTLS. One rustls
//! `ClientConfig` per upstream, built when a snapshot is compiled.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper_rustls::{DefaultServerNameResolver, FixedServerNameResolver, HttpsConnector, ResolveServerName};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

use crate::config::file::UpstreamTlsConfig;
use crate::server::tls::provider;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamTlsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("ca_file {path}: {reason}")]
    Ca { path: PathBuf, reason: String },
    #[error("client_cert {path}: {reason}")]
    ClientCert { path: PathBuf, reason: String },
    #[error("client_key {path}: {reason}")]
    ClientKey { path: PathBuf, reason: String },
    #[error("set both `client_cert` and `client_key`, or neither")]
    HalfPair,
    #[error("`{0}` is not a DNS name or IP address")]
    Sni(String),
    #[error("`ca_file` and `insecure_skip_verify` contradict each other")]
    CaAndSkip,
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

/// One upstream's TLS settings, compiled.
pub struct UpstreamTls {
    pub config: Arc<ClientConfig>,
    pub sni: Option<ServerName<'static>>,
    /// The settings and the contents of the files they name: pools are shared and kept by this,
    /// so a replaced CA or client certificate gets fresh connections after the reload.
    pub fingerprint: [u8; 32],
}

impl UpstreamTls {
    pub fn build(cfg: &UpstreamTlsConfig, base_dir: &Path) -> Result<Self, UpstreamTlsError> {
        let mut hash = Sha256::new();
        hash.update(serde_json::to_vec(cfg).unwrap_or_default());
        let mut read = |p: &Path| -> Result<(PathBuf, Vec<u8>), UpstreamTlsError> {
            let path = base_dir.join(p);
            let bytes = std::fs::read(&path).map_err(|e| UpstreamTlsError::Read {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            hash.update(&bytes);
            Ok((path, bytes))
        };

        if cfg.ca_file.is_some() && cfg.insecure_skip_verify {
            return Err(UpstreamTlsError::CaAndSkip);
        }
        let roots = match &cfg.ca_file {
            Some(p) => {
                let (path, pem) = read(p)?;
                crate::server::tls::ca_bundle_from_pem(&pem)
                    .map_err(|reason| UpstreamTlsError::Ca { path, reason })?
            }
            None => RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        };
        let client_pair = match (&cfg.client_cert, &cfg.client_key) {
            (None, None) => None,
            (Some(c), Some(k)) => {
                let (cert_path, cert_pem) = read(c)?;
                let chain = CertificateDer::pem_slice_iter(&cert_pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| UpstreamTlsError::ClientCert {
                        path: cert_path.clone(),
                        reason: e.to_string(),
                    })?;
                if chain.is_empty() {
                    return Err(UpstreamTlsError::ClientCert {
                        path: cert_path,
                        reason: "no PEM certificate in the file".into(),
                    });
                }
                let (key_path, key_pem) = read(k)?;
                let key =
                    PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| UpstreamTlsError::ClientKey {
                        path: key_path,
                        reason: e.to_string(),
                    })?;
                Some((chain, key))
            }
            _ => return Err(UpstreamTlsError::HalfPair),
        };
        let sni = cfg
            .sni
            .as_ref()
            .map(|s| ServerName::try_from(s.clone()).map_err(|_| UpstreamTlsError::Sni(s.clone())))
            .transpose()?;

        let builder =
            ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
        let builder = if cfg.insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider())))
        } else {
            builder.with_root_certificates(roots)
        };
        let mut config = match client_pair {
            // Checks that the key belongs to the certificate.
            Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
            None => builder.with_no_client_auth(),
        };
        // The upstream client speaks HTTP/1.1 only (upgrades such as WebSocket ride on it).
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            config: Arc::new(config),
            sni,
            fingerprint: hash.finalize().into(),
        })
    }
}

/// The connector of a pool or a health checker: plain TCP for `http://`, TLS for `https://`
/// (only when the upstream has TLS settings; otherwise an `https://` URL cannot verify).
pub fn connector(tls: Option<&UpstreamTls>, connect_timeout: Duration) -> HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    // The TLS layer above decides by scheme.
    http.enforce_http(false);
    let (config, resolver): (Arc<ClientConfig>, Arc<dyn ResolveServerName + Send + Sync>) = match tls {
        Some(t) => (
            t.config.clone(),
            match &t.sni {
                Some(name) => Arc::new(FixedServerNameResolver::new(name.clone())),
                None => Arc::new(DefaultServerNameResolver::default()),
            },
        ),
        None => (plain_only(), Arc::new(DefaultServerNameResolver::default())),
    };
    HttpsConnector::new(http, config, false, resolver)
}

/// A connector for ficus's own calls to an identity provider (JWKS, introspection): `http://`,
/// or `https://` verified against the webpki roots or, when given, the CAs in `ca_file`.
pub fn idp_connector(
    ca_file: Option<&Path>,
    base_dir: &Path,
    connect_timeout: Duration,
) -> Result<HttpsConnector<HttpConnector>, UpstreamTlsError> {
    let cfg = crate::config::file::UpstreamTlsConfig {
        ca_file: ca_file.map(Path::to_path_buf),
        ..Default::default()
    };
    let tls = UpstreamTls::build(&cfg, base_dir)?;
    Ok(connector(Some(&tls), connect_timeout))
}

/// For pools of `http://` upstreams: trusts nothing, so it can never complete a handshake.
fn plain_only() -> Arc<ClientConfig> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let config = ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .expect("aws-lc-rs supports the default protocol versions")
                .with_root_certificates(RootCertStore::empty())
                .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

/// `insecure_skip_verify`: any certificate for any name. Handshake signatures are still checked,
/// so the connection is at least bound to the key of the certificate that was sent.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_settings_trust_the_webpki_roots() {
        let t = UpstreamTls::build(&UpstreamTlsConfig::default(), Path::new(".")).unwrap();
        assert!(t.sni.is_none());
        assert_eq!(t.config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn contradictions_and_half_pairs_are_refused() {
        let cfg = UpstreamTlsConfig {
            client_cert: Some("c.pem".into()),
            ..Default::default()
        };
        assert!(matches!(
            UpstreamTls::build(&cfg, Path::new(".")),
            Err(UpstreamTlsError::HalfPair)
        ));
        let cfg = UpstreamTlsConfig {
            ca_file: Some("ca.pem".into()),
            insecure_skip_verify: true,
            ..Default::default()
        };
        assert!(matches!(
            UpstreamTls::build(&cfg, Path::new(".")),
            Err(UpstreamTlsError::CaAndSkip)
        ));
        let cfg = UpstreamTlsConfig {
            sni: Some("not a name".into()),
            ..Default::default()
        };
        assert!(matches!(
            UpstreamTls::build(&cfg, Path::new(".")),
            Err(UpstreamTlsError::Sni(_))
        ));
    }

    #[test]
    fn different_settings_give_different_fingerprints() {
        let a = UpstreamTls::build(&UpstreamTlsConfig::default(), Path::new(".")).unwrap();
        let b = UpstreamTls::build(
            &UpstreamTlsConfig {
                sni: Some("legacy.internal".into()),
                ..Default::default()
            },
            Path::new("."),
        )
        .unwrap();
        assert_ne!(a.fingerprint, b.fingerprint);
        assert_eq!(
            a.fingerprint,
            UpstreamTls::build(&UpstreamTlsConfig::default(), Path::new("."))
                .unwrap()
                .fingerprint
        );
    }
}
