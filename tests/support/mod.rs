//! The one shared harness for end-to-end tests: real upstream servers on `127.0.0.1:0`, ficus
//! started from a YAML file in a temp dir, and clients for HTTP/1.1, h2c, TLS and raw bytes.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use ficus::config::ConfigSource;
use ficus::gateway::Gateway;

pub type Body = UnsyncBoxBody<Bytes, io::Error>;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|e: Infallible| match e {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new().map_err(|e: Infallible| match e {}).boxed_unsync()
}

// ---------------------------------------------------------------- upstreams

/// A real HTTP server (HTTP/1.1 and h2c) on an ephemeral loopback port.
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start<F, Fut>(handler: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        Self::start_with(handler, None).await
    }

    /// An HTTPS upstream. Each request arrives with `x-tls-sni` (the SNI the client sent) and
    /// `x-tls-client-san` (the SANs of the client certificate, comma-separated) added, so an
    /// echo handler reports them.
    pub async fn start_tls<F, Fut>(handler: F, tls: Arc<rustls::ServerConfig>) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        Self::start_with(handler, Some(tokio_rustls::TlsAcceptor::from(tls))).await
    }

    async fn start_with<F, Fut>(handler: F, tls: Option<tokio_rustls::TlsAcceptor>) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let handler = handler.clone();
                let counter = counter.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => serve_upstream_conn(TokioIo::new(tcp), handler, counter, None).await,
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(tcp).await else {
                                return;
                            };
                            let conn = stream.get_ref().1;
                            let sni = conn.server_name().unwrap_or("").to_string();
                            let sans = conn
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .map(|c| cert_sans(c).join(","))
                                .unwrap_or_default();
                            serve_upstream_conn(TokioIo::new(stream), handler, counter, Some((sni, sans)))
                                .await;
                        }
                    }
                });
            }
        });
        Self { addr, hits, task }
    }

    /// Answers every request with a JSON description of what arrived (see [`Echoed`]).
    pub async fn echo() -> Self {
        Self::start(|req: Request<Incoming>| async move { echo_response(req, "").await }).await
    }

    /// Like [`echo`], tagging answers with `name` so tests can tell upstreams apart.
    pub async fn echo_named(name: &'static str) -> Self {
        Self::start(move |req: Request<Incoming>| async move { echo_response(req, name).await }).await
    }

    /// An upstream that answers every request with `status` and `body`.
    pub async fn failing(status: StatusCode, body: &'static str) -> Self {
        Self::start(move |_req: Request<Incoming>| async move {
            let mut r = Response::new(full(body));
            *r.status_mut() = status;
            r
        })
        .await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn https_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn serve_upstream_conn<I, F, Fut>(
    io: TokioIo<I>,
    handler: F,
    counter: Arc<AtomicUsize>,
    seen: Option<(String, String)>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        counter.fetch_add(1, Ordering::SeqCst);
        if let Some((sni, sans)) = &seen {
            let h = req.headers_mut();
            h.insert("x-tls-sni", sni.parse().expect("sni header"));
            h.insert("x-tls-client-san", sans.parse().expect("san header"));
        }
        let fut = handler(req);
        async move { Ok::<_, Infallible>(fut.await) }
    });
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(io, svc)
        .await;
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the echo upstream saw.
#[derive(Debug, serde::Deserialize, serde::Serialize)]
pub struct Echoed {
    pub name: String,
    pub method: String,
    pub path: String,
    pub version: String,
    pub headers: BTreeMap<String, Vec<String>>,
    pub body_len: u64,
}

impl Echoed {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.first()).map(String::as_str)
    }
}

pub async fn echo_response(req: Request<Incoming>, name: &str) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in &parts.headers {
        headers
            .entry(k.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into());
    }
    // Count the body without holding it, so large uploads stay cheap for the test too.
    let mut body = body;
    let mut body_len = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => body_len += f.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => break,
        }
    }
    let echoed = Echoed {
        name: name.to_string(),
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        version: format!("{:?}", parts.version),
        headers,
        body_len,
    };
    let mut resp = Response::new(full(serde_json::to_vec(&echoed).expect("echo json")));
    resp.headers_mut()
        .insert("content-type", "application/json".parse().expect("ct"));
    resp
}

// ---------------------------------------------------------------- ficus

