//! Client certificates (downstream mTLS, route SAN rules, forwarding to the upstream) and TLS
//! towards upstreams (custom CA, SNI override, upstream mTLS, health checks over https).
//! Every certificate is generated here with rcgen; none is committed.
#![allow(clippy::unwrap_used)] // a test that cannot go on should stop right there

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::Request;
use support::*;

const SERVER_NAME: &str = "gw.test";

/// A TLS listener `main` asking for client certificates in `mode` from `ca_file`, routes as given.
fn mtls_config(server: &TestCert, mode: &str, ca_file: &Path, upstreams: &str, routes: &str) -> String {
    format!(
        "\
log: {{ level: warn, access_log: false }}
listeners:
  - name: main
    bind: 127.0.0.1:0
    tls:
      certs: [{{ cert: '{}', key: '{}' }}]
      client_auth: {{ mode: {mode}, ca_file: '{}' }}
admin: {{ bind: '127.0.0.1:0' }}
reload: {{ watch: false }}
upstreams:
{upstreams}
routes:
{routes}
",
        server.cert_path.display(),
        server.key_path.display(),
        ca_file.display(),
    )
}

/// Connects (optionally with a client certificate) and sends one GET. With TLS 1.3 a refused
/// client certificate surfaces after the handshake, on the first read, so both count as refusal.
async fn call(
    addr: SocketAddr,
    server_ca: &TestCa,
    client: Option<&TestCert>,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Answer, String> {
    let mut req = Request::get(format!("https://{SERVER_NAME}{path}")).header("host", SERVER_NAME);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send_as(addr, server_ca, client, req.body(empty()).unwrap()).await
}

async fn send_as(
    addr: SocketAddr,
    server_ca: &TestCa,
    client: Option<&TestCert>,
    req: Request<Body>,
) -> Result<Answer, String> {
    let stream = tls_connect_as(addr, SERVER_NAME, &[&server_ca.cert.der], &[b"http/1.1"], client)
        .await
        .map_err(|e| e.to_string())?;
    tls_request(stream, req).await.map_err(|e| e.to_string())
}

struct Pki {
    dir: tempfile::TempDir,
    /// Signs ficus's server certificate.
    server_ca: TestCa,
    server: TestCert,
    /// Signs the client certificates ficus accepts.
    client_ca: TestCa,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = TestCa::new(dir.path(), "server-ca");
    let server = server_ca.issue(dir.path(), "gw", &[SERVER_NAME]);
    let client_ca = TestCa::new(dir.path(), "client-ca");
    Pki {
        dir,
        server_ca,
        server,
        client_ca,
    }
}

fn app_upstream(url: &str) -> String {
    format!("  app: {{ endpoints: ['{url}'] }}")
}

#[tokio::test]
async fn required_mode_refuses_clients_without_a_certificate_or_from_another_ca() {
    let up = Upstream::echo().await;
    let p = pki();
    let good = p
        .client_ca
        .issue(p.dir.path(), "orders", &["spiffe://corp/orders"]);
    let rogue_ca = TestCa::new(p.dir.path(), "rogue-ca");
    let rogue = rogue_ca.issue(p.dir.path(), "rogue", &["spiffe://corp/orders"]);
    let yaml = mtls_config(
        &p.server,
        "required",
        &p.client_ca.cert.cert_path,
        &app_upstream(&up.url()),
        "  - { name: all, match: { path_prefix: / }, upstream: app }",
    );
    let f = Ficus::start_in(tempfile::tempdir().unwrap(), &yaml)
        .await
        .unwrap();

    let anonymous = call(f.addr, &p.server_ca, None, "/x", &[]).await;
    assert!(
        anonymous.is_err(),
        "served without a client certificate: {:?}",
        anonymous.map(|a| a.status)
    );
    let other_ca = call(f.addr, &p.server_ca, Some(&rogue), "/x", &[]).await;
    assert!(
        other_ca.is_err(),
        "served a certificate from another CA: {:?}",
        other_ca.map(|a| a.status)
    );
    assert_eq!(up.hits(), 0);

    let ans = call(f.addr, &p.server_ca, Some(&good), "/x", &[]).await.unwrap();
    assert_eq!(ans.status, 200, "{}", ans.text());
    assert_eq!(up.hits(), 1);
    f.shutdown().await;
}

#[tokio::test]
async fn optional_mode_lets_anonymous_callers_through_but_a_route_requiring_a_cert_answers_401() {
    let up = Upstream::echo().await;
    let p = pki();
    let good = p
        .client_ca
        .issue(p.dir.path(), "orders", &["spiffe://corp/orders"]);
    let rogue_ca = TestCa::new(p.dir.path(), "rogue-ca");
    let rogue = rogue_ca.issue(p.dir.path(), "rogue", &["spiffe://corp/orders"]);
    let yaml = mtls_config(
        &p.server,
        "optional",
        &p.client_ca.cert.cert_path,
        &app_upstream(&up.url()),
        r"  - { name: secure, match: { path_prefix: /secure }, upstream: app, identity: { client_cert: { required: true } } }
  - { name: open, match: { path_prefix: / }, upstream: app }",
    );
    let f = Ficus::start_in(tempfile::tempdir().unwrap(), &yaml)
        .await
        .unwrap();

    let open = call(f.addr, &p.server_ca, None, "/open", &[]).await.unwrap();
    assert_eq!(open.status, 200, "{}", open.text());
    let secure = call(f.addr, &p.server_ca, None, "/secure", &[]).await.unwrap();
    secure.assert_problem(401, "client-cert-required");
    assert_eq!(up.hits(), 1, "the refused request reached the upstream");

    let secure = call(f.addr, &p.server_ca, Some(&good), "/secure", &[])
        .await
        .unwrap();
    assert_eq!(secure.status, 200, "{}", secure.text());
    // Optional is not "anything goes": a presented certificate must still verify.
    assert!(call(f.addr, &p.server_ca, Some(&rogue), "/open", &[])
        .await
        .is_err());
    f.shutdown().await;
}

#[tokio::test]
async fn san_pattern_match_is_200_and_mismatch_is_403() {
    let up = Upstream::echo().await;
    let p = pki();
    let orders = p.client_ca.issue(
        p.dir.path(),
        "orders",
        &["orders.corp", "spiffe://corp/orders/api"],
    );
    let billing = p
        .client_ca
        .issue(p.dir.path(), "billing", &["spiffe://corp/billing/api"]);
    let yaml = mtls_config(
        &p.server,
        "required",
        &p.client_ca.cert.cert_path,
        &app_upstream(&up.url()),
        r"  - name: orders
    match: { path_prefix: /orders }
    upstream: app
    identity: { client_cert: { required: true, san: 'spiffe://corp/orders/*' } }
  - name: regex
    match: { path_prefix: /regex }
    upstream: app
    identity: { client_cert: { san_regex: 'spiffe://corp/(orders|billing)/api' } }",
    );
    let f = Ficus::start_in(tempfile::tempdir().unwrap(), &yaml)
        .await
        .unwrap();

    let ok = call(f.addr, &p.server_ca, Some(&orders), "/orders/1", &[])
        .await
        .unwrap();
    assert_eq!(ok.status, 200, "{}", ok.text());
    let denied = call(f.addr, &p.server_ca, Some(&billing), "/orders/1", &[])
        .await
        .unwrap();
    denied.assert_problem(403, "client-cert-not-allowed");
    assert!(
        !denied.text().contains("spiffe://corp/billing"),
        "the presented SANs belong in the log, not the answer: {}",
        denied.text()
    );
    assert_eq!(up.hits(), 1);

    let ok = call(f.addr, &p.server_ca, Some(&billing), "/regex", &[])
        .await
        .unwrap();
    assert_eq!(ok.status, 200, "{}", ok.text());
    f.shutdown().await;
}

#[tokio::test]
async fn forwarded_subject_and_san_reach_the_upstream_and_spoofed_copies_are_stripped() {
    let up = Upstream::echo().await;
    let p = pki();
    let orders = p
        .client_ca
        .issue(p.dir.path(), "orders", &["spiffe://corp/orders", "orders.corp"]);
    let yaml = mtls_config(
        &p.server,
        "optional",
        &p.client_ca.cert.cert_path,
        &app_upstream(&up.url()),
        r"  - name: fwd
    match: { path_prefix: /fwd }
    upstream: app
    identity: { forward_client_cert: { subject: X-Client-Subject, san: X-Client-San } }
  - { name: plain, match: { path_prefix: / }, upstream: app }",
    );
    let f = Ficus::start_in(tempfile::tempdir().unwrap(), &yaml)
        .await
        .unwrap();
    let spoof = [
        ("x-client-subject", "CN=admin"),
        ("x-client-san", "spiffe://corp/admin"),
    ];

    let e = call(f.addr, &p.server_ca, Some(&orders), "/fwd", &spoof)
        .await
        .unwrap()
        .echoed();
    assert_eq!(
        e.headers["x-client-subject"],
        vec!["CN=orders, O=Corp".to_string()]
    );
    assert_eq!(
        e.headers["x-client-san"],
        vec!["spiffe://corp/orders,orders.corp".to_string()]
    );

    // Anonymous on the forwarding route: the caller's copies go, nothing replaces them.
    let e = call(f.addr, &p.server_ca, None, "/fwd", &spoof)
        .await
        .unwrap()
        .echoed();
    assert_eq!(e.header("x-client-subject"), None, "{e:?}");
    assert_eq!(e.header("x-client-san"), None, "{e:?}");

    // A route that does not forward must not be a way around the stripping either.
    let e = call(f.addr, &p.server_ca, Some(&orders), "/other", &spoof)
        .await
        .unwrap()
        .echoed();
    assert_eq!(e.header("x-client-subject"), None, "{e:?}");
    assert_eq!(e.header("x-client-san"), None, "{e:?}");
    f.shutdown().await;
}

#[tokio::test]
async fn a_missing_client_ca_file_is_a_config_error_with_its_line() {
    let p = pki();
    let yaml = mtls_config(
        &p.server,
        "required",
        &p.dir.path().join("nope.pem"),
        &app_upstream("http://127.0.0.1:9"),
        "  - { name: all, match: { path_prefix: / }, upstream: app }",
    );
    let err = Ficus::start_in(tempfile::tempdir().unwrap(), &yaml)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("ficus.yaml:7: listeners[0].tls.client_auth.ca_file: cannot use CA bundle"),
        "{err}"
    );
}

