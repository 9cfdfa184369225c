//! Idempotency keys end to end: replay, 409 while in flight, 422 on reuse, 400 when required,
//! exactly-once under 50 concurrent POSTs, and two ficus instances agreeing through a real Redis.
#![allow(clippy::unwrap_used)] // a test that cannot go on should stop right there

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use support::*;

fn idem_config(upstream: &str, route_idem: &str, store: &str) -> String {
    let mut yaml = basic_config(upstream).replace(
        "    upstream: app\n",
        &format!("    upstream: app\n    idempotency: {{ {route_idem} }}\n"),
    );
    if !store.is_empty() {
        yaml.push_str(&format!("idempotency_store: {{ {store} }}\n"));
    }
    yaml
}

/// Answers 201 with the call number in the body, after `delay`.
async fn counting(delay: Duration) -> Upstream {
    let n = Arc::new(AtomicUsize::new(0));
    Upstream::start(move |_req: Request<Incoming>| {
        let call = n.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            tokio::time::sleep(delay).await;
            let mut r = Response::new(full(format!("{{\"order\":{call}}}")));
            *r.status_mut() = StatusCode::CREATED;
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            r.headers_mut()
                .insert("location", format!("/orders/{call}").parse().unwrap());
            r
        }
    })
    .await
}

fn post(url: String, key: Option<&str>, body: &'static str) -> Request<Body> {
    let mut b = Request::post(url);
    if let Some(k) = key {
        b = b.header("idempotency-key", k);
    }
    b.body(full(body)).unwrap()
}

#[tokio::test]
async fn completed_key_replays_the_stored_response() {
    let up = counting(Duration::ZERO).await;
    let f = Ficus::start(&idem_config(&up.url(), "ttl: 1h, scope: client_ip", "")).await;
    let c = client();
    let first = send(&c, post(f.url("/orders"), Some("key-1"), "{\"item\":1}")).await;
    assert_eq!(first.status, 201);
    assert!(!first.headers.contains_key("idempotency-replayed"));
    let again = send(&c, post(f.url("/orders"), Some("key-1"), "{\"item\":1}")).await;
    assert_eq!(again.status, 201);
    assert_eq!(again.headers["idempotency-replayed"], "true");
    assert_eq!(again.headers["location"], "/orders/1");
    assert_eq!(again.body, first.body);
    assert_eq!(up.hits(), 1);
    // Another key is another request.
    assert_eq!(
        send(&c, post(f.url("/orders"), Some("key-2"), "{\"item\":1}"))
            .await
            .text(),
        "{\"order\":2}"
    );
    // No key: passed through untouched.
    assert_eq!(send(&c, post(f.url("/orders"), None, "{}")).await.status, 201);
    assert_eq!(up.hits(), 3);
    f.shutdown().await;
}

#[tokio::test]
async fn same_key_with_a_different_body_gets_422() {
    let up = counting(Duration::ZERO).await;
    let f = Ficus::start(&idem_config(&up.url(), "ttl: 1h, scope: client_ip", "")).await;
    let c = client();
    assert_eq!(
        send(&c, post(f.url("/orders"), Some("k"), "{\"item\":1}"))
            .await
            .status,
        201
    );
    send(&c, post(f.url("/orders"), Some("k"), "{\"item\":2}"))
        .await
        .assert_problem(422, "idempotency-key-reused");
    assert_eq!(up.hits(), 1);
    f.shutdown().await;
}

#[tokio::test]
async fn required_key_is_enforced_and_validated() {
    let up = counting(Duration::ZERO).await;
    let f = Ficus::start(&idem_config(&up.url(), "required: true, scope: client_ip", "")).await;
    let c = client();
    send(&c, post(f.url("/orders"), None, "{}"))
        .await
        .assert_problem(400, "idempotency-key-missing");
    let long = "k".repeat(300);
    let req = Request::post(f.url("/orders"))
        .header("idempotency-key", long)
        .body(full("{}"))
        .unwrap();
    send(&c, req).await.assert_problem(400, "idempotency-key-invalid");
    assert_eq!(up.hits(), 0);
    assert_reaches(&up, send(&c, post(f.url("/orders"), Some("k-1"), "{}"))).await;
    f.shutdown().await;
}

