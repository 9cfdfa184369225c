//! The project's own hostile-input suite: what a client sends cannot impersonate ficus, get past a
//! route, open a tunnel, be blamed on a backend, or leak a credential to the wrong side.
#![allow(clippy::unwrap_used)] // a test that cannot go on should stop right there

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use support::*;
use tokio::io::AsyncWriteExt;

const HMAC_ENV: &str = "FICUS_HOSTILE_HMAC";
const HMAC: &str = "0123456789abcdef0123456789abcdef-hostile";
const LEGACY_KEY_ENV: &str = "FICUS_HOSTILE_LEGACY_KEY";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(sub: &str) -> String {
    let claims = serde_json::json!({
        "iss": "https://idp.test/", "aud": "orders", "sub": sub, "exp": now() + 600,
        "scope": "orders:read ficus:qa"
    });
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(HMAC.as_bytes()),
    )
    .unwrap()
}

/// Routes that set headers for their upstream (claims, a legacy key, an internal JWT, client
/// certificate headers, a migration override), and routes that set none, all to one backend.
fn trust_config(legacy: &str, modern: &str, listener_extra: &str) -> String {
    std::env::set_var(HMAC_ENV, HMAC);
    std::env::set_var(LEGACY_KEY_ENV, "legacy-secret");
    yaml::Config::new()
        .listener_extra(listener_extra)
        .upstream("legacy", legacy)
        .upstream("modern", modern)
        .route(&format!(
            "  - name: claims
    match: {{ path_prefix: /claims }}
    upstream: legacy
    identity:
      jwt: corp
      forward_claims: {{ sub: X-User-Id }}
      forward_client_cert: {{ subject: X-Client-Subject, san: X-Client-San }}
      upstream_auth: {{ header: {{ name: X-Legacy-Key, value_env: {LEGACY_KEY_ENV} }} }}
  - name: mig
    match: {{ path_prefix: /mig }}
    identity:
      jwt: corp
      optional: true
      token_query: access_token
      token_cookie: session
      upstream_auth: {{ header: {{ name: X-Legacy-Key, value_env: {LEGACY_KEY_ENV} }} }}
    migration:
      legacy: {{ upstream: legacy }}
      modern: {{ upstream: modern }}
      modern_percent: 0
      sticky: client_ip
      cohorts: ['10.9.8.7']
      override: {{ header: X-Ficus-Backend, require_scope: 'ficus:qa' }}
  - name: admin
    match: {{ path_prefix: /admin }}
    upstream: modern
  - name: public
    match: {{ path_prefix: /public }}
    upstream: legacy
  - name: all
    match: {{ path_prefix: / }}
    upstream: legacy
"
        ))
        .section(&format!(
            "\
identity:
  jwt:
    corp: {{ issuer: 'https://idp.test/', audiences: [orders], algorithms: [HS256], hmac_secret_env: {HMAC_ENV} }}
"
        ))
        .build()
}

const OWNED: [&str; 8] = [
    "x-user-id",
    "x-client-subject",
    "x-client-san",
    "x-legacy-key",
    "x-ficus-shadow",
    "x-ficus-backend",
    "x-ficus-anything",
    "x-ficus-trace",
];

const PROXY_ONLY: [&str; 9] = [
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
    "x-original-url",
    "x-rewrite-url",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-prefix",
    "forwarded",
];

#[tokio::test]
async fn owned_headers_sent_by_a_client_never_reach_an_upstream_on_any_route() {
    let (legacy, modern) = (
        Upstream::echo_named("legacy").await,
        Upstream::echo_named("modern").await,
    );
    let f = Ficus::start(&trust_config(&legacy.url(), &modern.url(), "")).await;
    let c = client();
    for path in ["/public/x", "/mig/x", "/admin/x", "/other", "/claims/x"] {
        for name in OWNED {
            let mut b = Request::get(f.url(path)).header(name, "admin");
            if path == "/claims/x" {
                b = b.header("authorization", format!("Bearer {}", token("alice")));
            }
            let a = send(&c, b.body(empty()).unwrap()).await;
            assert_eq!(a.status, 200, "{path} {name}: {}", a.text());
            let seen = a.echoed();
            let got = seen.header(name);
            match (path, name) {
                // The route that sets them sets ficus's values, never the client's.
                ("/claims/x", "x-user-id") => assert_eq!(got, Some("alice")),
                ("/claims/x", "x-legacy-key") => assert_eq!(got, Some("legacy-secret")),
                _ => assert_eq!(got, None, "{path}: {name} reached {}", seen.name),
            }
        }
    }
    f.shutdown().await;
}

