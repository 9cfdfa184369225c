//! RFC 7662 introspection end to end, against a real introspection server in the test that
//! checks ficus's client authentication and counts its calls.
#![allow(clippy::unwrap_used)] // a test that cannot go on should stop right there

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use support::*;

const SECRET_ENV: &str = "FICUS_TEST_INTROSPECT_SECRET";
const SECRET: &str = "s3cret";
const ISSUER: &str = "https://idp.test/";

#[derive(Clone, Copy, PartialEq)]
enum Auth {
    Basic,
    Post,
}

/// An introspection endpoint: `good` and `narrow` are active (with different scopes), anything
/// else is not. It refuses requests whose client authentication is not the expected kind.
struct Idp {
    upstream: Upstream,
    calls: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

impl Idp {
    async fn start(auth: Auth) -> Self {
        let calls = Arc::new(AtomicUsize::new(0));
        let down = Arc::new(AtomicBool::new(false));
        let (n, d) = (calls.clone(), down.clone());
        let upstream = Upstream::start(move |req: Request<Incoming>| {
            let (n, d) = (n.clone(), d.clone());
            async move {
                if d.load(Ordering::SeqCst) {
                    let mut r = Response::new(full("down"));
                    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    return r;
                }
                n.fetch_add(1, Ordering::SeqCst);
                // Slow enough that concurrent requests overlap.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let basic = req
                    .headers()
                    .get("authorization")
                    .map(|v| v.to_str().unwrap().to_string());
                let ctype = req.headers().get("content-type").cloned();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let form: std::collections::HashMap<String, String> =
                    form_urlencoded::parse(&body).into_owned().collect();
                let expected_basic = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("ficus:{SECRET}"))
                );
                let authenticated = match auth {
                    Auth::Basic => basic.as_deref() == Some(&expected_basic) && !form.contains_key("client_secret"),
                    Auth::Post => {
                        basic.is_none()
                            && form.get("client_id").map(String::as_str) == Some("ficus")
                            && form.get("client_secret").map(String::as_str) == Some(SECRET)
                    }
                };
                if !authenticated || ctype.unwrap() != "application/x-www-form-urlencoded" {
                    let mut r = Response::new(full(r#"{"error":"invalid_client"}"#));
                    *r.status_mut() = StatusCode::UNAUTHORIZED;
                    return r;
                }
                let answer = match form.get("token").map(String::as_str) {
                    Some("good") => serde_json::json!({
                        "active": true, "sub": "alice", "scope": "orders:read orders:write",
                        "client_id": "app", "exp": now() + 600, "iss": ISSUER,
                        "aud": ["billing", "orders"], "nbf": now() - 5,
                    }),
                    Some("narrow") => serde_json::json!({ "active": true, "sub": "bob", "scope": "profile", "exp": now() + 600, "aud": "orders", "iss": ISSUER }),
                    // Active, but issued for another resource server, by another issuer, to
                    // another client, not valid yet or already expired.
                    Some(t @ ("other-aud" | "other-iss" | "other-client" | "no-aud" | "not-yet" | "expired")) => {
                        let mut a = serde_json::json!({
                            "active": true, "sub": "mallory", "scope": "orders:read",
                            "client_id": "app", "exp": now() + 600, "iss": ISSUER, "aud": "orders",
                        });
                        match t {
                            "other-aud" => a["aud"] = serde_json::json!(["payments", "billing"]),
                            "other-iss" => a["iss"] = "https://evil.test/".into(),
                            "other-client" => a["client_id"] = "rogue".into(),
                            "no-aud" => drop(a.as_object_mut().unwrap().remove("aud")),
                            "not-yet" => a["nbf"] = (now() + 600).into(),
                            _ => a["exp"] = (now() - 5).into(),
                        }
                        a
                    }
                    _ => serde_json::json!({ "active": false }),
                };
                Response::new(full(answer.to_string()))
            }
        })
        .await;
        Self {
            upstream,
            calls,
            down,
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn config(upstream: &str, idp: &Idp, provider: &str) -> String {
    std::env::set_var(SECRET_ENV, SECRET);
    basic_config(upstream).replace(
        "    upstream: app\n",
        "    upstream: app\n    identity: { introspection: corp, scopes: ['orders:read'], forward_claims: { sub: X-User-Id } }\n",
    ) + &format!(
        "identity:\n  introspection:\n    corp: {{ url: '{}/introspect', client_id: ficus, client_secret_env: {SECRET_ENV}, audiences: [orders], {provider} }}\n",
        idp.upstream.url()
    )
}

fn with_token(f: &Ficus, token: &str) -> Request<Body> {
    Request::get(f.url("/orders"))
        .header("authorization", format!("Bearer {token}"))
        .header("x-user-id", "mallory")
        .body(empty())
        .unwrap()
}

#[tokio::test]
async fn basic_client_auth_active_token_passes_with_claims_and_is_cached() {
    let idp = Idp::start(Auth::Basic).await;
    let up = Upstream::echo().await;
    let f = Ficus::start(&config(&up.url(), &idp, "auth: basic")).await;
    let c = client();
    for _ in 0..3 {
        let a = send(&c, with_token(&f, "good")).await;
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(a.echoed().headers["x-user-id"], vec!["alice".to_string()]);
    }
    assert_eq!(idp.calls(), 1, "the answer was not cached");
    let m = get(&f.admin_url("/metrics")).await.text();
    let series = |r: &str| {
        metric(
            &m,
            &format!("ficus_introspection_total{{provider=\"corp\",result=\"{r}\"}}"),
        )
    };
    assert_eq!(series("active"), Some(1.0), "{m}");
    assert_eq!(series("cached"), Some(2.0), "{m}");
    // Scopes from the introspection answer feed the route's requirement.
    send(&c, with_token(&f, "narrow"))
        .await
        .assert_problem(403, "insufficient-scope");
    send(&c, Request::get(f.url("/orders")).body(empty()).unwrap())
        .await
        .assert_problem(401, "missing-token");
    assert_eq!(up.hits(), 3);
    f.shutdown().await;
}

#[tokio::test]
async fn post_client_auth_sends_the_credentials_in_the_form_and_claim_rules_apply() {
    let idp = Idp::start(Auth::Post).await;
    let up = Upstream::echo().await;
    let f = Ficus::start(&config(&up.url(), &idp, "auth: post")).await;
    let a = send(&client(), with_token(&f, "good")).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(idp.calls(), 1);
    f.shutdown().await;

    // Claim rules apply to the introspection answer's members too.
    let yaml = config(&up.url(), &idp, "auth: post").replace(
        "scopes: ['orders:read']",
        "claims: { client_id: { one_of: [app, other] } }",
    );
    let f = Ficus::start(&yaml).await;
    assert_eq!(send(&client(), with_token(&f, "good")).await.status, 200);
    // `narrow` has no client_id.
    send(&client(), with_token(&f, "narrow"))
        .await
        .assert_problem(403, "forbidden");
    f.shutdown().await;
}

#[tokio::test]
async fn wrong_client_auth_kind_is_an_idp_failure_503_not_a_bad_token() {
    // The IdP expects form credentials; ficus sends Basic: the IdP refuses ficus itself.
    let idp = Idp::start(Auth::Post).await;
    let up = Upstream::echo().await;
    let f = Ficus::start(&config(&up.url(), &idp, "auth: basic")).await;
    let a = send(&client(), with_token(&f, "good")).await;
    a.assert_problem(503, "identity-unavailable");
    assert_eq!(a.headers["retry-after"], "5");
    assert_eq!(up.hits(), 0);
    f.shutdown().await;
}

#[tokio::test]
async fn inactive_tokens_get_401_and_the_negative_answer_is_cached_briefly() {
    let idp = Idp::start(Auth::Basic).await;
    let up = Upstream::echo().await;
    let f = Ficus::start(&config(&up.url(), &idp, "negative_ttl: 300ms")).await;
    let c = client();
    for _ in 0..3 {
        let a = send(&c, with_token(&f, "revoked")).await;
        a.assert_problem(401, "invalid-token");
        assert_eq!(a.headers["www-authenticate"], r#"Bearer error="invalid_token""#);
    }
    assert_eq!(idp.calls(), 1, "the negative answer was not cached");
    tokio::time::sleep(Duration::from_millis(450)).await;
    send(&c, with_token(&f, "revoked"))
        .await
        .assert_problem(401, "invalid-token");
    assert_eq!(idp.calls(), 2, "the negative answer outlived negative_ttl");
    assert_eq!(up.hits(), 0);
    assert_reaches(&up, send(&c, with_token(&f, "good"))).await;
    f.shutdown().await;
}

#[tokio::test]
async fn idp_down_gives_503_unless_a_stale_answer_is_allowed() {
    let idp = Idp::start(Auth::Basic).await;
    let up = Upstream::echo().await;
    let strict = Ficus::start(&config(&up.url(), &idp, "cache_max_ttl: 100ms")).await;
    let lenient = Ficus::start(&config(&up.url(), &idp, "cache_max_ttl: 100ms, allow_stale: 1m")).await;
    let c = client();
    for f in [&strict, &lenient] {
        assert_eq!(send(&c, with_token(f, "good")).await.status, 200);
    }
    idp.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    send(&c, with_token(&strict, "good"))
        .await
        .assert_problem(503, "identity-unavailable");
    let stale = send(&c, with_token(&lenient, "good")).await;
    assert_eq!(stale.status, 200, "{}", stale.text());
    let m = get(&lenient.admin_url("/metrics")).await.text();
    assert_eq!(
        metric(
            &m,
            "ficus_introspection_total{provider=\"corp\",result=\"stale\"}"
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(stale.echoed().headers["x-user-id"], vec!["alice".to_string()]);
    // A token never answered for has nothing stale to serve.
    send(&c, with_token(&lenient, "narrow"))
        .await
        .assert_problem(503, "identity-unavailable");
    // Back up: fresh answers again.
    idp.down.store(false, Ordering::SeqCst);
    assert_eq!(send(&c, with_token(&strict, "good")).await.status, 200);
    strict.shutdown().await;
    lenient.shutdown().await;
}

#[tokio::test]
async fn idp_refusing_connections_gives_503() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    std::env::set_var(SECRET_ENV, SECRET);
    let up = Upstream::echo().await;
    let yaml = basic_config(&up.url()).replace(
        "    upstream: app\n",
        "    upstream: app\n    identity: { introspection: corp }\n",
    ) + &format!(
        "identity:\n  introspection:\n    corp: {{ url: 'http://{addr}/introspect', client_id: ficus, client_secret_env: {SECRET_ENV}, audiences: [orders] }}\n"
    );
    let f = Ficus::start(&yaml).await;
    send(&client(), with_token(&f, "good"))
        .await
        .assert_problem(503, "identity-unavailable");
    assert_eq!(up.hits(), 0);
    f.shutdown().await;
}

#[tokio::test]
async fn introspection_config_errors_name_the_key() {
    let up = Upstream::echo().await;
    let yaml = basic_config(&up.url()).replace(
        "    upstream: app\n",
        "    upstream: app\n    identity: { introspection: nope }\n",
    ) + "identity:\n  introspection:\n    corp: { url: 'http://127.0.0.1:1/i', client_id: ficus, client_secret_env: FICUS_TEST_UNSET_NOWHERE, audiences: [orders] }\n";
    let err = Ficus::try_start(&yaml).await.err().unwrap().to_string();
    assert!(err.contains("identity.introspection.corp"), "{err}");
    assert!(err.contains("FICUS_TEST_UNSET_NOWHERE"), "{err}");
    assert!(err.contains("no introspection endpoint named `nope`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_a_new_token_share_one_introspection() {
    let idp = Idp::start(Auth::Basic).await;
    let up = Upstream::echo().await;
    let f = Ficus::start(&config(&up.url(), &idp, "auth: basic")).await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let req = with_token(&f, "good");
        tasks.push(tokio::spawn(async move { send(&client(), req).await.status }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(idp.calls(), 1, "concurrent misses were not coalesced");
    f.shutdown().await;
}

#[tokio::test]
async fn active_tokens_for_another_audience_issuer_or_client_get_401_and_are_cached() {
    let idp = Idp::start(Auth::Basic).await;
    let up = Upstream::echo().await;
    let f = Ficus::start(&config(
        &up.url(),
        &idp,
        &format!("issuer: '{ISSUER}', allowed_client_ids: [app, other-app]"),
    ))
    .await;
    let c = client();
    let a = send(&c, with_token(&f, "good")).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.echoed().headers["x-user-id"], vec!["alice".to_string()]);
    let refused = [
        "other-aud",
        "other-iss",
        "other-client",
        "no-aud",
        "not-yet",
        "expired",
        // Active, right audience and issuer, but no `client_id` while a list is configured.
        "narrow",
    ];
    for token in refused {
        let a = send(&c, with_token(&f, token)).await;
        a.assert_problem(401, "invalid-token");
        assert_eq!(a.headers["www-authenticate"], r#"Bearer error="invalid_token""#);
    }
    let calls = idp.calls();
    assert_eq!(calls, 1 + refused.len());
    // A refusal is cached like an inactive answer.
    for token in refused {
        send(&c, with_token(&f, token))
            .await
            .assert_problem(401, "invalid-token");
    }
    assert_eq!(idp.calls(), calls, "refusals were not cached");
    assert_eq!(up.hits(), 1);
    let m = get(&f.admin_url("/metrics")).await.text();
    assert_eq!(
        metric(
            &m,
            "ficus_introspection_total{provider=\"corp\",result=\"refused\"}"
        ),
        Some(refused.len() as f64),
        "{m}"
    );
    f.shutdown().await;
}

#[tokio::test]
async fn an_endpoint_without_an_audience_or_client_check_is_refused_unless_any_is_allowed() {
    let idp = Idp::start(Auth::Basic).await;
    let up = Upstream::echo().await;
    let unchecked = config(&up.url(), &idp, "auth: basic").replace("audiences: [orders], ", "");
    let err = Ficus::try_start(&unchecked).await.err().unwrap().to_string();
    assert!(
        err.contains("identity.introspection.corp: set `audiences` or `allowed_client_ids`"),
        "{err}"
    );
    let contradictory = config(&up.url(), &idp, "allow_any_audience: true");
    let err = Ficus::try_start(&contradictory).await.err().unwrap().to_string();
    assert!(
        err.contains("identity.introspection.corp.allow_any_audience"),
        "{err}"
    );

    // Checking the client alone is enough; so is saying explicitly that any audience will do.
    let by_client = config(&up.url(), &idp, "allowed_client_ids: [app]").replace("audiences: [orders], ", "");
    let f = Ficus::start(&by_client).await;
    assert_eq!(send(&client(), with_token(&f, "other-aud")).await.status, 200);
    send(&client(), with_token(&f, "other-client"))
        .await
        .assert_problem(401, "invalid-token");
    f.shutdown().await;
    let any = config(&up.url(), &idp, "allow_any_audience: true").replace("audiences: [orders], ", "");
    let f = Ficus::start(&any).await;
    assert_eq!(send(&client(), with_token(&f, "other-aud")).await.status, 200);
    // `exp` and `nbf` are honoured whatever the audience policy.
    for token in ["not-yet", "expired"] {
        send(&client(), with_token(&f, token))
            .await
            .assert_problem(401, "invalid-token");
    }
    f.shutdown().await;
}