// ---------------------------------------------------------------- upstream TLS

/// A plain listener in front of one upstream `app` with the given `tls:` block (may be empty).
fn upstream_tls_config(endpoint: &str, tls: &str, extra: &str) -> String {
    format!(
        "\
log: {{ level: warn, access_log: false }}
listeners:
  - name: main
    bind: 127.0.0.1:0
admin: {{ bind: '127.0.0.1:0' }}
reload: {{ watch: false }}
upstreams:
  app:
    endpoints: ['{endpoint}']
    {tls}
    {extra}
routes:
  - {{ name: all, match: {{ path_prefix: / }}, upstream: app }}
"
    )
}

#[tokio::test]
async fn upstream_https_with_a_custom_ca_works_and_another_ca_is_502() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "ca");
    let other = TestCa::new(dir.path(), "other-ca");
    let cert = ca.issue(dir.path(), "upstream", &["127.0.0.1"]);
    let up = Upstream::start_tls(
        |req| async move { echo_response(req, "tls").await },
        upstream_tls(&cert, None),
    )
    .await;

    let tls = format!("tls: {{ ca_file: '{}' }}", ca.cert.cert_path.display());
    let f = Ficus::start(&upstream_tls_config(&up.https_url(), &tls, "")).await;
    let ans = get(&f.url("/hello")).await;
    assert_eq!(ans.status, 200, "{}", ans.text());
    let e = ans.echoed();
    assert_eq!((e.name.as_str(), e.path.as_str()), ("tls", "/hello"));
    f.shutdown().await;

    let tls = format!("tls: {{ ca_file: '{}' }}", other.cert.cert_path.display());
    let f = Ficus::start(&upstream_tls_config(&up.https_url(), &tls, "")).await;
    get(&f.url("/hello"))
        .await
        .assert_problem(502, "upstream-unreachable");
    // Without a `tls` block an https endpoint is checked against the public roots: refused too.
    f.shutdown().await;
    let f = Ficus::start(&upstream_tls_config(&up.https_url(), "", "")).await;
    get(&f.url("/hello"))
        .await
        .assert_problem(502, "upstream-unreachable");
    assert_eq!(up.hits(), 1);
    f.shutdown().await;
}