#[tokio::test]
async fn proxy_only_headers_are_kept_only_from_trusted_proxies() {
    let up = Upstream::echo().await;
    let f = Ficus::start(&basic_config(&up.url())).await;
    let c = client();
    let mut b = Request::get(f.url("/x"));
    for name in PROXY_ONLY {
        b = b.header(name, "10.6.6.6");
    }
    let seen = send(&c, b.body(empty()).unwrap()).await.echoed();
    for name in [
        "x-real-ip",
        "true-client-ip",
        "x-client-ip",
        "x-original-url",
        "x-rewrite-url",
        "x-forwarded-prefix",
    ] {
        assert_eq!(seen.header(name), None, "{name} from an untrusted peer");
    }
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert!(!seen.header("forwarded").unwrap().contains("10.6.6.6"));
    f.shutdown().await;

    let trusted = basic_config(&up.url()).replace(
        "    bind: 127.0.0.1:0\nadmin",
        "    bind: 127.0.0.1:0\n    trusted_proxies: [127.0.0.1/32]\nadmin",
    );
    let f = Ficus::start(&trusted).await;
    let mut b = Request::get(f.url("/x"));
    for name in PROXY_ONLY {
        b = b.header(name, "10.6.6.6");
    }
    let seen = send(&c, b.body(empty()).unwrap()).await.echoed();
    assert_eq!(
        seen.header("x-real-ip"),
        Some("10.6.6.6"),
        "a trusted proxy may set it"
    );
    assert_eq!(seen.header("x-original-url"), Some("10.6.6.6"));
    f.shutdown().await;
}

#[tokio::test]
async fn path_parameters_are_refused_unless_kept_and_dot_parameters_are_dot_segments() {
    let (legacy, modern) = (
        Upstream::echo_named("legacy").await,
        Upstream::echo_named("modern").await,
    );
    let f = Ficus::start(&trust_config(&legacy.url(), &modern.url(), "")).await;
    for path in [
        "/public/..;/admin",
        "/admin;x/users",
        "/public/.;/x",
        "/a;jsessionid=1",
    ] {
        get(&f.url(path)).await.assert_problem(400, "invalid-path");
    }
    assert_eq!(legacy.hits() + modern.hits(), 0);
    f.shutdown().await;

    let f = Ficus::start(&trust_config(&legacy.url(), &modern.url(), "path_params: keep")).await;
    // `/admin;x/users` is `/admin/users` to a servlet container: it must take the admin route.
    let seen = get(&f.url("/admin;x/users")).await.echoed();
    assert_eq!(
        (seen.name.as_str(), seen.path.as_str()),
        ("modern", "/admin;x/users")
    );
    let seen = get(&f.url("/public/..;/admin/x")).await.echoed();
    assert_eq!((seen.name.as_str(), seen.path.as_str()), ("modern", "/admin/x"));
    get(&f.url("/..;/etc")).await.assert_problem(400, "invalid-path");
    f.shutdown().await;
}