/// A basic config: listener `main` and the admin API on ephemeral ports, one upstream `app`,
/// one catch-all route. Tests that need more write their own YAML.
pub fn basic_config(upstream: &str) -> String {
    format!(
        "\
log: {{ level: warn, access_log: false }}
listeners:
  - name: main
    bind: 127.0.0.1:0
admin:
  bind: 127.0.0.1:0
reload: {{ watch: false }}
upstreams:
  app:
    endpoints: [\"{upstream}\"]
routes:
  - name: all
    match: {{ path_prefix: / }}
    upstream: app
"
    )
}

/// [`basic_config`] with the listener's `limits` set (a flow mapping's body, e.g.
/// `max_body_bytes: 2GiB`).
pub fn with_limits(upstream: &str, limits: &str) -> String {
    basic_config(upstream).replace(
        "    bind: 127.0.0.1:0\nadmin",
        &format!("    bind: 127.0.0.1:0\n    limits: {{ {limits} }}\nadmin"),
    )
}

/// The YAML every test config repeats, so that a test's own YAML shows only what it is about.
pub mod yaml {
    /// A listener on an ephemeral loopback port; `extra` is more flow-map entries
    /// (`"max_conns: 5"`), or empty.
    pub fn listener(name: &str, extra: &str) -> String {
        let extra = if extra.is_empty() {
            String::new()
        } else {
            format!(", {extra}")
        };
        format!("{{ name: {name}, bind: '127.0.0.1:0'{extra} }}")
    }

    /// An `upstreams:` entry with one endpoint.
    pub fn upstream(name: &str, url: &str) -> String {
        format!("  {name}: {{ endpoints: ['{url}'] }}\n")
    }

    /// A route on `path_prefix` that splits between the upstreams `legacy` and `modern`; each of
    /// `migration` is one more line (or block) under `migration:`.
    pub fn migration_route(name: &str, prefix: &str, migration: &[&str]) -> String {
        let mut out = format!(
            "  - name: {name}\n    match: {{ path_prefix: {prefix} }}\n    migration:\n      \
             legacy: {{ upstream: legacy }}\n      modern: {{ upstream: modern }}\n"
        );
        for block in migration {
            for line in block.lines() {
                out.push_str(&format!("      {line}\n"));
            }
        }
        out
    }

    /// A whole config: quiet logs, no file watching, the admin API and listener `main` on
    /// ephemeral ports, then the upstreams and routes added.
    #[derive(Default)]
    pub struct Config {
        listener_extra: String,
        admin_extra: String,
        upstreams: String,
        routes: String,
        sections: String,
    }

    impl Config {
        pub fn new() -> Self {
            Self::default()
        }

        /// More flow-map entries for listener `main`.
        pub fn listener_extra(mut self, extra: &str) -> Self {
            self.listener_extra = extra.to_string();
            self
        }

        /// More flow-map entries for `admin` (`"token_env: X"`).
        pub fn admin_extra(mut self, extra: &str) -> Self {
            self.admin_extra = format!(", {extra}");
            self
        }

        pub fn upstream(mut self, name: &str, url: &str) -> Self {
            self.upstreams.push_str(&upstream(name, url));
            self
        }

        /// One or more `routes:` entries, as YAML indented by two spaces.
        pub fn route(mut self, route: &str) -> Self {
            self.routes.push_str(route);
            if !route.ends_with('\n') {
                self.routes.push('\n');
            }
            self
        }

        /// A top-level section (`identity:`, `rate_limits:` ...), written after the routes.
        pub fn section(mut self, yaml: &str) -> Self {
            self.sections.push_str(yaml);
            if !yaml.ends_with('\n') {
                self.sections.push('\n');
            }
            self
        }

        pub fn build(&self) -> String {
            format!(
                "log: {{ level: warn, access_log: false }}\n\
                 listeners: [{}]\n\
                 admin: {{ bind: '127.0.0.1:0'{} }}\n\
                 reload: {{ watch: false }}\n\
                 upstreams:\n{}\
                 routes:\n{}{}",
                listener("main", &self.listener_extra),
                self.admin_extra,
                self.upstreams,
                self.routes,
                self.sections
            )
        }
    }
}

/// ficus running in this test's runtime on a config file in its own temp dir.
pub struct Ficus {
    pub gateway: Option<Gateway>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
}

impl Ficus {
    pub async fn start(yaml: &str) -> Self {
        Self::try_start(yaml)
            .await
            .unwrap_or_else(|e| panic!("ficus did not start: {e}"))
    }

    pub async fn try_start(yaml: &str) -> Result<Self, ficus::gateway::StartError> {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, yaml).await
    }

    /// Starts with rollout decisions on a clock the test moves.
    pub async fn start_with_clock(yaml: &str, clock: Arc<ficus::pipeline::rollout::ManualClock>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in_with(dir, yaml, Some(clock))
            .await
            .unwrap_or_else(|e| panic!("ficus did not start: {e}"))
    }

    /// Starts with the config written into `dir` (where a test may have put certificates).
    pub async fn start_in(dir: tempfile::TempDir, yaml: &str) -> Result<Self, ficus::gateway::StartError> {
        Self::start_in_with(dir, yaml, None).await
    }

    async fn start_in_with(
        dir: tempfile::TempDir,
        yaml: &str,
        clock: Option<Arc<ficus::pipeline::rollout::ManualClock>>,
    ) -> Result<Self, ficus::gateway::StartError> {
        let config_path = dir.path().join("ficus.yaml");
        std::fs::write(&config_path, yaml).expect("write config");
        let source = ConfigSource::File(config_path.clone());
        let gateway = match clock {
            Some(c) => Gateway::start_with_clock(source, c).await?,
            None => Gateway::start(source).await?,
        };
        let addr = gateway.addr("main").expect("a listener named `main`");
        let admin = gateway.admin_addr();
        Ok(Self {
            gateway: Some(gateway),
            dir,
            config_path,
            addr,
            admin,
        })
    }

    pub fn gw(&self) -> &Gateway {
        self.gateway.as_ref().expect("running")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// Replaces the config file (atomically, as editors and config management do).
    pub fn write_config(&self, yaml: &str) {
        let tmp = self.dir.path().join(".ficus.yaml.tmp");
        std::fs::write(&tmp, yaml).expect("write config");
        std::fs::rename(&tmp, &self.config_path).expect("rename config");
    }

    pub async fn shutdown(mut self) {
        if let Some(g) = self.gateway.take() {
            g.shutdown().await;
        }
    }
}

// ---------------------------------------------------------------- clients

pub type H1Client = Client<HttpConnector, Body>;

pub fn client() -> H1Client {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2c_client() -> H1Client {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// Reads a whole response, as `send` and `tls_request` do.
    pub async fn collect(resp: Response<Incoming>) -> Result<Self, hyper::Error> {
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn echoed(&self) -> Echoed {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not an echo ({e}): {}", self.text()))
    }

    /// Asserts an RFC 9457 problem document of the given status and `type` suffix.
    pub fn assert_problem(&self, status: u16, kind: &str) {
        assert_eq!(self.status.as_u16(), status, "{}", self.text());
        assert_eq!(
            self.headers.get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/problem+json"),
            "{}",
            self.text()
        );
        let doc = self.json();
        assert_eq!(doc["type"], format!("urn:ficus:problem:{kind}"), "{doc}");
        assert_eq!(doc["status"], status, "{doc}");
    }
}

pub async fn send(client: &H1Client, req: Request<Body>) -> Answer {
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .expect("response within 30 s")
        .expect("request sent");
    Answer::collect(resp).await.expect("response body")
}

pub async fn get(url: &str) -> Answer {
    send(&client(), Request::get(url).body(empty()).expect("request")).await
}

/// Writes raw bytes and returns everything the server sends until it closes (or 10 s pass).
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(request).await.expect("write");
    read_all(&mut tcp, Duration::from_secs(10)).await
}

pub async fn read_all(tcp: &mut TcpStream, within: Duration) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(within, tcp.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Writes one HTTP/1.1 request on an open stream (TCP or TLS) and asserts that the answer, read
/// within 5 s, is a 200; the stream stays open for what the test does next.
pub async fn expect_200_on<S>(stream: &mut S, request: &[u8])
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream.write_all(request).await.expect("write");
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("an answer within 5 s")
        .expect("read");
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
}

/// Writes `byte` every 100 ms, reading whatever comes back, until the peer closes the connection
/// (how long that took) or `max` has passed (`None`). For timeouts that a trickling client must
/// still meet.
pub async fn trickle_until_closed(tcp: &mut TcpStream, byte: &[u8], max: Duration) -> Option<Duration> {
    let started = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    while started.elapsed() < max {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if tcp.write_all(byte).await.is_err() {
            return Some(started.elapsed());
        }
        match tokio::time::timeout(Duration::from_millis(1), tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            // Bytes the server still had for us (the rest of an answer, a TLS ticket or
            // alert), or nothing yet.
            Ok(Ok(_)) | Err(_) => {}
        }
    }
    None
}

/// The status code of the first response in a raw HTTP/1.1 answer.
pub fn raw_status(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"))
}

// ---------------------------------------------------------------- TLS

pub struct TestCert {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub der: rustls_pki_types::CertificateDer<'static>,
    /// PKCS#8 DER of the private key.
    pub key_der: Option<Vec<u8>>,
}

/// A self-signed certificate for `names`, written as PEM into `dir` under `stem`.
pub fn make_cert(dir: &Path, stem: &str, names: &[&str]) -> TestCert {
    let ck = rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .expect("rcgen");
    let cert_path = dir.join(format!("{stem}.pem"));
    let key_path = dir.join(format!("{stem}.key"));
    std::fs::write(&cert_path, ck.cert.pem()).expect("write cert");
    std::fs::write(&key_path, ck.signing_key.serialize_pem()).expect("write key");
    TestCert {
        cert_path,
        key_path,
        der: ck.cert.der().clone(),
        key_der: Some(ck.signing_key.serialize_der()),
    }
}

/// A test certificate authority; [`TestCa::issue`] signs leaf certificates with it.
pub struct TestCa {
    /// The CA certificate (PEM file and DER); its `key_path` is not written.
    pub cert: TestCert,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    /// A new CA whose certificate is written into `dir` as `{stem}.pem`.
    pub fn new(dir: &Path, stem: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{stem} test CA"));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().expect("ca key");
        let cert = params.self_signed(&key).expect("ca cert");
        let cert_path = dir.join(format!("{stem}.pem"));
        std::fs::write(&cert_path, cert.pem()).expect("write ca");
        Self {
            cert: TestCert {
                cert_path,
                key_path: dir.join(format!("{stem}.key-not-written")),
                der: cert.der().clone(),
                key_der: None,
            },
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A leaf certificate with common name `stem`, signed by this CA, written into `dir`. A SAN
    /// with `://` is a URI SAN, one that parses as an IP address an IP SAN, else a DNS name.
    /// It is usable both as a server and as a client certificate.
    pub fn issue(&self, dir: &Path, stem: &str, sans: &[&str]) -> TestCert {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, stem);
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Corp");
        params.subject_alt_names = sans
            .iter()
            .map(|s| {
                if s.contains("://") {
                    rcgen::SanType::URI((*s).try_into().expect("uri san"))
                } else if let Ok(ip) = s.parse() {
                    rcgen::SanType::IpAddress(ip)
                } else {
                    rcgen::SanType::DnsName((*s).try_into().expect("dns san"))
                }
            })
            .collect();
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        let cert_path = dir.join(format!("{stem}.pem"));
        let key_path = dir.join(format!("{stem}.key"));
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        TestCert {
            cert_path,
            key_path,
            der: cert.der().clone(),
            key_der: Some(key.serialize_der()),
        }
    }
}

impl TestCert {
    pub fn key(&self) -> rustls_pki_types::PrivateKeyDer<'static> {
        let der = self.key_der.clone().expect("a certificate with its key");
        rustls_pki_types::PrivateKeyDer::Pkcs8(der.into())
    }
}

/// URI, DNS and IP SANs of a certificate, as text.
pub fn cert_sans(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(s)
            | x509_parser::extensions::GeneralName::DNSName(s) => Some(s.to_string()),
            _ => None,
        })
        .collect()
}

