//! Proxying end to end: protocols, routing, forwarding headers, path normalisation, upstream
//! failures, WebSocket and streaming bodies.
#![allow(clippy::unwrap_used)] // a test that cannot go on should stop right there

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use support::*;

#[tokio::test]
async fn http1_request_is_proxied_with_method_path_query_and_body() {
    let up = Upstream::echo().await;
    let f = Ficus::start(&basic_config(&up.url())).await;
    let req = Request::post(f.url("/api/items?x=1&y=2"))
        .body(full("hello"))
        .unwrap();
    let a = send(&client(), req).await;
    assert_eq!(a.status, StatusCode::OK);
    let e = a.echoed();
    assert_eq!(
        (e.method.as_str(), e.path.as_str(), e.body_len),
        ("POST", "/api/items?x=1&y=2", 5)
    );
    assert_eq!(e.version, "HTTP/1.1");
    f.shutdown().await;
}

#[tokio::test]
async fn h2c_prior_knowledge_request_is_proxied() {
    let up = Upstream::echo().await;
    let f = Ficus::start(&basic_config(&up.url())).await;
    let a = send(&h2c_client(), Request::get(f.url("/h2")).body(empty()).unwrap()).await;
    assert_eq!(a.status, StatusCode::OK);
    let e = a.echoed();
    assert_eq!(e.path, "/h2");
    // The h2 client sends only :authority; the upstream must still get a Host header.
    assert_eq!(e.header("host"), Some(f.addr.to_string().as_str()));
    f.shutdown().await;
}

#[tokio::test]
async fn routes_match_by_host_path_and_method_in_file_order() {
    let legacy = Upstream::echo_named("legacy").await;
    let modern = Upstream::echo_named("modern").await;
    let admin = Upstream::echo_named("admin").await;
    let yaml = yaml::Config::new()
        .upstream("legacy", &legacy.url())
        .upstream("modern", &modern.url())
        .upstream("admin", &admin.url())
        .route(
            "  - name: admin-host
    match: { hosts: ['*.internal.test'] }
    upstream: admin
  - name: orders-read
    match: { path_prefix: /api/orders, methods: [GET] }
    upstream: modern
  - name: health
    match: { path: /health }
    upstream: modern
  - name: rest
    match: { path_prefix: / }
    upstream: legacy
",
        )
        .build();
    let f = Ficus::start(&yaml).await;
    let c = client();
    let who = |a: Answer| a.echoed().name;
    let get = |p: &str| Request::get(f.url(p)).body(empty()).unwrap();

    assert_eq!(who(send(&c, get("/api/orders/7")).await), "modern");
    assert_eq!(
        who(send(&c, Request::post(f.url("/api/orders/7")).body(empty()).unwrap()).await),
        "legacy"
    );
    // Prefixes match on segment boundaries: /api/ordersX is not under /api/orders.
    assert_eq!(who(send(&c, get("/api/ordersX")).await), "legacy");
    assert_eq!(who(send(&c, get("/health")).await), "modern");
    assert_eq!(who(send(&c, get("/health/deep")).await), "legacy");
    let by_host = Request::get(f.url("/anything"))
        .header("host", "ops.internal.test")
        .body(empty())
        .unwrap();
    assert_eq!(who(send(&c, by_host).await), "admin");
    let apex = Request::get(f.url("/anything"))
        .header("host", "internal.test")
        .body(empty())
        .unwrap();
    assert_eq!(who(send(&c, apex).await), "legacy");
    f.shutdown().await;
}

#[tokio::test]
async fn unmatched_request_gets_404_problem() {
    let up = Upstream::echo().await;
    let yaml = basic_config(&up.url()).replace("path_prefix: /", "path_prefix: /only");
    let f = Ficus::start(&yaml).await;
    get(&f.url("/elsewhere")).await.assert_problem(404, "no-route");
    assert_eq!(up.hits(), 0);
    assert_reaches(&up, get(&f.url("/only"))).await;
    f.shutdown().await;
}