#[tokio::test]
async fn sni_override_is_sent_to_the_upstream_and_its_certificate_checked_against_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "ca");
    // Valid for the name only, not for the address ficus connects to.
    let cert = ca.issue(dir.path(), "legacy", &["legacy.internal"]);
    let up = Upstream::start_tls(
        |req| async move { echo_response(req, "legacy").await },
        upstream_tls(&cert, None),
    )
    .await;

    let tls = format!(
        "tls: {{ ca_file: '{}', sni: legacy.internal }}",
        ca.cert.cert_path.display()
    );
    let f = Ficus::start(&upstream_tls_config(&up.https_url(), &tls, "")).await;
    let ans = get(&f.url("/x")).await;
    assert_eq!(ans.status, 200, "{}", ans.text());
    assert_eq!(ans.echoed().header("x-tls-sni"), Some("legacy.internal"));
    f.shutdown().await;

    // Without the override the certificate does not match 127.0.0.1.
    let tls = format!("tls: {{ ca_file: '{}' }}", ca.cert.cert_path.display());
    let f = Ficus::start(&upstream_tls_config(&up.https_url(), &tls, "")).await;
    get(&f.url("/x"))
        .await
        .assert_problem(502, "upstream-unreachable");
    f.shutdown().await;
}

#[tokio::test]
async fn upstream_mtls_presents_ficus_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "ca");
    let cert = ca.issue(dir.path(), "upstream", &["127.0.0.1"]);
    let clients = TestCa::new(dir.path(), "clients");
    let ficus_cert = clients.issue(dir.path(), "ficus", &["spiffe://corp/ficus"]);
    let up = Upstream::start_tls(
        |req| async move { echo_response(req, "mtls").await },
        upstream_tls(&cert, Some(&clients)),
    )
    .await;

    let tls = format!(
        "tls: {{ ca_file: '{}', client_cert: '{}', client_key: '{}' }}",
        ca.cert.cert_path.display(),
        ficus_cert.cert_path.display(),
        ficus_cert.key_path.display()
    );
    let f = Ficus::start(&upstream_tls_config(&up.https_url(), &tls, "")).await;
    let ans = get(&f.url("/x")).await;
    assert_eq!(ans.status, 200, "{}", ans.text());
    assert_eq!(
        ans.echoed().header("x-tls-client-san"),
        Some("spiffe://corp/ficus")
    );
    f.shutdown().await;

    // Without the client certificate the upstream refuses the handshake.
    let tls = format!("tls: {{ ca_file: '{}' }}", ca.cert.cert_path.display());
    let f = Ficus::start(&upstream_tls_config(&up.https_url(), &tls, "")).await;
    let ans = get(&f.url("/x")).await;
    assert_eq!(ans.status, 502, "{}", ans.text());
    assert_eq!(up.hits(), 1);
    f.shutdown().await;
}

