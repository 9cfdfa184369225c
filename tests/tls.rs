//! TLS termination: certificates chosen by SNI, ALPN h2, protocol versions, and certificate
//! reload on file change. Certificates are generated here with rcgen; none is committed.
#![allow(clippy::unwrap_used)] // a test that cannot go on should stop right there

mod support;

use std::sync::Arc;
use std::time::Duration;

use http::Request;
use support::*;

fn tls_config(upstream: &str, certs: &[&TestCert], extra_tls: &str, watch: bool) -> String {
    let list: Vec<String> = certs
        .iter()
        .map(|c| {
            format!(
                "{{ cert: '{}', key: '{}' }}",
                c.cert_path.display(),
                c.key_path.display()
            )
        })
        .collect();
    format!(
        "\
log: {{ level: warn, access_log: false }}
listeners:
  - name: main
    bind: 127.0.0.1:0
    tls:
      certs: [{}]
      {extra_tls}
admin: {{ bind: '127.0.0.1:0' }}
reload: {{ watch: {watch}, debounce: 50ms }}
upstreams:
  app: {{ endpoints: ['{upstream}'] }}
routes:
  - name: all
    match: {{ path_prefix: / }}
    upstream: app
",
        list.join(", ")
    )
}

fn get_req(host: &str) -> Request<Body> {
    Request::get(format!("https://{host}/tls"))
        .header("host", host)
        .body(empty())
        .unwrap()
}

#[tokio::test]
async fn certificate_is_chosen_by_sni() {
    let up = Upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(dir.path(), "a", &["a.test"]);
    let b = make_cert(dir.path(), "b", &["*.b.test"]);
    let yaml = tls_config(&up.url(), &[&a, &b], "", false);
    let f = Ficus::start_in(dir, &yaml).await.unwrap();

    // Each name verifies only against its own certificate.
    let s = tls_connect(f.addr, "a.test", &[&a.der], &[b"http/1.1"])
        .await
        .expect("a.test with cert a");
    let ans = tls_request(s, get_req("a.test")).await.unwrap();
    assert_eq!(ans.status, 200);
    assert_eq!(ans.echoed().header("x-forwarded-proto"), Some("https"));
    assert!(
        tls_connect(f.addr, "a.test", &[&b.der], &[]).await.is_err(),
        "a.test must not get cert b"
    );

    let s = tls_connect(f.addr, "api.b.test", &[&b.der], &[])
        .await
        .expect("api.b.test with wildcard cert b");
    assert_eq!(tls_request(s, get_req("api.b.test")).await.unwrap().status, 200);

    // An unknown name gets the first certificate.
    let err = tls_connect(f.addr, "unknown.test", &[&a.der], &[])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("NotValidForName") || err.contains("not valid for"),
        "{err}"
    );
    f.shutdown().await;
}