#[tokio::test]
async fn endpoints_are_used_in_round_robin() {
    let a = Upstream::echo_named("a").await;
    let b = Upstream::echo_named("b").await;
    let yaml = basic_config(&a.url()).replace(
        &format!("[\"{}\"]", a.url()),
        &format!("[\"{}\", \"{}\"]", a.url(), b.url()),
    );
    let f = Ficus::start(&yaml).await;
    for _ in 0..10 {
        get(&f.url("/")).await;
    }
    assert_eq!((a.hits(), b.hits()), (5, 5));
    f.shutdown().await;
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let up = Upstream::start(|req: Request<Incoming>| async move {
        let mut r = echo_response(req, "").await;
        let h = r.headers_mut();
        h.insert("connection", "x-upstream-secret".parse().unwrap());
        h.insert("x-upstream-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("proxy-authenticate", "Basic".parse().unwrap());
        h.insert("x-upstream-kept", "yes".parse().unwrap());
        r
    })
    .await;
    let f = Ficus::start(&basic_config(&up.url())).await;
    let req = Request::get(f.url("/"))
        .header("connection", "keep-alive, x-client-secret")
        .header("x-client-secret", "s")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("trailer", "x-t")
        .header("upgrade", "h2c")
        .header("proxy-authorization", "Basic abc")
        .header("proxy-connection", "keep-alive")
        .header("x-client-kept", "yes")
        .body(empty())
        .unwrap();
    let a = send(&client(), req).await;
    let e = a.echoed();
    for h in [
        "x-client-secret",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
    ] {
        assert!(
            !e.headers.contains_key(h),
            "{h} reached the upstream: {:?}",
            e.headers
        );
    }
    assert_eq!(e.header("x-client-kept"), Some("yes"));
    for h in ["x-upstream-secret", "keep-alive", "proxy-authenticate"] {
        assert!(
            !a.headers.contains_key(h),
            "{h} reached the client: {:?}",
            a.headers
        );
    }
    assert_eq!(a.headers["x-upstream-kept"], "yes");
    f.shutdown().await;
}

#[tokio::test]
async fn forwarded_headers_are_set_and_client_copies_are_dropped_when_untrusted() {
    let up = Upstream::echo().await;
    let f = Ficus::start(&basic_config(&up.url())).await;
    let req = Request::get(f.url("/"))
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.test")
        .header("forwarded", "for=6.6.6.6")
        .body(empty())
        .unwrap();
    let e = send(&client(), req).await.echoed();
    assert_eq!(e.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(e.header("x-forwarded-proto"), Some("http"));
    assert_eq!(e.header("x-forwarded-host"), Some(f.addr.to_string().as_str()));
    assert_eq!(
        e.header("forwarded"),
        Some(format!("for=127.0.0.1;proto=http;host=\"{}\"", f.addr).as_str())
    );
    f.shutdown().await;
}

#[tokio::test]
async fn forwarded_headers_from_a_trusted_proxy_are_appended_to() {
    let up = Upstream::echo().await;
    let yaml = basic_config(&up.url()).replace(
        "    bind: 127.0.0.1:0\nadmin",
        "    bind: 127.0.0.1:0\n    trusted_proxies: [127.0.0.0/8]\nadmin",
    );
    let f = Ficus::start(&yaml).await;
    let req = Request::get(f.url("/"))
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .header("forwarded", "for=203.0.113.9;proto=https")
        .body(empty())
        .unwrap();
    let e = send(&client(), req).await.echoed();
    assert_eq!(e.header("x-forwarded-for"), Some("203.0.113.9, 127.0.0.1"));
    assert_eq!(e.header("x-forwarded-proto"), Some("https"));
    let fwd = e.header("forwarded").unwrap();
    assert!(
        fwd.starts_with("for=203.0.113.9;proto=https, for=127.0.0.1;proto=http"),
        "{fwd}"
    );
    f.shutdown().await;
}

#[tokio::test]
async fn request_id_is_kept_when_valid_and_generated_otherwise() {
    let up = Upstream::echo().await;
    let f = Ficus::start(&basic_config(&up.url())).await;
    let c = client();
    let kept = send(
        &c,
        Request::get(f.url("/"))
            .header("x-request-id", "abc-123")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(kept.headers["x-request-id"], "abc-123");
    assert_eq!(kept.echoed().header("x-request-id"), Some("abc-123"));

    let bad = send(
        &c,
        Request::get(f.url("/"))
            .header("x-request-id", "bad id!")
            .body(empty())
            .unwrap(),
    )
    .await;
    let id = bad.headers["x-request-id"].to_str().unwrap().to_string();
    assert_ne!(id, "bad id!");
    assert_eq!(id.len(), 36, "a UUID: {id}");
    assert_eq!(bad.echoed().header("x-request-id"), Some(id.as_str()));

    // ficus's own errors carry the id too.
    let err = send(
        &c,
        Request::get(f.url("/.."))
            .header("x-request-id", "err-1")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(err.headers["x-request-id"], "err-1");
    assert_eq!(err.json()["request_id"], "err-1");
    f.shutdown().await;
}

#[tokio::test]
async fn traceparent_is_passed_through_or_created() {
    let up = Upstream::echo().await;
    let f = Ficus::start(&basic_config(&up.url())).await;
    let c = client();
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let e = send(
        &c,
        Request::get(f.url("/"))
            .header("traceparent", tp)
            .body(empty())
            .unwrap(),
    )
    .await
    .echoed();
    assert_eq!(e.header("traceparent"), Some(tp));
    let e = send(
        &c,
        Request::get(f.url("/"))
            .header("traceparent", "junk")
            .body(empty())
            .unwrap(),
    )
    .await
    .echoed();
    let created = e.header("traceparent").unwrap();
    assert_ne!(created, "junk");
    assert_eq!(created.len(), 55);
    assert!(created.starts_with("00-"));
    f.shutdown().await;
}

/// Only `/public` is routed; every trick to climb out of it must either land on a path the
/// `/admin` route would own (and so not reach `public`) or be refused with 400.
#[tokio::test]
async fn path_normalisation_defeats_traversal_bypasses() {
    let public = Upstream::echo_named("public").await;
    let admin = Upstream::echo_named("admin").await;
    let yaml = yaml::Config::new()
        .upstream("public", &public.url())
        .upstream("admin", &admin.url())
        .route(
            "  - name: admin
    match: { path_prefix: /admin }
    upstream: admin
  - name: public
    match: { path_prefix: /public }
    upstream: public
",
        )
        .build();
    let f = Ficus::start(&yaml).await;
    for attempt in [
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public/%2E%2E/admin",
        "/public/.%2e/admin",
        "//admin",
        "/public/./../admin",
    ] {
        let a = raw(
            f.addr,
            format!("GET {attempt} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(raw_status(&a), 200, "{attempt}: {a}");
        assert!(
            a.contains("\"name\":\"admin\""),
            "{attempt} must be treated as /admin: {a}"
        );
        // The upstream sees the normalised path, not the trick.
        assert!(a.contains("\"path\":\"/admin\""), "{attempt}: {a}");
    }
    for refused in [
        "/public/../../admin",
        "/public/..%2fadmin",
        "/public/%2e%2e%5cadmin",
        "/public/%00",
        "/public/%zz",
    ] {
        let a = raw(
            f.addr,
            format!("GET {refused} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(raw_status(&a), 400, "{refused}: {a}");
        assert!(a.contains("application/problem+json"), "{a}");
        assert!(a.contains("urn:ficus:problem:invalid-path"), "{a}");
    }
    assert_eq!(public.hits(), 0);
    f.shutdown().await;
}

#[tokio::test]
async fn unreachable_upstream_gives_502_problem() {
    // Bind and drop to get a port nobody listens on.
    let port = free_port();
    let f = Ficus::start(&basic_config(&format!("http://127.0.0.1:{port}"))).await;
    get(&f.url("/")).await.assert_problem(502, "upstream-unreachable");
    f.shutdown().await;
}

#[tokio::test]
async fn slow_upstream_gives_504_problem() {
    let up = Upstream::start(|_req: Request<Incoming>| async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Response::new(empty())
    })
    .await;
    let yaml = basic_config(&up.url()).replace("endpoints:", "timeouts: { request: 300ms }\n    endpoints:");
    let f = Ficus::start(&yaml).await;
    let started = std::time::Instant::now();
    get(&f.url("/")).await.assert_problem(504, "upstream-timeout");
    assert!(started.elapsed() < Duration::from_secs(3));
    f.shutdown().await;
}

#[tokio::test]
async fn websocket_upgrade_is_proxied() {
    let up = Upstream::start(|mut req: Request<Incoming>| async move {
        let key = req.headers().get("sec-websocket-key").cloned();
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let io = hyper_util::rt::TokioIo::new(upgraded);
                let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    io,
                    tokio_tungstenite::tungstenite::protocol::Role::Server,
                    None,
                )
                .await;
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() {
                        let reply = format!("echo: {}", msg.into_text().unwrap());
                        let _ = ws
                            .send(tokio_tungstenite::tungstenite::Message::text(reply))
                            .await;
                    }
                }
            }
        });
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.unwrap().as_bytes());
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", accept)
            .body(empty())
            .unwrap()
    })
    .await;
    let f = Ficus::start(&basic_config(&up.url())).await;
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/ws", f.addr))
        .await
        .expect("ws handshake");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..3 {
        ws.send(tokio_tungstenite::tungstenite::Message::text(format!("hi {i}")))
            .await
            .unwrap();
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(msg.into_text().unwrap().as_str(), format!("echo: hi {i}"));
    }
    ws.close(None).await.unwrap();
    f.shutdown().await;
}

/// Bodies are produced and consumed chunk by chunk, never collected. (The 1 GiB run with a memory
/// bound is in `tests/binary.rs`, against the real process.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways() {
    const GIB: u64 = 64 << 20;
    const CHUNK: usize = 256 * 1024;
    let up = Upstream::start(|req: Request<Incoming>| async move {
        if req.method() == http::Method::GET {
            let chunk = Bytes::from(vec![b'x'; CHUNK]);
            let n = GIB / CHUNK as u64;
            let stream = futures_util::stream::iter(
                (0..n).map(move |_| Ok::<_, std::io::Error>(hyper::body::Frame::data(chunk.clone()))),
            );
            Response::new(http_body_util::StreamBody::new(stream).boxed_unsync())
        } else {
            echo_response(req, "").await
        }
    })
    .await;
    let yaml = with_limits(&up.url(), "max_body_bytes: 2GiB");
    let f = Ficus::start(&yaml).await;
    let c = client();

    let resp = c
        .request(Request::get(f.url("/download")).body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        got += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(got, GIB);

    let chunk = Bytes::from(vec![b'y'; CHUNK]);
    let n = GIB / CHUNK as u64;
    let stream = futures_util::stream::iter(
        (0..n).map(move |_| Ok::<_, std::io::Error>(hyper::body::Frame::data(chunk.clone()))),
    );
    let req = Request::post(f.url("/upload"))
        .body(http_body_util::StreamBody::new(stream).boxed_unsync())
        .unwrap();
    let a = send(&c, req).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.echoed().body_len, GIB);
    f.shutdown().await;
}