/// A rustls server config for a test HTTPS upstream: `cert` as its certificate, and when
/// `client_ca` is given, a client certificate signed by it is required.
pub fn upstream_tls(cert: &TestCert, client_ca: Option<&TestCa>) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.cert.der.clone()).expect("client ca");
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .expect("verifier");
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut cfg = builder
        .with_single_cert(vec![cert.der.clone()], cert.key())
        .expect("server cert");
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// A TLS connection to `addr` with SNI `sni`, trusting `roots`, offering `alpn`.
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    roots: &[&rustls_pki_types::CertificateDer<'static>],
    alpn: &[&[u8]],
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, io::Error> {
    tls_connect_as(addr, sni, roots, alpn, None).await
}

/// Like [`tls_connect`], presenting `client` as the client certificate.
pub async fn tls_connect_as(
    addr: SocketAddr,
    sni: &str,
    roots: &[&rustls_pki_types::CertificateDer<'static>],
    alpn: &[&[u8]],
    client: Option<&TestCert>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, io::Error> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add((*r).clone()).expect("root");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(store);
    let mut cfg = match client {
        None => builder.with_no_client_auth(),
        Some(c) => builder
            .with_client_auth_cert(vec![c.der.clone()], c.key())
            .expect("client cert"),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from(sni.to_string()).expect("server name");
    connector.connect(name, tcp).await
}

/// Sends one request over an established TLS stream, speaking h2 if ALPN chose it.
pub async fn tls_request(
    stream: tokio_rustls::client::TlsStream<TcpStream>,
    req: Request<Body>,
) -> Result<Answer, hyper::Error> {
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(stream);
    let resp = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        sender.send_request(req).await?
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        sender.send_request(req).await?
    };
    Answer::collect(resp).await
}

/// The value of the first Prometheus sample line that starts with `series`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Polls `f` until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The control for "nothing reached the upstream": a request that should pass does reach `up`,
/// so a count that stayed put meant the upstream was watched and left alone.
pub async fn assert_reaches(up: &Upstream, request: impl Future<Output = Answer>) {
    let before = up.hits();
    let a = request.await;
    assert!(
        a.status.as_u16() < 400,
        "the control request failed: {} {}",
        a.status,
        a.text()
    );
    assert_eq!(
        up.hits(),
        before + 1,
        "the control request did not reach the upstream"
    );
}

/// A loopback port nobody listens on right now (bound, read, released): for servers the test
/// starts later on it, or as an address that refuses connections.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("addr")
        .port()
}

// ---------------------------------------------------------------- Redis

/// A real `redis-server` on a free loopback port, stopped on drop. `.ci/run` installs it.
pub struct Redis {
    child: Option<std::process::Child>,
    pub port: u16,
    pub url: String,
}

impl Redis {
    pub async fn start() -> Self {
        let port = free_port();
        Self::start_on(port).await
    }

    /// On a given port: how a test brings a killed Redis back where ficus expects it.
    pub async fn start_on(port: u16) -> Self {
        Self::start_with(port, &[]).await
    }

    pub async fn start_with(port: u16, extra: &[&str]) -> Self {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server; .ci/run does it)");
        let up = eventually(Duration::from_secs(10), || async move {
            let Ok(mut tcp) = TcpStream::connect(("127.0.0.1", port)).await else {
                return false;
            };
            if tcp.write_all(b"PING\r\n").await.is_err() {
                return false;
            }
            let mut buf = [0u8; 7];
            tokio::time::timeout(Duration::from_secs(1), tcp.read_exact(&mut buf))
                .await
                .is_ok_and(|r| r.is_ok())
                && &buf == b"+PONG\r\n"
        })
        .await;
        assert!(up, "redis-server did not answer PING on port {port}");
        Self {
            child: Some(child),
            port,
            url: format!("redis://127.0.0.1:{port}"),
        }
    }

    /// Kills the server (SIGKILL: no goodbye to connected clients).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A plain connection for assertions on what ficus stored or sent.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test redis")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A real three-master Redis Cluster on free loopback ports, stopped on drop.
pub struct RedisCluster {
    nodes: Vec<Redis>,
    _dir: tempfile::TempDir,
    pub urls: Vec<String>,
}

impl RedisCluster {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let conf = dir.path().join(format!("nodes-{port}.conf"));
            nodes.push(
                Redis::start_with(
                    port,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        &conf.to_string_lossy(),
                    ],
                )
                .await,
            );
        }
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli comes with redis-server (redis-tools)");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        // Every node, not just the first: the slot map reaches the others by gossip, and until it
        // has, a node answers CLUSTERDOWN for the slots it serves.
        let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
        let ok = eventually(Duration::from_secs(20), || {
            let ports = ports.clone();
            async move {
                ports.iter().all(|port| {
                    std::process::Command::new("redis-cli")
                        .args(["-p", &port.to_string(), "cluster", "info"])
                        .output()
                        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
                })
            }
        })
        .await;
        assert!(ok, "the test cluster never reached cluster_state:ok");
        let urls = nodes.iter().map(|n| n.url.clone()).collect();
        Self {
            nodes,
            _dir: dir,
            urls,
        }
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }
}