#[tokio::test]
async fn an_h2c_upgrade_is_never_forwarded() {
    let up = Upstream::echo().await;
    let f = Ficus::start(&basic_config(&up.url())).await;
    let answer = raw(
        f.addr,
        b"GET /x HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let body = body.trim_start_matches(|c: char| c.is_ascii_hexdigit() || c == '\r' || c == '\n');
    let echoed: Echoed = serde_json::Deserializer::from_str(body)
        .into_iter()
        .next()
        .unwrap()
        .unwrap();
    for h in ["upgrade", "http2-settings", "connection"] {
        assert_eq!(echoed.header(h), None, "{h} reached the upstream");
    }
    f.shutdown().await;
}

#[tokio::test]
async fn split_http2_cookies_reach_an_http1_upstream_as_one_line() {
    let up = Upstream::echo().await;
    let f = Ficus::start(&basic_config(&up.url())).await;
    let req = Request::get(f.url("/x"))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(empty())
        .unwrap();
    let seen = send(&h2c_client(), req).await.echoed();
    assert_eq!(seen.headers["cookie"], vec!["a=1; b=2".to_string()]);
    f.shutdown().await;
}

/// Status lines of a raw HTTP/1.1 exchange, and the `status_class` counters after it.
async fn requests_by_class(f: &Ficus, route: &str, upstream: &str, method: &str, class: &str) -> f64 {
    let text = get(&f.admin_url("/metrics")).await.text();
    metric(
        &text,
        &format!(
            "ficus_requests_total{{route=\"{route}\",upstream=\"{upstream}\",method=\"{method}\",status_class=\"{class}\"}}"
        ),
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn a_malformed_chunked_body_is_a_400_and_never_a_5xx() {
    let up = Upstream::echo().await;
    let f = Ficus::start(&basic_config(&up.url())).await;
    for bad in ["FFFFFFFFFFFFFFFFFFFFFF\r\nabc\r\n0\r\n\r\n", "3\r\nabc\r\nzz\r\n"] {
        let req = format!(
            "POST /x HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n5\r\nhello\r\n{bad}"
        );
        let answer = raw(f.addr, req.as_bytes()).await;
        if !answer.is_empty() {
            let status = raw_status(&answer);
            assert!((400..500).contains(&status), "{bad:?}: {answer}");
        }
    }
    assert_eq!(requests_by_class(&f, "all", "app", "POST", "5xx").await, 0.0);
    f.shutdown().await;
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_body_is_logged_as_499_not_5xx() {
    let up = Upstream::echo().await;
    let f = Ficus::start(&basic_config(&up.url())).await;
    let mut tcp = tokio::net::TcpStream::connect(f.addr).await.unwrap();
    tcp.write_all(b"POST /x HTTP/1.1\r\nHost: a.test\r\nContent-Length: 100000\r\n\r\n0123456789")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(tcp);
    assert!(
        eventually(Duration::from_secs(5), || async {
            requests_by_class(&f, "all", "app", "POST", "4xx").await == 1.0
        })
        .await,
        "the hang-up is counted as a client error"
    );
    assert_eq!(requests_by_class(&f, "all", "app", "POST", "5xx").await, 0.0);
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_clients_cannot_roll_a_rollout_back() {
    let legacy = Upstream::echo_named("legacy").await;
    let modern = Upstream::echo_named("modern").await;
    let clock = Arc::new(ficus::pipeline::rollout::ManualClock::default());
    let yaml = yaml::Config::new()
        .upstream("legacy", &legacy.url())
        .upstream("modern", &modern.url())
        .route(&yaml::migration_route(
            "orders",
            "/orders",
            &[
                "modern_percent: 50",
                "rollout: { step: 25, every: 1m, min_requests: 10, max_error_rate: 0.05 }",
            ],
        ))
        .build();
    let f = Ficus::start_with_clock(&yaml, clock.clone()).await;
    let c = client();
    // Half of these reach modern with a body that breaks mid-way.
    for _ in 0..60 {
        let _ = raw(
            f.addr,
            b"POST /orders HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nFFFFFFFFFFFFFFFFFFFFFF\r\n",
        )
        .await;
    }
    for _ in 0..40 {
        send(&c, Request::get(f.url("/orders")).body(empty()).unwrap()).await;
    }
    assert!(modern.hits() >= 10, "modern saw {} requests", modern.hits());
    assert_eq!(
        requests_by_class(&f, "orders", "modern", "POST", "5xx").await,
        0.0
    );
    clock.advance(Duration::from_secs(60));
    let status = || async { get(&f.admin_url("/admin/migration")).await.json()["routes"][0].clone() };
    assert!(
        eventually(Duration::from_secs(5), || async {
            status().await["modern_percent"] == 75.0
        })
        .await,
        "the rollout stepped forward: {}",
        status().await
    );
    f.shutdown().await;
}

#[tokio::test]
async fn credentials_from_the_query_or_a_cookie_are_not_forwarded() {
    let (legacy, modern) = (
        Upstream::echo_named("legacy").await,
        Upstream::echo_named("modern").await,
    );
    let f = Ficus::start(&trust_config(&legacy.url(), &modern.url(), "")).await;
    let t = token("alice");
    let seen = get(&f.url(&format!("/mig/x?a=1&access_token={t}&b=2")))
        .await
        .echoed();
    assert_eq!(seen.path, "/mig/x?a=1&b=2");
    let req = Request::get(f.url("/mig/x"))
        .header("cookie", format!("theme=dark; session={t}"))
        .body(empty())
        .unwrap();
    let seen = send(&client(), req).await.echoed();
    assert_eq!(seen.header("cookie"), Some("theme=dark"));
    f.shutdown().await;
}

#[tokio::test]
async fn legacy_credentials_are_applied_per_side_and_never_reach_modern() {
    let (legacy, modern) = (
        Upstream::echo_named("legacy").await,
        Upstream::echo_named("modern").await,
    );
    let f = Ficus::start(&trust_config(&legacy.url(), &modern.url(), "")).await;
    let c = client();
    let auth = format!("Bearer {}", token("alice"));
    let to = |side: &str| {
        Request::get(f.url("/mig/x"))
            .header("authorization", auth.clone())
            .header("x-ficus-backend", side)
            .body(empty())
            .unwrap()
    };
    let seen = send(&c, to("legacy")).await.echoed();
    assert_eq!(
        (seen.name.as_str(), seen.header("x-legacy-key")),
        ("legacy", Some("legacy-secret"))
    );
    let seen = send(&c, to("modern")).await.echoed();
    assert_eq!(seen.name, "modern", "the override (with its scope) chose modern");
    assert_eq!(
        seen.header("x-legacy-key"),
        None,
        "legacy credentials reached modern"
    );
    assert_eq!(seen.header("x-ficus-backend"), None);
    f.shutdown().await;
}

#[tokio::test]
async fn sticky_client_ip_uses_the_address_a_trusted_proxy_vouches_for() {
    let (legacy, modern) = (
        Upstream::echo_named("legacy").await,
        Upstream::echo_named("modern").await,
    );
    let f = Ficus::start(&trust_config(
        &legacy.url(),
        &modern.url(),
        "trusted_proxies: [127.0.0.1/32]",
    ))
    .await;
    // 10.9.8.7 is a modern cohort; the peer, 127.0.0.1, is not.
    let req = Request::get(f.url("/mig/x"))
        .header("x-forwarded-for", "10.9.8.7")
        .body(empty())
        .unwrap();
    assert_eq!(send(&client(), req).await.echoed().name, "modern");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shadow_copy_gets_the_normalised_path_and_no_client_forwarded_headers() {
    type Seen = Vec<(String, Vec<(String, String)>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let record = seen.clone();
    let modern = Upstream::start(move |req: Request<Incoming>| {
        let record = record.clone();
        async move {
            let headers = req
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect();
            record.lock().push((req.uri().to_string(), headers));
            Response::new(full("{}"))
        }
    })
    .await;
    let legacy = Upstream::echo_named("legacy").await;
    let yaml = trust_config(&legacy.url(), &modern.url(), "").replace(
        "      cohorts: ['10.9.8.7']\n",
        "      cohorts: ['10.9.8.7']\n      shadow: { percent: 100 }\n",
    );
    let f = Ficus::start(&yaml).await;
    let req = Request::get(f.url("/mig/a/../b//c?q=1"))
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-host", "evil.test")
        .header("forwarded", "for=6.6.6.6")
        .body(empty())
        .unwrap();
    let a = send(&client(), req).await;
    assert_eq!(a.echoed().path, "/mig/b/c?q=1");
    assert!(eventually(Duration::from_secs(5), || async { !seen.lock().is_empty() }).await);
    let (uri, headers) = seen.lock()[0].clone();
    assert_eq!(uri, "/mig/b/c?q=1");
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    assert_eq!(get("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_ne!(get("x-forwarded-host").as_deref(), Some("evil.test"));
    assert!(!get("forwarded").unwrap_or_default().contains("6.6.6.6"));
    assert_eq!(
        get("x-legacy-key"),
        None,
        "the copy to modern carries no legacy credentials"
    );
    f.shutdown().await;
}

#[tokio::test]
async fn a_non_ascii_path_is_forwarded_byte_for_byte_after_a_rewrite() {
    let up = Upstream::echo().await;
    let f = Ficus::start(&basic_config(&up.url())).await;
    let answer = raw(
        f.addr,
        "GET //caf\u{e9}/./x HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n".as_bytes(),
    )
    .await;
    let status = raw_status(&answer);
    if status == 200 {
        assert!(answer.contains("\"path\":\"/caf\u{e9}/x\""), "{answer}");
    } else {
        // hyper may refuse raw non-ASCII in the request line; then nothing was rewritten.
        assert_eq!(status, 400, "{answer}");
    }
    f.shutdown().await;
}

#[tokio::test]
async fn counters_of_modern_are_untouched_by_a_client_fault() {
    // The breaker must not open on client faults either: a failure threshold of 1 would trip
    // on the first broken body if it were counted.
    let hits = Arc::new(AtomicU32::new(0));
    let h = hits.clone();
    let up = Upstream::start(move |req: Request<Incoming>| {
        let h = h.clone();
        async move {
            h.fetch_add(1, Ordering::SeqCst);
            echo_response(req, "app").await
        }
    })
    .await;
    let yaml = basic_config(&up.url()).replace(
        "    endpoints: [",
        "    circuit_breaker: { min_requests: 1, failure_rate: 0.5, open_for: 60s }\n    endpoints: [",
    );
    let f = Ficus::start(&yaml).await;
    for _ in 0..3 {
        let _ = raw(
            f.addr,
            b"POST /x HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nFFFFFFFFFFFFFFFFFFFFFF\r\n",
        )
        .await;
    }
    assert_eq!(get(&f.url("/x")).await.status, 200, "the breaker stayed closed");
    f.shutdown().await;
}