#[tokio::test]
async fn request_metrics_are_counted_per_route_upstream_method_and_status_class() {
    let up = Upstream::echo().await;
    let yaml = basic_config(&up.url()).replace("path_prefix: /", "path_prefix: /api");
    let f = Ficus::start(&yaml).await;
    let c = client();
    for _ in 0..3 {
        send(&c, Request::get(f.url("/api/x")).body(empty()).unwrap()).await;
    }
    send(&c, Request::post(f.url("/api/x")).body(full("b")).unwrap()).await;
    send(&c, Request::get(f.url("/elsewhere")).body(empty()).unwrap()).await;
    let m = get(&f.admin_url("/metrics")).await.text();
    let value = |prefix: &str| -> Option<f64> {
        m.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    let series = |method: &str, class: &str, route: &str, upstream: &str| {
        format!(
            "ficus_requests_total{{route=\"{route}\",upstream=\"{upstream}\",method=\"{method}\",status_class=\"{class}\"}}"
        )
    };
    assert_eq!(value(&series("GET", "2xx", "all", "app")), Some(3.0), "{m}");
    assert_eq!(value(&series("POST", "2xx", "all", "app")), Some(1.0), "{m}");
    assert_eq!(value(&series("GET", "4xx", "unmatched", "")), Some(1.0), "{m}");
    // Pre-registered: series exist (at zero) before any such request.
    assert_eq!(value(&series("DELETE", "5xx", "all", "app")), Some(0.0), "{m}");
    assert_eq!(
        value("ficus_request_duration_seconds_count{route=\"all\",side=\"none\"}"),
        Some(4.0),
        "{m}"
    );
    assert_eq!(
        value("ficus_upstream_request_duration_seconds_count{upstream=\"app\"}"),
        Some(4.0),
        "{m}"
    );
    assert!(
        value("ficus_open_connections{listener=\"main\"}").is_some_and(|v| v >= 1.0),
        "{m}"
    );
    f.shutdown().await;
}