#[tokio::test]
async fn health_checks_work_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "ca");
    let other = TestCa::new(dir.path(), "other-ca");
    let cert = ca.issue(dir.path(), "upstream", &["127.0.0.1"]);
    let up = Upstream::start_tls(
        |req| async move { echo_response(req, "hc").await },
        upstream_tls(&cert, None),
    )
    .await;
    let hc = "health_check: { path: /health, interval: 50ms, timeout: 1s, healthy_threshold: 1, unhealthy_threshold: 1 }";

    let tls = format!("tls: {{ ca_file: '{}' }}", ca.cert.cert_path.display());
    let f = Ficus::start(&upstream_tls_config(&up.https_url(), &tls, hc)).await;
    assert!(
        eventually(Duration::from_secs(10), || async { up.hits() >= 2 }).await,
        "no health check arrived over https"
    );
    let series = "ficus_upstream_endpoint_healthy{";
    let m = get(&f.admin_url("/metrics")).await.text();
    assert_eq!(metric(&m, series), Some(1.0), "{m}");
    f.shutdown().await;

    // With a CA that does not sign the upstream's certificate, the checks fail.
    let tls = format!("tls: {{ ca_file: '{}' }}", other.cert.cert_path.display());
    let f = Ficus::start(&upstream_tls_config(&up.https_url(), &tls, hc)).await;
    let unhealthy = eventually(Duration::from_secs(10), || async {
        metric(&get(&f.admin_url("/metrics")).await.text(), series) == Some(0.0)
    })
    .await;
    assert!(unhealthy, "{}", get(&f.admin_url("/metrics")).await.text());
    f.shutdown().await;
}

