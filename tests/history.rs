//! `GET /admin/history`: each route's last hour in 10-second steps, per side, as the migration
//! page plots it, fed by real requests through real upstreams.
#![allow(clippy::unwrap_used)] // a test that cannot go on should stop right there

mod support;

use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use support::*;

/// Modern is slow (30 ms) and fails `/orders/bad` with a 500; legacy answers at once.
async fn slow_failing_modern() -> Upstream {
    Upstream::start(|req: Request<Incoming>| async move {
        tokio::time::sleep(Duration::from_millis(30)).await;
        if req.uri().path().ends_with("/bad") {
            let mut r = Response::new(full("{\"error\":\"boom\"}"));
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            return r;
        }
        echo_response(req, "modern").await
    })
    .await
}

fn config(legacy: &str, modern: &str, percent: u32) -> String {
    yaml::Config::new()
        .upstream("legacy", legacy)
        .upstream("modern", modern)
        .route(&yaml::migration_route(
            "orders",
            "/orders",
            &[
                &format!("modern_percent: {percent}"),
                "sticky: header:x-user",
                "cohorts: [on-modern]",
                "shadow: { percent: 100 }",
            ],
        ))
        .route("  - name: rest\n    match: { path_prefix: / }\n    upstream: legacy\n")
        .build()
}

/// Sums one field over all points of a route's history.
fn total(h: &serde_json::Value, side: &str, field: &str) -> u64 {
    h["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[side][field].as_u64().unwrap())
        .sum()
}

fn max_p99(h: &serde_json::Value, side: &str) -> f64 {
    h["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[side]["p99_ms"].as_f64().unwrap())
        .fold(0.0, f64::max)
}

async fn send_as(c: &H1Client, url: String, user: &str) -> Answer {
    send(c, Request::get(url).header("x-user", user).body(empty()).unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_counts_requests_errors_latency_and_comparisons_per_side() {
    let legacy = Upstream::echo_named("legacy").await;
    let modern = slow_failing_modern().await;
    let f = Ficus::start(&config(&legacy.url(), &modern.url(), 0)).await;
    let c = client();
    for _ in 0..12 {
        assert_eq!(
            send_as(&c, f.url("/orders/1"), "someone").await.status.as_u16(),
            200
        );
    }
    for _ in 0..5 {
        assert_eq!(
            send_as(&c, f.url("/orders/1"), "on-modern").await.status.as_u16(),
            200
        );
    }
    for _ in 0..3 {
        assert_eq!(
            send_as(&c, f.url("/orders/bad"), "on-modern")
                .await
                .status
                .as_u16(),
            500
        );
    }
    assert_eq!(get(&f.url("/other")).await.status.as_u16(), 200);

    // Every GET is shadowed; the comparisons finish in the background.
    let deadline = Instant::now() + Duration::from_secs(10);
    let h = loop {
        let h = get(&f.admin_url("/admin/history?route=orders")).await.json();
        let compared: u64 = h["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["shadow"]["comparisons"].as_u64().unwrap())
            .sum();
        if compared >= 20 || Instant::now() > deadline {
            break h;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(h["route"], "orders");
    assert_eq!(h["step_seconds"], 10);
    let points = h["points"].as_array().unwrap();
    // 20 requests in well under 10 s: one step, two if they straddled a boundary.
    assert!((1..=2).contains(&points.len()), "{h}");
    for p in points {
        let t = p["t"].as_u64().unwrap();
        assert_eq!(t % 10_000, 0, "a point starts on a step boundary: {t}");
    }
    assert_eq!(total(&h, "legacy", "requests"), 12, "{h}");
    assert_eq!(total(&h, "legacy", "errors_5xx"), 0, "{h}");
    assert_eq!(total(&h, "modern", "requests"), 8, "{h}");
    assert_eq!(total(&h, "modern", "errors_5xx"), 3, "{h}");
    let (legacy_p99, modern_p99) = (max_p99(&h, "legacy"), max_p99(&h, "modern"));
    assert!(
        modern_p99 >= 25.0,
        "modern sleeps 30 ms, p99 {modern_p99} ms: {h}"
    );
    assert!(
        legacy_p99 < modern_p99,
        "legacy {legacy_p99} ms vs modern {modern_p99} ms"
    );
    let shadow: (u64, u64) = points.iter().fold((0, 0), |(c, m), p| {
        (
            c + p["shadow"]["comparisons"].as_u64().unwrap(),
            m + p["shadow"]["mismatched"].as_u64().unwrap(),
        )
    });
    // Legacy and modern echo different names: every comparison mismatches.
    assert_eq!(shadow, (20, 20), "{h}");

    // Without `?route`: every route, each with its own points.
    let all = get(&f.admin_url("/admin/history")).await.json();
    let names: Vec<&str> = all["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["route"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["orders", "rest"]);
    assert_eq!(total(&all["routes"][1], "legacy", "requests"), 1);
    assert_eq!(total(&all["routes"][1], "modern", "requests"), 0);

    get(&f.admin_url("/admin/history?route=nope"))
        .await
        .assert_problem(404, "not-found");
    let post = send(
        &c,
        Request::post(f.admin_url("/admin/history"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(post.status.as_u16(), 405);
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_survives_a_reload_of_its_route() {
    let legacy = Upstream::echo_named("legacy").await;
    let modern = Upstream::echo_named("modern").await;
    let f = Ficus::start(&config(&legacy.url(), &modern.url(), 0)).await;
    let c = client();
    for _ in 0..4 {
        send_as(&c, f.url("/orders/1"), "someone").await;
    }
    f.write_config(&config(&legacy.url(), &modern.url(), 100));
    f.gw().reload("test").await.unwrap();
    for _ in 0..3 {
        send_as(&c, f.url("/orders/1"), "someone").await;
    }
    let h = get(&f.admin_url("/admin/history?route=orders")).await.json();
    assert_eq!(total(&h, "legacy", "requests"), 4, "{h}");
    assert_eq!(total(&h, "modern", "requests"), 3, "{h}");
    f.shutdown().await;
}
