//! A listener's settings, compiled once per config snapshot: TLS acceptor, limits, trusted
//! proxies and the HTTP/1 and HTTP/2 connection builders.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use ipnet::IpNet;
use metrics::Gauge;
use tokio_rustls::TlsAcceptor;

use super::tls;
use crate::config::carry::Carry;
use crate::config::file::{ClientAuthMode, ListenerConfig, ListenerLimits, PathParamsMode};
use crate::pipeline::trust::ProxyOnlyHeaders;
use crate::telemetry::metrics::{Metrics, TLS_CERT_EXPIRY};

/// Each TLS listener's session state, by listener name.
pub type TlsSessions = Carry<tls::SessionKey, tls::Sessions>;

/// One listener's settings, compiled once per config snapshot.
pub struct ListenerRuntime {
    pub name: Arc<str>,
    pub bind: SocketAddr,
    pub proto: &'static str,
    pub tls: Option<TlsAcceptor>,
    pub certs: Vec<CertExpiry>,
    pub limits: ListenerLimits,
    pub trusted_proxies: Vec<IpNet>,
    /// Removed from requests of peers that are not trusted proxies.
    pub proxy_only: ProxyOnlyHeaders,
    pub allowed_upgrades: Vec<String>,
    pub path_params: PathParamsMode,
    /// One per protocol, not hyper-util's `auto` builder: [`super::listener`] picks the protocol
    /// itself (ALPN, or a peek at the first bytes), so hyper's read buffer gets the request
    /// from the socket. Behind `auto`'s rewind of its 24 sniffed bytes, that buffer grew to
    /// 16 KiB on every HTTP/1 connection and stayed so while the connection idled.
    pub(super) http1: http1::Builder,
    pub(super) http2: http2::Builder<TokioExecutor>,
}

pub struct CertExpiry {
    pub path: String,
    pub names: Vec<String>,
    pub not_after_unix: i64,
    gauge: Gauge,
}

impl CertExpiry {
    pub fn refresh(&self, now_unix: i64) {
        self.gauge.set((self.not_after_unix - now_unix) as f64);
    }
}