#[tokio::test]
async fn upstream_tls_mistakes_are_config_errors_and_skipping_verification_a_warning() {
    let err = Ficus::try_start(&upstream_tls_config(
        "http://127.0.0.1:9",
        "tls: { sni: legacy.internal }",
        "",
    ))
    .await
    .err()
    .expect("tls on a plain endpoint is refused")
    .to_string();
    assert!(
        err.contains("upstreams.app.tls: applies to https:// endpoints only"),
        "{err}"
    );

    let err = Ficus::try_start(&upstream_tls_config(
        "https://127.0.0.1:9",
        "tls: { client_cert: /nonexistent/c.pem }",
        "",
    ))
    .await
    .err()
    .expect("half a client pair is refused")
    .to_string();
    assert!(err.contains("set both `client_cert` and `client_key`"), "{err}");

    let f = Ficus::start(&upstream_tls_config(
        "https://127.0.0.1:9",
        "tls: { insecure_skip_verify: true }",
        "",
    ))
    .await;
    let status = get(&f.admin_url("/admin/routes")).await.json();
    let warnings = status["warnings"].to_string();
    assert!(
        warnings.contains("upstreams.app.tls.insecure_skip_verify"),
        "{status}"
    );
    f.shutdown().await;
}

#[tokio::test]
async fn insecure_skip_verify_reaches_an_upstream_with_an_unknown_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "ca");
    let cert = ca.issue(dir.path(), "upstream", &["elsewhere.test"]);
    let up = Upstream::start_tls(
        |req| async move { echo_response(req, "anything").await },
        upstream_tls(&cert, None),
    )
    .await;
    let f = Ficus::start(&upstream_tls_config(
        &up.https_url(),
        "tls: { insecure_skip_verify: true }",
        "",
    ))
    .await;
    let ans = get(&f.url("/x")).await;
    assert_eq!(ans.status, 200, "{}", ans.text());
    f.shutdown().await;
}

#[tokio::test]
async fn a_replaced_client_ca_bundle_is_used_without_restart() {
    let up = Upstream::echo().await;
    let p = pki();
    let old_client = p.client_ca.issue(p.dir.path(), "old", &["spiffe://corp/old"]);
    let staging = tempfile::tempdir().unwrap();
    let new_ca = TestCa::new(staging.path(), "new-ca");
    let new_client = new_ca.issue(staging.path(), "new", &["spiffe://corp/new"]);
    let yaml = mtls_config(
        &p.server,
        "required",
        &p.client_ca.cert.cert_path,
        &app_upstream(&up.url()),
        "  - { name: all, match: { path_prefix: / }, upstream: app }",
    )
    .replace("watch: false", "watch: true, debounce: 50ms");
    let f = Ficus::start_in(tempfile::tempdir().unwrap(), &yaml)
        .await
        .unwrap();
    assert_eq!(
        call(f.addr, &p.server_ca, Some(&old_client), "/", &[])
            .await
            .unwrap()
            .status,
        200
    );

    // Renamed over the old bundle, as configuration management does.
    std::fs::rename(&new_ca.cert.cert_path, &p.client_ca.cert.cert_path).unwrap();
    let switched = eventually(Duration::from_secs(10), || async {
        call(f.addr, &p.server_ca, Some(&new_client), "/", &[])
            .await
            .is_ok_and(|a| a.status == 200)
    })
    .await;
    assert!(switched, "a client of the new CA was not let in within 10 s");
    assert!(call(f.addr, &p.server_ca, Some(&old_client), "/", &[])
        .await
        .is_err());
    f.shutdown().await;
}