#[tokio::test]
async fn alpn_negotiates_h2_and_http1() {
    let up = Upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(dir.path(), "a", &["a.test"]);
    let f = Ficus::start_in(dir, &tls_config(&up.url(), &[&a], "", false))
        .await
        .unwrap();

    let s = tls_connect(f.addr, "a.test", &[&a.der], &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let ans = tls_request(s, get_req("a.test")).await.unwrap();
    assert_eq!(ans.status, 200);
    assert_eq!(ans.echoed().header("host"), Some("a.test"));

    let s = tls_connect(f.addr, "a.test", &[&a.der], &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(tls_request(s, get_req("a.test")).await.unwrap().status, 200);
    f.shutdown().await;
}

/// Over TLS the idle timeout counts the bytes HTTP sees. After a request, a client that trickles a
/// TLS record a byte at a time produces no plaintext, so there is no head for the header-read
/// timeout to time; it must still meet the idle timeout rather than hold the connection forever.
#[tokio::test]
async fn a_tls_record_trickled_after_a_request_is_closed_at_the_idle_timeout() {
    use tokio::io::AsyncWriteExt;
    let up = Upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(dir.path(), "a", &["a.test"]);
    let yaml = tls_config(&up.url(), &[&a], "", false).replace(
        "    bind: 127.0.0.1:0\n",
        "    bind: 127.0.0.1:0\n    limits: { idle_timeout: 800ms, header_read_timeout: 300ms }\n",
    );
    let f = Ficus::start_in(dir, &yaml).await.unwrap();
    let mut s = tls_connect(f.addr, "a.test", &[&a.der], &[b"http/1.1"])
        .await
        .unwrap();
    expect_200_on(&mut s, b"GET /first HTTP/1.1\r\nHost: a.test\r\n\r\n").await;

    let (mut tcp, _) = s.into_inner();
    // An application-data record that announces 16 KiB, then its bytes one at a time.
    tcp.write_all(&[0x17, 0x03, 0x03, 0x40, 0x00]).await.unwrap();
    let closed = trickle_until_closed(&mut tcp, &[0], Duration::from_secs(5))
        .await
        .expect("the connection was still open after 5 s of a trickled record");
    assert!(closed < Duration::from_secs(3), "{closed:?}");
    f.shutdown().await;
}

async fn connect_with_only(
    addr: std::net::SocketAddr,
    root: &rustls_pki_types::CertificateDer<'static>,
    version: &'static rustls::SupportedProtocolVersion,
) -> std::io::Result<rustls::ProtocolVersion> {
    let cfg = resuming_client(root, version, None);
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("a.test").unwrap();
    let s = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await?;
    Ok(s.get_ref().1.protocol_version().unwrap())
}

#[tokio::test]
async fn tls_12_and_13_are_offered_and_min_version_is_enforced() {
    let up = Upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(dir.path(), "a", &["a.test"]);
    let f = Ficus::start_in(dir, &tls_config(&up.url(), &[&a], "", false))
        .await
        .unwrap();
    assert_eq!(
        connect_with_only(f.addr, &a.der, &rustls::version::TLS12)
            .await
            .unwrap(),
        rustls::ProtocolVersion::TLSv1_2
    );
    assert_eq!(
        connect_with_only(f.addr, &a.der, &rustls::version::TLS13)
            .await
            .unwrap(),
        rustls::ProtocolVersion::TLSv1_3
    );
    f.shutdown().await;

    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(dir.path(), "a", &["a.test"]);
    let f = Ficus::start_in(dir, &tls_config(&up.url(), &[&a], "min_version: '1.3'", false))
        .await
        .unwrap();
    assert!(connect_with_only(f.addr, &a.der, &rustls::version::TLS12)
        .await
        .is_err());
    assert_eq!(
        connect_with_only(f.addr, &a.der, &rustls::version::TLS13)
            .await
            .unwrap(),
        rustls::ProtocolVersion::TLSv1_3
    );
    f.shutdown().await;
}

#[tokio::test]
async fn plain_http_on_a_tls_listener_is_not_served() {
    let up = Upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(dir.path(), "a", &["a.test"]);
    let f = Ficus::start_in(dir, &tls_config(&up.url(), &[&a], "", false))
        .await
        .unwrap();
    let answer = raw(f.addr, b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    assert!(!answer.contains("HTTP/1.1 200"), "{answer}");
    assert_eq!(up.hits(), 0);
    f.shutdown().await;
}

#[tokio::test]
async fn replaced_certificate_files_are_served_without_restart() {
    let up = Upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let old = make_cert(dir.path(), "a", &["a.test"]);
    let f = Ficus::start_in(dir, &tls_config(&up.url(), &[&old], "", true))
        .await
        .unwrap();
    assert!(tls_connect(f.addr, "a.test", &[&old.der], &[]).await.is_ok());

    // Write the new pair next to the old one, then rename over it, as cert-manager and certbot do.
    let staging = tempfile::tempdir_in(f.dir.path()).unwrap();
    let new = make_cert(staging.path(), "a", &["a.test"]);
    std::fs::rename(&new.key_path, &old.key_path).unwrap();
    std::fs::rename(&new.cert_path, &old.cert_path).unwrap();

    let switched = eventually(Duration::from_secs(10), || async {
        tls_connect(f.addr, "a.test", &[&new.der], &[]).await.is_ok()
    })
    .await;
    assert!(switched, "the new certificate was not served within 10 s");
    assert!(tls_connect(f.addr, "a.test", &[&old.der], &[]).await.is_err());
    let status = get(&f.admin_url("/admin/config")).await.json();
    assert_eq!(status["version"], 2, "{status}");
    f.shutdown().await;
}

#[tokio::test]
async fn certificate_expiry_is_exported() {
    let up = Upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(dir.path(), "a", &["a.test"]);
    let f = Ficus::start_in(dir, &tls_config(&up.url(), &[&a], "", false))
        .await
        .unwrap();
    let found = eventually(Duration::from_secs(5), || async {
        let m = get(&f.admin_url("/metrics")).await.text();
        m.lines().any(|l| {
            l.starts_with("ficus_tls_cert_expiry_seconds{")
                && l.contains("listener=\"main\"")
                && l.rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(|v| v > 86400.0)
        })
    })
    .await;
    assert!(found, "{}", get(&f.admin_url("/metrics")).await.text());
    f.shutdown().await;
}

#[tokio::test]
async fn missing_certificate_is_a_config_error_with_its_line() {
    let up = Upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(dir.path(), "a", &["a.test"]);
    std::fs::remove_file(&a.cert_path).unwrap();
    let err = Ficus::start_in(dir, &tls_config(&up.url(), &[&a], "", false))
        .await
        .err()
        .expect("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("ficus.yaml:6: listeners[0].tls.certs[0]: cannot read certificate"),
        "{msg}"
    );
}

/// A certificate mounted from a Kubernetes Secret (cert-manager's rotation): `tls.pem ->
/// ..data/tls.pem`, and the kubelet renames a new `..data` link over the old one. The path in
/// the config never changes; where it leads does.
#[tokio::test]
async fn a_certificate_rotated_in_a_kubernetes_secret_is_served() {
    use std::os::unix::fs::symlink;
    let up = Upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("tls-secret");
    let version = |name: &str| {
        let folder = secret.join(name);
        std::fs::create_dir_all(&folder).unwrap();
        make_cert(&folder, "tls", &["a.test"])
    };
    let old = version("..2026_11_30_10_00_00.1");
    symlink("..2026_11_30_10_00_00.1", secret.join("..data")).unwrap();
    symlink("..data/tls.pem", secret.join("tls.pem")).unwrap();
    symlink("..data/tls.key", secret.join("tls.key")).unwrap();
    let mounted = TestCert {
        cert_path: secret.join("tls.pem"),
        key_path: secret.join("tls.key"),
        der: old.der.clone(),
        key_der: None,
    };
    let f = Ficus::start_in(dir, &tls_config(&up.url(), &[&mounted], "", true))
        .await
        .unwrap();
    assert!(tls_connect(f.addr, "a.test", &[&old.der], &[]).await.is_ok());

    let new = version("..2026_11_30_11_00_00.2");
    symlink("..2026_11_30_11_00_00.2", secret.join("..data_tmp")).unwrap();
    std::fs::rename(secret.join("..data_tmp"), secret.join("..data")).unwrap();
    let switched = eventually(Duration::from_secs(10), || async {
        tls_connect(f.addr, "a.test", &[&new.der], &[]).await.is_ok()
    })
    .await;
    assert!(switched, "the rotated certificate was not served within 10 s");
    f.shutdown().await;
}

/// A client trusting `root`, offering only `version`, presenting `cert` when given. It remembers
/// sessions (rustls keeps them per server name in its config) for as long as it is reused.
fn resuming_client(
    root: &rustls_pki_types::CertificateDer<'static>,
    version: &'static rustls::SupportedProtocolVersion,
    cert: Option<&TestCert>,
) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    store.add(root.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(store);
    let cfg = match cert {
        None => builder.with_no_client_auth(),
        Some(c) => builder
            .with_client_auth_cert(vec![c.der.clone()], c.key())
            .unwrap(),
    };
    Arc::new(cfg)
}

/// Connects, sends one request (TLS 1.3 tickets arrive after the handshake, so the answer must
/// be read for the client to hold one) and says how the handshake went.
async fn handshake_kind(
    addr: std::net::SocketAddr,
    cfg: &Arc<rustls::ClientConfig>,
) -> std::io::Result<rustls::HandshakeKind> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("a.test").unwrap();
    let s = tokio_rustls::TlsConnector::from(cfg.clone())
        .connect(name, tcp)
        .await?;
    let kind = s.get_ref().1.handshake_kind().unwrap();
    let ans = tls_request(s, get_req("a.test"))
        .await
        .map_err(std::io::Error::other)?;
    assert_eq!(ans.status, 200);
    Ok(kind)
}

#[tokio::test]
async fn returning_clients_resume_by_default_with_tls13_and_tls12() {
    use rustls::HandshakeKind::{Full, Resumed};
    let up = Upstream::echo().await;
    // By default (tickets and the cache) a returning client resumes. Tickets off: the session
    // cache still resumes (TLS 1.2 session ids, TLS 1.3 stateful tickets); with the cache off
    // too, every handshake is full.
    for (extra, want) in [
        ("", Resumed),
        ("session_tickets: false", Resumed),
        ("session_tickets: false\n      session_cache_size: 0", Full),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let a = make_cert(dir.path(), "a", &["a.test"]);
        let f = Ficus::start_in(dir, &tls_config(&up.url(), &[&a], extra, false))
            .await
            .unwrap();
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let client = resuming_client(&a.der, version, None);
            assert_eq!(handshake_kind(f.addr, &client).await.unwrap(), Full);
            assert_eq!(
                handshake_kind(f.addr, &client).await.unwrap(),
                want,
                "{extra:?} {version:?}"
            );
        }
        f.shutdown().await;
    }
}

#[tokio::test]
async fn sessions_survive_a_reload_but_not_a_replaced_client_ca() {
    use rustls::HandshakeKind::{Full, Resumed};
    let up = Upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let server_ca = TestCa::new(dir.path(), "server-ca");
    let server = server_ca.issue(dir.path(), "a", &["a.test"]);
    let client_ca = TestCa::new(dir.path(), "client-ca");
    let alice = client_ca.issue(dir.path(), "alice", &["spiffe://corp/alice"]);
    let extra = format!(
        "client_auth: {{ mode: required, ca_file: '{}' }}",
        client_ca.cert.cert_path.display()
    );
    let yaml = tls_config(&up.url(), &[&server], &extra, true);
    let f = Ficus::start_in(dir, &yaml).await.unwrap();
    let client = resuming_client(&server_ca.cert.der, &rustls::version::TLS13, Some(&alice));
    assert_eq!(handshake_kind(f.addr, &client).await.unwrap(), Full);
    assert_eq!(handshake_kind(f.addr, &client).await.unwrap(), Resumed);

    // A reload that leaves the listener's TLS settings alone keeps its sessions.
    f.write_config(&format!("{yaml}# touched\n"));
    let reloaded = eventually(Duration::from_secs(10), || async {
        get(&f.admin_url("/admin/config")).await.json()["version"] == 2
    })
    .await;
    assert!(reloaded, "the edited config was not reloaded");
    assert_eq!(handshake_kind(f.addr, &client).await.unwrap(), Resumed);

    // Replacing the client CA revokes alice's certificate: her session, authenticated under
    // the old bundle, must not resume, and the full handshake must fail.
    let rogue = TestCa::new(f.dir.path(), "rogue-ca");
    std::fs::rename(&rogue.cert.cert_path, &client_ca.cert.cert_path).unwrap();
    let reloaded = eventually(Duration::from_secs(10), || async {
        get(&f.admin_url("/admin/config")).await.json()["version"] == 3
    })
    .await;
    assert!(reloaded, "the replaced CA bundle was not reloaded");
    let after = handshake_kind(f.addr, &client).await;
    assert!(
        after.is_err(),
        "alice was served after her CA was replaced: {after:?}"
    );
    assert_eq!(up.hits(), 3);
    f.shutdown().await;
}