impl ListenerRuntime {
    /// Errors are `(key path below this listener, reason)` so the caller can place them in the file.
    /// `sessions` carries each listener's TLS session state across reloads (read from the
    /// running snapshot's carry, written to the new one's).
    pub fn compile(
        cfg: &ListenerConfig,
        base_dir: &Path,
        metrics: &Metrics,
        sessions: (&TlsSessions, &mut TlsSessions),
    ) -> Result<Self, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let limits = cfg.limits.clone();
        if limits.max_header_bytes.0 < 1024 {
            problems.push((
                "limits.max_header_bytes".into(),
                "must be at least 1024 bytes".into(),
            ));
        }
        if limits.max_connections == 0 {
            problems.push(("limits.max_connections".into(), "must be at least 1".into()));
        }
        for (key, value) in [
            ("limits.header_read_timeout", limits.header_read_timeout),
            ("limits.body_read_timeout", limits.body_read_timeout),
            ("limits.idle_timeout", limits.idle_timeout),
        ] {
            if value.is_zero() {
                problems.push((key.into(), "must be greater than zero".into()));
            }
        }
        if limits.max_concurrent_streams == 0 {
            problems.push((
                "limits.max_concurrent_streams".into(),
                "must be at least 1".into(),
            ));
        }
        let (tls, certs) = match &cfg.tls {
            None => (None, Vec::new()),
            Some(t) => {
                if t.certs.is_empty() {
                    problems.push(("tls.certs".into(), "list at least one certificate".into()));
                }
                let mut loaded = Vec::new();
                for (i, pair) in t.certs.iter().enumerate() {
                    match tls::load_cert(&base_dir.join(&pair.cert), &base_dir.join(&pair.key)) {
                        Ok(c) => loaded.push(c),
                        Err(e) => problems.push((format!("tls.certs[{i}]"), e.to_string())),
                    }
                }
                if !problems.is_empty() {
                    return Err(problems);
                }
                let (client_auth, ca_digest) = match &t.client_auth {
                    None => (None, None),
                    Some(ca) => match tls::load_ca_bundle(&base_dir.join(&ca.ca_file)) {
                        Ok((roots, digest)) => {
                            let optional = ca.mode == ClientAuthMode::Optional;
                            (
                                Some(tls::ClientAuth { roots, optional }),
                                Some((optional, digest)),
                            )
                        }
                        Err(e) => {
                            problems.push(("tls.client_auth.ca_file".into(), e.to_string()));
                            return Err(problems);
                        }
                    },
                };
                let key = tls::SessionKey {
                    tickets: t.session_tickets,
                    cache_size: t.session_cache_size,
                    min_version: t.min_version.clone(),
                    client_auth: ca_digest,
                };
                let (prev, next) = sessions;
                let state = match prev.get(&cfg.name, &key) {
                    Some(s) => s,
                    None => tls::Sessions::new(&key).map_err(|e| vec![("tls".to_string(), e.to_string())])?,
                };
                next.keep(&cfg.name, &key, state.clone());
                match tls::server_config(&loaded, &t.min_version, client_auth, &state) {
                    Ok(sc) => {
                        let certs = loaded
                            .iter()
                            .map(|c| {
                                let path = c.cert_path.display().to_string();
                                let gauge = metrics
                                    .gauge(TLS_CERT_EXPIRY, &[("listener", &cfg.name), ("cert", &path)]);
                                CertExpiry {
                                    path,
                                    names: c.names.clone(),
                                    not_after_unix: c.not_after_unix,
                                    gauge,
                                }
                            })
                            .collect();
                        (Some(TlsAcceptor::from(sc)), certs)
                    }
                    Err(e) => {
                        problems.push(("tls".into(), e.to_string()));
                        (None, Vec::new())
                    }
                }
            }
        };
        let proxy_only = ProxyOnlyHeaders::compile(&cfg.proxy_only_headers).unwrap_or_else(|e| {
            problems.push(("proxy_only_headers".into(), e));
            ProxyOnlyHeaders::default()
        });
        if let Some(bad) = cfg
            .allowed_upgrades
            .iter()
            .find(|u| u.is_empty() || !u.bytes().all(|b| b.is_ascii_graphic() && b != b',' && b != b'/'))
        {
            problems.push((
                "allowed_upgrades".into(),
                format!("`{bad}` is not a protocol name (a token such as `websocket`)"),
            ));
        }
        if cfg.allowed_upgrades.iter().any(|u| u.eq_ignore_ascii_case("h2c")) {
            problems.push((
                "allowed_upgrades".into(),
                "`h2c` would open a tunnel past routing, identity and rate limits; ficus speaks h2c by prior knowledge instead".into(),
            ));
        }
        if !problems.is_empty() {
            return Err(problems);
        }

        let header_limit = usize::try_from(limits.max_header_bytes.0).unwrap_or(usize::MAX);
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            // hyper's own limit is a backstop a little above ours, so that ficus, not hyper,
            // answers the 431 (with a problem+json body). hyper refuses values below 8 KiB.
            .max_buf_size(header_limit.saturating_add(4096).max(8192))
            .keep_alive(true);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_concurrent_streams)
            .max_header_list_size(u32::try_from(header_limit.saturating_mul(2)).unwrap_or(u32::MAX))
            .keep_alive_interval(Some(Duration::from_secs(30)));

        Ok(Self {
            name: Arc::from(cfg.name.as_str()),
            bind: cfg.bind,
            proto: if tls.is_some() { "https" } else { "http" },
            tls,
            certs,
            limits,
            trusted_proxies: cfg.trusted_proxies.clone(),
            proxy_only,
            allowed_upgrades: cfg.allowed_upgrades.clone(),
            path_params: cfg.path_params,
            http1,
            http2,
        })
    }
}