#[tokio::test]
async fn idempotency_keys_are_scoped_by_the_client_certificate() {
    let up = Upstream::echo().await;
    let p = pki();
    let alice = p.client_ca.issue(p.dir.path(), "alice", &["spiffe://corp/alice"]);
    let bob = p.client_ca.issue(p.dir.path(), "bob", &["spiffe://corp/bob"]);
    let yaml = mtls_config(
        &p.server,
        "required",
        &p.client_ca.cert.cert_path,
        &app_upstream(&up.url()),
        r"  - name: create
    match: { path: /orders }
    upstream: app
    identity: { client_cert: { required: true } }
    idempotency: { ttl: 1h }",
    );
    let f = Ficus::start_in(tempfile::tempdir().unwrap(), &yaml)
        .await
        .unwrap();
    let post = || {
        Request::post(format!("https://{SERVER_NAME}/orders"))
            .header("host", SERVER_NAME)
            .header("idempotency-key", "k-1")
            .body(full("{}"))
            .unwrap()
    };

    let a = send_as(f.addr, &p.server_ca, Some(&alice), post()).await.unwrap();
    assert_eq!(a.status, 200, "{}", a.text());
    // Same key and body from another certificate: not alice's answer, a request of its own.
    let b = send_as(f.addr, &p.server_ca, Some(&bob), post()).await.unwrap();
    assert_eq!(b.status, 200, "{}", b.text());
    assert!(
        b.headers.get("idempotency-replayed").is_none(),
        "bob got alice's answer"
    );
    assert_eq!(up.hits(), 2);
    // Alice repeating herself is replayed.
    let again = send_as(f.addr, &p.server_ca, Some(&alice), post()).await.unwrap();
    assert_eq!(
        again.headers.get("idempotency-replayed").map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    assert_eq!(up.hits(), 2);
    f.shutdown().await;
}

#[tokio::test]
async fn a_replaced_upstream_ca_file_takes_effect_on_new_connections_after_reload() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "ca");
    let cert = ca.issue(dir.path(), "upstream", &["127.0.0.1"]);
    let up = Upstream::start_tls(
        |req| async move { echo_response(req, "tls").await },
        upstream_tls(&cert, None),
    )
    .await;
    let tls = format!("tls: {{ ca_file: '{}' }}", ca.cert.cert_path.display());
    let yaml =
        upstream_tls_config(&up.https_url(), &tls, "").replace("watch: false", "watch: true, debounce: 50ms");
    let f = Ficus::start(&yaml).await;
    // A pooled keep-alive connection now exists.
    assert_eq!(get(&f.url("/x")).await.status, 200);

    // The bundle now trusts another CA only: a kept pool would still serve over its verified
    // connection; the reload must start a new pool whose handshakes fail.
    let staging = tempfile::tempdir().unwrap();
    let other = TestCa::new(staging.path(), "other");
    std::fs::rename(&other.cert.cert_path, &ca.cert.cert_path).unwrap();
    let refused = eventually(Duration::from_secs(10), || async {
        get(&f.url("/x")).await.status == 502
    })
    .await;
    assert!(
        refused,
        "the old CA was still trusted 10 s after the bundle changed"
    );
    f.shutdown().await;
}

#[tokio::test]
async fn a_connection_header_cannot_delete_the_forwarded_certificate_headers() {
    let up = Upstream::echo().await;
    let p = pki();
    let orders = p
        .client_ca
        .issue(p.dir.path(), "orders", &["spiffe://corp/orders"]);
    let yaml = mtls_config(
        &p.server,
        "required",
        &p.client_ca.cert.cert_path,
        &app_upstream(&up.url()),
        r"  - name: fwd
    match: { path_prefix: / }
    upstream: app
    identity: { forward_client_cert: { subject: X-Client-Subject, san: X-Client-San } }",
    );
    let f = Ficus::start_in(tempfile::tempdir().unwrap(), &yaml)
        .await
        .unwrap();
    // Hop-by-hop headers named in `Connection` are removed; had that happened after identity,
    // a caller could make the upstream see no certificate at all.
    let e = call(
        f.addr,
        &p.server_ca,
        Some(&orders),
        "/",
        &[("connection", "x-client-subject, x-client-san")],
    )
    .await
    .unwrap()
    .echoed();
    assert_eq!(e.header("x-client-subject"), Some("CN=orders, O=Corp"), "{e:?}");
    assert_eq!(e.header("x-client-san"), Some("spiffe://corp/orders"), "{e:?}");
    f.shutdown().await;
}