#[tokio::test]
async fn outcomes_not_configured_to_be_kept_free_the_key() {
    let calls = Arc::new(AtomicUsize::new(0));
    let up = Upstream::start(move |_req: Request<Incoming>| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut r = Response::new(full("x"));
            *r.status_mut() = if n == 0 {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::CREATED
            };
            r
        }
    })
    .await;
    let f = Ficus::start(&idem_config(
        &up.url(),
        "store_statuses: ['2xx'], scope: client_ip",
        "",
    ))
    .await;
    let c = client();
    assert_eq!(send(&c, post(f.url("/o"), Some("k"), "{}")).await.status, 500);
    let second = send(&c, post(f.url("/o"), Some("k"), "{}")).await;
    assert_eq!(second.status, 201, "a 500 is not kept: the retry goes upstream");
    assert!(!second.headers.contains_key("idempotency-replayed"));
    assert_eq!(up.hits(), 2);
    f.shutdown().await;
}

async fn fire_50(urls: &[String]) -> Vec<u16> {
    let mut tasks = Vec::new();
    for i in 0..50 {
        let url = urls[i % urls.len()].clone();
        tasks.push(tokio::spawn(async move {
            send(&client(), post(url, Some("order-42"), "{\"item\":42}"))
                .await
                .status
                .as_u16()
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_identical_posts_reach_the_upstream_once() {
    let up = counting(Duration::from_millis(500)).await;
    let f = Ficus::start(&idem_config(&up.url(), "ttl: 1h, scope: client_ip", "")).await;
    let statuses = fire_50(&[f.url("/orders")]).await;
    assert_eq!(up.hits(), 1, "statuses: {statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 201 || *s == 409), "{statuses:?}");
    // Once done, the key replays.
    let again = send(
        &client(),
        post(f.url("/orders"), Some("order-42"), "{\"item\":42}"),
    )
    .await;
    assert_eq!(again.headers["idempotency-replayed"], "true");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_redis_let_exactly_one_through() {
    let redis = Redis::start().await;
    let up = counting(Duration::from_millis(500)).await;
    let store = format!("redis_url: '{}', key_prefix: 'test:'", redis.url);
    let a = Ficus::start(&idem_config(&up.url(), "ttl: 1h, scope: client_ip", &store)).await;
    let b = Ficus::start(&idem_config(&up.url(), "ttl: 1h, scope: client_ip", &store)).await;
    let statuses = fire_50(&[a.url("/orders"), b.url("/orders")]).await;
    assert_eq!(up.hits(), 1, "statuses: {statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 201 || *s == 409), "{statuses:?}");

    // The outcome stored by one instance replays from the other.
    for f in [&a, &b] {
        let again = send(
            &client(),
            post(f.url("/orders"), Some("order-42"), "{\"item\":42}"),
        )
        .await;
        assert_eq!(again.status, 201);
        assert_eq!(again.headers["idempotency-replayed"], "true");
        assert_eq!(again.text(), "{\"order\":1}");
    }
    send(
        &client(),
        post(b.url("/orders"), Some("order-42"), "{\"item\":43}"),
    )
    .await
    .assert_problem(422, "idempotency-key-reused");
    assert_eq!(up.hits(), 1);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn unreachable_redis_fails_closed_with_503() {
    let port = free_port();
    let up = counting(Duration::ZERO).await;
    let store = format!("redis_url: 'redis://127.0.0.1:{port}'");
    let f = Ficus::start(&idem_config(&up.url(), "ttl: 1h, scope: client_ip", &store)).await;
    send(&client(), post(f.url("/orders"), Some("k"), "{}"))
        .await
        .assert_problem(503, "idempotency-store-unavailable");
    assert_eq!(up.hits(), 0, "never sent without the lock");
    // Without a key the store is not needed, and the upstream is there.
    assert_reaches(&up, send(&client(), post(f.url("/orders"), None, "{}"))).await;
    f.shutdown().await;
}

/// Answers 201 with a session cookie naming the caller (`x-caller`) and the call number.
async fn cookie_setting() -> Upstream {
    let n = Arc::new(AtomicUsize::new(0));
    Upstream::start(move |req: Request<Incoming>| {
        let call = n.fetch_add(1, Ordering::SeqCst) + 1;
        let caller = req
            .headers()
            .get("x-caller")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("nobody")
            .to_string();
        async move {
            let mut r = Response::new(full(format!("{{\"order\":{call},\"for\":\"{caller}\"}}")));
            *r.status_mut() = StatusCode::CREATED;
            r.headers_mut().insert(
                "set-cookie",
                format!("session={caller}; HttpOnly").parse().unwrap(),
            );
            r
        }
    })
    .await
}

fn post_as(url: String, caller: &str, tenant: Option<&str>) -> Request<Body> {
    let mut b = Request::post(url)
        .header("idempotency-key", "same-key")
        .header("x-caller", caller);
    if let Some(t) = tenant {
        b = b.header("x-tenant", t);
    }
    b.body(full("{\"item\":1}")).unwrap()
}

/// Without a verified identity every caller used to share one scope: the second caller got the
/// first one's stored answer, session cookie included. Such a key is now refused unless the
/// route names a scope key.
#[tokio::test]
async fn anonymous_callers_with_the_same_key_do_not_get_each_others_response() {
    let up = cookie_setting().await;
    let f = Ficus::start(&idem_config(&up.url(), "ttl: 1h", "")).await;
    let c = client();
    for caller in ["alice", "mallory"] {
        let a = send(&c, post_as(f.url("/orders"), caller, None)).await;
        a.assert_problem(400, "idempotency-scope-missing");
        assert!(!a.headers.contains_key("set-cookie"), "{caller}");
    }
    assert_eq!(up.hits(), 0, "refused before the upstream");
    // Requests without a key are not idempotency-managed: they pass as before.
    assert_eq!(send(&c, post(f.url("/orders"), None, "{}")).await.status, 201);
    assert_eq!(up.hits(), 1, "the keyless request reached the upstream");
    f.shutdown().await;

    // With a scope key, each tenant has its own keys.
    let up = cookie_setting().await;
    let f = Ficus::start(&idem_config(&up.url(), "ttl: 1h, scope: header:x-tenant", "")).await;
    let a = send(&c, post_as(f.url("/orders"), "alice", Some("acme"))).await;
    let m = send(&c, post_as(f.url("/orders"), "mallory", Some("globex"))).await;
    assert_eq!((a.status.as_u16(), m.status.as_u16()), (201, 201));
    assert!(!m.headers.contains_key("idempotency-replayed"));
    assert_eq!(m.headers["set-cookie"], "session=mallory; HttpOnly");
    assert_eq!(up.hits(), 2, "same key, two scopes: two orders");
    let again = send(&c, post_as(f.url("/orders"), "alice", Some("acme"))).await;
    assert_eq!(again.headers["idempotency-replayed"], "true");
    assert_eq!(again.body, a.body);
    // The scope key missing from the request: no scope, refused.
    send(&c, post_as(f.url("/orders"), "alice", None))
        .await
        .assert_problem(400, "idempotency-scope-missing");
    assert_eq!(up.hits(), 2);
    f.shutdown().await;
}

#[tokio::test]
async fn a_replayed_response_carries_no_set_cookie() {
    let up = cookie_setting().await;
    let f = Ficus::start(&idem_config(&up.url(), "ttl: 1h, scope: client_ip", "")).await;
    let c = client();
    let first = send(&c, post_as(f.url("/orders"), "alice", None)).await;
    assert_eq!(first.status, 201);
    assert_eq!(
        first.headers["set-cookie"], "session=alice; HttpOnly",
        "the live answer keeps its cookie"
    );
    let again = send(&c, post_as(f.url("/orders"), "alice", None)).await;
    assert_eq!(again.headers["idempotency-replayed"], "true");
    assert_eq!(again.body, first.body);
    assert!(!again.headers.contains_key("set-cookie"), "{:?}", again.headers);
    assert_eq!(up.hits(), 1);
    f.shutdown().await;
}

#[tokio::test]
async fn an_unknown_scope_key_is_a_config_error() {
    let yaml = idem_config("http://127.0.0.1:9", "scope: [header:x-tenant, tenant]", "");
    let err = Ficus::try_start(&yaml).await.err().expect("refused").to_string();
    assert!(
        err.contains("routes[0].idempotency.scope: `tenant` is not a key part"),
        "{err}"
    );
}
